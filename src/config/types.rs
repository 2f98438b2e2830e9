//! The validated configuration: the typed values every other module works with, and the rule
//! for what a host name is ([`normalize_host_name`]). Nothing here sees the untyped tree.

use crate::client::Cidrs;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use super::esp::Esp;

/// The validated configuration every other module works with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a path, or [`EMBEDDED_LABEL`](super::EMBEDDED_LABEL));
    /// used in messages.
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
    pub trusted_proxies: Cidrs,
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
    /// Default ESP preset for every host (`upstream.esp`; `sendgrid` unless set).
    pub esp: &'static Esp,
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
    /// Upstream for this host: its own `upstream`, else its `esp` preset's, else the
    /// `[upstream]` default.
    pub upstream: UpstreamUrl,
    /// The ESP preset whose rules apply (`esp`, else `upstream.esp`, else `sendgrid`).
    pub esp: &'static Esp,
    /// Which request cookies reach the ESP.
    pub forward_cookies: ForwardCookies,
    /// Path prefixes forwarded (`paths`); `None`: every path. Others get 404.
    pub paths: Option<Vec<String>>,
    /// Directory with the app-link files served for this host (`files`).
    pub files: Option<PathBuf>,
    /// The ESP's ownership record for this host's branding (`SendGrid`'s numeric CNAME, e.g.
    /// `12345.example.com`), lower case; checked by `trackproxy doctor`.
    pub owner_record: Option<String>,
}

/// `[[hosts]] forward_cookies`: which cookies of a request reach the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardCookies {
    /// Every cookie (the default).
    All,
    /// None: `Cookie` is removed.
    None,
    /// Only the cookies with these names (case-sensitive, RFC 6265 §5.4).
    Only(Vec<String>),
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
    /// `store = "postgres://…"`: the account key, certificates, back-off and pending
    /// challenges shared by every replica through PostgreSQL; `None`: `cache_dir` only.
    pub store: Option<StoreConfig>,
}

/// The PostgreSQL store of `[tls.acme]` (`store`, `store_password[_file]`, `store_key[_file]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `postgres://user@host:port/database?…`, without a password.
    pub url: String,
    /// The database password (`store_password_file`, or `store_password` from the environment).
    pub password: Option<Secret>,
    /// The 32-byte key that encrypts private keys in the store (`store_key_file` / `store_key`).
    pub key: Secret,
}

/// A secret read from the configuration: never printed (`Debug` shows only its length).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(redacted, {} bytes)", self.0.len())
    }
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
    pub allow: Cidrs,
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
            allow: Cidrs::default(),
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
}
