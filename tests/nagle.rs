//! Clients that leave Nagle's algorithm on (no `TCP_NODELAY`: scripts, mail scanners, link
//! resolvers, some HTTP libraries). Their request waits in their kernel until the segment
//! before it (the TLS Finished) is acknowledged; a server that sent nothing after the
//! handshake made them wait for its delayed ACK (~40 ms on Linux) on every new connection.
//! Each test times request → first response byte over several new connections.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Proxy, Setup};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const HOST: &str = "url1234.example.test";

/// Connections per case: the median of these is asserted.
const CONNECTIONS: usize = 9;

/// Well above a loopback exchange (< 5 ms even on a busy machine), well below the delayed-ACK
/// timer (40 ms).
const BOUND: Duration = Duration::from_millis(20);

fn tls_config(
    s: &Setup,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.ca.der()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(common::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// One new TLS connection without `TCP_NODELAY`: handshake, then the time from writing the
/// request to the first byte of the answer. Returns it and whether the session resumed.
async fn one_click(cfg: &Arc<rustls::ClientConfig>, proxy: &Proxy, n: usize) -> (Duration, bool) {
    let tcp = TcpStream::connect(proxy.https).await.unwrap();
    assert!(!tcp.nodelay().unwrap(), "the client must leave Nagle on");
    let name = ServerName::try_from(HOST.to_owned()).unwrap();
    let mut tls = TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .unwrap();
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let request =
        format!("GET /wf/open?upn=nagle{n} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut byte = [0u8; 1];
    let got = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte))
        .await
        .expect("an answer")
        .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(got, 1);
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    assert!(
        String::from_utf8_lossy(&rest).starts_with("TTP/1.1 200"),
        "{rest:?}"
    );
    (elapsed, resumed)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn clicks(
    s: &Setup,
    proxy: &Proxy,
    version: &'static rustls::SupportedProtocolVersion,
    want_resumed: bool,
) -> Vec<Duration> {
    // A fresh config per connection makes every handshake a full one; one shared config
    // resumes after the first. The first click also opens the upstream connection: not timed.
    let shared = tls_config(s, version);
    one_click(&shared, proxy, 0).await;
    let mut times = Vec::new();
    for n in 0..CONNECTIONS {
        let cfg = if want_resumed {
            shared.clone()
        } else {
            tls_config(s, version)
        };
        let (t, resumed) = one_click(&cfg, proxy, n).await;
        assert_eq!(resumed, want_resumed);
        times.push(t);
    }
    times
}

async fn assert_no_stall(version: &'static rustls::SupportedProtocolVersion, resumed: bool) {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let times = clicks(&s, &proxy, version, resumed).await;
    let m = median(times.clone());
    eprintln!("{version:?} resumed {resumed}: median {m:?} of {times:?}");
    assert!(
        m < BOUND,
        "{version:?} resumed {resumed}: median {m:?} to the first response byte: {times:?}"
    );
}

#[tokio::test]
async fn tls13_full_handshake_no_delayed_ack_stall() {
    assert_no_stall(&rustls::version::TLS13, false).await;
}

#[tokio::test]
async fn tls13_resumed_no_delayed_ack_stall() {
    assert_no_stall(&rustls::version::TLS13, true).await;
}

#[tokio::test]
async fn tls12_full_handshake_no_delayed_ack_stall() {
    assert_no_stall(&rustls::version::TLS12, false).await;
}

#[tokio::test]
async fn tls12_resumed_no_delayed_ack_stall() {
    assert_no_stall(&rustls::version::TLS12, true).await;
}
