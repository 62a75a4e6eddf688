//! A watch opened inside the server, with no client stream: the Lock and
//! Election services wait on one for a key's deletion or a leader's new
//! value (etcd's in-process `v3client` watch). It keeps the Watch
//! service's order (`watch.rs`): register with the hub under the hub lock
//! after reading the store's revision R, then replay `[start, R]` from the
//! store, then pass on live events (> R). So events arrive in revision
//! order, never twice and never skipped. No I/O but the store read.
//!
//! Authorising the caller is the opener's job (`in_process`).

use std::collections::VecDeque;

use tokio::sync::mpsc;

use crate::driver::Shared;
use crate::storage::backend::Backend;
use crate::storage::kv_store::KeyRange;
use crate::storage::{KvError, ReadError};
use crate::watch_hub::{HubMessage, WatchHub};
use nod_proto::etcd::mvccpb::Event;

/// One watch of a key range from a start revision.
pub struct KeyWatch {
    hub: WatchHub,
    stream: u64,
    /// Events below this revision are not for this watch.
    start: i64,
    /// Replayed history, one entry per revision.
    history: VecDeque<(i64, Vec<Event>)>,
    /// Live events; `None` once the watch ended.
    live: Option<mpsc::UnboundedReceiver<HubMessage>>,
}

impl KeyWatch {
    /// Watches `range` from revision `start` (inclusive; 0: from now).
    /// A `start` compaction already removed gives a watch that has ended
    /// (`next` answers `None`), as does a compaction between registering
    /// and reading history: the callers start over from a fresh read.
    pub fn open<B: Backend>(
        shared: &Shared<B>,
        range: KeyRange,
        start: i64,
    ) -> Result<KeyWatch, ReadError> {
        let start = start.max(0);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stream, current, compacted) = {
            // Hub, then store: the driver's order (apply, then publish, under the hub lock).
            let mut hub = shared.hub.lock();
            let store = shared.store();
            let current = store.current_revision();
            let compacted = store.compacted_revision();
            let stream = hub.new_stream(tx);
            if !(start > 0 && start < compacted) {
                hub.subscribe(stream, 1, range.clone(), start.max(current + 1), false);
            }
            (stream, current, compacted)
        };
        let mut watch = KeyWatch {
            hub: shared.hub.clone(),
            stream,
            start,
            history: VecDeque::new(),
            live: Some(rx),
        };
        if start > 0 && start < compacted {
            watch.live = None;
            return Ok(watch);
        }
        if start > 0 && start <= current {
            match shared.store().events_between(&range, start - 1, current) {
                Ok(events) => watch.history = by_revision(events),
                Err(ReadError::Request(KvError::Compacted)) => {
                    watch.end();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(watch)
    }

    /// The next revision's events, in revision order; `None` when the watch
    /// ended (compacted, or the store was replaced by a snapshot).
    pub async fn next(&mut self) -> Option<(i64, Vec<Event>)> {
        if let Some(batch) = self.history.pop_front() {
            return Some(batch);
        }
        loop {
            match self.live.as_mut()?.recv().await {
                Some(HubMessage::Events {
                    revision,
                    deliveries,
                }) => {
                    let start = self.start;
                    // The stream has one watcher: one delivery a revision.
                    debug_assert_eq!(deliveries.len(), 1);
                    let events: Vec<Event> = deliveries
                        .iter()
                        .flat_map(|d| d.events.iter())
                        .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= start))
                        .cloned()
                        .collect();
                    if !events.is_empty() {
                        return Some((revision, events));
                    }
                }
                Some(HubMessage::Progress { .. }) => {}
                Some(HubMessage::Canceled { .. }) | None => {
                    self.end();
                    return None;
                }
            }
        }
    }

    fn end(&mut self) {
        self.live = None;
        self.history.clear();
        self.hub.lock().drop_stream(self.stream);
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        self.hub.lock().drop_stream(self.stream);
    }
}

/// Events in revision order, grouped by revision.
fn by_revision(events: Vec<Event>) -> VecDeque<(i64, Vec<Event>)> {
    let mut out: VecDeque<(i64, Vec<Event>)> = VecDeque::new();
    for e in events {
        let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        match out.back_mut() {
            Some((r, batch)) if *r == rev => batch.push(e),
            _ => out.push_back((rev, vec![e])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::storage::backend::MemoryBackend;
    use crate::storage::kv_store::{self, KvStore};
    use nod_proto::etcd::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};
    use nod_proto::etcd::mvccpb::event::EventType;
    use std::sync::RwLock;

    fn shared() -> Shared<MemoryBackend> {
        Shared {
            auth_enabled: false.into(),
            member_id: 1,
            cluster_id: 1,
            name: "m1".into(),
            store: RwLock::new(KvStore::in_memory()),
            hub: WatchHub::default(),
            status: RwLock::new(Default::default()),
            metrics: Metrics::new(),
            tokens: Default::default(),
        }
    }

    /// Applies and publishes as the driver does: under the hub lock.
    fn put(s: &Shared<MemoryBackend>, key: &str) {
        let mut hub = s.hub.lock();
        let mut store = s.store_mut();
        let req = PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let Ok(kv_store::Outcome::Applied(a)) = store.apply_put(&req, (1, 1)) else {
            panic!("put {key} not applied");
        };
        hub.publish(store.current_revision(), &a.events);
    }

    fn delete(s: &Shared<MemoryBackend>, key: &str) {
        let mut hub = s.hub.lock();
        let mut store = s.store_mut();
        let req = DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let Ok(kv_store::Outcome::Applied(a)) = store.apply_delete(&req, (1, 1)) else {
            panic!("delete {key} not applied");
        };
        hub.publish(store.current_revision(), &a.events);
    }

    fn summary(batch: Option<(i64, Vec<Event>)>) -> Option<(i64, Vec<String>)> {
        batch.map(|(rev, events)| {
            let events = events
                .iter()
                .map(|e| {
                    let key = String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned();
                    if e.r#type == EventType::Delete as i32 {
                        format!("delete {key}")
                    } else {
                        format!("put {key}")
                    }
                })
                .collect();
            (rev, events)
        })
    }

    #[tokio::test]
    async fn history_then_live_events_each_once_and_drop_unsubscribes() {
        let s = shared();
        put(&s, "a/1"); // rev 2
        put(&s, "b"); // rev 3
        delete(&s, "a/1"); // rev 4
        let mut w = KeyWatch::open(&s, KeyRange::new(b"a/", b"a0"), 3).unwrap();
        assert_eq!(s.hub.watchers(), 1);
        put(&s, "a/2"); // rev 5, live
        put(&s, "c"); // rev 6, not in range
        put(&s, "a/3"); // rev 7
        assert_eq!(
            summary(w.next().await),
            Some((4, vec!["delete a/1".to_string()])),
            "history from the start revision (3), nothing before it"
        );
        assert_eq!(summary(w.next().await), Some((5, vec!["put a/2".into()])));
        assert_eq!(summary(w.next().await), Some((7, vec!["put a/3".into()])));
        drop(w);
        assert_eq!(s.hub.watchers(), 0, "dropping the watch unsubscribes it");
    }

    #[tokio::test]
    async fn a_compacted_start_or_a_snapshot_ends_the_watch() {
        let s = shared();
        put(&s, "a"); // rev 2
        put(&s, "a"); // rev 3
        s.store_mut()
            .apply_compaction(
                &CompactionRequest {
                    revision: 3,
                    physical: false,
                },
                (1, 1),
            )
            .unwrap();
        let mut w = KeyWatch::open(&s, KeyRange::new(b"a", b""), 2).unwrap();
        assert!(w.next().await.is_none(), "revision 2 is compacted");
        let mut w = KeyWatch::open(&s, KeyRange::new(b"a", b""), 0).unwrap();
        s.hub.lock().cancel_all("snapshot");
        assert!(w.next().await.is_none(), "canceled by a snapshot");
        assert_eq!(s.hub.watchers(), 0);
    }
}
