//! Test harness shared by the integration tests: a test CA, a local upstream that behaves like
//! sendgrid.net and records what it received, the proxy in-process on `127.0.0.1:0`, and
//! clients (reqwest, raw TLS bytes, hyper HTTP/2, curl).
//!
//! Everything listens on loopback only and shuts down when dropped.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::pedantic)]

pub mod dns;
pub mod haproxy;
pub mod metrics;
pub mod pebble;
pub mod website;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The 43-byte transparent GIF sendgrid.net answers `/wf/open` with.
pub const GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// Where `/ls/click` redirects to.
pub const LANDING: &str = "https://www.example.com/landing?utm_source=sendgrid&x=%2F%20";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Key algorithm for a leaf certificate.
#[derive(Debug, Clone, Copy)]
pub enum KeyAlg {
    EcdsaP256,
    Rsa2048,
    Ed25519,
}

/// A throw-away certificate authority.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub cert_pem: String,
    pub ca_file: PathBuf,
    key: KeyPair,
    params: CertificateParams,
}

impl TestCa {
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "trackproxy test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.clone().self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        TestCa {
            dir,
            cert_pem: cert.pem(),
            ca_file,
            key,
            params,
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        rustls::pki_types::pem::PemObject::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }

    /// Issues a leaf for `names`, valid from `not_before_days` to `not_after_days` relative to
    /// now; returns (chain PEM with the CA appended, key PEM).
    pub fn issue_with(
        &self,
        names: &[&str],
        alg: KeyAlg,
        not_before_days: i64,
        not_after_days: i64,
    ) -> (String, String) {
        let key = match alg {
            KeyAlg::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlg::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyAlg::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        }
        .unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(not_before_days);
        params.not_after = now + time::Duration::days(not_after_days);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        )
    }

    pub fn issue(&self, names: &[&str], alg: KeyAlg) -> (String, String) {
        self.issue_with(names, alg, -1, 90)
    }

    /// Issues a leaf and writes it to `<file_stem>.crt` / `.key` in the CA's directory.
    pub fn write_leaf(&self, file_stem: &str, names: &[&str], alg: KeyAlg) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names, alg);
        self.write_files(file_stem, &cert, &key)
    }

    pub fn write_files(&self, file_stem: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let c = self.dir.path().join(format!("{file_stem}.crt"));
        let k = self.dir.path().join(format!("{file_stem}.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    /// A TLS server configuration (ALPN `http/1.1`) with a fresh leaf for `names`: for the local
    /// upstream and websites the tests run.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(names, KeyAlg::EcdsaP256);
        let certs: Vec<CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = rustls::pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query exactly as received.
    pub target: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// SNI of the TLS connection it came on.
    pub sni: Option<String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Default)]
struct Record {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
}

/// A local stand-in for sendgrid.net: TLS with a test-CA certificate for `localhost`.
/// - `/ls/click`, `/uni/ls/click`, `/wf/click` → 302 + `Location` + two `Set-Cookie`
/// - `/wf/open` → 200, the 43-byte GIF
/// - `/slow?ms=N` → waits N ms, then 200
/// - anything else → 200 `ok`
///
/// Every response also carries hop-by-hop headers the proxy must drop.
pub struct Upstream {
    pub addr: SocketAddr,
    /// `https://localhost:PORT`
    pub url: String,
    record: Arc<Record>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(ca: &TestCa) -> Self {
        Self::start_with_names(ca, &["localhost"]).await
    }

    /// Like [`Upstream::start`], with a certificate for `names` (e.g. `localhost` plus a
    /// name that a test DNS server resolves to 127.0.0.1).
    pub async fn start_with_names(ca: &TestCa, names: &[&str]) -> Self {
        Self::spawn(Some(TlsAcceptor::from(ca.server_config(names))), None).await
    }

    /// Like [`Upstream::start`], closing keep-alive connections that stay idle for `idle`
    /// (as real servers do, SendGrid's included).
    pub async fn start_closing_idle_after(ca: &TestCa, idle: Duration) -> Self {
        Self::spawn(
            Some(TlsAcceptor::from(ca.server_config(&["localhost"]))),
            Some(idle),
        )
        .await
    }

    /// Plain-HTTP variant (`http://127.0.0.1:PORT`).
    pub async fn start_plain() -> Self {
        Self::spawn(None, None).await
    }

    async fn spawn(tls: Option<TlsAcceptor>, idle_close: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Record::default());
        let url = if tls.is_some() {
            format!("https://localhost:{}", addr.port())
        } else {
            format!("http://127.0.0.1:{}", addr.port())
        };
        let rec = record.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                rec.connections.fetch_add(1, Ordering::SeqCst);
                let rec = rec.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            let Ok(s) = acc.accept(stream).await else {
                                return;
                            };
                            let sni = s.get_ref().1.server_name().map(str::to_owned);
                            serve_upstream(TokioIo::new(s), rec, sni, idle_close).await;
                        }
                        None => serve_upstream(TokioIo::new(stream), rec, None, idle_close).await,
                    }
                });
            }
        });
        Upstream {
            addr,
            url,
            record,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.record.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("upstream received no request")
    }

    pub fn count(&self) -> usize {
        self.record.seen.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.record.connections.load(Ordering::SeqCst)
    }
}

async fn serve_upstream<I>(
    io: TokioIo<I>,
    rec: Arc<Record>,
    sni: Option<String>,
    idle_close: Option<Duration>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let rec = rec.clone();
        let sni = sni.clone();
        async move {
            let (parts, mut body) = req.into_parts();
            let mut body_len = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            body_len += d.len() as u64;
                        }
                    }
                    Err(_) => break,
                }
            }
            let target = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            rec.seen.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                target: target.clone(),
                version: parts.version,
                headers: parts.headers.clone(),
                body_len,
                sni,
            });
            Ok::<_, std::convert::Infallible>(upstream_response(&target, body_len).await)
        }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    if let Some(idle) = idle_close {
        // hyper's header-read timer also runs while a keep-alive connection waits for its
        // next request: the connection is closed after `idle`.
        b.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(idle);
    }
    let _ = b.serve_connection(io, svc).await;
}

async fn upstream_response(target: &str, body_len: u64) -> Response<Full<Bytes>> {
    let path = target.split('?').next().unwrap_or("");
    let query: HashMap<&str, &str> = target
        .split_once('?')
        .map(|(_, q)| q.split('&').filter_map(|kv| kv.split_once('=')).collect())
        .unwrap_or_default();
    let mut b = Response::builder()
        // hop-by-hop fields the proxy must remove on the way back
        .header("connection", "x-upstream-hop")
        .header("x-upstream-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("server", "stub-sendgrid");
    let body: Bytes = if matches!(path, "/ls/click" | "/uni/ls/click" | "/wf/click") {
        b = b
            .status(StatusCode::FOUND)
            .header("location", LANDING)
            .header("set-cookie", "sg_a=1; Path=/; Secure")
            .header("set-cookie", "sg_b=2; Path=/; HttpOnly");
        Bytes::from_static(b"<a href=\"https://www.example.com/landing\">Found</a>")
    } else if path == "/wf/open" {
        b = b.status(StatusCode::OK).header("content-type", "image/gif");
        Bytes::from_static(GIF)
    } else if path == "/slow" {
        let ms = query.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Bytes::from_static(b"slow ok")
    } else if path == "/big" {
        let n = query.get("bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
        Bytes::from(big_body(n))
    } else {
        Bytes::from(format!("ok {body_len}"))
    };
    b.body(Full::new(body)).unwrap()
}

/// The body the stand-in upstream answers `/big?bytes=n` with: `n` bytes of a pattern that
/// shows a lost, repeated or reordered piece.
pub fn big_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A loopback port nothing listens on now, for a program the test starts (Pebble, dnsmasq,
/// HAProxy) to bind by number. It lies below Linux's ephemeral range (32768–60999): a port from
/// `bind(0)` is released before the program binds it, and meanwhile the kernel could give it to
/// any outgoing connection or other `bind(0)` in the tests (seen in CI: Pebble's "address already
/// in use"). Ports here are handed out once per test process, from an offset that differs
/// between processes. `udp`: free for UDP as well (DNS).
pub fn unused_port(udp: bool) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 10_000;
    const SPAN: usize = 22_000;
    let offset = (std::process::id() as usize).wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (offset + n) % SPAN).unwrap();
        let tcp_free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if tcp_free && (!udp || std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()) {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}

/// A proxy running in-process on `127.0.0.1:0`.
pub struct Proxy {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Which hosts have a certificate, and each ACME host's status.
    pub resolver: Arc<trackproxy::tls::SniResolver>,
    /// Applies a new configuration (what SIGHUP does in the binary).
    pub reloader: trackproxy::Reloader,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), trackproxy::Error>>>,
}

/// Parses test TOML (no environment overrides).
pub fn config(toml: &str) -> Result<trackproxy::config::Config, trackproxy::config::Errors> {
    trackproxy::config::load_with_env(
        &trackproxy::config::Source::Text {
            label: "test.toml",
            toml,
        },
        Some(Default::default()),
    )
}

/// Listeners on ephemeral loopback ports.
pub async fn bind_listeners() -> trackproxy::server::Listeners {
    trackproxy::server::Listeners {
        https: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    }
}

impl Proxy {
    /// Starts the proxy with `toml` (listen addresses are ignored: ephemeral loopback ports).
    pub async fn start(toml: &str) -> Self {
        Self::try_start(toml).await.unwrap()
    }

    pub async fn try_start(toml: &str) -> Result<Self, trackproxy::config::Errors> {
        Self::try_start_on(bind_listeners().await, toml)
    }

    /// Builds the app `toml` describes without serving it (to reach into it before start).
    pub fn build(toml: &str) -> Result<trackproxy::App, trackproxy::config::Errors> {
        trackproxy::App::build(&config(toml)?)
    }

    /// Starts the proxy on listeners bound beforehand (so Pebble can be told their ports).
    pub fn start_on(listeners: trackproxy::server::Listeners, toml: &str) -> Self {
        Self::try_start_on(listeners, toml).unwrap()
    }

    pub fn try_start_on(
        listeners: trackproxy::server::Listeners,
        toml: &str,
    ) -> Result<Self, trackproxy::config::Errors> {
        Ok(Self::serve_on(Self::build(toml)?, listeners))
    }

    /// Serves a built app on ephemeral loopback ports.
    pub async fn start_app(app: trackproxy::App) -> Self {
        Self::serve_on(app, bind_listeners().await)
    }

    fn serve_on(app: trackproxy::App, listeners: trackproxy::server::Listeners) -> Self {
        let https = listeners.https.local_addr().unwrap();
        let http = listeners.http.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let resolver = app.resolver().clone();
        let reloader = app.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(trackproxy::serve(app, listeners, async {
            let _ = rx.await;
        }));
        Proxy {
            https,
            http,
            admin,
            resolver,
            reloader,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Applies new TOML to the running proxy.
    pub async fn reload(&self, toml: &str) -> Result<(), trackproxy::ReloadError> {
        self.reloader.reload(config(toml)?).await
    }

    /// Sends the shutdown signal (like SIGTERM).
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("proxy did not stop")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A configuration with file certificates for `hosts` forwarding to `upstream`.
pub struct Setup {
    pub ca: TestCa,
    pub upstream: Upstream,
}

impl Setup {
    pub async fn new() -> Self {
        let ca = TestCa::new();
        let upstream = Upstream::start(&ca).await;
        Setup { ca, upstream }
    }

    /// TOML for `hosts`, all covered by one certificate from the test CA; `extra` is appended.
    pub fn toml(&self, hosts: &[&str], extra: &str) -> String {
        let (cert, key) = self.ca.write_leaf("proxy", hosts, KeyAlg::EcdsaP256);
        toml_with(
            hosts,
            &self.upstream.url,
            &self.ca.ca_file,
            &[(cert, key)],
            extra,
        )
    }
}

/// Builds a proxy TOML: hosts, upstream with the CA trusted, certificate files, extra text.
pub fn toml_with(
    hosts: &[&str],
    upstream: &str,
    ca_file: &Path,
    certs: &[(PathBuf, PathBuf)],
    extra: &str,
) -> String {
    let mut s = format!(
        "[upstream]\nurl = {upstream:?}\nca_file = {:?}\nresponse_timeout = \"5s\"\n\n",
        ca_file.display().to_string()
    );
    for h in hosts {
        s.push_str(&format!("[[hosts]]\nname = {h:?}\n\n"));
    }
    for (c, k) in certs {
        s.push_str(&format!(
            "[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n\n",
            c.display().to_string(),
            k.display().to_string()
        ));
    }
    s.push_str("[log]\nlevel = \"debug\"\n");
    s.push_str(extra);
    s
}

/// A reqwest client trusting the CA, resolving `hosts` to the proxy's HTTPS listener.
pub fn client(ca: &TestCa, proxy: &Proxy, hosts: &[&str], http2: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(20));
    for h in hosts {
        b = b.resolve(h, proxy.https);
    }
    b = if http2 {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    b.build().unwrap()
}

/// Like [`client`] (HTTP/1.1), with connections from the loopback address `local` (the whole
/// 127.0.0.0/8 is loopback: each address is another client to the proxy).
pub fn client_from(ca: &TestCa, proxy: &Proxy, hosts: &[&str], local: &str) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .http1_only();
    for h in hosts {
        b = b.resolve(h, proxy.https);
    }
    b.build().unwrap()
}

/// A TLS connection (ALPN `http/1.1`) from the loopback address `local`, with `config` (reuse
/// one config to resume sessions).
pub async fn tls_connect_with(
    config: Arc<rustls::ClientConfig>,
    local: &str,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(local, addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// Sends one HTTP/1.1 request on an open connection and reads one response with a
/// `Content-Length` body; returns (status, head, body). The connection stays open.
pub async fn h1_exchange<S>(s: &mut S, request: &str) -> (u16, String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (status_of(&head), head, body);
            }
        }
    }
}

/// Opens a TLS connection to `addr` with `sni` and ALPN `http/1.1`.
pub async fn tls_connect(
    ca: &TestCa,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// Sends raw bytes over TLS with `sni` and returns everything the server sent until it closed
/// the connection (requests should carry `Connection: close`).
pub async fn raw_tls(ca: &TestCa, addr: SocketAddr, sni: &str, request: &[u8]) -> String {
    let mut s = tls_connect(ca, addr, sni).await.expect("TLS handshake");
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}

/// Sends raw bytes over plain TCP and returns the answer.
pub async fn raw_plain(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}

async fn read_all<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of a raw HTTP/1.x response.
pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

/// An HTTP/2 connection over TLS (ALPN h2) with SNI `sni`, via hyper's client, so request
/// targets are sent exactly as given.
pub async fn h2_connect(
    ca: &TestCa,
    addr: SocketAddr,
    sni: &str,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(ca.client_config(&[b"h2"]));
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// Runs curl (a real client) and returns (stdout, stderr, success).
pub async fn curl(args: &[&str]) -> (String, String, bool) {
    let out = tokio::process::Command::new("curl")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl must be installed (apt-get install -y curl)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// A loopback port with nothing listening.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The `trackproxy` binary running as a child process, listening on ephemeral loopback ports
/// (set through `TRACKPROXY__…` overrides), its JSON log collected line by line.
pub struct BinProxy {
    pub child: tokio::process::Child,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl BinProxy {
    /// Starts `trackproxy serve` (with `--config` if given) and waits until it listens.
    pub async fn start(config: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_trackproxy"));
        cmd.arg("serve");
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env_remove("RUST_LOG")
            .env("TRACKPROXY__SERVER__HTTPS_LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__SERVER__HTTP_LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__ADMIN__LISTEN", "127.0.0.1:0")
            .env("TRACKPROXY__LOG__FORMAT", "json");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel::<(SocketAddr, SocketAddr, SocketAddr)>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut tx = Some(tx);
            let mut r = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let v = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default();
                if v["message"] == "trackproxy listening" {
                    let https = v["https"].as_str().unwrap().parse().unwrap();
                    let http = v["http"].as_str().unwrap().parse().unwrap();
                    let admin = v["admin"].as_str().unwrap().parse().unwrap();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((https, http, admin));
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let lines = log.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut r = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = r.next_line().await {
                lines.lock().unwrap().push(line);
            }
        });
        let (https, http, admin) = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .unwrap_or_else(|_| panic!("trackproxy did not start: {:?}", log.lock().unwrap()))
            .unwrap_or_else(|_| panic!("trackproxy exited: {:?}", log.lock().unwrap()));
        BinProxy {
            child,
            https,
            http,
            admin,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends a signal with kill(1).
    pub async fn signal(&self, sig: &str) {
        let st = tokio::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .await
            .unwrap();
        assert!(st.success());
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The JSON log lines for which `pred` holds, once at least `n` of them have arrived
    /// (the log is written asynchronously); panics after 10 s.
    pub async fn wait_for_lines(
        &self,
        n: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        for _ in 0..1000 {
            let found: Vec<serde_json::Value> = self
                .log_lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| pred(v))
                .collect();
            if found.len() >= n {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} matching log lines: {:#?}", self.log_lines());
    }
}

/// A TCP connection from a chosen loopback source address (the whole 127.0.0.0/8 is loopback,
/// so tests can play several clients).
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    s.connect(to).await
}

/// Like [`raw_tls`], from a chosen source address.
pub async fn raw_tls_from(
    ca: &TestCa,
    from: &str,
    addr: SocketAddr,
    sni: &str,
    request: &[u8],
) -> String {
    let tcp = connect_from(from, addr).await.unwrap();
    let connector = TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let mut s = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}

/// Like [`raw_plain`], from a chosen source address.
pub async fn raw_plain_from(from: &str, addr: SocketAddr, request: &[u8]) -> String {
    let mut s = connect_from(from, addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}
