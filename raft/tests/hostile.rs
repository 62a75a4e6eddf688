//! No input from the network may panic the core or break its invariants.
//! Random messages, with fields drawn near the node's real state so they get
//! past the first checks, are stepped into a leader and a follower.

mod support;

use nod_raft::{
    AppendResult, ConfState, Entry, EntryPayload, Index, Message, MessageBody, NodeId, Snapshot,
    SnapshotMetadata, Term,
};
use proptest::prelude::*;
use support::{no_tweak, Cluster};

/// from, to, term, kind, an index, a term field, entries (index offset, term), a flag.
type RawMessage = (u64, u64, u64, u8, u64, u64, Vec<(u64, u64)>, bool);

fn entry_strategy() -> impl Strategy<Value = (u64, u64)> {
    (0u64..6, 0u64..6)
}

fn message_strategy() -> impl Strategy<Value = RawMessage> {
    (
        1u64..5,                                       // from (4 is not a member)
        1u64..4,                                       // to
        0u64..6,                                       // term
        0u8..12,                                       // kind
        0u64..8,                                       // an index
        0u64..6,                                       // a term field
        prop::collection::vec(entry_strategy(), 0..4), // entries (index offset, term)
        any::<bool>(),
    )
}

fn build((from, to, term, kind, index, t, entries, flag): RawMessage) -> Message {
    let entries: Vec<Entry> = entries
        .into_iter()
        .map(|(off, et)| Entry {
            index: Index(index + off),
            term: Term(et),
            payload: EntryPayload::Empty,
        })
        .collect();
    let body = match kind {
        0 => MessageBody::Append {
            prev_index: Index(index),
            prev_term: Term(t),
            entries,
            commit: Index(t),
            quiet: flag,
        },
        1 => MessageBody::AppendResponse {
            result: AppendResult::Accepted {
                last_index: Index(index),
            },
        },
        2 => MessageBody::AppendResponse {
            result: AppendResult::Rejected {
                rejected: Index(index),
                hint_index: Index(t),
                hint_term: Term(t),
            },
        },
        3 => MessageBody::Heartbeat {
            commit: Index(index),
            read_round: t,
        },
        4 => MessageBody::HeartbeatResponse { read_round: t },
        5 => MessageBody::Vote {
            pre_vote: flag,
            last_index: Index(index),
            last_term: Term(t),
            transfer: !flag,
        },
        6 => MessageBody::VoteResponse {
            pre_vote: flag,
            granted: !flag,
        },
        7 => MessageBody::Snapshot {
            snapshot: Snapshot {
                metadata: SnapshotMetadata {
                    index: Index(index),
                    term: Term(t),
                    conf_state: if flag {
                        ConfState::with_voters([NodeId(1), NodeId(2), NodeId(3)])
                    } else {
                        ConfState::default()
                    },
                },
                data: vec![],
            },
        },
        8 => MessageBody::TimeoutNow,
        9 => MessageBody::ReadIndex { context: vec![1] },
        10 => MessageBody::ReadIndexResponse {
            context: vec![1],
            index: Index(index),
        },
        _ => MessageBody::Heartbeat {
            commit: Index(0),
            read_round: 0,
        },
    };
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_peer_messages_never_panic_or_break_invariants(
        msgs in prop::collection::vec(message_strategy(), 1..40)
    ) {
        let mut c = Cluster::new(3, no_tweak);
        c.elect(1);
        c.propose(1, "a");
        c.stabilize();
        for raw in msgs {
            let m = build(raw);
            let to = m.to;
            if m.from == to {
                continue;
            }
            // Refusals are fine; panics and broken invariants are not.
            let _ = c.nodes.get_mut(&to).unwrap().step(m);
            c.nodes[&to].check_invariants();
            c.process_ready(to);
            c.inflight.clear();
        }
    }
}
