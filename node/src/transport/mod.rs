//! The peer transport: the wire codec for Raft messages (`codec`) and the
//! tonic service and per-peer streams that carry them (`peer`).

pub mod codec;
pub mod peer;

/// Code generated from `proto/nod/raft.proto`.
pub mod nodraftpb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/nod/nodraftpb.rs"));
}

/// Code generated from `proto/nod/server.proto`.
pub mod nodserverpb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/nod/nodserverpb.rs"));
}
