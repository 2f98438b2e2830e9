//! The access log of the real binary: one JSON line per request with the documented fields,
//! the request id in every line of the request, and no query string unless `log.query = true`;
//! under load every request gets its one complete line, a SIGTERM right after a burst loses
//! none, and a stdout nobody reads makes the proxy drop and count lines, not stall requests.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
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
        // Load from one address: no rate limit in the way.
        .set("limits.per_client_rps", 1_000_000)
        .set("limits.per_client_burst", 1_000_000)
        .set("limits.per_client_connections", 0)
        .toml();
    let path = s.ca.dir.path().join("trackproxy.toml");
    std::fs::write(&path, toml).unwrap();
    BinProxy::start(Some(&path), env).await
}

fn client(s: &Setup, bin: &BinProxy) -> reqwest::Client {
    client_with(s, bin, false)
}

/// One reqwest client is one connection per concurrent request (HTTP/1.1) or one connection
/// (HTTP/2, ALPN).
fn client_with(s: &Setup, bin: &BinProxy, http2: bool) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(s.ca.cert_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .resolve(HOST, bin.https)
        .resolve(DOWN, bin.https)
        .timeout(Duration::from_secs(20));
    let b = if http2 { b } else { b.http1_only() };
    b.build().unwrap()
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

/// At the shipped level (`info`, no request span) a line logged while a request is handled
/// still carries its connection's span, on HTTP/1.1 (polled in the connection's task) and on
/// HTTP/2 (a task per stream, which takes the span along).
#[tokio::test]
async fn lines_logged_inside_a_request_carry_the_connection_span() {
    let s = Setup::new().await;
    let bin = start(&s, &[("TRACKPROXY__LOG__LEVEL", "info")]).await;
    let mut ids = Vec::new();
    for http2 in [false, true] {
        let res = client_with(&s, &bin, http2)
            .get(format!("https://{DOWN}/wf/open?upn=x"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 502);
        let version = if http2 { "HTTP/2.0" } else { "HTTP/1.1" };
        assert_eq!(format!("{:?}", res.version()), version);
        ids.push(res.headers()["x-request-id"].to_str().unwrap().to_owned());
        res.bytes().await.unwrap();
    }
    let warns = bin
        .wait_for_lines(2, |v| v["message"] == "upstream failed")
        .await;
    for id in &ids {
        let w = warns
            .iter()
            .find(|w| w["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no warning for {id}: {warns:#?}"));
        assert_eq!(w["span"]["name"], "conn", "{w}");
        let peer = w["span"]["peer"].as_str().unwrap_or_default();
        assert!(peer.starts_with("127.0.0.1:"), "{w}");
    }
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

/// Sends `per_client` requests on each of `h1` HTTP/1.1 connections (one at a time) and `h2`
/// HTTP/2 connections (10 streams at a time), each with a request id of its own, alternating
/// clicks and opens; returns the ids sent.
async fn burst(
    s: &Setup,
    bin: &BinProxy,
    h1: usize,
    h2: usize,
    per_client: usize,
    user_agent: &str,
) -> HashSet<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..h1 + h2 {
        let http2 = c >= h1;
        let client = client_with(s, bin, http2);
        let ua = user_agent.to_owned();
        tasks.spawn(async move {
            let streams = if http2 { 10 } else { 1 };
            let mut ids = Vec::new();
            let mut pending = futures_util::stream::FuturesUnordered::new();
            for i in 0..per_client {
                let id = format!("load-{c}-{i}");
                let path = if i % 2 == 0 {
                    "/ls/click?upn=T"
                } else {
                    "/wf/open?upn=T"
                };
                let req = client
                    .get(format!("https://{HOST}{path}"))
                    .header("x-request-id", &id)
                    .header("user-agent", &ua)
                    .send();
                pending.push(async move {
                    let res = req.await.unwrap();
                    let version = res.version();
                    let status = res.status();
                    assert!(status == 302 || status == 200, "{status}");
                    res.bytes().await.unwrap();
                    version
                });
                ids.push(id);
                if pending.len() >= streams {
                    let v = futures_util::StreamExt::next(&mut pending).await.unwrap();
                    assert_eq!(v == reqwest::Version::HTTP_2, http2);
                }
            }
            while let Some(v) = futures_util::StreamExt::next(&mut pending).await {
                assert_eq!(v == reqwest::Version::HTTP_2, http2);
            }
            ids
        });
    }
    let mut ids = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    assert_eq!(ids.len(), (h1 + h2) * per_client);
    ids
}

/// Every line of the proxy's stdout is one complete JSON object; the access-log lines among
/// them.
fn access_lines(bin: &BinProxy) -> Vec<Value> {
    bin.log_lines()
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))
        })
        .filter(is_access)
        .collect()
}

/// Each id has exactly one access-log line, and each line has every field of a proxied
/// request.
fn one_complete_line_each(lines: &[Value], ids: &HashSet<String>) {
    let mut seen = HashSet::new();
    for l in lines {
        let id = l["request_id"].as_str().unwrap_or_else(|| panic!("{l}"));
        assert!(ids.contains(id), "a line for a request never sent: {l}");
        assert!(seen.insert(id.to_owned()), "two lines for {id}");
        assert_eq!(l["host"], HOST, "{l}");
        assert!(l["path"] == "/ls/click" || l["path"] == "/wf/open", "{l}");
        let status = l["status"].as_u64().unwrap();
        assert!(status == 302 || status == 200, "{l}");
        assert_eq!(l["completed"], true, "{l}");
        assert_eq!(l["client"], "127.0.0.1");
        assert_eq!(l["tls"], "TLSv1.3");
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["message"], "request");
        // The request span exists at `debug` only (the suite's level; some tests run at the
        // default `info`): where there is one, it is this request's.
        assert!(
            l.get("span").is_none() || l["span"]["request_id"] == id,
            "{l}"
        );
        assert!(
            l["bytes"].as_u64().is_some() && l["user_agent"].is_string(),
            "{l}"
        );
        assert!(l["duration_ms"].as_f64().unwrap() >= l["upstream_ms"].as_f64().unwrap());
        assert!(l["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(seen.len(), ids.len(), "requests without a line");
}

#[tokio::test]
async fn under_load_every_request_gets_one_complete_line() {
    let s = Setup::new().await;
    let bin = start(&s, &[]).await;
    // 6 HTTP/1.1 and 2 HTTP/2 connections, 3 000 requests, at the tests' `debug` level (so the
    // access lines share the log with many others).
    let ids = burst(&s, &bin, 6, 2, 375, "Mozilla/5.0 (load)").await;
    let lines = bin.wait_for_lines(ids.len(), is_access).await;
    assert_eq!(lines.len(), ids.len());
    one_complete_line_each(&access_lines(&bin), &ids);
    let versions: HashSet<&str> = lines
        .iter()
        .map(|l| l["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, HashSet::from(["HTTP/1.1", "HTTP/2.0"]));
    let m = common::metrics::scrape(bin.admin).await;
    assert_eq!(m.value("trackproxy_log_lines_dropped_total", &[]), 0.0);
}

#[tokio::test]
async fn a_sigterm_right_after_a_burst_loses_no_line() {
    let s = Setup::new().await;
    let mut bin = start(&s, &[("TRACKPROXY__LOG__LEVEL", "info")]).await;
    let ids = burst(&s, &bin, 8, 0, 250, "Mozilla/5.0 (burst)").await;
    // At once: most lines are still in the proxy's buffer (flushed every 100 ms).
    bin.signal("TERM").await;
    let status = bin.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    // The process is gone: what it wrote is all in the pipe, which the reader drains.
    let lines = bin.wait_for_lines(ids.len(), is_access).await;
    assert_eq!(lines.len(), ids.len());
    one_complete_line_each(&access_lines(&bin), &ids);
    // The shutdown's own lines come after the requests' lines.
    let all = bin.log_lines();
    let last_access = all
        .iter()
        .rposition(|l| l.contains(r#""target":"trackproxy::access""#));
    let closed = all
        .iter()
        .position(|l| l.contains("all connections closed"));
    assert!(
        closed.is_some() && closed > last_access,
        "{:?}",
        &all[all.len() - 3..]
    );
}

#[tokio::test]
async fn a_stdout_nobody_reads_drops_and_counts_lines_instead_of_blocking() {
    let s = Setup::new().await;
    let bin = start(&s, &[("TRACKPROXY__LOG__LEVEL", "info")]).await;
    bin.pause_stdout();
    // 8 KiB user agents make ~8.3 KiB lines: the 16 MiB the proxy buffers hold ~2 000 of
    // them, the pipe a few more; 3 000 requests overflow it.
    let ua = format!("Mozilla/5.0 ({})", "x".repeat(8 * 1024));
    let started = std::time::Instant::now();
    let ids = burst(&s, &bin, 4, 2, 500, &ua).await;
    let elapsed = started.elapsed();
    let dropped = common::metrics::scrape(bin.admin)
        .await
        .value("trackproxy_log_lines_dropped_total", &[]);
    assert!(dropped > 0.0, "nothing dropped in {elapsed:?}");
    assert!(dropped < ids.len() as f64);
    // Reading again: every request is either written or counted, none both.
    bin.resume_stdout();
    let total = ids.len() - dropped as usize;
    let lines = bin.wait_for_lines(total, is_access).await;
    assert_eq!(lines.len(), total);
    let after = common::metrics::scrape(bin.admin)
        .await
        .value("trackproxy_log_lines_dropped_total", &[]);
    assert_eq!(after, dropped);
    // No request waited for the log: had one blocked on the full pipe, `burst` would never
    // have returned (nobody read stdout until it had), and its requests would have timed out.
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
}
