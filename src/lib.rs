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
//! - [`server`]: listeners, accept loops, TLS handshakes, HTTP/1.1 + HTTP/2, idle timeouts.
//! - [`tls`]: rustls server configuration, SNI resolver, file and self-signed certificates.
//! - [`middleware`]: the tower stack, ordered in one place.
//! - [`proxy`]: routing by host and the forwarder to the upstream.
//! - [`error`]: request errors and their statuses.
//! - [`shutdown`]: signals; [`telemetry`]: logging; [`cli`]: the command line.
//!
//! [`run`] takes already-bound listeners (so tests can bind `127.0.0.1:0`) and a shutdown
//! future, and returns once in-flight requests have finished or the grace period ran out.

#[doc(hidden)]
pub mod bench_api;
pub mod cli;
pub mod config;
pub mod error;
pub mod middleware;
pub mod proxy;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::proxy::{Forward, ForwardSettings};
use crate::server::{Kind, Listeners, Server};
use crate::tls::SniResolver;
use crate::tls::static_certs::{self, CertInfo};

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
    } = app;
    for (host, c) in &certs {
        info!(
            host,
            source = %c.source,
            issuer = %c.issuer,
            not_after = %humantime::format_rfc3339_seconds(c.not_after),
            "certificate loaded"
        );
    }
    let server = Arc::new(Server {
        tls: tls::server_config(resolver.clone())?,
        resolver,
        http: Server::http_builder(&cfg.server),
        service: middleware::stack(forward),
        handshake_timeout: cfg.server.handshake_timeout,
        idle_timeout: cfg.server.idle_timeout,
    });
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let addr = |l: &tokio::net::TcpListener| {
        l.local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string())
    };
    info!(
        https = %addr(&listeners.https),
        http = %addr(&listeners.http),
        hosts = cfg.hosts.len(),
        "trackproxy listening"
    );
    tracker.spawn(server::accept_loop(
        listeners.https,
        Kind::Https,
        server.clone(),
        token.clone(),
        tracker.clone(),
    ));
    tracker.spawn(server::accept_loop(
        listeners.http,
        Kind::Http,
        server.clone(),
        token.clone(),
        tracker.clone(),
    ));

    shutdown.await;
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
