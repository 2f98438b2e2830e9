//! Built-in ACME shared by three replicas through PostgreSQL (`tls.acme.store`): real
//! PostgreSQL, real Pebble validating through a real HAProxy that round-robins TCP across the
//! three `trackproxy` binaries, so validations land on replicas that did not place the order.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::haproxy::{HaProxy, Route};
use common::pebble::{Pebble, PebbleOptions, PebblePlan, names_and_issuer, served_certificate};
use common::postgres::Postgres;
use common::{BinProxy, Setup, eventually, unused_addr};
use rustls::pki_types::pem::PemObject;

const A: &str = "url1234.example.test";
const B: &str = "url5678.example.test";
const ISSUE: Duration = Duration::from_secs(60);
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Replica {
    https: SocketAddr,
    http: SocketAddr,
}

/// What differs between the tests' clusters.
struct Options {
    hosts: &'static [&'static str],
    challenge: &'static str,
    /// Pebble's certificate lifetime in seconds (default: Pebble's 5 years).
    validity_seconds: Option<u64>,
    /// PostgreSQL with `ssl = on`, reached with `sslmode=verify-full&sslrootcert=<test CA>`.
    tls: bool,
}

/// PostgreSQL, Pebble and an HAProxy that round-robins TCP across the three replicas' HTTPS
/// and HTTP listeners (Pebble validates through it); the replicas themselves are started by
/// [`Cluster::start_all`].
struct Cluster {
    s: Setup,
    pg: Postgres,
    pebble: Pebble,
    _ha: HaProxy,
    work: tempfile::TempDir,
    replicas: Vec<Replica>,
    /// HAProxy's frontend for TLS-ALPN-01 (Pebble's `tlsPort`).
    tls_frontend: SocketAddr,
    options: Options,
    /// The root issuing this Pebble's certificates.
    root: String,
}

impl Cluster {
    async fn start(options: Options) -> Cluster {
        let s = Setup::new().await;
        let pg = if options.tls {
            Postgres::start_tls(&s.ca)
        } else {
            Postgres::start()
        };
        let plan = PebblePlan::new();
        let work = tempfile::tempdir().unwrap();
        let replicas: Vec<Replica> = (0..3)
            .map(|_| Replica {
                https: unused_addr(),
                http: unused_addr(),
            })
            .collect();
        // A connection refused by a dead replica is retried on another one (the kill test).
        let route = |servers: Vec<SocketAddr>| Route {
            servers,
            backend: "    option redispatch 1\n    retries 2".into(),
            ..Route::default()
        };
        let ha = HaProxy::start(
            &[
                route(replicas.iter().map(|r| r.https).collect()),
                route(replicas.iter().map(|r| r.http).collect()),
            ],
            "",
        )
        .await;
        let pebble = Pebble::start_with(
            plan,
            ha.frontends[0].port(),
            ha.frontends[1].port(),
            PebbleOptions {
                validity_seconds: options.validity_seconds,
            },
        )
        .await;
        let root = pebble.root_pem().await;
        Cluster {
            s,
            pg,
            pebble,
            tls_frontend: ha.frontends[0],
            _ha: ha,
            work,
            replicas,
            options,
            root,
        }
    }

    /// Writes a replica's configuration into `dir` with `cache` as its `cache_dir` and `key`
    /// as the store key.
    fn config(&self, dir: &Path, cache: &Path, key: &str) -> PathBuf {
        self.config_with_root(dir, cache, key, &self.s.ca.ca_file)
    }

    /// [`Cluster::config`] with `root` as `sslrootcert` when PostgreSQL runs with TLS.
    fn config_with_root(&self, dir: &Path, cache: &Path, key: &str, root: &Path) -> PathBuf {
        let key_file = dir.join("store.key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        let toml = self
            .pebble
            .plan
            .acme(
                common::TestConfig::new(&self.s.upstream.url)
                    .upstream_ca(&self.s.ca.ca_file)
                    .hosts(self.options.hosts),
                cache,
                self.options.challenge,
            )
            .set("tls.acme.store", self.store_url(root))
            .set("tls.acme.store_password_file", &self.pg.password_file(dir))
            .set("tls.acme.store_key_file", &key_file)
            .set("tls.acme.backoff_initial", "1s")
            .set("tls.acme.backoff_max", "2s")
            .toml();
        let file = dir.join(format!(
            "trackproxy-{}.toml",
            cache.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&file, toml).unwrap();
        file
    }

    /// `tls.acme.store`: verifying the server against `ca` when PostgreSQL runs with TLS.
    fn store_url(&self, ca: &Path) -> String {
        if self.options.tls {
            format!(
                "{}?sslmode=verify-full&sslrootcert={}",
                self.pg.url(),
                ca.display()
            )
        } else {
            self.pg.url()
        }
    }

    /// Starts replica `i` with the configuration `file`.
    async fn start_replica(&self, file: &Path, i: usize) -> BinProxy {
        let https = self.replicas[i].https.to_string();
        let http = self.replicas[i].http.to_string();
        BinProxy::start(
            Some(file),
            &[
                ("TRACKPROXY__SERVER__HTTPS_LISTEN", &https),
                ("TRACKPROXY__SERVER__HTTP_LISTEN", &http),
            ],
        )
        .await
    }

    /// Starts the three replicas, each with an empty cache `<prefix><i>`; returns the caches,
    /// the configuration files and the processes.
    async fn start_all(&self, prefix: &str) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<BinProxy>) {
        let mut caches = Vec::new();
        let mut files = Vec::new();
        let mut procs = Vec::new();
        for i in 0..self.replicas.len() {
            let cache = self.work.path().join(format!("{prefix}{i}"));
            std::fs::create_dir(&cache).unwrap();
            let file = self.config(self.work.path(), &cache, KEY);
            procs.push(self.start_replica(&file, i).await);
            caches.push(cache);
            files.push(file);
        }
        (caches, files, procs)
    }

    /// Waits until replica `i` serves a certificate from this Pebble for `host` for which
    /// `accept` holds; returns its DER.
    async fn serves_if(
        &self,
        i: usize,
        host: &str,
        procs: &[BinProxy],
        limit: Duration,
        accept: impl Fn(&[u8]) -> bool,
    ) -> Vec<u8> {
        let addr = self.replicas[i].https;
        eventually(
            &format!("a Pebble certificate for {host} on replica {i}"),
            limit,
            async || {
                let der = served_certificate(&self.root, addr, host)
                    .await
                    .map_err(|e| format!("{e}; replica logs: {:#?}", acme_lines(procs)))?;
                let (names, issuer) = names_and_issuer(&der);
                if names != [host] || !issuer.contains("Pebble") {
                    Err(format!("{names:?} from {issuer}"))
                } else if accept(&der) {
                    Ok(der.to_vec())
                } else {
                    Err("not the certificate expected yet".to_owned())
                }
            },
        )
        .await
    }

    /// Waits until every replica serves a Pebble certificate for every host; returns
    /// `[replica][host]` DER.
    async fn all_serve(&self, procs: &[BinProxy]) -> Vec<Vec<Vec<u8>>> {
        let mut served = Vec::new();
        for i in 0..self.replicas.len() {
            let mut row = Vec::new();
            for host in self.options.hosts {
                row.push(self.serves_if(i, host, procs, ISSUE, |_| true).await);
            }
            served.push(row);
        }
        served
    }

    /// The process id of the replica that ordered `host`'s certificate in the store
    /// (`ordered_by` is `hostname/pid`).
    fn orderer(&self, host: &str) -> u32 {
        let by = self.pg.psql(&format!(
            "SELECT ordered_by FROM trackproxy_acme_cert WHERE host = '{host}'"
        ));
        pid_of(by.trim())
    }
}

/// The process id in a replica name (`hostname/pid`).
fn pid_of(replica: &str) -> u32 {
    replica
        .rsplit_once('/')
        .and_then(|(_, pid)| pid.parse().ok())
        .unwrap_or_else(|| panic!("not a replica name: {replica:?}"))
}

/// The last ACME and store lines of each replica's log, shortened (for failure messages).
fn acme_lines(procs: &[BinProxy]) -> Vec<String> {
    procs
        .iter()
        .flat_map(|p| {
            let pid = p.pid_or_exited();
            let l: Vec<String> = p
                .log_lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| {
                    v["target"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("trackproxy"))
                })
                .filter(|v| {
                    let m = v["message"].as_str().unwrap_or_default();
                    m.contains("ACME") || m.contains("store")
                })
                .map(|v| {
                    format!(
                        "{pid} {} {} {}",
                        v["message"].as_str().unwrap_or_default(),
                        v["host"].as_str().unwrap_or_default(),
                        v["error"].as_str().unwrap_or_default()
                    )
                })
                .collect();
            l[l.len().saturating_sub(8)..].to_vec()
        })
        .collect()
}

/// The JSON log lines of `p` with this `message` whose `field` is `host`.
fn lines_about(p: &BinProxy, message: &str, field: &str, host: &str) -> usize {
    p.log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message && v[field] == host)
        .count()
}

/// No replica logged tokio_postgres' per-query DEBUG lines (the tests run at `log.level =
/// "debug"`, which keeps `tokio_postgres` at `info`).
fn no_postgres_chatter(procs: &[BinProxy]) {
    for p in procs {
        let chatter: Vec<String> = p
            .log_lines()
            .into_iter()
            .filter(|l| l.contains("\"target\":\"tokio_postgres"))
            .collect();
        assert!(
            chatter.is_empty(),
            "{:#?}",
            &chatter[..chatter.len().min(5)]
        );
    }
}

/// What `trackproxy certs --config file` prints (it must succeed).
async fn certs(file: &Path) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"))
            .args(["certs", "--config"])
            .arg(file)
            .output(),
    )
    .await
    .expect("trackproxy certs hangs")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(common::postgres::PASSWORD), "{text}");
    text
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_order_each_host_once_and_share_it_through_postgres() {
    let c = Cluster::start(Options {
        hosts: &[A, B],
        challenge: "tls-alpn-01",
        validity_seconds: None,
        tls: false,
    })
    .await;
    let (caches, first_files, procs) = c.start_all("cache").await;
    c.all_serve(&procs).await;
    // Exactly one order per host for the whole cluster; validations went through HAProxy's
    // round robin, so some reached replicas that had not ordered.
    assert_eq!(c.pebble.orders(), 2, "{:#?}", c.pebble.log());
    let answered: usize = procs
        .iter()
        .map(|p| {
            p.log_lines()
                .iter()
                .filter(|l| l.contains("answered an ACME TLS-ALPN-01 challenge"))
                .count()
        })
        .filter(|n| *n > 0)
        .count();
    assert!(
        answered >= 2,
        "validations answered by {answered} replica(s) only"
    );
    for p in &procs {
        let res = common::raw_plain(
            p.admin,
            b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(res.contains("{\"ready\":true}"), "{res}");
    }
    no_postgres_chatter(&procs);

    // `trackproxy certs` shows the store's view: which replica ordered, when, next renewal.
    let table = certs(&first_files[2]).await;
    for host in [A, B] {
        let by = c.pg.psql(&format!(
            "SELECT ordered_by FROM trackproxy_acme_cert WHERE host = '{host}'"
        ));
        let line = table
            .lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(line.contains("Pebble"), "{line}");
        assert!(
            line.contains(&format!("store: ordered by {} at 20", by.trim())),
            "{line}"
        );
        assert!(line.contains("renewal due 20"), "{line}");
    }

    // The database alone holds no private key in clear: not as PEM, not as the DER bytes of
    // the key every replica serves (taken from a replica's local copy).
    let pg = &c.pg;
    let dump = pg.dump();
    assert!(dump.contains("trackproxy_acme_cert"), "{dump}");
    assert!(!dump.contains("PRIVATE KEY"));
    // <cache_dir>/<directory>/<host>.pem: the one directory under the cache.
    let dir_name = std::fs::read_dir(&caches[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    for host in [A, B] {
        let local = std::fs::read(dir_name.join(format!("{host}.pem"))).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&local).unwrap();
        let der = hex(key.secret_der());
        assert!(
            !dump.contains(&der),
            "the key of {host} is in the dump in clear"
        );
        assert_eq!(
            pg.psql(&format!(
                "SELECT count(*) FROM trackproxy_acme_cert WHERE host = '{host}' AND length(key_sealed) > 100 AND position(convert_to('PRIVATE KEY', 'UTF8') in key_sealed) = 0"
            ))
            .trim(),
            "1"
        );
    }
    assert_eq!(
        pg.psql("SELECT max(version) FROM trackproxy_schema_version")
            .trim(),
        "1"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM trackproxy_acme_challenge")
            .trim(),
        "0"
    );

    // A restart of every replica, each with an empty cache_dir: all certificates come from the
    // store, nothing is ordered.
    drop(procs);
    let (_, files, mut procs) = c.start_all("fresh").await;
    c.all_serve(&procs).await;
    assert_eq!(c.pebble.orders(), 2, "a restart ordered again");

    // A wrong store key is a start-up error naming the key.
    let wrong = c.work.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let file = c.config(&wrong, &wrong, &"ab".repeat(32));
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"))
            .args(["serve", "--config"])
            .arg(&file)
            .env("TRACKPROXY__SERVER__HTTPS_LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__SERVER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__ADMIN__LISTEN", "127.0.0.1:0")
            .output(),
    )
    .await
    .expect("a wrong key must stop the start")
    .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("tls.acme.store_key does not open"), "{text}");
    assert!(!text.contains(common::postgres::PASSWORD), "{text}");

    // PostgreSQL stopped: the replicas keep serving; one restarted meanwhile serves its local
    // copy; when PostgreSQL is back, the store is used again.
    pg.down();
    let table = certs(&files[1]).await;
    for host in [A, B] {
        let line = table.lines().find(|l| l.starts_with(host)).unwrap();
        assert!(line.contains("store not readable"), "{line}");
        assert!(line.contains("Pebble"), "the local copy: {line}");
    }
    let restarted = {
        drop(procs.remove(0));
        c.start_replica(&files[0], 0).await
    };
    c.all_serve(&procs).await;
    pg.up();
    restarted
        .wait_for_lines(1, |v| {
            v["message"] == "ACME store reachable again"
                || v["message"] == "ACME store notifications received again"
        })
        .await;
    assert_eq!(c.pebble.orders(), 2);
}

/// SIGKILL of the replica holding a host's lock while its order waits for validation: its
/// session ends, PostgreSQL releases the advisory lock, and a surviving replica orders and
/// completes. Pebble's validation of the first order is sent to a listener that accepts and
/// never answers (the host resolves to 127.0.0.2 for Pebble at first), so that order cannot
/// complete before the kill: no timing involved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lock_holder_mid_order_lets_another_replica_complete_it() {
    let c = Cluster::start(Options {
        hosts: &[A],
        challenge: "tls-alpn-01",
        validity_seconds: None,
        tls: false,
    })
    .await;
    let tarpit = tokio::net::TcpListener::bind(("127.0.0.2", c.tls_frontend.port()))
        .await
        .unwrap();
    c.pebble.add_a(A, "127.0.0.2").await;
    let (_, _, mut procs) = c.start_all("cache").await;
    let (hanging, _) = tokio::time::timeout(ISSUE, tarpit.accept())
        .await
        .unwrap_or_else(|_| panic!("Pebble never validated: {:#?}", acme_lines(&procs)))
        .unwrap();

    // Mid-order: the holder put its challenge into the store before asking Pebble to
    // validate, and waits for an authorization that cannot become valid while Pebble's
    // validation hangs here. The host's advisory lock is held.
    let holders = c.pg.psql(&format!(
        "SELECT DISTINCT created_by FROM trackproxy_acme_challenge WHERE host = '{A}'"
    ));
    let holders: Vec<&str> = holders.lines().collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let holder = pid_of(holders[0]);
    let locks =
        c.pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted");
    assert!(
        locks.trim().parse::<u32>().unwrap() >= 1,
        "no advisory lock held"
    );
    assert_eq!(c.pebble.orders(), 1, "{:#?}", c.pebble.log());
    let i = procs
        .iter()
        .position(|p| p.pid() == holder)
        .expect("the holder is one of the replicas");
    let mut killed = procs.remove(i);
    killed.signal("KILL").await;
    killed.wait_exit(Duration::from_secs(10)).await;
    // From now on Pebble validates through HAProxy again; the abandoned validation fails.
    c.pebble.clear_a(A).await;
    drop(hanging);
    drop(tarpit);

    for j in (0..3).filter(|j| *j != i) {
        c.serves_if(j, A, &procs, ISSUE, |_| true).await;
    }
    // One certificate for the host. Two orders: the one abandoned with the killed replica
    // (Pebble keeps it pending or invalid) and the one the survivor completed; none while the
    // killed replica held the lock (the count was 1 at the kill).
    assert_eq!(c.pebble.issued(), 1, "{:#?}", c.pebble.log());
    assert_eq!(c.pebble.orders(), 2, "{:#?}", c.pebble.log());
    let orderer = c.orderer(A);
    assert_ne!(orderer, holder);
    assert!(procs.iter().any(|p| p.pid() == orderer));
    let started: usize = procs
        .iter()
        .map(|p| {
            lines_about(
                p,
                "ACME order started (holding the cluster lock)",
                "host",
                A,
            )
        })
        .sum();
    assert_eq!(started, 1, "{:#?}", acme_lines(&procs));
    assert_eq!(
        c.pg.psql("SELECT count(*) FROM trackproxy_acme_challenge")
            .trim(),
        "0",
        "the killed replica's challenge stayed in the store"
    );
}

/// PostgreSQL lost mid-order (stopped with `-m immediate` while the holder's validation hangs,
/// as in the test above): the holder's lock session ends, so it abandons the order (another
/// replica could take the lock once PostgreSQL is back); nobody orders while PostgreSQL is
/// down; when it returns, one replica orders again and every replica gets that certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_mid_order_abandons_it_and_the_cluster_orders_once_it_is_back() {
    let c = Cluster::start(Options {
        hosts: &[A],
        challenge: "tls-alpn-01",
        validity_seconds: None,
        tls: false,
    })
    .await;
    let tarpit = tokio::net::TcpListener::bind(("127.0.0.2", c.tls_frontend.port()))
        .await
        .unwrap();
    c.pebble.add_a(A, "127.0.0.2").await;
    let (_, _, procs) = c.start_all("cache").await;
    let (hanging, _) = tokio::time::timeout(ISSUE, tarpit.accept())
        .await
        .unwrap_or_else(|_| panic!("Pebble never validated: {:#?}", acme_lines(&procs)))
        .unwrap();
    let holders = c.pg.psql(&format!(
        "SELECT DISTINCT created_by FROM trackproxy_acme_challenge WHERE host = '{A}'"
    ));
    let holders: Vec<&str> = holders.lines().collect();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let holder = procs
        .iter()
        .find(|p| p.pid() == pid_of(holders[0]))
        .expect("the holder is one of the replicas");
    assert_eq!(c.pebble.orders(), 1, "{:#?}", c.pebble.log());

    c.pg.down();
    holder
        .wait_for_lines(1, |v| {
            v["message"] == "ACME order failed"
                && v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cluster lock ended"))
        })
        .await;
    // Pebble validates through HAProxy again from now on; the abandoned validation fails.
    c.pebble.clear_a(A).await;
    drop(hanging);
    drop(tarpit);
    // Down for a few of the replicas' lock polls (2 s) and back-offs (1–2 s): nobody orders.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.pebble.orders(), 1, "ordered while PostgreSQL was down");
    c.pg.up();

    for j in 0..3 {
        c.serves_if(j, A, &procs, ISSUE, |_| true).await;
    }
    assert_eq!(c.pebble.issued(), 1, "{:#?}", c.pebble.log());
    assert_eq!(c.pebble.orders(), 2, "{:#?}", c.pebble.log());
    let started: usize = procs
        .iter()
        .map(|p| {
            lines_about(
                p,
                "ACME order started (holding the cluster lock)",
                "host",
                A,
            )
        })
        .sum();
    assert_eq!(started, 2, "{:#?}", acme_lines(&procs));
}

/// HTTP-01 through the store: Pebble fetches the token through HAProxy's round robin, so the
/// replicas that did not order answer it from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_tokens_are_answered_by_replicas_that_did_not_order() {
    let c = Cluster::start(Options {
        hosts: &[A, B],
        challenge: "http-01",
        validity_seconds: None,
        tls: true,
    })
    .await;
    let (_, _, procs) = c.start_all("cache").await;
    c.all_serve(&procs).await;
    assert_eq!(c.pebble.orders(), 2, "{:#?}", c.pebble.log());
    assert_eq!(c.pebble.issued(), 2);
    for host in [A, B] {
        let orderer = c.orderer(host);
        let answering: Vec<u32> = procs
            .iter()
            .filter(|p| lines_about(p, "answering an ACME HTTP-01 challenge", "host", host) > 0)
            .map(BinProxy::pid)
            .collect();
        assert!(
            answering.iter().any(|p| *p != orderer),
            "{host}: ordered by {orderer}, answered only by {answering:?}"
        );
    }
    no_postgres_chatter(&procs);

    // The store was reached over TLS (verify-full against the tests' CA): PostgreSQL says
    // every connection of the replicas is encrypted.
    let ssl = c.pg.psql(
        "SELECT count(*), bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'trackproxy'",
    );
    let (n, all) = ssl.trim().split_once('|').unwrap();
    assert!(n.parse::<u32>().unwrap() >= 3, "replica connections: {ssl}");
    assert_eq!(all, "t", "replica connections not all encrypted: {ssl}");

    // A replica trusting another CA refuses the server's certificate, and logs why.
    let other = common::pki::TestCa::new();
    let dir = c.work.path().join("wrong-ca");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let file = c.config_with_root(&dir, &cache, KEY, &other.ca_file);
    let (https, http) = (unused_addr().to_string(), unused_addr().to_string());
    let wrong = BinProxy::start(
        Some(&file),
        &[
            ("TRACKPROXY__SERVER__HTTPS_LISTEN", &https),
            ("TRACKPROXY__SERVER__HTTP_LISTEN", &http),
        ],
    )
    .await;
    wrong
        .wait_for_lines(1, |v| {
            let line = v.to_string();
            // Both test CAs are named alike: rustls finds the issuer by name and says
            // BadSignature (UnknownIssuer with differently named CAs).
            line.contains("ACME store")
                && line.contains("error performing TLS handshake: invalid peer certificate")
        })
        .await;
}

/// A certificate due for renewal (Pebble issues 30-second certificates: due after 20 s) is
/// renewed by one replica for the cluster, and every replica serves the new one without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_is_ordered_once_for_the_cluster_and_reaches_every_replica() {
    let c = Cluster::start(Options {
        hosts: &[A, B],
        challenge: "tls-alpn-01",
        validity_seconds: Some(30),
        tls: false,
    })
    .await;
    let (_, _, procs) = c.start_all("cache").await;
    let first = c.all_serve(&procs).await;
    for row in &first {
        assert_eq!(row, &first[0], "the replicas serve different certificates");
    }
    assert_eq!(c.pebble.orders(), 2);
    let mut second = Vec::new();
    for (h, host) in [A, B].iter().enumerate() {
        let old = first[0][h].clone();
        for i in 0..3 {
            let der = c
                .serves_if(i, host, &procs, ISSUE, |d| d != old.as_slice())
                .await;
            second.push(der);
        }
    }
    // One renewal per host for the cluster; the next is 20 s away.
    assert_eq!(c.pebble.orders(), 4, "{:#?}", c.pebble.log());
    assert_eq!(c.pebble.issued(), 4);
    assert_eq!(second[0], second[1]);
    assert_eq!(second[1], second[2]);
    assert_eq!(second[3], second[4]);
    assert_eq!(second[4], second[5]);
    for host in [A, B] {
        // The orderer logs after saving: its line may come after the others serve it.
        let renewed = eventually(
            &format!("the renewal of {host} in a log"),
            Duration::from_secs(10),
            async || {
                let n: usize = procs
                    .iter()
                    .map(|p| lines_about(p, "ACME certificate renewed", "host", host))
                    .sum();
                if n > 0 {
                    Ok(n)
                } else {
                    Err(acme_lines(&procs))
                }
            },
        )
        .await;
        assert_eq!(renewed, 1, "{host}: {:#?}", acme_lines(&procs));
    }
}
