//! The etcd Watch service. One task per client stream multiplexes its
//! watchers. A new watcher registers with the hub under the hub lock after
//! reading the store's revision R (see `server::watch_hub`), then replays
//! history from its start revision up to R from the store, then passes on
//! live events (> R) in the order the driver published them. So events
//! arrive in revision order, never twice and never skipped.

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

/// Most events one response carries when replaying history.
const HISTORY_BATCH: usize = 1000;

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
        let session = Session {
            caller,
            node: self.node.clone(),
            out,
            watchers: HashMap::new(),
            next_id: 0,
            next_internal: 0,
            by_internal: HashMap::new(),
            stream: self.node.shared.hub.lock().new_stream(),
            progress_interval: self.progress_interval,
            require_leader,
        };
        tokio::spawn(session.run(input));
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
    progress_interval: Duration,
    /// The client asked for a leader (`hasleader`): the stream ends with
    /// "no leader" once the member has had none for `Node::leaderless_for`.
    require_leader: bool,
}

/// How often a `hasleader` stream checks for a leader.
const LEADER_CHECK: Duration = Duration::from_millis(250);

impl Session {
    async fn run(mut self, mut input: Streaming<WatchRequest>) {
        let (hub_tx, mut hub_rx) = mpsc::unbounded_channel();
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
                    Some(Ok(r)) => self.on_request(r, &hub_tx).await,
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
                Some(m) = hub_rx.recv() => self.on_hub(m).await,
                _ = progress.tick() => self.progress_notify(&hub_tx),
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

    async fn on_request(
        &mut self,
        r: WatchRequest,
        hub_tx: &mpsc::UnboundedSender<HubMessage>,
    ) -> bool {
        match r.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c, hub_tx).await,
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
                    .send_progress(|| shared.store().current_revision(), hub_tx, [-1]);
                true
            }
            None => true,
        }
    }

    async fn create(
        &mut self,
        c: WatchCreateRequest,
        hub_tx: &mpsc::UnboundedSender<HubMessage>,
    ) -> bool {
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
                    hub_tx.clone(),
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
                    for chunk in events.chunks(HISTORY_BATCH) {
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

    async fn on_hub(&mut self, m: HubMessage) -> bool {
        match m {
            HubMessage::Events {
                watch_id,
                revision,
                events,
            } => {
                let Some(&watch_id) = self.by_internal.get(&watch_id) else {
                    return true;
                };
                let Some(w) = self.watchers.get(&watch_id) else {
                    return true;
                };
                let events = w.shape(&events);
                if events.is_empty() {
                    return true;
                }
                let resp = WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    events,
                    ..Default::default()
                };
                self.send_events(resp, w.fragment).await
            }
            HubMessage::Canceled { watch_id, reason } => {
                let Some(watch_id) = self.by_internal.remove(&watch_id) else {
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
            HubMessage::Progress { revision, watch_id } => {
                self.send(WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    ..Default::default()
                })
                .await
            }
        }
    }

    fn progress_notify(&self, hub_tx: &mpsc::UnboundedSender<HubMessage>) -> bool {
        let shared = &self.node.shared;
        let ids = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(id, _)| *id);
        shared
            .hub
            .send_progress(|| shared.store().current_revision(), hub_tx, ids);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::etcd::mvccpb::KeyValue;
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
