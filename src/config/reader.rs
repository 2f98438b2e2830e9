//! The reader: walks the untyped tree one section at a time, turning each key into a typed
//! value with a parser from [`values`](super::values), recording every problem with its key
//! and origin, and falling back to defaults so that every problem is found in one pass.
//!
//! A section reader names each key once, when it asks for it ([`Reader::get`],
//! [`Reader::table`], [`Reader::tables`]); the [`Table`] records what was asked, so
//! [`Reader::finish`] can list the known keys when it reports the ones left over.

use crate::client::Cidrs;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use config::{Map, Value, ValueKind};
use http::uri::{Authority, Scheme};

use super::esp::{self, AppLinks, Esp};
use super::problem::{Errors, Problem};
use super::source;
use super::types::{
    AcmeChallenge, AcmeConfig, AdminConfig, CertificateFiles, Config, DoctorConfig, Expect,
    ForwardCookies, HostConfig, HttpMode, LimitsConfig, LogConfig, LogFormat, ProxyProtocol,
    Secret, ServerConfig, StoreConfig, TlsConfig, UpstreamConfig, UpstreamUrl,
};
use super::values::{
    acme_directory, boolean, directory, duration, esp, forward_cookies, hex32, host_name, ip_net,
    list, mailto, one_of, path, path_prefixes, positive_duration, postgres_url, rate,
    readable_file, region, socket_addr, string, u32_from, uint_in, upstream_for, upstream_url,
    usize_from,
};

/// Validates `root`, the tree read from `file` (the label naming it in messages).
///
/// # Errors
/// Every problem found, each with its key and origin.
pub(super) fn read(file: String, root: Map<String, Value>) -> Result<Config, Errors> {
    let mut r = Reader {
        file: file.clone(),
        problems: Vec::new(),
    };
    let cfg = r.config(root, file);
    if r.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(Errors(r.problems))
    }
}

/// Walks the untyped tree, recording problems and falling back to defaults.
struct Reader {
    file: String,
    problems: Vec<Problem>,
}

/// One table being read. Keys are removed as they are read, so what is left at the end is
/// unknown; every key asked for is recorded, present or not, as a known key.
struct Table {
    path: String,
    map: Map<String, Value>,
    /// The keys asked for, in the order asked: what "unknown key" messages list.
    known: Vec<&'static str>,
}

impl Table {
    fn new(path: String, map: Map<String, Value>) -> Table {
        Table {
            path,
            map,
            known: Vec::new(),
        }
    }

    /// The full dotted path of `key` in this table.
    fn key(&self, key: &str) -> String {
        key_in(&self.path, key)
    }

    /// Takes `key` out (`None` when absent) and records it as known.
    fn take(&mut self, key: &'static str) -> Option<Value> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        self.map.shift_remove(key)
    }
}

fn key_in(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    fn problem(&mut self, value: Option<&Value>, key: &str, message: impl Into<String>) {
        let origin = source::origin(value, key, &self.file);
        self.problems.push(Problem {
            key: key.to_owned(),
            origin,
            message: message.into(),
        });
    }

    /// Takes `key` from `t` and converts it; `None` when absent or invalid (problem recorded).
    fn get<T>(
        &mut self,
        t: &mut Table,
        key: &'static str,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let v = t.take(key)?;
        let full = t.key(key);
        if matches!(v.kind, ValueKind::Nil) {
            return None;
        }
        match convert(&v) {
            Ok(x) => Some(x),
            Err(msg) => {
                self.problem(Some(&v), &full, msg);
                None
            }
        }
    }

    /// Takes a sub-table (absent → empty).
    fn table(&mut self, parent: &mut Table, key: &'static str) -> Table {
        let path = parent.key(key);
        let map = match parent.take(key) {
            None => Map::new(),
            Some(Value {
                kind: ValueKind::Table(m),
                ..
            }) => m,
            Some(v) => {
                self.problem(Some(&v), &path, "expected a table");
                Map::new()
            }
        };
        Table::new(path, map)
    }

    /// Takes a sub-table that is only read when present (`[tls.acme]`); a known key either way.
    fn optional_table(&mut self, parent: &mut Table, key: &'static str) -> Option<Table> {
        let present = parent.map.contains_key(key);
        let t = self.table(parent, key);
        present.then_some(t)
    }

    /// Takes an array of tables (`[[hosts]]`).
    fn tables(&mut self, parent: &mut Table, key: &'static str) -> Vec<Table> {
        let path = parent.key(key);
        match parent.take(key) {
            None => Vec::new(),
            Some(Value {
                kind: ValueKind::Array(items),
                ..
            }) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let p = format!("{path}[{i}]");
                    if let ValueKind::Table(map) = v.kind {
                        Some(Table::new(p, map))
                    } else {
                        self.problem(Some(&v), &p, "expected a table");
                        None
                    }
                })
                .collect(),
            Some(v) => {
                self.problem(
                    Some(&v),
                    &path,
                    format!("expected an array of tables ([[{path}]])"),
                );
                Vec::new()
            }
        }
    }

    /// Reports every key left in `t` (not asked for) as unknown, listing the keys asked for.
    fn finish(&mut self, t: Table) {
        let Table { path, map, known } = t;
        if map.is_empty() {
            return;
        }
        let message = format!("unknown key (known keys here: {})", known.join(", "));
        for (k, v) in map {
            self.problem(Some(&v), &key_in(&path, &k), message.clone());
        }
    }

    fn config(&mut self, root: Map<String, Value>, origin: String) -> Config {
        let mut root = Table::new(String::new(), root);
        let server = self.server(&mut root);
        let upstream = self.upstream(&mut root);
        let hosts = self.hosts(&mut root, &upstream);
        let tls = self.tls(&mut root);
        let limits = self.limits(&mut root);
        let admin = self.admin(&mut root);
        let log = self.log(&mut root);
        let doctor = self.doctor(&mut root);
        self.finish(root);
        if hosts.is_empty() {
            self.problems.push(Problem {
                key: "hosts".into(),
                origin: self.file.clone(),
                message: "no [[hosts]] configured: add at least one branded link host".into(),
            });
        }
        Config {
            origin,
            server,
            upstream,
            hosts,
            tls,
            limits,
            admin,
            log,
            doctor,
        }
    }

    fn server(&mut self, root: &mut Table) -> ServerConfig {
        let mut t = self.table(root, "server");
        let s = ServerConfig {
            https_listen: self
                .get(&mut t, "https_listen", socket_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443))),
            http_listen: self
                .get(&mut t, "http_listen", socket_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            http_mode: self
                .get(&mut t, "http_mode", |v| {
                    one_of(
                        v,
                        &[("proxy", HttpMode::Proxy), ("redirect", HttpMode::Redirect)],
                    )
                })
                .unwrap_or(HttpMode::Proxy),
            proxy_protocol: self
                .get(&mut t, "proxy_protocol", |v| {
                    one_of(
                        v,
                        &[
                            ("off", ProxyProtocol::Off),
                            ("optional", ProxyProtocol::Optional),
                            ("required", ProxyProtocol::Required),
                        ],
                    )
                })
                .unwrap_or(ProxyProtocol::Off),
            trusted_proxies: self
                .get(&mut t, "trusted_proxies", |v| {
                    list(v, ip_net).map(Cidrs::from)
                })
                .unwrap_or_default(),
            drain_delay: self
                .get(&mut t, "drain_delay", duration)
                .unwrap_or(Duration::ZERO),
            shutdown_grace: self
                .get(&mut t, "shutdown_grace", duration)
                .unwrap_or(Duration::from_secs(30)),
            handshake_timeout: self
                .get(&mut t, "handshake_timeout", positive_duration)
                .unwrap_or(Duration::from_secs(10)),
            header_read_timeout: self
                .get(&mut t, "header_read_timeout", positive_duration)
                .unwrap_or(Duration::from_secs(10)),
            idle_timeout: self
                .get(&mut t, "idle_timeout", positive_duration)
                .unwrap_or(Duration::from_secs(60)),
            max_header_bytes: self
                .get(&mut t, "max_header_bytes", |v| {
                    uint_in(v, 8 * 1024, 1024 * 1024).map(usize_from)
                })
                .unwrap_or(64 * 1024),
            max_headers: self
                .get(&mut t, "max_headers", |v| {
                    uint_in(v, 8, 1000).map(usize_from)
                })
                .unwrap_or(100),
            h2_max_concurrent_streams: self
                .get(&mut t, "h2_max_concurrent_streams", |v| {
                    uint_in(v, 1, 10_000).map(u32_from)
                })
                .unwrap_or(128),
        };
        if s.proxy_protocol != ProxyProtocol::Off && s.trusted_proxies.is_empty() {
            self.problems.push(Problem {
                key: "server.trusted_proxies".into(),
                origin: self.file.clone(),
                message: "server.proxy_protocol is on but no trusted proxies are listed: \
                          add the load balancer's addresses (CIDRs)"
                    .into(),
            });
        }
        self.finish(t);
        s
    }

    fn upstream(&mut self, root: &mut Table) -> UpstreamConfig {
        let mut t = self.table(root, "upstream");
        let url = self.get(&mut t, "url", upstream_url);
        let preset = self.get(&mut t, "esp", esp);
        let region = self.get(&mut t, "region", region);
        let esp = preset.unwrap_or_else(esp::default_esp);
        // An explicit `url` wins over the preset's.
        let url = url.or_else(|| {
            preset.and_then(|e| self.preset_url(e, region.as_deref(), &t.key("region")))
        });
        if region.is_some() && !esp.needs_region() {
            let key = t.key("region");
            self.problem(
                None,
                &key,
                format!("only used with esp = \"ses\" (this is {})", esp.name),
            );
        }
        let u = UpstreamConfig {
            url: url.unwrap_or_else(default_upstream),
            esp,
            connect_timeout: self
                .get(&mut t, "connect_timeout", positive_duration)
                .unwrap_or(Duration::from_secs(3)),
            response_timeout: self
                .get(&mut t, "response_timeout", positive_duration)
                .unwrap_or(Duration::from_secs(30)),
            ca_file: self.get(&mut t, "ca_file", readable_file),
            pool_idle_timeout: self
                .get(&mut t, "pool_idle_timeout", positive_duration)
                .unwrap_or(Duration::from_secs(30)),
            pool_max_idle: self
                .get(&mut t, "pool_max_idle", |v| {
                    uint_in(v, 0, 100_000).map(usize_from)
                })
                .unwrap_or(1024),
        };
        self.finish(t);
        u
    }

    /// The upstream of preset `esp` (with `region` for SES); `None` with a problem at
    /// `region_key` when SES has no region.
    fn preset_url(
        &mut self,
        esp: &Esp,
        region: Option<&str>,
        region_key: &str,
    ) -> Option<UpstreamUrl> {
        if esp.needs_region() && region.is_none() {
            self.problem(
                None,
                region_key,
                format!(
                    "required with esp = {:?}: the AWS region of the tracking host \
                     r.<region>.awstrack.me, e.g. \"us-east-1\" (or set `upstream`)",
                    esp.name
                ),
            );
            return None;
        }
        let url = esp.upstream_url(region);
        match upstream_url(&Value::new(None, url.as_str())) {
            Ok(u) => Some(u),
            Err(m) => {
                self.problem(None, region_key, m);
                None
            }
        }
    }

    fn hosts(&mut self, root: &mut Table, default: &UpstreamConfig) -> Vec<HostConfig> {
        let mut seen = HashSet::new();
        let mut hosts = Vec::new();
        for mut t in self.tables(root, "hosts") {
            let name_key = t.key("name");
            let raw_name = t.map.get("name").cloned();
            let name = self.get(&mut t, "name", host_name);
            let preset = self.get(&mut t, "esp", esp);
            let region = self.get(&mut t, "region", region);
            let esp = preset.unwrap_or(default.esp);
            let explicit = self.get(&mut t, "upstream", |v| upstream_for(v, esp));
            // Precedence: the host's `upstream`, its `esp`'s upstream, the [upstream] default.
            let upstream = match (explicit, preset) {
                (Some(u), _) => Some(u),
                (None, Some(e)) => self.preset_url(e, region.as_deref(), &t.key("region")),
                (None, None) => Some(default.url.clone()),
            };
            if region.is_some() && !esp.needs_region() {
                let key = t.key("region");
                self.problem(
                    None,
                    &key,
                    format!("only used with esp = \"ses\" (this host's is {})", esp.name),
                );
            }
            let owner_record = self.get(&mut t, "owner_record", host_name);
            let forward_cookies = self
                .get(&mut t, "forward_cookies", forward_cookies)
                .unwrap_or(ForwardCookies::All);
            let paths = self.get(&mut t, "paths", |v| path_prefixes(v, esp));
            let files_raw = t.map.get("files").cloned();
            let files = self.get(&mut t, "files", directory);
            if files.is_some() && esp.app_links == AppLinks::Upstream {
                let key = t.key("files");
                self.problem(
                    files_raw.as_ref(),
                    &key,
                    format!(
                        "{} serves the app-link files (apple-app-site-association, \
                         assetlinks.json) itself; they pass through to it: remove `files`",
                        esp.title
                    ),
                );
            }
            let upstream = upstream.unwrap_or_else(|| default.url.clone());
            match name {
                Some(name) if !seen.insert(name.clone()) => {
                    self.problem(
                        raw_name.as_ref(),
                        &name_key,
                        format!("host {name:?} is listed twice"),
                    );
                }
                Some(name) => hosts.push(HostConfig {
                    name,
                    upstream,
                    esp,
                    forward_cookies,
                    paths,
                    files,
                    owner_record,
                }),
                None if raw_name.is_none() => {
                    self.problem(None, &name_key, "required: the branded host name");
                }
                None => {}
            }
            self.finish(t);
        }
        hosts
    }

    fn tls(&mut self, root: &mut Table) -> TlsConfig {
        let mut t = self.table(root, "tls");
        let self_signed = self.get(&mut t, "self_signed", boolean).unwrap_or(false);
        let mut certificates = Vec::new();
        for mut c in self.tables(&mut t, "certificates") {
            let cert = self.get(&mut c, "cert", path);
            let key = self.get(&mut c, "key", path);
            for (name, v) in [("cert", &cert), ("key", &key)] {
                if v.is_none() && !self.problems.iter().any(|p| p.key == c.key(name)) {
                    self.problem(None, &c.key(name), "required: path to a PEM file");
                }
            }
            let key_path = c.path.clone();
            self.finish(c);
            if let (Some(cert), Some(key)) = (cert, key) {
                certificates.push(CertificateFiles {
                    key_path,
                    cert,
                    key,
                });
            }
        }
        let watch_interval = self
            .get(&mut t, "watch_interval", duration)
            .unwrap_or(Duration::from_secs(10));
        let acme = self
            .optional_table(&mut t, "acme")
            .and_then(|a| self.acme(a));
        self.finish(t);
        TlsConfig {
            self_signed,
            certificates,
            watch_interval,
            acme,
        }
    }

    fn limits(&mut self, root: &mut Table) -> LimitsConfig {
        let mut t = self.table(root, "limits");
        let d = LimitsConfig::default();
        let l = LimitsConfig {
            per_client_rps: self
                .get(&mut t, "per_client_rps", |v| rate(v, 1_000_000.0))
                .unwrap_or(d.per_client_rps),
            per_client_burst: self
                .get(&mut t, "per_client_burst", |v| {
                    uint_in(v, 1, 1_000_000).map(u32_from)
                })
                .unwrap_or(d.per_client_burst),
            allow: self
                .get(&mut t, "allow", |v| list(v, ip_net).map(Cidrs::from))
                .unwrap_or_default(),
            per_client_connections: self
                .get(&mut t, "per_client_connections", |v| {
                    uint_in(v, 0, 1_000_000).map(u32_from)
                })
                .unwrap_or(d.per_client_connections),
            max_connections: self
                .get(&mut t, "max_connections", |v| {
                    uint_in(v, 1, 10_000_000).map(usize_from)
                })
                .unwrap_or(d.max_connections),
            max_in_flight: self
                .get(&mut t, "max_in_flight", |v| {
                    uint_in(v, 1, 10_000_000).map(usize_from)
                })
                .unwrap_or(d.max_in_flight),
        };
        self.finish(t);
        l
    }

    fn acme(&mut self, mut t: Table) -> Option<AcmeConfig> {
        let before = self.problems.len();
        let directory = self.get(&mut t, "directory", acme_directory);
        let contact = self
            .get(&mut t, "contact", |v| list(v, mailto))
            .unwrap_or_default();
        let cache_dir = self.get(&mut t, "cache_dir", path);
        let challenge = self
            .get(&mut t, "challenge", |v| {
                one_of(
                    v,
                    &[
                        ("tls-alpn-01", AcmeChallenge::TlsAlpn01),
                        ("http-01", AcmeChallenge::Http01),
                    ],
                )
            })
            .unwrap_or(AcmeChallenge::TlsAlpn01);
        let ca_file = self.get(&mut t, "ca_file", readable_file);
        let backoff_initial = self
            .get(&mut t, "backoff_initial", positive_duration)
            .unwrap_or(Duration::from_secs(10 * 60));
        let backoff_max = self
            .get(&mut t, "backoff_max", positive_duration)
            .unwrap_or(Duration::from_secs(24 * 60 * 60));
        for (name, missing, what) in [
            (
                "directory",
                directory.is_none(),
                "the CA's ACME directory URL, e.g. Let's Encrypt \
                 \"https://acme-v02.api.letsencrypt.org/directory\" (production) or \
                 \"https://acme-staging-v02.api.letsencrypt.org/directory\" (staging)",
            ),
            (
                "cache_dir",
                cache_dir.is_none(),
                "a directory for the account key and certificates, e.g. \
                 \"/var/lib/trackproxy/acme\"",
            ),
        ] {
            let key = t.key(name);
            if missing && !self.problems[before..].iter().any(|p| p.key == key) {
                self.problem(None, &key, format!("required: {what}"));
            }
        }
        if backoff_max < backoff_initial {
            let key = t.key("backoff_max");
            self.problem(None, &key, "must not be shorter than backoff_initial");
        }
        let store = self.acme_store(&mut t);
        self.finish(t);
        Some(AcmeConfig {
            directory: directory?,
            contact,
            cache_dir: cache_dir?,
            challenge,
            ca_file,
            backoff_initial,
            backoff_max,
            store: store?,
        })
    }

    /// `store`, `store_password[_file]`, `store_key[_file]` of `[tls.acme]`: `Some(None)`
    /// without a store, `None` after a problem. Secrets are never put into a message.
    #[allow(clippy::option_option, clippy::too_many_lines)] // absent vs invalid; one key after another
    fn acme_store(&mut self, t: &mut Table) -> Option<Option<StoreConfig>> {
        let url = self.get(t, "store", postgres_url);
        let password_file = self.get(t, "store_password_file", readable_file);
        let password = t.take("store_password");
        let key_file = self.get(t, "store_key_file", readable_file);
        let key = t.take("store_key");
        let Some(url) = url else {
            let stray = [
                "store_password_file",
                "store_password",
                "store_key_file",
                "store_key",
            ];
            let set = [
                password_file.is_some(),
                password.is_some(),
                key_file.is_some(),
                key.is_some(),
            ];
            for (name, _) in stray.iter().zip(set).filter(|(_, s)| *s) {
                let k = t.key(name);
                self.problem(None, &k, "only used with tls.acme.store");
            }
            return Some(None);
        };
        let mut ok = true;
        let password = match (password_file, password) {
            (Some(_), Some(_)) => {
                let k = t.key("store_password");
                self.problem(
                    None,
                    &k,
                    "set either store_password or store_password_file, not both",
                );
                ok = false;
                None
            }
            (Some(f), None) => match std::fs::read_to_string(&f) {
                Ok(p) => Some(Secret(p.trim_end_matches(['\n', '\r']).as_bytes().to_vec())),
                Err(e) => {
                    let k = t.key("store_password_file");
                    self.problem(None, &k, format!("cannot read {}: {e}", f.display()));
                    ok = false;
                    None
                }
            },
            (None, Some(v)) => match string(&v) {
                Ok(p) => Some(Secret(p.into_bytes())),
                Err(m) => {
                    let k = t.key("store_password");
                    self.problem(None, &k, m);
                    ok = false;
                    None
                }
            },
            (None, None) => None,
        };
        let key_text = match (key_file, key) {
            (Some(_), Some(_)) => {
                let k = t.key("store_key");
                self.problem(None, &k, "set either store_key or store_key_file, not both");
                None
            }
            (Some(f), None) => match std::fs::read_to_string(&f) {
                Ok(text) => Some(("store_key_file", text)),
                Err(e) => {
                    let k = t.key("store_key_file");
                    self.problem(None, &k, format!("cannot read {}: {e}", f.display()));
                    None
                }
            },
            (None, Some(v)) => match string(&v) {
                Ok(text) => Some(("store_key", text)),
                Err(m) => {
                    let k = t.key("store_key");
                    self.problem(None, &k, m);
                    None
                }
            },
            (None, None) => {
                let k = t.key("store_key_file");
                self.problem(
                    None,
                    &k,
                    "required with tls.acme.store: a file holding 64 hex digits (32 random \
                     bytes, e.g. from `openssl rand -hex 32`) that encrypt the private keys \
                     in the store; or TRACKPROXY__TLS__ACME__STORE_KEY",
                );
                None
            }
        };
        let key = if let Some((name, text)) = key_text {
            let key = hex32(text.trim()).map(Secret);
            if key.is_none() {
                let k = t.key(name);
                self.problem(
                    None,
                    &k,
                    "expected 64 hex digits (32 bytes, e.g. from `openssl rand -hex 32`); \
                     the value is not shown",
                );
            }
            key
        } else {
            None
        };
        let key = key?;
        ok.then_some(Some(StoreConfig { url, password, key }))
    }

    fn admin(&mut self, root: &mut Table) -> AdminConfig {
        let mut t = self.table(root, "admin");
        let a = AdminConfig {
            listen: self
                .get(&mut t, "listen", socket_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
        };
        self.finish(t);
        a
    }

    fn log(&mut self, root: &mut Table) -> LogConfig {
        let mut t = self.table(root, "log");
        let l = LogConfig {
            format: self
                .get(&mut t, "format", |v| {
                    one_of(
                        v,
                        &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
                    )
                })
                .unwrap_or(LogFormat::Json),
            level: self
                .get(&mut t, "level", |v| {
                    let s = string(v)?;
                    tracing_subscriber::EnvFilter::builder()
                        .parse(&s)
                        .map_err(|e| format!("not a valid log filter {s:?}: {e}"))?;
                    Ok(s)
                })
                .unwrap_or_else(|| "info".to_owned()),
            query: self.get(&mut t, "query", boolean).unwrap_or(false),
        };
        self.finish(t);
        l
    }

    fn doctor(&mut self, root: &mut Table) -> DoctorConfig {
        let mut t = self.table(root, "doctor");
        let d = DoctorConfig {
            expect: self.get(&mut t, "expect", |v| {
                let s = string(v)?;
                Expect::parse(&s).ok_or_else(|| {
                    format!("expected this proxy's public host name or IP address, found {s:?}")
                })
            }),
        };
        self.finish(t);
        d
    }
}

fn default_upstream() -> UpstreamUrl {
    UpstreamUrl {
        scheme: Scheme::HTTPS,
        authority: Authority::from_static("sendgrid.net"),
    }
}
