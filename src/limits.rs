//! Limits: what one client, and everyone together, may use (`[limits]`).
//!
//! - [`connections`]: connection budgets, checked before any TLS work: `max_connections` in
//!   total (accepting pauses past it) and `per_client_connections` (more are closed at once).
//! - [`rate`]: the per-client request rate (`per_client_rps`, `per_client_burst`): a token
//!   bucket per client, 429 with `Retry-After` over it.
//! - [`in_flight`]: requests in flight (`max_in_flight`): 503 at once past it (load shedding),
//!   never a queue.
//!
//! A client is [`crate::client::ConnInfo::client`], keyed by [`crate::client::client_key`];
//! networks in `limits.allow` ([`crate::client::Cidrs`]) are never limited.

pub(crate) mod connections;
pub(crate) mod in_flight;
pub(crate) mod rate;
