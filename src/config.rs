//! Configuration: one TOML file plus `TRACKPROXY__SECTION__KEY` environment overrides, read
//! with the `config` crate and turned into typed, validated values.
//!
//! Only this module sees the untyped tree. [`load`] walks it key by key and collects **every**
//! problem (unknown key, wrong type, bad address, bad duration, …) with the key's path and the
//! file (or environment variable) it came from, so `trackproxy check-config` can list them all
//! at once instead of making the user fix them one at a time.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Map, Value, ValueKind};
use http::uri::{Authority, Scheme};
use ipnet::IpNet;

/// The configuration compiled into the binary: what `trackproxy serve` runs with no file.
/// Loopback only, a self-signed certificate for `localhost`, upstream sendgrid.net.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/default.toml");

/// Label used in messages for the embedded default configuration.
pub const EMBEDDED_LABEL: &str = "<embedded default config>";

/// Prefix of environment overrides: `TRACKPROXY__SERVER__HTTPS_LISTEN=0.0.0.0:443`.
pub const ENV_PREFIX: &str = "TRACKPROXY";

/// The environment separator between prefix, section and key.
pub const ENV_SEPARATOR: &str = "__";

/// The validated configuration every other module works with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a path, or [`EMBEDDED_LABEL`]); used in messages.
    pub origin: String,
    /// Listeners, timeouts and protocol limits.
    pub server: ServerConfig,
    /// The default upstream (ESP tracking host) and how to reach it.
    pub upstream: UpstreamConfig,
    /// Branded hosts served, in file order.
    pub hosts: Vec<HostConfig>,
    /// Where certificates come from.
    pub tls: TlsConfig,
    /// Per-client and global limits.
    pub limits: LimitsConfig,
    /// Admin listener.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// `trackproxy doctor` settings.
    pub doctor: DoctorConfig,
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTPS listener address.
    pub https_listen: SocketAddr,
    /// Plain HTTP listener address.
    pub http_listen: SocketAddr,
    /// What plain HTTP does with tracked links.
    pub http_mode: HttpMode,
    /// Whether a PROXY protocol header is expected on accepted connections.
    pub proxy_protocol: ProxyProtocol,
    /// Peers allowed to send PROXY headers and `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpNet>,
    /// After SIGTERM: keep serving this long (with `/readyz` failing) before closing listeners.
    pub drain_delay: Duration,
    /// After the listeners close: how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
    /// Limit for the whole TLS handshake, from accept to the first request byte.
    pub handshake_timeout: Duration,
    /// Limit for reading one HTTP/1 request head (also bounds an idle HTTP/1 keep-alive wait).
    pub header_read_timeout: Duration,
    /// A connection with no bytes in either direction for this long is closed gracefully.
    pub idle_timeout: Duration,
    /// Largest request head (request line plus headers), bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most request header fields; more gets 431.
    pub max_headers: usize,
    /// HTTP/2: concurrent streams per connection.
    pub h2_max_concurrent_streams: u32,
}

/// Plain-HTTP behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// Forward `http://` links like `https://` ones (the default: links already sent keep working).
    Proxy,
    /// Answer 308 with the `https://` URL.
    Redirect,
}

/// PROXY protocol handling on the listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Never read a PROXY header.
    Off,
    /// Read one if a trusted peer sends it.
    Optional,
    /// Every connection must start with one from a trusted peer.
    Required,
}

/// `[upstream]`, and the per-host `upstream` override.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Default upstream for every host.
    pub url: UpstreamUrl,
    /// TCP (and TLS) connect limit.
    pub connect_timeout: Duration,
    /// Limit from sending the request to receiving the response head.
    pub response_timeout: Duration,
    /// Extra PEM roots trusted for upstream TLS (beside the webpki roots).
    pub ca_file: Option<PathBuf>,
    /// Pooled upstream connections idle longer than this are closed (and DNS is resolved anew).
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept per upstream.
    pub pool_max_idle: usize,
}

/// An upstream origin: scheme and authority, no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host and optional port.
    pub authority: Authority,
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// One `[[hosts]]` entry.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Branded host name, lower case, no trailing dot.
    pub name: String,
    /// Upstream for this host (the `[upstream] url` unless overridden).
    pub upstream: UpstreamUrl,
    /// The ESP's ownership record for this host's branding (`SendGrid`'s numeric CNAME, e.g.
    /// `12345.example.com`), lower case; checked by `trackproxy doctor`.
    pub owner_record: Option<String>,
}

/// `[tls]`
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Generate a self-signed certificate at start for hosts no file certificate covers.
    pub self_signed: bool,
    /// PEM certificate files.
    pub certificates: Vec<CertificateFiles>,
    /// How often certificate files are checked for changes on disk (cert-manager rotating a
    /// Secret); zero turns the check off (SIGHUP still reloads them).
    pub watch_interval: Duration,
    /// `[tls.acme]`: certificates over ACME for hosts no file certificate covers.
    pub acme: Option<AcmeConfig>,
}

/// `[tls.acme]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The CA's ACME directory URL (`https://…`).
    pub directory: String,
    /// Account contacts, each `mailto:…`.
    pub contact: Vec<String>,
    /// Where the account key, certificates and back-off records are kept.
    pub cache_dir: PathBuf,
    /// How the CA validates that we control a host.
    pub challenge: AcmeChallenge,
    /// Extra PEM roots trusted for the directory's HTTPS (Pebble, step-ca, a private CA).
    pub ca_file: Option<PathBuf>,
    /// Wait after the first failed attempt for a host; doubled after each further failure.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
}

/// ACME challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 (RFC 8737) on the HTTPS listener.
    TlsAlpn01,
    /// HTTP-01 (RFC 8555 §8.3) on the plain-HTTP listener.
    Http01,
}

impl fmt::Display for AcmeChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        })
    }
}

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    /// Config key of this entry, e.g. `tls.certificates[0]`, for messages.
    pub key_path: String,
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[limits]`: what one client, and everyone together, may use.
///
/// A "client" is the client IP address (`ConnInfo::client`, which a trusted PROXY header may
/// set); IPv6 clients are grouped by their /64, since one host commonly owns a whole /64.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Sustained requests per second per client (token bucket refill rate, may be fractional);
    /// 0 turns the per-client rate limit off.
    pub per_client_rps: f64,
    /// Requests a client may send at once before the rate applies (bucket size).
    pub per_client_burst: u32,
    /// Client networks never limited (neither rate nor per-client connections).
    pub allow: Vec<IpNet>,
    /// Open connections per client; 0 means no per-client cap.
    pub per_client_connections: u32,
    /// Open connections in total (HTTPS and HTTP listeners); past it, accepting pauses.
    pub max_connections: usize,
    /// Requests being served at once; past it, requests are answered 503 at once.
    pub max_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_client_rps: 20.0,
            per_client_burst: 50,
            allow: Vec::new(),
            per_client_connections: 100,
            max_connections: 20_000,
            max_in_flight: 4096,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin listener address.
    pub listen: SocketAddr,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `info,trackproxy=debug`.
    pub level: String,
    /// Whether access logs include query strings (tracking tokens identify recipients).
    pub query: bool,
}

/// `[doctor]`: settings of `trackproxy doctor`.
#[derive(Debug, Clone, Default)]
pub struct DoctorConfig {
    /// This proxy's public name or address: each branded host's DNS should reach it.
    pub expect: Option<Expect>,
}

/// Where a branded host's DNS should lead: a name in its CNAME chain, or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A DNS name (lower case, no trailing dot), e.g. `proxy.example.net`.
    Name(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl Expect {
    /// Parses a name or an IP address; `None` if it is neither.
    #[must_use]
    pub fn parse(s: &str) -> Option<Expect> {
        let s = s.trim();
        if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse() {
            return Some(Expect::Ip(ip));
        }
        normalize_host_name(s).map(Expect::Name)
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Name(n) => f.write_str(n),
            Expect::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// One configuration problem: which key, where it came from, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `server.https_listen` or `hosts[2].name`; empty for file-level problems.
    pub key: String,
    /// The file the value came from, or `environment variable TRACKPROXY__…`.
    pub origin: String,
    /// What is wrong, and where useful how to fix it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Problem>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

impl Errors {
    /// A single file-level problem.
    pub fn one(
        origin: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Errors(vec![Problem {
            key: key.into(),
            origin: origin.into(),
            message: message.into(),
        }])
    }
}

/// Where to read the configuration from.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    /// A TOML file.
    File(&'a Path),
    /// The compiled-in default ([`EMBEDDED_DEFAULT`]).
    Embedded,
    /// TOML text (tests); the label names it in messages.
    Text {
        /// Name used in messages.
        label: &'a str,
        /// TOML content.
        toml: &'a str,
    },
}

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
    let (label, builder) = match source {
        Source::File(path) => {
            let label = path.display().to_string();
            if !path.is_file() {
                let why = if path.exists() {
                    "is not a regular file"
                } else {
                    "not found"
                };
                return Err(Errors::one(label, "", format!("configuration file {why}")));
            }
            let b = config::Config::builder()
                .add_source(config::File::from(*path).format(config::FileFormat::Toml));
            (label, b)
        }
        Source::Embedded => (
            EMBEDDED_LABEL.to_owned(),
            config::Config::builder().add_source(config::File::from_str(
                EMBEDDED_DEFAULT,
                config::FileFormat::Toml,
            )),
        ),
        Source::Text { label, toml } => (
            (*label).to_owned(),
            config::Config::builder()
                .add_source(config::File::from_str(toml, config::FileFormat::Toml)),
        ),
    };
    let env = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .source(env);
    let built = builder.add_source(env).build().map_err(|e| {
        let message = match e {
            config::ConfigError::FileParse { cause, .. } => format!("not valid TOML: {cause}"),
            other => other.to_string(),
        };
        Errors::one(label.clone(), "", message)
    })?;
    let ValueKind::Table(root) = built.cache.kind else {
        return Err(Errors::one(label, "", "expected a table at the top level"));
    };
    let mut r = Reader {
        file: label.clone(),
        problems: Vec::new(),
    };
    let cfg = r.config(root, label);
    if r.problems.is_empty() {
        Ok(cfg)
    } else {
        Err(Errors(r.problems))
    }
}

/// Walks the untyped tree, recording problems and falling back to defaults so that every
/// problem is found in one pass.
struct Reader {
    file: String,
    problems: Vec<Problem>,
}

/// One table being read; keys are removed as they are read, what is left is unknown.
struct Table {
    path: String,
    map: Map<String, Value>,
}

impl Table {
    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

impl Reader {
    fn origin_of(&self, value: Option<&Value>, key: &str) -> String {
        match value.and_then(Value::origin) {
            Some("the environment") => format!(
                "environment variable {ENV_PREFIX}{ENV_SEPARATOR}{}",
                key.to_uppercase().replace('.', ENV_SEPARATOR)
            ),
            // There is only one file source: name it as the user did (the `config` crate
            // records some paths relative to the working directory).
            _ => self.file.clone(),
        }
    }

    fn problem(&mut self, value: Option<&Value>, key: &str, message: impl Into<String>) {
        let origin = self.origin_of(value, key);
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
        key: &str,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let v = t.map.shift_remove(key)?;
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
    fn table(&mut self, parent: &mut Table, key: &str) -> Table {
        let path = parent.key(key);
        let map = match parent.map.shift_remove(key) {
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
        Table { path, map }
    }

    /// Takes an array of tables (`[[hosts]]`).
    fn tables(&mut self, parent: &mut Table, key: &str) -> Vec<Table> {
        let path = parent.key(key);
        match parent.map.shift_remove(key) {
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
                        Some(Table { path: p, map })
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

    /// Reports every key not read from `t`.
    fn finish(&mut self, t: Table, known: &[&str]) {
        let Table { path, map } = t;
        let t = Table {
            path,
            map: Map::new(),
        };
        for (k, v) in map {
            let full = t.key(&k);
            self.problem(
                Some(&v),
                &full,
                format!("unknown key (known keys here: {})", known.join(", ")),
            );
        }
    }

    fn config(&mut self, root: Map<String, Value>, origin: String) -> Config {
        let mut root = Table {
            path: String::new(),
            map: root,
        };
        let server = self.server(&mut root);
        let upstream = self.upstream(&mut root);
        let hosts = self.hosts(&mut root, &upstream.url);
        let tls = self.tls(&mut root);
        let limits = self.limits(&mut root);
        let admin = self.admin(&mut root);
        let log = self.log(&mut root);
        let doctor = self.doctor(&mut root);
        self.finish(
            root,
            &[
                "server", "upstream", "hosts", "tls", "limits", "admin", "log", "doctor",
            ],
        );
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
                .get(&mut t, "trusted_proxies", |v| list(v, ip_net))
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
        self.finish(
            t,
            &[
                "https_listen",
                "http_listen",
                "http_mode",
                "proxy_protocol",
                "trusted_proxies",
                "drain_delay",
                "shutdown_grace",
                "handshake_timeout",
                "header_read_timeout",
                "idle_timeout",
                "max_header_bytes",
                "max_headers",
                "h2_max_concurrent_streams",
            ],
        );
        s
    }

    fn upstream(&mut self, root: &mut Table) -> UpstreamConfig {
        let mut t = self.table(root, "upstream");
        let u = UpstreamConfig {
            url: self
                .get(&mut t, "url", upstream_url)
                .unwrap_or_else(default_upstream),
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
        self.finish(
            t,
            &[
                "url",
                "connect_timeout",
                "response_timeout",
                "ca_file",
                "pool_idle_timeout",
                "pool_max_idle",
            ],
        );
        u
    }

    fn hosts(&mut self, root: &mut Table, default: &UpstreamUrl) -> Vec<HostConfig> {
        let mut seen = HashSet::new();
        let mut hosts = Vec::new();
        for mut t in self.tables(root, "hosts") {
            let name_key = t.key("name");
            let raw_name = t.map.get("name").cloned();
            let name = self.get(&mut t, "name", host_name);
            let upstream = self
                .get(&mut t, "upstream", upstream_url)
                .unwrap_or_else(|| default.clone());
            let owner_record = self.get(&mut t, "owner_record", host_name);
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
                    owner_record,
                }),
                None if raw_name.is_none() => {
                    self.problem(None, &name_key, "required: the branded host name");
                }
                None => {}
            }
            self.finish(t, &["name", "upstream", "owner_record"]);
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
            self.finish(c, &["cert", "key"]);
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
        let acme = t
            .map
            .contains_key("acme")
            .then(|| self.acme(&mut t))
            .flatten();
        self.finish(
            t,
            &["self_signed", "certificates", "watch_interval", "acme"],
        );
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
                .get(&mut t, "allow", |v| list(v, ip_net))
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
        self.finish(
            t,
            &[
                "per_client_rps",
                "per_client_burst",
                "allow",
                "per_client_connections",
                "max_connections",
                "max_in_flight",
            ],
        );
        l
    }

    fn acme(&mut self, tls: &mut Table) -> Option<AcmeConfig> {
        let mut t = self.table(tls, "acme");
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
        self.finish(
            t,
            &[
                "directory",
                "contact",
                "cache_dir",
                "challenge",
                "ca_file",
                "backoff_initial",
                "backoff_max",
            ],
        );
        Some(AcmeConfig {
            directory: directory?,
            contact,
            cache_dir: cache_dir?,
            challenge,
            ca_file,
            backoff_initial,
            backoff_max,
        })
    }

    fn admin(&mut self, root: &mut Table) -> AdminConfig {
        let mut t = self.table(root, "admin");
        let a = AdminConfig {
            listen: self
                .get(&mut t, "listen", socket_addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
        };
        self.finish(t, &["listen"]);
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
        self.finish(t, &["format", "level", "query"]);
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
        self.finish(t, &["expect"]);
        d
    }
}

fn default_upstream() -> UpstreamUrl {
    UpstreamUrl {
        scheme: Scheme::HTTPS,
        authority: Authority::from_static("sendgrid.net"),
    }
}

fn usize_from(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn u32_from(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn string(v: &Value) -> Result<String, String> {
    match &v.kind {
        ValueKind::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, found {}", kind_name(other))),
    }
}

fn kind_name(k: &ValueKind) -> &'static str {
    match k {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

fn boolean(v: &Value) -> Result<bool, String> {
    match &v.kind {
        ValueKind::Boolean(b) => Ok(*b),
        ValueKind::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("expected true or false, found {s:?}")),
        },
        other => Err(format!(
            "expected true or false, found {}",
            kind_name(other)
        )),
    }
}

fn uint_in(v: &Value, min: u64, max: u64) -> Result<u64, String> {
    let n = match &v.kind {
        ValueKind::I64(n) => u64::try_from(*n).map_err(|_| format!("must be ≥ {min}"))?,
        ValueKind::U64(n) => *n,
        ValueKind::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("expected a whole number, found {s:?}"))?,
        other => {
            return Err(format!(
                "expected a whole number, found {}",
                kind_name(other)
            ));
        }
    };
    if n < min || n > max {
        return Err(format!("{n} is out of range ({min}..={max})"));
    }
    Ok(n)
}

/// A rate per second: 0 (off), or from one per day up to `max`.
fn rate(v: &Value, max: f64) -> Result<f64, String> {
    #[allow(clippy::cast_precision_loss)] // config integers are far below 2^52
    let n = match &v.kind {
        ValueKind::Float(f) => *f,
        ValueKind::I64(n) => *n as f64,
        ValueKind::U64(n) => *n as f64,
        ValueKind::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("expected a number, found {s:?}"))?,
        other => return Err(format!("expected a number, found {}", kind_name(other))),
    };
    let min = 1.0 / 86_400.0;
    if n == 0.0 || (n.is_finite() && (min..=max).contains(&n)) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is out of range: 0 (off), or from {min:.6} (one per day) to {max}"
        ))
    }
}

fn one_of<T: Copy>(v: &Value, options: &[(&str, T)]) -> Result<T, String> {
    let s = string(v)?;
    options
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(_, x)| *x)
        .ok_or_else(|| {
            let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
            format!("expected one of {}, found {s:?}", names.join(", "))
        })
}

fn socket_addr(v: &Value) -> Result<SocketAddr, String> {
    let s = string(v)?;
    s.trim().parse().map_err(|_| {
        format!(
            "expected an address with a port such as \"0.0.0.0:443\" or \"[::]:443\", found {s:?}"
        )
    })
}

fn duration(v: &Value) -> Result<Duration, String> {
    let s = string(v)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("expected a duration such as \"30s\" or \"1m 30s\", found {s:?} ({e})")
    })
}

fn positive_duration(v: &Value) -> Result<Duration, String> {
    let d = duration(v)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn ip_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("expected an IP address or CIDR such as \"10.0.0.0/8\", found {s:?}"))
}

/// A list of strings; a single string (from the environment) is split on commas.
fn list<T>(v: &Value, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    match &v.kind {
        ValueKind::Array(items) => items.iter().map(|i| item(&string(i)?)).collect(),
        ValueKind::String(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(item)
            .collect(),
        other => Err(format!(
            "expected a list of strings, found {}",
            kind_name(other)
        )),
    }
}

fn path(v: &Value) -> Result<PathBuf, String> {
    let s = string(v)?;
    if s.trim().is_empty() {
        return Err("expected a file path, found an empty string".into());
    }
    Ok(PathBuf::from(s))
}

fn readable_file(v: &Value) -> Result<PathBuf, String> {
    let p = path(v)?;
    std::fs::File::open(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    Ok(p)
}

/// An ACME directory URL: `https://` with a host (RFC 8555 §6.1 requires HTTPS).
fn acme_directory(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let s = s.trim();
    let uri: http::Uri = s.parse().map_err(|e| {
        format!(
            "expected a URL such as \"https://acme-v02.api.letsencrypt.org/directory\", \
             found {s:?} ({e})"
        )
    })?;
    if uri.scheme() != Some(&Scheme::HTTPS) || uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "the directory URL must start with https:// and name a host, found {s:?}"
        ));
    }
    Ok(s.to_owned())
}

/// An ACME account contact: `mailto:` and an address.
fn mailto(s: &str) -> Result<String, String> {
    let s = s.trim();
    match s.strip_prefix("mailto:") {
        Some(addr) if addr.contains('@') && !addr.contains(char::is_whitespace) => Ok(s.to_owned()),
        _ => Err(format!(
            "expected a contact such as \"mailto:ops@example.com\", found {s:?}"
        )),
    }
}

fn upstream_url(v: &Value) -> Result<UpstreamUrl, String> {
    let s = string(v)?;
    let uri: http::Uri = s.trim().parse().map_err(|e| {
        format!("expected a URL such as \"https://sendgrid.net\", found {s:?} ({e})")
    })?;
    let scheme = uri
        .scheme()
        .filter(|sc| **sc == Scheme::HTTPS || **sc == Scheme::HTTP)
        .cloned()
        .ok_or_else(|| format!("the URL must start with https:// (or http://), found {s:?}"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("the URL has no host: {s:?}"))?;
    if authority.as_str().contains('@') {
        return Err(format!("the URL must not contain credentials: {s:?}"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "the URL must not have a path or query (requests keep their own): {s:?}"
        ));
    }
    Ok(UpstreamUrl { scheme, authority })
}

/// A branded host name: a DNS name, stored lower case without a trailing dot.
fn host_name(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    normalize_host_name(&s).ok_or_else(|| {
        format!("{s:?} is not a host name (letters, digits, '-' and '.', no port or scheme)")
    })
}

/// Lower-cases a DNS host name and strips one trailing dot; `None` if it is not a valid name.
#[must_use]
pub fn normalize_host_name(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
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
        assert_eq!(cfg.server.trusted_proxies.len(), 2);

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
        assert_eq!(cfg.limits.allow.len(), 2);
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
    fn rates_may_be_fractional() {
        let ok = |s: &str| rate(&Value::new(None, s), 1000.0);
        assert!((ok("0.5").unwrap() - 0.5).abs() < f64::EPSILON);
        assert!((ok("20").unwrap() - 20.0).abs() < f64::EPSILON);
        assert!(ok("0").is_ok());
        assert!(ok("0.000001").is_err(), "less than one a day");
        assert!(ok("1001").is_err());
        assert!(ok("NaN").is_err());
        assert!(ok("fast").is_err());
    }

    #[test]
    fn upstream_urls() {
        let ok = |s: &str| upstream_url(&Value::new(None, s)).map(|u| u.to_string());
        assert_eq!(ok("https://sendgrid.net").unwrap(), "https://sendgrid.net");
        assert_eq!(ok("https://sendgrid.net/").unwrap(), "https://sendgrid.net");
        assert_eq!(
            ok("http://127.0.0.1:9000").unwrap(),
            "http://127.0.0.1:9000"
        );
        assert!(ok("https://sendgrid.net/x").is_err());
        assert!(ok("sendgrid.net").is_err());
        assert!(ok("https://u:p@sendgrid.net").is_err());
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
    fn host_names_are_normalized() {
        assert_eq!(
            normalize_host_name("URL1234.Example.COM.").as_deref(),
            Some("url1234.example.com")
        );
        assert_eq!(normalize_host_name("a.example:443"), None);
        assert_eq!(normalize_host_name("-a.example"), None);
        assert_eq!(normalize_host_name(""), None);
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
}
