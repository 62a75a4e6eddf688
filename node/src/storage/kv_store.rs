//! The MVCC state machine, following etcd's model: every write
//! transaction gets the next cluster revision; each key keeps its create
//! revision, mod revision, version and lease; history is kept until
//! compaction, so reads and watches can look at past revisions.
//!
//! It runs over a [`Backend`]: RocksDB in the server (`KvStore::open`, its
//! own database, `<data>/kv`), memory in the simulator
//! (`KvStore::in_memory`). Layout, in the backend's keyspaces:
//! - `rev`: `main revision (8 bytes BE) ++ sub revision (8 bytes BE)` → a
//!   tagged record (`codec::encode_tagged`) holding an `mvccpb::KeyValue`;
//!   tag `PUT` or `TOMBSTONE`.
//! - `lease`: lease id (8 bytes BE) → granted TTL.
//! - `member`: member id (8 bytes BE) → `etcdserverpb::Member`.
//! - `meta`: applied index and term, compacted revision, alarms
//!   (`alarms.rs`).
//! - `auth`: the auth store (`auth.rs`): enabled flag and auth revision,
//!   users, roles; changed in the batch of the entry that changed it.
//! - `secondary`: secondary index entries (`secondary.rs`), their
//!   definitions in `meta`; written in the batch of the records they index.
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
//! does. I/O only through the backend; owned by the driver,
//! read by the API under a lock.
//!
//! Read this file (the store and its opening), then `read.rs` (range,
//! history, hash), `apply.rs` (committed commands), `txn.rs` (staging a
//! write transaction), `batch.rs` (one backend write per Ready); the stored
//! form is in `encoding.rs`, the key index in `index.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use prost::Message as _;
use rocksdb::DB;

mod alarms;
mod apply;
mod auth;
mod batch;
mod encoding;
pub mod etcd_snapshot;
mod features;
mod import;
pub use import::{ImportError, ImportNotes, ORPHAN_LEASE_TTL};
mod index;
mod key_range;
mod query;
pub use query::{query_doc, PlanChoice, QueryAnswer, QueryError};
mod read;
mod secondary;
pub use secondary::{
    spec_from_proto, spec_to_proto, BadIndex, IndexCounts, IndexDef, IndexState, SecondaryCheck,
};
mod txn;

use super::backend::{Backend, BackendError, Keyspace, MemoryBackend, RocksBackend};
pub use auth::AuthOutcome;
use batch::Pending;
pub use encoding::Revision;
use encoding::{
    be_i64, decode_head, decode_kv, decode_pair, KEY_APPLIED, KEY_COMPACTED, TAG_MEMBER,
    TAG_REMOVED,
};
use index::{IndexKey, Indexed};
pub use key_range::KeyRange;

use super::codec;
use nod_proto::etcd::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, Compare,
    DeleteRangeRequest, DeleteRangeResponse, Member, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseOp, TxnRequest, TxnResponse,
};
use nod_proto::etcd::mvccpb::{event::EventType, Event, KeyValue};

/// The largest TTL a lease may ask for (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Most compares, or operations in one branch, a transaction may hold
/// (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Deepest nesting of transactions inside transactions.
pub const MAX_TXN_DEPTH: usize = 16;

/// What a client did wrong or asked for that cannot be, as etcd words it:
/// the request's own error, sent to its client. Each becomes the matching
/// etcd gRPC status in `api::status`. A failure of the store itself is a
/// [`StoreError`], never one of these.
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
    /// A NOSPACE alarm is active: writes that add data are refused.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is active: every write is refused.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("nod: index {0:?} already exists")]
    IndexExists(String),
    #[error("nod: no index named {0:?}")]
    IndexNotFound(String),
    #[error(
        "nod: a cluster holds at most {} indexes",
        nod_query::spec::MAX_INDEXES
    )]
    TooManyIndexes,
    /// The cluster has not enabled a feature the request needs (a member
    /// runs an older version, or has not published its features yet):
    /// every member refuses it alike.
    #[error("nod: the cluster has not enabled the {0:?} feature yet: every member must run a version with it (the leader enables it once all have said so)")]
    FeatureMissing(&'static str),
    /// A put or txn would leave two keys with one value of a unique index
    /// (`by` names the key holding it, or says "another key" when auth is
    /// on and the caller may not see it): refused whole.
    #[error("nod: unique index {index:?}: value {value} is already used by {by}")]
    UniqueViolation {
        index: String,
        value: String,
        by: String,
    },
}

/// The store itself failed: its backend, or data it holds that does not
/// decode. The node must stop; no request caused it and none retries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend failed while doing `context`.
    #[error("state machine storage failed: {context}: {cause}")]
    Backend {
        context: &'static str,
        cause: BackendError,
    },
    /// The key-value record at `revision` does not decode.
    #[error("state machine storage failed: corrupt record at revision {revision}: {cause}")]
    CorruptRecord { revision: i64, cause: RecordError },
    /// A meta or member record does not decode.
    #[error("state machine storage failed: corrupt {what}: {cause}")]
    Corrupt {
        what: &'static str,
        cause: RecordError,
    },
    /// A key of `keyspace` that is not of its keyspace's shape.
    #[error("state machine storage failed: corrupt {keyspace} key {key:?}")]
    CorruptKey {
        keyspace: &'static str,
        key: Vec<u8>,
    },
    /// The index names a revision whose record is gone.
    #[error(
        "state machine storage failed: revision {}.{} is indexed but missing",
        .0.main,
        .0.sub
    )]
    Missing(Revision),
    #[error("state machine storage failed: checkpoint without an applied index")]
    NoApplied,
}

/// Why a stored record does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Codec(#[from] codec::DecodeError),
    #[error(transparent)]
    Proto(#[from] prost::DecodeError),
    #[error("unknown record tag {0}")]
    Tag(u8),
    #[error("a body of {0} bytes")]
    Length(usize),
    #[error("record without a key")]
    NoKey,
    #[error(transparent)]
    Entry(#[from] nod_query::DecodeError),
}

/// Why a read gave no result: the request's own error (etcd's, for its
/// client) or a failed store (the node must stop). Reads change nothing,
/// so either way the store is as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Request(#[from] KvError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every kept record in `stored` in revision order, decoded and checked:
/// its revision, whether it is a deletion, and the key-value.
fn records<B: Backend>(
    stored: &B,
) -> impl Iterator<Item = Result<(Revision, bool, KeyValue), StoreError>> + '_ {
    scan_records(stored, decode_kv)
}

/// `records` with each value left out (`decode_head`): for the key index.
fn record_heads<B: Backend>(
    stored: &B,
) -> impl Iterator<Item = Result<(Revision, bool, KeyValue), StoreError>> + '_ {
    scan_records(stored, decode_head)
}

/// How a stored record is read: whether it is a deletion, and its key-value.
type DecodeRecord = fn(&[u8]) -> Result<(bool, KeyValue), RecordError>;

fn scan_records<B: Backend>(
    stored: &B,
    decode: DecodeRecord,
) -> impl Iterator<Item = Result<(Revision, bool, KeyValue), StoreError>> + '_ {
    stored.scan_from(Keyspace::Rev, &[]).map(move |item| {
        let (k, v) = item.map_err(backend("scanning revisions"))?;
        let rev = Revision::from_key(&k).ok_or_else(|| StoreError::CorruptKey {
            keyspace: Keyspace::Rev.name(),
            key: k.to_vec(),
        })?;
        let (tombstone, kv) = decode(&v).map_err(|cause| StoreError::CorruptRecord {
            revision: rev.main,
            cause,
        })?;
        Ok((rev, tombstone, kv))
    })
}

/// Tags a backend failure with what the store was doing.
fn backend(context: &'static str) -> impl FnOnce(BackendError) -> StoreError {
    move |cause| StoreError::Backend { context, cause }
}

fn corrupt_member(cause: impl Into<RecordError>) -> StoreError {
    StoreError::Corrupt {
        what: "member record",
        cause: cause.into(),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    pub ttl: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// What a command that took effect produced: the response and the watch events.
#[derive(Debug, Default)]
pub struct Applied<R> {
    pub response: R,
    pub events: Vec<Event>,
}

/// How applying one committed command ended. Either way the entry is
/// applied (the applied index moved); a refused command changed nothing
/// else. A failure of the store is the `Err` beside it, not one of these.
#[derive(Debug)]
pub enum Outcome<R> {
    Applied(Applied<R>),
    /// The request's own error, for its client.
    Refused(KvError),
}

impl<R> Outcome<R> {
    /// The response and events, or the request's error.
    pub fn into_result(self) -> Result<Applied<R>, KvError> {
        match self {
            Outcome::Applied(a) => Ok(a),
            Outcome::Refused(e) => Err(e),
        }
    }
}

/// The MVCC store over backend `B` (RocksDB unless said otherwise).
/// Where the removal of a compaction's dropped records stands: the
/// compacted revision, and the last key of the index it has passed.
#[derive(Clone, Debug)]
struct Sweep {
    at: i64,
    after: Option<IndexKey>,
}

pub struct KvStore<B: Backend = RocksBackend> {
    backend: B,
    pending: Option<Pending>,
    index: BTreeMap<IndexKey, Indexed>,
    current: i64,
    compacted: i64,
    /// The records the last compaction dropped that are still stored,
    /// removed a step at a time (`compaction_step`).
    sweep: Option<Sweep>,
    /// The compacted revision whose dropped records are all removed.
    swept: i64,
    applied: (u64, u64),
    leases: BTreeMap<i64, LeaseRecord>,
    members: BTreeMap<u64, Member>,
    /// Members removed from the cluster: they are told so if they call.
    removed: BTreeSet<u64>,
    auth: crate::auth::AuthState,
    alarms: alarms::Alarms,
    /// Each member's published features, and those the cluster enabled
    /// (`features.rs`).
    features: features::Features,
    enabled: BTreeSet<String>,
    /// The secondary indexes, in id order (`secondary.rs`).
    secondary: Vec<IndexDef>,
    /// What this process's applies skipped and refused, per index id:
    /// for metrics, not stored.
    index_counts: BTreeMap<u32, IndexCounts>,
    /// Bumped by every change that removes or replaces index entries
    /// wholesale (drop, rebuild, a failed build) or adds an index: a
    /// paged query that read entries gives up when it moved.
    catalog_epoch: u64,
}

impl KvStore<RocksBackend> {
    /// Opens (creating if needed) the store in `dir` and rebuilds the key
    /// index, verifying every record's checksum.
    pub fn open(dir: &Path) -> Result<KvStore, StoreError> {
        let backend = RocksBackend::open(dir).map_err(backend("opening the store"))?;
        KvStore::from_backend(backend)
    }

    pub fn path(&self) -> &Path {
        self.backend.path()
    }

    /// The database, for taking a checkpoint off the driver's thread.
    pub fn db_handle(&self) -> Arc<DB> {
        self.backend.db_handle()
    }

    /// The applied index and term and the member table of a checkpoint,
    /// opened read-only (the checkpoint is not changed).
    pub fn read_checkpoint(dir: &Path) -> Result<(u64, u64, Vec<Member>), StoreError> {
        let db = RocksBackend::open_read_only(dir).map_err(backend("opening a checkpoint"))?;
        let applied = match db
            .get(Keyspace::Meta, KEY_APPLIED)
            .map_err(backend("reading applied"))?
        {
            Some(v) => decode_pair(&v)?,
            None => return Err(StoreError::NoApplied),
        };
        let mut members = Vec::new();
        for item in db.scan_from(Keyspace::Member, &[]) {
            let (k, v) = item.map_err(backend("scanning members"))?;
            let (tag, body) = codec::decode_tagged(&v).map_err(corrupt_member)?;
            if tag == TAG_MEMBER && k.len() == 8 {
                members.push(Member::decode(body).map_err(corrupt_member)?);
            }
        }
        Ok((applied.0, applied.1, members))
    }
}

/// The in-memory store, for the simulator: the same state machine with
/// nothing on disk. A simulated snapshot is [`KvStore::snapshot_bytes`]
/// and [`KvStore::restore_from`], as a RocksDB checkpoint and its install
/// are for the server.
impl KvStore<MemoryBackend> {
    /// An empty store (revision 1, nothing applied).
    pub fn in_memory() -> KvStore<MemoryBackend> {
        KvStore::from_backend(MemoryBackend::new()).expect("an empty store loads")
    }

    /// The whole state as bytes, for a simulated snapshot. Like a RocksDB
    /// checkpoint it holds what was written: the applied index, key
    /// history, leases and members; end an open batch first (the driver
    /// does, at the end of each Ready).
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        debug_assert!(
            self.pending.is_none(),
            "snapshot taken with a batch open at applied index {:?}",
            self.applied
        );
        self.backend.to_bytes()
    }

    /// A store holding what `snapshot_bytes` took, checked as it is read
    /// (checksum, lengths, every record).
    pub fn restore_from(bytes: &[u8]) -> Result<KvStore<MemoryBackend>, StoreError> {
        let restored = MemoryBackend::from_bytes(bytes).map_err(backend("reading a snapshot"))?;
        KvStore::from_backend(restored)
    }
}

impl<B: Backend> KvStore<B> {
    /// The store over what `backend` holds (empty or not): rebuilds the
    /// key index, verifying every record's checksum and shape.
    pub fn from_backend(backend: B) -> Result<KvStore<B>, StoreError> {
        let mut store = KvStore {
            backend,
            pending: None,
            index: BTreeMap::new(),
            current: 1,
            compacted: 0,
            sweep: None,
            swept: 0,
            applied: (0, 0),
            leases: BTreeMap::new(),
            members: BTreeMap::new(),
            removed: BTreeSet::new(),
            auth: crate::auth::AuthState::new(),
            alarms: alarms::Alarms::new(),
            features: features::Features::new(),
            enabled: BTreeSet::new(),
            secondary: Vec::new(),
            index_counts: BTreeMap::new(),
            catalog_epoch: 0,
        };
        store.load()?;
        store.secondary = store.load_indexes()?;
        store.features = store.load_features()?;
        store.enabled = store.load_enabled()?;
        store.auth = store.load_auth()?;
        store.alarms = store.load_alarms()?;
        Ok(store)
    }

    /// The backend with what was written to it; a batch not yet ended is
    /// dropped, as a crash would drop it.
    pub fn into_backend(self) -> B {
        self.backend
    }

    fn load(&mut self) -> Result<(), StoreError> {
        if let Some(v) = self
            .backend
            .get(Keyspace::Meta, KEY_APPLIED)
            .map_err(backend("reading applied"))?
        {
            let (a, b) = decode_pair(&v)?;
            self.applied = (a, b);
        }
        if let Some(v) = self
            .backend
            .get(Keyspace::Meta, KEY_COMPACTED)
            .map_err(backend("reading compacted"))?
        {
            self.compacted = decode_pair(&v)?.0 as i64;
        }
        for record in record_heads(&self.backend) {
            let (rev, tombstone, kv) = record?;
            // Revision order: the last record of a key is its current value.
            self.index
                .entry(IndexKey::from_slice(&kv.key))
                .or_insert_with(Indexed::new)
                .record(rev, &kv, tombstone);
            self.current = self.current.max(rev.main);
        }
        for item in self.backend.scan_from(Keyspace::Lease, &[]) {
            let (k, v) = item.map_err(backend("scanning leases"))?;
            let id = be_i64(&k).ok_or_else(|| StoreError::CorruptKey {
                keyspace: Keyspace::Lease.name(),
                key: k.to_vec(),
            })?;
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
        // A sweep cut short (a stop, a crash, a checkpoint taken during it)
        // left dropped records behind: finish it, a step at a time.
        if self.compacted > 0 {
            self.sweep = Some(Sweep {
                at: self.compacted,
                after: None,
            });
        }
        // Attach live keys to their leases.
        for (k, entry) in &self.index {
            // A deleted key's lease is 0, which is never a lease id.
            if let Some(rec) = self.leases.get_mut(&entry.lease()) {
                rec.keys.insert(k.to_vec());
            }
        }
        for item in self.backend.scan_from(Keyspace::Member, &[]) {
            let (k, v) = item.map_err(backend("scanning members"))?;
            let (tag, body) = codec::decode_tagged(&v).map_err(corrupt_member)?;
            if tag == TAG_REMOVED && k.len() == 9 && k[0] == b'r' {
                self.removed
                    .insert(u64::from_be_bytes(k[1..].try_into().expect("8 bytes")));
                continue;
            }
            if tag != TAG_MEMBER {
                return Err(corrupt_member(RecordError::Tag(tag)));
            }
            let m = Member::decode(body).map_err(corrupt_member)?;
            self.members.insert(m.id, m);
        }
        Ok(())
    }

    /// The revision of the last write transaction (1 for an empty store, as in etcd).
    pub fn current_revision(&self) -> i64 {
        self.current
    }

    /// The compacted revision whose dropped records are all removed (a
    /// physical compaction's answer waits for it to reach its revision).
    pub fn swept_revision(&self) -> i64 {
        if self.sweep.is_none() {
            self.compacted
        } else {
            self.swept
        }
    }

    /// Whether a compaction's dropped records remain to be removed.
    pub fn compaction_pending(&self) -> bool {
        self.sweep.is_some()
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

    /// Size of the stored data, as the backend estimates it (on disk, for RocksDB).
    pub fn db_size(&self) -> i64 {
        self.backend.size() as i64
    }

    /// The part of `db_size` that live data takes; the rest is what a
    /// defragmentation (a RocksDB compaction) would reclaim.
    pub fn db_size_in_use(&self) -> i64 {
        self.backend.size_in_use() as i64
    }

    /// Whether `id` was a member and was removed (ids are never reused).
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }
}
