//! The simulation's event loop: a queue of timed events (ticks, message
//! deliveries, forwarded calls and their answers, finished checkpoints,
//! client operations and timeouts, and the nemesis: crashes, restarts,
//! partitions), processed one at a time in (time, sequence) order. Each
//! event is handed to one member's driver, which then runs its `Ready`s;
//! what it sent is scheduled with delay and loss. After the clients finish,
//! the faults stop and the members must converge. No I/O.

mod leases;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use nod_lincheck as lin;
use nod_raft::rng::SeededRng;
use nod_raft::{ConfState, Index, MemStorage, Message, MessageBody, NodeId, RawNode, Storage};

use super::platform::{SharedLog, SimNetwork, SimPlatform, SimSnapshots, SimStore, Slot};
use super::{Config, Planted, Report};
use crate::command::{self, MemberAttributes, Op, SnapshotData};
use crate::driver::{
    Applied, Core, CoreConfig, DriverError, ForwardFailure, ForwardOutcome, Outcome, Request,
    Shared, Taken, Turn,
};
use crate::metrics::Metrics;
use crate::storage::kv_store::KeyRange;
use crate::storage::KvStore;
use crate::watch_hub::HubMessage;
use crate::watch_hub::WatchHub;
use nod_proto::etcd::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

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

/// One watch event as the checks compare it: (revision, type, key, value).
type Seen = (i64, i32, Vec<u8>, Vec<u8>);

/// A watcher on one member's keys under `/sim/`, from revision 1: it catches
/// up from history and then takes live events, as the Watch API does, and
/// watches again from where it stopped when the member restarts or ends it
/// (a snapshot install).
#[derive(Default)]
struct Watcher {
    rx: Option<tokio::sync::mpsc::UnboundedReceiver<HubMessage>>,
    /// The revision it expects next (events at lower ones are duplicates).
    next: i64,
    seen: Vec<Seen>,
}

fn sim_range() -> KeyRange {
    KeyRange::new(b"/sim/", b"/sim0")
}

fn seen(e: &nod_proto::etcd::mvccpb::Event) -> Seen {
    let kv = e.kv.clone().unwrap_or_default();
    (kv.mod_revision, e.r#type, kv.key, kv.value)
}

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
}

enum Waiting {
    Write {
        slot: Slot<Applied>,
        cas: bool,
    },
    Read {
        slot: Slot<()>,
        node: usize,
        key: Vec<u8>,
    },
}

struct Client {
    done: usize,
    pending: Option<(usize, Waiting)>,
    /// The last value this client saw for each key (its Cas expectation).
    known: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
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
    watchers: Vec<Watcher>,
    history: Vec<lin::Operation>,
    /// Pairs of members that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
    faults_on: bool,
    /// The next leader that appends a new entry crashes before most of
    /// its followers get it (leader churn at the worst moment).
    crash_leader_on_append: bool,
    leaders: BTreeMap<u64, NodeId>,
    report: Report,
}

macro_rules! trace {
    ($w:expr, $($arg:tt)*) => {
        if $w.cfg.trace {
            eprintln!("{:>6} ms  {}", $w.now, format!($($arg)*));
        }
    };
}

fn member_url(i: usize) -> String {
    format!("sim://{}", i + 1)
}

impl World {
    fn new(cfg: Config) -> World {
        let rng = SeededRng::new(cfg.seed);
        let ids: Vec<NodeId> = (1..=cfg.nodes as u64).map(NodeId).collect();
        let founders: Vec<MemberAttributes> = ids
            .iter()
            .map(|id| MemberAttributes {
                id: id.0,
                name: format!("m{}", id.0),
                peer_urls: vec![member_url(id.0 as usize - 1)],
                client_urls: vec![format!("sim-client://{}", id.0)],
            })
            .collect();
        let data = prost::Message::encode_to_vec(&SnapshotData {
            members: founders.clone(),
            ..Default::default()
        });
        let conf = ConfState::with_voters(ids.iter().copied());
        let mut members = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let log = SharedLog(Arc::new(std::sync::Mutex::new(MemStorage::new_bootstrap(
                conf.clone(),
                data.clone(),
            ))));
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
                disk: Some((store, SimSnapshots::default())),
            });
            let _ = i;
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
            history: Vec::new(),
            cut: BTreeSet::new(),
            faults_on: true,
            crash_leader_on_append: false,
            leaders: BTreeMap::new(),
        };
        for i in 0..w.members.len() {
            w.start(i);
            let offset = w.rng.range(0, TICK_MS);
            w.at(offset + 1, Event::Tick(i));
        }
        for c in 0..w.clients.len() {
            let t = w.rng.range(50, 300);
            w.at(t, Event::ClientNext(c));
        }
        let t = w.rng.range(50, 300);
        w.at(t, Event::LeaseNext);
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
        let mut raft = nod_raft::Config::new(m.id);
        raft.election_tick = ELECTION_TICKS;
        raft.heartbeat_tick = 1;
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
            member_id: m.id.0,
            cluster_id: 1,
            name: format!("m{}", m.id.0),
            store: RwLock::new(store),
            hub: WatchHub::default(),
            status: RwLock::new(Default::default()),
            metrics: Metrics::new(),
        });
        let seed_peers = (0..cfg.nodes)
            .filter(|j| *j != i)
            .map(|j| (NodeId(j as u64 + 1), member_url(j)))
            .collect();
        let core = Core::new(
            node,
            shared,
            SimNetwork::default(),
            snapshots,
            CoreConfig {
                attributes: MemberAttributes {
                    id: m.id.0,
                    name: format!("m{}", m.id.0),
                    peer_urls: vec![member_url(i)],
                    client_urls: vec![format!("sim-client://{}", m.id.0)],
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
        let Some(mut core) = self.members[i].core.take() else {
            return;
        };
        self.report.crashes += 1;
        trace!(self, "crash member {}", i + 1);
        core.stop(&Ok(()));
        let snapshots = std::mem::take(core.snapshots_mut());
        let shared = core.shared().clone();
        drop(core);
        let store = std::mem::replace(&mut *shared.store_mut(), KvStore::in_memory());
        self.members[i].disk = Some((store, snapshots));
        // Its callers lost the connection: outcome unknown.
        self.poll_clients();
    }

    /// After member `i` took inputs: run its Readies and schedule what it sent.
    fn after_step(&mut self, i: usize) {
        let now = Duration::from_millis(self.now);
        let Some(core) = self.members[i].core.as_mut() else {
            return;
        };
        core.set_time(now);
        let turn = core.run_ready();
        let net = core.network_mut();
        let messages = std::mem::take(&mut net.messages);
        let forwards = std::mem::take(&mut net.forwards);
        let taken = core.snapshots_mut().taken.take();
        let status = core.shared().status();
        let images: Vec<Image> = messages
            .iter()
            .filter_map(checkpoint_key)
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
                    }
                    _ => {}
                }
            }
        }
        let incarnation = self.members[i].incarnation;
        let mut messages = messages;
        let mut crash_now = false;
        if self.crash_leader_on_append
            && self.faults_on
            && status.role == Some(nod_raft::Role::Leader)
            && messages.iter().any(appends_entries)
        {
            // Most followers never see the new entries: each gets them with
            // probability 1/3, then the leader dies.
            self.crash_leader_on_append = false;
            crash_now = true;
            let mut kept = Vec::new();
            for m in messages {
                if !appends_entries(&m) || self.chance(333) {
                    kept.push(m);
                }
            }
            messages = kept;
        }
        for message in messages {
            let to = message.to.0 as usize - 1;
            let checkpoint = checkpoint_key(&message)
                .and_then(|k| images.iter().find(|(key, _)| *key == k).cloned());
            let is_checkpoint = checkpoint_key(&message).is_some();
            if is_checkpoint && checkpoint.is_none() {
                // The checkpoint is gone (pruned): the stream fails.
                self.at(
                    1,
                    Event::SnapshotReport {
                        node: i,
                        incarnation,
                        peer: message.to,
                        delivered: false,
                    },
                );
                continue;
            }
            if self.lost(i, to) {
                if is_checkpoint {
                    self.at(
                        20,
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
            let delay = self.rng.range(1, 5);
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
            let back = self.rng.range(50, 1_000);
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

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(i) => {
                self.at(TICK_MS, Event::Tick(i));
                if let Some(core) = self.members[i].core.as_mut() {
                    core.set_time(Duration::from_millis(self.now));
                    core.on_tick();
                    self.after_step(i);
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
                let Some(core) = self.members[to].core.as_mut() else {
                    return;
                };
                core.set_time(Duration::from_millis(self.now));
                let peer = message.to;
                if let Some((key, bytes)) = checkpoint {
                    core.snapshots_mut().received.insert(key, bytes);
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
                core.set_time(Duration::from_millis(self.now));
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
                if let Some(core) = self.members[to].core.as_mut() {
                    core.set_time(Duration::from_millis(self.now));
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
            Event::Restart(i) => self.start(i),
            Event::Heal => {
                trace!(self, "heal");
                self.cut.clear();
            }
            Event::Settle => {}
        }
    }

    fn nemesis(&mut self) {
        if !self.faults_on {
            return;
        }
        let n = self.members.len();
        let down = self.members.iter().filter(|m| m.core.is_none()).count();
        let choice = self.rng.range(0, 5);
        let leader = (0..n).find(|i| {
            self.members[*i]
                .core
                .as_ref()
                .is_some_and(|c| c.raw_node().role() == nod_raft::Role::Leader)
        });
        let mut next = self.rng.range(200, 900);
        if self.cfg.crashes && choice == 0 && down < (n - 1) / 2 {
            let i = self.rng.range(0, n as u64) as usize;
            self.crash(i);
            let back = self.rng.range(100, 1_200);
            self.at(back, Event::Restart(i));
        } else if self.cfg.crashes && choice == 1 && down < (n - 1) / 2 {
            // The leader, right after it appends, before it replicates to all;
            // sometimes again and again (a burst of leader churn).
            self.crash_leader_on_append = true;
            if self.chance(400) {
                next = self.rng.range(100, 300);
            }
        } else if self.cfg.partitions && choice == 2 && self.cut.is_empty() {
            // The leader alone (with one follower in a five-member
            // cluster): a minority that still believes it leads.
            if let Some(l) = leader {
                let mut side = BTreeSet::from([l]);
                if n >= 5 {
                    side.insert((l + 1 + self.rng.range(0, n as u64 - 1) as usize) % n);
                }
                self.cut_between(&side);
                let heal = self.rng.range(200, 1_500);
                self.at(heal, Event::Heal);
            }
        } else if self.cfg.partitions && self.cut.is_empty() {
            let mut side = BTreeSet::new();
            for i in 0..n {
                if self.rng.range(0, 2) == 0 {
                    side.insert(i);
                }
            }
            self.cut_between(&side);
            let heal = self.rng.range(200, 1_500);
            self.at(heal, Event::Heal);
        }
        self.at(next, Event::Nemesis);
    }

    /// Cuts every link between `side` and the rest.
    fn cut_between(&mut self, side: &BTreeSet<usize>) {
        trace!(
            self,
            "partition {:?} from the rest",
            side.iter().map(|i| i + 1).collect::<Vec<_>>()
        );
        let n = self.members.len();
        for a in 0..n {
            for b in a + 1..n {
                if side.contains(&a) != side.contains(&b) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    fn client_next(&mut self, c: usize) {
        if self.clients[c].pending.is_some() {
            return;
        }
        if self.clients[c].done >= self.cfg.ops_per_client {
            return;
        }
        let alive: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].core.is_some())
            .collect();
        if alive.is_empty() {
            self.at(50, Event::ClientNext(c));
            return;
        }
        let node = alive[self.rng.range(0, alive.len() as u64) as usize];
        let key = KEYS[self.rng.range(0, KEYS.len() as u64) as usize].to_vec();
        let index = self.history.len();
        let value = format!("c{c}-{index}").into_bytes();
        let kind = self.rng.range(0, 10);
        if self.cfg.planted == Planted::StaleReads && (4..=6).contains(&kind) {
            let core = self.members[node]
                .core
                .as_ref()
                .expect("picked a live member");
            let range = RangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let value = core
                .shared()
                .store()
                .range(&range)
                .ok()
                .and_then(|r| r.kvs.first().map(|kv| kv.value.clone()));
            self.history.push(lin::Operation {
                client: c as u64,
                invoke: self.now,
                complete: self.now,
                op: lin::Op::Get { key },
                outcome: lin::Outcome::Read(value),
            });
            self.clients[c].done += 1;
            let think = self.rng.range(1, 30);
            self.at(think, Event::ClientNext(c));
            return;
        }
        let (op, request, waiting) = match kind {
            0..=3 => {
                let (reply, slot) = Slot::new();
                let put = PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                };
                (
                    lin::Op::Put {
                        key: key.clone(),
                        value,
                    },
                    Request::Propose {
                        op: Op::Put(put),
                        reply,
                    },
                    Waiting::Write { slot, cas: false },
                )
            }
            4..=6 => {
                let (reply, slot) = Slot::new();
                (
                    lin::Op::Get { key: key.clone() },
                    Request::ReadIndex { reply },
                    Waiting::Read {
                        slot,
                        node,
                        key: key.clone(),
                    },
                )
            }
            7..=8 => {
                let expected = self.clients[c].known.get(&key).cloned().flatten();
                let (reply, slot) = Slot::new();
                let txn = cas_txn(&key, expected.as_deref(), &value);
                (
                    lin::Op::Cas {
                        key: key.clone(),
                        expected,
                        new: value,
                    },
                    Request::Propose {
                        op: Op::Txn(txn),
                        reply,
                    },
                    Waiting::Write { slot, cas: true },
                )
            }
            _ => {
                let (reply, slot) = Slot::new();
                (
                    lin::Op::Delete { key: key.clone() },
                    Request::Propose {
                        op: Op::DeleteRange(DeleteRangeRequest {
                            key: key.clone(),
                            ..Default::default()
                        }),
                        reply,
                    },
                    Waiting::Write { slot, cas: false },
                )
            }
        };
        self.history.push(lin::Operation {
            client: c as u64,
            invoke: self.now,
            complete: self.now,
            op,
            outcome: lin::Outcome::Unknown,
        });
        trace!(
            self,
            "client {c} op #{index} to member {}: {:?}",
            node + 1,
            self.history[index].op
        );
        self.clients[c].pending = Some((index, waiting));
        self.at(
            CLIENT_TIMEOUT_MS,
            Event::ClientTimeout {
                client: c,
                op: index,
            },
        );
        let core = self.members[node]
            .core
            .as_mut()
            .expect("picked a live member");
        core.set_time(Duration::from_millis(self.now));
        core.on_request(request);
        self.after_step(node);
    }

    /// (Re)starts member `i`'s watcher from the revision it expects next.
    fn watch(&mut self, i: usize) {
        let Some(core) = self.members[i].core.as_ref() else {
            return;
        };
        let shared = core.shared().clone();
        let mut hub = shared.hub.lock();
        let store = shared.store();
        let current = store.current_revision();
        let w = &mut self.watchers[i];
        match store.events_between(&sim_range(), w.next - 1, current) {
            Ok(events) => {
                for e in &events {
                    w.seen.push(seen(e));
                }
            }
            Err(e) => {
                self.report.violations.push(format!(
                    "member {} could not replay its history: {e}",
                    i + 1
                ));
                return;
            }
        }
        w.next = w.next.max(current + 1);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = hub.new_stream();
        hub.subscribe(stream, 1, sim_range(), current + 1, false, tx);
        w.rx = Some(rx);
    }

    /// Takes the live events the watchers got; checks order and duplicates.
    fn poll_watchers(&mut self) {
        for i in 0..self.watchers.len() {
            let mut restart = false;
            let w = &mut self.watchers[i];
            let Some(rx) = w.rx.as_mut() else { continue };
            while let Ok(m) = rx.try_recv() {
                match m {
                    HubMessage::Events {
                        revision, events, ..
                    } => {
                        if revision < w.next {
                            self.report.violations.push(format!(
                                "member {}'s watcher got revision {revision} after {}",
                                i + 1,
                                w.next - 1
                            ));
                        }
                        for e in events.iter() {
                            w.seen.push(seen(e));
                        }
                        w.next = w.next.max(revision + 1);
                    }
                    HubMessage::Canceled { .. } => restart = true,
                    HubMessage::Progress { .. } => {}
                }
            }
            if restart || self.members[i].core.is_none() {
                self.watchers[i].rx = None;
                if restart {
                    self.watch(i);
                }
            }
        }
    }

    /// Reads the answers that arrived and moves their clients on.
    fn poll_clients(&mut self) {
        self.poll_watchers();
        self.poll_lease();
        for c in 0..self.clients.len() {
            let Some((op, waiting)) = &self.clients[c].pending else {
                continue;
            };
            let op = *op;
            let outcome = match waiting {
                Waiting::Write { slot, cas } => match slot.take() {
                    None => continue,
                    Some(Ok(applied)) => match (&applied.outcome, cas) {
                        (Outcome::Txn(t), true) => lin::Outcome::Swapped(t.succeeded),
                        _ => lin::Outcome::Done,
                    },
                    Some(Err(e)) => classify(&e),
                },
                Waiting::Read { slot, node, key } => match slot.take() {
                    None => continue,
                    Some(Ok(())) => {
                        let Some(core) = self.members[*node].core.as_ref() else {
                            continue;
                        };
                        let range = RangeRequest {
                            key: key.clone(),
                            ..Default::default()
                        };
                        let st = core.raw_node().status();
                        trace!(
                            self,
                            "member {} answers a read: {:?} term {} leader {} commit {} applied {}",
                            node + 1,
                            st.role,
                            st.term.0,
                            st.leader.0,
                            st.commit.0,
                            core.shared().store().applied().0
                        );
                        match core.shared().store().range(&range) {
                            Ok(r) => lin::Outcome::Read(r.kvs.first().map(|kv| kv.value.clone())),
                            Err(e) => {
                                self.report.violations.push(format!("a read failed: {e}"));
                                lin::Outcome::Failed
                            }
                        }
                    }
                    Some(Err(e)) => classify(&e),
                },
            };
            trace!(self, "client {c} op #{op}: {outcome:?}");
            let client = &mut self.clients[c];
            client.pending = None;
            client.done += 1;
            let h = &mut self.history[op];
            h.complete = self.now;
            h.outcome = outcome.clone();
            if let Some(key) = op_key(&h.op) {
                match (&h.op, &outcome) {
                    (lin::Op::Put { value, .. }, lin::Outcome::Done) => {
                        client.known.insert(key, Some(value.clone()));
                    }
                    (lin::Op::Delete { .. }, lin::Outcome::Done) => {
                        client.known.insert(key, None);
                    }
                    (lin::Op::Get { .. }, lin::Outcome::Read(v)) => {
                        client.known.insert(key, v.clone());
                    }
                    (lin::Op::Cas { new, .. }, lin::Outcome::Swapped(true)) => {
                        client.known.insert(key, Some(new.clone()));
                    }
                    (_, lin::Outcome::Failed) => {}
                    _ => {
                        client.known.remove(&key);
                    }
                }
            }
            let think = self.rng.range(0, 30);
            self.at(think, Event::ClientNext(c));
        }
    }

    fn clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.done >= self.cfg.ops_per_client && c.pending.is_none())
            && self.leases.done >= self.cfg.ops_per_client
            && self.leases.idle()
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

    fn check(mut self) -> Report {
        self.report.operations = self.history.len();
        self.report.completed = self
            .history
            .iter()
            .filter(|o| !matches!(o.outcome, lin::Outcome::Unknown | lin::Outcome::Failed))
            .count();
        if let lin::Verdict::Violation { key, message, .. } = lin::check(&self.history) {
            self.report.violations.push(format!(
                "not linearizable on {}: {message}",
                String::from_utf8_lossy(&key)
            ));
        }
        // Once the faults stop, every member holds the same data.
        let mut views = Vec::new();
        for m in &self.members {
            let Some(core) = m.core.as_ref() else {
                self.report
                    .violations
                    .push(format!("member {} is down after settling", m.id.0));
                continue;
            };
            let store = core.shared().store();
            let dump = store.dump().map_err(|e| e.to_string());
            views.push((m.id, store.applied().0, store.current_revision(), dump));
        }
        self.check_leases();
        // Every watcher saw a prefix of the one history, in order, with no
        // gap and no duplicate.
        if let Some(core) = self.members.iter().find_map(|m| m.core.as_ref()) {
            let store = core.shared().store();
            match store.events_between(&sim_range(), 0, store.current_revision()) {
                Ok(all) => {
                    let all: Vec<Seen> = all.iter().map(seen).collect();
                    for (i, w) in self.watchers.iter().enumerate() {
                        let n = w.seen.len();
                        if n > all.len() || w.seen[..] != all[..n] {
                            let at = (0..n.min(all.len()))
                                .find(|k| w.seen[*k] != all[*k])
                                .unwrap_or(n.min(all.len()));
                            self.report.violations.push(format!(
                                "member {}'s watcher saw {n} events that are not the history's first {n}: \
                                 first difference at event {at}: {:?} instead of {:?}",
                                i + 1,
                                w.seen.get(at).map(|s| (s.0, s.1)),
                                all.get(at).map(|s| (s.0, s.1)),
                            ));
                        }
                    }
                }
                Err(e) => self
                    .report
                    .violations
                    .push(format!("the history could not be read: {e}")),
            }
        }
        if let Some((first, rest)) = views.split_first() {
            for v in rest {
                if v.1 != first.1 || v.2 != first.2 || v.3 != first.3 {
                    self.report.violations.push(format!(
                        "members {} and {} disagree after settling: applied {} / {}, revision {} / {}",
                        first.0 .0, v.0 .0, first.1, v.1, first.2, v.2
                    ));
                }
            }
        }
        self.report
    }
}

fn classify(e: &DriverError) -> lin::Outcome {
    match e {
        DriverError::Timeout | DriverError::Stopped => lin::Outcome::Unknown,
        _ => lin::Outcome::Failed,
    }
}

fn op_key(op: &lin::Op) -> Option<Vec<u8>> {
    match op {
        lin::Op::Put { key, .. }
        | lin::Op::Get { key }
        | lin::Op::Cas { key, .. }
        | lin::Op::Delete { key } => Some(key.clone()),
    }
}

/// etcd's compare-and-swap: put `new` if the value is `expected` (absent:
/// create revision 0).
fn cas_txn(key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> TxnRequest {
    let compare = match expected {
        Some(v) => Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: key.to_vec(),
            target_union: Some(compare::TargetUnion::Value(v.to_vec())),
            ..Default::default()
        },
        None => Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Create as i32,
            key: key.to_vec(),
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
    };
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value: new.to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
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
