//! Raft messages on the wire: conversion between `nod_raft::Message` and the
//! peer protocol in `proto/nod/raft.proto`. Decoding trusts nothing: a
//! missing body or payload, an unknown enum value, node id 0, or more
//! entries or members than the limits is refused with a `WireError` before
//! the core sees the message (which then checks the protocol itself).

use nod_raft::{
    AppendResult, ConfChange, ConfChangeKind, ConfState, Entry, EntryPayload, Index, Message,
    MessageBody, NodeId, Snapshot, SnapshotMetadata, Term,
};

pub use nod_proto::nodraftpb as pb;

/// Most entries one Append may carry.
pub const MAX_ENTRIES: usize = 100_000;
/// Most members a configuration may list.
pub const MAX_MEMBERS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{what}: {n} exceeds the limit of {limit}")]
    TooMany {
        what: &'static str,
        n: usize,
        limit: usize,
    },
}

fn encode_entry(e: &Entry) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Empty => pb::entry::Payload::Empty(pb::Empty {}),
        EntryPayload::Normal(d) => pb::entry::Payload::Normal(d.clone()),
        EntryPayload::ConfChange(cc) => pb::entry::Payload::ConfChange(pb::ConfChange {
            kind: match cc.kind {
                ConfChangeKind::AddLearner => pb::conf_change::Kind::AddLearner,
                ConfChangeKind::AddVoter => pb::conf_change::Kind::AddVoter,
                ConfChangeKind::PromoteLearner => pb::conf_change::Kind::PromoteLearner,
                ConfChangeKind::Remove => pb::conf_change::Kind::Remove,
            } as i32,
            node: cc.node.0,
            context: cc.context.clone(),
        }),
    };
    pb::Entry {
        term: e.term.0,
        index: e.index.0,
        payload: Some(payload),
    }
}

fn decode_entry(e: pb::Entry) -> Result<Entry, WireError> {
    let payload = match e.payload.ok_or(WireError::Missing("entry payload"))? {
        pb::entry::Payload::Empty(_) => EntryPayload::Empty,
        pb::entry::Payload::Normal(d) => EntryPayload::Normal(d),
        pb::entry::Payload::ConfChange(cc) => {
            let kind = match pb::conf_change::Kind::try_from(cc.kind) {
                Ok(pb::conf_change::Kind::AddLearner) => ConfChangeKind::AddLearner,
                Ok(pb::conf_change::Kind::AddVoter) => ConfChangeKind::AddVoter,
                Ok(pb::conf_change::Kind::PromoteLearner) => ConfChangeKind::PromoteLearner,
                Ok(pb::conf_change::Kind::Remove) => ConfChangeKind::Remove,
                Err(_) => return Err(WireError::Invalid("conf change kind")),
            };
            EntryPayload::ConfChange(ConfChange {
                kind,
                node: NodeId(cc.node),
                context: cc.context,
            })
        }
    };
    Ok(Entry {
        term: Term(e.term),
        index: Index(e.index),
        payload,
    })
}

fn decode_members(ids: Vec<u64>, what: &'static str) -> Result<Vec<NodeId>, WireError> {
    if ids.len() > MAX_MEMBERS {
        return Err(WireError::TooMany {
            what,
            n: ids.len(),
            limit: MAX_MEMBERS,
        });
    }
    if ids.contains(&0) {
        return Err(WireError::Invalid("member id 0"));
    }
    Ok(ids.into_iter().map(NodeId).collect())
}

pub fn encode_message(m: &Message) -> pb::Message {
    use pb::message::Body;
    let body = match &m.body {
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
            quiet,
        } => Body::Append(pb::Append {
            prev_index: prev_index.0,
            prev_term: prev_term.0,
            entries: entries.iter().map(encode_entry).collect(),
            commit: commit.0,
            quiet: *quiet,
        }),
        MessageBody::AppendResponse { result } => Body::AppendResponse(match *result {
            AppendResult::Accepted { last_index } => pb::AppendResponse {
                rejected: false,
                index: last_index.0,
                hint_index: 0,
                hint_term: 0,
            },
            AppendResult::Rejected {
                rejected,
                hint_index,
                hint_term,
            } => pb::AppendResponse {
                rejected: true,
                index: rejected.0,
                hint_index: hint_index.0,
                hint_term: hint_term.0,
            },
        }),
        MessageBody::Heartbeat { commit, read_round } => Body::Heartbeat(pb::Heartbeat {
            commit: commit.0,
            read_round: *read_round,
        }),
        MessageBody::HeartbeatResponse { read_round } => {
            Body::HeartbeatResponse(pb::HeartbeatResponse {
                read_round: *read_round,
            })
        }
        MessageBody::Vote {
            pre_vote,
            last_index,
            last_term,
            transfer,
        } => Body::Vote(pb::Vote {
            pre_vote: *pre_vote,
            last_index: last_index.0,
            last_term: last_term.0,
            transfer: *transfer,
        }),
        MessageBody::VoteResponse { pre_vote, granted } => Body::VoteResponse(pb::VoteResponse {
            pre_vote: *pre_vote,
            granted: *granted,
        }),
        MessageBody::Snapshot { snapshot } => Body::Snapshot(pb::Snapshot {
            metadata: Some(pb::SnapshotMetadata {
                index: snapshot.metadata.index.0,
                term: snapshot.metadata.term.0,
                conf_state: Some(pb::ConfState {
                    voters: snapshot
                        .metadata
                        .conf_state
                        .voters
                        .iter()
                        .map(|n| n.0)
                        .collect(),
                    learners: snapshot
                        .metadata
                        .conf_state
                        .learners
                        .iter()
                        .map(|n| n.0)
                        .collect(),
                }),
            }),
            data: snapshot.data.clone(),
        }),
        MessageBody::TimeoutNow => Body::TimeoutNow(pb::Empty {}),
        MessageBody::ReadIndex { context } => Body::ReadIndex(pb::ReadIndex {
            context: context.clone(),
        }),
        MessageBody::ReadIndexResponse { context, index } => {
            Body::ReadIndexResponse(pb::ReadIndexResponse {
                context: context.clone(),
                index: index.0,
            })
        }
    };
    pb::Message {
        from: m.from.0,
        to: m.to.0,
        term: m.term.0,
        body: Some(body),
    }
}

pub fn decode_message(m: pb::Message) -> Result<Message, WireError> {
    use pb::message::Body;
    if m.from == 0 || m.to == 0 {
        return Err(WireError::Invalid("sender or receiver id 0"));
    }
    let body = match m.body.ok_or(WireError::Missing("message body"))? {
        Body::Append(a) => {
            if a.entries.len() > MAX_ENTRIES {
                return Err(WireError::TooMany {
                    what: "entries",
                    n: a.entries.len(),
                    limit: MAX_ENTRIES,
                });
            }
            MessageBody::Append {
                prev_index: Index(a.prev_index),
                prev_term: Term(a.prev_term),
                entries: a
                    .entries
                    .into_iter()
                    .map(decode_entry)
                    .collect::<Result<_, _>>()?,
                commit: Index(a.commit),
                quiet: a.quiet,
            }
        }
        Body::AppendResponse(r) => MessageBody::AppendResponse {
            result: if r.rejected {
                AppendResult::Rejected {
                    rejected: Index(r.index),
                    hint_index: Index(r.hint_index),
                    hint_term: Term(r.hint_term),
                }
            } else {
                AppendResult::Accepted {
                    last_index: Index(r.index),
                }
            },
        },
        Body::Heartbeat(h) => MessageBody::Heartbeat {
            commit: Index(h.commit),
            read_round: h.read_round,
        },
        Body::HeartbeatResponse(h) => MessageBody::HeartbeatResponse {
            read_round: h.read_round,
        },
        Body::Vote(v) => MessageBody::Vote {
            pre_vote: v.pre_vote,
            last_index: Index(v.last_index),
            last_term: Term(v.last_term),
            transfer: v.transfer,
        },
        Body::VoteResponse(v) => MessageBody::VoteResponse {
            pre_vote: v.pre_vote,
            granted: v.granted,
        },
        Body::Snapshot(s) => {
            let meta = s.metadata.ok_or(WireError::Missing("snapshot metadata"))?;
            let conf = meta
                .conf_state
                .ok_or(WireError::Missing("snapshot configuration"))?;
            MessageBody::Snapshot {
                snapshot: Snapshot {
                    metadata: SnapshotMetadata {
                        index: Index(meta.index),
                        term: Term(meta.term),
                        conf_state: ConfState {
                            voters: decode_members(conf.voters, "voters")?.into_iter().collect(),
                            learners: decode_members(conf.learners, "learners")?
                                .into_iter()
                                .collect(),
                        },
                    },
                    data: s.data,
                },
            }
        }
        Body::TimeoutNow(_) => MessageBody::TimeoutNow,
        Body::ReadIndex(r) => MessageBody::ReadIndex { context: r.context },
        Body::ReadIndexResponse(r) => MessageBody::ReadIndexResponse {
            context: r.context,
            index: Index(r.index),
        },
    };
    Ok(Message {
        from: NodeId(m.from),
        to: NodeId(m.to),
        term: Term(m.term),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn every_kind_of_message() -> Vec<Message> {
        let entries = vec![
            Entry {
                term: Term(2),
                index: Index(5),
                payload: EntryPayload::Empty,
            },
            Entry {
                term: Term(2),
                index: Index(6),
                payload: EntryPayload::Normal(b"put".to_vec()),
            },
            Entry {
                term: Term(3),
                index: Index(7),
                payload: EntryPayload::ConfChange(ConfChange {
                    kind: ConfChangeKind::PromoteLearner,
                    node: NodeId(4),
                    context: b"n4".to_vec(),
                }),
            },
        ];
        let bodies = vec![
            MessageBody::Append {
                prev_index: Index(4),
                prev_term: Term(2),
                entries,
                commit: Index(3),
                quiet: false,
            },
            MessageBody::Append {
                prev_index: Index(7),
                prev_term: Term(2),
                entries: vec![],
                commit: Index(7),
                quiet: true,
            },
            MessageBody::AppendResponse {
                result: AppendResult::Accepted {
                    last_index: Index(7),
                },
            },
            MessageBody::AppendResponse {
                result: AppendResult::Rejected {
                    rejected: Index(9),
                    hint_index: Index(6),
                    hint_term: Term(2),
                },
            },
            MessageBody::Heartbeat {
                commit: Index(7),
                read_round: 12,
            },
            MessageBody::HeartbeatResponse { read_round: 12 },
            MessageBody::Vote {
                pre_vote: true,
                last_index: Index(7),
                last_term: Term(3),
                transfer: false,
            },
            MessageBody::VoteResponse {
                pre_vote: false,
                granted: true,
            },
            MessageBody::Snapshot {
                snapshot: Snapshot {
                    metadata: SnapshotMetadata {
                        index: Index(40),
                        term: Term(3),
                        conf_state: ConfState {
                            voters: [NodeId(1), NodeId(2), NodeId(3)].into_iter().collect(),
                            learners: [NodeId(4)].into_iter().collect(),
                        },
                    },
                    data: b"image".to_vec(),
                },
            },
            MessageBody::TimeoutNow,
            MessageBody::ReadIndex {
                context: b"r1".to_vec(),
            },
            MessageBody::ReadIndexResponse {
                context: b"r1".to_vec(),
                index: Index(7),
            },
        ];
        bodies
            .into_iter()
            .map(|body| Message {
                from: NodeId(1),
                to: NodeId(2),
                term: Term(3),
                body,
            })
            .collect()
    }

    #[test]
    fn every_message_survives_the_wire() {
        for m in every_kind_of_message() {
            let bytes = encode_message(&m).encode_to_vec();
            let back = decode_message(pb::Message::decode(bytes.as_slice()).unwrap()).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = encode_message(&every_kind_of_message()[0]);
        let cases: Vec<(pb::Message, WireError)> = vec![
            (
                pb::Message {
                    body: None,
                    ..good.clone()
                },
                WireError::Missing("message body"),
            ),
            (
                pb::Message {
                    from: 0,
                    ..good.clone()
                },
                WireError::Invalid("sender or receiver id 0"),
            ),
            (
                {
                    let mut m = good.clone();
                    if let Some(pb::message::Body::Append(a)) = m.body.as_mut() {
                        a.entries[0].payload = None;
                    }
                    m
                },
                WireError::Missing("entry payload"),
            ),
            (
                {
                    let mut m = good.clone();
                    if let Some(pb::message::Body::Append(a)) = m.body.as_mut() {
                        if let Some(pb::entry::Payload::ConfChange(cc)) =
                            a.entries[2].payload.as_mut()
                        {
                            cc.kind = 99;
                        }
                    }
                    m
                },
                WireError::Invalid("conf change kind"),
            ),
            (
                pb::Message {
                    body: Some(pb::message::Body::Snapshot(pb::Snapshot {
                        metadata: None,
                        data: vec![],
                    })),
                    ..good.clone()
                },
                WireError::Missing("snapshot metadata"),
            ),
        ];
        for (m, want) in cases {
            assert_eq!(decode_message(m), Err(want.clone()), "expected {want}");
        }
        // Garbage bytes fail to decode at the protobuf layer, without a panic.
        assert!(pb::Message::decode(&[0xff, 0xff, 0xff, 0x0f, 0x01][..]).is_err());
    }
}
