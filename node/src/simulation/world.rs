//! The simulation's event loop: a queue of timed events (ticks, message
//! deliveries, forwarded calls and their answers, finished checkpoints,
//! client operations and timeouts, and the nemesis: crashes, restarts,
//! partitions), processed one at a time in (time, sequence) order. Each
//! event is handed to one member's driver, which then runs its `Ready`s;
//! what it sent is scheduled with delay and loss. After the clients finish,
//! the faults stop and the members must converge. No I/O.

/// Prints a line of the step-by-step trace (`Config::trace`).
macro_rules! trace {
    ($w:expr, $($arg:tt)*) => {
        if $w.cfg.trace {
            eprintln!("{:>6} ms  {}", $w.now, format!($($arg)*));
        }
    };
}

mod checks;
mod clients;
mod compactions;
mod indexes;
mod leases;
mod nemesis;
mod probes;
mod watches;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use nod_lincheck as lin;
use nod_raft::rng::SeededRng;
use nod_raft::{ConfState, Index, MemStorage, Message, MessageBody, NodeId, RawNode, Storage};

use super::platform::{SharedLog, SimNetwork, SimPlatform, SimSnapshots, SimStore, Slot};
use super::{Config, Planted, Report};
use crate::command::{self, MemberAttributes, SnapshotData};
use crate::driver::{
    Core, CoreConfig, ForwardFailure, ForwardOutcome, Request, Shared, Taken, Turn,
};
use crate::metrics::Metrics;
use crate::storage::KvStore;
use crate::watch_hub::WatchHub;
use clients::{op_key, Client};
use watches::Watcher;

/// Milliseconds of simulated time.
type Time = u64;

const TICK_MS: Time = 10;
const ELECTION_TICKS: u64 = 10;
const CLIENT_TIMEOUT_MS: Time = 1_500;
/// How long a forwarded call waits before its outcome is unknown.
const FORWARD_TIMEOUT_MS: Time = 300;
/// After the clients finish: faults stop, and the members have this long to agree.
const SETTLE_MS: Time = 4_000;
const KEYS: &[&[u8]] = &[b"/sim/a", b"/sim/b", b"/sim/c"];

/// A checkpoint image by (index, term), as a snapshot stream carries it.
type Image = ((u64, u64), Arc<Vec<u8>>);

enum Event {
    Tick(usize),
    Deliver {
        from: usize,
        to: usize,
        message: Message,
        /// The checkpoint a snapshot message names, streamed beside it.
        checkpoint: Option<Image>,
    },
    SnapshotReport {
        node: usize,
        incarnation: u64,
        peer: NodeId,
        delivered: bool,
    },
    ForwardCall {
        leader: usize,
        from: usize,
        incarnation: u64,
        ids: Vec<u64>,
        commands: Vec<Vec<u8>>,
    },
    ForwardAnswer {
        to: usize,
        incarnation: u64,
        outcome: ForwardOutcome,
    },
    SnapshotTaken {
        node: usize,
        incarnation: u64,
        taken: Taken,
    },
    ClientNext(usize),
    LeaseNext,
    LeaseTimeout(u64),
    ClientTimeout {
        client: usize,
        op: usize,
    },
    Nemesis,
    /// Reads through a member that just became leader.
    Probe(usize),
    /// A compaction through a random live member.
    Compact,
    /// An index declared or dropped through a random live member.
    IndexDdl,
    /// A follower's attributes, which the leader proposes for it
    /// (`Peer.Publish` in the server).
    Publish {
        to: usize,
        attributes: MemberAttributes,
    },
    Restart(usize),
    Heal,
    Settle,
}

struct Member {
    id: NodeId,
    log: SharedLog,
    core: Option<Core<SimPlatform>>,
    /// Bumped at each restart: answers meant for an earlier run are dropped.
    incarnation: u64,
    /// While crashed: its store and checkpoints (its disk).
    disk: Option<(SimStore, SimSnapshots)>,
    /// The store as a power loss would leave it: an image of an earlier
    /// moment (its writes are not synced; the OS flushes them when it likes).
    flushed: Arc<Vec<u8>>,
    /// Milliseconds one log write (its fsync) takes on this member's disk.
    fsync_ms: Time,
    /// Its loop is blocked on its disk until then.
    busy_until: Time,
    /// How fast its clock runs, in thousandths of true time.
    rate: u64,
    /// When its next tick fires, in microseconds of true time.
    next_tick_us: u64,
}

struct World {
    cfg: Config,
    rng: SeededRng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: HashMap<usize, Event>,
    next_event: usize,
    members: Vec<Member>,
    clients: Vec<Client>,
    leases: leases::LeaseActor,
    probes: Vec<probes::Probe>,
    /// The highest revision a compaction was asked for.
    compacted_asked: i64,
    /// Answers to compactions (kept open: their callers wait).
    compactions: Vec<Slot<crate::driver::Applied>>,
    /// Index declarations and drops sent, with their answers, and the
    /// steps of the plan settled so far.
    ddl: Vec<indexes::Ddl>,
    ddl_done: usize,
    watchers: Vec<Watcher>,
    history: Vec<lin::Operation>,
    /// Pairs of members that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
    faults_on: bool,
    /// The next leader that appends a new entry crashes before most of
    /// its followers get it (leader churn at the worst moment).
    crash_leader_on_append: bool,
    /// The next leader that commits crashes before telling anyone (its
    /// followers learn the new commit index only from the next leader).
    crash_leader_on_commit: bool,
    /// Leaders still to crash in a burst of churn: each dies when it
    /// appends or commits, and comes back soon, so one leader's entries
    /// outlive it in a minority and a later leader meets them (the
    /// schedules of the Raft paper's Figure 8).
    churn: u32,
    /// In a burst, how the leader of a term dies: on its first commit
    /// (true) or its first append (false).
    fate: Option<(u64, bool)>,
    leaders: BTreeMap<u64, NodeId>,
    /// The term of the entry applied at each index, by whoever applied it
    /// first; and how far each member's applies were checked against it.
    ledger: BTreeMap<u64, u64>,
    checked: Vec<u64>,
    report: Report,
}

fn member_url(i: usize) -> String {
    format!("sim://{}", i + 1)
}

impl World {
    fn new(mut cfg: Config) -> World {
        let mut rng = SeededRng::new(cfg.seed);
        if cfg.planted == Planted::ClockBeyondBound {
            cfg.lease_reads = true;
            cfg.partitions = true;
            cfg.leader_probes = true;
            cfg.clock_rates = (0..cfg.nodes)
                .map(|_| if rng.range(0, 2) == 0 { 250 } else { 1_000 })
                .collect();
        }
        let ids: Vec<NodeId> = (1..=cfg.nodes as u64).map(NodeId).collect();
        let founders: Vec<MemberAttributes> = ids
            .iter()
            .map(|id| MemberAttributes {
                id: id.0,
                name: format!("m{}", id.0),
                peer_urls: vec![member_url(id.0 as usize - 1)],
                client_urls: vec![format!("sim-client://{}", id.0)],
                features: Vec::new(),
            })
            .collect();
        let data = prost::Message::encode_to_vec(&SnapshotData {
            members: founders.clone(),
            ..Default::default()
        });
        let conf = ConfState::with_voters(ids.iter().copied());
        let mut members = Vec::new();
        for id in &ids {
            let log = SharedLog::new(MemStorage::new_bootstrap(conf.clone(), data.clone()));
            let mut store = KvStore::in_memory();
            for m in &founders {
                let member = nod_proto::etcd::etcdserverpb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    client_ur_ls: m.client_urls.clone(),
                    is_learner: false,
                };
                store
                    .apply_member(m.id, Some(member), (1, 1))
                    .expect("the in-memory store takes the founding members");
            }
            members.push(Member {
                id: *id,
                log,
                core: None,
                incarnation: 0,
                flushed: Arc::new(store.snapshot_bytes()),
                disk: Some((store, SimSnapshots::default())),
                fsync_ms: cfg.fsync_ms,
                busy_until: 0,
                rate: 1000,
                next_tick_us: 0,
            });
        }
        for (m, rate) in members.iter_mut().zip(&cfg.clock_rates) {
            m.rate = (*rate).max(1);
        }
        if let Some((slow, ms)) = cfg.slow_disk {
            members[slow % cfg.nodes].fsync_ms = ms;
        }
        let clients = (0..cfg.clients)
            .map(|_| Client {
                done: 0,
                pending: None,
                known: BTreeMap::new(),
            })
            .collect();
        let mut w = World {
            report: Report {
                seed: cfg.seed,
                ..Default::default()
            },
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_event: 0,
            watchers: (0..members.len())
                .map(|_| Watcher {
                    next: 1,
                    ..Default::default()
                })
                .collect(),
            members,
            clients,
            leases: Default::default(),
            probes: Vec::new(),
            compacted_asked: 0,
            compactions: Vec::new(),
            ddl: Vec::new(),
            ddl_done: 0,
            history: Vec::new(),
            cut: BTreeSet::new(),
            faults_on: true,
            crash_leader_on_append: false,
            crash_leader_on_commit: false,
            churn: 0,
            fate: None,
            leaders: BTreeMap::new(),
            ledger: BTreeMap::new(),
            checked: Vec::new(),
        };
        for i in 0..w.members.len() {
            w.start(i);
            let offset = w.rng.range(0, TICK_MS);
            w.members[i].next_tick_us = (offset + 1) * 1_000;
            w.at(offset + 1, Event::Tick(i));
        }
        for c in 0..w.clients.len() {
            let t = w.rng.range(50, 300);
            w.at(t, Event::ClientNext(c));
        }
        let t = w.rng.range(50, 300);
        w.at(t, Event::LeaseNext);
        let t = w.rng.range(300, 1_500);
        w.at(t, Event::Compact);
        if w.cfg.indexes {
            let t = w.rng.range(100, 1_000);
            w.at(t, Event::IndexDdl);
        }
        if w.cfg.crashes || w.cfg.partitions {
            let t = w.rng.range(200, 800);
            w.at(t, Event::Nemesis);
        }
        w
    }

    fn at(&mut self, delay: Time, event: Event) {
        self.seq += 1;
        let key = self.next_event;
        self.next_event += 1;
        self.events.insert(key, event);
        self.queue.push(Reverse((self.now + delay, self.seq, key)));
    }

    /// A member picked at random among the live ones, if any.
    fn random_live(&mut self) -> Option<usize> {
        let alive: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].core.is_some())
            .collect();
        if alive.is_empty() {
            return None;
        }
        Some(alive[self.rng.range(0, alive.len() as u64) as usize])
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.rng.range(0, 1000) < per_mille
    }

    /// Starts (or restarts) member `i` from its disk.
    fn start(&mut self, i: usize) {
        let seed = self.rng.next_u64();
        let first_forward_id = self.rng.next_u64();
        let cfg = &self.cfg;
        let m = &mut self.members[i];
        let Some((mut store, mut snapshots)) = m.disk.take() else {
            return;
        };
        // A snapshot the log holds and the store does not (a crash during
        // install): install it first, as the server does at startup.
        if let Ok(snap) = m.log.snapshot() {
            if snap.metadata.index.0 > store.applied().0 {
                if let Ok(data) = command::decode_snapshot_data(&snap.data) {
                    if data.checkpoint_index != 0 {
                        let key = (snap.metadata.index.0, snap.metadata.term.0);
                        if let Ok(s) =
                            crate::driver::Snapshotter::open_received(&mut snapshots, key.0, key.1)
                        {
                            store = s;
                        }
                    }
                }
            }
        }
        // As the server does at startup: a power loss may have taken back
        // the durable commit index under entries the store applied.
        let applied = Index(store.applied().0);
        if let Err(e) = crate::driver::raise_commit_to_applied(&mut m.log, applied) {
            let planted = std::mem::take(&mut m.log.lock().failed);
            m.disk = Some((store, snapshots));
            if planted {
                // The planted fsync error hit this write: try again later.
                self.report.write_faults += 1;
                let back = self.rng.range(50, 500);
                self.at(back, Event::Restart(i));
            } else {
                self.report
                    .violations
                    .push(format!("member {} could not restart: {e}", i + 1));
            }
            return;
        }
        let mut raft = nod_raft::Config::new(m.id);
        raft.election_tick = ELECTION_TICKS;
        raft.heartbeat_tick = 1;
        if cfg.lease_reads {
            raft.read_only = nod_raft::ReadOnlyOption::LeaseBased;
        }
        raft.max_size_per_msg = cfg.max_append_bytes;
        raft.applied = Index(store.applied().0);
        raft.seed = seed;
        let node = match RawNode::new(raft, m.log.clone()) {
            Ok(n) => n,
            Err(e) => {
                self.report
                    .violations
                    .push(format!("member {} could not restart: {e}", m.id.0));
                return;
            }
        };
        let shared = Arc::new(Shared {
            auth_enabled: store.auth().enabled().into(),
            member_id: m.id.0,
            cluster_id: 1,
            name: format!("m{}", m.id.0),
            store: RwLock::new(store),
            hub: WatchHub::default(),
            status: RwLock::new(Default::default()),
            metrics: Metrics::new(),
            tokens: Default::default(),
        });
        let seed_peers = (0..cfg.nodes)
            .filter(|j| *j != i)
            .map(|j| (NodeId(j as u64 + 1), member_url(j)))
            .collect();
        let core = Core::new(
            node,
            shared,
            SimNetwork {
                disk: m.log.clone(),
                ..Default::default()
            },
            snapshots,
            super::platform::NoSpans,
            CoreConfig {
                attributes: MemberAttributes {
                    id: m.id.0,
                    name: format!("m{}", m.id.0),
                    peer_urls: vec![member_url(i)],
                    client_urls: vec![format!("sim-client://{}", m.id.0)],
                    // Published (a log entry) only in runs with indexes, so
                    // the others run as they did before features existed.
                    features: if cfg.indexes {
                        crate::command::features()
                    } else {
                        Vec::new()
                    },
                },
                seed_peers,
                snapshot_count: cfg.snapshot_count,
                first_forward_id,
            },
        );
        m.core = Some(core);
        m.incarnation += 1;
        trace!(self, "start member {}", i + 1);
        self.watch(i);
        self.after_step(i);
    }

    fn crash(&mut self, i: usize) {
        self.crash_as(i, false);
    }

    /// Crashes member `i`; with `power_loss`, what its disks had not synced
    /// is gone too: the log's unsynced writes, and the store's writes since
    /// the OS last flushed them (the store never syncs: the log replays).
    fn crash_as(&mut self, i: usize, power_loss: bool) {
        let Some(mut core) = self.members[i].core.take() else {
            return;
        };
        self.report.crashes += 1;
        trace!(
            self,
            "{} member {}",
            if power_loss { "power loss on" } else { "crash" },
            i + 1
        );
        core.stop(&Ok(()));
        let snapshots = std::mem::take(core.snapshots_mut());
        let shared = core.shared().clone();
        drop(core);
        let mut store = std::mem::replace(&mut *shared.store_mut(), KvStore::in_memory());
        if power_loss {
            self.report.power_losses += 1;
            self.members[i].log.lock().lose_unsynced();
            match KvStore::restore_from(&self.members[i].flushed) {
                Ok(flushed) => store = flushed,
                Err(e) => self.report.violations.push(format!(
                    "member {}'s flushed store does not open: {e}",
                    i + 1
                )),
            }
        }
        self.members[i].busy_until = 0;
        self.members[i].disk = Some((store, snapshots));
        // Its callers lost the connection: outcome unknown.
        self.poll_clients();
    }

    /// After member `i` took inputs: run its Readies and schedule what it sent.
    fn after_step(&mut self, i: usize) {
        let now = self.clock(i);
        let writes_before = self.members[i].log.lock().writes;
        let Some(core) = self.members[i].core.as_mut() else {
            return;
        };
        core.set_time(now);
        let applied_before = core.shared().store().applied().0;
        // One step of a compaction's removal per turn, as the server's loop
        // interleaves them with its inputs.
        let turn = if core.compaction_pending() {
            core.compaction_step().and_then(|()| core.run_ready())
        } else {
            core.run_ready()
        };
        let applied_after = core.shared().store().applied().0;
        let writes = self.members[i].log.lock().writes - writes_before;
        let fsync_ms = self.members[i].fsync_ms;
        if writes > 0 && fsync_ms > 0 {
            let until = self.now + writes * fsync_ms;
            self.members[i].busy_until = self.members[i].busy_until.max(until);
        }
        let core = self.members[i].core.as_mut().expect("stepped above");
        let net = core.network_mut();
        let messages = std::mem::take(&mut net.messages);
        let forwards = std::mem::take(&mut net.forwards);
        let publishes = std::mem::take(&mut net.publishes);
        let taken = core.snapshots_mut().taken.take();
        let status = core.shared().status();
        let images: Vec<Image> = messages
            .iter()
            .filter_map(|(_, m)| checkpoint_key(m))
            .filter_map(|k| core.snapshots_mut().images.get(&k).map(|b| (k, b.clone())))
            .collect();
        if let Some(role) = status.role {
            if role == nod_raft::Role::Leader {
                let me = self.members[i].id;
                match self.leaders.insert(status.term, me) {
                    Some(other) if other != me => self.report.violations.push(format!(
                        "two leaders in term {}: {} and {}",
                        status.term, other.0, me.0
                    )),
                    None => {
                        self.report.leader_changes += 1;
                        trace!(self, "member {} leads term {}", me.0, status.term);
                        if self.churn > 0 {
                            self.fate = Some((status.term, self.chance(500)));
                        }
                        self.new_leader(i);
                    }
                    _ => {}
                }
            }
        }
        self.check_applied(i);
        if applied_after != applied_before && self.chance(150) {
            // The OS flushed the store's writes so far.
            let image = self.members[i]
                .core
                .as_ref()
                .map(|core| core.shared().store().snapshot_bytes());
            if let Some(image) = image {
                self.members[i].flushed = Arc::new(image);
            }
        }
        let incarnation = self.members[i].incarnation;
        let mut messages = messages;
        let mut crash_now = false;
        let leading = self.faults_on && status.role == Some(nod_raft::Role::Leader);
        let churn = leading && self.churn > 0;
        let fate = match self.fate {
            Some((term, on_commit)) if churn && term == status.term => Some(on_commit),
            _ => None,
        };
        if leading
            && applied_after > applied_before
            && (self.crash_leader_on_commit || fate == Some(true))
        {
            // It dies before anyone learns the new commit index.
            self.crash_leader_on_commit = false;
            crash_now = true;
            messages.clear();
        }
        if leading
            && !crash_now
            && messages.iter().any(|(_, m)| appends_entries(m))
            && (self.crash_leader_on_append || fate == Some(false))
        {
            // Most followers never see the new entries: each gets them with
            // probability 1/3, then the leader dies.
            self.crash_leader_on_append = false;
            crash_now = true;
            // In a burst, often none does: its entries then live only in
            // its own log, to meet a later leader's at the same index.
            let share = if churn && self.chance(500) { 0 } else { 333 };
            let mut kept = Vec::new();
            for (w, m) in messages {
                if !appends_entries(&m) || self.chance(share) {
                    kept.push((w, m));
                }
            }
            messages = kept;
        }
        for (written, message) in messages {
            let to = message.to.0 as usize - 1;
            let key = checkpoint_key(&message);
            let checkpoint = key.and_then(|k| images.iter().find(|(held, _)| *held == k).cloned());
            let gone = key.is_some() && checkpoint.is_none();
            if gone || self.lost(i, to) {
                if key.is_some() {
                    // The snapshot stream fails: its checkpoint was pruned,
                    // or the link dropped it.
                    self.at(
                        if gone { 1 } else { 20 },
                        Event::SnapshotReport {
                            node: i,
                            incarnation,
                            peer: message.to,
                            delivered: false,
                        },
                    );
                }
                continue;
            }
            // A message waits for the log writes (fsyncs) before it.
            let delay = self.rng.range(1, 5) + (written - writes_before) * fsync_ms;
            self.at(
                delay,
                Event::Deliver {
                    from: i,
                    to,
                    message,
                    checkpoint,
                },
            );
        }
        for (leader, attributes) in publishes {
            let l = leader.0 as usize - 1;
            if l < self.members.len() && !self.lost(i, l) {
                let delay = self.rng.range(1, 5);
                self.at(delay, Event::Publish { to: l, attributes });
            }
        }
        for (leader, _origin, batch) in forwards {
            let l = leader.0 as usize - 1;
            let (ids, commands): (Vec<u64>, Vec<Vec<u8>>) = batch.into_iter().unzip();
            if self.members[l].core.is_none() || self.cut.contains(&(i.min(l), i.max(l))) {
                let outcome = ForwardOutcome {
                    leader,
                    ids,
                    result: Err(ForwardFailure::NotSent),
                };
                self.at(
                    1,
                    Event::ForwardAnswer {
                        to: i,
                        incarnation,
                        outcome,
                    },
                );
                continue;
            }
            if self.lost(i, l) {
                let outcome = ForwardOutcome {
                    leader,
                    ids,
                    result: Err(ForwardFailure::Unknown),
                };
                self.at(
                    FORWARD_TIMEOUT_MS,
                    Event::ForwardAnswer {
                        to: i,
                        incarnation,
                        outcome,
                    },
                );
                continue;
            }
            let delay = self.rng.range(1, 5);
            self.at(
                delay,
                Event::ForwardCall {
                    leader: l,
                    from: i,
                    incarnation,
                    ids,
                    commands,
                },
            );
        }
        if let Some(taken) = taken {
            let delay = self.rng.range(1, 20);
            self.at(
                delay,
                Event::SnapshotTaken {
                    node: i,
                    incarnation,
                    taken,
                },
            );
        }
        if crash_now {
            self.crash(i);
            let back = if churn {
                self.churn -= 1;
                self.rng.range(20, 300)
            } else {
                self.rng.range(50, 1_000)
            };
            self.at(back, Event::Restart(i));
            return;
        }
        match turn {
            Ok(Turn::Continue) => {}
            Ok(Turn::Removed) => {
                self.report
                    .violations
                    .push(format!("member {} believes it was removed", i + 1));
                self.crash(i);
            }
            Err(fatal) => {
                if std::mem::take(&mut self.members[i].log.lock().failed) {
                    self.report.write_faults += 1;
                    // The fsync error the nemesis planted: the member stops,
                    // as it must, and comes back from what its disk holds.
                    trace!(self, "member {} stopped on a disk fault: {fatal}", i + 1);
                    self.crash(i);
                    let back = self.rng.range(50, 800);
                    self.at(back, Event::Restart(i));
                    return;
                }
                self.report
                    .violations
                    .push(format!("member {} stopped: {fatal}", i + 1));
                self.crash(i);
            }
        }
        self.poll_clients();
    }

    /// Whether a message from `a` to `b` is lost (cut, crashed or unlucky).
    fn lost(&mut self, a: usize, b: usize) -> bool {
        if self.cut.contains(&(a.min(b), a.max(b))) {
            return true;
        }
        let p = if self.faults_on {
            self.cfg.loss_per_mille
        } else {
            0
        };
        self.chance(p)
    }

    /// Member `i`'s clock: true time at its rate (clocks drift).
    fn clock(&self, i: usize) -> Duration {
        Duration::from_micros(self.now * self.members[i].rate)
    }

    /// Milliseconds to member `i`'s next tick: a tick is `TICK_MS` of its
    /// own clock, so a fast clock ticks more often in true time.
    /// Also says how many ticks a stall made it miss.
    fn next_tick(&mut self, i: usize) -> (Time, u64) {
        let m = &mut self.members[i];
        let interval = TICK_MS * 1_000_000 / m.rate;
        let late = (self.now * 1_000).saturating_sub(m.next_tick_us);
        let missed = late / interval;
        m.next_tick_us = m.next_tick_us.max(self.now * 1_000) + interval;
        (
            (m.next_tick_us / 1_000).saturating_sub(self.now).max(1),
            missed,
        )
    }

    /// The member an event is for, when it needs that member's loop.
    fn target(event: &Event) -> Option<usize> {
        match event {
            Event::Tick(i) | Event::Restart(i) | Event::Probe(i) => Some(*i),
            Event::Deliver { to, .. } => Some(*to),
            Event::SnapshotReport { node, .. } | Event::SnapshotTaken { node, .. } => Some(*node),
            Event::ForwardCall { leader, .. } => Some(*leader),
            Event::ForwardAnswer { to, .. } | Event::Publish { to, .. } => Some(*to),
            _ => None,
        }
    }

    fn handle(&mut self, event: Event) {
        if let Some(i) = Self::target(&event) {
            let busy = self.members[i].busy_until;
            if busy > self.now && self.members[i].core.is_some() {
                // Its loop is still waiting on its disk.
                self.at(busy - self.now, event);
                return;
            }
        }
        match event {
            Event::Tick(i) => {
                let (next, missed) = self.next_tick(i);
                self.at(next, Event::Tick(i));
                let clock = self.clock(i);
                // A stalled loop (a slow fsync) loses the ticks it missed, as
                // the server's ticker does (MissedTickBehavior::Delay). Lease
                // reads count their lease in ticks, so a driver serving them
                // must not lose any: with lease reads, the missed ticks fire
                // now, before anything that waited behind the stall.
                let ticks = if self.cfg.lease_reads { missed + 1 } else { 1 };
                if let Some(core) = self.members[i].core.as_mut() {
                    core.set_time(clock);
                    for _ in 0..ticks {
                        core.on_tick();
                    }
                    self.after_step(i);
                    if self.chance(100) {
                        self.request_progress(i);
                    }
                }
            }
            Event::Deliver {
                from,
                to,
                message,
                checkpoint,
            } => {
                if self.cut.contains(&(from.min(to), from.max(to))) {
                    return;
                }
                let incarnation = self.members[from].incarnation;
                let clock = self.clock(to);
                let Some(core) = self.members[to].core.as_mut() else {
                    return;
                };
                core.set_time(clock);
                let peer = message.to;
                if let Some((key, bytes)) = checkpoint {
                    core.snapshots_mut().receive(key, bytes);
                    self.at(
                        1,
                        Event::SnapshotReport {
                            node: from,
                            incarnation,
                            peer,
                            delivered: true,
                        },
                    );
                    self.report.snapshots_installed += 1;
                }
                let core = self.members[to].core.as_mut().expect("checked above");
                core.on_message(message);
                self.after_step(to);
            }
            Event::SnapshotReport {
                node,
                incarnation,
                peer,
                delivered,
            } => {
                if self.members[node].incarnation != incarnation {
                    return;
                }
                if let Some(core) = self.members[node].core.as_mut() {
                    core.on_snapshot_sent(peer, delivered);
                    self.after_step(node);
                }
            }
            Event::ForwardCall {
                leader,
                from,
                incarnation,
                ids,
                commands,
            } => {
                let leader_id = self.members[leader].id;
                let clock = self.clock(leader);
                let Some(core) = self.members[leader].core.as_mut() else {
                    let outcome = ForwardOutcome {
                        leader: leader_id,
                        ids,
                        result: Err(ForwardFailure::Unknown),
                    };
                    self.at(
                        FORWARD_TIMEOUT_MS,
                        Event::ForwardAnswer {
                            to: from,
                            incarnation,
                            outcome,
                        },
                    );
                    return;
                };
                core.set_time(clock);
                let (reply, answer) = Slot::new();
                core.on_request(Request::ProposeForwarded { commands, reply });
                self.after_step(leader);
                let result = match answer.take() {
                    Some(Ok(results)) => Ok(results),
                    Some(Err(e)) => Err(ForwardFailure::Refused(e.to_string())),
                    None => Err(ForwardFailure::Unknown),
                };
                let (delay, result) = if self.lost(leader, from) {
                    (FORWARD_TIMEOUT_MS, Err(ForwardFailure::Unknown))
                } else {
                    (self.rng.range(1, 5), result)
                };
                let outcome = ForwardOutcome {
                    leader: leader_id,
                    ids,
                    result,
                };
                self.at(
                    delay,
                    Event::ForwardAnswer {
                        to: from,
                        incarnation,
                        outcome,
                    },
                );
            }
            Event::ForwardAnswer {
                to,
                incarnation,
                outcome,
            } => {
                if self.members[to].incarnation != incarnation {
                    return;
                }
                let clock = self.clock(to);
                if let Some(core) = self.members[to].core.as_mut() {
                    core.set_time(clock);
                    core.on_forwarded(outcome);
                    self.after_step(to);
                }
            }
            Event::SnapshotTaken {
                node,
                incarnation,
                taken,
            } => {
                if self.members[node].incarnation != incarnation {
                    return;
                }
                if let Some(core) = self.members[node].core.as_mut() {
                    if let Err(e) = core.on_snapshot_taken(taken) {
                        self.report
                            .violations
                            .push(format!("member {} stopped: {e}", node + 1));
                        self.crash(node);
                        return;
                    }
                    self.after_step(node);
                }
            }
            Event::ClientNext(c) => self.client_next(c),
            Event::LeaseNext => self.lease_next(),
            Event::LeaseTimeout(seq) => self.lease_timeout(seq),
            Event::ClientTimeout { client, op } => {
                if self.clients[client]
                    .pending
                    .as_ref()
                    .is_some_and(|(o, _)| *o == op)
                {
                    self.clients[client].pending = None;
                    self.history[op].outcome = lin::Outcome::Unknown;
                    self.history[op].complete = self.now;
                    self.clients[client].done += 1;
                    // The value is unknown now.
                    if let Some(key) = op_key(&self.history[op].op) {
                        self.clients[client].known.remove(&key);
                    }
                    self.at(1, Event::ClientNext(client));
                }
            }
            Event::Nemesis => self.nemesis(),
            Event::Probe(i) => self.probe(i),
            Event::Compact => self.compact(),
            Event::IndexDdl => self.index_ddl(),
            Event::Publish { to, attributes } => {
                let clock = self.clock(to);
                if let Some(core) = self.members[to].core.as_mut() {
                    // Nobody waits for it: the follower sees its attributes
                    // in its member table, or asks again.
                    let (reply, _) = Slot::new();
                    core.set_time(clock);
                    core.on_request(Request::Propose {
                        caller: None,
                        trace: None,
                        op: command::Op::MemberAttributes(attributes),
                        reply,
                    });
                    self.after_step(to);
                }
            }
            Event::Restart(i) => self.start(i),
            Event::Heal => {
                trace!(self, "heal");
                self.cut.clear();
            }
            Event::Settle => {}
        }
    }

    fn run(mut self) -> Report {
        let mut settle_at: Option<Time> = None;
        while let Some(Reverse((time, _, key))) = self.queue.pop() {
            self.now = time;
            if let Some(end) = settle_at {
                if time > end {
                    break;
                }
            }
            let Some(event) = self.events.remove(&key) else {
                continue;
            };
            self.handle(event);
            if settle_at.is_none() && self.clients_done() {
                // Faults stop; everyone comes back.
                self.faults_on = false;
                self.cut.clear();
                for i in 0..self.members.len() {
                    if self.members[i].core.is_none() {
                        self.start(i);
                    }
                }
                settle_at = Some(self.now + SETTLE_MS);
                self.at(SETTLE_MS, Event::Settle);
            }
            if self.now > 600_000 {
                self.report
                    .violations
                    .push("the clients did not finish in 10 simulated minutes".into());
                break;
            }
        }
        self.check()
    }
}

fn appends_entries(m: &Message) -> bool {
    matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty())
}

/// The checkpoint a snapshot message names, by (index, term).
fn checkpoint_key(m: &Message) -> Option<(u64, u64)> {
    match &m.body {
        MessageBody::Snapshot { snapshot } => {
            let data = command::decode_snapshot_data(&snapshot.data).ok()?;
            (data.checkpoint_index != 0)
                .then_some((snapshot.metadata.index.0, snapshot.metadata.term.0))
        }
        _ => None,
    }
}

/// Runs one seeded simulation of the shipped server.
pub fn run(cfg: Config) -> Report {
    World::new(cfg).run()
}
