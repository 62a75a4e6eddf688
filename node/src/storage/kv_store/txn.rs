//! Staging a write transaction: puts, deletes, compares and nested
//! transactions are checked and staged against the current state plus the
//! transaction's own changes, then committed whole (`batch.rs`) or dropped
//! on error. No I/O but record reads.

use std::collections::BTreeMap;

use super::encoding::Revision;
use super::index::Meta;
use super::read::shape_range;
use super::{
    compare, request_op, response_op, Backend, Compare, DeleteRangeRequest, DeleteRangeResponse,
    Event, EventType, KeyRange, KeyValue, KvError, KvStore, PutRequest, PutResponse, ReadError,
    ResponseOp, StoreError, TxnRequest, TxnResponse, MAX_TXN_DEPTH,
};
use nod_proto::etcd::etcdserverpb::ResponseHeader;

/// A write transaction being built: changes are staged here and committed to
/// the backend and the index in one batch, or dropped whole on error.
pub(super) struct Staged {
    pub(super) rev: i64,
    sub: i64,
    /// Latest staged change per key, as its place in `records` (a
    /// tombstone there: deleted in this transaction). Kept only when later
    /// operations of the same request may read it (`track`).
    overlay: BTreeMap<Vec<u8>, usize>,
    track: bool,
    pub(super) records: Vec<(Revision, KeyValue, bool)>,
    pub(super) events: Vec<Event>,
}

impl Staged {
    /// The value record `i` leaves its key with (`None`: it deleted it).
    fn value_at(&self, i: usize) -> Option<&KeyValue> {
        let (_, kv, tombstone) = &self.records[i];
        (!tombstone).then_some(kv)
    }

    /// What this transaction staged for `key`, if anything (`Some(None)`:
    /// it deleted it).
    fn change(&self, key: &[u8]) -> Option<Option<&KeyValue>> {
        self.overlay.get(key).map(|&i| self.value_at(i))
    }
}

/// A header carrying only `revision`, as etcd fills the responses inside a
/// transaction.
fn revision_header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

impl<B: Backend> KvStore<B> {
    /// The revision an operation inside a transaction sees: the store's,
    /// or the transaction's own once it has staged a change.
    fn revision_seen(&self, st: &Staged) -> i64 {
        if st.records.is_empty() {
            self.current
        } else {
            st.rev
        }
    }

    pub(super) fn stage(&self) -> Staged {
        Staged {
            rev: self.current + 1,
            sub: 0,
            overlay: BTreeMap::new(),
            track: true,
            records: Vec::new(),
            events: Vec::new(),
        }
    }

    /// For a request of one operation: nothing reads its staged changes
    /// back, so none are tracked (a put copies its key and value less).
    pub(super) fn stage_single(&self) -> Staged {
        Staged {
            track: false,
            ..self.stage()
        }
    }

    fn staged_get(&self, st: &Staged, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        match st.change(key) {
            Some(v) => Ok(v.cloned()),
            None => self.latest(key),
        }
    }

    /// What a put needs of the key's current value, from the transaction's
    /// own changes or the index: no RocksDB read.
    fn staged_meta(&self, st: &Staged, key: &[u8]) -> Option<Meta> {
        match st.change(key) {
            Some(v) => v.map(Meta::of),
            None => self.index.get(key).and_then(|e| e.live()),
        }
    }

    fn staged_range(&self, st: &Staged, range: &KeyRange) -> Result<Vec<KeyValue>, StoreError> {
        let mut map: BTreeMap<Vec<u8>, KeyValue> = self
            .range_at(range, self.current)?
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        if !range.is_empty() {
            for (k, &i) in st.overlay.range::<[u8], _>(range.bounds()) {
                match st.value_at(i) {
                    Some(kv) => map.insert(k.clone(), kv.clone()),
                    None => map.remove(k),
                };
            }
        }
        Ok(map.into_values().collect())
    }

    pub(super) fn stage_put(
        &self,
        st: &mut Staged,
        req: &PutRequest,
    ) -> Result<PutResponse, ReadError> {
        if req.key.is_empty() {
            return Err(KvError::EmptyKey.into());
        }
        // The previous value itself is read only when the request needs
        // it; its create revision, version and lease are in the index. A
        // watcher that wants it has it read when the event is published
        // (`fill_prev`).
        let prev = if req.prev_kv || req.ignore_value {
            self.staged_get(st, &req.key)?
        } else {
            None
        };
        let meta = match &prev {
            Some(p) => Some(Meta::of(p)),
            None => self.staged_meta(st, &req.key),
        };
        if (req.ignore_value || req.ignore_lease) && meta.is_none() {
            return Err(KvError::KeyNotFound.into());
        }
        let lease = if req.ignore_lease {
            meta.map_or(0, |m| m.lease)
        } else {
            req.lease
        };
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(KvError::LeaseNotFound.into());
        }
        let value = if req.ignore_value {
            prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
        } else {
            req.value.clone()
        };
        let rev = Revision {
            main: st.rev,
            sub: st.sub,
        };
        st.sub += 1;
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: meta.map_or(st.rev, |m| m.create),
            mod_revision: st.rev,
            version: meta.map_or(1, |m| m.version + 1),
            value,
            lease,
        };
        if st.track {
            st.overlay.insert(kv.key.clone(), st.records.len());
        }
        st.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: prev.clone(),
        });
        st.records.push((rev, kv, false));
        Ok(PutResponse {
            header: None,
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    pub(super) fn stage_delete(
        &self,
        st: &mut Staged,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, ReadError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let live = self.staged_range(st, &range)?;
        for prev in &live {
            let rev = Revision {
                main: st.rev,
                sub: st.sub,
            };
            st.sub += 1;
            let tomb = KeyValue {
                key: prev.key.clone(),
                mod_revision: st.rev,
                ..Default::default()
            };
            if st.track {
                st.overlay.insert(prev.key.clone(), st.records.len());
            }
            st.records.push((rev, tomb.clone(), true));
            st.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: Some(prev.clone()),
            });
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted: live.len() as i64,
            prev_kvs: if req.prev_kv { live } else { Vec::new() },
        })
    }

    fn compare_holds(&self, st: &Staged, c: &Compare) -> Result<bool, ReadError> {
        let range = KeyRange::new(&c.key, &c.range_end);
        let mut kvs = if range.single {
            self.staged_get(st, &c.key)?.into_iter().collect()
        } else {
            self.staged_range(st, &range)?
        };
        let result = compare::CompareResult::try_from(c.result)
            .map_err(|_| KvError::Invalid(format!("unknown compare result {}", c.result)))?;
        let target = compare::CompareTarget::try_from(c.target)
            .map_err(|_| KvError::Invalid(format!("unknown compare target {}", c.target)))?;
        if kvs.is_empty() {
            // etcd's applyCompare: a value compare on missing keys fails; any
            // other compares against a zero key-value.
            if target == compare::CompareTarget::Value {
                return Ok(false);
            }
            kvs.push(KeyValue::default());
        }
        for kv in kvs {
            use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
            let ord = match (target, &c.target_union) {
                (T::Version, Some(U::Version(v))) => kv.version.cmp(v),
                (T::Create, Some(U::CreateRevision(v))) => kv.create_revision.cmp(v),
                (T::Mod, Some(U::ModRevision(v))) => kv.mod_revision.cmp(v),
                (T::Value, Some(U::Value(v))) => kv.value.as_slice().cmp(v.as_slice()),
                (T::Lease, Some(U::Lease(v))) => kv.lease.cmp(v),
                // A missing union compares against the zero value, as etcd's proto3 default.
                (T::Version, None) => kv.version.cmp(&0),
                (T::Create, None) => kv.create_revision.cmp(&0),
                (T::Mod, None) => kv.mod_revision.cmp(&0),
                (T::Value, None) => kv.value.as_slice().cmp(&[][..]),
                (T::Lease, None) => kv.lease.cmp(&0),
                _ => return Err(KvError::Invalid("compare target and value differ".into()).into()),
            };
            let ok = match result {
                R::Equal => ord.is_eq(),
                R::Greater => ord.is_gt(),
                R::Less => ord.is_lt(),
                R::NotEqual => ord.is_ne(),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn stage_txn(
        &self,
        st: &mut Staged,
        req: &TxnRequest,
        depth: usize,
    ) -> Result<TxnResponse, ReadError> {
        if depth > MAX_TXN_DEPTH {
            return Err(KvError::Invalid("txn nested too deeply".into()).into());
        }
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare_holds(st, c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            // etcd puts a header with only a revision in each response
            // inside a transaction: the store's revision as that operation
            // saw it (the transaction's own once it has changed something);
            // a nested transaction's header is left empty.
            let r = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let range = KeyRange::new(&r.key, &r.range_end);
                    let seen = self.revision_seen(st);
                    let mut resp = if r.revision > 0 && r.revision != self.current {
                        // Reads of the past inside a txn go to history.
                        let at = r.revision;
                        if at > self.current {
                            return Err(KvError::FutureRevision.into());
                        }
                        if at < self.compacted {
                            return Err(KvError::Compacted.into());
                        }
                        shape_range(r, self.range_at(&range, at)?)
                    } else {
                        shape_range(r, self.staged_range(st, &range)?)
                    };
                    resp.header = Some(revision_header(seen));
                    response_op::Response::ResponseRange(resp)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    let mut resp = self.stage_put(st, p)?;
                    resp.header = Some(revision_header(self.revision_seen(st)));
                    response_op::Response::ResponsePut(resp)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let mut resp = self.stage_delete(st, d)?;
                    resp.header = Some(revision_header(self.revision_seen(st)));
                    response_op::Response::ResponseDeleteRange(resp)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let mut resp = self.stage_txn(st, t, depth + 1)?;
                    resp.header = Some(ResponseHeader::default());
                    response_op::Response::ResponseTxn(resp)
                }
                None => return Err(KvError::Invalid("txn operation has no request".into()).into()),
            };
            responses.push(ResponseOp { response: Some(r) });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }
}
