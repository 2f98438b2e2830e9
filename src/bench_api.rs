//! Entry points for `benches/` only: thin wrappers around crate-private steps of the
//! per-request hot path, so the criterion micro-benchmarks can time them without those
//! internals becoming public API. Hidden from the docs; not covered by semver.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Request};

pub use crate::forward::Routes;

use crate::error::ProxyError;
use crate::forward::headers;

/// The host a request is for, as the forwarder finds it.
#[derive(Debug)]
pub struct Target(headers::Target);

impl Target {
    /// The routing name (lower case, no trailing dot, no port).
    #[must_use]
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The `Host` the upstream gets.
    #[must_use]
    pub fn host_header(&self) -> &HeaderValue {
        &self.0.host_header
    }
}

/// The host a request is for, as the forwarder finds it.
///
/// # Errors
/// As the forwarder's: no, several or a malformed `Host`, or one that differs from `:authority`.
pub fn target<B>(req: &Request<B>, tls: bool) -> Result<Target, ProxyError> {
    headers::target(req, tls).map(Target)
}

/// The forwarder's request-header rewrite (hop-by-hop removed, `Host`, `X-Forwarded-*`).
pub fn prepare_request(
    headers: &mut HeaderMap,
    client: IpAddr,
    peer_trusted: bool,
    tls: bool,
    host: &HeaderValue,
) {
    headers::prepare_request(
        headers,
        &headers::Forwarding {
            client,
            peer_trusted,
            proto: if tls { "https" } else { "http" },
            host,
        },
    );
}

/// The forwarder's response-header rewrite (hop-by-hop removed).
pub fn prepare_response(headers: &mut HeaderMap) {
    headers::prepare_response(headers);
}
