//! The etcd Lease service. Grant and revoke go through the log; keep-alive
//! and time-to-live are answered by the leader, which owns the deadlines
//! (a follower passes them on to it).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::etcd::etcdserverpb::lease_client::LeaseClient;
use super::etcd::etcdserverpb::lease_server::Lease;
use super::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use super::status::{kv_status, to_status};
use crate::auth::perms::Access;
use crate::command::Op;
use crate::server::driver::DriverError;
use crate::server::node::{Ctx, Node, Route, LEASE_OVERHEAD};
use crate::storage::kv_store::MAX_LEASE_TTL;
use crate::storage::KvError;

/// The shortest TTL granted; shorter requests get this (etcd uses about
/// 1.5 election timeouts for the same reason: a lease must outlive a failover).
pub const MIN_LEASE_TTL: i64 = 2;

pub struct LeaseService {
    pub node: Arc<Node>,
}

fn random_lease_id() -> i64 {
    // Positive and non-zero; random so that two clients do not collide.
    (crate::identity::random_id() >> 1).max(1) as i64
}

async fn keep_alive_once(
    node: &Node,
    id: i64,
    ctx: &Ctx,
) -> Result<LeaseKeepAliveResponse, Status> {
    match node.leader_route().await? {
        None => {
            let ttl = match node.driver.keep_alive(id).await {
                Ok(ttl) => ttl,
                // etcd answers an unknown lease with TTL 0, not an error.
                Err(DriverError::Kv(KvError::LeaseNotFound)) => 0,
                Err(e) => return Err(to_status(e)),
            };
            Ok(LeaseKeepAliveResponse {
                header: Some(node.current_header()),
                id,
                ttl,
            })
        }
        Some(ch) => {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.send(LeaseKeepAliveRequest { id }).await;
            drop(tx);
            let mut responses = LeaseClient::new(ch)
                .lease_keep_alive(Node::forward_request(ReceiverStream::new(rx), ctx))
                .await?
                .into_inner();
            let answer = responses
                .next()
                .await
                .unwrap_or_else(|| Err(Status::unavailable("etcdserver: leader changed")));
            // The request stream is closed, so the leader ends the call
            // right after its answer: read to the end (off the caller's
            // path) rather than reset a stream whose trailers are on their
            // way, which h2 would count against the peer connection
            // (tls::peer_http2).
            if answer.is_ok() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(_)) = responses.next().await {}
                    })
                    .await;
                });
            }
            answer
        }
    }
}

impl LeaseService {
    /// Grants a lease for the caller of `ctx` (the Lease service, and the
    /// Lock and Election services for a request with lease 0).
    pub(crate) async fn grant_as(
        &self,
        mut req: LeaseGrantRequest,
        ctx: &Ctx,
    ) -> Result<LeaseGrantResponse, Status> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(kv_status(KvError::LeaseTtlTooLarge));
        }
        if req.id < 0 {
            return Err(Status::invalid_argument(
                "etcdserver: lease ID must be positive",
            ));
        }
        req.ttl = req.ttl.max(MIN_LEASE_TTL);
        if req.id == 0 {
            req.id = random_lease_id();
        }
        self.node
            .check_quota(LEASE_OVERHEAD + req.encoded_len())
            .await?;
        match self.node.propose(Op::LeaseGrant(req), ctx).await {
            Route::Forward(ch) => Ok(LeaseClient::new(ch)
                .lease_grant(Node::forward_request(req, ctx))
                .await?
                .into_inner()),
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => Ok(LeaseGrantResponse {
                header: Some(self.node.header(a.revision)),
                id: req.id,
                ttl: req.ttl,
                error: String::new(),
            }),
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.grant_as(request.into_inner(), &ctx)
            .await
            .map(Response::new)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        match self.node.propose(Op::LeaseRevoke(req), &ctx).await {
            Route::Forward(ch) => Ok(Response::new(
                LeaseClient::new(ch)
                    .lease_revoke(Node::forward_request(req, &ctx))
                    .await?
                    .into_inner(),
            )),
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => Ok(Response::new(LeaseRevokeResponse {
                header: Some(self.node.header(a.revision)),
            })),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        // Authorised once, when the stream opens (a keep-alive changes no key).
        let ctx = self.node.ctx(&request).await?;
        self.node
            .authorize(|a| a.check_authenticated(&ctx.caller))?;
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Some(Ok(req)) = input.next().await {
                let r = keep_alive_once(&node, req.id, &ctx).await;
                let end = r.is_err();
                if tx.send(r).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.node
            .authorize(|a| a.check_authenticated(&ctx.caller))?;
        let req = request.into_inner();
        match self.node.leader_route().await? {
            Some(ch) => Ok(Response::new(
                LeaseClient::new(ch)
                    .lease_time_to_live(Node::forward_request(req, &ctx))
                    .await?
                    .into_inner(),
            )),
            None => {
                let (ttl, granted) = match self.node.driver.time_to_live(req.id).await {
                    Ok(v) => v,
                    // etcd reports an unknown or expired lease as TTL -1.
                    Err(DriverError::Kv(KvError::LeaseNotFound)) => (-1, 0),
                    Err(e) => return Err(to_status(e)),
                };
                let keys = if req.keys && ttl >= 0 {
                    self.node
                        .shared
                        .store()
                        .leases()
                        .get(&req.id)
                        .map(|l| l.keys.iter().cloned().collect())
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                // Listing the keys reads them.
                for k in &keys {
                    self.node
                        .authorize(|a| a.check_range(&ctx.caller, Access::Read, k, &[]))?;
                }
                Ok(Response::new(LeaseTimeToLiveResponse {
                    header: Some(self.node.current_header()),
                    id: req.id,
                    ttl,
                    granted_ttl: granted,
                    keys,
                }))
            }
        }
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.node.linearize().await?;
        self.node
            .authorize(|a| a.check_authenticated(&ctx.caller))?;
        let leases = self
            .node
            .shared
            .store()
            .leases()
            .keys()
            .map(|id| LeaseStatus { id: *id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.node.current_header()),
            leases,
        }))
    }
}
