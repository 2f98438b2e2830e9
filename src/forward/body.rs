//! The body of every response trackproxy sends: the upstream's, streamed, with how long its
//! head took to arrive, or a short local one.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;

use super::upstream::PooledBody;

/// Body of every response trackproxy sends: the upstream's, streamed, or a short local one.
pub(crate) type ForwardBody = Either<UpstreamBody<PooledBody>, Full<Bytes>>;

pin_project! {
    /// The body of a response that came from an upstream, with how long the upstream took to
    /// send its response head (the access log and the latency histogram read it). Carried by
    /// the body rather than the response's extensions, which would cost two allocations per
    /// request.
    #[derive(Debug)]
    pub struct UpstreamBody<B> {
        #[pin]
        body: B,
        timing: Duration,
    }
}

impl<B> UpstreamBody<B> {
    /// `body`, whose response head took `timing` to arrive.
    pub(crate) fn new(body: B, timing: Duration) -> Self {
        UpstreamBody { body, timing }
    }
}

impl<B: Body> Body for UpstreamBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How long the upstream took to send the response head, for bodies that came from one.
pub(crate) trait UpstreamTiming {
    /// `None` for local answers.
    fn upstream_timing(&self) -> Option<Duration>;
}

impl<B> UpstreamTiming for UpstreamBody<B> {
    fn upstream_timing(&self) -> Option<Duration> {
        Some(self.timing)
    }
}

impl UpstreamTiming for Full<Bytes> {
    fn upstream_timing(&self) -> Option<Duration> {
        None
    }
}

impl<L: UpstreamTiming, R: UpstreamTiming> UpstreamTiming for Either<L, R> {
    fn upstream_timing(&self) -> Option<Duration> {
        match self {
            Either::Left(b) => b.upstream_timing(),
            Either::Right(b) => b.upstream_timing(),
        }
    }
}
