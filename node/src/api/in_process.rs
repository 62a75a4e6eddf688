//! The Lock and Election services' client of this server (etcd's
//! `v3client`): KV, Lease and Watch calls that go straight to the services'
//! own paths (`KvService::*_as`, `LeaseService::grant_as`, `KeyWatch`), with
//! no network hop and no retries, run as the caller of the outer request.
//! It keeps the caller's metadata (the token) and connection, and resolves
//! the caller again before every inner call, as etcd re-reads the token on
//! each: a token that expires or is revoked during a long wait fails the
//! next step, and an auth change does not make a simple token's revision
//! old. Also the shared recipe steps: the session lease, the key layout,
//! `wait_deletes`. Every error leaves here through `in_process_status`.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::key_watch::KeyWatch;
use super::kv::KvService;
use super::lease::LeaseService;
use super::status::{in_process_status, kv_status};
use crate::auth::perms::Access;
use crate::server::node::{Ctx, Node};
use crate::storage::kv_store::KeyRange;
use crate::tls::ConnInfo;
use nod_proto::etcd::etcdserverpb::range_request::{SortOrder, SortTarget};
use nod_proto::etcd::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest,
    PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use nod_proto::etcd::mvccpb::event::EventType;

/// The TTL of the lease a Lock or Campaign with lease 0 is given (etcd's
/// `defaultSessionTTL`). Nothing keeps it alive, as in etcd.
pub const SESSION_TTL: i64 = 60;

/// One outer request's client of this server.
#[derive(Clone)]
pub struct InProcessClient {
    node: Arc<Node>,
    metadata: MetadataMap,
    conn: Option<ConnInfo>,
}

impl InProcessClient {
    /// A client that runs as the caller of `request`.
    pub fn for_request<T>(node: &Arc<Node>, request: &Request<T>) -> InProcessClient {
        InProcessClient {
            node: node.clone(),
            metadata: request.metadata().clone(),
            conn: request.extensions().get::<ConnInfo>().cloned(),
        }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The caller, resolved now from the outer request's token or certificate.
    async fn ctx(&self) -> Result<Ctx, Status> {
        let mut extensions = tonic::Extensions::new();
        if let Some(conn) = &self.conn {
            extensions.insert(conn.clone());
        }
        let request = Request::from_parts(self.metadata.clone(), extensions, ());
        self.node.ctx(&request).await.map_err(in_process_status)
    }

    fn kv(&self) -> KvService {
        KvService {
            node: self.node.clone(),
        }
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        let ctx = self.ctx().await?;
        self.kv()
            .range_as(req, &ctx)
            .await
            .map_err(in_process_status)
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        let ctx = self.ctx().await?;
        self.kv().txn_as(req, &ctx).await.map_err(in_process_status)
    }

    pub async fn delete(&self, key: Vec<u8>) -> Result<DeleteRangeResponse, Status> {
        let ctx = self.ctx().await?;
        let req = DeleteRangeRequest {
            key,
            ..Default::default()
        };
        self.kv()
            .delete_range_as(req, &ctx)
            .await
            .map_err(in_process_status)
    }

    /// etcd's `concurrency.NewSession(WithLease(lease))`: the lease as
    /// given (not checked: a missing one fails the put that uses it), or
    /// for 0 a new lease of `SESSION_TTL` seconds that nothing keeps alive.
    pub async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let ctx = self.ctx().await?;
        let lease = LeaseService {
            node: self.node.clone(),
        };
        let req = LeaseGrantRequest {
            ttl: SESSION_TTL,
            id: 0,
        };
        let granted = lease.grant_as(req, &ctx).await.map_err(in_process_status)?;
        Ok(granted.id)
    }

    /// A watch of `[key, range_end)` from `start`, for the caller (who must
    /// be allowed to read the range).
    pub async fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start: i64,
    ) -> Result<KeyWatch, Status> {
        let ctx = self.ctx().await?;
        self.node
            .authorize(|a| a.check_range(&ctx.caller, Access::Read, key, range_end))
            .map_err(in_process_status)?;
        KeyWatch::open(&*self.node.shared, KeyRange::new(key, range_end), start)
            .map_err(|e| in_process_status(kv_status(e)))
    }

    /// The key created first under `prefix` (etcd's `WithFirstCreate`).
    pub async fn first_created(&self, prefix: &[u8]) -> Result<RangeResponse, Status> {
        self.range(created_order(prefix, SortOrder::Ascend, 0))
            .await
    }

    /// etcd's `waitDeletes`: until no key under `prefix` created at or
    /// before `max_create_revision` is left, waits for the newest of them
    /// to be deleted (each waiter watches only its nearest predecessor, so
    /// one release wakes one waiter). Returns the header of the last read.
    ///
    /// Departure from etcd: when the watch ends early (its start revision
    /// was compacted between the read and the watch, or a snapshot replaced
    /// the store) it reads again instead of failing with "required revision
    /// has been compacted"; a fresh read re-establishes the state.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: i64,
    ) -> Result<ResponseHeader, Status> {
        loop {
            let resp = self
                .range(created_order(
                    prefix,
                    SortOrder::Descend,
                    max_create_revision,
                ))
                .await?;
            let header = resp.header.unwrap_or_default();
            let Some(last) = resp.kvs.into_iter().next() else {
                return Ok(header);
            };
            let mut watch = self.watch(&last.key, b"", header.revision).await?;
            while let Some((_, events)) = watch.next().await {
                if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                    break;
                }
            }
        }
    }

    /// Deletes `key` if it is still the one created at `create_revision`
    /// (a compare-and-delete, so a key created again since is left alone).
    pub async fn delete_if_created_at(
        &self,
        key: Vec<u8>,
        create_revision: i64,
    ) -> Result<TxnResponse, Status> {
        self.txn(TxnRequest {
            compare: vec![create_revision_is(&key, create_revision)],
            success: vec![delete_op(key)],
            failure: vec![],
        })
        .await
    }
}

/// Deletes a waiter's key when the request that made it is abandoned
/// (canceled or failed while waiting), as etcd's Lock and Campaign do on
/// error, so nobody queues behind a caller that left. Runs when dropped
/// armed: a canceled request's future is dropped, not resumed.
///
/// Departure from etcd: the cleanup runs as the caller, so it works with
/// auth on (etcd's runs with no token and fails under auth); and Campaign
/// cleans up on every error, not only on cancellation (etcd leaves a
/// hidden candidate behind after a watch error).
pub struct Abandon {
    client: InProcessClient,
    key: Vec<u8>,
    create_revision: i64,
    armed: bool,
}

impl Abandon {
    pub fn arm(client: &InProcessClient, key: &[u8], create_revision: i64) -> Abandon {
        Abandon {
            client: client.clone(),
            key: key.to_vec(),
            create_revision,
            armed: true,
        }
    }

    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let key = std::mem::take(&mut self.key);
        let rev = self.create_revision;
        runtime.spawn(async move {
            if let Err(e) = client.delete_if_created_at(key.clone(), rev).await {
                tracing::warn!(
                    key = %String::from_utf8_lossy(&key),
                    error = %e.message(),
                    "could not delete an abandoned lock or election key"
                );
            }
        });
    }
}

/// `name/`: etcd always appends the slash (`a/` gives `a//`, `` gives `/`).
pub fn key_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// `prefix` then the lease id in lowercase hex, as Go's `%x` prints an
/// int64: no `0x`, no padding, a negative id as `-` and its magnitude.
pub fn session_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut key = prefix.to_vec();
    key.extend_from_slice(hex.as_bytes());
    key
}

/// A linearizable read of the oldest (`Ascend`) or newest (`Descend`) key
/// by create revision under `prefix`, created at or before `max` (0: any).
fn created_order(prefix: &[u8], order: SortOrder, max: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: nod_client::prefix_end(prefix),
        sort_target: SortTarget::Create as i32,
        sort_order: order as i32,
        limit: 1,
        max_create_revision: max,
        ..Default::default()
    }
}

/// The compare `create_revision(key) == rev`.
pub fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

pub fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub fn get_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The oldest key under `prefix`, as a txn op.
pub fn first_created_op(prefix: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(created_order(
            prefix,
            SortOrder::Ascend,
            0,
        ))),
    }
}

pub fn delete_op(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

/// The `i`th response of a txn, if it is a range.
pub fn range_response(t: &TxnResponse, i: usize) -> Option<&RangeResponse> {
    match t.responses.get(i)?.response.as_ref()? {
        nod_proto::etcd::etcdserverpb::response_op::Response::ResponseRange(r) => Some(r),
        _ => None,
    }
}

/// A txn answer that lacks what its own ops produce: a bug, reported
/// instead of a panic.
pub fn malformed() -> Status {
    Status::internal("etcdserver: unexpected txn result")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_name_a_slash_and_the_lease_in_go_hex() {
        let cases: [(&[u8], i64, &str); 6] = [
            (b"m", 0x694d9b5f1a2b3c4d, "m/694d9b5f1a2b3c4d"),
            (b"m", 10, "m/a"),
            (b"", 1, "/1"),
            (b"a/", 255, "a//ff"),
            (b"m", -1, "m/-1"),
            (b"m", i64::MIN, "m/-8000000000000000"),
        ];
        for (name, lease, key) in cases {
            assert_eq!(
                session_key(&key_prefix(name), lease),
                key.as_bytes(),
                "{lease}"
            );
        }
    }
}
