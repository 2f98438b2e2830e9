//! TLS on an accepted connection, over rustls's unbuffered API, with buffers of our own.
//!
//! tokio-rustls drives rustls's buffered connection, which keeps a 4 KiB receive buffer for
//! the connection's whole life. On a tracking host most connections are idle keep-alive
//! connections, parked between requests (module `serve`), and that buffer was the largest
//! single cost of each. Here the three buffers (TLS bytes received and not yet processed, TLS
//! bytes not yet sent, plaintext not yet read) belong to [`TlsStream`], and
//! [`TlsStream::release_buffers`] frees the empty ones when the connection is parked.
//!
//! The handshake has two steps, so that the `ClientHello` can be looked at before a
//! configuration is chosen (SNI checks, ACME TLS-ALPN-01): [`Accepting::client_hello`] reads it
//! and parses it with rustls's [`Acceptor`] (on a copy; the bytes stay), then
//! [`Accepting::handshake`] runs the handshake with the chosen configuration from those bytes.
//! rustls does all TLS processing and all cryptography; this module only moves bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::{Accepted, Acceptor, ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use rustls::{CommonState, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time, at least (rustls's buffered connection reads as
/// much).
const READ_SIZE: usize = 4096;

/// The most TLS bytes kept before they make a record or handshake message rustls can process:
/// the largest handshake message rustls accepts (64 KiB) with its record headers, plus a
/// record. More is an error, not more memory.
const MAX_RECEIVED: usize = 0x1_0000 + 5 * 8 + MAX_RECORD;

/// The largest TLS record on the wire: header and 16 KiB of plaintext with the most
/// expansion TLS 1.2 allows.
const MAX_RECORD: usize = 5 + 0x4800;

/// The receive and plaintext buffers kept once empty: room for a read and a whole record.
/// Larger ones, left by a large handshake message or a burst, are freed; smaller ones stay, so
/// that a busy connection does not allocate per read.
const KEEP_RX: usize = READ_SIZE + MAX_RECORD;

/// The most plaintext encrypted by one `poll_write` (four full records).
const MAX_WRITE: usize = 4 * 0x4000;

/// The send buffer kept once empty, as for receiving. Larger ones, left by large writes, are
/// freed.
const KEEP_TX: usize = KEEP_RX;

/// A connection whose `ClientHello` is being read.
pub(crate) struct Accepting {
    io: TcpStream,
    rx: Received,
}

impl Accepting {
    pub(crate) fn new(io: TcpStream) -> Self {
        Accepting {
            io,
            rx: Received::default(),
        }
    }

    /// Reads the client's `ClientHello` and parses it. Every byte read stays for
    /// [`Accepting::handshake`]. On a malformed hello, rustls's alert is sent before the error
    /// is returned.
    pub(crate) async fn client_hello(&mut self) -> io::Result<Accepted> {
        let mut acceptor = Acceptor::default();
        let mut fed = 0;
        loop {
            while fed < self.rx.end {
                let mut rest = &self.rx.buf[fed..self.rx.end];
                match acceptor.read_tls(&mut rest)? {
                    0 => break,
                    n => fed += n,
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => return Ok(accepted),
                Ok(None) => {}
                Err((e, mut alert)) => {
                    let mut bytes = Vec::new();
                    if alert.write_all(&mut bytes).is_ok() {
                        let _ = self.io.write_all(&bytes).await;
                    }
                    return Err(tls_error(e));
                }
            }
            if fed < self.rx.end {
                // rustls took no more bytes and wants more: it holds a whole message already.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "ClientHello too large",
                ));
            }
            std::future::poll_fn(|cx| self.rx.poll_fill(&mut self.io, cx)).await?;
            if self.rx.eof {
                return Err(eof_in_handshake());
            }
        }
    }

    /// Runs the TLS handshake with `config`, from the bytes [`Accepting::client_hello`] read.
    /// On failure, the alert rustls produced is sent (as far as the socket takes it) before the
    /// error is returned.
    pub(crate) async fn handshake(self, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut tls = TlsStream {
            io: self.io,
            conn,
            rx: self.rx,
            tx: Vec::new(),
            tx_sent: 0,
            held: 0,
            ack_owed: false,
            plain: Vec::new(),
            plain_read: 0,
            close_notify_sent: false,
            peer_closed: false,
            failed: false,
            frugal: false,
        };
        loop {
            let step = tls.drive(None, Send::Nothing);
            if step.is_ok()
                && !tls.conn.is_handshaking()
                && tls.conn.protocol_version() == Some(ProtocolVersion::TLSv1_3)
            {
                // The client's Finished was the last message; what rustls queued since are
                // its session tickets (TLS 1.2 would have queued the server's Finished).
                tls.held = tls.tx.len();
                tls.ack_owed = true;
                return Ok(tls);
            }
            // A TLS 1.2 resumption also ends with the client's flight: nothing to send.
            let last_flight_theirs = tls.tx.is_empty();
            tls.send_all().await?;
            match step? {
                _ if !tls.conn.is_handshaking() => {
                    tls.ack_owed = last_flight_theirs;
                    return Ok(tls);
                }
                _ if tls.peer_closed => return Err(eof_in_handshake()),
                Step::Closed => return Err(eof_in_handshake()),
                Step::Ready(_) | Step::NeedBytes => {}
            }
            std::future::poll_fn(|cx| tls.rx.poll_fill(&mut tls.io, cx)).await?;
            if tls.rx.eof {
                return Err(eof_in_handshake());
            }
        }
    }
}

/// A server-side TLS connection after its handshake.
#[allow(clippy::struct_excessive_bools)] // four independent facts, not a state machine
pub(crate) struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    rx: Received,
    /// TLS bytes to send: `tx[tx_sent..]`.
    tx: Vec<u8>,
    tx_sent: usize,
    /// Non-zero: `tx` holds only the session tickets rustls issued as the handshake ended
    /// (TLS 1.3), this many bytes. The client does not wait for them, so they wait for the
    /// first response (or the close) and go out in the same write: one packet less per
    /// connection. Any other send takes them along.
    held: usize,
    /// The handshake ended with the client's flight (its Finished) and nothing has been sent
    /// since, so the kernel has not acknowledged it yet: see [`TlsStream::ack_now`].
    ack_owed: bool,
    /// Plaintext received and not yet read: `plain[plain_read..]`.
    plain: Vec<u8>,
    plain_read: usize,
    close_notify_sent: bool,
    /// The client sent `close_notify`: no more plaintext comes.
    peer_closed: bool,
    /// rustls reported an error (and queued its alert): nothing more is processed.
    failed: bool,
    /// Free each buffer as soon as it is empty.
    frugal: bool,
}

/// TLS bytes received from the socket: `buf[start..end]` are waiting for rustls, the rest is
/// room for reads.
#[derive(Default)]
struct Received {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The client closed its side of the TCP connection.
    eof: bool,
}

impl Received {
    /// Reads from the socket into the buffer, growing it to hold at least [`READ_SIZE`] more
    /// bytes or the rest of a record begun. Sets `eof` when the client closed its side.
    fn poll_fill(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end >= MAX_RECEIVED {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        let record = match self.buf.get(..self.end.min(5)) {
            Some(&[_, _, _, hi, lo]) => 5 + usize::from(u16::from_be_bytes([hi, lo])),
            _ => 0,
        };
        let want = (self.end + READ_SIZE).max(record).min(MAX_RECEIVED);
        if self.buf.is_empty() {
            // Released: wait for bytes without a buffer.
            ready!(io.poll_read_ready(cx))?;
        }
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.eof = n == 0;
        self.end += n;
        Poll::Ready(Ok(()))
    }

    /// The bytes waiting for rustls.
    fn waiting(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Drops the first `n` waiting bytes. Once none wait, a buffer grown past [`KEEP_RX`]
    /// shrinks back.
    fn discard(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_RX {
                self.buf = Vec::new();
            }
        }
    }
}

/// What [`TlsStream::drive`] should send once the connection can.
#[derive(Clone, Copy)]
enum Send<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Where [`TlsStream::drive`] stopped: every complete record received is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Application data may be sent; this many bytes of it were encrypted.
    Ready(usize),
    /// The handshake needs more bytes from the client.
    NeedBytes,
    /// Both sides sent `close_notify`.
    Closed,
}

impl TlsStream {
    /// rustls's view of the connection: protocol version, ALPN, handshake kind.
    pub(crate) fn common(&self) -> &CommonState {
        &self.conn
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// Whether reading returns without the socket becoming readable: plaintext is waiting,
    /// or the client is gone.
    pub(crate) fn has_buffered(&self) -> bool {
        self.plain_read < self.plain.len() || self.peer_closed || self.rx.eof
    }

    /// From now on, frees each buffer as soon as it is empty (and [`release_buffers`] now):
    /// for connections that are never parked but wait most of their life. It costs an
    /// allocation per read and per write.
    ///
    /// [`release_buffers`]: TlsStream::release_buffers
    pub(crate) fn release_buffers_when_empty(&mut self) {
        self.frugal = true;
        self.release_buffers();
    }

    /// Frees the buffers that hold nothing. Called when the connection is parked; the next
    /// read or write allocates them again.
    pub(crate) fn release_buffers(&mut self) {
        if self.rx.is_empty() {
            self.rx.buf = Vec::new();
        }
        if self.tx_sent == self.tx.len() {
            self.tx = Vec::new();
            self.tx_sent = 0;
        }
        if self.plain_read == self.plain.len() {
            self.plain = Vec::new();
            self.plain_read = 0;
        }
    }

    /// Lets rustls process every complete record received: plaintext goes to `out` and, once
    /// that is full, to `plain`; handshake and alert records to send are queued in `tx`; then
    /// `send` is encrypted into `tx` if application data may be sent. On an error, the alert
    /// rustls made of it is queued too.
    fn drive(&mut self, mut out: Option<&mut ReadBuf<'_>>, send: Send<'_>) -> io::Result<Step> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the TLS connection failed",
            ));
        }
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(self.rx.waiting());
            let mut stop = None;
            let mut failed = None;
            match state {
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                let mut payload = record.payload;
                                if let Some(out) = out.as_deref_mut() {
                                    let n = payload.len().min(out.remaining());
                                    out.put_slice(&payload[..n]);
                                    payload = &payload[n..];
                                }
                                self.plain.extend_from_slice(payload);
                            }
                            Err(e) => {
                                failed = Some(tls_error(e));
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if let Err(e) = encode(&mut data, &mut self.tx) {
                        failed = Some(e);
                    }
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    // The bytes stay queued in `tx`, in order, until the socket takes them.
                    data.done();
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let encrypted = match send {
                        Send::Nothing => Ok(0),
                        Send::Data(data) => {
                            encrypt_into(&mut self.tx, data.len(), |buf| traffic.encrypt(data, buf))
                                .map(|()| data.len())
                        }
                        Send::CloseNotify if self.close_notify_sent => Ok(0),
                        Send::CloseNotify => {
                            self.close_notify_sent = true;
                            encrypt_into(&mut self.tx, 0, |buf| traffic.queue_close_notify(buf))
                                .map(|()| 0)
                        }
                    };
                    match encrypted {
                        Ok(n) => stop = Some(Step::Ready(n)),
                        Err(e) => failed = Some(e),
                    }
                }
                Ok(ConnectionState::BlockedHandshake) => stop = Some(Step::NeedBytes),
                Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
                Ok(ConnectionState::Closed) => stop = Some(Step::Closed),
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    // Never enabled (`max_early_data_size` is 0), so never accepted.
                    failed = Some(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS early data",
                    ));
                }
                Ok(_) => {
                    failed = Some(io::Error::other("unexpected TLS connection state"));
                }
                Err(e) => failed = Some(tls_error(e)),
            }
            self.rx.discard(discard);
            if let Some(e) = failed {
                self.queue_alert();
                return Err(e);
            }
            if let Some(step) = stop {
                return Ok(step);
            }
        }
    }

    /// After an error: queues the alert rustls prepared for it, and marks the connection
    /// failed. rustls must not see the received bytes again: it would fail on them again.
    fn queue_alert(&mut self) {
        self.failed = true;
        // Bounded: rustls queues one alert for an error.
        for _ in 0..4 {
            if !self.conn.wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(self.rx.waiting());
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, &mut self.tx).is_ok()
                }
                _ => false,
            };
            self.rx.discard(discard);
            if !encoded {
                break;
            }
        }
    }

    /// Writes the queued TLS bytes until the socket blocks or none are left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.held = 0;
        while self.tx_sent < self.tx.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.tx[self.tx_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_sent += n;
            // The segment carries the acknowledgement.
            self.ack_owed = false;
        }
        if self.frugal || self.tx.capacity() > KEEP_TX {
            // After a large write: not kept for the connection's life.
            self.tx = Vec::new();
        } else {
            self.tx.clear();
        }
        self.tx_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Has the kernel acknowledge the client's last handshake flight now, rather than with
    /// its delayed-ACK timer (~40 ms on Linux). Called when the first read after the handshake
    /// finds no request: a client that leaves Nagle's algorithm on (no `TCP_NODELAY`) holds
    /// its request until the segment before it, its Finished, is acknowledged, and this
    /// server sends nothing before the response (the session tickets wait for it). A client
    /// whose request came with its Finished, or right behind it, costs nothing: the read
    /// found it. One `setsockopt` (`TCP_QUICKACK`, which sends the pending ACK) instead of
    /// sending the tickets alone, which costs a `sendto` and a TLS record of its own.
    fn ack_now(&mut self) {
        self.ack_owed = false;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = socket2::SockRef::from(&self.io).set_tcp_quickack(true) {
            tracing::debug!(error = %e, "TCP_QUICKACK failed");
        }
    }

    async fn send_all(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_send(cx)).await
    }

    fn copy_plain(&mut self, out: &mut ReadBuf<'_>) {
        let n = (self.plain.len() - self.plain_read).min(out.remaining());
        out.put_slice(&self.plain[self.plain_read..self.plain_read + n]);
        self.plain_read += n;
        if self.plain_read == self.plain.len() {
            if self.frugal || self.plain.capacity() > KEEP_RX {
                self.plain = Vec::new();
            } else {
                self.plain.clear();
            }
            self.plain_read = 0;
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.plain_read < this.plain.len() {
                this.copy_plain(out);
                return Poll::Ready(Ok(()));
            }
            let before = out.filled().len();
            let queued = this.tx.len();
            let step = this.drive(Some(out), Send::Nothing);
            // Records rustls answers (a TLS 1.3 key update, an alert) go out with what the
            // socket takes now, held tickets with them; the rest with the next write. Held
            // tickets alone keep waiting for a response.
            if (this.held == 0 || this.tx.len() > queued || step.is_err())
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(step.err().unwrap_or(e)));
            }
            let step = step?;
            if out.filled().len() > before || this.plain_read < this.plain.len() {
                return Poll::Ready(Ok(()));
            }
            // End of stream: the client's close_notify, or its FIN (a truncation shows up in
            // HTTP framing).
            if step == Step::Closed || this.peer_closed || this.rx.eof {
                return Poll::Ready(Ok(()));
            }
            if this.frugal && this.rx.is_empty() {
                // Often the read finds nothing, and the connection waits: without a buffer.
                this.rx.buf = Vec::new();
            }
            let filled = this.rx.poll_fill(&mut this.io, cx);
            if filled.is_pending() && this.ack_owed {
                this.ack_now();
            }
            ready!(filled)?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // At most one batch of TLS bytes waits for the socket (held tickets go with this one).
        if this.held == 0 {
            ready!(this.poll_send(cx))?;
        }
        if this.close_notify_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        let step = this.drive(None, Send::Data(data));
        // Out at once if the socket takes it; else with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(step.err().unwrap_or(e)));
        }
        match step? {
            Step::Ready(n) => Poll::Ready(Ok(n)),
            Step::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Step::NeedBytes => Poll::Ready(Err(io::Error::other("TLS handshake not complete"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Held tickets are not data written: they wait for some.
        if this.held == 0 {
            ready!(this.poll_send(cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            ready!(this.poll_send(cx))?;
            // A connection that failed has sent its alert instead; its FIN still goes.
            if !this.failed {
                let _ = this.drive(None, Send::CloseNotify);
            }
            this.close_notify_sent = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Copies a handshake or alert record rustls prepared to the end of `tx`.
fn encode(data: &mut EncodeTlsData<'_, ServerConnectionData>, tx: &mut Vec<u8>) -> io::Result<()> {
    let need = match data.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(e) => return Err(io::Error::other(e.to_string())),
    };
    let start = tx.len();
    tx.resize(start + need, 0);
    match data.encode(&mut tx[start..]) {
        Ok(n) => {
            tx.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            tx.truncate(start);
            Err(io::Error::other(e.to_string()))
        }
    }
}

/// Encrypts with `f` into the end of `tx`, which grows as rustls says it must.
fn encrypt_into(
    tx: &mut Vec<u8>,
    plaintext: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let start = tx.len();
    // Room for the records' headers, content types and tags (TLS 1.2 and 1.3, AEAD).
    let mut room = plaintext + 64 * (plaintext / 0x4000 + 1);
    for _ in 0..2 {
        tx.resize(start + room, 0);
        match f(&mut tx[start..]) {
            Ok(n) => {
                tx.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(e) => {
                tx.truncate(start);
                return Err(io::Error::other(e.to_string()));
            }
        }
    }
    tx.truncate(start);
    Err(io::Error::other("TLS record does not fit"))
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn eof_in_handshake() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed during the TLS handshake",
    )
}
