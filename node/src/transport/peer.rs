//! Raft messages between nodes over tonic gRPC.
//!
//! Sending: one task per peer holds one long-lived client stream
//! (`Peer.Send`); each frame is a `MessageBatch` with every message one
//! Ready had for that peer, stamped with our cluster id. When the stream
//! breaks the task reconnects with exponential backoff (50 ms to 2 s) and
//! tells the driver the peer is unreachable, so the core probes instead of
//! pipelining. A full queue drops messages: Raft retries, and a slow peer
//! must never block the driver.
//!
//! Receiving: `PeerService` checks the cluster id of every batch, decodes
//! every message with `codec::decode_message` (which trusts nothing), drops
//! messages not addressed to us, and hands the rest to the driver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use nod_raft::{Message, MessageBody, NodeId};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::codec::{decode_message, encode_message};
use crate::storage::checkpoint;
use crate::tls::Dialer;
use nod_proto::nodraftpb::{Empty, MessageBatch};
use nod_proto::nodserverpb::peer_client::PeerClient;
use nod_proto::nodserverpb::peer_server::Peer;
use nod_proto::nodserverpb::{
    MemberAttributes, MembersRequest, MembersResponse, ProposeBatch, ProposeBatchReply,
    ProposeResult, PublishRequest, SnapshotChunk, SnapshotData,
};
use prost::Message as _;

/// Largest frame a peer may send us (entries are limited per message by the
/// core's `max_size_per_msg`; snapshots carry their data inline).
pub const MAX_PEER_FRAME: usize = 128 * 1024 * 1024;
/// What a peer answers a member it removed (with gRPC code NotFound).
pub const MEMBER_REMOVED: &str = "the member was removed from the cluster";
/// Batches queued for one peer before new ones are dropped.
const PEER_QUEUE: usize = 1024;

/// What the transport tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEvent {
    Unreachable(NodeId),
    /// A peer says this node was removed from the cluster.
    Removed,
    /// A snapshot message was (true) or was not (false) handed to the peer.
    Snapshot(NodeId, bool),
}

struct PeerLink {
    url: String,
    tx: mpsc::Sender<Vec<Message>>,
    task: tokio::task::JoinHandle<()>,
    /// For forwarded proposals (unary calls, connected on first use).
    calls: Option<tonic::transport::Channel>,
}

/// Most commands one forwarded batch may carry.
pub const MAX_FORWARD_COMMANDS: usize = 4096;
/// How long a follower waits for the leader to take a forwarded batch.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of commands per forwarded batch before another call is started.
const FORWARD_BATCH_BYTES: usize = 4 << 20;

/// How a batch of forwarded proposals ended: per command, where the leader
/// put it or why it did not (`Err` for the whole call when it failed).
#[derive(Debug)]
pub struct ForwardOutcome {
    /// The leader the call went to.
    pub leader: NodeId,
    pub ids: Vec<u64>,
    pub result: Result<Vec<ProposeResult>, Status>,
}

pub struct Transport {
    cluster_id: u64,
    peers: HashMap<NodeId, PeerLink>,
    events: mpsc::Sender<TransportEvent>,
    snapshot_root: PathBuf,
    snapshot_sent_bytes: prometheus::IntCounter,
    dialer: Dialer,
}

/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Largest piece a snapshot chunk may carry.
const MAX_SNAPSHOT_CHUNK: usize = 4 * 1024 * 1024;

/// An inline (bootstrap) snapshot must decode as snapshot data.
fn inline_snapshot_ok(m: &Message) -> bool {
    match &m.body {
        MessageBody::Snapshot { snapshot } => {
            crate::command::decode_snapshot_data(&snapshot.data).is_ok()
        }
        _ => true,
    }
}

/// Whether a Raft message carries a checkpoint (sent on the snapshot stream)
/// rather than inline data (the bootstrap snapshot).
fn checkpoint_of(m: &Message) -> Option<SnapshotData> {
    match &m.body {
        MessageBody::Snapshot { snapshot } => {
            let data = SnapshotData::decode(snapshot.data.as_slice()).ok()?;
            (data.checkpoint_index != 0).then_some(data)
        }
        _ => None,
    }
}

impl Transport {
    pub fn new(
        cluster_id: u64,
        events: mpsc::Sender<TransportEvent>,
        snapshot_root: PathBuf,
        snapshot_sent_bytes: prometheus::IntCounter,
        dialer: Dialer,
    ) -> Transport {
        Transport {
            cluster_id,
            peers: HashMap::new(),
            events,
            snapshot_root,
            snapshot_sent_bytes,
            dialer,
        }
    }

    /// Makes the set of peers (and their URLs) `peers`: new ones get a
    /// link, gone or moved ones lose theirs.
    pub fn set_peers(&mut self, peers: HashMap<NodeId, String>) {
        self.peers.retain(|id, link| {
            let keep = peers.get(id) == Some(&link.url);
            if !keep {
                link.task.abort();
            }
            keep
        });
        for (id, url) in peers {
            if self.peers.contains_key(&id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let task = tokio::spawn(run_link(
                id,
                url.clone(),
                self.cluster_id,
                rx,
                self.events.clone(),
                self.dialer.clone(),
            ));
            let calls = tonic::transport::Endpoint::from_shared(url.clone())
                .ok()
                .map(|e| self.dialer.lazy(e.connect_timeout(Duration::from_secs(1))));
            self.peers.insert(
                id,
                PeerLink {
                    url,
                    tx,
                    task,
                    calls,
                },
            );
        }
    }

    pub fn send(&mut self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let mut by_peer: HashMap<NodeId, Vec<Message>> = HashMap::new();
        for m in messages {
            if checkpoint_of(&m).is_some() {
                self.send_snapshot(m);
                continue;
            }
            by_peer.entry(m.to).or_default().push(m);
        }
        for (to, batch) in by_peer {
            let has_snapshot = batch
                .iter()
                .any(|m| matches!(m.body, MessageBody::Snapshot { .. }));
            let sent = match self.peers.get(&to) {
                Some(link) => link.tx.try_send(batch).is_ok(),
                None => false,
            };
            if !sent {
                let _ = self.events.try_send(TransportEvent::Unreachable(to));
                if has_snapshot {
                    let _ = self.events.try_send(TransportEvent::Snapshot(to, false));
                }
            } else if has_snapshot {
                // A small (bootstrap) snapshot rides the message stream, which
                // may still lose it (the peer restarting, or still serving only
                // the bootstrap service). Without a report the leader would
                // wait for it forever; reported as sent, the leader probes
                // after the next heartbeat answer and sends it again if needed.
                let _ = self.events.try_send(TransportEvent::Snapshot(to, true));
            }
        }
    }

    /// Streams a checkpoint to its peer on its own connection, then tells
    /// the driver whether it arrived.
    fn send_snapshot(&self, m: Message) {
        let to = m.to;
        let Some(link) = self.peers.get(&to) else {
            let _ = self.events.try_send(TransportEvent::Snapshot(to, false));
            return;
        };
        let (url, cluster_id, events) = (link.url.clone(), self.cluster_id, self.events.clone());
        let root = self.snapshot_root.clone();
        let counter = self.snapshot_sent_bytes.clone();
        let dialer = self.dialer.clone();
        tokio::spawn(async move {
            let r = stream_snapshot(url, cluster_id, m, root, counter, dialer).await;
            if let Err(e) = &r {
                tracing::warn!(peer = format!("{:x}", to.0), error = %e, "sending a snapshot failed");
            } else {
                tracing::info!(peer = format!("{:x}", to.0), "sent a snapshot");
            }
            let _ = events.send(TransportEvent::Snapshot(to, r.is_ok())).await;
        });
    }

    /// Hands client writes (`(id, encoded command)`, origin `from`) to the
    /// leader in as few calls as their size allows; each call's outcome comes
    /// back on `done`. The number of calls made, or None when there is no
    /// link to `leader`.
    pub fn forward_proposals(
        &self,
        leader: NodeId,
        from: u64,
        commands: Vec<(u64, Vec<u8>)>,
        done: &mpsc::Sender<ForwardOutcome>,
    ) -> Option<usize> {
        let channel = self.peers.get(&leader).and_then(|l| l.calls.clone())?;
        let mut calls = 0;
        let mut rest = commands.into_iter().peekable();
        while rest.peek().is_some() {
            let (mut ids, mut batch, mut bytes) = (Vec::new(), Vec::new(), 0);
            while let Some((id, c)) = rest.next_if(|(_, c)| {
                batch.is_empty()
                    || (batch.len() < MAX_FORWARD_COMMANDS
                        && bytes + c.len() <= FORWARD_BATCH_BYTES)
            }) {
                bytes += c.len();
                ids.push(id);
                batch.push(c);
            }
            // A traced write's context goes in the call's metadata, so the
            // leader's span for the call joins its trace (the first traced
            // command's, when a batch carries several).
            let trace = crate::telemetry::enabled()
                .then(|| batch.iter().find_map(|c| crate::command::trace_of(c)))
                .flatten()
                .map(str::to_string);
            let mut request = Request::new(ProposeBatch {
                cluster_id: self.cluster_id,
                from,
                commands: batch,
            });
            if let Some(t) = &trace {
                crate::telemetry::inject(request.metadata_mut(), t);
            }
            let (channel, done) = (channel.clone(), done.clone());
            calls += 1;
            tokio::spawn(async move {
                let mut client = PeerClient::new(channel)
                    .max_encoding_message_size(MAX_PEER_FRAME)
                    .max_decoding_message_size(MAX_PEER_FRAME);
                // A leader cut off by a partition never answers: give up
                // (outcome unknown) rather than hold the call forever.
                let result =
                    match tokio::time::timeout(FORWARD_TIMEOUT, client.propose(request)).await {
                        Ok(r) => r.map(|r| r.into_inner().results),
                        Err(_) => Err(Status::deadline_exceeded("the leader did not answer")),
                    };
                let _ = done
                    .send(ForwardOutcome {
                        leader,
                        ids,
                        result,
                    })
                    .await;
            });
        }
        Some(calls)
    }

    /// Asks the leader to publish our attributes (fire and forget; the
    /// driver retries until the member table shows them).
    pub fn forward_attributes(&self, leader: NodeId, attributes: MemberAttributes) {
        let Some(link) = self.peers.get(&leader) else {
            return;
        };
        let url = link.url.clone();
        let cluster_id = self.cluster_id;
        let dialer = self.dialer.clone();
        tokio::spawn(async move {
            if let Ok(mut c) = dialer.connect_url(&url).await.map(PeerClient::new) {
                let _ = c
                    .publish(PublishRequest {
                        cluster_id,
                        attributes: Some(attributes),
                    })
                    .await;
            }
        });
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for link in self.peers.values() {
            link.task.abort();
        }
    }
}

/// Why streaming a checkpoint to a peer failed (Raft sends the snapshot again).
#[derive(Debug, thiserror::Error)]
enum SnapshotSendError {
    #[error("not a snapshot message")]
    NotSnapshot,
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{file}: {cause}")]
    Read { file: String, cause: std::io::Error },
    /// The call ended before the reader was done.
    #[error("stream closed")]
    Closed,
    /// The reader task panicked or was cancelled.
    #[error("{0}")]
    Reader(#[from] tokio::task::JoinError),
    /// The peer answered with an error status.
    #[error("{code}: {message}")]
    Refused { code: tonic::Code, message: String },
}

async fn stream_snapshot(
    url: String,
    cluster_id: u64,
    m: Message,
    root: PathBuf,
    counter: prometheus::IntCounter,
    dialer: Dialer,
) -> Result<(), SnapshotSendError> {
    let MessageBody::Snapshot { snapshot } = &m.body else {
        return Err(SnapshotSendError::NotSnapshot);
    };
    let dir = checkpoint::dir_for(&root, snapshot.metadata.index.0, snapshot.metadata.term.0);
    let files = checkpoint::files(&dir)?;
    let mut client =
        PeerClient::new(dialer.connect_url(&url).await?).max_encoding_message_size(MAX_PEER_FRAME);
    // A small queue: the reader waits while the network is slow (flow control).
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let first = SnapshotChunk {
        cluster_id,
        message: Some(encode_message(&m)),
        ..Default::default()
    };
    let reader = tokio::task::spawn_blocking(move || -> Result<(), SnapshotSendError> {
        use std::io::Read;
        tx.blocking_send(first)
            .map_err(|_| SnapshotSendError::Closed)?;
        for (name, _) in files {
            let unreadable = |cause| SnapshotSendError::Read {
                file: name.clone(),
                cause,
            };
            let mut f = std::fs::File::open(dir.join(&name)).map_err(unreadable)?;
            let mut offset = 0u64;
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = f.read(&mut buf).map_err(unreadable)?;
                if n == 0 && offset > 0 {
                    break;
                }
                buf.truncate(n);
                counter.inc_by(n as u64);
                tx.blocking_send(SnapshotChunk {
                    cluster_id,
                    message: None,
                    file: name.clone(),
                    offset,
                    data: buf,
                })
                .map_err(|_| SnapshotSendError::Closed)?;
                offset += n as u64;
                if n == 0 {
                    break;
                }
            }
        }
        Ok(())
    });
    let sent = client
        .snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let read = reader.await?;
    sent.map_err(|s| SnapshotSendError::Refused {
        code: s.code(),
        message: s.message().to_string(),
    })?;
    read
}

async fn run_link(
    to: NodeId,
    url: String,
    cluster_id: u64,
    mut rx: mpsc::Receiver<Vec<Message>>,
    events: mpsc::Sender<TransportEvent>,
    dialer: Dialer,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let channel = match tonic::transport::Endpoint::from_shared(url.clone()) {
            Ok(e) => e.connect_timeout(Duration::from_secs(1)),
            Err(e) => {
                tracing::error!(peer = to.0, %url, error = %e, "invalid peer URL");
                return;
            }
        };
        match dialer.connect(channel).await {
            Ok(ch) => {
                backoff = Duration::from_millis(50);
                let mut client = PeerClient::new(ch)
                    .max_encoding_message_size(MAX_PEER_FRAME)
                    .max_decoding_message_size(MAX_PEER_FRAME);
                let (stream_tx, stream_rx) = mpsc::channel::<MessageBatch>(16);
                let call = tokio::spawn(async move {
                    client
                        .send(tokio_stream::wrappers::ReceiverStream::new(stream_rx))
                        .await
                });
                // Forward batches until the stream breaks.
                while let Some(batch) = rx.recv().await {
                    let snapshot = batch
                        .iter()
                        .any(|m| matches!(m.body, MessageBody::Snapshot { .. }));
                    let frame = MessageBatch {
                        cluster_id,
                        messages: batch.iter().map(encode_message).collect(),
                    };
                    let ok = stream_tx.send(frame).await.is_ok();
                    if snapshot {
                        let _ = events.try_send(TransportEvent::Snapshot(to, ok));
                    }
                    if !ok {
                        break;
                    }
                }
                drop(stream_tx);
                if let Ok(Err(status)) = call.await {
                    tracing::debug!(peer = to.0, %status, "peer stream ended");
                    if status.code() == tonic::Code::NotFound
                        && status.message().contains(MEMBER_REMOVED)
                    {
                        let _ = events.send(TransportEvent::Removed).await;
                        return;
                    }
                }
                if rx.is_closed() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(peer = to.0, %url, error = %e, "cannot reach peer");
            }
        }
        let _ = events.try_send(TransportEvent::Unreachable(to));
        // Drop what queued while we were away: it is stale, Raft resends.
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// What the peer service needs from the node.
pub trait PeerNode: Send + Sync + 'static {
    /// Where checkpoints live (`<data>/snap`).
    fn snapshot_root(&self) -> PathBuf;
    fn snapshot_received(&self, bytes: u64);
    fn member_id(&self) -> u64;
    fn cluster_id(&self) -> u64;
    fn members(&self) -> Vec<nod_proto::etcd::etcdserverpb::Member>;
    fn is_removed(&self, id: u64) -> bool;
    /// Proposes a member's attributes if this node leads.
    fn publish(
        &self,
        attributes: MemberAttributes,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + Send + '_>>;
    /// Appends commands a member forwarded (already checked) if this node
    /// leads; per command, where it went or why not.
    fn propose_forwarded(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<Vec<ProposeResult>, Status>> + Send + '_>>;
}

pub struct PeerService<N: PeerNode> {
    node: Arc<N>,
    inbox: mpsc::Sender<Message>,
}

impl<N: PeerNode> PeerService<N> {
    pub fn new(node: Arc<N>, inbox: mpsc::Sender<Message>) -> Self {
        PeerService { node, inbox }
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.node.cluster_id() {
            return Err(Status::permission_denied(format!(
                "cluster id mismatch: this node belongs to cluster {:x}, the sender to {:x}",
                self.node.cluster_id(),
                cluster_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl<N: PeerNode> Peer for PeerService<N> {
    async fn send(
        &self,
        request: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<Empty>, Status> {
        let mut stream = request.into_inner();
        let me = NodeId(self.node.member_id());
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            self.check_cluster(batch.cluster_id)?;
            for m in batch.messages {
                let m = decode_message(m).map_err(|e| {
                    Status::invalid_argument(format!("malformed Raft message: {e}"))
                })?;
                if self.node.is_removed(m.from.0) {
                    return Err(Status::not_found(format!(
                        "{MEMBER_REMOVED}: {:x}",
                        m.from.0
                    )));
                }
                if checkpoint_of(&m).is_some() {
                    // A checkpoint travels only on the snapshot stream, which
                    // verifies it before the core may see it.
                    return Err(Status::invalid_argument(
                        "a checkpoint snapshot on the message stream",
                    ));
                }
                if !inline_snapshot_ok(&m) {
                    return Err(Status::invalid_argument("undecodable snapshot data"));
                }
                if m.to != me {
                    tracing::debug!(to = m.to.0, "dropped a message addressed to another node");
                    continue;
                }
                // Full inbox: drop, Raft resends.
                let _ = self.inbox.try_send(m);
            }
        }
        Ok(Response::new(Empty {}))
    }

    async fn members(
        &self,
        request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let cluster_id = request.into_inner().cluster_id;
        // A joining node does not know the cluster id yet and sends 0.
        if cluster_id != 0 {
            self.check_cluster(cluster_id)?;
        }
        Ok(Response::new(MembersResponse {
            cluster_id: self.node.cluster_id(),
            members: self.node.members(),
        }))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Empty>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        self.check_cluster(first.cluster_id)?;
        let m = first
            .message
            .ok_or_else(|| Status::invalid_argument("snapshot stream without its Raft message"))
            .and_then(|m| {
                decode_message(m)
                    .map_err(|e| Status::invalid_argument(format!("malformed Raft message: {e}")))
            })?;
        if self.node.is_removed(m.from.0) {
            return Err(Status::not_found(format!(
                "{MEMBER_REMOVED}: {:x}",
                m.from.0
            )));
        }
        if m.to.0 != self.node.member_id() {
            return Err(Status::invalid_argument(
                "snapshot addressed to another member",
            ));
        }
        let (index, term, data) = match &m.body {
            MessageBody::Snapshot { snapshot } => (
                snapshot.metadata.index.0,
                snapshot.metadata.term.0,
                SnapshotData::decode(snapshot.data.as_slice())
                    .map_err(|e| Status::invalid_argument(format!("snapshot data: {e}")))?,
            ),
            _ => {
                return Err(Status::invalid_argument(
                    "snapshot stream carries no snapshot",
                ))
            }
        };
        if data.checkpoint_index != index {
            return Err(Status::invalid_argument(
                "snapshot descriptor does not match its index",
            ));
        }
        let root = self.node.snapshot_root();
        let recv = root.join(format!(
            "recv-{index:016x}-{}",
            crate::identity::random_id()
        ));
        std::fs::create_dir_all(&recv)
            .map_err(|e| Status::internal(format!("snapshot folder: {e}")))?;
        let result = receive_files(&mut stream, &recv, data.checkpoint_bytes).await;
        let outcome = result.and_then(|received| {
            let (bytes, crc) = tokio::task::block_in_place(|| checkpoint::digest(&recv))
                .map_err(|e| Status::internal(e.to_string()))?;
            if bytes != data.checkpoint_bytes || crc != data.checkpoint_crc32 {
                return Err(Status::data_loss(format!(
                    "snapshot checksum mismatch: got {bytes} bytes crc {crc:#010x}, expected {} bytes crc {:#010x}",
                    data.checkpoint_bytes, data.checkpoint_crc32
                )));
            }
            let dir = checkpoint::dir_for(&root, index, term);
            if dir.exists() {
                // The same snapshot again (a resend): keep the verified copy,
                // which the driver may be installing from right now.
                let _ = std::fs::remove_dir_all(&recv);
            } else {
                std::fs::rename(&recv, &dir).map_err(|e| Status::internal(e.to_string()))?;
            }
            Ok(received)
        });
        match outcome {
            Ok(received) => {
                self.node.snapshot_received(received);
                tracing::info!(index, bytes = received, "received a snapshot");
                self.inbox
                    .send(m)
                    .await
                    .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
                Ok(Response::new(Empty {}))
            }
            Err(s) => {
                let _ = std::fs::remove_dir_all(&recv);
                Err(s)
            }
        }
    }

    async fn propose(
        &self,
        request: Request<ProposeBatch>,
    ) -> Result<Response<ProposeBatchReply>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        if r.commands.len() > MAX_FORWARD_COMMANDS {
            return Err(Status::invalid_argument(format!(
                "{} commands in one batch (at most {MAX_FORWARD_COMMANDS})",
                r.commands.len()
            )));
        }
        // Only a current member may write through us, and only in its own name.
        let known = r.from != 0
            && !self.node.is_removed(r.from)
            && self.node.members().iter().any(|m| m.id == r.from);
        if !known {
            return Err(Status::permission_denied(format!(
                "{:x} is not a member of this cluster",
                r.from
            )));
        }
        let mut checked = Vec::with_capacity(r.commands.len());
        let mut results: Vec<Option<ProposeResult>> = Vec::with_capacity(r.commands.len());
        for c in r.commands {
            let refusal = match crate::command::decode(&c) {
                Err(e) => Some(e.to_string()),
                Ok(d) if d.origin != r.from => Some(format!(
                    "a command of origin {:x} forwarded by {:x}",
                    d.origin, r.from
                )),
                Ok(_) => None,
            };
            match refusal {
                Some(error) => results.push(Some(ProposeResult {
                    error,
                    ..Default::default()
                })),
                None => {
                    checked.push(c);
                    results.push(None);
                }
            }
        }
        let mut proposed = self.node.propose_forwarded(checked).await?.into_iter();
        let results = results
            .into_iter()
            .map(|r| {
                r.or_else(|| proposed.next())
                    .unwrap_or_else(|| ProposeResult {
                        error: "not proposed".into(),
                        ..Default::default()
                    })
            })
            .collect();
        Ok(Response::new(ProposeBatchReply { results }))
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        self.check_cluster(r.cluster_id)?;
        let attributes = r
            .attributes
            .ok_or_else(|| Status::invalid_argument("publish without attributes"))?;
        self.node.publish(attributes).await?;
        Ok(Response::new(Empty {}))
    }
}

/// Writes a snapshot's file chunks into `dir`, checking names, offsets and
/// the declared total before writing anything.
async fn receive_files(
    stream: &mut Streaming<SnapshotChunk>,
    dir: &Path,
    declared: u64,
) -> Result<u64, Status> {
    use std::io::Write;
    let mut written: HashMap<String, u64> = HashMap::new();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if !checkpoint::valid_file_name(&chunk.file) {
            return Err(Status::invalid_argument(format!(
                "bad snapshot file name {:?}",
                chunk.file
            )));
        }
        if chunk.data.len() > MAX_SNAPSHOT_CHUNK {
            return Err(Status::invalid_argument("snapshot chunk too large"));
        }
        total += chunk.data.len() as u64;
        if total > declared {
            return Err(Status::invalid_argument("snapshot larger than declared"));
        }
        if written.len() >= checkpoint::MAX_FILES && !written.contains_key(&chunk.file) {
            return Err(Status::invalid_argument("too many snapshot files"));
        }
        let at = written.entry(chunk.file.clone()).or_insert(0);
        if chunk.offset != *at {
            return Err(Status::invalid_argument(format!(
                "snapshot file {} chunk at {} but {} bytes were written",
                chunk.file, chunk.offset, at
            )));
        }
        let path = dir.join(&chunk.file);
        let data = chunk.data;
        tokio::task::block_in_place(|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&data)?;
            Ok(())
        })
        .map_err(|e| Status::internal(format!("writing a snapshot file: {e}")))?;
        *at += data.len() as u64;
    }
    // Make the files durable before the snapshot is acknowledged.
    tokio::task::block_in_place(|| -> std::io::Result<()> {
        for name in written.keys() {
            std::fs::File::open(dir.join(name))?.sync_all()?;
        }
        std::fs::File::open(dir)?.sync_all()
    })
    .map_err(|e| Status::internal(format!("syncing a snapshot: {e}")))?;
    Ok(total)
}

/// A stream type alias kept for the server's boxed streams.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
