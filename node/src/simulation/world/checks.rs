//! What must hold: state machine safety as members apply, and, once the
//! faults stop, a linearizable history, agreeing members, watchers that saw
//! a prefix of the one history, and lease safety. No I/O.

use nod_lincheck as lin;
use nod_raft::{Index, Storage};

use super::watches::{seen, sim_range, Seen};
use super::World;
use crate::simulation::Report;

impl World {
    /// State machine safety: every member applies the same entry (index and
    /// term) at each index. Entries a snapshot covered are skipped.
    pub(super) fn check_applied(&mut self, i: usize) {
        if self.checked.len() < self.members.len() {
            self.checked.resize(self.members.len(), 0);
        }
        let Some(core) = self.members[i].core.as_ref() else {
            return;
        };
        let applied = core.shared().store().applied().0;
        let log = self.members[i].log.clone();
        let from = self.checked[i] + 1;
        for index in from..=applied {
            let Ok(term) = log.term(Index(index)) else {
                continue; // compacted: a snapshot covered it
            };
            match self.ledger.insert(index, term.0) {
                Some(t) if t != term.0 => self.report.violations.push(format!(
                    "member {} applied term {} at index {index}, another member term {t}",
                    i + 1,
                    term.0
                )),
                _ => {}
            }
        }
        self.checked[i] = self.checked[i].max(applied);
    }

    pub(super) fn check(mut self) -> Report {
        self.report.operations = self.history.len();
        self.report.completed = self
            .history
            .iter()
            .filter(|o| !matches!(o.outcome, lin::Outcome::Unknown | lin::Outcome::Failed))
            .count();
        // Probe reads still unanswered tell nothing.
        for p in std::mem::take(&mut self.probes) {
            self.history[p.op].complete = self.now;
        }
        if let lin::Verdict::Violation { key, message, .. } = lin::check(&self.history) {
            self.report.violations.push(format!(
                "not linearizable on {}: {message}",
                String::from_utf8_lossy(&key)
            ));
        }
        // Once the faults stop, every member holds the same data.
        let mut views = Vec::new();
        for m in &self.members {
            let Some(core) = m.core.as_ref() else {
                self.report
                    .violations
                    .push(format!("member {} is down after settling", m.id.0));
                continue;
            };
            let store = core.shared().store();
            let dump = store.dump().map_err(|e| e.to_string());
            views.push((m.id, store.applied().0, store.current_revision(), dump));
        }
        self.check_leases();
        // Every watcher saw a prefix of the one history, in order, with no
        // gap and no duplicate.
        if let Some(core) = self.members.iter().find_map(|m| m.core.as_ref()) {
            let store = core.shared().store();
            match store.events_between(&sim_range(), 0, store.current_revision()) {
                Ok(all) => {
                    let all: Vec<Seen> = all.iter().map(seen).collect();
                    for (i, w) in self.watchers.iter().enumerate() {
                        let n = w.seen.len();
                        if n > all.len() || w.seen[..] != all[..n] {
                            let at = (0..n.min(all.len()))
                                .find(|k| w.seen[*k] != all[*k])
                                .unwrap_or(n.min(all.len()));
                            self.report.violations.push(format!(
                                "member {}'s watcher saw {n} events that are not the history's first {n}: \
                                 first difference at event {at}: {:?} instead of {:?}",
                                i + 1,
                                w.seen.get(at).map(|s| (s.0, s.1)),
                                all.get(at).map(|s| (s.0, s.1)),
                            ));
                        }
                    }
                }
                Err(e) => self
                    .report
                    .violations
                    .push(format!("the history could not be read: {e}")),
            }
        }
        if let Some((first, rest)) = views.split_first() {
            for v in rest {
                if v.1 != first.1 || v.2 != first.2 || v.3 != first.3 {
                    self.report.violations.push(format!(
                        "members {} and {} disagree after settling: applied {} / {}, revision {} / {}",
                        first.0 .0, v.0 .0, first.1, v.1, first.2, v.2
                    ));
                }
            }
        }
        self.report
    }
}
