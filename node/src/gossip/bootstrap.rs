//! Guarded bootstrap and the decision every empty node makes: found a new
//! cluster, or join the one it sees.
//!
//! An empty node (no identity, empty log) that sees a member of its cluster
//! (by gossip) joins it. Otherwise, with `--bootstrap-expect N`, it waits
//! until N empty nodes with the same N are visible; the founding set S is the
//! N lowest names among them and its coordinator is the lowest name of S.
//! With `--bootstrap-founders`, only the listed names may be in S: a node
//! not listed never founds, and a prepare naming anyone unlisted is refused
//! (so a pod added by scaling cannot found a cluster of its own).
//!
//! Before it founds, an empty node listens: it founds only once gossip has
//! heard from every seed address it resolved, or after a minimum discovery
//! period (`founding_hold`), and never while any member is visible. Without
//! this, a node allowed to found alone (`--bootstrap-expect 1`) would decide
//! on its first look, before its first gossip exchange, and found next to a
//! running cluster it had not heard of yet.
//! Founding is a two-phase agreement over gRPC (the `Bootstrap` service):
//!
//! 1. The coordinator durably promises S to itself, then asks every member of
//!    S for a durable promise (`Prepare`). A node holds at most one promise;
//!    it refuses a prepare when it holds another, or is already a member, or
//!    has decided to join.
//! 2. When all of S promised, the coordinator durably marks its promise
//!    committed and founds the cluster (the same founding path as a static
//!    `--initial-cluster`, so every member of S derives the same ids). A
//!    promised node asks the coordinator for the outcome (`Outcome`) and
//!    founds when it hears "committed"; it drops its promise only when the
//!    coordinator says the attempt was abandoned (or its record is gone).
//!    A refusal or a timeout abandons the attempt; the coordinator retries
//!    with a fresh nonce after a random pause.
//!
//! Why one cluster: a commit needs every member of S to hold that very
//! promise at once, a node holds one promise until the coordinator's durable
//! record says otherwise, and two founding sets of N drawn from the same
//! visible nodes share a node. (Starting more than 2N-1 empty nodes with
//! disjoint views of each other could still found two clusters; start the N
//! you expect, and add the rest after, as Consul documents.)

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::{keys, Gossip, PeerInfo};
use crate::identity::{self, StateFileError};
use nod_proto::nodserverpb::bootstrap_client::BootstrapClient;
use nod_proto::nodserverpb::bootstrap_reply::State;
use nod_proto::nodserverpb::bootstrap_server::Bootstrap;
use nod_proto::nodserverpb::{BootstrapMember, BootstrapOutcome, BootstrapPrepare, BootstrapReply};

/// Largest founding set accepted (from a flag or from the network).
pub const MAX_FOUNDERS: usize = 9;
const FILE: &str = "bootstrap.json";
/// Gossip rounds an empty node listens before it may found without having
/// heard from every seed. A reachable seed answers the first round trip (the
/// discovery loop sends it a gossip round of its own every interval), so the
/// period is paid only when a seed never answers (not started yet, gone, or
/// an address that is this node under another name). Ten rounds leave room
/// for lost datagrams and a peer that starts a little later: 5 s at the
/// default 500 ms interval, 1 s at the tests' 100 ms.
pub const MIN_DISCOVERY_ROUNDS: u32 = 10;
/// How often seed host names are resolved again while discovering.
const RESOLVE_EVERY: Duration = Duration::from_secs(1);

/// A wrong `--bootstrap-founders` (or `--bootstrap-expect`) setting.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FoundersError {
    #[error("--bootstrap-founders needs --bootstrap-expect (the number of founders)")]
    NoExpect,
    #[error(
        "--bootstrap-expect is {expect} but --bootstrap-founders names {founders}: \
         they must be equal (expect = the number of founders)"
    )]
    CountMismatch { expect: usize, founders: usize },
    #[error("--bootstrap-founders names {0:?} twice")]
    Repeated(String),
    #[error("--bootstrap-founders has an empty name or one longer than 256 bytes")]
    BadName,
}

/// Who may be in a founding set: anyone (no `--bootstrap-founders`), or only
/// the names listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Founders {
    only: Option<BTreeSet<String>>,
}

impl Founders {
    /// Anyone may found (the default).
    pub fn anyone() -> Founders {
        Founders::default()
    }

    /// Checks `names` (from the flag) against `expect`; an empty list means anyone.
    pub fn new(names: &[String], expect: Option<usize>) -> Result<Founders, FoundersError> {
        if names.is_empty() {
            return Ok(Founders::anyone());
        }
        let Some(expect) = expect else {
            return Err(FoundersError::NoExpect);
        };
        let mut only = BTreeSet::new();
        for n in names {
            if n.is_empty() || n.len() > 256 {
                return Err(FoundersError::BadName);
            }
            if !only.insert(n.clone()) {
                return Err(FoundersError::Repeated(n.clone()));
            }
        }
        if only.len() != expect {
            return Err(FoundersError::CountMismatch {
                expect,
                founders: only.len(),
            });
        }
        Ok(Founders { only: Some(only) })
    }

    /// Whether `name` may be in a founding set.
    pub fn allows(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(name))
    }
}

/// Why a founding set from the network is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSet {
    #[error("a founding set has 1 to {MAX_FOUNDERS} members, not {0}")]
    Size(usize),
    #[error("founding members must be sorted by name, without repeats")]
    Unsorted,
    #[error("a founding member name must be 1 to 256 bytes")]
    Name,
    #[error("invalid peer URL {0:?}")]
    PeerUrl(String),
    #[error("the coordinator must be the lowest name of the set")]
    Coordinator,
}

/// Why a call to another node's `Bootstrap` service got no answer.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// No connection to `url`.
    #[error("{url}: {cause}")]
    Connect {
        url: String,
        cause: tonic::transport::Error,
    },
    /// It answered with an error status.
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
}

impl CallError {
    fn failed(url: &str, status: Status) -> CallError {
        CallError::Failed {
            url: url.to_string(),
            message: status.message().to_string(),
        }
    }
}

/// A durable promise to found the cluster `members` with `coordinator`.
/// The coordinator's own record turns `committed` before it founds and is
/// kept afterwards, so it can answer `Outcome` after restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    pub coordinator: String,
    pub nonce: u64,
    /// (name, peer URL), sorted by name.
    pub members: Vec<(String, String)>,
    pub committed: bool,
}

impl Promise {
    pub fn load(dir: &Path) -> Result<Option<Promise>, StateFileError> {
        identity::read_json(dir, FILE)
    }

    fn store(&self, dir: &Path) -> Result<(), StateFileError> {
        identity::write_json(dir, FILE, self)
    }

    fn remove(dir: &Path) -> Result<(), StateFileError> {
        identity::remove_file(dir, FILE)
    }

    /// The Raft cluster id this set founds (as with `--initial-cluster`).
    pub fn cluster_id(&self, token: &str) -> u64 {
        identity::cluster_id(
            self.members
                .iter()
                .map(|(n, _)| identity::founding_member_id(n, token))
                .collect(),
            token,
        )
    }
}

/// Checks a founding set from the network: size, names, URLs, order, and
/// that the coordinator is its lowest name.
pub fn check_set(coordinator: &str, members: &[BootstrapMember]) -> Result<(), InvalidSet> {
    if members.is_empty() || members.len() > MAX_FOUNDERS {
        return Err(InvalidSet::Size(members.len()));
    }
    for w in members.windows(2) {
        if w[0].name >= w[1].name {
            return Err(InvalidSet::Unsorted);
        }
    }
    for m in members {
        if m.name.is_empty() || m.name.len() > 256 {
            return Err(InvalidSet::Name);
        }
        let ok = (m.peer_url.starts_with("http://") || m.peer_url.starts_with("https://"))
            && m.peer_url.len() <= 1024;
        if !ok {
            return Err(InvalidSet::PeerUrl(m.peer_url.clone()));
        }
    }
    if members[0].name != coordinator {
        return Err(InvalidSet::Coordinator);
    }
    Ok(())
}

#[derive(Default)]
struct Inner {
    promise: Option<Promise>,
    /// Why prepares are refused for good: a member already, or joining.
    closed: Option<String>,
}

/// The bootstrap record of this node, shared by the discovery loop and the
/// `Bootstrap` service (served before and after the node has an identity).
pub struct BootstrapState {
    data_dir: PathBuf,
    token: String,
    name: String,
    founders: Founders,
    inner: Mutex<Inner>,
}

impl BootstrapState {
    pub fn open(
        data_dir: &Path,
        token: &str,
        name: &str,
        founders: Founders,
    ) -> Result<Arc<Self>, StateFileError> {
        let promise = Promise::load(data_dir)?;
        Ok(Arc::new(BootstrapState {
            data_dir: data_dir.to_path_buf(),
            token: token.to_string(),
            name: name.to_string(),
            founders,
            inner: Mutex::new(Inner {
                promise,
                closed: None,
            }),
        }))
    }

    /// The node is a member now: refuse prepares from here on.
    pub async fn close(&self, why: String) {
        self.inner.lock().await.closed = Some(why);
    }

    pub async fn promise(&self) -> Option<Promise> {
        self.inner.lock().await.promise.clone()
    }

    /// Takes `p` as this node's promise if it holds none.
    async fn try_promise(&self, p: Promise) -> Result<bool, StateFileError> {
        let mut inner = self.inner.lock().await;
        if inner.promise.is_some() || inner.closed.is_some() {
            return Ok(false);
        }
        p.store(&self.data_dir)?;
        inner.promise = Some(p);
        Ok(true)
    }

    /// Drops the promise `nonce` (an abandoned attempt).
    async fn drop_promise(&self, nonce: u64) -> Result<(), StateFileError> {
        let mut inner = self.inner.lock().await;
        if inner.promise.as_ref().is_some_and(|p| p.nonce == nonce) {
            Promise::remove(&self.data_dir)?;
            inner.promise = None;
        }
        Ok(())
    }

    async fn mark_committed(&self, nonce: u64) -> Result<Option<Promise>, StateFileError> {
        let mut inner = self.inner.lock().await;
        match inner.promise.as_mut() {
            Some(p) if p.nonce == nonce => {
                let mut c = p.clone();
                c.committed = true;
                c.store(&self.data_dir)?;
                *p = c.clone();
                Ok(Some(c))
            }
            _ => Ok(None),
        }
    }

    /// Decides to join: from now on prepares are refused. False when a
    /// promise got in first.
    async fn close_for_join(&self) -> bool {
        let mut inner = self.inner.lock().await;
        if inner.promise.is_some() {
            return false;
        }
        inner.closed = Some("joining an existing cluster".into());
        true
    }

    /// After a failed join: the node may be asked to found or join again.
    pub async fn reopen(&self) {
        self.inner.lock().await.closed = None;
    }

    /// The refusal for a request carrying another cluster's token.
    fn foreign(&self, token: &str) -> Option<Response<BootstrapReply>> {
        (token != self.token).then(|| Self::reply(State::Refused, "another cluster token"))
    }

    fn reply(state: State, reason: impl Into<String>) -> Response<BootstrapReply> {
        Response::new(BootstrapReply {
            state: state as i32,
            reason: reason.into(),
        })
    }
}

#[tonic::async_trait]
impl Bootstrap for BootstrapState {
    async fn prepare(
        &self,
        request: Request<BootstrapPrepare>,
    ) -> Result<Response<BootstrapReply>, Status> {
        let req = request.into_inner();
        if let Some(refused) = self.foreign(&req.token) {
            return Ok(refused);
        }
        check_set(&req.coordinator, &req.members)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.nonce == 0 {
            return Err(Status::invalid_argument("the nonce must not be 0"));
        }
        if !req.members.iter().any(|m| m.name == self.name) {
            return Err(Status::invalid_argument(format!(
                "the founding set does not name {:?}",
                self.name
            )));
        }
        // The set comes from the network: with --bootstrap-founders this
        // node founds only with the listed names (itself included).
        if let Some(m) = req.members.iter().find(|m| !self.founders.allows(&m.name)) {
            return Ok(BootstrapState::reply(
                State::Refused,
                format!("{:?} is not among --bootstrap-founders", m.name),
            ));
        }
        let wanted = Promise {
            coordinator: req.coordinator.clone(),
            nonce: req.nonce,
            members: req
                .members
                .iter()
                .map(|m| (m.name.clone(), m.peer_url.clone()))
                .collect(),
            committed: false,
        };
        let mut inner = self.inner.lock().await;
        if let Some(why) = &inner.closed {
            return Ok(BootstrapState::reply(State::Refused, why.clone()));
        }
        match &inner.promise {
            Some(p) if p.coordinator == wanted.coordinator && p.nonce == wanted.nonce => {
                Ok(BootstrapState::reply(State::Promised, ""))
            }
            Some(p) => Ok(BootstrapState::reply(
                State::Refused,
                format!("promised to {}", p.coordinator),
            )),
            None => {
                wanted
                    .store(&self.data_dir)
                    .map_err(|e| Status::internal(e.to_string()))?;
                tracing::info!(
                    coordinator = %wanted.coordinator,
                    members = wanted.members.len(),
                    "promised to found a cluster"
                );
                inner.promise = Some(wanted);
                Ok(BootstrapState::reply(State::Promised, ""))
            }
        }
    }

    async fn outcome(
        &self,
        request: Request<BootstrapOutcome>,
    ) -> Result<Response<BootstrapReply>, Status> {
        let req = request.into_inner();
        if let Some(refused) = self.foreign(&req.token) {
            return Ok(refused);
        }
        let inner = self.inner.lock().await;
        match &inner.promise {
            Some(p) if p.coordinator == self.name && p.nonce == req.nonce => {
                if p.committed {
                    Ok(BootstrapState::reply(State::Committed, ""))
                } else {
                    Ok(BootstrapState::reply(State::Pending, ""))
                }
            }
            _ => Ok(BootstrapState::reply(
                State::Refused,
                "no such attempt: it was abandoned",
            )),
        }
    }
}

/// What an empty node does.
#[derive(Debug)]
pub enum Decision {
    /// Found a cluster with these (name, peer URL), like `--initial-cluster`.
    Found(Vec<(String, String)>),
    /// Join the cluster these members belong to (leader first).
    Join(Vec<PeerInfo>),
}

pub struct DiscoverConfig {
    /// Dials the other nodes' peer ports (peer TLS when it is on).
    pub dialer: crate::tls::Dialer,
    pub name: String,
    pub token: String,
    pub peer_url: String,
    pub expect: Option<usize>,
    pub founders: Founders,
    pub interval: Duration,
    /// `--gossip-seeds` as given (addresses or host:port names).
    pub seeds: Vec<String>,
    /// This node's own gossip addresses (a seed list may name it).
    pub own_addrs: Vec<SocketAddr>,
    /// Founding waits at most this long for every seed to be heard from.
    pub min_wait: Duration,
}

/// The founding set an empty node would propose: the `expect` lowest names
/// among the visible empty nodes with the same `expect` (itself included)
/// that `founders` allows. `None` when there are too few, or when this node
/// itself may not found.
pub fn founding_set(
    me: &str,
    my_peer_url: &str,
    expect: usize,
    founders: &Founders,
    peers: &[PeerInfo],
) -> Option<Vec<(String, String)>> {
    if !founders.allows(me) {
        return None;
    }
    let mut set: Vec<(String, String)> = peers
        .iter()
        .filter(|p| p.alive && !p.is_member() && p.expect == Some(expect))
        .filter(|p| founders.allows(&p.name))
        .map(|p| (p.name.clone(), p.peer_url.clone()))
        .chain(std::iter::once((me.to_string(), my_peer_url.to_string())))
        .collect();
    set.sort();
    set.dedup_by(|a, b| a.0 == b.0);
    if set.len() < expect {
        return None;
    }
    set.truncate(expect);
    Some(set)
}

/// Why an empty node that may found must not found yet.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// A member of the cluster is visible, alive or not (yet): a cluster
    /// exists, so this node joins it (once alive), never founds beside it.
    MemberVisible(String),
    /// Gossip has not heard from these seed addresses yet (empty: seeds were
    /// given but none resolved) and the minimum discovery period is not over.
    SeedsUnheard(Vec<SocketAddr>),
}

/// Whether an empty node must wait before it founds: see `Hold`. `seeds` are
/// the addresses the seed list resolved to (`seeds_given`: the list was not
/// empty), `own` this node's gossip addresses, `waited` the time since
/// discovery began.
pub fn founding_hold(
    seeds: &[SocketAddr],
    seeds_given: bool,
    own: &[SocketAddr],
    peers: &[PeerInfo],
    waited: Duration,
    min_wait: Duration,
) -> Option<Hold> {
    if let Some(m) = peers.iter().find(|p| p.is_member()) {
        return Some(Hold::MemberVisible(m.name.clone()));
    }
    if waited >= min_wait {
        return None;
    }
    let unheard = unheard_seeds(seeds, own, peers);
    if !unheard.is_empty() || (seeds_given && seeds.is_empty()) {
        return Some(Hold::SeedsUnheard(unheard));
    }
    None
}

/// The seed addresses, other than this node's own, that no known node
/// advertises as its gossip address.
fn unheard_seeds(seeds: &[SocketAddr], own: &[SocketAddr], peers: &[PeerInfo]) -> Vec<SocketAddr> {
    seeds
        .iter()
        .filter(|s| !own.contains(s) && !peers.iter().any(|p| p.gossip_addr == **s))
        .copied()
        .collect()
}

/// Members to join, the leader first, then by how much they applied.
pub fn join_targets(peers: &[PeerInfo]) -> Vec<PeerInfo> {
    let mut members: Vec<PeerInfo> = peers
        .iter()
        .filter(|p| p.alive && p.is_member())
        .cloned()
        .collect();
    // The cluster most of them belong to (there should be only one).
    let mut counts: std::collections::BTreeMap<u64, usize> = Default::default();
    for m in &members {
        *counts.entry(m.cluster_id).or_default() += 1;
    }
    if let Some((&cluster, _)) = counts.iter().max_by_key(|(_, n)| **n) {
        members.retain(|m| m.cluster_id == cluster);
    }
    members.sort_by_key(|m| (m.role != "leader", std::cmp::Reverse(m.applied)));
    members
}

async fn connect(
    dialer: &crate::tls::Dialer,
    url: &str,
) -> Result<BootstrapClient<tonic::transport::Channel>, CallError> {
    let unreachable = |cause| CallError::Connect {
        url: url.to_string(),
        cause,
    };
    let ep = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(unreachable)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3));
    Ok(BootstrapClient::new(
        dialer.connect(ep).await.map_err(unreachable)?,
    ))
}

/// Runs until this empty node knows what to do. Keeps its gossip keys
/// (`promised`) up to date on the way.
pub async fn discover(
    gossip: &Gossip,
    state: &BootstrapState,
    cfg: &DiscoverConfig,
) -> Result<Decision, StateFileError> {
    let began = Instant::now();
    let mut last_note = Instant::now();
    if cfg.expect.is_some() && !cfg.founders.allows(&cfg.name) {
        tracing::info!(
            name = %cfg.name,
            "not among --bootstrap-founders: this node joins a cluster, it never founds one"
        );
    }
    let mut resolved: Option<(Instant, Vec<SocketAddr>)> = None;
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(cfg.interval).await;
        }
        first = false;
        if resolved
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= RESOLVE_EVERY)
        {
            resolved = Some((Instant::now(), super::resolve_seeds(&cfg.seeds).await));
        }
        let seeds = resolved.as_ref().map(|(_, s)| s.as_slice()).unwrap_or(&[]);
        let peers = gossip.peers().await;
        // chitchat gossips with one random seed a round, and resolves seed
        // names once a minute: a seed not heard from yet gets a round of
        // its own now, so the first exchange with every seed is quick.
        for addr in unheard_seeds(seeds, &cfg.own_addrs, &peers) {
            gossip.gossip_with(addr);
        }
        let note = last_note.elapsed() > Duration::from_secs(10);
        if note {
            last_note = Instant::now();
        }
        match state.promise().await {
            Some(p) if p.committed => return Ok(Decision::Found(p.members)),
            Some(p) if p.coordinator == cfg.name => {
                if let Some(found) = coordinate(gossip, state, cfg, p).await? {
                    return Ok(Decision::Found(found));
                }
            }
            Some(p) => {
                gossip.set(&[(keys::PROMISED, p.coordinator.clone())]).await;
                // A member of the promised cluster proves the commit.
                let id = p.cluster_id(&cfg.token);
                if peers.iter().any(|x| x.cluster_id == id) {
                    state.mark_committed(p.nonce).await?;
                    return Ok(Decision::Found(p.members));
                }
                let url = p
                    .members
                    .iter()
                    .find(|(n, _)| *n == p.coordinator)
                    .map(|(_, u)| u.clone())
                    .unwrap_or_default();
                let asked = match connect(&cfg.dialer, &url).await {
                    Ok(mut c) => c
                        .outcome(BootstrapOutcome {
                            token: cfg.token.clone(),
                            coordinator: p.coordinator.clone(),
                            nonce: p.nonce,
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| CallError::failed(&url, s)),
                    Err(e) => Err(e),
                };
                match asked.map(|r| State::try_from(r.state).unwrap_or(State::Unknown)) {
                    Ok(State::Committed) => {
                        state.mark_committed(p.nonce).await?;
                        tracing::info!(coordinator = %p.coordinator, "founding the cluster");
                        return Ok(Decision::Found(p.members));
                    }
                    Ok(State::Refused) => {
                        tracing::info!(coordinator = %p.coordinator, "the founding attempt was abandoned");
                        state.drop_promise(p.nonce).await?;
                        gossip.delete(keys::PROMISED).await;
                    }
                    Ok(_) => {}
                    Err(e) if note => {
                        tracing::warn!(coordinator = %p.coordinator, error = %e, "waiting for the coordinator of the founding this node promised");
                    }
                    Err(_) => {}
                }
            }
            None => {
                let targets = join_targets(&peers);
                if !targets.is_empty() {
                    if state.close_for_join().await {
                        return Ok(Decision::Join(targets));
                    }
                    continue;
                }
                let Some(n) = cfg.expect else {
                    if note {
                        tracing::info!("no member of the cluster is visible yet; waiting (set --bootstrap-expect to found one)");
                    }
                    continue;
                };
                if !cfg.founders.allows(&cfg.name) {
                    if note {
                        tracing::info!("not among --bootstrap-founders: waiting for a member of the cluster to join");
                    }
                    continue;
                }
                let hold = founding_hold(
                    seeds,
                    !cfg.seeds.is_empty(),
                    &cfg.own_addrs,
                    &peers,
                    began.elapsed(),
                    cfg.min_wait,
                );
                match hold {
                    Some(Hold::MemberVisible(name)) => {
                        if note {
                            tracing::info!(member = %name, "a member of the cluster is visible but not alive yet; waiting to join it");
                        }
                        continue;
                    }
                    Some(Hold::SeedsUnheard(_)) => continue,
                    None => {}
                }
                match founding_set(&cfg.name, &cfg.peer_url, n, &cfg.founders, &peers) {
                    Some(set) if set[0].0 == cfg.name => {
                        let p = Promise {
                            coordinator: cfg.name.clone(),
                            nonce: identity::random_id(),
                            members: set,
                            committed: false,
                        };
                        if state.try_promise(p.clone()).await? {
                            if let Some(found) = coordinate(gossip, state, cfg, p).await? {
                                return Ok(Decision::Found(found));
                            }
                        }
                    }
                    _ => {
                        if note {
                            let seen = peers.iter().filter(|p| p.alive).count() + 1;
                            tracing::info!(seen, expect = n, "waiting for the founding members");
                        }
                    }
                }
            }
        }
    }
}

/// One founding attempt as coordinator; `p` is this node's durable promise.
/// Returns the set when committed; `None` after abandoning it.
async fn coordinate(
    gossip: &Gossip,
    state: &BootstrapState,
    cfg: &DiscoverConfig,
    p: Promise,
) -> Result<Option<Vec<(String, String)>>, StateFileError> {
    gossip.set(&[(keys::PROMISED, cfg.name.clone())]).await;
    let req = BootstrapPrepare {
        token: cfg.token.clone(),
        coordinator: cfg.name.clone(),
        nonce: p.nonce,
        members: p
            .members
            .iter()
            .map(|(name, peer_url)| BootstrapMember {
                name: name.clone(),
                peer_url: peer_url.clone(),
            })
            .collect(),
    };
    let mut pending: Vec<(String, String)> = p
        .members
        .iter()
        .filter(|(n, _)| *n != cfg.name)
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = None;
    while !pending.is_empty() && refused.is_none() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (name, url) in pending {
            let r = match connect(&cfg.dialer, &url).await {
                Ok(mut c) => c
                    .prepare(req.clone())
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| CallError::failed(&url, s)),
                Err(e) => Err(e),
            };
            match r {
                Ok(r) if r.state == State::Promised as i32 => {}
                Ok(r) => {
                    refused = Some(format!("{name}: {}", r.reason));
                    break;
                }
                Err(_) => still.push((name, url)),
            }
        }
        pending = still;
        if !pending.is_empty() && refused.is_none() {
            tokio::time::sleep(cfg.interval).await;
        }
    }
    if pending.is_empty() && refused.is_none() {
        if state.mark_committed(p.nonce).await?.is_some() {
            tracing::info!(
                members = p.members.len(),
                "every founding member promised: founding the cluster"
            );
            return Ok(Some(p.members));
        }
        return Ok(None);
    }
    tracing::info!(
        why = refused
            .as_deref()
            .unwrap_or("a founding member did not answer"),
        "abandoning this founding attempt"
    );
    state.drop_promise(p.nonce).await?;
    gossip.delete(keys::PROMISED).await;
    // A random pause so competing coordinators do not collide again.
    let pause = 300 + identity::random_id() % 1700;
    tokio::time::sleep(Duration::from_millis(pause)).await;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, expect: Option<usize>, cluster: u64, alive: bool) -> PeerInfo {
        PeerInfo {
            name: name.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            peer_url: format!("http://{name}:2380"),
            client_url: format!("http://{name}:2379"),
            member_id: if cluster != 0 { 5 } else { 0 },
            cluster_id: cluster,
            role: if cluster != 0 { "follower" } else { "empty" }.into(),
            applied: 0,
            ready: false,
            expect,
            promised: None,
            alive,
        }
    }

    #[test]
    fn the_set_is_the_lowest_names_with_the_same_expectation() {
        let peers = vec![
            peer("d", Some(3), 0, true),
            peer("b", Some(3), 0, true),
            peer("a", Some(5), 0, true), // another expectation: not a candidate
            peer("c", Some(3), 0, false), // dead: not a candidate
            peer("e", None, 0, true),    // may not found
        ];
        // Only b and d count besides itself: 3 of 4 is not enough.
        assert_eq!(
            founding_set("x", "http://x:2380", 4, &Founders::anyone(), &peers),
            None
        );
        let set = founding_set("c", "http://c:2380", 3, &Founders::anyone(), &peers).unwrap();
        let names: Vec<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
        let set = founding_set(
            "z",
            "http://z:2380",
            2,
            &Founders::anyone(),
            &[peer("y", Some(2), 0, true)],
        )
        .unwrap();
        assert_eq!(set[0].0, "y", "the coordinator is the lowest name");
    }

    fn names(set: &[(String, String)]) -> Vec<&str> {
        set.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn founders_are_checked_against_expect() {
        assert_eq!(Founders::new(&[], None), Ok(Founders::anyone()));
        assert_eq!(Founders::new(&[], Some(3)), Ok(Founders::anyone()));
        assert_eq!(
            Founders::new(&list(&["a"]), None),
            Err(FoundersError::NoExpect)
        );
        assert_eq!(
            Founders::new(&list(&["a", "b"]), Some(3)),
            Err(FoundersError::CountMismatch {
                expect: 3,
                founders: 2
            })
        );
        assert_eq!(
            Founders::new(&list(&["a", "a"]), Some(2)),
            Err(FoundersError::Repeated("a".into()))
        );
        assert_eq!(
            Founders::new(&list(&["a", ""]), Some(2)),
            Err(FoundersError::BadName)
        );
        let f = Founders::new(&list(&["c-0", "c-1"]), Some(2)).unwrap();
        assert!(f.allows("c-0") && f.allows("c-1") && !f.allows("c-2"));
        assert!(Founders::anyone().allows("anything"));
    }

    #[test]
    fn with_founders_only_listed_names_are_in_a_set() {
        let only = Founders::new(&list(&["c-0", "c-1", "c-2"]), Some(3)).unwrap();
        let peers = vec![
            peer("a", Some(3), 0, true), // lowest name, but not a founder
            peer("c-1", Some(3), 0, true),
            peer("c-2", Some(3), 0, true),
            peer("c-3", Some(3), 0, true),
        ];
        let set = founding_set("c-0", "http://c-0:2380", 3, &only, &peers).unwrap();
        assert_eq!(names(&set), ["c-0", "c-1", "c-2"]);
        // Without the list, `a` would coordinate a set with `c-3` in it.
        let any = founding_set("c-3", "http://c-3:2380", 3, &Founders::anyone(), &peers).unwrap();
        assert_eq!(names(&any), ["a", "c-1", "c-2"]);
        // A node not listed never founds, however many it sees.
        assert_eq!(
            founding_set("c-3", "http://c-3:2380", 3, &only, &peers),
            None
        );
        // An unlisted peer does not make up for a missing founder.
        let two = &peers[..2];
        assert_eq!(founding_set("c-0", "http://c-0:2380", 3, &only, two), None);
        // Scale-up: a new pod with --bootstrap-expect=1 --bootstrap-founders=c-0
        // alone (c-0 not visible yet) does not found.
        let first = Founders::new(&list(&["c-0"]), Some(1)).unwrap();
        assert_eq!(founding_set("c-1", "http://c-1:2380", 1, &first, &[]), None);
        let alone = founding_set("c-0", "http://c-0:2380", 1, &first, &[]).unwrap();
        assert_eq!(names(&alone), ["c-0"]);
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn at(mut p: PeerInfo, port: u16) -> PeerInfo {
        p.gossip_addr = addr(port);
        p
    }

    #[test]
    fn founding_waits_for_every_seed_or_the_minimum_period() {
        let min = Duration::from_secs(5);
        let early = Duration::from_millis(100);
        let seeds = [addr(1), addr(2), addr(3)];
        let me = [addr(1)];
        // Nothing heard yet (the first look, before any exchange): wait.
        assert_eq!(
            founding_hold(&seeds, true, &me, &[], early, min),
            Some(Hold::SeedsUnheard(vec![addr(2), addr(3)]))
        );
        // Heard from one of the two others (alive or not yet): still wait.
        let two = [at(peer("b", Some(1), 0, false), 2)];
        assert_eq!(
            founding_hold(&seeds, true, &me, &two, early, min),
            Some(Hold::SeedsUnheard(vec![addr(3)]))
        );
        // Heard from every seed but itself: no need to wait longer.
        let all = [
            at(peer("b", Some(1), 0, false), 2),
            at(peer("c", None, 0, true), 3),
        ];
        assert_eq!(founding_hold(&seeds, true, &me, &all, early, min), None);
        // A seed that never answers holds it only for the minimum period.
        assert_eq!(founding_hold(&seeds, true, &me, &two, min, min), None);
        // Seeds were given but none resolved (DNS not ready): wait.
        assert_eq!(
            founding_hold(&[], true, &me, &[], early, min),
            Some(Hold::SeedsUnheard(vec![]))
        );
        // No seeds at all: nobody to hear from.
        assert_eq!(founding_hold(&[], false, &me, &[], early, min), None);
        // Only itself as a seed (a one-pod headless Service): nobody else.
        assert_eq!(founding_hold(&me, true, &me, &[], early, min), None);
    }

    #[test]
    fn a_visible_member_holds_founding_for_good() {
        let min = Duration::from_secs(5);
        let seeds = [addr(1), addr(2)];
        // A member heard from but not alive yet (chitchat needs two
        // heartbeats): a cluster exists, so never found beside it.
        let member = [at(peer("c-1", None, 7, false), 2)];
        for waited in [Duration::ZERO, min * 100] {
            assert_eq!(
                founding_hold(&seeds, true, &[addr(1)], &member, waited, min),
                Some(Hold::MemberVisible("c-1".into()))
            );
        }
    }

    #[test]
    fn join_targets_prefer_the_leader_of_the_largest_cluster() {
        let mut l = peer("l", None, 7, true);
        l.role = "leader".into();
        let mut f = peer("f", None, 7, true);
        f.applied = 100;
        let stray = peer("s", None, 9, true);
        let targets = join_targets(&[f, stray, l, peer("e", Some(3), 0, true)]);
        let names: Vec<&str> = targets.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["l", "f"]);
    }

    #[test]
    fn sets_from_the_network_are_checked() {
        let m = |n: &str, u: &str| BootstrapMember {
            name: n.into(),
            peer_url: u.into(),
        };
        assert!(check_set("a", &[m("a", "http://a:1"), m("b", "http://b:1")]).is_ok());
        assert!(check_set("b", &[m("a", "http://a:1"), m("b", "http://b:1")]).is_err());
        assert!(check_set("a", &[m("b", "http://b:1"), m("a", "http://a:1")]).is_err());
        assert!(check_set("a", &[m("a", "http://a:1"), m("a", "http://a:2")]).is_err());
        assert!(check_set("a", &[m("a", "ftp://a:1")]).is_err());
        assert!(check_set("a", &[]).is_err());
        let many: Vec<BootstrapMember> = (0..=MAX_FOUNDERS)
            .map(|i| m(&format!("n{i:02}"), "http://a:1"))
            .collect();
        assert!(check_set("n00", &many).is_err());
    }

    fn prepare(coord: &str, nonce: u64, names: &[&str]) -> BootstrapPrepare {
        BootstrapPrepare {
            token: "t".into(),
            coordinator: coord.into(),
            nonce,
            members: names
                .iter()
                .map(|n| BootstrapMember {
                    name: n.to_string(),
                    peer_url: format!("http://{n}:2380"),
                })
                .collect(),
        }
    }

    fn state_of(r: Result<Response<BootstrapReply>, Status>) -> State {
        State::try_from(r.unwrap().into_inner().state).unwrap()
    }

    #[tokio::test]
    async fn a_node_holds_one_promise_durably_until_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let st = BootstrapState::open(dir.path(), "t", "b", Founders::anyone()).unwrap();
        let r = st
            .prepare(Request::new(prepare("a", 1, &["a", "b", "c"])))
            .await;
        assert_eq!(state_of(r), State::Promised);
        // The same prepare again is idempotent; another coordinator is refused.
        let r = st
            .prepare(Request::new(prepare("a", 1, &["a", "b", "c"])))
            .await;
        assert_eq!(state_of(r), State::Promised);
        let r = st
            .prepare(Request::new(prepare("b", 2, &["b", "c", "d"])))
            .await;
        assert_eq!(state_of(r), State::Refused);
        // The promise survives a restart.
        let again = BootstrapState::open(dir.path(), "t", "b", Founders::anyone()).unwrap();
        assert_eq!(again.promise().await.unwrap().nonce, 1);
        let r = again
            .prepare(Request::new(prepare("a", 9, &["a", "b"])))
            .await;
        assert_eq!(
            state_of(r),
            State::Refused,
            "a new nonce is another attempt"
        );
        again.drop_promise(1).await.unwrap();
        let r = again
            .prepare(Request::new(prepare("a", 9, &["a", "b"])))
            .await;
        assert_eq!(state_of(r), State::Promised);
        // Wrong token, a set without this node, a bad set: refused or invalid.
        let mut other = prepare("a", 3, &["a", "b"]);
        other.token = "u".into();
        assert_eq!(
            state_of(again.prepare(Request::new(other)).await),
            State::Refused
        );
        let err = again
            .prepare(Request::new(prepare("a", 3, &["a", "c"])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = again
            .prepare(Request::new(prepare("b", 3, &["a", "b"])))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_prepare_naming_an_unlisted_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let only = Founders::new(&list(&["a", "b"]), Some(2)).unwrap();
        let st = BootstrapState::open(dir.path(), "t", "b", only).unwrap();
        for set in [&["a", "b", "x"][..], &["b", "x"][..]] {
            let coord = set[0];
            let r = st.prepare(Request::new(prepare(coord, 1, set))).await;
            assert_eq!(state_of(r), State::Refused, "{set:?}");
            assert_eq!(st.promise().await, None, "no promise for {set:?}");
        }
        let r = st.prepare(Request::new(prepare("a", 1, &["a", "b"]))).await;
        assert_eq!(state_of(r), State::Promised);
        // A node that is not listed itself refuses every set naming it.
        let other = tempfile::tempdir().unwrap();
        let only = Founders::new(&list(&["a"]), Some(1)).unwrap();
        let x = BootstrapState::open(other.path(), "t", "x", only).unwrap();
        let r = x.prepare(Request::new(prepare("a", 2, &["a", "x"]))).await;
        assert_eq!(state_of(r), State::Refused);
        assert_eq!(x.promise().await, None);
    }

    #[tokio::test]
    async fn a_member_or_joiner_refuses_and_outcomes_follow_the_coordinators_record() {
        let dir = tempfile::tempdir().unwrap();
        let st = BootstrapState::open(dir.path(), "t", "a", Founders::anyone()).unwrap();
        let p = Promise {
            coordinator: "a".into(),
            nonce: 4,
            members: vec![("a".into(), "http://a:1".into())],
            committed: false,
        };
        assert!(st.try_promise(p).await.unwrap());
        let ask = |n: u64| BootstrapOutcome {
            token: "t".into(),
            coordinator: "a".into(),
            nonce: n,
        };
        assert_eq!(
            state_of(st.outcome(Request::new(ask(4))).await),
            State::Pending
        );
        assert_eq!(
            state_of(st.outcome(Request::new(ask(5))).await),
            State::Refused
        );
        st.mark_committed(4).await.unwrap();
        let reopened = BootstrapState::open(dir.path(), "t", "a", Founders::anyone()).unwrap();
        assert_eq!(
            state_of(reopened.outcome(Request::new(ask(4))).await),
            State::Committed,
            "the commit is durable"
        );
        let empty = tempfile::tempdir().unwrap();
        let joiner = BootstrapState::open(empty.path(), "t", "b", Founders::anyone()).unwrap();
        assert!(joiner.close_for_join().await);
        let r = joiner
            .prepare(Request::new(prepare("a", 1, &["a", "b"])))
            .await;
        assert_eq!(state_of(r), State::Refused);
    }
}
