//! One host's task and its orders: wait until an order is due, run it with rustls-acme
//! (one `AcmeState` per order, dropped afterwards), serve the result, or count the failure
//! and back off. [`Settings`] is `[tls.acme]` made ready for the orders.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, ServerConfig};
use rustls_acme::acme::{ACME_TLS_ALPN_NAME, AcmeError, Problem as AcmeProblem};
use rustls_acme::{EventError, EventOk, OrderError, UseChallenge};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::cache::{self, AccountStore, HostCache, RegisterError};
use super::host::{AcmeHost, Backoff, Challenge, Served, lock, renew_at};
use super::store::{BackoffRow, Error as StoreError, SharedStore};
use crate::config::{AcmeChallenge, AcmeConfig};
use crate::metrics::Metrics;

/// Longest one order may take before it counts as failed (rustls-acme has no overall limit;
/// its own polling gives up after about 30 s for a challenge and 17 min for processing).
pub(super) const ATTEMPT_LIMIT: Duration = Duration::from_secs(20 * 60);

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
    /// The shared store (`tls.acme.store`) failed.
    #[error("ACME store")]
    Store(#[source] StoreError),
    /// The connection holding the cluster lock of the host ended mid-order: the order was
    /// abandoned, since another replica may now hold the lock.
    #[error("the connection holding the host's cluster lock ended; order abandoned")]
    LockLost,
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
    pub(super) client: Arc<ClientConfig>,
    pub(super) provider: Arc<CryptoProvider>,
    pub(super) account: Arc<AccountStore>,
    /// The shared store, when `tls.acme.store` is set.
    pub(super) shared: Option<Arc<SharedStore>>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("directory", &self.config.directory)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Runs one order for `host` and returns the new certificate.
async fn attempt(settings: &Settings, host: &AcmeHost) -> Result<(Served, bool), Error> {
    settings
        .account
        .register(
            &settings.client,
            &settings.config.directory,
            &settings.config.contact,
        )
        .await
        .map_err(|e| match e {
            RegisterError::Key(e) => Error::Account(e),
            RegisterError::Acme(e) => Error::Order(OrderError::Acme(e)),
        })?;
    let issued = Arc::new(Mutex::new(None));
    let cache = HostCache {
        path: cache::cert_path(&settings.dir, &host.name),
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
    let served = cache::parse_pem(&pem, &host.name, &settings.provider).map_err(Error::Unusable)?;
    Ok((served, saved))
}

/// Removes the challenge answers when an attempt ends, however it ends.
struct ClearChallenge<'a>(&'a AcmeHost);

impl Drop for ClearChallenge<'_> {
    fn drop(&mut self) {
        self.0.challenge.store(None);
    }
}

pub(super) fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
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
pub(super) async fn run_host(
    settings: Arc<Settings>,
    host: Arc<AcmeHost>,
    metrics: Metrics,
    token: CancellationToken,
) {
    let name = host.name.clone();
    loop {
        let due = host.due(settings.config.backoff_max);
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
        let renewal = host.begin_order();
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
pub(super) fn deployed(
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
        let path = cache::backoff_path(&settings.dir, name);
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
pub(super) async fn failed(settings: &Settings, host: &AcmeHost, metrics: &Metrics, e: &Error) {
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
    if let Some(shared) = &settings.shared {
        let row = BackoffRow {
            failures: record.failures,
            next_attempt: record.next_attempt,
            last_error: record.last_error.clone(),
        };
        if let Err(se) = shared.store.save_backoff(name, &row).await {
            metrics.acme_store_error("save_backoff");
            warn!(host = %name, error = %crate::error::chain(&se), "cannot persist the ACME back-off record in the store");
        }
    } else {
        let path = cache::backoff_path(&settings.dir, name);
        let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        if let Err(we) = cache::write_atomic_async(path.clone(), json).await {
            warn!(host = %name, file = %path.display(), error = %we, "cannot persist the ACME back-off record");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
