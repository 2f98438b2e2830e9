//! Process signals: SIGTERM or SIGINT starts a graceful shutdown; SIGHUP reloads the
//! configuration.

use std::future::Future;

use tracing::{error, info, warn};

use crate::config::{self, Source};
use crate::reload::{ReloadError, Reloader};

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!(signal = "SIGINT", "shutdown requested"),
        () = term => info!(signal = "SIGTERM", "shutdown requested"),
    }
}

/// On every SIGHUP, reads the configuration from `source` again and applies it through
/// `reloader`; a configuration with problems is logged (every problem) and the running one
/// stays. The handler is installed when this is called, so call it before serving. Never ends.
pub fn reload_on_sighup(source: Source<'_>, reloader: Reloader) -> impl Future<Output = ()> {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        let mut hup = match hup {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; configuration reload is off");
                return std::future::pending().await;
            }
        };
        #[cfg(not(unix))]
        return std::future::pending().await;
        #[cfg(unix)]
        while hup.recv().await.is_some() {
            info!(signal = "SIGHUP", "configuration reload requested");
            let cfg = match config::load(&source) {
                Ok(c) => c,
                Err(errors) => {
                    for p in &errors.0 {
                        error!(key = %p.key, origin = %p.origin, problem = %p.message, "configuration problem");
                    }
                    error!(
                        problems = errors.0.len(),
                        running = "unchanged",
                        "configuration reload rejected"
                    );
                    continue;
                }
            };
            // Problems found while applying are logged by the proxy itself.
            if let Err(ReloadError::NotRunning) = reloader.reload(cfg).await {
                return;
            }
        }
    }
}
