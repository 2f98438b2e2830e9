//! Listeners and connections: accept loops, TLS handshakes, the HTTP/1.1 + HTTP/2 server,
//! idle and handshake timeouts, and graceful drain.
//!
//! Per connection, in order: a slot in `limits.max_connections` (taken right after accept;
//! accepting pauses while none is free) → the PROXY protocol header, if configured → a slot in
//! the client's `limits.per_client_connections` (else the connection is closed before any TLS
//! work) → TLS handshake under `server.handshake_timeout` (rustls, with buffers of our own:
//! `crate::tls::stream`; the SNI is checked against the configured hosts; unknown or missing
//! SNI fails the handshake; an ACME TLS-ALPN-01 validation gets its challenge certificate and
//! is closed) → hyper's HTTP/1.1 or HTTP/2
//! server (by ALPN; without ALPN by the first bytes) with header size, header count and
//! header-read limits → the tower stack from [`crate::middleware`]. A connection with no bytes
//! moving for `server.idle_timeout` is shut down gracefully, and an idle HTTP/1 connection
//! gives back its buffers while it waits (module `http`). Nothing read from the network can
//! panic this code; a failure closes its own connection only.
//!
//! - `listeners`: binding the configured addresses.
//! - `context`: what every connection task shares (TLS configuration, HTTP builders, limits).
//! - `accept`: the accept loops and the steps of a new connection.
//! - `proxy_protocol`: the PROXY header (connection budgets: [`crate::limits::connections`]).
//! - `http`: HTTP/1.1 and HTTP/2 on an established connection, parking of idle ones.

mod accept;
mod context;
mod http;
mod listeners;
pub(crate) mod proxy_protocol;

pub(crate) use accept::{Kind, accept_loop};
pub(crate) use context::Server;
pub use listeners::Listeners;
pub(crate) use proxy_protocol::Policy as ProxyPolicy;
