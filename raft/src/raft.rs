//! The Raft state machine: roles, elections, replication, commitment,
//! membership, leader transfer and reads. No I/O: inputs are `tick`, `step`
//! and the proposal calls; outputs accumulate in outboxes that `RawNode`
//! hands out as a `Ready`. Read `RawNode` first, then `step`.
//!
//! Invariants, checked by `check_invariants` after every step in tests and
//! debug builds:
//! 1. `applied <= committed <= last_index`, and no entry's term exceeds `term`.
//! 2. A leader is its own leader and voted for itself in its term.
//! 3. A leader's progress for every peer has `matched < next <= last_index + 1`,
//!    and its own `matched` never exceeds what is durable.
//! 4. The configuration has disjoint voters and learners.

use std::collections::{BTreeMap, VecDeque};

use crate::conf_history::ConfHistory;
use crate::config::{Config, ReadOnlyOption};
use crate::error::{ProposeError, StepError, StorageError};
use crate::message::{AppendResult, Message, MessageBody};
use crate::progress::{Progress, ProgressState};
use crate::quorum::{majority_value, vote_result, VoteResult};
use crate::raft_log::RaftLog;
use crate::read_only::ReadOnly;
use crate::rng::SeededRng;
use crate::storage::Storage;
use crate::types::{
    ConfChange, ConfState, Entry, EntryPayload, HardState, Index, NodeId, ReadState, Role,
    SoftState, Term,
};

/// Where a proposal landed. It is committed only if the entry at `index`
/// still has `term` when it is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposed {
    pub index: Index,
    pub term: Term,
}

pub struct Raft<S: Storage> {
    pub id: NodeId,
    pub term: Term,
    pub vote: NodeId,
    pub role: Role,
    pub leader: NodeId,
    pub log: RaftLog<S>,
    pub conf: ConfHistory,
    pub progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    /// Messages that may leave at once (a leader's, which depend on nothing unsynced).
    pub msgs: Vec<Message>,
    /// Messages that may leave only once this Ready's state is durable.
    pub persisted_msgs: Vec<Message>,
    pub read_states: Vec<ReadState>,
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    pub lead_transferee: NodeId,
    read_only: ReadOnly,
    /// Reads that reached the leader before it committed an entry of its term.
    reads_before_term_commit: Vec<(NodeId, Vec<u8>)>,
    uncommitted_size: u64,
    /// Ticks since this node started; the leader's clock for leases.
    ticks: u64,
    /// Leader: when each recent heartbeat round was sent, oldest first.
    round_sent_at: VecDeque<(u64, u64)>,
    /// Leader: a TimeoutNow went out this term, so another node may win
    /// without waiting out the voters' leases; no more lease reads.
    lease_revoked: bool,
    transfer_elapsed: u64,
    /// With lease reads: ticks left during which a restarted node refuses
    /// votes, because before it crashed it may have acknowledged a heartbeat
    /// that a leader's lease still counts on.
    restart_quiet: u64,
    /// Leader: entries were appended (or a follower's window opened) since
    /// the last Ready; `flush_appends` sends them.
    append_pending: bool,
    /// Leader: the commit index moved since the last Ready.
    commit_pending: bool,
    rng: SeededRng,
    cfg: Config,
}

/// Terms and indexes above this are refused from peers and disk: no log gets
/// near it, and it keeps `+ 1` from overflowing.
pub const MAX_WIRE_VALUE: u64 = u64::MAX / 4;

/// How many bytes of entries `Raft::new` reads at a time while it rebuilds
/// the configuration from the log.
const CONF_SCAN_BYTES: u64 = 1 << 20;

impl<S: Storage> Raft<S> {
    pub fn new(cfg: Config, storage: S) -> Result<Self, crate::error::ConfigError> {
        cfg.validate()?;
        let state = storage.initial_state()?;
        let mut log = RaftLog::new(storage)?;
        let first = log.first_index()?;
        let last = log.last_index();
        let hs = state.hard_state;
        if hs.term.0 > MAX_WIRE_VALUE || last.0 > MAX_WIRE_VALUE {
            return Err(StorageError::Fatal(format!(
                "node {}: stored term {} or last index {last} is implausibly large",
                cfg.id, hs.term
            ))
            .into());
        }
        if hs.commit > last {
            return Err(StorageError::Fatal(format!(
                "node {}: hard state commit {} is outside the log [{}, {}]: the log was truncated or lost",
                cfg.id,
                hs.commit,
                first.prev(),
                last
            ))
            .into());
        }
        log.committed = hs.commit.max(first.prev());
        let applied = if cfg.applied > Index(0) {
            cfg.applied
        } else {
            first.prev()
        };
        if applied > log.committed {
            return Err(crate::error::ConfigError::Invalid(format!(
                "node {}: the application applied {applied} but the log is committed only to {}: \
                 the commit index must be made durable before entries are applied",
                cfg.id, log.committed
            )));
        }
        log.applied = applied.max(first.prev());

        // Rebuild the configuration: the snapshot's, then every configuration
        // entry after it (they take effect when appended, committed or not).
        // Read in pieces of `CONF_SCAN_BYTES`: a long log read whole (every
        // entry since the snapshot, payloads and all) was most of a
        // restart's time and its memory.
        let mut conf = ConfHistory::new(first.prev(), state.conf_state);
        let mut from = first;
        while from <= last {
            let piece = log.slice(from, last.next(), CONF_SCAN_BYTES)?;
            // Storage gives at least one entry of a non-empty range.
            let Some(end) = piece.last().map(|e| e.index).filter(|&end| end >= from) else {
                return Err(StorageError::Fatal(format!(
                    "node {}: the log gave no entry at {from} while rebuilding the configuration",
                    cfg.id
                ))
                .into());
            };
            for e in &piece {
                if let EntryPayload::ConfChange(cc) = &e.payload {
                    conf.append(e.index, cc);
                }
            }
            from = end.next();
        }
        let mut raft = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: NodeId::NONE,
            log,
            conf,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            read_states: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            lead_transferee: NodeId::NONE,
            read_only: ReadOnly::default(),
            reads_before_term_commit: Vec::new(),
            uncommitted_size: 0,
            ticks: 0,
            round_sent_at: VecDeque::new(),
            lease_revoked: false,
            transfer_elapsed: 0,
            restart_quiet: if cfg.read_only == ReadOnlyOption::LeaseBased && cfg.check_quorum {
                cfg.election_tick
            } else {
                0
            },
            append_pending: false,
            commit_pending: false,
            rng: SeededRng::new(cfg.seed),
            cfg,
        };
        raft.become_follower(hs.term, NodeId::NONE);
        Ok(raft)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    pub fn conf_state(&self) -> &ConfState {
        self.conf.current()
    }

    /// May this node campaign? Only voters of its current configuration may.
    pub fn promotable(&self) -> bool {
        self.conf.current().is_voter(self.id)
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed).ok() == Some(self.term)
    }

    // ----- role changes -------------------------------------------------------

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = NodeId::NONE;
        }
        self.leader = NodeId::NONE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self
            .rng
            .range(self.cfg.election_tick, 2 * self.cfg.election_tick);
        self.lead_transferee = NodeId::NONE;
        self.votes.clear();
        self.progress.clear();
        self.read_only.reset();
        self.reads_before_term_commit.clear();
        self.uncommitted_size = 0;
        self.round_sent_at.clear();
        self.lease_revoked = false;
        self.transfer_elapsed = 0;
        self.append_pending = false;
        self.commit_pending = false;
    }

    pub fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        // A pre-candidate changes neither term nor vote (thesis §9.6).
        self.votes.clear();
        self.leader = NodeId::NONE;
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert!(
            self.role != Role::Leader,
            "node {} term {}: leader cannot become candidate",
            self.id,
            self.term
        );
        self.reset(self.term.next());
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert!(
            self.role == Role::Candidate,
            "node {} term {}: only a candidate becomes leader",
            self.id,
            self.term
        );
        let term = self.term;
        self.reset(term);
        self.vote = self.id;
        self.role = Role::Leader;
        self.leader = self.id;
        self.rebuild_progress(false);
        // A no-op of our own term lets us commit everything before it (§5.4.2).
        self.append_entries(vec![EntryPayload::Empty]);
    }

    /// Leader: one progress per member of the current configuration. Members
    /// added by a configuration change count as recently active, so that
    /// check-quorum does not depose the leader before they had a chance to
    /// answer (etcd does the same).
    fn rebuild_progress(&mut self, newcomers_active: bool) {
        let last = self.log.last_index();
        let stable = self.log.stable_last_index();
        let conf = self.conf.current().clone();
        self.progress.retain(|id, _| conf.contains(*id));
        for id in conf.members() {
            let is_learner = !conf.is_voter(id);
            let max_inflight = self.cfg.max_inflight_msgs;
            let pr = self.progress.entry(id).or_insert_with(|| {
                let mut p = Progress::new(last.next(), max_inflight, is_learner);
                p.recent_active = newcomers_active;
                p
            });
            pr.is_learner = is_learner;
            if id == self.id {
                pr.matched = pr.matched.max(stable);
                pr.next = pr.next.max(last.next());
                pr.recent_active = true;
                pr.state = ProgressState::Replicate;
            }
        }
    }

    // ----- ticks ----------------------------------------------------------------

    pub fn tick(&mut self) {
        self.ticks += 1;
        self.restart_quiet = self.restart_quiet.saturating_sub(1);
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.campaign(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        for (id, pr) in self.progress.iter_mut() {
            if *id != self.id && pr.state == ProgressState::Snapshot {
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks >= self.cfg.snapshot_timeout_tick {
                    pr.become_probe();
                }
            }
        }
        if self.election_elapsed >= self.cfg.election_tick {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                // We cannot reach a quorum: someone else may lead already (§6.2 of the thesis).
                let term = self.term;
                self.become_follower(term, NodeId::NONE);
                return;
            }
            for (id, pr) in self.progress.iter_mut() {
                if *id != self.id {
                    pr.recent_active = false;
                }
            }
        }
        if !self.lead_transferee.is_none() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.cfg.election_tick {
                self.lead_transferee = NodeId::NONE; // the transfer timed out
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_active(&self) -> bool {
        let voters = &self.conf.current().voters;
        let active = |id: NodeId| {
            u64::from(id == self.id || self.progress.get(&id).is_some_and(|p| p.recent_active))
        };
        majority_value(voters, active) == 1
    }

    // ----- elections ------------------------------------------------------------

    /// Starts an election: a pre-vote round first when configured, except on
    /// a leader's `TimeoutNow` (`transfer`), which also bypasses the voters'
    /// leader lease (thesis §3.10).
    pub fn campaign(&mut self, transfer: bool) {
        self.campaign_with(self.cfg.pre_vote && !transfer, transfer);
    }

    fn campaign_with(&mut self, pre_vote: bool, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        let term = if pre_vote {
            self.become_pre_candidate();
            self.term.next()
        } else {
            self.become_candidate();
            self.term
        };
        self.votes.insert(self.id, true);
        if self.tally() == VoteResult::Won {
            return self.won_election(pre_vote, transfer);
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let id = self.id;
        let voters: Vec<NodeId> = self
            .conf
            .current()
            .voters
            .iter()
            .copied()
            .filter(|&v| v != id)
            .collect();
        for to in voters {
            self.send_with_term(
                to,
                term,
                MessageBody::Vote {
                    pre_vote,
                    last_index,
                    last_term,
                    transfer,
                },
            );
        }
    }

    fn tally(&self) -> VoteResult {
        vote_result(&self.conf.current().voters, &self.votes)
    }

    fn won_election(&mut self, pre_vote: bool, transfer: bool) {
        if pre_vote {
            self.campaign_with(false, transfer);
        } else {
            self.become_leader();
            self.broadcast_append();
        }
    }

    fn handle_vote_request(
        &mut self,
        m: &Message,
        pre_vote: bool,
        last_index: Index,
        last_term: Term,
    ) {
        let can_vote = self.vote == m.from
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && m.term > self.term);
        if can_vote && self.log.is_up_to_date(last_index, last_term) {
            // A granted pre-vote answers in the term the candidate would use.
            self.send_with_term(
                m.from,
                m.term,
                MessageBody::VoteResponse {
                    pre_vote,
                    granted: true,
                },
            );
            if !pre_vote {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            self.send_with_term(
                m.from,
                self.term,
                MessageBody::VoteResponse {
                    pre_vote,
                    granted: false,
                },
            );
        }
    }

    // ----- the entry point for messages ------------------------------------------

    /// Feeds a message from a peer. Every claim in it is checked; a message
    /// that breaks the protocol is refused with `StepError::Invalid` and leaves
    /// the node unchanged.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        if m.to != self.id {
            return Err(StepError::Misrouted {
                to: m.to,
                id: self.id,
            });
        }
        if m.from.is_none() || m.from == self.id {
            return Err(invalid(&m, "sender is none or this node"));
        }
        self.validate(&m)?;

        if m.term > self.term {
            if let MessageBody::Vote { transfer, .. } = m.body {
                let in_lease = self.cfg.check_quorum
                    && ((!self.leader.is_none() && self.election_elapsed < self.cfg.election_tick)
                        || self.restart_quiet > 0);
                if in_lease && !transfer {
                    // We hear from a leader: a disruptive candidate is ignored (thesis §4.2.3).
                    return Ok(());
                }
            }
            match m.body {
                MessageBody::Vote { pre_vote: true, .. } => {}
                MessageBody::VoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::Snapshot { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NodeId::NONE),
            }
        } else if m.term < self.term {
            match m.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Tell a stale leader about the newer term so it steps down;
                    // otherwise a node partitioned away could never rejoin.
                    self.send_with_term(
                        m.from,
                        self.term,
                        MessageBody::HeartbeatResponse { read_round: 0 },
                    );
                }
                MessageBody::Vote { pre_vote: true, .. } => {
                    self.send_with_term(
                        m.from,
                        self.term,
                        MessageBody::VoteResponse {
                            pre_vote: true,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        if let MessageBody::Vote {
            pre_vote,
            last_index,
            last_term,
            ..
        } = m.body
        {
            self.handle_vote_request(&m, pre_vote, last_index, last_term);
            return Ok(());
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    /// Structural checks on a peer's message, before any of it is used.
    fn validate(&self, m: &Message) -> Result<(), StepError> {
        let big = |v: u64| v > MAX_WIRE_VALUE;
        let oversized = big(m.term.0)
            || match &m.body {
                MessageBody::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                    ..
                } => {
                    // Checked first, so the sum below cannot overflow.
                    big(prev_index.0)
                        || big(prev_index.0 + entries.len() as u64)
                        || big(prev_term.0)
                        || big(commit.0)
                }
                MessageBody::AppendResponse {
                    result: AppendResult::Accepted { last_index },
                } => big(last_index.0),
                MessageBody::AppendResponse {
                    result:
                        AppendResult::Rejected {
                            rejected,
                            hint_index,
                            hint_term,
                        },
                } => big(rejected.0) || big(hint_index.0) || big(hint_term.0),
                MessageBody::Heartbeat { commit, .. } => big(commit.0),
                MessageBody::Vote {
                    last_index,
                    last_term,
                    ..
                } => big(last_index.0) || big(last_term.0),
                MessageBody::Snapshot { snapshot } => {
                    big(snapshot.metadata.index.0) || big(snapshot.metadata.term.0)
                }
                MessageBody::ReadIndexResponse { index, .. } => big(index.0),
                _ => false,
            };
        if oversized {
            return Err(invalid(m, "a term or index is implausibly large"));
        }
        match &m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                quiet,
                ..
            } => {
                if *quiet && !entries.is_empty() {
                    return Err(invalid(m, "a quiet append carries entries"));
                }
                let mut expect_index = prev_index.next();
                let mut last_term = *prev_term;
                for e in entries {
                    if e.index != expect_index {
                        return Err(invalid(m, "entries are not contiguous after prev_index"));
                    }
                    if e.term < last_term || e.term > m.term {
                        return Err(invalid(
                            m,
                            "entry terms go backwards or exceed the message term",
                        ));
                    }
                    expect_index = expect_index.next();
                    last_term = e.term;
                }
                if *prev_term > m.term {
                    return Err(invalid(m, "prev_term exceeds the message term"));
                }
            }
            MessageBody::Snapshot { snapshot } => {
                let cs = &snapshot.metadata.conf_state;
                if snapshot.metadata.index == Index(0)
                    || cs.voters.is_empty()
                    || cs.voters.iter().any(|v| cs.learners.contains(v))
                    || cs.members().any(NodeId::is_none)
                    || snapshot.metadata.term > m.term
                {
                    return Err(invalid(m, "snapshot metadata is malformed"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn step_leader(&mut self, m: Message) -> Result<(), StepError> {
        let from = m.from;
        match m.body {
            MessageBody::AppendResponse { result } => {
                // Check every claim before anything changes.
                match result {
                    AppendResult::Rejected {
                        rejected,
                        hint_index,
                        ..
                    } if rejected > self.log.last_index() || hint_index > rejected => {
                        return Err(invalid(&m, "rejection names an index we never sent"));
                    }
                    AppendResult::Accepted { last_index } if last_index > self.log.last_index() => {
                        return Err(invalid(&m, "follower acknowledges entries we do not have"));
                    }
                    _ => {}
                }
                let Some(pr) = self.progress.get_mut(&from) else {
                    return Ok(());
                };
                pr.recent_active = true;
                match result {
                    AppendResult::Rejected {
                        rejected,
                        hint_index,
                        hint_term,
                    } => {
                        // Skip every entry of the follower's conflicting term at once.
                        let next_probe = if hint_term > Term(0) {
                            self.log.find_conflict_by_term(hint_index, hint_term).0
                        } else {
                            hint_index
                        };
                        let pr = self.progress.get_mut(&from).expect("checked above");
                        if pr.maybe_decrease_to(rejected, next_probe) {
                            if pr.state == ProgressState::Replicate {
                                pr.become_probe();
                            }
                            self.send_append(from)?;
                        }
                    }
                    AppendResult::Accepted { last_index } => {
                        let was_paused = pr.is_paused();
                        let updated = pr.maybe_update(last_index);
                        // A probe answered at the known match also proves where the logs agree.
                        let probe_confirmed =
                            pr.state == ProgressState::Probe && pr.matched == last_index;
                        if updated || probe_confirmed {
                            match pr.state {
                                ProgressState::Probe => pr.become_replicate(),
                                ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => {
                                    pr.become_probe();
                                    pr.become_replicate();
                                }
                                ProgressState::Snapshot => {}
                                ProgressState::Replicate => pr.free_inflights_to(last_index),
                            }
                            if updated && self.maybe_commit() {
                                self.commit_pending = true;
                            } else if was_paused {
                                self.send_append(from)?;
                            }
                            // Fill the pipeline, with this Ready's other sends.
                            self.append_pending = true;
                            if from == self.lead_transferee
                                && self.progress.get(&from).map(|p| p.matched)
                                    == Some(self.log.last_index())
                            {
                                // What is owed (the commit index) goes first,
                                // so the target campaigns knowing it.
                                self.flush_appends().map_err(StepError::Storage)?;
                                self.send_timeout_now(from);
                            }
                        }
                    }
                }
            }
            MessageBody::HeartbeatResponse { read_round } => {
                if read_round > self.read_only.last_round() {
                    return Err(invalid(
                        &m,
                        "acknowledges a read round that was never started",
                    ));
                }
                let Some(pr) = self.progress.get_mut(&from) else {
                    return Ok(());
                };
                pr.recent_active = true;
                pr.probe_sent = false;
                // Appends or their answers may have been lost: let one more through,
                // so a full window cannot stall replication forever.
                pr.free_first_inflight();
                pr.read_round_acked = pr.read_round_acked.max(read_round);
                if pr.matched < self.log.last_index() {
                    self.send_append(from)?;
                }
                self.release_reads();
            }
            MessageBody::ReadIndex { context } => {
                if self.conf.current().contains(from) {
                    self.read_index(from, context);
                }
            }
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                return Err(invalid(&m, "another leader claims this node's term"));
            }
            MessageBody::VoteResponse { .. }
            | MessageBody::TimeoutNow
            | MessageBody::ReadIndexResponse { .. }
            | MessageBody::Vote { .. } => {}
        }
        Ok(())
    }

    fn step_candidate(&mut self, m: Message) -> Result<(), StepError> {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                // Someone won this term (§5.2).
                let term = self.term;
                self.become_follower(term, m.from);
                self.step_follower(m)
            }
            MessageBody::VoteResponse { pre_vote, granted } => {
                if pre_vote != (self.role == Role::PreCandidate) {
                    return Ok(()); // an answer to an earlier round
                }
                self.votes.entry(m.from).or_insert(granted);
                match self.tally() {
                    VoteResult::Won => self.won_election(pre_vote, false),
                    VoteResult::Lost => {
                        let term = self.term;
                        self.become_follower(term, NodeId::NONE);
                    }
                    VoteResult::Pending => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_follower(&mut self, m: Message) -> Result<(), StepError> {
        let from = m.from;
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                quiet,
            } => {
                self.election_elapsed = 0;
                self.leader = from;
                self.handle_append(from, prev_index, prev_term, entries, commit, quiet)?;
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.election_elapsed = 0;
                self.leader = from;
                // The leader sends min(commit, our match), so this never names an
                // entry we lack; clamp anyway rather than trust it.
                let commit = commit.min(self.log.last_index());
                self.log.commit_to(commit);
                self.send(from, MessageBody::HeartbeatResponse { read_round });
            }
            MessageBody::Snapshot { snapshot } => {
                self.election_elapsed = 0;
                self.leader = from;
                self.handle_snapshot(from, snapshot);
            }
            MessageBody::TimeoutNow => {
                // The leader hands over: campaign at once, no pre-vote (thesis §3.10).
                self.campaign(true);
            }
            MessageBody::ReadIndexResponse { context, index } if from == self.leader => {
                self.read_states.push(ReadState { index, context });
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        quiet: bool,
    ) -> Result<(), StepError> {
        let committed = self.log.committed;
        if prev_index < committed {
            self.send(
                from,
                MessageBody::AppendResponse {
                    result: AppendResult::Accepted {
                        last_index: committed,
                    },
                },
            );
            return Ok(());
        }
        if !self.log.match_term(prev_index, prev_term) {
            let (hint_index, hint_term) = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            let result = AppendResult::Rejected {
                rejected: prev_index,
                hint_index,
                hint_term,
            };
            self.send(from, MessageBody::AppendResponse { result });
            return Ok(());
        }
        let last_new = Index(prev_index.0 + entries.len() as u64);
        if let Some(conflict) = self.log.find_conflict(&entries) {
            if conflict <= self.log.committed {
                return Err(StepError::Invalid {
                    from,
                    reason: format!(
                        "entry {conflict} conflicts with committed entry at {}",
                        self.log.committed
                    ),
                });
            }
            let start = (conflict.0 - prev_index.0 - 1) as usize;
            let new = &entries[start..];
            if conflict <= self.log.last_index() {
                self.conf.truncate_from(conflict);
            }
            self.log.append(new);
            for e in new {
                if let EntryPayload::ConfChange(cc) = &e.payload {
                    self.conf.append(e.index, cc);
                }
            }
        }
        self.log.commit_to(commit.min(last_new));
        if quiet {
            // A commit update for a log that matches: the leader knows the match.
            return Ok(());
        }
        self.send(
            from,
            MessageBody::AppendResponse {
                result: AppendResult::Accepted {
                    last_index: last_new,
                },
            },
        );
        Ok(())
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: crate::types::Snapshot) {
        let meta = &snapshot.metadata;
        if meta.index <= self.log.committed {
            let last_index = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse {
                    result: AppendResult::Accepted { last_index },
                },
            );
        } else if self.log.match_term(meta.index, meta.term) {
            // We already have the snapshot's entries: just learn they are committed.
            // Answer with the commit index, not the last index: entries after it
            // may not match the leader's (etcd does the same).
            self.log.commit_to(meta.index);
            let last_index = self.log.committed;
            self.send(
                from,
                MessageBody::AppendResponse {
                    result: AppendResult::Accepted { last_index },
                },
            );
        } else {
            let index = meta.index;
            self.conf.reset(index, meta.conf_state.clone());
            self.log.restore(snapshot);
            self.send(
                from,
                MessageBody::AppendResponse {
                    result: AppendResult::Accepted { last_index: index },
                },
            );
        }
    }

    // ----- replication (leader) -------------------------------------------------

    fn append_entries(&mut self, payloads: Vec<EntryPayload>) -> Index {
        let mut index = self.log.last_index();
        let entries: Vec<Entry> = payloads
            .into_iter()
            .map(|payload| {
                index = index.next();
                Entry {
                    term: self.term,
                    index,
                    payload,
                }
            })
            .collect();
        let mut conf_changed = false;
        for e in &entries {
            self.uncommitted_size += e.size();
            if let EntryPayload::ConfChange(cc) = &e.payload {
                conf_changed |= self.conf.append(e.index, cc);
            }
        }
        let last = self.log.append(&entries);
        if conf_changed {
            self.rebuild_progress(true);
            // The voters changed: pending read rounds may be confirmed already.
            self.release_reads();
        }
        last
    }

    /// Advances the commit index to what a majority of voters hold, counting
    /// only entries of the current term (§5.4.2). Returns whether it moved.
    fn maybe_commit(&mut self) -> bool {
        let voters = &self.conf.current().voters;
        let progress = &self.progress;
        let candidate = Index(majority_value(voters, |id| {
            progress.get(&id).map_or(0, |p| p.matched.0)
        }));
        if candidate > self.log.committed && self.log.term(candidate).ok() == Some(self.term) {
            self.log.commit_to(candidate);
            self.after_commit();
            return true;
        }
        false
    }

    fn after_commit(&mut self) {
        // The leader's first commit in its term unlocks the reads waiting for it (§8).
        if self.committed_in_current_term() && !self.reads_before_term_commit.is_empty() {
            for (from, context) in std::mem::take(&mut self.reads_before_term_commit) {
                self.read_index(from, context);
            }
        }
        // A leader removed by a committed configuration steps down (thesis §4.2.2).
        if self.role == Role::Leader
            && !self.conf.current().is_voter(self.id)
            && self.conf.latest_index() <= self.log.committed
        {
            // Tell the others the removal committed before going quiet.
            self.broadcast_append();
            let term = self.term;
            self.become_follower(term, NodeId::NONE);
        }
    }

    /// Everyone the leader replicates to: its progress, less itself.
    fn peer_ids(&self) -> Vec<NodeId> {
        self.progress
            .keys()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    pub fn broadcast_append(&mut self) {
        for id in self.peer_ids() {
            // A storage failure surfaces on the next call that returns a Result.
            let _ = self.send_append(id);
        }
    }

    fn send_append(&mut self, to: NodeId) -> Result<bool, StepError> {
        self.maybe_send_append(to, true, false)
    }

    /// Sends what this Ready's proposals, acknowledgements and commits owe
    /// the followers, once for all of them: each follower gets its new
    /// entries (as many appends as its window allows) with the commit index
    /// on them, and a follower with no new entries gets the moved commit
    /// alone, as a quiet append if it replicates steadily. Batching here,
    /// instead of an append per proposal and per acknowledgement, is what
    /// makes one message per follower per Ready under load.
    pub(crate) fn flush_appends(&mut self) -> Result<(), StorageError> {
        let (append, commit) = (self.append_pending, self.commit_pending);
        self.append_pending = false;
        self.commit_pending = false;
        if !(append || commit) || self.role != Role::Leader {
            return Ok(());
        }
        let storage = |e: StepError| match e {
            StepError::Storage(e) => e,
            other => StorageError::Fatal(other.to_string()),
        };
        let committed = self.log.committed;
        for id in self.peer_ids() {
            let mut sent = false;
            while self.maybe_send_append(id, false, false).map_err(storage)? {
                sent = true;
            }
            if sent {
                continue;
            }
            // Nothing new for it: a follower being probed gets a probe (as for
            // every proposal before), one in steady replication the moved
            // commit, unless an Append already on its way carries it.
            let probing = self
                .progress
                .get(&id)
                .is_some_and(|p| p.state == ProgressState::Probe);
            let told = self.msgs.iter().any(|m| {
                m.to == id
                    && matches!(m.body, MessageBody::Append { commit, .. } if commit >= committed)
            });
            if (commit && !told) || (append && probing) {
                self.maybe_send_append(id, true, true).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Whether `flush_appends` has something to send.
    pub(crate) fn appends_pending(&self) -> bool {
        self.append_pending || self.commit_pending
    }

    /// Sends the follower what it needs next, unless its progress is paused.
    /// With `send_if_empty` false, an Append with no entries is not sent.
    /// With `quiet`, an Append with no entries to a follower in steady
    /// replication asks for no answer (it only moves the commit index).
    fn maybe_send_append(
        &mut self,
        to: NodeId,
        send_if_empty: bool,
        quiet: bool,
    ) -> Result<bool, StepError> {
        let Some(pr) = self.progress.get(&to) else {
            return Ok(false);
        };
        if pr.is_paused() {
            return Ok(false);
        }
        let next = pr.next;
        let prev_term = self.log.term(next.prev());
        let entries = self.log.entries_from(next, self.cfg.max_size_per_msg);
        match (prev_term, entries) {
            (Ok(prev_term), Ok(entries)) => {
                if entries.is_empty() && !send_if_empty {
                    return Ok(false);
                }
                let commit = self.log.committed;
                let last = entries.last().map(|e| e.index);
                let pr = self.progress.get_mut(&to).expect("checked above");
                let quiet = quiet && last.is_none() && pr.state == ProgressState::Replicate;
                if let Some(last) = last {
                    pr.sent_entries(last);
                } else if pr.state == ProgressState::Probe {
                    pr.probe_sent = true;
                }
                self.send(
                    to,
                    MessageBody::Append {
                        prev_index: next.prev(),
                        prev_term,
                        entries,
                        commit,
                        quiet,
                    },
                );
                Ok(true)
            }
            (Err(StorageError::Compacted), _) | (_, Err(StorageError::Compacted)) => {
                // The follower needs entries we no longer have: send the snapshot.
                let snapshot = match self.log.snapshot() {
                    Ok(s) => s,
                    Err(StorageError::SnapshotTemporarilyUnavailable) => return Ok(false),
                    Err(e) => return Err(StepError::Storage(e)),
                };
                let pr = self.progress.get_mut(&to).expect("checked above");
                pr.become_snapshot(snapshot.metadata.index);
                self.send(to, MessageBody::Snapshot { snapshot });
                Ok(true)
            }
            (Err(e), _) | (_, Err(e)) => Err(StepError::Storage(e)),
        }
    }

    /// Every heartbeat broadcast is a read round: reads waiting in the outbox
    /// join it, and its send time dates the leader's lease.
    fn broadcast_heartbeat(&mut self) {
        let (round, _) = self.start_round();
        self.send_heartbeats(round);
    }

    fn send_heartbeats(&mut self, read_round: u64) {
        let peers: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(&id, _)| id != self.id)
            .map(|(&id, pr)| (id, pr.matched.min(self.log.committed)))
            .collect();
        for (to, commit) in peers {
            self.send(to, MessageBody::Heartbeat { commit, read_round });
        }
    }

    /// The round whose heartbeats are still in the outbox, starting (and
    /// dating) a new one if none is; returns it and whether it is new.
    fn start_round(&mut self) -> (u64, bool) {
        let (round, new) = self.read_only.start_round();
        if new {
            self.round_sent_at.push_back((round, self.ticks));
            // A bounded window: rounds older than an election timeout cannot date a lease.
            while self.round_sent_at.len() > 2 * self.cfg.election_tick as usize + 4 {
                self.round_sent_at.pop_front();
            }
        }
        (round, new)
    }

    /// The newest round a majority of voters has acknowledged (the leader
    /// acknowledges every round it starts).
    fn confirmed_round(&self) -> u64 {
        let own = self.read_only.last_round();
        let (id, progress) = (self.id, &self.progress);
        majority_value(&self.conf.current().voters, |v| {
            if v == id {
                own
            } else {
                progress.get(&v).map_or(0, |p| p.read_round_acked)
            }
        })
    }

    /// Whether the leader lease holds: a quorum acknowledged a heartbeat sent
    /// less than `election_tick - 2` ticks ago. Each of those voters refuses
    /// to vote for `election_tick` ticks after hearing it (check-quorum), and
    /// any new leader needs one of them; two ticks absorb tick phase and
    /// clock-rate drift. Void after a TimeoutNow, which bypasses those leases.
    fn lease_valid(&self) -> bool {
        if self.lease_revoked || !self.cfg.check_quorum || !self.lead_transferee.is_none() {
            return false;
        }
        let confirmed = self.confirmed_round();
        let sent = self
            .round_sent_at
            .iter()
            .rev()
            .find(|(r, _)| *r <= confirmed)
            .map(|(_, t)| *t);
        sent.is_some_and(|t| self.ticks < t + self.cfg.election_tick.saturating_sub(2))
    }

    /// The driver made entries durable up to (`index`, `term`). A leader counts
    /// its own copy only now (thesis §10.2.1: it may persist in parallel with
    /// sending, but it is not part of a majority until durable).
    pub fn on_persisted(&mut self, index: Index, term: Term) {
        self.log.stable_to(index, term);
        if self.role == Role::Leader {
            let stable = self.log.stable_last_index();
            if let Some(pr) = self.progress.get_mut(&self.id) {
                pr.maybe_update(stable);
            }
            if self.maybe_commit() {
                self.commit_pending = true;
            }
        }
    }

    /// The application applied everything up to `index`; its bytes no longer
    /// count against the uncommitted budget.
    pub fn on_applied(&mut self, index: Index, bytes: u64) {
        self.log.applied_to(index);
        self.uncommitted_size = self.uncommitted_size.saturating_sub(bytes);
    }

    // ----- client requests ------------------------------------------------------

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if !self.lead_transferee.is_none() {
            return Err(ProposeError::ProposalDropped {
                reason: "leadership transfer in progress",
            });
        }
        Ok(())
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<Proposed, ProposeError> {
        self.check_can_propose()?;
        let size = 16 + data.len() as u64;
        if self.uncommitted_size > 0 && self.uncommitted_size + size > self.cfg.max_uncommitted_size
        {
            return Err(ProposeError::ProposalDropped {
                reason: "too many uncommitted bytes",
            });
        }
        let index = self.append_entries(vec![EntryPayload::Normal(data)]);
        self.append_pending = true;
        Ok(Proposed {
            index,
            term: self.term,
        })
    }

    /// Proposes one membership step. Refused while another is uncommitted or
    /// before the leader has committed an entry of its term: the second rule is
    /// the fix for the single-server change bug Ongaro reported in 2015.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposed, ProposeError> {
        self.check_can_propose()?;
        if self.conf.latest_index() > self.log.committed || !self.committed_in_current_term() {
            return Err(ProposeError::ConfChangePending);
        }
        self.conf
            .current()
            .apply(&change)
            .map_err(ProposeError::InvalidConfChange)?;
        let index = self.append_entries(vec![EntryPayload::ConfChange(change)]);
        self.append_pending = true;
        Ok(Proposed {
            index,
            term: self.term,
        })
    }

    /// Asks for a linearizable read; the answer comes as a `ReadState`.
    pub fn request_read(&mut self, context: Vec<u8>) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => {
                self.read_index(self.id, context);
                Ok(())
            }
            _ if !self.leader.is_none() => {
                let leader = self.leader;
                self.send(leader, MessageBody::ReadIndex { context });
                Ok(())
            }
            _ => Err(ProposeError::NotLeader {
                leader_hint: NodeId::NONE,
            }),
        }
    }

    fn read_index(&mut self, from: NodeId, context: Vec<u8>) {
        if !self.committed_in_current_term() {
            // Our commit index may lag what earlier leaders committed (§8).
            self.reads_before_term_commit.push((from, context));
            return;
        }
        let index = self.log.committed;
        let single_voter =
            self.conf.current().voters.len() == 1 && self.conf.current().is_voter(self.id);
        if single_voter || (self.cfg.read_only == ReadOnlyOption::LeaseBased && self.lease_valid())
        {
            self.answer_read(from, context, index);
            return;
        }
        // Safe mode, or a lease that has lapsed: confirm with a quorum round.
        let (round, new) = self.start_round();
        self.read_only.add(from, context, index, round);
        if new {
            self.send_heartbeats(round);
        }
    }

    fn release_reads(&mut self) {
        if self.read_only.pending_count() == 0 {
            return;
        }
        let confirmed = self.confirmed_round();
        for read in self.read_only.release(confirmed) {
            self.answer_read(read.from, read.context, read.index);
        }
    }

    fn answer_read(&mut self, from: NodeId, context: Vec<u8>, index: Index) {
        if from == self.id {
            self.read_states.push(ReadState { index, context });
        } else {
            self.send(from, MessageBody::ReadIndexResponse { context, index });
        }
    }

    /// The outbox was handed out: reads arriving from now on need a new round.
    pub fn close_read_round(&mut self) {
        self.read_only.close_round();
    }

    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if target == self.id {
            return Ok(());
        }
        if !self.conf.current().is_voter(target) {
            return Err(ProposeError::InvalidTransferTarget(target));
        }
        if self.lead_transferee == target {
            return Ok(());
        }
        self.lead_transferee = target;
        self.transfer_elapsed = 0; // the transfer must finish within an election timeout
        if self.progress.get(&target).map(|p| p.matched) == Some(self.log.last_index()) {
            self.send_timeout_now(target);
        } else {
            let _ = self.send_append(target);
        }
        Ok(())
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        // The target will campaign past the voters' leases: ours is void now.
        self.lease_revoked = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    /// The transport could not reach `to`: stop streaming and probe.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    /// The transport finished (or failed) sending a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        if let Some(pr) = self.progress.get_mut(&to) {
            if pr.state == ProgressState::Snapshot {
                if !delivered {
                    pr.pending_snapshot = Index(0);
                }
                pr.become_probe();
                // Wait for the follower's answer before sending more.
                pr.probe_sent = delivered;
            }
        }
    }

    // ----- sending ----------------------------------------------------------------

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let m = Message {
            from: self.id,
            to,
            term,
            body,
        };
        // A leader's messages depend on nothing unsynced; anything a follower or
        // candidate says (votes, acknowledgements) may only leave once this
        // Ready's hard state and entries are durable.
        if self.role == Role::Leader {
            self.msgs.push(m);
        } else {
            self.persisted_msgs.push(m);
        }
    }

    // ----- invariants -----------------------------------------------------------

    /// Panics with node, term and index if an invariant of the type is broken.
    pub fn check_invariants(&self) {
        let (id, term) = (self.id, self.term);
        let last = self.log.last_index();
        assert!(
            self.log.applied <= self.log.committed && self.log.committed <= last,
            "node {id} term {term}: applied {} committed {} last {last}",
            self.log.applied,
            self.log.committed
        );
        assert!(
            self.log.last_term() <= term,
            "node {id} term {term}: last entry has term {}",
            self.log.last_term()
        );
        let conf = self.conf.current();
        assert!(
            conf.voters.iter().all(|v| !conf.learners.contains(v)),
            "node {id} term {term}: voters and learners overlap at index {last}"
        );
        if self.role == Role::Leader {
            assert!(
                self.leader == id && self.vote == id,
                "node {id} term {term}: leader did not vote for itself"
            );
            for (peer, pr) in &self.progress {
                assert!(
                    pr.matched < pr.next && pr.next <= last.next(),
                    "node {id} term {term}: progress of {peer} matched {} next {} last {last}",
                    pr.matched,
                    pr.next
                );
            }
            if let Some(own) = self.progress.get(&id) {
                assert!(
                    own.matched <= self.log.stable_last_index(),
                    "node {id} term {term}: counts its own entry {} before it is durable",
                    own.matched
                );
            }
        }
    }
}

fn invalid(m: &Message, reason: &str) -> StepError {
    StepError::Invalid {
        from: m.from,
        reason: format!("{}: {reason}", m.body.name()),
    }
}
