//! `Watcher`: a watch that survives its endpoint. A background task holds
//! the stream; when it breaks (member killed, connection lost) the task
//! opens it again on another healthy endpoint, from where it left off, and
//! the caller sees one unbroken sequence of events: none twice, none
//! skipped. Compaction of a revision still needed ends it with
//! `ClientError::Compacted`. A token the server refuses (a failed stream
//! or, as etcd does it, a watch cancelled with "invalid auth token") is
//! replaced by a new login and the stream reopened; a login that fails for
//! good (wrong password) ends the watch with its error.
//!
//! Departure from "resume at last seen revision + 1": the server may split
//! one revision's events over several responses (history is sent in
//! chunks), so the task resumes at the last seen revision itself and drops
//! as many events of that revision as it already delivered (every member
//! sends a revision's events in the same order, its sub revisions).
//! Resuming at +1 could skip the rest of a split revision.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use nod_proto::etcd::etcdserverpb::{watch_create_request::FilterType, WatchCreateRequest};
use nod_proto::etcd::mvccpb::Event;

use crate::backoff::Jitter;
use crate::client::open_watch;
use crate::endpoints::Route;
use crate::retry::{is_rate_limited, may_retry, Idempotence};
use crate::{Client, ClientError, KeySpan, Result};

/// What to watch, as etcd's `WithPrefix`, `WithRev`, `WithPrevKV`, ….
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    pub span: KeySpan,
    /// The first revision to deliver; 0: changes after now.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
}

/// Events of one or more revisions, in order; or, with no events, the
/// answer to [`Watcher::request_progress`]: every event up to
/// `header_revision` has been delivered.
#[derive(Clone, Debug)]
pub struct WatchBatch {
    /// The store's revision when the server sent them.
    pub header_revision: i64,
    pub events: Vec<Event>,
}

/// Where the stream is: the last revision delivered and how many of its
/// events were. A revision's events come in the same order from every
/// member (its sub revisions), and one key may change twice in one
/// revision (a put and a delete in two nested transactions), so a resumed
/// stream skips by count, not by key. Pure.
#[derive(Clone, Debug, Default)]
pub(crate) struct Resume {
    last_revision: i64,
    delivered_at_last: usize,
    /// Events of `last_revision` the current stream repeats.
    skip: usize,
}

impl Resume {
    /// The `start_revision` for (re)opening the stream; the new stream
    /// repeats the events of the last revision already delivered.
    fn start(&mut self, first: i64) -> i64 {
        self.skip = self.delivered_at_last;
        if self.last_revision == 0 {
            first
        } else {
            self.last_revision
        }
    }

    /// Nothing before `revision` (inclusive) is to come: a fresh watch
    /// from "now".
    fn starts_after(&mut self, revision: i64) {
        if self.last_revision == 0 {
            // Everything up to `revision` is before the watch: resume after it.
            self.last_revision = revision + 1;
            self.delivered_at_last = 0;
            self.skip = 0;
        }
    }

    /// Keeps the events not delivered yet, and counts them.
    fn admit(&mut self, events: Vec<Event>) -> Vec<Event> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let Some(kv) = e.kv.as_ref() else { continue };
            let rev = kv.mod_revision;
            if rev < self.last_revision {
                continue;
            }
            if rev == self.last_revision {
                if self.skip > 0 {
                    self.skip -= 1;
                    continue;
                }
                self.delivered_at_last += 1;
            } else {
                self.last_revision = rev;
                self.delivered_at_last = 1;
                self.skip = 0;
            }
            out.push(e);
        }
        out
    }
}

/// A resuming watch; see the module docs. Dropping it stops the stream.
pub struct Watcher {
    rx: mpsc::Receiver<Result<WatchBatch>>,
    progress: mpsc::UnboundedSender<()>,
    endpoint: Arc<Mutex<Option<String>>>,
    reconnects: Arc<std::sync::atomic::AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// The next events, an error that ended the watch, or `None` after it.
    pub async fn next(&mut self) -> Option<Result<WatchBatch>> {
        self.rx.recv().await
    }

    /// The endpoint the stream is on now.
    pub fn endpoint(&self) -> Option<String> {
        self.endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the server which revision the stream has reached: a batch
    /// with no events follows, once every event up to its
    /// `header_revision` has been delivered (etcd's progress request,
    /// `RequestProgress` in its Go client). A request made while the stream
    /// is being reopened is lost: ask again if no answer comes.
    pub fn request_progress(&self) {
        let _ = self.progress.send(());
    }

    /// How many times the stream was opened again after breaking.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Client {
    /// Watches `key` (and the span in `options`), resuming across failures.
    /// Returns once the first stream is open (so writes made after this
    /// returns are seen even with `start_revision` 0).
    pub async fn watcher(&self, key: impl Into<Vec<u8>>, options: WatchOptions) -> Result<Watcher> {
        let key = key.into();
        let (tx, rx) = mpsc::channel(64);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let endpoint = Arc::new(Mutex::new(None));
        let reconnects = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (progress, progress_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            self.clone(),
            key,
            options,
            Channels {
                out: tx,
                ready: ready_tx,
                progress: progress_rx,
            },
            endpoint.clone(),
            reconnects.clone(),
        ));
        let mut w = Watcher {
            rx,
            progress,
            endpoint,
            reconnects,
            task,
        };
        match ready_rx.await {
            Ok(()) => Ok(w),
            Err(_) => Err(match w.rx.recv().await {
                Some(Err(e)) => e,
                _ => ClientError::Protocol("watch ended before it started".into()),
            }),
        }
    }
}

/// The watch task's ends of the Watcher's channels.
struct Channels {
    out: mpsc::Sender<Result<WatchBatch>>,
    ready: tokio::sync::oneshot::Sender<()>,
    progress: mpsc::UnboundedReceiver<()>,
}

async fn run(
    client: Client,
    key: Vec<u8>,
    options: WatchOptions,
    channels: Channels,
    endpoint: Arc<Mutex<Option<String>>>,
    reconnects: Arc<std::sync::atomic::AtomicU64>,
) {
    let Channels {
        out,
        ready,
        progress: mut progress_rx,
    } = channels;
    let mut ready = Some(ready);
    let mut resume = Resume::default();
    let mut jitter = Jitter::from_entropy();
    let mut failures = 0u32;
    let mut filters = Vec::new();
    if options.no_put {
        filters.push(FilterType::Noput as i32);
    }
    if options.no_delete {
        filters.push(FilterType::Nodelete as i32);
    }
    // A token was refused and replaced, and no stream opened since: a
    // second refusal ends the watch (etcd's Go client retries once too).
    let mut logged_in_again = false;
    loop {
        if failures > 0 {
            let delay = client.call_options().backoff.delay(failures, &mut jitter);
            tokio::time::sleep(delay).await;
        }
        let token = match client.token(None).await {
            Ok(t) => t,
            // No endpoint answered the login, or logins are rate limited:
            // try again later, as for a broken stream.
            Err(ClientError::Status(s))
                if may_retry(&s, Idempotence::Idempotent) || is_rate_limited(&s) =>
            {
                failures += 1;
                continue;
            }
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let picked = match client.pick(Route::Any, None).await {
            Ok(p) => p,
            Err(_) => {
                failures += 1;
                continue;
            }
        };
        let create = WatchCreateRequest {
            key: key.clone(),
            range_end: options.span.range_end(&key),
            start_revision: resume.start(options.start_revision),
            prev_kv: options.prev_kv,
            filters: filters.clone(),
            ..Default::default()
        };
        let channel = crate::auth::with_token(picked.channel.clone(), token.as_ref());
        // The sender is kept while the stream lives: dropping it would end
        // the request side.
        let (req_tx, mut stream) = match open_watch(channel, create).await {
            Ok(opened) => opened,
            Err(s) => {
                picked.finish(Err(&s));
                if client.token_rejected(&s, token.as_ref()) {
                    if logged_in_again {
                        let _ = out.send(Err(s.into())).await;
                        return;
                    }
                    logged_in_again = true;
                    continue;
                }
                failures += 1;
                continue;
            }
        };
        *endpoint.lock().unwrap_or_else(|p| p.into_inner()) = Some(picked.url.clone());
        // Progress requests asked for on this stream and not answered yet.
        let mut progress_asked = 0usize;
        let ended: std::result::Result<(), tonic::Status> = loop {
            let message = tokio::select! {
                m = stream.message() => m,
                Some(()) = progress_rx.recv() => {
                    let asked = req_tx.try_send(nod_proto::etcd::etcdserverpb::WatchRequest {
                        request_union: Some(
                            nod_proto::etcd::etcdserverpb::watch_request::RequestUnion::ProgressRequest(
                                Default::default(),
                            ),
                        ),
                    });
                    if asked.is_ok() {
                        progress_asked += 1;
                    }
                    continue;
                }
            };
            let resp = match message {
                Ok(Some(r)) => r,
                Ok(None) => break Err(tonic::Status::unavailable("watch stream ended")),
                Err(s) => break Err(s),
            };
            if resp.compact_revision != 0 {
                let _ = out
                    .send(Err(ClientError::Compacted {
                        compact_revision: resp.compact_revision,
                    }))
                    .await;
                picked.finish(Ok(()));
                return;
            }
            if resp.canceled
                && !logged_in_again
                && client.watch_token_rejected(&resp.cancel_reason, token.as_ref())
            {
                logged_in_again = true;
                break Ok(());
            }
            if resp.canceled {
                let _ = out
                    .send(Err(ClientError::Protocol(format!(
                        "watch canceled: {}",
                        resp.cancel_reason
                    ))))
                    .await;
                picked.finish(Ok(()));
                return;
            }
            let header_revision = resp.header.as_ref().map_or(0, |h| h.revision);
            if resp.created {
                failures = 0;
                logged_in_again = false;
                if options.start_revision == 0 {
                    resume.starts_after(header_revision);
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
                continue;
            }
            if resp.events.is_empty() && resp.watch_id == -1 && progress_asked > 0 {
                // The answer to a progress request (etcd sends it for all
                // of a stream's watches, with watch id -1).
                progress_asked -= 1;
                let batch = WatchBatch {
                    header_revision,
                    events: Vec::new(),
                };
                if out.send(Ok(batch)).await.is_err() {
                    picked.finish(Ok(()));
                    return;
                }
                continue;
            }
            let events = resume.admit(resp.events);
            if events.is_empty() {
                continue;
            }
            let batch = WatchBatch {
                header_revision,
                events,
            };
            if out.send(Ok(batch)).await.is_err() {
                picked.finish(Ok(()));
                return; // the Watcher is gone
            }
        };
        match &ended {
            // Cancelled for its token: reopen at once with a new one.
            Ok(()) => {
                picked.finish(Ok(()));
                continue;
            }
            Err(s) => {
                picked.finish(Err(s));
                if client.token_rejected(s, token.as_ref()) {
                    if logged_in_again {
                        let _ = out.send(Err(s.clone().into())).await;
                        return;
                    }
                    logged_in_again = true;
                    continue;
                }
            }
        }
        failures += 1;
        reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_proto::etcd::mvccpb::KeyValue;

    fn ev(key: &str, rev: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn keys(es: &[Event]) -> Vec<(String, i64)> {
        es.iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision)
            })
            .collect()
    }

    #[test]
    fn a_resumed_stream_repeats_nothing_and_keeps_the_rest_of_a_split_revision() {
        let mut r = Resume::default();
        assert_eq!(r.start(5), 5);
        // Revision 7 arrives split: a and b, then the stream breaks.
        assert_eq!(
            keys(&r.admit(vec![ev("x", 6), ev("a", 7), ev("b", 7)])).len(),
            3
        );
        assert_eq!(r.start(5), 7, "resume at the last seen revision");
        // The new stream repeats 6 and 7's a, b, then brings 7's c and 8.
        let got = r.admit(vec![
            ev("x", 6),
            ev("a", 7),
            ev("b", 7),
            ev("c", 7),
            ev("a", 8),
        ]);
        assert_eq!(keys(&got), [("c".to_string(), 7), ("a".to_string(), 8)]);
    }

    #[test]
    fn a_key_changed_twice_in_a_revision_is_delivered_twice_and_resumed_right() {
        let mut r = Resume::default();
        r.start(1);
        // A put then a delete of k in revision 7, split over responses.
        assert_eq!(r.admit(vec![ev("k", 7)]).len(), 1);
        assert_eq!(
            r.admit(vec![ev("k", 7)]).len(),
            1,
            "the delete is a second event"
        );
        // The stream breaks; the new one repeats both, then brings 8.
        assert_eq!(r.start(1), 7);
        let got = r.admit(vec![ev("k", 7), ev("k", 7), ev("k", 8)]);
        assert_eq!(keys(&got), [("k".to_string(), 8)]);
    }

    #[test]
    fn a_watch_from_now_resumes_after_the_creation_revision() {
        let mut r = Resume::default();
        r.starts_after(10);
        assert_eq!(r.start(0), 11);
        assert!(r.admit(vec![ev("k", 10)]).is_empty());
        assert_eq!(r.admit(vec![ev("k", 11)]).len(), 1);
        r.starts_after(20); // a later stream's creation changes nothing
        assert_eq!(r.start(0), 11);
    }
}
