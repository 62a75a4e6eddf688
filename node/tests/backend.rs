//! The backend contract below `KvStore`, for what the state machine's
//! suite (`kv_store.rs`) does not reach through its API yet: range
//! deletes, descending scans, and the secondary-index keyspace, on both
//! backends (RocksDB closed and reopened from disk; memory carried through
//! its snapshot image). Then RocksDB's own case: a checkpoint written
//! before the secondary keyspace existed.

use nod::storage::backend::{Backend, Batch, Keyspace, MemoryBackend, RocksBackend};

/// How the contract makes and reopens backends.
trait Harness {
    type B: Backend;
    fn create(&mut self) -> Self::B;
    /// Closes the backend and opens what it wrote.
    fn reopen(&mut self, b: Self::B) -> Self::B;
}

struct Rocks(tempfile::TempDir);

impl Harness for Rocks {
    type B = RocksBackend;
    fn create(&mut self) -> RocksBackend {
        RocksBackend::open(&self.0.path().join("kv")).unwrap()
    }
    fn reopen(&mut self, b: RocksBackend) -> RocksBackend {
        let path = b.path().to_path_buf();
        drop(b);
        RocksBackend::open(&path).unwrap()
    }
}

struct Memory;

impl Harness for Memory {
    type B = MemoryBackend;
    fn create(&mut self) -> MemoryBackend {
        MemoryBackend::new()
    }
    fn reopen(&mut self, b: MemoryBackend) -> MemoryBackend {
        MemoryBackend::from_bytes(&b.to_bytes()).unwrap()
    }
}

macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod rocksdb {
            $(#[test]
            fn $check() {
                super::$check(&mut super::Rocks(tempfile::tempdir().unwrap()));
            })*
        }
        mod memory {
            $(#[test]
            fn $check() {
                super::$check(&mut super::Memory);
            })*
        }
    };
}

contract!(
    a_range_delete_removes_exactly_its_range,
    a_descending_scan_stops_before_its_bound,
    every_keyspace_is_kept_apart,
);

fn keys<B: Backend>(b: &B, keyspace: Keyspace) -> Vec<Vec<u8>> {
    b.scan_from(keyspace, &[])
        .map(|e| e.unwrap().0.into_owned())
        .collect()
}

fn keys_rev<B: Backend>(b: &B, keyspace: Keyspace, before: Option<&[u8]>) -> Vec<Vec<u8>> {
    b.scan_rev(keyspace, before)
        .map(|e| e.unwrap().0.into_owned())
        .collect()
}

fn put_all<B: Backend>(b: &mut B, keyspace: Keyspace, ks: &[&[u8]]) {
    let mut batch = Batch::default();
    for k in ks {
        batch.put(keyspace, k, format!("v{}", k.len()).into_bytes());
    }
    b.write(batch).unwrap();
}

const KEYS: [&[u8]; 7] = [b"a", b"b", b"b\0", b"b\xff", b"c", b"c\0", b"d"];

fn a_range_delete_removes_exactly_its_range<H: Harness>(h: &mut H) {
    let mut b = h.create();
    put_all(&mut b, Keyspace::Secondary, &KEYS);
    put_all(&mut b, Keyspace::Rev, &KEYS);

    let mut batch = Batch::default();
    // From included to end excluded, in this keyspace only.
    batch.delete_range(Keyspace::Secondary, b"b", b"c");
    // An empty or backwards range holds nothing and is left out.
    batch.delete_range(Keyspace::Secondary, b"c", b"c");
    batch.delete_range(Keyspace::Secondary, b"d", b"a");
    // A later put in the deleted range wins: a batch applies in order.
    batch.put(Keyspace::Secondary, b"b\0", b"again".to_vec());
    assert_eq!(batch.len(), 2, "the empty ranges added nothing");
    b.write(batch).unwrap();

    let want: Vec<Vec<u8>> = [&b"a"[..], b"b\0", b"c", b"c\0", b"d"]
        .iter()
        .map(|k| k.to_vec())
        .collect();
    assert_eq!(keys(&b, Keyspace::Secondary), want);
    assert_eq!(keys(&b, Keyspace::Rev).len(), KEYS.len());
    assert_eq!(
        b.get(Keyspace::Secondary, b"b\0").unwrap().as_deref(),
        Some(&b"again"[..])
    );
    assert_eq!(b.get(Keyspace::Secondary, b"b\xff").unwrap(), None);

    let b = h.reopen(b);
    assert_eq!(keys(&b, Keyspace::Secondary), want, "after reopening");

    // Everything, with the whole keyspace's bounds.
    let mut b = b;
    let mut batch = Batch::default();
    batch.delete_range(Keyspace::Secondary, &[], &[0xff; 4]);
    b.write(batch).unwrap();
    assert!(keys(&b, Keyspace::Secondary).is_empty());
    let b = h.reopen(b);
    assert!(keys(&b, Keyspace::Secondary).is_empty());
    assert_eq!(keys(&b, Keyspace::Rev).len(), KEYS.len());
}

fn a_descending_scan_stops_before_its_bound<H: Harness>(h: &mut H) {
    let mut b = h.create();
    put_all(&mut b, Keyspace::Secondary, &KEYS);
    put_all(&mut b, Keyspace::Meta, &[b"z"]);
    let b = h.reopen(b);
    let all: Vec<Vec<u8>> = KEYS.iter().rev().map(|k| k.to_vec()).collect();
    assert_eq!(keys_rev(&b, Keyspace::Secondary, None), all);
    // A bound that is a key leaves it out.
    assert_eq!(
        keys_rev(&b, Keyspace::Secondary, Some(b"c")),
        all[3..].to_vec()
    );
    // A bound between keys: everything below it.
    assert_eq!(
        keys_rev(&b, Keyspace::Secondary, Some(b"b\x01")),
        vec![b"b\0".to_vec(), b"b".to_vec(), b"a".to_vec()]
    );
    assert_eq!(
        keys_rev(&b, Keyspace::Secondary, Some(b"e")),
        all,
        "past the last key"
    );
    assert!(keys_rev(&b, Keyspace::Secondary, Some(b"a")).is_empty());
    assert!(keys_rev(&b, Keyspace::Secondary, Some(b"")).is_empty());
    // Values come with their keys.
    let (k, v) = b
        .scan_rev(Keyspace::Secondary, Some(b"d"))
        .next()
        .unwrap()
        .unwrap();
    assert_eq!((&*k, &*v), (&b"c\0"[..], &b"v2"[..]));
}

fn every_keyspace_is_kept_apart<H: Harness>(h: &mut H) {
    let mut b = h.create();
    let mut batch = Batch::default();
    for (i, ks) in Keyspace::ALL.iter().enumerate() {
        batch.put(*ks, b"k", vec![i as u8]);
    }
    b.write(batch).unwrap();
    let b = h.reopen(b);
    for (i, ks) in Keyspace::ALL.iter().enumerate() {
        assert_eq!(
            b.get(*ks, b"k").unwrap().as_deref(),
            Some(&[i as u8][..]),
            "{}",
            ks.name()
        );
        assert_eq!(keys(&b, *ks), vec![b"k".to_vec()]);
    }
    let names: std::collections::BTreeSet<_> = Keyspace::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names.len(), Keyspace::ALL.len(), "one name each");
}

/// A store written before the secondary keyspace (only the keyspaces of
/// that version, made with RocksDB directly): a checkpoint of it opens
/// read-only, reads nothing from the missing keyspace and refuses to
/// write it; opening it read-write adds the keyspace.
#[test]
fn an_older_store_without_the_secondary_keyspace_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv");
    {
        let mut opts = ::rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let old: Vec<&str> = Keyspace::ALL
            .iter()
            .filter(|k| **k != Keyspace::Secondary)
            .map(|k| k.name())
            .collect();
        let db = ::rocksdb::DB::open_cf(&opts, &path, &old).unwrap();
        let meta = db.cf_handle(Keyspace::Meta.name()).unwrap();
        db.put_cf(meta, b"m", b"1").unwrap();
    }
    let mut ro = RocksBackend::open_read_only(&path).unwrap();
    assert_eq!(
        ro.get(Keyspace::Meta, b"m").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(ro.get(Keyspace::Secondary, b"m").unwrap(), None);
    assert!(keys(&ro, Keyspace::Secondary).is_empty());
    assert!(keys_rev(&ro, Keyspace::Secondary, None).is_empty());
    let mut batch = Batch::default();
    batch.put(Keyspace::Secondary, b"x", b"y".to_vec());
    let e = ro.write(batch).unwrap_err();
    assert!(e.0.contains("no secondary keyspace"), "{e}");
    drop(ro);

    let mut rw = RocksBackend::open(&path).unwrap();
    put_all(&mut rw, Keyspace::Secondary, &[b"x"]);
    drop(rw);
    let ro = RocksBackend::open_read_only(&path).unwrap();
    assert_eq!(keys(&ro, Keyspace::Secondary), vec![b"x".to_vec()]);
    assert_eq!(
        ro.get(Keyspace::Meta, b"m").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

/// The memory backend's size follows range deletes: what it counts is
/// what an image of it, read back, counts from scratch.
#[test]
fn the_memory_backend_counts_what_a_range_delete_frees() {
    let mut b = MemoryBackend::new();
    put_all(&mut b, Keyspace::Secondary, &KEYS);
    put_all(&mut b, Keyspace::Rev, &KEYS);
    let full = b.size();
    let mut batch = Batch::default();
    batch.delete_range(Keyspace::Secondary, b"b", b"c\x01");
    b.write(batch).unwrap();
    // b, b\0, b\xff, c, c\0: keys of 1 or 2 bytes, values "v1" or "v2".
    assert_eq!(full - b.size(), (1 + 2) + (2 + 2) * 2 + (1 + 2) + (2 + 2));
    assert_eq!(
        MemoryBackend::from_bytes(&b.to_bytes()).unwrap().size(),
        b.size()
    );
}
