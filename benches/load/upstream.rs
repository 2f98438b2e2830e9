//! The upstream the proxies forward to: a small hyper server, over TLS or plain HTTP, that
//! answers like sendgrid.net (`/ls/click` → 302 + `Location`, `/wf/open` → the 43-byte GIF), counts the
//! connections it accepts, and refuses (400) any request whose `Host` is not the branded host —
//! so a proxy that does not preserve `Host` shows up as errors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::pki::HOST;

/// The 43-byte transparent GIF sendgrid.net answers `/wf/open` with.
const GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// Where `/ls/click` redirects.
pub(crate) const LANDING: &str =
    "https://www.example.com/landing?utm_source=sendgrid.com&utm_medium=email&utm_campaign=bench";

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    bad_host: AtomicU64,
}

/// The running upstream; stops when dropped.
pub(crate) struct Upstream {
    /// Its loopback address.
    pub(crate) addr: SocketAddr,
    tls: bool,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Listens on an ephemeral loopback port, over TLS with `tls`, else plain HTTP.
    pub(crate) async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let acceptor = tls.map(TlsAcceptor::from);
        let tls = acceptor.is_some();
        let c = counters.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.connections.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let c = c.clone();
                        async move { Ok::<_, Infallible>(answer(&req, &c)) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            http.serve_connection(TokioIo::new(tls), svc).await
                        }
                        None => http.serve_connection(TokioIo::new(tcp), svc).await,
                    };
                });
            }
        });
        Ok(Upstream {
            addr,
            tls,
            counters,
            task,
        })
    }

    /// The URL a proxy is configured with: `https://localhost:PORT` (the name its certificate
    /// has) or `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::Relaxed)
    }

    /// Requests refused because `Host` was not the branded host.
    pub(crate) fn bad_host(&self) -> u64 {
        self.counters.bad_host.load(Ordering::Relaxed)
    }
}

fn answer(req: &Request<Incoming>, c: &Counters) -> Response<Full<Bytes>> {
    let host_ok = req
        .headers()
        .get(header::HOST)
        .is_some_and(|h| h.as_bytes() == HOST.as_bytes());
    let mut res = Response::new(Full::new(Bytes::new()));
    if !host_ok {
        c.bad_host.fetch_add(1, Ordering::Relaxed);
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return res;
    }
    let h = res.headers_mut();
    h.insert(header::SERVER, http::HeaderValue::from_static("nginx"));
    match req.uri().path() {
        "/ls/click" => {
            *res.status_mut() = StatusCode::FOUND;
            let h = res.headers_mut();
            h.insert(header::LOCATION, http::HeaderValue::from_static(LANDING));
            h.insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            *res.body_mut() = Full::new(Bytes::from_static(
                b"<a href=\"https://www.example.com/landing\">Found</a>.\n",
            ));
        }
        "/wf/open" => {
            let h = res.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("image/gif"),
            );
            h.insert(
                header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-cache, max-age=0"),
            );
            *res.body_mut() = Full::new(Bytes::from_static(GIF));
        }
        _ => *res.status_mut() = StatusCode::NOT_FOUND,
    }
    res
}
