//! Who the client is: the facts of the connection a request arrived on ([`ConnInfo`],
//! [`TlsInfo`]), the client address behind a load balancer (PROXY protocol source, or
//! `X-Forwarded-For` / `Forwarded` from a trusted proxy: [`client_ip`]), the key a client is
//! limited under ([`client_key`]), and [`Cidrs`], the one "is this address in these networks"
//! check used by `server.trusted_proxies` (PROXY protocol and `X-Forwarded-For`) and
//! `limits.allow` alike.
//!
//! The TCP peer (or the PROXY protocol source) is the address that sent us the request. When it
//! is a trusted proxy, the client is the right-most address in `X-Forwarded-For` (or RFC 7239
//! `Forwarded: for=`) that is not itself a trusted proxy: every proxy appends the address it
//! received from, so addresses left of the first untrusted one were written by the client and
//! prove nothing. From anyone else these headers are ignored (and replaced before forwarding).
//!
//! This module is the bottom layer: it imports no other module of the crate.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::header::FORWARDED;
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// `X-Forwarded-For` (de facto standard; RFC 7239 `Forwarded` is its successor).
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the HTTP layer knows about the connection a request arrived on. Inserted into every
/// request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client, for logs, rate limits and `X-Forwarded-For`: [`ConnInfo::remote`], or, when
    /// that is a trusted proxy, the right-most untrusted address of its `X-Forwarded-For`
    /// (set per request; port 0 then).
    pub client: SocketAddr,
    /// Who sent us the HTTP request: the TCP peer, or the address a trusted PROXY header
    /// carried.
    pub remote: SocketAddr,
    /// Whether [`ConnInfo::remote`] is in `server.trusted_proxies` (an L7 load balancer whose
    /// `X-Forwarded-For` is believed and extended).
    pub remote_trusted: bool,
    /// The TCP peer (a load balancer when PROXY protocol is used).
    pub peer: SocketAddr,
    /// Our address the connection arrived on.
    pub local: SocketAddr,
    /// TLS facts; `None` on the plain-HTTP listener.
    pub tls: Option<TlsInfo>,
}

/// TLS facts of a connection.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The SNI the client asked for (lower case); always a configured host.
    pub sni: Arc<str>,
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// Whether the session was resumed (no full handshake).
    pub resumed: bool,
}

/// A set of networks (`server.trusted_proxies`, `limits.allow`).
///
/// [`Cidrs::contains`] treats an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, how an IPv4
/// client shows up on a dual-stack `[::]` listener) as the IPv4 address it carries, so
/// `10.0.0.0/8` matches it wherever it is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(Vec<IpNet>);

impl Cidrs {
    /// Whether `ip` is in one of the networks.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether there are no networks.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The networks, as configured.
    #[must_use]
    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }
}

impl From<Vec<IpNet>> for Cidrs {
    fn from(nets: Vec<IpNet>) -> Self {
        Cidrs(nets)
    }
}

impl FromIterator<IpNet> for Cidrs {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        Cidrs(iter.into_iter().collect())
    }
}

/// An address as it should be shown and compared: an IPv4-mapped IPv6 address (an IPv4 client
/// on a dual-stack listener) becomes the IPv4 address it carries.
#[must_use]
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The key a client is limited under: IPv4 addresses as they are (IPv4-mapped IPv6 included),
/// IPv6 addresses by their /64 — one subscriber or host usually owns a whole /64, so keying by
/// /128 would let one client rotate through 2^64 keys.
#[must_use]
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The client address for a request that `sender` sent us.
#[must_use]
pub fn client_ip(headers: &HeaderMap, sender: IpAddr, trusted: &Cidrs) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.contains(*ip);
    if !is_trusted(&sender) {
        return sender;
    }
    let chain = if headers.contains_key(X_FORWARDED_FOR) {
        x_forwarded_for(headers)
    } else {
        forwarded_for(headers)
    };
    let mut client = sender;
    for hop in chain.iter().rev() {
        // An entry that is not an address ("unknown", garbage) ends what can be believed.
        let Some(ip) = hop else { break };
        client = *ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// `X-Forwarded-For` entries in order (all header lines, comma-separated).
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("garbage").split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// RFC 7239 `Forwarded` `for=` values in order.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(FORWARDED)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("for=garbage").split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    s.rsplit_once(':')
        .and_then(|(ip, port)| port.parse::<u16>().ok().and(ip.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn client_ip_table() {
        let trusted = Cidrs::from(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8:ffff::/48".parse().unwrap(),
        ]);
        let cases: &[Case<'_>] = &[
            // untrusted sender: headers ignored
            (
                "203.0.113.1",
                &[("x-forwarded-for", "198.51.100.7")],
                "203.0.113.1",
            ),
            // trusted sender: right-most untrusted
            (
                "10.0.0.2",
                &[("x-forwarded-for", "198.51.100.7")],
                "198.51.100.7",
            ),
            (
                "10.0.0.2",
                &[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.9")],
                "198.51.100.7",
            ),
            (
                "10.0.0.2",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "198.51.100.7"),
                ],
                "198.51.100.7",
            ),
            // everything trusted: the left-most
            (
                "10.0.0.2",
                &[("x-forwarded-for", "10.1.1.1, 10.0.0.9")],
                "10.1.1.1",
            ),
            // garbage stops the walk at the last address that can be believed
            (
                "10.0.0.2",
                &[("x-forwarded-for", "198.51.100.7, nonsense, 10.0.0.9")],
                "10.0.0.9",
            ),
            (
                "10.0.0.2",
                &[("x-forwarded-for", "[2001:db8::7]:4711")],
                "2001:db8::7",
            ),
            (
                "10.0.0.2",
                &[("x-forwarded-for", "198.51.100.7:4711")],
                "198.51.100.7",
            ),
            // no header from a trusted sender: the sender
            ("10.0.0.2", &[], "10.0.0.2"),
            // RFC 7239
            (
                "10.0.0.2",
                &[(
                    "forwarded",
                    "for=192.0.2.60;proto=https, for=\"[2001:db8::1]:4711\"",
                )],
                "2001:db8::1",
            ),
            ("10.0.0.2", &[("forwarded", "for=unknown")], "10.0.0.2"),
            (
                "2001:db8:ffff::1",
                &[("forwarded", "For=192.0.2.60")],
                "192.0.2.60",
            ),
        ];
        for (sender, headers, want) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in *headers {
                h.append(*k, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(
                client_ip(&h, ip(sender), &trusted),
                ip(want),
                "{sender} {headers:?}"
            );
        }
    }
}
