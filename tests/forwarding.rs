//! Forwarding end to end: real proxy, real TLS, a local upstream that behaves like sendgrid.net
//! and records what it received.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{GIF, LANDING, Proxy, Setup, TestConfig, raw_plain, raw_tls, status_of};
use http_body_util::{BodyExt, Full};

const HOST: &str = "url1234.example.test";

/// Tracked-link targets whose bytes must reach the upstream unchanged.
fn tricky_targets() -> Vec<String> {
    let long_upn: String = "aB3-_xYz9%2F%2B%3D".repeat(8 * 1024 / 18);
    vec![
        "/ls/click?upn=u001.abc%2Fdef%2Bghi%3D%3D-2BXyz".to_owned(),
        "/ls/click?upn=a+b%25c%2fd%2F&x=1&x=2".to_owned(),
        "/uni/ls/click?upn=%7E~%21!%27'%28(%29)*".to_owned(),
        "//wf//open?upn=repeated//slashes/../dots/./x".to_owned(),
        "/asm/unsubscribe/?user_id=12&data=ab%3D%3D".to_owned(),
        format!("/ls/click?upn={long_upn}"),
    ]
}

#[tokio::test]
async fn http1_click_redirect_and_headers_pass_through_untouched() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let target = "/ls/click?upn=u001.abc%2Fdef%2Bghi%3D%3D";
    let raw = raw_tls(
        &s.ca,
        proxy.https,
        HOST,
        format!(
            "GET {target} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: test\r\n\
             Connection: close, X-Client-Hop\r\nX-Client-Hop: secret\r\nKeep-Alive: 300\r\n\
             Proxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\n\
             X-Forwarded-For: 6.6.6.6\r\nCookie: c=1\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 302, "{raw}");
    let lower = raw.to_ascii_lowercase();
    assert!(raw.contains(&format!("location: {LANDING}\r\n")), "{raw}");
    assert!(
        lower.contains("set-cookie: sg_a=1; path=/; secure\r\n"),
        "{raw}"
    );
    assert!(
        lower.contains("set-cookie: sg_b=2; path=/; httponly\r\n"),
        "{raw}"
    );
    assert!(lower.contains("server: stub-sendgrid\r\n"));
    // hop-by-hop response fields from the upstream are gone
    assert!(!lower.contains("x-upstream-hop"), "{raw}");
    assert!(!lower.contains("keep-alive: timeout=5"), "{raw}");
    assert!(raw.ends_with("<a href=\"https://www.example.com/landing\">Found</a>"));

    let seen = s.upstream.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, target);
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(seen.header("host"), Some(HOST));
    assert_eq!(
        seen.sni.as_deref(),
        Some("localhost"),
        "SNI is the upstream's name"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some(HOST));
    assert_eq!(seen.header("user-agent"), Some("test"));
    assert_eq!(seen.header("cookie"), Some("c=1"));
    for hop in ["x-client-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(
            seen.headers.get(hop).is_none(),
            "{hop} reached the upstream"
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn http1_targets_reach_upstream_byte_for_byte() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    for target in tricky_targets() {
        let raw = raw_tls(
            &s.ca,
            proxy.https,
            HOST,
            format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(matches!(status_of(&raw), 200 | 302), "{target}: {raw}");
        assert_eq!(s.upstream.last().target, target);
    }
    // plain HTTP keeps working for links already sent as http://
    for target in tricky_targets() {
        let raw = raw_plain(
            proxy.http,
            format!("GET {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(matches!(status_of(&raw), 200 | 302), "{target}: {raw}");
        let seen = s.upstream.last();
        assert_eq!(seen.target, target);
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
        assert_eq!(seen.header("host"), Some(HOST));
    }
    proxy.stop().await;
}

#[tokio::test]
async fn http2_targets_reach_upstream_byte_for_byte_over_http11() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let mut h2 = common::h2_connect(&s.ca, proxy.https, HOST).await;
    for target in tricky_targets() {
        let req = http::Request::builder()
            .uri(format!("https://{HOST}{target}"))
            .header("user-agent", "h2-test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = h2.send_request(req).await.unwrap();
        assert!(matches!(res.status().as_u16(), 200 | 302), "{target}");
        let seen = s.upstream.last();
        assert_eq!(seen.target, target);
        assert_eq!(seen.version, http::Version::HTTP_11);
        assert_eq!(
            seen.header("host"),
            Some(HOST),
            "Host comes from :authority"
        );
    }
    // the open pixel: the GIF comes back byte for byte
    let req = http::Request::builder()
        .uri(format!("https://{HOST}/wf/open?upn=abc"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h2.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/gif");
    assert!(res.headers().get("connection").is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], &GIF[..]);
    // every h2 request went over one pooled upstream connection or a few, not one each
    assert!(s.upstream.connections() < tricky_targets().len());
    proxy.stop().await;
}

#[tokio::test]
async fn reqwest_http1_and_http2_clients() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    for http2 in [false, true] {
        let c = common::client(&s.ca, &proxy, &[HOST], http2);
        let base = format!("https://{HOST}:{}", proxy.https.port());
        let res = c
            .get(format!("{base}/ls/click?upn=x"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302);
        assert_eq!(res.headers()["location"], LANDING);
        let cookies: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies.len(), 2);
        // a non-default port is part of the Host the upstream sees
        assert_eq!(
            s.upstream.last().header("host"),
            Some(format!("{HOST}:{}", proxy.https.port()).as_str())
        );

        let res = c
            .head(format!("{base}/wf/open?upn=x"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(s.upstream.last().method, "HEAD");
        assert!(res.bytes().await.unwrap().is_empty());

        // one-click unsubscribe is a POST with a body
        let res = c
            .post(format!("{base}/asm/unsubscribe/?oc=1"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let seen = s.upstream.last();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.body_len, 26);
    }
    proxy.stop().await;
}

#[tokio::test]
async fn default_port_is_dropped_from_host() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let raw = raw_tls(
        &s.ca,
        proxy.https,
        HOST,
        b"GET /wf/open HTTP/1.1\r\nHost: URL1234.example.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(
        s.upstream.last().header("host"),
        Some("URL1234.example.test")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn streamed_post_body_reaches_upstream() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let c = common::client(&s.ca, &proxy, &[HOST], false);
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 160; // 10 MiB, sent chunked (no Content-Length)
    let stream = futures_util::stream::iter(
        (0..CHUNKS).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; CHUNK]))),
    );
    let res = c
        .post(format!("https://{HOST}:{}/upload", proxy.https.port()))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), format!("ok {}", CHUNK * CHUNKS));
    assert_eq!(s.upstream.last().body_len, (CHUNK * CHUNKS) as u64);
    proxy.stop().await;
}

#[tokio::test]
async fn x_forwarded_for_from_trusted_peer_is_extended() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.trusted_proxies", ["127.0.0.0/8"])
            .toml(),
    )
    .await;
    let raw = raw_plain(
        proxy.http,
        format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200);
    assert_eq!(
        s.upstream.last().header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn plain_http_redirect_mode() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.config(&[HOST]).set("server.http_mode", "redirect").toml()).await;
    let raw = raw_plain(
        proxy.http,
        format!("GET /ls/click?upn=a%2Fb HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 308, "{raw}");
    assert!(
        raw.contains(&format!("location: https://{HOST}/ls/click?upn=a%2Fb\r\n")),
        "{raw}"
    );
    assert_eq!(s.upstream.count(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn per_host_upstream() {
    let s = Setup::new().await;
    let other = common::Upstream::start_plain().await;
    let toml = s
        .config(&[HOST])
        .host_set(HOST, "upstream", &other.url)
        .toml();
    let proxy = Proxy::start(&toml).await;
    let raw = raw_tls(
        &s.ca,
        proxy.https,
        HOST,
        format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200);
    assert_eq!(other.count(), 1);
    assert_eq!(s.upstream.count(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn curl_http1_and_http2_get_the_upstream_302() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let port = proxy.https.port();
    let resolve = format!("{HOST}:{port}:127.0.0.1");
    let url = format!("https://{HOST}:{port}/ls/click?upn=abc%2Fdef%2B%3D%3D&x=a+b");
    let ca = s.ca.ca_file.display().to_string();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (out, err, ok) = common::curl(&[
            "-sS",
            "--path-as-is",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            flag,
            "--resolve",
            &resolve,
            "--cacert",
            &ca,
            &url,
        ])
        .await;
        assert!(ok, "curl failed: {err}");
        assert!(
            out.starts_with(&format!(
                "HTTP/{} 302",
                if version == "2" { "2" } else { "1.1" }
            )),
            "{out}"
        );
        assert!(
            out.to_ascii_lowercase()
                .contains(&format!("location: {}", LANDING.to_ascii_lowercase()))
        );
        assert!(out.ends_with(version), "{out}");
        assert_eq!(
            s.upstream.last().target,
            "/ls/click?upn=abc%2Fdef%2B%3D%3D&x=a+b"
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let ca = common::TestCa::new();
    let files = ca.write_leaf("p", &[HOST], common::KeyAlg::EcdsaP256);
    let config = |upstream: &str| {
        TestConfig::new(upstream)
            .upstream_ca(&ca.ca_file)
            .host(HOST)
            .certificate(files.clone())
    };
    // refused
    let closed = common::closed_port();
    let toml = config(&format!("https://localhost:{}", closed.port())).toml();
    let proxy = Proxy::start(&toml).await;
    let raw = raw_tls(
        &ca,
        proxy.https,
        HOST,
        format!("GET /ls/click?upn=x HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 502, "{raw}");
    assert!(raw.ends_with("502 Bad Gateway\n"));
    proxy.stop().await;

    // the upstream's certificate does not match its name (verification is on)
    let up = common::Upstream::start(&ca).await;
    let toml = config(&format!("https://127.0.0.1:{}", up.addr.port())).toml();
    let proxy = Proxy::start(&toml).await;
    let raw = raw_tls(
        &ca,
        proxy.https,
        HOST,
        format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 502, "{raw}");
    assert_eq!(up.count(), 0);
    proxy.stop().await;

    // the upstream's CA is not trusted (no ca_file)
    let toml = config(&up.url).unset("upstream.ca_file").toml();
    let proxy = Proxy::start(&toml).await;
    let raw = raw_tls(
        &ca,
        proxy.https,
        HOST,
        format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 502, "{raw}");
    assert_eq!(up.count(), 0);
    proxy.stop().await;

    // too slow
    let toml = config(&up.url)
        .set("upstream.response_timeout", "300ms")
        .toml();
    let proxy = Proxy::start(&toml).await;
    let raw = raw_tls(
        &ca,
        proxy.https,
        HOST,
        format!("GET /slow?ms=3000 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 504, "{raw}");
    // the next request on a new connection is fine: one failure affects nothing else
    let raw = raw_tls(
        &ca,
        proxy.https,
        HOST,
        format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    proxy.stop().await;
}

#[tokio::test]
async fn pooled_upstream_connections_are_reused() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let c = common::client(&s.ca, &proxy, &[HOST], false);
    for _ in 0..20 {
        let res = c
            .get(format!(
                "https://{HOST}:{}/wf/open?upn=1",
                proxy.https.port()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }
    assert_eq!(s.upstream.count(), 20);
    assert_eq!(
        s.upstream.connections(),
        1,
        "sequential requests share one upstream connection"
    );
    proxy.stop().await;
}
