//! Request ids: every request carries an `X-Request-Id`. A sane one from the client is kept
//! (so an id set by a load balancer in front follows the request through); anything else is
//! replaced by a fresh one. The id goes to the upstream, back to the client, and (at
//! `log.level = "debug"`) into a `request` span that every log line of the request is recorded
//! in.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;

/// `X-Request-Id`.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept. Longer ones are replaced: ids end up in every log line.
pub(crate) const MAX_LEN: usize = 128;

/// The id of a request: its one `X-Request-Id` header once [`RequestId`] has run.
///
/// Read from the header rather than kept in the request's extensions: inner layers see exactly
/// one sane `X-Request-Id`, and a header value is reference-counted, so taking a copy costs
/// no allocation (an extension would cost one per request).
#[derive(Debug, Clone)]
pub(crate) struct RequestIdValue(HeaderValue);

impl RequestIdValue {
    /// The id of `req` (`None` outside [`RequestId`] when the client sent none).
    #[must_use]
    pub(crate) fn of<B>(req: &Request<B>) -> Option<Self> {
        req.headers().get(X_REQUEST_ID).cloned().map(RequestIdValue)
    }

    /// The id as text (always ASCII).
    #[must_use]
    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

/// Whether a client's id is kept: 1 to [`MAX_LEN`] characters from `A-Z a-z 0-9 - _ . : + / =`
/// (UUIDs, ULIDs, base64, `Root=1-…`-style trace ids). Anything else could be used to forge log
/// lines or to blow up log volume.
#[must_use]
pub(crate) fn is_sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
}

/// Makes fresh ids: 32 lower-case hex digits, a random per-process prefix and a scrambled
/// counter. Unique within the process without a lock or a random number per request; the
/// scrambling (a bijection) keeps the ids from showing how many requests were served.
#[derive(Debug)]
pub(crate) struct IdGenerator {
    prefix: u64,
    key: u64,
    counter: AtomicU64,
}

impl IdGenerator {
    /// A generator seeded from the system's secure random source.
    #[must_use]
    pub(crate) fn new() -> Self {
        let mut seed = [0u8; 16];
        if crate::tls::provider()
            .secure_random
            .fill(&mut seed)
            .is_err()
        {
            // Not fatal: ids only need to be unique, and the counter keeps them so within this
            // process; mix in the time and pid so two processes still differ.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
        }
        let (a, b) = seed.split_at(8);
        IdGenerator {
            prefix: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            key: u64::from_le_bytes(b.try_into().unwrap_or_default()),
            counter: AtomicU64::new(0),
        }
    }

    /// The next id.
    ///
    /// # Panics
    /// Never: hex digits are always a valid header value.
    pub(crate) fn next_id(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex(self.prefix, &mut buf[..16]);
        hex(scramble(n.wrapping_add(self.key)), &mut buf[16..]);
        // One allocation that holds the digits and a reference count: the id is cloned onto
        // the request and the response. (`HeaderValue::from_bytes` would copy into a buffer
        // that allocates a second time on its first clone.)
        HeaderValue::from_maybe_shared(Bytes::from_owner(buf))
            .expect("hex digits are a valid header value")
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

/// The splitmix64 finaliser: a bijection on `u64`, so distinct counters give distinct ids.
fn scramble(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hex(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate().take(16) {
        let shift = 60 - 4 * i;
        *o = DIGITS[usize::try_from((v >> shift) & 0xf).unwrap_or(0)];
    }
}

/// Layer of [`RequestId`].
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestIdLayer {
    ids: Arc<IdGenerator>,
}

impl RequestIdLayer {
    /// A layer with its own id generator.
    #[must_use]
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId {
            inner,
            ids: self.ids.clone(),
        }
    }
}

/// Keeps or assigns the request's `X-Request-Id`, records it in a `request` span around the
/// inner service, and returns it to the client.
#[derive(Debug, Clone)]
pub(crate) struct RequestId<S> {
    inner: S,
    ids: Arc<IdGenerator>,
}

impl<S, B, ResB> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let headers = req.headers_mut();
        // Several X-Request-Id fields count as none sane: one id per request.
        let kept = {
            let mut all = headers.get_all(&X_REQUEST_ID).iter();
            match (all.next(), all.next()) {
                (Some(v), None) if is_sane(v) => Some(v.clone()),
                _ => None,
            }
        };
        let id = if let Some(id) = kept {
            id
        } else {
            let id = self.ids.next_id();
            headers.insert(X_REQUEST_ID, id.clone());
            id
        };
        // At DEBUG: at the default level (`info`) no span is built per request. Making,
        // entering and closing one cost ~5 000 instructions a request, half of what the whole
        // access log costs, and the lines a request leaves at `info` and above carry its id as a
        // field of their own (the access log, and the warnings of `middleware::rescue`). With
        // `log.level = "debug"` every line of the request carries it as `span.request_id`.
        let span = tracing::debug_span!("request", request_id = id.to_str().unwrap_or(""));
        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            inner,
            span,
            id: Some(id),
        }
    }
}

pin_project! {
    /// Response future of [`RequestId`]: polls the inner future inside the request span and
    /// puts the id on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        id: Option<HeaderValue>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(mut id) = this.id.take() {
            // Different in every response: on HTTP/2, HPACK sends it "never indexed" instead of
            // adding each one to the connection's table (an insert and an eviction per
            // response, and the fields that do repeat pushed out in turn): −2.6 % instructions
            // per HTTP/2 request (callgrind). HTTP/1.1 ignores the flag.
            id.set_sensitive(true);
            res.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::convert::Infallible;

    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    /// Echoes the id the inner service saw (header, and as inner layers read it) in the
    /// response body.
    async fn echo(req: Request<()>) -> Result<Response<String>, Infallible> {
        let header = req.headers()[X_REQUEST_ID].to_str().unwrap().to_owned();
        let id = RequestIdValue::of(&req).unwrap();
        assert_eq!(header, id.as_str());
        assert_eq!(req.headers().get_all(X_REQUEST_ID).iter().count(), 1);
        Ok(Response::new(header))
    }

    async fn send(ids: &[&str]) -> Response<String> {
        let mut req = Request::new(());
        for id in ids {
            req.headers_mut()
                .append(X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
        }
        ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .service_fn(echo)
            .oneshot(req)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_sane_client_id_is_kept_and_returned() {
        for id in [
            "0b5c6c9e-59b4-4b0e-9c8a-3f1f6d1c2a11",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "Root=1-67891233-abcdef012345678912345678",
            "a",
        ] {
            let res = send(&[id]).await;
            assert_eq!(res.body(), id, "upstream sees the client's id");
            assert_eq!(res.headers()[X_REQUEST_ID], id, "client gets it back");
            assert!(
                res.headers()[X_REQUEST_ID].is_sensitive(),
                "never indexed by HPACK"
            );
        }
    }

    #[tokio::test]
    async fn an_insane_or_missing_id_is_replaced() {
        let long = "a".repeat(MAX_LEN + 1);
        for ids in [
            vec![],
            vec![""],
            vec!["has space"],
            vec!["quote\"d"],
            vec!["semi;colon"],
            vec![long.as_str()],
            vec!["one", "two"],
        ] {
            let res = send(&ids).await;
            let got = res.body();
            assert_eq!(got.len(), 32, "{ids:?} → {got}");
            assert!(got.bytes().all(|b| b.is_ascii_hexdigit()), "{got}");
            assert_eq!(res.headers()[X_REQUEST_ID], got.as_str());
        }
        let ok = "a".repeat(MAX_LEN);
        assert_eq!(send(&[&ok]).await.body(), &ok);
    }

    #[test]
    fn generated_ids_are_unique_and_sane() {
        let g = IdGenerator::new();
        let ids: HashSet<HeaderValue> = (0..10_000).map(|_| g.next_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(is_sane));
        // Two generators (two processes) start from different prefixes.
        let other = IdGenerator::new();
        assert_ne!(
            g.next_id().as_bytes()[..16],
            other.next_id().as_bytes()[..16]
        );
    }
}
