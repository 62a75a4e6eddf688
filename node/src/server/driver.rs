//! The driver as the server runs it: the I/O-free [`crate::driver::Core`]
//! fed by tokio. This file owns the loop (tick on a timer, peer messages,
//! client requests, transport events, forwarded answers, finished
//! checkpoints; then one `run_ready` for everything that queued) and the
//! platform's edges: oneshot replies, the tonic transport, RocksDB
//! checkpoints and the wall clock. No decisions live here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nod_raft::{ConfChange, Message, NodeId, RawNode};
use tokio::sync::{mpsc, oneshot, watch};

use crate::command::{Caller, MemberAttributes, Op};
pub use crate::driver::{Applied, DriverError, NodeStatus, Outcome, Shared};
use crate::driver::{
    Core, CoreConfig, Fatal, ForwardFailure, ForwardOutcome, Network, Platform, Replies, Reply,
    Snapshotter, Stopwatch, Taken, Turn,
};
use crate::storage::backend::RocksBackend;
use crate::storage::checkpoint;
use crate::storage::{KvStore, LogStore};
use crate::telemetry::OtelSpans;
use crate::transport::peer::{self, Transport, TransportEvent};
use nod_proto::nodserverpb::ProposeResult;

/// The pause after each step of a compaction's removal (250 records).
const COMPACTION_PAUSE: Duration = Duration::from_millis(1);
/// ... and at least this many times as long as the step took, so a sweep
/// whose steps grow slow (keys with long histories, a busy disk) keeps to
/// an eleventh of the loop's time. With 4 (a fifth), writes during the
/// bench's 1M-revision compaction had p99.9 96 ms against 84 ms with 10,
/// for a call of 8.5 s against 11.7 s (etcd's takes about 46 s).
const COMPACTION_SHARE: u32 = 10;

/// Answers travel on oneshot channels.
pub struct Oneshot;

impl<T: Send + 'static> Reply<T> for oneshot::Sender<Result<T, DriverError>> {
    fn send(self, result: Result<T, DriverError>) {
        let _ = oneshot::Sender::send(self, result);
    }
    fn is_closed(&self) -> bool {
        oneshot::Sender::is_closed(self)
    }
}

impl Replies for Oneshot {
    type Reply<T: Send + 'static> = oneshot::Sender<Result<T, DriverError>>;
}

pub type Request = crate::driver::Request<Oneshot>;

/// The wall clock, for metrics.
pub struct WallStopwatch(Instant);

impl Stopwatch for WallStopwatch {
    fn start() -> Self {
        WallStopwatch(Instant::now())
    }
    fn seconds(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// The tonic transport, with where forwarded calls report back.
pub struct PeerNetwork {
    transport: Transport,
    forwarded: mpsc::Sender<peer::ForwardOutcome>,
}

impl Network for PeerNetwork {
    fn send(&mut self, messages: Vec<Message>) {
        self.transport.send(messages);
    }
    fn set_peers(&mut self, peers: HashMap<NodeId, String>) {
        self.transport.set_peers(peers);
    }
    fn forward_proposals(
        &mut self,
        leader: NodeId,
        from: u64,
        commands: Vec<(u64, Vec<u8>)>,
    ) -> Option<usize> {
        self.transport
            .forward_proposals(leader, from, commands, &self.forwarded)
    }
    fn forward_attributes(&mut self, leader: NodeId, attributes: MemberAttributes) {
        self.transport.forward_attributes(leader, attributes);
    }
}

/// How a forwarded call's gRPC status reads to the driver.
fn forward_failure(status: &tonic::Status) -> ForwardFailure {
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
            ForwardFailure::Refused(status.message().to_string())
        }
        // No connection to the leader (it died, a new one is not elected
        // yet): nothing was sent.
        _ if crate::client::not_sent(status) => ForwardFailure::NotSent,
        _ => ForwardFailure::Unknown,
    }
}

/// RocksDB checkpoints under `<data>/snap`, taken on the blocking pool.
pub struct Checkpoints {
    data_dir: PathBuf,
    root: PathBuf,
    done: mpsc::Sender<Taken>,
    seconds: prometheus::Histogram,
    /// The last checkpoint's table file sums (one checkpoint at a time).
    sums: Arc<std::sync::Mutex<checkpoint::TableSums>>,
}

impl Snapshotter<RocksBackend> for Checkpoints {
    fn take(&mut self, store: &KvStore) {
        let db = store.db_handle();
        let root = self.root.clone();
        let tx = self.done.clone();
        let seconds = self.seconds.clone();
        let sums = self.sums.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            // Sums are never left half made (`digest_reusing` takes them
            // first, then puts the new ones back whole): a lock poisoned by
            // a panic still holds usable sums, or none.
            let mut sums = sums
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let r = checkpoint::create_reusing(&db, &root, &mut sums);
            seconds.observe(started.elapsed().as_secs_f64());
            let _ = tx.blocking_send(r);
        });
    }
    fn prune(&mut self, keep: usize) {
        checkpoint::prune(&self.root, keep);
    }
    fn open_received(&mut self, index: u64, term: u64) -> Result<KvStore, Fatal> {
        let dir = checkpoint::dir_for(&self.root, index, term);
        let path = checkpoint::install(&self.data_dir, &dir, index)
            .map_err(|e| Fatal::Snapshot(e.to_string()))?;
        KvStore::open(&path).map_err(Fatal::from)
    }
    fn installed(&mut self) -> Result<(), Fatal> {
        checkpoint::remove_stale(&self.data_dir).map_err(|e| Fatal::Snapshot(e.to_string()))
    }
}

pub struct ServerPlatform;

impl Platform for ServerPlatform {
    type Backend = RocksBackend;
    type Log = LogStore;
    type Net = PeerNetwork;
    type Snapshots = Checkpoints;
    type Replies = Oneshot;
    type Stopwatch = WallStopwatch;
    type Spans = OtelSpans;
}

#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Request>,
}

type OneshotReply<T> = oneshot::Sender<Result<T, DriverError>>;

impl DriverHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(OneshotReply<T>) -> Request,
    ) -> Result<T, DriverError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }
    /// Proposes `op` on behalf of `caller` (`None`: this member itself,
    /// not subject to the auth checks).
    pub async fn propose(&self, op: Op, caller: Option<Caller>) -> Result<Applied, DriverError> {
        let trace = crate::telemetry::current_traceparent();
        self.call(|reply| Request::Propose {
            op,
            caller,
            trace,
            reply,
        })
        .await
    }
    pub async fn propose_forwarded(
        &self,
        commands: Vec<Vec<u8>>,
    ) -> Result<Vec<ProposeResult>, DriverError> {
        self.call(|reply| Request::ProposeForwarded { commands, reply })
            .await
    }
    pub async fn conf_change(&self, change: ConfChange) -> Result<Applied, DriverError> {
        self.call(|reply| Request::ConfChange { change, reply })
            .await
    }
    pub async fn read_index(&self) -> Result<(), DriverError> {
        self.call(|reply| Request::ReadIndex { reply }).await
    }
    pub async fn keep_alive(&self, id: i64) -> Result<i64, DriverError> {
        self.call(|reply| Request::KeepAlive { id, reply }).await
    }
    /// (remaining seconds, granted TTL)
    pub async fn time_to_live(&self, id: i64) -> Result<(i64, i64), DriverError> {
        self.call(|reply| Request::TimeToLive { id, reply }).await
    }
    pub async fn transfer_leader(&self, target: NodeId) -> Result<(), DriverError> {
        self.call(|reply| Request::TransferLeader { target, reply })
            .await
    }
    pub async fn raft_status(&self) -> Result<nod_raft::Status, DriverError> {
        self.call(|reply| Request::RaftStatus { reply }).await
    }
    /// When this node last received a Raft message from each member.
    pub async fn last_heard(&self) -> Result<HashMap<u64, Instant>, DriverError> {
        let ages = self.call(|reply| Request::Contact { reply }).await?;
        let now = Instant::now();
        Ok(ages
            .into_iter()
            .map(|(id, age)| (id, now.checked_sub(age).unwrap_or(now)))
            .collect())
    }
}

pub fn channel(depth: usize) -> (DriverHandle, mpsc::Receiver<Request>) {
    let (tx, rx) = mpsc::channel(depth);
    (DriverHandle { tx }, rx)
}

pub struct DriverConfig {
    pub tick: Duration,
    /// What this member publishes about itself once it is in the cluster.
    pub attributes: MemberAttributes,
    /// Where the peers are before the member table says.
    pub seed_peers: HashMap<NodeId, String>,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// The data folder (state machine stores live in it) and the checkpoints' (`<data>/snap`).
    pub data_dir: PathBuf,
    pub snapshot_root: PathBuf,
}

pub struct Driver {
    core: Core<ServerPlatform>,
    tick: Duration,
    requests: mpsc::Receiver<Request>,
    inbox: mpsc::Receiver<Message>,
    transport_events: mpsc::Receiver<TransportEvent>,
    forwarded: mpsc::Receiver<peer::ForwardOutcome>,
    checkpoints: mpsc::Receiver<Taken>,
}

/// A random starting point for this run's command ids.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl Driver {
    pub fn new(
        node: RawNode<LogStore>,
        shared: Arc<Shared>,
        transport: Transport,
        config: DriverConfig,
        requests: mpsc::Receiver<Request>,
        inbox: mpsc::Receiver<Message>,
        transport_events: mpsc::Receiver<TransportEvent>,
    ) -> Driver {
        let (checkpoints_tx, checkpoints) = mpsc::channel(1);
        let (forwarded_tx, forwarded) = mpsc::channel(1024);
        let net = PeerNetwork {
            transport,
            forwarded: forwarded_tx,
        };
        let snapshots = Checkpoints {
            data_dir: config.data_dir,
            root: config.snapshot_root,
            done: checkpoints_tx,
            seconds: shared.metrics.snapshot_seconds.clone(),
            sums: Default::default(),
        };
        let spans = OtelSpans::new(shared.member_id);
        let core = Core::new(
            node,
            shared,
            net,
            snapshots,
            spans,
            CoreConfig {
                attributes: config.attributes,
                seed_peers: config.seed_peers,
                snapshot_count: config.snapshot_count,
                first_forward_id: random_u64(),
            },
        );
        Driver {
            core,
            tick: config.tick,
            requests,
            inbox,
            transport_events,
            forwarded,
            checkpoints,
        }
    }

    /// Runs until `stop` turns true, this member is removed, or storage
    /// fails (then the error is in `NodeStatus::fatal` and returned).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), Fatal> {
        let started = Instant::now();
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let core = &mut self.core;
        let mut next_step = tokio::time::Instant::now();
        let result: Result<(), Fatal> = loop {
            let compacting = core.compaction_pending();
            tokio::select! {
                // A step of a compaction's removal, then a pause: the loop
                // shares its thread with the gRPC tasks, and the machine's
                // cores with the writes (etcd sleeps 10 ms between steps).
                () = tokio::time::sleep_until(next_step), if compacting => {
                    let took = Instant::now();
                    if let Err(e) = core.compaction_step() {
                        break Err(e);
                    }
                    let took = took.elapsed();
                    next_step = tokio::time::Instant::now()
                        + COMPACTION_PAUSE.max(took * COMPACTION_SHARE);
                }
                _ = ticker.tick() => {
                    core.set_time(started.elapsed());
                    core.on_tick();
                }
                Some(m) = self.inbox.recv() => {
                    core.set_time(started.elapsed());
                    core.on_message(m);
                }
                Some(r) = self.requests.recv() => {
                    core.set_time(started.elapsed());
                    core.on_request(r);
                }
                Some(e) = self.transport_events.recv() => match e {
                    TransportEvent::Unreachable(id) => core.on_unreachable(id),
                    TransportEvent::Snapshot(id, delivered) => core.on_snapshot_sent(id, delivered),
                    TransportEvent::Removed => core.on_removed(),
                },
                Some(o) = self.forwarded.recv() => core.on_forwarded(ForwardOutcome {
                    leader: o.leader,
                    ids: o.ids,
                    result: o.result.map_err(|s| forward_failure(&s)),
                }),
                Some(s) = self.checkpoints.recv() => {
                    if let Err(e) = core.on_snapshot_taken(s) {
                        break Err(e);
                    }
                }
                _ = stop.changed() => if *stop.borrow() { break Ok(()) },
            }
            // Take whatever else is queued, so one Ready (one fsync) covers it all.
            for _ in 0..1024 {
                if let Ok(m) = self.inbox.try_recv() {
                    core.on_message(m);
                } else if let Ok(r) = self.requests.try_recv() {
                    core.on_request(r);
                } else {
                    break;
                }
            }
            match core.run_ready() {
                Ok(Turn::Continue) => {}
                Ok(Turn::Removed) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        core.stop(&result);
        result
    }
}
