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
//! - `ClientBuilder::user(name, password)` logs in as etcd's clients do
//!   (`auth.rs`): Auth.Authenticate on any healthy endpoint before the
//!   first call, the token sent as `token` metadata on every call and
//!   stream of the client and its clones, a token refused as stale ("invalid
//!   auth token", "revision of auth store is old") replaced once and the
//!   call sent again, and no token at all when the cluster answers
//!   "authentication is not enabled". A wrong password is the first call's
//!   error (or `Client::authenticate`'s, to check it at once).
//!
//! - `Watcher` resumes a watch on another member after a failure, never
//!   delivering an event twice or skipping one; `LeaseKeeper` renews a
//!   lease at TTL/3 and reports its loss; `PutBatcher` packs small puts
//!   into Txns of up to 128 operations; `concurrency` has `Session`,
//!   `Mutex` and `Election`; `blocking::Client` wraps the main calls.
//!
//! ```no_run
//! use std::time::Duration;
//! use nod_client::{Client, KeySpan, WatchOptions};
//! use nod_proto::etcd::etcdserverpb::PutRequest;
//!
//! # async fn demo() -> nod_client::Result<()> {
//! let endpoints = ["127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379"].map(String::from);
//! let mut client = Client::connect(&endpoints, Duration::from_secs(5))?;
//! // On a cluster with authentication on (`ClientBuilder::user` has more):
//! // Client::builder(endpoints).user("root", "s3cret").build()?
//! client
//!     .put(PutRequest { key: b"greeting".to_vec(), value: b"hello".to_vec(), ..Default::default() })
//!     .await?;
//! let kv = client.get("greeting").await?.expect("just written");
//! let mut watch = client
//!     .watcher("greeting", WatchOptions { start_revision: kv.mod_revision, ..Default::default() })
//!     .await?;
//! while let Some(batch) = watch.next().await {
//!     for event in batch?.events {
//!         println!("{:?}", event.kv);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Whether a failed call is sent again is decided in one place, without a
//! server:
//!
//! ```
//! use nod_client::retry::{may_retry, Idempotence};
//! use tonic::Status;
//!
//! let no_leader = Status::unavailable("etcdserver: no leader"); // refused before proposing
//! let timed_out = Status::unavailable("etcdserver: request timed out"); // may have applied
//! assert!(may_retry(&no_leader, Idempotence::NonIdempotent));
//! assert!(!may_retry(&timed_out, Idempotence::NonIdempotent));
//! assert!(may_retry(&timed_out, Idempotence::Idempotent));
//! ```
//!
//! Depends on the wire types (`nod-proto`), tonic, tokio and futures only:
//! never on the server, RocksDB or gossip (`node/tests/layers.rs` checks it).

pub mod auth;
pub mod backoff;
pub mod backup_agent;
mod batcher;
pub mod blocking;
pub mod breaker;
mod client;
pub mod concurrency;
mod endpoints;
mod lease_keeper;
mod options;
#[cfg(feature = "pki")]
pub mod pki;
mod query;
pub mod retry;
pub mod tls;
pub mod txn;
mod watcher;

pub use auth::Credentials;
pub use batcher::{BatchOptions, PutBatcher, MAX_TXN_OPS};
pub use client::{
    prefix_end, txn_is_read_only, Client, ClientError, KeySpan, Result, SnapshotWritten,
};
pub use endpoints::{EndpointInfo, HealthSettings, Route};
pub use lease_keeper::{LeaseKeeper, LeaseState};
pub use options::{CallOptions, ClientBuilder};
pub use retry::not_sent;
pub use watcher::{WatchBatch, WatchOptions, Watcher};
