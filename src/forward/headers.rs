//! Header rules of the forwarder: which host a request is for, which headers are hop-by-hop,
//! and the `X-Forwarded-*` set.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Version};

use crate::error::ProxyError;

/// The host a request is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Where the host name is read from.
    host: Host,
    /// `Some` only when the host needed lower-casing: most clients send it in lower case.
    lower: Option<String>,
    /// What the upstream gets as `Host`: the host as the client sent it, with the port only
    /// if it is not the default port of the client's scheme.
    pub(crate) host_header: HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// The host of this authority.
    Authority(Authority),
    /// `host_header` is a bare lower-case host name.
    Header,
}

impl Target {
    /// Host name for routing: lower case, no trailing dot, no port.
    pub(crate) fn name(&self) -> &str {
        if let Some(lower) = &self.lower {
            return lower;
        }
        let host = match &self.host {
            Host::Authority(a) => a.host(),
            Host::Header => self.host_header.to_str().unwrap_or(""),
        };
        host.strip_suffix('.').unwrap_or(host)
    }
}

/// Whether a `Host` value is a bare host name in lower case: letters, digits, `-` and `.`.
/// Such a value is a valid authority whose host is the whole value and that has no port, so
/// it needs neither parsing nor a copy. Anything else (ports, IP literals, upper case, invalid
/// characters) goes through [`Authority`].
fn is_plain_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Finds the host a request is for (RFC 9112 §3.2, RFC 9113 §8.3.1).
///
/// - absolute-form targets (`GET http://host/path`) name the host; `Host` is then ignored, as
///   RFC 9112 §3.2.2 requires;
/// - HTTP/2 `:authority` names the host; a `Host` header that differs is malformed;
/// - otherwise exactly one `Host` header.
pub(crate) fn target<B>(req: &Request<B>, tls: bool) -> Result<Target, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if req.uri().authority().is_none()
        && let Some(h) = host_header
        && is_plain_host(h.as_bytes())
    {
        // The usual HTTP/1.1 request: `Host: url1234.example.com`.
        return Ok(Target {
            host: Host::Header,
            lower: None,
            host_header: h.clone(),
        });
    }
    let authority = if let Some(auth) = req.uri().authority() {
        if req.version() == Version::HTTP_2
            && host_header
                .is_some_and(|h| !h.as_bytes().eq_ignore_ascii_case(auth.as_str().as_bytes()))
        {
            return Err(ProxyError::BadRequest(
                "Host header differs from :authority",
            ));
        }
        auth.clone()
    } else {
        let Some(h) = host_header else {
            return Err(ProxyError::BadRequest("missing Host header"));
        };
        Authority::try_from(h.as_bytes())
            .map_err(|_| ProxyError::BadRequest("Host header is not a valid authority"))?
    };
    if authority.as_str().contains('@') {
        return Err(ProxyError::BadRequest(
            "user information in the request target",
        ));
    }
    let host = authority.host();
    let default_port = if tls { 443 } else { 80 };
    let sent = match authority.port_u16() {
        Some(p) if p != default_port => authority.as_str(),
        _ => host,
    };
    let host_header = match host_header {
        // `Host` is already what the upstream gets. Its value shares the request's buffer, so
        // this copy costs no allocation.
        Some(h) if h.as_bytes() == sent.as_bytes() => h.clone(),
        // HTTP/2 (`:authority`), or a port to drop: a view of the authority, which is
        // reference-counted. One allocation, and none more when the value is cloned into
        // X-Forwarded-Host (a copied value would allocate again on its first clone).
        _ if authority.as_str().starts_with(sent) => {
            let len = sent.len();
            HeaderValue::from_maybe_shared(
                Bytes::from_owner(AuthorityText(authority.clone())).slice(..len),
            )
            .map_err(|_| ProxyError::BadRequest("Host header is not a valid authority"))?
        }
        _ => HeaderValue::from_str(sent)
            .map_err(|_| ProxyError::BadRequest("Host header is not a valid authority"))?,
    };
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let lower = trimmed
        .bytes()
        .any(|b| b.is_ascii_uppercase())
        .then(|| trimmed.to_ascii_lowercase());
    Ok(Target {
        host: Host::Authority(authority),
        lower,
        host_header,
    })
}

/// An authority's text as bytes, for [`Bytes::from_owner`].
struct AuthorityText(Authority);

impl AsRef<[u8]> for AuthorityText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_str().as_bytes()
    }
}

/// Hop-by-hop fields always removed (RFC 9110 §7.6.1, plus the non-standard ones proxies
/// historically treated as such).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Removes hop-by-hop fields: those named in `Connection` first, then the fixed set.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and responses carry none of them: one pass over the (few) names instead
    // of a lookup per hop-by-hop name. `Connection` is in the set.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The `X-Forwarded-*` family (and `Forwarded`) as the upstream should see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    /// The client's address (the TCP peer, or the address a trusted PROXY header carried).
    pub(crate) client: IpAddr,
    /// Whether the peer is a trusted proxy whose `X-Forwarded-For` chain we extend.
    pub(crate) peer_trusted: bool,
    /// `https` or `http`: the scheme the client used.
    pub(crate) proto: &'static str,
    /// The branded host.
    pub(crate) host: &'a HeaderValue,
}

/// Whether an HTTP/2 request's head is over `max_bytes` or `max_fields`, counted as its
/// HTTP/1.1 head would be (request line, then `name: value` and CRLF per field), so that one
/// limit means the same on both protocols.
pub(crate) fn over_limits<B>(req: &http::Request<B>, max_bytes: usize, max_fields: usize) -> bool {
    let headers = req.headers();
    if headers.len() > max_fields {
        return true;
    }
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let mut bytes = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    if let Some(a) = uri.authority() {
        // `:authority` stands for `Host`.
        bytes += "host: \r\n".len() + a.as_str().len();
    }
    for (name, value) in headers {
        bytes += name.as_str().len() + value.len() + 4;
        if bytes > max_bytes {
            return true;
        }
    }
    bytes + 2 > max_bytes
}

/// Prepares a request's headers for the upstream: hop-by-hop removed, `Host` set to the
/// branded host, `X-Forwarded-For` appended (trusted peer) or replaced (anyone else: a client
/// must not choose the address the ESP records), `X-Forwarded-Proto`/`-Host` set.
pub(crate) fn prepare_request(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    strip_hop_by_hop(headers);
    // hyper answered any `Expect: 100-continue` itself when the body was first read.
    headers.remove(header::EXPECT);
    headers.insert(header::HOST, fwd.host.clone());

    let prior: Vec<&str> = if fwd.peer_trusted {
        headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    } else {
        headers.remove(header::FORWARDED);
        Vec::new()
    };
    let xff = if prior.is_empty() {
        // The usual case: the address alone, formatted on the stack and copied once.
        ip_header_value(fwd.client)
    } else {
        HeaderValue::from_str(&format!("{}, {}", prior.join(", "), fwd.client)).ok()
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(fwd.peer_trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    }
    if !(fwd.peer_trusted && headers.contains_key(X_FORWARDED_HOST)) {
        headers.insert(X_FORWARDED_HOST, fwd.host.clone());
    }
}

/// An address as a header value, without an intermediate `String`.
fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    use std::io::Write as _;
    // The longest text form of an IPv6 address is 45 characters.
    let mut buf = [0u8; 48];
    let len = match ip {
        // By hand: `Ipv4Addr`'s `Display` costs about twenty times as much.
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            write!(cursor, "{ip}").ok()?;
            usize::try_from(cursor.position()).ok()?
        }
    };
    HeaderValue::from_bytes(buf.get(..len)?).ok()
}

/// Prepares a response's headers for the client: hop-by-hop removed, everything else
/// (`Location`, every `Set-Cookie`, caching headers) untouched.
pub(crate) fn prepare_response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// `X-Forwarded-For`.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Keeps only the cookies named in `keep` (RFC 6265 §5.4: `Cookie: a=1; b=2`); with HTTP/2
/// a client may send several `cookie` fields, so what is kept goes out as one field, joined
/// with `"; "` (RFC 9113 §8.2.3). No field at all when nothing is kept.
pub(crate) fn keep_cookies(headers: &mut HeaderMap, keep: &[String]) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n).trim();
            keep.iter().any(|k| k == name)
        })
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// The size of the header fields as an HTTP/1.1 upstream receives them: `name: value` and
/// CRLF for each field.
pub(crate) fn field_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum()
}

/// Whether `Transfer-Encoding` names any coding other than `chunked` (hyper accepts a list
/// ending in `chunked`, such as `gzip, chunked`, and hands on the de-chunked bytes, which are
/// still gzip-coded; forwarded, chunked again without the header, the ESP would take them for
/// the plain content).
pub(crate) fn has_other_transfer_coding(headers: &HeaderMap) -> bool {
    headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"chunked"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    type Outcome = Result<(String, String), String>;

    fn t(version: Version, uri: &str, hosts: &[&str], tls: bool) -> Outcome {
        target(&req(version, uri, hosts), tls)
            .map(|t| {
                (
                    t.name().to_owned(),
                    t.host_header.to_str().unwrap().to_owned(),
                )
            })
            .map_err(|e| e.to_string())
    }

    /// RFC 9112 §3.2 and §3.2.2, RFC 9113 §8.3.1.
    #[test]
    #[allow(clippy::too_many_lines)] // one row per case
    fn target_host_table() {
        use Version as V;
        type Case<'a> = (
            V,
            &'a str,
            &'a [&'a str],
            bool,
            Result<(&'a str, &'a str), &'a str>,
        );
        let cases: &[Case<'_>] = &[
            (
                V::HTTP_11,
                "/ls/click",
                &["url1.example.com"],
                true,
                Ok(("url1.example.com", "url1.example.com")),
            ),
            // default port dropped, others kept, case kept for Host but not for routing
            (
                V::HTTP_11,
                "/",
                &["URL1.Example.com:443"],
                true,
                Ok(("url1.example.com", "URL1.Example.com")),
            ),
            (
                V::HTTP_11,
                "/",
                &["url1.example.com:80"],
                false,
                Ok(("url1.example.com", "url1.example.com")),
            ),
            (
                V::HTTP_11,
                "/",
                &["url1.example.com:8443"],
                true,
                Ok(("url1.example.com", "url1.example.com:8443")),
            ),
            (
                V::HTTP_11,
                "/",
                &["url1.example.com:443"],
                false,
                Ok(("url1.example.com", "url1.example.com:443")),
            ),
            (
                V::HTTP_11,
                "/",
                &["url1.example.com."],
                true,
                Ok(("url1.example.com", "url1.example.com.")),
            ),
            // absolute-form wins over Host (RFC 9112 §3.2.2)
            (
                V::HTTP_11,
                "http://other.example/x",
                &["url1.example.com"],
                false,
                Ok(("other.example", "other.example")),
            ),
            (
                V::HTTP_11,
                "/",
                &[],
                true,
                Err("bad request: missing Host header"),
            ),
            (
                V::HTTP_11,
                "/",
                &["a.example", "b.example"],
                true,
                Err("bad request: more than one Host header"),
            ),
            (
                V::HTTP_11,
                "/",
                &["bad host"],
                true,
                Err("bad request: Host header is not a valid authority"),
            ),
            (
                V::HTTP_11,
                "/",
                &[""],
                true,
                Err("bad request: Host header is not a valid authority"),
            ),
            (
                V::HTTP_11,
                "/",
                &["192.0.2.1:8443"],
                true,
                Ok(("192.0.2.1", "192.0.2.1:8443")),
            ),
            (
                V::HTTP_11,
                "/",
                &["[2001:db8::1]"],
                true,
                Ok(("[2001:db8::1]", "[2001:db8::1]")),
            ),
            (
                V::HTTP_11,
                "/",
                &["user@url1.example.com"],
                true,
                Err("bad request: user information in the request target"),
            ),
            (
                V::HTTP_2,
                "https://url1.example.com/x",
                &[],
                true,
                Ok(("url1.example.com", "url1.example.com")),
            ),
            (
                V::HTTP_2,
                "https://url1.example.com/x",
                &["URL1.example.com"],
                true,
                Ok(("url1.example.com", "url1.example.com")),
            ),
            (
                V::HTTP_2,
                "https://url1.example.com:443/x",
                &[],
                true,
                Ok(("url1.example.com", "url1.example.com")),
            ),
            (
                V::HTTP_2,
                "https://URL1.example.com:8443/x",
                &[],
                true,
                Ok(("url1.example.com", "URL1.example.com:8443")),
            ),
            (
                V::HTTP_2,
                "https://url1.example.com/x",
                &["evil.example"],
                true,
                Err("bad request: Host header differs from :authority"),
            ),
        ];
        for (v, uri, hosts, tls, want) in cases {
            let got = t(*v, uri, hosts, *tls);
            let want = want
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .map_err(str::to_owned);
            assert_eq!(got, want, "{v:?} {uri} {hosts:?} tls={tls}");
        }
    }

    /// RFC 9110 §7.6.1: Connection, the fields it names, and the fixed hop-by-hop set go.
    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Hop, close"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("x-other-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-other-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("https://example.com/"),
        );
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["location", "set-cookie"]);
        assert_eq!(h.get_all(header::SET_COOKIE).iter().count(), 2);
    }

    #[test]
    fn forwarded_for_untrusted_is_replaced_trusted_is_appended() {
        let host = HeaderValue::from_static("url1.example.com");
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        let fwd = Forwarding {
            client: "203.0.113.7".parse().unwrap(),
            peer_trusted: false,
            proto: "https",
            host: &host,
        };
        prepare_request(&mut h, &fwd);
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.7");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "url1.example.com");
        assert_eq!(h[header::HOST], "url1.example.com");
        assert!(!h.contains_key(header::FORWARDED));

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
        let fwd = Forwarding {
            client: "2001:db8::1".parse().unwrap(),
            peer_trusted: true,
            proto: "http",
            host: &host,
        };
        prepare_request(&mut h, &fwd);
        assert_eq!(
            h[X_FORWARDED_FOR],
            "198.51.100.1, 198.51.100.2, 2001:db8::1"
        );
        assert_eq!(h[X_FORWARDED_PROTO], "http");

        // The longest address forms fit the stack buffer.
        for ip in [
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "255.255.255.255",
            "0.0.0.0",
            "10.100.9.199",
            "192.0.2.20",
        ] {
            let mut h = HeaderMap::new();
            let fwd = Forwarding {
                client: ip.parse().unwrap(),
                peer_trusted: true,
                proto: "https",
                host: &host,
            };
            prepare_request(&mut h, &fwd);
            assert_eq!(h[X_FORWARDED_FOR], ip);
        }
    }

    /// `Host` as the client sent it is passed on as the same value, not a copy.
    #[test]
    fn unchanged_host_header_is_reused() {
        let r = req(Version::HTTP_11, "/", &["url1.example.com"]);
        let t = target(&r, true).unwrap();
        assert_eq!(
            t.host_header.as_bytes().as_ptr(),
            r.headers()[header::HOST].as_bytes().as_ptr()
        );
        assert!(t.lower.is_none(), "no lower-case copy of a lower-case host");
        assert_eq!(t.host, Host::Header, "no parse of a bare host name");
        let r = req(Version::HTTP_11, "/", &["URL1.example.com."]);
        let t = target(&r, true).unwrap();
        assert_eq!(t.name(), "url1.example.com");
    }
}

#[cfg(test)]
mod limit_tests {
    use super::over_limits;

    #[test]
    fn http2_heads_are_measured_like_http1_ones() {
        let req = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri("https://url1234.example.test/ls/click?upn=x")
            .header("cookie", "c".repeat(40_000))
            .header("x-site-state", "s".repeat(40_000))
            .body(())
            .unwrap();
        assert!(over_limits(&req, 65_536, 100));
        assert!(!over_limits(&req, 100_000, 100));
        assert!(over_limits(&req, 100_000, 1));
    }
}
