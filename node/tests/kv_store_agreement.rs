//! The two backends agree: the same random sequence of puts, deletes,
//! transactions, compactions, lease grants and revokes, batches and
//! crashes, applied to a store over RocksDB and one over memory, gives the
//! same responses, events, revisions, ranges at every kept revision, watch
//! history and hash. The conformance suite (`kv_store.rs`) says what the
//! store must do; this says the memory twin does exactly what RocksDB does,
//! so a simulation over memory tells the truth about the server.

use nod::api::etcd::etcdserverpb::{
    compare, request_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest,
};
use nod::api::etcd::mvccpb::Event;
use nod::storage::backend::{Backend, MemoryBackend, RocksBackend};
use nod::storage::kv_store::{self, KeyRange};
use nod::storage::{KvStore, ReadError, StoreError};
use proptest::prelude::*;

const KEYS: [&str; 5] = ["a", "ab", "b", "c", "d"];
/// `range_end` choices: the single key, everything from it, or up to a key.
const ENDS: [&str; 4] = ["", "\0", "b", "z"];

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: usize,
        value: u8,
        lease: i64,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    },
    Delete {
        key: usize,
        end: usize,
        prev_kv: bool,
    },
    Txn {
        key: usize,
        version: i64,
        success: Vec<Op>,
        failure: Vec<Op>,
    },
    /// Compacts at `current - back` (may be refused: compacted, future).
    Compact {
        back: i64,
    },
    LeaseGrant {
        id: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    BeginBatch,
    EndBatch,
    /// Closes and reopens both stores from what their backends hold.
    Crash,
}

fn put() -> impl Strategy<Value = Op> {
    (
        0..KEYS.len(),
        any::<u8>(),
        prop_oneof![3 => Just(0i64), 1 => 1..4i64],
        any::<bool>(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| Op::Put {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn delete() -> impl Strategy<Value = Op> {
    (0..KEYS.len(), 0..ENDS.len(), any::<bool>()).prop_map(|(key, end, prev_kv)| Op::Delete {
        key,
        end,
        prev_kv,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let txn_op = prop_oneof![put(), delete()];
    prop_oneof![
        6 => put(),
        2 => delete(),
        2 => (
            0..KEYS.len(),
            0..3i64,
            prop::collection::vec(txn_op.clone(), 0..4),
            prop::collection::vec(txn_op, 0..3),
        )
            .prop_map(|(key, version, success, failure)| Op::Txn {
                key,
                version,
                success,
                failure,
            }),
        1 => (0..6i64).prop_map(|back| Op::Compact { back }),
        1 => (1..4i64).prop_map(|id| Op::LeaseGrant { id }),
        1 => (1..4i64).prop_map(|id| Op::LeaseRevoke { id }),
        1 => Just(Op::BeginBatch),
        1 => Just(Op::EndBatch),
        1 => Just(Op::Crash),
    ]
}

fn put_request(op: &Op) -> Option<PutRequest> {
    match *op {
        Op::Put {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        } => Some(PutRequest {
            key: KEYS[key].into(),
            value: if ignore_value { vec![] } else { vec![value] },
            lease: if ignore_lease { 0 } else { lease },
            prev_kv,
            ignore_value,
            ignore_lease,
        }),
        _ => None,
    }
}

fn delete_request(op: &Op) -> Option<DeleteRangeRequest> {
    match *op {
        Op::Delete { key, end, prev_kv } => Some(DeleteRangeRequest {
            key: KEYS[key].into(),
            range_end: ENDS[end].into(),
            prev_kv,
        }),
        _ => None,
    }
}

fn request_op(op: &Op) -> RequestOp {
    let request = match (put_request(op), delete_request(op)) {
        (Some(p), _) => request_op::Request::RequestPut(p),
        (_, Some(d)) => request_op::Request::RequestDeleteRange(d),
        _ => unreachable!("txns hold puts and deletes only"),
    };
    RequestOp {
        request: Some(request),
    }
}

/// What one step returned, in a form both stores' answers compare in: the
/// response and events, or the request's refusal; or the store's failure.
type Outcome = Result<String, StoreError>;

fn applied<R: std::fmt::Debug, B: Backend>(
    store: &KvStore<B>,
    r: Result<kv_store::Outcome<R>, StoreError>,
) -> Outcome {
    Ok(match r? {
        kv_store::Outcome::Applied(mut a) => {
            store.fill_prev(&mut a.events).expect("fill_prev");
            format!("{:?} {:?}", a.response, a.events)
        }
        kv_store::Outcome::Refused(e) => format!("refused: {e:?}"),
    })
}

struct Pair {
    rocks: KvStore<RocksBackend>,
    memory: KvStore<MemoryBackend>,
    index: u64,
    _dir: tempfile::TempDir,
}

fn step<B: Backend>(store: &mut KvStore<B>, op: &Op, at: (u64, u64)) -> Outcome {
    match op {
        Op::Put { .. } => {
            let r = store.apply_put(&put_request(op).unwrap(), at);
            applied(store, r)
        }
        Op::Delete { .. } => {
            let r = store.apply_delete(&delete_request(op).unwrap(), at);
            applied(store, r)
        }
        Op::Txn {
            key,
            version,
            success,
            failure,
        } => {
            let req = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: KEYS[*key].into(),
                    range_end: vec![],
                    target_union: Some(compare::TargetUnion::Version(*version)),
                }],
                success: success.iter().map(request_op).collect(),
                failure: failure.iter().map(request_op).collect(),
            };
            let r = store.apply_txn(&req, at);
            applied(store, r)
        }
        Op::Compact { back } => {
            let req = CompactionRequest {
                revision: store.current_revision() - back,
                physical: true,
            };
            let r = store.apply_compaction(&req, at);
            applied(store, r)
        }
        Op::LeaseGrant { id } => {
            let r = store.apply_lease_grant(*id, 60, at);
            applied(store, r)
        }
        Op::LeaseRevoke { id } => {
            let r = store.apply_lease_revoke(*id, at);
            applied(store, r)
        }
        Op::BeginBatch => {
            store.begin_batch();
            Ok(String::new())
        }
        Op::EndBatch => store.end_batch().map(|()| String::new()),
        Op::Crash => unreachable!("the pair reopens both stores"),
    }
}

/// Everything a reader can see of a store.
fn observe<B: Backend>(store: &KvStore<B>) -> String {
    let all = KeyRange::new(b"\0", b"\0");
    let mut seen = format!(
        "current {} compacted {} applied {:?} leases {:?} members {:?}\n",
        store.current_revision(),
        store.compacted_revision(),
        store.applied(),
        store.leases(),
        store.members(),
    );
    for rev in store.compacted_revision().max(1)..=store.current_revision() {
        let range = store.range(&RangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            revision: rev,
            ..Default::default()
        });
        seen += &format!("range at {rev}: {range:?}\n");
    }
    let events: Result<Vec<Event>, ReadError> =
        store.events_between(&all, store.compacted_revision(), store.current_revision());
    seen += &format!("events {events:?}\n");
    seen += &format!("hash {:?}\n", store.hash_kv(0));
    seen += &format!(
        "hash at compaction {:?}\n",
        store.hash_kv(store.compacted_revision())
    );
    seen
}

fn reopen<B: Backend>(store: KvStore<B>) -> KvStore<B> {
    KvStore::from_backend(store.into_backend()).expect("reopen")
}

impl Pair {
    fn new() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        Pair {
            rocks: KvStore::open(&dir.path().join("kv")).unwrap(),
            memory: KvStore::in_memory(),
            index: 0,
            _dir: dir,
        }
    }

    /// Both stores start over from what their backends hold (an open batch
    /// is lost). RocksDB's own close and reopen is the conformance suite's.
    fn crash(self) -> Pair {
        let rocks = reopen(self.rocks);
        let index = rocks.applied().0;
        Pair {
            rocks,
            memory: reopen(self.memory),
            index,
            _dir: self._dir,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.index += 1;
        let at = (self.index, 1);
        let rocks = step(&mut self.rocks, op, at);
        let memory = step(&mut self.memory, op, at);
        prop_assert_eq!(&rocks, &memory, "{:?} answered differently", op);
        prop_assert!(rocks.is_ok(), "the store failed: {:?}", rocks);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn rocksdb_and_memory_backends_agree(ops in prop::collection::vec(op(), 1..60)) {
        let mut pair = Pair::new();
        for op in &ops {
            match op {
                Op::Crash => pair = pair.crash(),
                op => pair.apply(op)?,
            }
            prop_assert_eq!(
                observe(&pair.rocks),
                observe(&pair.memory),
                "the stores differ after {:?}",
                op
            );
        }
        pair.rocks.end_batch().unwrap();
        pair.memory.end_batch().unwrap();
        let pair = pair.crash();
        prop_assert_eq!(observe(&pair.rocks), observe(&pair.memory), "after a last reopen");
    }
}
