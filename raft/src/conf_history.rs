//! The configurations in the log. A configuration entry takes effect as soon
//! as it is appended, committed or not, and is undone if its entry is
//! truncated (Ongaro's thesis §4.1). The history keeps the configuration at
//! the snapshot plus one element per configuration entry after it, so a
//! truncation can restore the previous one without reading the log.
//!
//! Invariant: `history` is non-empty and strictly increasing in index.

use crate::types::{ConfChange, ConfState, Index};

#[derive(Clone, Debug)]
pub struct ConfHistory {
    history: Vec<(Index, ConfState)>,
}

impl ConfHistory {
    pub fn new(base_index: Index, base: ConfState) -> Self {
        ConfHistory {
            history: vec![(base_index, base)],
        }
    }

    pub fn current(&self) -> &ConfState {
        &self.history.last().expect("history is never empty").1
    }

    /// The index of the newest configuration entry (or of the snapshot).
    pub fn latest_index(&self) -> Index {
        self.history.last().expect("history is never empty").0
    }

    /// Applies the change in the entry at `index`. An invalid change (which a
    /// correct leader never appends) leaves the configuration as it was on
    /// every node alike, because every node sees the same log.
    pub fn append(&mut self, index: Index, change: &ConfChange) -> bool {
        match self.current().apply(change) {
            Ok(next) => {
                self.history.push((index, next));
                true
            }
            Err(_) => false,
        }
    }

    /// Entries from `index` on were truncated.
    pub fn truncate_from(&mut self, index: Index) {
        while self.history.len() > 1 && self.history.last().is_some_and(|(i, _)| *i >= index) {
            self.history.pop();
        }
    }

    /// The log was replaced by a snapshot.
    pub fn reset(&mut self, index: Index, conf: ConfState) {
        self.history = vec![(index, conf)];
    }

    /// Forgets configurations superseded at or before `index` (log compacted).
    pub fn compact(&mut self, index: Index) {
        let keep_from = self
            .history
            .iter()
            .rposition(|(i, _)| *i <= index)
            .unwrap_or(0);
        self.history.drain(..keep_from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ConfChangeKind, NodeId};

    fn cc(kind: ConfChangeKind, n: u64) -> ConfChange {
        ConfChange {
            kind,
            node: NodeId(n),
            context: vec![],
        }
    }

    #[test]
    fn truncation_restores_previous_configuration() {
        let base = ConfState::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let mut h = ConfHistory::new(Index(1), base.clone());
        assert!(h.append(Index(4), &cc(ConfChangeKind::AddLearner, 4)));
        assert!(h.append(Index(7), &cc(ConfChangeKind::PromoteLearner, 4)));
        assert!(h.current().is_voter(NodeId(4)));
        h.truncate_from(Index(7));
        assert!(h.current().learners.contains(&NodeId(4)));
        h.truncate_from(Index(2));
        assert_eq!(h.current(), &base);
        assert!(
            !h.append(Index(3), &cc(ConfChangeKind::PromoteLearner, 9)),
            "invalid change is a no-op"
        );
        assert_eq!(h.current(), &base);
    }

    #[test]
    fn compaction_keeps_the_configuration_in_force() {
        let mut h = ConfHistory::new(Index(1), ConfState::with_voters([NodeId(1)]));
        h.append(Index(3), &cc(ConfChangeKind::AddVoter, 2));
        h.append(Index(9), &cc(ConfChangeKind::AddVoter, 3));
        h.compact(Index(5));
        assert_eq!(h.history.len(), 2);
        assert_eq!(h.history[0].0, Index(3));
        h.truncate_from(Index(4));
        assert!(h.current().is_voter(NodeId(2)));
        assert!(!h.current().is_voter(NodeId(3)));
    }
}
