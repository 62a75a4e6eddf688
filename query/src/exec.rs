//! Running a plan over a [`Source`]: the candidates its access finds, each
//! checked against the whole WHERE clause, then sorted (ORDER BY, then
//! key), limited and projected. The storage layer implements `Source`
//! over a consistent view at the query's revision; tests implement it
//! over a map.

use std::cmp::Ordering;
use std::collections::HashSet;

use serde_json::Value;

use crate::ast::{Operand, Projection, Query};
use crate::codec::EntryKey;
use crate::eval::{sort_cmp, Cell, Row};
use crate::plan::{Access, Along, ByteRange, Plan};
use crate::spec::MAX_INDEXED_VALUE;
use crate::value::FieldValue;

/// A key as the query's revision shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// Whether a scan goes on.
pub type Flow = bool;

/// What a prefix scan calls for each key.
pub type VisitDoc<'a, E> = &'a mut dyn FnMut(Doc) -> Result<Flow, E>;
/// What an index scan calls for each entry key.
pub type VisitEntry<'a, E> = &'a mut dyn FnMut(&[u8]) -> Result<Flow, E>;

/// What a query reads, at one revision.
pub trait Source {
    type Error;
    /// The keys under `prefix` that exist at the revision, in key order,
    /// from the first after `after` when it is given.
    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: VisitDoc<'_, Self::Error>,
    ) -> Result<(), Self::Error>;
    /// The index entry keys in `range`, in order (the last first when
    /// `reverse`).
    fn scan_index(
        &self,
        range: &ByteRange,
        reverse: bool,
        visit: VisitEntry<'_, Self::Error>,
    ) -> Result<(), Self::Error>;
    /// `key` as the revision shows it, if the change visible there is the
    /// one of revision (`main`, `sub`): an index entry of any other change
    /// is superseded or deleted by then.
    fn visible(&self, key: &[u8], main: u64, sub: u64) -> Result<Option<Doc>, Self::Error>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rows an answer may have (a LIMIT under it passes).
    pub max_rows: u64,
    /// Index entries and documents a query may read.
    pub max_examined: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError<E> {
    #[error("{0}")]
    Source(E),
    #[error("the query read {0} entries and documents, over the limit: add a condition an index serves, or a LIMIT with no ORDER BY")]
    TooManyExamined(u64),
    #[error("the answer has more than {0} rows: add a LIMIT or a condition")]
    TooManyRows(u64),
    #[error("index entry: {0}")]
    BadEntry(crate::codec::DecodeError),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Index entries read.
    pub entries: u64,
    /// Documents read (through an index: the live ones only).
    pub docs: u64,
    /// Documents that satisfied the WHERE clause.
    pub matched: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// `COUNT(*)`'s answer.
    pub count: Option<u64>,
    pub stats: Stats,
    /// Where the next page starts, when the answer was cut at a page's
    /// size and more rows follow.
    pub next: Option<After>,
}

/// One ORDER BY cell of a row, owned: what a cursor keeps of the last row
/// a page sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Mark {
    Missing,
    Json(Value),
    Int(i64),
    Bytes(Vec<u8>),
}

impl Mark {
    fn of(cell: Cell<'_>) -> Mark {
        match cell {
            Cell::Missing => Mark::Missing,
            Cell::Json(v) => Mark::Json(v.clone()),
            Cell::Int(i) => Mark::Int(i),
            Cell::Bytes(b) => Mark::Bytes(b.to_vec()),
        }
    }

    pub fn cell(&self) -> Cell<'_> {
        match self {
            Mark::Missing => Cell::Missing,
            Mark::Json(v) => Cell::Json(v),
            Mark::Int(i) => Cell::Int(*i),
            Mark::Bytes(b) => Cell::Bytes(b),
        }
    }
}

/// A place in a query's order (its ORDER BY cells, then the key): a page
/// has the rows after it.
#[derive(Clone, Debug, PartialEq)]
pub struct After {
    /// One per ORDER BY term.
    pub marks: Vec<Mark>,
    pub key: Vec<u8>,
}

/// Which part of the answer to give: the rows after `after`, at most
/// `page` of them (then `Output::next` says where the rest starts), with
/// `sent` rows of a LIMIT already given by the pages before.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Paging {
    pub after: Option<After>,
    pub page: Option<u64>,
    pub sent: u64,
}

struct Matched {
    doc: Doc,
    /// The value as JSON, if it is.
    json: Option<Value>,
    /// Whether conditions, ORDER BY and projections see its fields: not
    /// for a value over [`MAX_INDEXED_VALUE`], which no index holds, so
    /// that every plan finds the same rows.
    fielded: bool,
}

impl Matched {
    fn new(doc: Doc) -> Matched {
        let json: Option<Value> = serde_json::from_slice(&doc.value).ok();
        let fielded = doc.value.len() <= MAX_INDEXED_VALUE;
        Matched { doc, json, fielded }
    }

    fn row(&self) -> Row<'_> {
        Row {
            key: &self.doc.key,
            value: &self.doc.value,
            doc: self.json.as_ref().filter(|_| self.fielded),
            create_revision: self.doc.create_revision,
            mod_revision: self.doc.mod_revision,
            version: self.doc.version,
            lease: self.doc.lease,
        }
    }
}

fn order(q: &Query, a: &Matched, b: &Matched) -> Ordering {
    let (ra, rb) = (a.row(), b.row());
    for o in &q.order {
        let c = sort_cmp(&ra.cell(&o.operand), &rb.cell(&o.operand));
        let c = if o.desc { c.reverse() } else { c };
        if c != Ordering::Equal {
            return c;
        }
    }
    a.doc.key.cmp(&b.doc.key)
}

/// Where `a` stands against the place `after` in `q`'s order.
fn order_after(q: &Query, a: &Matched, after: &After) -> Ordering {
    let ra = a.row();
    for (o, m) in q.order.iter().zip(&after.marks) {
        let c = sort_cmp(&ra.cell(&o.operand), &m.cell());
        let c = if o.desc { c.reverse() } else { c };
        if c != Ordering::Equal {
            return c;
        }
    }
    a.doc.key.as_slice().cmp(&after.key)
}

fn after_of(q: &Query, m: &Matched) -> After {
    let row = m.row();
    After {
        marks: q
            .order
            .iter()
            .map(|o| Mark::of(row.cell(&o.operand)))
            .collect(),
        key: m.doc.key.clone(),
    }
}

fn lossy(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

fn project(cell: Cell<'_>, whole_value: Option<&Value>, operand: &Operand) -> Value {
    match (operand, cell) {
        // The value: as JSON if it is, else as text.
        (Operand::Value, Cell::Bytes(b)) => whole_value.cloned().unwrap_or_else(|| lossy(b)),
        (_, Cell::Bytes(b)) => lossy(b),
        (_, Cell::Int(i)) => Value::from(i),
        (_, Cell::Json(v)) => v.clone(),
        (_, Cell::Missing) => Value::Null,
    }
}

/// The column names of `q`'s answer.
pub fn columns(q: &Query) -> Vec<String> {
    match &q.projection {
        Projection::All => vec!["key".into(), "value".into()],
        Projection::Count => vec!["count".into()],
        Projection::Items(items) => items
            .iter()
            .map(|i| i.alias.clone().unwrap_or_else(|| i.operand.to_string()))
            .collect(),
    }
}

struct Run<'a, S: Source> {
    q: &'a Query,
    src: &'a S,
    limits: Limits,
    stats: Stats,
    seen: HashSet<Vec<u8>>,
    matched: Vec<Matched>,
    count: u64,
    /// Rows kept: LIMIT (or a page) with an order other than the read's,
    /// or every row.
    keep: Option<usize>,
    /// Matches after which reading stops: LIMIT over a read in key order
    /// with no ORDER BY.
    stop_at: Option<usize>,
    /// The rows wanted come after this place (a cursor's).
    after: Option<&'a After>,
    /// An index read in the order of the first ORDER BY term: once `keep`
    /// rows matched, the value of that term there; the read stops at the
    /// first entry past it (rows that tie with it may still sort before
    /// it by key).
    along: Option<&'a Along>,
    boundary: Option<FieldValue>,
    /// The read ended early (no range after it is read).
    done: bool,
    /// Index entries of rows a cursor has passed, told by the entry alone
    /// (their documents are not read).
    passed: Option<Passed>,
}

/// What marks an index entry as one of a row before a cursor's place.
enum Passed {
    /// In key order: a key at or before this one.
    Key(Vec<u8>),
    /// Ordered by one term along the index: this value of it (the tie
    /// group the cursor is in) with a key at or before this one.
    Tie(FieldValue, Vec<u8>),
}

impl Passed {
    fn of(q: &Query, along: Option<&Along>, after: Option<&After>) -> Option<Passed> {
        let after = after?;
        if in_key_order(q) {
            return Some(Passed::Key(after.key.clone()));
        }
        // Ties break on the key only when nothing else orders them.
        let key_next = q
            .order
            .get(1)
            .is_none_or(|o| o.operand == Operand::Key && !o.desc);
        let along = along.filter(|_| key_next)?;
        match after.marks.first()? {
            Mark::Json(v) => Some(Passed::Tie(
                FieldValue::from_json(v, along.ty)?,
                after.key.clone(),
            )),
            _ => None,
        }
    }

    fn covers(&self, e: &EntryKey, ordered: Option<&FieldValue>) -> bool {
        match self {
            Passed::Key(k) => e.key <= *k,
            Passed::Tie(v, k) => ordered == Some(v) && e.key <= *k,
        }
    }
}

impl<S: Source> Run<'_, S> {
    fn examined(&mut self) -> Result<(), ExecError<S::Error>> {
        let n = self.stats.entries + self.stats.docs;
        if n > self.limits.max_examined {
            return Err(ExecError::TooManyExamined(n));
        }
        Ok(())
    }

    /// Checks one candidate; returns whether reading goes on.
    fn offer(&mut self, doc: Doc) -> Result<Flow, ExecError<S::Error>> {
        self.stats.docs += 1;
        self.examined()?;
        let m = Matched::new(doc);
        if let Some(f) = &self.q.filter {
            if !m.row().matches(f) {
                return Ok(true);
            }
        }
        if self.q.projection == Projection::Count {
            self.stats.matched += 1;
            self.count += 1;
            return Ok(true);
        }
        if self
            .after
            .is_some_and(|a| order_after(self.q, &m, a) != Ordering::Greater)
        {
            // On an earlier page.
            return Ok(true);
        }
        self.stats.matched += 1;
        self.matched.push(m);
        if self.stop_at.is_some_and(|n| self.matched.len() >= n) {
            return Ok(false);
        }
        if let Some(k) = self.keep {
            // Keep the best `k`: sort and cut now and then.
            if self.matched.len() >= 2 * k.max(64) {
                let q = self.q;
                self.matched.sort_by(|a, b| order(q, a, b));
                self.matched.truncate(k);
            }
        } else if self.matched.len() as u64 > self.limits.max_rows {
            return Err(ExecError::TooManyRows(self.limits.max_rows));
        }
        Ok(true)
    }

    fn read(&mut self, access: &Access) -> Result<(), ExecError<S::Error>> {
        match access {
            Access::Prefix => {
                let (src, q) = (self.src, self.q);
                let prefix = q.from.as_bytes();
                // In key order with no ORDER BY: a cursor's key is where
                // the read starts.
                let from = self
                    .after
                    .filter(|_| in_key_order(q))
                    .map(|a| a.key.as_slice());
                let mut failure = None;
                src.scan_prefix(prefix, from, &mut |doc| {
                    keep_failure(self.offer(doc), &mut failure)
                })
                .map_err(ExecError::Source)?;
                failure.map_or(Ok(()), Err)
            }
            Access::Index { arity, ranges, .. } => {
                let reverse = self.along.is_some_and(|a| a.desc);
                let ranges: Vec<ByteRange> = match (self.along, self.after) {
                    (Some(along), Some(after)) => ranges
                        .iter()
                        .filter_map(|r| along.resume(r, after.marks.first()))
                        .collect(),
                    _ => ranges.clone(),
                };
                let read = |run: &mut Self, r: &ByteRange| {
                    if run.done {
                        return Ok(());
                    }
                    run.read_range(r, *arity, reverse)
                };
                if reverse {
                    for r in ranges.iter().rev() {
                        read(self, r)?;
                    }
                } else {
                    for r in &ranges {
                        read(self, r)?;
                    }
                }
                Ok(())
            }
            Access::Union(parts) => {
                for p in parts {
                    self.read(p)?;
                }
                Ok(())
            }
        }
    }

    fn read_range(
        &mut self,
        range: &ByteRange,
        arity: usize,
        reverse: bool,
    ) -> Result<(), ExecError<S::Error>> {
        let (src, q) = (self.src, self.q);
        let prefix = q.from.as_bytes();
        let mut failure = None;
        src.scan_index(range, reverse, &mut |entry| {
            keep_failure(self.entry(entry, arity, prefix), &mut failure)
        })
        .map_err(ExecError::Source)?;
        failure.map_or(Ok(()), Err)
    }

    /// Checks one index entry: the document it indexes, if that is the
    /// key's change visible at the revision and under the query's prefix.
    fn entry(
        &mut self,
        entry: &[u8],
        arity: usize,
        prefix: &[u8],
    ) -> Result<Flow, ExecError<S::Error>> {
        self.stats.entries += 1;
        self.examined()?;
        let e = EntryKey::decode(entry, arity).map_err(ExecError::BadEntry)?;
        let ordered = self.along.and_then(|a| e.values.get(a.field));
        if let (Some(b), Some(v)) = (&self.boundary, ordered) {
            if v != b {
                // Every row from here on sorts after the ones kept.
                self.done = true;
                return Ok(false);
            }
        }
        if !e.key.starts_with(prefix)
            || self.seen.contains(&e.key)
            || self.passed.as_ref().is_some_and(|p| p.covers(&e, ordered))
        {
            return Ok(true);
        }
        match self
            .src
            .visible(&e.key, e.main, e.sub)
            .map_err(ExecError::Source)?
        {
            Some(doc) => {
                self.seen.insert(e.key.clone());
                let before = self.matched.len();
                let flow = self.offer(doc)?;
                if let (Some(k), Some(v)) = (self.keep, ordered) {
                    if self.boundary.is_none() && before < k && self.matched.len() >= k {
                        self.boundary = Some(v.clone());
                    }
                }
                Ok(flow)
            }
            None => Ok(true),
        }
    }
}

/// A scan visitor's answer for a step that may fail: a failure stops the
/// scan and is kept for after it (the source's own errors travel apart).
fn keep_failure<E, F>(step: Result<Flow, E>, failure: &mut Option<E>) -> Result<Flow, F> {
    step.or_else(|e| {
        *failure = Some(e);
        Ok(false)
    })
}

/// Whether `q`'s rows sort in key order (no ORDER BY, or KEY first).
fn in_key_order(q: &Query) -> bool {
    q.order
        .first()
        .is_none_or(|o| o.operand == Operand::Key && !o.desc)
}

/// Runs `plan` for `q` over `src`: the whole answer.
pub fn execute<S: Source>(
    q: &Query,
    plan: &Plan,
    src: &S,
    limits: Limits,
) -> Result<Output, ExecError<S::Error>> {
    execute_page(q, plan, src, limits, &Paging::default())
}

/// Runs `plan` for `q` over `src`: the part of the answer `paging` asks
/// for.
pub fn execute_page<S: Source>(
    q: &Query,
    plan: &Plan,
    src: &S,
    limits: Limits,
    paging: &Paging,
) -> Result<Output, ExecError<S::Error>> {
    let counting = q.projection == Projection::Count;
    // The rows this answer may send, and one more to learn whether a page
    // is the last.
    let left = q.limit.map(|n| n.saturating_sub(paging.sent));
    let page = paging.page.filter(|_| !counting);
    let want = match (left, page) {
        (Some(l), Some(p)) => Some(l.min(p.saturating_add(1))),
        (Some(l), None) => Some(l),
        (None, Some(p)) => Some(p.saturating_add(1)),
        (None, None) => None,
    };
    let keep = want
        .filter(|&n| n <= limits.max_rows.saturating_add(1))
        .map(|n| n as usize);
    let after = paging.after.as_ref().filter(|_| !counting);
    let along = plan.along.as_ref().filter(|_| !counting);
    let mut run = Run {
        q,
        src,
        limits,
        stats: Stats::default(),
        seen: HashSet::new(),
        matched: Vec::new(),
        count: 0,
        keep,
        stop_at: keep.filter(|_| plan.access == Access::Prefix && in_key_order(q)),
        after,
        along,
        boundary: None,
        done: false,
        passed: Passed::of(q, along, after),
    };
    if keep != Some(0) {
        run.read(&plan.access)?;
    }
    let Run {
        mut matched,
        count,
        stats,
        ..
    } = run;
    if counting {
        return Ok(Output {
            columns: columns(q),
            rows: vec![vec![Value::from(count)]],
            count: Some(count),
            stats,
            next: None,
        });
    }
    matched.sort_by(|a, b| order(q, a, b));
    if let Some(n) = want {
        matched.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    let mut next = None;
    if let Some(p) = page {
        let p = usize::try_from(p).unwrap_or(usize::MAX);
        if matched.len() > p {
            matched.truncate(p);
            next = matched.last().map(|m| after_of(q, m));
        }
    }
    if matched.len() as u64 > limits.max_rows {
        return Err(ExecError::TooManyRows(limits.max_rows));
    }
    let rows = matched
        .iter()
        .map(|m| {
            let row = m.row();
            match &q.projection {
                Projection::Items(items) => items
                    .iter()
                    .map(|i| project(row.cell(&i.operand), m.json.as_ref(), &i.operand))
                    .collect(),
                _ => vec![
                    lossy(&m.doc.key),
                    project(row.cell(&Operand::Value), m.json.as_ref(), &Operand::Value),
                ],
            }
        })
        .collect();
    Ok(Output {
        columns: columns(q),
        rows,
        count: None,
        stats,
        next,
    })
}
