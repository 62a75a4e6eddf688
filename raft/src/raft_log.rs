//! The log as the core sees it: the durable part behind [`Storage`] and the
//! unstable tail (entries and a snapshot) not yet handed to the driver for
//! persistence, plus the commit and apply marks. The lineage is etcd-io/raft's
//! `raftLog` and `unstable`.
//!
//! Invariants: (1) `applied <= committed <= last_index()`;
//! (2) unstable entries start at `unstable_offset` and are contiguous;
//! (3) everything below `unstable_offset` is in storage (or the unstable snapshot).

use crate::error::StorageError;
use crate::storage::{limit_size, Storage};
use crate::types::{Entry, Index, Snapshot, Term};

pub struct RaftLog<S: Storage> {
    pub storage: S,
    unstable_snapshot: Option<Snapshot>,
    unstable: Vec<Entry>,
    /// Index of `unstable[0]` (or of the next entry to append).
    unstable_offset: Index,
    pub committed: Index,
    pub applied: Index,
}

impl<S: Storage> RaftLog<S> {
    pub fn new(storage: S) -> Result<Self, StorageError> {
        let first = storage.first_index()?;
        let last = storage.last_index()?;
        Ok(RaftLog {
            storage,
            unstable_snapshot: None,
            unstable: Vec::new(),
            unstable_offset: last.next(),
            committed: first.prev(),
            applied: first.prev(),
        })
    }

    pub fn first_index(&self) -> Result<Index, StorageError> {
        match &self.unstable_snapshot {
            Some(s) => Ok(s.metadata.index.next()),
            None => self.storage.first_index(),
        }
    }

    pub fn last_index(&self) -> Index {
        if let Some(e) = self.unstable.last() {
            return e.index;
        }
        self.unstable_offset.prev()
    }

    /// The last index that is durable (handed out and acknowledged by `stable_to`).
    pub fn stable_last_index(&self) -> Index {
        self.unstable_offset.prev()
    }

    pub fn last_term(&self) -> Term {
        self.term(self.last_index()).unwrap_or(Term(0))
    }

    /// The term of the entry at `index`; `Compacted` below the snapshot,
    /// `Unavailable` past the end.
    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index > self.last_index() {
            return Err(StorageError::Unavailable(index));
        }
        if index >= self.unstable_offset {
            let i = (index.0 - self.unstable_offset.0) as usize;
            return Ok(self.unstable[i].term);
        }
        if let Some(s) = &self.unstable_snapshot {
            if index == s.metadata.index {
                return Ok(s.metadata.term);
            }
            return Err(StorageError::Compacted);
        }
        self.storage.term(index)
    }

    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index).map(|t| t == term).unwrap_or(false)
    }

    /// Is a log ending at (`last_index`, `last_term`) at least as up to date as ours (§5.4.1)?
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let our_term = self.last_term();
        last_term > our_term || (last_term == our_term && last_index >= self.last_index())
    }

    /// The index of the first entry in `entries` that is not in our log with the
    /// same term, if any.
    pub fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries
            .iter()
            .find(|e| !self.match_term(e.index, e.term))
            .map(|e| e.index)
    }

    /// The largest index ≤ `index` whose term is ≤ `term`, with that term: where a
    /// leader and a follower can next agree (fast back-off).
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Ok(t) if t <= term => return (i, t),
                Ok(_) if i.0 > 0 => i = i.prev(),
                // Compacted entries are committed, so they agree with any leader.
                _ => return (i, Term(0)),
            }
        }
    }

    /// Appends entries (truncating a conflicting unstable or stable tail) and
    /// returns the new last index.
    pub fn append(&mut self, entries: &[Entry]) -> Index {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        let after = first.index;
        assert!(
            after > self.committed,
            "append at {} would overwrite committed index {}",
            after,
            self.committed
        );
        if after == self.last_index().next() {
            // Plain append.
        } else if after <= self.unstable_offset {
            // The new entries replace everything from `after`, including durable ones:
            // the storage write truncates its own tail.
            self.unstable.clear();
            self.unstable_offset = after;
        } else {
            let keep = (after.0 - self.unstable_offset.0) as usize;
            self.unstable.truncate(keep);
        }
        self.unstable.extend_from_slice(entries);
        self.last_index()
    }

    /// Entries in `[low, high)`, at most `max_size` bytes (at least one).
    pub fn slice(
        &self,
        low: Index,
        high: Index,
        max_size: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if low < self.first_index()? {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index().next() {
            return Err(StorageError::Unavailable(high));
        }
        let mut out = Vec::new();
        if low < self.unstable_offset {
            let stable_high = high.min(self.unstable_offset);
            out = self.storage.entries(low, stable_high, max_size)?;
            if (out.len() as u64) < stable_high.0 - low.0 {
                return Ok(out); // size limit reached inside storage
            }
        }
        if high > self.unstable_offset {
            let from = low.max(self.unstable_offset);
            let lo = (from.0 - self.unstable_offset.0) as usize;
            let hi = (high.0 - self.unstable_offset.0) as usize;
            let used: u64 = out.iter().map(Entry::size).sum();
            if out.is_empty() {
                out = limit_size(&self.unstable[lo..hi], max_size);
            } else {
                for e in &self.unstable[lo..hi] {
                    if used + e.size() > max_size {
                        break;
                    }
                    out.push(e.clone());
                }
            }
        }
        Ok(out)
    }

    pub fn entries_from(&self, low: Index, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        self.slice(low, self.last_index().next(), max_size)
    }

    pub fn commit_to(&mut self, index: Index) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {} is beyond last index {}: the log was truncated or lost",
                index,
                self.last_index()
            );
            self.committed = index;
        }
    }

    pub fn applied_to(&mut self, index: Index) {
        if index > self.applied {
            assert!(
                index <= self.committed,
                "applied {} is beyond committed {}",
                index,
                self.committed
            );
            self.applied = index;
        }
    }

    pub fn unstable_entries(&self) -> &[Entry] {
        &self.unstable
    }

    pub fn unstable_snapshot(&self) -> Option<&Snapshot> {
        self.unstable_snapshot.as_ref()
    }

    /// Committed entries that are durable here and not yet handed to the
    /// application. Applying only durable entries keeps the state machine from
    /// running ahead of a log it could lose in a crash.
    pub fn next_committed_entries(&self, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        if self.unstable_snapshot.is_some() {
            return Ok(Vec::new());
        }
        let low = self.applied.next().max(self.first_index()?);
        let high = self.committed.min(self.stable_last_index()).next();
        self.slice(low, high, max_size)
    }

    pub fn has_next_committed_entries(&self) -> bool {
        self.unstable_snapshot.is_none()
            && self.committed.min(self.stable_last_index()) > self.applied
    }

    /// The driver persisted everything up to (`index`, `term`).
    pub fn stable_to(&mut self, index: Index, term: Term) {
        if index < self.unstable_offset {
            return;
        }
        let i = (index.0 - self.unstable_offset.0) as usize;
        if self.unstable.get(i).map(|e| e.term) == Some(term) {
            self.unstable.drain(..=i);
            self.unstable_offset = index.next();
        }
    }

    pub fn stable_snapshot_to(&mut self, index: Index) {
        if self.unstable_snapshot.as_ref().map(|s| s.metadata.index) == Some(index) {
            self.unstable_snapshot = None;
        }
    }

    /// Replaces the log with `snapshot` (follower catching up).
    pub fn restore(&mut self, snapshot: Snapshot) {
        let index = snapshot.metadata.index;
        self.committed = index;
        self.unstable.clear();
        self.unstable_offset = index.next();
        self.unstable_snapshot = Some(snapshot);
    }

    /// The snapshot to send a lagging follower.
    pub fn snapshot(&self) -> Result<Snapshot, StorageError> {
        match &self.unstable_snapshot {
            Some(s) => Ok(s.clone()),
            None => self.storage.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LogWrite, MemStorage, StorageWrite};
    use crate::types::EntryPayload;
    use proptest::prelude::*;

    fn log_with_terms(terms: &[u64]) -> RaftLog<MemStorage> {
        let mut s = MemStorage::new();
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry {
                index: Index(i as u64 + 1),
                term: Term(t),
                payload: EntryPayload::Empty,
            })
            .collect();
        s.write(&LogWrite {
            entries,
            ..Default::default()
        })
        .unwrap();
        RaftLog::new(s).unwrap()
    }

    /// Non-decreasing terms, as in any Raft log.
    fn terms() -> impl Strategy<Value = Vec<u64>> {
        prop::collection::vec(0u64..3, 0..30).prop_map(|steps| {
            let mut t = 1;
            steps
                .into_iter()
                .map(|s| {
                    t += s;
                    t
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn find_conflict_by_term_matches_naive(terms in terms(), index in 0u64..35, term in 0u64..50) {
            let log = log_with_terms(&terms);
            let term_of = |i: u64| if i == 0 { 0 } else { terms[(i - 1) as usize] };
            let start = index.min(terms.len() as u64);
            let want = (0..=start).rev().find(|&i| term_of(i) <= term).map(|i| (Index(i), Term(term_of(i)))).unwrap();
            prop_assert_eq!(log.find_conflict_by_term(Index(index), Term(term)), want);
        }

        #[test]
        fn find_conflict_matches_naive(terms in terms(), start in 1u64..32, other in prop::collection::vec(1u64..60, 0..10)) {
            let log = log_with_terms(&terms);
            let mut t = 0;
            let incoming: Vec<Entry> = other.iter().enumerate().map(|(k, &x)| {
                t = t.max(x);
                Entry { index: Index(start + k as u64), term: Term(t), payload: EntryPayload::Empty }
            }).collect();
            let want = incoming.iter().find(|e| {
                let i = e.index.0 as usize;
                i > terms.len() || terms[i - 1] != e.term.0
            }).map(|e| e.index);
            prop_assert_eq!(log.find_conflict(&incoming), want);
        }
    }

    #[test]
    fn unstable_tail_is_truncated_and_sliced_with_storage() {
        let mut log = log_with_terms(&[1, 1, 2]);
        let e = |i: u64, t: u64| Entry {
            index: Index(i),
            term: Term(t),
            payload: EntryPayload::Empty,
        };
        log.append(&[e(4, 2), e(5, 2)]);
        assert_eq!(log.last_index(), Index(5));
        assert_eq!(log.stable_last_index(), Index(3));
        // A conflicting entry at 3 replaces durable and unstable entries after it.
        log.append(&[e(3, 3)]);
        assert_eq!(log.last_index(), Index(3));
        assert_eq!(log.term(Index(3)).unwrap(), Term(3));
        let all = log.slice(Index(1), Index(4), u64::MAX).unwrap();
        assert_eq!(
            all.iter().map(|e| e.term.0).collect::<Vec<_>>(),
            vec![1, 1, 3]
        );
    }
}
