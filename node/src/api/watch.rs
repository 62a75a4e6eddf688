//! The etcd Watch service. One task per client stream multiplexes its
//! watchers. A new watcher registers with the hub under the hub lock after
//! reading the store's revision R (see `server::watch_hub`), then replays
//! history from its start revision up to R from the store, then passes on
//! live events (> R) in the order the driver published them. So events
//! arrive in revision order, never twice and never skipped. A stream that
//! falls behind sends each watcher the live events of several revisions in
//! one response (`gather`), as etcd does for a watcher catching up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::etcd::etcdserverpb::watch_create_request::FilterType;
use super::etcd::etcdserverpb::watch_server::Watch;
use super::etcd::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use super::etcd::mvccpb::{event::EventType, Event};
use super::status::auth_status;
use crate::auth::perms::Access;
use crate::command::Caller;
use crate::server::node::Node;
use crate::server::watch_hub::HubMessage;
use crate::storage::kv_store::KeyRange;

/// Most events one response carries when replaying history, and most a
/// response of live events merged from several revisions grows to.
const MAX_EVENTS_PER_RESPONSE: usize = 1000;

/// Most bytes of keys and values a response of live events merged from
/// several revisions grows to (a single revision's events go whole).
const MAX_MERGED_BYTES: usize = 1 << 20;

/// Most bytes and events a stream's task gathers for all its watchers
/// before it sends them.
const MAX_GATHERED_BYTES: usize = 4 << 20;
const MAX_GATHERED_EVENTS: usize = 4 * MAX_EVENTS_PER_RESPONSE;

/// Most hub messages a stream's task takes in one turn.
const HUB_MESSAGES_PER_TURN: usize = 256;

pub struct WatchService {
    pub node: Arc<Node>,
    /// How often watchers that asked for progress notifications get one.
    pub progress_interval: Duration,
}

struct Watcher {
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Large responses go out in pieces (`fragment` in the create).
    fragment: bool,
    /// Events below this revision are not for this watcher.
    start: i64,
    /// The hub's id for this watcher: never reused in a session, so events
    /// queued for a canceled watcher never reach a new one with its watch id.
    internal: i64,
}

impl Watcher {
    fn shape(&self, events: &[Event]) -> Vec<Event> {
        events
            .iter()
            .filter(|e| {
                e.kv.as_ref()
                    .is_some_and(|kv| kv.mod_revision >= self.start)
            })
            .filter(|e| {
                let put = e.r#type == EventType::Put as i32;
                !(put && self.no_put || !put && self.no_delete)
            })
            .map(|e| Event {
                r#type: e.r#type,
                kv: e.kv.clone(),
                prev_kv: if self.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
            })
            .collect()
    }
}

/// etcd's fragments of a watch response: pieces that each stay under
/// `max_bytes` (a piece holds at least one event, however large), all but
/// the last marked `fragment`; a response under the limit, or with one
/// event, goes whole. Clients that asked for fragments join the pieces.
fn fragments(mut r: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    use prost::Message;
    if r.encoded_len() < max_bytes || r.events.len() < 2 {
        return vec![r];
    }
    let events = std::mem::take(&mut r.events);
    r.fragment = true;
    let base = r.encoded_len();
    // Field 11 of WatchResponse: its bytes in a piece.
    let size = |e: &Event| prost::encoding::message::encoded_len(11, e);
    let mut pieces = Vec::new();
    let mut piece = Vec::new();
    let mut len = base;
    for e in events {
        let n = size(&e);
        if !piece.is_empty() && len + n >= max_bytes {
            pieces.push(WatchResponse {
                events: std::mem::take(&mut piece),
                ..r.clone()
            });
            len = base;
        }
        len += n;
        piece.push(e);
    }
    r.fragment = false;
    r.events = piece;
    pieces.push(r);
    pieces
}

/// A watcher's end because its start revision was compacted, as etcd
/// sends it: the compact revision (clients turn it into their
/// "required revision has been compacted" error), no reason, and a header
/// without a revision (`header` is given one of 0).
fn compacted_cancel(
    header: Option<super::etcd::etcdserverpb::ResponseHeader>,
    watch_id: i64,
    compacted: i64,
) -> WatchResponse {
    WatchResponse {
        header,
        watch_id,
        canceled: true,
        compact_revision: compacted,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Who watches: each create is authorised for them (etcd does so
        // with the stream's credentials, once, when the watch is created).
        let caller = self.node.ctx(&request).await?.caller;
        let require_leader = crate::server::node::requires_leader(&request);
        let input = request.into_inner();
        let (out, rx) = mpsc::channel(256);
        let (hub_tx, hub_rx) = mpsc::unbounded_channel();
        let stream = self.node.shared.hub.lock().new_stream(hub_tx.clone());
        let session = Session {
            caller,
            node: self.node.clone(),
            out,
            watchers: HashMap::new(),
            next_id: 0,
            next_internal: 0,
            by_internal: HashMap::new(),
            stream,
            hub_tx,
            progress_interval: self.progress_interval,
            require_leader,
        };
        tokio::spawn(session.run(input, hub_rx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Session {
    caller: Caller,
    node: Arc<Node>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: HashMap<i64, Watcher>,
    next_id: i64,
    next_internal: i64,
    by_internal: HashMap<i64, i64>,
    stream: u64,
    /// The stream's channel from the hub (for progress requests, which
    /// queue behind the events published before them).
    hub_tx: mpsc::UnboundedSender<HubMessage>,
    progress_interval: Duration,
    /// The client asked for a leader (`hasleader`): the stream ends with
    /// "no leader" once the member has had none for `Node::leaderless_for`.
    require_leader: bool,
}

/// Live events gathered for a stream's watchers from the revisions the hub
/// queued, in the order their first event came.
#[derive(Default)]
struct Merged {
    slots: HashMap<i64, usize>,
    gathered: Vec<Gathered>,
    /// Bytes and events in `gathered`.
    bytes: usize,
    events: usize,
}

/// One watcher's events from consecutive revisions, up to `revision`.
#[derive(Debug)]
struct Gathered {
    watch_id: i64,
    fragment: bool,
    revision: i64,
    events: Vec<Event>,
    bytes: usize,
}

impl Merged {
    /// Adds one watcher's events of `revision` (after those of earlier
    /// revisions). Gives back what the watcher had gathered when the two
    /// together would pass `MAX_MERGED_BYTES` or `MAX_EVENTS_PER_RESPONSE` events: that
    /// goes out first.
    fn add(
        &mut self,
        watch_id: i64,
        fragment: bool,
        revision: i64,
        events: Vec<Event>,
    ) -> Option<Gathered> {
        let bytes: usize = events.iter().map(event_bytes).sum();
        self.bytes += bytes;
        self.events += events.len();
        let slot = *self.slots.entry(watch_id).or_insert_with(|| {
            self.gathered.push(Gathered {
                watch_id,
                fragment,
                revision,
                events: Vec::new(),
                bytes: 0,
            });
            self.gathered.len() - 1
        });
        let g = &mut self.gathered[slot];
        let full = (!g.events.is_empty()
            && (g.bytes + bytes > MAX_MERGED_BYTES
                || g.events.len() + events.len() > MAX_EVENTS_PER_RESPONSE))
            .then(|| Gathered {
                watch_id,
                fragment,
                revision: g.revision,
                events: std::mem::take(&mut g.events),
                bytes: std::mem::take(&mut g.bytes),
            });
        g.revision = revision;
        g.bytes += bytes;
        g.events.extend(events);
        if let Some(f) = &full {
            self.bytes -= f.bytes;
            self.events -= f.events.len();
        }
        full
    }

    /// Whether it holds enough to send now.
    fn is_large(&self) -> bool {
        self.bytes > MAX_GATHERED_BYTES || self.events > MAX_GATHERED_EVENTS
    }

    /// Everything gathered, one entry a watcher, in the order each
    /// watcher's first event came.
    fn take(&mut self) -> Vec<Gathered> {
        self.slots.clear();
        self.bytes = 0;
        self.events = 0;
        let mut gathered = std::mem::take(&mut self.gathered);
        gathered.retain(|g| !g.events.is_empty());
        gathered
    }
}

/// What a stream's task sends for the hub messages it took, in order.
#[derive(Debug)]
enum Out {
    Events(Gathered),
    Progress {
        revision: i64,
        watch_id: i64,
    },
    /// The hub ended watcher `internal`.
    Canceled {
        internal: i64,
        reason: String,
    },
}

/// Turns the hub messages a stream's task took into what it sends: live
/// events of consecutive revisions for one watcher go out as one response,
/// as etcd sends a watcher catching up (etcd sends a watcher that is up to
/// date one response a revision), so a busy stream sends fewer, larger
/// responses. A progress notification or a cancel goes out after every
/// event that came ahead of it. `shape` gives for a watcher (its hub id)
/// and a revision's events its watch id, whether it wants fragments, and
/// the events it gets, if any.
fn gather(
    messages: impl IntoIterator<Item = HubMessage>,
    mut shape: impl FnMut(i64, &[Event]) -> Option<(i64, bool, Vec<Event>)>,
) -> Vec<Out> {
    let mut out = Vec::new();
    let mut merged = Merged::default();
    for m in messages {
        match m {
            HubMessage::Events {
                revision,
                deliveries,
            } => {
                for d in deliveries {
                    let Some((watch_id, fragment, events)) = shape(d.watch_id, &d.events) else {
                        continue;
                    };
                    if let Some(full) = merged.add(watch_id, fragment, revision, events) {
                        out.push(Out::Events(full));
                    }
                    if merged.is_large() {
                        out.extend(merged.take().into_iter().map(Out::Events));
                    }
                }
            }
            HubMessage::Progress { revision, watch_id } => {
                out.extend(merged.take().into_iter().map(Out::Events));
                out.push(Out::Progress { revision, watch_id });
            }
            HubMessage::Canceled { watch_id, reason } => {
                out.extend(merged.take().into_iter().map(Out::Events));
                out.push(Out::Canceled {
                    internal: watch_id,
                    reason,
                });
            }
        }
    }
    out.extend(merged.take().into_iter().map(Out::Events));
    out
}

/// An event's keys and values, the bulk of its encoding.
fn event_bytes(e: &Event) -> usize {
    let kv = |kv: &Option<super::etcd::mvccpb::KeyValue>| {
        kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len())
    };
    kv(&e.kv) + kv(&e.prev_kv)
}

/// How often a `hasleader` stream checks for a leader.
const LEADER_CHECK: Duration = Duration::from_millis(250);

impl Session {
    async fn run(
        mut self,
        mut input: Streaming<WatchRequest>,
        mut hub_rx: mpsc::UnboundedReceiver<HubMessage>,
    ) {
        let mut progress = tokio::time::interval(self.progress_interval);
        progress.tick().await;
        let mut leader_check = tokio::time::interval(LEADER_CHECK);
        let mut leaderless_since: Option<tokio::time::Instant> = None;
        let mut input_done = false;
        loop {
            let ok = tokio::select! {
                _ = leader_check.tick(), if self.require_leader => {
                    self.leader_still_there(&mut leaderless_since).await
                }
                req = input.next(), if !input_done => match req {
                    Some(Ok(r)) => self.on_request(r).await,
                    // The client sends no more requests but still watches
                    // (etcd's too: a half-closed stream keeps its watchers;
                    // the JSON gateway's watch is such a stream).
                    None => {
                        input_done = true;
                        true
                    }
                    // A broken stream or garbage: end the session.
                    Some(Err(_)) => false,
                },
                Some(m) = hub_rx.recv() => self.on_hub(m, &mut hub_rx).await,
                _ = progress.tick() => self.progress_notify(),
                _ = self.out.closed() => false,
            };
            if !ok {
                break;
            }
        }
        self.node.shared.hub.lock().drop_stream(self.stream);
        self.node
            .shared
            .metrics
            .watchers
            .set(self.node.shared.hub.watchers() as i64);
    }

    /// For a `hasleader` stream: false (after telling the client, as etcd
    /// does) once the member has had no leader for `leaderless_for`.
    async fn leader_still_there(&self, since: &mut Option<tokio::time::Instant>) -> bool {
        if self.node.shared.status().leader != 0 {
            *since = None;
            return true;
        }
        let now = tokio::time::Instant::now();
        let since = *since.get_or_insert(now);
        if now.duration_since(since) < self.node.leaderless_for {
            return true;
        }
        let _ = self
            .out
            .send(Err(Status::unavailable("etcdserver: no leader")))
            .await;
        false
    }

    async fn send(&self, r: WatchResponse) -> bool {
        self.out.send(Ok(r)).await.is_ok()
    }

    /// Events for a watcher, in pieces of under `--max-request-bytes` plus
    /// gRPC's allowance (etcd's limit for them) when it asked for fragments.
    async fn send_events(&self, r: WatchResponse, fragment: bool) -> bool {
        if !fragment {
            return self.send(r).await;
        }
        let limit = self.node.max_request_bytes + crate::server::GRPC_OVERHEAD;
        for piece in fragments(r, limit) {
            if !self.send(piece).await {
                return false;
            }
        }
        true
    }

    fn header(&self, revision: i64) -> Option<super::etcd::etcdserverpb::ResponseHeader> {
        Some(self.node.header(revision))
    }

    async fn on_request(&mut self, r: WatchRequest) -> bool {
        match r.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                let existed = match self.watchers.remove(&c.watch_id) {
                    Some(w) => {
                        self.by_internal.remove(&w.internal);
                        self.node
                            .shared
                            .hub
                            .lock()
                            .unsubscribe(self.stream, w.internal)
                    }
                    None => false,
                };
                let rev = self.node.shared.store().current_revision();
                let reason = if existed {
                    String::new()
                } else {
                    "watch not found".to_string()
                };
                self.send(WatchResponse {
                    header: self.header(rev),
                    watch_id: c.watch_id,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                let shared = &self.node.shared;
                shared
                    .hub
                    .send_progress(|| shared.store().current_revision(), &self.hub_tx, [-1]);
                true
            }
            None => true,
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let watch_id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if self.watchers.contains_key(&watch_id) || watch_id < 0 {
            let rev = self.node.shared.store().current_revision();
            return self
                .send(WatchResponse {
                    header: self.header(rev),
                    watch_id,
                    created: true,
                    canceled: true,
                    cancel_reason: "etcdserver: duplicate watch ID".into(),
                    ..Default::default()
                })
                .await;
        }
        let permitted = self.node.shared.store().auth().check_range(
            &self.caller,
            Access::Read,
            &c.key,
            &c.range_end,
        );
        if let Err(e) = permitted {
            // etcd gives the text of the gRPC status the check failed with.
            let status = auth_status(e);
            let reason = format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            );
            let rev = self.node.shared.store().current_revision();
            return self
                .send(WatchResponse {
                    header: self.header(rev),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await;
        }
        let range = KeyRange::new(&c.key, &c.range_end);
        let filters: Vec<i32> = c.filters.clone();
        self.next_internal += 1;
        let watcher = Watcher {
            prev_kv: c.prev_kv,
            no_put: filters.contains(&(FilterType::Noput as i32)),
            no_delete: filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            start: c.start_revision.max(0),
            internal: self.next_internal,
        };
        let (current, compacted) = {
            let mut hub = self.node.shared.hub.lock();
            let store = self.node.shared.store();
            let current = store.current_revision();
            let compacted = store.compacted_revision();
            let live_from = c.start_revision.max(current + 1);
            if !(c.start_revision > 0 && c.start_revision < compacted) {
                hub.subscribe(
                    self.stream,
                    watcher.internal,
                    range.clone(),
                    live_from,
                    watcher.prev_kv,
                );
            }
            (current, compacted)
        };
        if c.start_revision > 0 && c.start_revision < compacted {
            let _ = self
                .send(WatchResponse {
                    header: self.header(current),
                    watch_id,
                    created: true,
                    ..Default::default()
                })
                .await;
            return self
                .send(compacted_cancel(self.header(0), watch_id, compacted))
                .await;
        }
        self.next_id = self.next_id.max(watch_id + 1);
        if !self
            .send(WatchResponse {
                header: self.header(current),
                watch_id,
                created: true,
                ..Default::default()
            })
            .await
        {
            return false;
        }
        self.node
            .shared
            .metrics
            .watchers
            .set(self.node.shared.hub.watchers() as i64);
        if c.start_revision > 0 && c.start_revision <= current {
            let history =
                self.node
                    .shared
                    .store()
                    .events_between(&range, c.start_revision - 1, current);
            match history {
                Ok(events) => {
                    let events = watcher.shape(&events);
                    for chunk in events.chunks(MAX_EVENTS_PER_RESPONSE) {
                        let resp = WatchResponse {
                            header: self.header(current),
                            watch_id,
                            events: chunk.to_vec(),
                            ..Default::default()
                        };
                        if !self.send_events(resp, watcher.fragment).await {
                            return false;
                        }
                    }
                }
                Err(e) => {
                    // Compacted between registering and reading: cancel as etcd does.
                    self.node
                        .shared
                        .hub
                        .lock()
                        .unsubscribe(self.stream, watcher.internal);
                    let compacted = self.node.shared.store().compacted_revision();
                    tracing::debug!(error = %e, watch_id, "history compacted under a new watcher");
                    return self
                        .send(compacted_cancel(self.header(0), watch_id, compacted))
                        .await;
                }
            }
        }
        self.by_internal.insert(watcher.internal, watch_id);
        self.watchers.insert(watch_id, watcher);
        true
    }

    /// Takes `first` and whatever else the hub has queued (up to
    /// `HUB_MESSAGES_PER_TURN` messages) and sends what `gather` makes of
    /// them.
    async fn on_hub(
        &mut self,
        first: HubMessage,
        hub_rx: &mut mpsc::UnboundedReceiver<HubMessage>,
    ) -> bool {
        let mut messages = vec![first];
        while messages.len() < HUB_MESSAGES_PER_TURN {
            match hub_rx.try_recv() {
                Ok(m) => messages.push(m),
                Err(_) => break,
            }
        }
        let out = gather(messages, |internal, events| {
            let watch_id = *self.by_internal.get(&internal)?;
            let w = self.watchers.get(&watch_id)?;
            let events = w.shape(events);
            (!events.is_empty()).then_some((watch_id, w.fragment, events))
        });
        for o in out {
            let sent = match o {
                Out::Events(g) => self.send_gathered(g).await,
                Out::Progress { revision, watch_id } => {
                    self.send(WatchResponse {
                        header: self.header(revision),
                        watch_id,
                        ..Default::default()
                    })
                    .await
                }
                Out::Canceled { internal, reason } => self.canceled(internal, reason).await,
            };
            if !sent {
                return false;
            }
        }
        true
    }

    async fn send_gathered(&self, g: Gathered) -> bool {
        let resp = WatchResponse {
            header: self.header(g.revision),
            watch_id: g.watch_id,
            events: g.events,
            ..Default::default()
        };
        self.send_events(resp, g.fragment).await
    }

    /// The hub ended a watcher (the store was replaced by a snapshot).
    async fn canceled(&mut self, internal: i64, reason: String) -> bool {
        let Some(watch_id) = self.by_internal.remove(&internal) else {
            return true;
        };
        self.watchers.remove(&watch_id);
        let rev = self.node.shared.store().current_revision();
        self.send(WatchResponse {
            header: self.header(rev),
            watch_id,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        })
        .await
    }

    fn progress_notify(&self) -> bool {
        let shared = &self.node.shared;
        let ids = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(id, _)| *id);
        shared
            .hub
            .send_progress(|| shared.store().current_revision(), &self.hub_tx, ids);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::etcd::mvccpb::KeyValue;
    use crate::server::watch_hub::Delivery;
    use prost::Message;

    fn event(key: &str, len: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![7; len],
                mod_revision: 5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn at(key: &str, revision: i64, len: usize) -> Event {
        let mut e = event(key, len);
        e.kv.as_mut().unwrap().mod_revision = revision;
        e
    }

    fn revisions(g: &Gathered) -> Vec<i64> {
        g.events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    }

    #[test]
    fn live_events_of_consecutive_revisions_merge_per_watcher_in_order() {
        let mut m = Merged::default();
        assert!(m.add(1, false, 5, vec![at("a", 5, 1)]).is_none());
        assert!(m.add(2, true, 5, vec![at("a", 5, 1)]).is_none());
        assert!(m
            .add(1, false, 6, vec![at("a", 6, 1), at("b", 6, 1)])
            .is_none());
        assert!(m.add(2, true, 8, vec![at("a", 8, 1)]).is_none());
        let out = m.take();
        assert_eq!(out.iter().map(|g| g.watch_id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(revisions(&out[0]), [5, 6, 6]);
        assert_eq!(out[0].revision, 6, "the header names the last revision");
        assert_eq!(revisions(&out[1]), [5, 8]);
        assert_eq!(out[1].revision, 8);
        assert!(out[1].fragment && !out[0].fragment);
        assert!(m.take().is_empty(), "taken once");
        assert!(m.add(1, false, 9, vec![at("a", 9, 1)]).is_none());
        assert_eq!(revisions(&m.take()[0]), [9], "a fresh start after a take");
    }

    #[test]
    fn a_merged_response_stops_growing_at_its_limits_and_never_splits_a_revision() {
        let mut m = Merged::default();
        let many = |revision| (0..600).map(|_| at("k", revision, 1)).collect::<Vec<_>>();
        assert!(m.add(1, false, 5, many(5)).is_none());
        let full = m
            .add(1, false, 6, many(6))
            .expect("1200 events are too many");
        assert_eq!((full.revision, full.events.len()), (5, 600));
        let rest = m.take();
        assert_eq!(rest.len(), 1);
        assert_eq!(revisions(&rest[0]), vec![6; 600]);

        // Bytes: two events of 600 KiB go separately; one revision of
        // 1.2 MiB goes whole.
        assert!(m.add(1, false, 7, vec![at("k", 7, 600 << 10)]).is_none());
        let full = m.add(1, false, 8, vec![at("k", 8, 600 << 10)]).unwrap();
        assert_eq!(revisions(&full), [7]);
        assert!(m
            .add(
                1,
                false,
                9,
                vec![at("k", 9, 600 << 10), at("j", 9, 600 << 10)]
            )
            .is_some_and(|g| revisions(&g) == [8]));
        assert_eq!(revisions(&m.take()[0]), [9, 9]);
    }

    #[test]
    fn gather_flushes_before_a_progress_notification_and_a_cancel() {
        let events = |revision, watchers: &[i64]| HubMessage::Events {
            revision,
            deliveries: watchers
                .iter()
                .map(|&watch_id| Delivery {
                    watch_id,
                    events: vec![at("k", revision, 1)].into(),
                })
                .collect(),
        };
        let messages = vec![
            events(5, &[1, 2]),
            events(6, &[1]),
            HubMessage::Progress {
                revision: 6,
                watch_id: -1,
            },
            events(7, &[1, 3]),
            HubMessage::Canceled {
                watch_id: 3,
                reason: "snapshot".into(),
            },
            events(8, &[1]),
        ];
        // Watcher 3 (hub id) is the client's 30; nothing for 2 at 5.
        let out = gather(messages, |internal, events| {
            (internal != 2).then(|| (internal * 10, false, events.to_vec()))
        });
        let seen: Vec<String> = out
            .iter()
            .map(|o| match o {
                Out::Events(g) => format!("{}:{:?}", g.watch_id, revisions(g)),
                Out::Progress { revision, .. } => format!("progress {revision}"),
                Out::Canceled { internal, .. } => format!("cancel {internal}"),
            })
            .collect();
        assert_eq!(
            seen,
            [
                "10:[5, 6]",
                "progress 6",
                "10:[7]",
                "30:[7]",
                "cancel 3",
                "10:[8]"
            ]
        );
    }

    /// One event of a generated hub message: (watcher's hub id, revision,
    /// index in its delivery) as its key, and its value's length.
    fn token(e: &Event) -> Vec<u8> {
        e.kv.as_ref().unwrap().key.clone()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Against the plain forwarding it replaces (one response for each
        /// watcher and revision): each watcher gets the same events in the
        /// same order, a revision whole in one response, every progress or
        /// cancel after exactly the events that came before it, and no
        /// response past its limits unless one revision is that large.
        #[test]
        fn gather_sends_what_plain_forwarding_does_in_fewer_responses(
            steps in proptest::collection::vec(
                (0u8..10, proptest::collection::vec((1i64..5, 1usize..400, 0usize..3), 0..4)),
                1..80,
            )
        ) {
            let mut messages = Vec::new();
            let mut revision = 1;
            for (kind, deliveries) in &steps {
                match kind {
                    0 => messages.push(HubMessage::Progress { revision, watch_id: -1 }),
                    1 => messages.push(HubMessage::Canceled {
                        watch_id: deliveries.first().map_or(1, |d| d.0),
                        reason: String::new(),
                    }),
                    _ => {
                        revision += 1;
                        let mut seen = std::collections::HashSet::new();
                        let deliveries = deliveries
                            .iter()
                            .filter(|d| seen.insert(d.0))
                            .map(|&(watch_id, n, size)| Delivery {
                                watch_id,
                                // Few of the large ones.
                                events: (0..if size == 2 { n % 4 + 1 } else { n })
                                    .map(|i| {
                                        let mut e = at("", revision, [1, 3000, 300 << 10][size]);
                                        e.kv.as_mut().unwrap().key =
                                            format!("{watch_id}/{revision}/{i}").into_bytes();
                                        e
                                    })
                                    .collect(),
                            })
                            .collect();
                        messages.push(HubMessage::Events { revision, deliveries });
                    }
                }
            }
            // Plain forwarding, as tokens: an event's key, or a control.
            let mut expected: Vec<Vec<u8>> = Vec::new();
            let mut plain_responses = 0;
            for m in &messages {
                plain_responses += usize::from(!matches!(m, HubMessage::Events { .. }));
                match m {
                    HubMessage::Events { deliveries, .. } => {
                        for d in deliveries {
                            // Watcher 4 takes nothing (its filters).
                            if d.watch_id != 4 {
                                expected.extend(d.events.iter().map(token));
                                plain_responses += 1;
                            }
                        }
                    }
                    HubMessage::Progress { revision, .. } => {
                        expected.push(format!("progress {revision}").into_bytes())
                    }
                    HubMessage::Canceled { watch_id, .. } => {
                        expected.push(format!("cancel {watch_id}").into_bytes())
                    }
                }
            }
            let out = gather(messages, |internal, events| {
                (internal != 4).then(|| (internal, false, events.to_vec()))
            });
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut last_revision = std::collections::HashMap::new();
            for o in &out {
                match o {
                    Out::Events(g) => {
                        let revs = revisions(g);
                        proptest::prop_assert!(!revs.is_empty());
                        proptest::prop_assert_eq!(g.revision, *revs.last().unwrap());
                        let bytes: usize = g.events.iter().map(event_bytes).sum();
                        let one_revision = revs.iter().all(|&r| r == revs[0]);
                        proptest::prop_assert!(
                            one_revision
                                || (g.events.len() <= MAX_EVENTS_PER_RESPONSE
                                    && bytes <= MAX_MERGED_BYTES),
                            "{} events, {} bytes", g.events.len(), bytes
                        );
                        // Revisions ascend per watcher, each whole in one response.
                        let before = last_revision.insert(g.watch_id, g.revision);
                        proptest::prop_assert!(before.is_none_or(|b| b < revs[0]));
                        got.extend(g.events.iter().map(token));
                    }
                    Out::Progress { revision, .. } => {
                        got.push(format!("progress {revision}").into_bytes())
                    }
                    Out::Canceled { internal, .. } => {
                        got.push(format!("cancel {internal}").into_bytes())
                    }
                }
            }
            // Same tokens; controls at the same places relative to events.
            let control = |t: &Vec<u8>| t.starts_with(b"progress") || t.starts_with(b"cancel");
            let segments = |ts: &[Vec<u8>]| {
                let mut segs = vec![(Vec::new(), Vec::new())];
                for t in ts {
                    if control(t) {
                        segs.push((t.clone(), Vec::new()));
                    } else {
                        segs.last_mut().unwrap().1.push(t.clone());
                    }
                }
                for s in &mut segs {
                    s.1.sort();
                }
                segs
            };
            proptest::prop_assert_eq!(segments(&got), segments(&expected));
            // And each watcher's events in the same order.
            for w in 1..4 {
                let mine = |ts: &[Vec<u8>]| -> Vec<Vec<u8>> {
                    ts.iter().filter(|t| t.starts_with(format!("{w}/").as_bytes())).cloned().collect()
                };
                proptest::prop_assert_eq!(mine(&got), mine(&expected));
            }
            proptest::prop_assert!(out.len() <= plain_responses);
        }
    }

    #[test]
    fn large_responses_split_into_fragments_under_the_limit() {
        let r = WatchResponse {
            watch_id: 3,
            events: (0..5).map(|i| event(&format!("k{i}"), 400)).collect(),
            ..Default::default()
        };
        let whole = r.clone();
        // Room for two events per piece, not three.
        let limit = 1000;
        let pieces = fragments(r, limit);
        assert_eq!(
            pieces.iter().map(|p| p.events.len()).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(
            pieces.iter().map(|p| p.fragment).collect::<Vec<_>>(),
            [true, true, false]
        );
        for p in &pieces {
            assert!(p.encoded_len() < limit, "{}", p.encoded_len());
            assert_eq!(p.watch_id, 3);
        }
        let joined: Vec<Event> = pieces.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, whole.events);
    }

    #[test]
    fn small_responses_and_single_events_go_whole() {
        let small = WatchResponse {
            events: vec![event("a", 10), event("b", 10)],
            ..Default::default()
        };
        assert_eq!(fragments(small.clone(), 1000), vec![small]);
        let one = WatchResponse {
            events: vec![event("big", 5000)],
            ..Default::default()
        };
        assert_eq!(fragments(one.clone(), 1000), vec![one]);
        // A piece always takes at least one event, even one over the limit.
        let mixed = WatchResponse {
            events: vec![event("a", 10), event("big", 5000), event("c", 10)],
            ..Default::default()
        };
        let sizes: Vec<usize> = fragments(mixed, 1000)
            .iter()
            .map(|p| p.events.len())
            .collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
