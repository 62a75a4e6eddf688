//! The event loop of the simulation: a priority queue of timed events (ticks,
//! message deliveries, disk writes completing, client requests and replies,
//! nemesis actions), processed one at a time. One event is one step; the
//! invariants run after each.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use nod_lincheck as lin;
use nod_raft::rng::SeededRng;
use nod_raft::{
    ConfChange, ConfChangeKind, ConfState, Config, EntryPayload, Index, MemStorage, Message,
    NodeId, ProposeError, RawNode, Ready, Role, Snapshot, SnapshotMetadata, Storage, StorageError,
    StorageWrite, Term,
};

use crate::invariants::Ledger;
use crate::kv::{Applied, Command, Key, KvState, Value};
use crate::{Planted, SimConfig, SimReport};

#[derive(Clone, Debug)]
enum Request {
    Put {
        key: Key,
        value: Value,
    },
    Get {
        key: Key,
    },
    Cas {
        key: Key,
        expected: Option<Value>,
        new: Value,
    },
}

#[derive(Clone, Debug)]
enum Reply {
    Redirect(NodeId),
    Retry,
    Done(Applied),
    Read(Option<Value>),
    /// Definitely not applied.
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ClientRef {
    client: usize,
    op: u64,
}

#[derive(Debug)]
enum Event {
    Tick(NodeId, u64),
    Deliver(Message),
    Persisted(NodeId, u64),
    ClientNext(usize),
    ToNode {
        node: NodeId,
        from: ClientRef,
        request: Request,
    },
    ToClient {
        to: ClientRef,
        reply: Reply,
    },
    ClientTimeout(ClientRef),
    Nemesis,
    Restart(NodeId),
    Heal,
    EndLossy,
    Settle,
    Finish,
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: invert for earliest-first.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

struct PendingRead {
    from: ClientRef,
    key: Key,
}

struct SimNode {
    id: NodeId,
    raw: Option<RawNode<MemStorage>>,
    disk: Option<MemStorage>,
    /// Bumped on every crash, so events of an earlier life are ignored.
    epoch: u64,
    busy: Option<Ready>,
    inbox: VecDeque<Message>,
    missed_ticks: u64,
    kv: KvState,
    conf: ConfState,
    applied: Index,
    proposals: BTreeMap<Index, (Term, ClientRef)>,
    reads: BTreeMap<Vec<u8>, PendingRead>,
    ready_reads: Vec<(Index, PendingRead)>,
    recent_writes: VecDeque<(u64, Index)>,
    last_term: Term,
    last_commit: Index,
    retired: bool,
}

struct Client {
    target: NodeId,
    op: Option<ClientOp>,
    next_op: u64,
}

struct ClientOp {
    id: u64,
    request: Request,
    invoke: u64,
}

pub struct World {
    cfg: SimConfig,
    rng: SeededRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: Vec<Client>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    drop_chance: f64,
    ledger: Ledger,
    history: Vec<lin::Operation>,
    steps: u64,
    faults: u64,
    elections: u64,
    next_node_id: u64,
    settling: bool,
    settle_start: u64,
    ok_after_settle: usize,
}

impl World {
    pub fn new(cfg: SimConfig) -> World {
        let mut w = World {
            rng: SeededRng::new(cfg.seed),
            cfg,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: BTreeMap::new(),
            clients: Vec::new(),
            blocked: BTreeSet::new(),
            drop_chance: 0.0,
            ledger: Ledger::default(),
            history: Vec::new(),
            steps: 0,
            faults: 0,
            elections: 0,
            next_node_id: 1,
            settling: false,
            settle_start: 0,
            ok_after_settle: 0,
        };
        let voters: Vec<NodeId> = (1..=w.cfg.initial_voters).map(NodeId).collect();
        let conf = ConfState::with_voters(voters.iter().copied());
        for &id in &voters {
            let disk = MemStorage::new_bootstrap(conf.clone(), KvState::default().encode());
            w.start_node(id, disk);
        }
        w.next_node_id = w.cfg.initial_voters + 1;
        for c in 0..w.cfg.clients {
            let target = voters[c % voters.len()];
            w.clients.push(Client {
                target,
                op: None,
                next_op: 0,
            });
            let at = w.rng.range(0, 50_000);
            w.schedule(at, Event::ClientNext(c));
        }
        let first = w.rng.range(0, w.cfg.nemesis_interval_us);
        w.schedule(first, Event::Nemesis);
        w.schedule(w.cfg.fault_duration_us, Event::Settle);
        w.schedule(
            w.cfg.fault_duration_us + w.cfg.settle_duration_us,
            Event::Finish,
        );
        w
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.cfg.trace {
            println!("{:>9.3}s  {}", self.now as f64 / 1e6, what());
        }
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            time: self.now + delay,
            seq: self.seq,
            event,
        });
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.range(0, items.len() as u64) as usize])
        }
    }

    // ----- nodes --------------------------------------------------------------

    fn node_config(&mut self, id: NodeId) -> Config {
        let mut c = Config::new(id);
        c.election_tick = self.cfg.election_tick;
        c.heartbeat_tick = self.cfg.heartbeat_tick;
        c.max_size_per_msg = self.cfg.max_size_per_msg;
        c.max_inflight_msgs = self.cfg.max_inflight_msgs;
        c.snapshot_timeout_tick = 3 * self.cfg.election_tick;
        c.pre_vote = self.cfg.pre_vote;
        if self.cfg.lease_reads {
            c.read_only = nod_raft::ReadOnlyOption::LeaseBased;
        }
        c.seed = self.rng.next_u64();
        c
    }

    fn start_node(&mut self, id: NodeId, disk: MemStorage) {
        let snapshot = disk.snapshot().expect("memory storage never fails");
        let kv = match KvState::decode(&snapshot.data) {
            Ok(kv) => kv,
            Err(e) => {
                self.ledger
                    .violation(format!("node {id}: snapshot does not decode: {e}"));
                KvState::default()
            }
        };
        let hs = disk.hard_state();
        self.ledger.observe_durable(id, hs.term, hs.commit);
        let config = self.node_config(id);
        let raw = match RawNode::new(config, disk) {
            Ok(raw) => raw,
            Err(e) => {
                self.ledger
                    .violation(format!("node {id} cannot restart: {e}"));
                return;
            }
        };
        let epoch = self.nodes.get(&id).map_or(0, |n| n.epoch + 1);
        let node = SimNode {
            id,
            raw: Some(raw),
            disk: None,
            epoch,
            busy: None,
            inbox: VecDeque::new(),
            missed_ticks: 0,
            kv,
            conf: snapshot.metadata.conf_state.clone(),
            applied: snapshot.metadata.index,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready_reads: Vec::new(),
            recent_writes: VecDeque::new(),
            last_term: hs.term,
            last_commit: Index(0),
            retired: false,
        };
        self.nodes.insert(id, node);
        let first_tick = self.rng.range(0, self.cfg.tick_us);
        self.schedule(first_tick, Event::Tick(id, epoch));
        self.drive(id);
    }

    fn crash(&mut self, id: NodeId) {
        let planted = self.cfg.planted;
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(raw) = node.raw.take() else { return };
        let mut disk = raw.into_storage();
        if planted == Planted::LoseAckedAppend {
            // A disk that lied about fsync: the last 50 ms of appends vanish.
            if let Some(&(_, first)) = node.recent_writes.iter().find(|(t, _)| now - *t < 50_000) {
                disk.fault_truncate_after(first.prev());
            }
        }
        if planted == Planted::ForgetVote {
            disk.fault_forget_vote();
        }
        node.disk = Some(disk);
        node.epoch += 1;
        node.busy = None;
        node.inbox.clear();
        node.proposals.clear();
        node.reads.clear();
        node.ready_reads.clear();
        node.recent_writes.clear();
    }

    fn restart(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.raw.is_some() || node.retired {
            return;
        }
        let Some(disk) = node.disk.take() else { return };
        self.start_node(id, disk);
    }

    /// Nodes not removed from the cluster (up or down).
    fn members(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| !n.retired)
            .map(|n| n.id)
            .collect()
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| {
                n.raw
                    .as_ref()
                    .filter(|r| r.role() == Role::Leader)
                    .map(|r| (r.term(), n.id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Hands a message to a node, or queues it while the node is persisting.
    fn step_node(&mut self, id: NodeId, m: Message) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(raw) = node.raw.as_mut() else { return };
        if node.busy.is_some() {
            node.inbox.push_back(m);
            return;
        }
        if let Err(e) = raw.step(m) {
            match e {
                nod_raft::StepError::Storage(e) => self
                    .ledger
                    .violation(format!("node {id}: storage error {e}")),
                other => self.ledger.violation(format!(
                    "node {id} refused a message from a correct peer: {other}"
                )),
            }
        }
        self.drive(id);
    }

    /// After any input: check the node, and start handling its Ready if idle.
    fn drive(&mut self, id: NodeId) {
        let now = self.now;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(raw) = node.raw.as_mut() else { return };
        raw.check_invariants();
        let (term, role) = (raw.term(), raw.role());
        let commit = raw.status().commit;
        if term < node.last_term {
            self.ledger.violation(format!(
                "node {id}: term went back from {} to {term}",
                node.last_term
            ));
        }
        if commit < node.last_commit {
            self.ledger.violation(format!(
                "node {id}: commit went back from {} to {commit}",
                node.last_commit
            ));
        }
        node.last_term = term;
        node.last_commit = commit;
        if role == Role::Leader {
            self.ledger.observe_leader(id, term);
        }
        if node.busy.is_some() || !raw.has_ready() {
            return;
        }
        let ready = match raw.ready() {
            Ok(r) => r,
            Err(e) => {
                self.ledger
                    .violation(format!("node {id}: ready failed: {e}"));
                return;
            }
        };
        if let Some(ss) = ready.soft_state {
            if ss.role == Role::Leader {
                self.elections += 1;
                let storage = raw.storage();
                let entries = &ready.entries;
                let last = entries
                    .last()
                    .map(|e| e.index)
                    .unwrap_or(storage.last_index().unwrap_or_default());
                let snapshot_index = storage.first_index().unwrap_or_default().prev();
                let term_at = |i: Index| {
                    entries
                        .iter()
                        .find(|e| e.index == i)
                        .map(|e| e.term)
                        .or_else(|| storage.term(i).ok())
                };
                self.ledger
                    .check_leader_complete(id, term, last, snapshot_index, term_at);
            }
            if self.cfg.trace {
                println!(
                    "{:>9.3}s  node {id} is {} in term {term} (leader {})",
                    now as f64 / 1e6,
                    ss.role,
                    ss.leader
                );
            }
        }
        let epoch = node.epoch;
        let messages = ready.messages.clone();
        node.busy = Some(ready);
        let (lo, hi) = self.cfg.disk_latency_us;
        let latency = self.rng.range(lo, hi);
        for m in messages {
            self.send(m);
        }
        self.schedule(latency, Event::Persisted(id, epoch));
    }

    fn persisted(&mut self, id: NodeId, epoch: u64) {
        let now = self.now;
        let snapshot_interval = self.cfg.snapshot_interval;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.epoch != epoch || node.raw.is_none() {
            return;
        }
        let Some(ready) = node.busy.take() else {
            return;
        };
        let raw = node.raw.as_mut().expect("checked above");
        let write = ready.log_write();
        if !write.is_empty() {
            if let Err(e) = raw.storage_mut().write(&write) {
                self.ledger.violation(format!(
                    "node {id}: the core asked for an invalid write: {e}"
                ));
            }
            let storage = raw.storage();
            if let Some(first) = write.entries.first() {
                let prev_term = storage.term(first.index.prev()).unwrap_or_default();
                self.ledger.observe_persisted(id, prev_term, &write.entries);
                node.recent_writes.push_back((now, first.index));
                while node
                    .recent_writes
                    .front()
                    .is_some_and(|(t, _)| now - *t > 100_000)
                {
                    node.recent_writes.pop_front();
                }
            }
            let hs = storage.hard_state();
            self.ledger.observe_durable(id, hs.term, hs.commit);
        }
        let mut replies = Vec::new();
        let mut retire = Vec::new();
        if let Some(snap) = &ready.snapshot {
            match KvState::decode(&snap.data) {
                Ok(kv) => node.kv = kv,
                Err(e) => self
                    .ledger
                    .violation(format!("node {id}: snapshot does not decode: {e}")),
            }
            node.conf = snap.metadata.conf_state.clone();
            node.applied = snap.metadata.index;
            let covered: Vec<Index> = node
                .proposals
                .range(..=snap.metadata.index)
                .map(|(i, _)| *i)
                .collect();
            for i in covered {
                node.proposals.remove(&i); // outcome unknown: the client times out
            }
        }
        for entry in &ready.committed_entries {
            self.ledger.observe_applied(id, entry);
            match &entry.payload {
                EntryPayload::Normal(data) => match Command::decode(data) {
                    Ok(cmd) => {
                        let result = node.kv.apply(&cmd);
                        if let Some((term, from)) = node.proposals.remove(&entry.index) {
                            let reply = if term == entry.term {
                                Reply::Done(result)
                            } else {
                                Reply::Failed
                            };
                            replies.push((from, reply));
                        }
                    }
                    Err(e) => self
                        .ledger
                        .violation(format!("node {id}: bad command at {}: {e}", entry.index)),
                },
                EntryPayload::ConfChange(cc) => {
                    if let Ok(next) = node.conf.apply(cc) {
                        node.conf = next;
                        if cc.kind == ConfChangeKind::Remove {
                            retire.push(cc.node);
                        }
                    }
                    if let Some((_, from)) = node.proposals.remove(&entry.index) {
                        replies.push((from, Reply::Failed));
                    }
                }
                EntryPayload::Empty => {
                    if let Some((_, from)) = node.proposals.remove(&entry.index) {
                        replies.push((from, Reply::Failed));
                    }
                }
            }
            node.applied = entry.index;
            let first = raw.storage().first_index().unwrap_or_default();
            if entry.index.0 + 1 >= first.0 + snapshot_interval {
                let snapshot = Snapshot {
                    metadata: SnapshotMetadata {
                        index: entry.index,
                        term: entry.term,
                        conf_state: node.conf.clone(),
                    },
                    data: node.kv.encode(),
                };
                match raw.storage_mut().compact(snapshot) {
                    Ok(()) | Err(StorageError::SnapshotOutOfDate) => {}
                    Err(e) => self
                        .ledger
                        .violation(format!("node {id}: compaction failed: {e}")),
                }
            }
        }
        for rs in &ready.read_states {
            if let Some(read) = node.reads.remove(&rs.context) {
                node.ready_reads.push((rs.index, read));
            }
        }
        let applied = node.applied;
        let (serve, wait): (Vec<_>, Vec<_>) =
            node.ready_reads.drain(..).partition(|(i, _)| *i <= applied);
        node.ready_reads = wait;
        for (_, read) in serve {
            replies.push((read.from, Reply::Read(node.kv.get(read.key))));
        }
        raw.advance();
        let inbox: Vec<Message> = node.inbox.drain(..).collect();
        let ticks = std::mem::take(&mut node.missed_ticks);
        for m in ready.persisted_messages {
            self.send(m);
        }
        for (to, reply) in replies {
            let delay = self.rng.range(100, 1_000);
            self.schedule(delay, Event::ToClient { to, reply });
        }
        for gone in retire {
            self.retire(gone);
        }
        if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
            for _ in 0..ticks {
                raw.tick();
            }
        }
        self.drive(id);
        for m in inbox {
            self.step_node(id, m);
        }
    }

    /// A committed removal: the member stops for good.
    fn retire(&mut self, id: NodeId) {
        if self.nodes.get(&id).is_some_and(|n| n.retired) {
            return;
        }
        let what = format!("node {id} leaves the cluster");
        self.trace(|| what);
        self.crash(id);
        if let Some(n) = self.nodes.get_mut(&id) {
            n.retired = true;
        }
        self.ledger.forget_node(id);
    }

    // ----- network --------------------------------------------------------------

    fn send(&mut self, m: Message) {
        if self.blocked.contains(&(m.from, m.to)) {
            return;
        }
        let drop_chance = self.drop_chance;
        if self.chance(drop_chance) {
            return;
        }
        let copies = if self.chance(self.cfg.duplicate_chance) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.range(self.cfg.min_delay_us, self.cfg.max_delay_us);
            if self.chance(self.cfg.long_delay_chance) {
                delay += self.rng.range(50_000, 400_000);
            }
            self.schedule(delay, Event::Deliver(m.clone()));
        }
    }

    // ----- clients ----------------------------------------------------------------

    fn client_next(&mut self, c: usize) {
        if self.clients[c].op.is_some() {
            return;
        }
        let key = self.rng.range(0, self.cfg.keys as u64) as Key;
        let id = self.clients[c].next_op;
        self.clients[c].next_op += 1;
        let value = (c as u64 + 1) * 1_000_000 + id;
        let request = match self.rng.range(0, 10) {
            0..=3 => Request::Put { key, value },
            4..=7 => Request::Get { key },
            _ => {
                let expected = self.recent_value(key);
                Request::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        };
        self.clients[c].op = Some(ClientOp {
            id,
            request: request.clone(),
            invoke: self.now,
        });
        let from = ClientRef { client: c, op: id };
        let timeout = self.cfg.client_timeout_us;
        self.schedule(timeout, Event::ClientTimeout(from));
        self.send_request(from, request);
    }

    /// A value the key recently had, so compare-and-swap sometimes succeeds.
    fn recent_value(&mut self, key: Key) -> Option<Value> {
        let seen: Vec<Option<Value>> = self
            .history
            .iter()
            .rev()
            .take(20)
            .filter_map(|op| match (&op.op, &op.outcome) {
                (lin::Op::Get { key: k }, lin::Outcome::Read(v)) if k[0] == key => Some(
                    v.as_ref()
                        .map(|b| u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))),
                ),
                _ => None,
            })
            .collect();
        self.pick(&seen).flatten()
    }

    fn send_request(&mut self, from: ClientRef, request: Request) {
        let node = self.clients[from.client].target;
        let delay = self.rng.range(100, 1_000);
        self.schedule(
            delay,
            Event::ToNode {
                node,
                from,
                request,
            },
        );
    }

    fn node_request(&mut self, id: NodeId, from: ClientRef, request: Request) {
        let planted = self.cfg.planted;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(raw) = node.raw.as_mut() else { return };
        let request_id = (from.client as u64) << 32 | from.op;
        let result = match request {
            Request::Get { key } if planted == Planted::StaleReads => {
                Ok(Some(Reply::Read(node.kv.get(key))))
            }
            Request::Get { key } => {
                let context = request_id.to_le_bytes().to_vec();
                raw.request_read(context.clone()).map(|()| {
                    node.reads.insert(context, PendingRead { from, key });
                    None
                })
            }
            Request::Put { key, value } => {
                let cmd = Command::Put {
                    request: request_id,
                    key,
                    value,
                };
                raw.propose(cmd.encode()).map(|p| {
                    node.proposals.insert(p.index, (p.term, from));
                    None
                })
            }
            Request::Cas { key, expected, new } => {
                let cmd = Command::Cas {
                    request: request_id,
                    key,
                    expected,
                    new,
                };
                raw.propose(cmd.encode()).map(|p| {
                    node.proposals.insert(p.index, (p.term, from));
                    None
                })
            }
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(ProposeError::NotLeader { leader_hint }) => Some(Reply::Redirect(leader_hint)),
            Err(_) => Some(Reply::Retry),
        };
        if let Some(reply) = reply {
            let delay = self.rng.range(100, 1_000);
            self.schedule(delay, Event::ToClient { to: from, reply });
        }
        self.drive(id);
    }

    fn client_reply(&mut self, to: ClientRef, reply: Reply) {
        let Some(op) = self.clients[to.client]
            .op
            .as_ref()
            .filter(|op| op.id == to.op)
        else {
            return; // a late reply to an operation that already timed out
        };
        let request = op.request.clone();
        let outcome = match (&request, reply) {
            (_, Reply::Redirect(hint)) => {
                let members = self.members();
                let target = if !hint.is_none() && members.contains(&hint) {
                    hint
                } else {
                    self.pick(&members).unwrap_or(NodeId(1))
                };
                self.clients[to.client].target = target;
                let delay = if hint.is_none() { 20_000 } else { 1_000 };
                self.schedule(
                    delay,
                    Event::ToNode {
                        node: target,
                        from: to,
                        request,
                    },
                );
                return;
            }
            (_, Reply::Retry) => {
                self.schedule(
                    20_000,
                    Event::ToNode {
                        node: self.clients[to.client].target,
                        from: to,
                        request,
                    },
                );
                return;
            }
            (Request::Put { .. }, Reply::Done(Applied::Put)) => lin::Outcome::Done,
            (Request::Cas { .. }, Reply::Done(Applied::Cas { swapped })) => {
                lin::Outcome::Swapped(swapped)
            }
            (Request::Get { .. }, Reply::Read(v)) => {
                lin::Outcome::Read(v.map(|v| v.to_le_bytes().to_vec()))
            }
            (_, Reply::Failed) => lin::Outcome::Failed,
            (request, reply) => {
                self.ledger
                    .violation(format!("reply {reply:?} does not fit request {request:?}"));
                lin::Outcome::Failed
            }
        };
        if self.settling && matches!(outcome, lin::Outcome::Done | lin::Outcome::Swapped(_)) {
            self.ok_after_settle += 1;
        }
        self.complete(to.client, outcome);
    }

    fn complete(&mut self, client: usize, outcome: lin::Outcome) {
        let Some(op) = self.clients[client].op.take() else {
            return;
        };
        self.trace(|| {
            let seen = match &outcome {
                lin::Outcome::Read(Some(v)) if v.len() == 8 => {
                    format!(
                        "Read({})",
                        u64::from_le_bytes(v[..8].try_into().expect("8 bytes"))
                    )
                }
                other => format!("{other:?}"),
            };
            format!("client {client} {:?} -> {seen}", op.request)
        });
        let lin_op = match op.request {
            Request::Put { key, value } => lin::Op::Put {
                key: vec![key],
                value: value.to_le_bytes().to_vec(),
            },
            Request::Get { key } => lin::Op::Get { key: vec![key] },
            Request::Cas { key, expected, new } => lin::Op::Cas {
                key: vec![key],
                expected: expected.map(|v| v.to_le_bytes().to_vec()),
                new: new.to_le_bytes().to_vec(),
            },
        };
        self.history.push(lin::Operation {
            client: client as u64,
            invoke: op.invoke,
            complete: self.now,
            op: lin_op,
            outcome,
        });
        let think = self.rng.range(0, 30_000);
        self.schedule(think, Event::ClientNext(client));
    }

    // ----- the nemesis --------------------------------------------------------------

    fn nemesis(&mut self) {
        if self.settling {
            return;
        }
        self.faults += 1;
        let live: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.raw.is_some())
            .map(|n| n.id)
            .collect();
        let members = self.members();
        let choice = self.rng.range(0, 100);
        match choice {
            0..=11 => {
                // Crash the leader, often right after it took new entries.
                if let Some(id) = self.leader() {
                    self.trace(|| format!("crash leader {id}"));
                    self.crash(id);
                    let after = self.rng.range(5_000, 300_000);
                    self.schedule(after, Event::Restart(id));
                }
            }
            12..=24 => {
                if let Some(id) = self.pick(&live) {
                    self.trace(|| format!("crash node {id}"));
                    self.crash(id);
                    let (lo, hi) = self.cfg.restart_delay_us;
                    let after = self.rng.range(lo, hi);
                    self.schedule(after, Event::Restart(id));
                }
            }
            25..=39 => {
                // Symmetric partition into two groups.
                let mut side = BTreeSet::new();
                for &id in &members {
                    if self.rng.range(0, 2) == 0 {
                        side.insert(id);
                    }
                }
                self.trace(|| format!("partition {side:?} from the rest"));
                for &a in &members {
                    for &b in &members {
                        if side.contains(&a) != side.contains(&b) {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.schedule_heal();
            }
            40..=49 => {
                if let Some(leader) = self.leader() {
                    self.trace(|| format!("isolate leader {leader}"));
                    for &b in &members {
                        if b != leader {
                            self.blocked.insert((leader, b));
                            self.blocked.insert((b, leader));
                        }
                    }
                    self.schedule_heal();
                }
            }
            50..=59 => {
                // One-way partition: some node stops hearing some others.
                if let Some(to) = self.pick(&members) {
                    let n = self.rng.range(1, members.len() as u64);
                    for _ in 0..n {
                        if let Some(from) = self.pick(&members) {
                            if from != to {
                                self.blocked.insert((from, to));
                            }
                        }
                    }
                    self.trace(|| format!("one-way partition into node {to}"));
                    self.schedule_heal();
                }
            }
            60..=67 => {
                self.drop_chance = self.cfg.lossy_drop_chance;
                self.trace(|| format!("lossy network ({}%)", (self.drop_chance * 100.0) as u32));
                let after = self.rng.range(100_000, 1_000_000);
                self.schedule(after, Event::EndLossy);
            }
            68..=77 => {
                if let Some(leader) = self.leader() {
                    let voters: Vec<NodeId> = self.nodes[&leader]
                        .raw
                        .as_ref()
                        .map(|r| r.conf_state().voters.iter().copied().collect())
                        .unwrap_or_default();
                    if let Some(target) = self.pick(&voters) {
                        self.trace(|| format!("transfer leadership {leader} -> {target}"));
                        if let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut())
                        {
                            let _ = raw.transfer_leader(target);
                        }
                        self.drive(leader);
                    }
                }
            }
            _ => self.membership_step(),
        }
    }

    fn schedule_heal(&mut self) {
        let after = self.rng.range(100_000, 2_000_000);
        self.schedule(after, Event::Heal);
    }

    /// Adds a learner, promotes one, or removes a member, through the leader.
    fn membership_step(&mut self) {
        let Some(leader) = self.leader() else { return };
        let Some(raw) = self.nodes.get(&leader).and_then(|n| n.raw.as_ref()) else {
            return;
        };
        let status = raw.status();
        let conf = status.conf_state.clone();
        let members = conf.voters.len() + conf.learners.len();
        let learners: Vec<NodeId> = conf.learners.iter().copied().collect();
        let all: Vec<NodeId> = conf.members().collect();
        let caught_up: Vec<NodeId> = status
            .peers
            .iter()
            .filter(|p| p.is_learner && p.matched.0 + 5 >= status.commit.0)
            .map(|p| p.id)
            .collect();
        // Try the three kinds of step in a random order; take the first that applies.
        let start = self.rng.range(0, 3);
        let mut change = None;
        for k in 0..3 {
            let (kind, id) = match (start + k) % 3 {
                0 if members < self.cfg.max_members && self.next_node_id < 20 => {
                    self.next_node_id += 1;
                    (ConfChangeKind::AddLearner, NodeId(self.next_node_id - 1))
                }
                1 if !caught_up.is_empty() => (
                    ConfChangeKind::PromoteLearner,
                    self.pick(&caught_up).expect("not empty"),
                ),
                2 if conf.voters.len() > 3 || !learners.is_empty() => {
                    let candidates: Vec<NodeId> = if conf.voters.len() > 3 {
                        all.clone()
                    } else {
                        learners.clone()
                    };
                    (
                        ConfChangeKind::Remove,
                        self.pick(&candidates).expect("not empty"),
                    )
                }
                _ => continue,
            };
            change = Some(ConfChange {
                kind,
                node: id,
                context: vec![],
            });
            break;
        }
        let Some(change) = change else { return };
        let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()) else {
            return;
        };
        let result = raw.propose_conf_change(change.clone());
        self.trace(|| {
            format!(
                "leader {leader} proposes {:?} {}: {:?}",
                change.kind,
                change.node,
                result.as_ref().map(|p| p.index)
            )
        });
        if result.is_ok() && change.kind == ConfChangeKind::AddLearner {
            self.start_node(change.node, MemStorage::new());
        }
        self.drive(leader);
    }

    // ----- the loop ------------------------------------------------------------------

    pub fn run(mut self) -> SimReport {
        while let Some(Scheduled { time, event, .. }) = self.queue.pop() {
            self.now = time;
            self.steps += 1;
            match event {
                Event::Tick(id, epoch) => {
                    let tick_us = self.cfg.tick_us;
                    let Some(node) = self.nodes.get_mut(&id) else {
                        continue;
                    };
                    if node.epoch != epoch || node.raw.is_none() {
                        continue;
                    }
                    if node.busy.is_some() {
                        node.missed_ticks += 1;
                    } else if let Some(raw) = node.raw.as_mut() {
                        raw.tick();
                    }
                    self.schedule(tick_us, Event::Tick(id, epoch));
                    self.drive(id);
                }
                Event::Deliver(m) => {
                    if self.blocked.contains(&(m.from, m.to)) {
                        continue;
                    }
                    let to = m.to;
                    self.step_node(to, m);
                }
                Event::Persisted(id, epoch) => self.persisted(id, epoch),
                Event::ClientNext(c) => {
                    if !self.finished() {
                        self.client_next(c)
                    }
                }
                Event::ToNode {
                    node,
                    from,
                    request,
                } => self.node_request(node, from, request),
                Event::ToClient { to, reply } => self.client_reply(to, reply),
                Event::ClientTimeout(r) => {
                    if self.clients[r.client]
                        .op
                        .as_ref()
                        .is_some_and(|op| op.id == r.op)
                    {
                        self.complete(r.client, lin::Outcome::Unknown);
                        // The node may be gone: try another next time.
                        let members = self.members();
                        if let Some(target) = self.pick(&members) {
                            self.clients[r.client].target = target;
                        }
                    }
                }
                Event::Nemesis => {
                    self.nemesis();
                    let next = self.rng.range(
                        self.cfg.nemesis_interval_us / 2,
                        self.cfg.nemesis_interval_us * 3 / 2,
                    );
                    if !self.settling {
                        self.schedule(next, Event::Nemesis);
                    }
                }
                Event::Restart(id) => {
                    if !self.settling {
                        self.trace(|| format!("restart node {id}"));
                        self.restart(id);
                    }
                }
                Event::Heal => {
                    if !self.blocked.is_empty() {
                        self.trace(|| "heal partitions".to_string());
                    }
                    self.blocked.clear();
                }
                Event::EndLossy => self.drop_chance = 0.0,
                Event::Settle => {
                    self.trace(|| "settle: heal everything, restart every node".to_string());
                    self.settling = true;
                    self.settle_start = self.now;
                    self.blocked.clear();
                    self.drop_chance = 0.0;
                    let down: Vec<NodeId> = self
                        .nodes
                        .values()
                        .filter(|n| n.raw.is_none())
                        .map(|n| n.id)
                        .collect();
                    for id in down {
                        self.restart(id);
                    }
                }
                Event::Finish => break,
            }
        }
        self.finish()
    }

    fn finished(&self) -> bool {
        self.now
            >= self.cfg.fault_duration_us + self.cfg.settle_duration_us - self.cfg.client_timeout_us
    }

    fn finish(mut self) -> SimReport {
        // Operations still open may or may not have happened.
        for c in 0..self.clients.len() {
            if self.clients[c].op.is_some() {
                self.complete(c, lin::Outcome::Unknown);
            }
        }
        if self.ok_after_settle == 0 {
            self.ledger.violation(format!(
                "liveness: no write completed in the {} ms after every fault healed",
                self.cfg.settle_duration_us / 1000
            ));
        }
        match lin::check(&self.history) {
            lin::Verdict::Linearizable => {}
            lin::Verdict::Violation { key, message, .. } => self
                .ledger
                .violation(format!("linearizability: key {key:?}: {message}")),
            lin::Verdict::Inconclusive { key, explored } => self.ledger.violation(format!(
                "linearizability: key {key:?} inconclusive after {explored} states"
            )),
        }
        let ok_ops = self
            .history
            .iter()
            .filter(|o| !matches!(o.outcome, lin::Outcome::Failed | lin::Outcome::Unknown))
            .count();
        SimReport {
            seed: self.cfg.seed,
            steps: self.steps,
            faults: self.faults,
            ops: self.history.len(),
            ok_ops,
            applied_entries: self.ledger.applied_count(),
            conf_changes: self.ledger.conf_changes(),
            elections: self.elections,
            violations: std::mem::take(&mut self.ledger.violations),
        }
    }
}
