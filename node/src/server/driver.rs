//! The one loop that joins the consensus core to I/O (the production twin of
//! `nod-sim`'s event loop): tick on a timer, step peer messages, take client
//! requests, then for each `Ready` send, persist (one batch, one fsync),
//! send what needed the fsync, apply to the MVCC store, answer the waiting
//! requests and publish watch events, and `advance`.
//!
//! The leader also keeps lease deadlines here: it renews them on keep-alive
//! and proposes a revoke through the log when one runs out, so expiry is
//! decided once and applied everywhere in the same order.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nod_raft::{
    ConfChange, ConfChangeKind, Entry, EntryPayload, Index, Message, NodeId, ProposeError, RawNode,
    Role, Storage, StorageWrite, Term,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::command::{self, MemberAttributes, Op};
use super::metrics::Metrics;
use super::watch_hub::WatchHub;
use crate::api::etcd::etcdserverpb::{
    DeleteRangeResponse, LeaseRevokeRequest, Member, PutResponse, TxnResponse,
};
use crate::storage::checkpoint::{self, CheckpointInfo};
use crate::storage::{KvError, KvStore, LogStore};
use crate::transport::nodserverpb::ProposeResult;
use crate::transport::peer::{ForwardOutcome, Transport, TransportEvent};

/// Why a request did not get a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("etcdserver: not leader")]
    NotLeader { leader: NodeId },
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// A forwarded write never reached the leader (no connection): retried.
    #[error("etcdserver: leader unreachable")]
    LeaderUnreachable,
    #[error("etcdserver: {0}")]
    Rejected(String),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The outcome is unknown (the proposal may have been applied): never retried.
    #[error("etcdserver: request timed out")]
    Timeout,
}

/// What applying a proposal produced, with the store revision after it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compacted,
    LeaseGranted,
    LeaseRevoked,
    Members(Vec<Member>),
    Nothing,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub outcome: Outcome,
    pub revision: i64,
    pub term: u64,
}

type Reply<T> = oneshot::Sender<Result<T, DriverError>>;

pub enum Request {
    Propose {
        op: Op,
        reply: Reply<Applied>,
    },
    ConfChange {
        change: ConfChange,
        reply: Reply<Applied>,
    },
    /// Commands a follower forwarded: appended if this node leads, answered
    /// with where each went; the follower waits for them itself.
    ProposeForwarded {
        commands: Vec<Vec<u8>>,
        reply: Reply<Vec<ProposeResult>>,
    },
    /// Answered once this node has applied everything committed before the
    /// request (ReadIndex, §8 / thesis §6.4).
    ReadIndex {
        reply: Reply<()>,
    },
    KeepAlive {
        id: i64,
        reply: Reply<i64>,
    },
    TimeToLive {
        id: i64,
        reply: Reply<(i64, i64)>,
    },
    TransferLeader {
        target: NodeId,
        reply: Reply<()>,
    },
    RaftStatus {
        reply: oneshot::Sender<nod_raft::Status>,
    },
    Contact {
        reply: oneshot::Sender<HashMap<u64, Instant>>,
    },
}

/// What the API reads without going through the loop.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    pub leader: u64,
    pub term: u64,
    pub role: Option<Role>,
    pub commit: u64,
    pub applied: u64,
    pub removed: bool,
    pub fatal: Option<String>,
}

pub struct Shared {
    pub member_id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub store: RwLock<KvStore>,
    pub hub: WatchHub,
    pub status: RwLock<NodeStatus>,
    pub metrics: Metrics,
}

impl Shared {
    pub fn status(&self) -> NodeStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub fn store(&self) -> std::sync::RwLockReadGuard<'_, KvStore> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }
    fn store_mut(&self) -> std::sync::RwLockWriteGuard<'_, KvStore> {
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Request>,
}

impl DriverHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }
    pub async fn propose(&self, op: Op) -> Result<Applied, DriverError> {
        self.call(|reply| Request::Propose { op, reply }).await
    }
    pub async fn propose_forwarded(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Result<Vec<ProposeResult>, DriverError> {
        self.call(|reply| Request::ProposeForwarded { commands, reply })
            .await
    }
    pub async fn conf_change(&self, change: ConfChange) -> Result<Applied, DriverError> {
        self.call(|reply| Request::ConfChange { change, reply })
            .await
    }
    pub async fn read_index(&self) -> Result<(), DriverError> {
        self.call(|reply| Request::ReadIndex { reply }).await
    }
    pub async fn keep_alive(&self, id: i64) -> Result<i64, DriverError> {
        self.call(|reply| Request::KeepAlive { id, reply }).await
    }
    /// (remaining seconds, granted TTL)
    pub async fn time_to_live(&self, id: i64) -> Result<(i64, i64), DriverError> {
        self.call(|reply| Request::TimeToLive { id, reply }).await
    }
    pub async fn transfer_leader(&self, target: NodeId) -> Result<(), DriverError> {
        self.call(|reply| Request::TransferLeader { target, reply })
            .await
    }
    pub async fn raft_status(&self) -> Result<nod_raft::Status, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::RaftStatus { reply })
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }
    /// When this node last received a Raft message from each member.
    pub async fn last_heard(&self) -> Result<HashMap<u64, Instant>, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Contact { reply })
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }
}

pub struct DriverConfig {
    pub tick: Duration,
    /// What this member publishes about itself once it is in the cluster.
    pub attributes: MemberAttributes,
    /// Where the peers are before the member table says (a joiner's view
    /// of the cluster, from the member it asked): without it a new member
    /// could not answer the leader that is about to send it a snapshot.
    pub seed_peers: HashMap<NodeId, String>,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// The data folder (state machine stores live in it) and the checkpoints' (`<data>/snap`).
    pub data_dir: PathBuf,
    pub snapshot_root: PathBuf,
}

pub struct Driver {
    node: RawNode<LogStore>,
    shared: Arc<Shared>,
    transport: Transport,
    config: DriverConfig,
    requests: mpsc::Receiver<Request>,
    inbox: mpsc::Receiver<Message>,
    transport_events: mpsc::Receiver<TransportEvent>,
    waiters: BTreeMap<Index, (Term, Reply<Applied>)>,
    unsent_reads: Vec<Reply<()>>,
    reads_in_flight: HashMap<Vec<u8>, Vec<Reply<()>>>,
    reads_ready: Vec<(Index, Reply<()>)>,
    read_seq: u64,
    lease_deadlines: HashMap<i64, Instant>,
    revoking: HashMap<i64, Instant>,
    was_leader: bool,
    last_published: Option<Instant>,
    ticks: u64,
    last_snapshot: u64,
    snapshot_in_flight: bool,
    /// The newest checkpoint; the log is compacted to the one before it, so
    /// a follower up to `snapshot_count` entries behind catches up from the
    /// log instead of a whole snapshot.
    newest_checkpoint: Option<CheckpointInfo>,
    snapshots_tx: mpsc::Sender<Result<CheckpointInfo, String>>,
    snapshots_rx: mpsc::Receiver<Result<CheckpointInfo, String>>,
    /// When a message last arrived from each member (member health: a
    /// timestamp, not the core's `recent_active` bit, which is cleared every
    /// election timeout and so reads false for a moment after each clear).
    last_heard: HashMap<u64, Instant>,
    /// Writes this follower handed to the leader, by command id: answered
    /// when this node applies the entry with its own origin and that id.
    forwarded: HashMap<u64, Reply<Applied>>,
    /// Where the leader put each forwarded write, by index: another term's
    /// entry at that index means ours is in no log (a retry is safe).
    forwarded_at: BTreeMap<Index, (Term, u64)>,
    /// Forwarded writes of this loop turn, sent as one batch.
    forward_queue: Vec<(u64, Vec<u8>)>,
    /// `Peer.Propose` calls awaiting the leader's answer, and that leader.
    forwards_in_flight: (NodeId, usize),
    /// Command ids start at a random point each run, so an entry a previous
    /// run forwarded is never taken for one of this run's.
    next_forward_id: u64,
    forward_tx: mpsc::Sender<ForwardOutcome>,
    forward_rx: mpsc::Receiver<ForwardOutcome>,
}

/// What a leader answers for a forwarded write it could not append because
/// it does not lead (`ProposeResult.leader` names who does, 0: nobody).
const FORWARD_NOT_LEADER: &str = "not leader";
/// `Peer.Propose` calls a follower keeps open to the leader; writes that
/// arrive meanwhile wait for an answer and go together in the next call.
const MAX_FORWARDS_IN_FLIGHT: usize = 2;

/// Hands an applied write's watch events to the hub, first reading the
/// previous values a watcher asked for that apply left out, and gives back
/// the write's outcome (a request error publishes nothing).
fn publish<A>(
    hub: &mut super::watch_hub::HubState,
    store: &KvStore,
    applied: Result<A, KvError>,
    split: impl FnOnce(A) -> (Vec<crate::api::etcd::mvccpb::Event>, Outcome),
) -> Result<Result<Outcome, DriverError>, String> {
    let (mut events, outcome) = match applied {
        Ok(a) => split(a),
        Err(e) => return Ok(Err(DriverError::from(e))),
    };
    let revision = store.current_revision();
    if hub.wants_prev(revision, &events) {
        store.fill_prev(&mut events).map_err(|e| e.to_string())?;
    }
    hub.publish(revision, &events);
    Ok(Ok(outcome))
}

fn forward_error(e: DriverError) -> ProposeResult {
    match e {
        DriverError::NotLeader { leader } => ProposeResult {
            error: FORWARD_NOT_LEADER.into(),
            leader: leader.0,
            ..Default::default()
        },
        DriverError::NoLeader => ProposeResult {
            error: FORWARD_NOT_LEADER.into(),
            ..Default::default()
        },
        other => ProposeResult {
            error: other.to_string(),
            ..Default::default()
        },
    }
}

/// A random starting point for this run's command ids.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

pub fn channel(depth: usize) -> (DriverHandle, mpsc::Receiver<Request>) {
    let (tx, rx) = mpsc::channel(depth);
    (DriverHandle { tx }, rx)
}

impl Driver {
    pub fn new(
        node: RawNode<LogStore>,
        shared: Arc<Shared>,
        transport: Transport,
        config: DriverConfig,
        requests: mpsc::Receiver<Request>,
        inbox: mpsc::Receiver<Message>,
        transport_events: mpsc::Receiver<TransportEvent>,
    ) -> Driver {
        let last_snapshot = node
            .storage()
            .snapshot()
            .map(|s| s.metadata.index.0)
            .unwrap_or(0);
        let (snapshots_tx, snapshots_rx) = mpsc::channel(1);
        let (forward_tx, forward_rx) = mpsc::channel(1024);
        Driver {
            forwarded: HashMap::new(),
            forwarded_at: BTreeMap::new(),
            forward_queue: Vec::new(),
            forwards_in_flight: (NodeId::NONE, 0),
            next_forward_id: random_u64(),
            forward_tx,
            forward_rx,
            last_snapshot,
            snapshot_in_flight: false,
            newest_checkpoint: None,
            snapshots_tx,
            snapshots_rx,
            last_heard: HashMap::new(),
            node,
            shared,
            transport,
            config,
            requests,
            inbox,
            transport_events,
            waiters: BTreeMap::new(),
            unsent_reads: Vec::new(),
            reads_in_flight: HashMap::new(),
            reads_ready: Vec::new(),
            read_seq: 0,
            lease_deadlines: HashMap::new(),
            revoking: HashMap::new(),
            was_leader: false,
            last_published: None,
            ticks: 0,
        }
    }

    /// Runs until `stop` turns true, this member is removed, or storage
    /// fails (then the error is in `NodeStatus::fatal` and returned).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), String> {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.refresh_peers();
        let result = loop {
            tokio::select! {
                _ = ticker.tick() => self.on_tick(),
                Some(m) = self.inbox.recv() => self.on_message(m),
                Some(r) = self.requests.recv() => self.on_request(r),
                Some(e) = self.transport_events.recv() => self.on_transport_event(e),
                Some(o) = self.forward_rx.recv() => self.on_forwarded(o),
                Some(s) = self.snapshots_rx.recv() => {
                    if let Err(e) = self.on_snapshot_taken(s) {
                        break Err(e);
                    }
                }
                _ = stop.changed() => if *stop.borrow() { break Ok(()) },
            }
            // Take whatever else is queued, so one Ready (one fsync) covers it all.
            for _ in 0..1024 {
                if let Ok(m) = self.inbox.try_recv() {
                    self.on_message(m);
                } else if let Ok(r) = self.requests.try_recv() {
                    self.on_request(r);
                } else {
                    break;
                }
            }
            self.send_reads();
            self.flush_forwards();
            if let Err(e) = self.process_ready() {
                break Err(e);
            }
            self.maybe_snapshot();
            if self.shared.status().removed {
                break Ok(());
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "stopping: storage failed");
            self.shared
                .status
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .fatal = Some(e.clone());
        }
        self.fail_all(DriverError::Stopped);
        result
    }

    fn fail_all(&mut self, e: DriverError) {
        self.fail_forwarded(e.clone());
        for (_, (_, r)) in std::mem::take(&mut self.waiters) {
            let _ = r.send(Err(e.clone()));
        }
        for r in std::mem::take(&mut self.unsent_reads) {
            let _ = r.send(Err(e.clone()));
        }
        for (_, rs) in std::mem::take(&mut self.reads_in_flight) {
            for r in rs {
                let _ = r.send(Err(e.clone()));
            }
        }
        for (_, r) in std::mem::take(&mut self.reads_ready) {
            let _ = r.send(Err(e.clone()));
        }
    }

    fn on_tick(&mut self) {
        self.node.tick();
        self.ticks += 1;
        if self.node.role() == Role::Leader {
            self.expire_leases();
        }
        if self.ticks.is_multiple_of(10) {
            // Requests whose callers gave up (timeout, disconnect) free their slots.
            self.waiters.retain(|_, (_, r)| !r.is_closed());
            self.forwarded.retain(|_, r| !r.is_closed());
            let forwarded = &self.forwarded;
            self.forwarded_at
                .retain(|_, (_, id)| forwarded.contains_key(id));
            self.reads_ready.retain(|(_, r)| !r.is_closed());
            self.reads_in_flight.retain(|_, rs| {
                rs.retain(|r| !r.is_closed());
                !rs.is_empty()
            });
            self.maybe_publish_attributes();
        }
    }

    fn on_message(&mut self, m: Message) {
        // Only members are tracked, so a peer cannot grow the map with made-up ids.
        if self.node.conf_state().contains(m.from) {
            self.last_heard.insert(m.from.0, Instant::now());
        }
        if let Err(e) = self.node.step(m) {
            tracing::debug!(error = %e, "dropped a peer message");
        }
    }

    fn on_transport_event(&mut self, e: TransportEvent) {
        match e {
            TransportEvent::Unreachable(id) => self.node.report_unreachable(id),
            TransportEvent::Snapshot(id, delivered) => self.node.report_snapshot(id, delivered),
            TransportEvent::Removed => {
                tracing::warn!("a peer says this member was removed from the cluster; stopping");
                self.shared
                    .status
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .removed = true;
            }
        }
    }

    fn not_leader(&self) -> DriverError {
        match self.node.leader() {
            NodeId::NONE => DriverError::NoLeader,
            l => DriverError::NotLeader { leader: l },
        }
    }

    fn on_request(&mut self, r: Request) {
        match r {
            Request::Propose { op, reply } => {
                self.shared.metrics.proposals_pending.inc();
                let leader = self.node.leader();
                if self.node.role() != Role::Leader && !leader.is_none() {
                    // Hand it to the leader with the rest of this turn's writes.
                    self.next_forward_id = self.next_forward_id.wrapping_add(1).max(1);
                    let id = self.next_forward_id;
                    let data = command::encode(&command::Command {
                        id,
                        origin: self.shared.member_id,
                        op: Some(op),
                    });
                    self.forward_queue.push((id, data));
                    self.forwarded.insert(id, reply);
                    return;
                }
                let data = command::encode(&command::Command {
                    id: 0,
                    origin: 0,
                    op: Some(op),
                });
                self.propose_here(data, reply);
            }
            Request::ConfChange { change, reply } => match self.node.propose_conf_change(change) {
                Ok(p) => {
                    self.shared.metrics.proposals_pending.inc();
                    self.waiters.insert(p.index, (p.term, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(self.propose_error(e)));
                }
            },
            Request::ProposeForwarded { commands, reply } => {
                let results = commands
                    .into_iter()
                    .map(|c| match self.node.propose(c) {
                        Ok(p) => ProposeResult {
                            index: p.index.0,
                            term: p.term.0,
                            ..Default::default()
                        },
                        Err(e) => forward_error(self.propose_error(e)),
                    })
                    .collect();
                let _ = reply.send(Ok(results));
            }
            Request::ReadIndex { reply } => self.unsent_reads.push(reply),
            Request::KeepAlive { id, reply } => {
                let result = if self.node.role() != Role::Leader {
                    Err(self.not_leader())
                } else {
                    let now = Instant::now();
                    let expired = self.revoking.contains_key(&id)
                        || self.lease_deadlines.get(&id).is_some_and(|d| *d <= now);
                    match self.shared.store().leases().get(&id) {
                        // A lease past its deadline is as good as revoked (etcd's Renew).
                        Some(_) if expired => Err(DriverError::Kv(KvError::LeaseNotFound)),
                        None => Err(DriverError::Kv(KvError::LeaseNotFound)),
                        Some(rec) => {
                            self.lease_deadlines
                                .insert(id, now + Duration::from_secs(rec.ttl.max(0) as u64));
                            Ok(rec.ttl)
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Request::TimeToLive { id, reply } => {
                let result = if self.node.role() != Role::Leader {
                    Err(self.not_leader())
                } else {
                    match self.shared.store().leases().get(&id) {
                        None => Err(DriverError::Kv(KvError::LeaseNotFound)),
                        Some(rec) => {
                            let left = self
                                .lease_deadlines
                                .get(&id)
                                .map(|d| d.saturating_duration_since(Instant::now()))
                                .unwrap_or_default();
                            // etcd rounds the remaining time up to whole seconds.
                            let secs = left.as_millis().div_ceil(1000) as i64;
                            Ok((secs, rec.ttl))
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Request::TransferLeader { target, reply } => {
                let result = self
                    .node
                    .transfer_leader(target)
                    .map_err(|e| self.propose_error(e));
                let _ = reply.send(result);
            }
            Request::RaftStatus { reply } => {
                let _ = reply.send(self.node.status());
            }
            Request::Contact { reply } => {
                let conf = self.node.conf_state();
                self.last_heard.retain(|id, _| conf.contains(NodeId(*id)));
                let _ = reply.send(self.last_heard.clone());
            }
        }
    }

    /// Appends a command on this node (the leader); `reply` waits for its entry.
    fn propose_here(&mut self, data: Vec<u8>, reply: Reply<Applied>) {
        match self.node.propose(data) {
            Ok(p) => {
                self.waiters.insert(p.index, (p.term, reply));
            }
            Err(e) => {
                self.shared.metrics.proposals_pending.dec();
                self.shared.metrics.proposals_failed.inc();
                let _ = reply.send(Err(self.propose_error(e)));
            }
        }
    }

    /// Sends this turn's forwarded writes to the leader (or, if this node
    /// has just become the leader, appends them here).
    fn flush_forwards(&mut self) {
        if self.forward_queue.is_empty() {
            return;
        }
        if self.node.role() == Role::Leader {
            for (id, data) in std::mem::take(&mut self.forward_queue) {
                let Some(reply) = self.forwarded.remove(&id) else {
                    continue;
                };
                self.propose_here(data, reply);
            }
            return;
        }
        let leader = self.node.leader();
        if self.forwards_in_flight.0 != leader {
            self.forwards_in_flight = (leader, 0);
        }
        if self.forwards_in_flight.1 >= MAX_FORWARDS_IN_FLIGHT {
            // Sent when an answer comes back, with whatever else queued
            // meanwhile: under load, fewer and larger calls.
            return;
        }
        let batch = std::mem::take(&mut self.forward_queue);
        let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
        let sent = if leader.is_none() {
            None
        } else {
            self.transport
                .forward_proposals(leader, self.shared.member_id, batch, &self.forward_tx)
        };
        if let Some(calls) = sent {
            self.forwards_in_flight.1 += calls;
        } else {
            let e = self.not_leader();
            for id in ids {
                self.finish_forward(id, Err(e.clone()));
            }
        }
    }

    /// The leader's answer to a batch of forwarded writes.
    fn on_forwarded(&mut self, o: ForwardOutcome) {
        if self.forwards_in_flight.0 == o.leader {
            self.forwards_in_flight.1 = self.forwards_in_flight.1.saturating_sub(1);
        }
        let results = match o.result {
            Ok(r) => r,
            Err(status) => {
                let e = match status.code() {
                    // A leader without the call (an older version): the
                    // client API path forwards instead; nothing was appended.
                    tonic::Code::Unimplemented => match self.node.leader() {
                        NodeId::NONE => DriverError::NoLeader,
                        l => DriverError::NotLeader { leader: l },
                    },
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
                        DriverError::Rejected(status.message().to_string())
                    }
                    // No connection to the leader (it died, a new one is not
                    // elected yet): nothing was sent, so `route` tries again.
                    _ if crate::client::not_sent(&status) => DriverError::LeaderUnreachable,
                    // The call may have reached the leader: the outcome is unknown.
                    _ => DriverError::Timeout,
                };
                for id in o.ids {
                    self.finish_forward(id, Err(e.clone()));
                }
                return;
            }
        };
        let applied = self.shared.store().applied().0;
        let mut results = results.into_iter();
        for id in o.ids {
            let Some(r) = results.next() else {
                self.finish_forward(id, Err(DriverError::Timeout));
                continue;
            };
            if !self.forwarded.contains_key(&id) {
                continue; // applied already, or its caller gave up
            }
            if !r.error.is_empty() {
                let e = match (r.error.as_str(), r.leader) {
                    (FORWARD_NOT_LEADER, 0) => DriverError::NoLeader,
                    (FORWARD_NOT_LEADER, l) => DriverError::NotLeader { leader: NodeId(l) },
                    (other, _) => DriverError::Rejected(other.to_string()),
                };
                self.finish_forward(id, Err(e));
                continue;
            }
            let (index, term) = (Index(r.index), Term(r.term));
            if index.0 > applied {
                self.forwarded_at.insert(index, (term, id));
                continue;
            }
            // Applied here before the answer came, and not found by its id:
            // another entry holds that index, unless a snapshot covered it.
            let e = match self.node.storage().term(index) {
                Ok(t) if t != term => DriverError::LeaderChanged,
                _ => DriverError::Timeout,
            };
            self.finish_forward(id, Err(e));
        }
    }

    fn finish_forward(&mut self, id: u64, result: Result<Applied, DriverError>) {
        if let Some(reply) = self.forwarded.remove(&id) {
            self.shared.metrics.proposals_pending.dec();
            match &result {
                Ok(_) => self.shared.metrics.proposals_committed.inc(),
                Err(_) => self.shared.metrics.proposals_failed.inc(),
            }
            let _ = reply.send(result);
        }
    }

    fn fail_forwarded(&mut self, e: DriverError) {
        self.forwarded_at.clear();
        let ids: Vec<u64> = self.forwarded.keys().copied().collect();
        for id in ids {
            self.finish_forward(id, Err(e.clone()));
        }
    }

    fn propose_error(&self, e: ProposeError) -> DriverError {
        match e {
            ProposeError::NotLeader { leader_hint } if leader_hint.is_none() => {
                DriverError::NoLeader
            }
            ProposeError::NotLeader { leader_hint } => DriverError::NotLeader {
                leader: leader_hint,
            },
            other => DriverError::Rejected(other.to_string()),
        }
    }

    /// One ReadIndex round for every read queued since the last one.
    fn send_reads(&mut self) {
        if self.unsent_reads.is_empty() {
            return;
        }
        self.read_seq += 1;
        let ctx = self.read_seq.to_be_bytes().to_vec();
        match self.node.request_read(ctx.clone()) {
            Ok(()) => {
                let readers = std::mem::take(&mut self.unsent_reads);
                self.reads_in_flight.insert(ctx, readers);
            }
            Err(e) => {
                let err = self.propose_error(e);
                for r in self.unsent_reads.drain(..) {
                    let _ = r.send(Err(err.clone()));
                }
            }
        }
    }

    fn process_ready(&mut self) -> Result<(), String> {
        while self.node.has_ready() {
            let mut rd = self.node.ready().map_err(|e| e.to_string())?;
            if let Some(ss) = &rd.soft_state {
                self.on_soft_state(ss.leader, ss.role);
            }
            self.transport.send(std::mem::take(&mut rd.messages));
            let write = rd.take_log_write();
            if !write.is_empty() {
                let started = Instant::now();
                self.node
                    .storage_mut()
                    .write(&write)
                    .map_err(|e| e.to_string())?;
                if write.sync {
                    self.shared
                        .metrics
                        .wal_fsync_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            self.transport
                .send(std::mem::take(&mut rd.persisted_messages));
            if let Some(snap) = &rd.snapshot {
                self.install_snapshot(snap)?;
            }
            let committed = std::mem::take(&mut rd.committed_entries);
            if !committed.is_empty() {
                let started = Instant::now();
                self.apply_committed(committed)?;
                self.shared
                    .metrics
                    .backend_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            for rs in std::mem::take(&mut rd.read_states) {
                if let Some(readers) = self.reads_in_flight.remove(&rs.context) {
                    self.reads_ready
                        .extend(readers.into_iter().map(|r| (rs.index, r)));
                }
            }
            self.serve_reads();
            self.node.advance();
            let st = self.node.status();
            let mut status = self
                .shared
                .status
                .write()
                .unwrap_or_else(|p| p.into_inner());
            status.term = st.term.0;
            status.commit = st.commit.0;
            status.applied = self.shared.store().applied().0;
            self.shared.metrics.term.set(st.term.0 as i64);
            self.shared.metrics.committed_index.set(st.commit.0 as i64);
            self.shared.metrics.applied_index.set(status.applied as i64);
        }
        Ok(())
    }

    fn serve_reads(&mut self) {
        let applied = Index(self.shared.store().applied().0);
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_ready)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.reads_ready = later;
        for (_, r) in now {
            let _ = r.send(Ok(()));
        }
    }

    fn on_soft_state(&mut self, leader: NodeId, role: Role) {
        let before = self.shared.status().leader;
        {
            let mut status = self
                .shared
                .status
                .write()
                .unwrap_or_else(|p| p.into_inner());
            status.leader = leader.0;
            status.role = Some(role);
        }
        self.shared
            .metrics
            .has_leader
            .set(i64::from(!leader.is_none()));
        if before != leader.0 && !leader.is_none() {
            self.shared.metrics.leader_changes.inc();
            tracing::info!(
                leader = leader.0,
                term = self.node.term().0,
                "leader elected"
            );
        }
        self.shared
            .metrics
            .is_leader
            .set(i64::from(role == Role::Leader));
        let is_leader = role == Role::Leader;
        if is_leader && !self.was_leader {
            // A new leader gives every lease a full TTL from now (etcd's Promote).
            let now = Instant::now();
            self.lease_deadlines = self
                .shared
                .store()
                .leases()
                .iter()
                .map(|(id, rec)| (*id, now + Duration::from_secs(rec.ttl.max(0) as u64)))
                .collect();
        }
        if !is_leader && self.was_leader {
            self.lease_deadlines.clear();
            self.revoking.clear();
        }
        self.was_leader = is_leader;
        if leader.is_none() || before != leader.0 {
            // ReadIndex requests sent to the old leader will not be answered.
            for (_, rs) in std::mem::take(&mut self.reads_in_flight) {
                for r in rs {
                    let _ = r.send(Err(DriverError::LeaderChanged));
                }
            }
        }
    }

    fn expire_leases(&mut self) {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .lease_deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .filter(|id| {
                self.revoking
                    .get(id)
                    .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(3))
            })
            .take(64)
            .collect();
        for id in expired {
            let data = command::encode(&command::Command {
                id: 0,
                origin: 0,
                op: Some(Op::LeaseRevoke(LeaseRevokeRequest { id })),
            });
            if self.node.propose(data).is_ok() {
                tracing::debug!(lease = id, "lease expired; revoking");
                self.revoking.insert(id, now);
            }
        }
    }

    /// Publishes this member's name and client URLs through the log when the
    /// member table does not show them yet (as etcd's publish does).
    fn maybe_publish_attributes(&mut self) {
        if self.node.leader().is_none() {
            return;
        }
        if self
            .last_published
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        let mine = &self.config.attributes;
        let current = self.shared.store().member(self.shared.member_id).cloned();
        let Some(current) = current else { return };
        if current.name == mine.name && current.client_ur_ls == mine.client_urls {
            return;
        }
        let data = command::encode(&command::Command {
            id: 0,
            origin: 0,
            op: Some(Op::MemberAttributes(mine.clone())),
        });
        match self.node.propose(data) {
            Ok(_) => self.last_published = Some(Instant::now()),
            Err(ProposeError::NotLeader { leader_hint }) if !leader_hint.is_none() => {
                // Only the leader proposes; ask it through the forwarding path.
                self.last_published = Some(Instant::now());
                self.transport.forward_attributes(leader_hint, mine.clone());
            }
            Err(_) => {}
        }
    }

    /// Takes a checkpoint in the background once `snapshot_count` entries
    /// were applied since the last one.
    fn maybe_snapshot(&mut self) {
        let applied = self.shared.store().applied().0;
        if self.snapshot_in_flight
            || applied < self.last_snapshot + self.config.snapshot_count.max(1)
        {
            return;
        }
        self.snapshot_in_flight = true;
        let db = self.shared.store().db_handle();
        let root = self.config.snapshot_root.clone();
        let tx = self.snapshots_tx.clone();
        let started = Instant::now();
        let seconds = self.shared.metrics.snapshot_seconds.clone();
        tokio::task::spawn_blocking(move || {
            let r = checkpoint::create(&db, &root).map_err(|e| e.to_string());
            seconds.observe(started.elapsed().as_secs_f64());
            let _ = tx.blocking_send(r);
        });
    }

    /// Records a finished checkpoint as the Raft snapshot and compacts the
    /// log behind it.
    fn on_snapshot_taken(&mut self, r: Result<CheckpointInfo, String>) -> Result<(), String> {
        self.snapshot_in_flight = false;
        let info = match r {
            Ok(i) => i,
            Err(e) => {
                // A failed checkpoint leaves the log whole; the next one retries.
                tracing::error!(error = %e, "taking a snapshot failed");
                self.last_snapshot = self.shared.store().applied().0;
                return Ok(());
            }
        };
        self.last_snapshot = info.index;
        let Some(info) = self.newest_checkpoint.replace(info) else {
            return Ok(());
        };
        let current = self.node.storage().snapshot().map_err(|e| e.to_string())?;
        if info.index <= current.metadata.index.0 {
            return Ok(());
        }
        let conf_state = nod_raft::ConfState {
            voters: info
                .members
                .iter()
                .filter(|m| !m.is_learner)
                .map(|m| NodeId(m.id))
                .collect(),
            learners: info
                .members
                .iter()
                .filter(|m| m.is_learner)
                .map(|m| NodeId(m.id))
                .collect(),
        };
        let data = command::SnapshotData {
            members: Vec::new(),
            checkpoint_index: info.index,
            checkpoint_bytes: info.bytes,
            checkpoint_crc32: info.crc32,
        };
        let snapshot = nod_raft::Snapshot {
            metadata: nod_raft::SnapshotMetadata {
                index: Index(info.index),
                term: Term(info.term),
                conf_state,
            },
            data: prost::Message::encode_to_vec(&data),
        };
        self.node
            .storage_mut()
            .compact(snapshot)
            .map_err(|e| e.to_string())?;
        self.shared.metrics.snapshots.inc();
        // Keep the newest checkpoint and the one the log now starts from.
        checkpoint::prune(&self.config.snapshot_root, 2);
        tracing::info!(
            index = info.index,
            bytes = info.bytes,
            "took a snapshot and compacted the log"
        );
        Ok(())
    }

    fn install_snapshot(&mut self, snap: &nod_raft::Snapshot) -> Result<(), String> {
        let data = command::decode_snapshot_data(&snap.data)
            .map_err(|e| format!("snapshot at {}: {e}", snap.metadata.index))?;
        let applied = (snap.metadata.index.0, snap.metadata.term.0);
        // Proposals the snapshot covers may or may not be in it: unknown, not retried.
        self.fail_waiters_below(Index(applied.0 + 1), DriverError::Timeout);
        self.fail_forwarded(DriverError::Timeout);
        if data.checkpoint_index != 0 {
            let dir = checkpoint::dir_for(&self.config.snapshot_root, applied.0, applied.1);
            let hub = self.shared.hub.clone();
            let mut hub = hub.lock();
            let shared = self.shared.clone();
            let mut store = shared.store_mut();
            let path = checkpoint::install(&self.config.data_dir, &dir, applied.0)
                .map_err(|e| e.to_string())?;
            let fresh = KvStore::open(&path).map_err(|e| e.to_string())?;
            if fresh.applied() != applied {
                return Err(format!(
                    "installed snapshot holds applied {:?}, expected {applied:?}",
                    fresh.applied()
                ));
            }
            drop(std::mem::replace(&mut *store, fresh));
            checkpoint::remove_stale(&self.config.data_dir).map_err(|e| e.to_string())?;
            // Watchers cannot be caught up across a snapshot: end them, as
            // etcd ends watchers whose revisions were compacted.
            hub.cancel_all("etcdserver: member restored from a snapshot; watch again");
            drop(store);
            drop(hub);
            self.last_snapshot = applied.0;
            self.refresh_peers();
            tracing::info!(index = applied.0, "installed a snapshot");
            return Ok(());
        }
        let hub = self.shared.hub.clone();
        let _hub = hub.lock();
        let shared = self.shared.clone();
        let mut store = shared.store_mut();
        for m in data.members {
            let member = Member {
                id: m.id,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: snap.metadata.conf_state.learners.contains(&NodeId(m.id)),
            };
            store
                .apply_member(member.id, Some(member), applied)
                .map_err(|e| e.to_string())?;
        }
        store.apply_noop(applied).map_err(|e| e.to_string())?;
        drop(store);
        self.refresh_peers();
        Ok(())
    }

    fn refresh_peers(&mut self) {
        let me = self.shared.member_id;
        let store = self.shared.store();
        // The seed list (the members a joiner was told of) stays until the
        // applied state knows better: a joiner that installs an old
        // snapshot (say, from a leader that itself joined after the
        // founding) learns from it only the founders, and must still be
        // able to answer the leader it was told of, or it never acks,
        // never learns the commit index and never catches up.
        let mut peers: HashMap<NodeId, String> = self
            .config
            .seed_peers
            .iter()
            .filter(|(id, _)| !store.is_removed(id.0))
            .map(|(id, u)| (*id, u.clone()))
            .collect();
        for m in store.members() {
            if let Some(u) = m.peer_ur_ls.first() {
                peers.insert(NodeId(m.id), u.clone());
            }
        }
        drop(store);
        peers.remove(&NodeId(me));
        self.transport.set_peers(peers);
    }

    fn fail_waiters_below(&mut self, index: Index, e: DriverError) {
        while let Some((i, _)) = self.waiters.first_key_value() {
            if *i >= index {
                break;
            }
            if let Some((_, (_, reply))) = self.waiters.pop_first() {
                self.shared.metrics.proposals_failed.inc();
                self.shared.metrics.proposals_pending.dec();
                let _ = reply.send(Err(e.clone()));
            }
        }
    }

    /// Applies a Ready's committed entries. Runs of ordinary entries are
    /// applied under one hold of the watch hub and the store and written to
    /// RocksDB as one batch; their callers are answered after that write.
    /// A membership change ends a run (it updates the peers, which reads
    /// the store).
    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let shared = self.shared.clone();
        let hub = shared.hub.clone();
        let mut held: Option<(
            std::sync::MutexGuard<'_, super::watch_hub::HubState>,
            std::sync::RwLockWriteGuard<'_, KvStore>,
        )> = None;
        let mut answers = Vec::new();
        for entry in entries {
            if matches!(entry.payload, EntryPayload::ConfChange(_)) {
                if let Some((h, mut store)) = held.take() {
                    store.end_batch().map_err(|e| e.to_string())?;
                    drop(store);
                    drop(h);
                }
                self.answer(std::mem::take(&mut answers));
                self.apply_conf_entry(entry)?;
                continue;
            }
            let (h, store) = held.get_or_insert_with(|| {
                let h = hub.lock();
                let mut store = shared.store_mut();
                store.begin_batch();
                (h, store)
            });
            if let Some(a) = self.apply_entry(store, h, entry)? {
                answers.push(a);
            }
        }
        if let Some((h, mut store)) = held.take() {
            store.end_batch().map_err(|e| e.to_string())?;
            drop(store);
            drop(h);
        }
        self.answer(answers);
        Ok(())
    }

    fn answer(&self, answers: Vec<(Reply<Applied>, Result<Applied, DriverError>)>) {
        for (reply, result) in answers {
            self.shared.metrics.proposals_pending.dec();
            match &result {
                Ok(_) => self.shared.metrics.proposals_committed.inc(),
                Err(_) => self.shared.metrics.proposals_failed.inc(),
            }
            let _ = reply.send(result);
        }
    }

    /// The request waiting for `entry` on this node, if any; fails the ones
    /// the entry shows were lost or passed over.
    fn take_waiter(&mut self, entry: &Entry) -> Option<Reply<Applied>> {
        // Waiters below this entry were passed over (a snapshot covered
        // them): their outcome is unknown, so they must not be retried.
        self.fail_waiters_below(entry.index, DriverError::Timeout);
        // Forwarded writes the leader put below this entry were skipped.
        while let Some((i, _)) = self.forwarded_at.first_key_value() {
            if *i >= entry.index {
                break;
            }
            if let Some((_, (_, id))) = self.forwarded_at.pop_first() {
                self.finish_forward(id, Err(DriverError::Timeout));
            }
        }
        if let Some((term, id)) = self.forwarded_at.remove(&entry.index) {
            if term != entry.term {
                self.finish_forward(id, Err(DriverError::LeaderChanged));
            }
        }
        match self.waiters.first_key_value() {
            Some((i, _)) if *i == entry.index => self.waiters.pop_first(),
            _ => None,
        }
        .and_then(|(_, (term, reply))| {
            if term == entry.term {
                Some(reply)
            } else {
                // Another leader's entry took our index: ours is in no log
                // (an entry is its index and term), so a retry is safe.
                self.shared.metrics.proposals_failed.inc();
                self.shared.metrics.proposals_pending.dec();
                let _ = reply.send(Err(DriverError::LeaderChanged));
                None
            }
        })
    }

    /// Applies an empty or ordinary entry; returns the answer for whoever waits.
    #[allow(clippy::type_complexity)]
    fn apply_entry(
        &mut self,
        store: &mut KvStore,
        hub: &mut super::watch_hub::HubState,
        entry: Entry,
    ) -> Result<Option<(Reply<Applied>, Result<Applied, DriverError>)>, String> {
        let applied = (entry.index.0, entry.term.0);
        let mut waiter = self.take_waiter(&entry);
        let fatal = |e: KvError| e.to_string();
        let result: Result<Outcome, DriverError> = match entry.payload {
            EntryPayload::Normal(data) => match command::decode(&data) {
                Err(e) => {
                    tracing::warn!(index = entry.index.0, error = %e, "applying an undecodable entry as a no-op");
                    store.apply_noop(applied).map_err(fatal)?;
                    Err(DriverError::Rejected(e.to_string()))
                }
                Ok((id, origin, op)) => {
                    if waiter.is_none() && id != 0 && origin == self.shared.member_id {
                        waiter = self.forwarded.remove(&id);
                    }
                    self.apply_op(store, hub, op, applied)?
                }
            },
            // Empty, or a membership change handed here by mistake.
            _ => {
                store.apply_noop(applied).map_err(fatal)?;
                Ok(Outcome::Nothing)
            }
        };
        let revision = store.current_revision();
        Ok(waiter.map(|reply| {
            (
                reply,
                result.map(|outcome| Applied {
                    outcome,
                    revision,
                    term: entry.term.0,
                }),
            )
        }))
    }

    fn apply_conf_entry(&mut self, entry: Entry) -> Result<(), String> {
        let applied = (entry.index.0, entry.term.0);
        let waiter = self.take_waiter(&entry);
        let EntryPayload::ConfChange(cc) = &entry.payload else {
            return Err(format!(
                "entry {} is not a membership change",
                entry.index.0
            ));
        };
        let hub = self.shared.hub.clone();
        let hub = hub.lock();
        let shared = self.shared.clone();
        let mut store = shared.store_mut();
        let r = self.apply_conf_change(&mut store, cc, applied)?;
        drop(store);
        drop(hub);
        self.refresh_peers();
        if cc.kind == ConfChangeKind::Remove && cc.node.0 == self.shared.member_id {
            tracing::warn!("this member was removed from the cluster; stopping");
            self.shared
                .status
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .removed = true;
        }
        if let Some(reply) = waiter {
            let revision = self.shared.store().current_revision();
            self.answer(vec![(
                reply,
                r.map(|outcome| Applied {
                    outcome,
                    revision,
                    term: entry.term.0,
                }),
            )]);
        }
        Ok(())
    }

    fn apply_op(
        &mut self,
        store: &mut KvStore,
        hub: &mut super::watch_hub::HubState,
        op: Op,
        applied: (u64, u64),
    ) -> Result<Result<Outcome, DriverError>, String> {
        let f = |e: KvError| e.to_string();
        Ok(match op {
            Op::Put(p) => {
                let r = store.apply_put(&p, applied).map_err(f)?;
                publish(hub, store, r, |a| (a.events, Outcome::Put(a.response)))?
            }
            Op::DeleteRange(d) => {
                let r = store.apply_delete(&d, applied).map_err(f)?;
                publish(hub, store, r, |a| (a.events, Outcome::Delete(a.response)))?
            }
            Op::Txn(t) => {
                let r = store.apply_txn(&t, applied).map_err(f)?;
                publish(hub, store, r, |a| (a.events, Outcome::Txn(a.response)))?
            }
            Op::Compaction(c) => store
                .apply_compaction(&c, applied)
                .map_err(f)?
                .map(|()| Outcome::Compacted)
                .map_err(DriverError::from),
            Op::LeaseGrant(g) => {
                let r = store.apply_lease_grant(g.id, g.ttl, applied).map_err(f)?;
                if r.is_ok() && self.node.role() == Role::Leader {
                    self.lease_deadlines.insert(
                        g.id,
                        Instant::now() + Duration::from_secs(g.ttl.max(0) as u64),
                    );
                }
                r.map(|()| Outcome::LeaseGranted).map_err(DriverError::from)
            }
            Op::LeaseRevoke(r) => {
                self.lease_deadlines.remove(&r.id);
                self.revoking.remove(&r.id);
                let r = store.apply_lease_revoke(r.id, applied).map_err(f)?;
                publish(hub, store, r, |events| (events, Outcome::LeaseRevoked))?
            }
            Op::MemberAttributes(m) => {
                match store.member(m.id).cloned() {
                    Some(mut cur) => {
                        cur.name = m.name;
                        cur.client_ur_ls = m.client_urls;
                        store.apply_member(m.id, Some(cur), applied).map_err(f)?;
                    }
                    None => store.apply_noop(applied).map_err(f)?,
                }
                Ok(Outcome::Nothing)
            }
            Op::MemberPeerUrls(m) => match store.member(m.id).cloned() {
                Some(mut cur) => {
                    cur.peer_ur_ls = m.peer_urls;
                    store.apply_member(m.id, Some(cur), applied).map_err(f)?;
                    Ok(Outcome::Members(store.members()))
                }
                None => {
                    store.apply_noop(applied).map_err(f)?;
                    Err(DriverError::Rejected("member not found".into()))
                }
            },
        })
    }

    fn apply_conf_change(
        &mut self,
        store: &mut KvStore,
        cc: &ConfChange,
        applied: (u64, u64),
    ) -> Result<Result<Outcome, DriverError>, String> {
        let f = |e: KvError| e.to_string();
        let id = cc.node.0;
        match cc.kind {
            ConfChangeKind::AddLearner | ConfChangeKind::AddVoter => {
                let attrs = command::decode_member(&cc.context).unwrap_or(MemberAttributes {
                    id,
                    ..Default::default()
                });
                let member = Member {
                    id,
                    name: attrs.name,
                    peer_ur_ls: attrs.peer_urls,
                    client_ur_ls: attrs.client_urls,
                    is_learner: cc.kind == ConfChangeKind::AddLearner,
                };
                store.apply_member(id, Some(member), applied).map_err(f)?;
            }
            ConfChangeKind::PromoteLearner => match store.member(id).cloned() {
                Some(mut m) => {
                    m.is_learner = false;
                    store.apply_member(id, Some(m), applied).map_err(f)?;
                }
                None => store.apply_noop(applied).map_err(f)?,
            },
            ConfChangeKind::Remove => store.apply_member(id, None, applied).map_err(f)?,
        }
        Ok(Ok(Outcome::Members(store.members())))
    }
}
