//! What must hold: state machine safety as members apply, and, once the
//! faults stop, a linearizable history, agreeing members, watchers that saw
//! a prefix of the one history, and lease safety. No I/O.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

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
        if std::env::var_os("NOD_SIM_DEBUG").is_some() {
            for (i, m) in self.members.iter().enumerate() {
                if let Some(core) = m.core.as_ref() {
                    let st = core.raw_node().status();
                    eprintln!("DEBUG member {} {:?} term {} leader {} commit {} applied {} last {} busy {} peers {:?}", i + 1, st.role, st.term.0, st.leader.0, st.commit.0, st.applied.0, st.last_index.0, m.busy_until, st.peers.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>());
                }
            }
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
        self.check_indexes();
        // Every watcher saw a prefix of the one history, in order, with no
        // gap (but where it was told "compacted") and no duplicate. The one
        // history: what a live member's store still holds, and before its
        // compacted revision what the watchers saw, all of which must agree.
        if let Some(core) = self.members.iter().find_map(|m| m.core.as_ref()) {
            let store = core.shared().store();
            let compacted = store.compacted_revision();
            match store.events_between(
                &sim_range(),
                (compacted - 1).max(0),
                store.current_revision(),
            ) {
                Ok(kept) => {
                    let mut history: BTreeMap<(i64, Vec<u8>), Seen> = BTreeMap::new();
                    let sources = kept.iter().map(seen).map(|s| (0, s)).chain(
                        self.watchers
                            .iter()
                            .enumerate()
                            .flat_map(|(i, w)| w.seen.iter().map(move |s| (i + 1, s.clone()))),
                    );
                    for (who, s) in sources {
                        match history.entry((s.0, s.2.clone())) {
                            Entry::Vacant(v) => {
                                v.insert(s);
                            }
                            Entry::Occupied(o) if *o.get() != s => {
                                self.report.violations.push(format!(
                                    "two versions of revision {} of {:?}: {:?} and {:?} (watcher {who})",
                                    s.0,
                                    String::from_utf8_lossy(&s.2),
                                    (o.get().1, &o.get().3),
                                    (s.1, &s.3)
                                ));
                            }
                            Entry::Occupied(_) => {}
                        }
                    }
                    for (i, w) in self.watchers.iter().enumerate() {
                        // Inside a gap, and at the revision it resumed at
                        // (compaction drops a tombstone at the compacted
                        // revision itself, as etcd's does), events may be
                        // missing.
                        let skipped =
                            |s: &Seen| w.gaps.iter().any(|(from, to)| s.0 >= *from && s.0 <= *to);
                        let all: Vec<Seen> =
                            history.values().filter(|s| !skipped(s)).cloned().collect();
                        let mut mine: Vec<Seen> =
                            w.seen.iter().filter(|s| !skipped(s)).cloned().collect();
                        mine.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
                        let n = mine.len();
                        if n > all.len() || mine[..] != all[..n] {
                            let at = (0..n.min(all.len()))
                                .find(|k| mine[*k] != all[*k])
                                .unwrap_or(n.min(all.len()));
                            self.report.violations.push(format!(
                                "member {}'s watcher saw {n} events that are not the history's first {n}: \
                                 first difference at event {at}: {:?} instead of {:?}",
                                i + 1,
                                mine.get(at).map(|s| (s.0, s.1)),
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
