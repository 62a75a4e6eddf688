//! Secondary indexes over JSON values (docs/research/beyond-etcd.md §1):
//! the catalog, the entries each write adds, the backfill that indexes
//! what was there before, the compaction's removal, and a verification.
//!
//! An index covers the keys under one prefix. Its entries live in the
//! `secondary` keyspace, one per indexed put record (append-only: a later
//! change writes its own entry and leaves the old one, which stops being
//! live, until compaction removes its record): `EntryKey` (index id ‖
//! tuple ‖ key ‖ revision) → crc32c of that key. A reader finds an entry
//! live at revision R when its revision is the key's change visible at R.
//!
//! The catalog is in `meta` under `index/` ++ id (4 bytes BE), each a
//! tagged `nodquerypb.IndexDef`, changed in the batch of the entry that
//! changed it, and kept in memory in id order. Everything here is applied
//! in log order, the same on every member. No I/O but the backend's.

use std::ops::Bound;

use prost::Message as _;

use super::super::backend::Batch;
use super::super::codec;
use super::encoding::Revision;
use super::index::IndexKey;
use super::{backend, Applied, Backend, KvError, KvStore, Outcome, RecordError, StoreError};
use crate::storage::backend::Keyspace;
use nod_proto::nodquerypb as pb;
use nod_query::codec::{index_prefix, tuple_prefix, EntryKey};
use nod_query::spec::{MAX_FIELDS, MAX_INDEXES};
use nod_query::{FieldPath, FieldType, IndexField, IndexSpec};

const KEY_INDEX: &[u8] = b"index/";
const TAG_INDEX: u8 = 9;

/// Why an index declaration (a client's, or one read back from the
/// store) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadIndex {
    #[error("an index declares 1 to {MAX_FIELDS} fields, not {0}")]
    FieldCount(usize),
    #[error("field {field:?}: {cause}")]
    Path { field: String, cause: String },
    #[error("field {0:?}: its type is bool, number or string")]
    FieldType(String),
    #[error(transparent)]
    Spec(#[from] nod_query::SpecError),
    #[error("a stored index definition without its {0}")]
    Incomplete(&'static str),
}

/// Where an index stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexState {
    /// Apply writes entries for changes after `since`; the backfill has
    /// indexed the values visible at `since` of the keys up to `cursor`
    /// (none while it is empty).
    Building {
        since: i64,
        cursor: Vec<u8>,
        keys_done: u64,
        keys_total: u64,
    },
    /// Every entry for revisions from `since` on is there.
    Ready { since: i64 },
    /// Given up (a unique index met a duplicate): no entries, none written.
    Failed { reason: String },
}

/// What one index's applies did since this process opened the store
/// (every member counts its own): values skipped, by reason
/// (`nod_query::Skip::REASONS`, in its order), and writes a unique index
/// refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexCounts {
    pub skipped: [u64; 4],
    pub refused: u64,
}

/// An index as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexDef {
    pub id: u32,
    pub spec: IndexSpec,
    pub state: IndexState,
}

impl IndexDef {
    /// Whether applied writes add entries to it.
    fn maintained(&self) -> bool {
        !matches!(self.state, IndexState::Failed { .. })
    }

    /// The revision it answers from, once ready.
    pub fn ready_since(&self) -> Option<i64> {
        match self.state {
            IndexState::Ready { since } => Some(since),
            _ => None,
        }
    }

    /// As the Index service answers it (and the catalog stores it).
    pub fn to_proto(&self) -> pb::IndexDef {
        let state = match &self.state {
            IndexState::Building {
                since,
                cursor,
                keys_done,
                keys_total,
            } => pb::index_def::State::Building(pb::Building {
                since: *since,
                cursor: cursor.clone(),
                keys_done: *keys_done,
                keys_total: *keys_total,
            }),
            IndexState::Ready { since } => pb::index_def::State::Ready(pb::Ready { since: *since }),
            IndexState::Failed { reason } => pb::index_def::State::Failed(pb::Failed {
                reason: reason.clone(),
            }),
        };
        pb::IndexDef {
            id: self.id,
            spec: Some(spec_to_proto(&self.spec)),
            state: Some(state),
        }
    }

    fn from_proto(p: pb::IndexDef) -> Result<IndexDef, BadIndex> {
        let spec = spec_from_proto(p.spec.as_ref().ok_or(BadIndex::Incomplete("spec"))?)?;
        let state = match p.state.ok_or(BadIndex::Incomplete("state"))? {
            pb::index_def::State::Building(b) => IndexState::Building {
                since: b.since,
                cursor: b.cursor,
                keys_done: b.keys_done,
                keys_total: b.keys_total,
            },
            pb::index_def::State::Ready(r) => IndexState::Ready { since: r.since },
            pb::index_def::State::Failed(f) => IndexState::Failed { reason: f.reason },
        };
        Ok(IndexDef {
            id: p.id,
            spec,
            state,
        })
    }
}

pub fn spec_to_proto(spec: &IndexSpec) -> pb::IndexSpec {
    pb::IndexSpec {
        name: spec.name.clone(),
        prefix: spec.prefix.clone(),
        fields: spec
            .fields
            .iter()
            .map(|f| pb::IndexField {
                path: f.path.to_string(),
                r#type: match f.ty {
                    FieldType::Bool => pb::FieldType::Bool,
                    FieldType::Number => pb::FieldType::Number,
                    FieldType::String => pb::FieldType::String,
                } as i32,
            })
            .collect(),
        unique: spec.unique,
    }
}

/// A declaration as a client sent it, checked (`IndexSpec::check`): the
/// reason it is refused otherwise, for the client.
pub fn spec_from_proto(p: &pb::IndexSpec) -> Result<IndexSpec, BadIndex> {
    if p.fields.len() > MAX_FIELDS {
        return Err(BadIndex::FieldCount(p.fields.len()));
    }
    let fields = p
        .fields
        .iter()
        .map(|f| {
            let path = FieldPath::parse(&f.path).map_err(|e| BadIndex::Path {
                field: f.path.clone(),
                cause: e.to_string(),
            })?;
            let ty = match pb::FieldType::try_from(f.r#type) {
                Ok(pb::FieldType::Bool) => FieldType::Bool,
                Ok(pb::FieldType::Number) => FieldType::Number,
                Ok(pb::FieldType::String) => FieldType::String,
                _ => return Err(BadIndex::FieldType(f.path.clone())),
            };
            Ok(IndexField { path, ty })
        })
        .collect::<Result<Vec<_>, BadIndex>>()?;
    let spec = IndexSpec {
        name: p.name.clone(),
        prefix: p.prefix.clone(),
        fields,
        unique: p.unique,
    };
    spec.check()?;
    Ok(spec)
}

/// A tuple as an error shows it: each value as JSON, in parentheses when
/// there are several.
fn show_tuple(values: &[nod_query::FieldValue]) -> String {
    let one = |v: &nod_query::FieldValue| match v {
        nod_query::FieldValue::Bool(b) => b.to_string(),
        // Rust writes 30.0 as "30", as the JSON it came from likely did.
        nod_query::FieldValue::Number(n) => n.to_string(),
        nod_query::FieldValue::String(s) => {
            serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
        }
    };
    match values {
        [v] => one(v),
        _ => format!(
            "({})",
            values.iter().map(one).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn def_key(id: u32) -> Vec<u8> {
    let mut k = KEY_INDEX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn corrupt(cause: impl Into<RecordError>) -> StoreError {
    StoreError::Corrupt {
        what: "index definition",
        cause: cause.into(),
    }
}

/// The entry of index `id` for the put at `rev` of `key` with `values`.
fn entry_key(id: u32, values: Vec<nod_query::FieldValue>, key: Vec<u8>, rev: Revision) -> Vec<u8> {
    EntryKey {
        index: id,
        values,
        key,
        main: rev.main as u64,
        sub: rev.sub as u64,
    }
    .encode()
}

/// An entry's stored value: the checksum of its key.
fn entry_value(key: &[u8]) -> Vec<u8> {
    crc32c::crc32c(key).to_be_bytes().to_vec()
}

/// A stored entry (`key` → `value`) whose value is not its key's checksum
/// is corrupt: every reader of the `secondary` keyspace checks this.
pub(super) fn check_entry(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    if value == crc32c::crc32c(key).to_be_bytes().as_slice() {
        Ok(())
    } else {
        Err(StoreError::CorruptKey {
            keyspace: Keyspace::Secondary.name(),
            key: key.to_vec(),
        })
    }
}

/// Every entry of index `id` lies in `[from, to)`.
fn entry_bounds(id: u32) -> (Vec<u8>, Vec<u8>) {
    let from = index_prefix(id);
    // No tuple byte is 0xFF (tags are below 0x30), so this is past them all.
    let mut to = from.clone();
    to.push(0xFF);
    (from, to)
}

/// What `verify_secondary` found: entries that should be there and are
/// not, and entries that are there and should not be (or fail their
/// checksum), each as the entry key's bytes; both empty when the index
/// matches what its records give.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SecondaryCheck {
    pub expected: u64,
    pub missing: Vec<Vec<u8>>,
    pub extra: Vec<Vec<u8>>,
}

impl<B: Backend> KvStore<B> {
    pub(super) fn load_indexes(&self) -> Result<Vec<IndexDef>, StoreError> {
        let mut defs = Vec::new();
        for item in self.backend.scan_from(Keyspace::Meta, KEY_INDEX) {
            let (k, v) = item.map_err(backend("scanning index definitions"))?;
            if !k.starts_with(KEY_INDEX) {
                break;
            }
            let (tag, body) = codec::decode_tagged(&v).map_err(corrupt)?;
            if tag != TAG_INDEX {
                return Err(corrupt(RecordError::Tag(tag)));
            }
            let def = IndexDef::from_proto(pb::IndexDef::decode(body).map_err(corrupt)?)
                .map_err(|_| corrupt(RecordError::Length(body.len())))?;
            if k[KEY_INDEX.len()..] != def.id.to_be_bytes() || defs.len() >= MAX_INDEXES {
                return Err(StoreError::CorruptKey {
                    keyspace: Keyspace::Meta.name(),
                    key: k.to_vec(),
                });
            }
            defs.push(def);
        }
        Ok(defs)
    }

    /// Every index, in id order.
    pub fn indexes(&self) -> &[IndexDef] {
        &self.secondary
    }

    /// What index `id`'s applies skipped and refused in this process.
    pub fn index_counts(&self, id: u32) -> IndexCounts {
        self.index_counts.get(&id).copied().unwrap_or_default()
    }

    /// Counts a write a unique index (named in `e`) refused.
    pub(super) fn count_refusal(&mut self, e: &KvError) {
        if let KvError::UniqueViolation { index, .. } = e {
            if let Some(d) = self.secondary.iter().find(|d| &d.spec.name == index) {
                self.index_counts.entry(d.id).or_default().refused += 1;
            }
        }
    }

    pub fn index_named(&self, name: &str) -> Option<&IndexDef> {
        self.secondary.iter().find(|d| d.spec.name == name)
    }

    fn put_def(batch: &mut Batch, def: &IndexDef) {
        batch.put(
            Keyspace::Meta,
            &def_key(def.id),
            codec::encode_tagged(TAG_INDEX, &def.to_proto().encode_to_vec()),
        );
    }

    /// Declares an index (applied at `applied`): entries for every later
    /// put under its prefix from now on, and a backfill for the values
    /// there now (`apply_backfill`); ready at once when there are none.
    pub fn apply_index_create(
        &mut self,
        spec: &pb::IndexSpec,
        applied: (u64, u64),
    ) -> Result<Outcome<IndexDef>, StoreError> {
        let spec = match spec_from_proto(spec) {
            Ok(s) => s,
            Err(why) => return self.refuse(KvError::Invalid(why.to_string()), applied),
        };
        if !self.feature_enabled(crate::command::FEATURE_INDEXES) {
            return self.refuse(
                KvError::FeatureMissing(crate::command::FEATURE_INDEXES),
                applied,
            );
        }
        if spec.unique && !self.feature_enabled(crate::command::FEATURE_UNIQUE_INDEXES) {
            return self.refuse(
                KvError::FeatureMissing(crate::command::FEATURE_UNIQUE_INDEXES),
                applied,
            );
        }
        if self.index_named(&spec.name).is_some() {
            return self.refuse(KvError::IndexExists(spec.name), applied);
        }
        if self.secondary.len() >= MAX_INDEXES {
            return self.refuse(KvError::TooManyIndexes, applied);
        }
        let Some(id) = self
            .secondary
            .last()
            .map_or(Some(1), |d| d.id.checked_add(1))
        else {
            return self.refuse(KvError::TooManyIndexes, applied);
        };
        let state = self.new_build(&spec.prefix);
        let def = IndexDef { id, spec, state };
        let st = self.stage();
        self.commit(st, applied, |b| Self::put_def(b, &def))?;
        self.secondary.push(def.clone());
        self.catalog_epoch += 1;
        Ok(Outcome::Applied(Applied {
            response: def,
            events: Vec::new(),
        }))
    }

    /// Drops the index named `name` and its entries.
    pub fn apply_index_drop(
        &mut self,
        name: &str,
        applied: (u64, u64),
    ) -> Result<Outcome<IndexDef>, StoreError> {
        let Some(at) = self.secondary.iter().position(|d| d.spec.name == name) else {
            return self.refuse(KvError::IndexNotFound(name.to_string()), applied);
        };
        let id = self.secondary[at].id;
        let st = self.stage();
        self.commit(st, applied, |b| {
            b.delete(Keyspace::Meta, &def_key(id));
            let (from, to) = entry_bounds(id);
            b.delete_range(Keyspace::Secondary, &from, &to);
        })?;
        self.clear_pending(id);
        // A later index may take this id: it starts its own counts.
        self.index_counts.remove(&id);
        self.catalog_epoch += 1;
        let def = self.secondary.remove(at);
        Ok(Outcome::Applied(Applied {
            response: def,
            events: Vec::new(),
        }))
    }

    /// Builds the index named `name` again from the records (applied at
    /// `applied`): its entries dropped, a backfill from the current
    /// revision, as a new index; the way back from `FAILED` once the
    /// duplicates are gone, or a repair after `describe --verify` found
    /// it wrong. Same id, name and declaration.
    pub fn apply_index_rebuild(
        &mut self,
        name: &str,
        applied: (u64, u64),
    ) -> Result<Outcome<IndexDef>, StoreError> {
        if !self.feature_enabled(crate::command::FEATURE_UNIQUE_INDEXES) {
            return self.refuse(
                KvError::FeatureMissing(crate::command::FEATURE_UNIQUE_INDEXES),
                applied,
            );
        }
        let Some(at) = self.secondary.iter().position(|d| d.spec.name == name) else {
            return self.refuse(KvError::IndexNotFound(name.to_string()), applied);
        };
        let state = self.new_build(&self.secondary[at].spec.prefix);
        let def = self.restate(at, state, applied)?;
        Ok(Outcome::Applied(Applied {
            response: def,
            events: Vec::new(),
        }))
    }

    /// The state of an index over `prefix` built from now on: ready at
    /// once when no key there holds a value, otherwise building from the
    /// current revision (its backfill counts the keys, about 20 ms per 1M).
    fn new_build(&self, prefix: &[u8]) -> IndexState {
        let since = self.current;
        let keys_total = self.backfill_keys(prefix, since, None).count() as u64;
        if keys_total == 0 {
            IndexState::Ready { since }
        } else {
            IndexState::Building {
                since,
                cursor: Vec::new(),
                keys_done: 0,
                keys_total,
            }
        }
    }

    /// Notes that the open batch deletes every entry of index `id`, so
    /// that a unique check later in this Ready finds none of them.
    fn clear_pending(&mut self, id: u32) {
        if let Some(p) = self.pending.as_mut() {
            let (from, to) = entry_bounds(id);
            p.unique
                .retain(|e| e.as_slice() < from.as_slice() || e.as_slice() >= to.as_slice());
            p.cleared.insert(id);
        }
    }

    /// One step of index `id`'s backfill (applied at `applied`): the values
    /// visible at its `since` of up to `max_keys` more keys, in key order;
    /// ready after the last. A step for an index that is not building
    /// (a repeated proposal, a dropped index) changes nothing.
    pub fn apply_backfill(
        &mut self,
        id: u32,
        max_keys: u32,
        applied: (u64, u64),
    ) -> Result<Outcome<()>, StoreError> {
        let Some(at) = self.secondary.iter().position(|d| d.id == id) else {
            return self
                .apply_noop(applied)
                .map(|()| Outcome::Applied(Applied::default()));
        };
        let IndexState::Building {
            since,
            cursor,
            keys_done,
            keys_total,
        } = self.secondary[at].state.clone()
        else {
            return self
                .apply_noop(applied)
                .map(|()| Outcome::Applied(Applied::default()));
        };
        let spec = self.secondary[at].spec.clone();
        let after = (!cursor.is_empty()).then_some(cursor.as_slice());
        let step: Vec<(IndexKey, Revision)> = self
            .backfill_keys(&spec.prefix, since, after)
            .take(max_keys.max(1) as usize)
            .collect();
        let mut entries = Vec::new();
        // A unique index's tuples this step gives keys whose indexed
        // change is still their visible one, with the key.
        let mut held: std::collections::BTreeMap<Vec<u8>, &[u8]> = Default::default();
        for (key, rev) in &step {
            let kv = self.read_record(*rev)?;
            let Ok(values) = spec.tuple(&kv.value) else {
                continue;
            };
            if spec.unique && self.visible(key, self.current).map(|c| c.rev) == Some(*rev) {
                let tuple = tuple_prefix(id, &values);
                let other = match held.get(&tuple) {
                    Some(k) => Some(k.to_vec()),
                    None => self.unique_holder(&self.secondary[at], &tuple, &|k: &[u8]| {
                        k == key.as_slice()
                    })?,
                };
                if let Some(other) = other {
                    let reason = format!(
                        "value {} is held by keys {:?} and {:?}: remove the duplicates, then rebuild",
                        show_tuple(&values),
                        String::from_utf8_lossy(&other),
                        String::from_utf8_lossy(key),
                    );
                    return self.fail_build(at, reason, applied);
                }
                held.insert(tuple, key.as_slice());
            }
            entries.push(entry_key(id, values, key.to_vec(), *rev));
        }
        let done = keys_done + step.len() as u64;
        let more = match step.last() {
            Some((last, _)) => self
                .backfill_keys(&spec.prefix, since, Some(last))
                .next()
                .is_some(),
            None => false,
        };
        let state = if more {
            IndexState::Building {
                since,
                cursor: step.last().map(|(k, _)| k.to_vec()).unwrap_or(cursor),
                keys_done: done,
                keys_total,
            }
        } else {
            IndexState::Ready { since }
        };
        let unique = spec.unique;
        let def = IndexDef { id, spec, state };
        let st = self.stage();
        self.commit(st, applied, |b| {
            for e in &entries {
                b.put(Keyspace::Secondary, e, entry_value(e));
            }
            Self::put_def(b, &def);
        })?;
        if let (true, Some(p)) = (unique, self.pending.as_mut()) {
            p.unique.extend(entries);
        }
        self.secondary[at] = def;
        Ok(Outcome::Applied(Applied::default()))
    }

    /// Gives up the build of the index at `at` (a unique index met a
    /// duplicate): FAILED with `reason`, its entries dropped, none written
    /// from now on, until a rebuild.
    fn fail_build(
        &mut self,
        at: usize,
        reason: String,
        applied: (u64, u64),
    ) -> Result<Outcome<()>, StoreError> {
        tracing::warn!(index = %self.secondary[at].spec.name, %reason, "unique index build failed");
        self.restate(at, IndexState::Failed { reason }, applied)?;
        Ok(Outcome::Applied(Applied::default()))
    }

    /// Gives the index at `at` `state` with none of its entries (applied
    /// at `applied`): a rebuild's start, a failed build's end.
    fn restate(
        &mut self,
        at: usize,
        state: IndexState,
        applied: (u64, u64),
    ) -> Result<IndexDef, StoreError> {
        let def = IndexDef {
            state,
            ..self.secondary[at].clone()
        };
        let st = self.stage();
        self.commit(st, applied, |b| {
            let (from, to) = entry_bounds(def.id);
            b.delete_range(Keyspace::Secondary, &from, &to);
            Self::put_def(b, &def);
        })?;
        self.clear_pending(def.id);
        self.secondary[at] = def.clone();
        self.catalog_epoch += 1;
        Ok(def)
    }

    /// Why the records of a write (put or txn, staged, not committed)
    /// cannot be committed: a key's last staged value gives a unique index
    /// a tuple that another key holds, live now and not changed by this
    /// write, or that another key of this write ends with too. `None`
    /// when no unique index objects. The key holding it is named unless
    /// auth is on (the writer may not be allowed to read it).
    pub(super) fn check_unique(
        &self,
        records: &[(Revision, nod_proto::etcd::mvccpb::KeyValue, bool)],
    ) -> Result<Option<KvError>, StoreError> {
        if !self
            .secondary
            .iter()
            .any(|d| d.spec.unique && d.maintained())
        {
            return Ok(None);
        }
        // Each key's last staged change: what the write leaves it with.
        let mut last: std::collections::BTreeMap<&[u8], (&[u8], bool)> = Default::default();
        for (_, kv, tombstone) in records {
            last.insert(kv.key.as_slice(), (kv.value.as_slice(), *tombstone));
        }
        for def in self
            .secondary
            .iter()
            .filter(|d| d.spec.unique && d.maintained())
        {
            let mut held: std::collections::BTreeMap<Vec<u8>, &[u8]> = Default::default();
            for (key, (value, tombstone)) in &last {
                if *tombstone || !def.spec.covers(key) {
                    continue;
                }
                let Ok(values) = def.spec.tuple(value) else {
                    continue;
                };
                let tuple = tuple_prefix(def.id, &values);
                let other = match held.get(&tuple) {
                    Some(k) => Some(k.to_vec()),
                    // A key this write changes leaves its old entries dead.
                    None => self.unique_holder(def, &tuple, &|k: &[u8]| last.contains_key(k))?,
                };
                if let Some(other) = other {
                    let by = if self.auth().enabled() {
                        "another key".to_string()
                    } else {
                        format!("key {:?}", String::from_utf8_lossy(&other))
                    };
                    return Ok(Some(KvError::UniqueViolation {
                        index: def.spec.name.clone(),
                        value: show_tuple(&values),
                        by,
                    }));
                }
                held.insert(tuple, *key);
            }
        }
        Ok(None)
    }

    /// The key whose visible change holds the tuple that starts `tuple`
    /// (index id ‖ tuple) in index `def`, leaving out keys `skip` says:
    /// from the backend's entries and those of the open batch.
    fn unique_holder(
        &self,
        def: &IndexDef,
        tuple: &[u8],
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let arity = def.spec.fields.len();
        let live = |e: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
            let entry = EntryKey::decode(e, arity).map_err(|_| StoreError::CorruptKey {
                keyspace: Keyspace::Secondary.name(),
                key: e.to_vec(),
            })?;
            if skip(&entry.key) {
                return Ok(None);
            }
            let (Ok(main), Ok(sub)) = (i64::try_from(entry.main), i64::try_from(entry.sub)) else {
                return Ok(None);
            };
            Ok(self
                .visible(&entry.key, self.current)
                .filter(|c| !c.tombstone && c.rev == Revision { main, sub })
                .map(|_| entry.key))
        };
        let pending = self.pending.as_ref();
        if let Some(p) = pending {
            for e in p
                .unique
                .range::<[u8], _>((Bound::Included(tuple), Bound::Unbounded))
                .take_while(|e| e.starts_with(tuple))
            {
                if let Some(k) = live(e)? {
                    return Ok(Some(k));
                }
            }
            if p.cleared.contains(&def.id) {
                return Ok(None);
            }
        }
        for item in self.backend.scan_from(Keyspace::Secondary, tuple) {
            let (k, v) = item.map_err(backend("reading a unique index's entries"))?;
            if !k.starts_with(tuple) {
                break;
            }
            check_entry(&k, &v)?;
            if let Some(key) = live(&k)? {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// The keys under `prefix` (after `after`, in key order) whose change
    /// visible at `since` is a put that is still stored, with that
    /// change's revision: what a backfill at `since` indexes. A change a
    /// compaction dropped (no longer any key's kept change) is left out:
    /// its key's later change, which apply indexed, took its place.
    fn backfill_keys<'a>(
        &'a self,
        prefix: &'a [u8],
        since: i64,
        after: Option<&[u8]>,
    ) -> impl Iterator<Item = (IndexKey, Revision)> + 'a {
        let lower = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let compacted = self.compacted;
        self.index
            .range::<[u8], _>((lower.as_ref().map(|k| k.as_slice()), Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter_map(move |(k, entry)| {
                let seen = entry.visible(since)?;
                if seen.tombstone {
                    return None;
                }
                if seen.rev.main <= compacted
                    && entry.visible(compacted).map(|c| c.rev) != Some(seen.rev)
                {
                    return None;
                }
                Some((k.clone(), seen.rev))
            })
    }

    /// The entries the records of a commit add (`commit`): for each put
    /// under a maintained index's prefix whose value gives it a tuple.
    pub(super) fn secondary_entries(
        &mut self,
        records: &[(Revision, nod_proto::etcd::mvccpb::KeyValue, bool)],
        batch: &mut Batch,
        unique: &mut Vec<Vec<u8>>,
    ) {
        let mut covering = Vec::new();
        let mut specs = Vec::new();
        for (rev, kv, tombstone) in records {
            if *tombstone {
                continue;
            }
            covering.clear();
            covering.extend((0..self.secondary.len()).filter(|&i| {
                self.secondary[i].maintained() && self.secondary[i].spec.covers(&kv.key)
            }));
            if covering.is_empty() {
                continue;
            }
            // One pass over the value, however many indexes cover it.
            specs.clear();
            specs.extend(covering.iter().map(|&i| &self.secondary[i].spec));
            let tuples = nod_query::extract::tuples(&specs, &kv.value);
            for (&i, tuple) in covering.iter().zip(tuples) {
                let def = &self.secondary[i];
                match tuple {
                    Ok(values) => {
                        let e = entry_key(def.id, values, kv.key.clone(), *rev);
                        let v = entry_value(&e);
                        batch.put(Keyspace::Secondary, &e, v);
                        if def.spec.unique {
                            unique.push(e);
                        }
                    }
                    Err(skip) => {
                        let id = def.id;
                        self.index_counts.entry(id).or_default().skipped[skip.slot()] += 1;
                    }
                }
            }
        }
    }

    /// The entries that removing record `rev` (of `key`) leaves dead, in
    /// every maintained index covering `key`: for a compaction's sweep,
    /// which reads the record for its value.
    pub(super) fn secondary_removals(
        &self,
        key: &[u8],
        rev: Revision,
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        let covering: Vec<&IndexDef> = self
            .secondary
            .iter()
            .filter(|d| d.maintained() && d.spec.covers(key))
            .collect();
        if covering.is_empty() {
            return Ok(());
        }
        let kv = self.read_record(rev)?;
        // One pass over the value for every covering index, as `commit`
        // made their entries.
        let specs: Vec<&nod_query::IndexSpec> = covering.iter().map(|d| &d.spec).collect();
        let tuples = nod_query::extract::tuples(&specs, &kv.value);
        for (def, tuple) in covering.iter().zip(tuples) {
            if let Ok(values) = tuple {
                let e = entry_key(def.id, values, key.to_vec(), rev);
                batch.delete(Keyspace::Secondary, &e);
            }
        }
        Ok(())
    }

    /// Recomputes index `id`'s entries from the stored records and
    /// compares them with the stored entries (and their checksums): for
    /// the tests, and for `nod index describe --verify`.
    pub fn verify_secondary(&self, id: u32) -> Result<Option<SecondaryCheck>, StoreError> {
        let Some(def) = self.secondary.iter().find(|d| d.id == id) else {
            return Ok(None);
        };
        let mut want = std::collections::BTreeSet::new();
        // Entries of records a compaction dropped that its sweep has not
        // removed yet (or removed, and a crash brought back): either way.
        let mut either = std::collections::BTreeSet::new();
        // A failed index holds no entries.
        let scope: Option<(i64, Option<&[u8]>)> = match &def.state {
            IndexState::Building { since, cursor, .. } => Some((*since, Some(cursor))),
            IndexState::Ready { since } => Some((*since, None)),
            IndexState::Failed { .. } => None,
        };
        if let Some((since, backfilled)) = scope {
            for (k, entry) in self
                .index
                .range::<[u8], _>((
                    Bound::Included(def.spec.prefix.as_slice()),
                    Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(&def.spec.prefix))
            {
                // The backfill indexed the change visible at `since` of
                // the keys it has passed.
                let backfilled = backfilled
                    .is_none_or(|c| k.as_slice() <= c)
                    .then(|| entry.visible(since))
                    .flatten()
                    .map(|c| c.rev);
                for c in entry.changes().as_slice() {
                    if c.tombstone || (c.rev.main <= since && backfilled != Some(c.rev)) {
                        continue;
                    }
                    let dropped = c.rev.main <= self.compacted
                        && entry.visible(self.compacted).map(|d| d.rev) != Some(c.rev);
                    let kv = self.read_record(c.rev)?;
                    if let Ok(values) = def.spec.tuple(&kv.value) {
                        let e = entry_key(id, values, k.to_vec(), c.rev);
                        if dropped {
                            either.insert(e);
                        } else {
                            want.insert(e);
                        }
                    }
                }
            }
        }
        let (from, to) = entry_bounds(id);
        let mut check = SecondaryCheck {
            expected: want.len() as u64,
            ..SecondaryCheck::default()
        };
        for item in self.backend.scan_from(Keyspace::Secondary, &from) {
            let (k, v) = item.map_err(backend("scanning index entries"))?;
            if k.as_ref() >= to.as_slice() {
                break;
            }
            let known = want.remove(k.as_ref()) || either.contains(k.as_ref());
            if !known || v.as_ref() != entry_value(&k).as_slice() {
                check.extra.push(k.to_vec());
            }
        }
        check.missing = want.into_iter().collect();
        Ok(Some(check))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nod_query::extract` reads index fields in one pass and agrees with
    /// a `serde_json::Value` parse (what a prefix scan evaluates) only
    /// while serde_json's `arbitrary_precision` and `raw_value` features
    /// are off: they turn these objects into a number. Features unify per
    /// build, so this checks the server's.
    #[test]
    fn the_json_parser_has_no_private_object_keys() {
        for text in [
            r#"{"$serde_json::private::Number":"1"}"#,
            r#"{"$serde_json::private::RawValue":"1"}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
            assert!(
                v.is_object(),
                "{text} parsed as {v}: a serde_json feature changed how documents are read; \
                 nod_query::extract must follow it before indexes can be trusted"
            );
        }
        let spec = nod_query::IndexSpec {
            name: "t".into(),
            prefix: b"/".to_vec(),
            fields: vec![nod_query::IndexField {
                path: nod_query::FieldPath::parse("n").expect("path"),
                ty: nod_query::FieldType::Number,
            }],
            unique: false,
        };
        assert_eq!(
            spec.tuple(br#"{"n":12.5}"#),
            Ok(vec![nod_query::FieldValue::Number(12.5)])
        );
    }

    #[test]
    fn a_definition_survives_its_stored_form() {
        let spec = pb::IndexSpec {
            name: "users_age".into(),
            prefix: b"/users/".to_vec(),
            fields: vec![
                pb::IndexField {
                    path: "age".into(),
                    r#type: pb::FieldType::Number as i32,
                },
                pb::IndexField {
                    path: "\"full name\".first".into(),
                    r#type: pb::FieldType::String as i32,
                },
            ],
            unique: false,
        };
        let parsed = spec_from_proto(&spec).unwrap();
        assert_eq!(spec_to_proto(&parsed), spec);
        for state in [
            IndexState::Building {
                since: 7,
                cursor: b"/users/k".to_vec(),
                keys_done: 3,
                keys_total: 9,
            },
            IndexState::Ready { since: 7 },
            IndexState::Failed {
                reason: "duplicate".into(),
            },
        ] {
            let def = IndexDef {
                id: 3,
                spec: parsed.clone(),
                state,
            };
            assert_eq!(IndexDef::from_proto(def.to_proto()).unwrap(), def);
        }
    }

    #[test]
    fn a_bad_declaration_is_refused_with_its_reason() {
        let field = |path: &str, ty: pb::FieldType| pb::IndexField {
            path: path.into(),
            r#type: ty as i32,
        };
        let good = pb::IndexSpec {
            name: "a".into(),
            prefix: b"/a/".to_vec(),
            fields: vec![field("x", pb::FieldType::Bool)],
            unique: false,
        };
        assert!(spec_from_proto(&good).is_ok());
        let cases = [
            (
                pb::IndexSpec {
                    name: "Bad".into(),
                    ..good.clone()
                },
                "index name",
            ),
            (
                pb::IndexSpec {
                    prefix: Vec::new(),
                    ..good.clone()
                },
                "prefix",
            ),
            (
                pb::IndexSpec {
                    fields: vec![field("x", pb::FieldType::Unspecified)],
                    ..good.clone()
                },
                "bool, number or string",
            ),
            (
                pb::IndexSpec {
                    fields: vec![field("x", pb::FieldType::Bool); 5],
                    ..good.clone()
                },
                "not 5",
            ),
            (
                pb::IndexSpec {
                    fields: vec![field("x.", pb::FieldType::Bool)],
                    ..good.clone()
                },
                "field \"x.\"",
            ),
        ];
        for (spec, want) in cases {
            let e = spec_from_proto(&spec).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
    }

    #[test]
    fn entry_bounds_hold_every_entry_of_their_index_only() {
        let (from, to) = entry_bounds(7);
        let e = EntryKey {
            index: 7,
            values: vec![nod_query::FieldValue::String("\u{10FFFF}".into())],
            key: vec![0xFF; 8],
            main: u64::MAX,
            sub: u64::MAX,
        }
        .encode();
        assert!(from.as_slice() <= e.as_slice() && e.as_slice() < to.as_slice());
        assert!(to.as_slice() < entry_bounds(8).0.as_slice());
    }
}
