//! The admin listener on the real server: `/healthz`, `/readyz` (certificates, drain) and
//! `/metrics` in Prometheus text, whose counters move by exactly the requests a test sends.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use common::eventually;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::metrics::{admin_get, scrape};
use common::{Proxy, Setup, client, h1_exchange, raw_tls, status_of, tls_connect_with};
use http_body_util::Full;

const HOST: &str = "url1234.example.test";
const HOST2: &str = "url99.example.test";

#[tokio::test]
async fn healthz_readyz_and_unknown_paths() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let (status, _, body) = admin_get(proxy.admin, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, ct, body) = admin_get(proxy.admin, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ct, "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({ "ready": true }));
    assert_eq!(admin_get(proxy.admin, "/").await.0, 404);
    // The admin endpoints are not served on the proxy listeners.
    let raw = common::raw_plain(
        proxy.http,
        format!("GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(!raw.contains("trackproxy_requests_total"), "{raw}");
}

#[tokio::test]
async fn counters_move_by_exactly_the_requests_sent() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST, HOST2])).await;
    let before = scrape(proxy.admin).await;
    // Every fixed series is there from the start, at zero.
    for (name, labels) in [
        ("trackproxy_tls_handshakes_total", vec![("kind", "full")]),
        ("trackproxy_tls_handshakes_total", vec![("kind", "resumed")]),
        (
            "trackproxy_tls_handshake_failures_total",
            vec![("reason", "unknown_sni")],
        ),
        ("trackproxy_rate_limited_total", vec![]),
        ("trackproxy_requests_shed_total", vec![]),
        (
            "trackproxy_upstream_errors_total",
            vec![("kind", "upstream_connect")],
        ),
        ("trackproxy_open_connections", vec![]),
        ("trackproxy_upstream_connections_opened_total", vec![]),
    ] {
        assert!(
            before.has(name, &labels),
            "{name} {labels:?}\n{}",
            before.text
        );
        assert_eq!(before.value(name, &labels), 0.0, "{name}");
    }
    let expiry = before.value(
        "trackproxy_certificate_expiry_timestamp_seconds",
        &[("host", HOST), ("source", "file")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The test CA issues for 90 days.
    assert!(expiry > now + 80.0 * 86400.0 && expiry < now + 91.0 * 86400.0);

    // One HTTP/1.1 keep-alive connection: 3 opens and 2 clicks on HOST.
    let cfg = s.ca.client_config(&[b"http/1.1"]);
    let mut conn = tls_connect_with(cfg.clone(), "127.0.0.1", proxy.https, HOST)
        .await
        .unwrap();
    for _ in 0..3 {
        let req = format!("GET /wf/open?upn=x HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        assert_eq!(h1_exchange(&mut conn, &req).await.0, 200);
    }
    for _ in 0..2 {
        let req = format!("GET /ls/click?upn=x HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        assert_eq!(h1_exchange(&mut conn, &req).await.0, 302);
    }
    // A second connection with the same client config resumes the session: 1 POST.
    let mut resumed = tls_connect_with(cfg.clone(), "127.0.0.1", proxy.https, HOST)
        .await
        .unwrap();
    assert!(matches!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    ));
    let req =
        format!("POST /asm/unsubscribe/?x=1 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h1_exchange(&mut resumed, &req).await.0, 200);
    // A Host that does not match the SNI: 421, counted under the unknown host.
    let req = "GET / HTTP/1.1\r\nHost: other.example.test\r\n\r\n".to_owned();
    assert_eq!(h1_exchange(&mut resumed, &req).await.0, 421);
    // HTTP/2 on HOST2 (a new client config: a full handshake): 2 GETs on one connection.
    let mut h2 = common::h2_connect(&s.ca, proxy.https, HOST2).await;
    for _ in 0..2 {
        let req = http::Request::get(format!("https://{HOST2}/wf/open"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let res = h2.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    // A handshake for a host that is not served.
    let refused = common::tls_connect(&s.ca, proxy.https, "nope.example.test").await;
    assert!(refused.is_err());
    drop(h2);

    let after = scrape(proxy.admin).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let req = |host, method, status| {
        delta(
            "trackproxy_requests_total",
            &[("host", host), ("method", method), ("status", status)],
        )
    };
    assert_eq!(req(HOST, "GET", "2xx"), 3.0, "{}", after.text);
    assert_eq!(req(HOST, "GET", "3xx"), 2.0);
    assert_eq!(req(HOST, "POST", "2xx"), 1.0);
    assert_eq!(req("(unknown)", "GET", "4xx"), 1.0);
    assert_eq!(req(HOST2, "GET", "2xx"), 2.0);
    let total: f64 = after
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "trackproxy_requests_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(total, 9.0, "nothing else was counted");
    assert_eq!(
        delta("trackproxy_tls_handshakes_total", &[("kind", "full")]),
        2.0
    );
    assert_eq!(
        delta("trackproxy_tls_handshakes_total", &[("kind", "resumed")]),
        1.0
    );
    assert_eq!(
        delta(
            "trackproxy_tls_handshake_failures_total",
            &[("reason", "unknown_sni")]
        ),
        1.0
    );
    assert!(
        after.value("trackproxy_upstream_connections_opened_total", &[]) >= 1.0,
        "{}",
        after.text
    );
    // Upstream latency: one observation per forwarded request (not the 421).
    let upstream_count =
        after.histogram_count("trackproxy_upstream_duration_seconds", &[("host", HOST)]);
    assert_eq!(upstream_count, 6.0, "{}", after.text);
    // Request latency is observed when the body ends, just after the client has read it:
    // wait for the last one, then it must be exact.
    let total_latency = eventually("9 request latencies", Duration::from_secs(5), async || {
        let m = scrape(proxy.admin).await;
        let total = m.histogram_count("trackproxy_request_duration_seconds", &[("host", HOST)])
            + m.histogram_count("trackproxy_request_duration_seconds", &[("host", HOST2)])
            + m.histogram_count(
                "trackproxy_request_duration_seconds",
                &[("host", "(unknown)")],
            );
        if total >= 9.0 { Ok(total) } else { Err(total) }
    })
    .await;
    assert_eq!(total_latency, 9.0);
    // Two TLS connections are still open (the HTTP/2 and the refused one may still be
    // closing).
    let open = after.value("trackproxy_open_connections", &[]);
    assert!((2.0..=4.0).contains(&open), "{open}");
}

#[tokio::test]
async fn upstream_errors_are_counted_by_kind() {
    let s = Setup::new().await;
    let closed = common::closed_port();
    let toml = s
        .config(&[HOST])
        .set("upstream.url", format!("http://{closed}"))
        .toml();
    let proxy = Proxy::start(&toml).await;
    let c = client(&s.ca, &proxy, &[HOST], false);
    for _ in 0..2 {
        assert_eq!(
            c.get(format!("https://{HOST}/wf/open"))
                .send()
                .await
                .unwrap()
                .status(),
            502
        );
    }
    let m = scrape(proxy.admin).await;
    assert_eq!(
        m.value(
            "trackproxy_upstream_errors_total",
            &[("kind", "upstream_connect")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "trackproxy_requests_total",
            &[("host", HOST), ("method", "GET"), ("status", "5xx")]
        ),
        2.0
    );
}

#[tokio::test]
async fn readyz_is_503_until_every_host_has_a_certificate() {
    let s = Setup::new().await;
    let app = Proxy::build(&s.toml(&[HOST])).unwrap();
    let resolver = app.resolver().clone();
    let served: HashMap<String, _> = [(HOST.to_owned(), resolver.lookup(HOST).unwrap())].into();
    // Start with no certificate at all (as before ACME has issued one).
    resolver.replace(HashMap::new());
    let proxy = Proxy::start_app(app).await;
    let (status, _, body) = admin_get(proxy.admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({ "ready": false, "reason": "certificate_missing", "hosts": [HOST] })
    );
    assert_eq!(
        admin_get(proxy.admin, "/healthz").await.0,
        200,
        "alive all the same"
    );
    assert!(common::tls_connect(&s.ca, proxy.https, HOST).await.is_err());

    resolver.replace(served);
    let (status, _, body) = admin_get(proxy.admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "{\"ready\":true}\n"));
    let raw = raw_tls(
        &s.ca,
        proxy.https,
        HOST,
        format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200);
}

#[tokio::test]
async fn readyz_fails_during_drain_while_traffic_still_flows() {
    let s = Setup::new().await;
    let mut proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.drain_delay", "3s")
            .set("server.shutdown_grace", "5s")
            .toml(),
    )
    .await;
    assert_eq!(admin_get(proxy.admin, "/readyz").await.0, 200);
    proxy.signal_shutdown();
    let body = eventually(
        "/readyz answering 503",
        Duration::from_secs(2),
        async || {
            let (status, _, body) = admin_get(proxy.admin, "/readyz").await;
            if status == 503 { Ok(body) } else { Err(status) }
        },
    )
    .await;
    assert_eq!(body, "{\"ready\":false,\"reason\":\"draining\"}\n");
    // Still serving during drain_delay.
    let c = client(&s.ca, &proxy, &[HOST], false);
    let r = c
        .get(format!("https://{HOST}/wf/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Then everything, the admin listener included, closes and run returns.
    let task = proxy.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("run returned")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(proxy.admin).await.is_err());
}

#[tokio::test]
async fn proxies_in_one_process_keep_their_counters_apart() {
    let s = Setup::new().await;
    let a = Proxy::start(&s.toml(&[HOST])).await;
    let b = Proxy::start(&s.toml(&[HOST])).await;
    let ca = client(&s.ca, &a, &[HOST], false);
    for _ in 0..3 {
        ca.get(format!("https://{HOST}/wf/open"))
            .send()
            .await
            .unwrap();
    }
    let labels = [("host", HOST), ("method", "GET"), ("status", "2xx")];
    assert_eq!(
        scrape(a.admin)
            .await
            .value("trackproxy_requests_total", &labels),
        3.0
    );
    assert_eq!(
        scrape(b.admin)
            .await
            .value("trackproxy_requests_total", &labels),
        0.0
    );
}
