//! What a member's disks need before its core starts, for the server and
//! the simulation alike. No I/O of its own: the log store is the caller's.

use nod_raft::{HardState, Index, LogWrite, Storage, StorageError, StorageWrite};

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
}
