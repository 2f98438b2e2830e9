//! Answers trackproxy gives itself instead of forwarding: ACME HTTP-01 key authorizations
//! (RFC 8555 §8.3), the redirect to HTTPS of `server.http_mode = "redirect"`, and the short
//! bodies of errors.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use super::body::ForwardBody;

/// A short local response (errors, redirects, local files).
#[must_use]
pub(crate) fn local_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ForwardBody> {
    let mut res = Response::new(Either::Right(Full::new(body.into())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

pub(crate) const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The key authorization for an HTTP-01 challenge, or 404 when no order waits for this token.
pub(crate) fn http01_response(host: &str, answer: Option<String>) -> Response<ForwardBody> {
    let Some(key_authorization) = answer else {
        tracing::debug!(host, "HTTP-01 challenge request for an unknown token");
        return local_response(StatusCode::NOT_FOUND, "404 Not Found\n");
    };
    tracing::info!(host, "answering an ACME HTTP-01 challenge");
    let mut res = local_response(StatusCode::OK, key_authorization);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    res
}

/// 308 to the same host, path and query over HTTPS (308 keeps the method: one-click
/// unsubscribe is a POST).
pub(crate) fn redirect_to_https(host: &HeaderValue, pq: &PathAndQuery) -> Response<ForwardBody> {
    // An explicit plain-HTTP port says nothing about the HTTPS port: use the default.
    let authority = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let host = authority.as_ref().map_or("", http::uri::Authority::host);
    let mut res = local_response(StatusCode::PERMANENT_REDIRECT, "");
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_keeps_path_and_query_and_drops_port() {
        let pq = PathAndQuery::from_static("/ls/click?upn=a%2Fb+c");
        let r = redirect_to_https(&HeaderValue::from_static("url1.example.com:8080"), &pq);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://url1.example.com/ls/click?upn=a%2Fb+c"
        );
        let r = redirect_to_https(&HeaderValue::from_static("url1.example.com"), &pq);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://url1.example.com/ls/click?upn=a%2Fb+c"
        );
    }
}
