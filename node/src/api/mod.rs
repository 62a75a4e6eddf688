//! The client-facing API: etcd v3, wire-compatible. The types, clients and
//! service traits are generated in `nod-proto` (`proto/etcd`); one module
//! per service implements them, and `status` turns every error into etcd's
//! gRPC status. Lock and Election are built, as in etcd, over the other
//! services' paths for the caller (`in_process`, `key_watch`).

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod election;
pub mod gateway;
pub mod in_process;
pub mod key_watch;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod query;
pub mod status;
pub mod watch;

/// The old path of the generated etcd types, kept so code written against
/// `crate::api::etcd` still compiles; new code imports `nod_proto::etcd`.
pub use nod_proto::etcd;
