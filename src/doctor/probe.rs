//! Network probes of the doctor: TCP connect, TLS handshake with SNI, certificate
//! verification, and one HTTP/1.1 request that never follows a redirect.
//!
//! The handshake itself accepts any certificate (signatures are still checked) so that the
//! doctor can show *what* a server presents; the chain is then verified separately against
//! the roots, and the result is reported instead of aborting the handshake. Requests are only
//! sent over connections whose certificate verified, like a browser would.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, InvalidDnsNameError, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::SignaturesOnly;
use crate::tls::cert::{self, CertInfo, CertSource};

/// Why a probe did not get an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// Nothing to connect to.
    #[error("no address to connect to")]
    NoAddress,
    /// TCP connect failed (refused, unreachable).
    #[error("TCP connect to {addr} failed")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A step took longer than the limit.
    #[error("{step} with {addr} took longer than {limit:?}")]
    Timeout {
        /// `TCP connect`, `TLS handshake` or `HTTP response`.
        step: &'static str,
        /// Where.
        addr: SocketAddr,
        /// The limit.
        limit: Duration,
    },
    /// The TLS handshake failed (an alert such as `unrecognised_name`, a protocol error).
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        /// Where.
        addr: SocketAddr,
        /// Why (wraps the rustls error).
        #[source]
        source: std::io::Error,
    },
    /// The name cannot be sent as SNI.
    #[error("{name:?} is not a valid TLS server name")]
    ServerName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: InvalidDnsNameError,
    },
    /// The server sent no certificate.
    #[error("{addr} sent no certificate")]
    NoCertificate {
        /// Where.
        addr: SocketAddr,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to {addr} failed")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (bad target or header value).
    #[error("cannot build the request")]
    Request(#[source] http::Error),
}

/// A root file given with `--ca-file` (or `upstream.ca_file`) could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootsError {
    /// Unreadable or not PEM.
    #[error("cannot read CA file {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// No certificate in it.
    #[error("CA file {path} holds no CERTIFICATE block")]
    Empty {
        /// The file.
        path: String,
    },
    /// A certificate rustls cannot use as a root.
    #[error("CA file {path}: unusable certificate")]
    Unusable {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The verifier could not be built from the roots.
    #[error("building the certificate verifier")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
}

/// What a TLS server presented, and whether it verified.
#[derive(Debug)]
pub(crate) struct Presented {
    /// The address that answered.
    pub addr: SocketAddr,
    /// Facts about the leaf, when it parses.
    pub leaf: Option<CertInfo>,
    /// Certificates sent (leaf first).
    pub chain_len: usize,
    /// Verification against the roots, for the SNI name, now.
    pub verified: Result<(), rustls::Error>,
    /// Negotiated protocol version, e.g. `TLSv1_3`.
    pub version: String,
}

/// One HTTP answer (head only).
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
}

impl Answer {
    /// A header as text, if present and printable.
    #[must_use]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// TLS client side of the probes: roots, provider and the time limit per step.
pub(crate) struct Prober {
    verifier: Arc<WebPkiServerVerifier>,
    connector: TlsConnector,
    limit: Duration,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// The built-in (Mozilla) roots plus every certificate of `extra` files.
///
/// # Errors
/// When a file cannot be read or holds no usable certificate.
pub(crate) fn roots(extra: &[&Path]) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra {
        let shown = path.display().to_string();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|source| RootsError::Read {
                path: shown.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(RootsError::Empty { path: shown });
        }
        for c in certs {
            roots.add(c).map_err(|source| RootsError::Unusable {
                path: shown.clone(),
                source,
            })?;
        }
    }
    Ok(roots)
}

impl Prober {
    /// A prober verifying against `roots`, with `limit` per network step.
    ///
    /// # Errors
    /// When the verifier cannot be built (no usable roots).
    pub(crate) fn new(roots: RootCertStore, limit: Duration) -> Result<Prober, RootsError> {
        let provider = crate::tls::provider();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(RootsError::Verifier)?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| RootsError::Unusable {
                path: String::new(),
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignaturesOnly(provider.clone())))
            .with_no_client_auth();
        // HTTP/1.1 only: the probe speaks HTTP/1.1 over the connection.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Prober {
            verifier,
            connector: TlsConnector::from(Arc::new(cfg)),
            limit,
        })
    }

    /// TCP connect to the first of `addrs` that accepts (at most three are tried), each under
    /// the time limit.
    ///
    /// # Errors
    /// The last failure, or [`ProbeError::NoAddress`].
    pub(crate) async fn tcp(
        &self,
        addrs: &[SocketAddr],
    ) -> Result<(TcpStream, SocketAddr), ProbeError> {
        let mut last = ProbeError::NoAddress;
        for &addr in addrs.iter().take(3) {
            match tokio::time::timeout(self.limit, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => return Ok((s, addr)),
                Ok(Err(source)) => last = ProbeError::Connect { addr, source },
                Err(_) => {
                    last = ProbeError::Timeout {
                        step: "TCP connect",
                        addr,
                        limit: self.limit,
                    };
                }
            }
        }
        Err(last)
    }

    /// Connects to one of `addrs`, shakes hands with SNI `sni`, and verifies the presented
    /// chain for `sni`. The stream is returned for a request when it verified.
    ///
    /// # Errors
    /// When no connection or handshake completes.
    pub(crate) async fn tls(
        &self,
        addrs: &[SocketAddr],
        sni: &str,
    ) -> Result<(Presented, TlsStream<TcpStream>), ProbeError> {
        let name =
            ServerName::try_from(sni.to_owned()).map_err(|source| ProbeError::ServerName {
                name: sni.to_owned(),
                source,
            })?;
        let (tcp, addr) = self.tcp(addrs).await?;
        let stream = tokio::time::timeout(self.limit, self.connector.connect(name.clone(), tcp))
            .await
            .map_err(|_| ProbeError::Timeout {
                step: "TLS handshake",
                addr,
                limit: self.limit,
            })?
            .map_err(|source| ProbeError::Handshake { addr, source })?;
        let conn = stream.get_ref().1;
        let chain: Vec<CertificateDer<'static>> = conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
            .unwrap_or_default();
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(ProbeError::NoCertificate { addr });
        };
        let verified = self
            .verifier
            .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
            .map(|_| ());
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let presented = Presented {
            addr,
            leaf: cert::inspect(Some(leaf), CertSource::Presented).ok(),
            chain_len: chain.len(),
            verified,
            version,
        };
        Ok((presented, stream))
    }

    /// Sends `GET target` with `Host: host` over `io` (HTTP/1.1, `Connection: close`) and
    /// returns the response head; redirects are never followed, the body is not read.
    ///
    /// # Errors
    /// When the exchange fails or the answer does not come within the limit.
    pub(crate) async fn get<S>(
        &self,
        io: S,
        addr: SocketAddr,
        host: &str,
        target: &str,
    ) -> Result<Answer, ProbeError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Ok(self.fetch(io, addr, host, target, 0).await?.0)
    }

    /// Like [`Prober::get`], and reads up to `max_body` bytes of the body (more are not read:
    /// the body returned is then `max_body + 1` bytes long, so the caller sees it was larger);
    /// `max_body = 0` reads none.
    ///
    /// # Errors
    /// When the exchange fails or the answer does not come within the limit.
    pub(crate) async fn fetch<S>(
        &self,
        io: S,
        addr: SocketAddr,
        host: &str,
        target: &str,
        max_body: usize,
    ) -> Result<(Answer, Vec<u8>), ProbeError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let req = Request::get(target)
            .header(http::header::HOST, host)
            .header(
                http::header::USER_AGENT,
                concat!("trackproxy-doctor/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT, "*/*")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(ProbeError::Request)?;
        let exchange = async {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .map_err(|source| ProbeError::Http { addr, source })?;
            // The connection is dropped with the answer (or on timeout).
            let _driver = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(conn));
            let mut res = send
                .send_request(req)
                .await
                .map_err(|source| ProbeError::Http { addr, source })?;
            let mut body = Vec::new();
            // `get` reads the head only: a body the ESP streams slowly must not hold it up.
            while max_body > 0 && body.len() <= max_body {
                let Some(frame) = res.body_mut().frame().await else {
                    break;
                };
                let frame = frame.map_err(|source| ProbeError::Http { addr, source })?;
                if let Some(data) = frame.data_ref() {
                    let room = max_body + 1 - body.len();
                    body.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Ok::<_, ProbeError>((res, body))
        };
        let (res, body) = tokio::time::timeout(self.limit, exchange)
            .await
            .map_err(|_| ProbeError::Timeout {
                step: "HTTP response",
                addr,
                limit: self.limit,
            })??;
        Ok((
            Answer {
                status: res.status(),
                headers: res.headers().clone(),
            },
            body,
        ))
    }
}

/// `error: cause: cause`, for evidence lines.
#[must_use]
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // io::Error wrapping a rustls error repeats it; skip exact repeats.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
