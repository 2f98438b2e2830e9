//! TLS termination and routing: only configured hosts get a certificate or a response;
//! trackproxy is never an open proxy.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{KeyAlg, Proxy, Setup, TestCa, TestConfig, raw_plain, raw_tls, status_of};
use http_body_util::Full;

const HOST: &str = "url1234.example.test";
const OTHER: &str = "url5678.example.test";

#[tokio::test]
async fn unknown_or_missing_sni_is_refused() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    // A certificate exists for this name from the same CA, but the host is not configured.
    let err = common::tls_connect(&s.ca, proxy.https, "not-configured.example.test")
        .await
        .expect_err("handshake for an unknown SNI must fail");
    assert!(
        err.to_string().contains("AccessDenied") || err.to_string().contains("alert"),
        "{err}"
    );
    // No SNI at all (rustls sends none for an IP address).
    let tcp = tokio::net::TcpStream::connect(proxy.https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(s.ca.client_config(&[b"http/1.1"]));
    let ip =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    assert!(connector.connect(ip, tcp).await.is_err());
    // curl agrees, and sees no certificate for the wrong name
    let port = proxy.https.port();
    let (_, err, ok) = common::curl(&[
        "-sS",
        "--resolve",
        &format!("evil.example.test:{port}:127.0.0.1"),
        "--cacert",
        &s.ca.ca_file.display().to_string(),
        &format!("https://evil.example.test:{port}/"),
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("alert") || err.contains("SSL"), "{err}");
    // The configured host still works.
    let raw = raw_tls(
        &s.ca,
        proxy.https,
        HOST,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200);
    proxy.stop().await;
}

#[tokio::test]
async fn host_must_match_sni_and_be_configured() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST, OTHER])).await;
    let req = |host: &str| {
        format!("GET /ls/click?upn=x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    // configured, but not the host this connection was set up for
    let raw = raw_tls(&s.ca, proxy.https, HOST, req(OTHER).as_bytes()).await;
    assert_eq!(status_of(&raw), 421, "{raw}");
    // not configured at all
    let raw = raw_tls(&s.ca, proxy.https, HOST, req("sendgrid.net").as_bytes()).await;
    assert_eq!(status_of(&raw), 421, "{raw}");
    // on plain HTTP an unknown host is 404
    let raw = raw_plain(proxy.http, req("sendgrid.net").as_bytes()).await;
    assert_eq!(status_of(&raw), 404, "{raw}");
    let raw = raw_plain(proxy.http, req("127.0.0.1").as_bytes()).await;
    assert_eq!(status_of(&raw), 404, "{raw}");
    // missing Host
    let raw = raw_plain(proxy.http, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    // HTTP/2: :authority of another configured host on this connection (coalescing) → 421
    let mut h2 = common::h2_connect(&s.ca, proxy.https, HOST).await;
    let res = h2
        .send_request(
            http::Request::builder()
                .uri(format!("https://{OTHER}/ls/click?upn=x"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 421);
    // and Host contradicting :authority is malformed
    let res = h2
        .send_request(
            http::Request::builder()
                .uri(format!("https://{HOST}/ls/click?upn=x"))
                .header("host", "sendgrid.net")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(s.upstream.count(), 0, "nothing reached the upstream");
    proxy.stop().await;
}

#[tokio::test]
async fn connect_and_absolute_form_for_other_hosts_are_refused() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let connect =
        b"CONNECT sendgrid.net:443 HTTP/1.1\r\nHost: sendgrid.net:443\r\nConnection: close\r\n\r\n";
    let raw = raw_plain(proxy.http, connect).await;
    assert_eq!(status_of(&raw), 405, "{raw}");
    let raw = raw_tls(&s.ca, proxy.https, HOST, connect).await;
    assert_eq!(status_of(&raw), 405, "{raw}");
    // absolute-form naming another host, with our Host header: the target wins and is refused
    let abs =
        format!("GET http://example.org/ HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw_plain(proxy.http, abs.as_bytes()).await), 404);
    assert_eq!(
        status_of(&raw_tls(&s.ca, proxy.https, HOST, abs.as_bytes()).await),
        421
    );
    // absolute-form naming our host is served like origin-form
    let abs = format!(
        "GET http://{HOST}/wf/open?upn=1 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status_of(&raw_plain(proxy.http, abs.as_bytes()).await), 200);
    assert_eq!(s.upstream.count(), 1);
    assert_eq!(s.upstream.last().target, "/wf/open?upn=1");
    proxy.stop().await;
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let s = Setup::new().await;
    let proxy = Proxy::start(
        &s.config(&[HOST])
            .set("server.max_header_bytes", 16384)
            .set("server.max_headers", 50)
            .toml(),
    )
    .await;
    let big = "a".repeat(20 * 1024);
    let req =
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw_plain(proxy.http, req.as_bytes()).await), 431);
    assert_eq!(
        status_of(&raw_tls(&s.ca, proxy.https, HOST, req.as_bytes()).await),
        431
    );
    let many: String = (0..80).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(status_of(&raw_plain(proxy.http, req.as_bytes()).await), 431);
    // an 8 KB tracking token is not "too large"
    let upn = "x".repeat(8 * 1024);
    let req =
        format!("GET /ls/click?upn={upn} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw_plain(proxy.http, req.as_bytes()).await), 302);
    assert_eq!(s.upstream.count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn rsa_ed25519_ecdsa_and_wildcard_certificates() {
    let ca = TestCa::new();
    let up = common::Upstream::start(&ca).await;
    let rsa = ca.write_leaf("rsa", &["rsa.example.test"], KeyAlg::Rsa2048);
    let ed = ca.write_leaf("ed", &["ed.example.test"], KeyAlg::Ed25519);
    let wild = ca.write_leaf("wild", &["*.wild.example.test"], KeyAlg::EcdsaP256);
    let hosts = [
        "rsa.example.test",
        "ed.example.test",
        "url1.wild.example.test",
        "url2.wild.example.test",
    ];
    let toml = TestConfig::new(&up.url)
        .upstream_ca(&ca.ca_file)
        .hosts(&hosts)
        .certificate(rsa)
        .certificate(ed)
        .certificate(wild)
        .toml();
    let proxy = Proxy::start(&toml).await;
    for h in hosts {
        let raw = raw_tls(
            &ca,
            proxy.https,
            h,
            format!("GET /wf/open HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&raw), 200, "{h}: {raw}");
        assert_eq!(up.last().header("host"), Some(h));
    }
    // a name the wildcard covers but that is not configured is still refused
    assert!(
        common::tls_connect(&ca, proxy.https, "url3.wild.example.test")
            .await
            .is_err()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn tls_versions_and_alpn() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    for (version, name) in [
        (&rustls::version::TLS12, "TLSv1_2"),
        (&rustls::version::TLS13, "TLSv1_3"),
    ] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(s.ca.der()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(common::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(proxy.https).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(rustls::pki_types::ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();
        let conn = tls.get_ref().1;
        assert_eq!(format!("{:?}", conn.protocol_version().unwrap()), name);
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    }
    // TLS 1.1 and older are refused (openssl can still offer them at security level 0)
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &proxy.https.to_string(),
            "-servername",
            HOST,
        ])
        .args(["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl must be installed");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Cipher is (NONE)"),
        "TLS 1.1 was negotiated: {stdout}"
    );
    proxy.stop().await;
}
