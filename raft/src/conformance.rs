//! The storage conformance suite: what every [`StorageWrite`] implementation
//! must do, as plain functions that panic with a clear message. The in-memory
//! store runs it in this crate's tests; the RocksDB store runs the same suite
//! with a harness that really closes and reopens the database.

use crate::error::StorageError;
use crate::storage::{LogWrite, Storage, StorageWrite};
use crate::types::{
    ConfState, Entry, EntryPayload, HardState, Index, NodeId, Snapshot, SnapshotMetadata, Term,
};

/// How the suite makes and reopens stores.
pub trait Harness {
    type Store: StorageWrite;
    /// A new, empty store.
    fn create(&mut self) -> Self::Store;
    /// Closes the store and opens it again from whatever it made durable.
    fn reopen(&mut self, store: Self::Store) -> Self::Store;
}

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index: Index(index),
        term: Term(term),
        payload: EntryPayload::Normal(data.as_bytes().to_vec()),
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term, &format!("e{i}"))).collect()
}

fn write_entries(store: &mut impl StorageWrite, es: Vec<Entry>) {
    store
        .write(&LogWrite {
            entries: es,
            sync: true,
            ..Default::default()
        })
        .expect("append");
}

/// Runs every check.
pub fn run_all<H: Harness>(h: &mut H) {
    empty_store(h);
    append_and_read(h);
    append_truncates_conflicting_tail(h);
    entries_respect_size_limit(h);
    hard_state_survives_reopen(h);
    snapshot_replaces_log(h);
    compact_drops_covered_entries(h);
    rejects_gaps_and_stale_snapshots(h);
    write_is_atomic(h);
}

pub fn empty_store<H: Harness>(h: &mut H) {
    let s = h.create();
    assert_eq!(
        s.first_index().unwrap(),
        Index(1),
        "empty store: first index"
    );
    assert_eq!(s.last_index().unwrap(), Index(0), "empty store: last index");
    assert_eq!(
        s.term(Index(0)).unwrap(),
        Term(0),
        "empty store: term of index 0"
    );
    assert_eq!(s.initial_state().unwrap().hard_state, HardState::default());
}

pub fn append_and_read<H: Harness>(h: &mut H) {
    let mut s = h.create();
    write_entries(&mut s, entries(1..=5, 1));
    write_entries(&mut s, entries(6..=8, 2));
    let s = h.reopen(s);
    assert_eq!(s.last_index().unwrap(), Index(8));
    assert_eq!(s.term(Index(5)).unwrap(), Term(1));
    assert_eq!(s.term(Index(6)).unwrap(), Term(2));
    let got = s.entries(Index(4), Index(7), u64::MAX).unwrap();
    assert_eq!(
        got,
        vec![entry(4, 1, "e4"), entry(5, 1, "e5"), entry(6, 2, "e6")]
    );
    assert!(matches!(
        s.term(Index(9)),
        Err(StorageError::Unavailable(_))
    ));
    assert!(
        s.entries(Index(7), Index(10), u64::MAX).is_err(),
        "reading past the end fails"
    );
}

pub fn append_truncates_conflicting_tail<H: Harness>(h: &mut H) {
    let mut s = h.create();
    write_entries(&mut s, entries(1..=6, 1));
    write_entries(&mut s, entries(4..=4, 3));
    let s = h.reopen(s);
    assert_eq!(
        s.last_index().unwrap(),
        Index(4),
        "entries after the new tail are gone"
    );
    assert_eq!(s.term(Index(4)).unwrap(), Term(3));
    assert_eq!(s.term(Index(3)).unwrap(), Term(1));
}

pub fn entries_respect_size_limit<H: Harness>(h: &mut H) {
    let mut s = h.create();
    write_entries(&mut s, entries(1..=10, 1));
    let one = entry(1, 1, "e1").size();
    assert_eq!(
        s.entries(Index(1), Index(11), 0).unwrap().len(),
        1,
        "always at least one entry"
    );
    assert_eq!(s.entries(Index(1), Index(11), one * 3).unwrap().len(), 3);
}

pub fn hard_state_survives_reopen<H: Harness>(h: &mut H) {
    let mut s = h.create();
    write_entries(&mut s, entries(1..=3, 2));
    let hs = HardState {
        term: Term(4),
        vote: NodeId(2),
        commit: Index(3),
    };
    s.write(&LogWrite {
        hard_state: Some(hs),
        sync: true,
        ..Default::default()
    })
    .unwrap();
    let s = h.reopen(s);
    assert_eq!(
        s.initial_state().unwrap().hard_state,
        hs,
        "term, vote and commit are durable"
    );
}

fn snapshot(index: u64, term: u64) -> Snapshot {
    Snapshot {
        metadata: SnapshotMetadata {
            index: Index(index),
            term: Term(term),
            conf_state: ConfState::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
        },
        data: b"state".to_vec(),
    }
}

pub fn snapshot_replaces_log<H: Harness>(h: &mut H) {
    let mut s = h.create();
    write_entries(&mut s, entries(1..=3, 1));
    let snap = snapshot(10, 2);
    let write = LogWrite {
        snapshot: Some(snap.clone()),
        entries: entries(11..=12, 2),
        sync: true,
        ..Default::default()
    };
    s.write(&write).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.first_index().unwrap(), Index(11));
    assert_eq!(s.last_index().unwrap(), Index(12));
    assert_eq!(
        s.term(Index(10)).unwrap(),
        Term(2),
        "term at the snapshot index"
    );
    assert!(matches!(s.term(Index(3)), Err(StorageError::Compacted)));
    assert_eq!(s.snapshot().unwrap(), snap);
    assert_eq!(
        s.initial_state().unwrap().conf_state,
        snap.metadata.conf_state
    );
}

pub fn compact_drops_covered_entries<H: Harness>(h: &mut H) {
    let mut s = h.create();
    write_entries(&mut s, entries(1..=10, 1));
    s.compact(snapshot(6, 1)).unwrap();
    let s = h.reopen(s);
    assert_eq!(s.first_index().unwrap(), Index(7));
    assert_eq!(s.last_index().unwrap(), Index(10));
    assert!(matches!(
        s.entries(Index(5), Index(8), u64::MAX),
        Err(StorageError::Compacted)
    ));
    assert_eq!(s.snapshot().unwrap().metadata.index, Index(6));
}

pub fn rejects_gaps_and_stale_snapshots<H: Harness>(h: &mut H) {
    let mut s = h.create();
    write_entries(&mut s, entries(1..=3, 1));
    let gap = LogWrite {
        entries: entries(6..=6, 1),
        ..Default::default()
    };
    assert!(s.write(&gap).is_err(), "a gap is refused");
    s.compact(snapshot(2, 1)).unwrap();
    assert!(
        s.compact(snapshot(1, 1)).is_err(),
        "an older snapshot is refused"
    );
    assert!(
        s.compact(snapshot(9, 1)).is_err(),
        "a snapshot past the log is refused"
    );
    assert!(
        s.compact(snapshot(3, 7)).is_err(),
        "a snapshot whose term disagrees with the log is refused"
    );
    assert_eq!(
        s.last_index().unwrap(),
        Index(3),
        "failed calls changed nothing"
    );
    assert_eq!(s.first_index().unwrap(), Index(3));
}

pub fn write_is_atomic<H: Harness>(h: &mut H) {
    let mut s = h.create();
    write_entries(&mut s, entries(1..=3, 1));
    // The entries part is invalid (a gap), so the hard state must not land either.
    let bad = LogWrite {
        entries: entries(7..=7, 1),
        hard_state: Some(HardState {
            term: Term(9),
            vote: NodeId(1),
            commit: Index(1),
        }),
        ..Default::default()
    };
    assert!(s.write(&bad).is_err());
    let s = h.reopen(s);
    assert_eq!(
        s.initial_state().unwrap().hard_state.term,
        Term(0),
        "a failed write leaves nothing behind"
    );
}

/// The in-memory store's harness: reopening keeps the value as it is.
pub struct MemHarness;

impl Harness for MemHarness {
    type Store = crate::storage::MemStorage;
    fn create(&mut self) -> Self::Store {
        crate::storage::MemStorage::new()
    }
    fn reopen(&mut self, store: Self::Store) -> Self::Store {
        store
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_storage_conforms() {
        super::run_all(&mut super::MemHarness);
    }
}
