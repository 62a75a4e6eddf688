//! Nod's own client-port service for operators, where etcd has no call:
//! the member table with role, health and lag (the leader's view; a
//! follower forwards the call to the leader).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::server::autopilot::Autopilot;
use crate::server::node::Node;
use nod_proto::nodserverpb::admin_client::AdminClient;
use nod_proto::nodserverpb::admin_server::Admin;
use nod_proto::nodserverpb::{MemberHealthRequest, MemberHealthResponse};

pub struct AdminService {
    pub node: Arc<Node>,
    pub autopilot: Arc<Autopilot>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn member_health(
        &self,
        request: Request<MemberHealthRequest>,
    ) -> Result<Response<MemberHealthResponse>, Status> {
        let ctx = self.node.ctx(&request).await?;
        let req = request.into_inner();
        if !ctx.forwarded {
            if let Some(ch) = self.node.leader_route().await? {
                return AdminClient::new(ch)
                    .member_health(Node::forward_request(req, &ctx))
                    .await;
            }
        }
        let status = self.node.shared.status();
        if status.leader != self.node.shared.member_id {
            return Err(Status::unavailable("etcdserver: not leader"));
        }
        let members = self.autopilot.health().await.ok_or_else(|| {
            Status::unavailable("etcdserver: leader changed (member health is being sampled)")
        })?;
        Ok(Response::new(MemberHealthResponse {
            header: Some(self.node.current_header()),
            leader: status.leader,
            target_voters: self.autopilot.cfg.voters as u32,
            members,
        }))
    }
}
