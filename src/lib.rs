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
//! - [`tls`]: rustls server configuration, SNI resolver, file and self-signed certificates.
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

pub mod admin;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod error;
pub mod middleware;
pub mod proxy;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{AdminState, Health};
use crate::config::Config;
use crate::middleware::StackState;
use crate::middleware::load_shed::InFlight;
use crate::middleware::rate_limit::ClientLimiter;
use crate::proxy::{Forward, ForwardSettings};
use crate::server::conn_limit::ConnLimits;
use crate::server::{Kind, Listeners, Server};
use crate::telemetry::metrics::{Metrics, Snapshot};
use crate::tls::SniResolver;
use crate::tls::static_certs::{self, CertInfo};

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

/// Everything built from a configuration before anything listens: certificates loaded,
/// routes and the upstream client ready. `check-config` builds this and stops.
pub struct App {
    cfg: Config,
    forward: Forward,
    resolver: Arc<SniResolver>,
    certs: Vec<(String, CertInfo)>,
    metrics: Metrics,
}

impl App {
    /// Builds the proxy from `cfg`, reading every file it names.
    ///
    /// # Errors
    /// Every problem found: unreadable or mismatched certificates, hosts without a
    /// certificate, an unreadable `upstream.ca_file`.
    pub fn build(cfg: &Config) -> Result<App, config::Errors> {
        let provider = tls::provider();
        let mut problems = Vec::new();
        let certs = match static_certs::load(cfg, &provider) {
            Ok(c) => {
                problems.extend(static_certs::uncovered_problems(cfg, &c.uncovered));
                Some(c)
            }
            Err(e) => {
                problems.extend(e.0);
                None
            }
        };
        let client = match proxy::upstream::client(&cfg.upstream, &cfg.origin) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.extend(e.0);
                None
            }
        };
        let (Some(certs), Some((client, opened)), true) = (certs, client, problems.is_empty())
        else {
            return Err(config::Errors(problems));
        };
        Ok(App {
            cfg: cfg.clone(),
            forward: Forward::new(ForwardSettings::from_config(cfg), client, opened),
            resolver: Arc::new(SniResolver::new(certs.certs)),
            certs: certs.info,
            metrics: Metrics::new(cfg.hosts.iter().map(|h| h.name.as_str())),
        })
    }

    /// The configuration this was built from.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Each host with facts about the certificate it is served with.
    #[must_use]
    pub fn certificates(&self) -> &[(String, CertInfo)] {
        &self.certs
    }

    /// The certificate resolver the HTTPS listener serves from (certificate sources replace
    /// its contents; `/readyz` reads it).
    #[must_use]
    pub fn resolver(&self) -> &Arc<SniResolver> {
        &self.resolver
    }

    /// This proxy's metrics (its own recorder: see [`telemetry::metrics`]).
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// The `source` label of a certificate's expiry gauge.
fn source_label(c: &CertInfo) -> &'static str {
    if c.source == "self-signed" {
        "self_signed"
    } else {
        "file"
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

/// Serves a built [`App`]; see [`run`].
///
/// # Errors
/// When TLS cannot be set up.
pub async fn serve(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let App {
        cfg,
        forward,
        resolver,
        certs,
        metrics,
    } = app;
    for (host, c) in &certs {
        info!(
            host,
            source = %c.source,
            issuer = %c.issuer,
            not_after = %humantime::format_rfc3339_seconds(c.not_after),
            "certificate loaded"
        );
        metrics.certificate_expiry(host, source_label(c), c.not_after);
    }
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
        http: Server::http_builder(&cfg.server),
        service: middleware::stack(forward.clone(), &state),
        handshake_timeout: cfg.server.handshake_timeout,
        idle_timeout: cfg.server.idle_timeout,
        proxy_protocol: server::ProxyPolicy {
            mode: cfg.server.proxy_protocol,
            trusted: cfg.server.trusted_proxies.clone(),
        },
        limits: limits.clone(),
        metrics: metrics.clone(),
    });
    let health = Arc::new(Health::default());
    let admin = Arc::new(AdminState {
        health: health.clone(),
        hosts: cfg.hosts.iter().map(|h| h.name.clone()).collect(),
        resolver,
        metrics,
        snapshot: {
            let state = state.clone();
            Box::new(move || Snapshot {
                open_connections: limits.open(),
                in_flight: state.in_flight.current(),
                upstream_connections_opened: forward.upstream_connections(),
                rate_limit_clients: state.limiter.clients(),
                log_lines_dropped: telemetry::dropped_log_lines(),
            })
        },
    });
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    spawn_listeners(listeners, &server, admin, &token, &tracker, cfg.hosts.len());
    tracker.spawn(maintenance(state, token.clone()));
    health.set_listening();

    shutdown.await;
    // From here /readyz answers 503, so a load balancer stops sending new connections while
    // the listeners still accept them for drain_delay.
    health.start_draining();
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
        // Walking millions of keys takes milliseconds: keep it off the async workers.
        let limiter = state.limiter.clone();
        let _ = tokio::task::spawn_blocking(move || limiter.evict_stale()).await;
        state.metrics.upkeep();
    }
}
