//! How the leader batches its appends: one message per follower per Ready
//! under load, and commit updates that ask for no answer. Scenarios run
//! through the real driver contract in `support::Cluster`.

mod support;

use nod_raft::{AppendResult, Index, Message, MessageBody, NodeId, StepError};
use support::{no_tweak, Cluster};

fn entries_of(m: &Message) -> usize {
    match &m.body {
        MessageBody::Append { entries, .. } => entries.len(),
        other => panic!("expected an Append, got {other:?}"),
    }
}

#[test]
fn proposals_of_one_ready_leave_as_one_append_per_follower_and_one_answer_each() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    let before = c.node(1).status().last_index;
    for i in 0..10 {
        c.propose(1, &format!("v{i}"));
    }
    assert!(c.process_ready(NodeId(1)));
    let mut out = Vec::new();
    for f in [2, 3] {
        let to_f = c.take_inflight(1, f);
        assert_eq!(to_f.len(), 1, "one message to {f}: {to_f:?}");
        assert_eq!(entries_of(&to_f[0]), 10);
        out.extend(to_f);
    }
    assert!(c.inflight.is_empty(), "nothing else: {:?}", c.inflight);
    c.inflight = out;
    c.deliver();
    for f in [2, 3] {
        assert!(c.process_ready(NodeId(f)));
        let answers = c.take_inflight(f, 1);
        assert_eq!(answers.len(), 1, "one answer from {f}: {answers:?}");
        assert_eq!(
            answers[0].body,
            MessageBody::AppendResponse {
                result: AppendResult::Accepted {
                    last_index: Index(before.0 + 10)
                }
            }
        );
        c.inflight.extend(answers);
    }
    c.stabilize();
    for id in 1..=3 {
        let data = c.applied_data(id);
        assert_eq!(data.len(), 10, "node {id} applied {data:?}");
    }
}

#[test]
fn a_commit_update_to_a_follower_in_step_is_quiet_and_not_answered() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    let p = c.propose(1, "x");
    // The append goes out and both followers acknowledge it.
    c.process_ready(NodeId(1));
    c.deliver();
    c.process_ready(NodeId(2));
    c.process_ready(NodeId(3));
    c.deliver();
    // The leader commits and tells each follower with one quiet append.
    c.process_ready(NodeId(1));
    assert_eq!(c.commit(1), p.index);
    for f in [2, 3] {
        let to_f = c.take_inflight(1, f);
        assert_eq!(to_f.len(), 1, "{to_f:?}");
        match &to_f[0].body {
            MessageBody::Append {
                entries,
                commit,
                quiet,
                ..
            } => {
                assert!(entries.is_empty());
                assert_eq!(*commit, p.index);
                assert!(*quiet, "a commit update in steady replication is quiet");
            }
            other => panic!("expected an Append, got {other:?}"),
        }
        c.inflight.extend(to_f);
    }
    c.deliver();
    for f in [2, 3] {
        c.process_ready(NodeId(f));
        assert_eq!(c.commit(f), p.index, "follower {f} commits");
        assert!(
            c.take_inflight(f, 1).is_empty(),
            "follower {f} does not answer a quiet append that matches"
        );
        assert_eq!(c.applied_data(f), vec!["x".to_string()]);
    }
}

#[test]
fn a_quiet_append_that_does_not_match_is_answered_with_a_rejection() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.process_ready(NodeId(2));
    c.inflight.clear();
    let (term, last) = {
        let st = c.node(2).status();
        (st.term, st.last_index)
    };
    let m = Message {
        from: NodeId(1),
        to: NodeId(2),
        term,
        body: MessageBody::Append {
            prev_index: Index(last.0 + 5),
            prev_term: term,
            entries: vec![],
            commit: Index(last.0 + 5),
            quiet: true,
        },
    };
    c.node(2).step(m).expect("a well-formed message");
    assert!(c.process_ready(NodeId(2)));
    let answers = c.take_inflight(2, 1);
    assert!(
        matches!(
            answers.as_slice(),
            [Message {
                body: MessageBody::AppendResponse {
                    result: AppendResult::Rejected { .. }
                },
                ..
            }]
        ),
        "{answers:?}"
    );
    let leader_commit = c.commit(1);
    assert_eq!(c.commit(2), leader_commit);
}

#[test]
fn a_quiet_append_with_entries_is_refused() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    let p = c.propose(1, "x");
    c.process_ready(NodeId(1));
    let mut to_two = c.take_inflight(1, 2);
    assert_eq!(to_two.len(), 1);
    let mut m = to_two.remove(0);
    if let MessageBody::Append { quiet, .. } = &mut m.body {
        *quiet = true;
    }
    let err = c.node(2).step(m).expect_err("refused");
    assert!(matches!(err, StepError::Invalid { .. }), "{err:?}");
    assert!(c.node(2).status().last_index < p.index, "nothing appended");
}
