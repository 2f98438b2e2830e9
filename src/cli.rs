//! The command line: `trackproxy serve`, `trackproxy check-config`, `trackproxy certs`.
//!
//! Doc comments here are the `--help` text users read, so they are plain prose.
#![allow(clippy::doc_markdown)]

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::App;
use crate::config::{Config, Source};
use crate::tls::{self, HostCertificate};

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
    /// List every host with its certificate: source (file, acme, self-signed, missing), issuer,
    /// expiry and days left. Reads the certificate files and the ACME cache; starts nothing.
    Certs(ConfigArg),
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

/// The `trackproxy certs` table for `cfg`: one line per host, aligned columns.
#[must_use]
pub fn certs_table(cfg: &Config) -> String {
    let rows: Vec<[String; 6]> = tls::inventory(cfg)
        .into_iter()
        .map(
            |HostCertificate {
                 host,
                 source,
                 cert,
                 note,
             }| {
                let (issuer, not_after, days) = match cert {
                    Some(c) => (
                        c.issuer,
                        humantime::format_rfc3339_seconds(c.not_after).to_string(),
                        tls::days_left(c.not_after).to_string(),
                    ),
                    None => ("-".into(), "-".into(), "-".into()),
                };
                [
                    host,
                    source,
                    issuer,
                    not_after,
                    days,
                    note.unwrap_or_default(),
                ]
            },
        )
        .collect();
    let header = ["HOST", "SOURCE", "ISSUER", "NOT AFTER", "DAYS LEFT", "NOTE"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// What `trackproxy check-config` prints for a valid configuration: each host and where its
/// certificate comes from.
#[must_use]
pub fn check_report(app: &App) -> String {
    let mut out = format!("{}: configuration is valid\n", app.config().origin);
    for (host, c) in app.certificates() {
        let _ = writeln!(
            out,
            "  {host}: certificate from {} (issuer {})",
            c.source, c.issuer
        );
    }
    for host in app.acme_hosts() {
        if !app.certificates().iter().any(|(h, _)| *h == host) {
            let _ = writeln!(out, "  {host}: certificate to be ordered over ACME");
        }
    }
    out
}
