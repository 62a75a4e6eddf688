//! A deterministic simulation of a Nod cluster: 3 to 7 nodes running the real
//! consensus core ([`nod_raft::RawNode`] over [`nod_raft::MemStorage`]) and a
//! small key-value state machine, concurrent clients, and a nemesis that
//! drops, duplicates, delays and reorders messages, partitions the network
//! (both ways and one way), crashes nodes losing everything not yet durable,
//! changes membership and transfers leadership. Everything is drawn from one
//! seed, so any run replays exactly.
//!
//! After every step the [`invariants::Ledger`] checks election safety, log
//! matching, leader completeness, state-machine safety and that durable terms
//! and commit indexes never go back; at the end every client history is
//! checked for linearizability with `nod-lincheck`. Planted faults
//! ([`Planted`]) prove the checks can fail.
//!
//! Read `world.rs` for the event loop.

pub mod invariants;
pub mod kv;
mod world;

use nod_raft::rng::SeededRng;

/// A bug planted on purpose, to show the harness catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planted {
    None,
    /// Storage forgets the vote it persisted when the node restarts.
    ForgetVote,
    /// Storage loses entries it acknowledged, when the node crashes soon after.
    LoseAckedAppend,
    /// Nodes answer reads from local state without ReadIndex.
    StaleReads,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub initial_voters: u64,
    pub max_members: usize,
    pub clients: usize,
    pub keys: u8,
    /// Simulated time with faults, then time to heal and settle (µs).
    pub fault_duration_us: u64,
    pub settle_duration_us: u64,
    pub tick_us: u64,
    pub election_tick: u64,
    pub heartbeat_tick: u64,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    pub min_delay_us: u64,
    pub max_delay_us: u64,
    /// Chance a message takes a long detour (long delays reorder a lot).
    pub long_delay_chance: f64,
    pub duplicate_chance: f64,
    /// Loss while a "lossy network" fault is active.
    pub lossy_drop_chance: f64,
    pub disk_latency_us: (u64, u64),
    /// Mean time between nemesis actions (µs).
    pub nemesis_interval_us: u64,
    pub snapshot_interval: u64,
    pub client_timeout_us: u64,
    pub planted: Planted,
    /// Serve reads from the leader lease instead of a quorum round.
    pub lease_reads: bool,
    /// How long a crashed node stays down (µs, low and high).
    pub restart_delay_us: (u64, u64),
    /// Pre-vote on every node (the default). Off, split votes are more common.
    pub pre_vote: bool,
    /// Print every fault and role change.
    pub trace: bool,
}

impl SimConfig {
    /// A configuration drawn from `seed`: cluster size, clients, keys, network
    /// and fault rates all vary from seed to seed.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SeededRng::new(seed ^ 0x5EED_0FC0_FFEE);
        let initial_voters = rng.range(3, 6);
        SimConfig {
            seed,
            initial_voters,
            max_members: 7,
            clients: rng.range(2, 6) as usize,
            keys: rng.range(2, 5) as u8,
            fault_duration_us: 6_000_000,
            settle_duration_us: 3_000_000,
            tick_us: 10_000,
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg: [64, 512, 4096][rng.range(0, 3) as usize],
            max_inflight_msgs: rng.range(1, 9) as usize,
            min_delay_us: 200,
            max_delay_us: rng.range(1_000, 15_000),
            long_delay_chance: [0.0, 0.01, 0.05][rng.range(0, 3) as usize],
            duplicate_chance: [0.0, 0.01, 0.05][rng.range(0, 3) as usize],
            lossy_drop_chance: [0.05, 0.2, 0.5][rng.range(0, 3) as usize],
            disk_latency_us: (100, rng.range(300, 3_000)),
            nemesis_interval_us: rng.range(100_000, 600_000),
            snapshot_interval: [20, 50, 200][rng.range(0, 3) as usize],
            client_timeout_us: 1_000_000,
            planted: Planted::None,
            pre_vote: true,
            lease_reads: rng.range(0, 3) == 0,
            restart_delay_us: (20_000, 1_500_000),
            trace: false,
        }
    }
}

/// What one seed's run found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub steps: u64,
    pub faults: u64,
    pub ops: usize,
    pub ok_ops: usize,
    pub applied_entries: usize,
    /// Membership changes committed (distinct entries).
    pub conf_changes: usize,
    pub elections: u64,
    pub violations: Vec<String>,
}

/// Runs one seed to completion. A panic inside the core (a broken invariant)
/// is caught and reported as a violation.
pub fn run(cfg: SimConfig) -> SimReport {
    let seed = cfg.seed;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        world::World::new(cfg).run()
    })) {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            SimReport {
                seed,
                violations: vec![format!("panic: {message}")],
                ..Default::default()
            }
        }
    }
}

/// Runs `seeds` on `threads` threads; reports come back in seed order.
pub fn run_many(
    seeds: &[u64],
    threads: usize,
    make: impl Fn(u64) -> SimConfig + Sync,
) -> Vec<SimReport> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                let report = run(make(seed));
                results
                    .lock()
                    .expect("no thread panics while holding the lock")
                    .push(report);
            });
        }
    });
    let mut reports = results.into_inner().expect("threads finished");
    reports.sort_by_key(|r| r.seed);
    reports
}
