//! Entry points for the `cargo fuzz` targets in `fuzz/` and for `tests/fuzz_corpus.rs`: one
//! function per piece of code that reads network or config input, each taking arbitrary bytes.
//! None of them may panic, whatever the bytes; where an invariant is cheap to state, it is
//! asserted, so that the fuzzer reports a violation as a crash. Hidden from the docs; not
//! covered by semver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, Version};

use crate::client::{Cidrs, client_ip};
use ::config::Map;

use crate::config::{self, Source};
use crate::forward::headers;
use crate::server::proxy_protocol::{self, Parsed};

/// A fuzz target: arbitrary bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their corpus directory (`fuzz/corpus/<name>/`) and of
/// their `cargo fuzz` target.
pub const TARGETS: [(&str, Target); 6] = [
    ("proxy_header", proxy_header),
    ("host", host),
    ("sni", sni),
    ("header_rewrite", header_rewrite),
    ("client_addr", client_addr),
    ("config", config_load),
];

/// The PROXY protocol reader's two steps on the first bytes of a connection: is this a
/// header, and what it says.
pub fn proxy_header(data: &[u8]) {
    let starts = proxy_protocol::starts_header(data);
    match proxy_protocol::parse(data) {
        Parsed::Header { len, .. } => {
            assert!(len <= data.len(), "header longer than the input");
            assert_ne!(starts, Some(false), "a header that does not start like one");
        }
        Parsed::Incomplete | Parsed::Malformed => {}
    }
}

/// The first byte's bits choose TLS (1) and HTTP/2 (2); the rest is lines: a request target,
/// then `name: value` fields. Fields that are not valid names or values are left out, as
/// hyper would have refused them.
fn request(data: &[u8]) -> (Request<()>, bool) {
    let (flags, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let mut lines = rest.split(|&b| b == b'\n');
    let uri = lines
        .next()
        .and_then(|l| Uri::try_from(trim_cr(l)).ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    *req.version_mut() = if flags & 2 != 0 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = header_map(lines);
    (req, flags & 1 != 0)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn header_map<'a>(lines: impl Iterator<Item = &'a [u8]>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in lines {
        let line = trim_cr(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// `Host` / `:authority` / absolute-form target: which host a request is for.
pub fn host(data: &[u8]) {
    let (req, tls) = request(data);
    if let Ok(target) = headers::target(&req, tls) {
        let name = target.name();
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
    }
}

/// A `ClientHello` as the TLS acceptor parses it, then its server name as the resolver and
/// the config treat it.
pub fn sni(data: &[u8]) {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = data;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let Ok(Some(accepted)) = acceptor.accept() else {
        return;
    };
    let Some(name) = accepted
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase)
    else {
        return;
    };
    if let Some(normal) = config::normalize_host_name(&name) {
        assert!(
            crate::tls::cert::name_matches(&normal, &normal),
            "{normal:?}"
        );
    }
    let _ = crate::tls::cert::name_matches("*.example.com", &name);
}

/// The request- and response-header rewrite, on the fields of [`host`]'s input format.
pub fn header_rewrite(data: &[u8]) {
    let (req, tls) = request(data);
    let flags = data.first().copied().unwrap_or(0);
    let original = req.headers().clone();
    let host = HeaderValue::from_static("url1234.example.com");
    let mut fields = original.clone();
    let client = if flags & 4 != 0 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
    };
    headers::prepare_request(
        &mut fields,
        &headers::Forwarding {
            client,
            peer_trusted: flags & 8 != 0,
            proto: if tls { "https" } else { "http" },
            host: &host,
        },
    );
    assert_eq!(fields.get(http::header::HOST), Some(&host));
    assert!(!fields.contains_key(http::header::CONNECTION));
    assert!(!fields.contains_key(http::header::TRANSFER_ENCODING));
    let xff = fields
        .get(headers::X_FORWARDED_FOR)
        .map(HeaderValue::as_bytes);
    assert!(
        xff.is_some_and(|v| v.ends_with(client.to_string().as_bytes())),
        "{xff:?}"
    );
    let mut response = original;
    headers::prepare_response(&mut response);
    assert!(!response.contains_key(http::header::CONNECTION));
    assert!(!response.contains_key(http::header::UPGRADE));
}

/// The client address from `X-Forwarded-For` / `Forwarded`, in [`host`]'s input format; the
/// first byte's bits 4 and 8 choose the sender among trusted and untrusted addresses.
pub fn client_addr(data: &[u8]) {
    let (req, _) = request(data);
    let flags = data.first().copied().unwrap_or(0);
    let trusted = Cidrs::from(vec![
        "10.0.0.0/8".parse().expect("literal network"),
        "2001:db8:ffff::/48".parse().expect("literal network"),
    ]);
    let sender = match flags & 0b1100 {
        0b0000 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        0b0100 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
        0b1000 => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
        _ => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
    };
    let ip = client_ip(req.headers(), sender, &trusted);
    if !trusted.contains(sender) {
        assert_eq!(ip, sender, "an untrusted sender chose its address");
    }
}

/// Config loading from TOML text (the environment left empty, so the process's does not
/// leak in).
pub fn config_load(data: &[u8]) {
    let Ok(toml) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source::Text {
        label: "fuzz.toml",
        toml,
    };
    // Ok or a list of problems; either is fine, a panic is not.
    let _ = config::load_with_env(&source, Some(Map::new()));
}
