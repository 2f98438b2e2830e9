//! `X-Request-Id` round trip through the real server: a sane client id reaches the upstream and
//! comes back; a missing or unusable one is replaced by a fresh id, the same on both sides.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{Proxy, Setup, client};
use http_body_util::Full;

const HOST: &str = "url1234.example.test";

#[tokio::test]
async fn request_ids_round_trip_to_the_upstream_and_back() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let c = client(&s.ca, &proxy, &[HOST], false);
    let url = format!("https://{HOST}/ls/click?upn=x");

    // Kept.
    let res = c
        .get(&url)
        .header("x-request-id", "7f1c0f2e-5b0d-4c8e-9a51-0c7d2f0b9e11")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["x-request-id"],
        "7f1c0f2e-5b0d-4c8e-9a51-0c7d2f0b9e11"
    );
    assert_eq!(
        s.upstream.last().header("x-request-id"),
        Some("7f1c0f2e-5b0d-4c8e-9a51-0c7d2f0b9e11")
    );

    // Missing, or not sane: replaced, and the upstream sees the id the client gets.
    let long = "a".repeat(200);
    let mut seen = Vec::new();
    for sent in [None, Some("bad id with spaces"), Some(long.as_str())] {
        let mut req = c.get(&url);
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let res = req.send().await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let up = s.upstream.last();
        assert_eq!(up.header("x-request-id"), Some(id.as_str()));
        assert_eq!(up.headers.get_all("x-request-id").iter().count(), 1);
        seen.push(id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "fresh ids differ");
}

#[tokio::test]
async fn http2_and_local_answers_carry_an_id_too() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let mut h2 = common::h2_connect(&s.ca, proxy.https, HOST).await;
    let req = http::Request::get(format!("https://{HOST}/wf/open"))
        .header("x-request-id", "h2-id")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "h2-id");
    assert_eq!(s.upstream.last().header("x-request-id"), Some("h2-id"));
    // A synthetic answer (421, never forwarded) has one as well.
    let req = http::Request::get("https://other.example.test/")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), 421);
    assert_eq!(res.headers()["x-request-id"].len(), 32);
}
