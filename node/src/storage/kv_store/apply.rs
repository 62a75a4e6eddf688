//! Applying committed commands: put, delete, txn, compaction, lease grant
//! and revoke, membership. Each is one atomic commit that also records the
//! applied index; a request's own error changes nothing but that index.
//! I/O through the backend.

use std::collections::BTreeSet;
use std::ops::Bound;

use prost::Message as _;

use super::super::backend::Batch;
use super::super::codec;
use super::encoding::{encode_pair, KEY_COMPACTED, TAG_MEMBER, TAG_REMOVED};
use super::txn::Staged;
use super::{
    backend, Applied, Backend, CompactionRequest, DeleteRangeRequest, DeleteRangeResponse,
    IndexKey, Keyspace, KvError, KvStore, LeaseRecord, Member, Outcome, PutRequest, PutResponse,
    ReadError, StoreError, Sweep, TxnRequest, TxnResponse, MAX_LEASE_TTL,
};

impl<B: Backend> KvStore<B> {
    /// Records that entry `applied` changed nothing in the key space (an
    /// empty entry, a membership change, a failed request).
    pub fn apply_noop(&mut self, applied: (u64, u64)) -> Result<(), StoreError> {
        let st = self.stage();
        self.commit(st, applied, |_| {})?;
        Ok(())
    }

    /// Applies a write-only request (`Put`, `DeleteRange`, `Txn`) committed at
    /// `applied`. A request error changes nothing but the applied index.
    pub fn apply_put(
        &mut self,
        req: &PutRequest,
        applied: (u64, u64),
    ) -> Result<Outcome<PutResponse>, StoreError> {
        let mut st = self.stage_single();
        let staged = self.stage_put(&mut st, req);
        self.finish(st, staged, applied)
    }

    pub fn apply_delete(
        &mut self,
        req: &DeleteRangeRequest,
        applied: (u64, u64),
    ) -> Result<Outcome<DeleteRangeResponse>, StoreError> {
        let mut st = self.stage_single();
        let staged = self.stage_delete(&mut st, req);
        self.finish(st, staged, applied)
    }

    pub fn apply_txn(
        &mut self,
        req: &TxnRequest,
        applied: (u64, u64),
    ) -> Result<Outcome<TxnResponse>, StoreError> {
        let mut st = self.stage();
        let staged = self.stage_txn(&mut st, req, 0);
        self.finish(st, staged, applied)
    }

    /// Commits what was staged in `st`, or, when staging met the
    /// request's own error, records only the applied index.
    fn finish<R>(
        &mut self,
        st: Staged,
        staged: Result<R, ReadError>,
        applied: (u64, u64),
    ) -> Result<Outcome<R>, StoreError> {
        match staged {
            Ok(response) => {
                // A unique index refuses the whole write, atomically.
                if let Some(e) = self.check_unique(&st.records)? {
                    self.count_refusal(&e);
                    return self.refuse(e, applied);
                }
                let events = self.commit(st, applied, |_| {})?;
                Ok(Outcome::Applied(Applied { response, events }))
            }
            Err(ReadError::Request(e)) => self.refuse(e, applied),
            Err(ReadError::Store(e)) => Err(e),
        }
    }

    /// Records the applied index of a request refused with `e`.
    pub(super) fn refuse<R>(
        &mut self,
        e: KvError,
        applied: (u64, u64),
    ) -> Result<Outcome<R>, StoreError> {
        self.apply_noop(applied)?;
        Ok(Outcome::Refused(e))
    }

    /// Compacts history at `revision`: every change older than it is
    /// dropped except each key's value visible at `revision`.
    pub fn apply_compaction(
        &mut self,
        req: &CompactionRequest,
        applied: (u64, u64),
    ) -> Result<Outcome<()>, StoreError> {
        let at = req.revision;
        if at > self.current {
            return self.refuse(KvError::FutureRevision, applied);
        }
        if at <= self.compacted {
            return self.refuse(KvError::Compacted, applied);
        }
        // The compaction is decided here, in the log's order, and takes
        // effect at once for every read (nothing at or below `at` but each
        // key's kept change is visible any more); the records it drops are
        // removed afterwards, a bounded step at a time between applies
        // (`compaction_step`), so a long history does not stall writes.
        let st = self.stage();
        self.commit(st, applied, |b| {
            b.put(Keyspace::Meta, KEY_COMPACTED, encode_pair(at as u64, 0))
        })?;
        self.compacted = at;
        // A sweep under way for an older compaction starts over for this
        // one: the keys it passed may hold more that is now dropped.
        self.sweep = Some(Sweep { at, after: None });
        Ok(Outcome::Applied(Applied::default()))
    }

    /// Removes about `budget` records that the last compaction dropped (and
    /// forgets them in the index), outside any apply batch: whole keys, so
    /// a step stops after the key that reaches the budget.
    /// Returns whether more remain. The records it removes are invisible
    /// already (reads below the compacted revision are refused, and every
    /// key keeps its latest change at or below it), so how far the sweep
    /// has gone changes no answer; HashKV counts the records it leaves out
    /// of the hash the same way (`hash_kv`).
    pub fn compaction_step(&mut self, budget: usize) -> Result<bool, StoreError> {
        let Some(sweep) = self.sweep.clone() else {
            return Ok(false);
        };
        if self.pending.is_some() {
            // An apply batch is open; its records may be among the dropped.
            return Ok(true);
        }
        let mut batch = Batch::default();
        let mut dropped = 0usize;
        let mut emptied = Vec::new();
        let mut last = None;
        let range = match &sweep.after {
            Some(k) => (Bound::Excluded(k.clone()), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        // Visiting keys costs too, even when they drop nothing.
        let mut visits = budget.saturating_mul(4).max(1);
        // Dropped puts whose index entries go with them (read below).
        let indexed = !self.secondary.is_empty();
        let mut dropped_puts = Vec::new();
        for (k, entry) in self.index.range_mut::<IndexKey, _>(range) {
            dropped += entry.compact(sweep.at, |c| {
                batch.delete(Keyspace::Rev, &c.rev.key());
                if indexed && !c.tombstone {
                    dropped_puts.push((k.clone(), c.rev));
                }
            });
            if entry.is_empty() {
                emptied.push(k.clone());
            }
            last = Some(k.clone());
            visits -= 1;
            if dropped >= budget || visits == 0 {
                break;
            }
        }
        for k in &emptied {
            self.index.remove(k);
        }
        if !dropped_puts.is_empty() {
            // Through the backend's log, before the records: a crash may
            // lose the records' removal, and the reopen sweeps again and
            // finds the entries from them, but must never keep entries
            // whose records are gone.
            let mut entries = Batch::default();
            for (k, rev) in &dropped_puts {
                self.secondary_removals(k, *rev, &mut entries)?;
            }
            if !entries.is_empty() {
                self.backend
                    .write(entries)
                    .map_err(backend("removing compacted index entries"))?;
            }
        }
        if dropped > 0 {
            // Not through the backend's own log: reopening the store
            // sweeps again whatever a crash lost (`open`), and a history's
            // worth of removals there (36 MB for 900k revisions) made the
            // Raft log's fsyncs wait on it (ext4 commits other files' new
            // data with a journal commit).
            self.backend
                .write_unlogged(batch)
                .map_err(backend("writing a compaction step"))?;
        }
        let more = match last {
            Some(k)
                if self
                    .index
                    .range::<IndexKey, _>((Bound::Excluded(k.clone()), Bound::Unbounded))
                    .next()
                    .is_some() =>
            {
                self.sweep = Some(Sweep {
                    at: sweep.at,
                    after: Some(k),
                });
                true
            }
            _ => {
                self.sweep = None;
                self.swept = self.swept.max(sweep.at);
                false
            }
        };
        Ok(more)
    }

    pub fn apply_lease_grant(
        &mut self,
        id: i64,
        ttl: i64,
        applied: (u64, u64),
    ) -> Result<Outcome<()>, StoreError> {
        if id <= 0 {
            return self.refuse(
                KvError::Invalid("lease id must be positive".into()),
                applied,
            );
        }
        if ttl > MAX_LEASE_TTL {
            return self.refuse(KvError::LeaseTtlTooLarge, applied);
        }
        if self.leases.contains_key(&id) {
            return self.refuse(KvError::LeaseExists, applied);
        }
        let st = self.stage();
        self.commit(st, applied, |b| {
            b.put(
                Keyspace::Lease,
                &(id as u64).to_be_bytes(),
                encode_pair(ttl as u64, 0),
            )
        })?;
        self.leases.insert(
            id,
            LeaseRecord {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(Outcome::Applied(Applied::default()))
    }

    /// Revokes a lease and deletes its keys in one revision.
    pub fn apply_lease_revoke(
        &mut self,
        id: i64,
        applied: (u64, u64),
    ) -> Result<Outcome<()>, StoreError> {
        let Some(rec) = self.leases.get(&id).cloned() else {
            return self.refuse(KvError::LeaseNotFound, applied);
        };
        let mut st = self.stage();
        for key in &rec.keys {
            let delete = DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            if let Err(e) = self.stage_delete(&mut st, &delete) {
                return self.finish(st, Err(e), applied);
            }
        }
        let events = self.commit(st, applied, |b| {
            b.delete(Keyspace::Lease, &(id as u64).to_be_bytes())
        })?;
        self.leases.remove(&id);
        Ok(Outcome::Applied(Applied {
            response: (),
            events,
        }))
    }

    /// Adds, updates or removes a member (`None` removes `id`).
    pub fn apply_member(
        &mut self,
        id: u64,
        member: Option<Member>,
        applied: (u64, u64),
    ) -> Result<(), StoreError> {
        let st = self.stage();
        let record = member
            .as_ref()
            .map(|m| codec::encode_tagged(TAG_MEMBER, &m.encode_to_vec()));
        let mut removed_key = vec![b'r'];
        removed_key.extend_from_slice(&id.to_be_bytes());
        self.commit(st, applied, |b| match record {
            Some(r) => b.put(Keyspace::Member, &id.to_be_bytes(), r),
            None => {
                b.delete(Keyspace::Member, &id.to_be_bytes());
                b.delete(Keyspace::Meta, &super::features::features_key(id));
                b.put(
                    Keyspace::Member,
                    &removed_key,
                    codec::encode_tagged(TAG_REMOVED, &[]),
                );
            }
        })?;
        match member {
            Some(m) => self.members.insert(id, m),
            None => {
                self.removed.insert(id);
                self.features.remove(&id);
                self.members.remove(&id)
            }
        };
        Ok(())
    }
}
