//! Applying committed commands: put, delete, txn, compaction, lease grant
//! and revoke, membership. Each is one atomic commit that also records the
//! applied index; a request's own error changes nothing but that index.
//! I/O through the backend.

use std::collections::BTreeSet;

use prost::Message as _;

use super::super::backend::Batch;
use super::super::codec;
use super::encoding::{encode_pair, put_applied, Revision, KEY_COMPACTED, TAG_MEMBER, TAG_REMOVED};
use super::{
    fatal, Applied, Backend, CompactionRequest, DeleteRangeRequest, DeleteRangeResponse, Event,
    Keyspace, KvError, KvStore, LeaseRecord, Member, PutRequest, PutResponse, TxnRequest,
    TxnResponse, MAX_LEASE_TTL,
};

impl<B: Backend> KvStore<B> {
    /// Records that entry `applied` changed nothing in the key space (an
    /// empty entry, a membership change, a failed request).
    pub fn apply_noop(&mut self, applied: (u64, u64)) -> Result<(), KvError> {
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
    ) -> Result<Result<Applied<PutResponse>, KvError>, KvError> {
        let mut st = self.stage_single();
        match self.stage_put(&mut st, req) {
            Ok(response) => {
                let events = self.commit(st, applied, |_| {})?;
                Ok(Ok(Applied { response, events }))
            }
            Err(e) => self.fail(e, applied),
        }
    }

    pub fn apply_delete(
        &mut self,
        req: &DeleteRangeRequest,
        applied: (u64, u64),
    ) -> Result<Result<Applied<DeleteRangeResponse>, KvError>, KvError> {
        let mut st = self.stage_single();
        match self.stage_delete(&mut st, req) {
            Ok(response) => {
                let events = self.commit(st, applied, |_| {})?;
                Ok(Ok(Applied { response, events }))
            }
            Err(e) => self.fail(e, applied),
        }
    }

    pub fn apply_txn(
        &mut self,
        req: &TxnRequest,
        applied: (u64, u64),
    ) -> Result<Result<Applied<TxnResponse>, KvError>, KvError> {
        let mut st = self.stage();
        match self.stage_txn(&mut st, req, 0) {
            Ok(response) => {
                let events = self.commit(st, applied, |_| {})?;
                Ok(Ok(Applied { response, events }))
            }
            Err(e) => self.fail(e, applied),
        }
    }

    fn fail<T>(&mut self, e: KvError, applied: (u64, u64)) -> Result<Result<T, KvError>, KvError> {
        if let KvError::Fatal(_) = e {
            return Err(e);
        }
        self.apply_noop(applied)?;
        Ok(Err(e))
    }

    /// Compacts history at `revision`: every change older than it is
    /// dropped except each key's value visible at `revision`.
    pub fn apply_compaction(
        &mut self,
        req: &CompactionRequest,
        applied: (u64, u64),
    ) -> Result<Result<(), KvError>, KvError> {
        let at = req.revision;
        if at > self.current {
            return self.fail(KvError::FutureRevision, applied);
        }
        if at <= self.compacted {
            return self.fail(KvError::Compacted, applied);
        }
        // The deletions below go to the backend directly: write what is pending first.
        let batching = self.pending.is_some();
        self.end_batch()?;
        if batching {
            self.begin_batch();
        }
        let mut doomed = Vec::new();
        for entry in self.index.values() {
            let changes = &entry.changes;
            // Keep the latest change at or before `at` unless it is a deletion.
            let keep = changes.iter().rposition(|c| c.rev.main <= at);
            for (i, c) in changes.iter().enumerate() {
                if c.rev.main > at {
                    break;
                }
                let kept = Some(i) == keep && !c.tombstone;
                if !kept {
                    doomed.push(c.rev);
                }
            }
        }
        let mut batch = Batch::default();
        for rev in &doomed {
            batch.delete(Keyspace::Rev, &rev.key());
        }
        batch.put(Keyspace::Meta, KEY_COMPACTED, encode_pair(at as u64, 0));
        put_applied(&mut batch, applied);
        self.backend
            .write(batch)
            .map_err(|e| fatal("writing a compaction", e))?;
        let doomed: BTreeSet<Revision> = doomed.into_iter().collect();
        // A key's current value is never dropped, so `live` stays true.
        self.index.retain(|_, entry| {
            entry.changes.retain(|c| !doomed.contains(&c.rev));
            !entry.changes.is_empty()
        });
        self.compacted = at;
        self.applied = applied;
        Ok(Ok(()))
    }

    pub fn apply_lease_grant(
        &mut self,
        id: i64,
        ttl: i64,
        applied: (u64, u64),
    ) -> Result<Result<(), KvError>, KvError> {
        if id <= 0 {
            return self.fail(
                KvError::Invalid("lease id must be positive".into()),
                applied,
            );
        }
        if ttl > MAX_LEASE_TTL {
            return self.fail(KvError::LeaseTtlTooLarge, applied);
        }
        if self.leases.contains_key(&id) {
            return self.fail(KvError::LeaseExists, applied);
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
        Ok(Ok(()))
    }

    /// Revokes a lease and deletes its keys in one revision.
    pub fn apply_lease_revoke(
        &mut self,
        id: i64,
        applied: (u64, u64),
    ) -> Result<Result<Vec<Event>, KvError>, KvError> {
        let Some(rec) = self.leases.get(&id).cloned() else {
            return self.fail(KvError::LeaseNotFound, applied);
        };
        let mut st = self.stage();
        for key in &rec.keys {
            self.stage_delete(
                &mut st,
                &DeleteRangeRequest {
                    key: key.clone(),
                    ..Default::default()
                },
            )?;
        }
        let events = self.commit(st, applied, |b| {
            b.delete(Keyspace::Lease, &(id as u64).to_be_bytes())
        })?;
        self.leases.remove(&id);
        Ok(Ok(events))
    }

    /// Adds, updates or removes a member (`None` removes `id`).
    pub fn apply_member(
        &mut self,
        id: u64,
        member: Option<Member>,
        applied: (u64, u64),
    ) -> Result<(), KvError> {
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
                self.members.remove(&id)
            }
        };
        Ok(())
    }
}
