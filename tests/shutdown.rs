//! Graceful shutdown: a request in flight when the signal comes completes; new connections are
//! refused; `run` returns.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proxy, Setup, eventually, raw_tls, status_of};

const HOST: &str = "url1234.example.test";

#[tokio::test]
async fn in_flight_request_completes_and_new_connections_are_refused() {
    let s = Setup::new().await;
    let mut proxy =
        Proxy::start(&s.config(&[HOST]).set("server.shutdown_grace", "10s").toml()).await;
    let https = proxy.https;
    let ca_req = format!("GET /slow?ms=1500 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let in_flight = {
        let conn = common::tls_connect(&s.ca, https, HOST).await.unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = conn;
            conn.write_all(ca_req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            conn.read_to_end(&mut out).await.unwrap();
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    // wait until the upstream has the request, then signal
    eventually(
        "the request at the upstream",
        Duration::from_secs(5),
        async || s.upstream.connections() > 0,
    )
    .await;
    assert_eq!(s.upstream.connections(), 1);
    proxy.signal_shutdown();
    // listener closed: new connections are refused
    eventually("the listener closed", Duration::from_secs(2), async || {
        tokio::net::TcpStream::connect(https).await.is_err()
    })
    .await;
    let raw = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(raw.ends_with("slow ok"));
    // run() returned Ok once the request was done
    let task = proxy.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run returned")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_delay_shutdown() {
    let s = Setup::new().await;
    let mut proxy =
        Proxy::start(&s.config(&[HOST]).set("server.shutdown_grace", "20s").toml()).await;
    // an idle HTTP/1.1 keep-alive connection and an idle HTTP/2 connection
    let mut h1 = common::tls_connect(&s.ca, proxy.https, HOST).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        h1.write_all(format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = h1.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    let _h2 = common::h2_connect(&s.ca, proxy.https, HOST).await;
    let started = std::time::Instant::now();
    proxy.signal_shutdown();
    let task = proxy.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returned")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = raw_tls; // keep the helper linked for other tests in this crate
}
