//! TLS termination: the rustls `ServerConfig` for the HTTPS listener and where its certificates
//! come from.
//!
//! - [`sni`]: the [`SniResolver`] that picks a certificate by SNI, for configured hosts only. An
//!   unknown or missing SNI gets no certificate, so the handshake fails: no default certificate is
//!   ever shown for a host we do not serve.
//! - [`static_certs`]: PEM certificates from files (cert-manager, own CA) and the self-signed
//!   certificate generated at start for the offline default.
//! - [`acme`]: certificates over ACME for hosts no file covers, one order and cache entry per
//!   host, TLS-ALPN-01 or HTTP-01.
//!
//! [`inventory`] lists every host's certificate without starting anything (`trackproxy certs`).
//!
//! One crypto provider, aws-lc-rs, is used everywhere; TLS 1.3 and 1.2 only, ALPN `h2` and
//! `http/1.1`, stateless TLS 1.3 session tickets so returning clients skip the full handshake.

pub mod acme;
pub mod sni;
pub mod static_certs;
pub(crate) mod watch;

use std::sync::Arc;
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;

pub use sni::SniResolver;

use crate::config::Config;
use static_certs::CertInfo;

/// Failures building the TLS server configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rustls refused the protocol versions or provider.
    #[error("building the TLS configuration")]
    Rustls(#[source] rustls::Error),
}

/// The process-wide crypto provider (aws-lc-rs).
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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

/// One host's certificate as `trackproxy certs` shows it.
#[derive(Debug, Clone)]
pub struct HostCertificate {
    /// The configured host.
    pub host: String,
    /// `tls.certificates[N]`, `acme`, `self-signed` or `missing`.
    pub source: String,
    /// The certificate, when there is one on disk.
    pub cert: Option<CertInfo>,
    /// Anything else worth knowing: not issued yet, retry pending, unreadable file.
    pub note: Option<String>,
}

/// Every configured host with the certificate it would be served with, read from the
/// certificate files and the ACME cache. Starts nothing, contacts nobody, writes nothing.
#[must_use]
pub fn inventory(cfg: &Config) -> Vec<HostCertificate> {
    let provider = provider();
    let mut files = Vec::new();
    let mut notes = Vec::new();
    for f in &cfg.tls.certificates {
        match static_certs::load_files(f, &provider, &cfg.origin) {
            Ok(l) => files.push(l),
            Err(p) => notes.push(p.to_string()),
        }
    }
    cfg.hosts
        .iter()
        .map(|h| {
            let host = h.name.clone();
            if let Some(l) = files.iter().find(|l| l.info.covers(&host)) {
                return HostCertificate {
                    host,
                    source: l.info.source.clone(),
                    cert: Some(l.info.clone()),
                    note: None,
                };
            }
            let unreadable = (!notes.is_empty()).then(|| notes.join("; "));
            if let Some(a) = &cfg.tls.acme {
                let (cert, mut note) = match acme::cached_certificate(a, &host, &provider) {
                    Ok(Some(c)) => (Some(c), None),
                    Ok(None) => (None, Some("not issued yet".to_owned())),
                    Err(m) => (None, Some(m)),
                };
                if let Some((failures, next)) = acme::cached_backoff(a, &host) {
                    let retry = format!(
                        "{failures} failed attempt{}, next at {}",
                        if failures == 1 { "" } else { "s" },
                        humantime::format_rfc3339_seconds(next)
                    );
                    note = Some(note.map_or(retry.clone(), |n| format!("{n}; {retry}")));
                }
                return HostCertificate {
                    host,
                    source: "acme".to_owned(),
                    cert,
                    note,
                };
            }
            if cfg.tls.self_signed {
                return HostCertificate {
                    host,
                    source: "self-signed".to_owned(),
                    cert: None,
                    note: Some("generated at start".to_owned()),
                };
            }
            HostCertificate {
                host,
                source: "missing".to_owned(),
                cert: None,
                note: unreadable
                    .or_else(|| Some("no certificate file covers this host".to_owned())),
            }
        })
        .collect()
}

/// Whole days from now until `t` (negative once passed).
#[must_use]
pub fn days_left(t: SystemTime) -> i64 {
    let secs = match t.duration_since(SystemTime::now()) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    secs.div_euclid(86_400)
}
