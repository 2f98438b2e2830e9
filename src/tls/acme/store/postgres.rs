//! The PostgreSQL side of the store: one shared connection for reads and writes, a dedicated
//! connection per host lock and one for LISTEN.
//!
//! Schema (created and migrated at the first connection, under a transaction-scoped advisory
//! lock so replicas starting together migrate once; `trackproxy_schema_version` holds the
//! version):
//!
//! ```text
//! trackproxy_key_check      (id = 1, sealed)                     verification record of store_key
//! trackproxy_acme_account   (directory, key_sealed, created_by)  the account key, never overwritten
//! trackproxy_acme_cert      (directory, host, chain_pem, key_sealed, not_after, renew_at,
//!                            ordered_by, ordered_at)             one certificate per host
//! trackproxy_acme_backoff   (directory, host, failures, next_attempt, last_error, updated_by)
//! trackproxy_acme_challenge (directory, host, token, key_authorization, created_by, created_at)
//! ```
//!
//! Private keys are only ever written sealed (`seal`); chains and key authorizations are
//! public anyway. A new certificate is announced with `NOTIFY trackproxy_acme, 'cert␉dir␉host'`.

use std::future::poll_fn;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex, mpsc};
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use super::seal::Seal;
use super::tls::Tls;
use crate::config::StoreConfig;

/// The schema version this build writes and reads.
const SCHEMA_VERSION: i32 = 1;
const CHANNEL: &str = "trackproxy_acme";
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Advisory lock key taken (per transaction) while the schema is migrated.
const MIGRATION_LOCK: i64 = 0x7472_6b70_0000_0001;
const KEY_CHECK: &[u8] = b"trackproxy store key check";

const MIGRATION_1: &str = "
CREATE TABLE trackproxy_key_check (
    id integer PRIMARY KEY CHECK (id = 1),
    sealed bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE trackproxy_acme_account (
    directory text PRIMARY KEY,
    key_sealed bytea NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE trackproxy_acme_cert (
    directory text NOT NULL,
    host text NOT NULL,
    chain_pem text NOT NULL,
    key_sealed bytea NOT NULL,
    not_after timestamptz NOT NULL,
    renew_at timestamptz NOT NULL,
    ordered_by text NOT NULL,
    ordered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (directory, host)
);
CREATE TABLE trackproxy_acme_backoff (
    directory text NOT NULL,
    host text NOT NULL,
    failures integer NOT NULL,
    next_attempt timestamptz,
    last_error text,
    updated_by text NOT NULL,
    PRIMARY KEY (directory, host)
);
CREATE TABLE trackproxy_acme_challenge (
    directory text NOT NULL,
    host text NOT NULL,
    token text NOT NULL,
    key_authorization text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (directory, host, token)
);
";

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused, failed or could not be reached.
    #[error("PostgreSQL")]
    Db(#[from] tokio_postgres::Error),
    /// No connection in time.
    #[error("no connection to PostgreSQL within {0:?}")]
    Timeout(Duration),
    /// `store_key` is not the key the store was set up with.
    #[error(
        "tls.acme.store_key does not open the store's verification record \
         (trackproxy_key_check): it is not the key this store was set up with"
    )]
    WrongKey,
    /// The store was migrated by a newer trackproxy.
    #[error(
        "the store's schema is version {0}; this trackproxy knows up to {SCHEMA_VERSION}: upgrade it"
    )]
    Schema(i32),
    /// A row that cannot be used.
    #[error("{0}")]
    Data(String),
    /// No runtime could be started to read the store (`trackproxy certs`).
    #[error("cannot start a runtime to read the store")]
    Runtime(#[source] std::io::Error),
}

/// One host as the store holds it, for `trackproxy certs` (its key is not read).
#[derive(Debug)]
pub(in crate::tls::acme) struct ViewRow {
    pub(in crate::tls::acme) host: String,
    /// The certificate chain, when one was issued.
    pub(in crate::tls::acme) chain_pem: Option<String>,
    pub(in crate::tls::acme) ordered_by: Option<String>,
    pub(in crate::tls::acme) ordered_at: Option<SystemTime>,
    pub(in crate::tls::acme) renew_at: Option<SystemTime>,
    pub(in crate::tls::acme) failures: u32,
    pub(in crate::tls::acme) next_attempt: Option<SystemTime>,
}

/// A certificate as the store holds it (key already opened).
pub(in crate::tls::acme) struct StoredCert {
    /// Private key PEM, then the chain: the format of the local cache files.
    pub(in crate::tls::acme) pem: Vec<u8>,
    pub(in crate::tls::acme) ordered_by: String,
    pub(in crate::tls::acme) ordered_at: SystemTime,
}

/// A host's back-off as the store holds it.
#[derive(Debug, Default)]
pub(in crate::tls::acme) struct BackoffRow {
    pub(in crate::tls::acme) failures: u32,
    pub(in crate::tls::acme) next_attempt: Option<SystemTime>,
    pub(in crate::tls::acme) last_error: Option<String>,
}

/// A notification from another replica.
#[derive(Debug)]
pub(in crate::tls::acme) enum Notification {
    /// `host` of `directory` has a new certificate in the store.
    Cert { directory: String, host: String },
}

/// The store of one ACME directory.
pub(in crate::tls::acme) struct PgStore {
    config: tokio_postgres::Config,
    /// TLS as `sslmode` and `sslrootcert` ask (`disable` never uses it).
    tls: MakeRustlsConnect,
    directory: String,
    seal: Seal,
    /// Who writes (host name and process id), for `ordered_by` and `trackproxy certs`.
    pub(in crate::tls::acme) replica: String,
    client: Mutex<Option<Arc<Client>>>,
}

impl PgStore {
    /// A store for `directory` (nothing contacted yet).
    ///
    /// # Errors
    /// When the URL cannot be parsed or the key is not 32 bytes (the message never holds
    /// either).
    pub(in crate::tls::acme) fn new(cfg: &StoreConfig, directory: &str) -> Result<Self, String> {
        let tls = Tls::from_url(&cfg.url)?;
        let mut config = tokio_postgres::Config::from_str(&tls.url)
            .map_err(|e| format!("not a usable PostgreSQL URL: {e}"))?;
        let tls = tls.connector()?;
        if let Some(p) = &cfg.password {
            config.password(p.0.clone());
        }
        if config.get_application_name().is_none() {
            config.application_name("trackproxy");
        }
        config.connect_timeout(CONNECT_LIMIT);
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let seal = Seal::new(&cfg.key.0).ok_or("the store key must be 32 bytes")?;
        Ok(PgStore {
            config,
            tls,
            directory: directory.to_owned(),
            seal,
            replica: replica_name(),
            client: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<(Client, CancellationToken), Error> {
        let (client, mut conn) =
            tokio::time::timeout(CONNECT_LIMIT, self.config.connect(self.tls.clone()))
                .await
                .map_err(|_| Error::Timeout(CONNECT_LIMIT))??;
        let closed = CancellationToken::new();
        let guard = closed.clone().drop_guard();
        tokio::spawn(async move {
            let _guard = guard;
            // Notifications on a connection without LISTEN are none; errors end it.
            while let Some(Ok(_)) = poll_fn(|cx| conn.poll_message(cx)).await {}
        });
        Ok((client, closed))
    }

    /// The shared connection, (re)connected, migrated and key-checked when needed.
    async fn client(&self) -> Result<Arc<Client>, Error> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        *slot = None;
        let (mut client, _closed) = self.connect().await?;
        migrate(&mut client).await?;
        self.check_key(&client).await?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Connects, migrates the schema and checks the key: the start-up check.
    pub(in crate::tls::acme) async fn check(&self) -> Result<(), Error> {
        self.client().await.map(drop)
    }

    async fn check_key(&self, client: &Client) -> Result<(), Error> {
        let sealed = self
            .seal
            .seal("key-check", KEY_CHECK)
            .map_err(Error::Data)?;
        client
            .execute(
                "INSERT INTO trackproxy_key_check (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                &[&sealed],
            )
            .await?;
        let row = client
            .query_one("SELECT sealed FROM trackproxy_key_check WHERE id = 1", &[])
            .await?;
        let stored: Vec<u8> = row.get(0);
        match self.seal.open("key-check", &stored) {
            Some(p) if p == KEY_CHECK => Ok(()),
            _ => Err(Error::WrongKey),
        }
    }

    fn context(&self, kind: &str, host: &str) -> String {
        format!("{kind}\0{}\0{host}", self.directory)
    }

    /// The account key (PKCS#8 DER) of the directory: created by the first replica that asks,
    /// then read back, never overwritten.
    pub(in crate::tls::acme) async fn account_key(&self) -> Result<Vec<u8>, Error> {
        let c = self.client().await?;
        let ctx = self.context("account", "");
        let fresh = self
            .seal
            .seal(&ctx, &rustls_acme::acme::Account::generate_key_pair())
            .map_err(Error::Data)?;
        c.execute(
            "INSERT INTO trackproxy_acme_account (directory, key_sealed, created_by) VALUES ($1, $2, $3) \
             ON CONFLICT (directory) DO NOTHING",
            &[&self.directory, &fresh, &self.replica],
        )
        .await?;
        let row = c
            .query_one(
                "SELECT key_sealed FROM trackproxy_acme_account WHERE directory = $1",
                &[&self.directory],
            )
            .await?;
        let sealed: Vec<u8> = row.get(0);
        self.seal.open(&ctx, &sealed).ok_or_else(|| {
            Error::Data("the account key in the store does not open with store_key".into())
        })
    }

    /// The certificate of `host`, if the store has one.
    pub(in crate::tls::acme) async fn load_cert(
        &self,
        host: &str,
    ) -> Result<Option<StoredCert>, Error> {
        let c = self.client().await?;
        let Some(row) = c
            .query_opt(
                "SELECT chain_pem, key_sealed, ordered_by, ordered_at FROM trackproxy_acme_cert \
                 WHERE directory = $1 AND host = $2",
                &[&self.directory, &host],
            )
            .await?
        else {
            return Ok(None);
        };
        let chain: String = row.get(0);
        let sealed: Vec<u8> = row.get(1);
        let key = self
            .seal
            .open(&self.context("cert", host), &sealed)
            .ok_or_else(|| {
                Error::Data(format!(
                    "the key of {host} in the store does not open with store_key"
                ))
            })?;
        let mut pem = key;
        pem.push(b'\n');
        pem.extend_from_slice(chain.as_bytes());
        Ok(Some(StoredCert {
            pem,
            ordered_by: row.get(2),
            ordered_at: row.get(3),
        }))
    }

    /// Saves the certificate of `host` (key PEM sealed) and tells the other replicas.
    pub(in crate::tls::acme) async fn save_cert(
        &self,
        host: &str,
        key_pem: &[u8],
        chain_pem: &str,
        not_after: SystemTime,
        renew_at: SystemTime,
    ) -> Result<(), Error> {
        let c = self.client().await?;
        let sealed = self
            .seal
            .seal(&self.context("cert", host), key_pem)
            .map_err(Error::Data)?;
        c.execute(
            "INSERT INTO trackproxy_acme_cert \
               (directory, host, chain_pem, key_sealed, not_after, renew_at, ordered_by, ordered_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
             ON CONFLICT (directory, host) DO UPDATE SET chain_pem = EXCLUDED.chain_pem, \
               key_sealed = EXCLUDED.key_sealed, not_after = EXCLUDED.not_after, \
               renew_at = EXCLUDED.renew_at, ordered_by = EXCLUDED.ordered_by, ordered_at = now()",
            &[&self.directory, &host, &chain_pem, &sealed, &not_after, &renew_at, &self.replica],
        )
        .await?;
        c.execute(
            "DELETE FROM trackproxy_acme_backoff WHERE directory = $1 AND host = $2",
            &[&self.directory, &host],
        )
        .await?;
        let payload = format!("cert\t{}\t{host}", self.directory);
        c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await?;
        Ok(())
    }

    /// The back-off record of `host`, if it is failing.
    pub(in crate::tls::acme) async fn load_backoff(
        &self,
        host: &str,
    ) -> Result<Option<BackoffRow>, Error> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT failures, next_attempt, last_error FROM trackproxy_acme_backoff \
                 WHERE directory = $1 AND host = $2",
                &[&self.directory, &host],
            )
            .await?;
        Ok(row.map(|r| BackoffRow {
            failures: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
            next_attempt: r.get(1),
            last_error: r.get(2),
        }))
    }

    pub(in crate::tls::acme) async fn save_backoff(
        &self,
        host: &str,
        b: &BackoffRow,
    ) -> Result<(), Error> {
        let c = self.client().await?;
        let failures = i32::try_from(b.failures).unwrap_or(i32::MAX);
        c.execute(
            "INSERT INTO trackproxy_acme_backoff (directory, host, failures, next_attempt, last_error, updated_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (directory, host) DO UPDATE SET \
             failures = EXCLUDED.failures, next_attempt = EXCLUDED.next_attempt, \
             last_error = EXCLUDED.last_error, updated_by = EXCLUDED.updated_by",
            &[&self.directory, &host, &failures, &b.next_attempt, &b.last_error, &self.replica],
        )
        .await?;
        Ok(())
    }

    /// Puts a pending challenge into the store (committed before the CA is told to validate).
    pub(in crate::tls::acme) async fn put_challenge(
        &self,
        host: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), Error> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO trackproxy_acme_challenge (directory, host, token, key_authorization, created_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (directory, host, token) DO UPDATE SET \
             key_authorization = EXCLUDED.key_authorization, created_at = now()",
            &[&self.directory, &host, &token, &key_authorization, &self.replica],
        )
        .await?;
        Ok(())
    }

    /// Removes the pending challenges of `host` (and any older than an hour, left by a
    /// replica that died mid-order).
    pub(in crate::tls::acme) async fn clear_challenges(&self, host: &str) -> Result<(), Error> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM trackproxy_acme_challenge WHERE directory = $1 AND \
             (host = $2 OR created_at < now() - interval '1 hour')",
            &[&self.directory, &host],
        )
        .await?;
        Ok(())
    }

    /// The pending challenges of `host`, newest first: (token, key authorization).
    pub(in crate::tls::acme) async fn challenges(
        &self,
        host: &str,
    ) -> Result<Vec<(String, String)>, Error> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT token, key_authorization FROM trackproxy_acme_challenge \
                 WHERE directory = $1 AND host = $2 ORDER BY created_at DESC LIMIT 10",
                &[&self.directory, &host],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Tries to take the cluster-wide lock of `host` (`key` "account" for the account) on a
    /// connection of its own: `None` when another replica holds it. The lock is the
    /// connection's: it ends when the [`HostLock`] is dropped or the session dies.
    pub(in crate::tls::acme) async fn try_lock(
        &self,
        key: &str,
    ) -> Result<Option<HostLock>, Error> {
        let (client, closed) = self.connect().await?;
        let id = lock_id(&self.directory, key);
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&id])
            .await?;
        Ok(row.get::<_, bool>(0).then_some(HostLock {
            _client: client,
            closed,
        }))
    }

    /// Listens for notifications on a connection of its own; the receiver ends when that
    /// connection does.
    pub(in crate::tls::acme) async fn listen(&self) -> Result<mpsc::Receiver<Notification>, Error> {
        let (client, mut conn) =
            tokio::time::timeout(CONNECT_LIMIT, self.config.connect(self.tls.clone()))
                .await
                .map_err(|_| Error::Timeout(CONNECT_LIMIT))??;
        let (tx, rx) = mpsc::channel(64);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Client>();
        tokio::spawn(async move {
            // The client lives as long as this task (the connection ends with it).
            let mut client = None;
            let mut ready = std::pin::pin!(ready_rx);
            loop {
                tokio::select! {
                    c = &mut ready, if client.is_none() => match c {
                        Ok(c) => client = Some(c),
                        Err(_) => return,
                    },
                    m = poll_fn(|cx| conn.poll_message(cx)) => match m {
                        Some(Ok(AsyncMessage::Notification(n))) => {
                            let mut parts = n.payload().splitn(3, '\t');
                            if let (Some("cert"), Some(d), Some(h)) = (parts.next(), parts.next(), parts.next()) {
                                let note = Notification::Cert { directory: d.to_owned(), host: h.to_owned() };
                                if tx.send(note).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    },
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        let _ = ready_tx.send(client);
        Ok(rx)
    }

    /// Every host of this directory in the store, with its certificate and back-off: one
    /// connection, reads only (no migration, no key check, no private key read).
    pub(in crate::tls::acme) async fn view(&self) -> Result<Vec<ViewRow>, Error> {
        let (c, _closed) = self.connect().await?;
        let rows = c
            .query(
                "SELECT coalesce(c.host, b.host), c.chain_pem, c.ordered_by, c.ordered_at, \
                   c.renew_at, coalesce(b.failures, 0), b.next_attempt \
                 FROM trackproxy_acme_cert c FULL JOIN trackproxy_acme_backoff b \
                   ON b.directory = c.directory AND b.host = c.host \
                 WHERE coalesce(c.directory, b.directory) = $1",
                &[&self.directory],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ViewRow {
                host: r.get(0),
                chain_pem: r.get(1),
                ordered_by: r.get(2),
                ordered_at: r.get(3),
                renew_at: r.get(4),
                failures: u32::try_from(r.get::<_, i32>(5)).unwrap_or(0),
                next_attempt: r.get(6),
            })
            .collect())
    }

    /// The directory this store is for.
    pub(in crate::tls::acme) fn directory(&self) -> &str {
        &self.directory
    }
}

/// A held advisory lock: released when dropped (its connection closes) or when the session
/// dies; [`HostLock::lost`] completes when the connection ends before.
pub(in crate::tls::acme) struct HostLock {
    _client: Client,
    closed: CancellationToken,
}

impl HostLock {
    /// Completes when the lock's connection has ended (the lock may be gone).
    pub(in crate::tls::acme) async fn lost(&self) {
        self.closed.cancelled().await;
    }
}

async fn migrate(client: &mut Client) -> Result<(), Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS trackproxy_schema_version (\
           version integer NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM trackproxy_schema_version",
            &[],
        )
        .await?;
    let version: i32 = row.get(0);
    if version > SCHEMA_VERSION {
        return Err(Error::Schema(version));
    }
    if version < 1 {
        tx.batch_execute(MIGRATION_1).await?;
        tx.execute(
            "INSERT INTO trackproxy_schema_version (version) VALUES (1)",
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The advisory lock id of `key` in `directory`: the first 8 bytes of a SHA-256 (stable across
/// builds and replicas, unlike Rust's hasher).
fn lock_id(directory: &str, key: &str) -> i64 {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("trackproxy-acme-lock\0{directory}\0{key}").as_bytes(),
    );
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(b)
}

fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ids_are_stable_and_distinct() {
        assert_eq!(lock_id("d", "a.example"), lock_id("d", "a.example"));
        assert_ne!(lock_id("d", "a.example"), lock_id("d", "b.example"));
        assert_ne!(lock_id("d", "a.example"), lock_id("e", "a.example"));
    }
}
