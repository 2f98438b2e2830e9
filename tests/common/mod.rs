//! Test harness shared by the integration tests, one file per helper:
//!
//! - [`pki`]: a throw-away test CA and TLS configurations;
//! - [`upstream`]: the local stand-in for sendgrid.net, recording what it received;
//! - [`proxy`]: the proxy in-process on `127.0.0.1:0` (the only file here that names
//!   `trackproxy::` paths);
//! - [`test_config`]: [`TestConfig`], the proxy's TOML put together key by key;
//! - [`binary`]: the `trackproxy` binary as a child process;
//! - [`client`]: reqwest, raw TLS/TCP bytes, hyper HTTP/2, curl;
//! - [`ports`]: loopback ports for programs the tests start;
//! - [`wait`]: [`eventually`], the one way to wait for a condition;
//! - [`dns`], [`haproxy`], [`pebble`], [`postgres`], [`website`], [`metrics`]: real daemons and the admin
//!   endpoints.
//!
//! Everything listens on loopback only and shuts down when dropped. The common items are
//! re-exported here, so tests write `common::Proxy`, `common::TestCa`, ….

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::pedantic
)]

pub mod binary;
pub mod client;
pub mod dns;
pub mod haproxy;
pub mod metrics;
pub mod pebble;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod proxy;
pub mod test_config;
pub mod upstream;
pub mod wait;
pub mod website;

// Each test crate uses only some of these.
#[allow(unused_imports)]
pub use self::{
    binary::*, client::*, pki::*, ports::*, proxy::*, test_config::*, upstream::*, wait::*,
};
