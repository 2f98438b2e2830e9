//! The tower stack every request passes through. [`stack`] is the **only** place layers are
//! ordered; each line says why it sits where it does.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder};
use tracing::{debug, warn};

use crate::error::{ErrorOrigin, ProxyError};
use crate::proxy::{Forward, ProxyBody, local_response};

/// The service a connection serves: never fails, every error is already a response.
pub type HttpService = BoxCloneSyncService<Request<Incoming>, Response<ProxyBody>, Infallible>;

/// Builds the stack around the forwarder. Outermost first.
pub fn stack(forward: Forward) -> HttpService {
    let svc = ServiceBuilder::new()
        // Turns every ProxyError into its status and a short body, and logs it with its whole
        // error chain; from here outwards the service cannot fail.
        .layer(RescueLayer)
        .service(forward);
    BoxCloneSyncService::new(svc)
}

/// Layer of [`Rescue`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RescueLayer;

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rescue { inner }
    }
}

/// Maps [`ProxyError`] to a response: short generic body to the client, the full error chain
/// to the log (client faults at `debug`, upstream faults at `warn`).
#[derive(Debug, Clone)]
pub struct Rescue<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The forwarder is always ready; an error here would be a bug in an inner layer, and
        // is reported per request instead.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(res) => Ok(res),
                Err(e) => Ok(rescue(&e)),
            }
        })
    }
}

/// The response for an error, logged.
#[must_use]
pub fn rescue(e: &ProxyError) -> Response<ProxyBody> {
    let status = e.status();
    let error = crate::error::chain(e);
    match e.origin() {
        ErrorOrigin::Client => {
            debug!(status = status.as_u16(), failure = e.kind(), %error, "request refused");
        }
        ErrorOrigin::Upstream => {
            warn!(status = status.as_u16(), failure = e.kind(), %error, "upstream failed");
        }
    }
    let reason = status.canonical_reason().unwrap_or("Error");
    local_response(status, format!("{} {reason}\n", status.as_u16()))
}
