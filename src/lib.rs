//! # trackproxy
//!
//! The HTTPS front for an email sender's branded tracking-link hosts. DNS for
//! `url1234.example.com` is a CNAME to trackproxy; trackproxy holds a valid certificate for that
//! host and passes every click and open through to the ESP's tracking host (`sendgrid.net` by
//! default), keeping `Host`, path and query intact, so HTTPS click tracking works without a CDN.
//!
//! # Layout
//!
//! - [`config`]: TOML + environment → validated [`config::Config`]; every problem with its key.
//! - [`server`]: listeners, accept loops, connection limits, TLS handshakes, HTTP/1.1 + HTTP/2,
//!   idle timeouts.
//! - [`tls`]: rustls server configuration, SNI resolver, file and self-signed certificates,
//!   certificates over ACME (one order and cache entry per host).
//! - [`middleware`]: the tower stack, ordered in one place: request id, access log, rate limit,
//!   load shedding.
//! - [`proxy`]: routing by host and the forwarder to the upstream.
//! - [`error`]: request errors and their statuses.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on the admin listener.
//! - [`doctor`]: `trackproxy doctor`, the setup checks (DNS, certificate, click path, HSTS, CAA).
//! - [`telemetry`]: logging and metrics; [`shutdown`]: signals; [`cli`]: the command line.
//!
//! [`run`] takes already-bound listeners (so tests can bind `127.0.0.1:0`) and a shutdown
//! future, and returns once in-flight requests have finished or the grace period ran out.
//! While it runs, a [`Reloader`] (SIGHUP in `main`) swaps in a new configuration: hosts,
//! routes, file certificates and ACME hosts change without dropping a connection.

pub mod admin;
#[doc(hidden)]
pub mod bench_api;
pub mod cli;
pub mod client;
pub mod config;
pub mod doctor;
pub mod error;
pub mod forward;
pub mod middleware;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{AdminState, Health};
use crate::config::{Config, Problem};
use crate::forward::{Forward, ForwardSettings};
use crate::middleware::StackState;
use crate::middleware::load_shed::InFlight;
use crate::middleware::rate_limit::ClientLimiter;
use crate::server::conn_limit::ConnLimits;
use crate::server::{Kind, Listeners, Server};
use crate::telemetry::metrics::{Metrics, Snapshot};
use crate::tls::SniResolver;
use crate::tls::acme;
use crate::tls::sni::CertMap;
use crate::tls::static_certs::{self, CertInfo};
use crate::tls::watch::CertWatch;

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
}

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

type ReloadRequest = (Config, oneshot::Sender<Result<(), config::Errors>>);

/// Asks a running [`serve`] to switch to a new configuration (see [`App::reloader`]).
#[derive(Debug, Clone)]
pub struct Reloader {
    tx: mpsc::Sender<ReloadRequest>,
}

impl Reloader {
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

/// The certificates a configuration asks for, read from disk: file and self-signed ones, and
/// the ACME hosts with their cached certificates.
struct Certs {
    map: CertMap,
    info: Vec<(String, CertInfo)>,
    acme: Option<acme::Plan>,
}

impl Certs {
    fn load(cfg: &Config) -> Result<Certs, Vec<Problem>> {
        let provider = tls::provider();
        let loaded = static_certs::load(cfg, &provider).map_err(|e| e.0)?;
        let acme = if let Some(a) = &cfg.tls.acme {
            Some(acme::plan(a, &cfg.origin, &loaded.uncovered, &provider)?)
        } else {
            let problems = static_certs::uncovered_problems(cfg, &loaded.uncovered);
            if !problems.is_empty() {
                return Err(problems);
            }
            None
        };
        let mut info = loaded.info;
        for (host, a) in acme.iter().flat_map(|p| &p.hosts) {
            if let Some(c) = a.certificate() {
                info.push((host.clone(), c));
            }
        }
        Ok(Certs {
            map: loaded.certs,
            info,
            acme,
        })
    }

    /// Sets the expiry gauge of every certificate loaded now.
    fn export(&self, metrics: &Metrics) {
        for (host, c) in &self.info {
            metrics.certificate_expiry(host, source_label(c), c.not_after);
        }
    }

    fn log(&self) {
        for (host, c) in &self.info {
            info!(
                host,
                source = %c.source,
                issuer = %c.issuer,
                not_after = %humantime::format_rfc3339_seconds(c.not_after),
                "certificate loaded"
            );
        }
        for (host, a) in self.acme.iter().flat_map(|p| &p.hosts) {
            if a.certificate().is_none() {
                info!(host, "no certificate yet: it will be ordered over ACME");
            }
        }
    }
}

/// Everything built from a configuration before anything listens: certificates loaded,
/// routes and the upstream client ready. `check-config` builds this and stops.
pub struct App {
    cfg: Config,
    forward: Forward,
    resolver: Arc<SniResolver>,
    certs: Certs,
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
        let client = match forward::upstream::client(&cfg.upstream, &cfg.origin) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.extend(e.0);
                None
            }
        };
        let (Some(mut certs), Some((client, opened)), true) = (certs, client, problems.is_empty())
        else {
            return Err(config::Errors(problems));
        };
        let resolver = Arc::new(SniResolver::new(std::mem::take(&mut certs.map)));
        if let Some(plan) = &certs.acme {
            resolver.set_acme_hosts(plan.hosts.iter().cloned().collect::<HashMap<_, _>>());
        }
        let (reload_tx, reload_rx) = mpsc::channel(4);
        Ok(App {
            cfg: cfg.clone(),
            forward: Forward::new(
                ForwardSettings::from_config(cfg),
                client,
                opened,
                resolver.clone(),
            ),
            resolver,
            certs,
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
        Reloader {
            tx: self.reload_tx.clone(),
        }
    }

    /// This proxy's metrics (its own recorder: see [`telemetry::metrics`]).
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The `source` label of a certificate's expiry gauge.
fn source_label(c: &CertInfo) -> &'static str {
    match c.source.as_str() {
        "self-signed" => "self_signed",
        "acme" => "acme",
        _ => "file",
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
    let mut acme = acme::Manager::new(resolver.clone(), metrics.clone(), token.child_token());
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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some((new, reply)) = reload_rx.recv() => {
                let result = reload(&cfg, &new, &forward, &resolver, &mut acme, &metrics);
                if result.is_ok() {
                    metrics.add_hosts(new.hosts.iter().map(|h| h.name.as_str()));
                    admin.hosts.store(Arc::new(new.hosts.iter().map(|h| h.name.clone()).collect()));
                    cfg = new;
                    watch = CertWatch::new(&cfg);
                }
                let _ = reply.send(result);
            }
            changed = watch.changed() => reload_certificate_files(&cfg, &changed, &resolver, &metrics),
        }
    }
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
    Ok(())
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
            log_lines_dropped: telemetry::dropped_log_lines(),
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

/// Certificate files changed on disk: load them again; if they do not load (half-written, key
/// and certificate out of step, expired chain garbage), keep serving what was loaded before.
fn reload_certificate_files(
    cfg: &Config,
    changed: &[std::path::PathBuf],
    resolver: &SniResolver,
    metrics: &Metrics,
) {
    let files: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
    match static_certs::load(cfg, &tls::provider()) {
        Ok(loaded)
            if loaded
                .uncovered
                .iter()
                .all(|h| resolver.acme_host(h).is_some()) =>
        {
            resolver.replace(loaded.certs);
            for (host, c) in &loaded.info {
                metrics.certificate_expiry(host, source_label(c), c.not_after);
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

/// Applies `new` over `old`: everything is read and checked first, so a configuration with a
/// problem changes nothing.
fn reload(
    old: &Config,
    new: &Config,
    forward: &Forward,
    resolver: &SniResolver,
    acme: &mut acme::Manager,
    metrics: &Metrics,
) -> Result<(), config::Errors> {
    let mut certs = match Certs::load(new) {
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
    forward.reload(ForwardSettings::from_config(new));
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
