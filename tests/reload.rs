//! SIGHUP reloads the configuration of the running binary: hosts come and go, connections stay,
//! and a configuration with problems is logged and kept out.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{BinProxy, KeyAlg, Setup, TestConfig, eventually, tls_connect};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const A: &str = "url1234.example.test";
const B: &str = "url5678.example.test";

fn count(p: &BinProxy, message: &str) -> usize {
    p.log_lines()
        .iter()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_default()["message"] == message
        })
        .count()
}

#[tokio::test]
async fn sighup_adds_and_removes_hosts_keeps_connections_and_rejects_a_bad_config() {
    let s = Setup::new().await;
    let both = s.ca.write_leaf("both", &[A, B], KeyAlg::EcdsaP256);
    let toml = |hosts: &[&str]| {
        TestConfig::new(&s.upstream.url)
            .upstream_ca(&s.ca.ca_file)
            .hosts(hosts)
            .certificate(both.clone())
            .toml()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trackproxy.toml");
    std::fs::write(&file, toml(&[A])).unwrap();
    let proxy = BinProxy::start(Some(&file), &[]).await;

    // A keep-alive connection to A, open across every reload below.
    let tls = tls_connect(&s.ca, proxy.https, A).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = || {
        http::Request::get("/wf/open?upn=x")
            .header("host", A)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let res = send.send_request(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
    assert!(tls_connect(&s.ca, proxy.https, B).await.is_err());

    // Add B.
    std::fs::write(&file, toml(&[A, B])).unwrap();
    proxy.signal("HUP").await;
    eventually("the reload", Duration::from_secs(10), async || {
        count(&proxy, "configuration reloaded") == 1
    })
    .await;
    assert!(tls_connect(&s.ca, proxy.https, B).await.is_ok());
    let res = send.send_request(req()).await.unwrap();
    assert_eq!(res.status(), 200, "the connection survived the reload");
    res.into_body().collect().await.unwrap();

    // A configuration with problems: every problem logged, nothing changes.
    std::fs::write(
        &file,
        format!(
            "{}\n[server]\nhttp_mode = \"sideways\"\nbogus = 1\n",
            toml(&[B])
        ),
    )
    .unwrap();
    proxy.signal("HUP").await;
    eventually("the rejection", Duration::from_secs(10), async || {
        count(&proxy, "configuration reload rejected") == 1
    })
    .await;
    let problems: Vec<String> = proxy
        .log_lines()
        .iter()
        .filter(|l| l.contains("\"configuration problem\""))
        .cloned()
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|l| l.contains("server.http_mode")));
    assert!(problems.iter().any(|l| l.contains("server.bogus")));
    assert!(tls_connect(&s.ca, proxy.https, A).await.is_ok());
    assert!(tls_connect(&s.ca, proxy.https, B).await.is_ok());

    // Remove A: new handshakes for A are refused; the process keeps running.
    std::fs::write(&file, toml(&[B])).unwrap();
    proxy.signal("HUP").await;
    eventually("the second reload", Duration::from_secs(10), async || {
        count(&proxy, "configuration reloaded") == 2
    })
    .await;
    assert!(tls_connect(&s.ca, proxy.https, A).await.is_err());
    assert!(tls_connect(&s.ca, proxy.https, B).await.is_ok());
    proxy.signal("TERM").await;
    let mut child = proxy.child;
    assert!(child.wait().await.unwrap().success());
}

/// The served leaf's DER, from a new connection.
async fn served_leaf(s: &Setup, addr: std::net::SocketAddr) -> Vec<u8> {
    let tls = tls_connect(&s.ca, addr, A).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Writes a file the way a Secret update or `install` does: a new file renamed over the old.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// cert-manager rotates the certificate files: new connections get the new certificate without
/// a restart, the open one keeps working, and a broken file keeps the certificate in use.
#[tokio::test]
async fn rotated_certificate_files_are_served_without_a_restart() {
    let s = Setup::new().await;
    let (pem1, key1) = s.ca.issue_with(&[A], KeyAlg::EcdsaP256, -1, 30);
    let (cert, key) = s.ca.write_files("rotating", &pem1, &key1);
    let toml = TestConfig::new(&s.upstream.url)
        .upstream_ca(&s.ca.ca_file)
        .host(A)
        .certificate((cert.clone(), key.clone()))
        .set("tls.watch_interval", "100ms")
        .toml();
    let proxy = common::Proxy::start(&toml).await;
    assert_eq!(served_leaf(&s, proxy.https).await, der_of(&pem1));
    let mut open = tls_connect(&s.ca, proxy.https, A).await.unwrap();
    let expiry = |m: &common::metrics::Metrics| {
        m.value(
            "trackproxy_certificate_expiry_timestamp_seconds",
            &[("host", A), ("source", "file")],
        )
    };
    let first_expiry = expiry(&common::metrics::scrape(proxy.admin).await);

    // rotate: key first, then the certificate (a reader may see them out of step in between)
    let (pem2, key2) = s.ca.issue_with(&[A], KeyAlg::EcdsaP256, -1, 60);
    replace(&key, &key2);
    replace(&cert, &pem2);
    let want = der_of(&pem2);
    eventually(
        "the new certificate served",
        Duration::from_secs(10),
        async || served_leaf(&s, proxy.https).await == want,
    )
    .await;
    let second_expiry = expiry(&common::metrics::scrape(proxy.admin).await);
    assert!(
        second_expiry > first_expiry + 20.0 * 86_400.0,
        "{first_expiry} -> {second_expiry}"
    );
    // the connection opened before the rotation still works
    let (status, _, _) = common::h1_exchange(
        &mut open,
        &format!("GET /wf/open HTTP/1.1\r\nHost: {A}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);

    // a broken new certificate file: the working certificate stays
    replace(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served_leaf(&s, proxy.https).await, want);
    assert_eq!(
        expiry(&common::metrics::scrape(proxy.admin).await),
        second_expiry
    );
    proxy.stop().await;
}

/// A host added by a reload is counted under its own name, not as `(unknown)`.
#[tokio::test]
async fn hosts_added_by_a_reload_get_their_own_metrics() {
    let s = Setup::new().await;
    let both = s.ca.write_leaf("both", &[A, B], KeyAlg::EcdsaP256);
    let toml = |hosts: &[&str]| {
        TestConfig::new(&s.upstream.url)
            .upstream_ca(&s.ca.ca_file)
            .hosts(hosts)
            .certificate(both.clone())
            .toml()
    };
    let proxy = common::Proxy::start(&toml(&[A])).await;
    proxy.reload(&toml(&[A, B])).await.unwrap();
    let mut tls = tls_connect(&s.ca, proxy.https, B).await.unwrap();
    let (status, _, _) = common::h1_exchange(
        &mut tls,
        &format!("GET /wf/open HTTP/1.1\r\nHost: {B}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200);
    let m = common::metrics::scrape(proxy.admin).await;
    let labels = [("host", B), ("method", "GET"), ("status", "2xx")];
    assert_eq!(
        m.value("trackproxy_requests_total", &labels),
        1.0,
        "{}",
        m.text
    );
    assert!(!m.text.contains("(unknown)"), "{}", m.text);
    proxy.stop().await;
}
