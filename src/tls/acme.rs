//! Certificates over ACME (RFC 8555) with rustls-acme: one order, one certificate and one cache
//! entry per host, so adding a host orders only that host and a host that fails blocks nobody.
//!
//! Each ACME host has an [`AcmeHost`] (the certificate it serves, its challenge while an order
//! runs, its status) shared by the SNI resolver, the forwarder (HTTP-01)
//! and the host's task. The task decides *when* to order; rustls-acme's `AcmeState` runs one
//! order at a time and is dropped afterwards:
//!
//! 1. At start the cached certificate (if any) is loaded and served without contacting the CA.
//!    Before its first order, the process registers the account once (`AccountStore`).
//! 2. The next order is due when two thirds of the certificate's lifetime have passed
//!    (rustls-acme's own schedule: 30 days before expiry for a 90-day certificate), at once when
//!    there is no certificate, and never before the back-off deadline of a failed attempt.
//! 3. A failed attempt (CA unreachable, order or validation failed) is logged with the CA's
//!    problem document; the certificate already served stays; the next attempt waits
//!    `backoff_initial`, doubled after each failure up to `backoff_max`. The count and the
//!    deadline are persisted, so a process that restarts in a loop does not order again.
//!
//! # Cache layout (`tls.acme.cache_dir`)
//!
//! ```text
//! <cache_dir>/<directory>/account.key          the ACME account key (PKCS#8 PEM), shared by all hosts
//! <cache_dir>/<directory>/<host>.pem           key + chain, as rustls-acme writes it
//! <cache_dir>/<directory>/<host>.backoff.json  failures and the next attempt, while failing
//! ```
//!
//! `<directory>` is the directory URL made into a file name, so staging and production never
//! mix. Every file is written to a temporary file, flushed to disk, then renamed into place;
//! nothing in the cache is deleted on an error (a back-off record is removed after a success).
//!
//! # Layers
//!
//! - this module: [`plan`] (settings checked, cached certificates loaded, nothing contacted)
//!   and the `Manager` that keeps one task per ACME host in line with the configuration;
//! - `order`: a host's task, its orders, success and back-off;
//! - `host`: the state one host shares with the resolver and the forwarder;
//! - `cache`: the files under `cache_dir`, and rustls-acme's cache interface.

mod cache;
mod host;
mod order;
mod shared;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use cache::directory_dir_name;
pub use host::{AcmeHost, AcmeHosts, AcmeStatus, renew_at};
pub use order::{Error, Settings};
pub use store::{Error as StoreError, SharedChallenges};

use crate::config::{AcmeConfig, Problem};
use crate::metrics::Metrics;
use crate::tls::cert::CertInfo;
use cache::AccountStore;
use host::lock;
use store::{PgStore, SharedStore};

/// What [`plan`] prepared: the settings and one [`AcmeHost`] per ACME host, with its cached
/// certificate already loaded.
#[derive(Debug)]
pub struct Plan {
    /// Shared settings.
    pub settings: Arc<Settings>,
    /// Host name → state.
    pub hosts: Vec<(String, Arc<AcmeHost>)>,
}

/// Where the cache of `cfg`'s directory lives.
#[must_use]
pub fn cache_dir(cfg: &AcmeConfig) -> std::path::PathBuf {
    cfg.cache_dir.join(directory_dir_name(&cfg.directory))
}

/// Checks the settings and prepares every ACME host: the cache directory is created if needed
/// and must be writable, `ca_file` must hold certificates, and each host's cached certificate
/// and back-off record are read. Contacts nobody.
///
/// # Errors
/// Every problem found, each with its `tls.acme.*` key.
pub fn plan(
    cfg: &AcmeConfig,
    origin: &str,
    hosts: &[String],
    provider: &Arc<CryptoProvider>,
) -> Result<Plan, Vec<Problem>> {
    let problem = |key: &str, message: String| Problem {
        key: format!("tls.acme.{key}"),
        origin: origin.to_owned(),
        message,
    };
    let mut problems = Vec::new();
    let dir = cache_dir(cfg);
    if let Err(e) = cache::ensure_writable(&dir) {
        problems.push(problem(
            "cache_dir",
            format!(
                "{} is not a writable directory ({e}); the ACME account key and certificates \
                 are kept there: create it and give the user trackproxy runs as write access",
                dir.display()
            ),
        ));
    }
    let client = match client_config(cfg, provider) {
        Ok(c) => Some(c),
        Err(m) => {
            problems.push(problem("ca_file", m));
            None
        }
    };
    let store = match &cfg.store {
        Some(s) => match PgStore::new(s, &cfg.directory) {
            Ok(p) => Some(Arc::new(p)),
            Err(m) => {
                problems.push(problem("store", m));
                None
            }
        },
        None => None,
    };
    let (Some(client), true) = (client, problems.is_empty()) else {
        return Err(problems);
    };
    let shared = store.map(|store| {
        Arc::new(SharedStore {
            challenges: Arc::new(SharedChallenges::new(store.clone(), provider.clone())),
            store,
            account: tokio::sync::Mutex::new(None),
        })
    });
    let settings = Arc::new(Settings {
        config: cfg.clone(),
        account: Arc::new(AccountStore::new(dir.join("account.key"))),
        dir,
        client,
        provider: provider.clone(),
        shared,
    });
    let hosts = hosts
        .iter()
        .map(|h| {
            let host = AcmeHost::new(h.clone());
            match cache::read_cached(&settings.dir, h, provider) {
                Ok(Some(served)) => host.served.store(Some(Arc::new(served))),
                Ok(None) => {}
                Err(m) => warn!(host = %h, error = %m, "cached ACME certificate not usable; a new one will be ordered"),
            }
            if let Some(b) = cache::read_backoff(&settings.dir, h) {
                host.set_status(|s| {
                    s.failures = b.failures;
                    s.last_error.clone_from(&b.last_error);
                    s.next_attempt = b.next_attempt;
                });
                *lock(&host.backoff) = b;
            }
            (h.clone(), Arc::new(host))
        })
        .collect();
    Ok(Plan { settings, hosts })
}

/// The TLS client configuration for the directory: webpki roots plus `ca_file`.
fn client_config(
    cfg: &AcmeConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not a valid PEM file: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no CERTIFICATE block", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{}: unusable root certificate: {e}", path.display()))?;
        }
    }
    let cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Reads the cached certificate of `host` from the cache of `cfg`, without checking that the
/// cache is writable (for `trackproxy certs`).
///
/// # Errors
/// When the file exists but cannot be read or used.
pub fn cached_certificate(
    cfg: &AcmeConfig,
    host: &str,
    provider: &CryptoProvider,
) -> Result<Option<CertInfo>, String> {
    Ok(cache::read_cached(&cache_dir(cfg), host, provider)?.map(|s| s.info))
}

/// The persisted back-off of `host`: failures so far and the next attempt, if failing.
#[must_use]
pub fn cached_backoff(cfg: &AcmeConfig, host: &str) -> Option<(u32, SystemTime)> {
    let b = cache::read_backoff(&cache_dir(cfg), host)?;
    Some((b.failures, b.next_attempt?))
}

/// A host as the shared store holds it (`trackproxy certs` with `tls.acme.store`).
#[derive(Debug)]
pub struct StoredHost {
    /// The certificate in the store, if one was issued.
    pub cert: Option<CertInfo>,
    /// The replica that ordered it (`hostname/pid`) and when.
    pub ordered: Option<(String, SystemTime)>,
    /// When the next order is due.
    pub renew_at: Option<SystemTime>,
    /// Failed attempts since the last success and the next attempt, while failing.
    pub backoff: Option<(u32, Option<SystemTime>)>,
}

/// What the shared store of `cfg` holds, by host: `None` without `tls.acme.store`. Connects
/// once and only reads (no schema change, no private key read); blocks the calling thread.
///
/// # Errors
/// The store cannot be reached or read.
pub fn store_view(cfg: &AcmeConfig) -> Option<Result<HashMap<String, StoredHost>, StoreError>> {
    let store = cfg.store.as_ref()?;
    let read = || -> Result<HashMap<String, StoredHost>, StoreError> {
        let pg = PgStore::new(store, &cfg.directory).map_err(StoreError::Data)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let rows = rt.block_on(pg.view())?;
        rows.into_iter()
            .map(|r: store::ViewRow| {
                let cert = match &r.chain_pem {
                    Some(pem) => {
                        let leaf = CertificateDer::pem_slice_iter(pem.as_bytes())
                            .next()
                            .transpose()
                            .map_err(|e| {
                                StoreError::Data(format!(
                                    "the chain of {} in the store: {e}",
                                    r.host
                                ))
                            })?;
                        Some(
                            crate::tls::cert::inspect(
                                leaf.as_ref(),
                                crate::tls::cert::CertSource::Acme,
                            )
                            .map_err(|m| {
                                StoreError::Data(format!(
                                    "the chain of {} in the store: {m}",
                                    r.host
                                ))
                            })?,
                        )
                    }
                    None => None,
                };
                let entry = StoredHost {
                    cert,
                    ordered: r.ordered_by.zip(r.ordered_at),
                    renew_at: r.renew_at,
                    backoff: (r.failures > 0).then_some((r.failures, r.next_attempt)),
                };
                Ok((r.host, entry))
            })
            .collect()
    };
    Some(read())
}

/// With a shared store (`tls.acme.store`): connects once at start to create or migrate the
/// schema and check the store key. An unreachable store is logged and does not stop the
/// start (the local copies under `cache_dir` are served, and the host tasks retry).
///
/// # Errors
/// The store key is not the store's, or the schema is newer than this build: the replica must
/// not run with it.
pub async fn check_store(plan: &Plan) -> Result<(), StoreError> {
    let Some(shared) = &plan.settings.shared else {
        return Ok(());
    };
    match shared.store.check().await {
        Ok(()) => {
            info!(replica = %shared.store.replica, "ACME store ready");
            Ok(())
        }
        Err(e @ (StoreError::WrongKey | StoreError::Schema(_))) => Err(e),
        Err(e) => {
            warn!(error = %crate::error::chain(&e), "ACME store not reachable at start; serving the certificates copied under cache_dir and retrying");
            Ok(())
        }
    }
}

/// Runs the host tasks and keeps them in line with the configuration across reloads.
pub(crate) struct Manager {
    hosts: AcmeHosts,
    metrics: Metrics,
    token: CancellationToken,
    tracker: TaskTracker,
    settings: Option<Arc<Settings>>,
    tasks: HashMap<String, CancellationToken>,
    /// The task listening for the shared store's notifications, when there is a store.
    listener: Option<CancellationToken>,
}

impl Manager {
    /// A manager of `hosts` (shared with the SNI resolver) whose tasks stop when `token` is
    /// cancelled.
    pub(crate) fn new(hosts: AcmeHosts, metrics: Metrics, token: CancellationToken) -> Self {
        Manager {
            hosts,
            metrics,
            token,
            tracker: TaskTracker::new(),
            settings: None,
            tasks: HashMap::new(),
            listener: None,
        }
    }

    /// Makes the ACME hosts those of `plan`: hosts that stay keep their task and certificate
    /// (unless `[tls.acme]` changed: then they restart, serving the old certificate until the
    /// new directory issues one), new hosts start, removed hosts stop.
    pub(crate) fn apply(&mut self, plan: Option<Plan>) {
        let old = self.hosts.load();
        let (settings, hosts) = match plan {
            Some(p) => (Some(p.settings), p.hosts),
            None => (None, Vec::new()),
        };
        let same =
            matches!((&self.settings, &settings), (Some(a), Some(b)) if a.config == b.config);
        let mut next = HashMap::new();
        let mut start = Vec::new();
        for (name, fresh) in hosts {
            match old.get(&name) {
                Some(running) if same && self.tasks.contains_key(&name) => {
                    next.insert(name, running.clone());
                }
                Some(running) => {
                    if !Arc::ptr_eq(running, &fresh) {
                        fresh.inherit(running);
                    }
                    next.insert(name.clone(), fresh.clone());
                    start.push((name, fresh));
                }
                None => {
                    next.insert(name.clone(), fresh.clone());
                    start.push((name, fresh));
                }
            }
        }
        for (name, token) in std::mem::take(&mut self.tasks) {
            if same && next.contains_key(&name) {
                self.tasks.insert(name, token);
            } else {
                token.cancel();
            }
        }
        for name in old.keys().filter(|n| !next.contains_key(*n)) {
            info!(host = %name, "ACME host removed");
        }
        self.hosts.store(next);
        if !same {
            if let Some(l) = self.listener.take() {
                l.cancel();
            }
            let shared = settings.as_ref().and_then(|s| s.shared.clone());
            self.hosts
                .set_shared(shared.as_ref().map(|s| s.challenges.clone()));
            if let (Some(shared), Some(s)) = (&shared, &settings) {
                shared.challenges.set_metrics(&self.metrics);
                let token = self.token.child_token();
                self.listener = Some(token.clone());
                self.tracker.spawn(shared::listen(
                    s.clone(),
                    self.hosts.clone(),
                    self.metrics.clone(),
                    token,
                ));
            }
        }
        self.settings.clone_from(&settings);
        let Some(settings) = settings else { return };
        for (name, host) in start {
            let token = self.token.child_token();
            self.tasks.insert(name, token.clone());
            if let Some(info) = host.certificate() {
                self.metrics
                    .certificate_expiry(&host.name, "acme", info.not_after);
            }
            if settings.shared.is_some() {
                self.tracker.spawn(shared::run_host(
                    settings.clone(),
                    host,
                    self.metrics.clone(),
                    token,
                ));
            } else {
                self.tracker.spawn(order::run_host(
                    settings.clone(),
                    host,
                    self.metrics.clone(),
                    token,
                ));
            }
        }
    }
}
