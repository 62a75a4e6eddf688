//! Watchers: one per member on `/sim/`, from revision 1, catching up from
//! history and then taking live events from the hub, as the Watch API does;
//! watching again from where they stopped after a restart or a snapshot
//! install. No I/O.

use crate::storage::kv_store::KeyRange;
use crate::storage::{KvError, ReadError};
use crate::watch_hub::HubMessage;

use super::World;

/// One watch event as the checks compare it: (revision, type, key, value).
pub(super) type Seen = (i64, i32, Vec<u8>, Vec<u8>);

/// A watcher on one member's keys under `/sim/`, from revision 1: it catches
/// up from history and then takes live events, as the Watch API does, and
/// watches again from where it stopped when the member restarts or ends it
/// (a snapshot install).
#[derive(Default)]
pub(super) struct Watcher {
    pub(super) rx: Option<tokio::sync::mpsc::UnboundedReceiver<HubMessage>>,
    /// The stream's sender, for progress requests on it.
    pub(super) tx: Option<tokio::sync::mpsc::UnboundedSender<HubMessage>>,
    /// The last progress revision this stream reported: no event at or
    /// below it may follow.
    pub(super) progress: i64,
    /// The revision it expects next (events at lower ones are duplicates).
    pub(super) next: i64,
    pub(super) seen: Vec<Seen>,
    /// Where it was told "compacted" and moved on: (the revision it asked
    /// for, the compacted revision it resumed at). Events in between are
    /// legitimately missing.
    pub(super) gaps: Vec<(i64, i64)>,
}

pub(super) fn sim_range() -> KeyRange {
    KeyRange::new(b"/sim/", b"/sim0")
}

pub(super) fn seen(e: &nod_proto::etcd::mvccpb::Event) -> Seen {
    let kv = e.kv.clone().unwrap_or_default();
    (kv.mod_revision, e.r#type, kv.key, kv.value)
}

impl World {
    /// (Re)starts member `i`'s watcher from the revision it expects next.
    pub(super) fn watch(&mut self, i: usize) {
        let Some(core) = self.members[i].core.as_ref() else {
            return;
        };
        let shared = core.shared().clone();
        let mut hub = shared.hub.lock();
        let store = shared.store();
        let current = store.current_revision();
        let w = &mut self.watchers[i];
        let mut r = store.events_between(&sim_range(), w.next - 1, current);
        if let Err(ReadError::Request(KvError::Compacted)) = &r {
            // As a client does: note the gap and watch from the compacted
            // revision. Compacted is only right if a compaction past the
            // revision asked for was requested.
            let compacted = store.compacted_revision();
            if w.next >= self.compacted_asked {
                self.report.violations.push(format!(
                    "member {}'s watcher from revision {} was told it is compacted (store at {compacted}), \
                     but no compaction past {} was asked",
                    i + 1,
                    w.next,
                    self.compacted_asked
                ));
            }
            w.gaps.push((w.next, compacted));
            w.next = compacted;
            r = store.events_between(&sim_range(), w.next - 1, current);
        } else if store.compacted_revision() == w.next {
            // Watching from the compacted revision itself: a delete there
            // went with the compaction (etcd's store drops it too).
            w.gaps.push((w.next, w.next));
        }
        if self.cfg.trace {
            eprintln!(
                "{:>6} ms  member {} watches from {} (store at {current}): {} events from history",
                self.now,
                i + 1,
                w.next,
                r.as_ref().map_or(0, |e| e.len())
            );
        }
        match r {
            Ok(events) => {
                for e in &events {
                    w.seen.push(seen(e));
                }
            }
            Err(e) => {
                self.report.violations.push(format!(
                    "member {} could not replay its history: {e}",
                    i + 1
                ));
                return;
            }
        }
        // A store a power loss set back replays revisions the watcher has
        // seen: it watches from the one it expects next, as a client does.
        w.next = w.next.max(current + 1);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = hub.new_stream(tx.clone());
        hub.subscribe(stream, 1, sim_range(), w.next, false);
        w.rx = Some(rx);
        w.tx = Some(tx);
        w.progress = 0;
    }

    /// Asks member `i`'s watch stream for a progress notification, as
    /// etcd's `RequestProgress` (and `--watch-progress-notify-interval`) do.
    pub(super) fn request_progress(&mut self, i: usize) {
        let (Some(core), Some(tx)) = (self.members[i].core.as_ref(), self.watchers[i].tx.as_ref())
        else {
            return;
        };
        let shared = core.shared();
        shared
            .hub
            .send_progress(|| shared.store().current_revision(), tx, [1]);
    }

    /// Takes the live events the watchers got; checks order and duplicates.
    pub(super) fn poll_watchers(&mut self) {
        for i in 0..self.watchers.len() {
            let mut restart = false;
            let w = &mut self.watchers[i];
            let Some(rx) = w.rx.as_mut() else { continue };
            while let Ok(m) = rx.try_recv() {
                match m {
                    HubMessage::Events {
                        revision,
                        deliveries,
                    } => {
                        if revision <= w.progress {
                            self.report.violations.push(format!(
                                "member {}'s watcher got revision {revision} after a progress \
                                 notification at {}",
                                i + 1,
                                w.progress
                            ));
                        }
                        if revision < w.next {
                            self.report.violations.push(format!(
                                "member {}'s watcher got revision {revision} after {}",
                                i + 1,
                                w.next - 1
                            ));
                        }
                        if deliveries.len() != 1 {
                            self.report.violations.push(format!(
                                "member {}'s stream of one watcher got {} deliveries at {revision}",
                                i + 1,
                                deliveries.len()
                            ));
                        }
                        for e in deliveries.iter().flat_map(|d| d.events.iter()) {
                            w.seen.push(seen(e));
                        }
                        w.next = w.next.max(revision + 1);
                    }
                    HubMessage::Canceled { .. } => {
                        if self.cfg.trace {
                            eprintln!(
                                "{:>6} ms  member {}'s watcher ended at {}",
                                self.now,
                                i + 1,
                                w.next
                            );
                        }
                        restart = true;
                    }
                    HubMessage::Progress { revision, .. } => {
                        if revision < w.progress {
                            self.report.violations.push(format!(
                                "member {}'s watcher got progress {revision} after progress {}",
                                i + 1,
                                w.progress
                            ));
                        }
                        w.progress = w.progress.max(revision);
                    }
                }
            }
            if restart || self.members[i].core.is_none() {
                self.watchers[i].rx = None;
                self.watchers[i].tx = None;
                if restart {
                    self.watch(i);
                }
            }
        }
    }
}
