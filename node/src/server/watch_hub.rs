//! Live watch fan-out. The driver publishes each applied revision's events
//! here while holding the hub lock across "apply to the store, then
//! publish", and a new watcher registers under the same lock after reading
//! the store's revision: so every event is either in the history the watcher
//! reads or in its channel, never both and never neither. No I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::api::etcd::mvccpb::Event;
use crate::storage::kv_store::KeyRange;

/// What a watch stream's task receives, in order.
#[derive(Debug)]
pub enum HubMessage {
    /// Events of one revision for one watcher.
    Events {
        watch_id: i64,
        revision: i64,
        events: Vec<Event>,
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
        self.subscriptions.retain(|(_, watch_id), s| {
            if revision < s.from {
                return true;
            }
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| e.kv.as_ref().is_some_and(|kv| s.range.contains(&kv.key)))
                .cloned()
                .collect();
            if mine.is_empty() {
                return true;
            }
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
