//! The shared ACME store (`[tls.acme] store = "postgres://…"`): what N replicas behind one load
//! balancer share so that each host is ordered once for the whole cluster and any replica
//! answers the CA's validation of an order another replica placed.
//!
//! - `postgres`: the schema (versioned, migrated at start), the rows, the per-host advisory
//!   locks and LISTEN/NOTIFY;
//! - `seal`: AES-256-GCM for the private keys kept in the store (the key from
//!   `store_key_file`), checked against a verification record at every connection;
//! - [`SharedChallenges`]: the pending challenges of the cluster as the TLS acceptor and the
//!   HTTP-01 path see them, read from the store when this replica has no local answer and
//!   kept a few seconds.
//!
//! Without a store nothing here runs: the cache under `cache_dir` is the only state, as it
//! always was.

mod postgres;
mod seal;
mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_acme::acme::ACME_TLS_ALPN_NAME;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::warn;

pub use postgres::Error;
pub(super) use postgres::{BackoffRow, Notification, PgStore, ViewRow};

use crate::metrics::Metrics;

/// What the host tasks of a shared store share: the store, the cluster's pending challenges,
/// and the account once registered by this process.
pub(super) struct SharedStore {
    pub(super) store: Arc<PgStore>,
    pub(super) challenges: Arc<SharedChallenges>,
    pub(super) account: tokio::sync::Mutex<Option<Arc<rustls_acme::acme::Account>>>,
}

/// How long an answer read from the store is kept (a CA validates within seconds).
const HIT_TTL: Duration = Duration::from_secs(30);
/// How long "no pending challenge" is kept (a stray `acme-tls/1` hello must not cost a query
/// each time, and a real validation arrives only after the challenge is in the store).
const MISS_TTL: Duration = Duration::from_millis(500);
/// Longest a handshake or an HTTP-01 request waits for the store.
const LOOKUP_LIMIT: Duration = Duration::from_secs(3);

/// The challenges pending anywhere in the cluster, by host.
pub struct SharedChallenges {
    store: Arc<PgStore>,
    provider: Arc<CryptoProvider>,
    metrics: std::sync::OnceLock<Metrics>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for SharedChallenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedChallenges").finish_non_exhaustive()
    }
}

struct Cached {
    at: Instant,
    /// (token, key authorization), empty when none is pending.
    pending: Vec<(String, String)>,
    /// The TLS-ALPN-01 answer built from the newest pending key authorization.
    tls: Option<Arc<ServerConfig>>,
}

impl SharedChallenges {
    pub(super) fn new(store: Arc<PgStore>, provider: Arc<CryptoProvider>) -> Self {
        SharedChallenges {
            store,
            provider,
            metrics: std::sync::OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The TLS configuration answering a TLS-ALPN-01 validation for `host`, if an order for
    /// it waits for one anywhere in the cluster.
    pub async fn tls_alpn01(&self, host: &str) -> Option<Arc<ServerConfig>> {
        self.fetch(host, None).await.1
    }

    /// The HTTP-01 key authorization for `token` on `host`, if an order waits for it.
    pub async fn http01(&self, host: &str, token: &str) -> Option<String> {
        self.fetch(host, Some(token))
            .await
            .0
            .into_iter()
            .find(|(t, _)| t == token)
            .map(|(_, k)| k)
    }

    /// Where store errors are counted.
    pub(super) fn set_metrics(&self, metrics: &Metrics) {
        let _ = self.metrics.set(metrics.clone());
    }

    fn store_error(&self) {
        if let Some(m) = self.metrics.get() {
            m.acme_store_error("challenge_lookup");
        }
    }

    /// Records a challenge this replica just put into the store (no query needed here).
    pub(super) fn remember(&self, host: &str, token: &str, key_authorization: &str) {
        let tls = tls_alpn01_config(host, key_authorization, &self.provider);
        lock(&self.cache).insert(
            host.to_owned(),
            Cached {
                at: Instant::now(),
                pending: vec![(token.to_owned(), key_authorization.to_owned())],
                tls,
            },
        );
    }

    /// Forgets what is known about `host` (its order ended, here or on another replica).
    pub(super) fn forget(&self, host: &str) {
        lock(&self.cache).remove(host);
    }

    /// The pending challenges of `host`, from the cache when fresh. An HTTP-01 `token` the
    /// cached challenges do not hold is looked up again (a newer order of another replica).
    async fn fetch(
        &self,
        host: &str,
        token: Option<&str>,
    ) -> (Vec<(String, String)>, Option<Arc<ServerConfig>>) {
        if let Some(c) = lock(&self.cache).get(host) {
            let fresh = if c.pending.is_empty() {
                c.at.elapsed() < MISS_TTL
            } else {
                c.at.elapsed() < HIT_TTL
                    && token.is_none_or(|t| c.pending.iter().any(|(p, _)| p == t))
            };
            if fresh {
                return (c.pending.clone(), c.tls.clone());
            }
        }
        let pending = match tokio::time::timeout(LOOKUP_LIMIT, self.store.challenges(host)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.store_error();
                warn!(host, error = %crate::error::chain(&e), "cannot read pending ACME challenges from the store");
                return (Vec::new(), None);
            }
            Err(_) => {
                self.store_error();
                warn!(
                    host,
                    "no answer from the store for pending ACME challenges within {LOOKUP_LIMIT:?}"
                );
                return (Vec::new(), None);
            }
        };
        let tls = pending
            .first()
            .and_then(|(_, k)| tls_alpn01_config(host, k, &self.provider));
        lock(&self.cache).insert(
            host.to_owned(),
            Cached {
                at: Instant::now(),
                pending: pending.clone(),
                tls: tls.clone(),
            },
        );
        (pending, tls)
    }
}

/// Serves one certificate whatever the hello.
#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesServerCert for Always {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this small cache cannot leave it inconsistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The TLS-ALPN-01 answer (RFC 8737 §3) for `key_authorization`: a self-signed certificate for
/// `host` with the `acmeIdentifier` extension holding SHA-256 of the key authorization. Any
/// key pair will do (the CA checks only the name and the extension), so every replica builds
/// its own from the key authorization in the store and no challenge key is ever shared.
fn tls_alpn01_config(
    host: &str,
    key_authorization: &str,
    provider: &Arc<CryptoProvider>,
) -> Option<Arc<ServerConfig>> {
    let build = || -> Result<Arc<ServerConfig>, String> {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
        let mut params =
            rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        params.custom_extensions =
            vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        // Not `with_single_cert`: it rejects the critical acmeIdentifier extension.
        let signer = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| e.to_string())?;
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer));
        let mut tls = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Always(certified)));
        tls.alpn_protocols = vec![ACME_TLS_ALPN_NAME.to_vec()];
        Ok(Arc::new(tls))
    };
    build()
        .inspect_err(|e| warn!(host, error = %e, "cannot build the TLS-ALPN-01 answer"))
        .ok()
}
