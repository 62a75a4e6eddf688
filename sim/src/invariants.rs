//! Cluster-wide safety properties, checked after every simulated step
//! (paper §5.2, §5.3, §5.4, Figure 3). Each check records a violation with
//! the node, term and index involved instead of panicking, so a run reports
//! everything it found and the seed that replays it.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use nod_raft::{Entry, EntryPayload, Index, NodeId, Term};

pub fn digest(payload: &EntryPayload) -> u64 {
    let mut h = DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

#[derive(Default)]
pub struct Ledger {
    /// Election safety: at most one leader per term.
    leaders: BTreeMap<Term, NodeId>,
    /// Log matching: every copy of the entry (index, term) has the same
    /// payload and the same predecessor term.
    entries: BTreeMap<(Index, Term), (u64, Term)>,
    /// State machine safety: what was applied at each index, and by whom first.
    applied: BTreeMap<Index, (Term, u64, NodeId)>,
    /// Indexes of configuration entries applied somewhere.
    conf_changes: std::collections::BTreeSet<Index>,
    /// Per node: the highest durable term and commit index ever seen.
    durable: BTreeMap<NodeId, (Term, Index)>,
    pub violations: Vec<String>,
}

impl Ledger {
    pub fn violation(&mut self, message: String) {
        if self.violations.len() < 50 {
            self.violations.push(message);
        }
    }

    pub fn observe_leader(&mut self, node: NodeId, term: Term) {
        let known = *self.leaders.entry(term).or_insert(node);
        if known != node {
            self.violation(format!(
                "election safety: nodes {known} and {node} both lead term {term}"
            ));
        }
    }

    /// Entries a node made durable, with the term of the entry before the first.
    pub fn observe_persisted(&mut self, node: NodeId, prev_term: Term, entries: &[Entry]) {
        let mut prev = prev_term;
        for e in entries {
            let d = digest(&e.payload);
            match self.entries.get(&(e.index, e.term)) {
                None => {
                    self.entries.insert((e.index, e.term), (d, prev));
                }
                Some(&(known_digest, known_prev)) if known_digest != d || known_prev != prev => {
                    self.violation(format!(
                        "log matching: node {node} has entry {} of term {} differing from another copy (payload or previous term {} vs {})",
                        e.index, e.term, prev, known_prev
                    ));
                }
                Some(_) => {}
            }
            prev = e.term;
        }
    }

    pub fn observe_applied(&mut self, node: NodeId, entry: &Entry) {
        let d = digest(&entry.payload);
        if matches!(entry.payload, EntryPayload::ConfChange(_)) {
            self.conf_changes.insert(entry.index);
        }
        match self.applied.get(&entry.index) {
            None => {
                self.applied.insert(entry.index, (entry.term, d, node));
            }
            Some(&(term, digest, first)) if term != entry.term || digest != d => {
                self.violation(format!(
                    "state machine safety: node {node} applied term {} at index {} but node {first} applied term {term}",
                    entry.term, entry.index
                ));
            }
            Some(_) => {}
        }
    }

    /// Leader completeness: a new leader's log holds every entry applied anywhere.
    /// `term_at` gives the leader's term at an index (None if compacted into its snapshot,
    /// which only covers committed entries), `last` its last index.
    pub fn check_leader_complete(
        &mut self,
        node: NodeId,
        term: Term,
        last: Index,
        snapshot_index: Index,
        term_at: impl Fn(Index) -> Option<Term>,
    ) {
        let mut missing = None;
        for (&index, &(applied_term, _, _)) in self.applied.range(snapshot_index.next()..) {
            let have = if index > last { None } else { term_at(index) };
            if have != Some(applied_term) {
                missing = Some((index, applied_term, have));
                break;
            }
        }
        if let Some((index, applied_term, have)) = missing {
            self.violation(format!(
                "leader completeness: leader {node} of term {term} has {have:?} at index {index}, where term {applied_term} was applied"
            ));
        }
    }

    /// Terms and commit indexes of a node's durable state never go backwards.
    pub fn observe_durable(&mut self, node: NodeId, term: Term, commit: Index) {
        let (max_term, max_commit) = self.durable.get(&node).copied().unwrap_or_default();
        if term < max_term {
            self.violation(format!(
                "durable term of node {node} went back from {max_term} to {term}"
            ));
        }
        if commit < max_commit {
            self.violation(format!(
                "durable commit of node {node} went back from {max_commit} to {commit}"
            ));
        }
        self.durable
            .insert(node, (term.max(max_term), commit.max(max_commit)));
    }

    /// A node removed from the cluster may reuse nothing: forget its history.
    pub fn forget_node(&mut self, node: NodeId) {
        self.durable.remove(&node);
    }

    pub fn conf_changes(&self) -> usize {
        self.conf_changes.len()
    }

    pub fn applied_count(&self) -> usize {
        self.applied.len()
    }
}
