//! Queries over the store at one revision (docs/research/beyond-etcd.md
//! §1.4, §2.3–2.4): `nod_query`'s planner and executor over the in-memory
//! key index, the records and the `secondary` keyspace.
//!
//! An index entry (tuple, key, revision) is live at R when the key's
//! change visible at R is the put of that revision; an index serves R
//! once it is ready with `since ≤ R` (the backfill indexed each key's
//! value visible at `since`, apply every later put). R must be at or after
//! the compacted revision, as for Range; entries of changes a compaction
//! dropped are never visible there, swept or not. No I/O but the
//! backend's; a query holds the store for its whole run.

use std::ops::Bound;

use nod_query::exec::{execute, Doc, ExecError, Flow, Limits, Output, Source};
use nod_query::plan::{index_plan, plan, prefix_plan, ByteRange, IndexInfo, Plan, Probe};
use nod_query::Query;

use super::encoding::Revision;
use super::{backend, Backend, KeyValue, Keyspace, KvError, KvStore, RecordError, StoreError};

/// How a query finds its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanChoice<'a> {
    /// The planner's choice.
    Best,
    /// Every key under the query's prefix, no index.
    PrefixScan,
    /// Through the named index, refused when it cannot serve the query.
    Index(&'a str),
}

/// A query's answer and how it was found.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryAnswer {
    pub output: Output,
    pub plan: Plan,
}

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request's own error: a compacted or future revision, an index
    /// that does not exist or cannot serve it.
    #[error(transparent)]
    Request(#[from] KvError),
    /// It read, or would return, more than its limits allow.
    #[error("{0}")]
    OverLimit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store as revision `at` shows it.
struct At<'a, B: Backend> {
    store: &'a KvStore<B>,
    at: i64,
}

/// A key-value as a query reads it.
pub fn query_doc(kv: KeyValue) -> Doc {
    Doc {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

impl<B: Backend> At<'_, B> {
    /// The index entries in `range`, checked against their checksums, in
    /// key order, until `visit` says stop.
    fn entries(
        &self,
        range: &ByteRange,
        visit: &mut dyn FnMut(&[u8]) -> Result<Flow, StoreError>,
    ) -> Result<(), StoreError> {
        for item in self
            .store
            .backend
            .scan_from(Keyspace::Secondary, &range.start)
        {
            let (k, v) = item.map_err(backend("scanning index entries"))?;
            if range
                .end
                .as_ref()
                .is_some_and(|e| k.as_ref() >= e.as_slice())
            {
                break;
            }
            if v.as_ref() != crc32c::crc32c(k.as_ref()).to_be_bytes().as_slice() {
                return Err(StoreError::CorruptKey {
                    keyspace: Keyspace::Secondary.name(),
                    key: k.to_vec(),
                });
            }
            if !visit(k.as_ref())? {
                break;
            }
        }
        Ok(())
    }
}

impl<B: Backend> Source for At<'_, B> {
    type Error = StoreError;

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(Doc) -> Result<Flow, StoreError>,
    ) -> Result<(), StoreError> {
        for (_, entry) in self
            .store
            .index
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            let Some(c) = entry.visible(self.at).filter(|c| !c.tombstone) else {
                continue;
            };
            if !visit(query_doc(self.store.read_record(c.rev)?))? {
                break;
            }
        }
        Ok(())
    }

    fn scan_index(
        &self,
        range: &ByteRange,
        visit: &mut dyn FnMut(&[u8]) -> Result<Flow, StoreError>,
    ) -> Result<(), StoreError> {
        self.entries(range, visit)
    }

    fn visible(&self, key: &[u8], main: u64, sub: u64) -> Result<Option<Doc>, StoreError> {
        let (Ok(main), Ok(sub)) = (i64::try_from(main), i64::try_from(sub)) else {
            return Ok(None);
        };
        match self.store.visible(key, self.at) {
            Some(c) if !c.tombstone && c.rev == Revision { main, sub } => {
                Ok(Some(query_doc(self.store.read_record(c.rev)?)))
            }
            _ => Ok(None),
        }
    }
}

impl<B: Backend> Probe for At<'_, B> {
    fn count_entries(&self, range: &ByteRange, cap: u64) -> u64 {
        let mut n = 0;
        let read = self.entries(range, &mut |_| {
            n += 1;
            Ok(n < cap)
        });
        // A failing read counts as the cap: the planner looks elsewhere,
        // and the query, if it still reads here, reports the failure.
        match read {
            Ok(()) => n,
            Err(_) => cap,
        }
    }

    fn count_keys(&self, prefix: &[u8], cap: u64) -> u64 {
        self.store
            .index
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, entry)| entry.visible(self.at).is_some_and(|c| !c.tombstone))
            .take(cap as usize)
            .count() as u64
    }
}

impl<B: Backend> KvStore<B> {
    /// The indexes as the planner sees them.
    pub fn index_infos(&self) -> Vec<IndexInfo> {
        self.secondary
            .iter()
            .map(|d| IndexInfo {
                id: d.id,
                spec: d.spec.clone(),
                since: d.ready_since(),
            })
            .collect()
    }

    /// The revision a query reads: `revision`, else its own AT REVISION,
    /// else the current one; checked against the compacted and current
    /// revisions. Queries run between batches (the driver holds the store
    /// for a whole batch): an open batch's entries are not in the backend.
    fn query_revision(&self, q: &Query, revision: i64) -> Result<i64, KvError> {
        debug_assert!(self.pending.is_none(), "a query with a batch open");
        let revision = if revision > 0 {
            revision
        } else {
            q.at_revision.unwrap_or(0)
        };
        let at = if revision <= 0 {
            self.current
        } else {
            revision
        };
        if at > self.current {
            return Err(KvError::FutureRevision);
        }
        if at < self.compacted {
            return Err(KvError::Compacted);
        }
        Ok(at)
    }

    fn plan_at(
        &self,
        q: &Query,
        src: &At<'_, B>,
        choice: PlanChoice<'_>,
    ) -> Result<Plan, QueryError> {
        Ok(match choice {
            PlanChoice::Best => plan(q, &self.index_infos(), src.at, src),
            PlanChoice::PrefixScan => prefix_plan(src.at),
            PlanChoice::Index(name) => {
                let def = self
                    .index_named(name)
                    .ok_or_else(|| KvError::IndexNotFound(name.to_string()))?;
                let info = IndexInfo {
                    id: def.id,
                    spec: def.spec.clone(),
                    since: def.ready_since(),
                };
                index_plan(q, &info, src.at, src).map_err(|why| {
                    KvError::Invalid(format!("index {name} cannot serve this query: {why}"))
                })?
            }
        })
    }

    /// How `q` at `revision` (as for `query`) would find its rows
    /// (EXPLAIN), reading only the planner's bounded counts.
    pub fn plan_query(
        &self,
        q: &Query,
        revision: i64,
        choice: PlanChoice<'_>,
    ) -> Result<Plan, QueryError> {
        let at = self.query_revision(q, revision)?;
        self.plan_at(q, &At { store: self, at }, choice)
    }

    /// Answers `q` at `revision` (0 or less: its AT REVISION, else the
    /// current one) as `choice` says to find its rows, within `limits`.
    pub fn query(
        &self,
        q: &Query,
        revision: i64,
        choice: PlanChoice<'_>,
        limits: Limits,
    ) -> Result<QueryAnswer, QueryError> {
        let at = self.query_revision(q, revision)?;
        let src = At { store: self, at };
        let plan = self.plan_at(q, &src, choice)?;
        match execute(q, &plan, &src, limits) {
            Ok(output) => Ok(QueryAnswer { output, plan }),
            Err(ExecError::Source(e)) => Err(e.into()),
            Err(ExecError::BadEntry(e)) => Err(StoreError::Corrupt {
                what: "index entry",
                cause: RecordError::Entry(e),
            }
            .into()),
            Err(e @ (ExecError::TooManyExamined(_) | ExecError::TooManyRows(_))) => {
                Err(QueryError::OverLimit(e.to_string()))
            }
        }
    }
}
