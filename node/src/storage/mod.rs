//! Durable storage: the Raft log store in RocksDB and its record encoding.
//! The MVCC state machine joins it with the server.

pub mod codec;
pub mod log_store;

pub use log_store::LogStore;
