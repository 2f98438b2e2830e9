//! A dual-stack listener (`[::]`): an IPv4 client arrives as `::ffff:127.0.0.x`, and
//! `server.trusted_proxies` (PROXY protocol and `X-Forwarded-For`) and `limits.allow` must all
//! treat it as the IPv4 address it is.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::{Proxy, Setup, raw_plain_from, raw_tls_from, status_of};
use tokio::net::TcpListener;

const HOST: &str = "url1234.example.test";

/// Listeners on `[::]:0` (dual-stack: IPv4 clients are accepted too, as IPv4-mapped IPv6).
async fn dual_stack_listeners() -> common::Listeners {
    common::Listeners {
        https: TcpListener::bind("[::]:0").await.unwrap(),
        http: TcpListener::bind("[::]:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    }
}

/// The IPv4 loopback address of a `[::]` listener.
fn v4(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

#[tokio::test]
async fn ipv4_mapped_clients_match_trusted_proxies_and_limits_allow_alike() {
    let s = Setup::new().await;
    let listeners = dual_stack_listeners().await;
    assert!(listeners.https.local_addr().unwrap().is_ipv6());
    let proxy = Proxy::start_on(
        listeners,
        &s.config(&[HOST])
            .set("server.proxy_protocol", "optional")
            .set("server.trusted_proxies", ["127.0.0.0/8"])
            .set("limits.per_client_rps", 1)
            .set("limits.per_client_burst", 1)
            .set("limits.allow", ["127.0.0.0/8"])
            .toml(),
    );
    let (https, http) = (v4(proxy.https), v4(proxy.http));

    // trusted_proxies, X-Forwarded-For: the client on 127.0.0.3 is a trusted proxy, so the
    // address it names is believed and its own is appended.
    let req = format!(
        "GET /ls/click?upn=xff HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 198.51.100.7\r\n\
         Connection: close\r\n\r\n"
    );
    let raw = raw_tls_from(&s.ca, "127.0.0.3", https, HOST, req.as_bytes()).await;
    assert_eq!(status_of(&raw), 302, "{raw}");
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("198.51.100.7, 127.0.0.3"),
        "a client on 127.0.0.3 (::ffff:127.0.0.3 on the [::] listener) is in 127.0.0.0/8"
    );

    // trusted_proxies, PROXY protocol: a header from 127.0.0.4 is accepted.
    let req = format!(
        "PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n\
         GET /wf/open?upn=pp HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_plain_from("127.0.0.4", http, req.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = s.upstream.last();
    assert_eq!(seen.target, "/wf/open?upn=pp");
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.9"));

    // limits.allow: five requests at once from 127.0.0.5 against a limit of one per second.
    for i in 0..5 {
        let req =
            format!("GET /wf/open?upn=a{i} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
        let raw = raw_plain_from("127.0.0.5", http, req.as_bytes()).await;
        assert_eq!(
            status_of(&raw),
            200,
            "request {i} of an allowed client: {raw}"
        );
    }
    // Without a PROXY header the peer itself is the client, shown as IPv4.
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("127.0.0.5")
    );
}
