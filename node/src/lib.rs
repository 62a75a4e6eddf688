//! The Nod server library: durable storage (`storage`: the Raft log and the
//! MVCC state machine in RocksDB), the peer transport (`transport`), the
//! etcd v3 API (`api`), the node that joins them (`server`, whose `driver`
//! is the one loop around the consensus core). The wire types live in
//! `nod-proto` and the client in `nod-client`; the `nod` binary parses its
//! flags with `cli` and dispatches.

pub mod api;
pub mod cli;
pub mod gossip;
pub mod server;
pub mod storage;
pub mod transport;

/// The old path of the client library, kept so code written against
/// `crate::client` still compiles; new code imports `nod_client`.
pub use nod_client as client;
