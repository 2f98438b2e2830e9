//! The tower stack every request passes through. [`stack`] is the **only** place layers are
//! ordered; each line says why it sits where it does.
//!
//! - [`request_id`]: keeps or assigns `X-Request-Id`; the `request` span.
//! - [`access_log`]: one log event per request, and the request metrics.
//! - [`rate_limit`]: the per-client token buckets (429).
//! - [`load_shed`]: the in-flight limit (503).
//! - [`Rescue`] (here): every [`ProxyError`] becomes its response.

pub(crate) mod access_log;
pub(crate) mod request_id;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceBuilder};
use tracing::{debug, warn};

use crate::error::{ErrorOrigin, Failure, ProxyError};
use crate::forward::{Forward, ForwardBody, local_response};
use crate::limits::in_flight::{InFlight, LoadShed, LoadShedLayer};
use crate::limits::rate::{ClientLimiter, RateLimit, RateLimitLayer};
use crate::metrics::Metrics;
use access_log::{AccessLog, AccessLogLayer, LoggedBody};
use request_id::{RequestId, RequestIdLayer, RequestIdValue};

/// The body of every response a connection sends.
pub(crate) type ResponseBody = LoggedBody<ForwardBody>;

/// The service a connection serves: never fails, every error is already a response.
///
/// A concrete type rather than a boxed service: cloning it per request (as the server does)
/// only bumps reference counts, and its response future is one value on the connection's
/// stack instead of a heap allocation per request.
pub(crate) type HttpService = RequestId<AccessLog<Rescue<RateLimit<LoadShed<Forward>>>>>;

/// What the stack shares with the rest of the proxy (the admin endpoint reads the limiter and
/// the in-flight count; the maintenance task evicts stale rate-limit state).
#[derive(Debug, Clone)]
pub(crate) struct StackState {
    /// Metrics of this proxy.
    pub metrics: Metrics,
    /// Per-client token buckets.
    pub limiter: Arc<ClientLimiter>,
    /// The in-flight budget.
    pub in_flight: InFlight,
    /// Whether access logs keep query strings (`log.query`).
    pub log_query: bool,
}

/// Builds the stack around the forwarder. Outermost first.
pub(crate) fn stack(forward: Forward, state: &StackState) -> HttpService {
    ServiceBuilder::new()
        // First, so that the id is on the request before anything logs, every log line of the
        // request (the access log, the rescue's error lines) is in its span, and every
        // response — synthetic ones included — carries it back.
        .layer(RequestIdLayer::new())
        // Outside the rescue layer: sees the final status of every request, 429s and 503s
        // included, and the body as it is sent.
        .layer(AccessLogLayer::new(state.metrics.clone(), state.log_query))
        // Turns every ProxyError into its status and a short body, logs it with its whole
        // error chain and counts it; from here outwards the service cannot fail.
        .layer(RescueLayer::new(state.metrics.clone()))
        // Cheapest rejection first, before a request takes an in-flight slot or any upstream
        // work: one noisy client cannot fill the in-flight budget.
        .layer(RateLimitLayer::new(state.limiter.clone()))
        // Innermost limit, right around the forwarder: fail fast instead of queueing once
        // max_in_flight requests wait for upstreams.
        .layer(LoadShedLayer::new(state.in_flight.clone()))
        .service(forward)
}

/// Layer of [`Rescue`].
#[derive(Debug, Clone)]
pub(crate) struct RescueLayer {
    metrics: Metrics,
}

impl RescueLayer {
    /// A layer counting errors in `metrics`.
    #[must_use]
    pub(crate) fn new(metrics: Metrics) -> Self {
        RescueLayer { metrics }
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Maps [`ProxyError`] to a response: short generic body to the client, the full error chain
/// to the log (client faults and capacity limits at `debug`, upstream faults at `warn`), and a
/// count in the metrics.
#[derive(Debug, Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<ForwardBody>, Error = ProxyError>,
{
    type Response = Response<ForwardBody>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The forwarder is always ready; an error here would be a bug in an inner layer, and
        // is reported per request instead.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A reference-counted copy of the id `RequestId` put on the request, kept for the log
        // line of a failure.
        let id = RequestIdValue::of(&req);
        RescueFuture {
            inner: self.inner.call(req),
            metrics: self.metrics.clone(),
            id,
        }
    }
}

pin_project! {
    /// Response future of [`Rescue`].
    pub struct RescueFuture<F> {
        #[pin]
        inner: F,
        metrics: Metrics,
        id: Option<RequestIdValue>,
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<ForwardBody>, ProxyError>>,
{
    type Output = Result<Response<ForwardBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(res) => res,
            Err(e) => {
                this.metrics.request_error(&e);
                rescue(&e, this.id.as_ref())
            }
        }))
    }
}

/// The response for an error, logged (with the request id, so the line can be found even when
/// `log.level` leaves out the request span).
#[must_use]
pub(crate) fn rescue(e: &ProxyError, id: Option<&RequestIdValue>) -> Response<ForwardBody> {
    let status = e.status();
    let request_id = id.map(RequestIdValue::as_str);
    match e.origin() {
        ErrorOrigin::Client | ErrorOrigin::Proxy => {
            // Per-request lines for 429/503 would grow with the very load they refuse; the
            // metrics count them.
            debug!(status = status.as_u16(), failure = e.kind(), request_id, error = %crate::error::chain(e), "request refused");
        }
        ErrorOrigin::Upstream => {
            warn!(status = status.as_u16(), failure = e.kind(), request_id, error = %crate::error::chain(e), "upstream failed");
        }
    }
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut res = local_response(status, format!("{} {reason}\n", status.as_u16()));
    // For the access log line (an allocation on error responses only).
    res.extensions_mut().insert(Failure {
        origin: e.origin(),
        kind: e.kind(),
    });
    if let Some(secs) = e.retry_after_secs() {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;

    use super::*;
    use crate::metrics::Snapshot;

    #[tokio::test]
    async fn errors_become_responses_and_are_counted() {
        let metrics = Metrics::new(["a.example"]);
        let cases = [
            (
                ProxyError::RateLimited {
                    retry_after: Duration::from_millis(1200),
                },
                429,
                Some("2"),
            ),
            (
                ProxyError::RateLimited {
                    retry_after: Duration::from_millis(10),
                },
                429,
                Some("1"),
            ),
            (ProxyError::Overloaded, 503, None),
        ];
        for (err, status, retry_after) in cases {
            let err = std::sync::Mutex::new(Some(err));
            let res = ServiceBuilder::new()
                .layer(RescueLayer::new(metrics.clone()))
                .service_fn(|_req: Request<()>| {
                    let e = err.lock().unwrap().take().unwrap();
                    async move { Err::<Response<ForwardBody>, _>(e) }
                })
                .oneshot(Request::new(()))
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), status);
            assert_eq!(
                res.headers()
                    .get(header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap()),
                retry_after
            );
        }
        let text = metrics.render(&Snapshot::default());
        assert!(text.contains("trackproxy_rate_limited_total 2"), "{text}");
        assert!(text.contains("trackproxy_requests_shed_total 1"), "{text}");
    }
}
