//! The log store contract and its in-memory implementation.
//!
//! The core reads through [`Storage`]; the driver writes through
//! [`StorageWrite`], one [`LogWrite`] per `Ready` (group commit: one atomic
//! batch, one fsync). [`MemStorage`] is the twin the simulation and the tests
//! use; a durable implementation must pass [`crate::conformance`] too.

use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, Index, Snapshot, Term};

/// What a node finds when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub hard_state: HardState,
    /// The configuration stored with the latest snapshot. Configuration entries
    /// in the log after it are replayed by the core.
    pub conf_state: ConfState,
}

/// Read access to the durable log. Indices are `[first_index, last_index]`;
/// `term(first_index - 1)` is the snapshot's term.
pub trait Storage {
    fn initial_state(&self) -> Result<RaftState, StorageError>;
    /// Entries in `[low, high)`, at most `max_size` bytes but always at least one.
    fn entries(&self, low: Index, high: Index, max_size: u64) -> Result<Vec<Entry>, StorageError>;
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    fn first_index(&self) -> Result<Index, StorageError>;
    fn last_index(&self) -> Result<Index, StorageError>;
    /// The latest snapshot, to send to a follower that needs entries before `first_index`.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// One `Ready`'s worth of state to make durable, applied atomically in this order:
/// the snapshot (which replaces the log), the entries (truncating any
/// conflicting tail first), then the hard state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogWrite {
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Whether this write must reach the disk before the call returns.
    pub sync: bool,
}

impl LogWrite {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }

    /// Checks that this write applies to a log whose snapshot is at
    /// `snapshot_index` and whose last entry is `last_index`: a snapshot no
    /// older than the current one, entries contiguous and starting inside
    /// the log or right after it. Every store calls this before writing, so a
    /// refused write changes nothing.
    pub fn check_fits(&self, snapshot_index: Index, last_index: Index) -> Result<(), StorageError> {
        let (base, base_last) = match &self.snapshot {
            Some(s) if s.metadata.index < snapshot_index => {
                return Err(StorageError::SnapshotOutOfDate)
            }
            Some(s) => (s.metadata.index, s.metadata.index),
            None => (snapshot_index, last_index),
        };
        if let Some(first) = self.entries.first() {
            if first.index <= base || first.index > base_last.next() {
                return Err(StorageError::Fatal(format!(
                    "append at {} does not fit a log covering ({base}, {base_last}]",
                    first.index
                )));
            }
            if self
                .entries
                .iter()
                .enumerate()
                .any(|(i, e)| e.index.0 != first.index.0 + i as u64)
            {
                return Err(StorageError::Fatal(
                    "entries to append are not contiguous".into(),
                ));
            }
        }
        Ok(())
    }
}

pub trait StorageWrite: Storage {
    /// Persists `write` atomically (all or nothing).
    fn write(&mut self, write: &LogWrite) -> Result<(), StorageError>;
    /// Records a snapshot the application took at `snapshot.metadata.index`
    /// (which must be in the log) and drops the entries it covers.
    fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageError>;
}

/// The in-memory log store.
///
/// Invariants: (1) `entries[i].index == snapshot.metadata.index + 1 + i`;
/// (2) `hard_state.commit <= last_index()` after any write from a correct core.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

impl MemStorage {
    /// An empty store: a node that will join an existing cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store for a founding member: a snapshot at index 1, term 1 holding the
    /// initial configuration, so every later member learns it the same way.
    pub fn new_bootstrap(conf_state: ConfState, data: Vec<u8>) -> Self {
        MemStorage {
            snapshot: bootstrap_snapshot(conf_state, data),
            hard_state: HardState {
                term: Term(1),
                vote: crate::types::NodeId::NONE,
                commit: Index(1),
            },
            entries: Vec::new(),
        }
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Every entry still in the log, for checks in tests.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }

    fn offset(&self) -> u64 {
        self.snapshot.metadata.index.0 + 1
    }

    /// Simulation only: forgets the durable vote, as a buggy disk would.
    pub fn fault_forget_vote(&mut self) {
        self.hard_state.vote = crate::types::NodeId::NONE;
    }

    /// Simulation only: drops every entry after `index` although it was
    /// acknowledged, as a disk that lies about fsync would.
    pub fn fault_truncate_after(&mut self, index: Index) {
        let keep = index.0.saturating_sub(self.offset() - 1) as usize;
        self.entries.truncate(keep);
        let last = self.last_index_now();
        if self.hard_state.commit > last {
            self.hard_state.commit = last;
        }
    }

    fn last_index_now(&self) -> Index {
        Index(self.offset() - 1 + self.entries.len() as u64)
    }

    /// Truncates any conflicting tail and appends; `write` has already
    /// checked the entries fit (`LogWrite::check_fits`).
    fn append_entries(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        self.entries
            .truncate((first.index.0 - self.offset()) as usize);
        self.entries.extend_from_slice(entries);
    }
}

/// The snapshot every founding member starts from.
pub fn bootstrap_snapshot(conf_state: ConfState, data: Vec<u8>) -> Snapshot {
    Snapshot {
        metadata: crate::types::SnapshotMetadata {
            index: Index(1),
            term: Term(1),
            conf_state,
        },
        data,
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState {
            hard_state: self.hard_state,
            conf_state: self.snapshot.metadata.conf_state.clone(),
        })
    }

    fn entries(&self, low: Index, high: Index, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        if low.0 < self.offset() {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index_now().next() || low > high {
            return Err(StorageError::Unavailable(high));
        }
        let lo = (low.0 - self.offset()) as usize;
        let hi = (high.0 - self.offset()) as usize;
        Ok(limit_size(&self.entries[lo..hi], max_size))
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snap = &self.snapshot.metadata;
        if index == snap.index {
            return Ok(snap.term);
        }
        if index < snap.index {
            return Err(StorageError::Compacted);
        }
        let i = (index.0 - self.offset()) as usize;
        self.entries
            .get(i)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable(index))
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(Index(self.offset()))
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.last_index_now())
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

impl StorageWrite for MemStorage {
    fn write(&mut self, write: &LogWrite) -> Result<(), StorageError> {
        // Validate everything first so a failed write changes nothing.
        write.check_fits(self.snapshot.metadata.index, self.last_index_now())?;
        if let Some(snap) = &write.snapshot {
            self.entries.clear();
            self.snapshot = snap.clone();
        }
        self.append_entries(&write.entries);
        if let Some(hs) = write.hard_state {
            self.hard_state = hs;
        }
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let index = snapshot.metadata.index;
        if index <= self.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if index > self.last_index_now() {
            return Err(StorageError::Unavailable(index));
        }
        if self.term(index)? != snapshot.metadata.term {
            return Err(StorageError::Fatal(format!(
                "snapshot term {} at {} does not match the log",
                snapshot.metadata.term, index
            )));
        }
        let drop = (index.0 + 1 - self.offset()) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
        Ok(())
    }
}

/// The longest prefix of `entries` within `max_size` bytes, and never empty
/// when `entries` is not.
pub fn limit_size(entries: &[Entry], max_size: u64) -> Vec<Entry> {
    let mut size = 0;
    let mut n = 0;
    for e in entries {
        size += e.size();
        if n > 0 && size > max_size {
            break;
        }
        n += 1;
    }
    entries[..n].to_vec()
}
