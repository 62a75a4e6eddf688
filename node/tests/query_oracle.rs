//! Queries over the store answer what the store's own Range shows at the
//! same revision: through the planner's choice, through a prefix scan and
//! through every index that says it can serve the query, on RocksDB and
//! on memory, while documents are written, overwritten and deleted,
//! compactions drop old revisions (and their entries, a sweep step at a
//! time), indexes are declared, backfilled step by step and dropped, and
//! the stores are reopened mid-way. Every index also matches what its
//! records give (`verify_secondary`) after every step. Two of the indexes
//! are unique: no ready one ever has two live keys with one tuple, a
//! write it refuses would have made such a pair, and a build it gives up
//! (FAILED) met one; a rebuild starts it again.
//!
//! Every document an index access finds is checked against the whole
//! WHERE clause again, so a stale entry costs a read, not a wrong row:
//! what this catches is an index that misses documents (an entry never
//! written, removed while live, lost with a batch) or is read before it
//! covers R (tried: an index used while it is being built fails here).
//!
//! The oracle never reads the `secondary` keyspace or the planner: it is
//! a Range at R over the query's prefix, filtered, sorted and projected by
//! the executor over a plain list. What the executor and evaluator mean
//! for one list of documents is `nod-query`'s own tests' concern; this
//! says the store finds exactly those documents, by any index, at any
//! kept revision. Queries run between batches, as the server runs them.

use nod::storage::backend::Backend;
use std::collections::BTreeMap;

use nod::storage::kv_store::{query_doc, IndexDef, IndexState, Outcome, PlanChoice, QueryError};
use nod::storage::{KvError, KvStore};
use nod_proto::etcd::etcdserverpb::{
    request_op, CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use nod_proto::nodquerypb::{FieldType, IndexField, IndexSpec};
use nod_query::codec::prefix_end;
use nod_query::exec::{execute, Doc, Flow, Limits, Output, Paging, Source};
use nod_query::plan::{prefix_plan, Access, ByteRange};
use nod_query::{parse, Query};
use proptest::prelude::*;

const KEYS: [&str; 10] = [
    "/u/k0", "/u/k1", "/u/k10", "/u/k2", "/u/k3", "/u/k4", "/u/k5", "/v/k0", "/v/k1", "/w",
];

const LIMITS: Limits = Limits {
    max_rows: 100_000,
    max_examined: 1_000_000,
};

/// The declarations the steps create and drop, by position.
fn specs() -> Vec<IndexSpec> {
    let spec = |name: &str, prefix: &str, fields: &[(&str, FieldType)]| IndexSpec {
        name: name.into(),
        prefix: prefix.into(),
        fields: fields
            .iter()
            .map(|(path, ty)| IndexField {
                path: (*path).into(),
                r#type: *ty as i32,
            })
            .collect(),
        unique: name.starts_with("uniq_"),
    };
    vec![
        spec("city", "/u/", &[("city", FieldType::String)]),
        spec("age", "/u/", &[("age", FieldType::Number)]),
        spec(
            "city_age",
            "/u/",
            &[("city", FieldType::String), ("age", FieldType::Number)],
        ),
        spec("ok", "/u/k1", &[("ok", FieldType::Bool)]),
        spec("nested", "/", &[("a.b", FieldType::Number)]),
        spec("uniq_city", "/u/", &[("city", FieldType::String)]),
        spec(
            "uniq_age_ok",
            "/u/",
            &[("age", FieldType::Number), ("ok", FieldType::Bool)],
        ),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Put(usize, String),
    /// One key, or (`true`) every key under `/u/`.
    Delete(usize, bool),
    /// Puts in one revision.
    Txn(Vec<(usize, String)>),
    /// At `current - back` (may be refused).
    Compact(i64),
    /// A step of the compaction's sweep, of this many records.
    Sweep(usize),
    Create(usize),
    Drop(usize),
    Rebuild(usize),
    Backfill(usize, u32),
    BeginBatch,
    EndBatch,
    Reopen,
}

fn document() -> impl Strategy<Value = String> {
    let city = prop::sample::select(vec![
        r#""city": "Oslo""#,
        r#""city": "Bergen""#,
        r#""city": "Os""#,
        r#""city": """#,
        r#""city": 3"#,
    ]);
    let age = prop::sample::select(vec![
        r#""age": 0"#,
        r#""age": 3"#,
        r#""age": 3.5"#,
        r#""age": -2"#,
        r#""age": -0.0"#,
        r#""age": 1e300"#,
        r#""age": "3""#,
    ]);
    let ok = prop::sample::select(vec![r#""ok": true"#, r#""ok": false"#, r#""ok": 1"#]);
    let nested = prop::sample::select(vec![r#""a": {"b": 1}"#, r#""a": {"b": -1}"#, r#""a": 1"#]);
    (
        prop::option::of(city),
        prop::option::of(age),
        prop::option::of(ok),
        prop::option::of(nested),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(c, a, o, n, plain)| {
            if plain {
                return "plain text".to_string();
            }
            let fields: Vec<&str> = [c, a, o, n].into_iter().flatten().collect();
            format!("{{{}}}", fields.join(", "))
        })
}

fn op() -> impl Strategy<Value = Op> {
    let n = specs().len();
    prop_oneof![
        8 => (0..KEYS.len(), document()).prop_map(|(k, d)| Op::Put(k, d)),
        2 => (0..KEYS.len(), prop::bool::weighted(0.15)).prop_map(|(k, all)| Op::Delete(k, all)),
        1 => prop::collection::vec((0..KEYS.len(), document()), 1..3).prop_map(Op::Txn),
        1 => (0..4i64).prop_map(Op::Compact),
        1 => (1..4usize).prop_map(Op::Sweep),
        2 => (0..n).prop_map(Op::Create),
        1 => (0..n).prop_map(Op::Drop),
        1 => (0..n).prop_map(Op::Rebuild),
        3 => (0..n, 1..4u32).prop_map(|(i, m)| Op::Backfill(i, m)),
        1 => Just(Op::BeginBatch),
        1 => Just(Op::EndBatch),
        1 => Just(Op::Reopen),
    ]
}

/// A condition, as query text.
fn condition() -> impl Strategy<Value = String> {
    let cmp = prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">="]);
    let city = prop::sample::select(vec!["'Oslo'", "'Os'", "''", "'Bergen'", "3"]);
    let number = prop::sample::select(vec!["0", "3", "3.5", "-0", "-2", "1e300", "'3'"]);
    let leaf = prop_oneof![
        (cmp.clone(), city.clone()).prop_map(|(c, v)| format!("city {c} {v}")),
        (cmp.clone(), number.clone()).prop_map(|(c, v)| format!("age {c} {v}")),
        (cmp, number.clone()).prop_map(|(c, v)| format!("a.b {c} {v}")),
        (city.clone(), city).prop_map(|(a, b)| format!("city IN ({a}, {b})")),
        (number.clone(), number).prop_map(|(a, b)| format!("age BETWEEN {a} AND {b}")),
        prop::sample::select(vec!["'O'", "''", "'Be'"])
            .prop_map(|p| format!("city STARTS WITH {p}")),
        prop::sample::select(vec!["ok = TRUE", "ok = FALSE", "ok IS MISSING"])
            .prop_map(str::to_string),
        prop::sample::select(vec!["MOD_REVISION > 5", "VERSION = 1", "KEY >= '/u/k2'"])
            .prop_map(str::to_string),
    ];
    leaf.prop_recursive(2, 6, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} AND {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} OR {b})")),
            inner.prop_map(|a| format!("NOT {a}")),
        ]
    })
}

fn query() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["*", "COUNT(*)", "KEY, city, age, CREATE_REVISION"]),
        prop::sample::select(vec!["/u/", "/u/k1", "/", "/v/"]),
        prop::option::weighted(0.85, condition()),
        prop::sample::select(vec![
            "",
            " ORDER BY age",
            " ORDER BY age DESC",
            " ORDER BY city DESC, KEY",
            " ORDER BY city, age DESC",
        ]),
        prop::option::of(1u8..4),
    )
        .prop_map(|(what, from, cond, order, limit)| {
            let mut text = format!("SELECT {what} FROM '{from}'");
            if let Some(c) = cond {
                text += &format!(" WHERE {c}");
            }
            if what != "COUNT(*)" {
                text += order;
                if let Some(n) = limit {
                    text += &format!(" LIMIT {n}");
                }
            }
            text
        })
}

/// Documents in key order: the oracle's source.
struct Listed(Vec<Doc>);

impl Source for Listed {
    type Error = std::convert::Infallible;
    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(Doc) -> Result<Flow, Self::Error>,
    ) -> Result<(), Self::Error> {
        let after = |d: &&Doc| after.is_none_or(|a| d.key.as_slice() > a);
        for d in self
            .0
            .iter()
            .filter(|d| d.key.starts_with(prefix))
            .filter(after)
        {
            if !visit(d.clone())? {
                break;
            }
        }
        Ok(())
    }
    // A prefix plan reads no index.
    fn scan_index(
        &self,
        _: &ByteRange,
        _: bool,
        _: &mut dyn FnMut(&[u8]) -> Result<Flow, Self::Error>,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
    fn visible(&self, _: &[u8], _: u64, _: u64) -> Result<Option<Doc>, Self::Error> {
        Ok(None)
    }
}

/// What the store's Range at `at` says `q` answers.
fn oracle<B: Backend>(store: &KvStore<B>, q: &Query, at: i64) -> Output {
    let from = q.from.as_bytes();
    let range = store
        .range(&RangeRequest {
            key: from.to_vec(),
            range_end: prefix_end(from).unwrap_or_else(|| vec![0]),
            revision: at,
            ..Default::default()
        })
        .expect("a range at a kept revision");
    let docs = range.kvs.into_iter().map(query_doc).collect();
    match execute(q, &prefix_plan(at), &Listed(docs), LIMITS) {
        Ok(out) => out,
        Err(e) => panic!("the oracle failed: {e}"),
    }
}

fn put(key: usize, doc: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: KEYS[key].into(),
            value: doc.into(),
            ..Default::default()
        })),
    }
}

/// Applies `op` at `at`; a refusal is an answer, a store failure is not.
fn step<B: Backend>(store: &mut KvStore<B>, op: &Op, at: (u64, u64)) -> String {
    fn shown<R: std::fmt::Debug>(r: Result<Outcome<R>, nod::storage::StoreError>) -> String {
        match r.expect("the store works") {
            Outcome::Applied(a) => format!("{:?}", a.response),
            Outcome::Refused(e) => format!("refused: {e}"),
        }
    }
    let specs = specs();
    let id_of =
        |store: &KvStore<B>, i: usize| store.index_named(&specs[i].name).map_or(u32::MAX, |d| d.id);
    match op {
        Op::Put(k, doc) => shown(store.apply_put(
            &PutRequest {
                key: KEYS[*k].into(),
                value: doc.clone().into_bytes(),
                ..Default::default()
            },
            at,
        )),
        Op::Delete(k, all) => {
            let req = if *all {
                DeleteRangeRequest {
                    key: b"/u/".to_vec(),
                    range_end: b"/u0".to_vec(),
                    prev_kv: false,
                }
            } else {
                DeleteRangeRequest {
                    key: KEYS[*k].into(),
                    ..Default::default()
                }
            };
            shown(store.apply_delete(&req, at))
        }
        Op::Txn(puts) => {
            // A txn may not put one key twice: the first of each.
            let mut keys = Vec::new();
            let mut success = Vec::new();
            for (k, doc) in puts {
                if !keys.contains(k) {
                    keys.push(*k);
                    success.push(put(*k, doc));
                }
            }
            shown(store.apply_txn(
                &TxnRequest {
                    success,
                    ..Default::default()
                },
                at,
            ))
        }
        Op::Compact(back) => shown(store.apply_compaction(
            &CompactionRequest {
                revision: store.current_revision() - back,
                physical: true,
            },
            at,
        )),
        Op::Sweep(n) => {
            // Between batches, as the driver runs it; never logged.
            store.compaction_step(*n).expect("the sweep works");
            String::new()
        }
        Op::Create(i) => shown(store.apply_index_create(&specs[*i], at)),
        Op::Drop(i) => shown(store.apply_index_drop(&specs[*i].name, at)),
        Op::Rebuild(i) => shown(store.apply_index_rebuild(&specs[*i].name, at)),
        Op::Backfill(i, max) => {
            let id = id_of(store, *i);
            shown(store.apply_backfill(id, *max, at))
        }
        Op::BeginBatch => {
            store.begin_batch();
            String::new()
        }
        Op::EndBatch => {
            store.end_batch().expect("the store works");
            String::new()
        }
        Op::Reopen => unreachable!("the pair reopens both stores"),
    }
}

/// Every index of `store` matches its records.
fn indexes_hold<B: Backend>(store: &KvStore<B>, name: &str) -> Result<(), TestCaseError> {
    for def in store.indexes() {
        let check = store
            .verify_secondary(def.id)
            .expect("the store works")
            .expect("a listed index");
        prop_assert!(
            check.missing.is_empty() && check.extra.is_empty(),
            "{} on {}: {:?}",
            def.spec.name,
            name,
            check
        );
    }
    Ok(())
}

/// Every live key and its value, at the current revision.
fn live<B: Backend>(store: &KvStore<B>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    store
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .expect("a range")
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// The first unique index of `defs` (those `which` says) for which two
/// keys of `docs` give one tuple.
fn duplicated(
    defs: &[IndexDef],
    docs: &BTreeMap<Vec<u8>, Vec<u8>>,
    which: impl Fn(&IndexDef) -> bool,
) -> Option<String> {
    for def in defs.iter().filter(|d| d.spec.unique && which(d)) {
        let mut seen = Vec::new();
        for (_, v) in docs.iter().filter(|(k, _)| def.spec.covers(k)) {
            if let Ok(t) = def.spec.tuple(v) {
                if seen.contains(&t) {
                    return Some(format!("{} has {t:?} twice", def.spec.name));
                }
                seen.push(t);
            }
        }
    }
    None
}

/// Every way of answering `q` at `at` on `store` gives the oracle's rows;
/// returns how many answers went through an index.
fn answers_agree<B: Backend>(
    store: &KvStore<B>,
    q: &Query,
    text: &str,
    at: i64,
    want: &Output,
) -> Result<u32, TestCaseError> {
    let mut choices = vec![PlanChoice::Best, PlanChoice::PrefixScan];
    let names: Vec<String> = store
        .indexes()
        .iter()
        .map(|d| d.spec.name.clone())
        .collect();
    choices.extend(names.iter().map(|n| PlanChoice::Index(n.as_str())));
    let mut indexed = 0;
    for choice in choices {
        let got = match store.query(q, at, choice, LIMITS) {
            Ok(a) => a,
            // An index that cannot serve the query says so.
            Err(QueryError::Request(KvError::Invalid(why)))
                if matches!(choice, PlanChoice::Index(_)) =>
            {
                prop_assert!(why.contains("cannot serve"), "{}", why);
                continue;
            }
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "{text} at {at} by {choice:?}: {e}"
                )))
            }
        };
        if !matches!(got.plan.access, Access::Prefix) {
            indexed += 1;
        }
        prop_assert_eq!(
            (&got.output.rows, got.output.count),
            (&want.rows, want.count),
            "{} at {} by {:?}: {}",
            text,
            at,
            choice,
            nod_query::plan::explain(q, &got.plan)
        );
        if want.count.is_none() {
            for page in [1, 2] {
                let rows = pages(store, q, at, choice, page)
                    .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                prop_assert_eq!(
                    &rows,
                    &want.rows,
                    "{} at {} by {:?} in pages of {}",
                    text,
                    at,
                    choice,
                    page
                );
            }
        }
    }
    Ok(indexed)
}

/// `q`'s rows at `at`, asked for `page` at a time, each page after the
/// place the one before ended (a cursor's content).
fn pages<B: Backend>(
    store: &KvStore<B>,
    q: &Query,
    at: i64,
    choice: PlanChoice<'_>,
    page: u64,
) -> Result<Vec<Vec<serde_json::Value>>, QueryError> {
    let mut paging = Paging {
        page: Some(page),
        ..Paging::default()
    };
    let mut rows = Vec::new();
    loop {
        let a = store.query_page(q, at, choice, LIMITS, &paging)?;
        assert!(a.output.rows.len() as u64 <= page, "a page over its size");
        rows.extend(a.output.rows);
        match a.output.next {
            None => return Ok(rows),
            Some(next) => {
                assert!(rows.len() < 1000, "pages without end");
                paging.sent = rows.len() as u64;
                paging.after = Some(next);
            }
        }
    }
}

/// The indexes whose build failed.
fn failed<B: Backend>(store: &KvStore<B>) -> Vec<String> {
    store
        .indexes()
        .iter()
        .filter(|d| matches!(d.state, IndexState::Failed { .. }))
        .map(|d| d.spec.name.clone())
        .collect()
}

struct Pair {
    rocks: KvStore<nod::storage::backend::RocksBackend>,
    memory: KvStore<nod::storage::backend::MemoryBackend>,
    index: u64,
    in_batch: bool,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Both stores, with the indexes feature enabled (as a cluster's
    /// leader does once every member has published it).
    fn new() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let mut pair = Pair {
            rocks: KvStore::open(&dir.path().join("kv")).unwrap(),
            memory: KvStore::in_memory(),
            index: 1,
            in_batch: false,
            _dir: dir,
        };
        for feature in [
            nod::command::FEATURE_INDEXES,
            nod::command::FEATURE_UNIQUE_INDEXES,
        ] {
            pair.index += 1;
            let at = (pair.index, 1);
            pair.rocks
                .apply_enable_feature(feature, at)
                .expect("the store works");
            pair.memory
                .apply_enable_feature(feature, at)
                .expect("the store works");
        }
        pair
    }

    fn reopen(self) -> Pair {
        let rocks = KvStore::from_backend(self.rocks.into_backend()).expect("reopen");
        let memory = KvStore::from_backend(self.memory.into_backend()).expect("reopen");
        Pair {
            index: rocks.applied().0,
            rocks,
            memory,
            in_batch: false,
            _dir: self._dir,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if matches!(op, Op::Sweep(_)) && self.in_batch {
            return Ok(());
        }
        self.index += 1;
        let at = (self.index, 1);
        let before = live(&self.rocks);
        let failed_before: Vec<String> = failed(&self.rocks);
        let rocks = step(&mut self.rocks, op, at);
        let memory = step(&mut self.memory, op, at);
        prop_assert_eq!(&rocks, &memory, "{:?} answered differently", op);
        self.unique_holds(op, &rocks, before, &failed_before)?;
        match op {
            Op::BeginBatch => self.in_batch = true,
            Op::EndBatch => self.in_batch = false,
            _ => {}
        }
        Ok(())
    }

    /// A unique index refused `op` (answered `answer`) only if it would
    /// have left two live keys with one tuple; no ready one has such a
    /// pair; one whose build failed in this step had one.
    fn unique_holds(
        &self,
        op: &Op,
        answer: &str,
        mut docs: BTreeMap<Vec<u8>, Vec<u8>>,
        failed_before: &[String],
    ) -> Result<(), TestCaseError> {
        let defs = self.rocks.indexes();
        if answer.starts_with("refused: nod: unique index") {
            let puts: Vec<(usize, String)> = match op {
                Op::Put(k, doc) => vec![(*k, doc.clone())],
                Op::Txn(puts) => puts.clone(),
                _ => return Err(TestCaseError::fail(format!("{op:?}: {answer}"))),
            };
            let mut done = Vec::new();
            for (k, doc) in puts {
                // The first of each key, as `step` sends a txn.
                if !done.contains(&k) {
                    done.push(k);
                    docs.insert(KEYS[k].into(), doc.into_bytes());
                }
            }
            prop_assert!(
                duplicated(defs, &docs, |d| !matches!(
                    d.state,
                    IndexState::Failed { .. }
                ))
                .is_some(),
                "{:?} refused with no duplicate to make: {}",
                op,
                answer
            );
        }
        let now = live(&self.rocks);
        prop_assert_eq!(
            duplicated(defs, &now, |d| d.ready_since().is_some()),
            None,
            "a ready unique index after {:?}",
            op
        );
        for name in failed(&self.rocks) {
            if !failed_before.contains(&name) {
                prop_assert!(
                    duplicated(defs, &now, |d| d.spec.name == name).is_some(),
                    "{} failed at {:?} with no duplicate",
                    name,
                    op
                );
            }
        }
        Ok(())
    }

    /// Checks every index and every query at the oldest kept, a middle
    /// and the current revision; returns the answers through an index.
    fn check(&self, queries: &[(String, Query)]) -> Result<u32, TestCaseError> {
        indexes_hold(&self.rocks, "rocksdb")?;
        indexes_hold(&self.memory, "memory")?;
        let (low, high) = (
            self.rocks.compacted_revision().max(1),
            self.rocks.current_revision(),
        );
        let mut revisions = vec![low, low + (high - low) / 2, high];
        revisions.dedup();
        let mut indexed = 0;
        for at in revisions.into_iter().filter(|&r| r <= high) {
            for (text, q) in queries {
                let want = oracle(&self.rocks, q, at);
                indexed += answers_agree(&self.rocks, q, text, at, &want)?;
                indexed += answers_agree(&self.memory, q, text, at, &want)?;
            }
        }
        Ok(indexed)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_plan_answers_what_range_shows_at_every_kept_revision(
        ops in prop::collection::vec(op(), 1..50),
        texts in prop::collection::vec(query(), 1..5),
    ) {
        let queries: Vec<(String, Query)> = texts
            .iter()
            .map(|t| (t.clone(), parse(t).unwrap_or_else(|e| panic!("{t}: {e}"))))
            .collect();
        let mut pair = Pair::new();
        for op in &ops {
            match op {
                Op::Reopen => pair = pair.reopen(),
                op => pair.apply(op)?,
            }
            if !pair.in_batch {
                pair.check(&queries)?;
            }
        }
        pair.apply(&Op::EndBatch)?;
        pair.check(&queries)?;
        let pair = pair.reopen();
        pair.check(&queries)?;
    }
}

/// Not a property: a fixed history in which indexes must be used and
/// stale entries skipped, so the property above cannot pass by never
/// reading an index.
#[test]
fn indexes_answer_with_stale_and_compacted_entries_around() {
    let mut pair = Pair::new();
    let mut ops = Vec::new();
    for round in 0..3 {
        for k in 0..7 {
            let age = (k * 7 + round) % 5;
            ops.push(Op::Put(
                k,
                format!(
                    r#"{{"city": "{}", "age": {age}}}"#,
                    ["Oslo", "Bergen"][k % 2]
                ),
            ));
        }
        if round == 0 {
            ops.extend([Op::Create(0), Op::Create(2), Op::Backfill(0, 2)]);
            ops.extend([Op::Backfill(0, 9), Op::Backfill(2, 9)]);
        }
    }
    ops.extend([Op::Delete(2, false), Op::Compact(3), Op::Sweep(2)]);
    for op in &ops {
        pair.apply(op).unwrap();
    }
    for name in ["city", "city_age"] {
        assert!(
            pair.rocks
                .index_named(name)
                .unwrap()
                .ready_since()
                .is_some(),
            "{name} is ready"
        );
    }
    let queries: Vec<(String, Query)> = [
        "SELECT KEY, age FROM '/u/' WHERE city = 'Oslo' ORDER BY age, KEY",
        "SELECT COUNT(*) FROM '/u/' WHERE city = 'Bergen' AND age >= 2",
        "SELECT * FROM '/u/' WHERE city IN ('Oslo', 'Nowhere') OR city = 'Bergen' LIMIT 3",
    ]
    .iter()
    .map(|t| (t.to_string(), parse(t).unwrap()))
    .collect();
    let indexed = pair.check(&queries).unwrap();
    assert!(indexed >= 12, "answers through an index: {indexed}");
    // The planner itself reads an index where it is the smaller read: 6
    // Bergen entries with an age of 2 or more against 7 keys at 20.
    let best = pair
        .rocks
        .query(&queries[1].1, 20, PlanChoice::Best, LIMITS)
        .unwrap();
    assert!(
        matches!(&best.plan.access, Access::Index { name, .. } if name == "city_age"),
        "{}",
        nod_query::plan::explain(&queries[1].1, &best.plan)
    );
    let q = &queries[0].1;
    let at = pair.rocks.current_revision();
    let a = pair
        .rocks
        .query(q, at, PlanChoice::Index("city"), LIMITS)
        .unwrap();
    assert!(
        a.output.stats.entries > a.output.stats.docs,
        "stale entries were read and skipped: {:?}",
        a.output.stats
    );
    let oslo = a.output.rows.len();
    assert_eq!(oslo, 3, "k0, k3 and k5 (k10 deleted): {:?}", a.output.rows);
    // A revision before the compaction is refused, as Range refuses it.
    let old = pair.rocks.compacted_revision() - 1;
    assert!(matches!(
        pair.rocks.query(q, old, PlanChoice::Best, LIMITS),
        Err(QueryError::Request(KvError::Compacted))
    ));
    assert!(matches!(
        pair.rocks.query(q, at + 1, PlanChoice::Best, LIMITS),
        Err(QueryError::Request(KvError::FutureRevision))
    ));
    assert!(matches!(
        pair.rocks.query(q, at, PlanChoice::Index("nope"), LIMITS),
        Err(QueryError::Request(KvError::IndexNotFound(_)))
    ));
    let tight = Limits {
        max_rows: 1,
        max_examined: 1_000,
    };
    assert!(matches!(
        pair.rocks.query(q, at, PlanChoice::Best, tight),
        Err(QueryError::OverLimit(_))
    ));
}

/// The server's queries take the store's lock a page at a time: writes
/// made between pages (at later revisions, as the apply loop makes them)
/// leave the answer as the store's at the query's revision, through a
/// prefix scan and through an index; a compaction past that revision
/// between pages ends the query as etcd ends a read of a compacted
/// revision; past its time budget it ends too.
#[test]
fn a_paged_query_lets_writes_in_between_and_answers_at_its_revision() {
    use std::sync::RwLock;
    use std::time::Duration;
    let mut pair = Pair::new();
    for i in 0..20usize {
        pair.apply(&Op::Put(
            i % 7,
            format!(
                r#"{{"city": "{}", "age": {}}}"#,
                ["Oslo", "Bergen"][i % 2],
                i % 50
            ),
        ))
        .unwrap();
    }
    pair.apply(&Op::Create(0)).unwrap();
    pair.apply(&Op::Backfill(0, 100)).unwrap();
    let mut store = pair.memory;
    let mut index = pair.index;
    // A thousand documents more, under keys of their own.
    for i in 0..1000usize {
        index += 1;
        store
            .apply_put(
                &PutRequest {
                    key: format!("/u/many/{i:04}").into_bytes(),
                    value: format!(
                        r#"{{"city": "{}", "n": {i}}}"#,
                        ["Oslo", "Bergen"][i % 3 / 2]
                    )
                    .into_bytes(),
                    ..Default::default()
                },
                (index, 1),
            )
            .unwrap();
    }
    assert!(store.index_named("city").unwrap().ready_since().is_some());
    let lock = RwLock::new(store);
    let texts = [
        (
            "SELECT KEY, n FROM '/u/' ORDER BY KEY",
            PlanChoice::PrefixScan,
        ),
        (
            "SELECT KEY, n FROM '/u/' WHERE city = 'Oslo' ORDER BY KEY",
            PlanChoice::Index("city"),
        ),
    ];
    for (text, choice) in texts {
        let q = parse(text).unwrap();
        let (want, at) = {
            let store = lock.read().unwrap();
            let at = store.current_revision();
            (oracle(&*store, &q, at), at)
        };
        let mut writes = 0u64;
        let mut between = || {
            writes += 1;
            index += 1;
            let mut store = lock.write().unwrap();
            let key = format!("/u/many/{:04}", writes * 7 % 1000);
            store
                .apply_put(
                    &PutRequest {
                        key: key.into_bytes(),
                        value: br#"{"city": "Oslo", "n": -1}"#.to_vec(),
                        ..Default::default()
                    },
                    (index, 1),
                )
                .unwrap();
            index += 1;
            store
                .apply_delete(
                    &DeleteRangeRequest {
                        key: format!("/u/many/{:04}", writes * 11 % 1000).into_bytes(),
                        ..Default::default()
                    },
                    (index, 1),
                )
                .unwrap();
        };
        let got = KvStore::query_locked(
            &lock,
            &q,
            0,
            choice,
            LIMITS,
            Duration::from_secs(600),
            &mut between,
        )
        .unwrap();
        assert_eq!(got.plan.revision, at, "{text}");
        assert_eq!(
            (&got.output.rows, got.output.count),
            (&want.rows, want.count),
            "{text}"
        );
        assert!(got.pages >= 3, "{text}: {} pages", got.pages);
        assert_eq!(writes, got.pages, "a write between every two pages");
        assert!(lock.read().unwrap().current_revision() > at);
    }

    // A compaction past the query's revision between pages ends it.
    let q = parse("SELECT KEY FROM '/u/' ORDER BY KEY").unwrap();
    let mut compact = || {
        index += 1;
        let mut store = lock.write().unwrap();
        store
            .apply_put(
                &PutRequest {
                    key: b"/u/many/0000".to_vec(),
                    value: b"{}".to_vec(),
                    ..Default::default()
                },
                (index, 1),
            )
            .unwrap();
        index += 1;
        let now = store.current_revision();
        store
            .apply_compaction(
                &CompactionRequest {
                    revision: now,
                    physical: false,
                },
                (index, 1),
            )
            .unwrap();
    };
    assert!(matches!(
        KvStore::query_locked(
            &lock,
            &q,
            0,
            PlanChoice::PrefixScan,
            LIMITS,
            Duration::from_secs(600),
            &mut compact,
        ),
        Err(QueryError::Request(KvError::Compacted))
    ));
    // A compaction met while the planner's probes count (which count on
    // past a failed read) still ends the query, however little it then
    // reads.
    let q1 = parse("SELECT KEY FROM '/u/' WHERE city = 'Oslo' LIMIT 1").unwrap();
    assert!(matches!(
        KvStore::query_locked(
            &lock,
            &q1,
            0,
            PlanChoice::Best,
            LIMITS,
            Duration::from_secs(600),
            &mut compact,
        ),
        Err(QueryError::Request(KvError::Compacted))
    ));
    // An index dropped between the pages of a query reading it ends it.
    let q2 = parse("SELECT KEY FROM '/u/' WHERE city = 'Oslo' ORDER BY KEY").unwrap();
    let mut drop_city = || {
        index += 1;
        lock.write()
            .unwrap()
            .apply_index_drop("city", (index, 1))
            .unwrap();
    };
    assert!(matches!(
        KvStore::query_locked(
            &lock,
            &q2,
            0,
            PlanChoice::Index("city"),
            LIMITS,
            Duration::from_secs(600),
            &mut drop_city,
        ),
        Err(QueryError::CatalogChanged)
    ));
    // No time left: ended at the first page's end.
    assert!(matches!(
        KvStore::query_locked(
            &lock,
            &q,
            0,
            PlanChoice::PrefixScan,
            LIMITS,
            Duration::ZERO,
            &mut || {},
        ),
        Err(QueryError::TimedOut(_))
    ));
}
