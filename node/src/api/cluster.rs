//! The etcd Cluster service: membership through Raft configuration changes,
//! learner first (thesis §4.2.1). Changes go to the leader (forwarded from a
//! follower); the member table is the applied state, read like any other.
//! Responses carry a header without a revision, as etcd's (membership is
//! not part of the key-value history).

use std::sync::Arc;
use std::time::Duration;

use nod_raft::{ConfChange, ConfChangeKind, NodeId, Role};
use tonic::{Request, Response, Status};

use super::etcd::etcdserverpb::cluster_client::ClusterClient;
use super::etcd::etcdserverpb::cluster_server::Cluster;
use super::etcd::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use super::status::{
    to_status, LEARNER_NOT_READY, MEMBER_NOT_FOUND, MEMBER_NOT_LEARNER, PEER_URL_EXISTS,
};
use crate::command::{self, MemberAttributes, Op};
use crate::server::driver::{Applied, Outcome};
use crate::server::node::{Node, Route};

/// A learner may be promoted once it holds at least this share of the
/// leader's log (etcd uses 90%).
const PROMOTE_READY_RATIO: f64 = 0.9;

/// How long a member list waits to catch up with the leader before it
/// answers from what this member has applied.
const MEMBER_LIST_CATCH_UP: std::time::Duration = std::time::Duration::from_millis(500);

pub struct ClusterService {
    pub node: Arc<Node>,
}

fn check_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: member needs at least one peer URL",
        ));
    }
    for u in urls {
        let ok = (u.starts_with("http://") || u.starts_with("https://")) && u.len() <= 1024;
        if !ok || tonic::transport::Endpoint::from_shared(u.clone()).is_err() {
            return Err(Status::invalid_argument(format!(
                "etcdserver: invalid peer URL {u:?}"
            )));
        }
    }
    if urls.len() > command::MAX_URLS {
        return Err(Status::invalid_argument("etcdserver: too many peer URLs"));
    }
    Ok(())
}

impl ClusterService {
    fn members(&self) -> Vec<Member> {
        self.node.shared.store().members()
    }

    fn member(&self, id: u64) -> Result<Member, Status> {
        self.node
            .shared
            .store()
            .member(id)
            .cloned()
            .ok_or_else(|| Status::not_found(MEMBER_NOT_FOUND))
    }

    /// Proposes a configuration change on the leader and waits for it to apply.
    async fn change(&self, change: ConfChange) -> Result<Option<Applied>, Status> {
        let r = self
            .node
            .route(true, || self.node.driver.conf_change(change.clone()))
            .await;
        match r {
            Route::Done(r) => r.map(Some),
            Route::Forward(_) => Ok(None),
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.node.authorize(|a| a.check_admin(&ctx.caller))?;
        let req = request.into_inner();
        check_urls(&req.peer_ur_ls)?;
        if !ctx.forwarded {
            let r = self
                .node
                .call_leader(|ch| {
                    let (req, ctx) = (req.clone(), ctx.clone());
                    async move {
                        ClusterClient::new(ch)
                            .member_add(Node::forward_request(req, &ctx))
                            .await
                            .map(|r| r.into_inner())
                    }
                })
                .await?;
            if let Some(r) = r {
                return Ok(Response::new(r));
            }
        }
        let members = self.members();
        if members
            .iter()
            .any(|m| m.peer_ur_ls.iter().any(|u| req.peer_ur_ls.contains(u)))
        {
            return Err(Status::failed_precondition(PEER_URL_EXISTS));
        }
        let mut id = crate::identity::random_id();
        while members.iter().any(|m| m.id == id) {
            id = crate::identity::random_id();
        }
        let attrs = MemberAttributes {
            id,
            name: String::new(),
            peer_urls: req.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            features: Vec::new(),
        };
        let kind = if req.is_learner {
            ConfChangeKind::AddLearner
        } else {
            ConfChangeKind::AddVoter
        };
        let applied = self
            .change(ConfChange {
                kind,
                node: NodeId(id),
                context: command::encode_member(&attrs),
            })
            .await?
            .ok_or_else(|| Status::unavailable("etcdserver: leader changed"))?;
        let members = match applied.outcome {
            Outcome::Members(m) => m,
            _ => self.members(),
        };
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(MemberAddResponse {
            header: Some(self.node.header(0)),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.node.authorize(|a| a.check_admin(&ctx.caller))?;
        let req = request.into_inner();
        if !ctx.forwarded {
            let ctx_ref = &ctx;
            let r = self
                .node
                .call_leader(|ch| async move {
                    ClusterClient::new(ch)
                        .member_remove(Node::forward_request(req, ctx_ref))
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            if let Some(r) = r {
                return Ok(Response::new(r));
            }
        }
        self.member(req.id)?;
        if req.id == self.node.shared.member_id {
            // The leader hands leadership away before it removes itself, so
            // the cluster is not leaderless for an election timeout.
            if let Ok(st) = self.node.driver.raft_status().await {
                if st.role == Role::Leader {
                    if let Some(best) = st
                        .peers
                        .iter()
                        .filter(|p| !p.is_learner && p.id != st.id)
                        .max_by_key(|p| p.matched)
                    {
                        let _ = self.node.driver.transfer_leader(best.id).await;
                        wait_for_leader_change(&self.node, st.id.0).await;
                        if let Some(ch) = self.node.leader_route().await? {
                            return Ok(Response::new(
                                ClusterClient::new(ch)
                                    .member_remove(Node::forward_request(req, &ctx))
                                    .await?
                                    .into_inner(),
                            ));
                        }
                    }
                }
            }
        }
        let applied = self
            .change(ConfChange {
                kind: ConfChangeKind::Remove,
                node: NodeId(req.id),
                context: Vec::new(),
            })
            .await?
            .ok_or_else(|| Status::unavailable("etcdserver: leader changed"))?;
        let members = match applied.outcome {
            Outcome::Members(m) => m,
            _ => self.members(),
        };
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.node.header(0)),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.node.authorize(|a| a.check_admin(&ctx.caller))?;
        let req = request.into_inner();
        check_urls(&req.peer_ur_ls)?;
        let cur = self.member(req.id)?;
        let attrs = MemberAttributes {
            id: req.id,
            name: cur.name,
            peer_urls: req.peer_ur_ls.clone(),
            client_urls: cur.client_ur_ls,
            features: Vec::new(),
        };
        match self.node.propose(Op::MemberPeerUrls(attrs), &ctx).await {
            Route::Forward(ch) => Ok(Response::new(
                ClusterClient::new(ch)
                    .member_update(Node::forward_request(req, &ctx))
                    .await?
                    .into_inner(),
            )),
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(_)) => Ok(Response::new(MemberUpdateResponse {
                header: Some(self.node.header(0)),
                members: self.members(),
            })),
        }
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.get_ref().linearizable {
            self.node.linearize().await?;
        } else {
            // etcd 3.4 clients cannot ask for it, but they read the list
            // to find every member's client URLs (`--cluster`): catch up
            // with the leader's commit first when it answers soon, so a
            // member that already serves clients is listed with them.
            let _ = tokio::time::timeout(MEMBER_LIST_CATCH_UP, self.node.linearize()).await;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.node.header(0)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        self.node.authorize(|a| a.check_admin(&ctx.caller))?;
        let req = request.into_inner();
        if !ctx.forwarded {
            let ctx_ref = &ctx;
            let r = self
                .node
                .call_leader(|ch| async move {
                    ClusterClient::new(ch)
                        .member_promote(Node::forward_request(req, ctx_ref))
                        .await
                        .map(|r| r.into_inner())
                })
                .await?;
            if let Some(r) = r {
                return Ok(Response::new(r));
            }
        }
        let m = self.member(req.id)?;
        if !m.is_learner {
            return Err(Status::failed_precondition(MEMBER_NOT_LEARNER));
        }
        let st = self.node.driver.raft_status().await.map_err(to_status)?;
        let ready = st.peers.iter().any(|p| {
            p.id.0 == req.id && (p.matched.0 as f64) >= (st.commit.0 as f64) * PROMOTE_READY_RATIO
        });
        if !ready {
            return Err(Status::failed_precondition(LEARNER_NOT_READY));
        }
        self.change(ConfChange {
            kind: ConfChangeKind::PromoteLearner,
            node: NodeId(req.id),
            context: Vec::new(),
        })
        .await?
        .ok_or_else(|| Status::unavailable("etcdserver: leader changed"))?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.node.header(0)),
            members: self.members(),
        }))
    }
}

/// Waits (up to 3 s) until someone other than `old` leads.
pub async fn wait_for_leader_change(node: &Node, old: u64) {
    for _ in 0..60 {
        let l = node.shared.status().leader;
        if l != 0 && l != old {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
