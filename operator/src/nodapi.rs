//! What the operator asks of a running Nod cluster, through the client API
//! (etcd's Cluster, Maintenance and Auth calls plus Nod's
//! `Admin.MemberHealth`), over TLS with the operator's client certificate
//! when the cluster has TLS. A trait, so the controller is tested against a
//! fake and the real calls against real `nod` processes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use nod_client::auth::Credentials;
use nod_client::tls::{ClientTls, TlsOptions};
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

/// One member's own view, from Maintenance.Status at it alone (answered
/// without a leader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberIndex {
    pub cluster_id: u64,
    pub member_id: u64,
    pub raft_index: u64,
}

/// How the operator reaches one cluster.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub endpoints: Vec<String>,
    /// The cluster's CA and the operator's client certificate (files).
    pub tls: Option<TlsOptions>,
    /// `root`'s password, for a cluster with auth and without TLS.
    pub credentials: Option<Credentials>,
}

impl Target {
    pub fn plain(endpoints: Vec<String>) -> Target {
        Target {
            endpoints,
            ..Target::default()
        }
    }
}

pub trait ClusterApi: Send + Sync + 'static {
    /// The leader's member table, through any of the endpoints.
    fn health(&self, target: &Target) -> impl Future<Output = Result<Health, String>> + Send;
    /// Asks the leader to hand leadership to `to`; returns once it has.
    fn move_leader(
        &self,
        target: &Target,
        to: u64,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Removes member `id`; returns once the removal is committed.
    fn remove_member(
        &self,
        target: &Target,
        id: u64,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether authentication is on.
    fn auth_enabled(&self, target: &Target) -> impl Future<Output = Result<bool, String>> + Send;
    /// Creates `root` (with `password`) if missing, grants it the `root`
    /// role and turns authentication on.
    fn enable_auth(
        &self,
        target: &Target,
        password: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Turns authentication off.
    fn disable_auth(&self, target: &Target) -> impl Future<Output = Result<(), String>> + Send;
    /// The member at `endpoint` alone: its cluster and Raft index.
    fn member_status(
        &self,
        target: &Target,
        endpoint: &str,
    ) -> impl Future<Output = Result<MemberIndex, String>> + Send;
    /// The backup agent's status (`GET {url}/status`).
    fn backup_status(
        &self,
        url: &str,
    ) -> impl Future<Output = Result<nod_client::backup_agent::AgentStatus, String>> + Send;
    /// Asks the backup agent for a full backup now; its request number.
    fn request_backup(&self, url: &str) -> impl Future<Output = Result<u64, String>> + Send;
    /// The certificate (DER) the server at `url` presents.
    fn served_certificate(
        &self,
        target: &Target,
        url: &str,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
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
    fn client(&self, target: &Target, endpoints: &[String]) -> Result<Client, String> {
        // As `Client::connect`: each attempt and each call within `timeout`.
        let mut b = Client::builder(endpoints.iter().cloned()).call_options(
            nod_client::CallOptions::default()
                .attempt_timeout(self.timeout)
                .deadline(Some(self.timeout)),
        );
        if let Some(tls) = &target.tls {
            b = b.tls(tls.clone());
        }
        if let Some(c) = &target.credentials {
            b = b.credentials(c.clone());
        }
        b.build().map_err(|e| e.to_string())
    }
}

impl ClusterApi for NodApi {
    async fn member_status(&self, target: &Target, endpoint: &str) -> Result<MemberIndex, String> {
        let mut c = self.client(target, &[endpoint.to_string()])?;
        let s = c.status().await.map_err(|e| e.to_string())?;
        let h = s.header.unwrap_or_default();
        Ok(MemberIndex {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            raft_index: s.raft_index,
        })
    }

    async fn backup_status(
        &self,
        url: &str,
    ) -> Result<nod_client::backup_agent::AgentStatus, String> {
        nod_client::backup_agent::status(url, self.timeout).await
    }

    async fn request_backup(&self, url: &str) -> Result<u64, String> {
        nod_client::backup_agent::request_backup(url, self.timeout)
            .await
            .map(|r| r.request)
    }

    async fn health(&self, target: &Target) -> Result<Health, String> {
        let mut c = self.client(target, &target.endpoints)?;
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

    async fn move_leader(&self, target: &Target, to: u64) -> Result<(), String> {
        // MoveLeader must reach the leader itself.
        let h = self.health(target).await?;
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
        urls.extend(target.endpoints.iter().cloned());
        let mut last = String::from("no endpoint");
        for url in urls {
            let mut c = self.client(target, std::slice::from_ref(&url))?;
            match c.move_leader(to).await {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(last)
    }

    async fn remove_member(&self, target: &Target, id: u64) -> Result<(), String> {
        let mut c = self.client(target, &target.endpoints)?;
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

    async fn auth_enabled(&self, target: &Target) -> Result<bool, String> {
        let mut c = self.client(target, &target.endpoints)?;
        let r = c.auth_status().await.map_err(|e| e.to_string())?;
        Ok(r.enabled)
    }

    async fn enable_auth(&self, target: &Target, password: &str) -> Result<(), String> {
        let mut c = self.client(target, &target.endpoints)?;
        match c.user_add(ROOT, password).await {
            Ok(_) => {}
            // Made by an earlier attempt whose answer was lost, or by
            // hand: its password is whatever it is now.
            Err(e) if e.to_string().contains("user name already exists") => {}
            Err(e) => return Err(format!("adding user root: {e}")),
        }
        c.user_grant_role(ROOT, ROOT)
            .await
            .map_err(|e| format!("granting role root to root: {e}"))?;
        c.auth_enable()
            .await
            .map_err(|e| format!("enabling authentication: {e}"))?;
        Ok(())
    }

    async fn disable_auth(&self, target: &Target) -> Result<(), String> {
        let mut c = self.client(target, &target.endpoints)?;
        c.auth_disable().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn served_certificate(&self, target: &Target, url: &str) -> Result<Vec<u8>, String> {
        let tls = target.tls.as_ref().ok_or("the cluster has no TLS")?;
        let config = ClientTls::new(tls).map_err(|e| e.to_string())?.config();
        let hostport = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("{url}: not an https URL"))?
            .trim_end_matches('/');
        let (host, _) = hostport
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: no port"))?;
        let name = rustls::pki_types::ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|e| format!("{url}: {e}"))?;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(hostport)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(&config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("{url}: TLS: {e}"))?;
            let (_, session) = stream.get_ref();
            session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.as_ref().to_vec())
                .ok_or_else(|| format!("{url}: no certificate presented"))
        };
        tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| format!("{url}: TLS handshake timed out"))?
    }
}

/// etcd's superuser and its role.
const ROOT: &str = "root";
