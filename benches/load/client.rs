//! The load generator: tokio + rustls + hyper's client, one task per connection (or stream).
//!
//! TLS session resumption is disabled in its rustls client (`Resumption::disabled()`), so every
//! new connection is a full handshake; each handshake's kind is checked on the client side
//! (`handshake_kind()`). The client offers what browsers offer first — TLS 1.3 with
//! `TLS_AES_128_GCM_SHA256` — and X25519 key exchange only, which every proxy under test
//! supports (nginx 1.22 and HAProxy 2.6 with OpenSSL 3.0 have no post-quantum hybrid), so all do
//! the same crypto. Its sockets set `TCP_NODELAY`, except in `h1-new-connection-nagle`, which
//! is a client that leaves Nagle's algorithm on (Python's `ssl` over
//! `socket.create_connection`, for one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::pki::HOST;
use crate::proxies::Handshakes;
use crate::upstream::LANDING;

/// One of the load scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// HTTP/1.1, 64 keep-alive connections.
    #[value(name = "h1-keepalive")]
    H1Keepalive,
    /// HTTP/1.1, every request on a new connection with a full TLS handshake, 64 clients.
    #[value(name = "h1-new-connection")]
    H1NewConnection,
    /// As `h1-new-connection`, from clients that do not set `TCP_NODELAY`, and only 8 of them:
    /// with 64 the proxy's CPU is saturated and a client waiting for a delayed ACK costs no
    /// latency (others use the CPU meanwhile), so a stall would not show.
    #[value(name = "h1-new-connection-nagle")]
    H1NewConnectionNagle,
    /// HTTP/2, 32 connections × 10 concurrent streams.
    #[value(name = "h2")]
    H2,
}

impl Scenario {
    /// All, in the order they run.
    pub(crate) const ALL: [Scenario; 4] = [
        Scenario::H1Keepalive,
        Scenario::H1NewConnection,
        Scenario::H1NewConnectionNagle,
        Scenario::H2,
    ];

    /// The name in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::H1Keepalive => "h1-keepalive",
            Scenario::H1NewConnection => "h1-new-connection",
            Scenario::H1NewConnectionNagle => "h1-new-connection-nagle",
            Scenario::H2 => "h2",
        }
    }

    /// Whether every request is on a new connection with a full handshake.
    pub(crate) fn new_connections(self) -> bool {
        matches!(
            self,
            Scenario::H1NewConnection | Scenario::H1NewConnectionNagle
        )
    }
}

const H2_CONNECTIONS: usize = 32;
const NAGLE_CLIENTS: u64 = 8;
const H2_STREAMS: usize = 10;

/// When requests count: those that complete inside `[start, end)`; nothing new starts after
/// `end`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// End of the warm-up.
    pub(crate) start: Instant,
    /// End of the measurement.
    pub(crate) end: Instant,
}

/// What one or more workers saw.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Latency of each request completed in the window, µs.
    pub(crate) latencies_us: Vec<u32>,
    /// Requests answered as expected, warm-up and stragglers after the window included (each
    /// is one line in the proxy's access log).
    pub(crate) answered: u64,
    /// Failed requests in the window (I/O errors, unexpected answers).
    pub(crate) errors: u64,
    /// The first error, for the report.
    pub(crate) first_error: Option<String>,
    /// Handshakes of every connection opened (warm-up included), client side.
    pub(crate) handshakes: Handshakes,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.answered += other.answered;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.handshakes.full += other.handshakes.full;
        self.handshakes.resumed += other.handshakes.resumed;
    }

    fn outcome(&mut self, w: &Window, t0: Instant, res: Result<(), String>) {
        let t1 = Instant::now();
        if res.is_ok() {
            self.answered += 1;
        }
        if t1 < w.start || t1 >= w.end {
            return;
        }
        match res {
            Ok(()) => {
                let us = u32::try_from(t1.duration_since(t0).as_micros()).unwrap_or(u32::MAX);
                self.latencies_us.push(us);
            }
            Err(e) => self.error(e),
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn handshake(&mut self, kind: Option<HandshakeKind>) {
        match kind {
            Some(HandshakeKind::Resumed) => self.handshakes.resumed += 1,
            _ => self.handshakes.full += 1,
        }
    }
}

/// Requests alternate between a click and an open, each with a ~450-character token.
#[derive(Clone)]
struct Requests {
    click_h1: Uri,
    open_h1: Uri,
    click_h2: Uri,
    open_h2: Uri,
    headers: HeaderMap,
}

impl Requests {
    fn new() -> Result<Self> {
        let (click, open) = crate::job::targets();
        let headers = crate::job::browser_headers();
        Ok(Requests {
            click_h1: click.parse()?,
            open_h1: open.parse()?,
            click_h2: format!("https://{HOST}{click}").parse()?,
            open_h2: format!("https://{HOST}{open}").parse()?,
            headers,
        })
    }

    fn build(&self, n: u64, version: Version, close: bool) -> (Request<Empty<Bytes>>, bool) {
        let click = n.is_multiple_of(2);
        let mut req = Request::new(Empty::new());
        *req.headers_mut() = self.headers.clone();
        if version == Version::HTTP_2 {
            *req.uri_mut() = if click { &self.click_h2 } else { &self.open_h2 }.clone();
            *req.version_mut() = Version::HTTP_2;
        } else {
            *req.uri_mut() = if click { &self.click_h1 } else { &self.open_h1 }.clone();
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_static(HOST));
            if close {
                req.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        (req, click)
    }
}

/// Checks an answer is what the upstream sends for this request.
async fn check(res: Response<Incoming>, click: bool) -> Result<(), String> {
    let status = res.status();
    let location_ok = res
        .headers()
        .get(header::LOCATION)
        .is_some_and(|l| l == LANDING);
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading body: {e}"))?
        .to_bytes();
    match (click, status) {
        (true, StatusCode::FOUND) if location_ok => Ok(()),
        (false, StatusCode::OK) if body.len() == 43 => Ok(()),
        _ => Err(format!(
            "unexpected answer {status} ({} bytes) to {}",
            body.len(),
            if click { "click" } else { "open" }
        )),
    }
}

/// The load generator for one proxy address.
#[derive(Clone)]
pub(crate) struct Client {
    addr: std::net::SocketAddr,
    name: ServerName<'static>,
    h1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
    requests: Requests,
}

fn client_config(
    roots: rustls::RootCertStore,
    alpn: &[u8],
    resume: bool,
) -> Result<Arc<ClientConfig>> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::X25519];
    // Browsers' order (Chrome, Firefox, Safari): AES-128-GCM-SHA256 first. rustls's own
    // default puts AES-256-GCM-SHA384 first, which real clients do not.
    let preferred = cipher_suite::TLS13_AES_128_GCM_SHA256;
    provider
        .cipher_suites
        .retain(|s| s.suite() != preferred.suite());
    provider.cipher_suites.insert(0, preferred);
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    if !resume {
        cfg.resumption = Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

impl Client {
    /// A client for the proxy at `addr`, trusting `roots`.
    pub(crate) fn new(addr: std::net::SocketAddr, roots: &rustls::RootCertStore) -> Result<Self> {
        Ok(Client {
            addr,
            name: ServerName::try_from(HOST)?.to_owned(),
            h1: client_config(roots.clone(), b"http/1.1", false)?,
            h2: client_config(roots.clone(), b"h2", false)?,
            requests: Requests::new()?,
        })
    }

    async fn tls(&self, cfg: &Arc<ClientConfig>, nodelay: bool) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(nodelay)?;
        Ok(TlsConnector::from(cfg.clone())
            .connect(self.name.clone(), tcp)
            .await?)
    }

    async fn h1_conn(
        &self,
        cfg: &Arc<ClientConfig>,
        nodelay: bool,
    ) -> Result<(http1::SendRequest<Empty<Bytes>>, Option<HandshakeKind>)> {
        let tls = self.tls(cfg, nodelay).await?;
        let kind = tls.get_ref().1.handshake_kind();
        let (send, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((send, kind))
    }

    /// Runs `scenario` until `w.end`.
    pub(crate) async fn run(&self, scenario: Scenario, w: Window) -> Tally {
        let mut tasks = tokio::task::JoinSet::new();
        match scenario {
            Scenario::H1Keepalive => {
                for i in 0..64 {
                    let c = self.clone();
                    tasks.spawn(async move { c.h1_keepalive(i, w).await });
                }
            }
            Scenario::H1NewConnection | Scenario::H1NewConnectionNagle => {
                let (nodelay, clients) = if scenario == Scenario::H1NewConnection {
                    (true, 64)
                } else {
                    (false, NAGLE_CLIENTS)
                };
                for i in 0..clients {
                    let c = self.clone();
                    tasks.spawn(async move { c.h1_new_connection(i, nodelay, w).await });
                }
            }
            Scenario::H2 => {
                for i in 0..H2_CONNECTIONS {
                    let c = self.clone();
                    tasks.spawn(async move { c.h2_connection(i as u64, w).await });
                }
            }
        }
        let mut total = Tally::default();
        while let Some(t) = tasks.join_next().await {
            match t {
                Ok(t) => total.merge(t),
                Err(e) => total.error(format!("load task failed: {e}")),
            }
        }
        total
    }

    async fn h1_keepalive(&self, seed: u64, w: Window) -> Tally {
        let mut t = Tally::default();
        let mut n = seed;
        let mut conn = None;
        while Instant::now() < w.end {
            let t0 = Instant::now();
            let send = match &mut conn {
                Some(s) => s,
                None => match self.h1_conn(&self.h1, true).await {
                    Ok((s, kind)) => {
                        t.handshake(kind);
                        conn.insert(s)
                    }
                    Err(e) => {
                        t.outcome(&w, t0, Err(format!("connect: {e:#}")));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            n += 1;
            let (req, click) = self.requests.build(n, Version::HTTP_11, false);
            let res = match send.send_request(req).await {
                Ok(res) => check(res, click).await,
                Err(e) => Err(format!("request: {e}")),
            };
            if res.is_err() {
                conn = None;
            }
            t.outcome(&w, t0, res);
        }
        t
    }

    async fn h1_new_connection(&self, seed: u64, nodelay: bool, w: Window) -> Tally {
        let mut t = Tally::default();
        let mut n = seed;
        while Instant::now() < w.end {
            let t0 = Instant::now();
            n += 1;
            let res = async {
                let (mut send, kind) = self
                    .h1_conn(&self.h1, nodelay)
                    .await
                    .map_err(|e| format!("connect: {e:#}"))?;
                t.handshake(kind);
                let (req, click) = self.requests.build(n, Version::HTTP_11, true);
                let res = send
                    .send_request(req)
                    .await
                    .map_err(|e| format!("request: {e}"))?;
                check(res, click).await
            }
            .await;
            t.outcome(&w, t0, res);
        }
        t
    }

    async fn h2_connection(&self, seed: u64, w: Window) -> Tally {
        let mut t = Tally::default();
        while Instant::now() < w.end {
            let t0 = Instant::now();
            let send = match self.h2_conn().await {
                Ok((s, kind)) => {
                    t.handshake(kind);
                    s
                }
                Err(e) => {
                    t.outcome(&w, t0, Err(format!("connect: {e:#}")));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let mut streams = tokio::task::JoinSet::new();
            for s in 0..H2_STREAMS as u64 {
                let send = send.clone();
                let requests = self.requests.clone();
                streams.spawn(h2_stream(send, requests, seed * 100 + s, w));
            }
            while let Some(r) = streams.join_next().await {
                match r {
                    Ok(s) => t.merge(s),
                    Err(e) => t.error(format!("stream task failed: {e}")),
                }
            }
        }
        t
    }

    async fn h2_conn(&self) -> Result<(http2::SendRequest<Empty<Bytes>>, Option<HandshakeKind>)> {
        let tls = self.tls(&self.h2, true).await?;
        let kind = tls.get_ref().1.handshake_kind();
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("the proxy did not agree to h2");
        }
        let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((send, kind))
    }

    /// Opens `n` keep-alive connections (64 at a time; HTTP/2 if `h2`), one request on each,
    /// and returns them still open.
    pub(crate) async fn open_idle(&self, n: usize, h2: bool) -> Result<Vec<IdleConn>> {
        let mut tasks = tokio::task::JoinSet::new();
        let per = n.div_ceil(64);
        for i in 0..64 {
            let count = per.min(n.saturating_sub(i * per));
            let c = self.clone();
            tasks.spawn(async move {
                let mut open = Vec::with_capacity(count);
                for k in 0..count {
                    let conn = if h2 {
                        let (mut send, _) = c.h2_conn().await?;
                        let (req, click) = c.requests.build(k as u64, Version::HTTP_2, false);
                        let res = send.send_request(req).await?;
                        check(res, click).await.map_err(anyhow::Error::msg)?;
                        IdleConn::H2(send)
                    } else {
                        let (mut send, _) = c.h1_conn(&c.h1, true).await?;
                        let (req, click) = c.requests.build(k as u64, Version::HTTP_11, false);
                        let res = send.send_request(req).await?;
                        check(res, click).await.map_err(anyhow::Error::msg)?;
                        IdleConn::H1(send)
                    };
                    open.push(conn);
                }
                anyhow::Ok(open)
            });
        }
        let mut all = Vec::with_capacity(n);
        while let Some(r) = tasks.join_next().await {
            all.extend(r.context("idle-connection task")??);
        }
        Ok(all)
    }

    /// Two connections from a client that *does* resume: proves that resumption would be seen
    /// (client side, and by the server's counter) if it happened. Returns the second
    /// connection's handshake kind.
    pub(crate) async fn resumption_probe(
        &self,
        roots: &rustls::RootCertStore,
    ) -> Result<HandshakeKind> {
        let cfg = client_config(roots.clone(), b"http/1.1", true)?;
        let mut kinds = Vec::new();
        for n in 0..2 {
            let (mut send, kind) = self.h1_conn(&cfg, true).await?;
            kinds.push(kind);
            // Reading an answer also reads the session ticket sent after the handshake.
            let (req, click) = self.requests.build(n, Version::HTTP_11, true);
            let res = send.send_request(req).await?;
            check(res, click).await.map_err(anyhow::Error::msg)?;
        }
        kinds
            .pop()
            .flatten()
            .context("no handshake kind on the second connection")
    }
}

/// An idle connection of [`Client::open_idle`].
pub(crate) enum IdleConn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl IdleConn {
    /// Whether the proxy closed it.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            IdleConn::H1(s) => s.is_closed(),
            IdleConn::H2(s) => s.is_closed(),
        }
    }
}

async fn h2_stream(
    mut send: http2::SendRequest<Empty<Bytes>>,
    requests: Requests,
    seed: u64,
    w: Window,
) -> Tally {
    let mut t = Tally::default();
    let mut n = seed;
    while Instant::now() < w.end {
        let t0 = Instant::now();
        n += 1;
        let (req, click) = requests.build(n, Version::HTTP_2, false);
        let res = match send.send_request(req).await {
            Ok(res) => check(res, click).await,
            Err(e) => Err(format!("h2 request: {e}")),
        };
        let failed = res.is_err();
        t.outcome(&w, t0, res);
        if failed && send.is_closed() {
            break;
        }
    }
    t
}
