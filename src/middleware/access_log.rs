//! The access log and the per-request metrics: one `tracing` event per request, target
//! `trackproxy::access`, message `request`, emitted when the response body is finished (or the
//! client went away), inside the request's span so it carries the request id.
//!
//! Fields: `client`, `host`, `method`, `path`, `status`, `bytes` (response body), `duration_ms`
//! (request head to end of body), `upstream_ms` (to the upstream's response head; absent for
//! local answers), `version`, `tls` (absent on plain HTTP), `request_id`, `user_agent` (absent
//! if none), `completed` (false when the client closed before the body was sent). The query
//! string is left out unless `log.query = true`: tracking tokens identify recipients. A request
//! whose client left before the response head is logged with status 499 (as nginx does).
//! A failed request also has `origin` (`client`, `upstream`, `proxy`) and `failure` (its kind:
//! `bad_request_body`, `client_aborted`, `upstream_connect`, …).
//!
//! Metrics are recorded from the same facts at the same moments (one body wrapper, one clock
//! read at each end): `trackproxy_requests_total` when the head is sent, the latency histograms
//! when the body ends.
//!
//! Nothing is formatted for the log on the request path: the facts are kept as the
//! (reference-counted) header values and URI the request already has, and formatted by the log
//! writer only when the event is emitted. With the access log off (`log.level` above `info`)
//! they are not even kept: only what the metrics need is.

use std::borrow::Cow;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;

use super::request_id::RequestIdValue;
use crate::client::ConnInfo;
use crate::error::{CLIENT_CLOSED, ErrorOrigin, Failure};
use crate::forward::UpstreamTiming;
use crate::metrics::{HostHandle, Metrics};

/// The `tracing` target of access log events (filter with `trackproxy::access=off`).
pub(crate) const TARGET: &str = "trackproxy::access";

/// Layer of [`AccessLog`].
#[derive(Debug, Clone)]
pub(crate) struct AccessLogLayer {
    metrics: Metrics,
    query: bool,
}

impl AccessLogLayer {
    /// Logs requests and records them in `metrics`; `query`: whether the logged path keeps its
    /// query string (`log.query`).
    #[must_use]
    pub(crate) fn new(metrics: Metrics, query: bool) -> Self {
        AccessLogLayer { metrics, query }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
            query: self.query,
        }
    }
}

/// Logs each request once its response body is done, and records its metrics.
#[derive(Debug, Clone)]
pub(crate) struct AccessLog<S> {
    inner: S,
    metrics: Metrics,
    query: bool,
}

impl<S, B, ResB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    ResB: Body + UpstreamTiming,
{
    type Response = Response<LoggedBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let record = Record::new(&req, &self.metrics, self.query);
        ResponseFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

pin_project! {
    /// Response future of [`AccessLog`]: notes the status, then hands the record to the body.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Dropped with the future if the client leaves first: then it logs status 499.
        record: Option<Record>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Body + UpstreamTiming,
{
    type Output = Result<Response<LoggedBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let Some(mut record) = this.record.take() else {
            // Polled after completion: a caller bug; answer like a failed request.
            return Poll::Ready(res.map(|r| r.map(|inner| LoggedBody::unlogged(inner))));
        };
        Poll::Ready(match res {
            Ok(res) => {
                record.head(res.status(), res.body().upstream_timing());
                record.failure = res.extensions().get::<Failure>().copied();
                // hyper never polls a body that is empty from the start (HEAD, 204, 304).
                record.completed = res.body().is_end_stream();
                Ok(res.map(|inner| LoggedBody {
                    inner,
                    record: Some(record),
                }))
            }
            Err(e) => {
                record.head(StatusCode::INTERNAL_SERVER_ERROR, None);
                Err(e)
            }
        })
    }
}

pin_project! {
    /// A response body that counts its bytes and logs the request when it is dropped (hyper
    /// drops it right after the last frame, or when the client goes away).
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        record: Option<Record>,
    }
}

impl<B> LoggedBody<B> {
    /// A body that logs nothing.
    fn unlogged(inner: B) -> Self {
        LoggedBody {
            inner,
            record: None,
        }
    }
}

impl<B: Body> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(record) = this.record.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        record.bytes += data.remaining() as u64;
                    }
                    // hyper stops polling once the body says it has ended.
                    record.completed = this.inner.is_end_stream();
                }
                None => record.completed = true,
                Some(Err(_)) => {}
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is known about one request; logged when dropped.
struct Record {
    start: Instant,
    method: Method,
    host: HostHandle,
    status: Option<StatusCode>,
    upstream: Option<Duration>,
    bytes: u64,
    completed: bool,
    /// Why the request failed, if it did.
    failure: Option<Failure>,
    /// What only the log line needs: `None` when the access log is off (`log.level` above
    /// `info`), so that a request then copies nothing for it.
    log: Option<Box<LogFacts>>,
}

/// The facts of a request only the access log line reads.
struct LogFacts {
    uri: Uri,
    host_header: Option<HeaderValue>,
    version: Version,
    user_agent: Option<HeaderValue>,
    client: Option<IpAddr>,
    tls: Option<&'static str>,
    request_id: Option<RequestIdValue>,
    span: Span,
    query: bool,
}

impl Record {
    fn new<B>(req: &Request<B>, metrics: &Metrics, query: bool) -> Self {
        let host_header = req.headers().get(header::HOST);
        let host = request_host(req.uri(), host_header);
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            metrics.host(&host.to_ascii_lowercase())
        } else {
            metrics.host(host)
        };
        let log = tracing::enabled!(target: TARGET, tracing::Level::INFO).then(|| {
            let conn = req.extensions().get::<ConnInfo>();
            Box::new(LogFacts {
                uri: req.uri().clone(),
                host_header: host_header.cloned(),
                version: req.version(),
                user_agent: req.headers().get(header::USER_AGENT).cloned(),
                client: conn.map(|c| c.client.ip()),
                tls: conn.and_then(|c| c.tls.as_ref()).map(|t| t.version),
                request_id: RequestIdValue::of(req),
                span: Span::current(),
                query,
            })
        });
        Record {
            start: Instant::now(),
            method: req.method().clone(),
            host,
            status: None,
            upstream: None,
            bytes: 0,
            completed: false,
            failure: None,
            log,
        }
    }

    /// The response head is ready.
    fn head(&mut self, status: StatusCode, upstream: Option<Duration>) {
        self.status = Some(status);
        self.upstream = upstream;
        self.host.request(&self.method, status);
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let duration = self.start.elapsed();
        let status = if let Some(s) = self.status {
            s.as_u16()
        } else {
            // The client left before the head: count it, or the requests counter would
            // silently miss it.
            let s = StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST);
            self.host.request(&self.method, s);
            let aborted = Failure {
                origin: ErrorOrigin::Client,
                kind: "client_aborted",
            };
            self.host.client_error(aborted.kind);
            self.failure = Some(aborted);
            CLIENT_CLOSED
        };
        self.host.request_duration(duration);
        if let Some(u) = self.upstream {
            self.host.upstream_duration(u);
        }
        let Some(log) = self.log.take() else {
            return;
        };
        let path = if log.query {
            log.uri.path_and_query().map_or("/", |pq| pq.as_str())
        } else {
            log.uri.path()
        };
        let host = request_host(&log.uri, log.host_header.as_ref());
        let user_agent = log.user_agent.as_ref().map(|v| lossy(v.as_bytes()));
        let version = version_str(log.version);
        let request_id = log.request_id.as_ref().map(RequestIdValue::as_str);
        let upstream_ms = self.upstream.map(millis);
        let origin = self.failure.map(|f| f.origin.as_str());
        let failure = self.failure.map(|f| f.kind);
        log.span.in_scope(|| {
            tracing::info!(
                target: TARGET,
                client = log.client.map(tracing::field::display),
                host,
                method = self.method.as_str(),
                path,
                status,
                bytes = self.bytes,
                duration_ms = millis(duration),
                upstream_ms,
                version,
                tls = log.tls,
                request_id,
                user_agent = user_agent.as_deref(),
                completed = self.completed,
                origin,
                failure,
                "request"
            );
        });
    }
}

/// Logs a request refused by the HTTP/1 parser before it reached the stack (an unparsable
/// request line or header: 400; a head over `server.max_header_bytes` or `server.max_headers`:
/// 431): a line like every request's, with what is known of it — no host, method or path,
/// since they could not be read — and `origin = "client"`, `failure`, `error`.
pub(crate) fn rejected(
    conn: &ConnInfo,
    status: u16,
    failure: &'static str,
    error: &(dyn std::error::Error + 'static),
) {
    tracing::info!(
        target: TARGET,
        client = %conn.client.ip(),
        status,
        bytes = 0u64,
        tls = conn.tls.as_ref().map(|t| t.version),
        completed = true,
        origin = ErrorOrigin::Client.as_str(),
        failure,
        error = %crate::error::chain(error),
        "request"
    );
}

/// The host a request is for, without a port: the URI's (HTTP/2 `:authority`, absolute-form),
/// else the `Host` header. Empty if neither is usable.
fn request_host<'a>(uri: &'a Uri, host_header: Option<&'a HeaderValue>) -> &'a str {
    if let Some(h) = uri.host() {
        return h;
    }
    let Some(raw) = host_header.and_then(|v| v.to_str().ok()) else {
        return "";
    };
    strip_port(raw)
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // IPv6 literal: `[::1]:8443` → `[::1]`.
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn lossy(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::io;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::{ServiceBuilder, ServiceExt};
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use crate::client::TlsInfo;
    use crate::forward::UpstreamBody;
    use crate::metrics::Snapshot;
    use crate::middleware::request_id::RequestIdLayer;

    /// Collects what the JSON formatter writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn subscriber(out: &Captured) -> impl tracing::Subscriber + Send + Sync + use<> {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(out.clone())
            .finish()
    }

    fn request(uri: &str, ua: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .method("POST")
            .uri(uri)
            .header("host", "URL1.example.com:8443");
        if let Some(ua) = ua {
            b = b.header("user-agent", ua);
        }
        let mut r = b.body(()).unwrap();
        let addr: SocketAddr = "192.0.2.9:5555".parse().unwrap();
        r.extensions_mut().insert(ConnInfo {
            client: addr,
            remote: addr,
            remote_trusted: false,
            peer: addr,
            local: "127.0.0.1:443".parse().unwrap(),
            tls: Some(TlsInfo {
                sni: Arc::from("url1.example.com"),
                version: "TLSv1.3",
                resumed: false,
            }),
        });
        r
    }

    async fn stub(_req: Request<()>) -> Result<Response<UpstreamBody<Full<Bytes>>>, Infallible> {
        let mut res = Response::new(UpstreamBody::new(
            Full::new(Bytes::from_static(b"hello world")),
            Duration::from_millis(7),
        ));
        *res.status_mut() = StatusCode::FOUND;
        Ok(res)
    }

    #[tokio::test]
    async fn one_line_per_request_with_every_field_after_the_body() {
        let out = Captured::default();
        let _guard = tracing::subscriber::set_default(subscriber(&out));
        let metrics = Metrics::new(["url1.example.com"]);
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .layer(AccessLogLayer::new(metrics.clone(), false))
            .service_fn(stub);
        let res = svc
            .oneshot(request(
                "/ls/click?upn=secret-token",
                Some("Mozilla/5.0 (X)"),
            ))
            .await
            .unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(
            out.lines().is_empty(),
            "nothing logged before the body is done"
        );
        // Counted when the head is ready.
        let text = metrics.render(&Snapshot::default());
        assert!(
            text.contains(
                r#"trackproxy_requests_total{host="url1.example.com",method="POST",status="3xx"} 1"#
            ),
            "{text}"
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello world");
        let lines = out.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["target"], TARGET);
        assert_eq!(l["message"], "request");
        assert_eq!(l["client"], "192.0.2.9");
        assert_eq!(l["host"], "URL1.example.com");
        assert_eq!(l["method"], "POST");
        assert_eq!(l["path"], "/ls/click", "no query by default");
        assert_eq!(l["status"], 302);
        assert_eq!(l["bytes"], 11);
        assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(l["upstream_ms"], 7.0);
        assert_eq!(l["version"], "HTTP/1.1");
        assert_eq!(l["tls"], "TLSv1.3");
        assert_eq!(l["request_id"], id.as_str());
        assert_eq!(l["span"]["request_id"], id.as_str());
        assert_eq!(l["user_agent"], "Mozilla/5.0 (X)");
        assert_eq!(l["completed"], true);
        assert!(l["timestamp"].is_string());
        assert!(!l.to_string().contains("secret-token"));
        metrics.upkeep();
        let text = metrics.render(&Snapshot::default());
        assert!(
            text.contains(
                r#"trackproxy_upstream_duration_seconds_count{host="url1.example.com"} 1"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn query_is_logged_only_when_enabled_and_absent_fields_are_left_out() {
        let out = Captured::default();
        let _guard = tracing::subscriber::set_default(subscriber(&out));
        let svc = ServiceBuilder::new()
            .layer(AccessLogLayer::new(
                Metrics::new(["url1.example.com"]),
                true,
            ))
            .service_fn(|_req: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            });
        let res = svc
            .oneshot(request("/wf/open?upn=tok%2Fen", None))
            .await
            .unwrap();
        drop(res);
        let l = &out.lines()[0];
        assert_eq!(l["path"], "/wf/open?upn=tok%2Fen");
        assert!(l.get("upstream_ms").is_none(), "{l}");
        assert!(l.get("user_agent").is_none(), "{l}");
        assert_eq!(l["bytes"], 0);
        assert_eq!(l["completed"], true, "an empty body is complete unpolled");
    }

    #[tokio::test]
    async fn a_client_leaving_early_is_logged_and_counted() {
        let out = Captured::default();
        let _guard = tracing::subscriber::set_default(subscriber(&out));
        let metrics = Metrics::new(["url1.example.com"]);
        // Before the head: the future is dropped.
        let mut svc = ServiceBuilder::new()
            .layer(AccessLogLayer::new(metrics.clone(), false))
            .service_fn(|_req: Request<()>| async {
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            });
        let fut = svc.call(request("/wf/click", None));
        drop(fut);
        // After the head, before the body: the body is dropped unread.
        let res = ServiceBuilder::new()
            .layer(AccessLogLayer::new(metrics.clone(), false))
            .service_fn(stub)
            .oneshot(request("/ls/click", None))
            .await
            .unwrap();
        drop(res);
        let lines = out.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["status"], 499);
        assert_eq!(lines[0]["completed"], false);
        assert_eq!(lines[1]["status"], 302);
        assert_eq!(lines[1]["completed"], false);
        assert_eq!(lines[1]["bytes"], 0);
        let text = metrics.render(&Snapshot::default());
        assert!(
            text.contains(
                r#"trackproxy_requests_total{host="url1.example.com",method="POST",status="4xx"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn hosts_without_ports() {
        assert_eq!(strip_port("a.example:8443"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        let uri: Uri = "https://b.example:9/x".parse().unwrap();
        assert_eq!(request_host(&uri, None), "b.example");
    }
}
