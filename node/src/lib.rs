//! The Nod server library: durable storage (`storage`: the Raft log and the
//! MVCC state machine in RocksDB), the peer transport (`transport`), the
//! etcd v3 API (`api`), the node that joins them (`server`, whose `driver`
//! is the one loop around the consensus core). The wire types live in
//! `nod-proto` and the client in `nod-client`; the `nod` binary parses its
//! flags with `cli` and dispatches. `command` (what a log entry carries)
//! and `identity` (who a node is) sit below the transport and the server,
//! which both use them, as does `tls` (TLS on the ports a member serves
//! and dials). Imports point down only: storage never imports the
//! API or the server, the transport never the server (`tests/layers.rs`).

pub mod api;
pub mod auth;
pub mod cli;
pub mod command;
pub mod console;
pub mod driver;
pub mod gossip;
pub mod identity;
pub mod metrics;
pub mod server;
pub mod simulation;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod watch_hub;

/// The old path of the client library, kept so code written against
/// `crate::client` still compiles; new code imports `nod_client`.
pub use nod_client as client;
