//! The Nod server library: durable storage (`storage`: the Raft log and the
//! MVCC state machine in RocksDB), the peer transport (`transport`), the
//! etcd v3 API (`api`), the node that joins them (`server`, whose `driver`
//! is the one loop around the consensus core) and the client (`client`).
//! The `nod` binary wires them together.

pub mod api;
pub mod client;
pub mod driver;
pub mod gossip;
pub mod server;
pub mod simulation;
pub mod storage;
pub mod transport;
