//! The peer transport. So far: the wire codec for Raft messages (`codec`);
//! the tonic streams (one per peer for messages, one for snapshots) come next.

pub mod codec;
