//! Nod's Raft consensus core: a deterministic state machine with no I/O.
//!
//! Inputs are ticks, peer messages and client requests; the output is a
//! [`Ready`] that says what to persist, send and apply. Nothing here touches a
//! disk, a socket, a clock, a thread or a global RNG; election jitter comes
//! from [`Config::seed`]. `tests/purity.rs` keeps it that way.
//!
//! Read in this order: [`RawNode`] (the contract and the driver loop), then
//! `raft.rs` (`Raft::step`), then `raft_log.rs`, `progress.rs`,
//! `read_only.rs`, `conf_history.rs`; [`Storage`] and [`conformance`] for
//! durable implementations. ARCHITECTURE.md has the safety arguments.

mod conf_history;
pub mod config;
pub mod conformance;
pub mod error;
pub mod message;
pub mod progress;
pub mod quorum;
mod raft;
pub mod raft_log;
mod raw_node;
pub mod read_only;
pub mod rng;
pub mod storage;
pub mod types;

pub use config::{Config, ReadOnlyOption};
pub use error::{ConfigError, ProposeError, StepError, StorageError};
pub use message::{AppendResult, Message, MessageBody};
pub use progress::ProgressState;
pub use raft::Proposed;
pub use raw_node::{PeerStatus, RawNode, Ready, Status};
pub use storage::{bootstrap_snapshot, LogWrite, MemStorage, RaftState, Storage, StorageWrite};
pub use types::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryPayload, HardState, Index, NodeId,
    ReadState, Role, Snapshot, SnapshotMetadata, SoftState, Term,
};
