//! The pool of keep-alive connections to the upstream: reuse, connections the upstream closes
//! while they idle in the pool, `upstream.pool_idle_timeout` and `upstream.pool_max_idle`.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Proxy, Setup, TestCa, Upstream, eventually, h1_exchange, tls_connect};

const HOST: &str = "url1234.example.test";

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

#[tokio::test]
async fn connections_the_upstream_closes_while_pooled_are_not_used() {
    let ca = TestCa::new();
    // An upstream that closes keep-alive connections idle for 200 ms, like real servers.
    let upstream = Upstream::start_closing_idle_after(&ca, Duration::from_millis(200)).await;
    let s = Setup { ca, upstream };
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let mut c = tls_connect(&s.ca, proxy.https, HOST).await.unwrap();
    for n in 0..3 {
        let (status, head, _) = h1_exchange(&mut c, &get(&format!("/wf/open?upn={n}"))).await;
        assert_eq!(status, 200, "request {n}: {head}");
        // the upstream closes the pooled connection meanwhile
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(s.upstream.count(), 3);
    assert_eq!(s.upstream.connections(), 3, "a new connection each time");
    proxy.stop().await;
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_pool_idle_timeout() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("upstream.pool_idle_timeout", "1s")
            .toml(),
    )
    .await;
    let mut c = tls_connect(&s.ca, proxy.https, HOST).await.unwrap();
    for path in ["/wf/open?upn=1", "/ls/click?upn=2"] {
        let (status, _, _) = h1_exchange(&mut c, &get(path)).await;
        assert!(status == 200 || status == 302);
    }
    assert_eq!(
        s.upstream.connections(),
        1,
        "reused within the idle timeout"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, _, _) = h1_exchange(&mut c, &get("/wf/open?upn=3")).await;
    assert_eq!(status, 200);
    assert_eq!(s.upstream.connections(), 2, "the idle one was closed");
    proxy.stop().await;
}

#[tokio::test]
async fn at_most_pool_max_idle_connections_are_kept() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.config(&[HOST]).set("upstream.pool_max_idle", 2).toml()).await;
    let c = common::client(&s.ca, &proxy, &[HOST], true);
    let url = |n: u32| format!("https://{HOST}:{}/slow?ms=300&n={n}", proxy.https.port());
    // 4 requests at once need 4 upstream connections; 2 of them stay pooled.
    for round in 0..2 {
        let all = (0..4).map(|n| {
            let c = c.clone();
            let u = url(round * 4 + n);
            async move {
                let res = c.get(u).send().await.unwrap();
                assert_eq!(res.status(), 200);
                res.bytes().await.unwrap();
            }
        });
        futures_util::future::join_all(all).await;
        // Back in the pool: 2 kept, the upstream sees the other 2 closed.
        eventually(
            "2 upstream connections left open",
            Duration::from_secs(5),
            async || s.upstream.open_connections() == 2,
        )
        .await;
    }
    assert_eq!(s.upstream.count(), 8);
    assert_eq!(
        s.upstream.connections(),
        6,
        "4, then 2 new beside the 2 kept"
    );
    proxy.stop().await;
}
