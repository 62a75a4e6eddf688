//! Nod's Rust client library: the etcd v3 API (`Client`, over one
//! load-balanced channel to every endpoint given) and etcdctl's txn syntax
//! (`txn`). The `nod` CLI and the operator are built on it.
//!
//! Depends on the wire types (`nod-proto`), tonic and tokio only: never on
//! the server, RocksDB or gossip (`node/tests/layers.rs` checks it). Read
//! `client.rs` first.

mod client;
pub mod txn;

pub use client::{not_sent, prefix_end, Client, ClientError, KeySpan, Result};
