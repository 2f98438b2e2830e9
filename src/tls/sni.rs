//! Certificate selection by SNI.
//!
//! Two sources, both limited to configured hosts: file (and self-signed) certificates, swapped
//! whole on reload, and ACME hosts, each with its own [`AcmeHost`] whose certificate appears
//! when issued and changes on renewal. A file certificate wins for the hosts it covers (an
//! ACME state is only ever made for hosts no file covers).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::acme::{AcmeHost, AcmeHosts, SharedChallenges};

/// Host name (lower case) → certificate served for it.
pub type CertMap = HashMap<String, Arc<CertifiedKey>>;

/// Resolves the certificate for a `ClientHello`'s SNI among the configured hosts only.
///
/// The maps are swapped atomically on reload, so handshakes in progress never see a
/// half-updated set and established connections keep the certificate they were set up with.
#[derive(Debug, Default)]
pub struct SniResolver {
    certs: ArcSwap<CertMap>,
    acme: AcmeHosts,
}

impl SniResolver {
    /// A resolver serving `certs`, and the certificates of the ACME hosts in `acme` (the set
    /// the ACME manager keeps up to date).
    #[must_use]
    pub fn new(certs: CertMap, acme: AcmeHosts) -> Self {
        SniResolver {
            certs: ArcSwap::from_pointee(certs),
            acme,
        }
    }

    /// Replaces the whole set of file (and self-signed) certificates.
    pub fn replace(&self, certs: CertMap) {
        self.certs.store(Arc::new(certs));
    }

    /// The ACME hosts.
    #[must_use]
    pub fn acme_hosts(&self) -> Arc<HashMap<String, Arc<AcmeHost>>> {
        self.acme.load()
    }

    /// The ACME state of `host` (lower case), if it gets its certificate over ACME.
    #[must_use]
    pub fn acme_host(&self, host: &str) -> Option<Arc<AcmeHost>> {
        self.acme.get(host)
    }

    /// The certificate for `server_name`, if the host is configured and has one.
    #[must_use]
    pub fn lookup(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let lower;
        let name = if server_name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = server_name.to_ascii_lowercase();
            &lower
        } else {
            server_name
        };
        if let Some(c) = self.certs.load().get(name) {
            return Some(c.clone());
        }
        self.acme.load().get(name)?.certified_key()
    }

    /// Whether a certificate is available for `server_name` now (an ACME host whose first
    /// certificate is still being ordered is not known yet).
    #[must_use]
    pub fn knows(&self, server_name: &str) -> bool {
        self.lookup(server_name).is_some()
    }

    /// Host names with a certificate available now.
    #[must_use]
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.certs.load().keys().cloned().collect();
        hosts.extend(
            self.acme
                .load()
                .iter()
                .filter(|(h, a)| a.certified_key().is_some() && !hosts.contains(h))
                .map(|(h, _)| h.clone())
                .collect::<Vec<_>>(),
        );
        hosts
    }

    /// The TLS configuration answering a TLS-ALPN-01 validation (RFC 8737) for `host` (lower
    /// case), while an order for it runs.
    #[must_use]
    pub fn challenge_config(&self, host: &str) -> Option<Arc<ServerConfig>> {
        self.acme.load().get(host)?.challenge_config()
    }

    /// The challenges pending in the shared ACME store (`tls.acme.store`), if there is one:
    /// consulted when this replica has no answer of its own.
    #[must_use]
    pub fn shared_challenges(&self) -> Option<Arc<SharedChallenges>> {
        self.acme.shared()
    }

    /// The HTTP-01 answer (RFC 8555 §8.3) for `token` on `host`: `None` if `host` does not
    /// use ACME, `Some(None)` if it does but no order waits for this token.
    #[must_use]
    pub fn http01(&self, host: &str, token: &str) -> Option<Option<String>> {
        let acme = self.acme.load();
        let h = acme.get(host)?;
        Some(h.http01_key_authorization(token))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI, or an SNI we do not serve: no certificate, so rustls aborts the handshake.
        let name = client_hello.server_name()?;
        self.lookup(name)
    }
}
