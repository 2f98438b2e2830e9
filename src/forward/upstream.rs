//! The pooled HTTP/1.1 client to the upstreams (the ESP tracking hosts).
//!
//! TLS to the upstream uses SNI and verifies the certificate against the *upstream's* name
//! (`sendgrid.net`), while the request's `Host` carries the branded name: this is how
//! `SendGrid`'s own proxy recipe works. HTTP/1.1 only, because HTTP/2 would send the upstream's
//! `:authority` beside `Host`.
//!
//! The request body goes as a [`RequestBody`], which keeps the client's read error: a request
//! that failed because its body did is the client's fault, not the upstream's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::Service;

use crate::config::{self, UpstreamConfig};
use crate::error::{BoxError, UpstreamError};

/// Builds the pooled client.
///
/// # Errors
/// When `upstream.ca_file` cannot be read or holds no certificate.
pub(crate) fn client(
    cfg: &UpstreamConfig,
    origin: &str,
) -> Result<(UpstreamClient, Arc<AtomicU64>), config::Errors> {
    let tls = client_tls(cfg, origin)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let opened = Arc::new(AtomicU64::new(0));
    let connector = Connector {
        inner: https,
        timeout: cfg.connect_timeout,
        opened: opened.clone(),
    };
    let mut conn_builder = http1::Builder::new();
    // As on the server side: rustls would concatenate vectored writes into a new buffer.
    conn_builder.writev(false);
    let client = UpstreamClient {
        pool: Arc::new(Pool {
            connector,
            http1: conn_builder,
            idle: Mutex::new(Vec::new()),
            max_idle: cfg.pool_max_idle,
            idle_timeout: cfg.pool_idle_timeout,
            sweeping: AtomicBool::new(false),
        }),
    };
    Ok((client, opened))
}

/// The HTTP/1.1 client to the upstreams, with a pool of keep-alive connections per upstream
/// origin (scheme and authority).
///
/// A small pool of its own rather than hyper-util's general one: a request checks out the
/// connection used last (LIFO, so surplus connections idle out), waits until it is ready, and
/// sends; the connection goes back when the response body has been read to its end (a body
/// dropped early takes its connection with it). A request that a reused connection could not
/// take (closed by the upstream meanwhile) is sent again on another. Idle connections are
/// closed after `upstream.pool_idle_timeout` (DNS is resolved again for new ones), and at most
/// `upstream.pool_max_idle` are kept per origin.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").finish_non_exhaustive()
    }
}

/// The response future of [`UpstreamClient::request`].
pub(crate) type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send>>;

impl UpstreamClient {
    /// Sends `req` (absolute-form target) on a pooled or new connection, in origin form.
    pub(crate) fn request(&self, req: Request<RequestBody>) -> ResponseFuture {
        Box::pin(send(self.pool.clone(), req))
    }
}

struct Pool {
    connector: Connector,
    http1: http1::Builder,
    /// Idle connections per origin; few origins, so a list.
    idle: Mutex<Vec<(Origin, Vec<Idle>)>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the task closing idle connections runs.
    sweeping: AtomicBool,
}

#[derive(Clone, PartialEq, Eq)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

struct Idle {
    tx: http1::SendRequest<RequestBody>,
    since: Instant,
}

async fn send(
    pool: Arc<Pool>,
    mut req: Request<RequestBody>,
) -> Result<Response<PooledBody>, UpstreamError> {
    let (Some(scheme), Some(authority)) = (req.uri().scheme(), req.uri().authority()) else {
        return Err(UpstreamError::Target);
    };
    let origin = Origin {
        scheme: scheme.clone(),
        authority: authority.clone(),
    };
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
    while let Some(mut tx) = pool.checkout(&origin) {
        // Ready once the previous response has been read out; an error means it closed.
        if tx.ready().await.is_err() {
            continue;
        }
        match tx.try_send_request(req).await {
            Ok(res) => return Ok(pool.pooled(res, tx, origin)),
            Err(mut e) => match e.take_message() {
                // Not sent: the connection was closing. Another one gets it.
                Some(unsent) => req = unsent,
                None => return Err(UpstreamError::Request(e.into_error())),
            },
        }
    }
    let mut tx = pool.connect(&origin).await?;
    tx.ready().await.map_err(UpstreamError::Request)?;
    let res = tx.send_request(req).await.map_err(UpstreamError::Request)?;
    Ok(pool.pooled(res, tx, origin))
}

impl Pool {
    /// An idle, open connection to `origin`: the one used last that is ready now (its
    /// previous response fully processed), else the one used last.
    fn checkout(&self, origin: &Origin) -> Option<http1::SendRequest<RequestBody>> {
        /// How many open but not yet ready connections to pass over looking for a ready one.
        const LOOK_PAST: usize = 4;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, list) = idle.iter_mut().find(|(o, _)| o == origin)?;
        let now = Instant::now();
        let mut fallback: Option<usize> = None;
        let mut passed = 0;
        let mut i = list.len();
        while i > 0 && passed < LOOK_PAST {
            i -= 1;
            let c = &list[i];
            if c.tx.is_closed() || now.saturating_duration_since(c.since) >= self.idle_timeout {
                list.remove(i);
                // Everything after `i` moved down by one.
                fallback = fallback.map(|f| f - 1);
            } else if c.tx.is_ready() {
                return Some(list.remove(i).tx);
            } else {
                fallback.get_or_insert(i);
                passed += 1;
            }
        }
        fallback.map(|f| list.remove(f).tx)
    }

    async fn connect(
        &self,
        origin: &Origin,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let uri = Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(UpstreamError::Connect)?;
        let (tx, conn) = self
            .http1
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %crate::error::chain(&e), "upstream connection closed");
            }
        });
        Ok(tx)
    }

    fn pooled(
        self: &Arc<Self>,
        res: Response<Incoming>,
        tx: http1::SendRequest<RequestBody>,
        origin: Origin,
    ) -> Response<PooledBody> {
        let home = Some(Home {
            pool: Arc::downgrade(self),
            tx,
            origin,
        });
        res.map(|inner| PooledBody {
            inner,
            ended: false,
            home,
        })
    }

    /// Takes back a connection whose response was read to its end.
    fn put(self: &Arc<Self>, origin: Origin, tx: http1::SendRequest<RequestBody>) {
        if self.max_idle == 0 || tx.is_closed() {
            return;
        }
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let since = Instant::now();
            if let Some((_, list)) = idle.iter_mut().find(|(o, _)| *o == origin) {
                if list.len() >= self.max_idle {
                    return;
                }
                list.push(Idle { tx, since });
            } else {
                idle.push((origin, vec![Idle { tx, since }]));
            }
        }
        if !self.sweeping.load(Ordering::Relaxed)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
            && !self.sweeping.swap(true, Ordering::Relaxed)
        {
            rt.spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        }
    }
}

/// Closes idle connections past `upstream.pool_idle_timeout`, until the pool is gone.
async fn sweep(pool: Weak<Pool>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, list) in idle.iter_mut() {
            list.retain(|c| !c.tx.is_closed() && c.since.elapsed() < idle_timeout);
        }
    }
}

/// Where a connection goes back when its response is done.
struct Home {
    pool: Weak<Pool>,
    tx: http1::SendRequest<RequestBody>,
    origin: Origin,
}

pin_project! {
    /// A response body from an upstream; its connection returns to the pool once the body has
    /// been read to its end.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        ended: bool,
        home: Option<Home>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !(*this.ended || this.inner.is_end_stream()) {
                // Unread bytes on the connection: hyper closes it.
                return;
            }
            if let Some(home) = this.home.take()
                && let Some(pool) = home.pool.upgrade()
            {
                pool.put(home.origin, home.tx);
            }
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            *this.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a request body's read error is kept for the forwarder: the upstream client only
/// reports that the body it was sending failed.
pub(crate) type BodyFault = Arc<Mutex<Option<hyper::Error>>>;

pin_project! {
    /// A client's request body streamed to the upstream. If reading it from the client fails
    /// (bad chunk framing, a premature end, a reset), the error is kept in its [`BodyFault`],
    /// so that the failed upstream request is blamed on the client, not the upstream.
    #[derive(Debug)]
    pub(crate) struct RequestBody {
        #[pin]
        inner: Incoming,
        fault: Option<BodyFault>,
    }
}

impl RequestBody {
    /// `inner`, and the slot for its error: only a body that has frames to come gets one (an
    /// allocation), GET requests and the like do not.
    pub(crate) fn new(inner: Incoming) -> (Self, Option<BodyFault>) {
        let fault = (!inner.is_end_stream()).then(BodyFault::default);
        (
            RequestBody {
                inner,
                fault: fault.clone(),
            },
            fault,
        )
    }
}

/// The error the upstream client sees when the client's request body failed; the error itself
/// is in the body's [`BodyFault`].
#[derive(Debug, thiserror::Error)]
#[error("reading the request body from the client failed")]
pub(crate) struct ClientBodyFailed;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyFailed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyFailed>>> {
        let this = self.project();
        Poll::Ready(match ready!(this.inner.poll_frame(cx)) {
            Some(Err(e)) => {
                if let Some(fault) = this.fault {
                    *fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                }
                Some(Err(ClientBodyFailed))
            }
            Some(Ok(frame)) => Some(Ok(frame)),
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn client_tls(cfg: &UpstreamConfig, origin: &str) -> Result<rustls::ClientConfig, config::Errors> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.ca_file {
        let problem = |m: String| config::Errors::one(origin, "upstream.ca_file", m);
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| problem(format!("cannot read {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(problem(format!(
                "{} holds no CERTIFICATE block",
                path.display()
            )));
        }
        for c in certs {
            roots.add(c).map_err(|e| {
                problem(format!("{}: unusable CA certificate: {e}", path.display()))
            })?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config::Errors::one(origin, "upstream", format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

/// TCP + TLS connector with one deadline over both, counting connections opened.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
    opened: Arc<AtomicU64>,
}

/// One connection to an upstream.
///
/// A wrapper only to describe itself without hyper-util's `HttpInfo` (the TCP addresses): the
/// client copies that into the extensions of every response, two allocations per request for
/// facts nothing here reads.
#[derive(Debug)]
pub(crate) struct Conn(MaybeHttpsStream<TokioIo<TcpStream>>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.0.connected().is_negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::<Uri>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let fut = self.inner.call(uri);
        let timeout = self.timeout;
        let opened = self.opened.clone();
        Box::pin(async move {
            let conn = tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| ConnectTimeout(timeout))??;
            opened.fetch_add(1, Ordering::Relaxed);
            Ok(Conn(conn))
        })
    }
}

/// The TCP connect plus TLS handshake to the upstream took too long.
#[derive(Debug, thiserror::Error)]
#[error("connect and TLS handshake took longer than {0:?}")]
pub(crate) struct ConnectTimeout(Duration);
