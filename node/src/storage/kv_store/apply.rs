//! Applying committed commands: put, delete, txn, compaction, lease grant
//! and revoke, membership. Each is one atomic commit that also records the
//! applied index; a request's own error changes nothing but that index.
//! I/O through the backend.

use std::collections::BTreeSet;

use prost::Message as _;

use super::super::backend::Batch;
use super::super::codec;
use super::encoding::{encode_pair, put_applied, Revision, KEY_COMPACTED, TAG_MEMBER, TAG_REMOVED};
use super::txn::Staged;
use super::{
    backend, Applied, Backend, CompactionRequest, DeleteRangeRequest, DeleteRangeResponse,
    Keyspace, KvError, KvStore, LeaseRecord, Member, Outcome, PutRequest, PutResponse, ReadError,
    StoreError, TxnRequest, TxnResponse, MAX_LEASE_TTL,
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
                let events = self.commit(st, applied, |_| {})?;
                Ok(Outcome::Applied(Applied { response, events }))
            }
            Err(ReadError::Request(e)) => self.refuse(e, applied),
            Err(ReadError::Store(e)) => Err(e),
        }
    }

    /// Records the applied index of a request refused with `e`.
    fn refuse<R>(&mut self, e: KvError, applied: (u64, u64)) -> Result<Outcome<R>, StoreError> {
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
            .map_err(backend("writing a compaction"))?;
        let doomed: BTreeSet<Revision> = doomed.into_iter().collect();
        // A key's current value is never dropped, so `live` stays true.
        self.index.retain(|_, entry| {
            entry.changes.retain(|c| !doomed.contains(&c.rev));
            !entry.changes.is_empty()
        });
        self.compacted = at;
        self.applied = applied;
        Ok(Outcome::Applied(Applied::default()))
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
