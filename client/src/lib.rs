//! Nod's Rust client library: the etcd v3 API as users of etcd's Go client
//! expect it, and etcdctl's txn syntax (`txn`). The `nod` CLI and the
//! operator are built on it.
//!
//! Read `client.rs` first, then `endpoints.rs` and `retry.rs`.
//!
//! - `Client` keeps one channel per endpoint, learns members and leader
//!   (Maintenance.Status), sends writes and linearizable reads to the
//!   leader (else to any healthy endpoint, which forwards), and keeps each
//!   endpoint's health: a back-off after a transport failure and a circuit
//!   breaker (`breaker.rs`).
//! - Calls are retried with exponential back-off and jitter (`backoff.rs`)
//!   within `CallOptions`: reads always on `Unavailable`, writes only when
//!   they provably were not applied (`retry.rs` has the table).
//!
//! Depends on the wire types (`nod-proto`), tonic, tokio and futures only:
//! never on the server, RocksDB or gossip (`node/tests/layers.rs` checks it).

pub mod backoff;
pub mod breaker;
mod client;
pub mod concurrency;
mod endpoints;
mod lease_keeper;
mod options;
pub mod retry;
pub mod txn;
mod watcher;

pub use client::{prefix_end, txn_is_read_only, Client, ClientError, KeySpan, Result};
pub use endpoints::{EndpointInfo, HealthSettings, Route};
pub use lease_keeper::{LeaseKeeper, LeaseState};
pub use options::{CallOptions, ClientBuilder};
pub use retry::not_sent;
pub use watcher::{WatchBatch, WatchOptions, Watcher};
