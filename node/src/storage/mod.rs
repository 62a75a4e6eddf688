//! Durable storage: the Raft log store in RocksDB and its record encoding.
//! The MVCC state machine (`kv_store`) lives beside the log in its own
//! RocksDB, over a `backend::Backend` (RocksDB, or memory for simulation).

pub mod backend;
pub mod bbolt;
pub mod checkpoint;
pub mod codec;
pub mod kv_store;
pub mod log_store;
pub mod tuning;

pub use kv_store::{KvError, KvStore, ReadError, StoreError};
pub use log_store::LogStore;
