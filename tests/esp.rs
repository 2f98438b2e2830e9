//! ESP presets end to end: local upstreams that behave like each ESP's tracking host
//! (plain HTTP only like Mailgun, SNI required like SparkPost, 400 over 8 192 header bytes
//! like Amazon SES), the hygiene keys (`forward_cookies`, `paths`), and the app-link files a
//! branded host serves itself, fetched with curl over HTTPS and plain HTTP.
//!
//! A host's `upstream` given as `host:port` alone takes its preset's scheme: that is how these
//! tests point a preset at a local stand-in and still see the preset choose `http` or `https`.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Proxy, Setup, Upstream, eventually, raw_plain, raw_tls, status_of};

const MG: &str = "email.mg.example.test";
const SP: &str = "click.sp.example.test";
const SES: &str = "r.ses.example.test";
const SG: &str = "url1234.example.test";

fn get(host: &str, target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0 (esp test)\r\n\
         {extra}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Mailgun's tracking host speaks plain HTTP only: the preset's scheme is `http`, so an
/// HTTPS click reaches a plain-HTTP-only upstream; the same upstream under the SendGrid preset
/// (https) cannot be reached.
#[tokio::test]
async fn mailgun_preset_forwards_https_clicks_over_plain_http() {
    let s = Setup::new().await;
    let plain = Upstream::start_plain().await;
    let at = format!("127.0.0.1:{}", plain.addr.port());
    let toml = s
        .config(&[MG, SG])
        .host_set(MG, "esp", "mailgun")
        .host_set(MG, "upstream", at.as_str())
        .host_set(SG, "upstream", at.as_str())
        .toml();
    let proxy = Proxy::start(&toml).await;
    let target = "/c/eJwNy0EKgzAQ?x=%2F";
    let raw = raw_tls(&s.ca, proxy.https, MG, &get(MG, target, "")).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = plain.last();
    assert_eq!(seen.target, target);
    assert_eq!(seen.header("host"), Some(MG));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.sni, None, "plain HTTP: no TLS at all");

    let raw = raw_tls(&s.ca, proxy.https, SG, &get(SG, target, "")).await;
    assert_eq!(
        status_of(&raw),
        502,
        "https to a plain-HTTP upstream: {raw}"
    );
    assert_eq!(plain.count(), 1);
    proxy.stop().await;
}

/// SparkPost requires SNI, needs X-Forwarded-For and User-Agent, and asks proxies not to
/// redirect http to https: its hosts keep proxying plain HTTP under `http_mode = "redirect"`.
#[tokio::test]
async fn sparkpost_preset_sends_sni_and_client_headers_and_never_redirects() {
    let s = Setup::new().await;
    let sp = Upstream::start_requiring_sni(&s.ca).await;
    let by_name = format!("localhost:{}", sp.addr.port());
    let by_ip = format!("https://127.0.0.1:{}", sp.addr.port());
    const SP_IP: &str = "click2.sp.example.test";
    let toml = s
        .config(&[SP, SP_IP, SG])
        .set("server.http_mode", "redirect")
        .host_set(SP, "esp", "sparkpost")
        .host_set(SP, "upstream", by_name.as_str())
        .host_set(SP_IP, "esp", "sparkpost")
        .host_set(SP_IP, "upstream", by_ip.as_str())
        .toml();
    let proxy = Proxy::start(&toml).await;

    let raw = raw_tls(&s.ca, proxy.https, SP, &get(SP, "/f/a/b%2Fc", "")).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = sp.last();
    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!(seen.target, "/f/a/b%2Fc");
    assert_eq!(seen.header("host"), Some(SP));
    assert_eq!(seen.header("user-agent"), Some("Mozilla/5.0 (esp test)"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

    // The stand-in really refuses a handshake without SNI (an IP address sends none).
    let raw = raw_tls(&s.ca, proxy.https, SP_IP, &get(SP_IP, "/f/x", "")).await;
    assert_eq!(status_of(&raw), 502, "{raw}");
    assert_eq!(sp.count(), 1);

    // Plain HTTP: SparkPost's host is proxied, SendGrid's is redirected.
    let raw = raw_plain(proxy.http, &get(SP, "/q/open", "")).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(sp.last().header("x-forwarded-proto"), Some("http"));
    assert_eq!(sp.count(), 2);
    let raw = raw_plain(proxy.http, &get(SG, "/ls/click?upn=1", "")).await;
    assert_eq!(status_of(&raw), 308, "{raw}");
    assert_eq!(s.upstream.count(), 0);
    proxy.stop().await;
}

/// Amazon SES answers 400 when the request headers exceed 8 192 bytes. Under the SES preset
/// the proxy drops cookies to stay under the limit, answers 431 itself when that is not
/// enough, and keeps the path (with its `%2F`) byte for byte.
#[tokio::test]
async fn ses_preset_keeps_requests_under_the_header_limit() {
    let s = Setup::new().await;
    let ses = Upstream::start_with_header_limit(&s.ca, 8192).await;
    let at = format!("localhost:{}", ses.addr.port());
    let toml = s
        .config(&[SES, SG])
        .host_set(SES, "esp", "ses")
        .host_set(SES, "upstream", at.as_str())
        .host_set(SG, "upstream", at.as_str())
        .toml();
    let proxy = Proxy::start(&toml).await;
    let target = "/CL0/https:%2F%2Fwww.example.com%2Fpage%3Fa=1/1/0100018f-abc/Zm9v=353";

    // small cookie: passes untouched
    let raw = raw_tls(
        &s.ca,
        proxy.https,
        SES,
        &get(SES, target, "Cookie: a=1\r\n"),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(ses.last().target, target);
    assert_eq!(ses.last().header("cookie"), Some("a=1"));

    // the website's cookies push it over: dropped, the click goes through
    let big_cookie = format!("Cookie: site_session={}\r\n", "x".repeat(9000));
    let raw = raw_tls(&s.ca, proxy.https, SES, &get(SES, target, &big_cookie)).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(ses.last().header("cookie"), None);
    assert_eq!(ses.count(), 2);

    // without the preset the stand-in answers what SES would: 400
    let raw = raw_tls(&s.ca, proxy.https, SG, &get(SG, target, &big_cookie)).await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert_eq!(ses.count(), 3);

    // too big even without cookies: a clear 431 from the proxy, nothing sent
    let big = format!("X-Big: {}\r\n", "b".repeat(9000));
    let raw = raw_tls(&s.ca, proxy.https, SES, &get(SES, target, &big)).await;
    assert_eq!(status_of(&raw), 431, "{raw}");
    assert!(
        raw.contains("Amazon SES accepts at most 8192 bytes"),
        "{raw}"
    );
    assert_eq!(ses.count(), 3);
    proxy.stop().await;
}

/// `forward_cookies` keeps a website's session cookies from the ESP; `paths = "esp"` forwards
/// only the preset's tracked paths and answers others 404.
#[tokio::test]
async fn forward_cookies_and_paths_allow_list() {
    let s = Setup::new().await;
    const OTHER: &str = "url99.example.test";
    let toml = s
        .config(&[SG, OTHER])
        .host_set(SG, "forward_cookies", ["keep"])
        .host_set(SG, "paths", "esp")
        .host_set(OTHER, "forward_cookies", "none")
        .toml();
    let proxy = Proxy::start(&toml).await;
    let cookies = "Cookie: session=secret; keep=1\r\nCookie: other=2\r\n";
    let raw = raw_tls(&s.ca, proxy.https, SG, &get(SG, "/wf/open?upn=x", cookies)).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(s.upstream.last().header("cookie"), Some("keep=1"));
    let raw = raw_tls(&s.ca, proxy.https, OTHER, &get(OTHER, "/wf/open", cookies)).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(s.upstream.last().header("cookie"), None);
    assert_eq!(s.upstream.count(), 2);

    for path in ["/wp-login.php", "/", "/lsx/click"] {
        let raw = raw_tls(&s.ca, proxy.https, SG, &get(SG, path, "")).await;
        assert_eq!(status_of(&raw), 404, "{path}: {raw}");
    }
    assert_eq!(s.upstream.count(), 2, "refused paths never reach the ESP");
    let raw = raw_tls(&s.ca, proxy.https, SG, &get(SG, "/ls/click?upn=1", "")).await;
    assert_eq!(status_of(&raw), 302, "{raw}");
    proxy.stop().await;
}

/// Iterable serves the app-link files itself: they pass through; its recipe's methods are
/// forwarded (POST included), others refused.
#[tokio::test]
async fn iterable_preset_passes_app_link_files_and_limits_methods() {
    let s = Setup::new().await;
    const IT: &str = "links.it.example.test";
    let at = format!("localhost:{}", s.upstream.addr.port());
    let toml = s
        .config(&[IT])
        .host_set(IT, "esp", "iterable")
        .host_set(IT, "upstream", at.as_str())
        .toml();
    let proxy = Proxy::start(&toml).await;
    let target = "/.well-known/apple-app-site-association";
    let raw = raw_tls(&s.ca, proxy.https, IT, &get(IT, target, "")).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(s.upstream.last().target, target);
    assert_eq!(s.upstream.last().sni.as_deref(), Some("localhost"));
    let post = format!(
        "POST /u/unsub HTTP/1.1\r\nHost: {IT}\r\nCookie: iterable_sid=1\r\nContent-Length: 2\r\n\
         Connection: close\r\n\r\nok"
    );
    let raw = raw_tls(&s.ca, proxy.https, IT, post.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(s.upstream.last().method, "POST");
    assert_eq!(s.upstream.last().header("cookie"), Some("iterable_sid=1"));
    let patch = format!("PATCH /x HTTP/1.1\r\nHost: {IT}\r\nConnection: close\r\n\r\n");
    let raw = raw_tls(&s.ca, proxy.https, IT, patch.as_bytes()).await;
    assert_eq!(status_of(&raw), 405, "{raw}");
    assert_eq!(s.upstream.count(), 2);
    proxy.stop().await;
}

const AASA: &str = "{\"applinks\": {\"details\": [{\"appIDs\": [\"ABCDE12345.com.example.app\"], \
                    \"components\": [{\"/\": \"/uni/*\"}]}]}}\n";
const ASSETLINKS: &str = "[{\"relation\": [\"delegate_permission/common.handle_all_urls\"], \
                          \"target\": {\"namespace\": \"android_app\", \"package_name\": \
                          \"com.example.app\", \"sha256_cert_fingerprints\": [\"AB:CD\"]}}]\n";

fn write_files(dir: &Path, aasa: &str, assetlinks: &str) {
    std::fs::write(dir.join("apple-app-site-association"), aasa).unwrap();
    std::fs::write(dir.join("assetlinks.json"), assetlinks).unwrap();
}

/// curl GET `url`: (status, content type, body bytes).
async fn curl_get(url: &str, resolve: &str, ca: &str, out: &Path) -> (String, String, Vec<u8>) {
    let file = out.display().to_string();
    let (stdout, err, ok) = common::curl(&[
        "-sS",
        "--resolve",
        resolve,
        "--cacert",
        ca,
        "-o",
        &file,
        "-w",
        "%{http_code} %{content_type}",
        url,
    ])
    .await;
    assert!(ok, "curl {url}: {err}");
    let (status, ctype) = stdout.split_once(' ').unwrap();
    (
        status.to_owned(),
        ctype.to_owned(),
        std::fs::read(out).unwrap(),
    )
}

/// The app-link files of `files = DIR`: 200, application/json, byte for byte, on HTTPS and
/// plain HTTP even with `http_mode = "redirect"`; never forwarded; other paths still go to
/// the ESP (or are redirected).
#[tokio::test]
async fn app_link_files_are_served_locally_on_https_and_http_in_redirect_mode() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), AASA, ASSETLINKS);
    let toml = s
        .config(&[SG])
        .set("server.http_mode", "redirect")
        .host_set(SG, "files", dir.path())
        .toml();
    let proxy = Proxy::start(&toml).await;
    let ca = s.ca.ca_file.display().to_string();
    let out = dir.path().join("curl.out");
    for (scheme, port) in [("https", proxy.https.port()), ("http", proxy.http.port())] {
        let resolve = format!("{SG}:{port}:127.0.0.1");
        for (path, body) in [
            ("/.well-known/apple-app-site-association", AASA),
            ("/apple-app-site-association", AASA),
            ("/.well-known/assetlinks.json", ASSETLINKS),
        ] {
            let url = format!("{scheme}://{SG}:{port}{path}");
            let (status, ctype, got) = curl_get(&url, &resolve, &ca, &out).await;
            assert_eq!(status, "200", "{url}");
            assert_eq!(ctype, "application/json", "{url}");
            assert_eq!(got, body.as_bytes(), "{url}");
        }
    }
    assert_eq!(s.upstream.count(), 0, "app-link files never reach the ESP");

    let raw = raw_tls(&s.ca, proxy.https, SG, &get(SG, "/uni/ls/click?upn=1", "")).await;
    assert_eq!(status_of(&raw), 302, "{raw}");
    assert_eq!(s.upstream.count(), 1);
    let raw = raw_plain(proxy.http, &get(SG, "/uni/ls/click?upn=1", "")).await;
    assert_eq!(status_of(&raw), 308, "{raw}");
    assert_eq!(s.upstream.count(), 1);
    proxy.stop().await;
}

/// Files changed on disk are served without a restart; a reload with an invalid file is
/// refused naming the key and the file, and the files in use stay.
#[tokio::test]
async fn app_link_files_follow_the_disk_and_bad_files_are_refused() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), AASA, ASSETLINKS);
    let config =
        s.config(&[SG])
            .set("tls.watch_interval", "100ms")
            .host_set(SG, "files", dir.path());
    let proxy = Proxy::start(&config.toml()).await;
    let fetch = async || {
        let raw = raw_tls(
            &s.ca,
            proxy.https,
            SG,
            &get(SG, "/.well-known/assetlinks.json", ""),
        )
        .await;
        raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
    };
    assert_eq!(fetch().await.as_deref(), Some(ASSETLINKS));

    let v2 = "[{\"relation\": [], \"target\": {}}]";
    std::fs::write(dir.path().join("assetlinks.json"), v2).unwrap();
    eventually(
        "the changed assetlinks.json",
        Duration::from_secs(10),
        async || fetch().await.filter(|b| b == v2),
    )
    .await;

    std::fs::write(dir.path().join("assetlinks.json"), "{\"not\": \"a list\"}").unwrap();
    std::fs::write(dir.path().join("apple-app-site-association"), "{broken").unwrap();
    let err = proxy.reload(&config.toml()).await.unwrap_err().to_string();
    let file = dir.path().join("assetlinks.json").display().to_string();
    assert!(err.contains("hosts[0].files"), "{err}");
    assert!(err.contains(&format!("{file} is not a JSON list")), "{err}");
    assert!(
        err.contains("apple-app-site-association is not valid JSON"),
        "{err}"
    );
    assert_eq!(fetch().await.as_deref(), Some(v2), "the files in use stay");
    assert_eq!(s.upstream.count(), 0);
    proxy.stop().await;
}

/// `check-config` refuses an association file over 128 KB, naming the key and the file.
#[test]
fn check_config_names_key_and_file_of_a_bad_app_link_file() {
    let ca = common::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(128 * 1024));
    write_files(dir.path(), &big, ASSETLINKS);
    let toml = common::TestConfig::new("https://sendgrid.net")
        .host(SG)
        .host_set(SG, "files", dir.path())
        .certificate(ca.write_leaf("proxy", &[SG], common::KeyAlg::EcdsaP256))
        .toml();
    let cfg = dir.path().join("trackproxy.toml");
    std::fs::write(&cfg, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let file = dir.path().join("apple-app-site-association");
    assert!(
        err.contains(&format!(
            "{}: hosts[0].files: {} is larger than 131072 bytes (128 KB)",
            cfg.display(),
            file.display(),
        )),
        "{err}"
    );
}

fn trackproxy(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `trackproxy init` writes a configuration that `check-config` accepts, for a new user of
/// SparkPost, Mailgun or SES as for SendGrid; usage errors exit 64.
#[test]
fn init_writes_a_configuration_that_check_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("acme").display().to_string();
    for (esp, region) in [
        ("sendgrid", None),
        ("sparkpost", None),
        ("mailgun-eu", None),
        ("ses", Some("us-east-1")),
        ("iterable", None),
    ] {
        let file = dir.path().join(format!("{esp}.toml"));
        let file_s = file.display().to_string();
        let mut args = vec![
            "init",
            "--esp",
            esp,
            "--host",
            "url1.example.com",
            "--host",
            "url2.example.com",
            "--acme-contact",
            "ops@example.com",
            "--acme-cache-dir",
            &cache,
            "--output",
            &file_s,
        ];
        if let Some(r) = region {
            args.extend(["--region", r]);
        }
        let (code, _, err) = trackproxy(&args);
        assert_eq!(code, Some(0), "{esp}: {err}");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains(&format!("esp = \"{esp}\"")), "{text}");
        assert!(text.contains("acme-staging-v02"), "{text}");
        let (code, out, err) = trackproxy(&["check-config", "--config", &file_s]);
        assert_eq!(code, Some(0), "{esp}: {err}\n{text}");
        assert!(
            out.contains("url2.example.com: certificate to be ordered over ACME"),
            "{out}"
        );
        // never overwrites
        let (code, _, err) = trackproxy(&args);
        assert_eq!(code, Some(1), "{err}");
    }
    let (code, _, err) = trackproxy(&["init", "--esp", "sendgird", "--host", "a.example.com"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("unknown ESP \"sendgird\""), "{err}");
    let (code, _, err) = trackproxy(&["init", "--esp", "ses", "--host", "a.example.com"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--region"), "{err}");
    let (code, out, _) = trackproxy(&["init", "--esp", "mandrill", "--host", "a.example.com"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("forwards to https://mandrillapp.com"), "{out}");
}

/// `trackproxy doctor` knows every ESP: a branded host whose DNS still leads to any preset's
/// tracking host fails, naming that ESP, with SendGrid's advice (move the first CNAME, do not
/// re-verify); the ownership record is checked against the host's own ESP. dnsmasq serves
/// the records; every address is loopback and the proxy/upstream ports are closed, so nothing
/// leaves the machine.
#[tokio::test]
async fn doctor_fails_hosts_still_pointing_at_any_known_esp() {
    use common::dns::{self, Dnsmasq};
    let esps = [
        ("sendgrid.net", "Twilio SendGrid"),
        ("eu.spgo.io", "SparkPost"),
        ("v2.spgo.io", "SparkPost"),
        ("mailgun.org", "Mailgun"),
        ("r.us-east-1.awstrack.me", "Amazon SES"),
        ("links.iterable.com", "Iterable"),
        ("track-eu.customer.io", "Customer.io"),
        ("mandrillapp.com", "Mandrill (Mailchimp Transactional)"),
    ];
    let mut records = vec![
        dns::a("proxy.trackproxy.test", "127.0.0.1"),
        dns::cname("own-sp.example.test", "spgo.io"),
        dns::cname("own-sg.example.test", "sendgrid.net"),
        dns::a("spgo.io", "127.0.0.1"),
        // dnsmasq answers only its local domains itself (the rest it would forward: refused)
        "--local=/spgo.io/".to_owned(),
    ];
    let closed = common::closed_port();
    let up = format!("https://127.0.0.1:{}", closed.port());
    let mut config = common::TestConfig::new(&up).set("doctor.expect", "proxy.trackproxy.test");
    let hosts: Vec<String> = (0..esps.len())
        .map(|i| format!("h{i}.example.test"))
        .collect();
    for ((tracking, _), host) in esps.iter().zip(&hosts) {
        records.push(dns::a(tracking, "127.0.0.1"));
        records.push(format!("--local=/{tracking}/"));
        records.push(dns::cname(host, tracking));
        // every host is configured for SendGrid (the default): the DNS check still knows the
        // others
        config = config.host(host);
    }
    // moved hosts with an ownership record: one right, one pointing at the wrong ESP
    const MOVED_OK: &str = "moved1.example.test";
    const MOVED_BAD: &str = "moved2.example.test";
    records.push(dns::cname(MOVED_OK, "proxy.trackproxy.test"));
    records.push(dns::cname(MOVED_BAD, "proxy.trackproxy.test"));
    config = config
        .host(MOVED_OK)
        .host_set(MOVED_OK, "esp", "sparkpost")
        .host_set(MOVED_OK, "upstream", up.as_str())
        .host_set(MOVED_OK, "owner_record", "own-sp.example.test")
        .host(MOVED_BAD)
        .host_set(MOVED_BAD, "esp", "sparkpost")
        .host_set(MOVED_BAD, "upstream", up.as_str())
        .host_set(MOVED_BAD, "owner_record", "own-sg.example.test");
    let dns = Dnsmasq::start(&records).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trackproxy.toml");
    std::fs::write(&file, config.set("tls.self_signed", true).toml()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"))
        .args(["doctor", "--json", "--config"])
        .arg(&file)
        .args(["--dns-server", &dns.addr.to_string()])
        .args(["--connect", &closed.to_string()])
        .args(["--site", &format!("https://127.0.0.1:{}/", closed.port())])
        .args(["--timeout", "2s"])
        .env_remove("TRACKPROXY_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = |host: &str, id: &str| -> serde_json::Value {
        let h = json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == host)
            .unwrap_or_else(|| panic!("no {host} in {json}"));
        h["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == id)
            .unwrap()
            .clone()
    };
    for ((tracking, title), host) in esps.iter().zip(&hosts) {
        let c = check(host, "dns");
        assert_eq!(c["status"], "fail", "{host}: {c}");
        let summary = c["summary"].as_str().unwrap();
        let fix = c["fix"].as_str().unwrap_or_else(|| panic!("{c}"));
        if *tracking == "sendgrid.net" {
            assert!(summary.contains("still points at"), "{c}");
        } else {
            assert_eq!(
                summary,
                format!(
                    "{host} still points at {title} ({tracking}), not at this proxy \
                     (this host is configured for Twilio SendGrid)"
                )
            );
            assert!(
                fix.contains(&format!("Point the first CNAME, {host}, at")),
                "{fix}"
            );
            assert!(fix.contains("do not re-verify the branding"), "{fix}");
        }
    }
    let ok = check(MOVED_OK, "owner_record");
    assert_eq!(ok["status"], "ok", "{ok}");
    assert!(
        ok["summary"]
            .as_str()
            .unwrap()
            .contains("still points at the ESP (spgo.io)")
    );
    assert_eq!(check(MOVED_OK, "dns")["status"], "ok");
    let bad = check(MOVED_BAD, "owner_record");
    assert_eq!(bad["status"], "warn", "{bad}");
    assert!(
        bad["summary"]
            .as_str()
            .unwrap()
            .contains("no longer points at the ESP"),
        "{bad}"
    );
}
