//! Who the client is when an L7 load balancer sits in front.
//!
//! The TCP peer (or the PROXY protocol source) is the address that sent us the request. When it
//! is a trusted proxy, the client is the right-most address in `X-Forwarded-For` (or RFC 7239
//! `Forwarded: for=`) that is not itself a trusted proxy: every proxy appends the address it
//! received from, so addresses left of the first untrusted one were written by the client and
//! prove nothing. From anyone else these headers are ignored (and replaced before forwarding).

use std::net::IpAddr;

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

use super::headers::X_FORWARDED_FOR;

/// The client address for a request that `sender` sent us.
#[must_use]
pub fn client_ip(headers: &HeaderMap, sender: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
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
        let trusted: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8:ffff::/48".parse().unwrap(),
        ];
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
