//! Idle HTTP/1 connections are parked (hyper's connection and its buffers are freed while the
//! socket stays open) and serve their next request as if nothing happened.
//! `trackproxy_parked_connections` shows it from the outside.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use common::eventually;

use std::time::Duration;

use bytes::Bytes;
use common::metrics::scrape;
use common::{Proxy, Setup, h1_exchange, status_of, tls_connect};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

const HOST: &str = "url1234.example.test";

async fn parked(proxy: &Proxy) -> f64 {
    scrape(proxy.admin)
        .await
        .value("trackproxy_parked_connections", &[])
}

/// Waits until `want` connections are parked.
async fn wait_parked(proxy: &Proxy, want: f64) {
    let what = format!("trackproxy_parked_connections = {want}");
    eventually(&what, Duration::from_secs(10), async || {
        let now = parked(proxy).await;
        if now == want { Ok(()) } else { Err(now) }
    })
    .await;
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

#[tokio::test]
async fn idle_tls_http1_connections_park_and_keep_serving() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let mut c = tls_connect(&s.ca, proxy.https, HOST).await.unwrap();

    // The first response out, the connection parks at once (most clicks make one request).
    let (status, head, _) = h1_exchange(&mut c, &get("/ls/click?upn=first")).await;
    assert_eq!(status, 302, "{head}");
    wait_parked(&proxy, 1.0).await;

    // Parked, it serves the next request on the same socket, and parks again once idle.
    let (status, head, body) = h1_exchange(&mut c, &get("/wf/open?upn=second")).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-length: 43"),
        "{head}"
    );
    assert!(body.starts_with("GIF89a"), "the GIF");
    wait_parked(&proxy, 1.0).await;

    // Two pipelined requests in one write: both answered, in order.
    c.write_all(format!("{}{}", get("/wf/open?upn=p1"), get("/ls/click?upn=p2")).as_bytes())
        .await
        .unwrap();
    let (first, _, _) = h1_exchange(&mut c, "").await;
    let (second, head, _) = h1_exchange(&mut c, "").await;
    assert_eq!((first, second), (200, 302), "{head}");
    wait_parked(&proxy, 1.0).await;

    // Half a request head, then silence past the parking delay: the connection must not park
    // (hyper holds the bytes), and the rest of the request completes it.
    let req = get("/ls/click?upn=split");
    let (a, b) = req.split_at(20);
    c.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(parked(&proxy).await, 0.0, "parked with half a request read");
    let (status, head, _) = h1_exchange(&mut c, b).await;
    assert_eq!(status, 302, "{head}");

    let seen: Vec<String> = s
        .upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        seen,
        [
            "/ls/click?upn=first",
            "/wf/open?upn=second",
            "/wf/open?upn=p1",
            "/ls/click?upn=p2",
            "/ls/click?upn=split"
        ]
    );
    // The client goes away while parked: nothing is left counted.
    wait_parked(&proxy, 1.0).await;
    drop(c);
    wait_parked(&proxy, 0.0).await;
    proxy.stop().await;
}

#[tokio::test]
async fn parked_connections_are_closed_after_the_keep_alive_wait() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.header_read_timeout", "2s")
            .toml(),
    )
    .await;
    let mut c = tls_connect(&s.ca, proxy.https, HOST).await.unwrap();
    let (status, _, _) = h1_exchange(&mut c, &get("/wf/open?upn=1")).await;
    assert_eq!(status, 200);
    wait_parked(&proxy, 1.0).await;
    // closed by the server (close_notify, then EOF) within the keep-alive wait
    let mut rest = Vec::new();
    let started = std::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut c, &mut rest),
    )
    .await
    .expect("parked connection closed by the server")
    .unwrap();
    assert!(rest.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(1000));
    wait_parked(&proxy, 0.0).await;
    proxy.stop().await;
}

#[tokio::test]
async fn plain_http_parks_and_http2_prior_knowledge_still_works() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;

    // Plain HTTP/1.1 (no ALPN: the first bytes decide).
    let mut c = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (status, head, _) = h1_exchange(&mut c, &get("/ls/click?upn=plain")).await;
    assert_eq!(status, 302, "{head}");
    wait_parked(&proxy, 1.0).await;
    let (status, _, _) = h1_exchange(&mut c, &get("/wf/open?upn=plain2")).await;
    assert_eq!(status, 200);

    // HTTP/2 with prior knowledge (h2c), e.g. from a load balancer.
    let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{HOST}/wf/open?upn=h2c"))
        .body(Empty::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len(),
        43
    );
    assert_eq!(s.upstream.last().target, "/wf/open?upn=h2c");

    // A connection that is not HTTP at all gets a 400 and is closed.
    let raw = common::raw_plain(proxy.http, b"PRX garbage\r\n\r\n").await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    proxy.stop().await;
}
