//! Behind a real HAProxy speaking PROXY protocol: the client address survives the load balancer.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use common::haproxy::{HaProxy, Route};
use common::{Proxy, Setup, raw_plain_from, raw_tls_from, status_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "url1234.example.test";

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn client_address_survives_haproxy_v2_and_v1() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.proxy_protocol", "required")
            .set("server.trusted_proxies", ["127.0.0.1/32"])
            .toml(),
    )
    .await;
    let lb = HaProxy::start(
        &[
            Route {
                servers: vec![proxy.https],
                send_proxy: "send-proxy-v2",
                ..Default::default()
            },
            Route {
                servers: vec![proxy.http],
                send_proxy: "send-proxy",
                ..Default::default()
            },
        ],
        "",
    )
    .await;
    // HTTPS through HAProxy with PROXY v2, from 127.0.0.3
    let raw = raw_tls_from(
        &s.ca,
        "127.0.0.3",
        lb.frontends[0],
        HOST,
        request("/ls/click?upn=v2").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 302, "{raw}");
    let seen = s.upstream.last();
    assert_eq!(seen.target, "/ls/click?upn=v2");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.3"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // plain HTTP through HAProxy with PROXY v1, from 127.0.0.4
    let raw = raw_plain_from(
        "127.0.0.4",
        lb.frontends[1],
        request("/wf/open?upn=v1").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("127.0.0.4")
    );
    // a client's own X-Forwarded-For behind an L4 balancer is not trusted
    let raw = raw_tls_from(
        &s.ca,
        "127.0.0.5",
        lb.frontends[0],
        HOST,
        format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("127.0.0.5")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn untrusted_or_garbage_proxy_headers_close_only_that_connection() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.proxy_protocol", "optional")
            .set("server.trusted_proxies", ["127.0.0.1/32"])
            .toml(),
    )
    .await;
    let before = s.upstream.count();
    // an untrusted peer (127.0.0.2) claiming another address: refused
    let spoof = format!(
        "PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n{}",
        request("/wf/open")
    );
    let raw = raw_plain_from("127.0.0.2", proxy.http, spoof.as_bytes()).await;
    assert_eq!(raw, "", "refused without a response");
    // a trusted peer sending garbage after the signature: refused
    let mut c = common::connect_from("127.0.0.1", proxy.http).await.unwrap();
    c.write_all(b"PROXY this is not a header\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out).await;
    assert!(out.is_empty());
    // binary garbage with the v2 signature
    let mut c = common::connect_from("127.0.0.1", proxy.https)
        .await
        .unwrap();
    c.write_all(b"\r\n\r\n\0\r\nQUIT\n\x99\x99\x00\x04abcd")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out).await;
    assert!(out.is_empty());
    assert_eq!(s.upstream.count(), before);
    // meanwhile an open connection and new ones are unaffected: optional mode serves a direct
    // client (without a header) as itself, and a trusted header as the address it carries
    let raw = raw_plain_from("127.0.0.2", proxy.http, request("/wf/open").as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("127.0.0.2")
    );
    let good = format!(
        "PROXY TCP4 198.51.100.20 127.0.0.1 5555 80\r\n{}",
        request("/wf/open")
    );
    let raw = raw_plain_from("127.0.0.1", proxy.http, good.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("198.51.100.20")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn required_mode_refuses_direct_clients() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.proxy_protocol", "required")
            .set("server.trusted_proxies", ["127.0.0.1/32"])
            .toml(),
    )
    .await;
    let raw = raw_plain_from("127.0.0.2", proxy.http, request("/wf/open").as_bytes()).await;
    assert_eq!(raw, "");
    // a trusted peer must send the header too
    let raw = raw_plain_from("127.0.0.1", proxy.http, request("/wf/open").as_bytes()).await;
    assert_eq!(raw, "");
    assert_eq!(s.upstream.count(), 0);
    proxy.stop().await;
}

/// Behind a real L7 load balancer (HAProxy in HTTP mode with `option forwardfor`): the client
/// comes from the trusted balancer's X-Forwarded-For, for rate limits and for the upstream.
#[tokio::test]
async fn client_address_survives_an_l7_balancer() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.trusted_proxies", ["127.0.0.1/32"])
            .set("limits.per_client_rps", 0.001)
            .set("limits.per_client_burst", 2)
            .toml(),
    )
    .await;
    let lb = HaProxy::start(
        &[Route {
            servers: vec![proxy.http],
            http: true,
            backend: "    option forwardfor".into(),
            ..Default::default()
        }],
        "",
    )
    .await;
    for _ in 0..2 {
        let raw =
            raw_plain_from("127.0.0.6", lb.frontends[0], request("/wf/open").as_bytes()).await;
        assert_eq!(status_of(&raw), 200, "{raw}");
        let seen = s.upstream.last();
        // the balancer's address is appended to the chain it sent
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.6, 127.0.0.1"));
    }
    // the third request of 127.0.0.6 is over its burst ...
    let raw = raw_plain_from("127.0.0.6", lb.frontends[0], request("/wf/open").as_bytes()).await;
    assert_eq!(status_of(&raw), 429, "{raw}");
    // ... while another client behind the same balancer is not
    let raw = raw_plain_from("127.0.0.7", lb.frontends[0], request("/wf/open").as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("127.0.0.7, 127.0.0.1")
    );
    // a client talking to the proxy directly cannot choose its address with the header
    let spoof = format!(
        "GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 127.0.0.7\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_plain_from("127.0.0.8", proxy.http, spoof.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("127.0.0.8")
    );
    proxy.stop().await;
}

/// The binary behind HAProxy with PROXY v2: its access log names the real client.
#[tokio::test]
async fn access_log_names_the_client_behind_haproxy() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("trackproxy.toml");
    std::fs::write(
        &cfg,
        s.config(&[HOST])
            .set("server.proxy_protocol", "required")
            .set("server.trusted_proxies", ["127.0.0.1/32"])
            .set("log.level", "info")
            .toml(),
    )
    .unwrap();
    let bin = common::BinProxy::start(Some(&cfg), &[]).await;
    let lb = HaProxy::start(
        &[Route {
            servers: vec![bin.https],
            send_proxy: "send-proxy-v2",
            ..Default::default()
        }],
        "",
    )
    .await;
    let raw = raw_tls_from(
        &s.ca,
        "127.0.0.9",
        lb.frontends[0],
        HOST,
        request("/wf/open?upn=secret").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let lines = bin.wait_for_lines(1, |v| v["message"] == "request").await;
    assert_eq!(lines[0]["client"], "127.0.0.9");
    assert_eq!(lines[0]["path"], "/wf/open");
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("127.0.0.9")
    );
}
