//! The core's public face: feed it inputs, take a [`Ready`], act on it, call
//! [`RawNode::advance`]. This is the whole contract between the pure core and
//! the driver that owns disks, sockets and clocks.
//!
//! The driver loop, in order:
//! 1. `tick()` on a timer; `step(m)` for each peer message; `propose`,
//!    `propose_conf_change`, `request_read`, `transfer_leader` for clients.
//! 2. If `has_ready()`, take `ready()`.
//! 3. Send `ready.messages` now (a leader replicates while it persists).
//! 4. Persist `ready.snapshot`, `ready.entries` and `ready.hard_state` as one
//!    atomic write, synced if `ready.must_sync` (see `Ready::log_write`).
//! 5. Then send `ready.persisted_messages`.
//! 6. Install `ready.snapshot` into the state machine, then apply
//!    `ready.committed_entries` in order; serve `ready.read_states` once applied
//!    reaches their index.
//! 7. Call `advance()`.
//!
//! Why this is safe: a vote or an acknowledgement leaves only after the state
//! it vouches for is durable (step 5), so a crash can never make a node
//! forget a vote it gave or an entry it acknowledged. A leader's own copy of a
//! new entry counts toward a majority only after `advance` reports it durable,
//! so sending before persisting (step 3) never commits an entry that a majority
//! does not hold on disk (thesis §10.2.1).

use crate::config::Config;
use crate::error::{ConfigError, ProposeError, StepError};
use crate::message::Message;
use crate::progress::ProgressState;
use crate::raft::{Proposed, Raft};
use crate::storage::{LogWrite, Storage};
use crate::types::{
    ConfChange, ConfState, Entry, HardState, Index, NodeId, ReadState, Role, Snapshot, SoftState,
    Term,
};

/// Everything the driver must do after one round of inputs. Each field says
/// when it may be acted on.
#[derive(Debug, Default)]
pub struct Ready {
    /// Changed role or leader; informational, any time.
    pub soft_state: Option<SoftState>,
    /// Term, vote and commit to persist (step 4), if changed.
    pub hard_state: Option<HardState>,
    /// A snapshot from the leader: persist it (step 4, before `entries`) and
    /// install it into the state machine before applying `committed_entries`.
    pub snapshot: Option<Snapshot>,
    /// New log entries to persist (step 4). They may replace a conflicting tail.
    pub entries: Vec<Entry>,
    /// Committed, durable entries to apply in order (step 6).
    pub committed_entries: Vec<Entry>,
    /// Messages to send right away (step 3).
    pub messages: Vec<Message>,
    /// Messages to send only after step 4 is durable (step 5).
    pub persisted_messages: Vec<Message>,
    /// Reads that may be served once the state machine has applied `index` (step 6).
    pub read_states: Vec<ReadState>,
    /// Step 4 must be fsynced before step 5 (a term, vote, entry or snapshot changed).
    pub must_sync: bool,
}

impl Ready {
    /// Step 4 as one storage write.
    pub fn log_write(&self) -> LogWrite {
        self.write_of(self.entries.clone())
    }

    /// Step 4 as one storage write, moving the entries out of the Ready
    /// instead of copying them (the driver has no other use for them).
    pub fn take_log_write(&mut self) -> LogWrite {
        let entries = std::mem::take(&mut self.entries);
        self.write_of(entries)
    }

    fn write_of(&self, entries: Vec<Entry>) -> LogWrite {
        LogWrite {
            snapshot: self.snapshot.clone(),
            entries,
            hard_state: self.hard_state,
            sync: self.must_sync,
        }
    }
}

/// What `advance` must record about the Ready that was handed out.
#[derive(Debug)]
struct Handed {
    last_entry: Option<(Index, Term)>,
    snapshot_index: Option<Index>,
    applied_to: Option<Index>,
    applied_bytes: u64,
}

/// A peer as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub matched: Index,
    pub next: Index,
    pub state: ProgressState,
    pub recent_active: bool,
    pub is_learner: bool,
}

/// A summary for operators (status pages, member health, promotion decisions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub leader: NodeId,
    pub term: Term,
    pub vote: NodeId,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    pub conf_state: ConfState,
    pub lead_transferee: NodeId,
    /// Only on a leader.
    pub peers: Vec<PeerStatus>,
}

pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
    handed: Option<Handed>,
}

impl<S: Storage> RawNode<S> {
    pub fn new(config: Config, storage: S) -> Result<Self, ConfigError> {
        let raft = Raft::new(config, storage)?;
        Ok(RawNode {
            prev_soft: raft.soft_state(),
            prev_hard: raft.hard_state(),
            raft,
            handed: None,
        })
    }

    pub fn tick(&mut self) {
        self.raft.tick();
        self.debug_check();
    }

    /// A message from a peer. Protocol violations are refused with an error and
    /// change nothing.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        let result = self.raft.step(m);
        self.debug_check();
        result
    }

    pub fn campaign(&mut self) {
        self.raft.campaign(false);
        self.debug_check();
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<Proposed, ProposeError> {
        let result = self.raft.propose(data);
        self.debug_check();
        result
    }

    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposed, ProposeError> {
        let result = self.raft.propose_conf_change(change);
        self.debug_check();
        result
    }

    /// Asks for a linearizable read identified by `context`; the answer arrives
    /// as a `ReadState` with the same context, or never (the caller times out).
    pub fn request_read(&mut self, context: Vec<u8>) -> Result<(), ProposeError> {
        self.raft.request_read(context)
    }

    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.raft.transfer_leader(target)
    }

    pub fn report_unreachable(&mut self, to: NodeId) {
        self.raft.report_unreachable(to);
    }

    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        self.raft.report_snapshot(to, delivered);
    }

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        self.handed.is_none()
            && (r.soft_state() != self.prev_soft
                || r.hard_state() != self.prev_hard
                || !r.msgs.is_empty()
                || r.appends_pending()
                || !r.persisted_msgs.is_empty()
                || !r.read_states.is_empty()
                || !r.log.unstable_entries().is_empty()
                || r.log.unstable_snapshot().is_some()
                || r.log.has_next_committed_entries())
    }

    /// Takes the pending work. Must be followed by `advance` before the next `ready`.
    pub fn ready(&mut self) -> Result<Ready, crate::error::StorageError> {
        assert!(
            self.handed.is_none(),
            "node {}: ready() called twice without advance()",
            self.raft.id
        );
        self.raft.flush_appends()?;
        let max = self.raft.config().max_committed_size_per_ready;
        let committed_entries = self.raft.log.next_committed_entries(max)?;
        let r = &mut self.raft;
        let soft = r.soft_state();
        let hard = r.hard_state();
        let entries = r.log.unstable_entries().to_vec();
        let snapshot = r.log.unstable_snapshot().cloned();
        let must_sync = !entries.is_empty()
            || snapshot.is_some()
            || hard.term != self.prev_hard.term
            || hard.vote != self.prev_hard.vote;
        // A node that became leader in this very Ready (a sole voter does, in one
        // step) has a term and vote not yet on disk: nothing it says may leave
        // before they are.
        if hard.term != self.prev_hard.term || hard.vote != self.prev_hard.vote {
            let early = std::mem::take(&mut r.msgs);
            r.persisted_msgs.splice(0..0, early);
        }
        let ready = Ready {
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: (hard != self.prev_hard).then_some(hard),
            snapshot,
            entries,
            committed_entries,
            messages: std::mem::take(&mut r.msgs),
            persisted_messages: std::mem::take(&mut r.persisted_msgs),
            read_states: std::mem::take(&mut r.read_states),
            must_sync,
        };
        r.close_read_round();
        self.prev_soft = soft;
        self.prev_hard = hard;
        self.handed = Some(Handed {
            last_entry: ready.entries.last().map(|e| (e.index, e.term)),
            snapshot_index: ready.snapshot.as_ref().map(|s| s.metadata.index),
            applied_to: ready
                .committed_entries
                .last()
                .map(|e| e.index)
                .or(ready.snapshot.as_ref().map(|s| s.metadata.index)),
            applied_bytes: ready.committed_entries.iter().map(Entry::size).sum(),
        });
        Ok(ready)
    }

    /// The last Ready was persisted, sent and applied.
    pub fn advance(&mut self) {
        let handed = self
            .handed
            .take()
            .unwrap_or_else(|| panic!("node {}: advance() without ready()", self.raft.id));
        if let Some(index) = handed.snapshot_index {
            self.raft.log.stable_snapshot_to(index);
        }
        if let Some((index, term)) = handed.last_entry {
            self.raft.on_persisted(index, term);
        } else if handed.snapshot_index.is_some() && self.raft.role == Role::Leader {
            let stable = self.raft.log.stable_last_index();
            self.raft.on_persisted(stable, self.raft.log.last_term());
        }
        if let Some(index) = handed.applied_to {
            self.raft.on_applied(index, handed.applied_bytes);
        }
        if let Ok(first) = self.raft.log.first_index() {
            self.raft.conf.compact(first.prev());
        }
        self.debug_check();
    }

    pub fn status(&self) -> Status {
        let r = &self.raft;
        let peers = if r.role == Role::Leader {
            r.progress
                .iter()
                .map(|(&id, p)| PeerStatus {
                    id,
                    matched: p.matched,
                    next: p.next,
                    state: p.state,
                    recent_active: p.recent_active,
                    is_learner: p.is_learner,
                })
                .collect()
        } else {
            Vec::new()
        };
        Status {
            id: r.id,
            role: r.role,
            leader: r.leader,
            term: r.term,
            vote: r.vote,
            commit: r.log.committed,
            applied: r.log.applied,
            last_index: r.log.last_index(),
            conf_state: r.conf_state().clone(),
            lead_transferee: r.lead_transferee,
            peers,
        }
    }

    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    pub fn role(&self) -> Role {
        self.raft.role
    }

    pub fn leader(&self) -> NodeId {
        self.raft.leader
    }

    pub fn term(&self) -> Term {
        self.raft.term
    }

    pub fn conf_state(&self) -> &ConfState {
        self.raft.conf_state()
    }

    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// The driver persists through this (step 4) and compacts behind snapshots.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }

    /// Stops the node, keeping only what storage made durable (a crash, for
    /// simulation, or a clean shutdown).
    pub fn into_storage(self) -> S {
        self.raft.log.storage
    }

    pub fn check_invariants(&self) {
        self.raft.check_invariants();
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            self.raft.check_invariants();
        }
    }
}
