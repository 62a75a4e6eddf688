//! What the operator asks of a running Nod cluster, through the client API
//! (etcd's Cluster and Maintenance calls plus Nod's `Admin.MemberHealth`).
//! A trait, so the controller is tested against a fake and the real calls
//! against real `nod` processes.

use std::future::Future;
use std::time::Duration;

use nod_client::Client;

use crate::plan::MemberView;

/// The member table as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// The Raft cluster id the answering leader belongs to.
    pub cluster_id: u64,
    pub members: Vec<MemberView>,
    /// Client URLs of each member, by id (to reach the leader directly).
    pub client_urls: Vec<(u64, Vec<String>)>,
}

pub trait ClusterApi: Send + Sync + 'static {
    /// The leader's member table, through any of `endpoints`.
    fn health(&self, endpoints: Vec<String>)
        -> impl Future<Output = Result<Health, String>> + Send;
    /// Asks the leader to hand leadership to `to`; returns once it has.
    fn move_leader(
        &self,
        endpoints: Vec<String>,
        to: u64,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Removes member `id`; returns once the removal is committed.
    fn remove_member(
        &self,
        endpoints: Vec<String>,
        id: u64,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// The real cluster, over gRPC.
#[derive(Clone, Debug)]
pub struct NodApi {
    pub timeout: Duration,
}

impl Default for NodApi {
    fn default() -> Self {
        NodApi {
            timeout: Duration::from_secs(10),
        }
    }
}

impl NodApi {
    fn client(&self, endpoints: &[String]) -> Result<Client, String> {
        Client::connect(endpoints, self.timeout).map_err(|e| e.to_string())
    }
}

impl ClusterApi for NodApi {
    async fn health(&self, endpoints: Vec<String>) -> Result<Health, String> {
        let mut c = self.client(&endpoints)?;
        let h = c.member_health().await.map_err(|e| e.to_string())?;
        let members = h
            .members
            .iter()
            .map(|m| MemberView {
                id: m.id,
                name: m.name.clone(),
                learner: m.is_learner,
                leader: m.id == h.leader,
                healthy: m.healthy,
                lag: m.lag,
                matched: m.matched,
            })
            .collect();
        let client_urls = h
            .members
            .iter()
            .map(|m| (m.id, m.client_urls.clone()))
            .collect();
        Ok(Health {
            cluster_id: h.header.as_ref().map_or(0, |h| h.cluster_id),
            members,
            client_urls,
        })
    }

    async fn move_leader(&self, endpoints: Vec<String>, to: u64) -> Result<(), String> {
        // MoveLeader must reach the leader itself.
        let h = self.health(endpoints.clone()).await?;
        let leader = h
            .members
            .iter()
            .find(|m| m.leader)
            .ok_or("no leader to move leadership from")?;
        if leader.id == to {
            return Ok(());
        }
        // The leader's own client URLs when it has published them; every
        // endpoint otherwise (a follower answers "not leader" and the next
        // one is tried).
        let mut urls = h
            .client_urls
            .iter()
            .find(|(id, _)| *id == leader.id)
            .map(|(_, u)| u.clone())
            .unwrap_or_default();
        urls.extend(endpoints);
        let mut last = String::from("no endpoint");
        for url in urls {
            let mut c = self.client(std::slice::from_ref(&url))?;
            match c.move_leader(to).await {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(last)
    }

    async fn remove_member(&self, endpoints: Vec<String>, id: u64) -> Result<(), String> {
        let mut c = self.client(&endpoints)?;
        match c.member_remove(id).await {
            Ok(_) => Ok(()),
            // Already gone: a retry after the first attempt's answer was
            // lost (the removed member stops at once and may have been the
            // endpoint that carried the call), or a reconcile repeated
            // after a crash. Either way the goal holds.
            Err(e) if e.to_string().contains("member not found") => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}
