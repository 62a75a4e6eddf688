//! Tests named after the section of the Raft paper (Ongaro & Ousterhout,
//! "In Search of an Understandable Consensus Algorithm", 2014) or of Ongaro's
//! thesis they prove. Scenarios run through the real driver contract in
//! `support::Cluster`.

mod support;

use nod_raft::{
    AppendResult, ConfChange, ConfChangeKind, Config, ConfigError, Entry, EntryPayload, Index,
    MemStorage, Message, MessageBody, NodeId, ProposeError, RawNode, ReadOnlyOption, Role,
    StepError, Term,
};
use support::{no_tweak, Cluster};

fn no_pre_vote(c: &mut Config) {
    c.pre_vote = false;
}
/// No leader lease: lets a test elect a new leader right after cutting the old one off.
fn plain(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}
fn one_entry_per_message(c: &mut Config) {
    plain(c);
    c.max_size_per_msg = 0;
}

fn cc(kind: ConfChangeKind, node: u64) -> ConfChange {
    ConfChange {
        kind,
        node: NodeId(node),
        context: vec![],
    }
}

// ----- §5.2 Leader election -----

#[test]
fn paper_5_2_candidate_with_majority_becomes_leader_in_a_new_term() {
    let mut c = Cluster::new(5, no_tweak);
    let before = c.node(1).term();
    c.isolate(4);
    c.isolate(5);
    c.elect(1);
    assert_eq!(c.node(1).term(), before.next(), "exactly one new term");
    for id in 2..=3 {
        assert_eq!(c.node(id).leader(), NodeId(1));
        assert_eq!(c.node(id).role(), Role::Follower);
    }
}

#[test]
fn paper_5_2_without_a_majority_no_leader_is_elected() {
    let mut c = Cluster::new(5, no_pre_vote);
    c.partition(&[1, 2], &[3, 4, 5]);
    c.node(1).campaign();
    c.stabilize();
    assert_ne!(c.node(1).role(), Role::Leader);
}

#[test]
fn paper_5_2_a_node_votes_at_most_once_per_term() {
    let mut c = Cluster::new(3, no_pre_vote);
    // 1 and 3 campaign in the same term; 2 hears 1 first.
    c.node(1).campaign();
    c.node(3).campaign();
    c.process_ready(NodeId(1));
    c.process_ready(NodeId(3));
    let to_two_first = c.take_inflight(1, 2);
    c.inflight.splice(0..0, to_two_first);
    c.stabilize();
    assert_eq!(c.node(2).status().vote, NodeId(1));
    let leaders: Vec<_> = (1..=3)
        .filter(|&i| c.node(i).role() == Role::Leader)
        .collect();
    assert_eq!(
        leaders,
        vec![1],
        "only the candidate 2 voted for can win term 2"
    );
}

#[test]
fn paper_5_2_candidate_steps_down_when_a_leader_of_its_term_appears() {
    let mut c = Cluster::new(3, no_pre_vote);
    c.elect(1);
    let term = c.node(1).term();
    // Node 3 becomes a candidate in a later term, then hears from a leader of that term.
    c.isolate(3);
    c.node(3).campaign();
    c.stabilize();
    assert_eq!(c.node(3).role(), Role::Candidate);
    let t3 = c.node(3).term();
    assert!(t3 > term);
    let m = Message {
        from: NodeId(2),
        to: NodeId(3),
        term: t3,
        body: MessageBody::Heartbeat {
            commit: Index(0),
            read_round: 0,
        },
    };
    c.node(3).step(m).unwrap();
    assert_eq!(c.node(3).role(), Role::Follower);
    assert_eq!(c.node(3).leader(), NodeId(2));
}

#[test]
fn paper_5_2_randomized_timeouts_elect_one_leader_from_ticks_alone() {
    for seed_base in 0..20u64 {
        let mut c = Cluster::new(5, no_tweak);
        for (i, raw) in c.nodes.values_mut().enumerate() {
            // Different seeds draw different timeouts; nothing is forced.
            let _ = (i, seed_base);
            raw.tick();
        }
        for _ in 0..100 {
            c.tick_all(1);
            c.stabilize();
            if c.leader().is_some() {
                break;
            }
        }
        let leaders: Vec<_> = c
            .nodes
            .values()
            .filter(|r| r.role() == Role::Leader)
            .collect();
        assert_eq!(leaders.len(), 1, "one leader from ticks alone");
    }
}

#[test]
fn paper_9_6_pre_vote_keeps_a_partitioned_node_from_raising_its_term() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    let term = c.node(1).term();
    c.isolate(3);
    for _ in 0..100 {
        c.node(3).tick();
        c.stabilize();
    }
    assert_eq!(
        c.node(3).term(),
        term,
        "pre-vote never succeeded, so the term stayed"
    );
    c.heal();
    c.tick_all(2);
    c.stabilize();
    assert_eq!(
        c.node(1).role(),
        Role::Leader,
        "the returning node did not depose the leader"
    );
    assert_eq!(c.node(1).term(), term);
}

#[test]
fn paper_6_2_check_quorum_leader_steps_down_when_cut_off() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.isolate(1);
    for _ in 0..25 {
        c.node(1).tick();
        c.stabilize();
    }
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "a leader without a quorum stops leading"
    );
}

#[test]
fn paper_4_2_3_followers_in_lease_ignore_disruptive_vote_requests() {
    let mut c = Cluster::new(3, no_pre_vote);
    c.elect(1);
    let term = c.node(1).term();
    let m = Message {
        from: NodeId(3),
        to: NodeId(2),
        term: Term(term.0 + 5),
        body: MessageBody::Vote {
            pre_vote: false,
            last_index: Index(100),
            last_term: Term(term.0 + 4),
            transfer: false,
        },
    };
    c.node(2).step(m).unwrap();
    assert_eq!(
        c.node(2).term(),
        term,
        "a follower that hears from its leader ignores the request"
    );
    assert_eq!(c.node(2).leader(), NodeId(1));
}

// ----- §5.3 Log replication -----

#[test]
fn paper_5_3_entries_commit_on_a_majority_and_apply_everywhere_in_order() {
    let mut c = Cluster::new(5, no_tweak);
    c.elect(1);
    c.isolate(4);
    c.isolate(5);
    for x in ["a", "b", "c"] {
        c.propose(1, x);
    }
    c.stabilize();
    for id in 1..=3 {
        assert_eq!(c.applied_data(id), vec!["a", "b", "c"], "node {id}");
    }
    c.heal();
    c.tick_all(2);
    c.stabilize();
    assert_eq!(
        c.applied_data(5),
        vec!["a", "b", "c"],
        "a lagging follower catches up"
    );
}

#[test]
fn paper_5_3_no_commit_without_a_majority() {
    let mut c = Cluster::new(5, no_tweak);
    c.elect(1);
    let commit = c.commit(1);
    c.partition(&[1, 2], &[3, 4, 5]);
    c.propose(1, "x");
    c.stabilize();
    assert_eq!(c.commit(1), commit, "two of five cannot commit");
    assert!(c.applied_data(1).is_empty());
}

#[test]
fn paper_5_3_follower_rejects_append_whose_previous_entry_does_not_match() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    let term = c.node(1).term();
    let m = Message {
        from: NodeId(1),
        to: NodeId(2),
        term,
        body: MessageBody::Append {
            prev_index: Index(10),
            prev_term: term,
            entries: vec![],
            commit: Index(0),
            quiet: false,
        },
    };
    c.node(2).step(m).unwrap();
    c.process_ready(NodeId(2));
    let reply = c.inflight.pop().expect("a reply");
    assert!(matches!(
        reply.body,
        MessageBody::AppendResponse {
            result: AppendResult::Rejected {
                rejected: Index(10),
                ..
            }
        }
    ));
}

#[test]
fn paper_5_3_leader_overwrites_a_follower_s_conflicting_uncommitted_entries() {
    let mut c = Cluster::new(3, plain);
    c.elect(1);
    // Leader 1 appends entries that only it has, then is cut off.
    c.isolate(1);
    c.propose(1, "lost-1");
    c.propose(1, "lost-2");
    c.stabilize();
    // 2 and 3 elect 2, which commits other entries at the same indexes.
    c.elect(2);
    c.propose(2, "kept");
    c.stabilize();
    c.heal();
    c.tick_all(2);
    c.stabilize();
    assert_eq!(
        c.applied_data(1),
        vec!["kept"],
        "the conflicting tail was replaced"
    );
    assert_eq!(c.node(1).status().last_index, c.node(2).status().last_index);
}

#[test]
fn paper_5_3_fast_back_off_skips_a_conflicting_term_in_one_round_trip() {
    let mut c = Cluster::new(3, one_entry_per_message);
    c.elect(1);
    c.isolate(1);
    for i in 0..20 {
        c.propose(1, &format!("stale{i}"));
    }
    c.stabilize();
    c.elect(2);
    c.propose(2, "new");
    c.stabilize();
    c.heal();
    c.transcript = Some(String::new());
    c.tick_all(2);
    c.stabilize();
    let t = c.transcript.take().unwrap();
    let rejections = t
        .lines()
        .filter(|l| l.contains("1->2") && l.contains("rejected"))
        .count();
    assert!(
        rejections <= 2,
        "a whole term of 20 entries is skipped at once, saw {rejections} rejections:\n{t}"
    );
    assert_eq!(c.applied_data(1), vec!["new"]);
}

// ----- §5.4 Safety -----

#[test]
fn paper_5_4_1_a_candidate_with_a_stale_log_cannot_win() {
    let mut c = Cluster::new(3, no_pre_vote);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "a");
    c.stabilize();
    c.heal();
    // 3 missed "a"; its vote requests are refused by 1 and 2.
    c.node(3).campaign();
    c.stabilize();
    assert_ne!(c.node(3).role(), Role::Leader);
    c.tick_all(30);
    c.stabilize();
    let leader = c.leader().expect("a leader");
    assert_ne!(leader, NodeId(3), "only an up-to-date node can lead");
}

#[test]
fn paper_5_4_2_entries_of_earlier_terms_commit_only_with_one_of_the_current_term() {
    let mut c = Cluster::new(3, one_entry_per_message);
    c.elect(1);
    // "old" reaches node 2 only and is not committed.
    c.propose(1, "old");
    c.process_ready(NodeId(1));
    c.inflight.retain(|m| m.to == NodeId(2));
    c.process_ready(NodeId(2));
    c.deliver();
    c.process_ready(NodeId(2));
    c.inflight.clear(); // 2's acknowledgement is lost
    c.crash(1);
    // 2 wins term 3 with 3's vote; its log is old(term 2) then its no-op(term 3).
    c.node(2).campaign();
    for _ in 0..6 {
        c.process_ready(NodeId(2));
        c.process_ready(NodeId(3));
        c.deliver();
        if c.node(2).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(c.node(2).role(), Role::Leader);
    let old_index = Index(3);
    // Deliver one entry at a time: after 3 acknowledges "old" alone, a majority
    // holds it, yet it must not be committed by counting.
    let mut saw_majority_without_commit = false;
    for _ in 0..20 {
        c.process_ready(NodeId(2));
        c.process_ready(NodeId(3));
        let acked_old_only = c.inflight.iter().any(|m| {
            m.from == NodeId(3)
                && matches!(m.body, MessageBody::AppendResponse { result: AppendResult::Accepted { last_index } } if last_index == old_index)
        });
        c.deliver();
        if acked_old_only {
            assert!(
                c.commit(2) < old_index,
                "an entry of an earlier term was committed by counting replicas"
            );
            saw_majority_without_commit = true;
        }
    }
    assert!(
        saw_majority_without_commit,
        "the scenario reached a majority on the old entry"
    );
    c.stabilize();
    assert!(
        c.commit(2) > old_index,
        "committing the no-op commits the old entry too"
    );
    assert_eq!(c.applied_data(2), vec!["old"]);
}

#[test]
fn paper_5_5_a_restarted_follower_keeps_its_log_and_catches_up() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.propose(1, "a");
    c.stabilize();
    c.crash(3);
    c.propose(1, "b");
    c.stabilize();
    c.restart(3);
    c.tick_all(2);
    c.stabilize();
    assert_eq!(
        c.applied_data(3),
        vec!["a", "b"],
        "replays its durable log, then gets the rest"
    );
}

// ----- the persistence contract (thesis §10.2.1) -----

#[test]
fn thesis_10_2_1_votes_leave_only_after_they_are_durable() {
    let mut c = Cluster::new(3, no_pre_vote);
    c.node(1).campaign();
    c.process_ready(NodeId(1));
    c.deliver();
    let ready = c.node(2).ready().unwrap();
    assert!(
        ready.messages.is_empty(),
        "a follower sends nothing before persisting"
    );
    assert!(ready.must_sync);
    assert!(ready
        .persisted_messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::VoteResponse { granted: true, .. })));
    assert_eq!(ready.hard_state.map(|h| h.vote), Some(NodeId(1)));
}

#[test]
fn thesis_10_2_1_a_leader_counts_its_own_entry_only_once_durable() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.isolate(3);
    let p = c.propose(1, "x");
    let ready = c.node(1).ready().unwrap();
    assert!(
        !ready.messages.is_empty(),
        "the leader replicates before persisting"
    );
    // Node 2 acknowledges; the leader has not persisted, so 1 of 3 is not a majority... but 2 of 3 with
    // the leader would be. The commit must wait for the leader's own write.
    c.inflight.extend(ready.messages.clone());
    c.deliver();
    c.process_ready(NodeId(2));
    c.deliver();
    assert!(
        c.commit(1) < p.index,
        "committed with a copy the leader had not made durable"
    );
    c.node(1).storage_mut();
    use nod_raft::StorageWrite;
    c.node(1).storage_mut().write(&ready.log_write()).unwrap();
    c.node(1).advance();
    assert_eq!(
        c.commit(1),
        p.index,
        "durable on leader and one follower: committed"
    );
}

// ----- §6 Cluster membership changes -----

#[test]
fn paper_6_learners_receive_the_log_but_neither_vote_nor_count() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.add_empty_node(NodeId(4));
    c.node(1)
        .propose_conf_change(cc(ConfChangeKind::AddLearner, 4))
        .unwrap();
    c.stabilize();
    c.propose(1, "a");
    c.stabilize();
    assert_eq!(c.applied_data(4), vec!["a"], "the learner gets the log");
    // With 2 and 3 cut off, leader + learner is no majority.
    c.isolate(2);
    c.isolate(3);
    c.propose(1, "b");
    c.stabilize();
    assert_eq!(
        c.applied_data(1),
        vec!["a"],
        "a learner's copy does not count toward commit"
    );
    for _ in 0..60 {
        c.node(4).tick();
    }
    c.stabilize();
    assert_ne!(c.node(4).role(), Role::Candidate);
    assert_ne!(c.node(4).role(), Role::PreCandidate);
}

#[test]
fn paper_6_one_membership_change_at_a_time() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.node(1)
        .propose_conf_change(cc(ConfChangeKind::AddLearner, 4))
        .unwrap();
    assert_eq!(
        c.node(1)
            .propose_conf_change(cc(ConfChangeKind::AddLearner, 5)),
        Err(ProposeError::ConfChangePending)
    );
    c.stabilize();
    assert!(c
        .node(1)
        .propose_conf_change(cc(ConfChangeKind::AddLearner, 5))
        .is_ok());
}

#[test]
fn thesis_4_1_a_new_leader_changes_membership_only_after_committing_in_its_term() {
    let mut c = Cluster::new(3, no_tweak);
    c.node(1).campaign();
    for _ in 0..4 {
        c.process_ready(NodeId(1));
        c.process_ready(NodeId(2));
        c.process_ready(NodeId(3));
        c.deliver();
        if c.node(1).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(
        c.node(1)
            .propose_conf_change(cc(ConfChangeKind::AddLearner, 4)),
        Err(ProposeError::ConfChangePending),
        "the 2015 single-server change fix"
    );
    c.stabilize();
    assert!(c
        .node(1)
        .propose_conf_change(cc(ConfChangeKind::AddLearner, 4))
        .is_ok());
}

#[test]
fn paper_6_invalid_membership_changes_are_refused() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    for (change, why) in [
        (cc(ConfChangeKind::AddVoter, 2), "already a member"),
        (cc(ConfChangeKind::PromoteLearner, 3), "not a learner"),
        (cc(ConfChangeKind::Remove, 9), "not a member"),
        (cc(ConfChangeKind::AddLearner, 0), "reserved"),
    ] {
        match c.node(1).propose_conf_change(change) {
            Err(ProposeError::InvalidConfChange(msg)) => assert!(msg.contains(why), "{msg}"),
            other => panic!("expected a refusal ({why}), got {other:?}"),
        }
    }
}

#[test]
fn thesis_4_2_2_a_removed_leader_steps_down_after_the_removal_commits() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.node(1)
        .propose_conf_change(cc(ConfChangeKind::Remove, 1))
        .unwrap();
    c.stabilize();
    assert_eq!(c.node(1).role(), Role::Follower);
    for _ in 0..40 {
        c.tick_all(1);
        c.stabilize();
    }
    let leader = c.leader().expect("the remaining two elect a leader");
    assert_ne!(leader, NodeId(1));
    c.propose(leader.0, "after");
    c.stabilize();
    assert!(c.applied_data(leader.0).contains(&"after".to_string()));
}

#[test]
fn thesis_3_10_leadership_transfer_hands_over_to_the_target() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.propose(1, "a");
    c.node(1).transfer_leader(NodeId(3)).unwrap();
    assert!(matches!(
        c.node(1).propose(b"b".to_vec()),
        Err(ProposeError::ProposalDropped { .. })
    ));
    c.stabilize();
    assert_eq!(c.leader(), Some(NodeId(3)));
    assert_eq!(
        c.node(1).transfer_leader(NodeId(2)),
        Err(ProposeError::NotLeader {
            leader_hint: NodeId(3)
        })
    );
    assert_eq!(
        c.node(3).transfer_leader(NodeId(9)),
        Err(ProposeError::InvalidTransferTarget(NodeId(9)))
    );
}

// ----- §8 Client interaction -----

#[test]
fn paper_8_read_index_confirms_leadership_with_a_quorum() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    c.propose(1, "a");
    c.stabilize();
    c.node(1).request_read(b"r".to_vec()).unwrap();
    c.stabilize();
    let rs = c.read_states.get(&NodeId(1)).cloned().unwrap_or_default();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].index, c.commit(1));
    // Cut off, the leader cannot confirm a read.
    c.isolate(1);
    c.node(1).request_read(b"s".to_vec()).unwrap();
    c.stabilize();
    assert_eq!(
        c.read_states[&NodeId(1)].len(),
        1,
        "no read state without a quorum"
    );
}

#[test]
fn paper_8_a_new_leader_answers_reads_only_after_committing_in_its_term() {
    let mut c = Cluster::new(3, no_tweak);
    c.node(1).campaign();
    for _ in 0..4 {
        for id in 1..=3 {
            c.process_ready(NodeId(id));
        }
        c.deliver();
        if c.node(1).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    c.node(1).request_read(b"early".to_vec()).unwrap();
    c.process_ready(NodeId(1));
    assert!(
        c.read_states.get(&NodeId(1)).is_none_or(|r| r.is_empty()),
        "no answer before the no-op commits"
    );
    c.stabilize();
    let rs = &c.read_states[&NodeId(1)];
    assert_eq!(rs.len(), 1);
    assert!(
        rs[0].index >= Index(2),
        "the read waits for the commit of the leader's term"
    );
}

#[test]
fn paper_8_lease_reads_need_check_quorum() {
    let mut cfg = Config::new(NodeId(1));
    cfg.read_only = ReadOnlyOption::LeaseBased;
    cfg.check_quorum = false;
    assert!(matches!(
        RawNode::new(cfg, MemStorage::new()),
        Err(ConfigError::Invalid(_))
    ));
}

// ----- messages from peers are checked -----

#[test]
fn malformed_peer_messages_are_refused_and_change_nothing() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    let term = c.node(1).term();
    let before = c.node(2).status();
    // An Append from the leader after entry 2 carrying one entry.
    let append = |entry: Entry| Message {
        from: NodeId(1),
        to: NodeId(2),
        term,
        body: MessageBody::Append {
            prev_index: Index(2),
            prev_term: term,
            entries: vec![entry],
            commit: Index(2),
            quiet: false,
        },
    };
    let gap = append(Entry {
        term,
        index: Index(5),
        payload: EntryPayload::Empty,
    });
    assert!(matches!(
        c.node(2).step(gap),
        Err(StepError::Invalid { .. })
    ));
    let future_term = append(Entry {
        term: Term(term.0 + 1),
        index: Index(3),
        payload: EntryPayload::Empty,
    });
    assert!(matches!(
        c.node(2).step(future_term),
        Err(StepError::Invalid { .. })
    ));
    let misrouted = Message {
        from: NodeId(1),
        to: NodeId(3),
        term,
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(
        c.node(2).step(misrouted),
        Err(StepError::Misrouted { .. })
    ));
    assert_eq!(
        c.node(2).status(),
        before,
        "refused messages left the node unchanged"
    );
    // A follower claiming entries the leader never had.
    let overclaim = Message {
        from: NodeId(2),
        to: NodeId(1),
        term,
        body: MessageBody::AppendResponse {
            result: AppendResult::Accepted {
                last_index: Index(99),
            },
        },
    };
    let leader_before = c.node(1).status();
    assert!(matches!(
        c.node(1).step(overclaim),
        Err(StepError::Invalid { .. })
    ));
    assert_eq!(c.node(1).status(), leader_before);
}

#[test]
fn storage_whose_commit_is_beyond_its_log_is_refused_at_start() {
    use nod_raft::{LogWrite, StorageWrite};
    let mut s = MemStorage::new();
    let hs = nod_raft::HardState {
        term: Term(3),
        vote: NodeId(1),
        commit: Index(7),
    };
    s.write(&LogWrite {
        hard_state: Some(hs),
        ..Default::default()
    })
    .unwrap();
    match RawNode::new(Config::new(NodeId(1)), s) {
        Err(ConfigError::Storage(e)) => assert!(e.to_string().contains("truncated or lost"), "{e}"),
        other => panic!("expected a storage error, got {:?}", other.map(|_| ())),
    }
}

// ----- findings of the first review, kept as regressions -----

fn lease(c: &mut Config) {
    c.read_only = ReadOnlyOption::LeaseBased;
}

fn cc_learner(node: u64) -> ConfChange {
    cc(ConfChangeKind::AddLearner, node)
}

#[test]
fn thesis_10_2_1_a_sole_voter_says_nothing_before_its_new_term_is_durable() {
    let mut c = Cluster::new(1, no_tweak);
    c.elect(1);
    c.add_empty_node(NodeId(2));
    c.node(1).propose_conf_change(cc_learner(2)).unwrap();
    c.stabilize();
    c.crash(1);
    c.restart(1);
    // One step makes it leader of a new term; its Appends to the learner must
    // wait for that term to be on disk, or a crash could let it lead the same
    // term twice with different entries.
    c.node(1).campaign();
    assert_eq!(c.node(1).role(), Role::Leader);
    c.propose(1, "a");
    let ready = c.node(1).ready().unwrap();
    assert!(ready.hard_state.is_some() && ready.must_sync);
    assert!(
        ready.messages.is_empty(),
        "sent before the new term was durable: {:?}",
        ready.messages
    );
    assert!(ready.persisted_messages.iter().any(|m| m.to == NodeId(2)));
}

/// A lease cluster: restarted (and new) nodes refuse votes for an election
/// timeout, so let time pass until someone is elected; returns the leader and
/// the two others.
fn lease_cluster() -> (Cluster, u64, [u64; 2]) {
    let mut c = Cluster::new(3, lease);
    for _ in 0..60 {
        c.tick_all(1);
        c.stabilize();
        if c.leader().is_some() {
            break;
        }
    }
    let l = c.leader().expect("a leader from ticks alone").0;
    let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    (c, l, [others[0], others[1]])
}

#[test]
fn paper_8_a_cut_off_leader_stops_lease_reads_before_another_can_be_elected() {
    let (mut c, l, others) = lease_cluster();
    for _ in 0..11 {
        c.tick_all(1);
        c.stabilize();
    }
    // The lease works while the leader hears from a quorum.
    c.node(l).request_read(b"warm".to_vec()).unwrap();
    c.process_ready(NodeId(l));
    assert_eq!(
        c.read_states[&NodeId(l)].len(),
        1,
        "answered from the lease, without a round"
    );
    c.isolate(l);
    let mut elsewhere = false;
    for _ in 0..60 {
        c.tick_all(1);
        c.stabilize();
        elsewhere |= others.iter().any(|&id| c.node(id).role() == Role::Leader);
        if elsewhere && c.node(l).role() == Role::Leader {
            c.node(l).request_read(b"late".to_vec()).unwrap();
            c.stabilize();
            assert_eq!(
                c.read_states[&NodeId(l)].len(),
                1,
                "a stale lease read was served after a new leader was elected"
            );
        }
    }
    assert!(elsewhere, "the others elected a leader");
}

#[test]
fn thesis_3_10_no_lease_reads_once_leadership_is_handed_over() {
    let (mut c, l, [t, o]) = lease_cluster();
    for _ in 0..3 {
        c.tick_all(1);
        c.stabilize();
    }
    // The old leader does not hear that the target took over.
    c.blocked.insert((NodeId(t), NodeId(l)));
    c.blocked.insert((NodeId(o), NodeId(l)));
    c.node(l).transfer_leader(NodeId(t)).unwrap();
    c.stabilize();
    assert_eq!(c.node(t).role(), Role::Leader);
    c.propose(t, "w");
    c.stabilize();
    assert_eq!(
        c.node(l).role(),
        Role::Leader,
        "the old leader has not heard of the new term"
    );
    let before = c.read_states.get(&NodeId(l)).map_or(0, |r| r.len());
    c.node(l).request_read(b"r".to_vec()).unwrap();
    c.stabilize();
    let after = c.read_states.get(&NodeId(l)).map_or(0, |r| r.len());
    assert_eq!(after, before, "served a lease read after TimeoutNow");
}

#[test]
fn paper_8_with_lease_reads_a_restarted_node_does_not_vote_at_once() {
    let (mut c, l, [a, b]) = lease_cluster();
    c.crash(a);
    c.restart(a);
    let term = c.node(a).term();
    let m = Message {
        from: NodeId(b),
        to: NodeId(a),
        term: Term(term.0 + 1),
        body: MessageBody::Vote {
            pre_vote: true,
            last_index: Index(100),
            last_term: term,
            transfer: false,
        },
    };
    c.node(a).step(m).unwrap();
    c.process_ready(NodeId(a));
    assert!(
        c.inflight.is_empty(),
        "it may have promised node {l} a lease before the crash"
    );
}

#[test]
fn huge_terms_and_indexes_from_peers_are_refused_without_panic() {
    let mut c = Cluster::new(3, no_tweak);
    c.elect(1);
    let term = c.node(1).term();
    for body in [
        MessageBody::Append {
            prev_index: Index(u64::MAX),
            prev_term: term,
            entries: vec![],
            commit: Index(0),
            quiet: false,
        },
        MessageBody::Heartbeat {
            commit: Index(u64::MAX),
            read_round: 0,
        },
        MessageBody::Vote {
            pre_vote: true,
            last_index: Index(u64::MAX),
            last_term: Term(u64::MAX),
            transfer: false,
        },
    ] {
        let m = Message {
            from: NodeId(1),
            to: NodeId(2),
            term,
            body,
        };
        assert!(matches!(c.node(2).step(m), Err(StepError::Invalid { .. })));
    }
    let m = Message {
        from: NodeId(3),
        to: NodeId(2),
        term: Term(u64::MAX),
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(c.node(2).step(m), Err(StepError::Invalid { .. })));
    assert_eq!(c.node(2).term(), term);
}

#[test]
fn paper_6_2_a_new_voter_gets_an_election_timeout_before_check_quorum_counts_it() {
    let mut c = Cluster::new(1, no_tweak);
    c.elect(1);
    c.add_empty_node(NodeId(2));
    c.isolate(2);
    c.node(1)
        .propose_conf_change(cc(ConfChangeKind::AddVoter, 2))
        .unwrap();
    c.stabilize();
    // The configuration {1, 2} needs node 2, which has not answered yet: the
    // first quorum check must give it the benefit of the doubt...
    for _ in 0..10 {
        c.node(1).tick();
        c.stabilize();
    }
    assert_eq!(
        c.node(1).role(),
        Role::Leader,
        "deposed before the new voter had a chance"
    );
    // ...but not forever.
    for _ in 0..10 {
        c.node(1).tick();
        c.stabilize();
    }
    assert_eq!(
        c.node(1).role(),
        Role::Follower,
        "a voter that never answers costs the quorum"
    );
}

/// A restart rebuilds the configuration from every entry since the
/// snapshot, which it reads a piece at a time: membership changes far apart
/// in a long log (megabytes of entries between them, more than one piece)
/// all count, committed or not.
#[test]
fn a_restart_finds_every_membership_change_in_a_long_log() {
    use nod_raft::{ConfState, HardState, LogWrite, StorageWrite};
    let mut s = MemStorage::new_bootstrap(ConfState::with_voters([NodeId(1)]), Vec::new());
    let mut entries = Vec::new();
    let mut index = 1;
    let mut next = |payload| {
        index += 1;
        Entry {
            term: Term(1),
            index: Index(index),
            payload,
        }
    };
    for (node, kind) in [
        (2, ConfChangeKind::AddVoter),
        (3, ConfChangeKind::AddLearner),
        (2, ConfChangeKind::Remove),
    ] {
        // 3 MiB of writes before each change.
        for _ in 0..48 {
            entries.push(next(EntryPayload::Normal(vec![7; 64 << 10])));
        }
        entries.push(next(EntryPayload::ConfChange(cc(kind, node))));
    }
    let last = Index(index);
    s.write(&LogWrite {
        entries,
        hard_state: Some(HardState {
            term: Term(1),
            vote: NodeId(1),
            commit: last,
        }),
        sync: true,
        ..Default::default()
    })
    .unwrap();
    let node = RawNode::new(Config::new(NodeId(1)), s).unwrap();
    let conf = node.conf_state();
    assert!(
        conf.is_voter(NodeId(1)) && !conf.is_voter(NodeId(2)),
        "{conf:?}"
    );
    assert!(conf.learners.contains(&NodeId(3)), "{conf:?}");
}
