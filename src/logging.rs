//! Logging: `tracing` to standard output, JSON or human-readable, filtered by `log.level` (the
//! `RUST_LOG` environment variable, when set, wins, for one-off debugging). Lines are handed to
//! a dedicated writer thread through a bounded queue (`tracing-appender`'s non-blocking
//! writer): a request never waits for standard output. When the queue is full, lines are
//! dropped rather than blocking, and counted (`trackproxy_log_lines_dropped_total`).
//! The access log's lines are made by the access-log layer (`crate::middleware::access_log`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines the log writer queue holds before new lines are dropped.
const LOG_QUEUE_LINES: usize = 128_000;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the log writer thread alive; dropping it flushes the queued lines. Hold it in `main`
/// until the process exits.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    _guard: Option<WorkerGuard>,
}

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init(cfg: &LogConfig) -> LogGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("trackproxy-log")
        .finish(std::io::stdout());
    let counter = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, never into a log file or journal.
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(writer);
    let installed = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if installed.is_ok() {
        let _ = DROPPED.set(counter);
    }
    LogGuard {
        _guard: Some(guard),
    }
}

/// Log lines dropped so far because the writer could not keep up.
#[must_use]
pub fn dropped_log_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |c| u64::try_from(c.dropped_lines()).unwrap_or(u64::MAX))
}

/// A subscriber for command-line tools: human-readable, warnings and errors, to stderr.
pub fn init_cli() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .try_init();
}
