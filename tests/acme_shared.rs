//! Built-in ACME shared by three replicas through PostgreSQL (`tls.acme.store`): real
//! PostgreSQL, real Pebble validating through a real HAProxy that round-robins TCP across the
//! three `trackproxy` binaries, so validations land on replicas that did not place the order.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::haproxy::{HaProxy, Route};
use common::pebble::{Pebble, PebblePlan, names_and_issuer, served_certificate};
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

fn write_config(
    s: &Setup,
    plan: &PebblePlan,
    pg: &Postgres,
    dir: &Path,
    cache: &Path,
    key: &str,
) -> PathBuf {
    let key_file = dir.join("store.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let toml = plan
        .acme(
            common::TestConfig::new(&s.upstream.url)
                .upstream_ca(&s.ca.ca_file)
                .hosts(&[A, B]),
            cache,
            "tls-alpn-01",
        )
        .set("tls.acme.store", pg.url())
        .set("tls.acme.store_password_file", &pg.password_file(dir))
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

async fn start(file: &Path, r: &Replica) -> BinProxy {
    let https = r.https.to_string();
    let http = r.http.to_string();
    BinProxy::start(
        Some(file),
        &[
            ("TRACKPROXY__SERVER__HTTPS_LISTEN", &https),
            ("TRACKPROXY__SERVER__HTTP_LISTEN", &http),
        ],
    )
    .await
}

/// Waits until `addr` serves a certificate from this Pebble for `host`; returns its DER.
async fn serves(root: &str, addr: SocketAddr, host: &str, procs: &[BinProxy]) -> Vec<u8> {
    eventually(
        &format!("a Pebble certificate for {host} on {addr}"),
        ISSUE,
        async || {
            let der = served_certificate(root, addr, host).await.map_err(|e| {
                let logs: Vec<String> = procs
                    .iter()
                    .flat_map(|p| {
                        let l: Vec<String> = p
                            .log_lines()
                            .into_iter()
                            .filter(|l| {
                                l.contains("ACME") || l.contains("acme") || l.contains("store")
                            })
                            .filter(|l| !l.contains("tokio_postgres"))
                            .collect();
                        l[l.len().saturating_sub(8)..].to_vec()
                    })
                    .collect();
                format!("{e}; replica logs: {logs:#?}")
            })?;
            let (names, issuer) = names_and_issuer(&der);
            if names == [host] && issuer.contains("Pebble") {
                Ok(der.to_vec())
            } else {
                Err(format!("{names:?} from {issuer}"))
            }
        },
    )
    .await
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_order_each_host_once_and_share_it_through_postgres() {
    let s = Setup::new().await;
    let pg = Postgres::start();
    let plan = PebblePlan::new();
    let work = tempfile::tempdir().unwrap();
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica {
            https: unused_addr(),
            http: unused_addr(),
        })
        .collect();
    let ha = HaProxy::start(
        &[
            Route {
                servers: replicas.iter().map(|r| r.https).collect(),
                ..Route::default()
            },
            Route {
                servers: replicas.iter().map(|r| r.http).collect(),
                ..Route::default()
            },
        ],
        "",
    )
    .await;
    let pebble = Pebble::start(plan, ha.frontends[0].port(), ha.frontends[1].port()).await;
    let caches: Vec<PathBuf> = (0..3)
        .map(|i| {
            let c = work.path().join(format!("cache{i}"));
            std::fs::create_dir(&c).unwrap();
            c
        })
        .collect();
    let files: Vec<PathBuf> = caches
        .iter()
        .map(|c| write_config(&s, &pebble.plan, &pg, work.path(), c, KEY))
        .collect();
    let mut procs = Vec::new();
    for (f, r) in files.iter().zip(&replicas) {
        procs.push(start(f, r).await);
    }
    let root = pebble.root_pem().await;
    for r in &replicas {
        for host in [A, B] {
            serves(&root, r.https, host, &procs).await;
        }
    }
    // Exactly one order per host for the whole cluster; validations went through HAProxy's
    // round robin, so some reached replicas that had not ordered.
    assert_eq!(pebble.orders(), 2, "{:#?}", pebble.log());
    let orderers = pg.psql("SELECT count(DISTINCT ordered_by) FROM trackproxy_acme_cert");
    assert!(orderers.trim().parse::<u32>().unwrap() >= 1);
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

    // The database alone holds no private key in clear: not as PEM, not as the DER bytes of
    // the key every replica serves (taken from a replica's local copy).
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
    let fresh: Vec<PathBuf> = (0..3)
        .map(|i| {
            let c = work.path().join(format!("fresh{i}"));
            std::fs::create_dir(&c).unwrap();
            c
        })
        .collect();
    let files: Vec<PathBuf> = fresh
        .iter()
        .map(|c| write_config(&s, &pebble.plan, &pg, work.path(), c, KEY))
        .collect();
    let mut procs = Vec::new();
    for (f, r) in files.iter().zip(&replicas) {
        procs.push(start(f, r).await);
    }
    for r in &replicas {
        for host in [A, B] {
            serves(&root, r.https, host, &procs).await;
        }
    }
    assert_eq!(pebble.orders(), 2, "a restart ordered again");

    // A wrong store key is a start-up error naming the key.
    let wrong = work.path().join("wrong");
    std::fs::create_dir(&wrong).unwrap();
    let file = write_config(&s, &pebble.plan, &pg, &wrong, &wrong, &"ab".repeat(32));
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
    let restarted = {
        drop(procs.remove(0));
        start(&files[0], &replicas[0]).await
    };
    for r in &replicas {
        for host in [A, B] {
            serves(&root, r.https, host, &procs).await;
        }
    }
    pg.up();
    restarted
        .wait_for_lines(1, |v| {
            v["message"] == "ACME store reachable again"
                || v["message"] == "ACME store notifications received again"
        })
        .await;
    assert_eq!(pebble.orders(), 2);
}
