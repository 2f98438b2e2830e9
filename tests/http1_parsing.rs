//! How the proxy treats odd HTTP/1 input (README: "How odd HTTP/1 input is treated"): raw
//! bytes on the plain-HTTP listener, one row per case. Each row asserts the status the client
//! gets and what the stand-in upstream received: nothing, or the request as forwarded (method,
//! target, body length, and the framing headers). What hyper (httparse underneath) rejects is
//! answered before anything reaches the upstream; what is accepted on purpose (bare LF line
//! endings, RFC 9112 §2.2) is forwarded as a normal request.

#![allow(clippy::pedantic, clippy::unwrap_used)]

mod common;

use common::{Proxy, Setup, Upstream, raw_plain, status_of};

const HOST: &str = "url1234.example.test";

/// What the upstream must have received for a row.
#[derive(Debug, Clone, Copy)]
enum Fwd {
    /// Nothing: the request was answered by the proxy (or by hyper) alone.
    Nothing,
    /// Exactly one request with this method, target and body length, carrying no
    /// `Content-Length` when `chunked` (the body went on chunked) and `Content-Length:
    /// body_len` otherwise (for a request with a body).
    Request {
        method: &'static str,
        target: &'static str,
        body_len: u64,
        chunked: bool,
    },
}

struct Row {
    name: &'static str,
    raw: Vec<u8>,
    status: u16,
    fwd: Fwd,
}

fn row(name: &'static str, raw: impl Into<Vec<u8>>, status: u16, fwd: Fwd) -> Row {
    Row {
        name,
        raw: raw.into(),
        status,
        fwd,
    }
}

const fn get(target: &'static str) -> Fwd {
    Fwd::Request {
        method: "GET",
        target,
        body_len: 0,
        chunked: false,
    }
}

const fn post(body_len: u64, chunked: bool) -> Fwd {
    Fwd::Request {
        method: "POST",
        target: "/upload",
        body_len,
        chunked,
    }
}

/// `GET /wf/open` with `extra` header lines (each ending in CRLF) after `Host`.
fn get_with(extra: &str) -> Vec<u8> {
    format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

/// `POST /upload` with `framing` header lines (each ending in CRLF) and `body`.
fn post_with(framing: &str, body: &str) -> Vec<u8> {
    post_keep_alive(&format!("{framing}Connection: close\r\n"), body)
}

/// Like [`post_with`], without `Connection: close`: whether the connection is closed after
/// the response is then up to the server.
fn post_keep_alive(framing: &str, body: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: {HOST}\r\n{framing}\r\n{body}").into_bytes()
}

fn bytes_with(prefix: &str, raw: &[u8], suffix: &str) -> Vec<u8> {
    let mut v = prefix.as_bytes().to_vec();
    v.extend_from_slice(raw);
    v.extend_from_slice(suffix.as_bytes());
    v
}

fn rows() -> Vec<Row> {
    let long_ok = format!("/wf/open?x={}", "a".repeat(8_000));
    let long_ok: &'static str = Box::leak(long_ok.into_boxed_str());
    let too_long = format!("/wf/open?x={}", "a".repeat(70_000));
    vec![
        // The reference: a well-formed request.
        row("well-formed CRLF", get_with(""), 200, get("/wf/open")),
        // RFC 9112 §2.2: a recipient MAY accept a bare LF as line terminator.
        row(
            "bare LF everywhere",
            format!("GET /wf/open HTTP/1.1\nHost: {HOST}\nConnection: close\n\n"),
            200,
            get("/wf/open"),
        ),
        row(
            "bare LF in headers only",
            format!("GET /wf/open HTTP/1.1\r\nHost: {HOST}\nX-A: 1\nConnection: close\n\r\n"),
            200,
            get("/wf/open"),
        ),
        // §2.2: a server SHOULD ignore at least one empty line before the request line.
        row(
            "empty line before request line",
            bytes_with("\r\n", &get_with(""), ""),
            200,
            get("/wf/open"),
        ),
        // §2.2: whitespace between the start line and the first field MUST be rejected (or the
        // line ignored).
        row(
            "whitespace before the first header",
            format!(
                "GET /wf/open HTTP/1.1\r\n X-A: 1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            ),
            400,
            Fwd::Nothing,
        ),
        // §5.2: obs-fold in a request MUST be rejected (400) or replaced by SP.
        row(
            "obs-fold (SP)",
            get_with("X-A: a\r\n b\r\n"),
            400,
            Fwd::Nothing,
        ),
        row(
            "obs-fold (HTAB)",
            get_with("X-A: a\r\n\tb\r\n"),
            400,
            Fwd::Nothing,
        ),
        // §5.1: whitespace between field name and colon MUST be rejected with 400.
        row(
            "space before colon",
            get_with("X-A : 1\r\n"),
            400,
            Fwd::Nothing,
        ),
        row(
            "space before colon in Host",
            format!("GET /wf/open HTTP/1.1\r\nHost : {HOST}\r\nConnection: close\r\n\r\n"),
            400,
            Fwd::Nothing,
        ),
        // RFC 9110 §5.1: a field name is a token.
        row(
            "space in field name",
            get_with("X A: 1\r\n"),
            400,
            Fwd::Nothing,
        ),
        row(
            "( in field name",
            get_with("X(A): 1\r\n"),
            400,
            Fwd::Nothing,
        ),
        row("empty field name", get_with(": 1\r\n"), 400, Fwd::Nothing),
        row("line without colon", get_with("X-A\r\n"), 400, Fwd::Nothing),
        // RFC 9110 §5.5: NUL, CR, LF in a value MUST be rejected (or replaced); other CTLs are
        // invalid too.
        row(
            "NUL in a value",
            bytes_with("", &get_with("X-A: a\0b\r\n"), ""),
            400,
            Fwd::Nothing,
        ),
        row(
            "CTL 0x01 in a value",
            get_with("X-A: a\u{1}b\r\n"),
            400,
            Fwd::Nothing,
        ),
        row(
            "DEL in a value",
            get_with("X-A: a\u{7f}b\r\n"),
            400,
            Fwd::Nothing,
        ),
        row(
            "bare CR in a value",
            get_with("X-A: a\rb\r\n"),
            400,
            Fwd::Nothing,
        ),
        // RFC 9110 §5.5: HTAB and obs-text (0x80–0xFF) are allowed in a value.
        row(
            "HTAB in a value",
            get_with("X-A: a\tb\r\n"),
            200,
            get("/wf/open"),
        ),
        row(
            "obs-text in a value",
            {
                let mut v = get_with("");
                let at = v.len() - "Connection: close\r\n\r\n".len();
                v.splice(at..at, b"X-A: caf\xe9\r\n".iter().copied());
                v
            },
            200,
            get("/wf/open"),
        ),
        // §6.3: differing Content-Length values are unrecoverable (400); equal ones may be
        // taken as one.
        row(
            "two differing Content-Length",
            post_with("Content-Length: 3\r\nContent-Length: 4\r\n", "abcd"),
            400,
            Fwd::Nothing,
        ),
        row(
            "Content-Length list with differing values",
            post_with("Content-Length: 3, 4\r\n", "abcd"),
            400,
            Fwd::Nothing,
        ),
        row(
            "two equal Content-Length",
            post_with("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"),
            200,
            post(3, false),
        ),
        row(
            "Content-Length +3",
            post_with("Content-Length: +3\r\n", "abc"),
            400,
            Fwd::Nothing,
        ),
        row(
            "Content-Length -1",
            post_with("Content-Length: -1\r\n", "abc"),
            400,
            Fwd::Nothing,
        ),
        row(
            "Content-Length 0x3",
            post_with("Content-Length: 0x3\r\n", "abc"),
            400,
            Fwd::Nothing,
        ),
        // §6.1/§6.3: Transfer-Encoding overrides Content-Length; the body is read as chunked,
        // forwarded chunked without the client's Content-Length, and the connection is closed
        // after the response (the bytes after the chunked body are never read as a request).
        row(
            "CL then TE chunked (CL.TE smuggling)",
            post_keep_alive(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            200,
            post(0, true),
        ),
        row(
            "TE chunked then CL (TE.CL smuggling)",
            post_keep_alive(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "8\r\nSMUGGLED\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            200,
            post(8, true),
        ),
        // §6.1: chunked must be the final coding of a request; a coding the server does not
        // understand SHOULD get 501.
        row(
            "TE gzip (not chunked last)",
            post_with("Transfer-Encoding: gzip\r\n", "abc"),
            400,
            Fwd::Nothing,
        ),
        row(
            "TE unknown coding",
            post_with("Transfer-Encoding: foo\r\n", "abc"),
            400,
            Fwd::Nothing,
        ),
        row(
            "TE chunked, gzip (chunked not last)",
            post_with(
                "Transfer-Encoding: chunked, gzip\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            400,
            Fwd::Nothing,
        ),
        // hyper takes any coding list ending in chunked and hands on the de-chunked bytes,
        // still gzip-coded: the proxy answers 501 (RFC 9112 §6.1) instead of passing them on
        // as the plain content.
        row(
            "TE gzip, chunked",
            post_with(
                "Transfer-Encoding: gzip, chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            501,
            Fwd::Nothing,
        ),
        row(
            "TE gzip and chunked in two lines, chunked last",
            post_with(
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
            501,
            Fwd::Nothing,
        ),
        row(
            "TE Chunked (case-insensitive)",
            post_with("Transfer-Encoding: Chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"),
            200,
            post(3, true),
        ),
        row(
            "TE on HTTP/1.0",
            format!(
                "POST /upload HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            ),
            400,
            Fwd::Nothing,
        ),
        // §7.1.1: chunk extensions are ignored; a malformed one is a framing error.
        row(
            "valid chunk extension",
            post_with(
                "Transfer-Encoding: chunked\r\n",
                "3;name=\"v\"\r\nabc\r\n0\r\n\r\n",
            ),
            200,
            post(3, true),
        ),
        // HTTP/1.0 and the Host header (RFC 9112 §3.2).
        row(
            "HTTP/1.0 with Host",
            format!("GET /wf/open HTTP/1.0\r\nHost: {HOST}\r\n\r\n"),
            200,
            get("/wf/open"),
        ),
        row(
            "HTTP/1.0 without Host",
            "GET /wf/open HTTP/1.0\r\n\r\n",
            400,
            Fwd::Nothing,
        ),
        row(
            "HTTP/1.1 without Host",
            "GET /wf/open HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
            Fwd::Nothing,
        ),
        row(
            "two Host headers",
            get_with(&format!("Host: {HOST}\r\n")),
            400,
            Fwd::Nothing,
        ),
        row(
            "Host with a space",
            "GET /wf/open HTTP/1.1\r\nHost: url1234 .example.test\r\nConnection: close\r\n\r\n",
            400,
            Fwd::Nothing,
        ),
        // §3.2.2: an absolute-form target names the host (Host is ignored).
        row(
            "absolute-form, configured host",
            format!(
                "GET http://{HOST}/wf/open HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n"
            ),
            200,
            get("/wf/open"),
        ),
        row(
            "absolute-form, host not configured",
            format!(
                "GET http://other.example/wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            ),
            404,
            Fwd::Nothing,
        ),
        // §3: exactly one SP between the parts of the request line.
        row(
            "two spaces after the method",
            format!("GET  /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            400,
            Fwd::Nothing,
        ),
        row(
            "space after the version",
            format!("GET /wf/open HTTP/1.1 \r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            400,
            Fwd::Nothing,
        ),
        row(
            "space inside the target",
            format!("GET /wf/o pen HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            400,
            Fwd::Nothing,
        ),
        row(
            "HTTP/1.2",
            format!("GET /wf/open HTTP/1.2\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            400,
            Fwd::Nothing,
        ),
        // RFC 9110 §9.1: methods are case-sensitive tokens: `get` is not `GET`; an unknown
        // method is forwarded as it is (the ESP decides).
        row(
            "lowercase method",
            format!("get /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            200,
            Fwd::Request {
                method: "get",
                target: "/wf/open",
                body_len: 0,
                chunked: false,
            },
        ),
        row(
            "unknown method",
            format!("FOO /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            200,
            Fwd::Request {
                method: "FOO",
                target: "/wf/open",
                body_len: 0,
                chunked: false,
            },
        ),
        row(
            "method with a non-token byte",
            format!("G(T /wf/open HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            400,
            Fwd::Nothing,
        ),
        // Long request lines: under `server.max_header_bytes` (64 KiB) forwarded, over it 431.
        row(
            "8 000-byte target",
            format!("GET {long_ok} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            200,
            get(long_ok),
        ),
        row(
            "70 000-byte target",
            format!("GET {too_long} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
            431,
            Fwd::Nothing,
        ),
    ]
}

/// Runs one row; returns a description of what differed, if anything.
async fn run(proxy: &Proxy, upstream: &Upstream, r: &Row) -> Option<String> {
    let before = upstream.count();
    let answer = raw_plain(proxy.http, &r.raw).await;
    let status = if answer.starts_with("HTTP/1.") {
        status_of(&answer)
    } else {
        0
    };
    let mut wrong = Vec::new();
    if status != r.status {
        let head = answer.split("\r\n").next().unwrap_or("");
        wrong.push(format!("status {status} ({head:?}), want {}", r.status));
    }
    match r.fwd {
        Fwd::Nothing => {
            // The proxy answers a rejected request before any forwarding, so by now nothing
            // would still be on its way; the later rows would see it otherwise.
            let n = upstream.count() - before;
            if n != 0 {
                let seen = &upstream.requests()[before..];
                wrong.push(format!("forwarded {n}, want nothing: {seen:?}"));
            }
        }
        Fwd::Request {
            method,
            target,
            body_len,
            chunked,
        } => {
            // The upstream records a request before it answers, so a response relayed to the
            // client means the record is there.
            let seen = upstream.requests()[before..].to_vec();
            if seen.len() != 1 {
                wrong.push(format!("forwarded {}, want 1: {seen:?}", seen.len()));
            }
            let Some(s) = seen.first() else {
                return Some(format!("{}: {}", r.name, wrong.join("; ")));
            };
            let cl = s.header("content-length");
            let te = s.header("transfer-encoding");
            let want_cl = (!chunked && body_len > 0).then(|| body_len.to_string());
            let want_te = chunked.then_some("chunked");
            if s.method != method
                || s.target != target
                || s.body_len != body_len
                || cl != want_cl.as_deref()
                || te != want_te
            {
                wrong.push(format!(
                    "forwarded {} {} body {} CL {cl:?} TE {te:?}, want {method} {} body \
                     {body_len} CL {want_cl:?} TE {want_te:?}",
                    s.method,
                    short(&s.target),
                    s.body_len,
                    short(target),
                ));
            }
        }
    }
    (!wrong.is_empty()).then(|| format!("{}: {}", r.name, wrong.join("; ")))
}

fn short(s: &str) -> String {
    if s.len() > 40 {
        format!("{}…({} bytes)", &s[..40], s.len())
    } else {
        s.to_owned()
    }
}

#[tokio::test]
async fn odd_http1_requests_are_rejected_or_forwarded_as_documented() {
    let s = Setup::new().await;
    let proxy = Proxy::start(&s.toml(&[HOST])).await;
    let mut failures = Vec::new();
    for r in rows() {
        if let Some(f) = run(&proxy, &s.upstream, &r).await {
            failures.push(f);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
