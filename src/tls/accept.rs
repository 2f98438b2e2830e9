//! Accepting a TLS connection: the `ClientHello` is read first (rustls's `Acceptor`), its SNI
//! checked against the configured hosts, an ACME TLS-ALPN-01 validation (RFC 8737) answered
//! with its challenge certificate and closed, and every other handshake finished under the
//! deadline that also covers the PROXY header. Unknown or missing SNI fails the handshake
//! with an alert; nothing from the network can panic here.

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info};

use super::sni::SniResolver;
use super::stream::{Accepting, TlsStream};
use crate::client::TlsInfo;
use crate::metrics::{HandshakeFailure, Metrics};

/// Runs the TLS handshake of a new connection until `deadline`. Returns the stream (boxed)
/// and the connection's TLS facts, or `None` when the connection is done (refused, failed,
/// timed out, or an ACME validation answered). Counted in `trackproxy_tls_handshakes_total`
/// and its failures.
pub(crate) async fn accept(
    stream: TcpStream,
    deadline: Instant,
    config: &Arc<ServerConfig>,
    resolver: &SniResolver,
    metrics: &Metrics,
) -> Option<(Box<TlsStream>, TlsInfo)> {
    let (tls, sni) = handshake(stream, deadline, config, resolver, metrics).await?;
    let conn = tls.common();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    metrics.tls_handshake(resumed);
    Some((
        tls,
        TlsInfo {
            sni,
            version,
            resumed,
        },
    ))
}

/// The TLS handshake, with the SNI checks and ACME TLS-ALPN-01 answers. Returns the stream
/// (boxed: the connection task keeps it for the connection's life) and its (configured, lower-case) SNI, or `None` when the
/// connection is done.
async fn handshake(
    stream: TcpStream,
    deadline: Instant,
    config: &Arc<ServerConfig>,
    resolver: &SniResolver,
    metrics: &Metrics,
) -> Option<(Box<TlsStream>, Arc<str>)> {
    let failed = |why: HandshakeFailure| metrics.tls_handshake_failed(why);
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
        let mut challenge = sni.as_deref().and_then(|n| resolver.challenge_config(n));
        // No order of this replica waits: with a shared store, another replica's may.
        if challenge.is_none()
            && let Some(name) = sni.as_deref()
            && resolver.acme_host(name).is_some()
            && let Some(shared) = resolver.shared_challenges()
        {
            challenge = tokio::time::timeout_at(deadline, shared.tls_alpn01(name))
                .await
                .ok()
                .flatten();
        }
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
        Some(name) if !resolver.knows(name) => {
            let failure = if resolver.acme_host(name).is_some() {
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
    let tls = match tokio::time::timeout_at(deadline, accepting.handshake(config.clone())).await {
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
