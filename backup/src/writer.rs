//! Taking backups: a full snapshot streamed from a member into the
//! destination, compressed on the way ([`take_full`]), then, for an
//! incremental chain, the changes after it from a watch of every key, cut
//! into segments ([`follow`]).
//!
//! A revision goes into a segment only once it is known to be whole: the
//! server may split one revision's events over several watch responses,
//! so a revision is closed when an event of a later one arrives, or when a
//! progress answer ([`nod_client::Watcher::request_progress`]) says every
//! event up to it has been delivered. Revisions are consecutive (every
//! revision holds at least one change), so a gap is a broken stream and
//! ends the chain rather than writing it.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nod_client::{Client, ClientError, KeySpan, WatchOptions};
use nod_proto::etcd::mvccpb::event::EventType;
use nod_proto::nodbackuppb::{LeaseSeen, RevisionBatch};
use prost::Message;

use crate::manifest::{format_id, format_sha256, FullObject, Manifest, FORMAT};
use crate::names::{self, ChainName, SegmentName};
use crate::segment::{self, SegmentError, Sequence, Sha256Digest};
use crate::store::{Destination, StoreError, Upload};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {cause}")]
    Client {
        what: &'static str,
        cause: ClientError,
    },
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("compressing the snapshot: {0}")]
    Compress(String),
    #[error("the watch of changes ended: {0}")]
    WatchEnded(String),
}

fn client_err(what: &'static str) -> impl FnOnce(ClientError) -> BackupError {
    move |cause| BackupError::Client { what, cause }
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A chain being written: where it is and how far its segments reach.
#[derive(Debug, Clone)]
pub struct Chain {
    /// `<cluster id>/<chain name>`, relative to the destination.
    pub dir: String,
    pub manifest: Manifest,
    pub sequence: Sequence,
    pub segments: u64,
    pub segment_bytes: u64,
}

impl Chain {
    pub fn object(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }
}

/// Takes a full snapshot into a new chain of `dest` and writes its
/// manifest. `incremental` only records whether segments are to follow.
pub async fn take_full(
    client: &mut Client,
    dest: &Destination,
    incremental: bool,
) -> Result<Chain, BackupError> {
    let status = client
        .status()
        .await
        .map_err(client_err("asking a member's status"))?;
    let auth_revision = client
        .auth_status()
        .await
        .map_err(client_err("asking the auth revision"))?
        .auth_revision;
    let header = status.header.unwrap_or_default();
    let mut created_unix_ms = now_unix_ms();
    // Named by the revision before the snapshot (the snapshot's own is
    // known only once it has streamed): names still sort as chains began.
    // Two backups of an idle cluster in one second would share a name: the
    // later takes the next second.
    let mut tries = 0;
    let (dir, upload) = loop {
        let name = ChainName {
            revision: header.revision,
            created_unix_s: created_unix_ms / 1000,
        }
        .format();
        let dir = format!("{}/{name}", names::cluster_dir(header.cluster_id));
        match dest.create(&format!("{dir}/{}", names::FULL)).await {
            Ok(upload) => break (dir, upload),
            Err(StoreError::Exists { .. }) if tries < 5 => {
                tries += 1;
                created_unix_ms += 1000;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut sink = FullSink::new(upload)?;
    let written = match client.snapshot_to(&mut sink).await {
        Ok(w) => w,
        Err(e) => {
            sink.abort().await;
            return Err(BackupError::Client {
                what: "streaming the snapshot",
                cause: e,
            });
        }
    };
    let (stored_size, sha) = sink.finish().await?;
    let manifest = Manifest {
        format: FORMAT.to_string(),
        nod_version: env!("CARGO_PKG_VERSION").to_string(),
        cluster_id: format_id(header.cluster_id),
        created_unix_ms,
        revision: written.revision,
        raft_index: status.raft_applied_index.max(status.raft_index),
        auth_revision,
        full: FullObject {
            object: names::FULL.to_string(),
            size: written.bytes,
            stored_size,
            sha256: format_sha256(&sha),
        },
        incremental,
    };
    dest.put_new(
        &format!("{dir}/{}", names::MANIFEST),
        Bytes::from(manifest.to_json()),
    )
    .await?;
    Ok(Chain {
        sequence: Sequence::new(header.cluster_id, written.revision, sha),
        dir,
        manifest,
        segments: 0,
        segment_bytes: 0,
    })
}

/// The snapshot stream compressed into an upload, keeping the file's last
/// 32 bytes (its SHA-256, which the client has checked).
struct FullSink {
    enc: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    upload: Upload,
    tail: Vec<u8>,
    stored: u64,
}

const PART: usize = 4 << 20;

impl FullSink {
    fn new(upload: Upload) -> Result<FullSink, BackupError> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(PART), 3)
            .map_err(|e| BackupError::Compress(e.to_string()))?;
        enc.include_checksum(true)
            .map_err(|e| BackupError::Compress(e.to_string()))?;
        Ok(FullSink {
            enc: Some(enc),
            upload,
            tail: Vec::with_capacity(64),
            stored: 0,
        })
    }

    async fn finish(mut self) -> Result<(u64, Sha256Digest), BackupError> {
        let enc = self.enc.take().expect("finished once");
        let rest = enc
            .finish()
            .map_err(|e| BackupError::Compress(e.to_string()))?;
        self.stored += rest.len() as u64;
        self.upload.put(Bytes::from(rest));
        let sha: Sha256Digest =
            self.tail.as_slice().try_into().map_err(|_| {
                BackupError::Compress("the snapshot is shorter than its hash".into())
            })?;
        self.upload.finish().await?;
        Ok((self.stored, sha))
    }

    async fn abort(self) {
        self.upload.abort().await;
    }
}

impl tokio::io::AsyncWrite for FullSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        use std::io::Write as _;
        let this = &mut *self;
        if let Err(e) = std::task::ready!(this.upload.poll_ready(cx)) {
            return Poll::Ready(Err(std::io::Error::other(e)));
        }
        let enc = this.enc.as_mut().expect("not finished");
        enc.write_all(buf)?;
        this.tail.extend_from_slice(buf);
        if this.tail.len() > 32 {
            this.tail.drain(..this.tail.len() - 32);
        }
        if enc.get_ref().len() >= PART {
            let part = std::mem::replace(enc.get_mut(), Vec::with_capacity(PART));
            this.stored += part.len() as u64;
            this.upload.put(Bytes::from(part));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// When segments are cut.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOptions {
    /// Cut once the closed revisions reach this many bytes (encoded).
    pub max_bytes: usize,
    /// Cut once the oldest change not in a segment is this old: how much a
    /// backup may trail the cluster (the recovery point).
    pub max_age: Duration,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            max_bytes: 16 << 20,
            max_age: Duration::from_secs(60),
        }
    }
}

/// Why [`follow`] returned with the chain intact up to its last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEnd {
    /// `stop` completed.
    Stopped,
    /// The cluster compacted revisions the watch still needed: the chain
    /// ends here and a new full snapshot starts the next.
    Compacted { compact_revision: i64 },
    /// Users, roles or auth settings changed, which a watch does not carry:
    /// a new chain keeps a restore's auth state exact.
    AuthChanged,
    /// The stream skipped or repeated a revision (never expected).
    Gap { want: i64, got: i64 },
}

/// Appends segments of the changes after the chain's last revision until
/// `stop` completes or the chain must end. Every segment written is
/// complete and checked; what is pending at the end is written when it is
/// known to be whole. `on_cut` sees the chain after each segment.
pub async fn follow<F>(
    client: &mut Client,
    dest: &Destination,
    chain: &mut Chain,
    opts: SegmentOptions,
    stop: F,
    on_cut: &mut (dyn FnMut(&Chain) + Send),
) -> Result<FollowEnd, BackupError>
where
    F: Future<Output = ()>,
{
    let mut watcher = client
        .watcher(
            b"\0".to_vec(),
            WatchOptions {
                span: KeySpan::FromKey,
                start_revision: chain.sequence.next_revision,
                ..Default::default()
            },
        )
        .await
        .map_err(client_err("watching the changes"))?;
    let mut pending = Pending::new(chain.sequence.next_revision);
    let mut leases_known: HashSet<i64> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A progress request in flight (to close the open revision for a cut).
    let mut asked: Option<Instant> = None;
    let mut stopping: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop, if stopping.is_none() => {
                stopping = Some(Instant::now());
                if pending.open.is_some() {
                    watcher.request_progress();
                    asked = Some(Instant::now());
                }
            }
            m = watcher.next() => match m {
                None => {
                    cut(client, dest, chain, &mut pending, &mut *on_cut).await?;
                    return Err(BackupError::WatchEnded("no more events".into()));
                }
                Some(Err(ClientError::Compacted { compact_revision })) => {
                    cut(client, dest, chain, &mut pending, &mut *on_cut).await?;
                    return Ok(FollowEnd::Compacted { compact_revision });
                }
                Some(Err(e)) => {
                    cut(client, dest, chain, &mut pending, &mut *on_cut).await?;
                    return Err(BackupError::WatchEnded(e.to_string()));
                }
                Some(Ok(b)) if b.events.is_empty() => {
                    asked = None;
                    pending.progress(b.header_revision);
                }
                Some(Ok(b)) => {
                    for e in b.events {
                        if let Err(end) = pending.add(e) {
                            cut(client, dest, chain, &mut pending, &mut *on_cut).await?;
                            return Ok(end);
                        }
                        if let Some(lease) = pending.new_lease(&leases_known) {
                            match client.lease_time_to_live(lease, false).await {
                                Ok(ttl) => {
                                    leases_known.insert(lease);
                                    // TTL -1: revoked or expired already; its
                                    // keys' deletions follow in the stream.
                                    if ttl.ttl >= 0 && ttl.granted_ttl > 0 {
                                        pending.note_lease(LeaseSeen { id: lease, granted_ttl: ttl.granted_ttl });
                                    }
                                }
                                // Asked again at the lease's next put; a
                                // restore gives a lease never read a short TTL.
                                Err(e) => tracing::warn!(lease, error = %e, "reading a lease for the backup"),
                            }
                        }
                    }
                    if pending.closed_bytes >= opts.max_bytes
                        && cut(client, dest, chain, &mut pending, &mut *on_cut).await?
                    {
                        return Ok(FollowEnd::AuthChanged);
                    }
                }
            },
            _ = tick.tick() => {
                let due = pending.oldest.is_some_and(|t| t.elapsed() >= opts.max_age);
                if (due || stopping.is_some()) && pending.open.is_some()
                    && asked.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
                {
                    // Asked again after 5 s: a request made while the
                    // stream was reopening is lost.
                    watcher.request_progress();
                    asked = Some(Instant::now());
                }
            }
        }
        let due = pending.oldest.is_some_and(|t| t.elapsed() >= opts.max_age);
        if pending.open.is_none() && (due || stopping.is_some()) {
            let auth_changed = cut(client, dest, chain, &mut pending, &mut *on_cut).await?;
            if stopping.is_some() {
                return Ok(FollowEnd::Stopped);
            }
            if auth_changed {
                return Ok(FollowEnd::AuthChanged);
            }
        }
        if stopping.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            // No progress answer: write what is known whole and go; the
            // open revision is left to the next chain.
            pending.open = None;
            cut(client, dest, chain, &mut pending, &mut *on_cut).await?;
            return Ok(FollowEnd::Stopped);
        }
    }
}

/// Writes the closed revisions as the chain's next segment, with the auth
/// revision read just before. True when that differs from the chain's: a
/// new chain must start (users, roles or settings changed, which the
/// watch does not carry).
async fn cut(
    client: &mut Client,
    dest: &Destination,
    chain: &mut Chain,
    pending: &mut Pending,
    on_cut: &mut (dyn FnMut(&Chain) + Send),
) -> Result<bool, BackupError> {
    if pending.closed.is_empty() {
        return Ok(false);
    }
    let auth_revision = match client.auth_status().await {
        Ok(a) => a.auth_revision,
        Err(e) => {
            tracing::warn!(error = %e, "reading the auth revision for a backup segment");
            0
        }
    };
    let batches = std::mem::take(&mut pending.closed);
    let meta = segment::SegmentMeta {
        cluster_id: chain.sequence.cluster_id,
        prev_sha256: chain.sequence.prev_sha256,
        created_unix_ms: now_unix_ms(),
        auth_revision,
    };
    let (bytes, _) = segment::encode(meta, &batches)?;
    // Read back what is about to be published: the writer's own check.
    let seg = segment::decode(&bytes)?;
    let mut next = chain.sequence.clone();
    next.accept(&seg)
        .map_err(|e| BackupError::WatchEnded(format!("segment out of sequence: {e}")))?;
    let name = SegmentName {
        first: seg.header.first_revision,
        last: seg.header.last_revision,
    }
    .format();
    let size = bytes.len() as u64;
    put_segment(dest, &chain.object(&name), Bytes::from(bytes)).await?;
    chain.sequence = next;
    chain.segments += 1;
    chain.segment_bytes += size;
    pending.closed_bytes = 0;
    pending.oldest = pending.open.as_ref().map(|_| Instant::now());
    on_cut(chain);
    Ok(auth_revision != 0 && auth_revision != chain.manifest.auth_revision)
}

/// Puts a segment, trying again on a transient failure. Finding the very
/// same bytes there already is success: an earlier try that landed but
/// whose answer was lost.
async fn put_segment(dest: &Destination, object: &str, bytes: Bytes) -> Result<(), BackupError> {
    let mut attempt = 0u32;
    loop {
        match dest.put_new(object, bytes.clone()).await {
            Ok(()) => return Ok(()),
            Err(StoreError::Exists { .. }) => {
                let there = dest.get(object, segment::MAX_BODY).await?;
                if there == bytes {
                    return Ok(());
                }
                return Err(StoreError::Exists {
                    dest: dest.to_string(),
                    object: object.to_string(),
                }
                .into());
            }
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(object, attempt, error = %e, "writing a backup segment; trying again");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Revisions seen and not yet in a segment. Pure but for the clock.
struct Pending {
    /// Whole revisions, consecutive, from the chain's next revision.
    closed: Vec<RevisionBatch>,
    closed_bytes: usize,
    /// The revision being received (more of its events may come).
    open: Option<RevisionBatch>,
    /// The revision the next batch must have.
    next: i64,
    /// When the oldest change not in a segment arrived.
    oldest: Option<Instant>,
}

impl Pending {
    fn new(next: i64) -> Pending {
        Pending {
            closed: Vec::new(),
            closed_bytes: 0,
            open: None,
            next,
            oldest: None,
        }
    }

    fn close(&mut self) {
        if let Some(b) = self.open.take() {
            self.closed_bytes += b.encoded_len();
            self.next = b.revision + 1;
            self.closed.push(b);
        }
    }

    /// Every event up to `revision` has arrived.
    fn progress(&mut self, revision: i64) {
        if self.open.as_ref().is_some_and(|o| o.revision <= revision) {
            self.close();
        }
    }

    fn add(&mut self, mut e: nod_proto::etcd::mvccpb::Event) -> Result<(), FollowEnd> {
        e.prev_kv = None;
        let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        if self.open.as_ref().is_some_and(|o| o.revision < rev) {
            self.close();
        }
        match &mut self.open {
            Some(o) if o.revision == rev => o.events.push(e),
            Some(o) => {
                return Err(FollowEnd::Gap {
                    want: o.revision + 1,
                    got: rev,
                })
            }
            None if rev == self.next => {
                self.open = Some(RevisionBatch {
                    revision: rev,
                    events: vec![e],
                    leases: Vec::new(),
                });
                self.oldest.get_or_insert_with(Instant::now);
            }
            None => {
                return Err(FollowEnd::Gap {
                    want: self.next,
                    got: rev,
                })
            }
        }
        Ok(())
    }

    /// The lease of the last event added, if this chain has not seen it.
    fn new_lease(&self, known: &HashSet<i64>) -> Option<i64> {
        let e = self.open.as_ref()?.events.last()?;
        let kv = e.kv.as_ref()?;
        (e.r#type == EventType::Put as i32 && kv.lease != 0 && !known.contains(&kv.lease))
            .then_some(kv.lease)
    }

    fn note_lease(&mut self, l: LeaseSeen) {
        if let Some(o) = self.open.as_mut() {
            o.leases.push(l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_proto::etcd::mvccpb::{Event, KeyValue};

    fn ev(key: &str, rev: i64) -> Event {
        segment::put_event(KeyValue {
            key: key.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: b"v".to_vec(),
            lease: 0,
        })
    }

    #[test]
    fn revisions_close_on_a_later_event_or_a_progress_answer() {
        let mut p = Pending::new(5);
        p.add(ev("a", 5)).unwrap();
        p.add(ev("b", 5)).unwrap();
        assert!(p.closed.is_empty(), "revision 5 may have more events");
        p.add(ev("c", 6)).unwrap();
        assert_eq!(p.closed.len(), 1);
        assert_eq!(p.closed[0].events.len(), 2);
        p.progress(5);
        assert!(
            p.open.is_some(),
            "a progress answer below 6 does not close 6"
        );
        p.progress(6);
        assert!(p.open.is_none());
        assert_eq!(
            p.closed.iter().map(|b| b.revision).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert_eq!(p.next, 7);
    }

    #[test]
    fn gaps_end_the_chain() {
        let mut p = Pending::new(5);
        assert_eq!(p.add(ev("a", 6)), Err(FollowEnd::Gap { want: 5, got: 6 }));
        let mut p = Pending::new(5);
        p.add(ev("a", 5)).unwrap();
        assert_eq!(p.add(ev("b", 7)), Err(FollowEnd::Gap { want: 6, got: 7 }));
        let mut p = Pending::new(5);
        p.add(ev("a", 5)).unwrap();
        p.add(ev("b", 6)).unwrap();
        assert_eq!(p.add(ev("c", 5)), Err(FollowEnd::Gap { want: 7, got: 5 }));
    }

    #[test]
    fn a_lease_is_asked_for_once_per_chain() {
        let mut p = Pending::new(1);
        let mut e = ev("a", 1);
        e.kv.as_mut().unwrap().lease = 42;
        p.add(e).unwrap();
        let mut known = HashSet::new();
        assert_eq!(p.new_lease(&known), Some(42));
        known.insert(42);
        assert_eq!(p.new_lease(&known), None);
        p.add(ev("b", 1)).unwrap();
        assert_eq!(p.new_lease(&HashSet::new()), None, "no lease on b");
    }
}
