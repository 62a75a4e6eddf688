//! Live watch fan-out. The driver publishes each applied revision's events
//! here while holding the hub lock across "apply to the store, then
//! publish", and a new watcher registers under the same lock after reading
//! the store's revision: so every event is either in the history the watcher
//! reads or in its channel, never both and never neither. No I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::storage::kv_store::KeyRange;
use nod_proto::etcd::mvccpb::Event;

/// What a watch stream's task receives, in order.
#[derive(Debug)]
pub enum HubMessage {
    /// Events of one revision for one watcher. Shared: watchers of the
    /// same keys get the same events, which publishing (under the hub and
    /// store locks) does not copy for each.
    Events {
        watch_id: i64,
        revision: i64,
        events: Arc<[Event]>,
    },
    /// The watcher ends (the store was replaced by a snapshot).
    Canceled { watch_id: i64, reason: String },
    /// Everything up to `revision` has been delivered (a progress request,
    /// `watch_id` -1, or a progress notification for one watcher).
    Progress { revision: i64, watch_id: i64 },
}

struct Subscription {
    stream: u64,
    range: KeyRange,
    /// Revisions below this are delivered from history, not live.
    from: i64,
    /// Wants each event's previous value.
    prev_kv: bool,
    tx: mpsc::UnboundedSender<HubMessage>,
}

#[derive(Default)]
pub struct HubState {
    subscriptions: HashMap<(u64, i64), Subscription>,
    next_stream: u64,
}

#[derive(Clone, Default)]
pub struct WatchHub {
    state: Arc<Mutex<HubState>>,
}

impl WatchHub {
    pub fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn watchers(&self) -> usize {
        self.lock().subscriptions.len()
    }

    /// Queues a progress notification for each of `watch_ids` at the
    /// revision `current` reads, under the hub lock. The driver applies and
    /// publishes under the same lock, so every event at or below that
    /// revision is queued ahead of it: no event at or below a progress
    /// revision arrives after it (etcd's promise to progress requests).
    pub fn send_progress(
        &self,
        current: impl FnOnce() -> i64,
        tx: &mpsc::UnboundedSender<HubMessage>,
        watch_ids: impl IntoIterator<Item = i64>,
    ) {
        let _hub = self.lock();
        let revision = current();
        for watch_id in watch_ids {
            let _ = tx.send(HubMessage::Progress { revision, watch_id });
        }
    }
}

impl HubState {
    pub fn new_stream(&mut self) -> u64 {
        self.next_stream += 1;
        self.next_stream
    }

    pub fn subscribe(
        &mut self,
        stream: u64,
        watch_id: i64,
        range: KeyRange,
        from: i64,
        prev_kv: bool,
        tx: mpsc::UnboundedSender<HubMessage>,
    ) {
        self.subscriptions.insert(
            (stream, watch_id),
            Subscription {
                stream,
                range,
                from,
                prev_kv,
                tx,
            },
        );
    }

    pub fn unsubscribe(&mut self, stream: u64, watch_id: i64) -> bool {
        self.subscriptions.remove(&(stream, watch_id)).is_some()
    }

    pub fn drop_stream(&mut self, stream: u64) {
        self.subscriptions.retain(|_, s| s.stream != stream);
    }

    pub fn has_watch(&self, stream: u64, watch_id: i64) -> bool {
        self.subscriptions.contains_key(&(stream, watch_id))
    }

    /// Ends every watcher, telling each why.
    pub fn cancel_all(&mut self, reason: &str) {
        for ((_, watch_id), s) in self.subscriptions.drain() {
            let _ = s.tx.send(HubMessage::Canceled {
                watch_id,
                reason: reason.to_string(),
            });
        }
    }

    /// Whether a watcher that asked for previous values will get one of
    /// these events, whose previous values apply may have left out.
    pub fn wants_prev(&self, revision: i64, events: &[Event]) -> bool {
        self.subscriptions.values().any(|s| {
            s.prev_kv
                && revision >= s.from
                && events
                    .iter()
                    .any(|e| e.kv.as_ref().is_some_and(|kv| s.range.contains(&kv.key)))
        })
    }

    /// Hands one revision's events to every watcher whose range they touch.
    pub fn publish(&mut self, revision: i64, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut all: Option<Arc<[Event]>> = None;
        self.subscriptions.retain(|(_, watch_id), s| {
            if revision < s.from {
                return true;
            }
            let touches = |e: &Event| e.kv.as_ref().is_some_and(|kv| s.range.contains(&kv.key));
            let matching = events.iter().filter(|e| touches(e)).count();
            let mine: Arc<[Event]> = if matching == 0 {
                return true;
            } else if matching == events.len() {
                all.get_or_insert_with(|| events.into()).clone()
            } else {
                events.iter().filter(|e| touches(e)).cloned().collect()
            };
            // A closed channel means the stream ended: forget the watcher.
            s.tx.send(HubMessage::Events {
                watch_id: *watch_id,
                revision,
                events: mine,
            })
            .is_ok()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_proto::etcd::mvccpb::KeyValue;

    fn put(key: &str, rev: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                version: 2,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn shared(m: HubMessage) -> Arc<[Event]> {
        match m {
            HubMessage::Events { events, .. } => events,
            other => panic!("expected events, got {other:?}"),
        }
    }

    fn keys(m: HubMessage) -> Vec<Vec<u8>> {
        shared(m)
            .iter()
            .map(|e| e.kv.clone().unwrap().key)
            .collect()
    }

    #[test]
    fn each_watcher_gets_the_events_of_its_keys_and_says_whether_it_wants_previous_values() {
        let mut hub = HubState::default();
        let (one_tx, mut one) = mpsc::unbounded_channel();
        let (all_tx, mut all) = mpsc::unbounded_channel();
        let (later_tx, mut later) = mpsc::unbounded_channel();
        let (also_tx, mut also) = mpsc::unbounded_channel();
        hub.subscribe(1, 1, KeyRange::new(b"a", b""), 0, true, one_tx);
        hub.subscribe(1, 2, KeyRange::new(b"\0", b"\0"), 0, false, all_tx);
        hub.subscribe(1, 3, KeyRange::new(b"\0", b"\0"), 10, true, later_tx);
        hub.subscribe(2, 1, KeyRange::new(b"a", b"c"), 0, false, also_tx);
        let events = [put("a", 5), put("b", 5)];
        assert!(hub.wants_prev(5, &events), "watcher 1 wants them for a");
        assert!(
            !hub.wants_prev(5, &[put("b", 5)]),
            "only watcher 3 wants them for b, and it starts at 10"
        );
        hub.publish(5, &events);
        assert_eq!(keys(one.try_recv().unwrap()), vec![b"a".to_vec()]);
        let (to_all, to_also) = (
            shared(all.try_recv().unwrap()),
            shared(also.try_recv().unwrap()),
        );
        assert_eq!(to_all.len(), 2);
        assert!(
            Arc::ptr_eq(&to_all, &to_also),
            "watchers that match every event share one copy"
        );
        assert!(later.try_recv().is_err(), "revision 5 is before its start");
        hub.publish(6, &[put("b", 6)]);
        assert!(one.try_recv().is_err(), "b is not watcher 1's key");
        assert_eq!(keys(all.try_recv().unwrap()), vec![b"b".to_vec()]);
    }
}
