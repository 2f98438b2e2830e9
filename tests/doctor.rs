//! `trackproxy doctor` run as a user runs it, against real servers on loopback: dnsmasq serving
//! the DNS of a good or a broken setup, the proxy with a test-CA certificate, the sender's
//! website sending (or not) HSTS, and the local sendgrid.net look-alike. Every ✗ comes from a
//! real misconfiguration of one of them.
//!
//! The world: `url1234.example.test` (the branded host) is a CNAME to `proxy.trackproxy.test`
//! (this proxy, `doctor.expect`), `12345.example.test` (the ownership record) a CNAME to
//! `sendgrid.test` (the ESP, the stub upstream), `example.test` the website; all at 127.0.0.1.
//! The doctor always gets `--dns-server`, `--connect`, `--site` and a local upstream, so
//! nothing leaves the machine.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::dns::{self, Dnsmasq};
use common::website::Website;
use common::{KeyAlg, LANDING, Proxy, TestCa, TestConfig, Upstream, closed_port};
use serde_json::Value;

const HOST: &str = "url1234.example.test";
const OWNER: &str = "12345.example.test";
const PROXY_NAME: &str = "proxy.trackproxy.test";
const ESP: &str = "sendgrid.test";
const SITE: &str = "example.test";

/// What to break.
struct Spec {
    /// CNAME target of the branded host; `None`: no record (NXDOMAIN).
    host_target: Option<&'static str>,
    /// CNAME target of the ownership record.
    owner_target: &'static str,
    /// `issue` value of a CAA record on example.test, if any.
    caa_issue: Option<&'static str>,
    /// Validity of the proxy's certificate, days relative to now.
    cert_days: (i64, i64),
    /// The proxy generates a self-signed certificate instead.
    self_signed: bool,
    /// The proxy serves another host instead of HOST.
    proxy_host: &'static str,
    /// `Strict-Transport-Security` of the website.
    hsts: Option<&'static str>,
    /// The upstream's port is closed (for the proxy and for the doctor).
    upstream_down: bool,
    /// The app-link files the proxy serves (`apple-app-site-association`, `assetlinks.json`).
    app_links: Option<(&'static str, &'static str)>,
}

/// An `apple-app-site-association` claiming SendGrid's universal-link path, and an
/// `assetlinks.json`.
const AASA: &str = r#"{"applinks": {"apps": [], "details": [{"appID": "TEAM.com.example.app", "paths": ["/uni/*"]}]}}"#;
const ASSETLINKS: &str = r#"[{"relation": ["delegate_permission/common.handle_all_urls"], "target": {"namespace": "android_app", "package_name": "com.example.app", "sha256_cert_fingerprints": ["AA:BB"]}}]"#;

impl Default for Spec {
    fn default() -> Self {
        Spec {
            host_target: Some(PROXY_NAME),
            owner_target: ESP,
            caa_issue: Some("letsencrypt.org"),
            cert_days: (-1, 90),
            self_signed: false,
            proxy_host: HOST,
            hsts: None,
            upstream_down: false,
            app_links: Some((AASA, ASSETLINKS)),
        }
    }
}

struct World {
    ca: TestCa,
    upstream: Upstream,
    site: Website,
    dns: Dnsmasq,
    proxy: Proxy,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(spec: Spec) -> World {
        let ca = TestCa::new();
        let upstream = Upstream::start_with_names(&ca, &["localhost", ESP]).await;
        let down = closed_port();
        let upstream_port = if spec.upstream_down {
            down.port()
        } else {
            upstream.addr.port()
        };

        let mut records = vec![
            dns::a(PROXY_NAME, "127.0.0.1"),
            dns::a(ESP, "127.0.0.1"),
            dns::a(SITE, "127.0.0.1"),
            dns::a("oldcdn.test", "127.0.0.2"),
            dns::cname(OWNER, spec.owner_target),
        ];
        if let Some(t) = spec.host_target {
            records.push(dns::cname(HOST, t));
        }
        if let Some(issuer) = spec.caa_issue {
            records.push(dns::caa(SITE, 0, "issue", issuer));
        }
        let dns = Dnsmasq::start(&records).await;

        let headers: Vec<(&str, &str)> = spec
            .hsts
            .map(|v| vec![("strict-transport-security", v)])
            .unwrap_or_default();
        let site = Website::start(&ca, &[SITE, &format!("www.{SITE}")], &headers).await;

        let proxy_upstream = format!("https://localhost:{upstream_port}");
        let dir = tempfile::tempdir().unwrap();
        let mut proxy_config = TestConfig::new(&proxy_upstream)
            .upstream_ca(&ca.ca_file)
            .host(spec.proxy_host);
        if let Some((aasa, assetlinks)) = spec.app_links {
            let files = dir.path().join("app-links");
            std::fs::create_dir(&files).unwrap();
            std::fs::write(files.join("apple-app-site-association"), aasa).unwrap();
            std::fs::write(files.join("assetlinks.json"), assetlinks).unwrap();
            proxy_config =
                proxy_config.host_set(spec.proxy_host, "files", files.display().to_string());
        }
        let proxy_toml = if spec.self_signed {
            proxy_config.set("tls.self_signed", true).toml()
        } else {
            let (cert, key) = ca.issue_with(
                &[spec.proxy_host],
                KeyAlg::EcdsaP256,
                spec.cert_days.0,
                spec.cert_days.1,
            );
            proxy_config
                .certificate(ca.write_files("proxy", &cert, &key))
                .toml()
        };
        let proxy = Proxy::start(&proxy_toml).await;

        // The doctor's own configuration: the host, its ownership record, the ESP it forwards
        // to, and this proxy's public name.
        let config = dir.path().join("trackproxy.toml");
        std::fs::write(
            &config,
            format!(
                "[upstream]\nurl = \"https://{ESP}:{upstream_port}\"\n\n\
                 [[hosts]]\nname = \"{HOST}\"\nowner_record = \"{OWNER}\"\n\n\
                 [doctor]\nexpect = \"{PROXY_NAME}\"\n"
            ),
        )
        .unwrap();
        World {
            ca,
            upstream,
            site,
            dns,
            proxy,
            config,
            _dir: dir,
        }
    }

    /// The arguments every run needs: nothing resolves or connects off the machine.
    fn args(&self) -> Vec<String> {
        vec![
            "doctor".into(),
            "--config".into(),
            self.config.display().to_string(),
            "--dns-server".into(),
            self.dns.addr.to_string(),
            "--connect".into(),
            self.proxy.https.to_string(),
            "--site".into(),
            format!("https://{SITE}:{}/", self.site.addr.port()),
            "--ca-file".into(),
            self.ca.ca_file.display().to_string(),
            "--timeout".into(),
            "5s".into(),
        ]
    }

    /// Runs the doctor twice (checklist, then `--json`) with `extra` arguments.
    async fn doctor(&self, extra: &[&str]) -> Run {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Run::of(&args).await
    }

    /// Like [`World::doctor`], with `--connect` replaced.
    async fn doctor_connecting_to(&self, addr: SocketAddr) -> Run {
        let mut args = self.args();
        let i = args.iter().position(|a| a == "--connect").unwrap();
        args[i + 1] = addr.to_string();
        Run::of(&args).await
    }
}

/// One doctor run: the checklist and the JSON report of the same setup.
struct Run {
    code: i32,
    text: String,
    json: Value,
}

async fn trackproxy(args: &[String]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"))
            .args(args)
            .env_remove("TRACKPROXY_CONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("trackproxy doctor hung")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Run {
    async fn of(args: &[String]) -> Run {
        let (code, text, err) = trackproxy(args).await;
        let mut json_args = args.to_vec();
        json_args.push("--json".into());
        let (json_code, json, _) = trackproxy(&json_args).await;
        assert_eq!(code, json_code, "exit codes differ\n{text}\n{json}\n{err}");
        let json: Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("--json printed no JSON ({e}):\n{json}"));
        Run { code, text, json }
    }

    fn check(&self, id: &str) -> &Value {
        let checks = self.json["hosts"][0]["checks"].as_array().unwrap();
        checks
            .iter()
            .find(|c| c["check"] == id)
            .unwrap_or_else(|| panic!("no {id} check in {}", self.json))
    }

    /// Status of check `id` in the JSON report.
    fn status(&self, id: &str) -> &str {
        self.check(id)["status"].as_str().unwrap()
    }

    fn summary(&self, id: &str) -> &str {
        self.check(id)["summary"].as_str().unwrap()
    }

    fn fix(&self, id: &str) -> &str {
        self.check(id)["fix"].as_str().unwrap_or("")
    }

    fn evidence(&self, id: &str) -> String {
        self.check(id)["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The checklist line of check `label` starts with `mark`.
    fn line(&self, mark: &str, label: &str) -> &str {
        let prefix = format!("  {mark} {label}");
        self.text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{}", self.text))
    }

    fn statuses(&self) -> Vec<(String, String)> {
        self.json["hosts"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["check"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Every check except those in `except` is ✓.
    fn assert_ok_except(&self, except: &[&str]) {
        for (id, status) in self.statuses() {
            if !except.contains(&id.as_str()) {
                assert_eq!(status, "ok", "{id} should be ok:\n{}", self.text);
            }
        }
    }
}

#[tokio::test]
async fn a_good_setup_passes_every_check() {
    let w = World::start(Spec::default()).await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 0, "{}", run.text);
    run.assert_ok_except(&[]);
    assert_eq!(run.json["ok"], true);
    assert_eq!(run.json["failed"], 0);
    assert_eq!(run.json["hosts"][0]["host"], HOST);
    let order: Vec<String> = run.statuses().into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        order,
        [
            "dns",
            "owner_record",
            "https",
            "click_path",
            "app_links",
            "hsts",
            "caa",
            "upstream"
        ]
    );

    // The checklist shows the same, with the evidence.
    run.line("✓", "DNS");
    assert!(
        run.text
            .contains(&format!("{HOST} → CNAME {PROXY_NAME} → 127.0.0.1")),
        "{}",
        run.text
    );
    assert!(
        run.line("✓", "owner record")
            .contains(&format!("{OWNER} still points at the ESP ({ESP})"))
    );
    assert!(
        run.line("✓", "HTTPS")
            .contains(&format!("valid certificate for {HOST}, 89 days left"))
    );
    assert!(
        run.text.contains("issuer: CN=trackproxy test CA"),
        "{}",
        run.text
    );
    run.line("✓", "click path");
    run.line("✓", "HSTS");
    assert!(
        run.line("✓", "CAA")
            .contains("CAA at example.test allows letsencrypt.org")
    );
    assert!(
        run.text
            .contains("example.test CAA 0 issue \"letsencrypt.org\""),
        "{}",
        run.text
    );
    run.line("✓", "upstream");
    assert!(
        run.text.ends_with("0 failed checks, 0 warnings.\n"),
        "{}",
        run.text
    );

    // The click path went through the proxy to the ESP: the stub saw it with the branded Host.
    assert!(run.evidence("click_path").contains("server: stub-sendgrid"));
    assert!(run.evidence("click_path").contains("→ 200 OK"));
    let opens: Vec<_> = w
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.target == "/wf/open")
        .collect();
    assert_eq!(opens.len(), 2, "one per run (text and JSON)");
    assert_eq!(opens[0].header("host"), Some(HOST));
    // The upstream check talked to the ESP directly, by its own name.
    assert!(w.upstream.requests().iter().any(|r| r.target == "/"
        && r.header("host") == Some(&format!("{ESP}:{}", w.upstream.addr.port()))
        && r.sni.as_deref() == Some(ESP)));
    // And every name was looked up in the test's DNS server.
    let log = w.dns.log().join("\n");
    for q in [
        format!("query[CNAME] {HOST}"),
        format!("query[CNAME] {OWNER}"),
        format!("query[CAA] {HOST}"),
        format!("query[CAA] {SITE}"),
        format!("query[A] {ESP}"),
    ] {
        assert!(log.contains(&q), "{q} not in dnsmasq's log:\n{log}");
    }
}

#[tokio::test]
async fn cname_still_at_sendgrid_fails_dns() {
    let w = World::start(Spec {
        host_target: Some(ESP),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 1, "{}", run.text);
    assert_eq!(run.status("dns"), "fail");
    assert_eq!(
        run.summary("dns"),
        format!("{HOST} still points at the ESP ({ESP}), not at this proxy")
    );
    assert_eq!(
        run.fix("dns"),
        format!(
            "Change the CNAME of {HOST} from {ESP} to {PROXY_NAME}; leave the numeric ownership \
             record pointing at {ESP}."
        )
    );
    assert!(run.line("✗", "DNS").contains("still points at the ESP"));
    assert!(
        run.text
            .contains(&format!("{HOST} → CNAME {ESP} → 127.0.0.1"))
    );
    assert!(
        run.text
            .contains(&format!("fix: Change the CNAME of {HOST} from {ESP}"))
    );
    assert_eq!(run.json["ok"], false);
    run.assert_ok_except(&["dns"]);
}

#[tokio::test]
async fn cname_elsewhere_warns_that_it_does_not_reach_the_proxy() {
    let w = World::start(Spec {
        host_target: Some("oldcdn.test"),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 0, "a warning alone does not fail: {}", run.text);
    assert_eq!(run.status("dns"), "warn");
    assert_eq!(
        run.summary("dns"),
        format!("{HOST} does not reach this proxy ({PROXY_NAME})")
    );
    assert!(
        run.evidence("dns")
            .contains(&format!("{PROXY_NAME} → 127.0.0.1"))
    );
    assert!(run.line("!", "DNS").contains("does not reach this proxy"));

    // --expect on the command line wins over doctor.expect: an IP the chain does reach.
    let run = w.doctor(&["--expect", "127.0.0.2"]).await;
    assert_eq!(run.status("dns"), "ok", "{}", run.text);
    assert_eq!(
        run.summary("dns"),
        format!("{HOST} reaches this proxy (127.0.0.2)")
    );
}

#[tokio::test]
async fn missing_record_fails_dns_with_nxdomain() {
    let w = World::start(Spec {
        host_target: None,
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.status("dns"), "fail");
    assert_eq!(
        run.summary("dns"),
        format!("{HOST} does not exist (NXDOMAIN)")
    );
    assert_eq!(
        run.fix("dns"),
        format!("Create a CNAME record {HOST} → {PROXY_NAME}.")
    );
    assert!(run.line("✗", "DNS").contains("NXDOMAIN"));
    // --connect still lets the proxy itself be checked before DNS is moved.
    assert_eq!(run.status("https"), "ok");
    assert_eq!(run.status("click_path"), "ok");
}

#[tokio::test]
async fn moved_ownership_record_warns() {
    let w = World::start(Spec {
        owner_target: PROXY_NAME,
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 0, "{}", run.text);
    assert_eq!(run.status("owner_record"), "warn");
    assert_eq!(
        run.summary("owner_record"),
        format!("{OWNER} no longer points at the ESP ({ESP})")
    );
    assert!(
        run.fix("owner_record")
            .starts_with(&format!("Restore the CNAME {OWNER} → {ESP}"))
    );
    assert!(
        run.line("!", "owner record")
            .contains("no longer points at the ESP")
    );
    run.assert_ok_except(&["owner_record"]);

    // Without an ownership record named, the check is skipped, not failed.
    let w2 = World::start(Spec::default()).await;
    std::fs::write(
        &w2.config,
        format!(
            "[[hosts]]\nname = \"{HOST}\"\n[upstream]\nurl = \"https://{ESP}:{}\"\n",
            w2.upstream.addr.port()
        ),
    )
    .unwrap();
    let run = w2.doctor(&[]).await;
    assert_eq!(run.status("owner_record"), "skip");
    run.line("-", "owner record");
    // ... and --owner-record names it on the command line.
    let run = w2.doctor(&["--owner-record", OWNER]).await;
    assert_eq!(run.status("owner_record"), "ok");
}

#[tokio::test]
async fn expired_certificate_fails_https() {
    let w = World::start(Spec {
        cert_days: (-100, -3),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.status("https"), "fail");
    assert!(
        run.summary("https")
            .starts_with("the certificate expired 3 days ago"),
        "{}",
        run.summary("https")
    );
    assert!(run.fix("https").contains("renewed certificate"));
    assert!(
        run.evidence("https")
            .contains("issuer: CN=trackproxy test CA")
    );
    assert!(run.line("✗", "HTTPS").contains("expired"));
    // Clients stop at the certificate: the click path is not tried.
    assert_eq!(run.status("click_path"), "skip");
    assert!(w.upstream.requests().iter().all(|r| r.target != "/wf/open"));
}

#[tokio::test]
async fn certificate_expiring_soon_warns() {
    let w = World::start(Spec {
        cert_days: (-80, 5),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 0, "{}", run.text);
    assert_eq!(run.status("https"), "warn");
    assert_eq!(
        run.summary("https"),
        "valid certificate, but it expires in 4 days"
    );
    run.line("!", "HTTPS");
    run.assert_ok_except(&["https"]);
}

#[tokio::test]
async fn certificate_for_another_name_fails_https() {
    // DNS (here --connect) leads to the company website instead of the proxy.
    let w = World::start(Spec::default()).await;
    let run = w.doctor_connecting_to(w.site.addr).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.status("https"), "fail");
    assert_eq!(
        run.summary("https"),
        format!("the certificate is not valid for {HOST} (it names: {SITE}, www.{SITE})")
    );
    assert!(
        run.fix("https")
            .contains(&format!("subjectAltName includes {HOST}"))
    );
    run.line("✗", "HTTPS");
}

#[tokio::test]
async fn self_signed_certificate_fails_https() {
    let w = World::start(Spec {
        self_signed: true,
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.status("https"), "fail");
    assert_eq!(
        run.summary("https"),
        "the certificate is not signed by a trusted CA"
    );
    assert!(
        run.evidence("https")
            .contains("issuer: CN=trackproxy self-signed")
    );
}

#[tokio::test]
async fn host_missing_from_the_proxy_fails_https() {
    // The proxy was set up for another host: it refuses the handshake for this one.
    let w = World::start(Spec {
        proxy_host: "url9999.example.test",
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.status("https"), "fail");
    assert_eq!(
        run.summary("https"),
        format!("{} refused the TLS handshake for {HOST}", w.proxy.https)
    );
    assert!(run.fix("https").contains("[[hosts]]"));
}

#[tokio::test]
async fn hsts_with_include_subdomains_warns_and_fails_when_https_is_broken() {
    let hsts = "max-age=31536000; includeSubDomains; preload";
    let w = World::start(Spec {
        hsts: Some(hsts),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 0, "{}", run.text);
    assert_eq!(run.status("hsts"), "warn");
    assert!(
        run.summary("hsts")
            .contains("includeSubDomains and preload")
    );
    assert!(run.summary("hsts").contains(&format!(
        "browsers that visited it open every http:// tracking link on {HOST} as https://"
    )));
    assert!(run.fix("hsts").contains("Keep SSL click tracking on"));
    assert!(
        run.evidence("hsts")
            .contains(&format!("strict-transport-security: {hsts}"))
    );
    assert!(run.evidence("hsts").contains("preload list"));
    run.line("!", "HSTS");

    // The same website with HTTPS on the link host broken: those clicks fail today.
    let w = World::start(Spec {
        hsts: Some(hsts),
        cert_days: (-100, -3),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.status("hsts"), "fail");
    assert!(run.summary("hsts").ends_with("their clicks fail"));
    run.line("✗", "HSTS");
}

#[tokio::test]
async fn hsts_without_include_subdomains_is_fine() {
    let w = World::start(Spec {
        hsts: Some("max-age=31536000"),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 0);
    assert_eq!(run.status("hsts"), "ok");
    assert!(run.summary("hsts").contains("without includeSubDomains"));
    assert!(
        run.evidence("hsts")
            .contains("strict-transport-security: max-age=31536000")
    );
}

#[tokio::test]
async fn caa_that_forbids_the_ca_fails() {
    let w = World::start(Spec {
        caa_issue: Some("digicert.com"),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.status("caa"), "fail");
    assert!(
        run.summary("caa")
            .starts_with("CAA at example.test does not allow letsencrypt.org (only digicert.com)")
    );
    assert_eq!(
        run.fix("caa"),
        "Add the record example.test. CAA 0 issue \"letsencrypt.org\"."
    );
    run.line("✗", "CAA");
    run.assert_ok_except(&["caa"]);

    // The CA that is allowed passes.
    let run = w.doctor(&["--ca-domain", "digicert.com"]).await;
    assert_eq!(run.status("caa"), "ok");
    assert_eq!(run.code, 0);

    // No CAA anywhere: any CA may issue.
    let w = World::start(Spec {
        caa_issue: None,
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.status("caa"), "ok");
    assert!(run.summary("caa").starts_with("no CAA records"));
}

#[tokio::test]
async fn unreachable_upstream_fails_upstream_and_click_path() {
    let w = World::start(Spec {
        upstream_down: true,
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.status("upstream"), "fail");
    assert!(
        run.summary("upstream")
            .starts_with(&format!("cannot reach https://{ESP}:"))
    );
    assert!(run.evidence("upstream").contains("Connection refused"));
    // The proxy answers 502: it cannot reach its upstream either.
    assert_eq!(run.status("click_path"), "fail");
    assert!(
        run.summary("click_path").contains("502 Bad Gateway"),
        "{}",
        run.summary("click_path")
    );
    run.line("✗", "upstream");
    run.line("✗", "click path");
}

#[tokio::test]
async fn tracked_link_is_upgraded_to_https_and_its_redirect_not_followed() {
    let w = World::start(Spec::default()).await;
    let link = format!("http://{HOST}/ls/click?upn=abc%2Fdef-_123");
    let run = w.doctor(&["--link", &link]).await;
    assert_eq!(run.code, 0, "{}", run.text);
    assert_eq!(
        run.summary("click_path"),
        format!(
            "https://{HOST}/ls/click?upn=abc%2Fdef-_123 answers through the proxy: redirect \
             to {LANDING} (not followed)"
        )
    );
    assert!(run.evidence("click_path").contains("302 Found"));
    let clicks: Vec<_> = w
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.target.starts_with("/ls/click"))
        .collect();
    assert_eq!(clicks.len(), 2);
    assert_eq!(clicks[0].target, "/ls/click?upn=abc%2Fdef-_123");
    assert_eq!(clicks[0].header("host"), Some(HOST));
    assert_eq!(clicks[0].header("x-forwarded-proto"), Some("https"));
    // The landing page was never requested.
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| !r.target.contains("landing"))
    );
}

#[tokio::test]
async fn network_black_holes_time_out_instead_of_hanging() {
    // A DNS server that never answers, and a server that accepts TCP but never speaks TLS.
    let silent_dns = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        format!("[[hosts]]\nname = \"{HOST}\"\n[upstream]\nurl = \"https://{ESP}\"\n"),
    )
    .unwrap();
    let args: Vec<String> = [
        "doctor",
        "--config",
        config.to_str().unwrap(),
        "--dns-server",
        &silent_dns.local_addr().unwrap().to_string(),
        "--connect",
        &mute_addr.to_string(),
        "--site",
        &format!("https://{mute_addr}/"),
        "--timeout",
        "1s",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let run = Run::of(&args).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.status("dns"), "fail");
    assert!(run.evidence("dns").contains(&format!(
        "DNS servers asked: {}",
        silent_dns.local_addr().unwrap()
    )));
    assert_eq!(run.status("https"), "fail");
    assert_eq!(
        run.summary("https"),
        format!("{mute_addr} did not answer in time (TLS handshake)")
    );
    assert_eq!(run.status("hsts"), "warn");
    assert_eq!(run.status("upstream"), "fail");
}

#[tokio::test]
async fn bad_arguments_exit_64() {
    let w = World::start(Spec::default()).await;
    let mut args = w.args();
    args.extend([
        "--link".into(),
        "http://other.example.test/ls/click?upn=x".into(),
        HOST.into(),
    ]);
    let (code, out, err) = trackproxy(&args).await;
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains("--link names other.example.test, which is not among the hosts checked"),
        "{err}"
    );

    let mut args = w.args();
    args.extend(["--expect".into(), "not a host!".into()]);
    let (code, _, err) = trackproxy(&args).await;
    assert_eq!(code, 64);
    assert!(
        err.contains("--expect \"not a host!\" is neither a host name nor an IP address"),
        "{err}"
    );

    let mut args = w.args();
    let i = args.iter().position(|a| a == "--ca-file").unwrap();
    args[i + 1] = "/nonexistent/ca.pem".into();
    let (code, _, err) = trackproxy(&args).await;
    assert_eq!(code, 64);
    assert!(
        err.contains("cannot read CA file /nonexistent/ca.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn app_link_files_are_fetched_through_the_proxy_and_checked() {
    // Served by the proxy (the good setup): all three URLs, valid, claiming /uni/*.
    let w = World::start(Spec::default()).await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.status("app_links"), "ok", "{}", run.text);
    assert!(
        run.line("✓", "app links").contains(
            "serves /.well-known/apple-app-site-association, /apple-app-site-association, \
             /.well-known/assetlinks.json"
        ),
        "{}",
        run.text
    );
    let evidence = run.evidence("app_links");
    assert!(
        evidence.contains(&format!(
            "GET https://{HOST}/.well-known/assetlinks.json → 200 OK ({} bytes, content-type: \
             application/json)",
            ASSETLINKS.len()
        )),
        "{evidence}"
    );
    // Nothing reached the ESP: the proxy answered them itself.
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| !r.target.contains("apple-app-site-association")
                && !r.target.contains("assetlinks")),
        "app-link requests were forwarded"
    );

    // No files: the ESP's answer to an unknown path is not an app-link file; nothing to check.
    let w = World::start(Spec {
        app_links: None,
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.code, 0, "{}", run.text);
    assert_eq!(run.status("app_links"), "skip", "{}", run.text);
    assert!(
        run.summary("app_links")
            .contains("serves no app-link files")
    );

    // An association file that does not claim SendGrid's universal-link path.
    let w = World::start(Spec {
        app_links: Some((
            r#"{"applinks": {"details": [{"appID": "TEAM.com.example.app", "paths": ["/shop/*"]}]}}"#,
            ASSETLINKS,
        )),
        ..Spec::default()
    })
    .await;
    let run = w.doctor(&[]).await;
    assert_eq!(run.status("app_links"), "warn", "{}", run.text);
    assert!(
        run.summary("app_links").contains("does not claim /uni/*"),
        "{}",
        run.text
    );
    assert!(run.fix("app_links").contains("\"/uni/*\""), "{}", run.text);
    assert!(run.evidence("app_links").contains("paths claimed: /shop/*"));
}
