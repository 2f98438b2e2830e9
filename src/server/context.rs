//! What every connection task shares: the TLS configuration and resolver, the HTTP/1.1 and
//! HTTP/2 connection builders with the configured limits, the tower stack, timeouts, the
//! PROXY protocol policy, connection budgets and metrics.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ServerConfig;

use super::proxy_protocol::Policy as ProxyPolicy;
use crate::config::ServerConfig as ServerSettings;
use crate::limits::connections::ConnLimits;
use crate::metrics::Metrics;
use crate::middleware::HttpService;
use crate::tls::SniResolver;

/// Everything a connection task needs, shared by all of them.
pub(crate) struct Server {
    pub(crate) tls: Arc<ServerConfig>,
    pub(crate) resolver: Arc<SniResolver>,
    pub(crate) h1: http1::Builder,
    pub(crate) h2: http2::Builder<TokioExecutor>,
    pub(crate) service: HttpService,
    pub(crate) handshake_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) proxy_protocol: ProxyPolicy,
    pub(crate) limits: Arc<ConnLimits>,
    pub(crate) metrics: Metrics,
}

impl Server {
    /// The HTTP/1.1 connection builder with the configured limits.
    pub(crate) fn h1_builder(cfg: &ServerSettings) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            // Also bounds how long an idle HTTP/1 keep-alive connection waits for its next
            // request: hyper starts this timer whenever it waits for a request head.
            .header_read_timeout(cfg.header_read_timeout)
            // A head larger than this is answered with 431 (hyper's buffer limit); the minimum
            // hyper accepts is 8 KiB.
            .max_buf_size(cfg.max_header_bytes.max(8192))
            // rustls copies vectored writes into one buffer anyway (an allocation per write):
            // let hyper flatten head and body into its own buffer instead.
            .writev(false)
            .max_headers(cfg.max_headers);
        b
    }

    /// The HTTP/2 connection builder with the configured limits.
    pub(crate) fn h2_builder(cfg: &ServerSettings) -> http2::Builder<TokioExecutor> {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(cfg.h2_max_concurrent_streams)
            // Four times the limit, which the forwarder checks itself and answers with a 431
            // the access log and metrics see. With h2's limit at `max_header_bytes` itself, h2
            // answered 431 alone (invisible to logs) only while the compressed block was under
            // the limit and sent GOAWAY (the whole connection died) once it was over: a
            // 70 000-byte cookie did that. Above this limit h2 still does, as a bound on the
            // memory a header block may take.
            .max_header_list_size(
                u32::try_from(cfg.max_header_bytes.saturating_mul(4)).unwrap_or(u32::MAX),
            )
            // Rapid reset (CVE-2023-44487) and its local-error variant (CVE-2025-8671): a client
            // that makes us reset streams faster than this gets GOAWAY.
            .max_pending_accept_reset_streams(32)
            .max_local_error_reset_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        b
    }
}
