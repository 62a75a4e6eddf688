//! What a member's disks need before its core starts, for the server and
//! the simulation alike. No I/O of its own: the log store is the caller's.

use nod_raft::{
    ConfChange, ConfChangeKind, ConfState, Entry, EntryPayload, HardState, Index, LogWrite, NodeId,
    Storage, StorageError, StorageWrite,
};

use super::Fatal;

/// Raises the log's commit index to `applied` (the state machine's applied
/// index), if it is behind, and says whether it did.
///
/// The commit index is written without fsync when it alone changes, and
/// the state machine is not fsynced either: after a power loss the store may
/// have applied past the durable commit index. Those entries were committed
/// (the store applies nothing else) and are durable in the log (entries are
/// synced before anything acknowledges them), so the commit index may move
/// up to them; the core refuses to start otherwise. A store ahead of the
/// log's last entry is a broken disk, not a power loss: that is fatal.
pub fn raise_commit_to_applied<L: Storage + StorageWrite>(
    log: &mut L,
    applied: Index,
) -> Result<bool, Fatal> {
    let state = log.initial_state()?;
    if applied <= state.hard_state.commit {
        return Ok(false);
    }
    let last = log.last_index()?;
    if applied > last {
        return Err(StorageError::Fatal(format!(
            "the state machine applied index {applied} but the log ends at {last}"
        ))
        .into());
    }
    log.write(&LogWrite {
        hard_state: Some(HardState {
            commit: applied,
            ..state.hard_state
        }),
        sync: true,
        ..Default::default()
    })?;
    Ok(true)
}

/// The configuration the log ends with: its snapshot's, then every
/// configuration entry after it, committed or not, as the core rebuilds it
/// when it starts (an invalid change is skipped, as there).
pub fn current_conf<L: Storage>(log: &L) -> Result<ConfState, Fatal> {
    let mut conf = log.initial_state()?.conf_state;
    let (first, last) = (log.first_index()?, log.last_index()?);
    if first <= last {
        for e in log.entries(first, last.next(), u64::MAX)? {
            if let EntryPayload::ConfChange(cc) = &e.payload {
                if let Ok(next) = conf.apply(cc) {
                    conf = next;
                }
            }
        }
    }
    Ok(conf)
}

/// What `force_standalone` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forced {
    /// The members removed, in the order of their entries.
    pub removed: Vec<NodeId>,
    /// Whether this member was a learner and was promoted first.
    pub promoted: bool,
    /// Entries kept past the commit index this member knew of.
    pub kept_past_commit: u64,
    /// The new commit index: the last of the written entries.
    pub commit: Index,
}

/// Why a member cannot be forced into a cluster of its own.
#[derive(Debug, thiserror::Error)]
pub enum ForceError {
    #[error(
        "member {0:x} is not in its own log's configuration (it was removed): \
         it cannot carry the cluster on; start it with an empty data directory to join"
    )]
    NotAMember(u64),
    #[error(transparent)]
    Fatal(#[from] Fatal),
}

/// Makes the log say that `me` is the cluster's only member
/// (`--force-new-cluster`, for a cluster that lost its quorum for good):
/// one configuration entry per step, at the log's current term after its
/// last entry — promote `me` if it is a learner, then remove every other
/// member — and a commit index at the last of them, written and synced
/// together. Nothing when `me` is already alone.
///
/// As etcd's `restartAsStandaloneNode`, except that the entries past the
/// commit index this member knew of are kept, not discarded: a majority
/// may have committed (and acknowledged) them, and keeping them loses no
/// write the survivor holds; those that were not committed had an unknown
/// outcome, which may now take effect. Each step is a valid single-server
/// change (`ConfState::apply`), so the core replays them as it replays any
/// configuration entry; applying the removals marks those members removed
/// in the member table, so they are refused if they come back.
pub fn force_standalone<L: Storage + StorageWrite>(
    log: &mut L,
    me: NodeId,
) -> Result<Option<Forced>, ForceError> {
    let mut conf = current_conf(log)?;
    if !conf.contains(me) {
        return Err(ForceError::NotAMember(me.0));
    }
    let alone = ConfState::with_voters([me]);
    if conf == alone {
        return Ok(None);
    }
    let hs = log.initial_state().map_err(Fatal::from)?.hard_state;
    let last = log.last_index().map_err(Fatal::from)?;
    let promoted = conf.learners.contains(&me);
    let mut changes = Vec::new();
    if promoted {
        changes.push((ConfChangeKind::PromoteLearner, me));
    }
    let others = conf.voters.iter().chain(&conf.learners).copied();
    let removed: Vec<NodeId> = others.filter(|id| *id != me).collect();
    changes.extend(removed.iter().map(|id| (ConfChangeKind::Remove, *id)));
    let mut entries = Vec::new();
    let mut index = last;
    for (kind, node) in changes {
        let cc = ConfChange {
            kind,
            node,
            context: Vec::new(),
        };
        conf = conf.apply(&cc).map_err(|e| {
            Fatal::from(StorageError::Fatal(format!(
                "member {:x}: forcing a new cluster: {e}",
                me.0
            )))
        })?;
        index = index.next();
        entries.push(Entry {
            term: hs.term,
            index,
            payload: EntryPayload::ConfChange(cc),
        });
    }
    debug_assert_eq!(conf, alone, "member {:x}: forced configuration", me.0);
    log.write(&LogWrite {
        entries,
        hard_state: Some(HardState {
            commit: index,
            ..hs
        }),
        sync: true,
        ..Default::default()
    })
    .map_err(Fatal::from)?;
    Ok(Some(Forced {
        removed,
        promoted,
        kept_past_commit: last.0.saturating_sub(hs.commit.0),
        commit: index,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_raft::{ConfState, Entry, EntryPayload, MemStorage, NodeId, Term};

    fn log_with(last: u64, commit: u64) -> MemStorage {
        let mut log = MemStorage::new_bootstrap(ConfState::with_voters([NodeId(1)]), Vec::new());
        let first = log.last_index().unwrap().0 + 1;
        log.write(&LogWrite {
            entries: (first..=last)
                .map(|i| Entry {
                    index: Index(i),
                    term: Term(1),
                    payload: EntryPayload::Normal(Vec::new()),
                })
                .collect(),
            hard_state: Some(HardState {
                term: Term(1),
                commit: Index(commit),
                ..Default::default()
            }),
            sync: true,
            ..Default::default()
        })
        .unwrap();
        log
    }

    #[test]
    fn a_store_ahead_of_the_durable_commit_raises_it() {
        let mut log = log_with(9, 5);
        assert!(raise_commit_to_applied(&mut log, Index(8)).unwrap());
        let hs = log.initial_state().unwrap().hard_state;
        assert_eq!((hs.commit, hs.term), (Index(8), Term(1)));
    }

    #[test]
    fn a_store_behind_the_commit_changes_nothing() {
        let mut log = log_with(9, 7);
        assert!(!raise_commit_to_applied(&mut log, Index(6)).unwrap());
        assert_eq!(log.initial_state().unwrap().hard_state.commit, Index(7));
    }

    #[test]
    fn a_store_past_the_log_end_is_fatal() {
        let mut log = log_with(9, 5);
        let err = raise_commit_to_applied(&mut log, Index(12)).unwrap_err();
        assert!(
            err.to_string()
                .contains("applied index 12 but the log ends at 9"),
            "{err}"
        );
        assert_eq!(log.initial_state().unwrap().hard_state.commit, Index(5));
    }

    fn member_log(voters: &[u64], learners: &[u64], last: u64, commit: u64) -> MemStorage {
        let mut conf = ConfState::with_voters(voters.iter().map(|v| NodeId(*v)));
        conf.learners = learners.iter().map(|v| NodeId(*v)).collect();
        let mut log = MemStorage::new_bootstrap(conf, Vec::new());
        let first = log.last_index().unwrap().0 + 1;
        log.write(&LogWrite {
            entries: (first..=last)
                .map(|i| Entry {
                    index: Index(i),
                    term: Term(3),
                    payload: EntryPayload::Normal(vec![i as u8]),
                })
                .collect(),
            hard_state: Some(HardState {
                term: Term(4),
                vote: NodeId(2),
                commit: Index(commit),
            }),
            sync: true,
            ..Default::default()
        })
        .unwrap();
        log
    }

    fn changes(log: &MemStorage, from: u64) -> Vec<(ConfChangeKind, u64, Term)> {
        let last = log.last_index().unwrap();
        log.entries(Index(from), last.next(), u64::MAX)
            .unwrap()
            .into_iter()
            .map(|e| match e.payload {
                EntryPayload::ConfChange(cc) => (cc.kind, cc.node.0, e.term),
                other => panic!("entry {} is {other:?}", e.index.0),
            })
            .collect()
    }

    #[test]
    fn forcing_removes_every_other_member_at_the_current_term() {
        let mut log = member_log(&[1, 2, 3], &[7], 9, 6);
        let forced = force_standalone(&mut log, NodeId(2)).unwrap().unwrap();
        assert_eq!(forced.removed, vec![NodeId(1), NodeId(3), NodeId(7)]);
        assert!(!forced.promoted);
        assert_eq!(forced.kept_past_commit, 3, "entries 7..=9 are kept");
        assert_eq!(forced.commit, Index(12));
        assert_eq!(
            changes(&log, 10),
            vec![
                (ConfChangeKind::Remove, 1, Term(4)),
                (ConfChangeKind::Remove, 3, Term(4)),
                (ConfChangeKind::Remove, 7, Term(4)),
            ]
        );
        let state = log.initial_state().unwrap();
        assert_eq!(
            state.hard_state,
            HardState {
                term: Term(4),
                vote: NodeId(2),
                commit: Index(12)
            }
        );
        assert_eq!(
            log.entries(Index(9), Index(10), u64::MAX).unwrap()[0].payload,
            EntryPayload::Normal(vec![9]),
            "the tail past the old commit index is still there"
        );
        assert_eq!(
            current_conf(&log).unwrap(),
            ConfState::with_voters([NodeId(2)])
        );
        // The core starts on it as the only voter and wins at once.
        let mut node = nod_raft::RawNode::new(nod_raft::Config::new(NodeId(2)), log).unwrap();
        assert_eq!(
            node.status().conf_state,
            ConfState::with_voters([NodeId(2)])
        );
        node.campaign();
        assert_eq!(node.role(), nod_raft::Role::Leader);
        assert_eq!(node.status().term, Term(5));
    }

    #[test]
    fn a_learner_is_promoted_before_the_others_go() {
        let mut log = member_log(&[1, 2], &[5], 4, 4);
        let forced = force_standalone(&mut log, NodeId(5)).unwrap().unwrap();
        assert!(forced.promoted);
        assert_eq!(
            changes(&log, 5),
            vec![
                (ConfChangeKind::PromoteLearner, 5, Term(4)),
                (ConfChangeKind::Remove, 1, Term(4)),
                (ConfChangeKind::Remove, 2, Term(4)),
            ]
        );
        assert_eq!(forced.kept_past_commit, 0);
        assert_eq!(
            current_conf(&log).unwrap(),
            ConfState::with_voters([NodeId(5)])
        );
    }

    #[test]
    fn configuration_entries_in_the_log_count_and_a_lone_member_is_left_alone() {
        let mut log = member_log(&[1, 2, 3], &[], 3, 3);
        // Member 3 was removed and member 4 added, neither committed yet.
        log.write(&LogWrite {
            entries: [
                (4, ConfChangeKind::Remove, 3),
                (5, ConfChangeKind::AddLearner, 4),
            ]
            .into_iter()
            .map(|(i, kind, node)| Entry {
                index: Index(i),
                term: Term(4),
                payload: EntryPayload::ConfChange(ConfChange {
                    kind,
                    node: NodeId(node),
                    context: Vec::new(),
                }),
            })
            .collect(),
            sync: true,
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            force_standalone(&mut log, NodeId(3)),
            Err(ForceError::NotAMember(3))
        ));
        let forced = force_standalone(&mut log, NodeId(1)).unwrap().unwrap();
        assert_eq!(forced.removed, vec![NodeId(2), NodeId(4)]);
        let last = log.last_index().unwrap();
        assert_eq!(force_standalone(&mut log, NodeId(1)).unwrap(), None);
        assert_eq!(
            log.last_index().unwrap(),
            last,
            "a second run writes nothing"
        );
    }
}
