//! The driver: the one place that joins the consensus core to the world,
//! written without any I/O so the server and the simulation run the same
//! code. Inputs come in as method calls (a tick with the current time, a
//! peer message, a client request, a forwarded batch's answer, a finished
//! checkpoint); effects go out through the [`Platform`]'s edges (network,
//! snapshots, replies). The tokio server feeds it sockets, RocksDB and the
//! clock (`crate::server::driver`); the simulation feeds it memory and
//! seeded faults.
//!
//! Reading order: [`request`] (what it is asked), [`platform`] (the edges),
//! this file (one loop turn: inputs, then [`Core::run_ready`]), `ready.rs`
//! (one `Ready`: send, persist, apply, answer), `apply.rs`, then the jobs:
//! `waiters.rs`, `reads.rs`, `leases.rs`, `forwarding.rs`, `snapshots.rs`,
//! `features.rs` (the leader's feature and backfill jobs), `traces.rs`
//! (spans of traced entries).
//!
//! The leader also keeps lease deadlines here and proposes a revoke through
//! the log when one runs out, so expiry is decided once and applied
//! everywhere in the same order.

mod apply;
mod features;
mod forwarding;
mod leases;
pub mod platform;
mod reads;
mod ready;
mod recovery;
pub mod request;
mod shared;
mod snapshots;
mod traces;
mod waiters;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use nod_raft::{Message, NodeId, ProposeError, RawNode, Role};

pub use forwarding::{refusal as forward_refusal, FORWARD_NOT_LEADER};
pub use platform::{
    ForwardFailure, ForwardOutcome, Network, Platform, Replies, Reply, Snapshotter, Spans, Step,
    Stopwatch, Taken,
};
pub use recovery::{current_conf, force_standalone, raise_commit_to_applied, ForceError, Forced};
pub use request::{Applied, DriverError, Fatal, NodeStatus, Outcome, Request};
pub use shared::Shared;

use crate::command::{self, MemberAttributes, Op};

/// How often a tick's housekeeping (closed callers, attribute publishing) runs.
const HOUSEKEEPING_TICKS: u64 = 10;
/// Records a compaction step removes at most.
const COMPACTION_STEP: usize = 250;
/// How long a member waits before asking again to publish its attributes.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);
const PUBLISH_BACKOFF_MAX: Duration = Duration::from_secs(60);

pub struct CoreConfig {
    /// What this member publishes about itself once it is in the cluster.
    pub attributes: MemberAttributes,
    /// Where the peers are before the member table says (a joiner's view
    /// of the cluster, from the member it asked): without it a new member
    /// could not answer the leader that is about to send it a snapshot.
    pub seed_peers: HashMap<NodeId, String>,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// Where this run's forwarded command ids start (random in the server,
    /// seeded in the simulation).
    pub first_forward_id: u64,
}

/// A driver turn's result the adapter acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Continue,
    /// This member was removed from the cluster: stop.
    Removed,
}

pub struct Core<P: Platform> {
    node: RawNode<P::Log>,
    shared: Arc<Shared<P::Backend>>,
    net: P::Net,
    snapshots: P::Snapshots,
    config: CoreConfig,
    /// The adapter's clock: time since the driver started.
    now: Duration,
    ticks: u64,
    waiters: waiters::Waiters<P::Replies>,
    reads: reads::Reads<P::Replies>,
    leases: leases::Leases,
    forwarding: forwarding::Forwarding<P::Replies>,
    snap: snapshots::SnapshotState,
    was_leader: bool,
    last_published: Option<Duration>,
    /// Whether the member table has shown this member's attributes.
    published: bool,
    /// The last backfill step proposed: index, its progress then, when.
    backfill: Option<(u32, u64, Duration)>,
    /// When features were last proposed for enabling.
    last_enabled: Option<Duration>,
    /// How long to wait before publishing the same attributes again: it
    /// doubles while they do not show (a leader of an older version drops
    /// the features it does not know), up to a minute.
    publish_backoff: Duration,
    /// When a message last arrived from each member (member health: a
    /// time, not the core's `recent_active` bit, which is cleared every
    /// election timeout and so reads false for a moment after each clear).
    last_heard: BTreeMap<u64, Duration>,
    spans: P::Spans,
    /// The leader's traced entries awaiting commit: their trace and when
    /// they were appended (for `raft.commit`).
    traced: BTreeMap<u64, (String, <P::Spans as Spans>::Mark)>,
    /// The log's last index when this run began: entries up to it were
    /// appended by an earlier run and are not traced again when replayed.
    traced_from: u64,
}

/// Traced entries the leader remembers at most while they await commit
/// (more are recorded without their commit span).
const MAX_TRACED_PENDING: usize = 4096;

impl<P: Platform> Core<P> {
    pub fn new(
        node: RawNode<P::Log>,
        shared: Arc<Shared<P::Backend>>,
        net: P::Net,
        snapshots: P::Snapshots,
        spans: P::Spans,
        config: CoreConfig,
    ) -> Core<P> {
        let snap = snapshots::SnapshotState::new(&node);
        let traced_from = node.status().last_index.0;
        let forwarding = forwarding::Forwarding::new(config.first_forward_id);
        let mut core = Core {
            node,
            shared,
            net,
            snapshots,
            config,
            now: Duration::ZERO,
            ticks: 0,
            waiters: waiters::Waiters::new(),
            reads: reads::Reads::new(),
            leases: leases::Leases::default(),
            forwarding,
            snap,
            was_leader: false,
            last_published: None,
            published: false,
            backfill: None,
            last_enabled: None,
            publish_backoff: PUBLISH_RETRY,
            last_heard: BTreeMap::new(),
            spans,
            traced: BTreeMap::new(),
            traced_from,
        };
        core.refresh_peers();
        core
    }

    pub fn shared(&self) -> &Arc<Shared<P::Backend>> {
        &self.shared
    }

    pub fn raw_node(&self) -> &RawNode<P::Log> {
        &self.node
    }

    /// The edges, for the adapter (the simulation reads its in-memory ones).
    pub fn network_mut(&mut self) -> &mut P::Net {
        &mut self.net
    }
    pub fn snapshots_mut(&mut self) -> &mut P::Snapshots {
        &mut self.snapshots
    }

    /// Sets the current time (monotonic, since the driver started); the
    /// adapter calls it before each batch of inputs.
    pub fn set_time(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    /// Whether a compaction's dropped records remain to be removed; while
    /// they do, the adapter calls [`Core::compaction_step`] between inputs.
    pub fn compaction_pending(&self) -> bool {
        self.shared.store().compaction_pending()
    }

    /// Removes one bounded step of what the last compaction dropped (about
    /// `COMPACTION_STEP` records, one small write), so a compaction of a
    /// long history interleaves with the writes instead of stalling them
    /// (etcd's `--compaction-batch-limit`, 1000 by default).
    pub fn compaction_step(&mut self) -> Result<(), Fatal> {
        self.shared.store_mut().compaction_step(COMPACTION_STEP)?;
        Ok(())
    }

    pub fn on_tick(&mut self) {
        self.node.tick();
        self.ticks += 1;
        if self.node.role() == Role::Leader {
            self.expire_leases();
            self.advance_backfill();
        }
        if self.ticks.is_multiple_of(HOUSEKEEPING_TICKS) {
            // Requests whose callers gave up (timeout, disconnect) free their slots.
            self.waiters.forget_closed();
            self.forwarding.forget_closed();
            self.reads.forget_closed();
            self.maybe_publish_attributes();
            if self.node.role() == Role::Leader {
                self.maybe_enable_features();
            }
        } else if !self.published {
            // Clients wait for this member's attributes (server::start):
            // publish as soon as there is a leader, not on the next round.
            self.maybe_publish_attributes();
        }
    }

    pub fn on_message(&mut self, m: Message) {
        // Only members are tracked, so a peer cannot grow the map with made-up ids.
        if self.node.conf_state().contains(m.from) {
            self.last_heard.insert(m.from.0, self.now);
        }
        if let Err(e) = self.node.step(m) {
            tracing::debug!(error = %e, "dropped a peer message");
        }
    }

    pub fn on_unreachable(&mut self, peer: NodeId) {
        self.node.report_unreachable(peer);
    }

    pub fn on_snapshot_sent(&mut self, peer: NodeId, delivered: bool) {
        self.node.report_snapshot(peer, delivered);
    }

    /// A peer says this member was removed from the cluster.
    pub fn on_removed(&mut self) {
        tracing::warn!("a peer says this member was removed from the cluster; stopping");
        self.shared.status_mut().removed = true;
    }

    pub fn on_forwarded(&mut self, o: ForwardOutcome) {
        let applied = self.shared.store().applied().0;
        let storage = self.node.storage();
        self.forwarding.answered(
            o,
            applied,
            |i| nod_raft::Storage::term(storage, i).ok(),
            &self.shared.metrics,
        );
    }

    fn not_leader(&self) -> DriverError {
        match self.node.leader() {
            NodeId::NONE => DriverError::NoLeader,
            l => DriverError::NotLeader { leader: l },
        }
    }

    fn propose_error(e: ProposeError) -> DriverError {
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

    pub fn on_request(&mut self, r: Request<P::Replies>) {
        match r {
            Request::Propose {
                op,
                caller,
                trace,
                reply,
            } => {
                self.shared.metrics.proposals_pending.inc();
                let leader = self.node.leader();
                let trace = trace.unwrap_or_default();
                if self.node.role() != Role::Leader && !leader.is_none() {
                    // Hand it to the leader with the rest of this turn's writes.
                    let origin = self.shared.member_id;
                    self.forwarding.queue(reply, |id| {
                        command::encode(&command::Command {
                            id,
                            origin,
                            op: Some(op),
                            caller,
                            trace,
                        })
                    });
                    return;
                }
                let data = command::encode(&command::Command {
                    id: 0,
                    origin: 0,
                    op: Some(op),
                    caller,
                    trace,
                });
                self.propose_here(data, reply);
            }
            Request::ConfChange { change, reply } => match self.node.propose_conf_change(change) {
                Ok(p) => {
                    self.shared.metrics.proposals_pending.inc();
                    self.waiters.insert(p.index, p.term, reply);
                }
                Err(e) => reply.send(Err(Self::propose_error(e))),
            },
            Request::ProposeForwarded { commands, reply } => {
                let results = commands
                    .into_iter()
                    .map(|c| match self.node.propose(c) {
                        Ok(p) => nod_proto::nodserverpb::ProposeResult {
                            index: p.index.0,
                            term: p.term.0,
                            ..Default::default()
                        },
                        Err(e) => forwarding::refusal(Self::propose_error(e)),
                    })
                    .collect();
                reply.send(Ok(results));
            }
            Request::ReadIndex { reply } => self.reads.queue(reply),
            Request::KeepAlive { id, reply } => {
                let result = if self.node.role() != Role::Leader {
                    Err(self.not_leader())
                } else {
                    let store = self.shared.store();
                    self.leases
                        .keep_alive(id, store.leases().get(&id), self.now)
                };
                reply.send(result);
            }
            Request::TimeToLive { id, reply } => {
                let result = if self.node.role() != Role::Leader {
                    Err(self.not_leader())
                } else {
                    let store = self.shared.store();
                    self.leases
                        .time_to_live(id, store.leases().get(&id), self.now)
                };
                reply.send(result);
            }
            Request::TransferLeader { target, reply } => {
                let result = self
                    .node
                    .transfer_leader(target)
                    .map_err(Self::propose_error);
                reply.send(result);
            }
            Request::RaftStatus { reply } => reply.send(Ok(self.node.status())),
            Request::Contact { reply } => {
                let conf = self.node.conf_state();
                self.last_heard.retain(|id, _| conf.contains(NodeId(*id)));
                let now = self.now;
                let ages = self
                    .last_heard
                    .iter()
                    .map(|(id, t)| (*id, now.saturating_sub(*t)))
                    .collect();
                reply.send(Ok(ages));
            }
        }
    }

    /// Appends a command on this node (the leader); `reply` waits for its entry.
    fn propose_here(&mut self, data: Vec<u8>, reply: <P::Replies as Replies>::Reply<Applied>) {
        match self.node.propose(data) {
            Ok(p) => self.waiters.insert(p.index, p.term, reply),
            Err(e) => {
                self.shared.metrics.proposals_pending.dec();
                self.shared.metrics.proposals_failed.inc();
                reply.send(Err(Self::propose_error(e)));
            }
        }
    }

    /// Sends this turn's forwarded writes to the leader (or, if this node
    /// has just become the leader, appends them here).
    fn flush_forwards(&mut self) {
        if self.node.role() == Role::Leader {
            for (data, reply) in self.forwarding.take_queued() {
                self.propose_here(data, reply);
            }
            return;
        }
        let leader = self.node.leader();
        let Some(batch) = self.forwarding.batch_for(leader) else {
            return;
        };
        let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
        let sent = if leader.is_none() {
            None
        } else {
            self.net
                .forward_proposals(leader, self.shared.member_id, batch)
        };
        match sent {
            Some(calls) => self.forwarding.sent(calls),
            None => {
                let e = self.not_leader();
                for id in ids {
                    self.forwarding
                        .finish(id, Err(e.clone()), &self.shared.metrics);
                }
            }
        }
    }

    /// After a batch of inputs: one ReadIndex round, the forwarded writes,
    /// every `Ready` the core has, and a checkpoint if one is due.
    pub fn run_ready(&mut self) -> Result<Turn, Fatal> {
        let node = &mut self.node;
        self.reads.send(node, Self::propose_error);
        self.flush_forwards();
        self.process_ready()?;
        self.maybe_snapshot();
        Ok(if self.shared.status().removed {
            Turn::Removed
        } else {
            Turn::Continue
        })
    }

    /// The driver stops: record why (if it failed) and answer everyone.
    pub fn stop(&mut self, result: &Result<(), Fatal>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "stopping: storage failed");
            self.shared.status_mut().fatal = Some(e.to_string());
        }
        let e = DriverError::Stopped;
        self.forwarding.fail_all(&e, &self.shared.metrics);
        self.waiters.fail_all(&e);
        self.reads.fail_all(&e);
    }

    fn expire_leases(&mut self) {
        for id in self.leases.expired(self.now) {
            let data = command::own(Op::LeaseRevoke(
                nod_proto::etcd::etcdserverpb::LeaseRevokeRequest { id },
            ));
            if self.node.propose(data).is_ok() {
                tracing::debug!(lease = id, "lease expired; revoking");
                self.leases.revoke_proposed(id, self.now);
            }
        }
    }

    /// Publishes this member's name, client URLs and features through the
    /// log when the member table does not show them yet (as etcd's publish
    /// does; the features after an upgrade, too).
    fn maybe_publish_attributes(&mut self) {
        if self.node.leader().is_none() {
            return;
        }
        if self
            .last_published
            .is_some_and(|t| self.now.saturating_sub(t) < self.publish_backoff)
        {
            return;
        }
        let mine = &self.config.attributes;
        let (current, features) = {
            let store = self.shared.store();
            let id = self.shared.member_id;
            (store.member(id).cloned(), store.features_of(id))
        };
        let Some(current) = current else { return };
        let same_features = {
            let mut want = mine.features.clone();
            want.sort();
            want.dedup();
            want == features
        };
        let listed = current.name == mine.name && current.client_ur_ls == mine.client_urls;
        if listed && same_features {
            self.published = true;
            self.publish_backoff = PUBLISH_RETRY;
            return;
        }
        // Only the features missing (clients are served already): back
        // off, in case the leader is of a version that drops them.
        self.publish_backoff = if listed && self.last_published.is_some() {
            (self.publish_backoff * 2).min(PUBLISH_BACKOFF_MAX)
        } else {
            PUBLISH_RETRY
        };
        let data = command::own(Op::MemberAttributes(mine.clone()));
        match self.node.propose(data) {
            Ok(_) => self.last_published = Some(self.now),
            Err(ProposeError::NotLeader { leader_hint }) if !leader_hint.is_none() => {
                // Only the leader proposes; ask it through the forwarding path.
                self.last_published = Some(self.now);
                self.net.forward_attributes(leader_hint, mine.clone());
            }
            Err(_) => {}
        }
    }

    /// Tells the network where the peers are: the member table, plus the
    /// seed list until the applied state knows better.
    fn refresh_peers(&mut self) {
        let me = self.shared.member_id;
        let store = self.shared.store();
        // A joiner that installs an old snapshot (say, from a leader that
        // itself joined after the founding) learns from it only the
        // founders, and must still be able to answer the leader it was
        // told of, or it never acks, never learns the commit index and
        // never catches up.
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
        self.net.set_peers(peers);
    }
}
