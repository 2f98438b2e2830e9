//! Certificates over ACME against a real CA: Pebble (Let's Encrypt's test server) validates
//! TLS-ALPN-01 and HTTP-01 against the running proxy, issues, and counts orders.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::pebble::{Pebble, PebblePlan, names_and_issuer, served_certificate};
use common::{
    BinProxy, KeyAlg, Proxy, Setup, TestConfig, bind_listeners, eventually, raw_plain, status_of,
};

const A: &str = "url1234.example.test";
const B: &str = "url5678.example.test";
const C: &str = "url9999.example.test";
const FILES: &str = "files.example.test";
const ISSUE: Duration = Duration::from_secs(40);

/// The cache directory of Pebble's directory inside `cache`.
fn slug_dir(cache: &Path, plan: &PebblePlan) -> std::path::PathBuf {
    cache.join(common::directory_dir_name(&plan.directory))
}

fn acme_status(proxy: &Proxy, host: &str) -> common::AcmeStatus {
    proxy.resolver.acme_host(host).unwrap().status()
}

/// Config with `acme_hosts` over ACME plus `FILES` on a file certificate from the test CA.
fn config(s: &Setup, plan: &PebblePlan, cache: &Path, acme_hosts: &[&str]) -> TestConfig {
    let files = TestConfig::new(&s.upstream.url)
        .upstream_ca(&s.ca.ca_file)
        .hosts(acme_hosts)
        .host(FILES)
        .certificate(s.ca.write_leaf("files", &[FILES], KeyAlg::EcdsaP256));
    plan.acme(files, cache, "tls-alpn-01")
}

/// Pebble validating against `listeners`: TLS-ALPN-01 on the HTTPS one, HTTP-01 on the other.
async fn pebble_validating(plan: PebblePlan, listeners: &common::Listeners) -> Pebble {
    let port = |l: &tokio::net::TcpListener| l.local_addr().unwrap().port();
    Pebble::start(plan, port(&listeners.https), port(&listeners.http)).await
}

#[tokio::test]
async fn tls_alpn_01_issues_a_certificate_that_serves_tracked_links() {
    let s = Setup::new().await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    let toml = config(&s, &plan, cache.path(), &[A]).toml();
    let listeners = bind_listeners().await;
    let (https, http) = (
        listeners.https.local_addr().unwrap(),
        listeners.http.local_addr().unwrap(),
    );
    let pebble = Pebble::start(plan, https.port(), http.port()).await;
    let proxy = Proxy::start_on(listeners, &toml);
    // The file-certificate host is served at once; the ACME host once issued.
    assert!(proxy.resolver.knows(FILES));
    eventually("the certificate for A", ISSUE, async || {
        proxy.resolver.knows(A)
    })
    .await;

    let root = pebble.root_pem().await;
    let leaf = served_certificate(&root, https, A).await.unwrap();
    let (names, issuer) = names_and_issuer(&leaf);
    assert_eq!(names, [A]);
    assert!(issuer.contains("Pebble"), "{issuer}");

    // A tracked click over the issued certificate reaches the upstream untouched.
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .resolve(A, https)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let res = client
        .get(format!("https://{A}:{}/ls/click?upn=a%2Fb+c", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let seen = s.upstream.last();
    assert_eq!(seen.target, "/ls/click?upn=a%2Fb+c");
    assert_eq!(seen.header("host"), Some(&*format!("{A}:{}", https.port())));

    // Cache: account key and certificate, private (0600), no temporary files, no back-off.
    let dir = slug_dir(cache.path(), &pebble.plan);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["account.key".to_owned(), format!("{A}.pem")]);
    use std::os::unix::fs::PermissionsExt;
    for f in &files {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert_eq!(pebble.orders(), 1);
    let status = acme_status(&proxy, A);
    assert_eq!(status.failures, 0);
    let renew = status.next_attempt.unwrap();
    assert!(renew > SystemTime::now() + Duration::from_secs(365 * 86_400));

    // `trackproxy certs` reads the same cache without starting anything.
    let file = cache.path().join("trackproxy.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"))
        .args(["certs", "--config"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table.lines().find(|l| l.starts_with(A)).unwrap();
    assert!(line.contains("acme") && line.contains("Pebble"), "{table}");
    let files_line = table.lines().find(|l| l.starts_with(FILES)).unwrap();
    assert!(files_line.contains("tls.certificates[0]"), "{table}");
    assert!(files_line.contains("89"), "{table}"); // the test CA's leaf: 90 days
    proxy.stop().await;
}

#[tokio::test]
async fn http_01_is_answered_before_redirects_and_never_forwarded() {
    let s = Setup::new().await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    let files = TestConfig::new(&s.upstream.url)
        .upstream_ca(&s.ca.ca_file)
        .hosts(&[A, FILES])
        .certificate(s.ca.write_leaf("files", &[FILES], KeyAlg::EcdsaP256))
        .set("server.http_mode", "redirect");
    let toml = plan.acme(files, cache.path(), "http-01").toml();
    let listeners = bind_listeners().await;
    let http = listeners.http.local_addr().unwrap();
    // Pebble's TLS-ALPN-01 port is closed: only HTTP-01 can succeed.
    let pebble = Pebble::start(plan, common::unused_port(), http.port()).await;
    let proxy = Proxy::start_on(listeners, &toml);

    // Unknown tokens: 404 from the proxy, never the upstream, never a redirect.
    let get = |host: &str| {
        format!(
            "GET /.well-known/acme-challenge/nope HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
    };
    let raw = raw_plain(http, get(A).as_bytes()).await;
    assert_eq!(status_of(&raw), 404, "{raw}");
    eventually("the certificate for A", ISSUE, async || {
        proxy.resolver.knows(A)
    })
    .await;
    assert_eq!(pebble.orders(), 1);
    let raw = raw_plain(http, get(A).as_bytes()).await;
    assert_eq!(status_of(&raw), 404, "{raw}");
    assert_eq!(s.upstream.count(), 0);
    // Other paths still redirect; a file-certificate host's challenge path is not special.
    let raw = raw_plain(
        http,
        format!("GET /wf/open?upn=x HTTP/1.1\r\nHost: {A}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 308, "{raw}");
    let raw = raw_plain(http, get(FILES).as_bytes()).await;
    assert_eq!(status_of(&raw), 308, "{raw}");
    let root = pebble.root_pem().await;
    let leaf = served_certificate(&root, proxy.https, A).await.unwrap();
    assert_eq!(names_and_issuer(&leaf).0, [A]);
    proxy.stop().await;
}

#[tokio::test]
async fn each_host_has_its_own_certificate_a_warm_restart_orders_nothing_and_reload_adds_only_the_new_host()
 {
    let s = Setup::new().await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    let toml = config(&s, &plan, cache.path(), &[A, B]).toml();
    let listeners = bind_listeners().await;
    let https = listeners.https.local_addr().unwrap();
    let pebble = pebble_validating(plan, &listeners).await;
    let proxy = Proxy::start_on(listeners, &toml);
    eventually("certificates for A and B", ISSUE, async || {
        proxy.resolver.knows(A) && proxy.resolver.knows(B)
    })
    .await;
    let root = pebble.root_pem().await;
    let a = served_certificate(&root, https, A).await.unwrap();
    let b = served_certificate(&root, https, B).await.unwrap();
    assert_eq!(names_and_issuer(&a).0, [A]);
    assert_eq!(names_and_issuer(&b).0, [B]);
    assert_ne!(a, b);
    assert_eq!(pebble.orders(), 2);
    proxy.stop().await;

    // Restart on new ports with the same cache: both served at once, from the cache.
    let proxy = Proxy::start(&toml).await;
    assert!(proxy.resolver.knows(A) && proxy.resolver.knows(B));
    eventually(
        "both host tasks scheduled",
        Duration::from_secs(10),
        async || {
            [A, B]
                .iter()
                .all(|h| acme_status(&proxy, h).next_attempt.is_some())
        },
    )
    .await;
    assert_eq!(served_certificate(&root, proxy.https, A).await.unwrap(), a);
    assert_eq!(served_certificate(&root, proxy.https, B).await.unwrap(), b);
    assert_eq!(pebble.orders(), 2, "a warm restart must not order");

    // Reload: C is added (only C is ordered: Pebble validates on the first proxy's ports, so
    // this proxy cannot pass validation; the attempt itself is what counts), B is removed.
    let config2 =
        config(&s, &pebble.plan, cache.path(), &[A, C]).set("tls.acme.backoff_initial", "1h");
    proxy.reload(&config2.toml()).await.unwrap();
    assert!(
        !proxy.resolver.knows(B),
        "a removed host gets no certificate"
    );
    assert!(proxy.resolver.knows(A));
    eventually("the order for C", ISSUE, async || {
        acme_status(&proxy, C).failures == 1
    })
    .await;
    assert_eq!(pebble.orders(), 3, "only the added host is ordered");
    assert!(
        common::tls_connect(&s.ca, proxy.https, B).await.is_err(),
        "B is no longer served"
    );
    assert_eq!(served_certificate(&root, proxy.https, A).await.unwrap(), a);

    // A configuration with a problem changes nothing.
    let bad = config2.set("tls.acme.challenge_typo", 1).toml();
    let err = proxy.reload(&bad).await.unwrap_err();
    assert!(err.to_string().contains("tls.acme.challenge_typo"), "{err}");
    assert!(proxy.resolver.knows(A) && proxy.resolver.knows(FILES));
    proxy.stop().await;
}

#[tokio::test]
async fn a_failed_validation_for_one_host_leaves_the_others_served_and_backs_off_across_restarts() {
    let s = Setup::new().await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    let toml = config(&s, &plan, cache.path(), &[A, B])
        .set("tls.acme.backoff_initial", "1h")
        .toml();
    let listeners = bind_listeners().await;
    let pebble = pebble_validating(plan, &listeners).await;
    // B's name does not point at us: validation connects to 127.0.0.2, where nothing listens.
    pebble.add_a(B, "127.0.0.2").await;
    let proxy = Proxy::start_on(listeners, &toml);
    eventually("A issued and B failed", ISSUE, async || {
        proxy.resolver.knows(A) && acme_status(&proxy, B).failures == 1
    })
    .await;
    let status = acme_status(&proxy, B);
    let error = status.last_error.unwrap();
    assert!(error.contains("urn:ietf:params:acme:error"), "{error}");
    assert!(!proxy.resolver.knows(B));
    assert!(proxy.resolver.knows(FILES));
    let next = status.next_attempt.unwrap();
    assert!(
        next > SystemTime::now() + Duration::from_secs(50 * 60),
        "{next:?}"
    );
    // The back-off is on disk.
    let record = slug_dir(cache.path(), &pebble.plan).join(format!("{B}.backoff.json"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(json["failures"], 1);
    // Pebble's log is read by another thread: wait for it to show both orders.
    eventually(
        "Pebble's log shows both orders",
        Duration::from_secs(10),
        async || pebble.orders() >= 2,
    )
    .await;
    let orders = pebble.orders();
    assert_eq!(orders, 2);
    proxy.stop().await;

    // A restart (a crash loop) does not order B again before its back-off ends.
    let proxy = Proxy::start(&toml).await;
    eventually("B scheduled", Duration::from_secs(10), async || {
        acme_status(&proxy, B).next_attempt.is_some()
    })
    .await;
    let status = acme_status(&proxy, B);
    assert_eq!(status.failures, 1);
    assert!(status.next_attempt.unwrap() > SystemTime::now() + Duration::from_secs(50 * 60));
    assert!(proxy.resolver.knows(A));
    assert_eq!(pebble.orders(), orders);
    proxy.stop().await;
}

#[tokio::test]
async fn a_failed_renewal_keeps_serving_the_cached_certificate() {
    // No CA at all: the directory's port is closed.
    let s = Setup::new().await;
    let cache = tempfile::tempdir().unwrap();
    let directory = format!("https://127.0.0.1:{}/dir", common::unused_port());
    let dir = cache.path().join(common::directory_dir_name(&directory));
    std::fs::create_dir_all(&dir).unwrap();
    // A cached certificate two thirds through its life: due for renewal.
    let (chain, key) = s.ca.issue_with(&[A], KeyAlg::EcdsaP256, -70, 20);
    std::fs::write(dir.join(format!("{A}.pem")), format!("{key}\n{chain}")).unwrap();
    // An expired one is not served (and does not count as ready).
    let (chain, key) = s.ca.issue_with(&[B], KeyAlg::EcdsaP256, -100, -10);
    std::fs::write(dir.join(format!("{B}.pem")), format!("{key}\n{chain}")).unwrap();
    let toml = TestConfig::new(&s.upstream.url)
        .upstream_ca(&s.ca.ca_file)
        .hosts(&[A, B])
        .set("tls.acme.directory", &directory)
        .set("tls.acme.cache_dir", cache.path())
        .set("tls.acme.backoff_initial", "1h")
        .toml();
    let proxy = Proxy::start(&toml).await;
    assert!(proxy.resolver.knows(A));
    assert!(!proxy.resolver.knows(B));
    eventually("the failed renewal", Duration::from_secs(20), async || {
        acme_status(&proxy, A).failures == 1 && acme_status(&proxy, B).failures == 1
    })
    .await;
    assert!(common::tls_connect(&s.ca, proxy.https, B).await.is_err());
    // Still served, over the cached certificate.
    let raw = common::raw_tls(
        &s.ca,
        proxy.https,
        A,
        format!("GET /wf/open?upn=x HTTP/1.1\r\nHost: {A}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(dir.join(format!("{A}.pem")).exists());
    assert!(dir.join(format!("{A}.backoff.json")).exists());
    let error = acme_status(&proxy, A).last_error.unwrap();
    assert!(error.contains("ACME order failed"), "{error}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_certificate_due_for_renewal_is_renewed_and_swapped_in() {
    let s = Setup::new().await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    // A cached certificate (from another CA) two thirds through its life.
    let dir = slug_dir(cache.path(), &plan);
    std::fs::create_dir_all(&dir).unwrap();
    let (chain, key) = s.ca.issue_with(&[A], KeyAlg::EcdsaP256, -70, 20);
    std::fs::write(dir.join(format!("{A}.pem")), format!("{key}\n{chain}")).unwrap();
    let toml = config(&s, &plan, cache.path(), &[A]).toml();
    let listeners = bind_listeners().await;
    let https = listeners.https.local_addr().unwrap();
    let pebble = pebble_validating(plan, &listeners).await;
    let proxy = Proxy::start_on(listeners, &toml);
    // Served from the cache at once, then replaced by the renewal without a restart.
    assert!(proxy.resolver.knows(A));
    let root = pebble.root_pem().await;
    eventually("the renewed certificate", ISSUE, async || {
        served_certificate(&root, https, A).await
    })
    .await;
    let info = proxy.resolver.acme_host(A).unwrap().certificate().unwrap();
    assert!(info.issuer.contains("Pebble"), "{}", info.issuer);
    assert_eq!(pebble.orders(), 1);
    let cached = std::fs::read_to_string(dir.join(format!("{A}.pem"))).unwrap();
    assert!(
        !cached.contains(chain.lines().nth(1).unwrap()),
        "the cache holds the new one"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn ca_down_at_start_then_up_and_a_restart_of_the_binary_orders_nothing() {
    let s = Setup::new().await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    let toml = config(&s, &plan, cache.path(), &[A, B])
        .set("tls.acme.backoff_initial", "1s")
        .set("tls.acme.backoff_max", "2s")
        .toml();
    let file = cache.path().join("trackproxy.toml");
    std::fs::write(&file, &toml).unwrap();
    let proxy = BinProxy::start(Some(&file), &[]).await;
    // The file-certificate host works while the CA is down; the ACME hosts are refused.
    let raw = common::raw_tls(
        &s.ca,
        proxy.https,
        FILES,
        format!("GET / HTTP/1.1\r\nHost: {FILES}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(common::tls_connect(&s.ca, proxy.https, A).await.is_err());
    let failed = |p: &BinProxy, host: &str| {
        p.log_lines().iter().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["message"] == "ACME order failed" && v["host"] == host && v["event"] == "failed"
        })
    };
    eventually("a logged failure", Duration::from_secs(20), async || {
        failed(&proxy, A)
    })
    .await;

    // The CA comes up; the retries issue both certificates.
    let pebble = Pebble::start(plan, proxy.https.port(), proxy.http.port()).await;
    let root = pebble.root_pem().await;
    let https = proxy.https;
    for host in [A, B] {
        let leaf = eventually(&format!("{host} issued"), ISSUE, async || {
            let served = served_certificate(&root, https, host).await;
            served.map_err(|e| (e.to_string(), proxy.log_lines()))
        })
        .await;
        assert_eq!(names_and_issuer(&leaf).0, [host]);
    }
    // Log lines reach stdout in batches (up to 100 ms after they were logged).
    let issued = || {
        proxy
            .log_lines()
            .iter()
            .filter(|l| l.contains("\"event\":\"issued\""))
            .count()
    };
    eventually("both issues logged", Duration::from_secs(5), async || {
        issued() >= 2
    })
    .await;
    assert_eq!(issued(), 2);
    let orders = pebble.orders();
    assert_eq!(orders, 2);
    let a = served_certificate(&root, https, A).await.unwrap();
    proxy.signal("TERM").await;
    let mut child = proxy.child;
    assert!(child.wait().await.unwrap().success());

    // Restarted: served from the cache at once, and no new order.
    let proxy = BinProxy::start(Some(&file), &[]).await;
    assert_eq!(served_certificate(&root, proxy.https, A).await.unwrap(), a);
    assert!(served_certificate(&root, proxy.https, B).await.is_ok());
    eventually(
        "both hosts scheduled",
        Duration::from_secs(10),
        async || {
            proxy
                .log_lines()
                .iter()
                .filter(|l| l.contains("next ACME order scheduled"))
                .count()
                == 2
        },
    )
    .await;
    assert_eq!(pebble.orders(), orders);
    assert!(!failed(&proxy, A));
}

#[tokio::test]
async fn an_unwritable_cache_dir_is_a_clear_configuration_error() {
    let s = Setup::new().await;
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let cache = blocker.join("acme");
    let config = TestConfig::new(&s.upstream.url)
        .upstream_ca(&s.ca.ca_file)
        .host(A)
        .set("tls.acme.directory", "https://127.0.0.1:1/dir")
        .set("tls.acme.cache_dir", &cache);
    let file = dir.path().join("trackproxy.toml");
    std::fs::write(&file, config.toml()).unwrap();
    for cmd in ["check-config", "serve"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"))
            .args([cmd, "--config"])
            .arg(&file)
            .env("TRACKPROXY__SERVER__HTTPS_LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__SERVER__HTTP_LISTEN", "127.0.0.1:0")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cmd}: {err}");
        assert!(err.contains("tls.acme.cache_dir"), "{err}");
        assert!(err.contains(&*file.to_string_lossy()), "{err}");
        assert!(err.contains(&*cache.to_string_lossy()), "{err}");
        assert!(err.contains("not a writable directory"), "{err}");
    }

    // A directory without write permission (only meaningful when not running as root, which
    // ignores permissions).
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    if std::fs::write(ro.join("probe"), "x").is_err() {
        let toml = config.set("tls.acme.cache_dir", &ro).toml();
        let err = Proxy::try_start(&toml)
            .await
            .err()
            .expect("must be refused");
        assert!(err.to_string().contains("tls.acme.cache_dir"), "{err}");
    }
}

#[tokio::test]
async fn hosts_ordering_together_on_a_new_account_register_it_once_and_all_get_certificates() {
    // Every host task starts its order at once with the same new account key. A CA may refuse
    // all but one of simultaneous registrations of one key (Pebble answers serverInternal), so
    // the account is registered once, before any order registers it again.
    let hosts: Vec<String> = (0..8)
        .map(|i| format!("url{i}.many.example.test"))
        .collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let s = Setup::new().await;
    let plan = PebblePlan::new();
    let cache = tempfile::tempdir().unwrap();
    let toml = config(&s, &plan, cache.path(), &names)
        .set("tls.acme.backoff_initial", "1h")
        .toml();
    let listeners = bind_listeners().await;
    let pebble = pebble_validating(plan, &listeners).await;
    let proxy = Proxy::start_on(listeners, &toml);
    eventually("every host issued or failed", ISSUE, async || {
        names
            .iter()
            .all(|h| proxy.resolver.knows(h) || acme_status(&proxy, h).failures > 0)
    })
    .await;
    for h in &names {
        let status = acme_status(&proxy, h);
        assert_eq!(status.failures, 0, "{h}: {:?}", status.last_error);
        assert!(proxy.resolver.knows(h), "{h}");
    }
    assert_eq!(pebble.orders(), names.len(), "one order per host");
    // Pebble's log: the first registration created the account before a second one arrived.
    let log = pebble.log();
    let account_lines: Vec<&str> = log
        .iter()
        .filter(|l| l.contains("POST /sign-me-up") || l.contains("accounts in memory"))
        .map(String::as_str)
        .collect();
    assert!(
        account_lines.len() > 2
            && account_lines[0].contains("POST /sign-me-up")
            && account_lines[1].contains("There are now 1 accounts in memory")
            && account_lines[2..]
                .iter()
                .all(|l| l.contains("POST /sign-me-up")),
        "{account_lines:#?}"
    );
    proxy.stop().await;
}
