//! The command line: `trackproxy serve`, `trackproxy check-config`.
//!
//! Doc comments here are the `--help` text users read, so they are plain prose.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;

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
