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
use crate::plan::{Access, ByteRange, Plan};
use crate::spec::MAX_INDEXED_VALUE;

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
    /// The keys under `prefix` that exist at the revision, in key order.
    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: VisitDoc<'_, Self::Error>,
    ) -> Result<(), Self::Error>;
    /// The index entry keys in `range`, in order.
    fn scan_index(
        &self,
        range: &ByteRange,
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
    /// Rows kept: LIMIT with an order other than the read's, or every row.
    keep: Option<usize>,
    /// Matches after which reading stops: LIMIT over a read in key order
    /// with no ORDER BY.
    stop_at: Option<usize>,
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
        self.stats.matched += 1;
        if self.q.projection == Projection::Count {
            self.count += 1;
            return Ok(true);
        }
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
                let mut failure = None;
                src.scan_prefix(prefix, &mut |doc| {
                    keep_failure(self.offer(doc), &mut failure)
                })
                .map_err(ExecError::Source)?;
                failure.map_or(Ok(()), Err)
            }
            Access::Index { arity, ranges, .. } => {
                for r in ranges {
                    self.read_range(r, *arity)?;
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

    fn read_range(&mut self, range: &ByteRange, arity: usize) -> Result<(), ExecError<S::Error>> {
        let (src, q) = (self.src, self.q);
        let prefix = q.from.as_bytes();
        let mut failure = None;
        src.scan_index(range, &mut |entry| {
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
        if !e.key.starts_with(prefix) || self.seen.contains(&e.key) {
            return Ok(true);
        }
        match self
            .src
            .visible(&e.key, e.main, e.sub)
            .map_err(ExecError::Source)?
        {
            Some(doc) => {
                self.seen.insert(e.key);
                self.offer(doc)
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

/// Runs `plan` for `q` over `src`.
pub fn execute<S: Source>(
    q: &Query,
    plan: &Plan,
    src: &S,
    limits: Limits,
) -> Result<Output, ExecError<S::Error>> {
    let keep = q
        .limit
        .filter(|&n| n <= limits.max_rows)
        .map(|n| n as usize);
    let mut run = Run {
        q,
        src,
        limits,
        stats: Stats::default(),
        seen: HashSet::new(),
        matched: Vec::new(),
        count: 0,
        keep,
        stop_at: keep.filter(|_| plan.access == Access::Prefix && q.order.is_empty()),
    };
    run.read(&plan.access)?;
    let Run {
        mut matched,
        count,
        stats,
        ..
    } = run;
    if q.projection == Projection::Count {
        return Ok(Output {
            columns: columns(q),
            rows: vec![vec![Value::from(count)]],
            count: Some(count),
            stats,
        });
    }
    matched.sort_by(|a, b| order(q, a, b));
    if let Some(n) = q.limit {
        matched.truncate(usize::try_from(n).unwrap_or(usize::MAX));
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
    })
}
