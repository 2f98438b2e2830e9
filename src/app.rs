//! Building and running the proxy: [`App::build`] reads and checks everything a configuration
//! names before anything listens; [`serve`] starts the listeners, the admin endpoint, the ACME
//! manager and the maintenance task, applies reloads while it runs, and drains on shutdown:
//! `/readyz` answers 503 at once, the listeners keep serving for `server.drain_delay`, then
//! accepting stops and in-flight requests get `server.shutdown_grace`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AdminState, Health};
use crate::config::{self, Config};
use crate::forward::{self, Forward, ForwardSettings};
use crate::limits::connections::ConnLimits;
use crate::limits::in_flight::InFlight;
use crate::limits::rate::ClientLimiter;
use crate::logging;
use crate::metrics::{Metrics, Snapshot};
use crate::middleware::{self, StackState};
use crate::reload::{self, ReloadRequest, Reloader};
use crate::server::{self, Kind, Listeners, Server};
use crate::tls::acme::{self, AcmeHosts};
use crate::tls::watch::CertWatch;
use crate::tls::{self, CertInfo, Certs, SniResolver};

/// How often stale rate-limit state is evicted and histogram samples are folded in.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration (or a file it names) is invalid.
    #[error(transparent)]
    Config(#[from] config::Errors),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// The shared ACME store cannot be used with this configuration (wrong key, newer schema).
    #[error(transparent)]
    AcmeStore(#[from] acme::StoreError),
}

/// Everything built from a configuration before anything listens: certificates loaded,
/// routes and the upstream client ready. `check-config` builds this and stops.
pub struct App {
    cfg: Config,
    forward: Forward,
    resolver: Arc<SniResolver>,
    certs: Certs,
    acme_hosts: AcmeHosts,
    metrics: Metrics,
    reload_tx: mpsc::Sender<ReloadRequest>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
}

impl App {
    /// Builds the proxy from `cfg`, reading every file it names. For ACME, the cache directory
    /// is created if needed and checked writable, and cached certificates are loaded; the CA
    /// is not contacted.
    ///
    /// # Errors
    /// Every problem found: unreadable or mismatched certificates, hosts without a
    /// certificate, an unreadable `upstream.ca_file`, an unwritable `tls.acme.cache_dir`.
    pub fn build(cfg: &Config) -> Result<App, config::Errors> {
        let mut problems = Vec::new();
        let certs = match Certs::load(cfg) {
            Ok(c) => Some(c),
            Err(p) => {
                problems.extend(p);
                None
            }
        };
        let files = match forward::files::AppFiles::load(cfg) {
            Ok(f) => Some(f),
            Err(p) => {
                problems.extend(p);
                None
            }
        };
        let client = match forward::upstream::client(&cfg.upstream, &cfg.origin) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.extend(e.0);
                None
            }
        };
        let (Some(mut certs), Some((client, opened)), Some(files), true) =
            (certs, client, files, problems.is_empty())
        else {
            return Err(config::Errors(problems));
        };
        let acme_hosts = AcmeHosts::default();
        let resolver = Arc::new(SniResolver::new(
            std::mem::take(&mut certs.map),
            acme_hosts.clone(),
        ));
        if let Some(plan) = &certs.acme {
            acme_hosts.store(plan.hosts.iter().cloned().collect::<HashMap<_, _>>());
        }
        let (reload_tx, reload_rx) = mpsc::channel(4);
        Ok(App {
            cfg: cfg.clone(),
            forward: Forward::new(
                ForwardSettings::from_config(cfg, files),
                client,
                opened,
                resolver.clone(),
            ),
            resolver,
            certs,
            acme_hosts,
            metrics: Metrics::new(cfg.hosts.iter().map(|h| h.name.as_str())),
            reload_tx,
            reload_rx,
        })
    }

    /// The configuration this was built from.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Each host that has a certificate now (file, self-signed, or cached ACME) with facts
    /// about it. ACME hosts without a cached certificate are in [`App::acme_hosts`] only.
    #[must_use]
    pub fn certificates(&self) -> &[(String, CertInfo)] {
        &self.certs.info
    }

    /// Hosts that get their certificate over ACME.
    #[must_use]
    pub fn acme_hosts(&self) -> Vec<String> {
        self.certs
            .acme
            .iter()
            .flat_map(|p| p.hosts.iter().map(|(h, _)| h.clone()))
            .collect()
    }

    /// The certificate resolver: which hosts have a certificate now, and each ACME host's
    /// status. Stays valid while [`serve`] runs.
    #[must_use]
    pub fn resolver(&self) -> Arc<SniResolver> {
        self.resolver.clone()
    }

    /// A handle to reload the configuration of the proxy [`serve`] runs.
    #[must_use]
    pub fn reloader(&self) -> Reloader {
        Reloader::new(self.reload_tx.clone())
    }

    /// This proxy's metrics (its own recorder: see `crate::metrics`).
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Builds the proxy from `cfg` and serves `listeners` until `shutdown` resolves; then stops
/// accepting, lets in-flight requests finish within `server.shutdown_grace`, and returns.
///
/// # Errors
/// When the configuration cannot be built (see [`App::build`]) or TLS cannot be set up.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let app = App::build(&cfg)?;
    serve(app, listeners, shutdown).await
}

/// Serves a built [`App`]; see [`run`]. Reload requests from [`App::reloader`] are applied
/// while it runs.
///
/// # Errors
/// When TLS cannot be set up.
pub async fn serve(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let App {
        mut cfg,
        forward,
        resolver,
        mut certs,
        acme_hosts,
        metrics,
        reload_tx,
        mut reload_rx,
    } = app;
    // Only handles given out by `reloader()` keep the channel open.
    drop(reload_tx);
    certs.log();
    certs.export(&metrics);
    let state = StackState {
        metrics: metrics.clone(),
        limiter: Arc::new(ClientLimiter::new(&cfg.limits)),
        in_flight: InFlight::new(cfg.limits.max_in_flight),
        log_query: cfg.log.query,
    };
    let limits = ConnLimits::new(&cfg.limits);
    let server = Arc::new(Server {
        tls: tls::server_config(resolver.clone())?,
        resolver: resolver.clone(),
        h1: Server::h1_builder(&cfg.server),
        h2: Server::h2_builder(&cfg.server),
        service: middleware::stack(forward.clone(), &state),
        handshake_timeout: cfg.server.handshake_timeout,
        header_read_timeout: cfg.server.header_read_timeout,
        idle_timeout: cfg.server.idle_timeout,
        proxy_protocol: server::ProxyPolicy {
            mode: cfg.server.proxy_protocol,
            trusted: cfg.server.trusted_proxies.clone(),
        },
        limits: limits.clone(),
        metrics: metrics.clone(),
    });
    let health = Arc::new(Health::default());
    let admin = admin_state(&cfg, &health, &resolver, &metrics, &state, &forward, limits);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut acme = acme::Manager::new(acme_hosts, metrics.clone(), token.child_token());
    if let Some(plan) = &certs.acme {
        acme::check_store(plan).await?;
    }
    acme.apply(certs.acme.take());
    spawn_listeners(
        listeners,
        &server,
        admin.clone(),
        &token,
        &tracker,
        cfg.hosts.len(),
    );
    tracker.spawn(maintenance(state, token.clone()));
    health.set_listening();

    let mut watch = CertWatch::new(&cfg);
    let app_files = |cfg: &Config| {
        CertWatch::of_files(cfg.tls.watch_interval, forward::files::AppFiles::paths(cfg))
    };
    let mut files_watch = app_files(&cfg);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some((new, reply)) = reload_rx.recv() => {
                let result = reload::apply(&cfg, &new, &forward, &resolver, &mut acme, &metrics);
                if result.is_ok() {
                    metrics.add_hosts(new.hosts.iter().map(|h| h.name.as_str()));
                    admin.hosts.store(Arc::new(new.hosts.iter().map(|h| h.name.clone()).collect()));
                    cfg = new;
                    watch = CertWatch::new(&cfg);
                    files_watch = app_files(&cfg);
                }
                let _ = reply.send(result);
            }
            changed = watch.changed() => reload::certificate_files(&cfg, &changed, &resolver, &metrics),
            changed = files_watch.changed() => reload::app_files(&cfg, &changed, &forward),
        }
    }
    drain(&cfg, &health, &mut acme, &token, &tracker).await;
    Ok(())
}

/// The graceful end: `/readyz` 503 at once, keep serving for `server.drain_delay`, then stop
/// accepting and give in-flight requests `server.shutdown_grace`.
async fn drain(
    cfg: &Config,
    health: &Health,
    acme: &mut acme::Manager,
    token: &CancellationToken,
    tracker: &TaskTracker,
) {
    // From here /readyz answers 503, so a load balancer stops sending new connections while
    // the listeners still accept them for drain_delay.
    health.start_draining();
    // Certificate orders stop at once; connections drain below.
    acme.apply(None);
    if !cfg.server.drain_delay.is_zero() {
        info!(delay = ?cfg.server.drain_delay, "draining: still serving while the load balancer stops sending");
        tokio::time::sleep(cfg.server.drain_delay).await;
    }
    info!(grace = ?cfg.server.shutdown_grace, "stopped accepting; waiting for in-flight requests");
    token.cancel();
    tracker.close();
    if tokio::time::timeout(cfg.server.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tracker.len(),
            "shutdown grace period over; closing the remaining connections"
        );
    } else {
        info!("all connections closed");
    }
}

/// What the admin listener reads: health, hosts, certificates, metrics and a snapshot of the
/// values other parts own.
fn admin_state(
    cfg: &Config,
    health: &Arc<Health>,
    resolver: &Arc<SniResolver>,
    metrics: &Metrics,
    state: &StackState,
    forward: &Forward,
    limits: Arc<ConnLimits>,
) -> Arc<AdminState> {
    let state = state.clone();
    let forward = forward.clone();
    Arc::new(AdminState {
        health: health.clone(),
        hosts: arc_swap::ArcSwap::from_pointee(cfg.hosts.iter().map(|h| h.name.clone()).collect()),
        resolver: resolver.clone(),
        metrics: metrics.clone(),
        snapshot: Box::new(move || Snapshot {
            open_connections: limits.open(),
            parked_connections: limits.parked(),
            in_flight: state.in_flight.current(),
            upstream_connections_opened: forward.upstream_connections(),
            rate_limit_clients: state.limiter.clients(),
            log_lines_dropped: logging::dropped_log_lines(),
        }),
    })
}

/// Logs the bound addresses and starts the accept loops of the proxy and admin listeners.
fn spawn_listeners(
    listeners: Listeners,
    server: &Arc<Server>,
    admin: Arc<AdminState>,
    token: &CancellationToken,
    tracker: &TaskTracker,
    hosts: usize,
) {
    let addr = |l: &tokio::net::TcpListener| {
        l.local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    };
    info!(
        https = %addr(&listeners.https),
        http = %addr(&listeners.http),
        admin = %addr(&listeners.admin),
        hosts,
        "trackproxy listening"
    );
    for (listener, kind) in [(listeners.https, Kind::Https), (listeners.http, Kind::Http)] {
        tracker.spawn(server::accept_loop(
            listener,
            kind,
            server.clone(),
            token.clone(),
            tracker.clone(),
        ));
    }
    tracker.spawn(admin::serve(
        listeners.admin,
        admin,
        token.clone(),
        tracker.clone(),
    ));
}

/// Every [`MAINTENANCE_INTERVAL`]: forget rate-limit state of clients whose bucket is full
/// again (so memory follows the clients active in the last seconds, however many passed
/// before), and fold histogram samples into the exposition state.
async fn maintenance(state: StackState, token: CancellationToken) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = token.cancelled() => break,
        }
        // Walking millions of keys, or folding the histogram samples of 5 s at tens of
        // thousands of requests per second, takes milliseconds: off the async workers, where
        // it would stall every request queued behind it.
        let limiter = state.limiter.clone();
        let metrics = state.metrics.clone();
        let _ = tokio::task::spawn_blocking(move || {
            limiter.evict_stale();
            metrics.upkeep();
        })
        .await;
    }
}
