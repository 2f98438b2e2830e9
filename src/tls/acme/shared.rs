//! A host's task when the ACME state is shared by several replicas (`tls.acme.store`):
//!
//! 1. The certificate and back-off come from the store (re-read every [`REREAD`], and at once
//!    when another replica announces a new certificate with NOTIFY); a certificate that
//!    differs from the one served is served from then on and copied under `cache_dir`, which
//!    is what a replica serves when it starts while PostgreSQL is down.
//! 2. When an order is due, the replica tries the host's advisory lock. Held elsewhere: it
//!    waits and re-reads (the holder's certificate arrives through the store). Taken: it
//!    re-reads under the lock (another replica may just have finished), then orders.
//! 3. The order is run here with rustls-acme's ACME client (not its `AcmeState`): each
//!    challenge's key authorization is committed to the store *before* the CA is asked to
//!    validate, so whichever replica the CA reaches answers it.
//! 4. The lock lives on its own connection: if that connection ends mid-order the order is
//!    abandoned (another replica may take the lock now), and a replica that dies releases it
//!    with its session.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_acme::OrderError;
use rustls_acme::acme::{
    Account, AcmeError, AuthStatus, Challenge, ChallengeType, Directory, OrderStatus,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::cache;
use super::host::{AcmeHost, AcmeHosts, Backoff, Served, lock};
use super::order::{self, ATTEMPT_LIMIT, Error, Settings, rfc3339};
use super::store::{self, Notification, SharedStore};
use crate::config::AcmeChallenge;
use crate::metrics::Metrics;
use crate::tls::cert::CertSource;

/// Longest time between two reads of a host's row (the fallback when a NOTIFY was missed).
pub(super) const REREAD: Duration = Duration::from_secs(30);
/// How often a replica waiting for another's order looks again.
const LOCK_POLL: Duration = Duration::from_secs(2);
/// Polls of an authorization (1 s apart) and of an order before giving up.
const POLLS: u32 = 30;

fn acme(e: AcmeError) -> Error {
    Error::Order(OrderError::Acme(e))
}

/// Wait after the `n`-th consecutive store failure: 1 s doubling up to 60 s.
fn store_retry(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// Sleeps `d` unless `host` is announced changed or `token` cancelled first; `false` if
/// cancelled.
async fn nap(d: Duration, host: &AcmeHost, token: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = host.changed.notified() => true,
        () = token.cancelled() => false,
    }
}

/// Counts and logs store failures: the first, then every power of two, then recovery.
struct StoreHealth {
    failures: u32,
}

impl StoreHealth {
    fn failed(
        &mut self,
        host: &str,
        metrics: &Metrics,
        op: &'static str,
        e: &store::Error,
    ) -> Duration {
        self.failures = self.failures.saturating_add(1);
        metrics.acme_store_error(op);
        if self.failures.is_power_of_two() {
            warn!(host, op, failures = self.failures, error = %crate::error::chain(e), "ACME store not usable; serving what this replica has and retrying");
        }
        store_retry(self.failures)
    }

    fn ok(&mut self, host: &str) {
        if self.failures > 0 {
            info!(host, failures = self.failures, "ACME store reachable again");
        }
        self.failures = 0;
    }
}

/// Reads `host`'s certificate and back-off from the store and serves a certificate that
/// differs from the one served (copying it under `cache_dir`).
async fn refresh(
    settings: &Settings,
    shared: &SharedStore,
    host: &AcmeHost,
    metrics: &Metrics,
) -> Result<(), store::Error> {
    let name = &host.name;
    if let Some(stored) = shared.store.load_cert(name).await? {
        let served = cache::parse_pem(&stored.pem, name, &settings.provider).map_err(|m| {
            store::Error::Data(format!("the certificate of {name} in the store: {m}"))
        })?;
        let same = host.served.load().as_ref().is_some_and(|s| {
            s.info.source == CertSource::Acme && s.key.cert.first() == served.key.cert.first()
        });
        if !same {
            let info = served.info.clone();
            host.served.store(Some(Arc::new(served)));
            // The order that made it has ended: a TLS-ALPN-01 answer cached from it must not
            // answer the next order's validation.
            shared.challenges.forget(name);
            metrics.certificate_expiry(name, "acme", info.not_after);
            info!(
                host = %name,
                ordered_by = %stored.ordered_by,
                ordered_at = %rfc3339(stored.ordered_at),
                not_after = %rfc3339(info.not_after),
                "ACME certificate from the store served"
            );
            let path = cache::cert_path(&settings.dir, name);
            if let Err(e) = cache::write_atomic_async(path.clone(), stored.pem).await {
                warn!(host = %name, file = %path.display(), error = %e, "cannot write the local copy of the store's certificate");
            }
        }
    }
    let row = shared.store.load_backoff(name).await?.unwrap_or_default();
    let b = Backoff {
        failures: row.failures,
        next_attempt: row.next_attempt,
        last_error: row.last_error,
    };
    host.set_status(|s| {
        s.failures = b.failures;
        s.last_error.clone_from(&b.last_error);
    });
    *lock(&host.backoff) = b;
    Ok(())
}

/// The task of one ACME host with a shared store.
#[allow(clippy::too_many_lines)] // one loop whose steps read in order; split, it reads worse
pub(super) async fn run_host(
    settings: Arc<Settings>,
    host: Arc<AcmeHost>,
    metrics: Metrics,
    token: CancellationToken,
) {
    let Some(shared) = settings.shared.clone() else {
        return;
    };
    let name = host.name.clone();
    let mut health = StoreHealth { failures: 0 };
    loop {
        if let Err(e) = refresh(&settings, &shared, &host, &metrics).await {
            let wait = health.failed(&name, &metrics, "read", &e);
            if !nap(wait, &host, &token).await {
                return;
            }
            continue;
        }
        health.ok(&name);
        let due = host.due(settings.config.backoff_max);
        host.set_status(|s| {
            s.ordering = false;
            s.next_attempt = Some(due);
        });
        let now = SystemTime::now();
        if due > now {
            let left = due.duration_since(now).unwrap_or_default();
            if !nap(left.min(REREAD), &host, &token).await {
                return;
            }
            continue;
        }
        let held = match shared.store.try_lock(&name).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                metrics.acme_lock_wait(&name);
                info!(host = %name, "another replica is ordering this host's certificate; waiting for it");
                if !nap(LOCK_POLL, &host, &token).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                let wait = health.failed(&name, &metrics, "lock", &e);
                if !nap(wait, &host, &token).await {
                    return;
                }
                continue;
            }
        };
        // Under the lock the store is the truth: another replica may have just finished.
        if let Err(e) = refresh(&settings, &shared, &host, &metrics).await {
            let wait = health.failed(&name, &metrics, "read", &e);
            drop(held);
            if !nap(wait, &host, &token).await {
                return;
            }
            continue;
        }
        if host.due(settings.config.backoff_max) > SystemTime::now() {
            continue;
        }
        let renewal = host.begin_order();
        info!(host = %name, directory = %settings.config.directory, challenge = %settings.config.challenge, replica = %shared.store.replica, "ACME order started (holding the cluster lock)");
        let result = tokio::select! {
            r = tokio::time::timeout(ATTEMPT_LIMIT, attempt(&settings, &shared, &host)) => {
                r.unwrap_or(Err(Error::Timeout(ATTEMPT_LIMIT)))
            }
            () = held.lost() => Err(Error::LockLost),
            () = token.cancelled() => return,
        };
        shared.challenges.forget(&name);
        if let Err(e) = shared.store.clear_challenges(&name).await {
            health.failed(&name, &metrics, "clear_challenges", &e);
        }
        match result {
            Ok((served, key_pem, chain)) => {
                let info = served.info.clone();
                if let Err(e) = shared
                    .store
                    .save_cert(
                        &name,
                        &key_pem,
                        &chain,
                        info.not_after,
                        super::renew_at(&info),
                    )
                    .await
                {
                    health.failed(&name, &metrics, "save_cert", &e);
                    warn!(host = %name, "the new certificate is served here but not in the store; other replicas will order when their turn comes");
                }
                let path = cache::cert_path(&settings.dir, &name);
                let pem = [key_pem.as_slice(), b"\n", chain.as_bytes()].concat();
                if let Err(e) = cache::write_atomic_async(path.clone(), pem).await {
                    warn!(host = %name, file = %path.display(), error = %e, "cannot write the local copy of the certificate");
                }
                order::deployed(&settings, &host, &metrics, served, false, renewal);
            }
            Err(e) => order::failed(&settings, &host, &metrics, &e).await,
        }
        drop(held);
    }
}

/// The account, registered once per process (under the cluster's account lock, so replicas
/// starting together do not register the same key at the same moment).
async fn account(settings: &Settings, shared: &SharedStore) -> Result<Arc<Account>, Error> {
    let mut slot = shared.account.lock().await;
    if let Some(a) = slot.as_ref() {
        return Ok(a.clone());
    }
    let key = shared.store.account_key().await.map_err(Error::Store)?;
    let mut held = None;
    for _ in 0..POLLS {
        if let Some(l) = shared
            .store
            .try_lock("\0account")
            .await
            .map_err(Error::Store)?
        {
            held = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let Some(_held) = held else {
        return Err(Error::Unusable(
            "the account lock stayed held by another replica".into(),
        ));
    };
    let directory = Directory::discover(&settings.client, &settings.config.directory)
        .await
        .map_err(acme)?;
    let account =
        Account::create_with_keypair(&settings.client, directory, &settings.config.contact, &key)
            .await
            .map_err(acme)?;
    let account = Arc::new(account);
    *slot = Some(account.clone());
    Ok(account)
}

/// The key authorization (RFC 8555 §8.1) of `token` for `account`.
#[allow(clippy::result_large_err)] // the order's error, as everywhere in this module
fn key_authorization(account: &Account, token: &str) -> Result<String, Error> {
    let probe = [Challenge {
        typ: ChallengeType::Http01,
        url: String::new(),
        token: token.to_owned(),
        error: None,
    }];
    account.http_01(&probe).map(|(_, k)| k).map_err(acme)
}

/// One order: returns the certificate to serve, its key (PEM) and its chain (PEM).
async fn attempt(
    settings: &Settings,
    shared: &SharedStore,
    host: &AcmeHost,
) -> Result<(Served, Vec<u8>, String), Error> {
    let account = account(settings, shared).await?;
    let client = &settings.client;
    let unusable = |e: rcgen::Error| Error::Unusable(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(unusable)?;
    let mut params = rcgen::CertificateParams::new(vec![host.name.clone()]).map_err(unusable)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(unusable)?;
    let (order_url, mut order) = account
        .new_order(client, vec![host.name.clone()])
        .await
        .map_err(acme)?;
    for _ in 0..POLLS {
        match order.status.clone() {
            OrderStatus::Pending => {
                for url in &order.authorizations {
                    authorize(settings, shared, &account, host, url).await?;
                }
                order = account.order(client, &order_url).await.map_err(acme)?;
            }
            OrderStatus::Processing => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                order = account.order(client, &order_url).await.map_err(acme)?;
            }
            OrderStatus::Ready => {
                order = account
                    .finalize(client, &order.finalize, csr.der())
                    .await
                    .map_err(acme)?;
            }
            OrderStatus::Valid { certificate } => {
                let chain = account
                    .certificate(client, certificate)
                    .await
                    .map_err(acme)?;
                let key_pem = key.serialize_pem().into_bytes();
                let pem = [key_pem.as_slice(), b"\n", chain.as_bytes()].concat();
                let served = cache::parse_pem(&pem, &host.name, &settings.provider)
                    .map_err(Error::Unusable)?;
                return Ok((served, key_pem, chain));
            }
            OrderStatus::Invalid => return Err(Error::Order(OrderError::BadOrder(order))),
        }
    }
    Err(Error::Order(OrderError::ProcessingTimeout(order)))
}

/// Answers one authorization: the key authorization goes into the store first, then the CA
/// is asked to validate.
async fn authorize(
    settings: &Settings,
    shared: &SharedStore,
    account: &Account,
    host: &AcmeHost,
    url: &str,
) -> Result<(), Error> {
    let client = &settings.client;
    let auth = account.auth(client, url).await.map_err(acme)?;
    match auth.status {
        AuthStatus::Valid => return Ok(()),
        AuthStatus::Pending => {}
        _ => return Err(Error::Order(OrderError::BadAuth(auth))),
    }
    let (want, missing) = match settings.config.challenge {
        AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, AcmeError::NoTlsAlpn01Challenge),
        AcmeChallenge::Http01 => (ChallengeType::Http01, AcmeError::NoHttp01Challenge),
    };
    let challenge = auth
        .challenges
        .iter()
        .find(|c| c.typ == want)
        .ok_or_else(|| acme(missing))?;
    let key_auth = key_authorization(account, &challenge.token)?;
    shared
        .store
        .put_challenge(&host.name, &challenge.token, &key_auth)
        .await
        .map_err(Error::Store)?;
    shared
        .challenges
        .remember(&host.name, &challenge.token, &key_auth);
    account
        .challenge(client, &challenge.url)
        .await
        .map_err(acme)?;
    for _ in 0..POLLS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let auth = account.auth(client, url).await.map_err(acme)?;
        match auth.status {
            AuthStatus::Pending => {}
            AuthStatus::Valid => return Ok(()),
            _ => return Err(Error::Order(OrderError::BadAuth(auth))),
        }
    }
    Err(Error::Order(OrderError::TooManyAttemptsAuth(
        host.name.clone(),
    )))
}

/// Wakes the host tasks when another replica announces a certificate: one LISTEN connection,
/// reconnected with back-off (the host tasks' periodic re-read covers any gap).
pub(super) async fn listen(
    settings: Arc<Settings>,
    hosts: AcmeHosts,
    metrics: Metrics,
    token: CancellationToken,
) {
    let Some(shared) = settings.shared.clone() else {
        return;
    };
    let mut failures = 0u32;
    loop {
        match shared.store.listen().await {
            Ok(mut rx) => {
                if failures > 0 {
                    info!("ACME store notifications received again");
                }
                failures = 0;
                loop {
                    tokio::select! {
                        n = rx.recv() => match n {
                            Some(Notification::Cert { directory, host }) => {
                                if directory == shared.store.directory()
                                    && let Some(h) = hosts.get(&host)
                                {
                                    h.changed.notify_one();
                                }
                            }
                            None => break,
                        },
                        () = token.cancelled() => return,
                    }
                }
                metrics.acme_store_error("listen");
                warn!("ACME store notification connection lost; reconnecting");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics.acme_store_error("listen");
                if failures.is_power_of_two() {
                    warn!(failures, error = %crate::error::chain(&e), "cannot listen for ACME store notifications; retrying");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(store_retry(failures.max(1))) => {}
            () = token.cancelled() => return,
        }
    }
}
