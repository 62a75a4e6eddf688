//! The leader's jobs for features and secondary indexes, from its tick:
//! turning on a feature once every member has published it, and the steps
//! of an index being built (backfill), each through the log so every
//! member applies the same thing in the same order. No I/O.

use std::time::Duration;

use super::{Core, Platform, PUBLISH_RETRY};
use crate::command::{self, IndexCommand, IndexOp, Op};
use crate::storage::kv_store::IndexState;
use nod_proto::nodquerypb::BackfillStep;

/// Keys one backfill step indexes: its apply reads each one's record, a
/// few milliseconds among the writes of its batch.
const BACKFILL_KEYS: u32 = 1000;
/// A backfill step proposed but not seen applied is proposed again after
/// this (a lost proposal, a leader change).
const BACKFILL_RETRY: Duration = Duration::from_secs(2);

impl<P: Platform> Core<P> {
    /// Enables each feature this binary has that the member table shows
    /// every member has published (`kv_store/features.rs`): one entry,
    /// proposed again after `PUBLISH_RETRY` until it applies.
    pub(super) fn maybe_enable_features(&mut self) {
        if self
            .last_enabled
            .is_some_and(|t| self.now.saturating_sub(t) < PUBLISH_RETRY)
        {
            return;
        }
        let due: Vec<&'static str> = {
            let store = self.shared.store();
            command::FEATURES
                .iter()
                .copied()
                .filter(|f| !store.feature_enabled(f) && store.lacking(f).is_none())
                .collect()
        };
        for f in due {
            let data = command::own(Op::EnableFeature(f.to_string()));
            if self.node.propose(data).is_ok() {
                self.last_enabled = Some(self.now);
            }
        }
    }

    /// Proposes the next step of an index being built, one step in flight
    /// at a time: the next once the last has applied (the index's
    /// progress moved), or again after `BACKFILL_RETRY`. Every member
    /// applies the steps in log order, so all index the same keys.
    pub(super) fn advance_backfill(&mut self) {
        let building = {
            let store = self.shared.store();
            // Under an alarm every step would be refused: wait it out.
            if store.alarm_refusal(true).is_some() {
                return;
            }
            store.indexes().iter().find_map(|d| match &d.state {
                IndexState::Building { keys_done, .. } => Some((d.id, *keys_done)),
                _ => None,
            })
        };
        let Some((id, done)) = building else {
            self.backfill = None;
            return;
        };
        if self.backfill.is_some_and(|(last, last_done, at)| {
            last == id && last_done == done && self.now.saturating_sub(at) < BACKFILL_RETRY
        }) {
            return;
        }
        let data = command::own(Op::Index(IndexCommand {
            op: Some(IndexOp::Backfill(BackfillStep {
                index_id: id,
                max_keys: BACKFILL_KEYS,
            })),
        }));
        if self.node.propose(data).is_ok() {
            self.backfill = Some((id, done, self.now));
        }
    }
}
