//! The accept loops, and the steps of a new connection in order: a slot in
//! `limits.max_connections`, the PROXY header, a per-client slot, the TLS handshake
//! (`crate::tls::accept`), then HTTP (`super::http`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::context::Server;
use super::http::{self as serve, Protocol};
use crate::client::{self, ConnInfo};
use crate::tls;

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
    let accepted = tls::accept::accept(
        stream,
        deadline,
        &server.tls,
        &server.resolver,
        &server.metrics,
    );
    let Some((tls, tls_info)) = Box::pin(accepted).await else {
        return;
    };
    let protocol = Protocol::from_alpn(tls.common().alpn_protocol());
    let info = ConnInfo {
        client: addrs.client,
        remote: addrs.client,
        remote_trusted: server.proxy_protocol.trusts(addrs.client.ip()),
        peer: addrs.peer,
        local: addrs.local,
        tls: Some(tls_info),
    };
    serve::serve(tls, protocol, info, server, token).await;
}
