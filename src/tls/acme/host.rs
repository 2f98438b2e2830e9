//! The ACME state of one host, shared by the SNI resolver (its certificate, its TLS-ALPN-01
//! answer), the forwarder (its HTTP-01 answer), the status pages and the host's task: what is
//! served, the challenge of a running order, the status and the back-off. Also [`AcmeHosts`],
//! the set of ACME hosts the resolver and the manager share.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::ServerConfig;
use rustls::sign::CertifiedKey;
use rustls_acme::ResolvesServerCertAcme;

use super::store::SharedChallenges;
use crate::tls::cert::{CertInfo, CertSource};

/// Host name (lower case) → its ACME state. Swapped whole when the set of hosts changes.
/// With a shared store (`tls.acme.store`), also the cluster's pending challenges.
#[derive(Debug, Clone, Default)]
pub struct AcmeHosts(
    Arc<ArcSwap<HashMap<String, Arc<AcmeHost>>>>,
    Arc<ArcSwapOption<SharedChallenges>>,
);

impl AcmeHosts {
    /// The hosts now.
    #[must_use]
    pub fn load(&self) -> Arc<HashMap<String, Arc<AcmeHost>>> {
        self.0.load_full()
    }

    /// The state of `host` (lower case), if it gets its certificate over ACME.
    #[must_use]
    pub fn get(&self, host: &str) -> Option<Arc<AcmeHost>> {
        self.0.load().get(host).cloned()
    }

    /// Makes `hosts` the ACME hosts.
    pub(crate) fn store(&self, hosts: HashMap<String, Arc<AcmeHost>>) {
        self.0.store(Arc::new(hosts));
    }

    /// The challenges pending in the shared store, when there is one.
    #[must_use]
    pub fn shared(&self) -> Option<Arc<SharedChallenges>> {
        self.1.load_full()
    }

    pub(crate) fn set_shared(&self, shared: Option<Arc<SharedChallenges>>) {
        self.1.store(shared);
    }
}

/// A certificate being served for an ACME host.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) info: CertInfo,
}

/// The TLS-ALPN-01 / HTTP-01 answers of the order running for a host.
pub(super) struct Challenge {
    pub(super) resolver: Arc<ResolvesServerCertAcme>,
    pub(super) tls: Arc<ServerConfig>,
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
    pub(super) name: String,
    pub(super) served: ArcSwapOption<Served>,
    pub(super) challenge: ArcSwapOption<Challenge>,
    status: Mutex<AcmeStatus>,
    pub(super) backoff: Mutex<Backoff>,
    /// Woken when another replica announces a new certificate for this host (shared store).
    pub(super) changed: tokio::sync::Notify,
}

impl fmt::Debug for AcmeHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeHost")
            .field("name", &self.name)
            .field("has_certificate", &self.served.load().is_some())
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these small locks cannot leave them inconsistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AcmeHost {
    pub(super) fn new(name: String) -> Self {
        AcmeHost {
            name,
            served: ArcSwapOption::empty(),
            challenge: ArcSwapOption::empty(),
            status: Mutex::new(AcmeStatus::default()),
            backoff: Mutex::new(Backoff::default()),
            changed: tokio::sync::Notify::new(),
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
    pub(super) fn inherit(&self, other: &AcmeHost) {
        if self.served.load().is_none()
            && let Some(s) = other.served.load_full()
        {
            self.served.store(Some(Arc::new(Served {
                key: s.key.clone(),
                info: CertInfo {
                    // Not from this directory: order a new one at once.
                    source: CertSource::AcmePreviousDirectory,
                    ..s.info.clone()
                },
            })));
        }
    }

    /// When the next order is due: at once without a certificate (or with one from another
    /// directory), else at two thirds of its lifetime; never before the back-off deadline.
    pub(super) fn due(&self, backoff_max: Duration) -> SystemTime {
        let now = SystemTime::now();
        let renew = match self.served.load().as_ref() {
            Some(s) if s.info.source == CertSource::Acme => renew_at(&s.info),
            _ => now,
        };
        let backoff = lock(&self.backoff)
            .next_attempt
            // A deadline further out than the longest back-off means the clock moved.
            .map(|t| t.min(now + backoff_max));
        backoff.map_or(renew, |b| b.max(renew))
    }

    /// An order starts now: the status says so, and whether it renews this directory's own
    /// certificate (else it is a first issue, or replaces another directory's) is returned.
    pub(super) fn begin_order(&self) -> bool {
        self.set_status(|s| {
            s.ordering = true;
            s.next_attempt = None;
        });
        self.served
            .load()
            .as_ref()
            .is_some_and(|s| s.info.source == CertSource::Acme)
    }

    pub(super) fn set_status(&self, f: impl FnOnce(&mut AcmeStatus)) {
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
pub(super) struct Backoff {
    pub(super) failures: u32,
    #[serde(with = "unix_seconds")]
    pub(super) next_attempt: Option<SystemTime>,
    #[serde(default)]
    pub(super) last_error: Option<String>,
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
    /// Wait after the `failures`-th failure: `initial`, doubled each time, at most `max`.
    pub(super) fn delay(failures: u32, initial: Duration, max: Duration) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        initial.saturating_mul(factor).min(max)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

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
    fn renewal_at_two_thirds_of_the_lifetime() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let info = CertInfo {
            source: CertSource::Acme,
            names: vec![],
            issuer: String::new(),
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86_400),
        };
        assert_eq!(renew_at(&info), start + Duration::from_secs(60 * 86_400));
    }
}
