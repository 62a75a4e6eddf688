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
    /// One revision's events for those of the stream's watchers whose keys
    /// they touch: one message per stream and revision, however many of
    /// its watchers match (publishing runs under the hub and store locks).
    Events {
        revision: i64,
        deliveries: Vec<Delivery>,
    },
    /// The watcher ends (the store was replaced by a snapshot).
    Canceled { watch_id: i64, reason: String },
    /// Everything up to `revision` has been delivered (a progress request,
    /// `watch_id` -1, or a progress notification for one watcher).
    Progress { revision: i64, watch_id: i64 },
}

/// One watcher's events of one revision. Shared: watchers of the same keys
/// get the same events, which publishing does not copy for each.
#[derive(Debug)]
pub struct Delivery {
    pub watch_id: i64,
    pub events: Arc<[Event]>,
}

struct Subscription {
    range: KeyRange,
    /// Revisions below this are delivered from history, not live.
    from: i64,
    /// Wants each event's previous value.
    prev_kv: bool,
}

/// A stream's watchers and the channel its task reads. A stream lives from
/// `new_stream` until `drop_stream` or until its task is gone (its channel
/// closed), with or without watchers.
struct Stream {
    tx: mpsc::UnboundedSender<HubMessage>,
    watchers: HashMap<i64, Subscription>,
}

#[derive(Default)]
pub struct HubState {
    streams: HashMap<u64, Stream>,
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
        self.lock().watchers()
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
    /// How many watchers all streams have.
    pub fn watchers(&self) -> usize {
        self.streams.values().map(|s| s.watchers.len()).sum()
    }

    /// A new stream whose messages go to `tx`.
    pub fn new_stream(&mut self, tx: mpsc::UnboundedSender<HubMessage>) -> u64 {
        self.next_stream += 1;
        let stream = Stream {
            tx,
            watchers: HashMap::new(),
        };
        self.streams.insert(self.next_stream, stream);
        self.next_stream
    }

    /// Adds a watcher to `stream`; false if the stream is gone.
    pub fn subscribe(
        &mut self,
        stream: u64,
        watch_id: i64,
        range: KeyRange,
        from: i64,
        prev_kv: bool,
    ) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        let sub = Subscription {
            range,
            from,
            prev_kv,
        };
        s.watchers.insert(watch_id, sub);
        true
    }

    pub fn unsubscribe(&mut self, stream: u64, watch_id: i64) -> bool {
        self.streams
            .get_mut(&stream)
            .is_some_and(|s| s.watchers.remove(&watch_id).is_some())
    }

    pub fn drop_stream(&mut self, stream: u64) {
        self.streams.remove(&stream);
    }

    pub fn has_watch(&self, stream: u64, watch_id: i64) -> bool {
        self.streams
            .get(&stream)
            .is_some_and(|s| s.watchers.contains_key(&watch_id))
    }

    /// Ends every watcher, telling each why; the streams stay.
    pub fn cancel_all(&mut self, reason: &str) {
        for s in self.streams.values_mut() {
            for (watch_id, _) in s.watchers.drain() {
                let _ = s.tx.send(HubMessage::Canceled {
                    watch_id,
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// Whether a watcher that asked for previous values will get one of
    /// these events, whose previous values apply may have left out.
    pub fn wants_prev(&self, revision: i64, events: &[Event]) -> bool {
        self.streams
            .values()
            .flat_map(|s| s.watchers.values())
            .any(|s| {
                s.prev_kv
                    && revision >= s.from
                    && events
                        .iter()
                        .any(|e| e.kv.as_ref().is_some_and(|kv| s.range.contains(&kv.key)))
            })
    }

    /// Hands one revision's events to every watcher whose range they touch:
    /// one message to each stream that has such watchers.
    pub fn publish(&mut self, revision: i64, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut all: Option<Arc<[Event]>> = None;
        self.streams.retain(|_, stream| {
            // A closed channel means the stream's task ended: forget it.
            if stream.tx.is_closed() {
                return false;
            }
            let mut deliveries = Vec::new();
            for (&watch_id, s) in &stream.watchers {
                if revision < s.from {
                    continue;
                }
                let touches = |e: &Event| e.kv.as_ref().is_some_and(|kv| s.range.contains(&kv.key));
                let matching = events.iter().filter(|e| touches(e)).count();
                let events: Arc<[Event]> = if matching == 0 {
                    continue;
                } else if matching == events.len() {
                    all.get_or_insert_with(|| events.into()).clone()
                } else {
                    events.iter().filter(|e| touches(e)).cloned().collect()
                };
                deliveries.push(Delivery { watch_id, events });
            }
            if deliveries.is_empty() {
                return true;
            }
            let message = HubMessage::Events {
                revision,
                deliveries,
            };
            stream.tx.send(message).is_ok()
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

    /// The events of a stream's only delivery.
    fn shared(m: HubMessage) -> Arc<[Event]> {
        match m {
            HubMessage::Events { mut deliveries, .. } => {
                assert_eq!(deliveries.len(), 1, "{deliveries:?}");
                deliveries.pop().unwrap().events
            }
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
        let one_s = hub.new_stream(one_tx);
        let all_s = hub.new_stream(all_tx);
        let later_s = hub.new_stream(later_tx);
        let also_s = hub.new_stream(also_tx);
        assert!(hub.subscribe(one_s, 1, KeyRange::new(b"a", b""), 0, true));
        assert!(hub.subscribe(all_s, 2, KeyRange::new(b"\0", b"\0"), 0, false));
        assert!(hub.subscribe(later_s, 3, KeyRange::new(b"\0", b"\0"), 10, true));
        assert!(hub.subscribe(also_s, 1, KeyRange::new(b"a", b"c"), 0, false));
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

    #[test]
    fn a_stream_gets_one_message_a_revision_naming_its_watchers_that_match() {
        let mut hub = HubState::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (other_tx, mut other) = mpsc::unbounded_channel();
        let stream = hub.new_stream(tx);
        for id in 0..100 {
            hub.subscribe(stream, id, KeyRange::new(b"k", b""), 0, false);
        }
        hub.subscribe(stream, 100, KeyRange::new(b"x", b""), 0, false);
        hub.subscribe(stream, 101, KeyRange::new(b"\0", b"\0"), 7, false);
        let elsewhere = hub.new_stream(other_tx);
        hub.subscribe(elsewhere, 0, KeyRange::new(b"k", b""), 0, false);
        hub.publish(5, &[put("k", 5)]);
        let Ok(HubMessage::Events {
            revision,
            deliveries,
        }) = rx.try_recv()
        else {
            panic!("one message for the stream");
        };
        assert!(rx.try_recv().is_err(), "only one");
        assert_eq!(revision, 5);
        let mut ids: Vec<i64> = deliveries.iter().map(|d| d.watch_id).collect();
        ids.sort();
        assert_eq!(
            ids,
            (0..100).collect::<Vec<_>>(),
            "not x's, not 101 (from 7)"
        );
        assert!(deliveries
            .iter()
            .all(|d| Arc::ptr_eq(&d.events, &deliveries[0].events)));
        assert_eq!(keys(other.try_recv().unwrap()), vec![b"k".to_vec()]);
        assert_eq!(hub.watchers(), 103);
        assert!(hub.unsubscribe(stream, 100));
        assert!(!hub.unsubscribe(stream, 100), "already gone");
        assert!(hub.has_watch(stream, 101) && !hub.has_watch(stream, 100));
        assert_eq!(hub.watchers(), 102);

        // A snapshot ends the watchers; the streams stay and watch again.
        hub.cancel_all("snapshot");
        assert_eq!(hub.watchers(), 0);
        let canceled = std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(canceled, 101, "each watcher told");
        assert!(hub.subscribe(stream, 7, KeyRange::new(b"k", b""), 0, false));
        assert_eq!(hub.watchers(), 1);

        // A stream whose task ended is gone at the next publish.
        drop(rx);
        hub.publish(8, &[put("k", 8)]);
        assert!(!hub.subscribe(stream, 8, KeyRange::new(b"k", b""), 0, false));
        assert_eq!(hub.watchers(), 0);
        hub.drop_stream(elsewhere);
        assert!(!hub.subscribe(elsewhere, 1, KeyRange::new(b"k", b""), 0, false));
    }
}
