//! What the MVCC state machine needs from the store under it: ordered
//! keyspaces of bytes, point reads, forward scans, and an atomic batch of
//! puts and deletes across keyspaces. Two implementations answer it, held
//! to one conformance suite (`node/tests/kv_store.rs`): RocksDB
//! ([`RocksBackend`], one column family per keyspace; the server's) and
//! memory ([`MemoryBackend`], a `BTreeMap` per keyspace; the simulator's:
//! deterministic, no I/O).
//!
//! A backend stores bytes and knows nothing of records: `KvStore` encodes
//! and checksums every value and validates what it reads back, whichever
//! backend holds it, so both hold the very same bytes (and `hash_kv` agrees).
//! Read `Backend` first, then `kv_store.rs`.

use std::borrow::Cow;

pub mod memory;
pub mod rocks;

pub use memory::MemoryBackend;
pub use rocks::RocksBackend;

/// The state machine's keyspaces (RocksDB column families), each ordered
/// by key bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Keyspace {
    /// Revision → key-value record.
    Rev,
    /// Lease id → granted TTL.
    Lease,
    /// Member id → member; `r` ++ id → removed marker.
    Member,
    /// Applied index and term, compacted revision.
    Meta,
    /// The auth store: `meta` → enabled flag and auth revision; `u` ++
    /// name → user; `r` ++ name → role.
    Auth,
    /// Secondary index entries: index id ‖ tuple ‖ key ‖ revision →
    /// checksum (`nod_query::codec::EntryKey`), written in the batch of
    /// the records they point to and left out of HashKV.
    Secondary,
}

impl Keyspace {
    pub const ALL: [Keyspace; 6] = [
        Keyspace::Rev,
        Keyspace::Lease,
        Keyspace::Member,
        Keyspace::Meta,
        Keyspace::Auth,
        Keyspace::Secondary,
    ];

    /// Its column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Keyspace::Rev => "rev",
            Keyspace::Lease => "lease",
            Keyspace::Member => "member",
            Keyspace::Meta => "meta",
            Keyspace::Auth => "auth",
            Keyspace::Secondary => "secondary",
        }
    }

    /// Whether a store written by an older version may lack it (its
    /// checkpoints are opened read-only without it; opening one read-write
    /// adds it empty).
    pub fn added_later(self) -> bool {
        matches!(self, Keyspace::Auth | Keyspace::Secondary)
    }
}

/// The backend itself failed (I/O, corruption it detected): the node must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// A key in a batch: revision, lease and member keys (8 or 16 bytes) stay inline.
pub type BatchKey = smallvec::SmallVec<[u8; 16]>;

/// One change in a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        keyspace: Keyspace,
        key: BatchKey,
        value: Vec<u8>,
    },
    Delete {
        keyspace: Keyspace,
        key: BatchKey,
    },
    /// Every key from `from` (included) to `to` (excluded); never empty
    /// (`Batch::delete_range` leaves an empty range out).
    DeleteRange {
        keyspace: Keyspace,
        from: Vec<u8>,
        to: Vec<u8>,
    },
}

/// Puts and deletes across keyspaces, applied in order and all at once by
/// [`Backend::write`]: after a crash either all of it is there or none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    pub fn put(&mut self, keyspace: Keyspace, key: &[u8], value: Vec<u8>) {
        self.ops.push(BatchOp::Put {
            keyspace,
            key: BatchKey::from_slice(key),
            value,
        });
    }

    pub fn delete(&mut self, keyspace: Keyspace, key: &[u8]) {
        self.ops.push(BatchOp::Delete {
            keyspace,
            key: BatchKey::from_slice(key),
        });
    }

    /// Deletes every key from `from` (included) to `to` (excluded): a
    /// dropped index's entries, without reading them first. A range with
    /// `to <= from` holds no key and adds nothing.
    pub fn delete_range(&mut self, keyspace: Keyspace, from: &[u8], to: &[u8]) {
        if from < to {
            self.ops.push(BatchOp::DeleteRange {
                keyspace,
                from: from.to_vec(),
                to: to.to_vec(),
            });
        }
    }

    /// Adds `other`'s operations after this batch's.
    pub fn append(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// A key and its value as a scan yields them: borrowed from memory, or
/// owned when read from disk.
pub type Entry<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Ordered keyspaces of bytes with atomic batches: what `KvStore` runs on.
///
/// Contract (checked by the conformance suite through `KvStore`): a read
/// sees every batch written before it and nothing of one not yet written;
/// scans are in ascending byte order of the key; `write` applies a batch's
/// operations in order (a later one wins) and atomically.
pub trait Backend {
    /// The value stored under `key`.
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, BackendError>;

    /// Every entry with a key at or after `from`, in ascending key order.
    /// (The state machine only ever scans forward: the in-memory index
    /// answers everything else.)
    fn scan_from<'a>(
        &'a self,
        keyspace: Keyspace,
        from: &[u8],
    ) -> impl Iterator<Item = Result<Entry<'a>, BackendError>> + 'a;

    /// Every entry with a key before `before` (excluded; `None`: every
    /// entry), in descending key order: an index read in descending
    /// order, from the end of its range.
    fn scan_rev<'a>(
        &'a self,
        keyspace: Keyspace,
        before: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<Entry<'a>, BackendError>> + 'a;

    /// Applies `batch` atomically. Not synced: the Raft log is, and replays
    /// whatever a crash loses.
    fn write(&mut self, batch: Batch) -> Result<(), BackendError>;

    /// Applies `batch` like `write`, but a crash may lose it even where it
    /// would not lose a `write` made after it: only for removals that
    /// reopening finds and redoes (a compaction's sweep).
    fn write_unlogged(&mut self, batch: Batch) -> Result<(), BackendError> {
        self.write(batch)
    }

    /// Bytes the stored data takes, as the backend estimates it.
    fn size(&self) -> u64;

    /// The part of `size` that live data takes (what a compaction of the
    /// backend would leave).
    fn size_in_use(&self) -> u64 {
        self.size()
    }
}
