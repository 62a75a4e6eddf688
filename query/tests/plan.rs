//! Planning and running queries over an in-memory store with real index
//! entries: whatever plan is chosen, and through every index that says it
//! can serve a query, the answer is the prefix scan's, at every revision.

use std::collections::BTreeMap;
use std::ops::Bound;

use nod_query::exec::{execute, execute_page, Doc, ExecError, Limits, Output, Paging, Source};
use nod_query::plan::{
    explain, index_plan, plan, prefix_plan, Access, ByteRange, IndexInfo, Probe,
};
use nod_query::{parse, EntryKey, FieldPath, FieldType, IndexField, IndexSpec};
use proptest::prelude::*;

/// A key's changes: (revision, value), `None` for a deletion.
type History = Vec<(u64, Option<Vec<u8>>)>;

/// Keys with their history (puts and deletes by revision), and the index
/// entries every put wrote, as the store will keep them.
#[derive(Default)]
struct Mem {
    history: BTreeMap<Vec<u8>, History>,
    entries: BTreeMap<Vec<u8>, ()>,
    indexes: Vec<IndexInfo>,
    rev: u64,
    at: u64,
}

impl Mem {
    fn new(indexes: Vec<IndexInfo>) -> Mem {
        Mem {
            indexes,
            ..Mem::default()
        }
    }

    fn put(&mut self, key: &str, value: &str) {
        self.rev += 1;
        let key = key.as_bytes().to_vec();
        for info in &self.indexes {
            if !info.spec.covers(&key) {
                continue;
            }
            if let Ok(values) = info.spec.tuple(value.as_bytes()) {
                let e = EntryKey {
                    index: info.id,
                    values,
                    key: key.clone(),
                    main: self.rev,
                    sub: 0,
                };
                self.entries.insert(e.encode(), ());
            }
        }
        self.history
            .entry(key)
            .or_default()
            .push((self.rev, Some(value.as_bytes().to_vec())));
    }

    fn delete(&mut self, key: &str) {
        let live = self
            .history
            .get(key.as_bytes())
            .and_then(|h| h.last())
            .is_some_and(|(_, v)| v.is_some());
        if live {
            self.rev += 1;
            let rev = self.rev;
            self.history
                .get_mut(key.as_bytes())
                .expect("live")
                .push((rev, None));
        }
    }

    fn doc_at(&self, key: &[u8]) -> Option<(u64, Doc)> {
        let h = self.history.get(key)?;
        let i = h.iter().rposition(|(r, _)| *r <= self.at)?;
        let value = h[i].1.clone()?;
        // The generation: puts since the last delete before it.
        let start = h[..i]
            .iter()
            .rposition(|(_, v)| v.is_none())
            .map_or(0, |d| d + 1);
        Some((
            h[i].0,
            Doc {
                key: key.to_vec(),
                value,
                create_revision: h[start].0 as i64,
                mod_revision: h[i].0 as i64,
                version: (i - start + 1) as i64,
                lease: 0,
            },
        ))
    }

    fn range(&self, r: &ByteRange) -> impl Iterator<Item = &Vec<u8>> {
        let end = match &r.end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        self.entries
            .range((Bound::Included(r.start.clone()), end))
            .map(|(k, _)| k)
    }
}

impl Source for Mem {
    type Error = String;
    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(Doc) -> Result<bool, String>,
    ) -> Result<(), String> {
        for k in self.history.range(prefix.to_vec()..).map(|(k, _)| k) {
            if !k.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| k.as_slice() <= a) {
                continue;
            }
            if let Some((_, d)) = self.doc_at(k) {
                if !visit(d)? {
                    break;
                }
            }
        }
        Ok(())
    }
    fn scan_index(
        &self,
        range: &ByteRange,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8]) -> Result<bool, String>,
    ) -> Result<(), String> {
        let mut keys: Vec<&Vec<u8>> = self.range(range).collect();
        if reverse {
            keys.reverse();
        }
        for k in keys {
            if !visit(k)? {
                break;
            }
        }
        Ok(())
    }
    fn visible(&self, key: &[u8], main: u64, sub: u64) -> Result<Option<Doc>, String> {
        Ok(self
            .doc_at(key)
            .filter(|(r, _)| *r == main && sub == 0)
            .map(|(_, d)| d))
    }
}

impl Probe for Mem {
    fn count_entries(&self, range: &ByteRange, cap: u64) -> u64 {
        self.range(range).take(cap as usize).count() as u64
    }
    fn count_keys(&self, prefix: &[u8], cap: u64) -> u64 {
        let mut n = 0;
        self.scan_prefix(prefix, None, &mut |_| {
            n += 1;
            Ok(n < cap)
        })
        .expect("memory");
        n
    }
}

fn field(p: &str, ty: FieldType) -> IndexField {
    IndexField {
        path: FieldPath::parse(p).unwrap(),
        ty,
    }
}

fn index(id: u32, name: &str, prefix: &str, fields: Vec<IndexField>, since: i64) -> IndexInfo {
    IndexInfo {
        id,
        spec: IndexSpec {
            name: name.into(),
            prefix: prefix.as_bytes().to_vec(),
            fields,
            unique: false,
        },
        since: Some(since),
    }
}

fn indexes(late_since: i64) -> Vec<IndexInfo> {
    vec![
        index(1, "city", "/u/", vec![field("city", FieldType::String)], 1),
        index(2, "age", "/u/", vec![field("age", FieldType::Number)], 1),
        index(
            3,
            "city_age",
            "/u/",
            vec![
                field("city", FieldType::String),
                field("age", FieldType::Number),
            ],
            1,
        ),
        index(4, "ok", "/u/k1", vec![field("ok", FieldType::Bool)], 1),
        index(
            5,
            "late_age",
            "/",
            vec![field("a.b", FieldType::Number)],
            late_since,
        ),
    ]
}

const LIMITS: Limits = Limits {
    max_rows: 100_000,
    max_examined: 1_000_000,
};

fn doc() -> impl Strategy<Value = String> {
    let city = prop_oneof![
        Just(r#""city": "Oslo""#.to_string()),
        Just(r#""city": "Bergen""#.to_string()),
        Just(r#""city": "Oslo2""#.to_string()),
        Just(r#""city": """#.to_string()),
        Just(r#""city": 7"#.to_string()),
    ];
    let age = prop_oneof![
        (0i32..6).prop_map(|n| format!(r#""age": {n}"#)),
        Just(r#""age": 2.5"#.to_string()),
        Just(r#""age": -0.0"#.to_string()),
        Just(r#""age": "3""#.to_string()),
        Just(r#""age": null"#.to_string()),
    ];
    let ok = any::<bool>().prop_map(|b| format!(r#""ok": {b}"#));
    let nested = (0i32..3).prop_map(|n| format!(r#""a": {{"b": {n}}}"#));
    (
        proptest::option::of(city),
        proptest::option::of(age),
        proptest::option::of(ok),
        proptest::option::of(nested),
        0u8..10,
    )
        .prop_map(|(c, a, o, n, junk)| {
            if junk == 0 {
                return "not json".to_string();
            }
            let parts: Vec<String> = [c, a, o, n].into_iter().flatten().collect();
            format!("{{{}}}", parts.join(", "))
        })
}

#[derive(Clone, Debug)]
enum Op {
    Put(String, String),
    Delete(String),
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop_oneof![
        (0u8..12).prop_map(|i| format!("/u/k{i}")),
        (0u8..3).prop_map(|i| format!("/v/k{i}")),
    ];
    prop_oneof![
        4 => (key.clone(), doc()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => key.prop_map(Op::Delete),
    ]
}

fn pred() -> impl Strategy<Value = String> {
    let city = prop_oneof![
        Just("'Oslo'"),
        Just("'Bergen'"),
        Just("''"),
        Just("'Os'"),
        Just("7"),
    ];
    let num = prop_oneof![
        Just("0"),
        Just("2"),
        Just("2.5"),
        Just("-0"),
        Just("5"),
        Just("'3'"),
        Just("NULL")
    ];
    let op = prop_oneof![
        Just("="),
        Just("!="),
        Just("<"),
        Just("<="),
        Just(">"),
        Just(">=")
    ];
    prop_oneof![
        (op.clone(), city.clone()).prop_map(|(o, c)| format!("city {o} {c}")),
        (op.clone(), num.clone()).prop_map(|(o, n)| format!("age {o} {n}")),
        (op, num.clone()).prop_map(|(o, n)| format!("a.b {o} {n}")),
        (city.clone(), city.clone()).prop_map(|(a, b)| format!("city IN ({a}, {b})")),
        (num.clone(), num.clone()).prop_map(|(a, b)| format!("age BETWEEN {a} AND {b}")),
        (num.clone(), num).prop_map(|(a, b)| format!("age NOT IN ({a}, {b})")),
        prop_oneof![Just("'Os'"), Just("''"), Just("'B'")]
            .prop_map(|p| format!("city STARTS WITH {p}")),
        any::<bool>().prop_map(|b| format!("ok = {}", if b { "TRUE" } else { "FALSE" })),
        Just("age IS MISSING".to_string()),
        Just("city IS NOT MISSING".to_string()),
        Just("KEY > '/u/k5'".to_string()),
        Just("VERSION > 1".to_string()),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    pred().prop_recursive(3, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 2..4)
                .prop_map(|v| format!("({})", v.join(" AND "))),
            proptest::collection::vec(inner.clone(), 2..3)
                .prop_map(|v| format!("({})", v.join(" OR "))),
            inner.prop_map(|e| format!("NOT {e}")),
        ]
    })
}

fn query() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("*"),
            Just("COUNT(*)"),
            Just("KEY, age, city AS c, VERSION")
        ],
        prop_oneof![Just("/u/"), Just("/u/k1"), Just("/"), Just("/v/")],
        proptest::option::of(filter()),
        prop_oneof![
            Just(""),
            Just(" ORDER BY age DESC"),
            Just(" ORDER BY age"),
            Just(" ORDER BY city, MOD_REVISION DESC")
        ],
        proptest::option::of(0u8..6),
    )
        .prop_map(|(proj, from, f, order, limit)| {
            let mut q = format!("SELECT {proj} FROM '{from}'");
            if let Some(f) = f {
                q.push_str(&format!(" WHERE {f}"));
            }
            if proj != "COUNT(*)" {
                q.push_str(order);
                if let Some(n) = limit {
                    q.push_str(&format!(" LIMIT {n}"));
                }
            }
            q
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    #[test]
    fn every_plan_answers_as_the_prefix_scan(
        ops in proptest::collection::vec(op(), 1..60),
        queries in proptest::collection::vec(query(), 1..6),
        late in 1i64..40,
        at_frac in 0.0f64..1.0,
    ) {
        let mut m = Mem::new(indexes(late));
        for o in &ops {
            match o {
                Op::Put(k, v) => m.put(k, v),
                Op::Delete(k) => m.delete(k),
            }
        }
        let at = ((m.rev as f64 * at_frac) as u64).max(1);
        m.at = at;
        for text in &queries {
            let q = parse(text).unwrap();
            let want = execute(&q, &prefix_plan(at as i64), &m, LIMITS).unwrap();
            let chosen = plan(&q, &m.indexes, at as i64, &m);
            let got = execute(&q, &chosen, &m, LIMITS).unwrap();
            prop_assert_eq!(&got.rows, &want.rows, "{} at {}: {}", text, at, explain(&q, &chosen));
            prop_assert_eq!(got.count, want.count);
            for info in &m.indexes {
                if let Ok(p) = index_plan(&q, info, at as i64, &m) {
                    let via = execute(&q, &p, &m, LIMITS).unwrap();
                    prop_assert_eq!(&via.rows, &want.rows, "{} through {} at {}", text, info.spec.name, at);
                }
            }
        }
    }
}

fn users(n: usize) -> Mem {
    let mut m = Mem::new(indexes(1_000_000));
    let cities = ["Oslo", "Bergen", "Trondheim", "Tromsø", "Bodø"];
    for i in 0..n {
        let city = if i % 50 == 0 {
            "Oslo"
        } else {
            cities[1 + i % 4]
        };
        m.put(
            &format!("/u/{i:05}"),
            &format!(r#"{{"city": "{city}", "age": {}}}"#, i % 100),
        );
    }
    m.at = m.rev;
    m
}

#[test]
fn a_selective_condition_reads_through_its_index() {
    let m = users(2000);
    let q = parse("SELECT KEY FROM '/u/' WHERE city = 'Oslo' AND age > 30").unwrap();
    let p = plan(&q, &m.indexes, m.at as i64, &m);
    let Access::Index { name, ranges, .. } = &p.access else {
        panic!("an index: {}", explain(&q, &p))
    };
    // Oslo is 40 of 2000; (city, age) narrows it to the ages over 30.
    assert_eq!(
        (name.as_str(), ranges.len()),
        ("city_age", 1),
        "{}",
        explain(&q, &p)
    );
    let out = execute(&q, &p, &m, LIMITS).unwrap();
    let want = execute(&q, &prefix_plan(m.at as i64), &m, LIMITS).unwrap();
    assert_eq!(out.rows, want.rows);
    assert_eq!(
        out.rows.len(),
        20,
        "every 50th user is in Oslo, half of them aged 50"
    );
    assert!(out.stats.docs <= p.estimate, "{:?}", out.stats);
    assert_eq!(want.stats.docs, 2000);
    let text = explain(&q, &p);
    assert!(
        text.contains("read index city_age (1 range) under '/u/'"),
        "{text}"
    );
    assert!(text.contains("prefix '/u/': 256 or more"), "{text}");
    assert!(
        text.contains("index late_age: not usable, it covers revisions from 1000000"),
        "{text}"
    );
    assert!(
        text.contains("index ok: not usable, it covers '/u/k1', not all"),
        "{text}"
    );
}

/// The answer of `q` by `p`, `page` rows at a time, each page after the
/// place the one before ended; and each page's output.
fn pages(
    m: &Mem,
    q: &str,
    p: &nod_query::plan::Plan,
    page: u64,
) -> (Vec<Vec<serde_json::Value>>, Vec<Output>) {
    let q = parse(q).unwrap();
    let mut paging = Paging {
        page: Some(page),
        ..Paging::default()
    };
    let (mut rows, mut outs) = (Vec::new(), Vec::new());
    loop {
        let out = execute_page(&q, p, m, LIMITS, &paging).unwrap();
        assert!(out.rows.len() as u64 <= page);
        rows.extend(out.rows.clone());
        let next = out.next.clone();
        outs.push(out);
        match next {
            None => return (rows, outs),
            Some(n) => {
                paging.sent = rows.len() as u64;
                paging.after = Some(n);
            }
        }
    }
}

/// ORDER BY an index's field with a LIMIT reads the index in that order,
/// forward or backward, and stops at the first entry past the last row
/// kept (after the rows that tie with it); a page of such a query starts
/// reading where the page before ended, as a page of a key-order scan
/// does. 2,000 users, 20 of each age 0 to 99, every 50th in Oslo.
#[test]
fn an_order_along_an_index_stops_after_its_rows_and_pages_resume() {
    let m = users(2000);
    let at = m.at as i64;
    let by = |name: &str| m.indexes.iter().find(|i| i.spec.name == name).unwrap();
    for (text, index, way, most) in [
        ("SELECT KEY, age FROM '/u/' WHERE age >= 10 ORDER BY age DESC LIMIT 5", "age", "backward", 21),
        ("SELECT KEY, age FROM '/u/' WHERE age >= 10 ORDER BY age LIMIT 25", "age", "forward", 41),
        ("SELECT KEY FROM '/u/' WHERE city = 'Oslo' AND age >= 0 ORDER BY age DESC, KEY DESC LIMIT 1", "city_age", "backward", 21),
        ("SELECT KEY FROM '/u/' WHERE city IN ('Oslo', 'Bodø') AND age < 50 ORDER BY city DESC LIMIT 2", "city", "backward", 41),
    ] {
        let q = parse(text).unwrap();
        let p = index_plan(&q, by(index), at, &m).unwrap();
        let shown = explain(&q, &p);
        assert!(shown.contains(&format!("{way}, in the order of")), "{text}: {shown}");
        let got = execute(&q, &p, &m, LIMITS).unwrap();
        let want = execute(&q, &prefix_plan(at), &m, LIMITS).unwrap();
        assert_eq!(got.rows, want.rows, "{text}");
        assert!(got.stats.entries <= most, "{text}: read {:?}", got.stats);
        // The planner's own choice orders along too, when it takes the index.
        let chosen = plan(&q, &m.indexes, at, &m);
        assert_eq!(execute(&q, &chosen, &m, LIMITS).unwrap().rows, want.rows, "{text}");
    }
    // Fields before the ordered one not fixed to one value: no order.
    let q = parse(
        "SELECT KEY FROM '/u/' WHERE city IN ('Oslo', 'Bodø') AND age >= 0 ORDER BY age LIMIT 1",
    )
    .unwrap();
    assert!(index_plan(&q, by("city_age"), at, &m)
        .unwrap()
        .along
        .is_none());

    // Pages of 7 over every age from 10 down: each reads at most the rest
    // of one age, the next age and one entry past it.
    let text = "SELECT KEY, age FROM '/u/' WHERE age >= 10 ORDER BY age DESC";
    let q = parse(text).unwrap();
    let p = index_plan(&q, by("age"), at, &m).unwrap();
    let (rows, outs) = pages(&m, text, &p, 7);
    assert_eq!(
        rows,
        execute(&q, &prefix_plan(at), &m, LIMITS).unwrap().rows
    );
    assert_eq!(rows.len(), 1800);
    assert_eq!(outs.len(), 1800usize.div_ceil(7));
    for o in &outs {
        assert!(o.stats.entries <= 41, "a page read {:?}", o.stats);
    }
    // Pages in key order through an index fetch no document of a key an
    // earlier page sent: the last page of Bergen's users (about 490,
    // every fourth but Oslo's) reads at most its own documents.
    let text = "SELECT KEY FROM '/u/' WHERE city = 'Bergen'";
    let q = parse(text).unwrap();
    let p = index_plan(&q, by("city"), at, &m).unwrap();
    let (rows, outs) = pages(&m, text, &p, 50);
    assert_eq!(
        rows,
        execute(&q, &prefix_plan(at), &m, LIMITS).unwrap().rows
    );
    let last = outs.last().unwrap();
    assert!(
        last.stats.docs <= 50,
        "the last page read {:?} for {} rows",
        last.stats,
        last.rows.len()
    );
    // A key-order scan's pages start after the last key sent: every 100th
    // user is aged 3, so a page of 5 reads about 500 keys, not all before.
    let text = "SELECT KEY FROM '/u/' WHERE age = 3";
    let (rows, outs) = pages(&m, text, &prefix_plan(at), 5);
    let q = parse(text).unwrap();
    assert_eq!(
        rows,
        execute(&q, &prefix_plan(at), &m, LIMITS).unwrap().rows
    );
    assert_eq!(rows.len(), 20);
    for o in &outs {
        assert!(o.stats.docs <= 600, "a page read {:?}", o.stats);
    }
}

/// Counts past the first cap: an index reads the 500 Oslo entries, the
/// prefix 25,000 keys. Both reach 256, so the planner counts again (up to
/// 4,096) and takes an index; a condition every document meets reads as
/// much through its index as the scan does, and scans.
#[test]
fn counts_go_past_the_first_cap_before_choosing_the_scan() {
    let m = users(25_000);
    let q = parse("SELECT KEY FROM '/u/' WHERE city = 'Oslo'").unwrap();
    let p = plan(&q, &m.indexes, m.at as i64, &m);
    assert!(
        matches!(&p.access, Access::Index { .. }),
        "{}",
        explain(&q, &p)
    );
    assert_eq!(p.cap, 4096);
    assert!(p.estimate > 256 && p.estimate < 4096, "{}", p.estimate);
    let text = explain(&q, &p);
    assert!(text.contains("prefix '/u/': 4096 or more"), "{text}");
    let out = execute(&q, &p, &m, LIMITS).unwrap();
    assert_eq!(out.rows.len() as u64, p.estimate);
    assert_eq!(out.rows.len(), 500);
    assert!(out.stats.docs <= 500, "{:?}", out.stats);

    let everyone = parse("SELECT COUNT(*) FROM '/u/' WHERE age >= 0").unwrap();
    let p = plan(&everyone, &m.indexes, m.at as i64, &m);
    assert_eq!(p.access, Access::Prefix, "{}", explain(&everyone, &p));
    assert_eq!(p.cap, 65_536);
}

#[test]
fn an_index_is_not_used_when_it_could_miss_documents() {
    let mut m = users(600);
    m.put("/u/x", r#"{"city": "Oslo"}"#); // no age: not in city_age
    m.at = m.rev;
    let q = parse("SELECT KEY FROM '/u/' WHERE city = 'Oslo'").unwrap();
    let p = plan(&q, &m.indexes, m.at as i64, &m);
    let text = explain(&q, &p);
    assert!(
        matches!(&p.access, Access::Index { name, .. } if name == "city"),
        "{text}"
    );
    assert!(
        text.contains("index city_age: not usable, the conditions do not imply age (number)"),
        "{text}"
    );
    let out = execute(&q, &p, &m, LIMITS).unwrap();
    assert!(out.rows.iter().any(|r| r[0] == "/u/x"));
    // A typed != implies the type; IS NOT MISSING does not.
    let q = parse("SELECT KEY FROM '/u/' WHERE city = 'Oslo' AND age IS NOT MISSING").unwrap();
    assert!(index_plan(&q, &m.indexes[2], m.at as i64, &m).is_err());
    let q = parse("SELECT KEY FROM '/u/' WHERE city = 'Oslo' AND age != 3").unwrap();
    assert!(index_plan(&q, &m.indexes[2], m.at as i64, &m).is_ok());
}

#[test]
fn an_or_of_indexed_conditions_is_a_union_counted_once() {
    let m = users(3000);
    let q = parse("SELECT COUNT(*) FROM '/u/' WHERE city = 'Oslo' OR age = 7").unwrap();
    let p = plan(&q, &m.indexes, m.at as i64, &m);
    assert!(
        matches!(p.access, Access::Union(ref parts) if parts.len() == 2),
        "{}",
        explain(&q, &p)
    );
    let got = execute(&q, &p, &m, LIMITS).unwrap();
    let want = execute(&q, &prefix_plan(m.at as i64), &m, LIMITS).unwrap();
    assert_eq!(got.count, want.count);
    // Oslo: 60 users (every 50th); age 7: 30 users, none in Oslo.
    assert_eq!(got.count, Some(90));
}

#[test]
fn limits_stop_a_query_that_reads_or_returns_too_much() {
    let m = users(500);
    let q = parse("SELECT * FROM '/u/' WHERE age > 10").unwrap();
    let small = Limits {
        max_rows: 100,
        max_examined: 1_000_000,
    };
    let e = execute(&q, &prefix_plan(m.at as i64), &m, small).unwrap_err();
    assert_eq!(e, ExecError::TooManyRows(100));
    let q = parse("SELECT * FROM '/u/' WHERE age > 10 LIMIT 5").unwrap();
    assert_eq!(
        execute(&q, &prefix_plan(m.at as i64), &m, small)
            .unwrap()
            .rows
            .len(),
        5
    );
    let tight = Limits {
        max_rows: 100,
        max_examined: 50,
    };
    let q = parse("SELECT COUNT(*) FROM '/u/' WHERE city = 'nowhere'").unwrap();
    let e = execute(&q, &prefix_plan(m.at as i64), &m, tight).unwrap_err();
    assert_eq!(e, ExecError::TooManyExamined(51));
    // LIMIT with no ORDER BY stops a key-order read early.
    let q = parse("SELECT KEY FROM '/u/' LIMIT 3").unwrap();
    let out = execute(&q, &prefix_plan(m.at as i64), &m, tight).unwrap();
    assert_eq!(out.stats.docs, 3);
    let keys: Vec<serde_json::Value> = out.rows.into_iter().flatten().collect();
    assert_eq!(keys, ["/u/00000", "/u/00001", "/u/00002"]);
}

#[test]
fn a_value_too_large_to_index_has_no_fields_for_any_plan() {
    let mut m = users(600);
    let pad = "x".repeat(nod_query::spec::MAX_INDEXED_VALUE);
    m.put(
        "/u/big",
        &format!(r#"{{"city": "Oslo", "age": 40, "pad": "{pad}"}}"#),
    );
    m.at = m.rev;
    let q = parse("SELECT KEY FROM '/u/' WHERE city = 'Oslo'").unwrap();
    let prefix = execute(&q, &prefix_plan(m.at as i64), &m, LIMITS).unwrap();
    let through = index_plan(&q, &m.indexes[0], m.at as i64, &m).unwrap();
    let indexed = execute(&q, &through, &m, LIMITS).unwrap();
    assert_eq!(prefix.rows, indexed.rows);
    assert_eq!(prefix.rows.len(), 12, "every 50th of 600, not /u/big");
    // Its whole value is still an answer's, as JSON; its fields are not.
    let q = parse("SELECT VALUE, city FROM '/u/big'").unwrap();
    let out = execute(&q, &prefix_plan(m.at as i64), &m, LIMITS).unwrap();
    let row = out.rows.first().expect("/u/big is there");
    assert_eq!(row[0]["pad"].as_str().map(str::len), Some(pad.len()));
    assert_eq!(row[1], serde_json::Value::Null);
}
