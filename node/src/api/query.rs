//! Nod's Index and Query services (`proto/nod/query.proto`, the user
//! guide in docs/query.md). Declaring and dropping an index go through
//! the log like every write, forwarded to the leader from a follower (the
//! peer port serves `Index` for that); listing and describing read this
//! member's catalog. A query is parsed here, made linearizable unless it
//! says SERIALIZABLE, and answered from this member's store at one
//! revision in a blocking task, at most `MAX_CONCURRENT_QUERIES` at a
//! time, within `QUERY_LIMITS` and `QUERY_BUDGET`, taking the store's
//! read lock a page at a time (`KvStore::query_locked`). Auth: DDL is root's (checked when the
//! entry applies, as every write); a query, a listing and a description
//! need read access to the index's or the query's whole prefix.

use std::sync::Arc;

use prost::Message as _;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::status::{auth_status, kv_status};
use crate::auth::perms::Access;
use crate::command::{IndexCommand, IndexOp, Op};
use crate::server::driver::{Applied, Outcome};
use crate::server::node::{Ctx, Node, Route};
use crate::storage::kv_store::{spec_from_proto, IndexDef, PlanChoice, QueryAnswer, QueryError};
use crate::storage::{KvError, KvStore};
use nod_proto::nodquerypb::cursor_mark::Mark as WireMark;
use nod_proto::nodquerypb::index_client::IndexClient;
use nod_proto::nodquerypb::index_server::Index;
use nod_proto::nodquerypb::query_request::Plan as PlanWanted;
use nod_proto::nodquerypb::query_server::Query as QueryRpc;
use nod_proto::nodquerypb::{
    CursorMark, IndexCreateRequest, IndexDescribeRequest, IndexDescription, IndexDropRequest,
    IndexListRequest, IndexListResponse, IndexRebuildRequest, IndexResponse, QueryCursor,
    QueryRequest, QueryResponse, QueryRow, QueryStats,
};
use nod_query::exec::{After, Limits, Mark, Paging};
use nod_query::spec::MAX_NAME_BYTES;

/// Queries one member answers at once; more wait their turn.
pub const MAX_CONCURRENT_QUERIES: usize = 4;
/// Rows one answer may have, and index entries and documents one query
/// may read (a query takes the store's read lock a page at a time, so
/// writes go on meanwhile; these bound its work and its answer).
pub const QUERY_LIMITS: Limits = Limits {
    max_rows: 10_000,
    max_examined: 1_000_000,
};
/// How long one query may run before it is ended (DEADLINE_EXCEEDED).
pub const QUERY_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

pub struct IndexService {
    pub node: Arc<Node>,
    /// One verification at a time per member (each reads every value
    /// under its index's prefix while holding the store).
    verifying: Arc<Semaphore>,
}

impl IndexService {
    pub fn new(node: Arc<Node>) -> IndexService {
        IndexService {
            node,
            verifying: Arc::new(Semaphore::new(1)),
        }
    }

    fn answer(&self, a: Applied) -> Result<Response<IndexResponse>, Status> {
        match a.outcome {
            Outcome::Index(def) => Ok(Response::new(IndexResponse {
                header: Some(self.node.header(a.revision)),
                index: Some(def.to_proto()),
            })),
            _ => Err(super::kv::unexpected()),
        }
    }

    /// The index named `name` if the caller may read its prefix.
    fn readable(&self, name: &str, ctx: &Ctx) -> Result<IndexDef, Status> {
        let store = self.node.shared.store();
        let def = store
            .index_named(name)
            .ok_or_else(|| kv_status(KvError::IndexNotFound(name.to_string())))?;
        store
            .auth()
            .check_range(
                &ctx.caller,
                Access::Read,
                &def.spec.prefix,
                &nod_client::prefix_end(&def.spec.prefix),
            )
            .map_err(auth_status)?;
        Ok(def.clone())
    }
}

/// The index command `op` makes of a name a client sent (one that no
/// index can have is not found).
fn by_name(name: &str, op: fn(String) -> IndexOp) -> Result<Op, Status> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(kv_status(KvError::IndexNotFound(name.to_string())));
    }
    Ok(Op::Index(IndexCommand {
        op: Some(op(name.to_string())),
    }))
}

#[tonic::async_trait]
impl Index for IndexService {
    async fn create(
        &self,
        request: Request<IndexCreateRequest>,
    ) -> Result<Response<IndexResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        self.node.check_size(req.encoded_len())?;
        let spec = req
            .spec
            .clone()
            .ok_or_else(|| Status::invalid_argument("nod: an index declaration needs its spec"))?;
        // Every member would refuse it alike: refused here, with its reason.
        spec_from_proto(&spec).map_err(|e| kv_status(KvError::Invalid(e.to_string())))?;
        let op = Op::Index(IndexCommand {
            op: Some(IndexOp::Create(spec)),
        });
        match self.node.propose(op, &ctx).await {
            Route::Forward(ch) => {
                IndexClient::new(ch)
                    .create(Node::forward_request(req, &ctx))
                    .await
            }
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => self.answer(a),
        }
    }

    async fn drop(
        &self,
        request: Request<IndexDropRequest>,
    ) -> Result<Response<IndexResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        let op = by_name(&req.name, IndexOp::Drop)?;
        match self.node.propose(op, &ctx).await {
            Route::Forward(ch) => {
                IndexClient::new(ch)
                    .drop(Node::forward_request(req, &ctx))
                    .await
            }
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => self.answer(a),
        }
    }

    async fn rebuild(
        &self,
        request: Request<IndexRebuildRequest>,
    ) -> Result<Response<IndexResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        let op = by_name(&req.name, IndexOp::Rebuild)?;
        match self.node.propose(op, &ctx).await {
            Route::Forward(ch) => {
                IndexClient::new(ch)
                    .rebuild(Node::forward_request(req, &ctx))
                    .await
            }
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => self.answer(a),
        }
    }

    async fn list(
        &self,
        request: Request<IndexListRequest>,
    ) -> Result<Response<IndexListResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        if !request.get_ref().serializable {
            self.node.linearize().await?;
        }
        let store = self.node.shared.store();
        let auth = store.auth();
        // Only the indexes over prefixes the caller may read.
        let indexes = store
            .indexes()
            .iter()
            .filter(|d| {
                auth.check_range(
                    &ctx.caller,
                    Access::Read,
                    &d.spec.prefix,
                    &nod_client::prefix_end(&d.spec.prefix),
                )
                .is_ok()
            })
            .map(IndexDef::to_proto)
            .collect();
        Ok(Response::new(IndexListResponse {
            header: Some(self.node.header(store.current_revision())),
            indexes,
        }))
    }

    async fn describe(
        &self,
        request: Request<IndexDescribeRequest>,
    ) -> Result<Response<IndexDescription>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        if !req.serializable {
            self.node.linearize().await?;
        }
        let def = self.readable(&req.name, &ctx)?;
        if !req.verify {
            let store = self.node.shared.store();
            return Ok(Response::new(IndexDescription {
                header: Some(self.node.header(store.current_revision())),
                index: Some(def.to_proto()),
                ..Default::default()
            }));
        }
        // Reads every value under the prefix: root's, one at a time.
        self.node
            .shared
            .store()
            .auth()
            .check_admin(&ctx.caller)
            .map_err(auth_status)?;
        let permit = self
            .verifying
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let node = self.node.clone();
        let d = tokio::task::spawn_blocking(move || -> Result<IndexDescription, Status> {
            let _permit = permit;
            let store = node.shared.store();
            // Looked up again: it may have been dropped meanwhile.
            let def = store
                .index_named(&req.name)
                .cloned()
                .ok_or_else(|| kv_status(KvError::IndexNotFound(req.name.clone())))?;
            let mut d = IndexDescription {
                header: Some(node.header(store.current_revision())),
                index: Some(def.to_proto()),
                ..Default::default()
            };
            if let Some(c) = store.verify_secondary(def.id).map_err(kv_status)? {
                d.verified = true;
                d.entries_expected = c.expected;
                d.entries_missing = c.missing.len() as u64;
                d.entries_extra = c.extra.len() as u64;
            }
            Ok(d)
        })
        .await
        .map_err(|e| Status::internal(format!("nod: verifying an index: {e}")))??;
        Ok(Response::new(d))
    }
}

pub struct QueryService {
    pub node: Arc<Node>,
    /// Permits for the queries running on this member.
    pub running: Arc<Semaphore>,
}

impl QueryService {
    pub fn new(node: Arc<Node>) -> QueryService {
        QueryService {
            node,
            running: Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES)),
        }
    }
}

/// A query's refusal as a status: etcd's for the revision errors,
/// `RESOURCE_EXHAUSTED` over the limits.
fn query_status(e: QueryError) -> Status {
    match e {
        QueryError::Request(k) => kv_status(k),
        QueryError::OverLimit(why) => Status::resource_exhausted(format!("nod: {why}")),
        e @ QueryError::TimedOut(_) => Status::deadline_exceeded(format!("nod: {e}")),
        e @ QueryError::CatalogChanged => Status::aborted(format!("nod: {e}")),
        QueryError::Store(s) => kv_status(s),
    }
}

fn parse_status(e: nod_query::ParseError) -> Status {
    let mut s = Status::invalid_argument(format!("nod: query: {e}"));
    let md = s.metadata_mut();
    md.insert("nod-query-line", e.line.into());
    md.insert("nod-query-column", e.column.into());
    s
}

/// FNV-1a (64 bits) of `q` as printed: what ties a cursor to its query.
fn query_hash(q: &nod_query::Query) -> u64 {
    q.to_string().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The cursor of the page after `next`, the pages so far having sent
/// `sent` rows of `q` at `revision`.
fn cursor(q: &nod_query::Query, revision: i64, sent: u64, next: After) -> Vec<u8> {
    let marks = next
        .marks
        .into_iter()
        .map(|m| CursorMark {
            mark: Some(match m {
                Mark::Missing => WireMark::Missing(true),
                Mark::Json(v) => WireMark::Json(v.to_string()),
                Mark::Int(i) => WireMark::Int(i),
                Mark::Bytes(b) => WireMark::Bytes(b),
            }),
        })
        .collect();
    QueryCursor {
        query: query_hash(q),
        revision,
        sent,
        marks,
        key: next.key,
    }
    .encode_to_vec()
}

/// Where the page `cursor` asks for starts, and its revision.
fn resume(q: &nod_query::Query, cursor: &[u8]) -> Result<(i64, Paging), Status> {
    let bad = |why: &str| Status::invalid_argument(format!("nod: cursor: {why}"));
    let c = QueryCursor::decode(cursor).map_err(|_| bad("not one a Nod query answer gave"))?;
    if c.query != query_hash(q) {
        return Err(bad(
            "it belongs to another query (send the text of the query that gave it)",
        ));
    }
    if q.projection == nod_query::ast::Projection::Count {
        return Err(bad("a COUNT(*) query has no pages"));
    }
    if c.revision <= 0 || q.at_revision.is_some_and(|r| r != c.revision) {
        return Err(bad("its revision is not the query's"));
    }
    if c.marks.len() != q.order.len() {
        return Err(bad("it has not one mark per ORDER BY term"));
    }
    let marks = c
        .marks
        .into_iter()
        .map(|m| match m.mark {
            Some(WireMark::Missing(_)) => Ok(Mark::Missing),
            Some(WireMark::Json(t)) => serde_json::from_str(&t)
                .map(Mark::Json)
                .map_err(|_| bad("a mark is not JSON")),
            Some(WireMark::Int(i)) => Ok(Mark::Int(i)),
            Some(WireMark::Bytes(b)) => Ok(Mark::Bytes(b)),
            None => Err(bad("a mark is empty")),
        })
        .collect::<Result<Vec<Mark>, Status>>()?;
    Ok((
        c.revision,
        Paging {
            after: Some(After { marks, key: c.key }),
            page: None,
            sent: c.sent,
        },
    ))
}

fn response(q: &nod_query::Query, a: QueryAnswer, paging: &Paging) -> QueryResponse {
    let QueryAnswer { output, plan, .. } = a;
    let sent = paging.sent.saturating_add(output.rows.len() as u64);
    let next = output
        .next
        .map(|n| cursor(q, plan.revision, sent, n))
        .unwrap_or_default();
    QueryResponse {
        header: None,
        revision: plan.revision,
        columns: output.columns,
        rows: output
            .rows
            .iter()
            .map(|r| QueryRow {
                cells: r.iter().map(|v| v.to_string()).collect(),
            })
            .collect(),
        counted: output.count.is_some(),
        count: output.count.unwrap_or(0),
        stats: Some(QueryStats {
            entries: output.stats.entries,
            docs: output.stats.docs,
            matched: output.stats.matched,
        }),
        plan: nod_query::plan::explain(q, &plan),
        cursor: next,
    }
}

#[tonic::async_trait]
impl QueryRpc for QueryService {
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        self.node.check_size(req.encoded_len())?;
        let q = nod_query::parse(&req.text).map_err(parse_status)?;
        let wanted = PlanWanted::try_from(req.plan)
            .map_err(|_| Status::invalid_argument(format!("nod: unknown plan {}", req.plan)))?;
        if wanted == PlanWanted::Index && req.index.is_empty() {
            return Err(Status::invalid_argument(
                "nod: a query through an index names the index",
            ));
        }
        let (mut revision, mut paging) = if req.cursor.is_empty() {
            (q.at_revision.unwrap_or(0), Paging::default())
        } else {
            resume(&q, &req.cursor)?
        };
        if req.page_size > 0 {
            paging.page = Some(u64::from(req.page_size).min(QUERY_LIMITS.max_rows));
        }
        if q.explain {
            paging = Paging::default();
            revision = q.at_revision.unwrap_or(0);
        }
        if !q.serializable {
            self.node.linearize().await?;
        }
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let node = self.node.clone();
        let caller = ctx.caller;
        let index = req.index;
        let r = tokio::task::spawn_blocking(move || -> Result<QueryResponse, Status> {
            // Held by the task, not the call: a client that goes away
            // does not free the slot of a query still running.
            let _permit = permit;
            let from = q.from.as_bytes();
            node.shared
                .store()
                .auth()
                .check_range(&caller, Access::Read, from, &nod_client::prefix_end(from))
                .map_err(auth_status)?;
            let choice = match wanted {
                PlanWanted::Best => PlanChoice::Best,
                PlanWanted::PrefixScan => PlanChoice::PrefixScan,
                PlanWanted::Index => PlanChoice::Index(&index),
            };
            let lock = &node.shared.store;
            // Between pages the lock is free: the apply loop's turn.
            let mut between = std::thread::yield_now;
            let mut out = if q.explain {
                let plan = KvStore::plan_query_locked(
                    lock,
                    &q,
                    revision,
                    choice,
                    QUERY_BUDGET,
                    &mut between,
                )
                .map_err(query_status)?;
                QueryResponse {
                    revision: plan.revision,
                    plan: nod_query::plan::explain(&q, &plan),
                    ..Default::default()
                }
            } else {
                let answer = KvStore::query_page_locked(
                    lock,
                    &q,
                    revision,
                    choice,
                    QUERY_LIMITS,
                    &paging,
                    QUERY_BUDGET,
                    &mut between,
                )
                .map_err(query_status)?;
                response(&q, answer, &paging)
            };
            out.header = Some(node.header(node.shared.store().current_revision()));
            Ok(out)
        })
        .await
        .map_err(|e| Status::internal(format!("nod: running a query: {e}")))??;
        Ok(Response::new(r))
    }
}
