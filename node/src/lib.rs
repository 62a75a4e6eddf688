//! The Nod server library. So far: durable storage for the Raft log
//! (`storage`). The driver, transport and etcd API come next; the `nod`
//! binary wires them together.

pub mod storage;
