//! Certificate selection by SNI.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Host name (lower case) → certificate served for it.
pub type CertMap = HashMap<String, Arc<CertifiedKey>>;

/// Resolves the certificate for a `ClientHello`'s SNI among the configured hosts only.
///
/// The map is swapped atomically on reload, so handshakes in progress never see a half-updated
/// set and established connections keep the certificate they were set up with.
#[derive(Debug, Default)]
pub struct SniResolver {
    certs: ArcSwap<CertMap>,
}

impl SniResolver {
    /// A resolver serving `certs`.
    #[must_use]
    pub fn new(certs: CertMap) -> Self {
        SniResolver {
            certs: ArcSwap::from_pointee(certs),
        }
    }

    /// Replaces the whole set of certificates.
    pub fn replace(&self, certs: CertMap) {
        self.certs.store(Arc::new(certs));
    }

    /// The certificate for `server_name`, if the host is configured and has one.
    #[must_use]
    pub fn lookup(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if server_name.bytes().any(|b| b.is_ascii_uppercase()) {
            certs.get(&server_name.to_ascii_lowercase()).cloned()
        } else {
            certs.get(server_name).cloned()
        }
    }

    /// Whether a certificate exists for `server_name`.
    #[must_use]
    pub fn knows(&self, server_name: &str) -> bool {
        self.lookup(server_name).is_some()
    }

    /// Host names with a certificate.
    #[must_use]
    pub fn hosts(&self) -> Vec<String> {
        self.certs.load().keys().cloned().collect()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI, or an SNI we do not serve: no certificate, so rustls aborts the handshake.
        let name = client_hello.server_name()?;
        self.lookup(name)
    }
}
