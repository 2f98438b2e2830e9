//! The stand-in for the ESP: a local server behaving like sendgrid.net (302 for `/ls/click`, a
//! 43-byte GIF for `/wf/open`), recording every request it received ([`Seen`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::TestCa;

/// The 43-byte transparent GIF sendgrid.net answers `/wf/open` with.
pub const GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// Where `/ls/click` redirects to.
pub const LANDING: &str = "https://www.example.com/landing?utm_source=sendgrid&x=%2F%20";

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
    open: AtomicUsize,
}

/// Counts a connection as open while it lives.
struct Open(Arc<Record>);

impl Open {
    fn new(rec: &Arc<Record>) -> Self {
        rec.open.fetch_add(1, Ordering::SeqCst);
        Open(rec.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
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

    /// Like SparkPost's tracking hosts: TLS only for clients that send SNI (a handshake
    /// without a server name gets no certificate and fails).
    pub async fn start_requiring_sni(ca: &TestCa) -> Self {
        let mut cfg = (*ca.server_config(&["localhost"])).clone();
        cfg.cert_resolver = Arc::new(SniRequired(cfg.cert_resolver.clone()));
        Self::spawn(Some(TlsAcceptor::from(Arc::new(cfg))), None).await
    }

    /// Like Amazon SES's tracking hosts: 400 when the request's header fields together
    /// (`name: value` and CRLF each) are over `limit` bytes.
    pub async fn start_with_header_limit(ca: &TestCa, limit: usize) -> Self {
        let tls = TlsAcceptor::from(ca.server_config(&["localhost"]));
        Self::spawn_with(Some(tls), None, Some(limit)).await
    }

    async fn spawn(tls: Option<TlsAcceptor>, idle_close: Option<Duration>) -> Self {
        Self::spawn_with(tls, idle_close, None).await
    }

    async fn spawn_with(
        tls: Option<TlsAcceptor>,
        idle_close: Option<Duration>,
        header_limit: Option<usize>,
    ) -> Self {
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
                let open = Open::new(&rec);
                let rec = rec.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _open = open;
                    match tls {
                        Some(acc) => {
                            let Ok(s) = acc.accept(stream).await else {
                                return;
                            };
                            let sni = s.get_ref().1.server_name().map(str::to_owned);
                            serve_upstream(TokioIo::new(s), rec, sni, idle_close, header_limit)
                                .await;
                        }
                        None => {
                            serve_upstream(
                                TokioIo::new(stream),
                                rec,
                                None,
                                idle_close,
                                header_limit,
                            )
                            .await
                        }
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

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.record.connections.load(Ordering::SeqCst)
    }

    /// Connections open now (accepted and not yet closed by either side).
    pub fn open_connections(&self) -> usize {
        self.record.open.load(Ordering::SeqCst)
    }
}

async fn serve_upstream<I>(
    io: TokioIo<I>,
    rec: Arc<Record>,
    sni: Option<String>,
    idle_close: Option<Duration>,
    header_limit: Option<usize>,
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
            let header_bytes: usize = parts
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
                .sum();
            if header_limit.is_some_and(|l| header_bytes > l) {
                // SES: "400 BadRequestException" when the headers exceed its limit.
                let res = Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(Full::new(Bytes::from_static(b"BadRequestException")))
                    .unwrap();
                return Ok::<_, std::convert::Infallible>(res);
            }
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

/// A certificate resolver that answers only handshakes with SNI.
#[derive(Debug)]
struct SniRequired(Arc<dyn rustls::server::ResolvesServerCert>);

impl rustls::server::ResolvesServerCert for SniRequired {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        hello.server_name()?;
        self.0.resolve(hello)
    }
}
