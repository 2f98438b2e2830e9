//! SIGHUP reloads the configuration of the running binary: hosts come and go, connections stay,
//! and a configuration with problems is logged and kept out.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::pebble::wait_until;
use common::{BinProxy, KeyAlg, Setup, tls_connect, toml_with};
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
    let (cert, key) = s.ca.write_leaf("both", &[A, B], KeyAlg::EcdsaP256);
    let certs = [(cert, key)];
    let toml = |hosts: &[&str]| toml_with(hosts, &s.upstream.url, &s.ca.ca_file, &certs, "");
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
    wait_until("the reload", Duration::from_secs(10), || {
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
    wait_until("the rejection", Duration::from_secs(10), || {
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
    wait_until("the second reload", Duration::from_secs(10), || {
        count(&proxy, "configuration reloaded") == 2
    })
    .await;
    assert!(tls_connect(&s.ca, proxy.https, A).await.is_err());
    assert!(tls_connect(&s.ca, proxy.https, B).await.is_ok());
    proxy.signal("TERM").await;
    let mut child = proxy.child;
    assert!(child.wait().await.unwrap().success());
}
