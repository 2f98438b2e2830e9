//! Deterministic per-request costs: sends an exact number of keep-alive requests through a
//! proxy command, so that `valgrind --tool=callgrind` (instructions) or `--tool=dhat`
//! (allocations) give per-request figures that are repeatable on a noisy machine, unlike CPU
//! seconds.
//!
//! It mints the load harness's certificates, starts its sendgrid.net look-alike upstream, runs
//! `PROXY_CMD… serve --config FILE` with the harness's trackproxy configuration (rate limit out
//! of reach; `--logging off`, the default: `log.level = "warn"`; `--logging on`: the shipped
//! default logging, access log included, stdout to a file whose access-log lines are counted
//! at the end), sends `--warmup` requests on each connection (TLS handshakes, upstream pool),
//! runs `--start`, sends `REQUESTS` requests (half clicks, half opens, as the harness does),
//! runs `--stop`, then stops the proxy with SIGTERM so that valgrind writes its output. In
//! `--start`/`--stop`, `{pid}` is the proxy's process id.
//!
//! ```sh
//! cargo build --release --bins --example per_request
//! # instructions per request: the count callgrind prints, divided by REQUESTS
//! target/release/examples/per_request --warmup 25 \
//!     --start 'callgrind_control -i on {pid}' --stop 'callgrind_control -i off {pid}' \
//!     h1 2000 8 -- valgrind --tool=callgrind --instr-atstart=no target/release/trackproxy
//! # allocations per request: the difference of dhat's block totals for two counts / 2000
//! target/release/examples/per_request h2 1000 4 -- valgrind --tool=dhat target/release/trackproxy
//! target/release/examples/per_request h2 3000 4 -- valgrind --tool=dhat target/release/trackproxy
//! ```

#[path = "../benches/load/job.rs"]
mod job;
#[path = "../benches/load/pki.rs"]
mod pki;
#[path = "../benches/load/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Request, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use pki::HOST;

/// Concurrent streams per HTTP/2 connection.
const H2_STREAMS: u64 = 10;

/// Exact-count keep-alive load through a proxy command, for callgrind and dhat.
#[derive(Debug, Parser)]
struct Args {
    /// Requests per connection before `--start`.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Shell command run after the warm-up (`{pid}`: the proxy's process id).
    #[arg(long)]
    start: Option<String>,
    /// Shell command run after the measured requests.
    #[arg(long)]
    stop: Option<String>,
    /// `off`: the proxy at `log.level = "warn"` (no access log); `on`: its shipped default
    /// logging (`info`, JSON, access log on), stdout to a file, checked for one access-log
    /// line per request when the proxy has exited.
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    logging: String,
    /// `h1` (HTTP/1.1 keep-alive) or `h2` (HTTP/2, 10 streams per connection).
    mode: String,
    /// Measured requests in all (a multiple of CONNECTIONS).
    requests: u64,
    /// Client connections.
    connections: u64,
    /// The proxy command; `serve --config FILE` is appended.
    #[arg(last = true, required = true)]
    proxy: Vec<String>,
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let h2 = match args.mode.as_str() {
        "h1" => false,
        "h2" => true,
        other => bail!("mode is h1 or h2, not {other:?}"),
    };
    ensure!(
        args.connections > 0 && args.requests.is_multiple_of(args.connections),
        "REQUESTS must be a multiple of CONNECTIONS"
    );
    let logging = args.logging == "on";
    let dir = tempfile::tempdir()?;
    let pki = pki::Pki::create(dir.path())?;
    let upstream = upstream::Upstream::start(Some(pki.upstream_tls()?)).await?;
    let https = free_port()?;
    let config = dir.path().join("trackproxy.toml");
    std::fs::write(
        &config,
        job::trackproxy_config(
            &pki,
            &upstream.url(),
            https,
            free_port()?,
            free_port()?,
            (!logging).then_some("warn"),
        ),
    )?;
    let log_path = dir.path().join("trackproxy.log");
    let stdout = if logging {
        std::process::Stdio::from(std::fs::File::create(&log_path)?)
    } else {
        std::process::Stdio::inherit()
    };
    let (program, rest) = args.proxy.split_first().context("no proxy command")?;
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(stdout)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id().context("proxy has no pid")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], https));
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(addr).await.is_err() {
        ensure!(Instant::now() < deadline, "the proxy did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let load = Load::new(addr, &pki, h2)?;
    let per_connection = args.requests / args.connections;
    let warm = Arc::new(Barrier::new(usize::try_from(args.connections)? + 1));
    let go = Arc::new(Barrier::new(usize::try_from(args.connections)? + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let (load, warm, go) = (load.clone(), warm.clone(), go.clone());
        let warmup = args.warmup;
        tasks.spawn(async move { load.connection(warmup, per_connection, &warm, &go).await });
    }
    warm.wait().await;
    hook(args.start.as_deref(), pid)?;
    let t0 = Instant::now();
    go.wait().await;
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = t0.elapsed();
    hook(args.stop.as_deref(), pid)?;
    eprintln!(
        "per_request: {} requests in {elapsed:?}; upstream connections {}, wrong Host {}",
        args.requests,
        upstream.connections(),
        upstream.bad_host()
    );
    // SIGTERM, so that valgrind writes its output.
    let killed = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()?;
    ensure!(killed.success(), "kill {pid} failed");
    let status = child.wait().await?;
    eprintln!("per_request: proxy exited with {status}");
    if logging {
        let log = std::fs::read_to_string(&log_path)?;
        let lines = log
            .lines()
            .filter(|l| l.contains(r#""target":"trackproxy::access""#))
            .count();
        let lines = u64::try_from(lines)?;
        let sent = args.warmup * args.connections + args.requests;
        eprintln!("per_request: {lines} access-log lines for {sent} requests");
        ensure!(
            lines == sent,
            "{lines} access-log lines for {sent} requests"
        );
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn hook(cmd: Option<&str>, pid: u32) -> Result<()> {
    let Some(cmd) = cmd else { return Ok(()) };
    let cmd = cmd.replace("{pid}", &pid.to_string());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdout(std::process::Stdio::null())
        .status()?;
    ensure!(status.success(), "{cmd} failed");
    Ok(())
}

/// The client side: one TLS configuration and the two request targets.
#[derive(Clone)]
struct Load {
    addr: SocketAddr,
    tls: TlsConnector,
    click: Uri,
    open: Uri,
    headers: http::HeaderMap,
    h2: bool,
}

impl Load {
    fn new(addr: SocketAddr, pki: &pki::Pki, h2: bool) -> Result<Self> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(pki.roots()?)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let (click, open) = job::targets();
        Ok(Load {
            addr,
            tls: TlsConnector::from(Arc::new(cfg)),
            click: format!("https://{HOST}{click}").parse()?,
            open: format!("https://{HOST}{open}").parse()?,
            headers: job::browser_headers(),
            h2,
        })
    }

    async fn tls(&self) -> Result<TokioIo<TlsStream<TcpStream>>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let tls = self.tls.connect(ServerName::try_from(HOST)?, tcp).await?;
        Ok(TokioIo::new(tls))
    }

    /// One connection: `warmup` requests, both barriers, `count` requests.
    async fn connection(
        &self,
        warmup: u64,
        count: u64,
        warm: &Barrier,
        go: &Barrier,
    ) -> Result<()> {
        if self.h2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), self.tls().await?).await?;
            tokio::spawn(conn);
            self.h2_streams(&send, warmup).await?;
            warm.wait().await;
            go.wait().await;
            self.h2_streams(&send, count).await
        } else {
            let (mut send, conn) = http1::handshake(self.tls().await?).await?;
            tokio::spawn(conn);
            for i in 0..warmup {
                check(send.send_request(self.request(i)).await?).await?;
            }
            warm.wait().await;
            go.wait().await;
            for i in 0..count {
                check(send.send_request(self.request(i)).await?).await?;
            }
            Ok(())
        }
    }

    /// `count` requests over [`H2_STREAMS`] concurrent streams.
    async fn h2_streams(&self, send: &http2::SendRequest<Empty<Bytes>>, count: u64) -> Result<()> {
        let mut streams = tokio::task::JoinSet::new();
        for first in 0..H2_STREAMS {
            let (mut send, load) = (send.clone(), self.clone());
            streams.spawn(async move {
                let mut i = first;
                while i < count {
                    check(send.send_request(load.request(i)).await?).await?;
                    i += H2_STREAMS;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = streams.join_next().await {
            r??;
        }
        Ok(())
    }

    fn request(&self, i: u64) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.headers_mut() = self.headers.clone();
        let uri = if i.is_multiple_of(2) {
            &self.click
        } else {
            &self.open
        };
        if self.h2 {
            *req.uri_mut() = uri.clone();
            *req.version_mut() = Version::HTTP_2;
        } else {
            *req.uri_mut() = Uri::from(
                uri.path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
            req.headers_mut()
                .insert(header::HOST, HeaderValue::from_static(HOST));
        }
        req
    }
}

/// The upstream's answer: a redirect for a click, the 43-byte GIF for an open.
async fn check(res: http::Response<hyper::body::Incoming>) -> Result<()> {
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    ensure!(
        status == StatusCode::FOUND || (status == StatusCode::OK && body.len() == 43),
        "unexpected answer {status} ({} bytes)",
        body.len()
    );
    Ok(())
}
