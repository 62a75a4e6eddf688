//! Discovery by gossip: a chitchat instance per node (UDP, scuttlebutt with a
//! phi-accrual failure detector) that tells who exists, where, and how they
//! are doing. Gossip never decides membership: Raft does. What it carries is
//! a hint, parsed defensively (every value comes from the network) and
//! checked again over gRPC before anything acts on it.
//!
//! chitchat's own cluster id is the cluster token (`--initial-cluster-token`),
//! so nodes of another cluster are refused at the protocol level; once a node
//! is a member it also ignores nodes that advertise another Raft cluster id.

pub mod bootstrap;
pub mod sealed;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use sealed::{GossipKeys, SealedTransport};

/// Keys a node publishes about itself.
pub mod keys {
    pub const PEER: &str = "peer";
    pub const CLIENT: &str = "client";
    /// Member id (hex), once a member.
    pub const MEMBER: &str = "member";
    /// Raft cluster id (hex), once a member.
    pub const CLUSTER: &str = "cluster";
    /// leader, follower, candidate, learner; `empty` before it has data, `joining` while it joins.
    pub const ROLE: &str = "role";
    pub const APPLIED: &str = "applied";
    pub const READY: &str = "ready";
    /// `--bootstrap-expect` of an empty node that may found a cluster.
    pub const EXPECT: &str = "expect";
    /// The coordinator an empty node promised (bootstrap).
    pub const PROMISED: &str = "promised";
}

/// Longest value accepted from a peer; longer values make the node unparseable.
const MAX_VALUE: usize = 1024;

#[derive(Clone, Debug)]
pub struct GossipConfig {
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    /// host:port or ip:port; names are resolved again every minute (chitchat),
    /// so a Kubernetes headless Service name works as a seed.
    pub seeds: Vec<String>,
    pub interval: Duration,
    /// `--gossip-key-file`: seal every datagram with the cluster's key
    /// (`sealed`); `None`: plain chitchat.
    pub key_file: Option<std::path::PathBuf>,
}

/// What one node says about itself, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: String,
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub peer_url: String,
    pub client_url: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub role: String,
    pub applied: u64,
    pub ready: bool,
    pub expect: Option<usize>,
    pub promised: Option<String>,
    pub alive: bool,
}

impl PeerInfo {
    pub fn is_member(&self) -> bool {
        self.cluster_id != 0 && self.member_id != 0
    }
}

fn valid_url(u: &str) -> bool {
    (u.starts_with("http://") || u.starts_with("https://"))
        && u.len() <= MAX_VALUE
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Parses one node's key-values; `None` when anything required is missing or malformed.
pub fn parse_peer<'a>(
    name: &str,
    generation: u64,
    gossip_addr: SocketAddr,
    alive: bool,
    kvs: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<PeerInfo> {
    if name.is_empty() || name.len() > 256 {
        return None;
    }
    let mut m: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in kvs {
        if v.len() > MAX_VALUE {
            return None;
        }
        m.insert(k, v);
    }
    let peer_url = m.get(keys::PEER)?.to_string();
    let client_url = m.get(keys::CLIENT)?.to_string();
    if !valid_url(&peer_url) || !valid_url(&client_url) {
        return None;
    }
    let hex = |k: &str| -> Option<u64> {
        match m.get(k) {
            None => Some(0),
            Some(v) => u64::from_str_radix(v, 16).ok(),
        }
    };
    let member_id = hex(keys::MEMBER)?;
    let cluster_id = hex(keys::CLUSTER)?;
    let role = m.get(keys::ROLE).copied().unwrap_or("empty");
    if role.len() > 16 || !role.chars().all(|c| c.is_ascii_lowercase()) {
        return None;
    }
    let applied = match m.get(keys::APPLIED) {
        None => 0,
        Some(v) => v.parse().ok()?,
    };
    let expect = match m.get(keys::EXPECT) {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=bootstrap::MAX_FOUNDERS).contains(&n) => Some(n),
            _ => return None,
        },
    };
    let promised = match m.get(keys::PROMISED) {
        None => None,
        Some(v) if !v.is_empty() && v.len() <= 256 => Some(v.to_string()),
        Some(_) => return None,
    };
    Some(PeerInfo {
        name: name.to_string(),
        generation,
        gossip_addr,
        peer_url,
        client_url,
        member_id,
        cluster_id,
        role: role.to_string(),
        applied,
        ready: m.get(keys::READY) == Some(&"1"),
        expect,
        promised,
        alive,
    })
}

/// The addresses `seeds` (ip:port, or host:port resolved now) stand for.
/// A name that does not resolve (yet: a headless Service before its first
/// pod is published) contributes nothing; each lookup is bounded by 1 s.
pub async fn resolve_seeds(seeds: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        if let Ok(addr) = seed.parse::<SocketAddr>() {
            out.push(addr);
            continue;
        }
        let lookup = tokio::net::lookup_host(seed.as_str());
        if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(1), lookup).await {
            out.extend(addrs);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// chitchat could not listen on `addr` (its own error, as text: it
    /// reports with `anyhow`, which this crate does not use).
    #[error("cannot start gossip on {addr}: {cause}")]
    Start { addr: SocketAddr, cause: String },
    #[error(transparent)]
    Key(#[from] sealed::GossipKeyError),
}

/// A running gossip instance.
pub struct Gossip {
    handle: ChitchatHandle,
}

impl Gossip {
    pub async fn start(
        cfg: &GossipConfig,
        name: &str,
        token: &str,
        initial: Vec<(String, String)>,
        dropped: prometheus::IntCounterVec,
    ) -> Result<Gossip, GossipError> {
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let failure_detector_config = FailureDetectorConfig {
            // Enough samples to adapt, but a dead node is declared dead in a
            // few seconds at sub-second gossip intervals.
            phi_threshold: 8.0,
            sampling_window_size: 100,
            max_interval: Duration::from_secs(10),
            initial_interval: cfg.interval * 2,
            dead_node_grace_period: Duration::from_secs(3600),
        };
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(name, generation, cfg.advertise),
            cluster_id: token.to_string(),
            gossip_interval: cfg.interval,
            listen_addr: cfg.listen,
            seed_nodes: cfg.seeds.clone(),
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let sealed = match &cfg.key_file {
            Some(path) => Some(SealedTransport {
                keys: Arc::new(GossipKeys::load(path)?),
                dropped,
            }),
            None => None,
        };
        let transport: &dyn chitchat::transport::Transport = match &sealed {
            Some(t) => t,
            None => &UdpTransport,
        };
        let handle = spawn_chitchat(config, initial, transport)
            .await
            .map_err(|e| GossipError::Start {
                addr: cfg.listen,
                cause: e.to_string(),
            })?;
        Ok(Gossip { handle })
    }

    pub async fn set(&self, kvs: &[(&str, String)]) {
        let chitchat = self.handle.chitchat();
        let mut c = chitchat.lock().await;
        let state = c.self_node_state();
        for (k, v) in kvs {
            if state.get(k) != Some(v.as_str()) {
                state.set(*k, v);
            }
        }
    }

    pub async fn delete(&self, key: &str) {
        let chitchat = self.handle.chitchat();
        let mut c = chitchat.lock().await;
        let state = c.self_node_state();
        if state.contains_key(key) {
            state.delete(key);
        }
    }

    /// Every other node this one knows of, the newest generation per name,
    /// alive or not. Nodes whose values do not parse are left out.
    pub async fn peers(&self) -> Vec<PeerInfo> {
        let chitchat = self.handle.chitchat();
        let c = chitchat.lock().await;
        let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
        let me = c.self_chitchat_id().clone();
        let mut newest: BTreeMap<String, PeerInfo> = BTreeMap::new();
        for (id, state) in c.node_states() {
            if *id == me || *id.node_id == *me.node_id {
                continue;
            }
            let Some(info) = parse_peer(
                &id.node_id,
                id.generation_id,
                id.gossip_advertise_addr,
                live.contains(id),
                state.key_values(),
            ) else {
                continue;
            };
            match newest.get(&info.name) {
                Some(cur) if cur.generation >= info.generation => {}
                _ => {
                    newest.insert(info.name.clone(), info);
                }
            }
        }
        newest.into_values().collect()
    }

    /// Starts one gossip round with `addr` now, besides the periodic ones.
    pub fn gossip_with(&self, addr: SocketAddr) {
        let _ = self.handle.gossip(addr);
    }

    /// Stops gossiping (other nodes' failure detectors then see this node go).
    pub fn stop(&self) {
        let _ = self.handle.initiate_shutdown();
    }
}

impl Drop for Gossip {
    /// chitchat's task outlives its handle: a node dropped while it was
    /// still finding its cluster must stop gossiping too.
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a str)> {
        pairs.iter().copied()
    }

    const ADDR: &str = "127.0.0.1:7000";

    #[test]
    fn a_well_formed_node_parses() {
        let p = parse_peer(
            "n1",
            3,
            ADDR.parse().unwrap(),
            true,
            kv(&[
                (keys::PEER, "http://10.0.0.1:2380"),
                (keys::CLIENT, "http://10.0.0.1:2379"),
                (keys::MEMBER, "ab"),
                (keys::CLUSTER, "cd"),
                (keys::ROLE, "leader"),
                (keys::APPLIED, "42"),
                (keys::READY, "1"),
            ]),
        )
        .unwrap();
        assert_eq!((p.member_id, p.cluster_id, p.applied), (0xab, 0xcd, 42));
        assert!(p.ready && p.is_member() && p.expect.is_none());
    }

    #[test]
    fn malformed_values_from_the_network_are_rejected() {
        let base = [
            (keys::PEER, "http://10.0.0.1:2380"),
            (keys::CLIENT, "http://10.0.0.1:2379"),
        ];
        let bad: &[(&str, &str)] = &[
            (keys::MEMBER, "zz"),
            (keys::CLUSTER, "-1"),
            (keys::APPLIED, "many"),
            (keys::EXPECT, "0"),
            (keys::EXPECT, "1000"),
            (keys::ROLE, "Leader; drop"),
            (keys::PROMISED, ""),
        ];
        for b in bad {
            let mut pairs = base.to_vec();
            pairs.push(*b);
            assert_eq!(
                parse_peer("n", 1, ADDR.parse().unwrap(), true, kv(&pairs)),
                None,
                "{b:?} must be rejected"
            );
        }
        let long = "x".repeat(MAX_VALUE + 1);
        let pairs = [
            (keys::PEER, "http://10.0.0.1:2380"),
            (keys::CLIENT, long.as_str()),
        ];
        assert_eq!(
            parse_peer("n", 1, ADDR.parse().unwrap(), true, kv(&pairs)),
            None
        );
        let no_peer = [(keys::CLIENT, "http://10.0.0.1:2379")];
        assert_eq!(
            parse_peer("n", 1, ADDR.parse().unwrap(), true, kv(&no_peer)),
            None
        );
        let not_url = [(keys::PEER, "10.0.0.1:2380"), (keys::CLIENT, "http://a:1")];
        assert_eq!(
            parse_peer("n", 1, ADDR.parse().unwrap(), true, kv(&not_url)),
            None
        );
    }
}
