//! The per-host rules of an ESP preset and the host's own hygiene keys, applied to each
//! request before it goes upstream: whether plain HTTP may be redirected, which methods and
//! paths are forwarded (`paths`), which cookies reach the ESP (`forward_cookies`), and the
//! ESP's limit on the size of the request headers (Amazon SES: 8 192 bytes, else it answers
//! 400).

use http::{HeaderMap, Method, Response, StatusCode, header};

use super::body::ForwardBody;
use super::headers;
use super::local::local_response;
use crate::config::esp::RedirectPolicy;
use crate::config::{Esp, ForwardCookies, HostConfig};
use crate::error::ProxyError;

/// What one host's requests must respect.
#[derive(Debug, Clone)]
pub struct HostRules {
    /// The ESP preset of the host.
    pub esp: &'static Esp,
    /// Which cookies reach the ESP.
    pub cookies: ForwardCookies,
    /// Path prefixes forwarded; `None`: all.
    pub paths: Option<Vec<String>>,
}

impl HostRules {
    /// The rules of `h`.
    #[must_use]
    pub fn of(h: &HostConfig) -> Self {
        HostRules {
            esp: h.esp,
            cookies: h.forward_cookies.clone(),
            paths: h.paths.clone(),
        }
    }

    /// Whether `server.http_mode = "redirect"` may redirect this host's plain-HTTP requests
    /// (`SparkPost` asks proxies not to).
    pub(crate) fn may_redirect(&self) -> bool {
        self.esp.redirect == RedirectPolicy::Allowed
    }

    /// Refuses what this host does not forward: a method outside the ESP's recipe (405), a
    /// path outside `paths` (404, logged).
    pub(crate) fn admit(
        &self,
        host: &str,
        method: &Method,
        path: &str,
    ) -> Result<Option<Response<ForwardBody>>, ProxyError> {
        if !self.esp.allows_method(method.as_str()) {
            return Err(ProxyError::MethodNotAllowed(method.clone()));
        }
        if let Some(paths) = &self.paths
            && !paths.iter().any(|p| path.starts_with(p.as_str()))
        {
            // The path only: the query holds recipients' tracking tokens.
            tracing::info!(
                host,
                path,
                failure = "path_not_allowed",
                "path not in the host's `paths`: answered 404, not forwarded"
            );
            return Ok(Some(local_response(
                StatusCode::NOT_FOUND,
                "404 Not Found\n",
            )));
        }
        Ok(None)
    }

    /// Applies the cookie rule and the ESP's header-size limit to the headers the upstream
    /// will get. Over the limit, cookies are dropped first (the website's cookies on the parent
    /// domain are what usually pushes a click over it); if the request is still too large it
    /// is answered 431 here instead of the ESP's 400: `Some` is that answer.
    #[must_use]
    pub(crate) fn apply(
        &self,
        host: &str,
        headers: &mut HeaderMap,
    ) -> Option<Response<ForwardBody>> {
        match &self.cookies {
            ForwardCookies::All => {}
            ForwardCookies::None => {
                headers.remove(header::COOKIE);
            }
            ForwardCookies::Only(names) => headers::keep_cookies(headers, names),
        }
        let limit = self.esp.header_limit?;
        if headers::field_bytes(headers) <= limit {
            return None;
        }
        if headers.remove(header::COOKIE).is_some() {
            tracing::debug!(
                host,
                limit,
                "request headers over the ESP's limit: cookies not forwarded"
            );
            if headers::field_bytes(headers) <= limit {
                return None;
            }
        }
        let bytes = headers::field_bytes(headers);
        tracing::info!(
            host,
            bytes,
            limit,
            failure = "esp_header_limit",
            "request headers over the ESP's limit even without cookies: answered 431"
        );
        Some(local_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "431 Request Header Fields Too Large: {} accepts at most {limit} bytes of \
                 request headers\n",
                self.esp.title
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::esp;
    use http::HeaderValue;

    fn rules(name: &str, cookies: ForwardCookies) -> HostRules {
        HostRules {
            esp: esp::find(name).unwrap(),
            cookies,
            paths: None,
        }
    }

    #[test]
    fn cookies_are_filtered_by_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("sid=1; _ga=2"));
        h.append(header::COOKIE, HeaderValue::from_static("iterable_x=3"));
        let r = rules(
            "sendgrid",
            ForwardCookies::Only(vec!["_ga".into(), "iterable_x".into()]),
        );
        assert!(r.apply("h", &mut h).is_none());
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "_ga=2; iterable_x=3");
        assert!(
            rules("sendgrid", ForwardCookies::None)
                .apply("h", &mut h)
                .is_none()
        );
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn ses_limit_drops_cookies_then_refuses() {
        let r = rules("ses", ForwardCookies::All);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("r.example.com"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&"c=".repeat(5000)).unwrap(),
        );
        assert!(r.apply("h", &mut h).is_none());
        assert!(!h.contains_key(header::COOKIE));
        h.insert("x-big", HeaderValue::from_str(&"b".repeat(9000)).unwrap());
        let res = r.apply("h", &mut h).unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // sendgrid has no limit
        assert!(
            rules("sendgrid", ForwardCookies::All)
                .apply("h", &mut h)
                .is_none()
        );
    }
}
