//! The command line: `trackproxy serve`, `trackproxy check-config`.
//!
//! Doc comments here are the `--help` text users read, so they are plain prose.
#![allow(clippy::doc_markdown)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Source;

/// Self-hosted HTTPS proxy for email click- and open-tracking link hosts.
///
/// Point your ESP's branded link host (e.g. url1234.example.com for SendGrid) at this server:
/// it terminates TLS for it and forwards every click and open to the ESP, Host, path and query
/// intact.
#[derive(Debug, Parser)]
#[command(name = "trackproxy", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (with no --config: the embedded default, self-signed for localhost).
    Serve(ConfigArg),
    /// Validate a configuration (and its certificate files) and exit: 0 if valid, 64 if not.
    CheckConfig(ConfigArg),
    /// Ask the running proxy's admin listener whether it is healthy (for container health
    /// checks): exit 0 on a 2xx answer, 1 otherwise.
    Probe(ProbeArgs),
}

/// Options of `trackproxy probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Configuration whose `admin.listen` to ask.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Admin path to request.
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Give up after this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// The `--config` option shared by subcommands.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// TOML configuration file; every key can be overridden with TRACKPROXY__SECTION__KEY.
    #[arg(long, short, value_name = "FILE", env = "TRACKPROXY_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// Where to read the configuration from.
    #[must_use]
    pub fn source(&self) -> Source<'_> {
        self.config
            .as_deref()
            .map_or(Source::Embedded, Source::File)
    }
}

/// Exit code for configuration errors (`EX_USAGE` of sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

/// `GET path` on the admin listener at `addr` (a wildcard address means this machine) and
/// returns the status code.
///
/// # Errors
/// When the connection fails, times out, or the answer is not HTTP.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<u16> {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, addr.port()), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = s.read(&mut head[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {line:?}"),
            )
        })
}
