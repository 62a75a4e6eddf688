//! The core's errors. Expected outcomes are variants with the data a caller
//! needs; none of them leaves the core changed.

use crate::types::{Index, NodeId};

/// Why a proposal, a read or a membership change was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader_hint` is who this node
    /// believes leads (`NodeId::NONE` if it knows of none). The server forwards.
    #[error("not the leader (leader hint: {leader_hint})")]
    NotLeader { leader_hint: NodeId },
    /// The leader is handing leadership away or is over its uncommitted-bytes
    /// budget; retry shortly.
    #[error("proposal dropped: {reason}")]
    ProposalDropped { reason: &'static str },
    /// A membership change is appended but not yet committed, or the leader has
    /// not yet committed an entry of its own term (thesis §4.1 and the 2015 fix).
    #[error("a membership change is already in progress")]
    ConfChangePending,
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    /// The leader-transfer target is not a voter or is this node.
    #[error("invalid leader transfer target {0}")]
    InvalidTransferTarget(NodeId),
}

/// Why storage could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The entries were compacted away behind a snapshot.
    #[error("index is compacted")]
    Compacted,
    /// The index is past the end of the log.
    #[error("index {0} is unavailable")]
    Unavailable(Index),
    /// A snapshot is being built; ask again later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// The snapshot to apply is older than what storage holds.
    #[error("snapshot is out of date")]
    SnapshotOutOfDate,
    /// The disk failed or holds corrupt data. The node must stop (never retried).
    #[error("fatal storage error: {0}")]
    Fatal(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid raft config: {0}")]
    Invalid(String),
    #[error("cannot read initial state: {0}")]
    Storage(#[from] StorageError),
}

/// Why a message was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("message for node {to} delivered to node {id}")]
    Misrouted { to: NodeId, id: NodeId },
    /// The peer broke the protocol; the message was dropped and nothing changed.
    #[error("invalid message from node {from}: {reason}")]
    Invalid { from: NodeId, reason: String },
    /// Reading the log failed: the node must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
