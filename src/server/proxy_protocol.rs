//! PROXY protocol v1/v2 (HAProxy's spec) on accepted connections, parsed with the `ppp` crate.
//!
//! A header is read only from peers in `server.trusted_proxies`; its source address becomes the
//! connection's client address everywhere (logs, rate limits, `X-Forwarded-For`). Anyone else
//! who sends one is refused: it would otherwise choose the address we record. The header is
//! read with `peek` and then consumed exactly, so the TLS or HTTP bytes behind it stay in the
//! socket for the next stage; all of it happens under the caller's deadline.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::client::Cidrs;
use crate::config::ProxyProtocol;

/// v2 signature (12 bytes).
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest header accepted: v1 is at most 107 bytes; v2 is 16 + addresses + TLVs.
const MAX_HEADER: usize = 16 + 2048;

/// Why a connection was refused while looking for a PROXY header.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// The peer is not a trusted proxy but sent a PROXY header.
    #[error("PROXY header from an untrusted peer")]
    Untrusted,
    /// `proxy_protocol = "required"` and the peer is not a trusted proxy.
    #[error("connection from a peer that is not a trusted proxy")]
    NotAProxy,
    /// `proxy_protocol = "required"` and the connection does not start with a header.
    #[error("no PROXY header")]
    Missing,
    /// The header is malformed or too long.
    #[error("malformed PROXY header")]
    Malformed,
    /// The peer closed or the socket failed before a header was complete.
    #[error("reading the PROXY header")]
    Io(#[source] std::io::Error),
}

impl Refused {
    /// The `failure` label for logs and metrics.
    pub(crate) fn failure(&self) -> &'static str {
        match self {
            Refused::Untrusted => "proxy_header_untrusted",
            Refused::NotAProxy => "proxy_peer_untrusted",
            Refused::Missing => "proxy_header_missing",
            Refused::Malformed => "proxy_header_malformed",
            Refused::Io(_) => "proxy_header_io",
        }
    }
}

/// What to do about PROXY headers on a listener.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) mode: ProxyProtocol,
    pub(crate) trusted: Cidrs,
}

impl Policy {
    /// Whether `ip` is a trusted proxy.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.contains(ip)
    }

    /// Reads the PROXY header if there should be one and returns the client address: the
    /// header's source, or `peer` when there is none (or it is a health check's `LOCAL`).
    pub(crate) async fn client_addr(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, Refused> {
        if self.mode == ProxyProtocol::Off {
            return Ok(peer);
        }
        let mut buf = vec![0u8; MAX_HEADER];
        if !self.trusts(peer.ip()) {
            if self.mode == ProxyProtocol::Required {
                return Err(Refused::NotAProxy);
            }
            // Optional: serve the peer directly, unless it tries to claim another address.
            return match looks_like_header(stream, &mut buf).await? {
                Some(true) => Err(Refused::Untrusted),
                _ => Ok(peer),
            };
        }
        match looks_like_header(stream, &mut buf).await? {
            Some(true) => {}
            Some(false) if self.mode == ProxyProtocol::Optional => return Ok(peer),
            Some(false) => return Err(Refused::Missing),
            None => return Err(Refused::Io(std::io::ErrorKind::UnexpectedEof.into())),
        }
        loop {
            let n = stream.peek(&mut buf).await.map_err(Refused::Io)?;
            if n == 0 {
                return Err(Refused::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let (len, source) = match parse(&buf[..n]) {
                Parsed::Header { len, source } => (len, source),
                Parsed::Malformed => return Err(Refused::Malformed),
                Parsed::Incomplete if n == buf.len() => return Err(Refused::Malformed),
                Parsed::Incomplete => {
                    // The rest of the header is still in flight (rare: load balancers send it
                    // in one segment); wait a little instead of spinning on peek.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            // Consume exactly the header; what follows is the client's TLS or HTTP.
            let mut header = vec![0u8; len];
            stream.read_exact(&mut header).await.map_err(Refused::Io)?;
            return Ok(source.unwrap_or(peer));
        }
    }
}

/// Peeks at the first bytes: `Some(true)` if they start a PROXY header, `Some(false)` if they
/// cannot, `None` if the peer closed first.
async fn looks_like_header(stream: &TcpStream, buf: &mut [u8]) -> Result<Option<bool>, Refused> {
    loop {
        let n = stream.peek(buf).await.map_err(Refused::Io)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(starts) = starts_header(&buf[..n]) {
            return Ok(Some(starts));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether `seen` (the first bytes of a connection, at least one) starts a PROXY header:
/// `Some(true)` yes, `Some(false)` it cannot, `None` too few bytes to tell.
pub(crate) fn starts_header(seen: &[u8]) -> Option<bool> {
    let v1 = &b"PROXY "[..];
    let (sig, need) = if seen.first() == Some(&b'\r') {
        (V2_SIGNATURE, V2_SIGNATURE.len())
    } else {
        (v1, v1.len())
    };
    let k = seen.len().min(need);
    if seen.get(..k) != sig.get(..k) {
        return Some(false);
    }
    (seen.len() >= need).then_some(true)
}

/// What the bytes at the start of a connection hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A header of `len` bytes; `source` is `None` for `LOCAL`/`UNKNOWN`/unix addresses.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// A header has begun but is not complete.
    Incomplete,
    /// Not a valid header.
    Malformed,
}

/// Parses a PROXY header (v1 or v2) at the start of `buf`.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    let parsed = ppp::HeaderResult::parse(buf);
    if parsed.is_incomplete() {
        return Parsed::Incomplete;
    }
    match parsed {
        ppp::HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            source: v1_source(&h.addresses),
        },
        ppp::HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            source: v2_source(&h),
        },
        ppp::HeaderResult::V1(Err(_)) | ppp::HeaderResult::V2(Err(_)) => Parsed::Malformed,
    }
}

fn v1_source(a: &ppp::v1::Addresses) -> Option<SocketAddr> {
    match a {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    }
}

fn v2_source(h: &ppp::v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == ppp::v2::Command::Local {
        return None;
    }
    match h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A real header HAProxy 2.6 sent (`send-proxy-v2`, 127.0.0.1:59666 → 127.0.0.1:18003),
    /// followed by "hello".
    const HAPROXY_V2: &str = "0d0a0d0a000d0a515549540a2111000c7f0000017f000001e912465368656c6c6f";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Sends `bytes` from a client on `from` and returns what the policy decided plus what the
    /// server can still read after it.
    async fn run(
        policy: Policy,
        from: &str,
        bytes: Vec<u8>,
    ) -> (Result<SocketAddr, String>, Vec<u8>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let from: IpAddr = from.parse().unwrap();
        let client = tokio::spawn(async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::new(from, 0)).unwrap();
            let mut c = s.connect(addr).await.unwrap();
            c.write_all(&bytes).await.unwrap();
            c.shutdown().await.unwrap();
            c
        });
        let (mut stream, peer) = l.accept().await.unwrap();
        let res = policy
            .client_addr(&mut stream, peer)
            .await
            .map_err(|e| e.failure().to_owned());
        let mut rest = Vec::new();
        if res.is_ok() {
            stream.read_to_end(&mut rest).await.unwrap();
        }
        drop(client.await);
        (res, rest)
    }

    fn policy(mode: ProxyProtocol) -> Policy {
        Policy {
            mode,
            trusted: Cidrs::from(vec!["127.0.0.1/32".parse().unwrap()]),
        }
    }

    #[tokio::test]
    async fn haproxy_v2_header_gives_the_client_address_and_leaves_the_payload() {
        let (res, rest) = run(
            policy(ProxyProtocol::Required),
            "127.0.0.1",
            hex(HAPROXY_V2),
        )
        .await;
        assert_eq!(res.unwrap(), "127.0.0.1:59666".parse().unwrap());
        assert_eq!(rest, b"hello");
    }

    #[tokio::test]
    async fn v1_header() {
        let bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\nGET / HTTP/1.1\r\n".to_vec();
        let (res, rest) = run(policy(ProxyProtocol::Optional), "127.0.0.1", bytes).await;
        assert_eq!(res.unwrap(), "203.0.113.7:51234".parse().unwrap());
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let bytes = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\nx".to_vec();
        let (res, _) = run(policy(ProxyProtocol::Required), "127.0.0.1", bytes).await;
        assert_eq!(res.unwrap(), "[2001:db8::7]:51234".parse().unwrap());
    }

    #[tokio::test]
    async fn refusals() {
        let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\nGET /".to_vec();
        // untrusted peer sending a header
        let (res, _) = run(policy(ProxyProtocol::Optional), "127.0.0.2", v1.clone()).await;
        assert_eq!(res.unwrap_err(), "proxy_header_untrusted");
        // untrusted peer, required mode
        let (res, _) = run(
            policy(ProxyProtocol::Required),
            "127.0.0.2",
            b"GET /".to_vec(),
        )
        .await;
        assert_eq!(res.unwrap_err(), "proxy_peer_untrusted");
        // trusted peer without a header
        let (res, _) = run(
            policy(ProxyProtocol::Required),
            "127.0.0.1",
            b"\x16\x03\x01".to_vec(),
        )
        .await;
        assert_eq!(res.unwrap_err(), "proxy_header_missing");
        // garbage after the signature
        let (res, _) = run(
            policy(ProxyProtocol::Required),
            "127.0.0.1",
            b"PROXY garbage here\r\n".to_vec(),
        )
        .await;
        assert_eq!(res.unwrap_err(), "proxy_header_malformed");
        let mut bad_v2 = hex(HAPROXY_V2);
        bad_v2[12] = 0x99; // version 9
        let (res, _) = run(policy(ProxyProtocol::Required), "127.0.0.1", bad_v2).await;
        assert_eq!(res.unwrap_err(), "proxy_header_malformed");
    }

    #[tokio::test]
    async fn optional_mode_serves_direct_clients_and_posts() {
        // "POST" shares its first letter with "PROXY": it must still pass
        let (res, rest) = run(
            policy(ProxyProtocol::Optional),
            "127.0.0.1",
            b"POST / HTTP/1.1\r\n".to_vec(),
        )
        .await;
        assert_eq!(res.unwrap().ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(rest, b"POST / HTTP/1.1\r\n");
        let (res, _) = run(
            policy(ProxyProtocol::Optional),
            "127.0.0.2",
            b"\x16\x03\x01\x02".to_vec(),
        )
        .await;
        assert_eq!(res.unwrap().ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
    }
}
