//! The admin listener (`admin.listen`, loopback by default): plain HTTP/1.1 for health checks
//! and Prometheus. Keep it off the public network — it is not rate limited and needs no
//! credentials.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | `200 ok`: the process is alive and serving this listener (liveness). |
//! | `GET /readyz` | `200 {"ready":true}` when the listeners are accepting and every configured host has a certificate; otherwise `503` with `{"ready":false,"reason":…}`: `starting`, `draining` (after SIGTERM, so the load balancer stops sending before the listeners close) or `certificate_missing` (with the `hosts` concerned). |
//! | `GET /metrics` | the Prometheus text exposition (version 0.0.4) of this proxy's metrics. |
//!
//! Anything else is `404`; methods other than GET and HEAD are `405`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info_span};

use crate::metrics::{Metrics, Snapshot};
use crate::tls::SniResolver;

/// Content type of the Prometheus text format.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Admin connections served at once; more are closed (the endpoint is for a few scrapers and
/// probes, not for traffic).
const MAX_CONNECTIONS: usize = 64;

/// Whether the proxy should get traffic: flipped by `serve` as it starts and when shutdown
/// begins.
#[derive(Debug, Default)]
pub(crate) struct Health {
    listening: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// The accept loops run.
    pub(crate) fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// Shutdown has begun: `/readyz` fails from now on.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    #[must_use]
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The readiness verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Send traffic.
    Ready,
    /// The accept loops are not running yet.
    Starting,
    /// Shutting down.
    Draining,
    /// These configured hosts have no certificate (yet).
    CertificateMissing(Vec<String>),
}

impl Readiness {
    /// The verdict for `hosts` served with `resolver`.
    #[must_use]
    pub(crate) fn check(health: &Health, hosts: &[String], resolver: &SniResolver) -> Self {
        if health.is_draining() {
            return Readiness::Draining;
        }
        if !health.listening.load(Ordering::Acquire) {
            return Readiness::Starting;
        }
        let missing: Vec<String> = hosts
            .iter()
            .filter(|h| !resolver.knows(h))
            .cloned()
            .collect();
        if missing.is_empty() {
            Readiness::Ready
        } else {
            Readiness::CertificateMissing(missing)
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let (status, body) = match self {
            Readiness::Ready => (StatusCode::OK, serde_json::json!({ "ready": true })),
            Readiness::Starting => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "ready": false, "reason": "starting" }),
            ),
            Readiness::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "ready": false, "reason": "draining" }),
            ),
            Readiness::CertificateMissing(hosts) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "ready": false,
                    "reason": "certificate_missing",
                    "hosts": hosts,
                }),
            ),
        };
        let mut text = body.to_string();
        text.push('\n');
        respond(status, "application/json", text)
    }
}

/// Everything the admin endpoints read.
pub(crate) struct AdminState {
    /// Start/drain state.
    pub health: Arc<Health>,
    /// The configured hosts (each needs a certificate to be ready); replaced on reload.
    pub hosts: arc_swap::ArcSwap<Vec<String>>,
    /// Where certificates are looked up.
    pub resolver: Arc<SniResolver>,
    /// This proxy's metrics.
    pub metrics: Metrics,
    /// Collects the values other parts own, at scrape time.
    pub snapshot: Box<dyn Fn() -> Snapshot + Send + Sync>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// Answers one admin request.
    #[must_use]
    pub(crate) fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut res = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "405 Method Not Allowed\n",
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        match req.uri().path() {
            "/healthz" => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok\n"),
            "/readyz" => {
                Readiness::check(&self.health, &self.hosts.load(), &self.resolver).response()
            }
            "/metrics" => {
                let text = self.metrics.render(&(self.snapshot)());
                respond(StatusCode::OK, PROMETHEUS_TEXT, text)
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "404 Not Found\n",
            ),
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Serves the admin endpoints on `listener` until `token` is cancelled; open connections are
/// then closed gracefully (a scraper's keep-alive connection does not hold up shutdown).
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let local = listener.local_addr().ok();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = token.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = token.cancelled() => break,
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "admin connection refused: too many open");
            continue;
        };
        let state = state.clone();
        let token = token.clone();
        tracker.spawn(
            async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let res = state.handle(&req);
                    async move { Ok::<_, Infallible>(res) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                let res = tokio::select! {
                    res = conn.as_mut() => res,
                    () = token.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = res {
                    debug!(error = %e, "admin connection closed");
                }
            }
            .instrument(info_span!("admin", %peer)),
        );
    }
    if local.is_none() {
        error!("admin listener had no local address");
    }
    debug!(listener = ?local, "admin listener closed");
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use http_body_util::BodyExt;

    use super::*;

    fn state(hosts: &[&str], with_cert: &[&str]) -> AdminState {
        let provider = crate::tls::provider();
        let mut certs = HashMap::new();
        for h in with_cert {
            let c = crate::tls::files::self_signed(&[(*h).to_owned()], &provider).unwrap();
            certs.insert((*h).to_owned(), c.key);
        }
        AdminState {
            health: Arc::new(Health::default()),
            hosts: arc_swap::ArcSwap::from_pointee(hosts.iter().map(|h| (*h).to_owned()).collect()),
            resolver: Arc::new(SniResolver::new(
                certs,
                crate::tls::acme::AcmeHosts::default(),
            )),
            metrics: Metrics::new(hosts.iter().copied()),
            snapshot: Box::new(Snapshot::default),
        }
    }

    async fn get(s: &AdminState, path: &str) -> (u16, String) {
        let res = s.handle(&Request::get(path).body(()).unwrap());
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_needs_listening_a_certificate_per_host_and_no_drain() {
        let s = state(&["a.example", "b.example"], &["a.example"]);
        assert_eq!(get(&s, "/healthz").await, (200, "ok\n".into()));
        let (status, body) = get(&s, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "{\"ready\":false,\"reason\":\"starting\"}\n");
        s.health.set_listening();
        let (status, body) = get(&s, "/readyz").await;
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["reason"], "certificate_missing");
        assert_eq!(v["hosts"], serde_json::json!(["b.example"]));

        let s = state(&["a.example"], &["a.example"]);
        s.health.set_listening();
        assert_eq!(get(&s, "/readyz").await, (200, "{\"ready\":true}\n".into()));
        s.health.start_draining();
        let (status, body) = get(&s, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("\"draining\""), "{body}");
        assert_eq!(
            get(&s, "/healthz").await.0,
            200,
            "still alive while draining"
        );
    }

    #[tokio::test]
    async fn metrics_unknown_paths_and_methods() {
        let s = state(&["a.example"], &["a.example"]);
        let res = s.handle(&Request::get("/metrics").body(()).unwrap());
        assert_eq!(res.headers()[header::CONTENT_TYPE], PROMETHEUS_TEXT);
        let (status, body) = get(&s, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("# TYPE trackproxy_tls_handshakes_total counter"),
            "{body}"
        );
        assert_eq!(get(&s, "/nope").await.0, 404);
        let res = s.handle(&Request::post("/readyz").body(()).unwrap());
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
