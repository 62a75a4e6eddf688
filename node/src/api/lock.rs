//! etcd's Lock service (`v3lockpb.Lock`): a mutex built, as etcd builds
//! it (`v3lock/lock.go` over `concurrency/mutex.go`), from the caller's own
//! KV, Lease and Watch calls (`in_process`). Each contender puts the key
//! `name/<lease hex>` under its lease; the oldest key holds the lock, and
//! the others wait for their nearest older key to be deleted (Unlock,
//! lease expiry). So the lock is fair and a release wakes one waiter.
//!
//! Departures from etcd 3.4 (see ARCHITECTURE.md, "The server"):
//! - a waiter whose own key vanished while it waited (its lease ended)
//!   gets `mutex: session is expired`, as etcd 3.5+ answers; etcd 3.4
//!   reports success with a key that no longer exists;
//! - a canceled or failed waiter's key is deleted as the caller (`Abandon`),
//!   so it works with auth on.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::in_process::{
    create_revision_is, first_created_op, get_op, key_prefix, malformed, put_op, range_response,
    session_key, Abandon, InProcessClient,
};
use super::status::{recipe_status, RecipeError};
use crate::server::node::Node;
use nod_proto::etcd::etcdserverpb::TxnRequest;
use nod_proto::etcd::v3lockpb::lock_server::Lock;
use nod_proto::etcd::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

pub struct LockService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let client = InProcessClient::for_request(&self.node, &request);
        let req = request.into_inner();
        let lease = client.session_lease(req.lease).await?;
        let prefix = key_prefix(&req.name);
        let key = session_key(&prefix, lease);
        // Put the key unless this lease already did (locking twice with one
        // lease is a no-op answering the same key), and read the owner.
        let acquire = client
            .txn(TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![put_op(&key, b"", lease), first_created_op(&prefix)],
                failure: vec![get_op(&key), first_created_op(&prefix)],
            })
            .await?;
        let header = acquire.header.unwrap_or_default();
        let my_rev = if acquire.succeeded {
            header.revision
        } else {
            range_response(&acquire, 0)
                .and_then(|r| r.kvs.first())
                .map(|kv| kv.create_revision)
                .ok_or_else(malformed)?
        };
        let owner = range_response(&acquire, 1)
            .ok_or_else(malformed)?
            .kvs
            .first()
            .map(|kv| kv.create_revision);
        if owner.is_none_or(|rev| rev == my_rev) {
            return Ok(Response::new(LockResponse {
                header: Some(header),
                key,
            }));
        }
        // Dropped armed (canceled, or an error below), it deletes the key.
        let abandon = Abandon::arm(&client, &key, my_rev);
        client.wait_deletes(&prefix, my_rev - 1).await?;
        // etcd 3.5: the waiter's own key may have gone with its lease.
        let mine = client
            .range(nod_proto::etcd::etcdserverpb::RangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await?;
        abandon.disarm();
        if mine.kvs.is_empty() {
            return Err(recipe_status(RecipeError::SessionExpired));
        }
        Ok(Response::new(LockResponse {
            header: mine.header,
            key,
        }))
    }

    /// Deletes `key`, whatever it is (etcd checks nothing either); a
    /// missing key is fine.
    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let client = InProcessClient::for_request(&self.node, &request);
        let deleted = client.delete(request.into_inner().key).await?;
        Ok(Response::new(UnlockResponse {
            header: deleted.header,
        }))
    }
}
