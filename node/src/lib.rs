//! The Nod server library. So far: durable storage for the Raft log
//! (`storage`) and the etcd v3 API types generated from its protos (`api`).
//! The driver, transport and services come next; the `nod` binary wires
//! them together.

pub mod api;
pub mod storage;
