//! The harness's own helpers: `eventually` waits, returns and fails as it says, and
//! `TestConfig` renders TOML the proxy reads back key for key.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestConfig, eventually};

#[tokio::test(start_paused = true)]
async fn eventually_returns_the_value_once_the_check_is_met() {
    let calls = AtomicUsize::new(0);
    let v = eventually("the third call", Duration::from_secs(1), async || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 3 { Some(n * 10) } else { None }
    })
    .await;
    assert_eq!(v, 30);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
#[should_panic(
    expected = "timed out after 1s waiting for the impossible; the last check returned \"still 7\""
)]
async fn eventually_fails_with_the_description_and_the_last_result() {
    eventually("the impossible", Duration::from_secs(1), async || {
        Err::<(), _>("still 7")
    })
    .await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "a check was still running at the deadline")]
async fn eventually_bounds_a_check_that_hangs() {
    eventually("a hanging check", Duration::from_secs(1), async || {
        std::future::pending::<bool>().await
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn eventually_checks_often_but_boundedly() {
    let calls = AtomicUsize::new(0);
    let started = tokio::time::Instant::now();
    eventually("two seconds", Duration::from_secs(3), async || {
        calls.fetch_add(1, Ordering::SeqCst);
        started.elapsed() >= Duration::from_secs(2)
    })
    .await;
    let waited = started.elapsed();
    // Seen within the longest interval (100 ms) after it holds, with fewer than 40 checks.
    assert!(waited < Duration::from_millis(2100), "{waited:?}");
    let n = calls.load(Ordering::SeqCst);
    assert!((20..40).contains(&n), "{n} checks");
}

#[test]
fn test_config_renders_what_the_proxy_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    let toml = TestConfig::new("https://localhost:4443")
        .upstream_ca(&dir.path().join("ca.pem"))
        .hosts(&["a.example.test", "b.example.test"])
        .host_set("b.example.test", "upstream", "http://127.0.0.1:9")
        .certificate((cert.clone(), key.clone()))
        .set("server.trusted_proxies", ["127.0.0.1/32", "::1/128"])
        .set("limits.per_client_rps", 0.5)
        .set("limits.max_connections", 7)
        .set("upstream.response_timeout", "300ms")
        .set("log.level", "info")
        .unset("upstream.ca_file")
        .toml();
    // Parsed by the proxy's own loader (certificate files are read later, at start).
    let cfg = common::config(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(cfg.hosts.len(), 2, "{toml}");
    assert_eq!(cfg.hosts[0].name, "a.example.test");
    assert_eq!(cfg.hosts[1].upstream.to_string(), "http://127.0.0.1:9");
    assert_eq!(cfg.upstream.response_timeout, Duration::from_millis(300));
    assert_eq!(cfg.upstream.ca_file, None);
    assert_eq!(cfg.tls.certificates.len(), 1);
    assert_eq!(cfg.tls.certificates[0].cert, cert);
    assert_eq!(cfg.tls.certificates[0].key, key);
    assert_eq!(cfg.server.trusted_proxies.networks().len(), 2);
    assert_eq!(cfg.limits.per_client_rps, 0.5);
    assert_eq!(cfg.limits.max_connections, 7);
    assert_eq!(cfg.log.level, "info");
    // Setting a key again replaces it: one `level`, not two (which TOML would refuse).
    assert_eq!(toml.matches("level = ").count(), 1, "{toml}");
}

#[test]
fn test_config_quotes_strings_as_toml() {
    let toml = TestConfig::new("https://localhost:1")
        .set("doctor.note", "a \"quoted\" \\ back\\slash\nand a newline")
        .toml();
    assert!(
        toml.contains(r#"note = "a \"quoted\" \\ back\\slash\nand a newline""#),
        "{toml}"
    );
}
