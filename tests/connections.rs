//! Connection-level protection: HTTP/2 rapid reset, idle connections, handshake timeouts.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "url1234.example.test";

/// CVE-2023-44487: a client that opens streams and resets them at once must get GOAWAY long
/// before the server has done (and sent upstream) as much work as the client asked for.
#[tokio::test]
async fn http2_rapid_reset_flood_gets_goaway() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let tcp = tokio::net::TcpStream::connect(proxy.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(s.ca.client_config(&[b"h2"]))
        .connect(rustls::pki_types::ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn_task = tokio::spawn(conn);
    const FLOOD: usize = 5_000;
    let mut sent = 0;
    for _ in 0..FLOOD {
        let req = http::Request::builder()
            .uri(format!("https://{HOST}/ls/click?upn=flood"))
            .body(())
            .unwrap();
        let Ok(ready) = tokio::time::timeout(Duration::from_secs(5), client.clone().ready()).await
        else {
            break;
        };
        let Ok(mut ready) = ready else { break };
        let Ok((_res, mut stream)) = ready.send_request(req, true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        client = ready;
    }
    // the server ended the connection with GOAWAY (ENHANCE_YOUR_CALM)
    let ended = tokio::time::timeout(Duration::from_secs(10), conn_task)
        .await
        .expect("the server closes a flooding connection")
        .unwrap();
    let err = ended.expect_err("connection ends with an error");
    // GOAWAY(ENHANCE_YOUR_CALM), or the close that follows it racing the client's next write
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "{err:?}"
    );
    let upstream = s.upstream.count();
    eprintln!("flood: {err:?}");
    eprintln!(
        "flood: {sent} streams sent before the server closed, {upstream} reached the upstream"
    );
    assert!(
        upstream < 200,
        "{upstream} of {sent} reset streams reached the upstream"
    );
    // other clients are unaffected
    let mut h2 = common::h2_connect(&s.ca, proxy.https, HOST).await;
    let res = h2
        .send_request(
            http::Request::builder()
                .uri(format!("https://{HOST}/wf/open"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    proxy.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.idle_timeout", "1s")
            .set("server.header_read_timeout", "1s")
            .toml(),
    )
    .await;
    // HTTP/2: GOAWAY and close after ~1-2 s without traffic
    let tcp = tokio::net::TcpStream::connect(proxy.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(s.ca.client_config(&[b"h2"]))
        .connect(rustls::pki_types::ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    let (_client, conn) = h2::client::handshake(tls).await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("idle HTTP/2 connection closed by the server")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(900));

    // HTTP/1.1 keep-alive: closed after the request once idle
    let mut h1 = common::tls_connect(&s.ca, proxy.https, HOST).await.unwrap();
    h1.write_all(format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), h1.read_to_end(&mut buf))
        .await
        .expect("idle keep-alive connection closed by the server")
        .ok();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() >= Duration::from_millis(900));
    proxy.stop().await;
}

#[tokio::test]
async fn silent_clients_are_dropped_by_the_handshake_timeout() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.handshake_timeout", "1s")
            .toml(),
    )
    .await;
    // connects and never sends a ClientHello
    let mut tcp = tokio::net::TcpStream::connect(proxy.https).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("server closes the silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // plain HTTP: a request head that never completes is dropped by header_read_timeout
    let proxy2 = Proxy::start(
        &s.config(&[HOST])
            .set("server.header_read_timeout", "1s")
            .toml(),
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(proxy2.http).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: ").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("server closes the slow connection")
        .ok();
    proxy.stop().await;
    proxy2.stop().await;
}
