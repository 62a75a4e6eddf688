//! The peer transport: the wire codec for Raft messages (`codec`) and the
//! tonic service and per-peer streams that carry them (`peer`).

pub mod codec;
pub mod peer;

// The old paths of the generated peer protocol, kept so code written
// against `crate::transport::nodraftpb` still compiles; new code imports
// `nod_proto` directly.
pub use nod_proto::{nodraftpb, nodserverpb};
