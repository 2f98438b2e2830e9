//! Certificates over ACME (RFC 8555) with rustls-acme: one order, one certificate and one cache
//! entry per host, so adding a host orders only that host and a host that fails blocks nobody.
//!
//! Each ACME host has an [`AcmeHost`] (the certificate it serves, its challenge while an order
//! runs, its status) shared by the [`SniResolver`], the forwarder (HTTP-01)
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

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures_util::StreamExt;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_acme::acme::{
    ACME_TLS_ALPN_NAME, Account, AcmeError, Directory, Problem as AcmeProblem,
};
use rustls_acme::{
    AccountCache, CertCache, EventError, EventOk, OrderError, ResolvesServerCertAcme, UseChallenge,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::SniResolver;
use super::static_certs::CertInfo;
use crate::config::{AcmeChallenge, AcmeConfig, Problem};
use crate::telemetry::metrics::Metrics;

/// Longest one order may take before it counts as failed (rustls-acme has no overall limit;
/// its own polling gives up after about 30 s for a challenge and 17 min for processing).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Longest single sleep of a host task: wall-clock deadlines are re-checked at least this
/// often, so a suspended machine or a changed clock does not delay a renewal for long.
const MAX_SLEEP: Duration = Duration::from_secs(60 * 60);

/// Why an ACME attempt for a host failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CA could not be reached, refused the order, or validation failed.
    #[error("ACME order failed")]
    Order(#[source] OrderError),
    /// The account key could not be read or written.
    #[error("ACME account key in the cache")]
    Account(#[source] io::Error),
    /// The CA sent something that is not a usable certificate.
    #[error("the CA's certificate cannot be used: {0}")]
    Unusable(String),
    /// The order made no progress in time.
    #[error("no certificate from the CA within {0:?}")]
    Timeout(Duration),
}

impl Error {
    /// The CA's problem document (RFC 8555 §6.7, RFC 7807), when the CA sent one.
    #[must_use]
    pub fn problem(&self) -> Option<AcmeProblem> {
        let Error::Order(e) = self else { return None };
        match e {
            OrderError::BadAuth(auth) => auth.challenges.iter().find_map(|c| c.error.clone()),
            OrderError::BadOrder(order) | OrderError::ProcessingTimeout(order) => {
                order.error.clone()
            }
            // The HTTP error type is private to rustls-acme; its message carries the body.
            OrderError::Acme(AcmeError::HttpRequest(http)) => {
                problem_from_message(&http.to_string())
            }
            OrderError::Acme(_) | OrderError::Rcgen(_) | OrderError::TooManyAttemptsAuth(_) => None,
        }
    }
}

/// Finds the problem document in rustls-acme's `non 2xx http status: 400 "<body>"` message
/// (the body is written as a Rust string literal).
fn problem_from_message(msg: &str) -> Option<AcmeProblem> {
    let start = msg.find('"')?;
    let mut body = String::new();
    let mut chars = msg.get(start + 1..)?.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next()? {
                'n' => body.push('\n'),
                'r' => body.push('\r'),
                't' => body.push('\t'),
                '0' => body.push('\0'),
                'u' => {
                    let hex: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                    body.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => body.push(other),
            },
            c => body.push(c),
        }
    }
    let p: AcmeProblem = serde_json::from_str(&body).ok()?;
    (p.typ.is_some() || p.detail.is_some()).then_some(p)
}

/// `[tls.acme]` made ready: the directory's client configuration and cache location.
pub struct Settings {
    /// The configuration it was built from (compared on reload).
    pub config: AcmeConfig,
    /// The cache directory of this ACME directory: `<cache_dir>/<directory as a file name>`.
    pub dir: PathBuf,
    client: Arc<ClientConfig>,
    provider: Arc<CryptoProvider>,
    account: Arc<AccountStore>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("directory", &self.config.directory)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What [`plan`] prepared: the settings and one [`AcmeHost`] per ACME host, with its cached
/// certificate already loaded.
#[derive(Debug)]
pub struct Plan {
    /// Shared settings.
    pub settings: Arc<Settings>,
    /// Host name → state.
    pub hosts: Vec<(String, Arc<AcmeHost>)>,
}

/// The directory URL as a file name: `https://acme-v02.api.letsencrypt.org/directory` →
/// `acme-v02.api.letsencrypt.org_directory`.
#[must_use]
pub fn directory_dir_name(directory: &str) -> String {
    let rest = directory
        .strip_prefix("https://")
        .or_else(|| directory.strip_prefix("http://"))
        .unwrap_or(directory);
    let name: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = name.trim_matches(|c| c == '_' || c == '.');
    if name.is_empty() {
        "directory".to_owned()
    } else {
        name.to_owned()
    }
}

/// Where the cache of `cfg`'s directory lives.
#[must_use]
pub fn cache_dir(cfg: &AcmeConfig) -> PathBuf {
    cfg.cache_dir.join(directory_dir_name(&cfg.directory))
}

fn cert_path(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("{host}.pem"))
}

fn backoff_path(dir: &Path, host: &str) -> PathBuf {
    dir.join(format!("{host}.backoff.json"))
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
    if let Err(e) = ensure_writable(&dir) {
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
    let (Some(client), true) = (client, problems.is_empty()) else {
        return Err(problems);
    };
    let settings = Arc::new(Settings {
        config: cfg.clone(),
        account: Arc::new(AccountStore::new(dir.join("account.key"))),
        dir,
        client,
        provider: provider.clone(),
    });
    let hosts = hosts
        .iter()
        .map(|h| {
            let host = AcmeHost::new(h.clone());
            match read_cached(&settings.dir, h, provider) {
                Ok(Some(served)) => host.served.store(Some(Arc::new(served))),
                Ok(None) => {}
                Err(m) => warn!(host = %h, error = %m, "cached ACME certificate not usable; a new one will be ordered"),
            }
            if let Some(b) = Backoff::read(&settings.dir, h) {
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

/// Creates `dir` (mode 0700) if needed and proves it writable with a synced probe file.
fn ensure_writable(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)?;
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    let res = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(b"ok")?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    res
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
    Ok(read_cached(&cache_dir(cfg), host, provider)?.map(|s| s.info))
}

/// The persisted back-off of `host`: failures so far and the next attempt, if failing.
#[must_use]
pub fn cached_backoff(cfg: &AcmeConfig, host: &str) -> Option<(u32, SystemTime)> {
    let b = Backoff::read(&cache_dir(cfg), host)?;
    Some((b.failures, b.next_attempt?))
}

fn read_cached(
    dir: &Path,
    host: &str,
    provider: &CryptoProvider,
) -> Result<Option<Served>, String> {
    let path = cert_path(dir, host);
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    parse_pem(&pem, host, provider)
        .map(Some)
        .map_err(|m| format!("{}: {m}", path.display()))
}

/// Parses rustls-acme's cache format (private key PEM, then the chain) and checks that the
/// certificate is for `host`.
fn parse_pem(pem: &[u8], host: &str, provider: &CryptoProvider) -> Result<Served, String> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("key and certificate do not fit: {e}"))?;
    let info = super::static_certs::inspect(certified.cert.first(), "acme")?;
    if !info.covers(host) {
        return Err(format!(
            "the certificate is for {:?}, not {host:?}",
            info.names
        ));
    }
    Ok(Served {
        key: Arc::new(certified),
        info,
    })
}

/// A certificate being served for an ACME host.
#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// The TLS-ALPN-01 / HTTP-01 answers of the order running for a host.
struct Challenge {
    resolver: Arc<ResolvesServerCertAcme>,
    tls: Arc<ServerConfig>,
}

/// Where a host's ACME work stands, for logs, readiness and status pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeStatus {
    /// An order is running now.
    pub ordering: bool,
    /// When the next order is due (renewal, or retry after a failure); `None` while ordering
    /// or before the host's task started.
    pub next_attempt: Option<SystemTime>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// The last failure, with the CA's problem document when there was one.
    pub last_error: Option<String>,
}

/// The ACME side of one host: the certificate it serves (if any yet), the challenge of a
/// running order, and its status.
pub struct AcmeHost {
    name: String,
    served: ArcSwapOption<Served>,
    challenge: ArcSwapOption<Challenge>,
    status: Mutex<AcmeStatus>,
    backoff: Mutex<Backoff>,
}

impl fmt::Debug for AcmeHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeHost")
            .field("name", &self.name)
            .field("has_certificate", &self.served.load().is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these small locks cannot leave them inconsistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AcmeHost {
    fn new(name: String) -> Self {
        AcmeHost {
            name,
            served: ArcSwapOption::empty(),
            challenge: ArcSwapOption::empty(),
            status: Mutex::new(AcmeStatus::default()),
            backoff: Mutex::new(Backoff::default()),
        }
    }

    /// The certificate to serve, if one was issued or cached and has not expired (an expired
    /// one would fail every client anyway, and must not count as ready).
    #[must_use]
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.served
            .load()
            .as_ref()
            .filter(|s| s.info.not_after > SystemTime::now())
            .map(|s| s.key.clone())
    }

    /// Facts about the certificate served.
    #[must_use]
    pub fn certificate(&self) -> Option<CertInfo> {
        self.served.load().as_ref().map(|s| s.info.clone())
    }

    /// Where this host's ACME work stands.
    #[must_use]
    pub fn status(&self) -> AcmeStatus {
        lock(&self.status).clone()
    }

    /// The TLS configuration answering a TLS-ALPN-01 validation, while an order runs.
    #[must_use]
    pub fn challenge_config(&self) -> Option<Arc<ServerConfig>> {
        self.challenge.load().as_ref().map(|c| c.tls.clone())
    }

    /// The HTTP-01 key authorization for `token`, while an order for this host waits for it.
    #[must_use]
    pub fn http01_key_authorization(&self, token: &str) -> Option<String> {
        self.challenge
            .load()
            .as_ref()
            .and_then(|c| c.resolver.get_http_01_key_auth(token))
    }

    /// Serves `other`'s certificate until this host has its own (settings changed on reload).
    fn inherit(&self, other: &AcmeHost) {
        if self.served.load().is_none()
            && let Some(s) = other.served.load_full()
        {
            self.served.store(Some(Arc::new(Served {
                key: s.key.clone(),
                info: CertInfo {
                    // Not from this directory: order a new one at once.
                    source: "acme (previous directory)".to_owned(),
                    ..s.info.clone()
                },
            })));
        }
    }

    /// When the next order is due: at once without a certificate (or with one from another
    /// directory), else at two thirds of its lifetime; never before the back-off deadline.
    fn due(&self, settings: &Settings) -> SystemTime {
        let now = SystemTime::now();
        let renew = match self.served.load().as_ref() {
            Some(s) if s.info.source == "acme" => renew_at(&s.info),
            _ => now,
        };
        let backoff = lock(&self.backoff)
            .next_attempt
            // A deadline further out than the longest back-off means the clock moved.
            .map(|t| t.min(now + settings.config.backoff_max));
        backoff.map_or(renew, |b| b.max(renew))
    }

    fn set_status(&self, f: impl FnOnce(&mut AcmeStatus)) {
        f(&mut lock(&self.status));
    }
}

/// rustls-acme's renewal schedule: when two thirds of the lifetime have passed.
#[must_use]
pub fn renew_at(info: &CertInfo) -> SystemTime {
    let life = info
        .not_after
        .duration_since(info.not_before)
        .unwrap_or_default();
    info.not_after - life / 3
}

/// Failures since the last success and when to try again; persisted as JSON.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Backoff {
    failures: u32,
    #[serde(with = "unix_seconds")]
    next_attempt: Option<SystemTime>,
    #[serde(default)]
    last_error: Option<String>,
}

mod unix_seconds {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub(super) fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let secs = t.and_then(|t| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs()));
        serde::Serialize::serialize(&secs, s)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let secs: Option<u64> = serde::Deserialize::deserialize(d)?;
        Ok(secs.map(|s| UNIX_EPOCH + Duration::from_secs(s)))
    }
}

impl Backoff {
    fn read(dir: &Path, host: &str) -> Option<Backoff> {
        let path = backoff_path(dir, host);
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(b) => Some(b),
            Err(e) => {
                warn!(host, file = %path.display(), error = %e, "ignoring an unreadable ACME back-off record");
                None
            }
        }
    }

    /// Wait after the `failures`-th failure: `initial`, doubled each time, at most `max`.
    fn delay(failures: u32, initial: Duration, max: Duration) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        initial.saturating_mul(factor).min(max)
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, synced,
/// renamed over `path`, and the directory synced. Mode 0600 (keys live in these files).
fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself must reach the disk too.
        std::fs::File::open(dir)?.sync_all()
    };
    let res = write();
    if res.is_err() {
        // Only our own temporary file; the file at `path` is never touched on an error.
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

async fn write_atomic_async(path: PathBuf, contents: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || write_atomic(&path, &contents))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// The account key of one directory, shared by every host: created once and never
/// overwritten, and registered with the CA once per process before any order.
///
/// Each order (rustls-acme's `AcmeState`) registers the key again, which a CA answers with the
/// existing account. Hosts that start together would otherwise all register a new key at the
/// same moment, and a CA may create the account for one of them and refuse the others (Pebble
/// answers `serverInternal`): those hosts would fail and wait out a back-off for nothing.
struct AccountStore {
    path: PathBuf,
    /// Whether this process has registered the key; held while the key is read, created or
    /// registered.
    registered: tokio::sync::Mutex<bool>,
}

impl AccountStore {
    fn new(path: PathBuf) -> Self {
        AccountStore {
            path,
            registered: tokio::sync::Mutex::new(false),
        }
    }

    async fn load_or_create(&self) -> io::Result<Vec<u8>> {
        let _guard = self.registered.lock().await;
        self.read_or_create().await
    }

    /// Registers the account (RFC 8555 §7.3) unless this process already has. Hosts arriving
    /// meanwhile wait, and then find the account.
    async fn register(&self, settings: &Settings) -> Result<(), Error> {
        let mut registered = self.registered.lock().await;
        if *registered {
            return Ok(());
        }
        let key = self.read_or_create().await.map_err(Error::Account)?;
        let acme = |e: AcmeError| Error::Order(OrderError::Acme(e));
        let directory = Directory::discover(&settings.client, &settings.config.directory)
            .await
            .map_err(acme)?;
        Account::create_with_keypair(&settings.client, directory, &settings.config.contact, &key)
            .await
            .map_err(acme)?;
        *registered = true;
        Ok(())
    }

    async fn read_or_create(&self) -> io::Result<Vec<u8>> {
        let path = self.path.clone();
        match tokio::fs::read(&path).await {
            Ok(pem) => {
                let key = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: not a PKCS#8 PEM key: {e}", path.display()),
                    )
                })?;
                Ok(key.secret_pkcs8_der().to_vec())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let der = rustls_acme::acme::Account::generate_key_pair();
                let pem = rcgen::KeyPair::try_from(der.as_slice())
                    .map_err(|e| io::Error::other(format!("encoding the account key: {e}")))?
                    .serialize_pem();
                write_atomic_async(path.clone(), pem.into_bytes()).await?;
                info!(file = %path.display(), "ACME account key created");
                Ok(der)
            }
            Err(e) => Err(e),
        }
    }
}

/// rustls-acme's cache for one order of one host. `load_cert` returns nothing: the host task
/// starts an order only when one is due, and serves the cached certificate itself. The new
/// certificate is kept for the task and written atomically.
struct HostCache {
    path: PathBuf,
    account: Arc<AccountStore>,
    issued: Arc<Mutex<Option<Vec<u8>>>>,
}

#[async_trait]
impl CertCache for HostCache {
    type EC = io::Error;

    async fn load_cert(&self, _: &[String], _: &str) -> Result<Option<Vec<u8>>, io::Error> {
        Ok(None)
    }

    async fn store_cert(&self, _: &[String], _: &str, cert: &[u8]) -> Result<(), io::Error> {
        *lock(&self.issued) = Some(cert.to_vec());
        write_atomic_async(self.path.clone(), cert.to_vec()).await
    }
}

#[async_trait]
impl AccountCache for HostCache {
    type EA = io::Error;

    async fn load_account(&self, _: &[String], _: &str) -> Result<Option<Vec<u8>>, io::Error> {
        self.account.load_or_create().await.map(Some)
    }

    async fn store_account(&self, _: &[String], _: &str, _: &[u8]) -> Result<(), io::Error> {
        // Never reached (load_account always has a key); never overwrite an account key.
        Ok(())
    }
}

/// Runs one order for `host` and returns the new certificate.
async fn attempt(settings: &Settings, host: &AcmeHost) -> Result<(Served, bool), Error> {
    settings.account.register(settings).await?;
    let issued = Arc::new(Mutex::new(None));
    let cache = HostCache {
        path: cert_path(&settings.dir, &host.name),
        account: settings.account.clone(),
        issued: issued.clone(),
    };
    let mut state = rustls_acme::AcmeConfig::new_with_client_config(
        [host.name.as_str()],
        settings.client.clone(),
    )
    .directory(&settings.config.directory)
    .contact(&settings.config.contact)
    .challenge_type(match settings.config.challenge {
        AcmeChallenge::TlsAlpn01 => UseChallenge::TlsAlpn01,
        AcmeChallenge::Http01 => UseChallenge::Http01,
    })
    .cache(cache)
    .state();
    let resolver = state.resolver();
    let mut tls = ServerConfig::builder_with_provider(settings.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Unusable(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone() as Arc<dyn ResolvesServerCert>);
    tls.alpn_protocols = vec![ACME_TLS_ALPN_NAME.to_vec()];
    host.challenge.store(Some(Arc::new(Challenge {
        resolver,
        tls: Arc::new(tls),
    })));
    let _clear = ClearChallenge(host);
    let saved = loop {
        match state.next().await {
            Some(Ok(EventOk::CertCacheStore)) => break true,
            Some(Err(EventError::CertCacheStore(e))) => {
                warn!(host = %host.name, error = %e, "ACME certificate issued but not saved to the cache; it is served, but a restart will order again");
                break false;
            }
            Some(Ok(
                EventOk::DeployedNewCert | EventOk::DeployedCachedCert | EventOk::AccountCacheStore,
            )) => {}
            Some(Err(EventError::Order(e))) => return Err(Error::Order(e)),
            Some(Err(EventError::AccountCacheLoad(e) | EventError::AccountCacheStore(e))) => {
                return Err(Error::Account(e));
            }
            Some(Err(EventError::NewCertParse(e) | EventError::CachedCertParse(e))) => {
                return Err(Error::Unusable(e.to_string()));
            }
            Some(Err(EventError::CertCacheLoad(e))) => return Err(Error::Account(e)),
            None => return Err(Error::Unusable("the ACME state ended".into())),
        }
    };
    let pem = lock(&issued)
        .take()
        .ok_or_else(|| Error::Unusable("no certificate was stored".into()))?;
    let served = parse_pem(&pem, &host.name, &settings.provider).map_err(Error::Unusable)?;
    Ok((served, saved))
}

/// Removes the challenge answers when an attempt ends, however it ends.
struct ClearChallenge<'a>(&'a AcmeHost);

impl Drop for ClearChallenge<'_> {
    fn drop(&mut self) {
        self.0.challenge.store(None);
    }
}

fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

/// Sleeps until the wall-clock time `until`; `false` if cancelled first.
async fn sleep_until(until: SystemTime, token: &CancellationToken) -> bool {
    loop {
        let Ok(left) = until.duration_since(SystemTime::now()) else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(left.min(MAX_SLEEP)) => {}
            () = token.cancelled() => return false,
        }
    }
}

/// The task of one ACME host: wait until an order is due, order, deploy, repeat.
async fn run_host(
    settings: Arc<Settings>,
    host: Arc<AcmeHost>,
    metrics: Metrics,
    token: CancellationToken,
) {
    let name = host.name.clone();
    loop {
        let due = host.due(&settings);
        host.set_status(|s| {
            s.ordering = false;
            s.next_attempt = Some(due);
        });
        if due > SystemTime::now() {
            info!(host = %name, next_attempt = %rfc3339(due), "next ACME order scheduled");
        }
        if !sleep_until(due, &token).await {
            return;
        }
        host.set_status(|s| {
            s.ordering = true;
            s.next_attempt = None;
        });
        let renewal = host
            .served
            .load()
            .as_ref()
            .is_some_and(|s| s.info.source == "acme");
        info!(host = %name, directory = %settings.config.directory, challenge = %settings.config.challenge, "ACME order started");
        let result = tokio::select! {
            r = tokio::time::timeout(ATTEMPT_LIMIT, attempt(&settings, &host)) => {
                r.unwrap_or(Err(Error::Timeout(ATTEMPT_LIMIT)))
            }
            () = token.cancelled() => return,
        };
        match result {
            Ok((served, saved)) => deployed(&settings, &host, &metrics, served, saved, renewal),
            Err(e) => failed(&settings, &host, &metrics, &e).await,
        }
    }
}

/// A new certificate: serve it, forget the back-off, log and count.
fn deployed(
    settings: &Settings,
    host: &AcmeHost,
    metrics: &Metrics,
    served: Served,
    saved: bool,
    renewal: bool,
) {
    let name = &host.name;
    let event = if renewal { "renewed" } else { "issued" };
    let info = served.info.clone();
    host.served.store(Some(Arc::new(served)));
    *lock(&host.backoff) = Backoff::default();
    host.set_status(|s| {
        s.failures = 0;
        s.last_error = None;
    });
    if saved {
        let path = backoff_path(&settings.dir, name);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(host = %name, file = %path.display(), error = %e, "cannot remove the ACME back-off record");
        }
    }
    info!(
        host = %name,
        event,
        issuer = %info.issuer,
        not_after = %rfc3339(info.not_after),
        renew_at = %rfc3339(renew_at(&info)),
        "ACME certificate {event}"
    );
    metrics.acme_event(name, event);
    metrics.certificate_expiry(name, "acme", info.not_after);
}

/// A failed attempt: count it, persist when to try again, log with the CA's problem document.
async fn failed(settings: &Settings, host: &AcmeHost, metrics: &Metrics, e: &Error) {
    let name = &host.name;
    let problem = e.problem();
    let error = crate::error::chain(e);
    let record = {
        let mut b = lock(&host.backoff);
        b.failures = b.failures.saturating_add(1);
        let delay = Backoff::delay(
            b.failures,
            settings.config.backoff_initial,
            settings.config.backoff_max,
        );
        b.next_attempt = Some(SystemTime::now() + delay);
        b.last_error = Some(match &problem {
            Some(p) => format!(
                "{} {}",
                p.typ.as_deref().unwrap_or(""),
                p.detail.as_deref().unwrap_or("")
            )
            .trim()
            .to_owned(),
            None => error.clone(),
        });
        b.clone()
    };
    host.set_status(|s| {
        s.failures = record.failures;
        s.last_error.clone_from(&record.last_error);
    });
    let path = backoff_path(&settings.dir, name);
    let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    if let Err(we) = write_atomic_async(path.clone(), json).await {
        warn!(host = %name, file = %path.display(), error = %we, "cannot persist the ACME back-off record");
    }
    warn!(
        host = %name,
        event = "failed",
        failures = record.failures,
        next_attempt = %record.next_attempt.map(|t| rfc3339(t).to_string()).unwrap_or_default(),
        problem_type = problem.as_ref().and_then(|p| p.typ.as_deref()).unwrap_or(""),
        problem_detail = problem.as_ref().and_then(|p| p.detail.as_deref()).unwrap_or(""),
        still_serving = host.served.load().is_some(),
        %error,
        "ACME order failed"
    );
    metrics.acme_event(name, "failed");
}

/// Runs the host tasks and keeps them in line with the configuration across reloads.
pub(crate) struct Manager {
    resolver: Arc<SniResolver>,
    metrics: Metrics,
    token: CancellationToken,
    tracker: TaskTracker,
    settings: Option<Arc<Settings>>,
    tasks: HashMap<String, CancellationToken>,
}

impl Manager {
    /// A manager whose tasks stop when `token` is cancelled.
    pub(crate) fn new(
        resolver: Arc<SniResolver>,
        metrics: Metrics,
        token: CancellationToken,
    ) -> Self {
        Manager {
            resolver,
            metrics,
            token,
            tracker: TaskTracker::new(),
            settings: None,
            tasks: HashMap::new(),
        }
    }

    /// Makes the ACME hosts those of `plan`: hosts that stay keep their task and certificate
    /// (unless `[tls.acme]` changed: then they restart, serving the old certificate until the
    /// new directory issues one), new hosts start, removed hosts stop.
    pub(crate) fn apply(&mut self, plan: Option<Plan>) {
        let old = self.resolver.acme_hosts();
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
        self.resolver.set_acme_hosts(next);
        self.settings.clone_from(&settings);
        let Some(settings) = settings else { return };
        for (name, host) in start {
            let token = self.token.child_token();
            self.tasks.insert(name, token.clone());
            if let Some(info) = host.certificate() {
                self.metrics
                    .certificate_expiry(&host.name, "acme", info.not_after);
            }
            self.tracker.spawn(run_host(
                settings.clone(),
                host,
                self.metrics.clone(),
                token,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn directory_names_are_file_names() {
        assert_eq!(
            directory_dir_name("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            directory_dir_name("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(directory_dir_name("https://../../x"), "x");
        assert_eq!(directory_dir_name("https://.."), "directory");
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let m = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        assert_eq!(Backoff::delay(1, m, max), m);
        assert_eq!(Backoff::delay(2, m, max), m * 2);
        assert_eq!(Backoff::delay(3, m, max), m * 4);
        assert_eq!(Backoff::delay(7, m, max), max);
        assert_eq!(Backoff::delay(u32::MAX, m, max), max);
    }

    #[test]
    fn problem_document_is_found_in_the_http_error() {
        let msg = r#"non 2xx http status: 400 "{\n  \"type\": \"urn:ietf:params:acme:error:malformed\",\n  \"detail\": \"bad \\\"thing\\\" \u{e9}\",\n  \"status\": 400\n}""#;
        let p = problem_from_message(msg).unwrap();
        assert_eq!(
            p.typ.as_deref(),
            Some("urn:ietf:params:acme:error:malformed")
        );
        assert_eq!(p.detail.as_deref(), Some("bad \"thing\" é"));
        assert!(problem_from_message("io error: connection refused").is_none());
    }

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            source: "acme".into(),
            names: vec![],
            issuer: String::new(),
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86_400),
        };
        assert_eq!(renew_at(&info), start + Duration::from_secs(60 * 86_400));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.pem"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A failed write (directory gone) leaves nothing behind and reports the error.
        let gone = dir.path().join("missing").join("y.pem");
        assert!(write_atomic(&gone, b"x").is_err());
    }
}
