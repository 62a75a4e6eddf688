//! The MVCC state machine in RocksDB, following etcd's model: every write
//! transaction gets the next cluster revision; each key keeps its create
//! revision, mod revision, version and lease; history is kept until
//! compaction, so reads and watches can look at past revisions.
//!
//! Layout (its own RocksDB, `<data>/kv`):
//! - `rev`: `main revision (8 bytes BE) ++ sub revision (8 bytes BE)` → a
//!   tagged record (`codec::encode_tagged`) holding an `mvccpb::KeyValue`;
//!   tag `PUT` or `TOMBSTONE`.
//! - `lease`: lease id (8 bytes BE) → granted TTL.
//! - `member`: member id (8 bytes BE) → `etcdserverpb::Member`.
//! - `meta`: applied index and term, compacted revision.
//!
//! Every applied entry, or every run of entries the driver applies together
//! (`begin_batch`), is one atomic write batch that includes the applied
//! index (the run's last), so a restart resumes exactly after the last
//! applied entry and never applies one twice. The batch is not fsynced: the Raft log is, and whatever
//! the state machine loses in a crash is replayed from it.
//!
//! The key index (key → its revisions, and the current value's create
//! revision, version and lease, so a put need not read the record it
//! replaces) lives in memory and is rebuilt from `rev` on open, as etcd
//! does. Does I/O (RocksDB); owned by the driver,
//! read by the API under a lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message as _;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};

use super::codec;
use nod_proto::etcd::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, Compare,
    DeleteRangeRequest, DeleteRangeResponse, Member, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseOp, TxnRequest, TxnResponse,
};
use nod_proto::etcd::mvccpb::{event::EventType, Event, KeyValue};

const CF_REV: &str = "rev";
const CF_LEASE: &str = "lease";
const CF_MEMBER: &str = "member";
const CF_META: &str = "meta";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_COMPACTED: &[u8] = b"compacted";

const TAG_PUT: u8 = 1;
const TAG_TOMBSTONE: u8 = 2;
const TAG_MEMBER: u8 = 3;
const TAG_META: u8 = 4;
const TAG_REMOVED: u8 = 5;

/// The largest TTL a lease may ask for (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Most compares, or operations in one branch, a transaction may hold
/// (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Deepest nesting of transactions inside transactions.
pub const MAX_TXN_DEPTH: usize = 16;

/// What a client did wrong or asked for that cannot be, as etcd words it.
/// Each becomes the matching etcd gRPC status in `api::status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: {0}")]
    Invalid(String),
    /// The store itself failed: the node must stop.
    #[error("state machine storage failed: {0}")]
    Fatal(String),
}

fn fatal(context: &str, e: impl std::fmt::Display) -> KvError {
    KvError::Fatal(format!("{context}: {e}"))
}

/// A point in the store's history: `main` is the cluster revision of a write
/// transaction, `sub` orders the changes inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    fn key(self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        k[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        k
    }

    fn from_key(k: &[u8]) -> Option<Revision> {
        if k.len() != 16 {
            return None;
        }
        let main = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(k[8..].try_into().ok()?) as i64;
        (main > 0 && sub >= 0).then_some(Revision { main, sub })
    }
}

/// One change of a key: where its record is and whether it deleted the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Change {
    rev: Revision,
    tombstone: bool,
}

/// A key as the in-memory index holds it: up to 16 bytes inline, so a
/// lookup compares short keys without following a pointer per comparison.
type IndexKey = smallvec::SmallVec<[u8; 16]>;
// No bigger than the Vec it replaces.
const _: () = assert!(std::mem::size_of::<IndexKey>() == 24);

/// A key in the in-memory index: where its changes are, and what a put
/// needs to know about its current value (create revision, version,
/// lease), so a plain put writes without reading the previous record.
#[derive(Clone, Debug)]
struct Indexed {
    changes: Vec<Change>,
    /// The current value's; all zero (lease 0 too) while the key is deleted.
    live: Meta,
}

/// What a put carries over from the value it replaces (version 0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Meta {
    create: i64,
    version: i64,
    lease: i64,
}

impl Meta {
    fn of(kv: &KeyValue) -> Meta {
        Meta {
            create: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }

    fn live(self) -> Option<Meta> {
        (self.version > 0).then_some(self)
    }
}

impl Indexed {
    /// A new key's entry, its change list sized for one change: most keys
    /// have one or two, and an empty Vec's first push reserves four (96
    /// bytes per key, 72 of them unused: 72 MB with 1M keys).
    fn new() -> Indexed {
        Indexed {
            changes: Vec::with_capacity(1),
            live: Meta::default(),
        }
    }

    fn record(&mut self, rev: Revision, kv: &KeyValue, tombstone: bool) {
        self.changes.push(Change { rev, tombstone });
        self.live = if tombstone {
            Meta::default()
        } else {
            Meta::of(kv)
        };
    }
}

/// A key range as etcd gives it: `range_end` empty is the single key,
/// `"\0"` is every key from `key` on, otherwise `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    /// `None`: unbounded above.
    pub end: Option<Vec<u8>>,
    pub single: bool,
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            KeyRange {
                start: key.to_vec(),
                end: None,
                single: true,
            }
        } else if range_end == b"\0" {
            KeyRange {
                start: key.to_vec(),
                end: None,
                single: false,
            }
        } else {
            KeyRange {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
                single: false,
            }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.single {
            return k == self.start.as_slice();
        }
        k >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| k < e.as_slice())
    }

    /// An inverted range (`range_end <= key`) holds nothing.
    pub fn is_empty(&self) -> bool {
        !self.single
            && self
                .end
                .as_ref()
                .is_some_and(|e| e.as_slice() <= self.start.as_slice())
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        if self.single {
            return (
                Bound::Included(self.start.as_slice()),
                Bound::Included(self.start.as_slice()),
            );
        }
        (
            Bound::Included(self.start.as_slice()),
            match &self.end {
                Some(e) => Bound::Excluded(e.as_slice()),
                None => Bound::Unbounded,
            },
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// What applying one command produced: the response and the watch events.
#[derive(Debug, Default)]
pub struct Applied<R> {
    pub response: R,
    pub events: Vec<Event>,
}

/// A write transaction being built: changes are staged here and committed to
/// RocksDB and the index in one batch, or dropped whole on error.
struct Staged {
    rev: i64,
    sub: i64,
    /// Latest staged change per key, as its place in `records` (a
    /// tombstone there: deleted in this transaction). Kept only when later
    /// operations of the same request may read it (`track`).
    overlay: BTreeMap<Vec<u8>, usize>,
    track: bool,
    records: Vec<(Revision, KeyValue, bool)>,
    events: Vec<Event>,
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

/// Applied commands not yet written to RocksDB: one write for a whole
/// Ready's entries instead of one per entry (see `begin_batch`).
#[derive(Default)]
struct Pending {
    /// In a mutex only because a RocksDB batch is not `Sync` (it is only
    /// touched through `&mut self`, so the lock is never contended).
    batch: std::sync::Mutex<WriteBatch>,
    records: HashMap<Revision, KeyValue>,
    /// The last applied entry's index and term, written once at the end.
    applied: Option<(u64, u64)>,
}

pub struct KvStore {
    db: Arc<DB>,
    pending: Option<Pending>,
    path: PathBuf,
    index: BTreeMap<IndexKey, Indexed>,
    current: i64,
    compacted: i64,
    applied: (u64, u64),
    leases: BTreeMap<i64, LeaseRecord>,
    members: BTreeMap<u64, Member>,
    /// Members removed from the cluster: they are told so if they call.
    removed: BTreeSet<u64>,
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

impl KvStore {
    /// Opens (creating if needed) the store in `dir` and rebuilds the key
    /// index, verifying every record's checksum.
    pub fn open(dir: &Path) -> Result<KvStore, KvError> {
        let opts = super::tuning::db_options();
        let cache = super::tuning::block_cache();
        let cfs = [CF_REV, CF_LEASE, CF_MEMBER, CF_META]
            .map(|n| ColumnFamilyDescriptor::new(n, super::tuning::cf_options(&cache)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            let text = e.to_string();
            if text.to_ascii_lowercase().contains("lock") {
                KvError::Fatal(format!(
                    "data directory {} is in use by another process (its RocksDB LOCK is held): {text}",
                    dir.display()
                ))
            } else {
                fatal(&format!("cannot open the state machine in {}", dir.display()), text)
            }
        })?;
        let mut store = KvStore {
            db: Arc::new(db),
            pending: None,
            path: dir.to_path_buf(),
            index: BTreeMap::new(),
            current: 1,
            compacted: 0,
            applied: (0, 0),
            leases: BTreeMap::new(),
            members: BTreeMap::new(),
            removed: BTreeSet::new(),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&mut self) -> Result<(), KvError> {
        let meta = cf(&self.db, CF_META);
        if let Some(v) = self
            .db
            .get_cf(meta, KEY_APPLIED)
            .map_err(|e| fatal("reading applied", e))?
        {
            let (a, b) = decode_pair(&v)?;
            self.applied = (a, b);
        }
        if let Some(v) = self
            .db
            .get_cf(meta, KEY_COMPACTED)
            .map_err(|e| fatal("reading compacted", e))?
        {
            self.compacted = decode_pair(&v)?.0 as i64;
        }
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_REV), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| fatal("scanning revisions", e))?;
            let rev = Revision::from_key(&k)
                .ok_or_else(|| KvError::Fatal(format!("corrupt revision key {k:?}")))?;
            let (tombstone, kv) = decode_kv(&v).map_err(|e| {
                KvError::Fatal(format!("corrupt record at revision {}: {e}", rev.main))
            })?;
            // Revision order: the last record of a key is its current value.
            self.index
                .entry(IndexKey::from_slice(&kv.key))
                .or_insert_with(Indexed::new)
                .record(rev, &kv, tombstone);
            self.current = self.current.max(rev.main);
        }
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_LEASE), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| fatal("scanning leases", e))?;
            let id = be_i64(&k).ok_or_else(|| KvError::Fatal("corrupt lease key".into()))?;
            let ttl = decode_pair(&v)?.0 as i64;
            self.leases.insert(
                id,
                LeaseRecord {
                    ttl,
                    keys: BTreeSet::new(),
                },
            );
        }
        // Compaction may have removed every record at the latest revisions.
        self.current = self.current.max(self.compacted);
        // Attach live keys to their leases.
        for (k, entry) in &self.index {
            // A deleted key's lease is 0, which is never a lease id.
            if let Some(rec) = self.leases.get_mut(&entry.live.lease) {
                rec.keys.insert(k.to_vec());
            }
        }
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_MEMBER), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| fatal("scanning members", e))?;
            let (tag, body) = codec::decode_tagged(&v).map_err(|e| fatal("corrupt member", e))?;
            if tag == TAG_REMOVED && k.len() == 9 && k[0] == b'r' {
                self.removed
                    .insert(u64::from_be_bytes(k[1..].try_into().expect("8 bytes")));
                continue;
            }
            if tag != TAG_MEMBER {
                return Err(KvError::Fatal(format!("member record has tag {tag}")));
            }
            let m = Member::decode(body).map_err(|e| fatal("corrupt member", e))?;
            self.members.insert(m.id, m);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, for taking a checkpoint off the driver's thread.
    pub fn db_handle(&self) -> Arc<DB> {
        self.db.clone()
    }

    /// The applied index and term and the member table of a checkpoint,
    /// opened read-only (the checkpoint is not changed).
    pub fn read_checkpoint(dir: &Path) -> Result<(u64, u64, Vec<Member>), KvError> {
        let opts = Options::default();
        let db =
            DB::open_cf_for_read_only(&opts, dir, [CF_REV, CF_LEASE, CF_MEMBER, CF_META], false)
                .map_err(|e| fatal("opening a checkpoint", e))?;
        let applied = match db
            .get_cf(cf(&db, CF_META), KEY_APPLIED)
            .map_err(|e| fatal("reading applied", e))?
        {
            Some(v) => decode_pair(&v)?,
            None => return Err(KvError::Fatal("checkpoint without an applied index".into())),
        };
        let mut members = Vec::new();
        for item in db.iterator_cf(cf(&db, CF_MEMBER), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| fatal("scanning members", e))?;
            let (tag, body) = codec::decode_tagged(&v).map_err(|e| fatal("corrupt member", e))?;
            if tag == TAG_MEMBER && k.len() == 8 {
                members.push(Member::decode(body).map_err(|e| fatal("corrupt member", e))?);
            }
        }
        Ok((applied.0, applied.1, members))
    }

    /// The revision of the last write transaction (1 for an empty store, as in etcd).
    pub fn current_revision(&self) -> i64 {
        self.current
    }

    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    /// The index and term of the last applied log entry.
    pub fn applied(&self) -> (u64, u64) {
        self.applied
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn leases(&self) -> &BTreeMap<i64, LeaseRecord> {
        &self.leases
    }

    /// Size on disk of the store's files, as RocksDB estimates it.
    pub fn db_size(&self) -> i64 {
        let mut total = 0u64;
        for name in [CF_REV, CF_LEASE, CF_MEMBER, CF_META] {
            for prop in [
                "rocksdb.total-sst-files-size",
                "rocksdb.size-all-mem-tables",
            ] {
                if let Ok(Some(v)) = self.db.property_int_value_cf(cf(&self.db, name), prop) {
                    total += v;
                }
            }
        }
        total as i64
    }

    fn read_record(&self, rev: Revision) -> Result<KeyValue, KvError> {
        if let Some(kv) = self.pending.as_ref().and_then(|p| p.records.get(&rev)) {
            return Ok(kv.clone());
        }
        let v = self
            .db
            .get_cf(cf(&self.db, CF_REV), rev.key())
            .map_err(|e| fatal("reading a revision", e))?
            .ok_or_else(|| {
                KvError::Fatal(format!(
                    "revision {}.{} is indexed but missing",
                    rev.main, rev.sub
                ))
            })?;
        decode_kv(&v)
            .map(|(_, kv)| kv)
            .map_err(|e| KvError::Fatal(format!("corrupt record at revision {}: {e}", rev.main)))
    }

    /// The key's change visible at `at` (its latest change with main <= at).
    fn visible(&self, key: &[u8], at: i64) -> Option<Change> {
        let entry = self.index.get(key)?;
        entry
            .changes
            .iter()
            .rev()
            .find(|c| c.rev.main <= at)
            .copied()
    }

    /// The key's value at the current revision.
    pub fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
        self.get_at(key, self.current)
    }

    fn get_at(&self, key: &[u8], at: i64) -> Result<Option<KeyValue>, KvError> {
        match self.visible(key, at) {
            Some(c) if !c.tombstone => self.read_record(c.rev).map(Some),
            _ => Ok(None),
        }
    }

    /// Live keys in `range` at revision `at`, in key order.
    fn range_at(&self, range: &KeyRange, at: i64) -> Result<Vec<KeyValue>, KvError> {
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

    /// Serves a Range request against the local state (the caller has made
    /// it linearizable if it had to be). Checks revisions against compaction.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, KvError> {
        let at = if req.revision <= 0 {
            self.current
        } else {
            req.revision
        };
        if at > self.current {
            return Err(KvError::FutureRevision);
        }
        if at < self.compacted {
            return Err(KvError::Compacted);
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        let key_order = req.sort_target == range_request::SortTarget::Key as i32
            && req.sort_order != range_request::SortOrder::Descend as i32;
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        if !filtered && (key_order || req.count_only) && !range.is_empty() {
            // Count from the in-memory index and read only the records
            // returned, so `--limit 1` over a large range reads one record.
            let limit = if req.limit > 0 {
                req.limit as usize
            } else {
                usize::MAX
            };
            let mut count = 0i64;
            let mut kvs = Vec::new();
            for (key, _) in self.index.range::<[u8], _>(range.bounds()) {
                match self.visible(key, at) {
                    Some(c) if !c.tombstone => {
                        count += 1;
                        if !req.count_only && kvs.len() < limit {
                            let mut kv = self.read_record(c.rev)?;
                            if req.keys_only {
                                kv.value.clear();
                            }
                            kvs.push(kv);
                        }
                    }
                    _ => {}
                }
            }
            return Ok(RangeResponse {
                header: None,
                kvs,
                more: count as usize > limit,
                count,
            });
        }
        let kvs = self.range_at(&range, at)?;
        Ok(shape_range(req, kvs))
    }

    /// Every change in `(after, upto]` to keys in `range`, as watch events
    /// in revision order, with each event's previous value.
    pub fn events_between(
        &self,
        range: &KeyRange,
        after: i64,
        upto: i64,
    ) -> Result<Vec<Event>, KvError> {
        if after + 1 < self.compacted {
            return Err(KvError::Compacted);
        }
        let mut out = Vec::new();
        let from = Revision {
            main: after + 1,
            sub: 0,
        }
        .key();
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_REV),
            IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| fatal("scanning revisions", e))?;
            let rev = Revision::from_key(&k)
                .ok_or_else(|| KvError::Fatal("corrupt revision key".into()))?;
            if rev.main > upto {
                break;
            }
            let (tombstone, kv) = decode_kv(&v).map_err(|e| fatal("corrupt revision record", e))?;
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
    pub fn fill_prev(&self, events: &mut [Event]) -> Result<(), KvError> {
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
    fn previous(&self, key: &[u8], rev: Revision) -> Result<Option<KeyValue>, KvError> {
        let Some(entry) = self.index.get(key) else {
            return Ok(None);
        };
        match entry.changes.iter().rev().find(|c| c.rev < rev) {
            Some(c) if !c.tombstone => self.read_record(c.rev).map(Some),
            _ => Ok(None),
        }
    }

    // ---- applying committed commands ----

    fn stage(&self) -> Staged {
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
    fn stage_single(&self) -> Staged {
        Staged {
            track: false,
            ..self.stage()
        }
    }

    fn staged_get(&self, st: &Staged, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
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
            None => self.index.get(key).and_then(|e| e.live.live()),
        }
    }

    fn staged_range(&self, st: &Staged, range: &KeyRange) -> Result<Vec<KeyValue>, KvError> {
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

    fn stage_put(&self, st: &mut Staged, req: &PutRequest) -> Result<PutResponse, KvError> {
        if req.key.is_empty() {
            return Err(KvError::EmptyKey);
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
            return Err(KvError::KeyNotFound);
        }
        let lease = if req.ignore_lease {
            meta.map_or(0, |m| m.lease)
        } else {
            req.lease
        };
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(KvError::LeaseNotFound);
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

    fn stage_delete(
        &self,
        st: &mut Staged,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, KvError> {
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

    fn compare_holds(&self, st: &Staged, c: &Compare) -> Result<bool, KvError> {
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
                _ => return Err(KvError::Invalid("compare target and value differ".into())),
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

    fn stage_txn(
        &self,
        st: &mut Staged,
        req: &TxnRequest,
        depth: usize,
    ) -> Result<TxnResponse, KvError> {
        if depth > MAX_TXN_DEPTH {
            return Err(KvError::Invalid("txn nested too deeply".into()));
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
            let r = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let range = KeyRange::new(&r.key, &r.range_end);
                    if r.revision > 0 && r.revision != self.current {
                        // Reads of the past inside a txn go to history.
                        let at = r.revision;
                        if at > self.current {
                            return Err(KvError::FutureRevision);
                        }
                        if at < self.compacted {
                            return Err(KvError::Compacted);
                        }
                        response_op::Response::ResponseRange(shape_range(
                            r,
                            self.range_at(&range, at)?,
                        ))
                    } else {
                        response_op::Response::ResponseRange(shape_range(
                            r,
                            self.staged_range(st, &range)?,
                        ))
                    }
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.stage_put(st, p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.stage_delete(st, d)?)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    response_op::Response::ResponseTxn(self.stage_txn(st, t, depth + 1)?)
                }
                None => return Err(KvError::Invalid("txn operation has no request".into())),
            };
            responses.push(ResponseOp { response: Some(r) });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    /// From now until `end_batch`, applied commands are collected in memory
    /// and written to RocksDB together (reads through this store see them).
    /// The caller holds the store exclusively meanwhile: `events_between`
    /// and `hash_kv` read RocksDB alone. Losing the batch in a crash loses
    /// nothing: the applied index is in it, so the log is applied again.
    pub fn begin_batch(&mut self) {
        if self.pending.is_none() {
            self.pending = Some(Pending::default());
        }
    }

    /// Writes what was applied since `begin_batch`, in one RocksDB write.
    pub fn end_batch(&mut self) -> Result<(), KvError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let mut batch = p.batch.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(applied) = p.applied {
            put_applied(&self.db, &mut batch, applied);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.db
            .write(batch)
            .map_err(|e| fatal("writing applied state", e))
    }

    /// Writes the staged changes, the applied index and any extra writes as
    /// one batch (or adds them to the open batch), then updates the
    /// in-memory index. Returns the events.
    fn commit(
        &mut self,
        st: Staged,
        applied: (u64, u64),
        extra: impl FnOnce(&DB, &mut WriteBatch),
    ) -> Result<Vec<Event>, KvError> {
        let mut own = WriteBatch::default();
        let batch = match self.pending.as_mut() {
            Some(p) => p.batch.get_mut().unwrap_or_else(|e| e.into_inner()),
            None => &mut own,
        };
        for (rev, kv, tombstone) in &st.records {
            batch.put_cf(cf(&self.db, CF_REV), rev.key(), encode_kv(kv, *tombstone));
        }
        extra(&self.db, batch);
        match self.pending.as_mut() {
            // The batch's last entry writes the applied index (`end_batch`).
            Some(p) => p.applied = Some(applied),
            None => {
                put_applied(&self.db, &mut own, applied);
                self.db
                    .write(own)
                    .map_err(|e| fatal("writing applied state", e))?
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
            let before = entry.live.lease;
            entry.record(rev, &kv, tombstone);
            let after = entry.live.lease;
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

    /// Records that entry `applied` changed nothing in the key space (an
    /// empty entry, a membership change, a failed request).
    pub fn apply_noop(&mut self, applied: (u64, u64)) -> Result<(), KvError> {
        let st = self.stage();
        self.commit(st, applied, |_, _| {})?;
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
                let events = self.commit(st, applied, |_, _| {})?;
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
                let events = self.commit(st, applied, |_, _| {})?;
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
                let events = self.commit(st, applied, |_, _| {})?;
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
        // The deletions below go to RocksDB directly: write what is pending first.
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
        let mut batch = WriteBatch::default();
        for rev in &doomed {
            batch.delete_cf(cf(&self.db, CF_REV), rev.key());
        }
        batch.put_cf(
            cf(&self.db, CF_META),
            KEY_COMPACTED,
            encode_pair(at as u64, 0),
        );
        put_applied(&self.db, &mut batch, applied);
        self.db
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
        self.commit(st, applied, |db, b| {
            b.put_cf(
                cf(db, CF_LEASE),
                (id as u64).to_be_bytes(),
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
        let events = self.commit(st, applied, |db, b| {
            b.delete_cf(cf(db, CF_LEASE), (id as u64).to_be_bytes())
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
        self.commit(st, applied, |db, b| match record {
            Some(r) => b.put_cf(cf(db, CF_MEMBER), id.to_be_bytes(), r),
            None => {
                b.delete_cf(cf(db, CF_MEMBER), id.to_be_bytes());
                b.put_cf(
                    cf(db, CF_MEMBER),
                    removed_key,
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

    /// Whether `id` was a member and was removed (ids are never reused).
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    /// A digest of the key space up to `revision` (0: current), for checking
    /// that replicas agree (Maintenance.HashKV). CRC32 over every kept
    /// revision's key and record, in revision order.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), KvError> {
        let upto = if revision <= 0 {
            self.current
        } else {
            revision
        };
        if upto > self.current {
            return Err(KvError::FutureRevision);
        }
        if upto < self.compacted {
            return Err(KvError::Compacted);
        }
        let mut h = crc32fast::Hasher::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_REV), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| fatal("scanning revisions", e))?;
            let rev = Revision::from_key(&k)
                .ok_or_else(|| KvError::Fatal("corrupt revision key".into()))?;
            if rev.main > upto {
                break;
            }
            h.update(&k);
            h.update(&v);
        }
        Ok((h.finalize(), upto))
    }

    /// Serves a transaction that only reads (the caller checked), without the log.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, KvError> {
        let mut st = self.stage();
        let resp = self.stage_txn(&mut st, req, 0)?;
        debug_assert!(st.records.is_empty(), "read_txn given a writing txn");
        Ok(resp)
    }

    /// Every live key at the current revision, for a backup snapshot.
    pub fn dump(&self) -> Result<Vec<KeyValue>, KvError> {
        self.range_at(&KeyRange::new(b"\0", b"\0"), self.current)
    }
}

/// Applies a Range request's filters, sort, limit and projections to the
/// keys in its range.
fn shape_range(req: &RangeRequest, mut kvs: Vec<KeyValue>) -> RangeResponse {
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

fn encode_kv(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    codec::encode_tagged(
        if tombstone { TAG_TOMBSTONE } else { TAG_PUT },
        &kv.encode_to_vec(),
    )
}

fn decode_kv(v: &[u8]) -> Result<(bool, KeyValue), String> {
    let (tag, body) = codec::decode_tagged(v).map_err(|e| e.to_string())?;
    let tombstone = match tag {
        TAG_PUT => false,
        TAG_TOMBSTONE => true,
        t => return Err(format!("unknown record tag {t}")),
    };
    let kv = KeyValue::decode(body).map_err(|e| e.to_string())?;
    if kv.key.is_empty() {
        return Err("record without a key".into());
    }
    Ok((tombstone, kv))
}

/// Adds the applied index and term to `batch`.
fn put_applied(db: &DB, batch: &mut WriteBatch, (index, term): (u64, u64)) {
    batch.put_cf(cf(db, CF_META), KEY_APPLIED, encode_pair(index, term));
}

fn encode_pair(a: u64, b: u64) -> Vec<u8> {
    let mut body = a.to_le_bytes().to_vec();
    body.extend_from_slice(&b.to_le_bytes());
    codec::encode_tagged(TAG_META, &body)
}

fn decode_pair(v: &[u8]) -> Result<(u64, u64), KvError> {
    let (tag, body) = codec::decode_tagged(v).map_err(|e| fatal("corrupt meta record", e))?;
    if tag != TAG_META || body.len() != 16 {
        return Err(KvError::Fatal("corrupt meta record".into()));
    }
    Ok((
        u64::from_le_bytes(body[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(body[8..].try_into().expect("8 bytes")),
    ))
}

fn be_i64(k: &[u8]) -> Option<i64> {
    Some(u64::from_be_bytes(k.try_into().ok()?) as i64)
}
