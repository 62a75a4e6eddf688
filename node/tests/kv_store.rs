//! The MVCC state machine's conformance suite: etcd's revision rules,
//! history, compaction, leases, transactions, and restart with the applied
//! index, each check run against both backends (RocksDB on disk, with a
//! real close and reopen; memory, reopened from what its backend holds),
//! as `nod_raft::conformance` does for the log. Then what only one backend
//! has: a corrupt file on disk, the memory image of a simulated snapshot.

use nod::storage::backend::{Backend, Batch, Keyspace, MemoryBackend, RocksBackend};
use nod::storage::kv_store::KeyRange;
use nod::storage::kv_store::{IndexDef, IndexState};
use nod::storage::{KvError, KvStore, ReadError};
use nod_proto::etcd::etcdserverpb::{
    compare, request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RangeResponse, RequestOp, TxnRequest,
};
use nod_proto::etcd::mvccpb::event::EventType;
use nod_proto::nodquerypb::{FieldType, IndexField, IndexSpec};
use nod_proto::range::RangeAnswer;
use prost::Message as _;

/// How the suite makes and reopens stores.
trait Harness {
    type Backend: Backend;
    /// A new, empty store.
    fn create(&mut self) -> KvStore<Self::Backend>;
    /// Closes the store and opens it again from what its backend holds: a
    /// batch not ended is lost, as in a crash.
    fn reopen(&mut self, store: KvStore<Self::Backend>) -> KvStore<Self::Backend>;
}

struct Rocks {
    root: tempfile::TempDir,
    made: usize,
}

impl Rocks {
    fn new() -> Rocks {
        Rocks {
            root: tempfile::tempdir().unwrap(),
            made: 0,
        }
    }
}

impl Harness for Rocks {
    type Backend = RocksBackend;
    fn create(&mut self) -> KvStore {
        self.made += 1;
        KvStore::open(&self.root.path().join(format!("kv-{}", self.made))).unwrap()
    }
    fn reopen(&mut self, store: KvStore) -> KvStore {
        let path = store.path().to_path_buf();
        drop(store);
        KvStore::open(&path).unwrap()
    }
}

struct Memory;

impl Harness for Memory {
    type Backend = MemoryBackend;
    fn create(&mut self) -> KvStore<MemoryBackend> {
        KvStore::in_memory()
    }
    fn reopen(&mut self, store: KvStore<MemoryBackend>) -> KvStore<MemoryBackend> {
        KvStore::from_backend(store.into_backend()).unwrap()
    }
}

/// Each check, once per backend: `rocksdb::<check>` and `memory::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod rocksdb {
            $(#[test]
            fn $check() {
                super::$check(&mut super::Rocks::new());
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

conformance!(
    revisions_versions_and_history_follow_etcd,
    ranges_prefixes_limits_and_sorting,
    the_services_range_answer_is_ranges_answer_encoded,
    txn_compares_and_branches_atomically_in_one_revision,
    compaction_keeps_the_visible_values_and_refuses_older_reads,
    a_compaction_is_removed_a_step_at_a_time_and_no_answer_changes,
    leases_own_keys_and_revoking_deletes_them_in_one_revision,
    watch_history_is_in_revision_order_with_previous_values,
    a_corrupt_record_is_reported_on_open,
    a_batch_reads_its_own_writes_and_reaches_the_backend_whole_or_not_at_all,
    a_put_takes_version_create_and_lease_from_the_index_and_events_get_their_previous_value_on_demand,
    later_operations_of_a_txn_see_its_deletes_and_puts,
    the_auth_store_is_kept_with_the_data_and_never_moves_the_revision,
    a_secondary_index_backfills_follows_writes_and_loses_compacted_entries,
    index_declarations_are_checked_and_refusals_change_nothing_else,
    indexes_wait_for_every_member_to_publish_the_feature,
    unique_indexes_refuse_duplicates_whole_and_a_failed_build_is_rebuilt,
);

struct Fixture<B: Backend> {
    store: KvStore<B>,
    index: u64,
}

impl<B: Backend> Fixture<B> {
    fn next(&mut self) -> (u64, u64) {
        self.index += 1;
        (self.index, 1)
    }
    fn put(&mut self, k: &str, v: &str) -> i64 {
        let at = self.next();
        self.store
            .apply_put(
                &PutRequest {
                    key: k.into(),
                    value: v.into(),
                    ..Default::default()
                },
                at,
            )
            .unwrap()
            .into_result()
            .unwrap();
        self.store.current_revision()
    }
    fn get(&self, k: &str, rev: i64) -> Result<Option<(String, i64, i64, i64)>, KvError> {
        let r = self.store.range(&RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        });
        let r = r.map_err(|e| match e {
            ReadError::Request(e) => e,
            ReadError::Store(e) => panic!("{e}"),
        })?;
        Ok(r.kvs.first().map(|kv| {
            (
                String::from_utf8(kv.value.clone()).unwrap(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        }))
    }
    fn del(&mut self, k: &str, end: &str) -> i64 {
        let at = self.next();
        self.store
            .apply_delete(
                &DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
                at,
            )
            .unwrap()
            .into_result()
            .unwrap()
            .response
            .deleted
    }
}

fn create<H: Harness>(h: &mut H) -> Fixture<H::Backend> {
    let store = h.create();
    let index = store.applied().0;
    Fixture { store, index }
}

fn reopen<H: Harness>(h: &mut H, f: Fixture<H::Backend>) -> Fixture<H::Backend> {
    let store = h.reopen(f.store);
    let index = store.applied().0;
    Fixture { store, index }
}

fn revisions_versions_and_history_follow_etcd<H: Harness>(h: &mut H) {
    let mut f = create(h);
    assert_eq!(
        f.store.current_revision(),
        1,
        "an empty store is at revision 1, as etcd"
    );
    let r1 = f.put("a", "1");
    let r2 = f.put("a", "2");
    let r3 = f.put("b", "x");
    assert_eq!((r1, r2, r3), (2, 3, 4));
    assert_eq!(f.get("a", 0).unwrap(), Some(("2".into(), 2, 3, 2)));
    assert_eq!(
        f.get("a", r1).unwrap(),
        Some(("1".into(), 2, 2, 1)),
        "history is readable"
    );
    assert_eq!(
        f.get("b", r2).unwrap(),
        None,
        "b did not exist at revision 3"
    );
    assert_eq!(f.del("a", ""), 1);
    assert_eq!(f.get("a", 0).unwrap(), None);
    assert_eq!(f.del("a", ""), 0);
    assert_eq!(
        f.store.current_revision(),
        5,
        "deleting nothing does not make a revision"
    );
    f.put("a", "again");
    assert_eq!(
        f.get("a", 0).unwrap(),
        Some(("again".into(), 6, 6, 1)),
        "a recreated key starts a new generation"
    );
    assert_eq!(f.get("a", 99), Err(KvError::FutureRevision));
}

fn ranges_prefixes_limits_and_sorting<H: Harness>(h: &mut H) {
    let mut f = create(h);
    for (k, v) in [("k1", "c"), ("k2", "a"), ("k3", "b"), ("l1", "z")] {
        f.put(k, v);
    }
    let all = f
        .store
        .range(&RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()]
    );
    assert_eq!(all.count, 3);
    let limited = f
        .store
        .range(&RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (limited.kvs.len(), limited.more, limited.count),
        (2, true, 3)
    );
    let from = f
        .store
        .range(&RangeRequest {
            key: b"k3".to_vec(),
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(from.kvs.len(), 2, "k3 and l1");
    let by_value = f
        .store
        .range(&RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            sort_target: 4, // VALUE
            sort_order: 2,  // DESCEND
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        by_value
            .kvs
            .iter()
            .map(|kv| kv.value.clone())
            .collect::<Vec<_>>(),
        vec![b"c".to_vec(), b"b".to_vec(), b"a".to_vec()]
    );
    let inverted = f
        .store
        .range(&RangeRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .unwrap();
    assert!(
        inverted.kvs.is_empty() && inverted.count == 0,
        "an inverted range is empty, not an error"
    );
    let count = f
        .store
        .range(&RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .unwrap();
    assert!(count.kvs.is_empty());
    assert_eq!(count.count, 3);
    assert_eq!(f.del("k", "l"), 3);
}

/// What the KV service sends for a Range (`range_answer`, key-values
/// copied from their records where it can) decodes to `range`'s answer,
/// or fails as it does, for every shape of request: points and ranges,
/// limits, counts, projections, orders, filters, old, compacted and
/// future revisions, and inside an open batch.
fn the_services_range_answer_is_ranges_answer_encoded<H: Harness>(h: &mut H) {
    use nod_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
    let mut f = create(h);
    let compacted = history_then_compaction(&mut f);
    for i in 0..40 {
        f.put(&format!("p/{i:02}"), &"x".repeat(i * 13));
    }
    let current = f.store.current_revision();
    let keys: [(&str, &str); 7] = [
        ("k3", ""),
        ("nope", ""),
        ("k", "l"),
        ("p/", "p0"),
        ("\0", "\0"),
        ("p/10", "p/2"),
        ("z", "a"),
    ];
    let mut requests = Vec::new();
    for (key, end) in keys {
        let base = RangeRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        };
        for revision in [0, compacted - 1, compacted, compacted + 5, current + 1] {
            for limit in [0, 1, 7] {
                requests.push(RangeRequest {
                    revision,
                    limit,
                    ..base.clone()
                });
            }
        }
        for flags in 0..4 {
            requests.push(RangeRequest {
                count_only: flags & 1 != 0,
                keys_only: flags & 2 != 0,
                limit: 3,
                ..base.clone()
            });
        }
        for (target, order) in [
            (SortTarget::Key, SortOrder::Descend),
            (SortTarget::Key, SortOrder::Ascend),
            (SortTarget::Mod, SortOrder::None),
            (SortTarget::Value, SortOrder::Descend),
        ] {
            requests.push(RangeRequest {
                sort_target: target as i32,
                sort_order: order as i32,
                limit: 5,
                ..base.clone()
            });
        }
        requests.push(RangeRequest {
            min_mod_revision: compacted + 3,
            max_create_revision: current - 2,
            ..base.clone()
        });
    }
    // Requests in key order, not keys-only, with a range: the copying path.
    let copies = |r: &RangeRequest| {
        let key_order =
            r.sort_target == SortTarget::Key as i32 && r.sort_order != SortOrder::Descend as i32;
        let filtered = r.min_mod_revision != 0 || r.max_create_revision != 0;
        (key_order || r.count_only) && !filtered && !r.keys_only && r.key.as_slice() != b"z"
    };
    let check = |f: &Fixture<H::Backend>, req: &RangeRequest| {
        let want = f.store.range(req).map_err(|e| e.to_string());
        let answer = f.store.range_answer(req);
        if let Ok(a) = &answer {
            assert_eq!(
                matches!(a, RangeAnswer::Encoded(_)),
                copies(req),
                "the path taken for {req:?}"
            );
        }
        let got = answer
            .map(|a| RangeResponse::decode(a.encode_to_vec().as_slice()).unwrap())
            .map_err(|e| e.to_string());
        assert_eq!(got, want, "{req:?}");
        want.is_ok_and(|r| !r.kvs.is_empty())
    };
    let answered = requests.iter().filter(|r| check(&f, r)).count();
    assert!(
        answered > requests.len() / 3,
        "{answered} answers with key-values"
    );
    // Inside a batch, the batch's own records (the `p/` requests read them).
    f.store.begin_batch();
    f.put("p/05", "in the batch");
    f.put("p/99", "new in the batch");
    let in_batch: Vec<&RangeRequest> = requests
        .iter()
        .filter(|r| r.key.starts_with(b"p/") && r.revision == 0)
        .collect();
    assert!(in_batch.len() > 5);
    for req in in_batch {
        check(&f, req);
    }
    let r = f
        .store
        .range_answer(&RangeRequest {
            key: "p/".into(),
            range_end: "p0".into(),
            ..Default::default()
        })
        .unwrap();
    let r = RangeResponse::decode(r.encode_to_vec().as_slice()).unwrap();
    assert_eq!(r.kvs[5].value, b"in the batch");
    assert_eq!(r.kvs.last().unwrap().value, b"new in the batch");
    f.store.end_batch().unwrap();
}

fn txn_compares_and_branches_atomically_in_one_revision<H: Harness>(h: &mut H) {
    let mut f = create(h);
    f.put("k", "v1");
    let cas = |expect: &str, new: &str| TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(compare::TargetUnion::Value(expect.into())),
        }],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: new.into(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"other".to_vec(),
                    value: new.into(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"k".to_vec(),
                    ..Default::default()
                })),
            },
        ],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })),
        }],
    };
    let before = f.store.current_revision();
    let at = f.next();
    let ok = f
        .store
        .apply_txn(&cas("v1", "v2"), at)
        .unwrap()
        .into_result()
        .unwrap();
    assert!(ok.response.succeeded);
    assert_eq!(
        f.store.current_revision(),
        before + 1,
        "all writes of a txn share one revision"
    );
    assert_eq!(ok.events.len(), 2);
    match &ok.response.responses[2].response {
        Some(response_op::Response::ResponseRange(r)) => {
            assert_eq!(r.kvs[0].value, b"v2", "a txn reads its own writes")
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    let at = f.next();
    let failed = f
        .store
        .apply_txn(&cas("v1", "v3"), at)
        .unwrap()
        .into_result()
        .unwrap();
    assert!(!failed.response.succeeded);
    assert_eq!(
        f.store.current_revision(),
        before + 1,
        "a failed compare writes nothing"
    );
    // A txn that fails midway (unknown lease) changes nothing at all.
    let bad = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"x".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"y".to_vec(),
                    value: b"1".to_vec(),
                    lease: 77,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    let at = f.next();
    assert_eq!(
        f.store
            .apply_txn(&bad, at)
            .unwrap()
            .into_result()
            .unwrap_err(),
        KvError::LeaseNotFound
    );
    assert_eq!(f.get("x", 0).unwrap(), None);
    assert_eq!(
        f.store.applied().0,
        at.0,
        "a refused request still advances the applied index"
    );
}

/// Every answer a compaction's sweep could change: HashKV at the compacted
/// and the current revision, and every key at each revision from the
/// compacted one up.
fn answers<B: Backend>(f: &Fixture<B>, from: i64) -> Vec<String> {
    let mut out = vec![
        format!("{:?}", f.store.hash_kv(from)),
        format!("{:?}", f.store.hash_kv(0)),
    ];
    for rev in from..=f.store.current_revision() {
        for k in ["k0", "k1", "k2", "k3", "k4", "k5", "k6"] {
            out.push(format!("{k}@{rev}: {:?}", f.get(k, rev)));
        }
    }
    out
}

/// A history of overwrites and deletions (a key deleted for good), then a
/// compaction 20 revisions short of the current one; returns its revision.
fn history_then_compaction<B: Backend>(f: &mut Fixture<B>) -> i64 {
    // A history: overwrites, deletions, a key deleted for good.
    for i in 0..120u32 {
        let k = format!("k{}", i % 7);
        if i % 11 == 5 {
            f.del(&k, "");
        } else {
            f.put(&k, &format!("v{i}"));
        }
    }
    let at_rev = f.store.current_revision() - 20;
    compact(f, at_rev);
    at_rev
}

/// Applies a compaction at `revision`, which must succeed.
fn compact<B: Backend>(f: &mut Fixture<B>, revision: i64) {
    let at = f.next();
    f.store
        .apply_compaction(
            &CompactionRequest {
                revision,
                physical: true,
            },
            at,
        )
        .unwrap()
        .into_result()
        .unwrap();
}

fn a_compaction_is_removed_a_step_at_a_time_and_no_answer_changes<H: Harness>(h: &mut H) {
    let mut f = create(h);
    let at_rev = history_then_compaction(&mut f);
    assert!(f.store.compaction_pending(), "the records go afterwards");
    assert!(f.store.swept_revision() < at_rev);
    assert_eq!(f.get("k1", at_rev - 1), Err(KvError::Compacted), "at once");
    let want = answers(&f, at_rev);
    // A few steps, then a restart in the middle of the sweep.
    for _ in 0..3 {
        assert!(f.store.compaction_step(7).unwrap());
        assert_eq!(answers(&f, at_rev), want, "mid-sweep");
    }
    let mut f = reopen(h, f);
    assert!(f.store.compaction_pending(), "a restart finishes the sweep");
    assert_eq!(answers(&f, at_rev), want, "after the restart");
    let mut steps = 0;
    while f.store.compaction_step(7).unwrap() {
        steps += 1;
        assert_eq!(answers(&f, at_rev), want, "step {steps}");
    }
    // A step stops after the key that reaches its budget: 7 keys of about
    // 14 dropped records each take a step a key (3 before the restart).
    assert!(steps + 3 >= 6, "bounded steps: {steps} after the restart");
    assert!(!f.store.compaction_pending());
    assert_eq!(f.store.swept_revision(), at_rev);
    // Swept: HashKV now reads the records as stored, unfiltered, and
    // still agrees, so the dropped records are gone from the disk.
    assert_eq!(answers(&f, at_rev), want, "swept");
    let f = reopen(h, f);
    let mut f = f;
    assert!(
        !f.store.compaction_step(7).unwrap(),
        "nothing left after a restart"
    );
    assert_eq!(answers(&f, at_rev), want, "swept, restarted");
}

fn compaction_keeps_the_visible_values_and_refuses_older_reads<H: Harness>(h: &mut H) {
    let mut f = create(h);
    let r0 = f.put("a", "1");
    let r = f.put("a", "2");
    f.put("b", "1");
    f.del("b", "");
    f.put("a", "3");
    let rc = f.put("c", "1");
    let at = f.next();
    f.store
        .apply_compaction(
            &CompactionRequest {
                revision: r + 1,
                physical: true,
            },
            at,
        )
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(f.get("a", r - 1), Err(KvError::Compacted));
    assert_eq!(
        f.get("a", r + 1).unwrap().unwrap().0,
        "2",
        "the value visible at the compaction point stays"
    );
    assert_eq!(f.get("a", 0).unwrap().unwrap().0, "3");
    let at = f.next();
    assert_eq!(
        f.store
            .apply_compaction(
                &CompactionRequest {
                    revision: r,
                    physical: true
                },
                at
            )
            .unwrap()
            .into_result()
            .err(),
        Some(KvError::Compacted)
    );
    let events = f
        .store
        .events_between(&KeyRange::new(b"a", b""), r + 1, 100)
        .unwrap();
    assert!(events
        .iter()
        .all(|e| e.kv.as_ref().unwrap().mod_revision > r + 1));
    assert!(
        f.store
            .events_between(&KeyRange::new(b"a", b""), 0, 100)
            .is_err(),
        "history before compaction is gone"
    );
    // Reopen: the index is rebuilt from disk and agrees.
    let applied = f.store.applied();
    let mut f = reopen(h, f);
    assert_eq!(f.store.applied(), applied);
    assert_eq!(f.get("a", 0).unwrap().unwrap().0, "3");
    assert_eq!(f.get("a", r - 1), Err(KvError::Compacted));
    // Puts after the reopen carry each key's create revision and version
    // on: a key whose oldest record left is its second version, and one
    // put once.
    let ra = f.put("a", "4");
    assert_eq!(f.get("a", 0).unwrap(), Some(("4".into(), r0, ra, 4)));
    let rc2 = f.put("c", "2");
    assert_eq!(f.get("c", 0).unwrap(), Some(("2".into(), rc, rc2, 2)));
}

fn leases_own_keys_and_revoking_deletes_them_in_one_revision<H: Harness>(h: &mut H) {
    let mut f = create(h);
    let at = f.next();
    f.store
        .apply_lease_grant(9, 30, at)
        .unwrap()
        .into_result()
        .unwrap();
    let at = f.next();
    assert_eq!(
        f.store
            .apply_lease_grant(9, 30, at)
            .unwrap()
            .into_result()
            .err(),
        Some(KvError::LeaseExists)
    );
    for k in ["x", "y"] {
        let at = f.next();
        f.store
            .apply_put(
                &PutRequest {
                    key: k.into(),
                    value: b"v".to_vec(),
                    lease: 9,
                    ..Default::default()
                },
                at,
            )
            .unwrap()
            .into_result()
            .unwrap();
    }
    assert_eq!(f.store.leases()[&9].keys.len(), 2);
    // Moving a key off the lease detaches it.
    f.put("y", "no lease");
    assert_eq!(f.store.leases()[&9].keys.len(), 1);
    let mut f = reopen(h, f);
    assert_eq!(
        f.store.leases()[&9].keys.len(),
        1,
        "lease attachments are rebuilt on open"
    );
    let before = f.store.current_revision();
    let at = f.next();
    let events = f
        .store
        .apply_lease_revoke(9, at)
        .unwrap()
        .into_result()
        .unwrap()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].r#type, EventType::Delete as i32);
    assert_eq!(f.store.current_revision(), before + 1);
    assert_eq!(f.get("x", 0).unwrap(), None);
    assert_eq!(f.get("y", 0).unwrap().unwrap().0, "no lease");
    let at = f.next();
    assert_eq!(
        f.store
            .apply_lease_revoke(9, at)
            .unwrap()
            .into_result()
            .unwrap_err(),
        KvError::LeaseNotFound
    );
}

fn watch_history_is_in_revision_order_with_previous_values<H: Harness>(h: &mut H) {
    let mut f = create(h);
    let r1 = f.put("w/a", "1");
    f.put("other", "1");
    f.put("w/a", "2");
    f.del("w/a", "");
    let events = f
        .store
        .events_between(
            &KeyRange::new(b"w/", b"w0"),
            r1 - 1,
            f.store.current_revision(),
        )
        .unwrap();
    let summary: Vec<(i32, i64, Option<Vec<u8>>)> = events
        .iter()
        .map(|e| {
            (
                e.r#type,
                e.kv.as_ref().unwrap().mod_revision,
                e.prev_kv.as_ref().map(|p| p.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventType::Put as i32, r1, None),
            (EventType::Put as i32, r1 + 2, Some(b"1".to_vec())),
            (EventType::Delete as i32, r1 + 3, Some(b"2".to_vec())),
        ]
    );
}

fn a_corrupt_record_is_reported_on_open<H: Harness>(h: &mut H) {
    let mut f = create(h);
    f.put("a", "1");
    // Overwrite the record through the backend with bytes whose checksum is wrong.
    let mut backend = f.store.into_backend();
    let key = backend
        .scan_from(Keyspace::Rev, &[])
        .next()
        .unwrap()
        .unwrap()
        .0
        .into_owned();
    let mut batch = Batch::default();
    batch.put(
        Keyspace::Rev,
        &key,
        b"\x01\x01garbage-with-bad-crc".to_vec(),
    );
    backend.write(batch).unwrap();
    let err = KvStore::from_backend(backend)
        .err()
        .expect("corruption must be reported");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

fn a_batch_reads_its_own_writes_and_reaches_the_backend_whole_or_not_at_all<H: Harness>(h: &mut H) {
    let mut f = create(h);
    {
        f.put("a", "1");
        f.store.begin_batch();
        f.put("a", "2");
        f.put("b", "1");
        // Inside the batch every read sees the applied state.
        assert_eq!(
            f.get("a", 0).unwrap(),
            Some(("2".into(), 2, 3, 2)),
            "value, create, mod revision and version come from the batch"
        );
        assert_eq!(f.get("a", 2).unwrap().unwrap().0, "1", "history below it");
        // A compaction inside the batch joins it (its records go later).
        let at = f.next();
        f.store
            .apply_compaction(
                &CompactionRequest {
                    revision: 3,
                    physical: false,
                },
                at,
            )
            .unwrap()
            .into_result()
            .unwrap();
        assert_eq!(f.get("a", 2), Err(KvError::Compacted));
        f.put("c", "1");
        // The batch's last entry is a request that fails: it changes
        // nothing but the applied index, which must still reach the disk.
        let at = f.next();
        let failed = f
            .store
            .apply_put(&PutRequest::default(), at)
            .unwrap()
            .into_result()
            .err();
        assert_eq!(failed, Some(KvError::EmptyKey));
        f.store.end_batch().unwrap();
        assert_eq!(f.store.applied(), (6, 1));
    }
    let mut f = reopen(h, f);
    assert_eq!(
        f.store.applied(),
        (6, 1),
        "the batch's applied index is its last entry's, on disk"
    );
    assert_eq!(f.get("a", 0).unwrap().unwrap().0, "2");
    assert_eq!(f.get("c", 0).unwrap().unwrap().0, "1");
    assert_eq!(f.store.compacted_revision(), 3);
    // A batch never ended (a crash) leaves the store as it was before it:
    // the applied index goes back with the data, so the log is applied again.
    f.store.begin_batch();
    f.put("d", "1");
    f.put("a", "3");
    assert_eq!(f.get("d", 0).unwrap().unwrap().0, "1");
    let f = reopen(h, f);
    assert_eq!(f.store.applied(), (6, 1));
    assert_eq!(f.get("d", 0).unwrap(), None);
    assert_eq!(f.get("a", 0).unwrap().unwrap().0, "2");
}

fn a_put_takes_version_create_and_lease_from_the_index_and_events_get_their_previous_value_on_demand<
    H: Harness,
>(
    h: &mut H,
) {
    let mut f = create(h);
    let at = f.next();
    f.store
        .apply_lease_grant(7, 60, at)
        .unwrap()
        .into_result()
        .unwrap();
    let put = |f: &mut Fixture<H::Backend>, req: PutRequest| {
        let at = f.next();
        f.store.apply_put(&req, at).unwrap().into_result().unwrap()
    };
    let created = f.put("k", "1");
    let a = put(
        &mut f,
        PutRequest {
            key: "k".into(),
            value: "2".into(),
            lease: 7,
            ..Default::default()
        },
    );
    let second = f.store.current_revision();
    let mut events = a.events;
    let kv = events[0].kv.clone().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (created, second, 2, 7)
    );
    assert_eq!(
        events[0].prev_kv, None,
        "a plain put does not read the value it replaces"
    );
    f.store.fill_prev(&mut events).unwrap();
    let prev = events[0].prev_kv.clone().unwrap();
    assert_eq!(
        (prev.value, prev.mod_revision, prev.version),
        (b"1".to_vec(), created, 1)
    );

    // ignore_lease keeps the lease, ignore_value the value; prev_kv reads it.
    let a = put(
        &mut f,
        PutRequest {
            key: "k".into(),
            value: "3".into(),
            ignore_lease: true,
            prev_kv: true,
            ..Default::default()
        },
    );
    assert_eq!(a.response.prev_kv.unwrap().value, b"2");
    assert_eq!(a.events[0].prev_kv.as_ref().unwrap().value, b"2");
    assert_eq!(a.events[0].kv.as_ref().unwrap().lease, 7);
    assert_eq!(f.store.leases()[&7].keys.len(), 1);
    put(
        &mut f,
        PutRequest {
            key: "k".into(),
            ignore_value: true,
            ..Default::default()
        },
    );
    assert_eq!(
        f.get("k", 0).unwrap().unwrap(),
        ("3".into(), created, f.store.current_revision(), 4)
    );
    assert!(
        f.store.leases()[&7].keys.is_empty(),
        "a put without the lease detaches the key"
    );

    // Two puts of one key in one revision: the second's previous value is the first.
    let at = f.next();
    let put_op = |v: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: "k".into(),
            value: v.into(),
            ..Default::default()
        })),
    };
    let mut events = f
        .store
        .apply_txn(
            &TxnRequest {
                success: vec![put_op("t1"), put_op("t2")],
                ..Default::default()
            },
            at,
        )
        .unwrap()
        .into_result()
        .unwrap()
        .events;
    f.store.fill_prev(&mut events).unwrap();
    let prevs: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.kv.as_ref().unwrap().version,
                e.prev_kv.as_ref().unwrap().value.clone(),
            )
        })
        .collect();
    assert_eq!(prevs, vec![(5, b"3".to_vec()), (6, b"t1".to_vec())]);

    // After a deletion the key starts over: version 1, a new create
    // revision, and no previous value to find.
    f.del("k", "");
    let again = f.put("k", "new");
    assert_eq!(
        f.get("k", 0).unwrap().unwrap(),
        ("new".into(), again, again, 1)
    );

    // Compaction keeps the current value's facts; a restart rebuilds them,
    // and inside a batch they follow the batch's own writes.
    let at = f.next();
    f.store
        .apply_compaction(
            &CompactionRequest {
                revision: again,
                physical: false,
            },
            at,
        )
        .unwrap()
        .into_result()
        .unwrap();
    f.put("k", "after compaction");
    let mut f = reopen(h, f);
    f.store.begin_batch();
    f.put("k", "after restart");
    let a = put(
        &mut f,
        PutRequest {
            key: "k".into(),
            value: "in batch".into(),
            ..Default::default()
        },
    );
    let mut events = a.events;
    f.store.fill_prev(&mut events).unwrap();
    assert_eq!(
        events[0].prev_kv.as_ref().unwrap().value,
        b"after restart",
        "the previous value is read from the open batch"
    );
    f.store.end_batch().unwrap();
    assert_eq!(
        f.get("k", 0).unwrap().unwrap(),
        ("in batch".into(), again, f.store.current_revision(), 4)
    );
}

fn later_operations_of_a_txn_see_its_deletes_and_puts<H: Harness>(h: &mut H) {
    let mut f = create(h);
    f.put("a", "1");
    f.put("a", "2");
    f.put("b", "1");
    let op = |r: request_op::Request| RequestOp { request: Some(r) };
    let range = |k: &str, end: &str| {
        op(request_op::Request::RequestRange(RangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        }))
    };
    let txn = TxnRequest {
        success: vec![
            op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: "a".into(),
                    ..Default::default()
                },
            )),
            range("a", "z"),
            op(request_op::Request::RequestPut(PutRequest {
                key: "c".into(),
                value: "1".into(),
                ..Default::default()
            })),
            range("a", "z"),
        ],
        ..Default::default()
    };
    let at = f.next();
    let done = f.store.apply_txn(&txn, at).unwrap().into_result().unwrap();
    let rev = f.store.current_revision();
    let keys = |i: usize| match &done.response.responses[i].response {
        Some(response_op::Response::ResponseRange(r)) => r
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect::<Vec<_>>(),
        other => panic!("expected a range response, got {other:?}"),
    };
    assert_eq!(keys(1), ["b"], "the delete hides a from the next read");
    assert_eq!(keys(3), ["b", "c"], "the later put is seen");
    assert_eq!(f.get("a", 0).unwrap(), None);
    assert_eq!(f.get("a", rev - 1).unwrap().unwrap().0, "2");
    assert_eq!(f.get("c", 0).unwrap(), Some(("1".into(), rev, rev, 1)));
    assert_eq!(
        done.events
            .iter()
            .map(|e| EventType::try_from(e.r#type).unwrap())
            .collect::<Vec<_>>(),
        [EventType::Delete, EventType::Put]
    );
}

fn the_auth_store_is_kept_with_the_data_and_never_moves_the_revision<H: Harness>(h: &mut H) {
    use nod::auth::{auth_command::Op as A, AuthError};
    use nod::storage::kv_store::AuthOutcome;
    use nod_proto::etcd::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    };
    let mut f = create(h);
    f.put("k", "v");
    let rev = f.store.current_revision();
    let apply = |f: &mut Fixture<H::Backend>, op: A| {
        let at = f.next();
        let out = f.store.apply_auth(&op, None, at).unwrap();
        assert_eq!(f.store.applied(), at, "the entry is applied either way");
        out
    };
    let add = |name: &str| {
        A::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: "$2b$04$hash".into(),
            ..Default::default()
        })
    };
    assert!(matches!(
        apply(&mut f, A::Enable(AuthEnableRequest {})),
        AuthOutcome::Refused(AuthError::RootUserNotExist)
    ));
    apply(&mut f, add("root"));
    apply(
        &mut f,
        A::UserGrantRole(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }),
    );
    apply(&mut f, A::RoleAdd(AuthRoleAddRequest { name: "r".into() }));
    assert!(matches!(
        apply(&mut f, A::RoleAdd(AuthRoleAddRequest { name: "r".into() })),
        AuthOutcome::Refused(AuthError::RoleAlreadyExist)
    ));
    apply(&mut f, A::Enable(AuthEnableRequest {}));
    let before = f.store.auth().clone();
    assert!(before.enabled());
    assert_eq!(
        before.revision(),
        4,
        "three changes after a fresh store's 1"
    );
    assert_eq!(
        f.store.current_revision(),
        rev,
        "auth never moves the key revision"
    );
    let f = reopen(h, f);
    assert_eq!(
        f.store.auth(),
        &before,
        "users, roles, flag and revision reload"
    );
    assert_eq!(f.store.auth().user("root").unwrap().roles, ["root"]);
    assert_eq!(f.store.auth().role_names(), ["r"]);
}

// ---- RocksDB only ----

#[test]
fn a_corrupt_file_on_disk_is_reported_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut f = Fixture {
            store: KvStore::open(dir.path()).unwrap(),
            index: 0,
        };
        f.put("a", "1");
    }
    // Overwrite the record through RocksDB with bytes whose checksum is wrong.
    {
        let mut opts = ::rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let db =
            ::rocksdb::DB::open_cf(&opts, dir.path(), Keyspace::ALL.map(|k| k.name())).unwrap();
        let cf = db.cf_handle("rev").unwrap();
        let key = db
            .iterator_cf(cf, ::rocksdb::IteratorMode::Start)
            .next()
            .unwrap()
            .unwrap()
            .0;
        db.put_cf(cf, key, b"\x01\x01garbage-with-bad-crc").unwrap();
    }
    let err = KvStore::open(dir.path())
        .err()
        .expect("corruption must be reported");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

// ---- memory only ----

#[test]
fn a_memory_image_restores_the_same_state_and_refuses_corruption() {
    let mut f = create(&mut Memory);
    let at = f.next();
    f.store
        .apply_lease_grant(5, 60, at)
        .unwrap()
        .into_result()
        .unwrap();
    f.put("a", "1");
    let at = f.next();
    f.store
        .apply_put(
            &PutRequest {
                key: "b".into(),
                value: "leased".into(),
                lease: 5,
                ..Default::default()
            },
            at,
        )
        .unwrap()
        .into_result()
        .unwrap();
    f.put("a", "2");
    f.del("a", "");
    let at = f.next();
    f.store
        .apply_member(
            7,
            Some(nod::api::etcd::etcdserverpb::Member {
                id: 7,
                name: "seven".into(),
                ..Default::default()
            }),
            at,
        )
        .unwrap();
    let at = f.next();
    f.store.apply_member(8, None, at).unwrap();
    let image = f.store.snapshot_bytes();
    let copy = KvStore::restore_from(&image).unwrap();
    assert_eq!(copy.applied(), f.store.applied());
    assert_eq!(copy.current_revision(), f.store.current_revision());
    assert_eq!(copy.hash_kv(0).unwrap(), f.store.hash_kv(0).unwrap());
    assert_eq!(copy.leases(), f.store.leases());
    assert_eq!(copy.members(), f.store.members());
    assert!(copy.is_removed(8));
    assert_eq!(
        copy.events_between(&KeyRange::new(b"\0", b"\0"), 0, 100)
            .unwrap(),
        f.store
            .events_between(&KeyRange::new(b"\0", b"\0"), 0, 100)
            .unwrap(),
        "the whole history travels"
    );
    assert_eq!(copy.snapshot_bytes(), image, "the image is deterministic");
    for i in [0, image.len() / 2, image.len() - 1] {
        let mut bad = image.clone();
        bad[i] ^= 0x40;
        assert!(
            KvStore::restore_from(&bad).is_err(),
            "a flipped bit at {i} is caught"
        );
    }
    assert!(KvStore::restore_from(&image[..image.len() - 5]).is_err());
}

/// A backend whose crash loses every unlogged write (`write_unlogged`) and
/// keeps every logged one: the worst a crash can do to a compaction's
/// sweep, which writes unlogged.
#[derive(Default)]
struct Volatile {
    live: MemoryBackend,
    durable: MemoryBackend,
}

impl Volatile {
    fn crash(self) -> Volatile {
        Volatile {
            live: self.durable.clone(),
            durable: self.durable,
        }
    }
}

impl Backend for Volatile {
    fn get(
        &self,
        keyspace: Keyspace,
        key: &[u8],
    ) -> Result<Option<std::borrow::Cow<'_, [u8]>>, nod::storage::backend::BackendError> {
        self.live.get(keyspace, key)
    }
    fn scan_from<'a>(
        &'a self,
        keyspace: Keyspace,
        from: &[u8],
    ) -> impl Iterator<
        Item = Result<nod::storage::backend::Entry<'a>, nod::storage::backend::BackendError>,
    > + 'a {
        self.live.scan_from(keyspace, from)
    }
    fn scan_rev<'a>(
        &'a self,
        keyspace: Keyspace,
        before: Option<&[u8]>,
    ) -> impl Iterator<
        Item = Result<nod::storage::backend::Entry<'a>, nod::storage::backend::BackendError>,
    > + 'a {
        self.live.scan_rev(keyspace, before)
    }
    fn write(&mut self, batch: Batch) -> Result<(), nod::storage::backend::BackendError> {
        self.durable.write(batch.clone())?;
        self.live.write(batch)
    }
    fn write_unlogged(&mut self, batch: Batch) -> Result<(), nod::storage::backend::BackendError> {
        self.live.write(batch)
    }
    fn size(&self) -> u64 {
        self.live.size()
    }
}

#[test]
fn a_crash_that_loses_a_finished_sweep_has_it_done_again() {
    let store = KvStore::from_backend(Volatile::default()).unwrap();
    let index = store.applied().0;
    let mut f = Fixture { store, index };
    let at_rev = history_then_compaction(&mut f);
    let want = answers(&f, at_rev);
    while f.store.compaction_step(7).unwrap() {}
    assert_eq!(answers(&f, at_rev), want, "swept");
    let before = f.store.into_backend();
    assert!(
        before.durable.size() > before.live.size(),
        "the sweep's removals are not logged"
    );
    let live_size = before.live.size();
    let store = KvStore::from_backend(before.crash()).unwrap();
    let mut f = Fixture { store, index: 0 };
    assert!(f.store.compaction_pending(), "the reopen sweeps again");
    assert!(f.store.swept_revision() < at_rev);
    assert_eq!(answers(&f, at_rev), want, "crashed, before the sweep");
    while f.store.compaction_step(7).unwrap() {}
    // Swept again: HashKV reads the records as stored, unfiltered.
    assert_eq!(answers(&f, at_rev), want, "swept again");
    assert_eq!(f.store.into_backend().live.size(), live_size);
}

fn users_age(name: &str, prefix: &str) -> IndexSpec {
    IndexSpec {
        name: name.into(),
        prefix: prefix.into(),
        fields: vec![IndexField {
            path: "age".into(),
            r#type: FieldType::Number as i32,
        }],
        unique: false,
    }
}

/// Declares an index, first enabling the feature (as a cluster's leader
/// does once every member has published it).
fn create_index<B: Backend>(f: &mut Fixture<B>, spec: &IndexSpec) -> Result<IndexDef, KvError> {
    if !f.store.feature_enabled(nod::command::FEATURE_INDEXES) {
        let at = f.next();
        f.store
            .apply_enable_feature(nod::command::FEATURE_INDEXES, at)
            .unwrap()
            .into_result()
            .unwrap();
    }
    declare_index(f, spec)
}

fn declare_index<B: Backend>(f: &mut Fixture<B>, spec: &IndexSpec) -> Result<IndexDef, KvError> {
    let at = f.next();
    f.store
        .apply_index_create(spec, at)
        .unwrap()
        .into_result()
        .map(|a| a.response)
}

/// Index `id` matches what the stored records give; answers how many
/// entries it must hold.
#[track_caller]
fn verified<B: Backend>(f: &Fixture<B>, id: u32) -> u64 {
    let check = f
        .store
        .verify_secondary(id)
        .unwrap()
        .expect("the index exists");
    assert!(
        check.missing.is_empty() && check.extra.is_empty(),
        "{check:?}"
    );
    check.expected
}

fn a_secondary_index_backfills_follows_writes_and_loses_compacted_entries<H: Harness>(h: &mut H) {
    let mut f = create(h);
    f.put("/u/a", r#"{"age": 30}"#);
    f.put("/u/b", r#"{"age": "thirty"}"#); // the wrong type: skipped
    f.put("/u/c", "not json");
    f.put("/u/e", r#"{"age": 1}"#);
    f.del("/u/e", ""); // deleted before the index: nothing to backfill
    f.put("/v/a", r#"{"age": 30}"#); // outside the prefix
    let since = f.store.current_revision();
    let def = create_index(&mut f, &users_age("users_age", "/u/")).unwrap();
    assert_eq!(
        def.state,
        IndexState::Building {
            since,
            cursor: Vec::new(),
            keys_done: 0,
            keys_total: 3,
        },
        "a, b and c have values at {since}"
    );
    assert_eq!(f.store.current_revision(), since, "DDL moves no revision");
    // A write during the build is indexed by apply.
    f.put("/u/d", r#"{"age": 5}"#);
    assert_eq!(verified(&f, def.id), 1, "only d so far");
    let at = f.next();
    f.store.apply_backfill(def.id, 2, at).unwrap();
    assert!(matches!(
        &f.store.indexes()[0].state,
        IndexState::Building { cursor, keys_done: 2, .. } if cursor == b"/u/b"
    ));
    assert_eq!(verified(&f, def.id), 2, "a backfilled, b skipped");
    let mut f = reopen(h, f);
    let at = f.next();
    f.store.apply_backfill(def.id, 2, at).unwrap();
    assert_eq!(f.store.indexes()[0].state, IndexState::Ready { since });
    assert_eq!(verified(&f, def.id), 2, "c is not JSON");
    // A repeated step changes nothing.
    let at = f.next();
    f.store.apply_backfill(def.id, 2, at).unwrap();
    assert_eq!(f.store.indexes()[0].state, IndexState::Ready { since });
    assert_eq!(f.store.applied().0, at.0);

    // Overwrites keep the old entries until compaction; a delete writes none.
    f.put("/u/a", r#"{"age": 31}"#);
    f.put("/u/b", r#"{"age": 40, "more": [1, 2]}"#);
    f.del("/u/d", "");
    let txn = f.next();
    f.store
        .apply_txn(
            &TxnRequest {
                success: ["/u/f", "/u/g"]
                    .iter()
                    .map(|k| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: k.as_bytes().to_vec(),
                            value: br#"{"age": 7}"#.to_vec(),
                            ..Default::default()
                        })),
                    })
                    .collect(),
                ..Default::default()
            },
            txn,
        )
        .unwrap()
        .into_result()
        .unwrap();
    // a twice, d, b, f, g.
    assert_eq!(verified(&f, def.id), 6);
    let mut f = reopen(h, f);
    let ready = IndexDef {
        state: IndexState::Ready { since },
        ..def.clone()
    };
    assert_eq!(f.store.indexes()[0], ready);
    assert_eq!(verified(&f, def.id), 6, "reopened");

    // Compaction drops a's old entry and d's (deleted) with their records.
    let at_rev = f.store.current_revision();
    compact(&mut f, at_rev);
    assert_eq!(verified(&f, def.id), 4, "before the sweep either way");
    assert!(f.store.compaction_step(1).unwrap());
    let mut f = reopen(h, f);
    while f.store.compaction_step(1).unwrap() {
        verified(&f, def.id);
    }
    assert_eq!(verified(&f, def.id), 4, "a, b, f, g");

    // Dropping it removes its entries; another index keeps its own.
    let other = create_index(&mut f, &users_age("v_age", "/v/")).unwrap();
    assert_eq!(other.id, def.id + 1);
    assert_eq!(verified(&f, other.id), 0, "building, not backfilled");
    let at = f.next();
    f.store.apply_backfill(other.id, 10, at).unwrap();
    assert!(f.store.indexes()[1].ready_since().is_some());
    let at = f.next();
    let dropped = f
        .store
        .apply_index_drop("users_age", at)
        .unwrap()
        .into_result()
        .unwrap()
        .response;
    assert_eq!(dropped.id, def.id);
    assert_eq!(f.store.verify_secondary(def.id).unwrap(), None);
    let f = reopen(h, f);
    assert_eq!(f.store.indexes().len(), 1);
    assert_eq!(verified(&f, other.id), 1);
    let backend = f.store.into_backend();
    let left: Vec<_> = backend.scan_from(Keyspace::Secondary, &[]).collect();
    assert_eq!(left.len(), 1, "only v_age's entry is stored");
}

fn index_declarations_are_checked_and_refusals_change_nothing_else<H: Harness>(h: &mut H) {
    let mut f = create(h);
    // An empty prefix at creation: ready at once.
    let since = f.store.current_revision();
    let def = create_index(&mut f, &users_age("users_age", "/u/")).unwrap();
    assert_eq!(
        (def.id, def.state.clone()),
        (1, IndexState::Ready { since })
    );
    f.put("/u/a", r#"{"age": 1.5}"#);
    assert_eq!(verified(&f, def.id), 1);

    let mut bad = users_age("Users", "/u/");
    let refusals = [
        (
            users_age("users_age", "/w/"),
            KvError::IndexExists("users_age".into()),
        ),
        (bad.clone(), KvError::Invalid(String::new())),
        (
            {
                bad.name = "ok".into();
                bad.fields[0].r#type = 9;
                bad.clone()
            },
            KvError::Invalid(String::new()),
        ),
        (
            {
                bad.fields[0].r#type = FieldType::Bool as i32;
                bad.unique = true;
                bad.clone()
            },
            // Unique indexes have a feature of their own, not enabled here.
            KvError::FeatureMissing(nod::command::FEATURE_UNIQUE_INDEXES),
        ),
    ];
    for (spec, want) in refusals {
        let before = f.store.indexes().to_vec();
        let at = f.next();
        let got = f
            .store
            .apply_index_create(&spec, at)
            .unwrap()
            .into_result()
            .unwrap_err();
        assert_eq!(
            std::mem::discriminant(&got),
            std::mem::discriminant(&want),
            "{got}"
        );
        assert_eq!(f.store.applied(), at, "the entry is applied");
        assert_eq!(f.store.indexes(), &before[..], "and changed nothing else");
    }
    let at = f.next();
    assert_eq!(
        f.store
            .apply_index_drop("nope", at)
            .unwrap()
            .into_result()
            .unwrap_err(),
        KvError::IndexNotFound("nope".into())
    );
    // Up to 64 indexes.
    for i in 2..=64 {
        create_index(&mut f, &users_age(&format!("i{i}"), "/x/")).unwrap();
    }
    assert_eq!(
        create_index(&mut f, &users_age("one_more", "/x/")),
        Err(KvError::TooManyIndexes)
    );
    let f = reopen(h, f);
    assert_eq!(f.store.indexes().len(), 64);
    assert_eq!(verified(&f, def.id), 1);
}

/// Index declarations wait for the cluster to enable the feature, which
/// one entry does on every member alike, whatever each member's table of
/// published features shows: a member upgraded late, whose table missed
/// what others published while it ran an older binary, applies the same
/// entries to the same effect. Published features and the switch survive
/// a reopen; a removed member's features go with it.
fn indexes_wait_for_every_member_to_publish_the_feature<H: Harness>(h: &mut H) {
    use nod::command::{features, MemberAttributes, FEATURE_INDEXES};
    let mut f = create(h);
    let mut late = create(h);
    for id in [7u64, 8] {
        for s in [&mut f, &mut late] {
            let at = s.next();
            s.store
                .apply_member(
                    id,
                    Some(nod::api::etcd::etcdserverpb::Member {
                        id,
                        ..Default::default()
                    }),
                    at,
                )
                .unwrap();
        }
    }
    let publish = |f: &mut Fixture<H::Backend>, id: u64, features: Vec<String>| {
        let at = f.next();
        f.store
            .apply_member_attributes(
                &MemberAttributes {
                    id,
                    name: format!("m{id}"),
                    client_urls: vec![format!("http://m{id}")],
                    features,
                    ..Default::default()
                },
                at,
            )
            .unwrap()
    };
    assert!(publish(&mut f, 7, features()), "7 is a member");
    assert!(publish(&mut f, 8, Vec::new()));
    assert_eq!(f.store.lacking(FEATURE_INDEXES), Some(8));
    assert_eq!(
        declare_index(&mut f, &users_age("users_age", "/u/")).unwrap_err(),
        KvError::FeatureMissing(FEATURE_INDEXES)
    );
    assert!(f.store.indexes().is_empty());
    let mut f = reopen(h, f);
    assert_eq!(f.store.features_of(7), features(), "kept");
    assert_eq!(f.store.member(7).map(|m| m.name.as_str()), Some("m7"));
    assert!(publish(&mut f, 8, features()));
    assert_eq!(
        f.store.lacking(FEATURE_INDEXES),
        None,
        "the leader may enable it"
    );
    // The late member ran an older binary when 7 published: its table
    // has 8's features only. The switch is one entry all apply alike.
    assert!(publish(&mut late, 8, features()));
    assert_eq!(late.store.lacking(FEATURE_INDEXES), Some(7));
    for s in [&mut f, &mut late] {
        let at = s.next();
        s.store
            .apply_enable_feature(FEATURE_INDEXES, at)
            .unwrap()
            .into_result()
            .unwrap();
        assert!(declare_index(s, &users_age("users_age", "/u/")).is_ok());
    }
    assert_eq!(f.store.indexes(), late.store.indexes());
    // An unknown feature is refused; the entry is applied all the same.
    let at = f.next();
    assert!(matches!(
        f.store
            .apply_enable_feature("teleport", at)
            .unwrap()
            .into_result(),
        Err(KvError::Invalid(_))
    ));
    assert_eq!(f.store.applied(), at);
    assert!(!f.store.feature_enabled("teleport"));
    // Removing a member forgets what it published; the switch stays.
    let at = f.next();
    f.store.apply_member(8, None, at).unwrap();
    assert!(f.store.features_of(8).is_empty());
    let mut f = reopen(h, f);
    assert!(f.store.features_of(8).is_empty(), "removed with the member");
    assert!(f.store.feature_enabled(FEATURE_INDEXES), "enabled for good");
    // An unknown member's attributes change nothing but the applied index.
    assert!(!publish(&mut f, 9, features()));
    assert_eq!(f.store.applied(), (f.index, 1));
    assert!(f.store.features_of(9).is_empty());
}

fn email_index(name: &str, prefix: &str) -> IndexSpec {
    IndexSpec {
        name: name.into(),
        prefix: prefix.into(),
        fields: vec![IndexField {
            path: "email".into(),
            r#type: FieldType::String as i32,
        }],
        unique: true,
    }
}

fn try_txn<B: Backend>(f: &mut Fixture<B>, puts: &[(&str, &str)]) -> Result<(), KvError> {
    let at = f.next();
    let txn = TxnRequest {
        success: puts
            .iter()
            .map(|(k, v)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: k.as_bytes().to_vec(),
                    value: v.as_bytes().to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    };
    let r = f.store.apply_txn(&txn, at).unwrap().into_result();
    assert_eq!(f.store.applied(), at, "applied either way");
    r.map(|_| ())
}

fn rebuild<B: Backend>(f: &mut Fixture<B>, name: &str) -> Result<IndexDef, KvError> {
    let at = f.next();
    f.store
        .apply_index_rebuild(name, at)
        .unwrap()
        .into_result()
        .map(|a| a.response)
}

fn backfill<B: Backend>(f: &mut Fixture<B>, id: u32, keys: u32) -> IndexState {
    let at = f.next();
    f.store.apply_backfill(id, keys, at).unwrap();
    f.store
        .indexes()
        .iter()
        .find(|d| d.id == id)
        .expect("the index")
        .state
        .clone()
}

fn violation(value: &str, by: &str) -> KvError {
    KvError::UniqueViolation {
        index: "users_email".into(),
        value: value.into(),
        by: by.into(),
    }
}

/// A unique index refuses a put or a txn that would leave two keys with
/// one value, whole and atomically, on every member alike (the check
/// reads the entries stored and those of the open batch, and the keys'
/// visible changes, all applied state); a key keeping or handing over
/// its value, a delete freeing one, and values the index skips pass. A
/// build over duplicates fails and holds nothing; once they are gone, a
/// rebuild makes it ready, and writes are checked again.
fn unique_indexes_refuse_duplicates_whole_and_a_failed_build_is_rebuilt<H: Harness>(h: &mut H) {
    use nod::command::FEATURE_UNIQUE_INDEXES;
    let mut f = create(h);
    let spec = email_index("users_email", "/u/");
    assert_eq!(
        create_index(&mut f, &spec).unwrap_err(),
        KvError::FeatureMissing(FEATURE_UNIQUE_INDEXES)
    );
    assert_eq!(
        rebuild(&mut f, "users_email").unwrap_err(),
        KvError::FeatureMissing(FEATURE_UNIQUE_INDEXES),
        "rebuild comes with the same feature"
    );
    let at = f.next();
    f.store
        .apply_enable_feature(FEATURE_UNIQUE_INDEXES, at)
        .unwrap()
        .into_result()
        .unwrap();
    let def = create_index(&mut f, &spec).unwrap();
    assert!(def.ready_since().is_some(), "nothing to backfill");

    f.put("/u/a", r#"{"email": "a@x"}"#);
    let rev = f.store.current_revision();
    let e = try_txn(&mut f, &[("/u/b", r#"{"email": "a@x", "n": 1}"#)]).unwrap_err();
    assert_eq!(e, violation("\"a@x\"", "key \"/u/a\""));
    assert_eq!(
        e.to_string(),
        r#"nod: unique index "users_email": value "a@x" is already used by key "/u/a""#
    );
    assert_eq!(f.store.current_revision(), rev, "nothing written");
    assert_eq!(f.get("/u/b", 0), Ok(None));
    // A key keeps its own value; skipped values and other prefixes pass.
    f.put("/u/a", r#"{"email": "a@x", "v": 2}"#);
    f.put("/u/c", "not json");
    f.put("/u/d", r#"{"name": "d"}"#);
    f.put("/u/e", r#"{"email": 5}"#);
    f.put("/w/a", r#"{"email": "a@x"}"#);
    // One txn hands a's value to b: a leaves it in the same revision.
    try_txn(
        &mut f,
        &[
            ("/u/a", r#"{"email": "z@x"}"#),
            ("/u/b", r#"{"email": "a@x"}"#),
        ],
    )
    .unwrap();
    // A txn whose second put conflicts is refused whole.
    let rev = f.store.current_revision();
    assert_eq!(
        try_txn(
            &mut f,
            &[
                ("/u/f", r#"{"email": "f@x"}"#),
                ("/u/g", r#"{"email": "z@x"}"#),
            ],
        ),
        Err(violation("\"z@x\"", "key \"/u/a\""))
    );
    assert_eq!(f.store.current_revision(), rev);
    assert_eq!(f.get("/u/f", 0), Ok(None), "the first put is gone too");
    // Two keys of one txn with one new value.
    assert_eq!(
        try_txn(
            &mut f,
            &[
                ("/u/f", r#"{"email": "same"}"#),
                ("/u/g", r#"{"email": "same"}"#),
            ],
        ),
        Err(violation("\"same\"", "key \"/u/f\""))
    );
    // A delete frees a value.
    f.del("/u/b", "");
    f.put("/u/g", r#"{"email": "a@x"}"#);
    // Within one batch (a Ready), an entry not yet in the backend counts.
    f.store.begin_batch();
    f.put("/u/h", r#"{"email": "h@x"}"#);
    assert_eq!(
        try_txn(&mut f, &[("/u/i", r#"{"email": "h@x"}"#)]),
        Err(violation("\"h@x\"", "key \"/u/h\""))
    );
    f.store.end_batch().unwrap();
    let mut f = reopen(h, f);
    assert_eq!(
        try_txn(&mut f, &[("/u/i", r#"{"email": "h@x"}"#)]),
        Err(violation("\"h@x\"", "key \"/u/h\"")),
        "and after the batch is written, and reopened"
    );
    // a three times, b, g and h: an entry per put record since.
    assert_eq!(verified(&f, def.id), 6);

    // A build over duplicates fails and drops what it indexed.
    f.put("/p/a", r#"{"email": "dup"}"#);
    f.put("/p/b", r#"{"email": "dup"}"#);
    f.put("/p/c", r#"{"email": "c"}"#);
    let p = create_index(&mut f, &email_index("p_email", "/p/")).unwrap();
    assert!(matches!(
        p.state,
        IndexState::Building { keys_total: 3, .. }
    ));
    // Writes during the build are checked against what is indexed: not b.
    f.put("/p/d", r#"{"email": "d"}"#);
    assert!(matches!(
        backfill(&mut f, p.id, 1),
        IndexState::Building { keys_done: 1, .. }
    ));
    assert_eq!(verified(&f, p.id), 2, "a, and d by apply");
    let IndexState::Failed { reason } = backfill(&mut f, p.id, 10) else {
        panic!("a duplicate fails the build");
    };
    assert!(
        reason.contains(r#"value "dup" is held by keys "/p/a" and "/p/b""#),
        "{reason}"
    );
    assert_eq!(verified(&f, p.id), 0, "a failed index holds nothing");
    let stored: Vec<_> = f
        .store
        .indexes()
        .iter()
        .map(|d| (d.id, d.state.clone()))
        .collect();
    // A failed index checks nothing, and stays failed across a reopen.
    f.put("/p/e", r#"{"email": "c"}"#);
    let mut f = reopen(h, f);
    let reopened: Vec<_> = f
        .store
        .indexes()
        .iter()
        .map(|d| (d.id, d.state.clone()))
        .collect();
    assert_eq!(reopened, stored);
    // Rebuilt over the same duplicates: failed again.
    assert!(matches!(
        rebuild(&mut f, "p_email").unwrap().state,
        IndexState::Building { keys_total: 5, .. }
    ));
    assert!(matches!(
        backfill(&mut f, p.id, 100),
        IndexState::Failed { .. }
    ));
    // Fixed, then rebuilt: ready, and checking again.
    f.del("/p/b", "");
    f.del("/p/e", "");
    let since = f.store.current_revision();
    rebuild(&mut f, "p_email").unwrap();
    assert_eq!(backfill(&mut f, p.id, 100), IndexState::Ready { since });
    assert_eq!(verified(&f, p.id), 3, "a, c, d");
    assert_eq!(
        try_txn(&mut f, &[("/p/z", r#"{"email": "dup"}"#)]),
        Err(KvError::UniqueViolation {
            index: "p_email".into(),
            value: "\"dup\"".into(),
            by: "key \"/p/a\"".into(),
        })
    );
    assert_eq!(
        rebuild(&mut f, "nope").unwrap_err(),
        KvError::IndexNotFound("nope".into())
    );

    // Dropped and declared again in one batch, the new index takes the
    // dropped one's id: the old entries, still in the backend until the
    // batch is written, no longer count, and the new index has none yet.
    f.store.begin_batch();
    let at = f.next();
    f.store
        .apply_index_drop("p_email", at)
        .unwrap()
        .into_result()
        .unwrap();
    let again = create_index(&mut f, &email_index("p_email", "/p/")).unwrap();
    assert_eq!(again.id, p.id);
    try_txn(&mut f, &[("/p/y", r#"{"email": "dup"}"#)]).unwrap();
    f.store.end_batch().unwrap();
    assert!(matches!(
        backfill(&mut f, again.id, 100),
        IndexState::Failed { .. }
    ));

    // With auth on, the refusal does not name the key holding the value.
    {
        use nod::auth::auth_command::Op as A;
        use nod_proto::etcd::etcdserverpb::{
            AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
        };
        for op in [
            A::UserAdd(AuthUserAddRequest {
                name: "root".into(),
                hashed_password: "$2b$04$hash".into(),
                ..Default::default()
            }),
            A::UserGrantRole(AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            }),
            A::Enable(AuthEnableRequest {}),
        ] {
            let at = f.next();
            f.store.apply_auth(&op, None, at).unwrap();
        }
        assert!(f.store.auth().enabled());
    }
    assert_eq!(
        try_txn(&mut f, &[("/u/j", r#"{"email": "h@x"}"#)]),
        Err(violation("\"h@x\"", "another key"))
    );
}
