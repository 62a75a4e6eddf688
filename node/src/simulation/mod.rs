//! Deterministic simulation of the server we ship: N copies of the real
//! driver ([`crate::driver::Core`]) and the real MVCC state machine (over the
//! in-memory backend), with the real request types (Put, Range,
//! Txn with compares, DeleteRange), on a simulated network and clock with
//! seeded faults (loss, delay, partitions, crashes and restarts). Client
//! histories are checked for linearizability with `nod-lincheck`, and the
//! members' stores must agree once the faults stop. A run is a pure
//! function of its seed. No I/O.
//!
//! Reading order: `platform.rs` (the driver's edges in memory), then
//! `world.rs` (events, faults, clients, checks).

mod platform;
mod world;

pub use platform::{
    LogDisk, SharedLog, SimNetwork, SimPlatform, SimSnapshots, Slot, Slots, WriteFault,
};
pub use world::run;

/// A bug the simulation plants on purpose, to show its checks catch it.
/// Bugs in the shipped code itself are planted in a scratch copy instead
/// (`scripts/planted`), so no fault hook ships.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Planted {
    #[default]
    None,
    /// Clients read a member's store directly, without ReadIndex.
    StaleReads,
    /// Lease reads with clocks that drift past the bound leases assume:
    /// each member's clock runs at a quarter of true time or at true time,
    /// and a leader the nemesis cuts off drops to a fifth, so its lease
    /// outlives its followers' patience.
    ClockBeyondBound,
}

/// One simulated run's shape, all of it derived from `seed`.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub ops_per_client: usize,
    /// Chance in a thousand that a message is lost.
    pub loss_per_mille: u64,
    pub crashes: bool,
    pub partitions: bool,
    /// Applied entries between checkpoints (small, so snapshots are sent).
    pub snapshot_count: u64,
    /// Bytes of entries per append message: the core's default (1 MiB), or
    /// so few that a leader replicates a backlog one entry at a time (the
    /// condition of the Raft paper's Figure 8).
    pub max_append_bytes: u64,
    /// Milliseconds each log write (its fsync) takes; a member's loop waits.
    pub fsync_ms: u64,
    /// One member whose disk is slow: (member, milliseconds per fsync).
    pub slow_disk: Option<(usize, u64)>,
    /// Log writes that fail (fsync errors, torn records) and power losses
    /// (unsynced log writes and unflushed store writes gone).
    pub disk_faults: bool,
    /// Reads served on the leader's lease (no heartbeat round), as
    /// `ReadOnlyOption::LeaseBased` does.
    pub lease_reads: bool,
    /// Each member's clock rate in thousandths of true time. Lease reads
    /// assume rates within election_tick / (election_tick - 2) of each other
    /// (1.25 with ten ticks); the seeds stay within 5%.
    pub clock_rates: Vec<u64>,
    /// Compactions to recent revisions now and then.
    pub compactions: bool,
    /// Bursts of leader churn are the nemesis's favourite.
    pub churny: bool,
    /// Reads through each new leader the moment it is elected.
    pub leader_probes: bool,
    /// Values are JSON documents, members publish the "indexes" feature,
    /// and secondary indexes are declared (and one dropped) through the
    /// log mid-run, built by the leader's backfill steps under the faults;
    /// at the end every member must hold the same catalog, every index
    /// ready and matching its records.
    pub indexes: bool,
    pub planted: Planted,
    /// Prints what happens, step by step (for replaying one seed).
    pub trace: bool,
}

impl Config {
    pub fn from_seed(seed: u64) -> Config {
        let mut rng = nod_raft::rng::SeededRng::new(seed ^ 0x5EED_5E4E);
        Config {
            seed,
            nodes: if rng.range(0, 2) == 0 { 3 } else { 5 },
            clients: rng.range(2, 5) as usize,
            ops_per_client: rng.range(15, 40) as usize,
            loss_per_mille: rng.range(0, 60),
            crashes: rng.range(0, 3) != 0,
            partitions: rng.range(0, 3) != 0,
            snapshot_count: rng.range(8, 40),
            max_append_bytes: if rng.range(0, 2) == 0 {
                1 << 20
            } else {
                rng.range(1, 64)
            },
            fsync_ms: rng.range(0, 2),
            slow_disk: (rng.range(0, 3) == 0).then(|| (rng.range(0, 5) as usize, rng.range(5, 40))),
            disk_faults: rng.range(0, 2) == 0,
            leader_probes: rng.range(0, 2) == 0,
            churny: rng.range(0, 3) == 0,
            compactions: rng.range(0, 2) == 0,
            lease_reads: rng.range(0, 2) == 0,
            clock_rates: (0..5).map(|_| rng.range(950, 1_051)).collect(),
            // Drawn last, so the seeds before it keep their shape.
            indexes: rng.range(0, 2) == 0,
            planted: Planted::None,
            trace: false,
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub operations: usize,
    pub completed: usize,
    pub leader_changes: u64,
    pub snapshots_installed: u64,
    pub crashes: u64,
    /// Crashes that lost what the disks had not synced.
    pub power_losses: u64,
    /// Log writes that failed as planted (each stops its member).
    pub write_faults: u64,
    /// Indexes ready on the members at the end (runs with indexes).
    pub indexes_built: u64,
    pub violations: Vec<String>,
}
