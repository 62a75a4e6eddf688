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
//! backend's.
//!
//! The server's queries (`query_locked`) take the store's read lock a
//! page at a time (`QUERY_PAGE` keys, entries and documents) and let it
//! go in between, so the apply loop's writes go on while a long query
//! runs. Nothing a query reads at R changes meanwhile: later writes are
//! at revisions after R, and records at or before R only go with a
//! compaction, which each page checks for (a compaction past R ends the
//! query with etcd's "required revision has been compacted", as it ends
//! a watch). A query that the caller holds the store for (`query`: tests
//! and tools) reads in one go.

use std::cell::{Cell, Ref, RefCell};
use std::ops::{Bound, Deref};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use nod_query::exec::{execute_page, Doc, ExecError, Flow, Limits, Output, Paging, Source};
use nod_query::plan::{index_plan, plan, prefix_plan, ByteRange, IndexInfo, Plan, Probe};
use nod_query::Query;

use super::encoding::Revision;
use super::index::Indexed;
use super::secondary::check_entry;
use super::{backend, Backend, KeyValue, Keyspace, KvError, KvStore, RecordError, StoreError};

/// Keys, index entries and documents a paged query reads between two
/// takes of the store's lock (`query_locked`): a fraction of a
/// millisecond of the apply loop's time.
pub const QUERY_PAGE: u32 = 256;

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
    /// Times the query let go of the store's lock (`query_locked`).
    pub pages: u64,
}

/// Why a query has no answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum QueryError {
    /// The request's own error: a compacted or future revision, an index
    /// that does not exist or cannot serve it.
    #[error(transparent)]
    Request(#[from] KvError),
    /// It read, or would return, more than its limits allow.
    #[error("{0}")]
    OverLimit(String),
    /// It ran longer than its time budget.
    #[error(
        "the query ran past its time budget of {0:?}: add a condition an index serves, or a LIMIT"
    )]
    TimedOut(Duration),
    /// An index it read was dropped, rebuilt or added while it ran
    /// (between its pages): nothing wrong with it, run it again.
    #[error("the indexes changed while the query ran: run it again")]
    CatalogChanged,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `At::walk` calls for each key: the store and the key's changes.
type VisitKey<'v, B> = dyn FnMut(&KvStore<B>, &Indexed) -> Result<Flow, QueryError> + 'v;

/// How a query holds the store.
enum Hold<'a, B: Backend> {
    /// The caller holds it for the whole query.
    Borrowed(&'a KvStore<B>),
    /// The query takes the read lock a page at a time, letting it go (and
    /// calling `between`) in between, until `deadline`.
    Paged {
        lock: &'a RwLock<KvStore<B>>,
        guard: RefCell<Option<RwLockReadGuard<'a, KvStore<B>>>>,
        between: RefCell<&'a mut dyn FnMut()>,
        deadline: Option<Instant>,
        budget: Duration,
    },
}

/// The store as revision `at` shows it.
struct At<'a, B: Backend> {
    hold: Hold<'a, B>,
    at: i64,
    /// Reads since the lock was last taken.
    reads: Cell<u32>,
    /// Times a paged query let the lock go.
    pages: Cell<u64>,
    /// The catalog as the query found it, and whether it read index
    /// entries (then a change of the catalog ends it).
    epoch: u64,
    read_entries: Cell<bool>,
    /// The first error taking the lock again met: kept, so that one the
    /// planner's probes swallow (they count on past a failed read) still
    /// ends the query.
    failed: RefCell<Option<QueryError>>,
}

/// The store, as a query holds it at the moment.
enum StoreRef<'b, B: Backend> {
    Plain(&'b KvStore<B>),
    Locked(Ref<'b, KvStore<B>>),
}

impl<B: Backend> Deref for StoreRef<'_, B> {
    type Target = KvStore<B>;
    fn deref(&self) -> &KvStore<B> {
        match self {
            StoreRef::Plain(s) => s,
            StoreRef::Locked(r) => r,
        }
    }
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

impl<'a, B: Backend> At<'a, B> {
    fn new(hold: Hold<'a, B>, at: i64) -> At<'a, B> {
        let mut src = At {
            hold,
            at,
            reads: Cell::new(0),
            pages: Cell::new(0),
            epoch: 0,
            read_entries: Cell::new(false),
            failed: RefCell::new(None),
        };
        let epoch = src.store().catalog_epoch;
        src.epoch = epoch;
        src
    }

    /// The error a page boundary met, if any (the query's answer then).
    fn failure(&self) -> Option<QueryError> {
        self.failed.borrow_mut().take()
    }

    fn store(&self) -> StoreRef<'_, B> {
        match &self.hold {
            Hold::Borrowed(s) => StoreRef::Plain(*s),
            Hold::Paged { guard, .. } => StoreRef::Locked(Ref::map(guard.borrow(), |g| {
                &**g.as_ref()
                    .expect("a paged query reads only while it holds the lock")
            })),
        }
    }

    /// Counts a read; whether a page is done (the scan then lets go of
    /// what it borrows and calls `relax`). A query the caller holds the
    /// store for reads in one go.
    fn read(&self) -> bool {
        if matches!(self.hold, Hold::Borrowed(_)) {
            return false;
        }
        let n = self.reads.get().saturating_add(1);
        self.reads.set(n);
        n >= QUERY_PAGE
    }

    /// Between pages of a paged query: lets the lock go, then takes it
    /// again, and checks the revision is still there and the budget not
    /// spent. Holding the store (`Borrowed`), or with a read of the store
    /// still out (never, from the scans here), it goes on holding it.
    fn relax(&self) -> Result<(), QueryError> {
        self.reads.set(0);
        let Hold::Paged {
            lock,
            guard,
            between,
            deadline,
            budget,
        } = &self.hold
        else {
            return Ok(());
        };
        let Ok(mut held) = guard.try_borrow_mut() else {
            return Ok(());
        };
        drop(held.take());
        {
            let mut between = between.borrow_mut();
            (*between)();
        }
        // Taken again whatever follows: the planner reads on after a
        // failed count.
        let g = lock.read().unwrap_or_else(|p| p.into_inner());
        let e = if self.at < g.compacted {
            Some(QueryError::Request(KvError::Compacted))
        } else if self.read_entries.get() && g.catalog_epoch != self.epoch {
            Some(QueryError::CatalogChanged)
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Some(QueryError::TimedOut(*budget))
        } else {
            None
        };
        *held = Some(g);
        self.pages.set(self.pages.get() + 1);
        match e {
            None => Ok(()),
            Some(e) => {
                let mut failed = self.failed.borrow_mut();
                if failed.is_none() {
                    *failed = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    /// Each key under `prefix` (after `after`, if given) with its
    /// changes, in key order, a page at a time, until `visit` says stop.
    fn walk(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut VisitKey<'_, B>,
    ) -> Result<(), QueryError> {
        let mut after: Option<Vec<u8>> = after.filter(|a| *a >= prefix).map(<[u8]>::to_vec);
        loop {
            let store = self.store();
            let lower = match &after {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Included(prefix),
            };
            let mut page_end = None;
            for (k, entry) in store
                .index
                .range::<[u8], _>((lower, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                if !visit(&*store, entry)? {
                    return Ok(());
                }
                if self.read() {
                    page_end = Some(k.to_vec());
                    break;
                }
            }
            drop(store);
            match page_end {
                None => return Ok(()),
                Some(k) => {
                    after = Some(k);
                    self.relax()?;
                }
            }
        }
    }

    /// The index entries in `range`, checked against their checksums, in
    /// key order (the last first when `reverse`), a page at a time, until
    /// `visit` says stop.
    fn entries(
        &self,
        range: &ByteRange,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8]) -> Result<Flow, QueryError>,
    ) -> Result<(), QueryError> {
        self.read_entries.set(true);
        // Where a page starts: forward, the least key it reads; backward,
        // the key it reads before (`None`: from the end).
        let mut at = if reverse {
            range.end.clone()
        } else {
            Some(range.start.clone())
        };
        loop {
            let store = self.store();
            let items: Box<dyn Iterator<Item = _>> = if reverse {
                Box::new(store.backend.scan_rev(Keyspace::Secondary, at.as_deref()))
            } else {
                Box::new(
                    store
                        .backend
                        .scan_from(Keyspace::Secondary, at.as_deref().unwrap_or_default()),
                )
            };
            let mut next = None;
            for item in items {
                let (k, v) = item.map_err(backend("scanning index entries"))?;
                let past = if reverse {
                    k.as_ref() < range.start.as_slice()
                } else {
                    range
                        .end
                        .as_ref()
                        .is_some_and(|e| k.as_ref() >= e.as_slice())
                };
                if past {
                    return Ok(());
                }
                check_entry(&k, &v)?;
                if !visit(k.as_ref())? {
                    return Ok(());
                }
                if self.read() {
                    let mut n = k.to_vec();
                    if !reverse {
                        // The least key after this one.
                        n.push(0);
                    }
                    next = Some(n);
                    break;
                }
            }
            drop(store);
            match next {
                None => return Ok(()),
                Some(n) => {
                    at = Some(n);
                    self.relax()?;
                }
            }
        }
    }
}

impl<B: Backend> Source for At<'_, B> {
    type Error = QueryError;

    fn scan_prefix(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(Doc) -> Result<Flow, QueryError>,
    ) -> Result<(), QueryError> {
        let at = self.at;
        self.walk(prefix, after, &mut |store, entry| match entry
            .visible(at)
            .filter(|c| !c.tombstone)
        {
            Some(c) => visit(query_doc(store.read_record(c.rev)?)),
            None => Ok(true),
        })
    }

    fn scan_index(
        &self,
        range: &ByteRange,
        reverse: bool,
        visit: &mut dyn FnMut(&[u8]) -> Result<Flow, QueryError>,
    ) -> Result<(), QueryError> {
        self.entries(range, reverse, visit)
    }

    fn visible(&self, key: &[u8], main: u64, sub: u64) -> Result<Option<Doc>, QueryError> {
        let (Ok(main), Ok(sub)) = (i64::try_from(main), i64::try_from(sub)) else {
            return Ok(None);
        };
        // Counted toward the page; the scan of entries lets go after it.
        self.read();
        let store = self.store();
        match store.visible(key, self.at) {
            Some(c) if !c.tombstone && c.rev == Revision { main, sub } => {
                Ok(Some(query_doc(store.read_record(c.rev)?)))
            }
            _ => Ok(None),
        }
    }
}

impl<B: Backend> Probe for At<'_, B> {
    fn count_entries(&self, range: &ByteRange, cap: u64) -> u64 {
        let mut n = 0;
        let read = self.entries(range, false, &mut |_| {
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
        let at = self.at;
        let mut n = 0;
        let read = self.walk(prefix, None, &mut |_, entry| {
            if entry.visible(at).is_some_and(|c| !c.tombstone) {
                n += 1;
            }
            Ok(n < cap)
        });
        match read {
            Ok(()) => n,
            Err(_) => cap,
        }
    }
}

/// How `q` at `src`'s revision finds its rows as `choice` says: the
/// catalog read first, then the planner's probes (which may page).
fn plan_at<B: Backend>(
    q: &Query,
    src: &At<'_, B>,
    choice: PlanChoice<'_>,
) -> Result<Plan, QueryError> {
    Ok(match choice {
        PlanChoice::Best => {
            let infos = src.store().index_infos();
            plan(q, &infos, src.at, src)
        }
        PlanChoice::PrefixScan => prefix_plan(src.at),
        PlanChoice::Index(name) => {
            let info = {
                let store = src.store();
                let def = store
                    .index_named(name)
                    .ok_or_else(|| KvError::IndexNotFound(name.to_string()))?;
                IndexInfo {
                    id: def.id,
                    spec: def.spec.clone(),
                    since: def.ready_since(),
                }
            };
            index_plan(q, &info, src.at, src).map_err(|why| {
                KvError::Invalid(format!("index {name} cannot serve this query: {why}"))
            })?
        }
    })
}

/// Plans and runs `q` over `src`.
fn run<B: Backend>(
    q: &Query,
    src: &At<'_, B>,
    choice: PlanChoice<'_>,
    limits: Limits,
    paging: &Paging,
) -> Result<QueryAnswer, QueryError> {
    let plan = plan_at(q, src, choice)?;
    if let Some(e) = src.failure() {
        return Err(e);
    }
    let output = execute_page(q, &plan, src, limits, paging);
    if let Some(e) = src.failure() {
        return Err(e);
    }
    match output {
        Ok(output) => Ok(QueryAnswer {
            output,
            plan,
            pages: src.pages.get(),
        }),
        Err(ExecError::Source(e)) => Err(e),
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

    /// How `q` at `revision` (as for `query`) would find its rows
    /// (EXPLAIN), reading only the planner's bounded counts.
    pub fn plan_query(
        &self,
        q: &Query,
        revision: i64,
        choice: PlanChoice<'_>,
    ) -> Result<Plan, QueryError> {
        let at = self.query_revision(q, revision)?;
        plan_at(q, &At::new(Hold::Borrowed(self), at), choice)
    }

    /// Answers `q` at `revision` (0 or less: its AT REVISION, else the
    /// current one) as `choice` says to find its rows, within `limits`,
    /// reading the store in one go (the caller holds it).
    pub fn query(
        &self,
        q: &Query,
        revision: i64,
        choice: PlanChoice<'_>,
        limits: Limits,
    ) -> Result<QueryAnswer, QueryError> {
        self.query_page(q, revision, choice, limits, &Paging::default())
    }

    /// `query`, the part of the answer `paging` asks for.
    pub fn query_page(
        &self,
        q: &Query,
        revision: i64,
        choice: PlanChoice<'_>,
        limits: Limits,
        paging: &Paging,
    ) -> Result<QueryAnswer, QueryError> {
        let at = self.query_revision(q, revision)?;
        run(
            q,
            &At::new(Hold::Borrowed(self), at),
            choice,
            limits,
            paging,
        )
    }

    /// `query` over the store behind `lock`, taking its read lock a page
    /// at a time (`QUERY_PAGE` reads) and letting it go in between, when
    /// it calls `between` (the server yields its thread; a test writes);
    /// past `budget`, the query ends with `TimedOut`. The answer is the
    /// store's at one revision all the same.
    pub fn query_locked(
        lock: &RwLock<KvStore<B>>,
        q: &Query,
        revision: i64,
        choice: PlanChoice<'_>,
        limits: Limits,
        budget: Duration,
        between: &mut dyn FnMut(),
    ) -> Result<QueryAnswer, QueryError> {
        let paging = Paging::default();
        Self::query_page_locked(lock, q, revision, choice, limits, &paging, budget, between)
    }

    /// `query_locked`, the part of the answer `paging` asks for.
    #[allow(clippy::too_many_arguments)]
    pub fn query_page_locked(
        lock: &RwLock<KvStore<B>>,
        q: &Query,
        revision: i64,
        choice: PlanChoice<'_>,
        limits: Limits,
        paging: &Paging,
        budget: Duration,
        between: &mut dyn FnMut(),
    ) -> Result<QueryAnswer, QueryError> {
        Self::paged(lock, q, revision, budget, between, |src| {
            run(q, src, choice, limits, paging)
        })
    }

    /// `plan_query` over the store behind `lock`, a page at a time, as
    /// `query_locked` reads.
    pub fn plan_query_locked(
        lock: &RwLock<KvStore<B>>,
        q: &Query,
        revision: i64,
        choice: PlanChoice<'_>,
        budget: Duration,
        between: &mut dyn FnMut(),
    ) -> Result<Plan, QueryError> {
        Self::paged(lock, q, revision, budget, between, |src| {
            let plan = plan_at(q, src, choice);
            match src.failure() {
                Some(e) => Err(e),
                None => plan,
            }
        })
    }

    fn paged<R>(
        lock: &RwLock<KvStore<B>>,
        q: &Query,
        revision: i64,
        budget: Duration,
        between: &mut dyn FnMut(),
        f: impl FnOnce(&At<'_, B>) -> Result<R, QueryError>,
    ) -> Result<R, QueryError> {
        let guard = lock.read().unwrap_or_else(|p| p.into_inner());
        let at = guard.query_revision(q, revision)?;
        let hold = Hold::Paged {
            lock,
            guard: RefCell::new(Some(guard)),
            between: RefCell::new(between),
            deadline: Instant::now().checked_add(budget),
            budget,
        };
        f(&At::new(hold, at))
    }
}
