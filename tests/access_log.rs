//! The access log of the real binary: one JSON line per request with the documented fields,
//! the request id in every line of the request, and no query string unless `log.query = true`.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::metrics::admin_get;
use common::{BinProxy, Setup};
use serde_json::Value;

const HOST: &str = "url1234.example.test";
/// A host whose upstream refuses connections.
const DOWN: &str = "down.example.test";

async fn start(s: &Setup, env: &[(&str, &str)]) -> BinProxy {
    let closed = common::closed_port();
    let toml = s
        .config(&[HOST, DOWN])
        .host_set(DOWN, "upstream", format!("http://{closed}"))
        .toml();
    let path = s.ca.dir.path().join("trackproxy.toml");
    std::fs::write(&path, toml).unwrap();
    BinProxy::start(Some(&path), env).await
}

fn client(s: &Setup, bin: &BinProxy) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(s.ca.cert_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .resolve(HOST, bin.https)
        .resolve(DOWN, bin.https)
        .http1_only()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn is_access(v: &Value) -> bool {
    v["target"] == "trackproxy::access"
}

#[tokio::test]
async fn one_json_line_per_request_with_every_field_and_no_query() {
    let s = Setup::new().await;
    let bin = start(&s, &[]).await;
    assert_eq!(admin_get(bin.admin, "/healthz").await.0, 200);
    let c = client(&s, &bin);

    let res = c
        .get(format!("https://{HOST}/ls/click?upn=SECRET-TOKEN-1"))
        .header("user-agent", "Mozilla/5.0 (trackproxy test)")
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["x-request-id"], "client-id-42");
    let body_len = res.bytes().await.unwrap().len();
    assert_eq!(
        s.upstream.last().header("x-request-id"),
        Some("client-id-42")
    );

    let res = c
        .get(format!("https://{DOWN}/wf/open?upn=SECRET-TOKEN-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let down_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    res.bytes().await.unwrap();

    let lines = bin.wait_for_lines(2, is_access).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let l = &lines[0];
    assert_eq!(l["level"], "INFO");
    assert_eq!(l["message"], "request");
    assert!(
        l["timestamp"].as_str().unwrap().contains('T'),
        "RFC 3339: {l}"
    );
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["host"], HOST);
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/ls/click");
    assert_eq!(l["status"], 302);
    assert_eq!(l["bytes"], body_len as u64);
    let total = l["duration_ms"].as_f64().unwrap();
    let upstream = l["upstream_ms"].as_f64().unwrap();
    assert!(upstream > 0.0 && upstream <= total, "{l}");
    assert_eq!(l["version"], "HTTP/1.1");
    assert_eq!(l["tls"], "TLSv1.3");
    assert_eq!(l["request_id"], "client-id-42");
    assert_eq!(l["span"]["request_id"], "client-id-42");
    assert_eq!(l["user_agent"], "Mozilla/5.0 (trackproxy test)");
    assert_eq!(l["completed"], true);

    let l = &lines[1];
    assert_eq!(l["host"], DOWN);
    assert_eq!(l["path"], "/wf/open");
    assert_eq!(l["status"], 502);
    assert_eq!(l["request_id"], down_id.as_str());
    assert!(l.get("upstream_ms").is_none(), "no upstream answer: {l}");
    assert!(l.get("user_agent").is_none(), "{l}");

    // The rescue layer's warning for the same request carries its id too.
    let warn = bin
        .wait_for_lines(1, |v| v["message"] == "upstream failed")
        .await;
    assert_eq!(warn[0]["span"]["request_id"], down_id.as_str());
    // ... also as a field of its own, for `log.level = "warn"`, where no request span exists
    assert_eq!(warn[0]["request_id"], down_id.as_str());
    assert_eq!(warn[0]["failure"], "upstream_connect");

    // Tracking tokens appear in no log line at all (the log level here is debug).
    let all = bin.log_lines();
    assert!(all.iter().all(|l| !l.contains("SECRET-TOKEN")), "{all:#?}");
}

#[tokio::test]
async fn query_is_logged_when_enabled() {
    let s = Setup::new().await;
    let bin = start(&s, &[("TRACKPROXY__LOG__QUERY", "true")]).await;
    let c = client(&s, &bin);
    let res = c
        .post(format!("https://{HOST}/asm/unsubscribe/?upn=abc%2Fdef&x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let lines = bin.wait_for_lines(1, is_access).await;
    assert_eq!(lines[0]["path"], "/asm/unsubscribe/?upn=abc%2Fdef&x=1");
    assert_eq!(lines[0]["method"], "POST");
    // A generated id: 32 hex digits, the same upstream and in the log.
    let id = lines[0]["request_id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(s.upstream.last().header("x-request-id"), Some(id));
}
