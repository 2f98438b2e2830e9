//! The pooled HTTP/1.1 client to the upstreams (the ESP tracking hosts).
//!
//! TLS to the upstream uses SNI and verifies the certificate against the *upstream's* name
//! (`sendgrid.net`), while the request's `Host` carries the branded name: this is how
//! `SendGrid`'s own proxy recipe works. HTTP/1.1 only, because HTTP/2 would send the upstream's
//! `:authority` beside `Host`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;

use crate::config::{self, UpstreamConfig};

/// The client the forwarder sends requests with.
pub type UpstreamClient = Client<Connector, Incoming>;

/// Builds the pooled client.
///
/// # Errors
/// When `upstream.ca_file` cannot be read or holds no certificate.
pub fn client(
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
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle)
        .pool_timer(TokioTimer::new())
        // As on the server side: rustls would concatenate vectored writes into a new buffer.
        .http1_writev(false)
        .timer(TokioTimer::new())
        // Host is always set by the forwarder to the branded host.
        .set_host(false)
        .build(connector);
    Ok((client, opened))
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
pub struct Connector {
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
pub struct Conn(MaybeHttpsStream<TokioIo<TcpStream>>);

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
pub struct ConnectTimeout(Duration);
