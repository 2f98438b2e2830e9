//! The listeners `run` serves, bound from the configuration (tests bind `127.0.0.1:0`).

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::BindError;

/// The bound listeners `run` serves. `main` binds them from the configuration; tests bind
/// `127.0.0.1:0`.
#[derive(Debug)]
pub struct Listeners {
    /// HTTPS.
    pub https: TcpListener,
    /// Plain HTTP.
    pub http: TcpListener,
    /// The admin endpoints (`crate::admin`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the addresses in `cfg`.
    ///
    /// # Errors
    /// The address that could not be bound and why.
    pub async fn bind(cfg: &Config) -> Result<Self, BindError> {
        let server = &cfg.server;
        let bind = |addr: SocketAddr, key: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { key, addr, source })
        };
        Ok(Listeners {
            https: bind(server.https_listen, "server.https_listen").await?,
            http: bind(server.http_listen, "server.http_listen").await?,
            admin: bind(cfg.admin.listen, "admin.listen").await?,
        })
    }
}
