//! A running Nod node: opens the data directory, decides who it is (founding
//! member, restarted member or joiner), starts the driver, the peer and
//! client gRPC servers and the metrics endpoint, and stops them in order.
//!
//! Read `driver` first; `node` is what the API services share.

// `command`, `identity`, `metrics` and `watch_hub` moved to the crate root,
// below the transport and the driver that use them too; the old paths stay
// for code written against them.
pub use crate::{command, identity, metrics, watch_hub};

pub mod autopilot;
pub mod corruption;
pub mod driver;
pub mod grpc_metrics;
pub mod http;
pub mod node;
pub mod restore;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use nod_raft::{ConfState, Config, NodeId, RawNode, Role, Storage};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::admin::AdminService;
use crate::api::auth::AuthService;
use crate::api::cluster::ClusterService;
use crate::api::election::ElectionService;
use crate::api::gateway;
use crate::api::kv::KvService;
use crate::api::lease::LeaseService;
use crate::api::lock::LockService;
use crate::api::maintenance::MaintenanceService;
use crate::api::query::{IndexService, QueryService};
use crate::api::watch::WatchService;
use crate::command::{MemberAttributes, Op};
use crate::driver::Fatal;
use crate::gossip::bootstrap::{self, BootstrapState, Decision, DiscoverConfig, Founders};
use crate::gossip::{keys, Gossip, GossipConfig, GossipError, PeerInfo};
use crate::identity::{Identity, StateFileError};
use crate::storage::{checkpoint, KvStore, LogStore};
use crate::telemetry;
use crate::tls::{self, Dialer, ServerTls, ServerTlsOptions};
use crate::transport::peer::{PeerNode, PeerService, Transport, MAX_PEER_FRAME};
use autopilot::{Autopilot, AutopilotConfig};
use driver::{Driver, DriverConfig, DriverHandle, NodeStatus, Shared};
use metrics::Metrics;
use nod_client::tls::{TlsError, TlsOptions};
use nod_proto::etcd::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer, Member,
};
// etcd's KV service with Range answering a `RangeAnswer` (nod_proto::range).
use nod_proto::etcd::v3electionpb::election_server::ElectionServer;
use nod_proto::etcd::v3lockpb::lock_server::LockServer;
use nod_proto::kv::k_v_server::KVServer as KvServer;
use nod_proto::nodquerypb::index_server::IndexServer;
use nod_proto::nodquerypb::query_server::QueryServer;
use nod_proto::nodserverpb::admin_server::AdminServer;
use nod_proto::nodserverpb::bootstrap_server::BootstrapServer;
use nod_proto::nodserverpb::peer_client::PeerClient;
use nod_proto::nodserverpb::peer_server::PeerServer;
use nod_proto::nodserverpb::{MembersRequest, SnapshotData};
use node::{AuthSettings, Node};
use watch_hub::WatchHub;

/// gRPC's allowance over `max_request_bytes`, so a request a little too
/// large gets etcd's "request is too large" instead of a transport error (etcd does the same).
pub(crate) const GRPC_OVERHEAD: usize = 512 * 1024;

/// Streams one connection may have open at once on any port a member
/// serves. etcd (grpc-go) sets no limit by default; clients open few
/// (etcd's clientv3 shares one stream among the watches of a context),
/// and a bound keeps one connection from holding unbounded handlers.
pub const MAX_CONCURRENT_STREAMS: u32 = 10_000;

/// Streams a member may reset on one connection because the other side
/// broke the protocol, before it closes the connection (GOAWAY,
/// ENHANCE_YOUR_CALM). h2's own default; tonic turns the guard off unless
/// told (`None`), which leaves a server open to "MadeYouReset"
/// (CVE-2025-8671): every reset frees a stream slot while its handler
/// goes on working.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The HTTP/2 server of every port a member serves (client, peer, and
/// the bootstrap agreement), with the two bounds above.
fn http2_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Found a new cluster with the members of `initial_cluster`.
    New,
    /// Join a running cluster this node was added to (`member add`).
    Existing,
    /// Find the cluster by gossip: join it, or found it with the other
    /// empty nodes when `bootstrap_expect` allows (see `gossip::bootstrap`).
    Discover,
}

/// Gossip discovery and guarded bootstrap.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub gossip: GossipConfig,
    /// Found a cluster once this many empty nodes (with the same setting) are visible.
    pub bootstrap_expect: Option<usize>,
    /// Who may be in the founding set (`--bootstrap-founders`).
    pub bootstrap_founders: Founders,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: SocketAddr,
    pub advertise_client: String,
    pub listen_peer: SocketAddr,
    pub advertise_peer: String,
    /// `None`: no metrics endpoint.
    pub listen_metrics: Option<SocketAddr>,
    /// Serve the web console on the metrics port (`/ui`; `--console`).
    pub console: bool,
    /// (name, peer URL) of every founding member, or of members to ask when joining.
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub heartbeat: Duration,
    pub election_ticks: u64,
    pub max_request_bytes: usize,
    /// `--quota-backend-bytes`, resolved (`None`: no quota).
    pub quota_backend_bytes: Option<u64>,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// Compare this member's hash with the others' before serving, and
    /// refuse to start on a mismatch (`--initial-corrupt-check`).
    pub initial_corrupt_check: bool,
    /// How often the leader compares the members' hashes, raising the
    /// CORRUPT alarm on a mismatch (`--corrupt-check-time`; zero: never).
    pub corrupt_check_time: Duration,
    /// Start as the only member of this member's cluster, removing all the
    /// others (`--force-new-cluster`, after a quorum is lost for good).
    pub force_new_cluster: bool,
    /// With `force_new_cluster`: force only if no earlier force recorded
    /// this id (`--force-new-cluster-once`); a restart with it starts
    /// normally.
    pub force_once_id: Option<String>,
    pub request_timeout: Duration,
    pub snapshot_count: u64,
    pub progress_notify_interval: Duration,
    /// Gossip; `None` runs without it (static membership).
    pub discovery: Option<Discovery>,
    pub autopilot: AutopilotConfig,
    /// On a clean stop, remove this member from the cluster first.
    pub leave_on_shutdown: bool,
    /// TLS on the client port (`https://` client URLs); `None`: plain TCP.
    pub client_tls: Option<ServerTlsOptions>,
    /// TLS on the peer port; the same files dial the other members.
    pub peer_tls: Option<ServerTlsOptions>,
    /// TLS on the metrics port (an `https://` metrics URL).
    pub metrics_tls: Option<ServerTlsOptions>,
    /// How long an unused simple auth token lives (`--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// bcrypt cost of new password hashes (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// JWT tokens instead of simple ones (`--auth-token jwt,...`).
    pub auth_jwt: Option<crate::auth::jwt::JwtOptions>,
}

impl ServerConfig {
    /// A configuration for one member of a loopback cluster; tests and `nod dev` start here.
    pub fn local(
        name: &str,
        data_dir: PathBuf,
        client: SocketAddr,
        peer: SocketAddr,
    ) -> ServerConfig {
        ServerConfig {
            name: name.to_string(),
            data_dir,
            listen_client: client,
            advertise_client: format!("http://{client}"),
            listen_peer: peer,
            advertise_peer: format!("http://{peer}"),
            listen_metrics: None,
            console: true,
            initial_cluster: vec![(name.to_string(), format!("http://{peer}"))],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "nod-cluster".into(),
            heartbeat: Duration::from_millis(100),
            election_ticks: 10,
            max_request_bytes: 1536 * 1024,
            quota_backend_bytes: Some(node::DEFAULT_QUOTA_BYTES),
            max_txn_ops: crate::storage::kv_store::MAX_TXN_OPS,
            initial_corrupt_check: false,
            corrupt_check_time: Duration::ZERO,
            force_new_cluster: false,
            force_once_id: None,
            request_timeout: Duration::from_secs(7),
            snapshot_count: 10_000,
            progress_notify_interval: Duration::from_secs(600),
            discovery: None,
            autopilot: AutopilotConfig::default(),
            leave_on_shutdown: false,
            client_tls: None,
            peer_tls: None,
            metrics_tls: None,
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: crate::auth::password::DEFAULT_COST,
            auth_jwt: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("storage: {0}")]
    StateFile(#[from] StateFileError),
    #[error(transparent)]
    Gossip(#[from] GossipError),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct RunningServer {
    pub shared: Arc<Shared>,
    pub autopilot: Arc<Autopilot>,
    gossip: Option<Arc<Gossip>>,
    leave_on_shutdown: bool,
    /// How this member reaches its own peer port to leave the cluster.
    leave_via: (String, Option<TlsOptions>),
    pub driver: DriverHandle,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    driver_task: JoinHandle<Result<(), Fatal>>,
    /// Why the member stopped before serving clients (a failed initial
    /// corruption check).
    failure: Option<tokio::sync::oneshot::Receiver<String>>,
    tasks: Vec<JoinHandle<()>>,
}

struct PeerView {
    shared: Arc<Shared>,
    driver: DriverHandle,
    snapshot_root: PathBuf,
}

impl PeerNode for PeerView {
    fn member_id(&self) -> u64 {
        self.shared.member_id
    }
    fn cluster_id(&self) -> u64 {
        self.shared.cluster_id
    }
    fn members(&self) -> Vec<Member> {
        self.shared.store().members()
    }
    fn is_removed(&self, id: u64) -> bool {
        self.shared.store().is_removed(id)
    }
    fn snapshot_root(&self) -> PathBuf {
        self.snapshot_root.clone()
    }
    fn snapshot_received(&self, bytes: u64) {
        self.shared.metrics.snapshot_received_bytes.inc_by(bytes);
    }
    fn publish(
        &self,
        attributes: MemberAttributes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::Status>> + Send + '_>>
    {
        Box::pin(async move {
            self.driver
                .propose(Op::MemberAttributes(attributes), None)
                .await
                .map(|_| ())
                .map_err(crate::api::status::to_status)
        })
    }
    fn propose_forwarded(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<nod_proto::nodserverpb::ProposeResult>, tonic::Status>,
                > + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            self.driver
                .propose_forwarded(commands)
                .await
                .map_err(crate::api::status::to_status)
        })
    }
}

/// Binds `addr`. The IPv6 wildcard (`[::]`) on a host with IPv6 turned off
/// falls back to the IPv4 wildcard on the same port, with a log line, so one
/// rendered pod template serves IPv4-only, IPv6-only and dual-stack pods.
async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let error = match TcpListener::bind(addr).await {
        Ok(l) => return Ok(l),
        Err(e) => e,
    };
    let Some(v4) = ipv4_fallback(addr, &error) else {
        return Err(ServerError::Listen { addr, error });
    };
    tracing::warn!(%addr, %error, instead = %v4, "cannot listen on the IPv6 wildcard; listening on IPv4 only");
    TcpListener::bind(v4)
        .await
        .map_err(|error| ServerError::Listen { addr: v4, error })
}

/// The IPv4 wildcard to use instead of `addr` when `addr` is the IPv6
/// wildcard and binding it failed for want of IPv6 (not because the port is
/// taken or forbidden: the same would happen on IPv4).
pub fn ipv4_fallback(addr: SocketAddr, error: &std::io::Error) -> Option<SocketAddr> {
    use std::io::ErrorKind;
    let is_v6_wildcard = matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified());
    let port_problem = matches!(
        error.kind(),
        ErrorKind::AddrInUse | ErrorKind::PermissionDenied
    );
    (is_v6_wildcard && !port_problem)
        .then(|| SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port())))
}

/// The gossip listen address to use: the IPv6 wildcard becomes the IPv4 one
/// when this host cannot open an IPv6 UDP socket (chitchat binds it itself,
/// so the check is a probe on an ephemeral port).
fn gossip_listen_addr(listen: SocketAddr) -> SocketAddr {
    if !matches!(listen, SocketAddr::V6(a) if a.ip().is_unspecified()) {
        return listen;
    }
    let probe = SocketAddr::new(listen.ip(), 0);
    match std::net::UdpSocket::bind(probe) {
        Ok(_) => listen,
        Err(error) => match ipv4_fallback(listen, &error) {
            Some(v4) => {
                tracing::warn!(addr = %listen, %error, instead = %v4, "cannot gossip on the IPv6 wildcard; gossiping on IPv4 only");
                v4
            }
            None => listen,
        },
    }
}

/// Asks the members in `initial_cluster` for the member table and finds
/// this node in it by its advertised peer URL.
async fn discover_identity(
    cfg: &ServerConfig,
    dialer: &Dialer,
) -> Result<(Identity, Vec<Member>), ServerError> {
    let mut last = String::from("no member to ask in --initial-cluster");
    for (_, url) in &cfg.initial_cluster {
        if *url == cfg.advertise_peer {
            continue;
        }
        let mut client = match dialer.connect_url(url).await {
            Ok(c) => PeerClient::new(c),
            Err(e) => {
                last = format!("{url}: {e}");
                continue;
            }
        };
        match client.members(MembersRequest { cluster_id: 0 }).await {
            Ok(r) => {
                let r = r.into_inner();
                let me = r
                    .members
                    .iter()
                    .find(|m| m.peer_ur_ls.contains(&cfg.advertise_peer))
                    .ok_or_else(|| {
                        ServerError::Join(format!(
                            "the cluster has no member with peer URL {}; add it first (nod member add {} --peer-urls {})",
                            cfg.advertise_peer, cfg.name, cfg.advertise_peer
                        ))
                    })?;
                let id = Identity {
                    name: cfg.name.clone(),
                    member_id: me.id,
                    cluster_id: r.cluster_id,
                };
                return Ok((id, r.members));
            }
            Err(s) => last = format!("{url}: {}", s.message()),
        }
    }
    Err(ServerError::Join(last))
}

/// The founding members `initial_cluster` (name, peer URL) names, with ids
/// from their names and the token, and this member's id: checks that names
/// are unique and that `name` is among them with the URL it advertises.
/// Founding and `nod snapshot restore` both derive the members this way,
/// so every member computes the same ids from the same flags.
pub(crate) fn founding_members(
    initial_cluster: &[(String, String)],
    name: &str,
    advertise_peer: &str,
    token: &str,
) -> Result<(Vec<MemberAttributes>, u64), ServerError> {
    let mut members = Vec::new();
    for (n, url) in initial_cluster {
        if members.iter().any(|m: &MemberAttributes| m.name == *n) {
            return Err(ServerError::Config(format!(
                "--initial-cluster names {n:?} twice"
            )));
        }
        members.push(MemberAttributes {
            id: identity::founding_member_id(n, token),
            name: n.clone(),
            peer_urls: vec![url.clone()],
            client_urls: Vec::new(),
            features: Vec::new(),
        });
    }
    let me = members.iter().find(|m| m.name == name).ok_or_else(|| {
        ServerError::Config(format!("--initial-cluster has no member named {name:?}"))
    })?;
    if !me.peer_urls.iter().any(|u| u == advertise_peer) {
        return Err(ServerError::Config(format!(
            "--initial-cluster gives {name} the peer URL {}, but it advertises {advertise_peer}",
            me.peer_urls[0]
        )));
    }
    let id = me.id;
    Ok((members, id))
}

/// Records that `--force-new-cluster` made this member a cluster of its own;
/// removed once the member starts without the flag.
const FORCED_FILE: &str = "forced.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct ForcedRecord {
    /// The commit index the force wrote.
    index: u64,
    removed: Vec<String>,
    /// The `--force-new-cluster-once` id it was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    once: Option<String>,
}

/// `--force-new-cluster`: the log's configuration becomes this member alone
/// (`driver::force_standalone`). Refused once members joined after an
/// earlier force, which a flag left on would remove again; without the
/// flag, the record of an earlier force is dropped.
fn force_if_asked(cfg: &ServerConfig, log: &mut LogStore, me: u64) -> Result<(), ServerError> {
    let storage = |e: &dyn std::fmt::Display| ServerError::Storage(e.to_string());
    let earlier: Option<ForcedRecord> = identity::read_json(&cfg.data_dir, FORCED_FILE)?;
    if !cfg.force_new_cluster {
        if earlier.is_some() {
            identity::remove_file(&cfg.data_dir, FORCED_FILE)?;
        }
        return Ok(());
    }
    let alone = ConfState::with_voters([NodeId(me)]);
    if let Some(id) = &cfg.force_once_id {
        if earlier.as_ref().and_then(|r| r.once.as_ref()) == Some(id) {
            tracing::info!(
                once = %id,
                "--force-new-cluster-once: already forced for this id; starting normally"
            );
            return Ok(());
        }
        // A new id is a new, deliberate force (the operator's recovery
        // from a new loss of quorum).
    } else if let Some(record) = earlier {
        let conf = crate::driver::current_conf(log).map_err(|e| storage(&e))?;
        if conf != alone {
            return Err(ServerError::Config(format!(
                "--force-new-cluster already made this member the only one (at index {}) and \
                 members joined since; forcing again would remove them. Start without the flag \
                 (to force again after a new loss of quorum, delete {} first)",
                record.index,
                cfg.data_dir.join(FORCED_FILE).display()
            )));
        }
    }
    match crate::driver::force_standalone(log, NodeId(me)) {
        Ok(Some(f)) => {
            let removed: Vec<String> = f.removed.iter().map(|id| format!("{:x}", id.0)).collect();
            tracing::warn!(
                removed = removed.join(","),
                commit = f.commit.0,
                kept_past_commit = f.kept_past_commit,
                promoted = f.promoted,
                "--force-new-cluster: this member is now its cluster's only member; \
                 the others must rejoin with empty data directories"
            );
            identity::write_json(
                &cfg.data_dir,
                FORCED_FILE,
                &ForcedRecord {
                    index: f.commit.0,
                    removed,
                    once: cfg.force_once_id.clone(),
                },
            )?;
        }
        Ok(None) => {
            tracing::info!("--force-new-cluster: this member already is the only one");
            // With an id, recorded again: a restart with it must not force.
            if !cfg.data_dir.join(FORCED_FILE).exists() || cfg.force_once_id.is_some() {
                identity::write_json(
                    &cfg.data_dir,
                    FORCED_FILE,
                    &ForcedRecord {
                        index: log.last_index().map_err(|e| storage(&e))?.0,
                        removed: Vec::new(),
                        once: cfg.force_once_id.clone(),
                    },
                )?;
            }
        }
        Err(e) => return Err(ServerError::Config(format!("--force-new-cluster: {e}"))),
    }
    Ok(())
}

/// Founds a new cluster with `initial_cluster` (name, peer URL): every
/// founding member derives the same member and cluster ids from the names and
/// the token, and writes the same bootstrap snapshot.
fn found(
    cfg: &ServerConfig,
    initial_cluster: &[(String, String)],
    log: &mut LogStore,
    kv: &mut KvStore,
) -> Result<Identity, ServerError> {
    let token = &cfg.initial_cluster_token;
    let (members, member_id) =
        founding_members(initial_cluster, &cfg.name, &cfg.advertise_peer, token)?;
    let id = Identity {
        name: cfg.name.clone(),
        member_id,
        cluster_id: identity::cluster_id(members.iter().map(|m| m.id).collect(), token),
    };
    let conf = ConfState::with_voters(members.iter().map(|m| NodeId(m.id)));
    let data = SnapshotData {
        members: members.clone(),
        ..Default::default()
    };
    log.bootstrap(conf, data.encode_to_vec())
        .map_err(|e| ServerError::Storage(e.to_string()))?;
    for m in members {
        let member = Member {
            id: m.id,
            name: m.name,
            peer_ur_ls: m.peer_urls,
            client_ur_ls: m.client_urls,
            is_learner: false,
        };
        kv.apply_member(member.id, Some(member), (1, 1))
            .map_err(|e| ServerError::Storage(e.to_string()))?;
    }
    id.store(&cfg.data_dir)?;
    tracing::info!(
        member = format!("{:x}", id.member_id),
        cluster = format!("{:x}", id.cluster_id),
        "founded a new cluster"
    );
    Ok(id)
}

/// Accepts connections from a listener shared between the servers that use
/// it one after the other (the bootstrap-only server, then the full one).
/// A task that is aborted if it is dropped before `keep`: the servers that
/// run while the node starts (metrics, bootstrap) must not outlive a start
/// that failed or was given up (SIGTERM while waiting for peers).
struct AbortOnDrop<T>(Option<JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    fn keep(mut self) -> Option<JoinHandle<T>> {
        self.0.take()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

enum Discovered {
    Found(Vec<(String, String)>),
    Joined(Identity, Vec<Member>),
}

/// An empty node with gossip: serves the bootstrap service on the peer port
/// and decides, with `gossip::bootstrap`, to found or to join.
async fn run_discovery(
    cfg: &ServerConfig,
    gossip: &Gossip,
    state: &Arc<BootstrapState>,
    peer_listener: &Arc<TcpListener>,
    peer_tls: Option<Arc<ServerTls>>,
    dialer: &Dialer,
) -> Result<Discovered, ServerError> {
    let d = cfg
        .discovery
        .as_ref()
        .ok_or_else(|| ServerError::Config("discovery is off".into()))?;
    let (stop, mut stopped) = watch::channel(false);
    let server = AbortOnDrop(Some(tokio::spawn(
        http2_server()
            .add_service(BootstrapServer::from_arc(state.clone()))
            .serve_with_incoming_shutdown(
                tls::incoming(peer_listener.clone(), peer_tls, "peer"),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ),
    )));
    let dcfg = DiscoverConfig {
        dialer: dialer.clone(),
        name: cfg.name.clone(),
        token: cfg.initial_cluster_token.clone(),
        peer_url: cfg.advertise_peer.clone(),
        expect: d.bootstrap_expect,
        founders: d.bootstrap_founders.clone(),
        interval: d.gossip.interval,
        seeds: d.gossip.seeds.clone(),
        own_addrs: vec![d.gossip.advertise, d.gossip.listen],
        min_wait: d.gossip.interval * bootstrap::MIN_DISCOVERY_ROUNDS,
    };
    let outcome = loop {
        match bootstrap::discover(gossip, state, &dcfg).await {
            Err(e) => break Err(ServerError::StateFile(e)),
            Ok(Decision::Found(set)) => break Ok(Discovered::Found(set)),
            Ok(Decision::Join(targets)) => {
                gossip.set(&[(keys::ROLE, "joining".into())]).await;
                match join_cluster(cfg, &targets).await {
                    Ok((id, members)) => break Ok(Discovered::Joined(id, members)),
                    Err(e) => {
                        tracing::warn!(error = %e, "joining failed; looking again");
                        gossip.set(&[(keys::ROLE, "empty".into())]).await;
                        state.reopen().await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    };
    let _ = stop.send(true);
    if let Some(server) = server.keep() {
        let _ = server.await;
    }
    outcome
}

/// Why joining the cluster an empty node found failed (it looks again).
#[derive(Debug, thiserror::Error)]
enum JoinError {
    #[error(transparent)]
    Client(#[from] nod_client::ClientError),
    #[error("cannot remove the stale member {id:x}: {cause}")]
    RemoveStale {
        id: u64,
        cause: nod_client::ClientError,
    },
    #[error("the cluster added no member")]
    NoMember,
    #[error("the cluster answered without a cluster or member id")]
    NoIds,
    #[error("the cluster id {found:x} differs from the one gossip advertised ({advertised:x})")]
    OtherCluster { found: u64, advertised: u64 },
}

/// A client of the Cluster service on members' peer ports (which serve it
/// behind peer TLS), for joining and leaving.
fn peer_client(
    endpoints: &[String],
    peer_tls: Option<&ServerTlsOptions>,
    timeout: Duration,
) -> Result<nod_client::Client, nod_client::ClientError> {
    let mut b = nod_client::ClientBuilder::new(endpoints.iter().cloned()).call_options(
        nod_client::CallOptions::default()
            .attempt_timeout(timeout)
            .deadline(Some(timeout)),
    );
    if let Some(t) = peer_tls {
        b = b.tls(Dialer::peer_options(t));
    }
    b.build()
}

/// Adds this empty node to the cluster of `targets` as a learner. A member
/// of the same name or peer URL is this node's stale past (its volume is
/// gone: this node is empty), so it is removed first.
async fn join_cluster(
    cfg: &ServerConfig,
    targets: &[PeerInfo],
) -> Result<(Identity, Vec<Member>), JoinError> {
    // The peer ports serve the Cluster service too, behind peer TLS.
    let endpoints: Vec<String> = targets.iter().map(|t| t.peer_url.clone()).collect();
    let mut client = peer_client(&endpoints, cfg.peer_tls.as_ref(), cfg.request_timeout)?;
    let list = client.member_list().await?;
    for m in &list.members {
        if m.name == cfg.name || m.peer_ur_ls.contains(&cfg.advertise_peer) {
            tracing::warn!(
                member = format!("{:x}", m.id),
                name = %m.name,
                "removing the stale member this empty node replaces"
            );
            client
                .member_remove(m.id)
                .await
                .map_err(|cause| JoinError::RemoveStale { id: m.id, cause })?;
        }
    }
    let added = client
        .member_add(vec![cfg.advertise_peer.clone()], true)
        .await?;
    let member = added.member.ok_or(JoinError::NoMember)?;
    let cluster_id = added.header.map(|h| h.cluster_id).unwrap_or(0);
    if cluster_id == 0 || member.id == 0 {
        return Err(JoinError::NoIds);
    }
    let advertised = targets[0].cluster_id;
    if cluster_id != advertised {
        return Err(JoinError::OtherCluster {
            found: cluster_id,
            advertised,
        });
    }
    tracing::info!(member = format!("{:x}", member.id), "added as a learner");
    Ok((
        Identity {
            name: cfg.name.clone(),
            member_id: member.id,
            cluster_id,
        },
        added.members,
    ))
}

/// Keeps this node's gossip values current (role, applied index, readiness).
/// Forgets simple auth tokens unused for longer than `ttl`, every second
/// (etcd's sweep), until the member stops.
async fn sweep_tokens(shared: Arc<Shared>, ttl: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => shared.tokens.sweep(std::time::Instant::now(), ttl),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn publish_gossip(
    gossip: Arc<Gossip>,
    shared: Arc<Shared>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let st = shared.status();
        let learner = shared
            .store()
            .member(shared.member_id)
            .is_some_and(|m| m.is_learner);
        let role = match st.role {
            Some(Role::Leader) => "leader",
            Some(Role::Follower) if learner => "learner",
            Some(Role::Follower) => "follower",
            Some(_) => "candidate",
            None => "starting",
        };
        gossip
            .set(&[
                (keys::ROLE, role.to_string()),
                (keys::APPLIED, st.applied.to_string()),
                (
                    keys::READY,
                    if http::is_ready(&shared) { "1" } else { "0" }.to_string(),
                ),
            ])
            .await;
        let peers = gossip.peers().await;
        let alive = peers.iter().filter(|p| p.alive).count() as i64;
        let m = &shared.metrics.gossip_nodes;
        m.with_label_values(&["alive"]).set(alive);
        m.with_label_values(&["dead"])
            .set(peers.len() as i64 - alive);
    }
}

pub async fn start(cfg: ServerConfig) -> Result<RunningServer, ServerError> {
    if cfg.name.is_empty() {
        return Err(ServerError::Config("--name must not be empty".into()));
    }
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        ServerError::Storage(format!("cannot create {}: {e}", cfg.data_dir.display()))
    })?;
    // TLS files first: a member with bad certificates does not start.
    let load = |o: &Option<ServerTlsOptions>| -> Result<Option<Arc<ServerTls>>, ServerError> {
        Ok(match o {
            Some(o) => Some(Arc::new(ServerTls::new(o)?)),
            None => None,
        })
    };
    // The client port speaks HTTP/1.1 too (the JSON gateway, /health):
    // offer it after h2, which gRPC clients pick.
    let client_tls = load(&cfg.client_tls.clone().map(|mut o| {
        if !o.alpn.iter().any(|p| p == b"http/1.1") {
            o.alpn.push(b"http/1.1".to_vec());
        }
        o
    }))?;
    let peer_tls = load(&cfg.peer_tls)?;
    let metrics_tls = load(&cfg.metrics_tls)?;
    let dialer = Dialer::new(cfg.peer_tls.as_ref().map(Dialer::peer_options).as_ref())?;
    // The metrics port first: /healthz answers while the stores open and
    // while an empty node waits for its peers (see `http`).
    let metrics = Metrics::new();
    let http_state = http::HttpState::new(metrics.clone(), cfg.console);
    let (stop, stop_rx) = watch::channel(false);
    let (metrics_addr, http_task) = match cfg.listen_metrics {
        Some(a) => {
            let listener = bind(a).await?;
            let addr = listener.local_addr().ok();
            let task = tokio::spawn(http::serve(
                listener,
                metrics_tls,
                http_state.clone(),
                stop_rx.clone(),
            ));
            (addr, Some(AbortOnDrop(Some(task))))
        }
        None => (None, None),
    };
    let snapshot_root = cfg.data_dir.join("snap");
    let mut log = LogStore::open(&cfg.data_dir.join("log"))
        .map_err(|e| ServerError::Storage(e.to_string()))?;
    let storage = |e: checkpoint::CheckpointError| ServerError::Storage(e.to_string());
    checkpoint::remove_stale(&cfg.data_dir).map_err(storage)?;
    let mut kv = KvStore::open(&checkpoint::current_kv(&cfg.data_dir).map_err(storage)?)
        .map_err(|e| ServerError::Storage(e.to_string()))?;
    // A snapshot persisted in the log but not yet in the store (a crash
    // during install): install it now, before the core replays the tail.
    let log_snapshot = log
        .snapshot()
        .map_err(|e| ServerError::Storage(e.to_string()))?;
    if log_snapshot.metadata.index.0 > kv.applied().0 {
        let data = command::decode_snapshot_data(&log_snapshot.data)
            .map_err(|e| ServerError::Storage(e.to_string()))?;
        if data.checkpoint_index != 0 {
            let (index, term) = (log_snapshot.metadata.index.0, log_snapshot.metadata.term.0);
            let dir = checkpoint::dir_for(&snapshot_root, index, term);
            let path = checkpoint::install(&cfg.data_dir, &dir, index).map_err(storage)?;
            drop(kv);
            kv = KvStore::open(&path).map_err(|e| ServerError::Storage(e.to_string()))?;
            checkpoint::remove_stale(&cfg.data_dir).map_err(storage)?;
            tracing::info!(index, "installed the log's snapshot at startup");
        }
    }
    let client_listener = bind(cfg.listen_client).await?;
    let peer_listener = Arc::new(bind(cfg.listen_peer).await?);
    let client_addr = client_listener
        .local_addr()
        .map_err(|error| ServerError::Listen {
            addr: cfg.listen_client,
            error,
        })?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(|error| ServerError::Listen {
            addr: cfg.listen_peer,
            error,
        })?;
    let stored = Identity::load(&cfg.data_dir)?;
    if cfg.force_new_cluster && stored.is_none() {
        return Err(ServerError::Config(format!(
            "--force-new-cluster keeps this member's data, but {} holds none (no identity.json): \
             start it on the data directory of a surviving member",
            cfg.data_dir.display()
        )));
    }

    // The bootstrap record and the gossip instance exist before the node
    // knows who it is: an empty node finds its cluster through them.
    let founders = cfg
        .discovery
        .as_ref()
        .map(|d| d.bootstrap_founders.clone())
        .unwrap_or_default();
    let bootstrap_state = BootstrapState::open(
        &cfg.data_dir,
        &cfg.initial_cluster_token,
        &cfg.name,
        founders,
    )?;
    let gossip = match &cfg.discovery {
        None => None,
        Some(d) => {
            let mut initial = vec![
                (keys::PEER.to_string(), cfg.advertise_peer.clone()),
                (keys::CLIENT.to_string(), cfg.advertise_client.clone()),
            ];
            match &stored {
                Some(id) => {
                    initial.push((keys::MEMBER.into(), format!("{:x}", id.member_id)));
                    initial.push((keys::CLUSTER.into(), format!("{:x}", id.cluster_id)));
                    initial.push((keys::ROLE.into(), "starting".into()));
                }
                None => {
                    initial.push((keys::ROLE.into(), "empty".into()));
                    // A node that may not found is no candidate for others' sets.
                    if let Some(n) = d.bootstrap_expect {
                        if d.bootstrap_founders.allows(&cfg.name) {
                            initial.push((keys::EXPECT.into(), n.to_string()));
                        }
                    }
                }
            }
            let mut gossip_cfg = d.gossip.clone();
            gossip_cfg.listen = gossip_listen_addr(gossip_cfg.listen);
            let g = Gossip::start(
                &gossip_cfg,
                &cfg.name,
                &cfg.initial_cluster_token,
                initial,
                metrics.gossip_packets_dropped.clone(),
            )
            .await?;
            Some(Arc::new(g))
        }
    };
    let log_empty = log
        .last_index()
        .map_err(|e| ServerError::Storage(e.to_string()))?
        .0
        == 0
        && log
            .initial_state()
            .map_err(|e| ServerError::Storage(e.to_string()))?
            .conf_state
            == ConfState::default();

    let mut seed_peers = HashMap::new();
    let identity = match (stored, cfg.initial_cluster_state) {
        (Some(id), _) => {
            if id.name != cfg.name {
                return Err(ServerError::Config(format!(
                    "{} belongs to member {:?}, not {:?}",
                    cfg.data_dir.display(),
                    id.name,
                    cfg.name
                )));
            }
            id
        }
        (None, ClusterState::New) => {
            if !log_empty {
                return Err(ServerError::Config(format!(
                    "{} holds a Raft log but no identity.json; refusing to found a new cluster over it",
                    cfg.data_dir.display()
                )));
            }
            found(&cfg, &cfg.initial_cluster, &mut log, &mut kv)?
        }
        (None, state @ (ClusterState::Existing | ClusterState::Discover)) => {
            if !log_empty {
                return Err(ServerError::Config(format!(
                    "{} holds a Raft log but no identity.json; wipe it to join as a new member",
                    cfg.data_dir.display()
                )));
            }
            let joined = if state == ClusterState::Existing {
                discover_identity(&cfg, &dialer).await?
            } else {
                let gossip = gossip.as_ref().ok_or_else(|| {
                    ServerError::Config("finding the cluster by gossip needs gossip seeds".into())
                })?;
                let discovered = run_discovery(
                    &cfg,
                    gossip,
                    &bootstrap_state,
                    &peer_listener,
                    peer_tls.clone(),
                    &dialer,
                )
                .await?;
                match discovered {
                    Discovered::Found(set) => {
                        let id = found(&cfg, &set, &mut log, &mut kv)?;
                        (id, Vec::new())
                    }
                    Discovered::Joined(id, members) => (id, members),
                }
            };
            let (id, members) = joined;
            if !members.is_empty() {
                seed_peers = members
                    .iter()
                    .filter(|m| m.id != id.member_id)
                    .filter_map(|m| m.peer_ur_ls.first().map(|u| (NodeId(m.id), u.clone())))
                    .collect();
                id.store(&cfg.data_dir)?;
                tracing::info!(
                    member = format!("{:x}", id.member_id),
                    cluster = format!("{:x}", id.cluster_id),
                    "joining an existing cluster"
                );
            }
            id
        }
    };
    bootstrap_state
        .close(format!(
            "already a member of cluster {:x}",
            identity.cluster_id
        ))
        .await;
    if let Some(g) = &gossip {
        g.delete(keys::EXPECT).await;
        g.delete(keys::PROMISED).await;
        g.set(&[
            (keys::MEMBER, format!("{:x}", identity.member_id)),
            (keys::CLUSTER, format!("{:x}", identity.cluster_id)),
            (keys::ROLE, "starting".into()),
        ])
        .await;
    }

    // A power loss may have taken back the durable commit index under
    // entries the store applied (driver::raise_commit_to_applied says why).
    let applied = nod_raft::Index(kv.applied().0);
    if crate::driver::raise_commit_to_applied(&mut log, applied)
        .map_err(|e| ServerError::Storage(e.to_string()))?
    {
        tracing::warn!(
            commit = applied.0,
            "raised the commit index to what the state machine applied"
        );
    }

    force_if_asked(&cfg, &mut log, identity.member_id)?;

    let mut raft_cfg = Config::new(NodeId(identity.member_id));
    raft_cfg.election_tick = cfg.election_ticks;
    raft_cfg.heartbeat_tick = 1;
    raft_cfg.applied = nod_raft::Index(kv.applied().0);
    raft_cfg.seed = identity::random_id();
    let node = RawNode::new(raft_cfg, log).map_err(|e| ServerError::Config(e.to_string()))?;

    let auth_enabled = kv.auth().enabled();
    let shared = Arc::new(Shared {
        auth_enabled: auth_enabled.into(),
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
        name: cfg.name.clone(),
        store: RwLock::new(kv),
        hub: WatchHub::default(),
        status: RwLock::new(NodeStatus::default()),
        metrics,
        tokens: Default::default(),
    });

    let (inbox_tx, inbox_rx) = mpsc::channel(4096);
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (handle, requests) = driver::channel(4096);
    let transport = Transport::new(
        identity.cluster_id,
        events_tx,
        snapshot_root.clone(),
        shared.metrics.snapshot_sent_bytes.clone(),
        dialer.clone(),
    );
    let driver = Driver::new(
        node,
        shared.clone(),
        transport,
        DriverConfig {
            tick: cfg.heartbeat,
            attributes: MemberAttributes {
                id: identity.member_id,
                name: cfg.name.clone(),
                peer_urls: vec![cfg.advertise_peer.clone()],
                client_urls: vec![cfg.advertise_client.clone()],
                features: command::features(),
            },
            seed_peers,
            snapshot_count: cfg.snapshot_count,
            data_dir: cfg.data_dir.clone(),
            snapshot_root: snapshot_root.clone(),
        },
        requests,
        inbox_rx,
        events_rx,
    );
    let driver_task = tokio::spawn(driver.run(stop_rx.clone()));

    let mut tasks = Vec::new();
    let jwt = match &cfg.auth_jwt {
        Some(o) => Some(Arc::new(
            crate::auth::jwt::JwtTokens::load(o).map_err(|e| ServerError::Config(e.to_string()))?,
        )),
        None => None,
    };
    let api = Arc::new(
        Node::new(
            shared.clone(),
            handle.clone(),
            cfg.max_request_bytes,
            cfg.request_timeout,
            dialer,
        )
        .with_auth(AuthSettings {
            jwt,
            bcrypt_cost: crate::auth::password::effective_cost(cfg.bcrypt_cost),
            ..AuthSettings::default()
        })
        .with_limits(cfg.quota_backend_bytes, cfg.max_txn_ops)
        .with_election_timeout(cfg.heartbeat * cfg.election_ticks as u32),
    );
    tasks.push(tokio::spawn(sweep_tokens(
        shared.clone(),
        cfg.auth_token_ttl,
        stop_rx.clone(),
    )));
    let autopilot = Autopilot::new(
        cfg.autopilot.clone(),
        shared.clone(),
        handle.clone(),
        gossip.clone(),
        cfg.heartbeat * cfg.election_ticks as u32,
    );
    let limit = cfg.max_request_bytes + GRPC_OVERHEAD;
    let peer_service = PeerService::new(
        Arc::new(PeerView {
            shared: shared.clone(),
            driver: handle.clone(),
            snapshot_root,
        }),
        inbox_tx,
    );
    let mut stop_peer = stop_rx.clone();
    let peer_api = api.clone();
    let peer_admin = AdminService {
        node: api.clone(),
        autopilot: autopilot.clone(),
    };
    tasks.push(tokio::spawn(async move {
        // Besides Raft and the bootstrap agreement, the peer port serves
        // what members forward to the leader (writes, lease calls,
        // membership changes, member health) and what a joining or leaving
        // member calls,
        // behind peer TLS; clients use the client port.
        let r = http2_server()
            .trace_fn(|r| telemetry::server_span(telemetry::Port::Peer, r))
            .add_service(
                PeerServer::new(peer_service)
                    .max_decoding_message_size(MAX_PEER_FRAME)
                    .max_encoding_message_size(MAX_PEER_FRAME),
            )
            .add_service(BootstrapServer::from_arc(bootstrap_state))
            .add_service(
                KvServer::new(KvService {
                    node: peer_api.clone(),
                })
                .max_decoding_message_size(limit),
            )
            .add_service(
                LeaseServer::new(LeaseService {
                    node: peer_api.clone(),
                })
                .max_decoding_message_size(limit),
            )
            .add_service(
                ClusterServer::new(ClusterService {
                    node: peer_api.clone(),
                })
                .max_decoding_message_size(limit),
            )
            .add_service(AdminServer::new(peer_admin))
            .add_service(
                AuthServer::new(AuthService {
                    node: peer_api.clone(),
                })
                .max_decoding_message_size(limit),
            )
            // Index declarations and drops a follower forwards.
            .add_service(
                IndexServer::new(IndexService::new(peer_api.clone()))
                    .max_decoding_message_size(limit),
            )
            // Alarms a follower raises or forwards, and the hashes the
            // corruption checks compare.
            .add_service(
                MaintenanceServer::new(MaintenanceService {
                    node: peer_api.clone(),
                    autopilot: None,
                })
                .max_decoding_message_size(limit),
            )
            .serve_with_incoming_shutdown(
                tls::incoming(peer_listener, peer_tls, "peer"),
                async move {
                    let _ = stop_peer.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "peer server failed");
        }
    }));

    tasks.push(tokio::spawn(autopilot.clone().run(stop_rx.clone())));
    if let (Some(g), Some(d)) = (&gossip, &cfg.discovery) {
        tasks.push(tokio::spawn(publish_gossip(
            g.clone(),
            shared.clone(),
            d.gossip.interval,
            stop_rx.clone(),
        )));
    }
    let autopilot_for_status = autopilot.clone();
    let admin = AdminService {
        node: api.clone(),
        autopilot: autopilot.clone(),
    };
    let mut stop_client = stop_rx.clone();
    let progress_interval = cfg.progress_notify_interval;
    let metrics_layer = grpc_metrics::GrpcMetricsLayer::new(&shared.metrics);
    if !cfg.corrupt_check_time.is_zero() {
        tasks.push(tokio::spawn(corruption::run_periodic(
            api.clone(),
            cfg.corrupt_check_time,
            stop_rx.clone(),
        )));
    }
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<String>();
    let initial_corrupt_check = cfg.initial_corrupt_check;
    let published = (cfg.name.clone(), cfg.advertise_client.clone());
    let console_state = http_state.clone();
    tasks.push(tokio::spawn(async move {
        // As etcd: clients are served once this member's name and client
        // URLs are committed in the member table, so whoever it answers
        // finds it in `member list` (a restart with unchanged attributes
        // finds them there at once).
        let mut stop = stop_client.clone();
        tokio::select! {
            _ = attributes_published(&api, &published.0, &published.1) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if initial_corrupt_check {
            if let Err(e) = corruption::initial_check(&api).await {
                tracing::error!(error = %e, "initial corruption check failed; not serving");
                let _ = fail_tx.send(e.to_string());
                return;
            }
        }
        let grpc = tonic::service::Routes::new(
            KvServer::new(KvService { node: api.clone() }).max_decoding_message_size(limit),
        )
        .add_service(
            WatchServer::new(WatchService {
                node: api.clone(),
                progress_interval,
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            LeaseServer::new(LeaseService { node: api.clone() }).max_decoding_message_size(limit),
        )
        .add_service(
            ClusterServer::new(ClusterService { node: api.clone() })
                .max_decoding_message_size(limit),
        )
        .add_service(
            MaintenanceServer::new(MaintenanceService {
                node: api.clone(),
                autopilot: Some(autopilot_for_status),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(AdminServer::new(admin))
        .add_service(
            AuthServer::new(AuthService { node: api.clone() }).max_decoding_message_size(limit),
        )
        // Nod's own: secondary indexes and queries.
        .add_service(
            IndexServer::new(IndexService::new(api.clone())).max_decoding_message_size(limit),
        )
        .add_service(
            QueryServer::new(QueryService::new(api.clone())).max_decoding_message_size(limit),
        )
        // Lock and Election only on the client port: their inner KV and
        // Lease calls are what members forward to the leader.
        .add_service(
            LockServer::new(LockService { node: api.clone() }).max_decoding_message_size(limit),
        )
        .add_service(
            ElectionServer::new(ElectionService { node: api.clone() })
                .max_decoding_message_size(limit),
        );
        // etcd's JSON gateway, /version and /health on the same port
        // (HTTP/1.1 and HTTP/2): see api/gateway.rs.
        // The metrics count gRPC calls, the gateway's included (it calls
        // the services through this router), and no HTTP paths.
        let grpc = grpc.into_axum_router().layer(metrics_layer);
        let app = gateway::router(grpc, api.clone(), limit);
        console_state.console_serving(app.clone(), published.0.clone());
        let r = http2_server()
            .accept_http1(true)
            .trace_fn(|r| telemetry::server_span(telemetry::Port::Client, r))
            .add_routes(tonic::service::Routes::from(app))
            .serve_with_incoming_shutdown(
                tls::incoming(Arc::new(client_listener), client_tls, "client"),
                async move {
                    let _ = stop_client.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "client server failed");
        }
    }));

    http_state.serving(shared.clone());
    if let Some(task) = http_task.and_then(AbortOnDrop::keep) {
        tasks.push(task);
    }

    tracing::info!(
        name = %cfg.name,
        member = format!("{:x}", identity.member_id),
        client = %client_addr,
        peer = %peer_addr,
        "serving"
    );
    Ok(RunningServer {
        shared,
        autopilot,
        gossip,
        leave_on_shutdown: cfg.leave_on_shutdown,
        leave_via: (
            cfg.advertise_peer.clone(),
            cfg.peer_tls.as_ref().map(Dialer::peer_options),
        ),
        driver: handle,
        client_addr,
        peer_addr,
        metrics_addr,
        stop,
        driver_task,
        failure: Some(fail_rx),
        tasks,
    })
}

/// Waits until the member table this member applied shows its own name
/// and client URL (the driver publishes them through the log).
async fn attributes_published(node: &Node, name: &str, client_url: &str) {
    loop {
        let done = node
            .shared
            .store()
            .member(node.shared.member_id)
            .is_some_and(|m| m.name == name && m.client_ur_ls.iter().any(|u| u == client_url));
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl RunningServer {
    pub fn member_id(&self) -> u64 {
        self.shared.member_id
    }

    /// Removes this member from the cluster (through the leader) and waits
    /// until the removal is applied here, which stops the driver. Refused
    /// when this is the only voter: the cluster would be gone.
    async fn leave(&mut self) {
        let me = self.shared.member_id;
        let voters = self
            .shared
            .store()
            .members()
            .iter()
            .filter(|m| !m.is_learner)
            .count();
        let is_voter = self
            .shared
            .store()
            .member(me)
            .is_some_and(|m| !m.is_learner);
        if is_voter && voters <= 1 {
            tracing::warn!("not leaving: this is the cluster's only voter");
            return;
        }
        let (url, tls) = &self.leave_via;
        let mut builder = nod_client::ClientBuilder::new([url.clone()]).call_options(
            nod_client::CallOptions::default()
                .attempt_timeout(Duration::from_secs(10))
                .deadline(Some(Duration::from_secs(10))),
        );
        if let Some(t) = tls {
            builder = builder.tls(t.clone());
        }
        let mut client = match builder.build() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot leave the cluster");
                return;
            }
        };
        match client.member_remove(me).await {
            Ok(_) => {
                tracing::info!(member = format!("{me:x}"), "left the cluster");
                // The removal reaches this node's log too; then the driver stops.
                for _ in 0..100 {
                    if self.shared.status().removed {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "leaving the cluster failed"),
        }
    }

    /// Resolves when the driver stops by itself (removed from the cluster,
    /// or a storage failure), with the reason.
    pub async fn stopped(&mut self) -> Result<(), Fatal> {
        let joined = match self.failure.as_mut() {
            Some(failure) => tokio::select! {
                r = &mut self.driver_task => Ok(r),
                Ok(why) = failure => Err(why),
            },
            None => Ok((&mut self.driver_task).await),
        };
        match joined {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(Fatal::Task(e.to_string())),
            Err(why) => {
                self.failure = None;
                let _ = self.stop.send(true);
                Err(Fatal::Store(why))
            }
        }
    }

    /// Stops serving: hands leadership to the most caught-up voter if this
    /// node leads, then stops the driver (every write it acknowledged is
    /// already fsynced) and the servers.
    pub async fn shutdown(mut self) -> Result<(), Fatal> {
        if let Ok(st) = self.driver.raft_status().await {
            if st.role == Role::Leader {
                let best = st
                    .peers
                    .iter()
                    .filter(|p| !p.is_learner && p.id != st.id && p.recent_active)
                    .max_by_key(|p| p.matched);
                if let Some(p) = best {
                    if self.driver.transfer_leader(p.id).await.is_ok() {
                        for _ in 0..40 {
                            let l = self.shared.status().leader;
                            if l != 0 && l != st.id.0 {
                                tracing::info!(
                                    to = format!("{:x}", p.id.0),
                                    "handed leadership over"
                                );
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }
        if self.leave_on_shutdown {
            self.leave().await;
        }
        let _ = self.stop.send(true);
        if let Some(g) = self.gossip.take() {
            g.stop();
        }
        let result = match self.driver_task.await {
            Ok(r) => r,
            Err(e) => Err(Fatal::Task(e.to_string())),
        };
        for mut t in self.tasks {
            // Open client streams (watches) would hold a graceful stop forever.
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn only_the_ipv6_wildcard_falls_back_and_only_for_want_of_ipv6() {
        let v6_any: SocketAddr = "[::]:2379".parse().unwrap();
        let v4_any: SocketAddr = "0.0.0.0:2379".parse().unwrap();
        // EAFNOSUPPORT (no IPv6 in the kernel) and EADDRNOTAVAIL.
        for e in [
            Error::from_raw_os_error(97),
            Error::from(ErrorKind::AddrNotAvailable),
        ] {
            assert_eq!(ipv4_fallback(v6_any, &e), Some(v4_any), "{e}");
        }
        // The port is the problem: IPv4 would fail the same way.
        for kind in [ErrorKind::AddrInUse, ErrorKind::PermissionDenied] {
            assert_eq!(ipv4_fallback(v6_any, &Error::from(kind)), None);
        }
        // A specific address is what the user asked for: no silent change.
        let unsupported = Error::from_raw_os_error(97);
        for a in [
            "[::1]:2379",
            "[fd00::7]:2379",
            "0.0.0.0:2379",
            "127.0.0.1:2379",
        ] {
            assert_eq!(ipv4_fallback(a.parse().unwrap(), &unsupported), None, "{a}");
        }
    }
}
