//! Reloading: SIGHUP (see [`crate::signals`]) or a [`Reloader`] hands a new configuration to
//! the running proxy, which applies it only if every certificate and file it names loads
//! (`apply`): routes, hosts, file certificates and ACME hosts change; connections stay.
//! Keys a reload cannot apply are named in a warning (`restart_needed`). Certificate files
//! that change on disk are loaded again by themselves (`certificate_files`), and so are
//! app-link files (`app_files`).

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::{self, Config};
use crate::forward::files::AppFiles;
use crate::forward::{Forward, ForwardSettings};
use crate::metrics::Metrics;
use crate::tls::{self, Certs, SniResolver, acme};

/// Why a reload was not applied; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration (or a file it names) is invalid.
    #[error(transparent)]
    Config(#[from] config::Errors),
    /// The proxy has stopped.
    #[error("the proxy is not running")]
    NotRunning,
}

/// A new configuration, and where to say whether it was applied.
pub(crate) type ReloadRequest = (Config, oneshot::Sender<Result<(), config::Errors>>);

/// Asks a running [`serve`](crate::serve) to switch to a new configuration (see
/// [`App::reloader`](crate::App::reloader)).
#[derive(Debug, Clone)]
pub struct Reloader {
    tx: mpsc::Sender<ReloadRequest>,
}

impl Reloader {
    pub(crate) fn new(tx: mpsc::Sender<ReloadRequest>) -> Self {
        Reloader { tx }
    }

    /// Applies `cfg` and waits until it is in force: routes, hosts, file certificates and ACME
    /// hosts change; connections stay. Listeners, timeouts and the upstream client keep their
    /// start-up settings (they need a restart).
    ///
    /// # Errors
    /// Every problem of `cfg` (the running configuration stays), or the proxy has stopped.
    pub async fn reload(&self, cfg: Config) -> Result<(), ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((cfg, tx))
            .await
            .map_err(|_| ReloadError::NotRunning)?;
        rx.await.map_err(|_| ReloadError::NotRunning)??;
        Ok(())
    }
}

/// Certificate files changed on disk: load them again; if they do not load (half-written, key
/// and certificate out of step, expired chain garbage), keep serving what was loaded before.
pub(crate) fn certificate_files(
    cfg: &Config,
    changed: &[std::path::PathBuf],
    resolver: &SniResolver,
    metrics: &Metrics,
) {
    let files: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
    match tls::files::load(cfg, &tls::provider()) {
        Ok(loaded)
            if loaded
                .uncovered
                .iter()
                .all(|h| resolver.acme_host(h).is_some()) =>
        {
            resolver.replace(loaded.certs);
            for (host, c) in &loaded.info {
                metrics.certificate_expiry(host, c.source.label(), c.not_after);
                info!(
                    host,
                    source = %c.source,
                    not_after = %humantime::format_rfc3339_seconds(c.not_after),
                    "certificate reloaded from disk"
                );
            }
        }
        Ok(loaded) => warn!(
            files = %files.join(", "),
            hosts = %loaded.uncovered.join(", "),
            "certificate files changed and no longer cover these hosts; keeping the certificates in use"
        ),
        Err(problems) => {
            for p in &problems.0 {
                warn!(key = %p.key, problem = %p.message, "certificate file problem");
            }
            warn!(
                files = %files.join(", "),
                "certificate files changed but cannot be loaded; keeping the certificates in use"
            );
        }
    }
}

/// App-link files changed on disk: read them again; if one does not load (not JSON, too
/// big, half-written), keep serving the ones read before.
pub(crate) fn app_files(cfg: &Config, changed: &[std::path::PathBuf], forward: &Forward) {
    let files: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
    match AppFiles::load(cfg) {
        Ok(loaded) => {
            forward.reload(ForwardSettings::from_config(cfg, loaded));
            info!(files = %files.join(", "), "app-link files reloaded from disk");
        }
        Err(problems) => {
            for p in &problems {
                warn!(key = %p.key, problem = %p.message, "app-link file problem");
            }
            warn!(
                files = %files.join(", "),
                "app-link files changed but cannot be loaded; keeping the files in use"
            );
        }
    }
}

/// Applies `new` over `old`: everything is read and checked first, so a configuration with a
/// problem changes nothing.
pub(crate) fn apply(
    old: &Config,
    new: &Config,
    forward: &Forward,
    resolver: &SniResolver,
    acme: &mut acme::Manager,
    metrics: &Metrics,
) -> Result<(), config::Errors> {
    let loaded = match (Certs::load(new), AppFiles::load(new)) {
        (Ok(c), Ok(f)) => Ok((c, f)),
        (c, f) => Err([c.err(), f.err()]
            .into_iter()
            .flatten()
            .flatten()
            .collect::<Vec<_>>()),
    };
    let (mut certs, files) = match loaded {
        Ok(c) => c,
        Err(problems) => {
            for p in &problems {
                tracing::error!(key = %p.key, origin = %p.origin, problem = %p.message, "configuration problem");
            }
            tracing::error!(
                problems = problems.len(),
                running = "unchanged",
                "configuration reload rejected"
            );
            return Err(config::Errors(problems));
        }
    };
    forward.reload(ForwardSettings::from_config(new, files));
    resolver.replace(std::mem::take(&mut certs.map));
    acme.apply(certs.acme.take());
    certs.log();
    certs.export(metrics);
    let restart = restart_needed(old, new);
    if !restart.is_empty() {
        warn!(
            keys = %restart.join(", "),
            "changed settings take effect only after a restart"
        );
    }
    let added: Vec<&str> = new
        .hosts
        .iter()
        .filter(|h| !old.hosts.iter().any(|o| o.name == h.name))
        .map(|h| h.name.as_str())
        .collect();
    let removed: Vec<&str> = old
        .hosts
        .iter()
        .filter(|h| !new.hosts.iter().any(|n| n.name == h.name))
        .map(|h| h.name.as_str())
        .collect();
    info!(
        hosts = new.hosts.len(),
        added = %added.join(","),
        removed = %removed.join(","),
        "configuration reloaded"
    );
    Ok(())
}

/// Keys whose new value a reload cannot apply.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let (ou, nu) = (&old.upstream, &new.upstream);
    [
        ("server.https_listen", o.https_listen != n.https_listen),
        ("server.http_listen", o.http_listen != n.http_listen),
        (
            "server.proxy_protocol",
            o.proxy_protocol != n.proxy_protocol,
        ),
        (
            "server.trusted_proxies",
            o.trusted_proxies != n.trusted_proxies,
        ),
        (
            "server.handshake_timeout",
            o.handshake_timeout != n.handshake_timeout,
        ),
        (
            "server.header_read_timeout",
            o.header_read_timeout != n.header_read_timeout,
        ),
        ("server.idle_timeout", o.idle_timeout != n.idle_timeout),
        (
            "server.max_header_bytes",
            o.max_header_bytes != n.max_header_bytes,
        ),
        ("server.max_headers", o.max_headers != n.max_headers),
        (
            "server.h2_max_concurrent_streams",
            o.h2_max_concurrent_streams != n.h2_max_concurrent_streams,
        ),
        (
            "upstream.connect_timeout",
            ou.connect_timeout != nu.connect_timeout,
        ),
        ("upstream.ca_file", ou.ca_file != nu.ca_file),
        (
            "upstream.pool_idle_timeout",
            ou.pool_idle_timeout != nu.pool_idle_timeout,
        ),
        (
            "upstream.pool_max_idle",
            ou.pool_max_idle != nu.pool_max_idle,
        ),
        ("admin.listen", old.admin.listen != new.admin.listen),
        (
            "log",
            old.log.format != new.log.format || old.log.level != new.log.level,
        ),
    ]
    .into_iter()
    .filter_map(|(k, changed)| changed.then_some(k))
    .collect()
}
