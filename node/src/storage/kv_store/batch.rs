//! One backend write per Ready: applied commands collect in a batch
//! between `begin_batch` and `end_batch` (reads through the store see
//! them), and committing a staged transaction adds its records, the
//! applied index and any extra writes to it, then updates the key index.

use std::collections::{BTreeSet, HashMap};

use super::super::backend::Batch;
use super::encoding::{encode_kv, put_applied, Revision};
use super::index::{IndexKey, Indexed};
use super::txn::Staged;
use super::{backend, Backend, Event, KeyValue, Keyspace, KvStore, StoreError};

/// Applied commands not yet written to the backend: one write for a whole
/// Ready's entries instead of one per entry (see `begin_batch`).
#[derive(Default)]
pub(super) struct Pending {
    batch: Batch,
    /// Looked up by revision only, never iterated.
    pub(super) records: HashMap<Revision, KeyValue>,
    /// The last applied entry's index and term, written once at the end.
    applied: Option<(u64, u64)>,
    /// Entries of unique indexes written in this batch: a unique check
    /// reads the backend and these (`secondary::check_unique`).
    pub(super) unique: BTreeSet<Vec<u8>>,
    /// Indexes whose entries this batch deletes (a drop, a rebuild, a
    /// failed build): the backend's entries of these ids are gone for
    /// every check until the batch is written.
    pub(super) cleared: BTreeSet<u32>,
}

impl<B: Backend> KvStore<B> {
    /// From now until `end_batch`, applied commands are collected in memory
    /// and written to the backend together (reads through this store see them).
    /// The caller holds the store exclusively meanwhile: `events_between`
    /// and `hash_kv` read the backend alone. Losing the batch in a crash loses
    /// nothing: the applied index is in it, so the log is applied again.
    pub fn begin_batch(&mut self) {
        if self.pending.is_none() {
            self.pending = Some(Pending::default());
        }
    }

    /// Writes what was applied since `begin_batch`, in one backend write.
    pub fn end_batch(&mut self) -> Result<(), StoreError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let mut batch = p.batch;
        if let Some(applied) = p.applied {
            put_applied(&mut batch, applied);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.backend
            .write(batch)
            .map_err(backend("writing applied state"))
    }

    /// Writes the staged changes, the applied index and any extra writes as
    /// one batch (or adds them to the open batch), then updates the
    /// in-memory index. Returns the events.
    pub(super) fn commit(
        &mut self,
        st: Staged,
        applied: (u64, u64),
        extra: impl FnOnce(&mut Batch),
    ) -> Result<Vec<Event>, StoreError> {
        let mut entries = Batch::default();
        let mut unique = Vec::new();
        if !self.secondary.is_empty() {
            self.secondary_entries(&st.records, &mut entries, &mut unique);
        }
        let mut own = Batch::default();
        let batch = match self.pending.as_mut() {
            Some(p) => &mut p.batch,
            None => &mut own,
        };
        for (rev, kv, tombstone) in &st.records {
            batch.put(Keyspace::Rev, &rev.key(), encode_kv(kv, *tombstone));
        }
        batch.append(entries);
        extra(batch);
        match self.pending.as_mut() {
            // The batch's last entry writes the applied index (`end_batch`).
            Some(p) => {
                p.applied = Some(applied);
                p.unique.extend(unique);
            }
            None => {
                put_applied(&mut own, applied);
                self.backend
                    .write(own)
                    .map_err(backend("writing applied state"))?
            }
        }
        self.applied = applied;
        if !st.records.is_empty() {
            self.current = st.rev;
        }
        for (rev, kv, tombstone) in st.records {
            let entry = match self.index.get_mut(kv.key.as_slice()) {
                Some(entry) => entry,
                None => self
                    .index
                    .entry(IndexKey::from_slice(&kv.key))
                    .or_insert_with(Indexed::new),
            };
            let before = entry.lease();
            entry.record(rev, &kv, tombstone);
            let after = entry.lease();
            // The key moves from the lease of the value it replaced to its own.
            if before != after {
                if let Some(rec) = self.leases.get_mut(&before) {
                    rec.keys.remove(&kv.key);
                }
                if let Some(rec) = self.leases.get_mut(&after) {
                    rec.keys.insert(kv.key.clone());
                }
            }
            // Reads before `end_batch` find the record here.
            if let Some(p) = self.pending.as_mut() {
                p.records.insert(rev, kv);
            }
        }
        Ok(st.events)
    }
}
