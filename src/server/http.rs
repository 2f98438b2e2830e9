//! HTTP on an established connection, and parking of idle HTTP/1 connections.
//!
//! The protocol comes from ALPN (`h2` or `http/1.1`). Without ALPN (plain HTTP, or a TLS
//! client that offered none) the first bytes decide: the HTTP/2 connection preface means
//! HTTP/2 with prior knowledge, anything else HTTP/1.1.
//!
//! **Idle HTTP/1 connections are parked.** For as long as hyper serves an HTTP/1 connection it
//! keeps a read buffer and a write buffer (8 KiB each) and its connection state. Most
//! connections of a tracking host are idle most of their life (a click, then the browser keeps
//! the connection open), so an HTTP/1 connection parks as soon as its first response is out
//! (most clicks make one request per connection), and later whenever it has moved no bytes
//! for a whole [`TICK`] with no request in flight. Parking ends hyper's connection *without*
//! closing the socket (`graceful_shutdown` while hyper is idle, then `into_parts`), frees its
//! buffers and the TLS layer's empty ones (module `tls_stream`), and leaves the task waiting
//! for the socket to become readable. The next request
//! gets a new hyper connection on the same socket, which first replays any bytes the old one
//! had read. nginx does the same with its keep-alive connections; the client sees nothing of
//! it. `trackproxy_parked_connections` counts them.
//!
//! Timeouts: a connection with no bytes moving for `server.idle_timeout` is closed gracefully
//! (checked every [`TICK`]); an idle HTTP/1 keep-alive connection waits at most
//! `server.header_read_timeout` for its next request, parked or not.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower::util::Oneshot;
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span, debug};

use super::context::Server;
use crate::client::{self, ConnInfo};
use crate::metrics::Metrics;
use crate::middleware::{HttpService, ResponseBody, access_log};
use crate::tls::stream::TlsStream;

/// How often a connection looks at whether it is idle; also how long an HTTP/1 connection
/// stays idle before it is parked.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// How long closing a connection (TLS `close_notify`, then FIN) may wait for the client to
/// take the bytes.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's socket, with or without TLS.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP connection underneath.
    fn tcp(&self) -> &TcpStream;
    /// Whether bytes can be read without the socket becoming readable first (TLS plaintext
    /// already decrypted and buffered).
    fn has_buffered(&self) -> bool;
    /// Frees the buffers that hold nothing, while the connection is parked.
    fn release_buffers(&mut self) {}
    /// From now on, frees buffers as soon as they are empty (a connection that is never
    /// parked: HTTP/2).
    fn release_buffers_when_empty(&mut self) {}
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn has_buffered(&self) -> bool {
        false
    }
}

impl Socket for TlsStream {
    fn tcp(&self) -> &TcpStream {
        TlsStream::tcp(self)
    }

    fn has_buffered(&self) -> bool {
        TlsStream::has_buffered(self)
    }

    fn release_buffers(&mut self) {
        TlsStream::release_buffers(self);
    }

    fn release_buffers_when_empty(&mut self) {
        TlsStream::release_buffers_when_empty(self);
    }
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
    /// No ALPN: decided by the first bytes.
    Sniff,
}

impl Protocol {
    /// From the ALPN protocol the TLS handshake agreed on.
    pub(crate) fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(_) => Protocol::Http1,
            None => Protocol::Sniff,
        }
    }
}

/// Serves HTTP on one connection until the client closes it, it idles out, or shutdown.
///
/// The socket comes boxed: a connection task keeps the size of its largest state for its whole
/// life, and every `async fn` layer would otherwise keep its own copy of a TLS stream (1.2 KiB).
pub(crate) async fn serve<S: Socket>(
    mut io: Box<S>,
    protocol: Protocol,
    info: ConnInfo,
    server: &Arc<Server>,
    token: CancellationToken,
) {
    let (h2, prefix) = match protocol {
        Protocol::Http1 => (false, Bytes::new()),
        Protocol::Http2 => (true, Bytes::new()),
        Protocol::Sniff => {
            let sniffed =
                tokio::time::timeout(server.header_read_timeout, sniff_preface(&mut *io)).await;
            match sniffed {
                Ok(Ok(Some(x))) => x,
                // Closed before sending anything.
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    debug!(failure = "io", error = %e, "connection closed");
                    return;
                }
                Err(_) => {
                    debug!(failure = "header_timeout", "connection closed");
                    return;
                }
            }
        }
    };
    if h2 {
        // HTTP/2 connections are not parked; most of their life they wait for a request.
        io.release_buffers_when_empty();
    }
    let state = Arc::new(ConnState::default());
    let svc = ConnService(Arc::new(ConnServiceInner {
        stack: server.service.clone(),
        server: server.clone(),
        info,
        // HTTP/2 streams run in tasks of their own: carry the connection's span into each.
        // An HTTP/1 request is polled in the connection's task, already inside that span:
        // entering it again on every poll would cost a clone and an enter/exit for nothing.
        span: if h2 { Span::current() } else { Span::none() },
        state: (!h2).then(|| state.clone()),
    }));
    let io = ConnIo {
        inner: io,
        prefix,
        state: state.clone(),
    };
    if h2 {
        // Boxed: an HTTP/2 connection's state is large, and the task keeps the size of its
        // largest state for its whole life, parked HTTP/1 connections included.
        Box::pin(serve_h2(io, svc, &state, server, &token)).await;
    } else {
        serve_h1(io, svc, &state, server, &token).await;
    }
}

/// Reads until the bytes are the HTTP/2 preface or cannot become it. Returns whether they are
/// and the bytes read (to be replayed), or `None` if the client closed first.
async fn sniff_preface<S: Socket>(io: &mut S) -> io::Result<Option<(bool, Bytes)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < buf.len() {
        let got = io.read(&mut buf[n..]).await?;
        if got == 0 {
            if n == 0 {
                return Ok(None);
            }
            break;
        }
        n += got;
        if buf[..n] != H2_PREFACE[..n] {
            break;
        }
    }
    Ok(Some((
        buf[..] == H2_PREFACE[..],
        Bytes::copy_from_slice(&buf[..n]),
    )))
}

async fn serve_h2<S: Socket>(
    io: ConnIo<S>,
    svc: ConnService,
    state: &ConnState,
    server: &Server,
    token: &CancellationToken,
) {
    let shared = svc.0.clone();
    let conn = server.h2.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // HTTP/2 connections are not parked: one look per idle timeout is enough.
    let mut clock = IdleClock::new(server.idle_timeout, server.idle_timeout);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    log_connection_error(&e, &shared.info, &server.metrics);
                }
                return;
            }
            () = token.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = clock.interval.tick(), if !closing => {
                if clock.observe(state.activity()) >= server.idle_timeout {
                    debug!(idle = ?server.idle_timeout, "closing idle connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// How a served stretch of an HTTP/1 connection ended.
enum Ended<S> {
    /// hyper is done with the socket and has closed it (client's wish, timeout, shutdown), or
    /// the connection failed.
    Done,
    /// Shutdown came while parking: the socket is still open and must be closed.
    Close(ConnIo<S>),
    /// Idle for at least `idle`: hyper's connection handed the socket back; it stays open.
    Parked { io: ConnIo<S>, idle: Duration },
}

async fn serve_h1<S: Socket>(
    mut io: ConnIo<S>,
    svc: ConnService,
    state: &ConnState,
    server: &Server,
    token: &CancellationToken,
) {
    let mut clock = IdleClock::new(TICK.min(server.idle_timeout), server.idle_timeout);
    // The longest an idle keep-alive connection waits for its next request, parked or not.
    let keep_alive = server.header_read_timeout.min(server.idle_timeout);
    // While parked: the activity count when parked, and the deadline of the wait. A wake-up
    // that brings no request (a TLS record without data) parks again with the same deadline.
    let mut parked: Option<(u64, Instant)> = None;
    loop {
        let idle;
        // Boxed, like the hyper connection in it: freed while parked.
        let serving = serve_h1_until_idle(io, svc.clone(), state, &mut clock, server, token);
        (io, idle) = match Box::pin(serving).await {
            Ended::Parked { io, idle } => (io, idle),
            Ended::Close(io) => return close(io).await,
            Ended::Done => return,
        };
        if !io.prefix.is_empty() || io.inner.has_buffered() {
            // Part of the next request is already here: serve it at once.
            continue;
        }
        let activity = state.activity();
        let deadline = match parked {
            Some((at, deadline)) if at == activity => deadline,
            _ => Instant::now() + keep_alive.saturating_sub(idle),
        };
        parked = Some((activity, deadline));
        io.inner.release_buffers();
        let _parked = server.limits.park();
        tokio::select! {
            r = io.inner.tcp().readable() => {
                if let Err(e) = r {
                    debug!(failure = "io", error = %e, "connection closed");
                    return;
                }
            }
            () = token.cancelled() => return close(io).await,
            () = tokio::time::sleep_until(deadline) => {
                debug!(idle = ?keep_alive, "closing idle keep-alive connection");
                return close(io).await;
            }
        }
        clock.restart(state.activity());
    }
}

/// Serves HTTP/1 on `io` with a new hyper connection until it ends or goes idle. A socket given
/// back carries the bytes hyper read but did not use as its prefix.
async fn serve_h1_until_idle<S: Socket>(
    io: ConnIo<S>,
    svc: ConnService,
    state: &ConnState,
    clock: &mut IdleClock,
    server: &Server,
    token: &CancellationToken,
) -> Ended<S> {
    let built = (state.activity(), state.completed());
    let pristine_prefix = io.prefix.is_empty();
    // Boxed: its buffers and state are freed while the connection is parked.
    let shared = svc.0.clone();
    let mut conn = Box::new(server.h1.serve_connection(TokioIo::new(io), svc));
    let mut closing = false;
    let mut park = None;
    let res = loop {
        tokio::select! {
            res = std::future::poll_fn(|cx| match Pin::new(&mut *conn).poll(cx) {
                Poll::Ready(res) => Poll::Ready(Some(res)),
                // The connection's first response is out and hyper waits for more: most
                // clicks make one request per connection, so park at once.
                Poll::Pending if park.is_none() && !closing && state.completed() == 1
                    && built.1 == 0 && state.parkable() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }) => {
                if let Some(res) = res {
                    break res;
                }
                park = Some(Duration::ZERO);
                state.parking.store(true, Ordering::Relaxed);
                Pin::new(&mut *conn).graceful_shutdown();
            }
            () = token.cancelled(), if !closing => {
                closing = true;
                park = None;
                state.parking.store(false, Ordering::Relaxed);
                Pin::new(&mut *conn).graceful_shutdown();
            }
            _ = clock.interval.tick(), if !closing && park.is_none() => {
                let idle = clock.observe(state.activity());
                if idle >= server.idle_timeout {
                    debug!(idle = ?server.idle_timeout, "closing idle connection");
                    closing = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                } else if idle.is_zero() {
                    // Bytes moved during the last tick.
                } else if pristine_prefix && state.activity() == built.0 {
                    // Not a byte read or written since this hyper connection was built: it
                    // has nothing buffered and is waiting for a request head.
                    park = Some(idle);
                    break Ok(());
                } else if state.completed() != built.1 && state.parkable() {
                    // A response was sent, nothing is in flight: hyper is idle between
                    // requests, and ends at once (anything it read of a next request comes
                    // back in `Parts::read_buf`). Were it busy after all, it would finish that
                    // exchange first.
                    park = Some(idle);
                    state.parking.store(true, Ordering::Relaxed);
                    Pin::new(&mut *conn).graceful_shutdown();
                }
            }
        }
    };
    // While `parking` was set, the socket ignored hyper's closing it.
    state.parking.store(false, Ordering::Relaxed);
    if let Err(e) = res {
        log_connection_error(&e, &shared.info, &server.metrics);
        return Ended::Done;
    }
    let Some(idle) = park else {
        // hyper is done and has closed the socket.
        return Ended::Done;
    };
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner();
    if !parts.read_buf.is_empty() {
        io.prefix = if io.prefix.is_empty() {
            parts.read_buf
        } else {
            let mut joined = BytesMut::from(&parts.read_buf[..]);
            joined.extend_from_slice(&io.prefix);
            joined.freeze()
        };
    }
    if token.is_cancelled() {
        // Shutdown came while parking: the caller closes the socket.
        return Ended::Close(io);
    }
    Ended::Parked { io, idle }
}

/// Closes a connection the way hyper would: TLS `close_notify`, then FIN.
async fn close<S: Socket>(mut io: ConnIo<S>) {
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, io.inner.shutdown()).await;
}

/// Notices idle connections with one timer tick per period rather than a timer per read or
/// request.
struct IdleClock {
    interval: Interval,
    period: Duration,
    seen: u64,
    idle_ticks: u32,
}

impl IdleClock {
    /// Ticks every `period`, which must not exceed the connection's idle timeout.
    fn new(period: Duration, idle_timeout: Duration) -> Self {
        let period = period.min(idle_timeout);
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        IdleClock {
            interval,
            period,
            seen: 0,
            idle_ticks: 0,
        }
    }

    /// Starts counting afresh (a parked connection woke up).
    fn restart(&mut self, activity: u64) {
        self.interval.reset();
        self.seen = activity;
        self.idle_ticks = 0;
    }

    /// At a tick: for how long at least the connection has been idle (zero if bytes moved
    /// since the previous tick).
    fn observe(&mut self, activity: u64) -> Duration {
        if activity == self.seen {
            self.idle_ticks = self.idle_ticks.saturating_add(1);
        } else {
            self.seen = activity;
            self.idle_ticks = 0;
        }
        self.period.saturating_mul(self.idle_ticks)
    }
}

/// What a connection's task and its requests share.
#[derive(Debug, Default)]
struct ConnState {
    /// Bumped by every read or write that moves bytes.
    activity: AtomicU64,
    /// HTTP/1 responses finished (their bodies dropped by hyper).
    completed: AtomicU64,
    /// HTTP/1 requests whose response is not finished.
    in_flight: AtomicU64,
    /// Whether the latest HTTP/1 request came with a body (hyper may still be reading it).
    request_body: AtomicBool,
    /// Whether hyper has written bytes it has not flushed since (they could sit in its own
    /// write buffer).
    unflushed: AtomicBool,
    /// Set while an HTTP/1 connection is being parked: hyper's closing the socket at the end
    /// is ignored, the socket stays open.
    parking: AtomicBool,
}

impl ConnState {
    fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Only the connection's own task moves bytes: a plain load and store is enough.
    fn touch(&self) {
        let n = self.activity.load(Ordering::Relaxed);
        self.activity.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    fn parkable(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && !self.request_body.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
    }

    fn set_unflushed(&self, unflushed: bool) {
        if self.unflushed.load(Ordering::Relaxed) != unflushed {
            self.unflushed.store(unflushed, Ordering::Relaxed);
        }
    }
}

/// The socket as hyper sees it: replays `prefix` first, and notes activity.
struct ConnIo<S> {
    inner: Box<S>,
    prefix: Bytes,
    state: Arc<ConnState>,
}

impl<S: Socket> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.touch();
        }
        res
    }
}

impl<S: Socket> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.state.set_unflushed(true);
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.state.set_unflushed(true);
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes the socket only once its own buffer is written out.
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(res, Poll::Ready(Ok(()))) {
            self.state.set_unflushed(false);
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The hyper service of one connection: names the client, then hands the request to the
/// tower stack. On HTTP/1 it also counts requests in flight, so the connection knows when it
/// may park.
#[derive(Clone)]
struct ConnService(Arc<ConnServiceInner>);

struct ConnServiceInner {
    stack: HttpService,
    server: Arc<Server>,
    info: ConnInfo,
    span: Span,
    state: Option<Arc<ConnState>>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ConnBody>;
    type Error = Infallible;
    type Future = ConnFuture;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let this = &*self.0;
        let mut info = this.info.clone();
        if info.remote_trusted {
            // Behind an L7 load balancer the client is named by its X-Forwarded-For; decided
            // here, before the stack, so rate limits and logs see the same client.
            let trusted = &this.server.proxy_protocol.trusted;
            let ip = client::client_ip(req.headers(), info.remote.ip(), trusted);
            if ip != info.remote.ip() {
                info.client = SocketAddr::new(ip, 0);
            }
        }
        let guard = this.state.as_ref().map(|state| {
            state
                .request_body
                .store(!req.body().is_end_stream(), Ordering::Relaxed);
            InFlightGuard::new(state.clone())
        });
        req.extensions_mut().insert(info);
        ConnFuture {
            inner: this
                .stack
                .clone()
                .oneshot(req)
                .instrument(this.span.clone()),
            guard,
        }
    }
}

/// An HTTP/1 request until its response body is finished or dropped.
struct InFlightGuard(Arc<ConnState>);

impl InFlightGuard {
    fn new(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(state)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.completed.fetch_add(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// The response future of [`ConnService`].
    struct ConnFuture {
        #[pin]
        inner: Instrumented<Oneshot<HttpService, Request<Incoming>>>,
        guard: Option<InFlightGuard>,
    }
}

impl Future for ConnFuture {
    type Output = Result<Response<ConnBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let guard = this.guard.take();
        Poll::Ready(res.map(|res| {
            res.map(|inner| ConnBody {
                inner,
                _guard: guard,
            })
        }))
    }
}

pin_project! {
    /// A response body; on HTTP/1 it holds its request's [`InFlightGuard`].
    struct ConnBody {
        #[pin]
        inner: ResponseBody,
        _guard: Option<InFlightGuard>,
    }
}

impl Body for ConnBody {
    type Data = <ResponseBody as Body>::Data;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Logs why hyper closed a connection. A request hyper refused (answered 400/431 by hyper
/// itself, before the stack) gets an access-log line and a count, as a request the stack
/// refuses would; routine endings (timeouts, resets) a debug line.
fn log_connection_error(e: &(dyn std::error::Error + 'static), conn: &ConnInfo, metrics: &Metrics) {
    let Some(he) = e.downcast_ref::<hyper::Error>() else {
        debug!(failure = "io", error = %crate::error::chain(e), "connection closed");
        return;
    };
    let refused = if he.is_parse_too_large() {
        Some((431, "header_too_large"))
    } else if he.is_parse() || he.is_parse_version_h2() {
        Some((400, "malformed_request"))
    } else {
        None
    };
    if let Some((status, failure)) = refused {
        metrics.client_error(failure);
        access_log::rejected(conn, status, failure, e);
    } else if he.is_timeout() {
        debug!(failure = "header_timeout", "connection closed");
    } else {
        debug!(failure = "io", error = %crate::error::chain(e), "connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_from_alpn() {
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(None), Protocol::Sniff);
    }

    #[test]
    fn idle_clock_counts_quiet_ticks() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = IdleClock::new(TICK, Duration::from_secs(60));
            assert_eq!(c.observe(1), Duration::ZERO);
            assert_eq!(c.observe(1), TICK);
            assert_eq!(c.observe(1), TICK * 2);
            assert_eq!(c.observe(2), Duration::ZERO);
            let short = IdleClock::new(TICK, Duration::from_millis(100));
            assert_eq!(short.period, Duration::from_millis(100));
        });
    }
}
