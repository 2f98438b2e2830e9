//! Limits on the real server: one noisy client gets 429 while other clients (other loopback
//! addresses) still get through; allowed networks are never limited; per-client and total
//! connection caps act before the TLS handshake; in-flight requests past the limit are shed
//! with 503 at once.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use common::eventually;

use std::time::Duration;

use common::haproxy::{HaProxy, Route};
use common::metrics::scrape;
use common::{
    Proxy, Setup, client_from, connect_from, h1_exchange, raw_tls_from, status_of, tls_connect_with,
};

const HOST: &str = "url1234.example.test";

fn url(path: &str) -> String {
    format!("https://{HOST}{path}")
}

#[tokio::test]
async fn a_noisy_client_gets_429_with_retry_after_while_another_ip_gets_200() {
    let s = Setup::new().await;
    // One token per 100 s: nothing refills while the test runs.
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("limits.per_client_rps", 0.01)
            .set("limits.per_client_burst", 3)
            .toml(),
    )
    .await;
    let noisy = client_from(&s.ca, &proxy, &[HOST], "127.0.0.1");
    for _ in 0..3 {
        let r = noisy.get(url("/wf/open?upn=a")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = noisy.get(url("/wf/open?upn=a")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((90..=100).contains(&retry), "Retry-After: {retry}");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().await.unwrap(), "429 Too Many Requests\n");

    let other = client_from(&s.ca, &proxy, &[HOST], "127.0.0.2");
    let r = other.get(url("/ls/click?upn=b")).send().await.unwrap();
    assert_eq!(r.status(), 302, "another client is not affected");
    // HTTP/1.1 on the plain listener is limited under the same client key.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.1".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://{}/wf/open", proxy.http))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);

    // The limited requests never reached the upstream.
    assert_eq!(s.upstream.count(), 4);
    let m = scrape(proxy.admin).await;
    assert_eq!(m.value("trackproxy_rate_limited_total", &[]), 2.0);
    assert_eq!(
        m.value(
            "trackproxy_requests_total",
            &[("host", HOST), ("method", "GET"), ("status", "4xx")]
        ),
        2.0
    );
    assert_eq!(m.value("trackproxy_rate_limit_clients", &[]), 2.0);
}

#[tokio::test]
async fn allowed_networks_are_never_limited() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("limits.per_client_rps", 0.01)
            .set("limits.per_client_burst", 1)
            .set("limits.allow", ["127.0.0.3/32"])
            .toml(),
    )
    .await;
    let allowed = client_from(&s.ca, &proxy, &[HOST], "127.0.0.3");
    for _ in 0..10 {
        let r = allowed.get(url("/wf/open")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let limited = client_from(&s.ca, &proxy, &[HOST], "127.0.0.4");
    assert_eq!(limited.get(url("/")).send().await.unwrap().status(), 200);
    assert_eq!(limited.get(url("/")).send().await.unwrap().status(), 429);
}

#[tokio::test]
async fn per_client_connection_cap_closes_extra_connections_before_tls() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("limits.per_client_connections", 2)
            .toml(),
    )
    .await;
    let cfg = s.ca.client_config(&[b"http/1.1"]);
    let mut a = tls_connect_with(cfg.clone(), "127.0.0.1", proxy.https, HOST)
        .await
        .unwrap();
    let _b = tls_connect_with(cfg.clone(), "127.0.0.1", proxy.https, HOST)
        .await
        .unwrap();
    let req = format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    assert_eq!(h1_exchange(&mut a, &req).await.0, 200);
    // The third from the same address is closed without a handshake.
    let third = tls_connect_with(cfg.clone(), "127.0.0.1", proxy.https, HOST).await;
    assert!(third.is_err(), "third connection must be refused");
    // Another address is fine.
    let mut c = tls_connect_with(cfg.clone(), "127.0.0.2", proxy.https, HOST)
        .await
        .unwrap();
    assert_eq!(h1_exchange(&mut c, &req).await.0, 200);

    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.value(
            "trackproxy_connections_refused_total",
            &[("reason", "per_client_limit")]
        ),
        1.0
    );
    // Refused before any TLS work: no handshake failure was counted.
    let failures: f64 = m
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "trackproxy_tls_handshake_failures_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(failures, 0.0, "{}", m.text);
    // One client config: later connections resume the first one's session.
    assert_eq!(
        m.value("trackproxy_tls_handshakes_total", &[("kind", "full")])
            + m.value("trackproxy_tls_handshakes_total", &[("kind", "resumed")]),
        3.0
    );
    assert_eq!(m.value("trackproxy_open_connections", &[]), 3.0);

    // Closing one frees its slot (the server notices the close asynchronously).
    drop(a);
    let mut d = eventually(
        "a slot freed up by the closed connection",
        Duration::from_secs(5),
        async || tls_connect_with(cfg.clone(), "127.0.0.1", proxy.https, HOST).await,
    )
    .await;
    assert_eq!(h1_exchange(&mut d, &req).await.0, 200);
}

#[tokio::test]
async fn accepting_pauses_at_max_connections_and_resumes() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.config(&[HOST]).set("limits.max_connections", 2).toml()).await;
    let cfg = s.ca.client_config(&[b"http/1.1"]);
    let a = tls_connect_with(cfg.clone(), "127.0.0.1", proxy.https, HOST)
        .await
        .unwrap();
    let _b = tls_connect_with(cfg.clone(), "127.0.0.2", proxy.https, HOST)
        .await
        .unwrap();
    // The kernel completes the TCP handshake (backlog), but the proxy does not take the
    // connection on: no TLS answer while two are open.
    let third = tokio::spawn(tls_connect_with(
        cfg.clone(),
        "127.0.0.3",
        proxy.https,
        HOST,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "handshake must wait while the proxy is full"
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(m.value("trackproxy_accept_paused_total", &[]), 1.0);
    assert_eq!(m.value("trackproxy_open_connections", &[]), 2.0);
    drop(a);
    let mut c = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("accepting resumes once a connection closes")
        .unwrap()
        .unwrap();
    let req = format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    assert_eq!(h1_exchange(&mut c, &req).await.0, 200);
    // Plain TCP connects are still taken by the kernel meanwhile: nothing is refused.
    let _tcp = connect_from("127.0.0.4", proxy.https).await.unwrap();
}

#[tokio::test]
async fn requests_past_max_in_flight_are_shed_with_503_at_once() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.config(&[HOST]).set("limits.max_in_flight", 2).toml()).await;
    let client = client_from(&s.ca, &proxy, &[HOST], "127.0.0.1");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.get(url("/slow?ms=4000")).send().await.unwrap().status() })
        })
        .collect();
    // Both slow requests are at the upstream: the in-flight budget is used up.
    eventually(
        "both slow requests at the upstream",
        Duration::from_secs(5),
        async || s.upstream.count() == 2,
    )
    .await;
    let m = scrape(proxy.admin).await;
    assert_eq!(m.value("trackproxy_in_flight_requests", &[]), 2.0);

    let r = client.get(url("/wf/open")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // Answered while both slow requests are still running: it did not wait in a queue.
    assert!(slow.iter().all(|h| !h.is_finished()));
    assert_eq!(
        s.upstream.count(),
        2,
        "the shed request never reached the upstream"
    );

    for h in slow {
        assert_eq!(h.await.unwrap(), 200);
    }
    let r = client.get(url("/wf/open")).send().await.unwrap();
    assert_eq!(r.status(), 200, "slots come back");
    let m = scrape(proxy.admin).await;
    assert_eq!(m.value("trackproxy_requests_shed_total", &[]), 1.0);
    assert_eq!(m.value("trackproxy_in_flight_requests", &[]), 0.0);
    assert_eq!(
        m.value(
            "trackproxy_requests_total",
            &[("host", HOST), ("method", "GET"), ("status", "5xx")]
        ),
        1.0
    );
}

#[tokio::test]
async fn behind_haproxy_the_limit_follows_the_proxy_protocol_client() {
    let s = Setup::new().await;
    // HAProxy connects from 127.0.0.1 for everyone: only the PROXY header tells clients apart.
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.proxy_protocol", "required")
            .set("server.trusted_proxies", ["127.0.0.1/32"])
            .set("limits.per_client_rps", 0.01)
            .set("limits.per_client_burst", 2)
            .toml(),
    )
    .await;
    let lb = HaProxy::start(
        &[Route {
            servers: vec![proxy.https],
            send_proxy: "send-proxy-v2",
            ..Default::default()
        }],
        "",
    )
    .await;
    let req = format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let get = |from: &'static str| {
        let (ca, lb, req) = (&s.ca, lb.frontends[0], req.clone());
        async move { status_of(&raw_tls_from(ca, from, lb, HOST, req.as_bytes()).await) }
    };
    assert_eq!(get("127.0.0.3").await, 200);
    assert_eq!(get("127.0.0.3").await, 200);
    assert_eq!(get("127.0.0.3").await, 429);
    assert_eq!(
        get("127.0.0.4").await,
        200,
        "another client behind the same balancer"
    );
    let m = scrape(proxy.admin).await;
    assert_eq!(m.value("trackproxy_rate_limited_total", &[]), 1.0);
    assert_eq!(m.value("trackproxy_rate_limit_clients", &[]), 2.0);
}
