//! The errors that cross modules: [`ProxyError`] (what went wrong with one request, whose fault
//! it was, and the status the client gets; the rescue layer in `middleware` is the only place
//! that turns these into responses), [`UpstreamError`] (what failed towards the upstream) and
//! [`BindError`] (a listener address that could not be bound). [`chain`] formats an error with
//! its sources for logs.
//!
//! Errors of one boundary stay with it: `config::Errors` (every configuration problem, with key
//! and file), `tls::Error`, and the doctor's usage errors.
//!
//! This module imports no other module of the crate.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request itself is malformed (missing or conflicting Host, asterisk-form, …).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// CONNECT (or another tunnelling request): trackproxy is never a forward proxy.
    #[error("method {0} is not allowed")]
    MethodNotAllowed(http::Method),
    /// The Host (or `:authority`, or absolute-form target) names a host that is not configured.
    #[error("no route for host {host:?}")]
    UnknownHost {
        /// The host as the client sent it.
        host: String,
        /// Whether the request came over TLS (421) or plain HTTP (404).
        tls: bool,
    },
    /// Over TLS, the Host differs from the SNI the connection was set up for (RFC 9110 §15.5.20).
    #[error("host {host:?} does not match the TLS server name {sni:?}")]
    Misdirected {
        /// Host from the request.
        host: String,
        /// SNI from the handshake.
        sni: String,
    },
    /// TCP or TLS connection to the upstream failed (refused, unreachable, DNS, certificate).
    #[error("upstream {upstream}: connect failed")]
    UpstreamConnect {
        /// Upstream origin.
        upstream: String,
        /// What failed.
        #[source]
        source: UpstreamError,
    },
    /// The upstream connection failed after connecting (reset, malformed response, …).
    #[error("upstream {upstream}: request failed")]
    UpstreamRequest {
        /// Upstream origin.
        upstream: String,
        /// What failed.
        #[source]
        source: UpstreamError,
    },
    /// The upstream did not answer with a response head in time.
    #[error("upstream {upstream} did not respond within {after:?}")]
    UpstreamTimeout {
        /// Upstream origin.
        upstream: String,
        /// The configured response timeout.
        after: Duration,
    },
    /// The client sent more requests than `limits.per_client_rps` / `per_client_burst` allow.
    #[error("client rate limit exceeded; next request allowed in {retry_after:?}")]
    RateLimited {
        /// When the client may send its next request (`Retry-After`, rounded up to seconds).
        retry_after: Duration,
    },
    /// `limits.max_in_flight` requests are already being served: shed instead of queueing.
    #[error("too many requests in flight")]
    Overloaded,
    /// The request's `Transfer-Encoding` names a coding other than `chunked` (e.g. `gzip,
    /// chunked`): the proxy would pass the coded bytes on as plain content (RFC 9112 §6.1:
    /// a server SHOULD answer 501 to a transfer coding it does not understand).
    #[error("transfer coding other than chunked")]
    UnsupportedTransferCoding,
    /// An HTTP/2 request's header list is over `server.max_header_bytes` or
    /// `server.max_headers` (HTTP/1 heads over them are refused by hyper's parser).
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The client's request body is malformed: bad chunked framing, or it ended before its
    /// `Content-Length`.
    #[error("malformed request body")]
    ClientBody(#[source] hyper::Error),
    /// The client went away (connection reset, HTTP/2 stream reset) while sending its body.
    #[error("client aborted while sending the request body")]
    ClientAborted(#[source] hyper::Error),
}

/// The status logged and counted for a request whose client went away before it could be
/// answered (nginx's convention); never seen by the client.
pub const CLIENT_CLOSED: u16 = 499;

/// Whose fault an error is: drives the log level and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOrigin {
    /// The client sent something we refuse.
    Client,
    /// The upstream failed.
    Upstream,
    /// The proxy itself is at a configured capacity limit.
    Proxy,
}

impl ErrorOrigin {
    /// Label for logs and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorOrigin::Client => "client",
            ErrorOrigin::Upstream => "upstream",
            ErrorOrigin::Proxy => "proxy",
        }
    }
}

impl ProxyError {
    /// The status the client receives. Exhaustive on purpose: a new variant forces a decision.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnknownHost { tls: true, .. } | ProxyError::Misdirected { .. } => {
                StatusCode::MISDIRECTED_REQUEST
            }
            ProxyError::UnknownHost { tls: false, .. } => StatusCode::NOT_FOUND,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamRequest { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ClientAborted(_) => {
                StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// The error for a request body that failed while it was read from the client: framing
    /// errors and a premature end are the client's malformed request (400); anything else (a
    /// reset connection or stream) is the client going away.
    #[must_use]
    pub fn from_client_body(e: hyper::Error) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let mut malformed = e.is_parse() || e.is_incomplete_message();
        while let Some(c) = cur {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                malformed |= matches!(
                    io.kind(),
                    io::ErrorKind::InvalidData
                        | io::ErrorKind::InvalidInput
                        | io::ErrorKind::UnexpectedEof
                );
            }
            cur = c.source();
        }
        if malformed {
            ProxyError::ClientBody(e)
        } else {
            ProxyError::ClientAborted(e)
        }
    }

    /// Whose fault it is.
    #[must_use]
    pub fn origin(&self) -> ErrorOrigin {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::UnknownHost { .. }
            | ProxyError::Misdirected { .. }
            | ProxyError::RateLimited { .. }
            | ProxyError::HeadersTooLarge
            | ProxyError::UnsupportedTransferCoding
            | ProxyError::ClientBody(_)
            | ProxyError::ClientAborted(_) => ErrorOrigin::Client,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamRequest { .. }
            | ProxyError::UpstreamTimeout { .. } => ErrorOrigin::Upstream,
            ProxyError::Overloaded => ErrorOrigin::Proxy,
        }
    }

    /// A short, stable name for logs and metrics (`failure` field).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::UnknownHost { .. } => "unknown_host",
            ProxyError::Misdirected { .. } => "misdirected",
            ProxyError::UpstreamConnect { .. } => "upstream_connect",
            ProxyError::UpstreamRequest { .. } => "upstream_request",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::Overloaded => "overloaded",
            ProxyError::HeadersTooLarge => "header_too_large",
            ProxyError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ProxyError::ClientBody(_) => "bad_request_body",
            ProxyError::ClientAborted(_) => "client_aborted",
        }
    }

    /// The `Retry-After` value in whole seconds (RFC 9110 §10.2.3), for errors that have one.
    #[must_use]
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(secs.max(1))
            }
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::UnknownHost { .. }
            | ProxyError::Misdirected { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamRequest { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::Overloaded
            | ProxyError::HeadersTooLarge
            | ProxyError::UnsupportedTransferCoding
            | ProxyError::ClientBody(_)
            | ProxyError::ClientAborted(_) => None,
        }
    }
}

/// Formats an error with its whole `source()` chain: `a: b: c`.
#[must_use]
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// What the access log and the metrics note about a request that failed: whose fault it was
/// and its [`ProxyError::kind`]. Put on the error response's extensions by the rescue layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Whose fault.
    pub origin: ErrorOrigin,
    /// The `failure` value of logs and the `kind` label of metrics.
    pub kind: &'static str,
}

/// A boxed error from the connector stack (DNS, TCP, TLS).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: DNS, TCP, TLS or the connect timeout.
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// The connection failed while sending the request or reading the response head.
    #[error("connection failed")]
    Request(#[source] hyper::Error),
    /// The request has no absolute `https://` or `http://` target (a bug in the caller).
    #[error("request target without scheme and authority")]
    Target,
}

impl UpstreamError {
    /// Whether no connection could be made.
    #[must_use]
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// A listener address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({key})")]
pub struct BindError {
    /// Config key of the address.
    pub key: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: io::Error,
}
