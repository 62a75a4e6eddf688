//! What the driver is asked and what it answers: requests, outcomes and
//! errors. Plain data, no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use nod_raft::{ConfChange, NodeId};

use super::platform::Replies;
use crate::auth::{AuthApplied, AuthError};
use crate::command::{Caller, Op};
use crate::storage::{KvError, StoreError};
use nod_proto::etcd::etcdserverpb::{
    AlarmMember, DeleteRangeResponse, Member, PutResponse, TxnResponse,
};
use nod_proto::nodserverpb::ProposeResult;

/// Why a request did not get a result. Each is the request's own outcome,
/// sent to its caller; a failure of the node itself is [`Fatal`].
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
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The outcome is unknown (the proposal may have been applied): never retried.
    #[error("etcdserver: request timed out")]
    Timeout,
}

/// A failure of this member's own storage: the driver stops, the node
/// reports it, and no caller retries against it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fatal {
    #[error("log storage: {0}")]
    Log(String),
    #[error("state machine: {0}")]
    Store(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The task running the driver ended without an answer (it panicked).
    #[error("driver task failed: {0}")]
    Task(String),
}

impl From<nod_raft::StorageError> for Fatal {
    fn from(e: nod_raft::StorageError) -> Fatal {
        Fatal::Log(e.to_string())
    }
}

impl From<StoreError> for Fatal {
    fn from(e: StoreError) -> Fatal {
        Fatal::Store(e.to_string())
    }
}

/// What applying a proposal produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compacted,
    LeaseGranted,
    LeaseRevoked,
    Members(Vec<Member>),
    /// The alarms an alarm request listed, raised or cleared.
    Alarms(Vec<AlarmMember>),
    /// An auth store change; for a login, the token every member knows.
    Auth {
        applied: AuthApplied,
        token: Option<String>,
    },
    /// An index declared or dropped, as it stood then.
    Index(crate::storage::kv_store::IndexDef),
    Nothing,
}

/// A proposal's outcome with the store revision after it and its term.
#[derive(Debug, Clone)]
pub struct Applied {
    pub outcome: Outcome,
    pub revision: i64,
    pub term: u64,
}

/// A request to the driver; `R` says how answers travel (a oneshot channel
/// in the server, a slot the simulator reads).
pub enum Request<R: Replies> {
    Propose {
        op: Op,
        /// Who asked, checked when the entry applies (`None`: this member).
        caller: Option<Caller>,
        /// The W3C traceparent of the traced request that asks (`None`:
        /// not traced): the entry carries it, so every member's spans for
        /// it join the request's trace.
        trace: Option<String>,
        reply: R::Reply<Applied>,
    },
    ConfChange {
        change: ConfChange,
        reply: R::Reply<Applied>,
    },
    /// Commands a follower forwarded: appended if this node leads, answered
    /// with where each went; the follower waits for them itself.
    ProposeForwarded {
        commands: Vec<Vec<u8>>,
        reply: R::Reply<Vec<ProposeResult>>,
    },
    /// Answered once this node has applied everything committed before the
    /// request (ReadIndex, §8 / thesis §6.4).
    ReadIndex {
        reply: R::Reply<()>,
    },
    KeepAlive {
        id: i64,
        reply: R::Reply<i64>,
    },
    /// (remaining seconds, granted TTL)
    TimeToLive {
        id: i64,
        reply: R::Reply<(i64, i64)>,
    },
    TransferLeader {
        target: NodeId,
        reply: R::Reply<()>,
    },
    RaftStatus {
        reply: R::Reply<nod_raft::Status>,
    },
    /// How long ago a Raft message last arrived from each member.
    Contact {
        reply: R::Reply<BTreeMap<u64, Duration>>,
    },
}

/// What the API reads without going through the loop.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    pub leader: u64,
    pub term: u64,
    pub role: Option<nod_raft::Role>,
    pub commit: u64,
    pub applied: u64,
    pub removed: bool,
    pub fatal: Option<String>,
}
