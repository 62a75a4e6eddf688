//! Messages between peers. The transport encodes them; the core only builds and
//! reads them. Every field a peer sends is checked before it is trusted: see
//! `Raft::step`.

use crate::types::{Entry, Index, NodeId, Snapshot, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term (for `PreVote`, the term it would campaign in).
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Leader → follower: entries following `prev_index`/`prev_term` (§5.3).
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
        /// Sent only to move the follower's commit index forward (no
        /// entries): the follower answers it only if it does not match.
        /// The leader sets it only for a follower in steady replication,
        /// where an accepted answer would tell it nothing it does not know.
        quiet: bool,
    },
    /// Follower → leader, sent only once the accepted entries are durable.
    AppendResponse {
        result: AppendResult,
    },
    /// Leader → follower: "I still lead"; carries the commit index the follower
    /// can safely use and the ReadIndex round being confirmed.
    Heartbeat {
        commit: Index,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// Candidate → voter: a vote (or, with `pre_vote`, a would-you-vote) request.
    Vote {
        pre_vote: bool,
        last_index: Index,
        last_term: Term,
        /// Set when campaigning on a leader's TimeoutNow: voters skip the
        /// leader-lease check (thesis §3.10).
        transfer: bool,
    },
    VoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    /// Leader → follower whose next entry was compacted away.
    Snapshot {
        snapshot: Snapshot,
    },
    /// Leader → transfer target: campaign now (thesis §3.10).
    TimeoutNow,
    /// Follower → leader: confirm leadership for a read (§8).
    ReadIndex {
        context: Vec<u8>,
    },
    /// Leader → follower: the index a forwarded read must wait for.
    ReadIndexResponse {
        context: Vec<u8>,
        index: Index,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `last_index`.
    Accepted { last_index: Index },
    /// The follower has no entry matching `rejected`; `hint_index`/`hint_term`
    /// name the last entry it has with a term ≤ the leader's term at `rejected`,
    /// so the leader can skip a whole term per round trip (§5.3, fast back-off).
    Rejected {
        rejected: Index,
        hint_index: Index,
        hint_term: Term,
    },
}

impl MessageBody {
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::Vote { pre_vote: true, .. } => "PreVote",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Snapshot { .. } => "Snapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}
