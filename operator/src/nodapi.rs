//! What the operator asks of a running Nod cluster, through the client API
//! (etcd's Cluster and Maintenance calls plus Nod's `Admin.MemberHealth`).
//! A trait, so the controller is tested against a fake and the real calls
//! against real `nod` processes.

use std::future::Future;
use std::time::Duration;

use nod::client::Client;

use crate::plan::MemberView;

/// The member table as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
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
        let urls = h
            .client_urls
            .iter()
            .find(|(id, _)| *id == leader.id)
            .map(|(_, u)| u.clone())
            .filter(|u| !u.is_empty())
            .ok_or("the leader publishes no client URL")?;
        let mut c = self.client(&urls)?;
        c.move_leader(to).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn remove_member(&self, endpoints: Vec<String>, id: u64) -> Result<(), String> {
        let mut c = self.client(&endpoints)?;
        c.member_remove(id).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
