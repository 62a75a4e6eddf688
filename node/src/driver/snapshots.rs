//! State machine snapshots: take a checkpoint every `snapshot_count`
//! applied entries (in the background, through the platform), record it as
//! the Raft snapshot and compact the log behind the one before it, and
//! install one a leader sent. No I/O of its own.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;

use nod_raft::{Index, NodeId, RawNode, Storage, StorageWrite, Term};

use super::platform::{Snapshotter, Taken};
use super::request::{DriverError, Fatal};
use super::{Core, Platform};
use crate::command;
use crate::storage::checkpoint::CheckpointInfo;
use nod_proto::etcd::etcdserverpb::Member;

/// Checkpoints kept: the newest and the one the log now starts from.
const CHECKPOINTS_KEPT: usize = 2;

pub(crate) struct SnapshotState {
    /// Applied index of the last checkpoint taken (or installed).
    last: u64,
    in_flight: bool,
    /// The newest checkpoint; the log is compacted to the one before it, so
    /// a follower up to `snapshot_count` entries behind catches up from the
    /// log instead of a whole snapshot.
    newest: Option<CheckpointInfo>,
}

impl SnapshotState {
    pub fn new<S: Storage>(node: &RawNode<S>) -> Self {
        let last = node
            .storage()
            .snapshot()
            .map(|s| s.metadata.index.0)
            .unwrap_or(0);
        SnapshotState {
            last,
            in_flight: false,
            newest: None,
        }
    }
}

fn conf_state(members: &[Member]) -> nod_raft::ConfState {
    let ids = |learner: bool| -> BTreeSet<NodeId> {
        members
            .iter()
            .filter(|m| m.is_learner == learner)
            .map(|m| NodeId(m.id))
            .collect()
    };
    nod_raft::ConfState {
        voters: ids(false),
        learners: ids(true),
    }
}

impl<P: Platform> Core<P> {
    /// Starts a checkpoint once `snapshot_count` entries were applied since
    /// the last one.
    pub(super) fn maybe_snapshot(&mut self) {
        let store = self.shared.store();
        let applied = store.applied().0;
        if self.snap.in_flight || applied < self.snap.last + self.config.snapshot_count.max(1) {
            return;
        }
        self.snap.in_flight = true;
        self.snapshots.take(&store);
    }

    /// Records a finished checkpoint as the Raft snapshot and compacts the
    /// log behind the previous one.
    pub fn on_snapshot_taken(&mut self, r: Taken) -> Result<(), Fatal> {
        self.snap.in_flight = false;
        let info = match r {
            Ok(i) => i,
            Err(e) => {
                // A failed checkpoint leaves the log whole; the next one retries.
                tracing::error!(error = %e, "taking a snapshot failed");
                self.snap.last = self.shared.store().applied().0;
                return Ok(());
            }
        };
        self.snap.last = info.index;
        let Some(info) = self.snap.newest.replace(info) else {
            return Ok(());
        };
        let current = self.node.storage().snapshot()?;
        if info.index <= current.metadata.index.0 {
            return Ok(());
        }
        let data = command::SnapshotData {
            members: Vec::new(),
            checkpoint_index: info.index,
            checkpoint_bytes: info.bytes,
            checkpoint_crc32: info.crc32,
        };
        let snapshot = nod_raft::Snapshot {
            metadata: nod_raft::SnapshotMetadata {
                index: Index(info.index),
                term: Term(info.term),
                conf_state: conf_state(&info.members),
            },
            data: prost::Message::encode_to_vec(&data),
        };
        self.node.storage_mut().compact(snapshot)?;
        self.shared.metrics.snapshots.inc();
        self.snapshots.prune(CHECKPOINTS_KEPT);
        tracing::info!(
            index = info.index,
            bytes = info.bytes,
            "took a snapshot and compacted the log"
        );
        Ok(())
    }

    pub(super) fn install_snapshot(&mut self, snap: &nod_raft::Snapshot) -> Result<(), Fatal> {
        let data = command::decode_snapshot_data(&snap.data)
            .map_err(|e| Fatal::Snapshot(format!("at {}: {e}", snap.metadata.index)))?;
        let applied = (snap.metadata.index.0, snap.metadata.term.0);
        // Proposals the snapshot covers may or may not be in it: unknown, not retried.
        let metrics = &self.shared.metrics;
        self.waiters
            .fail_below(Index(applied.0 + 1), &DriverError::Timeout, metrics);
        self.forwarding.fail_all(&DriverError::Timeout, metrics);
        let shared = self.shared.clone();
        if data.checkpoint_index != 0 {
            let mut hub = shared.hub.lock();
            let mut store = shared.store_mut();
            let fresh = self.snapshots.open_received(applied.0, applied.1)?;
            if fresh.applied() != applied {
                return Err(Fatal::Snapshot(format!(
                    "installed snapshot holds applied {:?}, expected {applied:?}",
                    fresh.applied()
                )));
            }
            drop(std::mem::replace(&mut *store, fresh));
            shared.auth_enabled.store(store.auth().enabled(), Relaxed);
            // Simple tokens name logins of the log the snapshot replaced.
            shared.tokens.revoke(None);
            self.snapshots.installed()?;
            // Watchers cannot be caught up across a snapshot: end them, as
            // etcd ends watchers whose revisions were compacted.
            hub.cancel_all("etcdserver: member restored from a snapshot; watch again");
            drop(store);
            drop(hub);
            self.snap.last = applied.0;
            self.refresh_peers();
            tracing::info!(index = applied.0, "installed a snapshot");
            return Ok(());
        }
        // The bootstrap snapshot: the founding member table, inline.
        let _hub = shared.hub.lock();
        let mut store = shared.store_mut();
        for m in data.members {
            let member = Member {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: snap.metadata.conf_state.learners.contains(&NodeId(m.id)),
            };
            store.apply_member(member.id, Some(member), applied)?;
        }
        store.apply_noop(applied)?;
        drop(store);
        drop(_hub);
        self.refresh_peers();
        Ok(())
    }
}
