//! Connection limits, checked before any TLS work: `limits.max_connections` in total (the
//! accept loop pauses past it) and `limits.per_client_connections` per client (more are closed
//! at once). A TLS handshake costs far more CPU than a TCP accept, so a flood of connections
//! from one address must be cut before it.
//!
//! Permits are owned by the connection task and released when it ends, however it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::{Cidrs, client_key};
use crate::config::LimitsConfig;

/// The connection budgets, shared by the HTTPS and HTTP listeners.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    total: Arc<Semaphore>,
    max: usize,
    per_client: u32,
    allow: Cidrs,
    /// Open connections per client key; entries are removed at zero, so this holds at most one
    /// entry per open connection.
    open: Mutex<HashMap<IpAddr, u32>>,
    /// Idle HTTP/1 connections parked without buffers (not a limit: counted for `/metrics`).
    parked: AtomicUsize,
}

/// Counts one parked connection while it lives.
#[derive(Debug)]
pub(crate) struct ParkedGuard(Arc<ConnLimits>);

impl Drop for ParkedGuard {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a client's connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PerClientLimit;

/// One open connection of a client; releases its slot when dropped.
#[derive(Debug)]
pub(crate) struct ClientPermit {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

impl ConnLimits {
    /// The limits `cfg` describes.
    #[must_use]
    pub(crate) fn new(cfg: &LimitsConfig) -> Arc<Self> {
        let max = cfg.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(ConnLimits {
            total: Arc::new(Semaphore::new(max)),
            max,
            per_client: cfg.per_client_connections,
            allow: cfg.allow.clone(),
            open: Mutex::new(HashMap::new()),
            parked: AtomicUsize::new(0),
        })
    }

    /// Idle HTTP/1 connections parked right now.
    #[must_use]
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Counts a connection as parked until the guard is dropped.
    pub(crate) fn park(self: &Arc<Self>) -> ParkedGuard {
        self.parked.fetch_add(1, Ordering::Relaxed);
        ParkedGuard(self.clone())
    }

    /// A slot in the total budget, if one is free.
    #[must_use]
    pub(crate) fn try_total(&self) -> Option<OwnedSemaphorePermit> {
        self.total.clone().try_acquire_owned().ok()
    }

    /// Waits for a slot in the total budget.
    pub(crate) async fn total(&self) -> OwnedSemaphorePermit {
        match self.total.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed; if it were, waiting forever is the safe answer.
            Err(_) => std::future::pending().await,
        }
    }

    /// Open connections (all listeners).
    #[must_use]
    pub(crate) fn open(&self) -> usize {
        self.max.saturating_sub(self.total.available_permits())
    }

    /// Takes one of `client`'s connection slots. `Ok(None)` when the client is not limited (cap
    /// off, or an allowed network).
    ///
    /// # Errors
    /// When the client already has `limits.per_client_connections` open.
    pub(crate) fn try_client(
        self: &Arc<Self>,
        client: IpAddr,
    ) -> Result<Option<ClientPermit>, PerClientLimit> {
        if self.per_client == 0 || self.allow.contains(client) {
            return Ok(None);
        }
        let key = client_key(client);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.per_client {
            return Err(PerClientLimit);
        }
        *n += 1;
        Ok(Some(ClientPermit {
            limits: self.clone(),
            key,
        }))
    }

    /// Clients with at least one limited connection open.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: u32, max: usize, allow: &[&str]) -> Arc<ConnLimits> {
        ConnLimits::new(&LimitsConfig {
            per_client_connections: per_client,
            max_connections: max,
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
            ..LimitsConfig::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_client_slots_are_counted_and_released() {
        let l = limits(2, 100, &["10.0.0.0/8"]);
        let a1 = l.try_client(ip("192.0.2.1")).unwrap().unwrap();
        let _a2 = l.try_client(ip("192.0.2.1")).unwrap().unwrap();
        assert_eq!(l.try_client(ip("192.0.2.1")).unwrap_err(), PerClientLimit);
        assert!(l.try_client(ip("192.0.2.2")).unwrap().is_some());
        // Same /64.
        let _b = l.try_client(ip("2001:db8::1")).unwrap().unwrap();
        let _b2 = l.try_client(ip("2001:db8::2")).unwrap().unwrap();
        assert!(l.try_client(ip("2001:db8::3")).is_err());
        // Allowed networks take no slot.
        for _ in 0..10 {
            assert!(l.try_client(ip("10.9.9.9")).unwrap().is_none());
        }
        drop(a1);
        assert!(l.try_client(ip("192.0.2.1")).unwrap().is_some());
    }

    #[test]
    fn the_map_only_holds_clients_with_open_connections() {
        let l = limits(1, 100, &[]);
        let permits: Vec<_> = (0..1000u32)
            .map(|i| l.try_client(IpAddr::V4(i.into())).unwrap().unwrap())
            .collect();
        assert_eq!(l.clients(), 1000);
        drop(permits);
        assert_eq!(l.clients(), 0);
        assert!(
            limits(0, 1, &[])
                .try_client(ip("192.0.2.1"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn total_budget() {
        let l = limits(0, 2, &[]);
        let a = l.try_total().unwrap();
        let _b = l.try_total().unwrap();
        assert_eq!(l.open(), 2);
        assert!(l.try_total().is_none());
        drop(a);
        assert_eq!(l.open(), 1);
        assert!(l.try_total().is_some());
    }
}
