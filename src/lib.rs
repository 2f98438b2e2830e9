//! # trackproxy
//!
//! The HTTPS front for an email sender's branded tracking-link hosts. DNS for
//! `url1234.example.com` is a CNAME to trackproxy; trackproxy holds a valid certificate for that
//! host and passes every click and open through to the ESP's tracking host (`sendgrid.net` by
//! default), keeping `Host`, path and query intact, so HTTPS click tracking works without a CDN.
//!
//! # Layout
//!
//! One room per concern; lower rooms never import higher ones, and no modules import each
//! other in a circle (`scripts/module-cycles` checks it in CI). From the bottom up:
//!
//! - [`client`]: who the client is: connection facts ([`client::ConnInfo`]), the client
//!   address behind a load balancer (PROXY protocol, `X-Forwarded-For`, `Forwarded`), the
//!   rate-limit key, and [`client::Cidrs`], the one network-membership check.
//! - [`error`]: the errors that cross modules ([`error::ProxyError`] and its statuses,
//!   [`error::UpstreamError`], [`error::BindError`]).
//! - [`config`]: TOML + environment → validated [`config::Config`]; every problem with its key
//!   and file (`config/` has the reader, the value parsers and the types).
//! - [`logging`]: the log subscriber (JSON or pretty) and its writer; `metrics`: the
//!   Prometheus recorder every part counts into.
//! - `limits`: what a client and everyone together may use: the per-client rate limit,
//!   requests in flight (load shedding), connection budgets.
//! - [`tls`]: everything TLS: the handshake of a new connection (`accept`), the TLS stream,
//!   the SNI resolver, certificates from files and self-signed ones, which host gets which
//!   certificate, file watching, and ACME (`tls/acme/`: plan and manager, a host's orders, its
//!   shared state, the cache).
//! - `forward`: routing by host and the forwarder to the upstream: request and response
//!   header rules, the pooled upstream client, and the answers trackproxy gives itself.
//! - `middleware`: the tower stack, ordered in one place: request id, access log, rescue
//!   (errors → responses), then the rate-limit and load-shedding layers of `limits`.
//! - `server`: listeners, accept loops, PROXY protocol, connection limits, HTTP/1.1 + HTTP/2
//!   on a connection, idle timeouts and parking.
//! - `admin`: `/healthz`, `/readyz`, `/metrics` and the status page on the admin listener.
//! - `app`: building the proxy ([`App::build`]) and running it ([`serve`], [`run`]), drain.
//! - `reload`: applying a new configuration while running ([`Reloader`]), and which keys
//!   need a restart.
//! - [`signals`]: SIGTERM/SIGINT → shutdown, SIGHUP → reload.
//! - `doctor`: `trackproxy doctor`, the setup checks (DNS, certificate, click path, HSTS,
//!   CAA), with a request type and an outcome of its own.
//! - [`cli`]: the command line; the only module (with `main.rs`) that knows clap and exit
//!   codes.
//!
//! [`run`] takes already-bound listeners (so tests can bind `127.0.0.1:0`) and a shutdown
//! future, and returns once in-flight requests have finished or the grace period ran out.
//! While it runs, a [`Reloader`] (SIGHUP in `main`) swaps in a new configuration: hosts,
//! routes, file certificates and ACME hosts change without dropping a connection.

pub(crate) mod admin;
pub(crate) mod app;
#[doc(hidden)]
pub mod bench_api;
pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod doctor;
pub mod error;
pub(crate) mod forward;
#[doc(hidden)]
pub mod fuzz_api;
pub(crate) mod limits;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod middleware;
pub(crate) mod reload;
pub(crate) mod server;
pub mod signals;
pub mod tls;

pub use app::{App, Error, run, serve};
pub use reload::{ReloadError, Reloader};
pub use server::Listeners;
