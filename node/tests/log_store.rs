//! The RocksDB log store against the core's storage conformance suite (with
//! real close and reopen), plus what only a disk can get wrong: a second
//! process on the same directory, corrupt records, and a node restarted on it.

use std::path::PathBuf;

use nod::storage::LogStore;
use nod_raft::conformance::{run_all, Harness};
use nod_raft::{
    ConfState, Config, EntryPayload, Index, LogWrite, NodeId, RawNode, Role, Storage, StorageError,
    StorageWrite,
};

struct RocksHarness {
    root: tempfile::TempDir,
    made: usize,
}

impl Harness for RocksHarness {
    type Store = LogStore;
    fn create(&mut self) -> LogStore {
        self.made += 1;
        LogStore::open(&self.root.path().join(format!("store-{}", self.made)))
            .expect("open a new store")
    }
    fn reopen(&mut self, store: LogStore) -> LogStore {
        let path = store.path().to_path_buf();
        drop(store);
        LogStore::open(&path).expect("reopen the store")
    }
}

#[test]
fn rocksdb_log_store_conforms() {
    let mut h = RocksHarness {
        root: tempfile::tempdir().unwrap(),
        made: 0,
    };
    run_all(&mut h);
    assert!(h.made >= 9, "every check ran against its own store");
}

#[test]
fn a_second_open_of_the_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = LogStore::open(dir.path()).unwrap();
    match LogStore::open(dir.path()) {
        Err(StorageError::Fatal(msg)) => assert!(msg.contains("in use"), "unclear message: {msg}"),
        other => panic!("a second open must fail, got {:?}", other.map(|_| ())),
    }
}

fn corrupt_last_record(path: &PathBuf) {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let db = rocksdb::DB::open_cf(&opts, path, ["log", "meta"]).unwrap();
    let cf = db.cf_handle("log").unwrap();
    let (k, mut v) = db
        .iterator_cf(cf, rocksdb::IteratorMode::End)
        .next()
        .unwrap()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .unwrap();
    let mid = v.len() / 2;
    v[mid] ^= 0x40;
    db.put_cf(cf, k, v).unwrap();
}

#[test]
fn a_corrupt_record_is_reported_with_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    {
        let mut s = LogStore::open(&path).unwrap();
        let entries = (1..=5)
            .map(|i| nod_raft::Entry {
                index: Index(i),
                term: nod_raft::Term(1),
                payload: EntryPayload::Normal(vec![i as u8; 32]),
            })
            .collect();
        s.write(&LogWrite {
            entries,
            sync: true,
            ..Default::default()
        })
        .unwrap();
    }
    corrupt_last_record(&path);
    match LogStore::open(&path) {
        Err(StorageError::Fatal(msg)) => {
            assert!(
                msg.contains("index 5") && msg.contains("checksum"),
                "unhelpful message: {msg}"
            )
        }
        other => panic!("corruption must be reported, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn bootstrap_refuses_a_directory_that_holds_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    s.bootstrap(ConfState::with_voters([NodeId(1)]), vec![])
        .unwrap();
    assert!(s
        .bootstrap(ConfState::with_voters([NodeId(1)]), vec![])
        .is_err());
}

/// A single-voter node on RocksDB: elect, commit, stop, start again: the
/// term, vote, log and commit index come back.
#[test]
fn a_node_restarted_on_its_store_finds_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut store = LogStore::open(&path).unwrap();
    store
        .bootstrap(ConfState::with_voters([NodeId(1)]), vec![])
        .unwrap();
    let mut node = RawNode::new(Config::new(NodeId(1)), store).unwrap();
    node.campaign();
    let mut applied = Vec::new();
    let drive = |node: &mut RawNode<LogStore>, applied: &mut Vec<Vec<u8>>| {
        while node.has_ready() {
            let ready = node.ready().unwrap();
            node.storage_mut().write(&ready.log_write()).unwrap();
            for e in &ready.committed_entries {
                if let EntryPayload::Normal(d) = &e.payload {
                    applied.push(d.clone());
                }
            }
            node.advance();
        }
    };
    drive(&mut node, &mut applied);
    assert_eq!(node.role(), Role::Leader);
    for i in 0..20u8 {
        node.propose(vec![i]).unwrap();
    }
    drive(&mut node, &mut applied);
    assert_eq!(applied.len(), 20);
    let before = node.status();
    drop(node);

    let store = LogStore::open(&path).unwrap();
    assert_eq!(store.last_index().unwrap(), before.last_index);
    let mut node = RawNode::new(Config::new(NodeId(1)), store).unwrap();
    let after = node.status();
    assert_eq!(
        (after.term, after.vote, after.commit),
        (before.term, before.vote, before.commit)
    );
    let mut replayed = Vec::new();
    drive(&mut node, &mut replayed);
    assert_eq!(
        replayed, applied,
        "the committed log replays in order after a restart"
    );
}
