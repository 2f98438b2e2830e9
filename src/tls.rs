//! TLS termination: the rustls `ServerConfig` for the HTTPS listener and where its certificates
//! come from.
//!
//! - `accept`: a new connection's handshake: `ClientHello`, SNI checks, the ACME TLS-ALPN-01
//!   branch, the handshake under its deadline.
//! - `stream`: the TLS stream over rustls's unbuffered API, with buffers of our own that are
//!   freed while a connection idles.
//! - [`sni`]: the [`SniResolver`] that picks a certificate by SNI, for configured hosts only. An
//!   unknown or missing SNI gets no certificate, so the handshake fails: no default certificate is
//!   ever shown for a host we do not serve.
//! - [`cert`]: what a certificate is ([`CertInfo`], [`CertSource`]), name matching.
//! - [`files`]: PEM certificates from files (cert-manager, own CA) and the self-signed
//!   certificate generated at start for the offline default.
//! - [`certs`]: which host gets which certificate ([`Certs`]), and [`inventory`] for
//!   `trackproxy certs`, without starting anything.
//! - [`acme`]: certificates over ACME for hosts no file covers, one order and cache entry per
//!   host, TLS-ALPN-01 or HTTP-01.
//! - `watch`: notices certificate files changing on disk.
//!
//! One crypto provider, aws-lc-rs, is used everywhere; TLS 1.3 and 1.2 only, ALPN `h2` and
//! `http/1.1`, stateless TLS 1.3 session tickets so returning clients skip the full handshake.

pub(crate) mod accept;
pub mod acme;
pub mod cert;
pub mod certs;
mod crypto;
pub mod files;
pub mod sni;
pub(crate) mod stream;
pub(crate) mod watch;

use std::sync::Arc;

use rustls::ServerConfig;

pub use cert::{CertInfo, CertSource, days_left};
pub use certs::{Certs, HostCertificate, inventory};
pub(crate) use crypto::SignaturesOnly;
pub use crypto::provider;
pub use sni::SniResolver;

/// Failures building the TLS server configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rustls refused the protocol versions or provider.
    #[error("building the TLS configuration")]
    Rustls(#[source] rustls::Error),
}

/// ALPN protocols offered to clients, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Builds the HTTPS listener's configuration around `resolver`.
///
/// # Errors
/// When rustls rejects the provider/version combination or the ticketer cannot be created.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<ServerConfig>, Error> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(Error::Rustls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Returning clients (the same recipient clicking a second link) resume with a ticket
    // instead of a full handshake; tickets rotate every 6 hours.
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(Error::Rustls)?;
    // One ticket per full handshake (rustls sends two by default): a recipient's next click
    // resumes with it, and each ticket costs a key derivation and an encryption.
    cfg.send_tls13_tickets = 1;
    // TLS 1.2 clients resume from a bounded in-memory cache.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    // Early data is replayable: a tracked click must not be.
    cfg.max_early_data_size = 0;
    Ok(Arc::new(cfg))
}
