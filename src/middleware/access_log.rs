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
//! Nothing is formatted for the log before the response is done: the facts are kept as the
//! (reference-counted) header values and URI the request already has. With the access log off
//! (`log.level` above `info`) they are not even kept: only what the metrics need is. With the
//! JSON log (the default), the line is then written by [`Line::write_json`] into a reused
//! per-thread buffer and handed to the log sink (`crate::logging`): the same text `tracing`'s
//! JSON formatter would make, without its per-field machinery and with no allocation. The
//! human-readable format goes through `tracing`.

use std::cell::RefCell;
use std::future::Future;
use std::io::Write;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
use crate::logging;
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
    /// `info`), so that a request then copies nothing for it. Inline, not boxed: no
    /// allocation per request for the log.
    log: Option<LogFacts>,
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
    /// The request span, to log in through `tracing` (human-readable format only).
    span: Option<Span>,
    /// Whether the request span is on (the JSON line then carries its `span` object).
    in_request_span: bool,
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
            // The JSON line is written without `tracing` and names the span itself; only the
            // `tracing` path needs a handle on it.
            let (span, in_request_span) = if logging::json_sink().is_some() {
                (None, request_span_is_current())
            } else {
                (Some(Span::current()), false)
            };
            LogFacts {
                uri: req.uri().clone(),
                host_header: host_header.cloned(),
                version: req.version(),
                user_agent: req.headers().get(header::USER_AGENT).cloned(),
                client: conn.map(|c| c.client.ip()),
                tls: conn.and_then(|c| c.tls.as_ref()).map(|t| t.version),
                request_id: RequestIdValue::of(req),
                span,
                in_request_span,
                query,
            }
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
        let line = Line {
            client: log.client,
            host: Some(request_host(&log.uri, log.host_header.as_ref())),
            method: Some(self.method.as_str()),
            path: Some(path),
            status,
            bytes: self.bytes,
            duration: Some(duration),
            upstream: self.upstream,
            version: Some(log.version),
            tls: log.tls,
            request_id: log.request_id.as_ref().map(RequestIdValue::as_str),
            user_agent: log.user_agent.as_ref().map(HeaderValue::as_bytes),
            completed: self.completed,
            origin: self.failure.map(|f| f.origin.as_str()),
            failure: self.failure.map(|f| f.kind),
            error: None,
            in_request_span: log.in_request_span,
        };
        match &log.span {
            Some(span) => span.in_scope(|| line.emit()),
            None => line.emit(),
        }
    }
}

/// Whether the current span is the `request` span of [`RequestId`](super::request_id):
/// read from the dispatcher without taking a handle on the span (which would cost a reference
/// count in the span registry both ways).
fn request_span_is_current() -> bool {
    tracing::dispatcher::get_default(|d| {
        d.current_span()
            .metadata()
            .is_some_and(|m| m.name() == REQUEST_SPAN && m.target() == REQUEST_SPAN_TARGET)
    })
}

/// The name and target of the request span (`tracing::debug_span!("request", …)` in
/// `request_id`).
const REQUEST_SPAN: &str = "request";
const REQUEST_SPAN_TARGET: &str = "trackproxy::middleware::request_id";

/// One access-log line: what a request left, borrowed. [`Line::emit`] logs it. Requests that
/// never reached the stack (hyper refused them) can be logged by building one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line<'a> {
    /// Client IP (`client`).
    pub client: Option<IpAddr>,
    /// Host without port (`host`); `None` (absent) for a request that could not be read.
    pub host: Option<&'a str>,
    /// `method`; `None` as for `host`.
    pub method: Option<&'a str>,
    /// `path`, with the query only if `log.query`; `None` as for `host`.
    pub path: Option<&'a str>,
    /// Status sent (`status`).
    pub status: u16,
    /// Response body bytes (`bytes`).
    pub bytes: u64,
    /// Request head to the end of the body (`duration_ms`; absent when `None`).
    pub duration: Option<Duration>,
    /// Until the upstream's response head (`upstream_ms`, absent when `None`).
    pub upstream: Option<Duration>,
    /// `version` (absent when `None`).
    pub version: Option<Version>,
    /// `tls` (absent on plain HTTP).
    pub tls: Option<&'static str>,
    /// `request_id` (absent when `None`).
    pub request_id: Option<&'a str>,
    /// `user_agent` (absent when `None`; not UTF-8 → U+FFFD).
    pub user_agent: Option<&'a [u8]>,
    /// `completed`.
    pub completed: bool,
    /// Whose fault a failed request was (`origin`: `client`, `upstream`, `proxy`).
    pub origin: Option<&'static str>,
    /// Why it failed (`failure`, a stable name).
    pub failure: Option<&'static str>,
    /// The error with its causes (`error`), for requests refused before the stack.
    pub error: Option<&'a str>,
    /// Whether it is logged in the request span: the JSON line then carries
    /// `"span":{"request_id":…,"name":"request"}`, as `tracing`'s JSON formatter would.
    pub in_request_span: bool,
}

thread_local! {
    /// Each thread's line buffer and cached timestamp second: no allocation per line.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    line: Vec<u8>,
    /// The Unix second `prefix` was made for.
    second: Option<u64>,
    /// `"YYYY-MM-DDTHH:MM:SS.`
    prefix: [u8; 20],
}

impl Line<'_> {
    /// Logs the line: written straight into the log sink when the JSON log is on (the same
    /// text `tracing`'s JSON formatter makes of [`Line::event`]); else a `tracing` event, in
    /// whatever span is current.
    pub(crate) fn emit(&self) {
        let Some(sink) = logging::json_sink() else {
            self.event();
            return;
        };
        let now = SystemTime::now();
        let written = SCRATCH.try_with(|s| {
            let mut s = s.borrow_mut();
            let s = &mut *s;
            s.line.clear();
            self.write_json(now, &mut s.second, &mut s.prefix, &mut s.line);
            sink.write_line(&s.line);
        });
        if written.is_err() {
            // The thread is exiting (its thread-locals are gone): a buffer of its own.
            let mut line = Vec::with_capacity(512);
            self.write_json(now, &mut None, &mut [0; 20], &mut line);
            sink.write_line(&line);
        }
    }

    /// The line as a `tracing` event (target [`TARGET`], message `request`).
    fn event(&self) {
        let user_agent = self.user_agent.map(String::from_utf8_lossy);
        tracing::info!(
            target: TARGET,
            client = self.client.map(tracing::field::display),
            host = self.host,
            method = self.method,
            path = self.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.duration.map(millis),
            upstream_ms = self.upstream.map(millis),
            version = self.version.map(version_str),
            tls = self.tls,
            request_id = self.request_id,
            user_agent = user_agent.as_deref(),
            completed = self.completed,
            origin = self.origin,
            failure = self.failure,
            error = self.error,
            "request"
        );
    }

    /// The JSON line, `\n` included, as `tracing`'s JSON formatter writes [`Line::event`]
    /// (flattened, with the current span): the same keys in the same order, the same number
    /// and string formats (`serde_json`'s). `second`/`prefix` cache the timestamp's date and
    /// time of day.
    fn write_json(
        &self,
        now: SystemTime,
        second: &mut Option<u64>,
        prefix: &mut [u8; 20],
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(br#"{"timestamp":""#);
        timestamp(now, second, prefix, out);
        out.extend_from_slice(br#"","level":"INFO","message":"request""#);
        if let Some(ip) = self.client {
            out.extend_from_slice(br#","client":""#);
            // An address's text needs no escaping.
            match ip {
                IpAddr::V4(v4) => {
                    for (i, octet) in v4.octets().into_iter().enumerate() {
                        if i > 0 {
                            out.push(b'.');
                        }
                        decimal(out, u64::from(octet));
                    }
                }
                IpAddr::V6(v6) => {
                    let _ = write!(out, "{v6}");
                }
            }
            out.push(b'"');
        }
        for (key, value) in [
            (&br#","host":"#[..], self.host),
            (br#","method":"#, self.method),
            (br#","path":"#, self.path),
        ] {
            if let Some(v) = value {
                out.extend_from_slice(key);
                logging::json_str(out, v);
            }
        }
        out.extend_from_slice(br#","status":"#);
        decimal(out, u64::from(self.status));
        out.extend_from_slice(br#","bytes":"#);
        decimal(out, self.bytes);
        if let Some(d) = self.duration {
            out.extend_from_slice(br#","duration_ms":"#);
            json(out, millis(d));
        }
        if let Some(u) = self.upstream {
            out.extend_from_slice(br#","upstream_ms":"#);
            json(out, millis(u));
        }
        if let Some(v) = self.version {
            out.extend_from_slice(br#","version":"#);
            logging::json_str(out, version_str(v));
        }
        if let Some(tls) = self.tls {
            out.extend_from_slice(br#","tls":"#);
            logging::json_str(out, tls);
        }
        if let Some(id) = self.request_id {
            out.extend_from_slice(br#","request_id":"#);
            logging::json_str(out, id);
        }
        if let Some(ua) = self.user_agent {
            out.extend_from_slice(br#","user_agent":"#);
            // Valid UTF-8 (nearly always ASCII) is checked fast; anything else gets U+FFFD.
            match std::str::from_utf8(ua) {
                Ok(ua) => logging::json_str(out, ua),
                Err(_) => logging::json_str(out, &String::from_utf8_lossy(ua)),
            }
        }
        out.extend_from_slice(if self.completed {
            br#","completed":true"#
        } else {
            br#","completed":false"#
        });
        for (key, value) in [
            (&br#","origin":"#[..], self.origin),
            (br#","failure":"#, self.failure),
            (br#","error":"#, self.error),
        ] {
            if let Some(v) = value {
                out.extend_from_slice(key);
                logging::json_str(out, v);
            }
        }
        out.extend_from_slice(br#","target":"trackproxy::access""#);
        if self.in_request_span {
            out.extend_from_slice(br#","span":{"request_id":"#);
            logging::json_str(out, self.request_id.unwrap_or(""));
            out.extend_from_slice(br#","name":"request"}"#);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Appends a float as `serde_json` writes it, as `tracing`'s JSON formatter does (shortest
/// round-trip, non-finite `null`).
fn json(out: &mut Vec<u8>, v: f64) {
    use serde_json::ser::Formatter as _;
    // Writing into a Vec cannot fail.
    let _ = if v.is_finite() {
        serde_json::ser::CompactFormatter.write_f64(out, v)
    } else {
        serde_json::ser::CompactFormatter.write_null(out)
    };
}

/// Appends `n` in decimal.
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        // Below 10 by construction.
        digits[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// RFC 3339 UTC with microseconds, as `tracing-subscriber` writes it:
/// `2026-05-04T09:12:01.123456Z`. The part up to the second is made once per second.
fn timestamp(now: SystemTime, second: &mut Option<u64>, prefix: &mut [u8; 20], out: &mut Vec<u8>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    if *second != Some(secs) {
        let t = i64::try_from(secs)
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let mut p = Vec::with_capacity(20);
        let _ = write!(
            p,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        if let Ok(p) = <[u8; 20]>::try_from(p.as_slice()) {
            *prefix = p;
            *second = Some(secs);
        } else {
            // A year past 9999: not cached.
            out.extend_from_slice(&p);
            let _ = write!(out, "{:06}Z", since.subsec_micros());
            return;
        }
    }
    out.extend_from_slice(prefix);
    let mut micros = since.subsec_micros();
    let mut digits = [b'0'; 7];
    digits[6] = b'Z';
    for d in digits[..6].iter_mut().rev() {
        // Below 10 by construction.
        *d = b'0' + u8::try_from(micros % 10).unwrap_or(0);
        micros /= 10;
    }
    out.extend_from_slice(&digits);
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
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let error = crate::error::chain(error);
    Line {
        client: Some(conn.client.ip()),
        host: None,
        method: None,
        path: None,
        status,
        bytes: 0,
        duration: None,
        upstream: None,
        version: None,
        tls: conn.tls.as_ref().map(|t| t.version),
        request_id: None,
        user_agent: None,
        completed: true,
        origin: Some(ErrorOrigin::Client.as_str()),
        failure: Some(failure),
        error: Some(&error),
        in_request_span: false,
    }
    .emit();
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

    /// The JSON formatter at `debug` (where the request span is built).
    fn subscriber(out: &Captured) -> impl tracing::Subscriber + Send + Sync + use<> {
        subscriber_at(out, tracing::Level::DEBUG)
    }

    fn subscriber_at(
        out: &Captured,
        level: tracing::Level,
    ) -> impl tracing::Subscriber + Send + Sync + use<> {
        tracing_subscriber::fmt()
            .with_max_level(level)
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

    /// At the default level no request span is built; the line still carries the id.
    #[tokio::test]
    async fn at_info_the_line_has_the_request_id_and_no_span() {
        let out = Captured::default();
        let _guard = tracing::subscriber::set_default(subscriber_at(&out, tracing::Level::INFO));
        let metrics = Metrics::new(["url1.example.com"]);
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .layer(AccessLogLayer::new(metrics, false))
            .service_fn(stub);
        let res = svc.oneshot(request("/wf/open", None)).await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        res.into_body().collect().await.unwrap();
        let lines = out.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["request_id"], id.as_str());
        assert!(lines[0].get("span").is_none(), "{}", lines[0]);
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

    fn line<'a>(ua: Option<&'a [u8]>, id: Option<&'a str>) -> Line<'a> {
        Line {
            client: Some("2001:db8::7".parse().unwrap()),
            host: Some("url1.example.com"),
            method: Some("GET"),
            path: Some("/ls/click"),
            status: 302,
            bytes: 51,
            duration: Some(Duration::from_nanos(41_234_567)),
            upstream: Some(Duration::from_millis(7)),
            version: Some(Version::HTTP_2),
            tls: Some("TLSv1.3"),
            request_id: id,
            user_agent: ua,
            completed: true,
            origin: None,
            failure: None,
            error: None,
            in_request_span: id.is_some(),
        }
    }

    /// What the direct writer makes of `l`, and what `tracing`'s JSON formatter makes of it
    /// (in the request span when `l.in_request_span`), both without the timestamp value.
    fn both_ways(l: &Line<'_>) -> (String, String) {
        let out = Captured::default();
        let _guard = tracing::subscriber::set_default(subscriber(&out));
        if l.in_request_span {
            let span = tracing::info_span!(
                target: REQUEST_SPAN_TARGET,
                "request",
                request_id = l.request_id.unwrap_or("")
            );
            span.in_scope(|| {
                assert!(request_span_is_current());
                l.event();
            });
        } else {
            assert!(!request_span_is_current());
            l.event();
        }
        let traced = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let mut direct = Vec::new();
        l.write_json(SystemTime::now(), &mut None, &mut [0; 20], &mut direct);
        let direct = String::from_utf8(direct).unwrap();
        // `{"timestamp":"2026-05-04T09:12:01.123456Z",`: the same length both ways.
        let cut = r#"{"timestamp":"2026-05-04T09:12:01.123456Z""#.len();
        assert_eq!(&traced[..14], r#"{"timestamp":""#);
        assert_eq!(&direct[..14], r#"{"timestamp":""#);
        (traced[cut..].to_owned(), direct[cut..].to_owned())
    }

    #[test]
    fn the_direct_json_line_is_the_tracing_line_byte_for_byte() {
        let awkward = "Mozilla/5.0 \"quoted\" back\\slash\ttab é \u{1}\u{8}\u{c}\n\r\u{1f} and a long clean run after it, longer than 16 bytes \"".as_bytes().to_vec();
        let mut invalid = b"bad utf-8 \xff\xfe end".to_vec();
        invalid.push(0x7f);
        let cases = [
            line(
                Some(b"Mozilla/5.0 (X11; Linux x86_64)"),
                Some("5e1f0c2a9b7d4e3f"),
            ),
            line(Some(&awkward), Some("client-id-42")),
            line(Some(&invalid), None),
            Line {
                client: None,
                upstream: None,
                tls: None,
                user_agent: None,
                request_id: None,
                in_request_span: false,
                duration: Some(Duration::ZERO),
                version: Some(Version::HTTP_11),
                status: 499,
                completed: false,
                bytes: u64::MAX,
                method: Some("PROPFIND"),
                path: Some("/wf/open?upn=a%22b"),
                origin: Some("client"),
                failure: Some("client_aborted"),
                ..line(None, None)
            },
            // A request refused before the stack: no host, method, path, duration or version.
            Line {
                host: None,
                method: None,
                path: None,
                duration: None,
                version: None,
                upstream: None,
                bytes: 0,
                status: 431,
                origin: Some("client"),
                failure: Some("header_too_large"),
                error: Some("message head is too large: \"quoted\""),
                ..line(None, None)
            },
            Line {
                client: Some("198.51.100.7".parse().unwrap()),
                ..line(Some(b"ua"), Some("v4"))
            },
            Line {
                client: Some("0.0.0.0".parse().unwrap()),
                ..line(None, None)
            },
            Line {
                client: Some("255.255.255.255".parse().unwrap()),
                status: 0,
                bytes: 1_000_000_007,
                ..line(None, None)
            },
            Line {
                duration: Some(Duration::from_secs(3600 * 24)),
                upstream: Some(Duration::from_nanos(1)),
                ..line(None, Some("x"))
            },
        ];
        for l in &cases {
            let (traced, direct) = both_ways(l);
            assert_eq!(direct, traced, "{l:?}");
            assert!(direct.ends_with("}\n"));
            let mut full = Vec::new();
            l.write_json(SystemTime::now(), &mut None, &mut [0; 20], &mut full);
            let v: serde_json::Value = serde_json::from_slice(&full).unwrap();
            assert_eq!(v["status"], l.status);
            assert_eq!(v["path"].as_str(), l.path);
        }
        let (_, direct) = both_ways(&cases[1]);
        assert!(direct.contains(r#""user_agent":"Mozilla/5.0 \"quoted\" back\\slash\ttab é \u0001\b\f\n\r\u001f and"#), "{direct}");
        assert!(
            direct.contains(r#""span":{"request_id":"client-id-42","name":"request"}"#),
            "{direct}"
        );
        let (_, direct) = both_ways(&cases[2]);
        assert!(
            direct.contains("bad utf-8 \u{fffd}\u{fffd} end\u{7f}"),
            "{direct}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let (mut second, mut prefix, mut out) = (None, [0; 20], Vec::new());
        timestamp(t, &mut second, &mut prefix, &mut out);
        assert_eq!(out, b"2023-11-14T22:13:20.123456Z");
        // The cached second, then the next one.
        out.clear();
        timestamp(
            t + Duration::from_micros(5),
            &mut second,
            &mut prefix,
            &mut out,
        );
        assert_eq!(out, b"2023-11-14T22:13:20.123461Z");
        out.clear();
        timestamp(
            t + Duration::from_secs(40),
            &mut second,
            &mut prefix,
            &mut out,
        );
        assert_eq!(out, b"2023-11-14T22:14:00.123456Z");
        out.clear();
        timestamp(
            UNIX_EPOCH + Duration::from_secs(951_782_400),
            &mut second,
            &mut prefix,
            &mut out,
        );
        assert_eq!(out, b"2000-02-29T00:00:00.000000Z");
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
