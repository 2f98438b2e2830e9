//! Per-client rate limit: a token bucket per client IP (`governor`'s GCRA, keyed), refilled at
//! `limits.per_client_rps` and holding `limits.per_client_burst`. A request over the limit is
//! answered at once with 429 and `Retry-After` (RFC 6585 §4); nothing waits.
//!
//! The client is `ConnInfo::client` (a trusted PROXY header can set it), grouped by /64 for
//! IPv6 ([`crate::client::client_key`]). Networks in `limits.allow` are never limited. The state of every
//! client seen lives in one sharded map shared by all connections; [`ClientLimiter::evict_stale`]
//! (run every few seconds by the proxy) drops clients whose bucket is full again, so memory
//! follows the number of clients active in the last few seconds, not of all clients ever seen.

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::client::{Cidrs, ConnInfo, client_key};
use crate::config::LimitsConfig;
use crate::error::ProxyError;

type KeyedLimiter<C> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The token buckets of all clients. Shared (`Arc`) by every connection.
pub(crate) struct ClientLimiter<C: Clock = DefaultClock> {
    /// `None` when `limits.per_client_rps = 0`.
    limiter: Option<KeyedLimiter<C>>,
    allow: Cidrs,
}

impl<C: Clock> std::fmt::Debug for ClientLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("enabled", &self.limiter.is_some())
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl ClientLimiter {
    /// The limiter `cfg` describes, on the monotonic clock.
    #[must_use]
    pub(crate) fn new(cfg: &LimitsConfig) -> Self {
        Self::with_clock(cfg, DefaultClock::default())
    }
}

impl<C: Clock> ClientLimiter<C> {
    /// The limiter `cfg` describes, on `clock` (tests use a fake clock).
    pub(crate) fn with_clock(cfg: &LimitsConfig, clock: C) -> Self {
        let limiter = quota(cfg.per_client_rps, cfg.per_client_burst)
            .map(|quota| RateLimiter::dashmap_with_clock(quota, clock));
        ClientLimiter {
            limiter,
            allow: cfg.allow.clone(),
        }
    }

    /// Takes one token from `client`'s bucket; `Err` with the time until the next token when
    /// it is empty.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.allow.contains(client) {
            return Ok(());
        }
        limiter
            .check_key(&client_key(client))
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Forgets clients whose bucket has refilled (they are indistinguishable from new ones),
    /// and gives the memory back.
    pub(crate) fn evict_stale(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Clients currently remembered.
    pub(crate) fn clients(&self) -> usize {
        self.limiter.as_ref().map_or(0, RateLimiter::len)
    }
}

/// A bucket of `burst` refilled at `rps` per second (fractions allowed); `None` when `rps` is
/// not positive.
fn quota(rps: f64, burst: u32) -> Option<Quota> {
    if !(rps.is_finite() && rps > 0.0) {
        return None;
    }
    let period = Duration::try_from_secs_f64(1.0 / rps).ok()?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Some(Quota::with_period(period)?.allow_burst(burst))
}

/// Layer of [`RateLimit`].
#[derive(Debug, Clone)]
pub(crate) struct RateLimitLayer {
    limiter: Arc<ClientLimiter>,
}

impl RateLimitLayer {
    /// A layer checking `limiter`.
    #[must_use]
    pub(crate) fn new(limiter: Arc<ClientLimiter>) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// Rejects a request with [`ProxyError::RateLimited`] when its client's bucket is empty.
/// Requests without [`ConnInfo`] (none reach here from the server) are not limited.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit<S> {
    inner: S,
    limiter: Arc<ClientLimiter>,
}

impl<S, B, ResB> Service<Request<B>> for RateLimit<S>
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
        if let Some(conn) = req.extensions().get::<ConnInfo>()
            && let Err(retry_after) = self.limiter.check(conn.client.ip())
        {
            return ResponseFuture {
                state: State::Limited { retry_after },
            };
        }
        ResponseFuture {
            state: State::Inner {
                inner: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// Response future of [`RateLimit`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner { #[pin] inner: F },
        Limited { retry_after: Duration },
    }
}

impl<F, ResB> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, ProxyError>>,
{
    type Output = Result<Response<ResB>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { inner } => inner.poll(cx),
            StateProj::Limited { retry_after } => Poll::Ready(Err(ProxyError::RateLimited {
                retry_after: *retry_after,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use governor::clock::FakeRelativeClock;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    fn limits(rps: f64, burst: u32, allow: &[&str]) -> LimitsConfig {
        LimitsConfig {
            per_client_rps: rps,
            per_client_burst: burst,
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
            ..LimitsConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn req(client: &str) -> Request<()> {
        let addr = SocketAddr::new(ip(client), 40000);
        let mut r = Request::new(());
        r.extensions_mut().insert(ConnInfo {
            client: addr,
            remote: addr,
            remote_trusted: false,
            peer: addr,
            local: "127.0.0.1:443".parse().unwrap(),
            tls: None,
        });
        r
    }

    async fn send(limiter: &Arc<ClientLimiter>, client: &str) -> Result<u16, ProxyError> {
        ServiceBuilder::new()
            .layer(RateLimitLayer::new(limiter.clone()))
            .service_fn(|_req: Request<()>| async { Ok::<_, ProxyError>(Response::new(())) })
            .oneshot(req(client))
            .await
            .map(|r| r.status().as_u16())
    }

    #[tokio::test]
    async fn a_client_over_its_burst_is_limited_and_others_are_not() {
        // One token per 100 s: nothing refills within this test.
        let limiter = Arc::new(ClientLimiter::new(&limits(0.01, 3, &[])));
        for _ in 0..3 {
            assert_eq!(send(&limiter, "192.0.2.1").await.unwrap(), 200);
        }
        match send(&limiter, "192.0.2.1").await {
            Err(ProxyError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::from_secs(99));
                assert!(retry_after <= Duration::from_secs(100));
            }
            other => panic!("expected RateLimited, got {other:?}"),
        }
        assert_eq!(send(&limiter, "192.0.2.2").await.unwrap(), 200);
        // IPv4-mapped IPv6 is the same client.
        assert!(send(&limiter, "::ffff:192.0.2.1").await.is_err());
    }

    #[tokio::test]
    async fn ipv6_clients_share_their_slash_64() {
        let limiter = Arc::new(ClientLimiter::new(&limits(0.01, 1, &[])));
        assert!(send(&limiter, "2001:db8:1:2::1").await.is_ok());
        assert!(send(&limiter, "2001:db8:1:2:ffff::9").await.is_err());
        assert!(send(&limiter, "2001:db8:1:3::1").await.is_ok());
    }

    #[tokio::test]
    async fn allowed_networks_and_rps_zero_are_never_limited() {
        let limiter = Arc::new(ClientLimiter::new(&limits(0.01, 1, &["10.0.0.0/8"])));
        for _ in 0..20 {
            assert!(send(&limiter, "10.1.2.3").await.is_ok());
        }
        assert_eq!(limiter.clients(), 0, "allowed clients take no memory");
        let off = Arc::new(ClientLimiter::new(&limits(0.0, 1, &[])));
        for _ in 0..20 {
            assert!(send(&off, "192.0.2.1").await.is_ok());
        }
    }

    #[test]
    fn tokens_refill_at_the_configured_rate() {
        let clock = FakeRelativeClock::default();
        let l = ClientLimiter::with_clock(&limits(2.0, 2, &[]), clock.clone());
        let c = ip("192.0.2.7");
        assert!(l.check(c).is_ok());
        assert!(l.check(c).is_ok());
        assert_eq!(l.check(c), Err(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(500));
        assert!(l.check(c).is_ok());
        assert!(l.check(c).is_err());

        // Fractional: one token every 4 s.
        let l = ClientLimiter::with_clock(&limits(0.25, 1, &[]), clock.clone());
        assert!(l.check(c).is_ok());
        assert_eq!(l.check(c), Err(Duration::from_secs(4)));
        clock.advance(Duration::from_secs(4));
        assert!(l.check(c).is_ok());
    }

    #[test]
    fn stale_clients_are_evicted_so_memory_stays_bounded() {
        let clock = FakeRelativeClock::default();
        let l = ClientLimiter::with_clock(&limits(10.0, 20, &[]), clock.clone());
        for i in 0..50_000u32 {
            let _ = l.check(IpAddr::V4(i.into()));
        }
        assert_eq!(l.clients(), 50_000);
        l.evict_stale();
        assert_eq!(l.clients(), 50_000, "buckets not yet refilled are kept");
        // A bucket of 20 at 10/s is full again after 2 s (+ one interval).
        clock.advance(Duration::from_millis(2200));
        let _ = l.check(ip("192.0.2.200"));
        l.evict_stale();
        assert_eq!(l.clients(), 1, "only the recent client is left");
    }

    #[test]
    fn client_keys() {
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("2001:db8:a:b:c:d:e:f")), ip("2001:db8:a:b::"));
        let allow = Cidrs::from(vec!["192.0.2.0/24".parse().unwrap()]);
        assert!(allow.contains(ip("::ffff:192.0.2.9")));
        assert!(!allow.contains(ip("192.0.3.1")));
    }
}
