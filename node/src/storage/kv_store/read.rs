//! Reading the state machine: values at a revision, ranges, watch history,
//! previous values, the digest. Reads go to the in-memory index first and
//! to the backend (or the open batch) for records only. I/O through the
//! backend.

use prost::Message as _;

use super::encoding::{checked_kv, decode_kv, Revision};
use super::index::Change;
use super::{
    backend, range_request, Backend, Event, EventType, KeyRange, KeyValue, Keyspace, KvError,
    KvStore, RangeRequest, RangeResponse, ReadError, StoreError, TxnRequest, TxnResponse,
};
use nod_proto::range::{EncodedKvs, EncodedRange, RangeAnswer};

impl<B: Backend> KvStore<B> {
    pub(super) fn read_record(&self, rev: Revision) -> Result<KeyValue, StoreError> {
        if let Some(kv) = self.pending.as_ref().and_then(|p| p.records.get(&rev)) {
            return Ok(kv.clone());
        }
        let v = self
            .backend
            .get(Keyspace::Rev, &rev.key())
            .map_err(backend("reading a revision"))?
            .ok_or(StoreError::Missing(rev))?;
        decode_kv(&v)
            .map(|(_, kv)| kv)
            .map_err(|cause| StoreError::CorruptRecord {
                revision: rev.main,
                cause,
            })
    }

    /// The key's change visible at `at` (its latest change with main <= at).
    pub(super) fn visible(&self, key: &[u8], at: i64) -> Option<Change> {
        self.index.get(key)?.visible(at)
    }

    /// The key's value at the current revision.
    pub fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.get_at(key, self.current)
    }

    pub(super) fn get_at(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>, StoreError> {
        match self.visible(key, at) {
            Some(c) if !c.tombstone => self.read_record(c.rev).map(Some),
            _ => Ok(None),
        }
    }

    /// Live keys in `range` at revision `at`, in key order.
    pub(super) fn range_at(&self, range: &KeyRange, at: i64) -> Result<Vec<KeyValue>, StoreError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (key, _) in self.index.range::<[u8], _>(range.bounds()) {
            if let Some(kv) = self.get_at(key, at)? {
                out.push(kv);
            }
        }
        Ok(out)
    }

    /// The revision a Range request reads at, checked against the current
    /// revision and compaction.
    fn range_revision(&self, req: &RangeRequest) -> Result<i64, ReadError> {
        let at = if req.revision <= 0 {
            self.current
        } else {
            req.revision
        };
        if at > self.current {
            return Err(KvError::FutureRevision.into());
        }
        if at < self.compacted {
            return Err(KvError::Compacted.into());
        }
        Ok(at)
    }

    /// Calls `each` with the revision of every key-value a Range request in
    /// key order (or counting only) returns, counting all, so `--limit 1`
    /// over a large range reads one record; `None` when the request needs
    /// the general path (a filter, another order, an empty range).
    fn range_in_key_order(
        &self,
        req: &RangeRequest,
        at: i64,
        mut each: impl FnMut(Revision) -> Result<(), StoreError>,
    ) -> Result<Option<(i64, bool)>, StoreError> {
        let range = KeyRange::new(&req.key, &req.range_end);
        let key_order = req.sort_target == range_request::SortTarget::Key as i32
            && req.sort_order != range_request::SortOrder::Descend as i32;
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        if filtered || !(key_order || req.count_only) || range.is_empty() {
            return Ok(None);
        }
        // Counted from the in-memory index; only returned records are read.
        let limit = if req.limit > 0 {
            req.limit as usize
        } else {
            usize::MAX
        };
        let mut count = 0usize;
        for (key, _) in self.index.range::<[u8], _>(range.bounds()) {
            match self.visible(key, at) {
                Some(c) if !c.tombstone => {
                    if !req.count_only && count < limit {
                        each(c.rev)?;
                    }
                    count += 1;
                }
                _ => {}
            }
        }
        Ok(Some((count as i64, count > limit)))
    }

    /// Serves a Range request against the local state (the caller has made
    /// it linearizable if it had to be). Checks revisions against compaction.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ReadError> {
        let at = self.range_revision(req)?;
        let mut kvs = Vec::new();
        let read = |rev| {
            let mut kv = self.read_record(rev)?;
            if req.keys_only {
                kv.value.clear();
            }
            kvs.push(kv);
            Ok(())
        };
        if let Some((count, more)) = self.range_in_key_order(req, at, read)? {
            return Ok(RangeResponse {
                header: None,
                kvs,
                more,
                count,
            });
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        let kvs = self.range_at(&range, at)?;
        Ok(shape_range(req, kvs))
    }

    /// `range` as the KV service sends it: in key order, the key-values
    /// are copied from their stored records, already encoded, never
    /// decoded into `KeyValue`s (a large answer is held about once; see
    /// `nod_proto::range`). Other requests get `range`'s answer.
    pub fn range_answer(&self, req: &RangeRequest) -> Result<RangeAnswer, ReadError> {
        if req.keys_only {
            return self.range(req).map(RangeAnswer::Message);
        }
        let at = self.range_revision(req)?;
        let mut kvs = EncodedKvs::default();
        let copy = |rev| self.copy_record(rev, &mut kvs);
        match self.range_in_key_order(req, at, copy)? {
            Some((count, more)) => Ok(RangeAnswer::Encoded(EncodedRange {
                header: None,
                kvs,
                more,
                count,
            })),
            None => self.range(req).map(RangeAnswer::Message),
        }
    }

    /// Appends record `rev`'s encoded key-value to `kvs`, checked as
    /// `read_record` checks it.
    fn copy_record(&self, rev: Revision, kvs: &mut EncodedKvs) -> Result<(), StoreError> {
        if let Some(kv) = self.pending.as_ref().and_then(|p| p.records.get(&rev)) {
            kvs.push(&kv.encode_to_vec());
            return Ok(());
        }
        let v = self
            .backend
            .get(Keyspace::Rev, &rev.key())
            .map_err(backend("reading a revision"))?
            .ok_or(StoreError::Missing(rev))?;
        let body = checked_kv(&v).map_err(|cause| StoreError::CorruptRecord {
            revision: rev.main,
            cause,
        })?;
        kvs.push(body);
        Ok(())
    }

    /// Every change in `(after, upto]` to keys in `range`, as watch events
    /// in revision order, with each event's previous value.
    pub fn events_between(
        &self,
        range: &KeyRange,
        after: i64,
        upto: i64,
    ) -> Result<Vec<Event>, ReadError> {
        if after + 1 < self.compacted {
            return Err(KvError::Compacted.into());
        }
        let mut out = Vec::new();
        let from = Revision {
            main: after + 1,
            sub: 0,
        }
        .key();
        for item in self.backend.scan_from(Keyspace::Rev, &from) {
            let (k, v) = item.map_err(backend("scanning revisions"))?;
            let rev = revision_of(&k)?;
            if rev.main > upto {
                break;
            }
            let (tombstone, kv) = decode_kv(&v).map_err(|cause| StoreError::CorruptRecord {
                revision: rev.main,
                cause,
            })?;
            if !range.contains(&kv.key) {
                continue;
            }
            let prev_kv = self.previous(&kv.key, rev)?;
            out.push(Event {
                r#type: if tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                } as i32,
                kv: Some(kv),
                prev_kv,
            });
        }
        Ok(out)
    }

    /// Fills in the previous value of put events that replaced a value
    /// but were applied without reading it (see `stage_put`). `events` are
    /// one revision's, in order, as applying returned them.
    pub fn fill_prev(&self, events: &mut [Event]) -> Result<(), StoreError> {
        for i in 0..events.len() {
            let (before, rest) = events.split_at_mut(i);
            let e = &mut rest[0];
            let Some(kv) = e.kv.as_ref() else { continue };
            if e.r#type != EventType::Put as i32 || kv.version <= 1 || e.prev_kv.is_some() {
                continue;
            }
            // An earlier change of the key in the same revision (a txn) is
            // its previous value; otherwise the value before the revision.
            e.prev_kv = match before
                .iter()
                .rev()
                .find(|b| b.kv.as_ref().is_some_and(|b| b.key == kv.key))
            {
                Some(b) if b.r#type == EventType::Put as i32 => b.kv.clone(),
                Some(_) => None,
                None => self.previous(
                    &kv.key,
                    Revision {
                        main: kv.mod_revision,
                        sub: 0,
                    },
                )?,
            };
        }
        Ok(())
    }

    /// The key's value just before `rev`.
    pub(super) fn previous(
        &self,
        key: &[u8],
        rev: Revision,
    ) -> Result<Option<KeyValue>, StoreError> {
        let Some(entry) = self.index.get(key) else {
            return Ok(None);
        };
        match entry.before(rev) {
            Some(c) if !c.tombstone => self.read_record(c.rev).map(Some),
            _ => Ok(None),
        }
    }

    // ---- applying committed commands ----

    /// A digest of the key space up to `revision` (0: current), for checking
    /// that replicas agree (Maintenance.HashKV). CRC32 over every kept
    /// revision's key and record, in revision order.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), ReadError> {
        let upto = if revision <= 0 {
            self.current
        } else {
            revision
        };
        if upto > self.current {
            return Err(KvError::FutureRevision.into());
        }
        if upto < self.compacted {
            return Err(KvError::Compacted.into());
        }
        let mut h = crc32fast::Hasher::new();
        for item in self.backend.scan_from(Keyspace::Rev, &[]) {
            let (k, v) = item.map_err(backend("scanning revisions"))?;
            let rev = revision_of(&k)?;
            if rev.main > upto {
                break;
            }
            if rev.main <= self.compacted && self.sweep.is_some() && !self.kept(rev, &v)? {
                // Dropped by the compaction, not yet removed: every member
                // hashes the same records however far its sweep has gone.
                continue;
            }
            h.update(&k);
            h.update(&v);
        }
        Ok((h.finalize(), upto))
    }

    /// Whether the stored record `rev` (value `v`), at or below the
    /// compacted revision, is one the compaction keeps: its key's latest
    /// change at or below it, and not a deletion.
    fn kept(&self, rev: Revision, v: &[u8]) -> Result<bool, StoreError> {
        let (_, kv) = decode_kv(v).map_err(|cause| StoreError::CorruptRecord {
            revision: rev.main,
            cause,
        })?;
        Ok(self.index.get(kv.key.as_slice()).is_some_and(|e| {
            e.visible(self.compacted)
                .is_some_and(|c| c.rev == rev && !c.tombstone)
        }))
    }

    /// Serves a transaction that only reads (the caller checked), without the log.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, ReadError> {
        let mut st = self.stage();
        let resp = self.stage_txn(&mut st, req, 0)?;
        debug_assert!(st.records.is_empty(), "read_txn given a writing txn");
        Ok(resp)
    }

    /// How many keys are live at the current revision (from the index).
    pub fn key_count(&self) -> usize {
        self.index.values().filter(|e| e.live().is_some()).count()
    }

    /// Every live key at the current revision, for a backup snapshot.
    pub fn dump(&self) -> Result<Vec<KeyValue>, StoreError> {
        self.range_at(&KeyRange::new(b"\0", b"\0"), self.current)
    }
}

/// The revision a `rev` key names.
fn revision_of(k: &[u8]) -> Result<Revision, StoreError> {
    Revision::from_key(k).ok_or_else(|| StoreError::CorruptKey {
        keyspace: Keyspace::Rev.name(),
        key: k.to_vec(),
    })
}

/// Applies a Range request's filters, sort, limit and projections to the
/// keys in its range.
pub(super) fn shape_range(req: &RangeRequest, mut kvs: Vec<KeyValue>) -> RangeResponse {
    let count = kvs.len() as i64;
    kvs.retain(|kv| {
        (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
    });
    use range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        kvs.sort_by(|a, b| {
            let o = match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            };
            // Ties keep key order, so results are stable.
            o.then_with(|| a.key.cmp(&b.key))
        });
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    RangeResponse {
        header: None,
        kvs: if req.count_only { Vec::new() } else { kvs },
        more,
        count,
    }
}
