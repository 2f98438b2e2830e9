//! Request-level errors: what went wrong with one request, whose fault it was, and the status the
//! client gets. The rescue layer (`middleware`) is the only place that turns these into responses.

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
        source: hyper_util::client::legacy::Error,
    },
    /// The upstream connection failed after connecting (reset, malformed response, …).
    #[error("upstream {upstream}: request failed")]
    UpstreamRequest {
        /// Upstream origin.
        upstream: String,
        /// What failed.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The upstream did not answer with a response head in time.
    #[error("upstream {upstream} did not respond within {after:?}")]
    UpstreamTimeout {
        /// Upstream origin.
        upstream: String,
        /// The configured response timeout.
        after: Duration,
    },
}

/// Whose fault an error is: drives the log level and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOrigin {
    /// The client sent something we refuse.
    Client,
    /// The upstream failed.
    Upstream,
}

impl ErrorOrigin {
    /// Label for logs and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorOrigin::Client => "client",
            ErrorOrigin::Upstream => "upstream",
        }
    }
}

impl ProxyError {
    /// The status the client receives. Exhaustive on purpose: a new variant forces a decision.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UnknownHost { tls: true, .. } | ProxyError::Misdirected { .. } => {
                StatusCode::MISDIRECTED_REQUEST
            }
            ProxyError::UnknownHost { tls: false, .. } => StatusCode::NOT_FOUND,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamRequest { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whose fault it is.
    #[must_use]
    pub fn origin(&self) -> ErrorOrigin {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::UnknownHost { .. }
            | ProxyError::Misdirected { .. } => ErrorOrigin::Client,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamRequest { .. }
            | ProxyError::UpstreamTimeout { .. } => ErrorOrigin::Upstream,
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
