//! The one crypto provider, aws-lc-rs, used everywhere (server, upstream and ACME clients).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The process-wide crypto provider (aws-lc-rs).
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
