//! Configuration: one TOML file plus `TRACKPROXY__SECTION__KEY` environment overrides, read
//! with the `config` crate and turned into typed, validated values.
//!
//! Only this module sees the untyped tree. [`load`] walks it key by key and collects **every**
//! problem (unknown key, wrong type, bad address, bad duration, …) with the key's path and the
//! file (or environment variable) it came from, so `trackproxy check-config` can list them all
//! at once instead of making the user fix them one at a time.
//!
//! # Layout
//!
//! Each layer uses only the ones listed before it:
//!
//! - [`esp`]: the ESP presets, one table of facts with their sources.
//! - `types`: the validated types ([`Config`] and its sections) and what a host name is.
//! - `problem`: [`Problem`] and [`Errors`], what is wrong and where.
//! - `values`: value parsers, one untyped value to one typed value or a message.
//! - `source`: file, embedded default or text, plus the environment, into one untyped tree;
//!   names where each value came from.
//! - `starter`: the commented configuration `trackproxy init` writes.
//! - `reader`: walks the tree section by section with the value parsers, collecting problems.
//!
//! Every public item is re-exported here, so it is used as `config::Foo`.

pub mod esp;
mod problem;
mod reader;
mod source;
mod starter;
mod types;
mod values;

use config::Map;

pub use esp::Esp;
pub use problem::{Errors, Problem};
pub use source::{EMBEDDED_DEFAULT, EMBEDDED_LABEL, ENV_PREFIX, ENV_SEPARATOR, Source};
pub use starter::Starter;
pub use types::{
    AcmeChallenge, AcmeConfig, AdminConfig, CertificateFiles, Config, DoctorConfig, Expect,
    ForwardCookies, HostConfig, HttpMode, LimitsConfig, LogConfig, LogFormat, ProxyProtocol,
    Secret, ServerConfig, StoreConfig, TlsConfig, UpstreamConfig, UpstreamUrl, normalize_host_name,
};

/// Reads `source`, applies `TRACKPROXY__…` overrides from the process environment, validates.
///
/// # Errors
/// Every problem found, each with its key and file.
pub fn load(source: &Source<'_>) -> Result<Config, Errors> {
    load_with_env(source, None)
}

/// Like [`load`], but with the environment given as a map (tests; `None` reads the process
/// environment).
///
/// # Errors
/// Every problem found, each with its key and file.
pub fn load_with_env(
    source: &Source<'_>,
    env: Option<Map<String, String>>,
) -> Result<Config, Errors> {
    let (label, root) = source::tree(source, env)?;
    reader::read(label, root)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn text(toml: &str) -> Result<Config, Errors> {
        load_with_env(
            &Source::Text {
                label: "test.toml",
                toml,
            },
            Some(Map::new()),
        )
    }

    #[test]
    fn embedded_default_is_valid_and_offline() {
        let cfg = load_with_env(&Source::Embedded, Some(Map::new())).unwrap();
        assert_eq!(cfg.server.https_listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(cfg.server.http_listen, "127.0.0.1:8080".parse().unwrap());
        assert!(cfg.tls.self_signed);
        assert_eq!(cfg.hosts[0].name, "localhost");
        assert_eq!(cfg.hosts[0].upstream.to_string(), "https://sendgrid.net");
    }

    #[test]
    fn every_problem_is_reported_with_key_and_origin() {
        let err = text(
            r#"
            [server]
            https_listen = "not an address"
            htps_listen = "0.0.0.0:443"
            shutdown_grace = "soon"
            [upstream]
            url = "ftp://sendgrid.net"
            [[hosts]]
            name = "bad host!"
            [[hosts]]
            upstream = "https://eu.sendgrid.net"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.https_listen",
                "server.shutdown_grace",
                "server.htps_listen",
                "upstream.url",
                "hosts[0].name",
                "hosts[1].name",
                "hosts",
            ]
        );
        assert!(err.0.iter().all(|p| p.origin == "test.toml"));
        assert!(err.to_string().contains("unknown key"));
    }

    #[test]
    fn environment_overrides_and_names_the_variable() {
        let mut env = Map::new();
        env.insert(
            "TRACKPROXY__SERVER__HTTPS_LISTEN".to_owned(),
            "0.0.0.0:443".to_owned(),
        );
        env.insert("TRACKPROXY__LOG__QUERY".to_owned(), "true".to_owned());
        env.insert(
            "TRACKPROXY__SERVER__TRUSTED_PROXIES".to_owned(),
            "10.0.0.0/8, 192.0.2.1".to_owned(),
        );
        let cfg = load_with_env(&Source::Embedded, Some(env.clone())).unwrap();
        assert_eq!(cfg.server.https_listen, "0.0.0.0:443".parse().unwrap());
        assert!(cfg.log.query);
        assert_eq!(cfg.server.trusted_proxies.networks().len(), 2);

        env.insert(
            "TRACKPROXY__UPSTREAM__CONNECT_TIMEOUT".to_owned(),
            "fast".to_owned(),
        );
        let err = load_with_env(&Source::Embedded, Some(env)).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].key, "upstream.connect_timeout");
        assert_eq!(
            err.0[0].origin,
            "environment variable TRACKPROXY__UPSTREAM__CONNECT_TIMEOUT"
        );
    }

    #[test]
    fn limits_have_defaults_and_are_validated() {
        let cfg = text("[[hosts]]\nname = \"a.example\"\n").unwrap();
        assert!((cfg.limits.per_client_rps - 20.0).abs() < f64::EPSILON);
        assert_eq!(cfg.limits.per_client_burst, 50);
        assert_eq!(cfg.limits.per_client_connections, 100);
        assert_eq!(cfg.limits.max_connections, 20_000);
        assert_eq!(cfg.limits.max_in_flight, 4096);
        assert!(cfg.limits.allow.is_empty());

        let cfg = text(
            r#"
            [[hosts]]
            name = "a.example"
            [limits]
            per_client_rps = 0
            per_client_burst = 5
            allow = ["10.0.0.0/8", "2001:db8::1"]
            per_client_connections = 0
            max_connections = 10
            max_in_flight = 3
            "#,
        )
        .unwrap();
        assert!(cfg.limits.per_client_rps.abs() < f64::EPSILON);
        assert_eq!(cfg.limits.per_client_burst, 5);
        assert_eq!(cfg.limits.allow.networks().len(), 2);
        assert_eq!(cfg.limits.max_connections, 10);
        assert_eq!(cfg.limits.max_in_flight, 3);

        let err = text(
            r#"
            [[hosts]]
            name = "a.example"
            [limits]
            per_client_rps = -0.5
            per_client_burst = 0
            allow = ["not a network"]
            per_client_connections = "many"
            max_connections = 0
            max_in_flight = 0
            per_client_rsp = 3
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "limits.per_client_rps",
                "limits.per_client_burst",
                "limits.allow",
                "limits.per_client_connections",
                "limits.max_connections",
                "limits.max_in_flight",
                "limits.per_client_rsp",
            ]
        );
    }

    #[test]
    fn doctor_keys() {
        let cfg = text(
            r#"
            [[hosts]]
            name = "url1.example.com"
            owner_record = "12345.Example.com."
            [doctor]
            expect = "Proxy.Example.net"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.hosts[0].owner_record.as_deref(),
            Some("12345.example.com")
        );
        assert_eq!(
            cfg.doctor.expect,
            Some(Expect::Name("proxy.example.net".into()))
        );
        let cfg =
            text("[[hosts]]\nname = \"a.example\"\n[doctor]\nexpect = \"2001:db8::1\"\n").unwrap();
        assert_eq!(
            cfg.doctor.expect,
            Some(Expect::Ip("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(cfg.hosts[0].owner_record, None);
        let err = text(
            "[[hosts]]\nname = \"a.example\"\nowner_record = \"x y\"\n\
             [doctor]\nexpect = \"no way\"\nexpct = 1\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["hosts[0].owner_record", "doctor.expect", "doctor.expct"]
        );
    }

    #[test]
    fn acme_section_with_defaults_and_env_override() {
        let toml = r#"
            [[hosts]]
            name = "url1.example.com"
            [tls.acme]
            directory = "https://acme-staging-v02.api.letsencrypt.org/directory"
            contact = ["mailto:ops@example.com"]
            cache_dir = "/var/lib/trackproxy/acme"
            "#;
        let a = text(toml).unwrap().tls.acme.unwrap();
        assert_eq!(
            a.directory,
            "https://acme-staging-v02.api.letsencrypt.org/directory"
        );
        assert_eq!(a.contact, ["mailto:ops@example.com"]);
        assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(a.backoff_initial, Duration::from_secs(600));
        assert_eq!(a.backoff_max, Duration::from_secs(86_400));
        assert!(a.ca_file.is_none());
        assert!(
            text("[[hosts]]\nname = \"a.example\"\n")
                .unwrap()
                .tls
                .acme
                .is_none()
        );

        let mut env = Map::new();
        env.insert(
            "TRACKPROXY__TLS__ACME__CACHE_DIR".to_owned(),
            "/tmp/acme".to_owned(),
        );
        env.insert(
            "TRACKPROXY__TLS__ACME__CHALLENGE".to_owned(),
            "http-01".to_owned(),
        );
        let label = "test.toml";
        let cfg = load_with_env(&Source::Text { label, toml }, Some(env)).unwrap();
        let a = cfg.tls.acme.unwrap();
        assert_eq!(a.cache_dir, PathBuf::from("/tmp/acme"));
        assert_eq!(a.challenge, AcmeChallenge::Http01);
    }

    #[test]
    fn acme_problems_are_all_reported() {
        let err = text(
            r#"
            [[hosts]]
            name = "url1.example.com"
            [tls.acme]
            directory = "http://acme.example/directory"
            contact = ["ops@example.com"]
            challenge = "dns-01"
            backoff_initial = "2h"
            backoff_max = "1h"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tls.acme.directory",
                "tls.acme.contact",
                "tls.acme.challenge",
                "tls.acme.cache_dir",
                "tls.acme.backoff_max",
            ]
        );
        let err = text("[[hosts]]\nname = \"a.example\"\n[tls.acme]\n").unwrap_err();
        assert!(err.to_string().contains("acme-staging-v02"), "{err}");
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["tls.acme.directory", "tls.acme.cache_dir"]);
    }

    /// Each section's "unknown key" message lists the keys that section reads, in the order it
    /// reads them; `tls.acme` is listed under `[tls]` even when there is no `[tls.acme]`.
    #[test]
    fn unknown_keys_name_the_known_keys_of_their_section() {
        let err = text(
            r#"
            bogus = 1
            [server]
            bogus = 1
            [upstream]
            bogus = 1
            [[hosts]]
            name = "a.example"
            bogus = 1
            [tls]
            bogus = 1
            [[tls.certificates]]
            cert = "c.pem"
            key = "k.pem"
            bogus = 1
            [limits]
            bogus = 1
            [admin]
            bogus = 1
            [log]
            bogus = 1
            [doctor]
            bogus = 1
            "#,
        )
        .unwrap_err();
        let known = |key: &str| {
            let p = err.0.iter().find(|p| p.key == key).unwrap();
            assert_eq!(p.origin, "test.toml");
            p.message
                .strip_prefix("unknown key (known keys here: ")
                .and_then(|m| m.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{key}: {}", p.message))
                .to_owned()
        };
        let expected = [
            (
                "bogus",
                "server, upstream, hosts, tls, limits, admin, log, doctor",
            ),
            (
                "server.bogus",
                "https_listen, http_listen, http_mode, proxy_protocol, trusted_proxies, \
                 drain_delay, shutdown_grace, handshake_timeout, header_read_timeout, \
                 idle_timeout, max_header_bytes, max_headers, h2_max_concurrent_streams",
            ),
            (
                "upstream.bogus",
                "url, esp, region, connect_timeout, response_timeout, ca_file, \
                 pool_idle_timeout, pool_max_idle",
            ),
            (
                "hosts[0].bogus",
                "name, esp, region, upstream, owner_record, forward_cookies, paths, files",
            ),
            (
                "tls.bogus",
                "self_signed, certificates, watch_interval, acme",
            ),
            ("tls.certificates[0].bogus", "cert, key"),
            (
                "limits.bogus",
                "per_client_rps, per_client_burst, allow, per_client_connections, \
                 max_connections, max_in_flight",
            ),
            ("admin.bogus", "listen"),
            ("log.bogus", "format, level, query"),
            ("doctor.bogus", "expect"),
        ];
        for (key, keys) in expected {
            assert_eq!(known(key), keys, "{key}");
        }
        assert_eq!(err.0.len(), expected.len(), "{err}");

        let err = text(
            "[[hosts]]\nname = \"a.example\"\n[tls.acme]\n\
             directory = \"https://acme.example/dir\"\ncache_dir = \"/tmp/acme\"\nbogus = 1\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].key, "tls.acme.bogus");
        assert_eq!(
            err.0[0].message,
            "unknown key (known keys here: directory, contact, cache_dir, challenge, ca_file, \
             backoff_initial, backoff_max, store, store_password_file, store_password, \
             store_key_file, store_key)"
        );
    }

    #[test]
    fn esp_presets_set_upstream_and_rules_and_explicit_upstream_wins() {
        let cfg = text(
            r#"
            [upstream]
            esp = "sendgrid-eu"
            [[hosts]]
            name = "a.example"
            [[hosts]]
            name = "b.example"
            esp = "SparkPost"
            [[hosts]]
            name = "c.example"
            esp = "mailgun"
            upstream = "http://127.0.0.1:9"
            [[hosts]]
            name = "d.example"
            esp = "ses"
            region = "eu-west-1"
            forward_cookies = ["sid", "_ga"]
            [[hosts]]
            name = "e.example"
            esp = "mandrill"
            paths = "esp"
            forward_cookies = "none"
            [[hosts]]
            name = "f.example"
            esp = "iterable-eu"
            paths = ["/a/", "/b"]
            "#,
        )
        .unwrap();
        let h = &cfg.hosts;
        assert_eq!(cfg.upstream.url.to_string(), "https://eu.sendgrid.net");
        assert_eq!(h[0].upstream.to_string(), "https://eu.sendgrid.net");
        assert_eq!(h[0].esp.name, "sendgrid-eu");
        assert_eq!(h[1].upstream.to_string(), "https://spgo.io");
        assert_eq!(h[1].esp.redirect, esp::RedirectPolicy::Never);
        assert_eq!(h[2].upstream.to_string(), "http://127.0.0.1:9");
        assert_eq!(h[2].esp.name, "mailgun");
        assert_eq!(h[3].upstream.to_string(), "https://r.eu-west-1.awstrack.me");
        assert_eq!(h[3].esp.header_limit, Some(8192));
        assert_eq!(
            h[3].forward_cookies,
            ForwardCookies::Only(vec!["sid".into(), "_ga".into()])
        );
        assert_eq!(h[4].paths.as_deref(), Some(&["/track/".to_owned()][..]));
        assert_eq!(h[4].forward_cookies, ForwardCookies::None);
        assert_eq!(h[5].upstream.to_string(), "https://links.eu.iterable.com");
        assert_eq!(h[5].forward_cookies, ForwardCookies::All);
        assert_eq!(
            h[5].paths.as_deref(),
            Some(&["/a/".to_owned(), "/b".to_owned()][..])
        );
        // An explicit [upstream] url wins over upstream.esp for hosts without their own.
        let cfg = text(
            "[upstream]\nurl = \"https://127.0.0.1:1\"\nesp = \"mailgun\"\n\
             [[hosts]]\nname = \"a.example\"\n",
        )
        .unwrap();
        assert_eq!(cfg.hosts[0].upstream.to_string(), "https://127.0.0.1:1");
        assert_eq!(cfg.hosts[0].esp.name, "mailgun");
        // The default stays SendGrid.
        let cfg = text("[[hosts]]\nname = \"a.example\"\n").unwrap();
        assert_eq!(cfg.hosts[0].esp.name, "sendgrid");
        assert_eq!(cfg.hosts[0].paths, None);
    }

    #[test]
    fn esp_problems_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = text(&format!(
            r#"
            [upstream]
            esp = "sendgird"
            [[hosts]]
            name = "a.example"
            esp = "sparkpots"
            [[hosts]]
            name = "b.example"
            esp = "ses"
            [[hosts]]
            name = "c.example"
            region = "us-east-1"
            [[hosts]]
            name = "d.example"
            esp = "mailgun"
            paths = "esp"
            [[hosts]]
            name = "e.example"
            forward_cookies = ["ok", "not ok"]
            paths = ["no-slash"]
            [[hosts]]
            name = "f.example"
            esp = "iterable"
            files = {dir:?}
            [[hosts]]
            name = "g.example"
            files = "/nonexistent/trackproxy-files"
            "#,
            dir = dir.path().display().to_string()
        ))
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstream.esp",
                "hosts[0].esp",
                "hosts[1].region",
                "hosts[2].region",
                "hosts[3].paths",
                "hosts[4].forward_cookies",
                "hosts[4].paths",
                "hosts[5].files",
                "hosts[6].files",
            ],
            "{err}"
        );
        assert!(err.0.iter().all(|p| p.origin == "test.toml"));
        assert!(err.0[1].message.contains("\"sparkpost\""), "{}", err.0[1]);
        assert!(err.0[7].message.contains("Iterable serves"), "{}", err.0[7]);
    }
}
