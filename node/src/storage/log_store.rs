//! The Raft log, hard state and latest snapshot in RocksDB: the durable twin
//! of `nod_raft::MemStorage`, held to the same conformance suite.
//!
//! Layout: column family `log` maps an index (8 bytes, big-endian, so keys
//! sort by index) to an entry record; column family `meta` holds the
//! `hard_state` and `snapshot` records (see `codec`). Every `write` is one
//! RocksDB write batch, synced when the Ready asks for it: one fsync per
//! Ready however many entries it carries. Opening scans and verifies the whole
//! log (checksums, contiguity, keys matching indexes), so a torn or corrupt
//! record is reported with its index before the node uses it. RocksDB's own
//! LOCK file keeps a second process off the directory.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use nod_raft::{
    bootstrap_snapshot, ConfState, Entry, HardState, Index, LogWrite, NodeId, RaftState, Snapshot,
    Storage, StorageError, StorageWrite, Term,
};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::codec;

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_SNAPSHOT: &[u8] = b"snapshot";

fn key(index: Index) -> [u8; 8] {
    index.0.to_be_bytes()
}

fn fatal(context: impl std::fmt::Display, e: impl std::fmt::Display) -> StorageError {
    StorageError::Fatal(format!("{context}: {e}"))
}

pub struct LogStore {
    db: DB,
    path: PathBuf,
    hard_state: HardState,
    snapshot: Snapshot,
    last_index: Index,
    /// The terms of the log's newest entries, `terms_first..=last_index`
    /// (at most `TERM_CACHE` of them): the leader asks for terms on every
    /// append and answer, and a RocksDB read plus a decode each time was a
    /// tenth of its CPU under load.
    terms: VecDeque<Term>,
    terms_first: Index,
    /// The log's newest entries, `recent_first..=last_index`, at most
    /// `RECENT_BYTES` of them (entry sizes): every Ready reads back the
    /// entries it commits, on every member, and reading them from RocksDB
    /// (an iterator, a checksum and a decode per entry) was about 4% of the
    /// members' CPU under load. A follower far behind is served from disk.
    recent: VecDeque<Entry>,
    recent_first: Index,
    recent_bytes: u64,
}

const TERM_CACHE: usize = 1 << 16;
const RECENT_BYTES: u64 = 4 << 20;

impl LogStore {
    /// Opens (creating if needed) the log store in `dir`, verifying every record.
    pub fn open(dir: &Path) -> Result<LogStore, StorageError> {
        let opts = super::tuning::db_options();
        let cache = super::tuning::block_cache();
        let cfs = [CF_LOG, CF_META]
            .map(|name| ColumnFamilyDescriptor::new(name, super::tuning::cf_options(&cache)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            let text = e.to_string();
            if text.to_ascii_lowercase().contains("lock") {
                StorageError::Fatal(format!(
                    "data directory {} is in use by another process (its RocksDB LOCK is held): {text}",
                    dir.display()
                ))
            } else {
                fatal(format_args!("cannot open the log store in {}", dir.display()), text)
            }
        })?;
        let mut store = LogStore {
            db,
            path: dir.to_path_buf(),
            hard_state: HardState::default(),
            snapshot: Snapshot::default(),
            last_index: Index(0),
            terms: VecDeque::new(),
            terms_first: Index(1),
            recent: VecDeque::new(),
            recent_first: Index(1),
            recent_bytes: 0,
        };
        store.load()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes an empty store a founding member's: the initial configuration in
    /// a snapshot at index 1 (see `nod_raft::MemStorage::new_bootstrap`).
    pub fn bootstrap(&mut self, conf_state: ConfState, data: Vec<u8>) -> Result<(), StorageError> {
        if self.hard_state != HardState::default()
            || !self.snapshot.is_empty()
            || self.last_index != Index(0)
        {
            return Err(StorageError::Fatal(format!(
                "{} already holds a Raft log; refusing to bootstrap over it",
                self.path.display()
            )));
        }
        let write = LogWrite {
            snapshot: Some(bootstrap_snapshot(conf_state, data)),
            entries: Vec::new(),
            hard_state: Some(HardState {
                term: Term(1),
                vote: NodeId::NONE,
                commit: Index(1),
            }),
            sync: true,
        };
        self.write(&write)
    }

    fn load(&mut self) -> Result<(), StorageError> {
        let meta = cf(&self.db, CF_META);
        if let Some(v) = self
            .db
            .get_cf(meta, KEY_HARD_STATE)
            .map_err(|e| fatal("reading the hard state", e))?
        {
            self.hard_state =
                codec::decode_hard_state(&v).map_err(|e| fatal("corrupt hard state", e))?;
        }
        if let Some(v) = self
            .db
            .get_cf(meta, KEY_SNAPSHOT)
            .map_err(|e| fatal("reading the snapshot", e))?
        {
            self.snapshot =
                codec::decode_snapshot(&v).map_err(|e| fatal("corrupt snapshot record", e))?;
        }
        let mut expect = self.snapshot.metadata.index.next();
        let (mut terms, mut terms_first) = (VecDeque::new(), expect);
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_LOG), IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| fatal("reading the log", e))?;
            let index = decode_key(&k)?;
            if index != expect {
                return Err(StorageError::Fatal(format!(
                    "log is not contiguous: found index {index} where {expect} was expected"
                )));
            }
            let (term, at) = codec::decode_entry_head(&v)
                .map_err(|e| fatal(format_args!("corrupt log record at index {index}"), e))?;
            if at != index {
                return Err(StorageError::Fatal(format!(
                    "log record at key {index} holds entry {at}"
                )));
            }
            cache_term(&mut terms, &mut terms_first, index, term);
            expect = expect.next();
        }
        self.last_index = expect.prev();
        self.terms = terms;
        self.terms_first = terms_first;
        if self.terms.is_empty() {
            self.terms_first = self.last_index.next();
        }
        Ok(())
    }

    /// Records the term of `index`, which follows the cached tail or
    /// replaces part of it (a conflicting suffix is dropped).
    fn cache_term(&mut self, index: Index, term: Term) {
        cache_term(&mut self.terms, &mut self.terms_first, index, term);
    }

    /// Adds what a write appended to the recent entries: they follow the
    /// cached ones or replace part of them (a conflicting suffix is dropped).
    fn cache_entries(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let end = self.recent_first.0 + self.recent.len() as u64;
        if first.index < self.recent_first || first.index.0 > end {
            self.reset_recent(first.index);
        } else {
            let keep = (first.index.0 - self.recent_first.0) as usize;
            for e in self.recent.drain(keep..) {
                self.recent_bytes -= e.size();
            }
            if self.recent.is_empty() {
                self.recent_first = first.index;
            }
        }
        for e in entries {
            self.recent_bytes += e.size();
            self.recent.push_back(e.clone());
        }
        while self.recent_bytes > RECENT_BYTES && self.drop_oldest_recent() {}
    }

    /// Empties the recent entries; the next one cached will be `first`.
    fn reset_recent(&mut self, first: Index) {
        self.recent.clear();
        self.recent_bytes = 0;
        self.recent_first = first;
    }

    /// Drops the oldest recent entry; false if there was none.
    fn drop_oldest_recent(&mut self) -> bool {
        let Some(e) = self.recent.pop_front() else {
            return false;
        };
        self.recent_bytes -= e.size();
        self.recent_first = self.recent_first.next();
        true
    }

    /// Drops the recent entries up to `index` (compacted behind a snapshot).
    fn uncache_to(&mut self, index: Index) {
        while self.recent_first <= index && self.drop_oldest_recent() {}
        if self.recent.is_empty() {
            self.recent_first = self.last_index.next();
        }
    }

    fn cached_term(&self, index: Index) -> Option<Term> {
        let offset = index.0.checked_sub(self.terms_first.0)?;
        self.terms.get(usize::try_from(offset).ok()?).copied()
    }
}

fn cache_term(terms: &mut VecDeque<Term>, first: &mut Index, index: Index, term: Term) {
    let end = first.0 + terms.len() as u64;
    if index < *first || index.0 > end {
        // Before the cached tail, or past it with a gap: start over.
        terms.clear();
    } else {
        terms.truncate((index.0 - first.0) as usize);
    }
    if terms.is_empty() {
        *first = index;
    }
    terms.push_back(term);
    if terms.len() > TERM_CACHE {
        terms.pop_front();
        *first = first.next();
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created at open")
}

fn decode_key(k: &[u8]) -> Result<Index, StorageError> {
    let bytes: [u8; 8] = k
        .try_into()
        .map_err(|_| StorageError::Fatal(format!("log key of {} bytes, want 8", k.len())))?;
    Ok(Index(u64::from_be_bytes(bytes)))
}

impl Storage for LogStore {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        Ok(RaftState {
            hard_state: self.hard_state,
            conf_state: self.snapshot.metadata.conf_state.clone(),
        })
    }

    fn entries(&self, low: Index, high: Index, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        if low <= self.snapshot.metadata.index {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index.next() || low > high {
            return Err(StorageError::Unavailable(high));
        }
        let mut out = Vec::new();
        let mut size = 0;
        if low >= self.recent_first && !self.recent.is_empty() {
            // The cache ends at last_index, so it holds all of low..high.
            let from = (low.0 - self.recent_first.0) as usize;
            let to = (high.0 - self.recent_first.0) as usize;
            for e in self.recent.range(from..to) {
                size += e.size();
                if !out.is_empty() && size > max_size {
                    break;
                }
                out.push(e.clone());
            }
            return Ok(out);
        }
        let start = key(low);
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_LOG),
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut expect = low;
        for item in iter {
            if expect >= high {
                break;
            }
            let (k, v) = item.map_err(|e| fatal("reading the log", e))?;
            let index = decode_key(&k)?;
            if index != expect {
                return Err(StorageError::Fatal(format!(
                    "log has a gap: {index} where {expect} was expected"
                )));
            }
            let corrupt = |e| fatal(format_args!("corrupt log record at index {index}"), e);
            // Sized before it is decoded: the entry that would pass
            // max_size is not copied out only to be dropped.
            size += codec::entry_size(&v).map_err(corrupt)?;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(codec::decode_entry(&v).map_err(corrupt)?);
            expect = expect.next();
        }
        if out.is_empty() && low < high {
            return Err(StorageError::Fatal(format!("log entry {low} is missing")));
        }
        Ok(out)
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snap = &self.snapshot.metadata;
        if index == snap.index {
            return Ok(snap.term);
        }
        if index < snap.index {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index {
            return Err(StorageError::Unavailable(index));
        }
        if let Some(t) = self.cached_term(index) {
            return Ok(t);
        }
        let v = self
            .db
            .get_cf(cf(&self.db, CF_LOG), key(index))
            .map_err(|e| fatal("reading the log", e))?
            .ok_or_else(|| StorageError::Fatal(format!("log entry {index} is missing")))?;
        let entry = codec::decode_entry(&v)
            .map_err(|e| fatal(format_args!("corrupt log record at index {index}"), e))?;
        Ok(entry.term)
    }

    fn first_index(&self) -> Result<Index, StorageError> {
        Ok(self.snapshot.metadata.index.next())
    }

    fn last_index(&self) -> Result<Index, StorageError> {
        Ok(self.last_index)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

impl StorageWrite for LogStore {
    fn write(&mut self, write: &LogWrite) -> Result<(), StorageError> {
        write.check_fits(self.snapshot.metadata.index, self.last_index)?;
        let (log, meta) = (cf(&self.db, CF_LOG), cf(&self.db, CF_META));
        let mut batch = WriteBatch::default();
        let mut last = self.last_index;
        if let Some(snap) = &write.snapshot {
            // The snapshot replaces the whole log.
            batch.delete_range_cf(log, key(Index(0)), key(Index(u64::MAX)));
            batch.put_cf(meta, KEY_SNAPSHOT, codec::encode_snapshot(snap));
            last = snap.metadata.index;
        }
        if let Some(first) = write.entries.first() {
            // Drop a conflicting tail, if there is one, then append. Only
            // then: a range tombstone per append piles up in the memtable,
            // and every read fragments them all (puts slowed from ~3 ms to
            // ~30 ms within a thousand writes).
            if first.index <= self.last_index && write.snapshot.is_none() {
                batch.delete_range_cf(log, key(first.index), key(self.last_index.next()));
            }
            for e in &write.entries {
                batch.put_cf(log, key(e.index), codec::encode_entry(e));
            }
            last = write.entries.last().expect("not empty").index;
        }
        if let Some(hs) = &write.hard_state {
            batch.put_cf(meta, KEY_HARD_STATE, codec::encode_hard_state(hs));
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(write.sync);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| fatal("writing the log", e))?;
        if let Some(snap) = &write.snapshot {
            self.snapshot = snap.clone();
            self.terms.clear();
            self.terms_first = snap.metadata.index.next();
            self.reset_recent(snap.metadata.index.next());
        }
        for e in &write.entries {
            self.cache_term(e.index, e.term);
        }
        self.cache_entries(&write.entries);
        if let Some(hs) = write.hard_state {
            self.hard_state = hs;
        }
        self.last_index = last;
        Ok(())
    }

    fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let index = snapshot.metadata.index;
        if index <= self.snapshot.metadata.index {
            return Err(StorageError::SnapshotOutOfDate);
        }
        if index > self.last_index {
            return Err(StorageError::Unavailable(index));
        }
        if self.term(index)? != snapshot.metadata.term {
            return Err(StorageError::Fatal(format!(
                "snapshot term {} at {index} does not match the log",
                snapshot.metadata.term
            )));
        }
        let (log, meta) = (cf(&self.db, CF_LOG), cf(&self.db, CF_META));
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, KEY_SNAPSHOT, codec::encode_snapshot(&snapshot));
        batch.delete_range_cf(log, key(self.snapshot.metadata.index), key(index.next()));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(|e| fatal("compacting the log", e))?;
        while self.terms_first <= index && self.terms.pop_front().is_some() {
            self.terms_first = self.terms_first.next();
        }
        if self.terms.is_empty() {
            self.terms_first = self.last_index.next();
        }
        self.uncache_to(index);
        self.snapshot = snapshot;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_raft::{Entry, EntryPayload, SnapshotMetadata};

    fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to)
            .map(|i| Entry {
                index: Index(i),
                term: Term(term),
                payload: EntryPayload::Normal(vec![i as u8]),
            })
            .collect()
    }

    fn append(s: &mut LogStore, e: Vec<Entry>) {
        s.write(&LogWrite {
            entries: e,
            sync: false,
            ..Default::default()
        })
        .unwrap();
    }

    /// The term as stored on disk, bypassing the cache.
    fn disk_term(s: &LogStore, i: u64) -> Term {
        let v =
            s.db.get_cf(cf(&s.db, CF_LOG), key(Index(i)))
                .unwrap()
                .unwrap();
        codec::decode_entry(&v).unwrap().term
    }

    fn snapshot_at(index: u64, term: u64) -> Snapshot {
        Snapshot {
            metadata: SnapshotMetadata {
                index: Index(index),
                term: Term(term),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The entries as stored on disk, bypassing the cache.
    fn disk_entries(s: &LogStore, low: u64, high: u64) -> Vec<Entry> {
        (low..high)
            .map(|i| {
                let v =
                    s.db.get_cf(cf(&s.db, CF_LOG), key(Index(i)))
                        .unwrap()
                        .unwrap();
                codec::decode_entry(&v).unwrap()
            })
            .collect()
    }

    #[test]
    fn recent_entries_always_match_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        let check = |s: &LogStore| {
            let (first, last) = (s.first_index().unwrap().0, s.last_index().unwrap().0);
            for low in first..=last {
                for high in low..=last + 1 {
                    assert_eq!(
                        s.entries(Index(low), Index(high), u64::MAX).unwrap(),
                        disk_entries(s, low, high),
                        "entries {low}..{high}"
                    );
                }
            }
            // A size limit still returns at least one entry.
            if first <= last {
                assert_eq!(
                    s.entries(Index(first), Index(last + 1), 0).unwrap().len(),
                    1
                );
            }
        };
        append(&mut s, entries(1, 6, 1));
        assert!(!s.recent.is_empty(), "appends are cached");
        check(&s);
        append(&mut s, entries(4, 4, 3)); // a conflicting tail, shorter
        check(&s);
        append(&mut s, entries(5, 8, 3));
        append(&mut s, entries(2, 3, 4)); // overwrites all but the first
        assert_eq!(s.last_index().unwrap(), Index(3));
        check(&s);
        append(&mut s, entries(4, 10, 4));
        let snap = snapshot_at(6, 4);
        s.compact(snap).unwrap();
        assert_eq!(
            s.recent_first,
            Index(7),
            "compacted entries leave the cache"
        );
        assert!(matches!(
            s.entries(Index(6), Index(8), u64::MAX),
            Err(StorageError::Compacted)
        ));
        check(&s);
        // Past the cache's byte budget, the oldest entries are read from disk.
        let big = |from: u64, to: u64| -> Vec<Entry> {
            (from..=to)
                .map(|i| Entry {
                    index: Index(i),
                    term: Term(4),
                    payload: EntryPayload::Normal(vec![i as u8; 1 << 20]),
                })
                .collect()
        };
        append(&mut s, big(11, 16));
        assert!(s.recent_bytes <= RECENT_BYTES);
        assert!(s.recent_first > Index(11), "the oldest left the cache");
        assert_eq!(
            s.entries(Index(7), Index(17), u64::MAX).unwrap(),
            disk_entries(&s, 7, 17)
        );
        assert_eq!(
            s.entries(Index(15), Index(17), u64::MAX).unwrap(),
            disk_entries(&s, 15, 17)
        );
        // A snapshot that replaces the log empties the cache.
        let snap = snapshot_at(20, 5);
        s.write(&LogWrite {
            snapshot: Some(snap),
            entries: entries(21, 23, 5),
            sync: false,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.recent_first, Index(21));
        check(&s);
        drop(s);
        let s = LogStore::open(dir.path()).unwrap();
        assert!(s.recent.is_empty(), "a reopened store reads from disk");
        check(&s);
    }

    #[test]
    fn cached_terms_always_match_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        append(&mut s, entries(1, 6, 1));
        append(&mut s, entries(4, 4, 3)); // a conflicting tail, shorter
        append(&mut s, entries(5, 8, 3));
        append(&mut s, entries(2, 3, 4)); // overwrites all but the first
        let check = |s: &LogStore| {
            for i in s.first_index().unwrap().0..=s.last_index().unwrap().0 {
                assert_eq!(s.term(Index(i)).unwrap(), disk_term(s, i), "index {i}");
            }
            assert!(s.term(s.last_index().unwrap().next()).is_err());
        };
        assert_eq!(s.last_index().unwrap(), Index(3));
        assert_eq!(s.term(Index(3)).unwrap(), Term(4));
        check(&s);
        append(&mut s, entries(4, 10, 4));
        let snap = snapshot_at(6, 4);
        s.compact(snap).unwrap();
        assert_eq!(s.term(Index(6)).unwrap(), Term(4));
        assert!(matches!(s.term(Index(5)), Err(StorageError::Compacted)));
        check(&s);
        drop(s);
        let s = LogStore::open(dir.path()).unwrap();
        check(&s);
    }
}
