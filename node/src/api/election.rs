//! etcd's Election service (`v3electionpb.Election`), built, as etcd
//! builds it (`v3election/election.go` over `concurrency/election.go`),
//! from the caller's own KV, Lease and Watch calls (`in_process`). Each
//! candidate puts `name/<lease hex>` under its lease; the oldest key is
//! the leader and its value the proclaimed value. Campaign waits for every
//! older candidate's key to go; Proclaim and Resign act only while the key
//! is still the one created at the leader key's revision.
//!
//! Departures from etcd (see ARCHITECTURE.md, "The server"):
//! - Campaign deletes its key (as the caller) when it fails or is canceled
//!   while waiting; etcd does so only on cancellation, without a token;
//! - Observe ends with the inner read's error status where etcd ends the
//!   stream with OK, and starts over (possibly repeating the current
//!   leader) where etcd's watch would fail.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::in_process::{
    create_revision_is, delete_op, get_op, key_prefix, malformed, put_op, range_response,
    session_key, Abandon, InProcessClient,
};
use super::status::{recipe_status, RecipeError};
use crate::server::node::Node;
use nod_proto::etcd::etcdserverpb::{ResponseHeader, TxnRequest};
use nod_proto::etcd::mvccpb::event::EventType;
use nod_proto::etcd::mvccpb::KeyValue;
use nod_proto::etcd::v3electionpb::election_server::Election;
use nod_proto::etcd::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};

pub struct ElectionService {
    pub node: Arc<Node>,
}

/// etcd's `Election.Proclaim`: puts `value` on the leader's key under
/// `lease` if the key is still the one created at `rev`.
async fn proclaim(
    client: &InProcessClient,
    key: &[u8],
    rev: i64,
    lease: i64,
    value: &[u8],
) -> Result<ResponseHeader, Status> {
    let t = client
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![put_op(key, value, lease)],
            failure: vec![],
        })
        .await?;
    if !t.succeeded {
        return Err(recipe_status(RecipeError::NotLeader));
    }
    Ok(t.header.unwrap_or_default())
}

/// etcd's `Election.Resign`: deletes the leader's key if it is still the
/// one created at `rev`; a stale key is fine.
async fn resign(client: &InProcessClient, key: &[u8], rev: i64) -> Result<ResponseHeader, Status> {
    let t = client
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![delete_op(key.to_vec())],
            failure: vec![],
        })
        .await?;
    Ok(t.header.unwrap_or_default())
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let client = InProcessClient::for_request(&self.node, &request);
        let req = request.into_inner();
        let lease = client.session_lease(req.lease).await?;
        let prefix = key_prefix(&req.name);
        let key = session_key(&prefix, lease);
        let t = client
            .txn(TxnRequest {
                compare: vec![create_revision_is(&key, 0)],
                success: vec![put_op(&key, &req.value, lease)],
                failure: vec![get_op(&key)],
            })
            .await?;
        // The answer's header is the campaign txn's, even after waiting (etcd's).
        let header = t.header.unwrap_or_default();
        let mut leader_rev = header.revision;
        if !t.succeeded {
            // This lease already campaigns: keep its key, update its value.
            let kv = range_response(&t, 0)
                .and_then(|r| r.kvs.first())
                .ok_or_else(malformed)?;
            leader_rev = kv.create_revision;
            if kv.value != req.value {
                if let Err(e) = proclaim(&client, &key, leader_rev, lease, &req.value).await {
                    let _ = resign(&client, &key, leader_rev).await;
                    return Err(e);
                }
            }
        }
        // Dropped armed (canceled, or an error below), it deletes the key.
        let abandon = Abandon::arm(&client, &key, leader_rev);
        client.wait_deletes(&prefix, leader_rev - 1).await?;
        abandon.disarm();
        // As in etcd 3.4 and 3.5, success even if this candidate's lease
        // ended while it waited: its next Proclaim says "not leader".
        Ok(Response::new(CampaignResponse {
            header: Some(header),
            leader: Some(LeaderKey {
                name: req.name,
                key,
                rev: leader_rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let client = InProcessClient::for_request(&self.node, &request);
        let req = request.into_inner();
        let leader = req
            .leader
            .ok_or_else(|| recipe_status(RecipeError::MissingLeaderKey))?;
        // etcd's session: lease 0 gets a new lease, and the put moves the key to it.
        let lease = client.session_lease(leader.lease).await?;
        let header = proclaim(&client, &leader.key, leader.rev, lease, &req.value).await?;
        Ok(Response::new(ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let client = InProcessClient::for_request(&self.node, &request);
        let name = request.into_inner().name;
        let resp = client.first_created(&key_prefix(&name)).await?;
        let kv = resp
            .kvs
            .into_iter()
            .next()
            .ok_or_else(|| recipe_status(RecipeError::NoLeader))?;
        Ok(Response::new(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        }))
    }

    type ObserveStream = ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let client = InProcessClient::for_request(&self.node, &request);
        let prefix = key_prefix(&request.into_inner().name);
        let (out, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            tokio::select! {
                _ = observe(&client, &prefix, &out) => {}
                _ = out.closed() => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let client = InProcessClient::for_request(&self.node, &request);
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| recipe_status(RecipeError::MissingLeaderKey))?;
        // etcd's session: lease 0 grants a lease nobody uses.
        client.session_lease(leader.lease).await?;
        let header = resign(&client, &leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse {
            header: Some(header),
        }))
    }
}

/// etcd's `Election.Observe` loop: the current leader (or, while there is
/// none, the first one to appear), then each value it proclaims, until its
/// key is deleted; then the next leader. Ends when the client goes away or
/// a read fails (its error sent as the stream's last message).
async fn observe(
    client: &InProcessClient,
    prefix: &[u8],
    out: &mpsc::Sender<Result<LeaderResponse, Status>>,
) {
    let send = |header: ResponseHeader, kv: KeyValue| async move {
        out.send(Ok(LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        }))
        .await
        .is_ok()
    };
    loop {
        let resp = match client.first_created(prefix).await {
            Ok(r) => r,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let header = resp.header.unwrap_or_default();
        let leader = match resp.kvs.into_iter().next() {
            Some(kv) => Some((header, kv)),
            None => match first_put(client, prefix, header.revision).await {
                Ok(found) => found,
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
            },
        };
        // None: the watch ended early (compaction, snapshot): read again.
        let Some((header, kv)) = leader else {
            continue;
        };
        let key = kv.key.clone();
        let next = header.revision + 1;
        if !send(header, kv).await {
            return;
        }
        let mut watch = match client.watch(&key, b"", next).await {
            Ok(w) => w,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        'leader: while let Some((revision, events)) = watch.next().await {
            for e in events {
                if e.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                let Some(kv) = e.kv else { continue };
                if !send(client.node().header(revision), kv).await {
                    return;
                }
            }
        }
    }
}

/// While no leader exists: the first key put under `prefix` from
/// `revision` on, with the header's revision set to its own (etcd's), or
/// `None` if the watch ended early.
async fn first_put(
    client: &InProcessClient,
    prefix: &[u8],
    revision: i64,
) -> Result<Option<(ResponseHeader, KeyValue)>, Status> {
    let mut watch = client
        .watch(prefix, &nod_client::prefix_end(prefix), revision)
        .await?;
    while let Some((_, events)) = watch.next().await {
        let put = events
            .into_iter()
            .find(|e| e.r#type == EventType::Put as i32)
            .and_then(|e| e.kv);
        if let Some(kv) = put {
            let header = client.node().header(kv.mod_revision);
            return Ok(Some((header, kv)));
        }
    }
    Ok(None)
}
