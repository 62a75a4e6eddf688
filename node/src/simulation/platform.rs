//! The driver's edges in memory, for the simulation: a log store the world
//! keeps a handle on (so a crash keeps what was written), a network that
//! only records what the driver sends (the world delivers it, late, twice
//! or never), snapshots as copies of the in-memory store, answers in slots
//! the world reads, and a stopwatch that reads zero. No I/O, no clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use nod_raft::{
    Entry, Index, LogWrite, MemStorage, Message, NodeId, RaftState, Snapshot, Storage,
    StorageError, StorageWrite, Term,
};

use crate::command::MemberAttributes;
use crate::driver::{
    DriverError, Fatal, Network, Platform, Replies, Reply, Snapshotter, Spans, Step, Stopwatch,
    Taken,
};
use crate::storage::backend::MemoryBackend;
use crate::storage::checkpoint::CheckpointInfo;
use crate::storage::KvStore;

pub type SimStore = KvStore<MemoryBackend>;

/// An answer the world reads after each step; the caller holds the other
/// handle, and dropping it closes the slot (the caller gave up).
pub struct Slot<T>(Arc<Mutex<Option<Result<T, DriverError>>>>);

impl<T> Slot<T> {
    pub fn new() -> (Slot<T>, Slot<T>) {
        let cell = Arc::new(Mutex::new(None));
        (Slot(cell.clone()), Slot(cell))
    }
    pub fn take(&self) -> Option<Result<T, DriverError>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl<T: Send> Reply<T> for Slot<T> {
    fn send(self, result: Result<T, DriverError>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    }
    fn is_closed(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}

pub struct Slots;

impl Replies for Slots {
    type Reply<T: Send + 'static> = Slot<T>;
}

/// A member's disk for its Raft log, as the process and the platter see it.
/// A write the core did not ask to sync reaches only the page cache: a
/// power loss takes it back (with every later one), as RocksDB's recovery
/// to the last synced WAL record would. A synced write (or compaction,
/// which the log store always syncs) makes everything before it durable.
#[derive(Default)]
pub struct LogDisk {
    /// What the process reads.
    pub log: MemStorage,
    /// What survives a power loss, when it differs from `log`.
    durable: Option<MemStorage>,
    /// Writes so far; the world charges an fsync's time for each.
    pub writes: u64,
    /// The next write fails, as an fsync error does.
    pub fault: Option<WriteFault>,
    /// A planted fault failed a write (the member's stop is expected).
    pub failed: bool,
}

/// How a failed log write left the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// Nothing of it survives (never written, or a torn last record that
    /// recovery drops).
    Lost,
    /// It reached the disk, but the fsync reported an error.
    Persisted,
}

impl LogDisk {
    pub fn new(log: MemStorage) -> LogDisk {
        LogDisk {
            log,
            ..Default::default()
        }
    }

    fn apply(&mut self, write: &LogWrite, sync: bool) -> Result<(), StorageError> {
        if !sync && self.durable.is_none() {
            self.durable = Some(self.log.clone());
        }
        self.log.write(write)?;
        if sync {
            self.durable = None;
        }
        Ok(())
    }

    /// The power fails: what was not synced is gone.
    pub fn lose_unsynced(&mut self) -> bool {
        match self.durable.take() {
            Some(durable) => {
                self.log = durable;
                true
            }
            None => false,
        }
    }
}

/// A log store the world shares with the driver: the node's disk.
#[derive(Clone, Default)]
pub struct SharedLog(pub Arc<Mutex<LogDisk>>);

impl SharedLog {
    pub fn new(log: MemStorage) -> SharedLog {
        SharedLog(Arc::new(Mutex::new(LogDisk::new(log))))
    }
    pub fn lock(&self) -> MutexGuard<'_, LogDisk> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for SharedLog {
    fn initial_state(&self) -> Result<RaftState, StorageError> {
        self.lock().log.initial_state()
    }
    fn entries(&self, low: Index, high: Index, max_size: u64) -> Result<Vec<Entry>, StorageError> {
        self.lock().log.entries(low, high, max_size)
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.lock().log.term(index)
    }
    fn first_index(&self) -> Result<Index, StorageError> {
        self.lock().log.first_index()
    }
    fn last_index(&self) -> Result<Index, StorageError> {
        self.lock().log.last_index()
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.lock().log.snapshot()
    }
}

impl StorageWrite for SharedLog {
    fn write(&mut self, write: &LogWrite) -> Result<(), StorageError> {
        let mut disk = self.lock();
        disk.writes += 1;
        let fault = disk.fault.take();
        disk.failed |= fault.is_some();
        match fault {
            None => disk.apply(write, write.sync),
            Some(WriteFault::Lost) => Err(StorageError::Fatal(
                "simulated fsync failure (the write was lost)".into(),
            )),
            Some(WriteFault::Persisted) => {
                disk.apply(write, true)?;
                Err(StorageError::Fatal(
                    "simulated fsync failure (the write reached the disk)".into(),
                ))
            }
        }
    }
    fn compact(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let mut disk = self.lock();
        disk.log.compact(snapshot)?;
        disk.durable = None;
        Ok(())
    }
}

/// A forwarded call: (leader, origin, commands with their ids).
pub type ForwardCall = (NodeId, u64, Vec<(u64, Vec<u8>)>);

/// What the driver asked the network to do during one step.
#[derive(Default)]
pub struct SimNetwork {
    /// The member's log disk, to tell how many writes (fsyncs) each
    /// message waited for.
    pub disk: SharedLog,
    pub peers: HashMap<NodeId, String>,
    /// Each message with the log writes done before it was sent.
    pub messages: Vec<(u64, Message)>,
    /// (leader, origin, commands) per forwarded call.
    pub forwards: Vec<ForwardCall>,
    /// Attributes a follower asked the leader to publish for it.
    pub publishes: Vec<(NodeId, MemberAttributes)>,
}

impl Network for SimNetwork {
    fn send(&mut self, messages: Vec<Message>) {
        let writes = self.disk.lock().writes;
        self.messages
            .extend(messages.into_iter().map(|m| (writes, m)));
    }
    fn set_peers(&mut self, peers: HashMap<NodeId, String>) {
        self.peers = peers;
    }
    fn forward_proposals(
        &mut self,
        leader: NodeId,
        from: u64,
        commands: Vec<(u64, Vec<u8>)>,
    ) -> Option<usize> {
        if !self.peers.contains_key(&leader) {
            return None;
        }
        self.forwards.push((leader, from, commands));
        Some(1)
    }
    fn forward_attributes(&mut self, leader: NodeId, attributes: MemberAttributes) {
        // Founders start with their name and URLs; features (runs with
        // indexes) still have to be published, as the server's Peer.Publish.
        self.publishes.push((leader, attributes));
    }
}

/// A member's checkpoints: copies of its store, kept across crashes (they
/// are on its disk), taken here or received from leaders.
#[derive(Default)]
pub struct SimSnapshots {
    /// Taken here or received, by (index, term): one folder, as on a server
    /// (the transport renames a received stream into the checkpoint root),
    /// so a member can stream on a snapshot it was sent once it leads.
    pub images: BTreeMap<(u64, u64), Arc<Vec<u8>>>,
    /// A checkpoint taken this step, for the world to hand back later.
    pub taken: Option<Taken>,
}

impl SimSnapshots {
    /// A checkpoint a leader streamed here, kept beside the ones taken here.
    pub fn receive(&mut self, key: (u64, u64), bytes: Arc<Vec<u8>>) {
        self.images.insert(key, bytes);
    }
}

impl Snapshotter<MemoryBackend> for SimSnapshots {
    fn take(&mut self, store: &SimStore) {
        let bytes = store.snapshot_bytes();
        let (index, term) = store.applied();
        let info = CheckpointInfo {
            index,
            term,
            members: store.members(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
            dir: Default::default(),
        };
        self.images.insert((index, term), Arc::new(bytes));
        self.taken = Some(Ok(info));
    }
    fn prune(&mut self, keep: usize) {
        while self.images.len() > keep {
            self.images.pop_first();
        }
    }
    fn open_received(&mut self, index: u64, term: u64) -> Result<SimStore, Fatal> {
        let bytes = self
            .images
            .get(&(index, term))
            .ok_or_else(|| Fatal::Snapshot(format!("no checkpoint at ({index}, {term})")))?;
        KvStore::restore_from(bytes).map_err(Fatal::from)
    }
    fn installed(&mut self) -> Result<(), Fatal> {
        Ok(())
    }
}

pub struct ZeroStopwatch;

impl Stopwatch for ZeroStopwatch {
    fn start() -> Self {
        ZeroStopwatch
    }
    fn seconds(&self) -> f64 {
        0.0
    }
}

/// The simulation records no spans: its commands carry no trace (the
/// server's tracing is tested against a real collector, tests/tracing.rs).
pub struct NoSpans;

impl Spans for NoSpans {
    type Mark = ();
    fn enabled(&self) -> bool {
        false
    }
    fn mark(&self) {}
    fn record(&mut self, _: &str, _: Step, _: u64, _: (), _: ()) {}
}

pub struct SimPlatform;

impl Platform for SimPlatform {
    type Backend = MemoryBackend;
    type Log = SharedLog;
    type Net = SimNetwork;
    type Snapshots = SimSnapshots;
    type Replies = Slots;
    type Stopwatch = ZeroStopwatch;
    type Spans = NoSpans;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seed 764: a member sent a snapshot became leader with that snapshot
    /// as its log's start; kept apart from the taken checkpoints, it could
    /// never be streamed on, and a lagging follower was refused for good.
    #[test]
    fn received_checkpoints_can_be_streamed_on_and_are_pruned() {
        let mut snaps = SimSnapshots::default();
        snaps.images.insert((30, 2), Arc::new(vec![1]));
        snaps.receive((46, 4), Arc::new(vec![2]));
        assert_eq!(snaps.images.get(&(46, 4)).map(|b| b[0]), Some(2));
        snaps.images.insert((60, 4), Arc::new(vec![3]));
        snaps.prune(2);
        let kept: Vec<_> = snaps.images.keys().copied().collect();
        assert_eq!(kept, vec![(46, 4), (60, 4)]);
    }
}
