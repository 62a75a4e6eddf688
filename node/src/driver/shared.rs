//! What the driver shares with the API layer: the state machine (read by
//! serializable reads and after ReadIndex), the watch hub, the status the
//! API reports, and the metrics. Written only by the driver. No I/O.

use std::sync::atomic::AtomicBool;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::request::NodeStatus;
use crate::auth::SimpleTokens;
use crate::metrics::Metrics;
use crate::storage::backend::{Backend, RocksBackend};
use crate::storage::KvStore;
use crate::watch_hub::WatchHub;

pub struct Shared<B: Backend = RocksBackend> {
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub store: RwLock<KvStore<B>>,
    pub hub: WatchHub,
    pub status: RwLock<NodeStatus>,
    pub metrics: Metrics,
    /// Simple auth tokens: assigned when a login applies, on every member.
    pub tokens: SimpleTokens,
    /// Whether auth is on, as of the last applied entry (a copy of the
    /// store's flag, so a request with auth off takes no lock to learn it).
    pub auth_enabled: AtomicBool,
}

impl<B: Backend> Shared<B> {
    pub fn status(&self) -> NodeStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn store(&self) -> RwLockReadGuard<'_, KvStore<B>> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn store_mut(&self) -> RwLockWriteGuard<'_, KvStore<B>> {
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn status_mut(&self) -> RwLockWriteGuard<'_, NodeStatus> {
        self.status.write().unwrap_or_else(|p| p.into_inner())
    }
}
