//! Load shedding: at most `limits.max_in_flight` requests are served at once; the next one is
//! answered 503 at once ([`ProxyError::Overloaded`]) instead of waiting in a queue that grows
//! while the upstream is slow.
//!
//! Why not tower's `LoadShed` + `ConcurrencyLimit`: the stack is cloned for every request
//! (hyper calls a fresh clone per request), and each `ConcurrencyLimit` clone allocates a new
//! boxed acquire future; both also turn errors into `BoxError`, which the rescue layer would
//! have to downcast back. A `try_acquire` on one shared semaphore does the same job with one
//! atomic operation and keeps the error typed.
//!
//! A request holds its slot until its response head is ready: tracking responses are a few
//! hundred bytes, so the head is where the time goes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::error::ProxyError;

/// The shared in-flight budget.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    permits: Arc<Semaphore>,
    max: usize,
}

impl InFlight {
    /// Room for `max` requests at once (at least 1).
    #[must_use]
    pub(crate) fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        InFlight {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Requests being served now.
    #[must_use]
    pub(crate) fn current(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }
}

/// Layer of [`LoadShed`].
#[derive(Debug, Clone)]
pub(crate) struct LoadShedLayer {
    in_flight: InFlight,
}

impl LoadShedLayer {
    /// A layer admitting requests within `in_flight`.
    #[must_use]
    pub(crate) fn new(in_flight: InFlight) -> Self {
        LoadShedLayer { in_flight }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            permits: self.in_flight.permits.clone(),
        }
    }
}

/// Admits a request if a slot is free, else fails it with [`ProxyError::Overloaded`].
#[derive(Debug, Clone)]
pub(crate) struct LoadShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B, ResB> Service<Request<B>> for LoadShed<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = ProxyError>,
{
    type Response = Response<ResB>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => ResponseFuture {
                state: State::Admitted {
                    inner: self.inner.call(req),
                    permit: Some(permit),
                },
            },
            Err(_) => ResponseFuture { state: State::Shed },
        }
    }
}

pin_project! {
    /// Response future of [`LoadShed`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Holds the slot until the inner future is done.
        Admitted { #[pin] inner: F, permit: Option<OwnedSemaphorePermit> },
        Shed,
    }
}

impl<F, ResB> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, ProxyError>>,
{
    type Output = Result<Response<ResB>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner, permit } => {
                let res = ready!(inner.poll(cx));
                drop(permit.take());
                Poll::Ready(res)
            }
            StateProj::Shed => Poll::Ready(Err(ProxyError::Overloaded)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    #[tokio::test]
    async fn requests_past_the_limit_fail_at_once_and_slots_come_back() {
        let in_flight = InFlight::new(2);
        let svc = ServiceBuilder::new()
            .layer(LoadShedLayer::new(in_flight.clone()))
            .service_fn(|req: Request<Option<oneshot::Receiver<()>>>| async move {
                if let Some(rx) = req.into_body() {
                    let _ = rx.await;
                }
                Ok::<_, ProxyError>(Response::new(()))
            });
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let mut first = tokio::spawn(svc.clone().oneshot(Request::new(Some(rx1))));
        let second = tokio::spawn(svc.clone().oneshot(Request::new(Some(rx2))));
        while in_flight.current() < 2 {
            tokio::task::yield_now().await;
        }
        // Full: the third fails without waiting (the other two are blocked indefinitely).
        let third = svc.clone().oneshot(Request::new(None)).await;
        assert!(matches!(third, Err(ProxyError::Overloaded)), "{third:?}");
        assert!(futures_poll_pending(&mut first).await);
        tx1.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(in_flight.current(), 1);
        assert!(svc.clone().oneshot(Request::new(None)).await.is_ok());
        tx2.send(()).unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(in_flight.current(), 0);
    }

    /// Whether a spawned task is still running after the runtime had a chance to run it.
    async fn futures_poll_pending<T>(h: &mut tokio::task::JoinHandle<T>) -> bool {
        tokio::task::yield_now().await;
        !h.is_finished()
    }
}
