//! The proxy in-process on ephemeral loopback ports, and the TOML the tests configure it with.
//!
//! This is the one file of the harness that names `trackproxy::` paths: when the library moves
//! an item, only this file changes (test files use the re-exports below).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// For tests that reach into the library (acme.rs).
#[allow(unused_imports)]
pub use trackproxy::Listeners;
#[allow(unused_imports)]
pub use trackproxy::tls::acme::{AcmeStatus, directory_dir_name};

use super::{KeyAlg, TestCa, TestConfig, Upstream};

/// A proxy running in-process on `127.0.0.1:0`.
pub struct Proxy {
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// Which hosts have a certificate, and each ACME host's status.
    pub resolver: Arc<trackproxy::tls::SniResolver>,
    /// Applies a new configuration (what SIGHUP does in the binary).
    pub reloader: trackproxy::Reloader,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), trackproxy::Error>>>,
}

/// Parses test TOML (no environment overrides).
pub fn config(toml: &str) -> Result<trackproxy::config::Config, trackproxy::config::Errors> {
    trackproxy::config::load_with_env(
        &trackproxy::config::Source::Text {
            label: "test.toml",
            toml,
        },
        Some(Default::default()),
    )
}

/// Listeners on ephemeral loopback ports.
pub async fn bind_listeners() -> Listeners {
    Listeners {
        https: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    }
}

impl Proxy {
    /// Starts the proxy with `toml` (listen addresses are ignored: ephemeral loopback ports).
    pub async fn start(toml: &str) -> Self {
        Self::try_start(toml).await.unwrap()
    }

    pub async fn try_start(toml: &str) -> Result<Self, trackproxy::config::Errors> {
        Self::try_start_on(bind_listeners().await, toml)
    }

    /// Builds the app `toml` describes without serving it (to reach into it before start).
    pub fn build(toml: &str) -> Result<trackproxy::App, trackproxy::config::Errors> {
        trackproxy::App::build(&config(toml)?)
    }

    /// Starts the proxy on listeners bound beforehand (so Pebble can be told their ports).
    pub fn start_on(listeners: Listeners, toml: &str) -> Self {
        Self::try_start_on(listeners, toml).unwrap()
    }

    pub fn try_start_on(
        listeners: Listeners,
        toml: &str,
    ) -> Result<Self, trackproxy::config::Errors> {
        Ok(Self::serve_on(Self::build(toml)?, listeners))
    }

    /// Serves a built app on ephemeral loopback ports.
    pub async fn start_app(app: trackproxy::App) -> Self {
        Self::serve_on(app, bind_listeners().await)
    }

    fn serve_on(app: trackproxy::App, listeners: Listeners) -> Self {
        let https = listeners.https.local_addr().unwrap();
        let http = listeners.http.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let resolver = app.resolver().clone();
        let reloader = app.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(trackproxy::serve(app, listeners, async {
            let _ = rx.await;
        }));
        Proxy {
            https,
            http,
            admin,
            resolver,
            reloader,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Applies new TOML to the running proxy.
    pub async fn reload(&self, toml: &str) -> Result<(), trackproxy::ReloadError> {
        self.reloader.reload(config(toml)?).await
    }

    /// Sends the shutdown signal (like SIGTERM).
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("proxy did not stop")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The test CA and the upstream most tests need, and their proxy configuration.
pub struct Setup {
    pub ca: TestCa,
    pub upstream: Upstream,
}

impl Setup {
    pub async fn new() -> Self {
        let ca = TestCa::new();
        let upstream = Upstream::start(&ca).await;
        Setup { ca, upstream }
    }

    /// A configuration for `hosts`, all covered by one certificate from the test CA,
    /// forwarding to the upstream (its CA trusted); add keys with [`TestConfig::set`].
    pub fn config(&self, hosts: &[&str]) -> TestConfig {
        TestConfig::new(&self.upstream.url)
            .upstream_ca(&self.ca.ca_file)
            .hosts(hosts)
            .certificate(self.ca.write_leaf("proxy", hosts, KeyAlg::EcdsaP256))
    }

    /// [`Setup::config`] as TOML.
    pub fn toml(&self, hosts: &[&str]) -> String {
        self.config(hosts).toml()
    }
}
