//! Listeners and connections: accept loops, TLS handshakes, the HTTP/1.1 + HTTP/2 server,
//! idle and handshake timeouts, and graceful drain.
//!
//! Per connection, in order: a slot in `limits.max_connections` (taken right after accept;
//! accepting pauses while none is free) → the PROXY protocol header, if configured → a slot in
//! the client's `limits.per_client_connections` (else the connection is closed before any TLS
//! work) → TLS handshake under `server.handshake_timeout` (rustls, with buffers of our own:
//! module `tls_stream`; the SNI is checked against the configured hosts; unknown or missing
//! SNI fails the handshake; an ACME TLS-ALPN-01 validation gets its challenge certificate and
//! is closed) → hyper's HTTP/1.1 or HTTP/2
//! server (by ALPN; without ALPN by the first bytes) with header size, header count and
//! header-read limits → the tower stack from [`crate::middleware`]. A connection with no bytes
//! moving for `server.idle_timeout` is shut down gracefully, and an idle HTTP/1 connection
//! gives back its buffers while it waits (module `serve`). Nothing read from the network can
//! panic this code; a failure closes its own connection only.

pub mod conn_limit;
mod serve;
mod tls_stream;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

mod proxy_protocol;

pub(crate) use proxy_protocol::Policy as ProxyPolicy;

use crate::client::{self, ConnInfo, TlsInfo};
use crate::config::{Config, ServerConfig as ServerSettings};
use crate::error::BindError;
use crate::middleware::HttpService;
use crate::telemetry::metrics::{HandshakeFailure, Metrics};
use crate::tls::SniResolver;
use conn_limit::ConnLimits;
use serve::Protocol;
use tls_stream::{Accepting, TlsStream};

/// The bound listeners `run` serves. `main` binds them from the configuration; tests bind
/// `127.0.0.1:0`.
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS.
    pub https: TcpListener,
    /// Plain HTTP.
    pub http: TcpListener,
    /// The admin endpoints (`crate::admin`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses in `cfg`.
    ///
    /// # Errors
    /// The address that could not be bound and why.
    pub async fn bind(cfg: &Config) -> Result<Self, BindError> {
        let server = &cfg.server;
        let bind = |addr: SocketAddr, key: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { key, addr, source })
        };
        Ok(Listeners {
            https: bind(server.https_listen, "server.https_listen").await?,
            http: bind(server.http_listen, "server.http_listen").await?,
            admin: bind(cfg.admin.listen, "admin.listen").await?,
        })
    }
}

/// Everything a connection task needs, shared by all of them.
pub(crate) struct Server {
    pub(crate) tls: Arc<ServerConfig>,
    pub(crate) resolver: Arc<SniResolver>,
    pub(crate) h1: http1::Builder,
    pub(crate) h2: http2::Builder<TokioExecutor>,
    pub(crate) service: HttpService,
    pub(crate) handshake_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) proxy_protocol: ProxyPolicy,
    pub(crate) limits: Arc<ConnLimits>,
    pub(crate) metrics: Metrics,
}

impl Server {
    /// The HTTP/1.1 connection builder with the configured limits.
    pub(crate) fn h1_builder(cfg: &ServerSettings) -> http1::Builder {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            // Also bounds how long an idle HTTP/1 keep-alive connection waits for its next
            // request: hyper starts this timer whenever it waits for a request head.
            .header_read_timeout(cfg.header_read_timeout)
            // A head larger than this is answered with 431 (hyper's buffer limit); the minimum
            // hyper accepts is 8 KiB.
            .max_buf_size(cfg.max_header_bytes.max(8192))
            // rustls copies vectored writes into one buffer anyway (an allocation per write):
            // let hyper flatten head and body into its own buffer instead.
            .writev(false)
            .max_headers(cfg.max_headers);
        b
    }

    /// The HTTP/2 connection builder with the configured limits.
    pub(crate) fn h2_builder(cfg: &ServerSettings) -> http2::Builder<TokioExecutor> {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(cfg.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            // Rapid reset (CVE-2023-44487) and its local-error variant (CVE-2025-8671): a client
            // that makes us reset streams faster than this gets GOAWAY.
            .max_pending_accept_reset_streams(32)
            .max_local_error_reset_streams(256)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        b
    }
}

/// Whether a listener serves TLS or plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Https,
    Http,
}

/// Accepts connections until `token` is cancelled, then drops the listener so new connections
/// are refused. Each connection runs in its own task, tracked by `tracker`.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    server: Arc<Server>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = token.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            // An IPv4 client on a dual-stack listener is shown and matched as IPv4.
            Ok((stream, peer)) => (stream, client::canonical(peer)),
            Err(e) if is_per_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE / ENFILE / ENOMEM: back off instead of spinning; never give up.
                error!(error = %e, listener = ?local, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = token.cancelled() => break,
                }
                continue;
            }
        };
        // The total budget: past it, this connection waits for a slot and nothing else is
        // accepted meanwhile (new connections queue in the kernel's backlog). Counting only
        // accepted connections keeps `trackproxy_open_connections` exact.
        let permit = if let Some(p) = server.limits.try_total() {
            p
        } else {
            server.metrics.accept_paused();
            warn!(
                listener = ?local,
                open = server.limits.open(),
                "limits.max_connections reached: accepting paused"
            );
            let p = tokio::select! {
                p = server.limits.total() => p,
                () = token.cancelled() => break,
            };
            info!(listener = ?local, "accepting resumed");
            p
        };
        let server = server.clone();
        let token = token.clone();
        let span = info_span!("conn", %peer, client = tracing::field::Empty);
        tracker.spawn(
            async move {
                let _permit = permit;
                let mut stream = stream;
                // Bound to one address, the listener knows ours: no system call.
                let local = match local {
                    Some(a) if !a.ip().is_unspecified() => a,
                    _ => stream.local_addr().unwrap_or(peer),
                };
                let _ = stream.set_nodelay(true);
                // One deadline covers the PROXY header and the TLS handshake.
                let deadline = Instant::now() + server.handshake_timeout;
                let policy = &server.proxy_protocol;
                let client = match tokio::time::timeout_at(deadline, policy.client_addr(&mut stream, peer)).await {
                    Ok(Ok(client)) => client::canonical(client),
                    Ok(Err(e)) => {
                        info!(failure = e.failure(), error = %crate::error::chain(&e), "connection refused");
                        return;
                    }
                    Err(_) => {
                        debug!(failure = "proxy_header_timeout", "connection refused");
                        return;
                    }
                };
                if client != peer {
                    tracing::Span::current().record("client", tracing::field::display(client));
                }
                // Per client (the address the PROXY header gave, if any), still before any
                // TLS work.
                let Ok(_client_permit) = server.limits.try_client(client.ip()) else {
                    server.metrics.connection_refused_per_client();
                    debug!(
                        client = %client,
                        failure = "per_client_limit",
                        "connection refused: limits.per_client_connections reached"
                    );
                    return;
                };
                let addrs = Addrs { client, peer, local };
                match kind {
                    Kind::Https => serve_tls(stream, addrs, deadline, &server, token).await,
                    Kind::Http => {
                        let info = ConnInfo {
                            client,
                            remote: client,
                            remote_trusted: server.proxy_protocol.trusts(client.ip()),
                            peer,
                            local,
                            tls: None,
                        };
                        serve::serve(Box::new(stream), Protocol::Sniff, info, &server, token).await;
                    }
                }
            }
            .instrument(span),
        );
    }
    debug!(listener = ?local, "listener closed");
}

fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The addresses of a connection.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    client: SocketAddr,
    peer: SocketAddr,
    local: SocketAddr,
}

async fn serve_tls(
    stream: TcpStream,
    addrs: Addrs,
    deadline: Instant,
    server: &Arc<Server>,
    token: CancellationToken,
) {
    // Boxed: the handshake's state is large, and a connection task keeps the size of its
    // largest state for its whole life (an idle connection lives long).
    let Some((tls, sni)) = Box::pin(handshake(stream, deadline, server)).await else {
        return;
    };
    let conn = tls.common();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    let protocol = Protocol::from_alpn(conn.alpn_protocol());
    server.metrics.tls_handshake(resumed);
    let info = ConnInfo {
        client: addrs.client,
        remote: addrs.client,
        remote_trusted: server.proxy_protocol.trusts(addrs.client.ip()),
        peer: addrs.peer,
        local: addrs.local,
        tls: Some(TlsInfo {
            sni,
            version,
            resumed,
        }),
    };
    serve::serve(tls, protocol, info, server, token).await;
}

/// The TLS handshake, with the SNI checks and ACME TLS-ALPN-01 answers. Returns the stream
/// (boxed, see [`serve::serve`]) and its (configured, lower-case) SNI, or `None` when the
/// connection is done.
async fn handshake(
    stream: TcpStream,
    deadline: Instant,
    server: &Server,
) -> Option<(Box<TlsStream>, Arc<str>)> {
    let failed = |why: HandshakeFailure| server.metrics.tls_handshake_failed(why);
    let mut accepting = Accepting::new(stream);
    let start = match tokio::time::timeout_at(deadline, accepting.client_hello()).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            debug!(failure = "client_hello", error = %e, "TLS handshake failed");
            failed(HandshakeFailure::ClientHello);
            return None;
        }
        Err(_) => {
            debug!(failure = "handshake_timeout", "TLS handshake failed");
            failed(HandshakeFailure::Timeout);
            return None;
        }
    };
    let hello = start.client_hello();
    let sni: Option<Arc<str>> = hello
        .server_name()
        .map(|s| Arc::from(s.to_ascii_lowercase()));
    // RFC 8737: a CA validating TLS-ALPN-01 offers only `acme-tls/1`; it gets the challenge
    // certificate of the order running for that host, and the connection ends after the
    // handshake. No order running (or not an ACME host): refused.
    if rustls_acme::is_tls_alpn_challenge(&hello) {
        let challenge = sni
            .as_deref()
            .and_then(|n| server.resolver.challenge_config(n));
        drop(start);
        let Some(config) = challenge else {
            debug!(
                failure = "acme_challenge_unexpected",
                sni = sni.as_deref().unwrap_or(""),
                "TLS handshake rejected"
            );
            return None;
        };
        match tokio::time::timeout_at(deadline, accepting.handshake(config)).await {
            Ok(Ok(mut tls)) => {
                info!(
                    sni = sni.as_deref().unwrap_or(""),
                    "answered an ACME TLS-ALPN-01 challenge"
                );
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            }
            Ok(Err(e)) => debug!(failure = "acme_challenge", error = %e, "TLS handshake failed"),
            Err(_) => debug!(failure = "handshake_timeout", "TLS handshake failed"),
        }
        return None;
    }
    let refused = match &sni {
        None => {
            debug!(failure = "no_sni", "TLS handshake rejected");
            Some(HandshakeFailure::NoSni)
        }
        Some(name) if !server.resolver.knows(name) => {
            let failure = if server.resolver.acme_host(name).is_some() {
                HandshakeFailure::CertificatePending
            } else {
                HandshakeFailure::UnknownSni
            };
            debug!(failure = failure.as_str(), sni = %name, "TLS handshake rejected");
            Some(failure)
        }
        Some(_) => None,
    };
    // Even for a refused SNI the handshake continues: the resolver then has no certificate,
    // and rustls ends the handshake with a proper alert instead of a bare close. It is counted
    // once, under the reason it was refused for.
    drop(start);
    let tls = match tokio::time::timeout_at(deadline, accepting.handshake(server.tls.clone())).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            if refused.is_none() {
                debug!(failure = "handshake", error = %e, "TLS handshake failed");
            }
            failed(refused.unwrap_or(HandshakeFailure::Handshake));
            return None;
        }
        Err(_) => {
            debug!(failure = "handshake_timeout", "TLS handshake failed");
            failed(refused.unwrap_or(HandshakeFailure::Timeout));
            return None;
        }
    };
    sni.map(|sni| (Box::new(tls), sni))
}

/// Logs why hyper closed a connection: malformed requests (answered 400/431 by hyper) at info,
/// routine endings (timeouts, resets) at debug.
fn log_connection_error(e: &(dyn std::error::Error + 'static)) {
    let Some(he) = e.downcast_ref::<hyper::Error>() else {
        debug!(failure = "io", error = %crate::error::chain(e), "connection closed");
        return;
    };
    if he.is_parse_too_large() {
        info!(
            failure = "header_too_large",
            status = 431,
            "request refused"
        );
    } else if he.is_parse() || he.is_parse_version_h2() {
        info!(failure = "malformed_request", status = 400, error = %crate::error::chain(e), "request refused");
    } else if he.is_timeout() {
        debug!(failure = "header_timeout", "connection closed");
    } else {
        debug!(failure = "io", error = %crate::error::chain(e), "connection closed");
    }
}
