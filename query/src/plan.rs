//! Choosing how to find a query's candidates: an index's ranges, a union
//! of them for an OR, or the prefix scan; by counting, not by statistics.
//!
//! The whole WHERE clause is always checked again on every candidate, so
//! a plan only has to find a superset of the matching keys under the
//! query's prefix. An index holds exactly the documents that have every
//! one of its fields with its declared type, so it may serve a query only
//! if the query's conditions imply that for each field (a comparison, IN
//! or BETWEEN with literals of the field's type, or STARTS WITH on a
//! string field); otherwise it would miss documents the query matches.
//!
//! Among the usable indexes and the prefix scan, the planner counts what
//! each would read, up to [`PROBE_CAP`] (a few microseconds each, against
//! the revision itself, so the counts never drift), and takes the
//! smallest. When every count reaches the cap it counts again up to the
//! next of [`PROBE_CAPS`] (so an index that reads 14,000 of a million
//! documents wins over the scan); when every count reaches the last, it
//! scans the prefix, which reads each key once where an index may also
//! hold superseded entries.

use std::fmt;

use crate::ast::{CmpOp, Expr, Literal, Operand, Pred, Query};
use crate::codec::{encode_value, esc_body, index_prefix, prefix_end};
use crate::exec::Mark;
use crate::spec::IndexSpec;
use crate::value::{FieldType, FieldValue};

/// What the planner counts up to for each way of reading, first.
pub const PROBE_CAP: u64 = 256;
/// ... and again, while every way reaches the cap: a count costs about a
/// microsecond an entry, so the last is tens of milliseconds, for queries
/// that read at least that much whichever way they go.
pub const PROBE_CAPS: [u64; 3] = [PROBE_CAP, 4096, 65_536];
/// Ranges one index access may have (IN lists multiply).
pub const MAX_RANGES: usize = 1024;

/// An index as the planner sees it.
#[derive(Clone, Debug)]
pub struct IndexInfo {
    pub id: u32,
    pub spec: IndexSpec,
    /// The first revision it answers for; `None` while it is built.
    pub since: Option<i64>,
}

/// Counting what a way of reading would read, at the query's revision.
pub trait Probe {
    /// Index entries with keys in `range`, counted up to `cap`.
    fn count_entries(&self, range: &ByteRange, cap: u64) -> u64;
    /// Keys under `prefix` visible at the revision, counted up to `cap`.
    fn count_keys(&self, prefix: &[u8], cap: u64) -> u64;
}

/// Index entry keys from `start` (inclusive) to `end` (exclusive; `None`:
/// to the end of the keyspace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl ByteRange {
    fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|e| *e <= self.start)
    }

    fn prefix(p: Vec<u8>) -> ByteRange {
        let end = prefix_end(&p);
        ByteRange { start: p, end }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Access {
    /// Every key under the query's prefix.
    Prefix,
    /// The entries of one index in these ranges.
    Index {
        id: u32,
        name: String,
        arity: usize,
        ranges: Vec<ByteRange>,
    },
    /// Each alternative of an OR through an index; keys found twice count
    /// once.
    Union(Vec<Access>),
}

/// One way of reading the planner weighed, for EXPLAIN.
#[derive(Clone, Debug, PartialEq)]
pub struct Considered {
    pub what: String,
    /// Counted entries or keys (the plan's `cap` means "at least"), or why
    /// the way could not serve the query.
    pub outcome: Result<u64, String>,
}

/// An index read whose entries come in the order of the query's first
/// ORDER BY term: the index's field at `field`, the fields before it
/// each fixed to one value by the conditions. With a LIMIT (or a page)
/// the executor stops reading past the last row it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Along {
    pub field: usize,
    pub desc: bool,
    pub ty: FieldType,
    /// The index's prefix and the fixed values of the fields before.
    pub lead: Vec<u8>,
}

impl Along {
    /// `range` less the entries whose ordered field sorts before `mark`
    /// (a cursor's first ORDER BY cell): a superset of the rows after the
    /// cursor; `None` when nothing is left of it.
    pub fn resume(&self, range: &ByteRange, mark: Option<&Mark>) -> Option<ByteRange> {
        let value = match mark {
            Some(Mark::Json(v)) => FieldValue::from_json(v, self.ty),
            _ => None,
        };
        let Some(value) = value else {
            return Some(range.clone());
        };
        let mut at = self.lead.clone();
        encode_value(&value, &mut at);
        let mut r = range.clone();
        if self.desc {
            if let Some(end) = prefix_end(&at) {
                if r.end.as_ref().is_none_or(|e| end < *e) {
                    r.end = Some(end);
                }
            }
        } else if at > r.start {
            r.start = at;
        }
        (!r.is_empty()).then_some(r)
    }
}

/// The order `info`'s entries give `q`, when they come in the order of
/// its first ORDER BY term.
fn along(q: &Query, info: &IndexInfo, conj: &[&Expr]) -> Option<Along> {
    let first = q.order.first()?;
    let field = info
        .spec
        .fields
        .iter()
        .position(|f| first.operand == Operand::Field(f.path.clone()))?;
    let mut lead = index_prefix(info.id);
    for f in &info.spec.fields[..field] {
        let b = bounds_for(conj, &Operand::Field(f.path.clone()), f.ty);
        match b.points.as_deref() {
            Some([v]) => encode_value(v, &mut lead),
            _ => return None,
        }
    }
    Some(Along {
        field,
        desc: first.desc,
        ty: info.spec.fields[field].ty,
        lead,
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub access: Access,
    /// Set when `access` reads one index in the query's order.
    pub along: Option<Along>,
    pub estimate: u64,
    pub revision: i64,
    pub considered: Vec<Considered>,
    /// What the counts went up to (one of [`PROBE_CAPS`]).
    pub cap: u64,
}

/// What the conditions on one index field allow.
#[derive(Clone, Debug, Default)]
struct FieldBounds {
    /// The conditions imply the field exists with the declared type.
    typed: bool,
    /// The field is one of these (the smallest `=` or IN set).
    points: Option<Vec<FieldValue>>,
    lower: Option<(FieldValue, bool)>,
    upper: Option<(FieldValue, bool)>,
    /// A string field starts with this.
    starts_with: Option<String>,
}

fn typed_value(lit: &Literal, ty: FieldType) -> Option<FieldValue> {
    match (lit, ty) {
        (Literal::Bool(b), FieldType::Bool) => Some(FieldValue::Bool(*b)),
        (Literal::Number(n), FieldType::Number) => FieldValue::number(*n),
        (Literal::String(s), FieldType::String) => Some(FieldValue::String(s.clone())),
        _ => None,
    }
}

fn typed_all(list: &[Literal], ty: FieldType) -> Option<Vec<FieldValue>> {
    list.iter().map(|l| typed_value(l, ty)).collect()
}

/// The tighter of two bounds on one side: `a` where it compares as
/// `keep` to `b` (`Greater` for lower bounds, `Less` for upper ones), the
/// exclusive one where the values are equal.
fn tighter(
    a: Option<(FieldValue, bool)>,
    b: (FieldValue, bool),
    keep: std::cmp::Ordering,
) -> (FieldValue, bool) {
    match a {
        None => b,
        Some(a) => match a.0.cmp(&b.0) {
            std::cmp::Ordering::Equal => (a.0, a.1 && b.1),
            o if o == keep => a,
            _ => b,
        },
    }
}

fn tighter_lower(a: Option<(FieldValue, bool)>, b: (FieldValue, bool)) -> (FieldValue, bool) {
    tighter(a, b, std::cmp::Ordering::Greater)
}

fn tighter_upper(a: Option<(FieldValue, bool)>, b: (FieldValue, bool)) -> (FieldValue, bool) {
    tighter(a, b, std::cmp::Ordering::Less)
}

/// The conjuncts of `expr` at its top (the expression itself if it is no
/// AND).
fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::And(items) => items.iter().flat_map(conjuncts).collect(),
        e => vec![e],
    }
}

fn bounds_for(conj: &[&Expr], operand: &Operand, ty: FieldType) -> FieldBounds {
    let mut b = FieldBounds::default();
    for e in conj {
        let Expr::Pred(p) = e else { continue };
        match p {
            Pred::Cmp(o, op, lit) if o == operand => {
                let Some(v) = typed_value(lit, ty) else {
                    continue;
                };
                b.typed = true;
                match op {
                    CmpOp::Eq => {
                        if b.points.as_ref().is_none_or(|p| p.len() > 1) {
                            b.points = Some(vec![v]);
                        }
                    }
                    CmpOp::Ne => {}
                    CmpOp::Gt => b.lower = Some(tighter_lower(b.lower.take(), (v, false))),
                    CmpOp::Ge => b.lower = Some(tighter_lower(b.lower.take(), (v, true))),
                    CmpOp::Lt => b.upper = Some(tighter_upper(b.upper.take(), (v, false))),
                    CmpOp::Le => b.upper = Some(tighter_upper(b.upper.take(), (v, true))),
                }
            }
            Pred::In {
                operand: o,
                negated,
                list,
            } if o == operand => {
                let Some(mut vs) = typed_all(list, ty) else {
                    continue;
                };
                b.typed = true;
                if !negated {
                    vs.sort();
                    vs.dedup();
                    if b.points.as_ref().is_none_or(|p| p.len() > vs.len()) {
                        b.points = Some(vs);
                    }
                }
            }
            Pred::Between {
                operand: o,
                negated,
                low,
                high,
            } if o == operand => {
                let (Some(lo), Some(hi)) = (typed_value(low, ty), typed_value(high, ty)) else {
                    continue;
                };
                b.typed = true;
                if !negated {
                    b.lower = Some(tighter_lower(b.lower.take(), (lo, true)));
                    b.upper = Some(tighter_upper(b.upper.take(), (hi, true)));
                }
            }
            Pred::StartsWith(o, s) if o == operand && ty == FieldType::String => {
                b.typed = true;
                if b.starts_with.as_ref().is_none_or(|p| p.len() < s.len()) {
                    b.starts_with = Some(s.clone());
                }
            }
            _ => {}
        }
    }
    b
}

/// The entry ranges of index `info` that hold every document satisfying
/// all of `conj`, or why the index cannot serve them.
fn index_ranges(info: &IndexInfo, conj: &[&Expr]) -> Result<Vec<ByteRange>, String> {
    let bounds: Vec<FieldBounds> = info
        .spec
        .fields
        .iter()
        .map(|f| bounds_for(conj, &Operand::Field(f.path.clone()), f.ty))
        .collect();
    let untyped: Vec<String> = info
        .spec
        .fields
        .iter()
        .zip(&bounds)
        .filter(|(_, b)| !b.typed)
        .map(|(f, _)| format!("{} ({})", f.path, f.ty))
        .collect();
    if !untyped.is_empty() {
        return Err(format!(
            "the conditions do not imply {}, so it could miss documents",
            untyped.join(", ")
        ));
    }
    // Leading fields fixed to points, then one field bounded.
    let mut tuples: Vec<Vec<u8>> = vec![index_prefix(info.id)];
    let mut ranged = None;
    for b in &bounds {
        match &b.points {
            Some(points) if tuples.len() * points.len() <= MAX_RANGES => {
                tuples = tuples
                    .iter()
                    .flat_map(|t| {
                        points.iter().map(move |v| {
                            let mut t = t.clone();
                            encode_value(v, &mut t);
                            t
                        })
                    })
                    .collect();
            }
            _ => {
                ranged = Some(b);
                break;
            }
        }
    }
    let mut ranges = Vec::new();
    for t in tuples {
        let r = match ranged {
            Some(FieldBounds {
                starts_with: Some(p),
                ..
            }) => {
                let mut start = t;
                start.push(crate::codec::TAG_STRING);
                esc_body(p.as_bytes(), &mut start);
                ByteRange::prefix(start)
            }
            Some(b) => {
                let with = |v: &FieldValue| {
                    let mut k = t.clone();
                    encode_value(v, &mut k);
                    k
                };
                let start = match &b.lower {
                    None => t.clone(),
                    Some((v, true)) => with(v),
                    Some((v, false)) => match prefix_end(&with(v)) {
                        Some(s) => s,
                        None => continue,
                    },
                };
                let end = match &b.upper {
                    None => prefix_end(&t),
                    Some((v, true)) => prefix_end(&with(v)),
                    Some((v, false)) => Some(with(v)),
                };
                ByteRange { start, end }
            }
            None => ByteRange::prefix(t),
        };
        if !r.is_empty() {
            ranges.push(r);
        }
    }
    Ok(ranges)
}

fn index_access(
    info: &IndexInfo,
    conj: &[&Expr],
    probe: &dyn Probe,
    cap: u64,
) -> Result<(Access, u64), String> {
    let ranges = index_ranges(info, conj)?;
    let mut estimate = 0u64;
    for r in &ranges {
        estimate += probe.count_entries(r, cap - estimate.min(cap));
        if estimate >= cap {
            estimate = cap;
            break;
        }
    }
    Ok((
        Access::Index {
            id: info.id,
            name: info.spec.name.clone(),
            arity: info.spec.fields.len(),
            ranges,
        },
        estimate,
    ))
}

/// Plans `q` at `revision` through the index `info` alone, or says why
/// it cannot serve `q` (tests compare every usable index's answer; the
/// benchmark forces one).
pub fn index_plan(
    q: &Query,
    info: &IndexInfo,
    revision: i64,
    probe: &dyn Probe,
) -> Result<Plan, String> {
    if !q.from.as_bytes().starts_with(&info.spec.prefix) {
        return Err("it does not cover the query's prefix".into());
    }
    if info.since.is_none_or(|s| s > revision) {
        return Err(format!("it does not cover revision {revision}"));
    }
    let filter = q.filter.as_ref().ok_or("the query has no WHERE clause")?;
    let conj = conjuncts(filter);
    let (access, estimate) = index_access(info, &conj, probe, PROBE_CAP)?;
    Ok(Plan {
        access,
        along: along(q, info, &conj),
        estimate,
        revision,
        considered: vec![],
        cap: PROBE_CAP,
    })
}

/// A plan that reads the whole prefix.
pub fn prefix_plan(revision: i64) -> Plan {
    Plan {
        access: Access::Prefix,
        along: None,
        estimate: 0,
        revision,
        considered: vec![],
        cap: PROBE_CAP,
    }
}

/// Plans `q` at `revision` over `indexes`.
pub fn plan(q: &Query, indexes: &[IndexInfo], revision: i64, probe: &dyn Probe) -> Plan {
    let mut p = plan_capped(q, indexes, revision, probe, PROBE_CAP);
    for cap in &PROBE_CAPS[1..] {
        // Decided: a way reads less than the cap, or the scan is the only
        // way counted (nothing could win over it).
        let counted = p.considered.iter().filter(|c| c.outcome.is_ok()).count();
        if p.estimate < p.cap || counted <= 1 {
            break;
        }
        // Every way reads the cap or more: count further.
        p = plan_capped(q, indexes, revision, probe, *cap);
    }
    if let (Access::Index { id, .. }, Some(filter)) = (&p.access, &q.filter) {
        if let Some(info) = indexes.iter().find(|i| i.id == *id) {
            p.along = along(q, info, &conjuncts(filter));
        }
    }
    p
}

/// [`plan`], every count up to `cap`.
fn plan_capped(
    q: &Query,
    indexes: &[IndexInfo],
    revision: i64,
    probe: &dyn Probe,
    cap: u64,
) -> Plan {
    let mut considered = Vec::new();
    let prefix_count = probe.count_keys(q.from.as_bytes(), cap);
    considered.push(Considered {
        what: format!("prefix {}", Literal::String(q.from.clone())),
        outcome: Ok(prefix_count),
    });
    let mut best = (Access::Prefix, prefix_count);
    let usable: Vec<&IndexInfo> = indexes
        .iter()
        .filter(|i| {
            let why = if !q.from.as_bytes().starts_with(&i.spec.prefix) {
                Some(format!(
                    "it covers {}, not all of the query's prefix",
                    Literal::String(String::from_utf8_lossy(&i.spec.prefix).into_owned())
                ))
            } else {
                match i.since {
                    None => Some("it is still being built".to_string()),
                    Some(s) if s > revision => {
                        Some(format!("it covers revisions from {s}, not {revision}"))
                    }
                    Some(_) => None,
                }
            };
            if let Some(why) = &why {
                considered.push(Considered {
                    what: format!("index {}", i.spec.name),
                    outcome: Err(why.clone()),
                });
            }
            why.is_none()
        })
        .collect();
    let Some(filter) = &q.filter else {
        return Plan {
            access: best.0,
            along: None,
            estimate: best.1,
            revision,
            considered,
            cap,
        };
    };
    // One AND of conditions: the best single index.
    let conj = conjuncts(filter);
    for info in &usable {
        let outcome = index_access(info, &conj, probe, cap);
        considered.push(Considered {
            what: format!("index {}", info.spec.name),
            outcome: outcome.as_ref().map(|(_, n)| *n).map_err(Clone::clone),
        });
        if let Ok((access, n)) = outcome {
            if n < best.1 {
                best = (access, n);
            }
        }
    }
    // An OR: every alternative through its best index, or none.
    if let Expr::Or(alternatives) = filter {
        let mut parts = Vec::new();
        let mut total = 0u64;
        for alt in alternatives {
            let conj = conjuncts(alt);
            let best_alt = usable
                .iter()
                .filter_map(|info| index_access(info, &conj, probe, cap).ok())
                .min_by_key(|(_, n)| *n);
            match best_alt {
                Some((access, n)) => {
                    total = (total + n).min(cap);
                    parts.push(access);
                }
                None => {
                    parts.clear();
                    break;
                }
            }
        }
        if !parts.is_empty() {
            considered.push(Considered {
                what: format!("union of {} index reads", parts.len()),
                outcome: Ok(total),
            });
            if total < best.1 {
                best = (Access::Union(parts), total);
            }
        }
    }
    Plan {
        access: best.0,
        along: None,
        estimate: best.1,
        revision,
        considered,
        cap,
    }
}

fn count_text(n: u64, cap: u64) -> String {
    if n >= cap {
        format!("{cap} or more")
    } else {
        n.to_string()
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Prefix => f.write_str("prefix scan"),
            Access::Index { name, ranges, .. } => {
                let s = if ranges.len() == 1 { "" } else { "s" };
                write!(f, "index {name} ({} range{s})", ranges.len())
            }
            Access::Union(parts) => {
                f.write_str("union of ")?;
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// EXPLAIN's text: the plan from the answer back to the reads, then every
/// way considered.
pub fn explain(q: &Query, plan: &Plan) -> String {
    let mut out = String::new();
    let mode = if q.serializable {
        "serializable"
    } else {
        "linearizable"
    };
    out.push_str(&format!("at revision {} ({mode})\n", plan.revision));
    if let Some(n) = q.limit {
        out.push_str(&format!("limit {n}\n"));
    }
    let mut order: Vec<String> = q
        .order
        .iter()
        .map(|o| format!("{}{}", o.operand, if o.desc { " DESC" } else { "" }))
        .collect();
    order.push("KEY".into());
    out.push_str(&format!("sort by {}\n", order.join(", ")));
    if let Some(e) = &q.filter {
        out.push_str(&format!("filter {e}\n"));
    }
    out.push_str(&format!(
        "read {} under {}: {} candidates counted\n",
        plan.access,
        Literal::String(q.from.clone()),
        count_text(plan.estimate, plan.cap)
    ));
    if let Some(a) = &plan.along {
        let way = if a.desc { "backward" } else { "forward" };
        let stop = if q.limit.is_some() {
            "stops after the last row the LIMIT keeps"
        } else {
            "a page stops after its last row"
        };
        out.push_str(&format!(
            "  {way}, in the order of {}: {stop}\n",
            q.order[0].operand
        ));
    }
    out.push_str("considered:\n");
    for c in &plan.considered {
        match &c.outcome {
            Ok(n) => out.push_str(&format!("  {}: {}\n", c.what, count_text(*n, plan.cap))),
            Err(why) => out.push_str(&format!("  {}: not usable, {why}\n", c.what)),
        }
    }
    out
}
