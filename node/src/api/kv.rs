//! The etcd KV service: Range, Put, DeleteRange, Txn, Compact.
//! Writes go through the log (forwarded to the leader from a follower);
//! reads are linearizable unless `serializable`.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status};

use super::etcd::etcdserverpb::kv_client::KvClient;
use super::etcd::etcdserverpb::{
    request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest,
    TxnResponse,
};
// The KV server whose Range answers a `RangeAnswer` (nod_proto's build.rs).
use super::status::{auth_status, kv_status};
use crate::auth::perms::Access;
use crate::command::Op;
use crate::server::driver::Outcome;
use crate::server::node::{Ctx, Node, Route, KV_OVERHEAD};
use crate::storage::kv_store::KeyRange;
use crate::storage::kv_store::MAX_TXN_DEPTH;
use crate::storage::{KvError, KvStore, ReadError};
use nod_proto::kv::k_v_server::KV as Kv;
use nod_proto::range::RangeAnswer;

pub struct KvService {
    pub node: Arc<Node>,
}

/// An apply result of another kind than the request's (a defect).
pub(super) fn unexpected() -> Status {
    Status::internal("etcdserver: unexpected apply result")
}

/// Checks a transaction's shape before it is proposed: op count, depth,
/// and that no key is written twice (etcd's `checkTxnReqsPermission` and
/// `checkIntervals`, nested transactions included).
fn check_txn(t: &TxnRequest, max_ops: usize, depth: usize) -> Result<(), KvError> {
    if depth > MAX_TXN_DEPTH {
        return Err(KvError::Invalid("txn nested too deeply".into()));
    }
    if t.compare.len() > max_ops {
        return Err(KvError::TooManyOps);
    }
    for branch in [&t.success, &t.failure] {
        if branch.len() > max_ops {
            return Err(KvError::TooManyOps);
        }
        for op in branch.iter() {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => check_put(p)?,
                Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                    return Err(KvError::EmptyKey)
                }
                Some(request_op::Request::RequestDeleteRange(d)) if d.key.is_empty() => {
                    return Err(KvError::EmptyKey)
                }
                Some(request_op::Request::RequestTxn(inner)) => {
                    check_txn(inner, max_ops, depth + 1)?
                }
                None => return Err(KvError::Invalid("txn operation has no request".into())),
                _ => {}
            }
        }
    }
    if depth == 0 {
        // Once the shape is known to be bounded.
        for branch in [&t.success, &t.failure] {
            branch_writes(branch)?;
        }
    }
    Ok(())
}

/// etcd's `checkIntervals`: the keys a branch puts and the ranges it
/// deletes, with its nested transactions'. Refused, as etcd refuses them: a
/// key put twice, or put where a delete of this level or an earlier nested
/// one reaches it; a nested transaction's two branches exclude each other.
fn branch_writes(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), KvError> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => {
                Some(KeyRange::new(&d.key, &d.range_end))
            }
            _ => None,
        })
        .collect();
    let deleted = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (then_puts, then_dels) = branch_writes(&t.success)?;
        let (else_puts, else_dels) = branch_writes(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in else_puts {
            if (puts.contains(&k) && !then_puts.contains(&k)) || deleted(&dels, &k) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        if let Some(request_op::Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || deleted(&dels, &p.key) {
                return Err(KvError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

/// etcd's `checkPutRequest`.
fn check_put(p: &PutRequest) -> Result<(), KvError> {
    if p.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

/// What a transaction adds to the store, for the quota (etcd's
/// `costTxn`): the puts of its costlier branch, each its size plus the
/// per-key overhead. 0 for a transaction that only reads or deletes.
fn txn_cost(t: &TxnRequest) -> usize {
    let branch = |ops: &[RequestOp]| -> usize {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => KV_OVERHEAD + p.encoded_len(),
                Some(request_op::Request::RequestTxn(inner)) => txn_cost(inner),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

fn txn_is_read_only(t: &TxnRequest) -> bool {
    [&t.success, &t.failure].iter().all(|b| {
        b.iter().all(|op: &RequestOp| match &op.request {
            Some(request_op::Request::RequestRange(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_is_read_only(inner),
            _ => false,
        })
    })
}

/// Each request for a given caller: the service methods below, and the
/// Lock and Election services (`in_process`) call these, so size and shape
/// checks, forwarding and headers have one home.
impl KvService {
    /// Waits until this member has removed what compactions up to
    /// `revision` dropped (a physical compaction answers then, as etcd's
    /// does), or until the member's store moves past it.
    async fn swept(&self, revision: i64) {
        while self.node.shared.store().swept_revision() < revision {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// A Range request checked, made linearizable unless serializable,
    /// allowed, and read by `read` from the store, with the header of the
    /// revision it read at.
    async fn read_range<T>(
        &self,
        req: &RangeRequest,
        ctx: &Ctx,
        read: impl FnOnce(&KvStore, &RangeRequest) -> Result<T, ReadError>,
    ) -> Result<(T, ResponseHeader), Status> {
        if req.key.is_empty() {
            return Err(kv_status(KvError::EmptyKey));
        }
        if !req.serializable {
            self.node.linearize().await?;
        }
        let store = self.node.shared.store();
        store
            .auth()
            .check_range(&ctx.caller, Access::Read, &req.key, &req.range_end)
            .map_err(auth_status)?;
        let answer = read(&store, req).map_err(kv_status)?;
        Ok((answer, self.node.header(store.current_revision())))
    }

    pub(crate) async fn range_as(
        &self,
        req: RangeRequest,
        ctx: &Ctx,
    ) -> Result<RangeResponse, Status> {
        let (mut resp, header) = self.read_range(&req, ctx, KvStore::range).await?;
        resp.header = Some(header);
        Ok(resp)
    }

    /// `range_as` for the KV service's Range: the key-values copied from
    /// their stored records where they can be (`KvStore::range_answer`).
    async fn range_answer_as(&self, req: RangeRequest, ctx: &Ctx) -> Result<RangeAnswer, Status> {
        let (mut answer, header) = self.read_range(&req, ctx, KvStore::range_answer).await?;
        match &mut answer {
            RangeAnswer::Message(r) => r.header = Some(header),
            RangeAnswer::Encoded(e) => e.header = Some(header),
        }
        Ok(answer)
    }

    pub(crate) async fn delete_range_as(
        &self,
        req: DeleteRangeRequest,
        ctx: &Ctx,
    ) -> Result<DeleteRangeResponse, Status> {
        self.node.check_size(req.encoded_len())?;
        if req.key.is_empty() {
            return Err(kv_status(KvError::EmptyKey));
        }
        match self.node.propose(Op::DeleteRange(req.clone()), ctx).await {
            Route::Forward(ch) => Ok(KvClient::new(ch)
                .delete_range(Node::forward_request(req, ctx))
                .await?
                .into_inner()),
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => match a.outcome {
                Outcome::Delete(mut d) => {
                    d.header = Some(self.node.header(a.revision));
                    Ok(d)
                }
                _ => Err(unexpected()),
            },
        }
    }

    pub(crate) async fn txn_as(&self, req: TxnRequest, ctx: &Ctx) -> Result<TxnResponse, Status> {
        self.node.check_size(req.encoded_len())?;
        check_txn(&req, self.node.max_txn_ops, 0).map_err(kv_status)?;
        if txn_is_read_only(&req) {
            // A read-only txn is served like a linearizable read, without the log.
            self.node.linearize().await?;
            let store = self.node.shared.store();
            let no_leases = |_: i64| Vec::new();
            store
                .auth()
                .check_txn(&ctx.caller, &req, &no_leases)
                .map_err(auth_status)?;
            let resp = store.read_txn(&req).map_err(kv_status)?;
            let rev = store.current_revision();
            drop(store);
            return Ok(TxnResponse {
                header: Some(self.node.header(rev)),
                ..resp
            });
        }
        let cost = txn_cost(&req);
        if cost > 0 {
            self.node.check_quota(cost).await?;
        }
        match self.node.propose(Op::Txn(req.clone()), ctx).await {
            Route::Forward(ch) => Ok(KvClient::new(ch)
                .txn(Node::forward_request(req, ctx))
                .await?
                .into_inner()),
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => match a.outcome {
                Outcome::Txn(mut t) => {
                    t.header = Some(self.node.header(a.revision));
                    Ok(t)
                }
                _ => Err(unexpected()),
            },
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeAnswer>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.range_answer_as(request.into_inner(), &ctx)
            .await
            .map(Response::new)
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        let r = async {
            self.node.check_size(req.encoded_len())?;
            check_put(&req).map_err(kv_status)?;
            self.node
                .check_quota(KV_OVERHEAD + req.encoded_len())
                .await?;
            match self.node.propose(Op::Put(req.clone()), &ctx).await {
                Route::Forward(ch) => Ok(KvClient::new(ch)
                    .put(Node::forward_request(req, &ctx))
                    .await?
                    .into_inner()),
                Route::Done(Err(s)) => Err(s),
                Route::Done(Ok(a)) => match a.outcome {
                    Outcome::Put(mut p) => {
                        p.header = Some(self.node.header(a.revision));
                        Ok(p)
                    }
                    _ => Err(unexpected()),
                },
            }
        }
        .await;
        r.map(Response::new)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.delete_range_as(request.into_inner(), &ctx)
            .await
            .map(Response::new)
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.txn_as(request.into_inner(), &ctx)
            .await
            .map(Response::new)
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        let r = async {
            match self.node.propose(Op::Compaction(req), &ctx).await {
                Route::Forward(ch) => Ok(KvClient::new(ch)
                    .compact(Node::forward_request(req, &ctx))
                    .await?
                    .into_inner()),
                Route::Done(Err(s)) => Err(s),
                Route::Done(Ok(a)) => {
                    if req.physical {
                        self.swept(req.revision).await;
                    }
                    Ok(CompactionResponse {
                        header: Some(self.node.header(a.revision)),
                    })
                }
            }
        }
        .await;
        r.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::kv_store::MAX_TXN_OPS;
    use nod_proto::etcd::etcdserverpb::request_op::Request as R;

    fn put(k: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(R::RequestPut(PutRequest {
                key: k.to_vec(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn txn_checks_refuse_duplicate_puts_empty_keys_and_deep_nesting() {
        let dup = TxnRequest {
            success: vec![put(b"a"), put(b"a")],
            ..Default::default()
        };
        assert_eq!(check_txn(&dup, MAX_TXN_OPS, 0), Err(KvError::DuplicateKey));
        let empty = TxnRequest {
            failure: vec![put(b"")],
            ..Default::default()
        };
        assert_eq!(check_txn(&empty, MAX_TXN_OPS, 0), Err(KvError::EmptyKey));
        let mut deep = TxnRequest::default();
        for _ in 0..=MAX_TXN_DEPTH + 1 {
            deep = TxnRequest {
                success: vec![RequestOp {
                    request: Some(R::RequestTxn(deep)),
                }],
                ..Default::default()
            };
        }
        assert!(matches!(
            check_txn(&deep, MAX_TXN_OPS, 0),
            Err(KvError::Invalid(_))
        ));
        let ok = TxnRequest {
            success: vec![put(b"a")],
            failure: vec![put(b"a")],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&ok, MAX_TXN_OPS, 0),
            Ok(()),
            "the same key in both branches is fine"
        );
        // Nested transactions, as etcd's checkIntervals judges them.
        let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>| RequestOp {
            request: Some(R::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        };
        let del = |k: &[u8], end: &[u8]| RequestOp {
            request: Some(R::RequestDeleteRange(DeleteRangeRequest {
                key: k.to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            })),
        };
        let judged = |success: Vec<RequestOp>| {
            let t = TxnRequest {
                success,
                ..Default::default()
            };
            check_txn(&t, MAX_TXN_OPS, 0)
        };
        let dup = Err(KvError::DuplicateKey);
        assert_eq!(judged(vec![put(b"k"), txn(vec![put(b"k")], vec![])]), dup);
        assert_eq!(
            judged(vec![put(b"k"), txn(vec![del(b"k", b"")], vec![])]),
            dup
        );
        assert_eq!(
            judged(vec![del(b"a", b"z"), txn(vec![], vec![put(b"k")])]),
            dup
        );
        assert_eq!(
            judged(vec![
                txn(vec![put(b"k")], vec![]),
                txn(vec![put(b"k")], vec![])
            ]),
            dup
        );
        assert_eq!(
            judged(vec![txn(vec![put(b"k")], vec![put(b"k")])]),
            Ok(()),
            "a nested txn's branches exclude each other"
        );
        assert_eq!(
            judged(vec![
                txn(vec![put(b"k")], vec![]),
                txn(vec![del(b"k", b"")], vec![])
            ]),
            Ok(()),
            "etcd lets a later nested delete meet an earlier nested put"
        );
        assert!(!txn_is_read_only(&ok));
        // --max-txn-ops bounds each branch and the compares.
        let three = TxnRequest {
            success: vec![put(b"a"), put(b"b"), put(b"c")],
            ..Default::default()
        };
        assert_eq!(check_txn(&three, 2, 0), Err(KvError::TooManyOps));
        assert_eq!(check_txn(&three, 3, 0), Ok(()));
    }

    #[test]
    fn a_txn_costs_its_costlier_branch_of_puts() {
        let p = |k: &[u8]| PutRequest {
            key: k.to_vec(),
            value: vec![0; 100],
            ..Default::default()
        };
        let one = KV_OVERHEAD + p(b"a").encoded_len();
        let t = TxnRequest {
            success: vec![put_op(p(b"a"))],
            failure: vec![
                put_op(p(b"a")),
                RequestOp {
                    request: Some(R::RequestTxn(TxnRequest {
                        success: vec![put_op(p(b"b"))],
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        assert_eq!(txn_cost(&t), 2 * one);
        let deletes_only = TxnRequest {
            success: vec![RequestOp {
                request: Some(R::RequestDeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(txn_cost(&deletes_only), 0, "a delete adds nothing");
    }

    fn put_op(p: PutRequest) -> RequestOp {
        RequestOp {
            request: Some(R::RequestPut(p)),
        }
    }
}
