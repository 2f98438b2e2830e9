//! Zero-loss restarts: a real HAProxy balances two trackproxy binaries with health checks on
//! `/readyz`; while a bounded load runs, one instance gets SIGTERM and is started again on the
//! same ports. Not one request may fail.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::haproxy::{HaProxy, Route};
use common::metrics::admin_get;
use common::{BinProxy, Setup, eventually, status_of};

const HOST: &str = "url1234.example.test";

fn access_lines(p: &BinProxy) -> usize {
    p.log_lines()
        .iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["message"] == "request" && v["status"] == 200
        })
        .count()
}

async fn start(cfg: &std::path::Path, https: &str, admin: &str) -> BinProxy {
    BinProxy::start(
        Some(cfg),
        &[
            ("TRACKPROXY__SERVER__HTTPS_LISTEN", https),
            ("TRACKPROXY__ADMIN__LISTEN", admin),
        ],
    )
    .await
}

/// Waits until `/readyz` answers 200.
async fn wait_ready(admin: &str) {
    eventually(
        &format!("{admin}/readyz ready"),
        Duration::from_secs(10),
        async || {
            let (status, _, body) = admin_get(admin.parse().unwrap(), "/readyz").await;
            if status == 200 {
                Ok(())
            } else {
                Err((status, body))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_haproxy_loses_no_request() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("trackproxy.toml");
    std::fs::write(
        &cfg,
        s.config(&[HOST])
            .set("server.drain_delay", "1500ms")
            .set("server.shutdown_grace", "10s")
            .set("limits.per_client_rps", 0)
            .set("log.level", "info")
            .toml(),
    )
    .unwrap();
    let (a_https, a_admin) = (
        common::unused_addr().to_string(),
        common::unused_addr().to_string(),
    );
    let (b_https, b_admin) = (
        common::unused_addr().to_string(),
        common::unused_addr().to_string(),
    );
    let mut a = start(&cfg, &a_https, &a_admin).await;
    let b = start(&cfg, &b_https, &b_admin).await;
    wait_ready(&a_admin).await;
    wait_ready(&b_admin).await;

    let port = |addr: &str| addr.rsplit(':').next().unwrap().to_owned();
    let lb = HaProxy::start(
        &[Route {
            servers: vec![a_https.parse().unwrap(), b_https.parse().unwrap()],
            per_server: vec![
                format!("check port {}", port(&a_admin)),
                format!("check port {}", port(&b_admin)),
            ],
            server_options: "inter 100ms fall 1 rise 2".into(),
            // No retries or redispatch: only the health check (fed by /readyz turning 503 at
            // SIGTERM) and the drain keep requests away from the stopping instance.
            backend: "    option httpchk GET /readyz".into(),
            ..Default::default()
        }],
        "",
    )
    .await;
    let frontend = lb.frontends[0];

    // The load: 8 clients, each request on a new connection (as clicks from many recipients
    // arrive), until told to stop; bounded by count as well as by time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let ca = s.ca.client_config(&[b"http/1.1"]);
    let mut clients = Vec::new();
    for c in 0..8 {
        let (stop, ok, failures, ca) = (stop.clone(), ok.clone(), failures.clone(), ca.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && i < 5_000 {
                i += 1;
                let req = format!(
                    "GET /wf/open?upn=c{c}r{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                );
                let result = tokio::time::timeout(Duration::from_secs(10), async {
                    let tcp = tokio::net::TcpStream::connect(frontend).await?;
                    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
                    let mut tls = tokio_rustls::TlsConnector::from(ca.clone()).connect(name, tcp).await?;
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    tls.write_all(req.as_bytes()).await?;
                    let mut out = Vec::new();
                    tls.read_to_end(&mut out).await?;
                    Ok::<_, std::io::Error>(String::from_utf8_lossy(&out).into_owned())
                })
                .await;
                match result {
                    Ok(Ok(raw)) if raw.starts_with("HTTP/1.1 ") && status_of(&raw) == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(raw)) => failures.lock().unwrap().push(raw.chars().take(80).collect()),
                    Ok(Err(e)) => failures.lock().unwrap().push(e.to_string()),
                    Err(_) => failures.lock().unwrap().push("timed out".into()),
                }
            }
        }));
    }

    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_restart = ok.load(Ordering::Relaxed);
    // Restart A: SIGTERM, wait for it to exit (drain, then in-flight requests), start it again
    // on the same ports.
    a.signal("TERM").await;
    let status = a.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    let served_by_old_a = access_lines(&a);
    let a2 = start(&cfg, &a_https, &a_admin).await;
    wait_ready(&a_admin).await;
    // HAProxy sees A again and sends it traffic
    let a2_served = eventually(
        "the restarted instance getting traffic back (20 requests)",
        Duration::from_secs(5),
        async || {
            let served = access_lines(&a2);
            if served >= 20 {
                Ok(served)
            } else {
                Err(served)
            }
        },
    )
    .await;
    // keep the load going for ~8 s in all
    let rest = Duration::from_secs(8).saturating_sub(started.elapsed());
    tokio::time::sleep(rest.max(Duration::from_millis(500))).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let total_ok = ok.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "rolling restart: {total_ok} requests ok in {:?} ({before_restart} before the SIGTERM), \
         {} failed; old A served {served_by_old_a}, B {}, new A {a2_served}",
        started.elapsed(),
        failures.len(),
        access_lines(&b)
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        total_ok >= 1000,
        "only {total_ok} requests: the load was too light to show anything"
    );
    assert!(served_by_old_a > 0 && access_lines(&b) > 0);
    assert_eq!(s.upstream.count(), total_ok);
}
