//! Clients of the proxy: reqwest, raw TLS or TCP bytes (from any loopback source address),
//! hyper's HTTP/2 client, and curl.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{Proxy, TestCa};

/// A reqwest client trusting the CA, resolving `hosts` to the proxy's HTTPS listener.
pub fn client(ca: &TestCa, proxy: &Proxy, hosts: &[&str], http2: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(20));
    for h in hosts {
        b = b.resolve(h, proxy.https);
    }
    b = if http2 {
        b.http2_prior_knowledge()
    } else {
        b.http1_only()
    };
    b.build().unwrap()
}

/// Like [`client`] (HTTP/1.1), with connections from the loopback address `local` (the whole
/// 127.0.0.0/8 is loopback: each address is another client to the proxy).
pub fn client_from(ca: &TestCa, proxy: &Proxy, hosts: &[&str], local: &str) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .http1_only();
    for h in hosts {
        b = b.resolve(h, proxy.https);
    }
    b.build().unwrap()
}

/// A TLS connection (ALPN `http/1.1`) from the loopback address `local`, with `config` (reuse
/// one config to resume sessions).
pub async fn tls_connect_with(
    config: Arc<rustls::ClientConfig>,
    local: &str,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(local, addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// Sends one HTTP/1.1 request on an open connection and reads one response with a
/// `Content-Length` body; returns (status, head, body). The connection stays open.
pub async fn h1_exchange<S>(s: &mut S, request: &str) -> (u16, String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (status_of(&head), head, body);
            }
        }
    }
}

/// Opens a TLS connection to `addr` with `sni` and ALPN `http/1.1`.
pub async fn tls_connect(
    ca: &TestCa,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// Sends raw bytes over TLS with `sni` and returns everything the server sent until it closed
/// the connection (requests should carry `Connection: close`).
pub async fn raw_tls(ca: &TestCa, addr: SocketAddr, sni: &str, request: &[u8]) -> String {
    let mut s = tls_connect(ca, addr, sni).await.expect("TLS handshake");
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}

/// Sends raw bytes over plain TCP and returns the answer.
pub async fn raw_plain(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}

async fn read_all<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of a raw HTTP/1.x response.
pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

/// An HTTP/2 connection over TLS (ALPN h2) with SNI `sni`, via hyper's client, so request
/// targets are sent exactly as given.
pub async fn h2_connect(
    ca: &TestCa,
    addr: SocketAddr,
    sni: &str,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(ca.client_config(&[b"h2"]));
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// Runs curl (a real client) and returns (stdout, stderr, success).
pub async fn curl(args: &[&str]) -> (String, String, bool) {
    let out = tokio::process::Command::new("curl")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("curl must be installed (apt-get install -y curl)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// A TCP connection from a chosen loopback source address (the whole 127.0.0.0/8 is loopback,
/// so tests can play several clients).
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    s.connect(to).await
}

/// Like [`raw_tls`], from a chosen source address.
pub async fn raw_tls_from(
    ca: &TestCa,
    from: &str,
    addr: SocketAddr,
    sni: &str,
    request: &[u8],
) -> String {
    let tcp = connect_from(from, addr).await.unwrap();
    let connector = TlsConnector::from(ca.client_config(&[b"http/1.1"]));
    let mut s = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}

/// Like [`raw_plain`], from a chosen source address.
pub async fn raw_plain_from(from: &str, addr: SocketAddr, request: &[u8]) -> String {
    let mut s = connect_from(from, addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}
