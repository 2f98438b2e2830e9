//! The server's TLS layer (rustls's unbuffered API with buffers of trackproxy's own): bodies
//! larger than a record both ways, a client whose bytes arrive a few at a time, clean closes
//! with `close_notify` both ways, a corrupted record, TLS 1.2 data and resumption. TLS
//! versions, ALPN and SNI are in `tls_sni.rs`; parked connections in `parking.rs`.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Proxy, Setup, TestCa, big_body, client, h1_exchange, status_of, tls_connect};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "url1234.example.test";

#[tokio::test]
async fn bodies_of_many_records_pass_intact_over_http1_and_http2() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    for http2 in [false, true] {
        let c = client(&s.ca, &proxy, &[HOST], http2);
        // 1 MiB up: 64 full TLS records and more, read by the proxy in pieces.
        let up = big_body(1 << 20);
        let r = c
            .post(format!("https://{HOST}/upload"))
            .body(up)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "http2 {http2}");
        assert_eq!(r.text().await.unwrap(), "ok 1048576", "http2 {http2}");
        // 3 MB down: written by the proxy in batches of records.
        let r = c
            .get(format!("https://{HOST}/big?bytes=3000000"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "http2 {http2}");
        let down = r.bytes().await.unwrap();
        assert_eq!(down.len(), 3_000_000, "http2 {http2}");
        assert!(down == big_body(3_000_000), "http2 {http2}: body differs");
    }
    assert_eq!(s.upstream.requests().len(), 4);
}

/// A TLS client driven by hand (rustls's `ClientConnection` over a TCP socket), so that a test
/// decides how its bytes go on the wire.
struct RawClient {
    tls: rustls::ClientConnection,
    tcp: TcpStream,
}

impl RawClient {
    async fn connect(ca: &TestCa, addr: SocketAddr) -> Self {
        Self::connect_with(ca.client_config(&[b"http/1.1"]), addr).await
    }

    async fn connect_with(cfg: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Self {
        let name = ServerName::try_from(HOST.to_owned()).unwrap();
        let tls = rustls::ClientConnection::new(cfg, name).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        RawClient { tls, tcp }
    }

    /// The TLS bytes rustls has to send.
    fn pending(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Sends `bytes` in TCP segments of `chunk` bytes, 1 ms apart.
    async fn send(&mut self, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            self.tcp.write_all(piece).await.unwrap();
            if piece.len() < bytes.len() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    /// Reads once from the socket and lets rustls process it: the bytes read (0: the server
    /// closed), or the error rustls found in them (an alert the server sent, say).
    async fn receive(&mut self) -> Result<usize, rustls::Error> {
        let mut buf = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut buf))
            .await
            .expect("the server answers or closes")
            .unwrap_or(0);
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            if self.tls.read_tls(&mut rd).is_err() {
                break;
            }
            self.tls.process_new_packets()?;
        }
        Ok(n)
    }

    /// Moves the plaintext rustls has to `answer`; `true` once the server's `close_notify`
    /// came.
    fn take_plain(&mut self, answer: &mut Vec<u8>) -> bool {
        let mut plain = [0u8; 4096];
        loop {
            match self.tls.reader().read(&mut plain) {
                Ok(0) => return true,
                Ok(k) => answer.extend_from_slice(&plain[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => panic!("{e}"),
            }
        }
    }

    async fn handshake(&mut self) {
        for _ in 0..20 {
            if !self.tls.is_handshaking() {
                return;
            }
            let out = self.pending();
            self.send(&out, usize::MAX).await;
            assert!(self.receive().await.unwrap() > 0, "closed in the handshake");
        }
        panic!("the handshake did not finish");
    }
}

/// A client whose TCP segments carry `chunk` bytes each, 1 ms apart: the `ClientHello`, the
/// record headers and the request all arrive in pieces. Returns the plaintext answer, read
/// until the server's `close_notify` (the request says `Connection: close`).
async fn trickling_client(ca: &TestCa, addr: SocketAddr, chunk: usize, request: &str) -> String {
    let mut c = RawClient::connect(ca, addr).await;
    let mut request = Some(request.as_bytes());
    let mut answer = Vec::new();
    for _ in 0..1000 {
        let out = c.pending();
        c.send(&out, chunk).await;
        if !c.tls.is_handshaking()
            && let Some(r) = request.take()
        {
            c.tls.writer().write_all(r).unwrap();
            continue;
        }
        let n = c.receive().await.unwrap();
        assert!(
            n > 0,
            "closed without close_notify after {:?}",
            String::from_utf8_lossy(&answer)
        );
        if c.take_plain(&mut answer) {
            return String::from_utf8_lossy(&answer).into_owned();
        }
    }
    panic!(
        "no end of the answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// TLS 1.3 session tickets wait for the first response and leave in the same write (one
/// packet less per new connection); a client that comes back resumes with them.
#[tokio::test]
async fn session_tickets_go_out_with_the_first_response() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let cfg = s.ca.client_config(&[b"http/1.1"]);
    let mut c = RawClient::connect_with(cfg.clone(), proxy.https).await;
    c.handshake().await;
    assert_eq!(
        c.tls.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // The client's Finished; the handshake is over for the server too.
    let finished = c.pending();
    c.send(&finished, usize::MAX).await;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), c.tcp.peek(&mut byte)).await;
    assert!(
        early.is_err(),
        "the server sent something before any request"
    );

    let request =
        format!("GET /wf/open?upn=ticket HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    c.tls.writer().write_all(request.as_bytes()).unwrap();
    let out = c.pending();
    c.send(&out, usize::MAX).await;
    let mut answer = Vec::new();
    let mut closed = false;
    for _ in 0..100 {
        assert!(
            c.receive().await.unwrap() > 0,
            "closed without close_notify"
        );
        if c.take_plain(&mut answer) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "no close_notify after {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(status_of(&String::from_utf8_lossy(&answer)), 200);

    // The ticket came: the next connection resumes.
    let mut again = RawClient::connect_with(cfg, proxy.https).await;
    again.handshake().await;
    assert_eq!(
        again.tls.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[tokio::test]
async fn bytes_arriving_a_few_at_a_time_make_a_handshake_and_a_request() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let request =
        format!("GET /ls/click?upn=trickle HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    for chunk in [7, 100] {
        let answer = trickling_client(&s.ca, proxy.https, chunk, &request).await;
        assert_eq!(status_of(&answer), 302, "chunk {chunk}: {answer}");
        assert!(
            answer.contains("\r\nlocation: https://www.example.com/landing"),
            "chunk {chunk}: {answer}"
        );
    }
    assert_eq!(s.upstream.last().target, "/ls/click?upn=trickle");
}

/// Sends `request` (it says `Connection: close`) and reads everything until the server closes;
/// fails unless the server's close_notify came before its FIN (a clean TLS close, not a
/// truncation).
async fn exchange_until_clean_close<S>(c: &mut S, request: &str) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), c.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .expect("a clean TLS close after the response");
    out
}

#[tokio::test]
async fn connections_close_with_close_notify_both_ways() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;

    // The server closes (`Connection: close`): its close_notify comes before its FIN, so the
    // client's TLS library reports a clean end, not a truncation.
    let mut c = tls_connect(&s.ca, proxy.https, HOST).await.unwrap();
    let request =
        format!("GET /wf/open?upn=a HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let out = exchange_until_clean_close(&mut c, &request).await;
    assert_eq!(status_of(&String::from_utf8_lossy(&out)), 200);

    // The client closes after a keep-alive exchange: the server answers its close_notify
    // with its own and closes.
    let mut c = tls_connect(&s.ca, proxy.https, HOST).await.unwrap();
    let request = format!("GET /wf/open?upn=b HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let (status, _, _) = h1_exchange(&mut c, &request).await;
    assert_eq!(status, 200);
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), c.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("a clean TLS close from the server");
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn a_corrupted_record_is_answered_with_an_alert_and_nothing_is_forwarded() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let mut c = RawClient::connect(&s.ca, proxy.https).await;
    c.handshake().await;
    let request = format!("GET /ls/click?upn=corrupt HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    c.tls.writer().write_all(request.as_bytes()).unwrap();
    let mut out = c.pending();
    // The last byte is the request record's authentication tag.
    *out.last_mut().unwrap() ^= 1;
    c.send(&out, usize::MAX).await;

    let mut got = None;
    for _ in 0..20 {
        match c.receive().await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                got = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        got,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadRecordMac
        )),
        "the server's answer to a record that fails authentication"
    );
    assert!(
        s.upstream
            .requests()
            .iter()
            .all(|r| !r.target.contains("corrupt"))
    );
    // The proxy serves on.
    let c = client(&s.ca, &proxy, &[HOST], false);
    let r = c
        .get(format!("https://{HOST}/wf/open?upn=after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn tls12_carries_multi_record_bodies_and_resumes() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.ca.der()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(common::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = std::sync::Arc::new(cfg);

    // A full TLS 1.2 handshake; 200 kB up and 1 MB down, byte for byte.
    let mut c = common::tls_connect_with(cfg.clone(), "127.0.0.1", proxy.https, HOST)
        .await
        .unwrap();
    assert_eq!(
        c.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let up = big_body(200_000);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n",
        up.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&up).await.unwrap();
    let (status, _, body) = h1_exchange(&mut c, "").await;
    assert_eq!((status, body.as_str()), (200, "ok 200000"));
    let request =
        format!("GET /big?bytes=1000000 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let out = exchange_until_clean_close(&mut c, &request).await;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(status_of(&String::from_utf8_lossy(&out[..split])), 200);
    assert!(out[split..] == big_body(1_000_000)[..], "body differs");

    // The same client comes back: the session resumes (TLS 1.2 session ticket).
    let mut again = common::tls_connect_with(cfg, "127.0.0.1", proxy.https, HOST)
        .await
        .unwrap();
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let request = format!("GET /wf/open?upn=resumed HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let (status, _, _) = h1_exchange(&mut again, &request).await;
    assert_eq!(status, 200);
}
