//! Faults of the client, blamed on the client: a malformed request body (bad chunk framing, a
//! body shorter than its `Content-Length`), a client that resets mid-upload, and requests hyper
//! itself rejects (unparsable head, head too large). Each is answered 400/431 (or, when no
//! answer can be sent, logged as a client abort, 499), has an access-log line with
//! `origin = "client"`, and is counted in `trackproxy_client_errors_total`, never as an
//! upstream error. Upstream faults stay 502 (`access_log.rs`, `forwarding.rs`).

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::metrics::scrape;
use common::{BinProxy, Setup};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "url1234.example.test";

async fn start(s: &Setup) -> BinProxy {
    let path = s.ca.dir.path().join("trackproxy.toml");
    std::fs::write(&path, s.toml(&[HOST])).unwrap();
    BinProxy::start(Some(&path), &[]).await
}

/// Sends `raw` on a new plain-HTTP connection, half-closes if `half_close`, and returns all
/// the server sent until it closed.
async fn exchange(addr: SocketAddr, raw: &[u8], half_close: bool) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn is_access(v: &Value) -> bool {
    v["target"] == "trackproxy::access"
}

struct Counts {
    client: f64,
    upstream: f64,
}

async fn counts(bin: &BinProxy, kind: &str) -> Counts {
    let m = scrape(bin.admin).await;
    let upstream = ["upstream_request", "upstream_connect", "upstream_timeout"]
        .iter()
        .map(|k| m.value("trackproxy_upstream_errors_total", &[("kind", k)]))
        .sum();
    Counts {
        client: m.value("trackproxy_client_errors_total", &[("kind", kind)]),
        upstream,
    }
}

/// Runs `raw` and checks the answer, the access-log line and the counters.
async fn check(bin: &BinProxy, raw: &[u8], half_close: bool, status: u16, kind: &str) -> Value {
    let before = counts(bin, kind).await;
    let lines_before = bin
        .log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(is_access)
        .count();
    let answer = exchange(bin.http, raw, half_close).await;
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{:?}: {answer:?}",
        String::from_utf8_lossy(raw)
    );
    let lines = bin.wait_for_lines(lines_before + 1, is_access).await;
    let line = lines[lines_before].clone();
    assert_eq!(line["status"], status, "{line}");
    assert_eq!(line["origin"], "client", "{line}");
    assert_eq!(line["failure"], kind, "{line}");
    assert_eq!(line["client"], "127.0.0.1", "{line}");
    let after = counts(bin, kind).await;
    assert_eq!(after.client, before.client + 1.0, "{kind}");
    assert_eq!(
        after.upstream, before.upstream,
        "counted as an upstream error"
    );
    line
}

fn chunked(body: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
        .into_bytes()
}

#[tokio::test]
async fn malformed_request_bodies_are_answered_400_and_blamed_on_the_client() {
    let s = Setup::new().await;
    let bin = start(&s).await;
    // A chunk size that is not hexadecimal.
    let line = check(
        &bin,
        &chunked("zz\r\nabc\r\n0\r\n\r\n"),
        false,
        400,
        "bad_request_body",
    )
    .await;
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/upload");
    assert_eq!(line["host"], HOST);
    // A chunk size that overflows 64 bits.
    check(
        &bin,
        &chunked("1ffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        false,
        400,
        "bad_request_body",
    )
    .await;
    // Chunks ended by a bare LF.
    check(
        &bin,
        &chunked("3\nabc\n0\n\n"),
        false,
        400,
        "bad_request_body",
    )
    .await;
    // A chunk longer than its size says.
    check(
        &bin,
        &chunked("3\r\nabcdef\r\n0\r\n\r\n"),
        false,
        400,
        "bad_request_body",
    )
    .await;
    // A body shorter than its Content-Length, then the client's FIN (it still reads).
    let short = format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\nabc");
    check(&bin, short.as_bytes(), true, 400, "bad_request_body").await;

    // A well-formed chunked body still goes through (the answer ends when its body does).
    let good = tokio::time::timeout(Duration::from_secs(15), async {
        let mut s = TcpStream::connect(bin.http).await.unwrap();
        s.write_all(&chunked("3\r\nabc\r\n0\r\n\r\n"))
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.ends_with(b"ok 3") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "{:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap();
    assert!(good.starts_with("HTTP/1.1 200 "), "{good}");
}

#[tokio::test]
async fn a_client_that_resets_mid_upload_is_logged_as_a_client_abort() {
    let s = Setup::new().await;
    let bin = start(&s).await;
    let before = counts(&bin, "client_aborted").await;
    let mut c = TcpStream::connect(bin.http).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&[b'x'; 1000]).await.unwrap();
    // The upload reached the upstream before the reset.
    common::eventually(
        "the upstream sees the request",
        Duration::from_secs(10),
        async || {
            let m = scrape(bin.admin).await;
            let n = m.value("trackproxy_upstream_connections_opened_total", &[]);
            if n >= 1.0 { Ok(()) } else { Err(n) }
        },
    )
    .await;
    // RST instead of FIN.
    c.set_zero_linger().unwrap();
    drop(c);
    let lines = bin.wait_for_lines(1, is_access).await;
    let line = &lines[0];
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["origin"], "client", "{line}");
    assert_eq!(line["failure"], "client_aborted", "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    let after = counts(&bin, "client_aborted").await;
    assert_eq!(after.client, before.client + 1.0);
    assert_eq!(
        after.upstream, before.upstream,
        "counted as an upstream error"
    );
}

/// Sends `raw` and checks hyper's own answer, the access-log line of the refused request and
/// its count.
async fn check_refused(bin: &BinProxy, raw: &[u8], status: u16, kind: &str) {
    let before = counts(bin, kind).await;
    let lines_before = bin
        .log_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(is_access)
        .count();
    let answer = exchange(bin.http, raw, false).await;
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{:?}: {answer:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(200)])
    );
    let lines = bin.wait_for_lines(lines_before + 1, is_access).await;
    let line = &lines[lines_before];
    assert_eq!(line["status"], status, "{line}");
    assert_eq!(line["origin"], "client", "{line}");
    assert_eq!(line["failure"], kind, "{line}");
    assert_eq!(line["client"], "127.0.0.1", "{line}");
    assert!(
        line["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{line}"
    );
    assert!(line.get("tls").is_none(), "plain HTTP: {line}");
    let after = counts(bin, kind).await;
    assert_eq!(after.client, before.client + 1.0, "{kind}");
}

#[tokio::test]
async fn requests_hyper_refuses_are_logged_and_counted() {
    let s = Setup::new().await;
    let bin = start(&s).await;
    // An unparsable request line and an unparsable header line.
    check_refused(&bin, b"GET /a b c\r\n\r\n", 400, "malformed_request").await;
    check_refused(
        &bin,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nBad Header: x\r\n\r\n").as_bytes(),
        400,
        "malformed_request",
    )
    .await;
    // A head over server.max_header_bytes (64 KiB by default): cookies of the main site.
    let big = format!(
        "GET /ls/click HTTP/1.1\r\nHost: {HOST}\r\nCookie: {}\r\n\r\n",
        "c".repeat(70_000)
    );
    check_refused(&bin, big.as_bytes(), 431, "header_too_large").await;
    // More header fields than server.max_headers (100).
    let mut many = format!("GET /ls/click HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..120 {
        many.push_str(&format!("X-F{i}: v\r\n"));
    }
    many.push_str("\r\n");
    check_refused(&bin, many.as_bytes(), 431, "header_too_large").await;
    assert_eq!(
        s.upstream.count(),
        0,
        "nothing refused reached the upstream"
    );
}

/// curl over HTTP/2 with headers over `server.max_header_bytes` (a site's cookies): 431 on
/// its stream, logged and counted; the next request reuses the same connection. The limit is
/// 16 KiB here: curl (nghttp2) cannot send a header block over 64 KiB at all, so past the
/// default limit it is curl that gives up ("Connection died" without sending a HEADERS
/// frame, seen in the proxy's h2 debug log), not the proxy.
#[tokio::test]
async fn http2_headers_over_the_limit_get_431_and_the_connection_lives_on() {
    let s = Setup::new().await;
    let path = s.ca.dir.path().join("trackproxy.toml");
    std::fs::write(
        &path,
        s.config(&[HOST])
            .set("server.max_header_bytes", 16_384)
            .toml(),
    )
    .unwrap();
    let bin = BinProxy::start(Some(&path), &[]).await;
    let before = counts(&bin, "header_too_large").await;
    let resolve = format!("{HOST}:{}:127.0.0.1", bin.https.port());
    let ca = s.ca.ca_file.to_str().unwrap().to_owned();
    let big = format!("Cookie: {}", "site_pref=a1b2c3d4; ".repeat(1000));
    let big2 = format!("X-Site-State: {}", "x".repeat(100));
    let write_out = "%{http_code} %{http_version} %{num_connects}\\n";
    let port = bin.https.port();
    let url1 = format!("https://{HOST}:{port}/ls/click?upn=big");
    let url2 = format!("https://{HOST}:{port}/wf/open?upn=after");
    let (out, err, ok) = common::curl(&[
        "-sS",
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        write_out,
        "-H",
        &big,
        "-H",
        &big2,
        &url1,
        "--next",
        "-sS",
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        write_out,
        &url2,
    ])
    .await;
    assert!(ok, "curl failed: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["431 2 1", "200 2 0"], "stderr: {err}");
    let access = bin.wait_for_lines(2, is_access).await;
    let l = &access[0];
    assert_eq!(l["status"], 431, "{l}");
    assert_eq!(l["origin"], "client", "{l}");
    assert_eq!(l["failure"], "header_too_large", "{l}");
    assert_eq!(l["version"], "HTTP/2.0", "{l}");
    assert_eq!(l["host"], HOST, "{l}");
    assert_eq!(access[1]["status"], 200);
    let after = counts(&bin, "header_too_large").await;
    assert_eq!(after.client, before.client + 1.0);
    assert_eq!(
        s.upstream.count(),
        1,
        "only the second request went upstream"
    );
}
