//! The edges the driver reaches the world through, as traits: how answers
//! travel, the network, and state machine snapshots. The server implements
//! them over tokio, tonic and RocksDB (`crate::server::driver`); the
//! simulation over memory with seeded faults. No I/O here.

use std::collections::HashMap;

use nod_raft::{Message, NodeId};

use super::request::{DriverError, Fatal};
use crate::command::MemberAttributes;
use crate::storage::backend::Backend;
use crate::storage::checkpoint::{CheckpointError, CheckpointInfo};
use crate::storage::KvStore;
use nod_proto::nodserverpb::ProposeResult;

/// One answer to one request.
pub trait Reply<T>: Send {
    fn send(self, result: Result<T, DriverError>);
    /// The caller gave up (timed out, disconnected): its slot can go.
    fn is_closed(&self) -> bool;
}

/// How answers travel: a family of [`Reply`] types, one per answer type.
pub trait Replies: 'static {
    type Reply<T: Send + 'static>: Reply<T>;
}

/// How a batch of forwarded proposals ended.
#[derive(Debug)]
pub struct ForwardOutcome {
    /// The leader the call went to.
    pub leader: NodeId,
    pub ids: Vec<u64>,
    /// Per command, where the leader put it or why it did not.
    pub result: Result<Vec<ProposeResult>, ForwardFailure>,
}

/// Why a whole forwarded batch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardFailure {
    /// Never sent (no connection): nothing was appended, a retry is safe.
    NotSent,
    /// The leader refused the call (wrong cluster, malformed): nothing appended.
    Refused(String),
    /// The call may have reached the leader: the outcome is unknown.
    Unknown,
}

/// The peer network.
pub trait Network {
    /// Sends Raft messages (best effort; loss is Raft's to handle).
    fn send(&mut self, messages: Vec<Message>);
    /// The peers and their URLs, as the member table says.
    fn set_peers(&mut self, peers: HashMap<NodeId, String>);
    /// Hands client writes (`(id, encoded command)`, origin `from`) to the
    /// leader; each call's [`ForwardOutcome`] comes back through
    /// `Core::on_forwarded`. The number of calls made, or None when there is
    /// no link to `leader`.
    fn forward_proposals(
        &mut self,
        leader: NodeId,
        from: u64,
        commands: Vec<(u64, Vec<u8>)>,
    ) -> Option<usize>;
    /// Asks the leader to publish this member's attributes (fire and forget).
    fn forward_attributes(&mut self, leader: NodeId, attributes: MemberAttributes);
}

/// State machine snapshots (checkpoints).
pub trait Snapshotter<B: Backend> {
    /// Starts a checkpoint of `store` in the background; the result comes
    /// back through `Core::on_snapshot_taken`.
    fn take(&mut self, store: &KvStore<B>);
    /// Keeps the newest `keep` checkpoints.
    fn prune(&mut self, keep: usize);
    /// Opens the checkpoint of `(index, term)` that the leader sent, as the
    /// store to replace the current one with.
    fn open_received(&mut self, index: u64, term: u64) -> Result<KvStore<B>, Fatal>;
    /// Called once the old store is dropped after an install: clear it away.
    fn installed(&mut self) -> Result<(), Fatal>;
}

/// Measures how long a step took, for metrics only (never for decisions:
/// those take the time the adapter gives). The simulation's reads zero.
pub trait Stopwatch {
    fn start() -> Self;
    fn seconds(&self) -> f64;
}

/// A step of a traced entry on one member (a span of the request's trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Written to this member's log (with its fsync).
    Append,
    /// On the leader: from its append until a quorum has it (commit).
    Commit,
    /// Applied to this member's store (the batch it went in, committed).
    Apply,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Append => "raft.append",
            Step::Commit => "raft.commit",
            Step::Apply => "raft.apply",
        }
    }
}

/// Spans of traced entries (whose command carries a W3C traceparent):
/// what each step took on this member. The server exports them over OTLP;
/// the simulation keeps them in memory.
pub trait Spans {
    /// A point in time, on the platform's clock.
    type Mark: Copy;
    /// Whether spans are recorded at all: entries are read for a trace
    /// context only then.
    fn enabled(&self) -> bool;
    fn mark(&self) -> Self::Mark;
    /// One finished step of the entry at `index`, a child of `parent`.
    fn record(&mut self, parent: &str, step: Step, index: u64, start: Self::Mark, end: Self::Mark);
}

/// The edges, chosen together.
pub trait Platform: 'static {
    /// Where the state machine keeps its data.
    type Backend: Backend;
    type Log: nod_raft::StorageWrite;
    type Net: Network;
    type Snapshots: Snapshotter<Self::Backend>;
    type Replies: Replies;
    type Stopwatch: Stopwatch;
    type Spans: Spans;
}

/// A finished checkpoint, or why it failed.
pub type Taken = Result<CheckpointInfo, CheckpointError>;
