//! What a leader knows of one follower: how far its log matches, what to send
//! next, and how much may be in flight (etcd-io/raft's `tracker.Progress`).
//!
//! Invariants: (1) `matched < next`; (2) in `Replicate`, every in-flight
//! message's last index is in `(matched, next)`.

use std::collections::VecDeque;

use crate::types::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Unsure where the follower's log matches: one Append at a time.
    Probe,
    /// Known match: stream Appends optimistically, up to the in-flight window.
    Replicate,
    /// The follower needs a snapshot; nothing else is sent until it answers.
    Snapshot,
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub matched: Index,
    pub next: Index,
    pub state: ProgressState,
    /// In `Snapshot`: the snapshot's index.
    pub pending_snapshot: Index,
    /// In `Snapshot`: ticks since the snapshot was sent.
    pub snapshot_ticks: u64,
    /// In `Probe`: an Append is out and unanswered.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    pub is_learner: bool,
    /// The highest ReadIndex round this follower has acknowledged.
    pub read_round_acked: u64,
    /// Last indexes of in-flight Appends, oldest first.
    inflights: VecDeque<Index>,
    max_inflight: usize,
}

impl Progress {
    pub fn new(next: Index, max_inflight: usize, is_learner: bool) -> Self {
        Progress {
            matched: Index(0),
            next,
            state: ProgressState::Probe,
            pending_snapshot: Index(0),
            snapshot_ticks: 0,
            probe_sent: false,
            recent_active: false,
            is_learner,
            read_round_acked: 0,
            inflights: VecDeque::new(),
            max_inflight,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = Index(0);
        self.snapshot_ticks = 0;
        self.state = state;
        self.inflights.clear();
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, resume right after it (or after the match if further).
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = self.matched.next().max(pending.next());
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched.next();
        }
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched.next();
    }

    pub fn become_snapshot(&mut self, snapshot_index: Index) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// The follower has everything up to `n`. Returns whether that was news.
    pub fn maybe_update(&mut self, n: Index) -> bool {
        let mut updated = false;
        if self.matched < n {
            self.matched = n;
            updated = true;
            self.probe_sent = false;
        }
        if self.next <= n {
            self.next = n.next();
        }
        updated
    }

    /// Records an Append ending at `last` sent in replicate state.
    pub fn sent_entries(&mut self, last: Index) {
        match self.state {
            ProgressState::Replicate => {
                self.next = last.next();
                self.inflights.push_back(last);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }

    /// Frees the in-flight slots of Appends acknowledged up to `index`.
    pub fn free_inflights_to(&mut self, index: Index) {
        while self.inflights.front().is_some_and(|&last| last <= index) {
            self.inflights.pop_front();
        }
    }

    /// A rejection of the Append after `rejected`; `match_hint` is where the
    /// follower's log may match. Returns false when the rejection is stale.
    /// Frees the oldest in-flight slot if the window is full (a heartbeat
    /// answered, so the follower is alive even if Append answers were lost).
    pub fn free_first_inflight(&mut self) {
        if self.state == ProgressState::Replicate && self.inflights.len() >= self.max_inflight {
            self.inflights.pop_front();
        }
    }

    pub fn maybe_decrease_to(&mut self, rejected: Index, match_hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched.next();
            return true;
        }
        if self.next.prev() != rejected {
            return false;
        }
        self.next = rejected.min(match_hint.next()).max(self.matched.next());
        self.probe_sent = false;
        true
    }

    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.len() >= self.max_inflight,
            ProgressState::Snapshot => true,
        }
    }

    pub fn inflight_count(&self) -> usize {
        self.inflights.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_window_pauses_and_frees() {
        let mut p = Progress::new(Index(1), 2, false);
        p.become_replicate();
        p.sent_entries(Index(3));
        assert!(!p.is_paused());
        p.sent_entries(Index(5));
        assert!(p.is_paused(), "window of 2 is full");
        assert_eq!(p.next, Index(6));
        p.maybe_update(Index(3));
        p.free_inflights_to(Index(3));
        assert!(!p.is_paused());
        assert_eq!(p.inflight_count(), 1);
    }

    #[test]
    fn decrease_ignores_stale_rejections() {
        let mut p = Progress::new(Index(10), 4, false);
        // Probe: only a rejection of next-1 counts.
        assert!(!p.maybe_decrease_to(Index(5), Index(2)));
        assert!(p.maybe_decrease_to(Index(9), Index(4)));
        assert_eq!(p.next, Index(5), "jumps to the hint, not one step");
        // Replicate: a rejection at or below match is stale.
        p.maybe_update(Index(4));
        p.become_replicate();
        p.sent_entries(Index(8));
        assert!(!p.maybe_decrease_to(Index(3), Index(0)));
        assert!(p.maybe_decrease_to(Index(7), Index(0)));
        assert_eq!(p.next, Index(5));
    }

    #[test]
    fn snapshot_then_probe_resumes_after_snapshot() {
        let mut p = Progress::new(Index(3), 4, false);
        p.become_snapshot(Index(20));
        assert!(p.is_paused());
        p.become_probe();
        assert_eq!(p.next, Index(21));
        assert!(!p.is_paused());
    }
}
