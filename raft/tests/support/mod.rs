//! A cluster of in-memory nodes driven step by step, for paper tests, golden
//! transcripts and benchmarks. It follows the driver contract of `RawNode`
//! (send `messages`, persist, send `persisted_messages`, apply, advance) and
//! can describe every step in words for transcripts.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use nod_raft::{
    AppendResult, ConfState, Config, Entry, EntryPayload, Index, MemStorage, Message, MessageBody,
    NodeId, Proposed, RawNode, ReadState, Role, StorageWrite,
};

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, RawNode<MemStorage>>,
    pub down: BTreeMap<NodeId, MemStorage>,
    pub inflight: Vec<Message>,
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    pub read_states: BTreeMap<NodeId, Vec<ReadState>>,
    pub transcript: Option<String>,
    /// Record applied entries (tests); benchmarks turn it off.
    pub keep_applied: bool,
    tweak: fn(&mut Config),
}

pub fn no_tweak(_: &mut Config) {}

pub fn describe_message(m: &Message) -> String {
    let body = match &m.body {
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
            quiet,
        } => {
            let es: Vec<String> = entries.iter().map(describe_entry).collect();
            format!(
                "Append prev=({prev_term},{prev_index}) commit={commit} [{}]{}",
                es.join(", "),
                if *quiet { " quiet" } else { "" }
            )
        }
        MessageBody::AppendResponse {
            result: AppendResult::Accepted { last_index },
        } => {
            format!("AppendResponse accepted last={last_index}")
        }
        MessageBody::AppendResponse {
            result:
                AppendResult::Rejected {
                    rejected,
                    hint_index,
                    hint_term,
                },
        } => {
            format!("AppendResponse rejected {rejected} hint=({hint_term},{hint_index})")
        }
        MessageBody::Heartbeat { commit, read_round } => {
            format!("Heartbeat commit={commit} round={read_round}")
        }
        MessageBody::HeartbeatResponse { read_round } => {
            format!("HeartbeatResponse round={read_round}")
        }
        MessageBody::Vote {
            pre_vote,
            last_index,
            last_term,
            transfer,
        } => format!(
            "{} last=({last_term},{last_index}){}",
            if *pre_vote { "PreVote" } else { "Vote" },
            if *transfer { " transfer" } else { "" }
        ),
        MessageBody::VoteResponse { pre_vote, granted } => format!(
            "{} {}",
            if *pre_vote {
                "PreVoteResponse"
            } else {
                "VoteResponse"
            },
            if *granted { "granted" } else { "rejected" }
        ),
        MessageBody::Snapshot { snapshot } => format!(
            "Snapshot index={} term={} voters={:?} learners={:?}",
            snapshot.metadata.index,
            snapshot.metadata.term,
            ids(&snapshot.metadata.conf_state.voters),
            ids(&snapshot.metadata.conf_state.learners)
        ),
        MessageBody::TimeoutNow => "TimeoutNow".to_string(),
        MessageBody::ReadIndex { context } => {
            format!("ReadIndex ctx={}", String::from_utf8_lossy(context))
        }
        MessageBody::ReadIndexResponse { context, index } => {
            format!(
                "ReadIndexResponse ctx={} index={index}",
                String::from_utf8_lossy(context)
            )
        }
    };
    format!("{}->{} term={} {body}", m.from, m.to, m.term)
}

pub fn ids(set: &BTreeSet<NodeId>) -> Vec<u64> {
    set.iter().map(|n| n.0).collect()
}

pub fn describe_entry(e: &Entry) -> String {
    let what = match &e.payload {
        EntryPayload::Empty => "empty".to_string(),
        EntryPayload::Normal(d) => format!("{:?}", String::from_utf8_lossy(d)),
        EntryPayload::ConfChange(cc) => format!("{:?} {}", cc.kind, cc.node),
    };
    format!("{}/{} {what}", e.term, e.index)
}

impl Cluster {
    /// `n` founding voters with ids 1..=n.
    pub fn new(n: u64, tweak: fn(&mut Config)) -> Cluster {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            down: BTreeMap::new(),
            inflight: Vec::new(),
            blocked: BTreeSet::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            transcript: None,
            keep_applied: true,
            tweak,
        };
        let conf = ConfState::with_voters((1..=n).map(NodeId));
        for id in 1..=n {
            c.start(
                NodeId(id),
                MemStorage::new_bootstrap(conf.clone(), Vec::new()),
            );
        }
        c
    }

    pub fn config(&self, id: NodeId) -> Config {
        let mut cfg = Config::new(id);
        (self.tweak)(&mut cfg);
        cfg
    }

    pub fn start(&mut self, id: NodeId, storage: MemStorage) {
        let raw = RawNode::new(self.config(id), storage).expect("valid config and storage");
        self.nodes.insert(id, raw);
    }

    /// A new, empty node (not yet a member anywhere).
    pub fn add_empty_node(&mut self, id: NodeId) {
        self.start(id, MemStorage::new());
    }

    pub fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes
            .get_mut(&NodeId(id))
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn say(&mut self, line: String) {
        if let Some(t) = self.transcript.as_mut() {
            writeln!(t, "{line}").expect("writing to a string");
        }
    }

    /// Handles one node's Ready as a driver would. Returns whether there was one.
    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let Some(raw) = self.nodes.get_mut(&id) else {
            return false;
        };
        if !raw.has_ready() {
            return false;
        }
        let ready = raw.ready().expect("memory storage");
        let mut lines = Vec::new();
        if self.transcript.is_some() {
            if let Some(ss) = ready.soft_state {
                lines.push(format!("{id}: becomes {} (leader {})", ss.role, ss.leader));
            }
            if let Some(hs) = ready.hard_state {
                lines.push(format!(
                    "{id}: persist term={} vote={} commit={}",
                    hs.term, hs.vote, hs.commit
                ));
            }
            if let Some(s) = &ready.snapshot {
                lines.push(format!(
                    "{id}: persist snapshot index={} term={}",
                    s.metadata.index, s.metadata.term
                ));
            }
            for e in &ready.entries {
                lines.push(format!("{id}: persist {}", describe_entry(e)));
            }
            for e in &ready.committed_entries {
                lines.push(format!("{id}: apply {}", describe_entry(e)));
            }
            for rs in &ready.read_states {
                let ctx = String::from_utf8_lossy(&rs.context);
                lines.push(format!("{id}: read ready ctx={ctx} index={}", rs.index));
            }
        }
        raw.storage_mut()
            .write(&ready.log_write())
            .expect("the core asks for valid writes");
        if self.keep_applied {
            self.applied
                .entry(id)
                .or_default()
                .extend(ready.committed_entries.iter().cloned());
        }
        self.read_states
            .entry(id)
            .or_default()
            .extend(ready.read_states.iter().cloned());
        self.inflight.extend(ready.messages);
        self.inflight.extend(ready.persisted_messages);
        raw.advance();
        raw.check_invariants();
        for l in lines {
            self.say(l);
        }
        true
    }

    /// Takes the messages in flight from `from` to `to`, leaving the rest.
    pub fn take_inflight(&mut self, from: u64, to: u64) -> Vec<Message> {
        let (mine, rest): (Vec<Message>, Vec<Message>) = self
            .inflight
            .drain(..)
            .partition(|m| m.from == NodeId(from) && m.to == NodeId(to));
        self.inflight = rest;
        mine
    }

    /// Delivers every message in flight (dropping blocked ones). Returns whether any moved.
    pub fn deliver(&mut self) -> bool {
        let msgs = std::mem::take(&mut self.inflight);
        let any = !msgs.is_empty();
        for m in msgs {
            if self.blocked.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                if self.transcript.is_some() {
                    self.say(format!("  dropped {}", describe_message(&m)));
                }
                continue;
            }
            if self.transcript.is_some() {
                self.say(format!("  {}", describe_message(&m)));
            }
            let to = m.to;
            let raw = self.nodes.get_mut(&to).expect("checked above");
            raw.step(m).expect("a correct peer's message is accepted");
            raw.check_invariants();
        }
        any
    }

    /// Processes Readies and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let mut moved = false;
            for id in ids {
                moved |= self.process_ready(id);
            }
            moved |= self.deliver();
            if !moved {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    pub fn tick_all(&mut self, n: u64) {
        for _ in 0..n {
            for raw in self.nodes.values_mut() {
                raw.tick();
            }
        }
    }

    pub fn elect(&mut self, id: u64) {
        self.node(id).campaign();
        self.stabilize();
        assert_eq!(
            self.node(id).role(),
            Role::Leader,
            "node {id} should have won"
        );
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter(|r| r.role() == Role::Leader)
            .map(|r| (r.term(), r.id()))
            .max()
            .map(|(_, id)| id)
    }

    pub fn propose(&mut self, id: u64, data: &str) -> Proposed {
        self.node(id)
            .propose(data.as_bytes().to_vec())
            .expect("leader accepts")
    }

    pub fn isolate(&mut self, id: u64) {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in all {
            if other.0 != id {
                self.blocked.insert((NodeId(id), other));
                self.blocked.insert((other, NodeId(id)));
            }
        }
    }

    pub fn partition(&mut self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                self.blocked.insert((NodeId(x), NodeId(y)));
                self.blocked.insert((NodeId(y), NodeId(x)));
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Stops a node, keeping only what it persisted.
    pub fn crash(&mut self, id: u64) {
        if let Some(raw) = self.nodes.remove(&NodeId(id)) {
            self.down.insert(NodeId(id), raw.into_storage());
        }
        self.inflight.retain(|m| m.from != NodeId(id));
    }

    pub fn restart(&mut self, id: u64) {
        let storage = self.down.remove(&NodeId(id)).expect("node is down");
        self.applied.remove(&NodeId(id));
        self.start(NodeId(id), storage);
    }

    /// Normal entries node `id` applied, as strings.
    pub fn applied_data(&self, id: u64) -> Vec<String> {
        self.applied
            .get(&NodeId(id))
            .map(|es| {
                es.iter()
                    .filter_map(|e| match &e.payload {
                        EntryPayload::Normal(d) => Some(String::from_utf8_lossy(d).into_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn commit(&mut self, id: u64) -> Index {
        self.node(id).status().commit
    }
}
