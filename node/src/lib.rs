//! The Nod server library. So far: durable storage for the Raft log
//! (`storage`), the etcd v3 API types generated from its protos (`api`) and
//! the wire codec of Nod's peer protocol (`transport`).
//! The driver, transport and services come next; the `nod` binary wires
//! them together.

pub mod api;
pub mod storage;
pub mod transport;
