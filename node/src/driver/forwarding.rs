//! Writes a follower hands to the leader. Each gets a command id (random
//! start per run, so a previous run's entry is never taken for ours) and
//! waits until this member applies the entry carrying its own origin and
//! that id. The leader answers where it put each write; another term's entry
//! at that index means ours is in no log (a retry is safe); an index passed
//! over means the outcome is unknown. No I/O.

use std::collections::BTreeMap;

use nod_raft::{Entry, Index, NodeId, Term};

use super::platform::{ForwardFailure, ForwardOutcome, Replies, Reply};
use super::request::{Applied, DriverError};
use crate::metrics::Metrics;
use nod_proto::nodserverpb::ProposeResult;

/// What a leader answers for a forwarded write it could not append because
/// it does not lead (`ProposeResult.leader` names who does, 0: nobody).
pub const FORWARD_NOT_LEADER: &str = "not leader";
/// `Peer.Propose` calls a follower keeps open to the leader; writes that
/// arrive meanwhile wait for an answer and go together in the next call.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 2;

pub(crate) struct Forwarding<R: Replies> {
    /// Writes handed to the leader, by command id.
    waiting: BTreeMap<u64, R::Reply<Applied>>,
    /// Where the leader put each, by index.
    placed: BTreeMap<Index, (Term, u64)>,
    /// This loop turn's writes, sent as one batch.
    queue: Vec<(u64, Vec<u8>)>,
    /// Calls awaiting the leader's answer, and that leader.
    in_flight: (NodeId, usize),
    next_id: u64,
}

/// A leader's answer for one command, as the driver sees it.
pub fn result_error(r: &ProposeResult) -> Option<DriverError> {
    if r.error.is_empty() {
        return None;
    }
    Some(match (r.error.as_str(), r.leader) {
        (FORWARD_NOT_LEADER, 0) => DriverError::NoLeader,
        (FORWARD_NOT_LEADER, l) => DriverError::NotLeader { leader: NodeId(l) },
        (other, _) => DriverError::Rejected(other.to_string()),
    })
}

/// The leader's answer for a command it could not append.
pub fn refusal(e: DriverError) -> ProposeResult {
    match e {
        DriverError::NotLeader { leader } => ProposeResult {
            error: FORWARD_NOT_LEADER.into(),
            leader: leader.0,
            ..Default::default()
        },
        DriverError::NoLeader => ProposeResult {
            error: FORWARD_NOT_LEADER.into(),
            ..Default::default()
        },
        other => ProposeResult {
            error: other.to_string(),
            ..Default::default()
        },
    }
}

impl<R: Replies> Forwarding<R> {
    pub fn new(first_id: u64) -> Self {
        Forwarding {
            waiting: BTreeMap::new(),
            placed: BTreeMap::new(),
            queue: Vec::new(),
            in_flight: (NodeId::NONE, 0),
            next_id: first_id,
        }
    }

    /// Queues a write for the leader; `encode` makes its command from its id.
    pub fn queue(&mut self, reply: R::Reply<Applied>, encode: impl FnOnce(u64) -> Vec<u8>) {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let id = self.next_id;
        self.queue.push((id, encode(id)));
        self.waiting.insert(id, reply);
    }

    /// Takes the queued writes, with their replies (this node just became leader).
    pub fn take_queued(&mut self) -> Vec<(Vec<u8>, R::Reply<Applied>)> {
        std::mem::take(&mut self.queue)
            .into_iter()
            .filter_map(|(id, data)| self.waiting.remove(&id).map(|r| (data, r)))
            .collect()
    }

    /// The batch to send to `leader` now, if any and if the window allows.
    pub fn batch_for(&mut self, leader: NodeId) -> Option<Vec<(u64, Vec<u8>)>> {
        if self.queue.is_empty() {
            return None;
        }
        if self.in_flight.0 != leader {
            self.in_flight = (leader, 0);
        }
        if self.in_flight.1 >= MAX_FORWARDS_IN_FLIGHT {
            // Sent when an answer comes back, with whatever else queued
            // meanwhile: under load, fewer and larger calls.
            return None;
        }
        Some(std::mem::take(&mut self.queue))
    }

    pub fn sent(&mut self, calls: usize) {
        self.in_flight.1 += calls;
    }

    /// The leader's answer to a batch. `applied` is this node's applied
    /// index; `term_at` reads the local log's term at an index.
    pub fn answered(
        &mut self,
        o: ForwardOutcome,
        applied: u64,
        term_at: impl Fn(Index) -> Option<Term>,
        metrics: &Metrics,
    ) {
        if self.in_flight.0 == o.leader {
            self.in_flight.1 = self.in_flight.1.saturating_sub(1);
        }
        let results = match o.result {
            Ok(r) => r,
            Err(failure) => {
                let e = match failure {
                    ForwardFailure::Refused(m) => DriverError::Rejected(m),
                    // No connection to the leader: nothing was sent, so the
                    // API layer tries again.
                    ForwardFailure::NotSent => DriverError::LeaderUnreachable,
                    ForwardFailure::Unknown => DriverError::Timeout,
                };
                for id in o.ids {
                    self.finish(id, Err(e.clone()), metrics);
                }
                return;
            }
        };
        let mut results = results.into_iter();
        for id in o.ids {
            let Some(r) = results.next() else {
                self.finish(id, Err(DriverError::Timeout), metrics);
                continue;
            };
            if !self.waiting.contains_key(&id) {
                continue; // applied already, or its caller gave up
            }
            if let Some(e) = result_error(&r) {
                self.finish(id, Err(e), metrics);
                continue;
            }
            let (index, term) = (Index(r.index), Term(r.term));
            if index.0 > applied {
                self.placed.insert(index, (term, id));
                continue;
            }
            // Applied here before the answer came, and not found by its id:
            // another entry holds that index, unless a snapshot covered it.
            let e = match term_at(index) {
                Some(t) if t != term => DriverError::LeaderChanged,
                _ => DriverError::Timeout,
            };
            self.finish(id, Err(e), metrics);
        }
    }

    /// Settles forwarded writes the leader placed below `entry` (skipped:
    /// unknown outcome) or at its index with another term (lost).
    pub fn settle(&mut self, entry: &Entry, metrics: &Metrics) {
        while let Some((i, _)) = self.placed.first_key_value() {
            if *i >= entry.index {
                break;
            }
            if let Some((_, (_, id))) = self.placed.pop_first() {
                self.finish(id, Err(DriverError::Timeout), metrics);
            }
        }
        if let Some((term, id)) = self.placed.remove(&entry.index) {
            if term != entry.term {
                self.finish(id, Err(DriverError::LeaderChanged), metrics);
            }
        }
    }

    /// The waiter of the write this member forwarded with command id `id`.
    pub fn take(&mut self, id: u64) -> Option<R::Reply<Applied>> {
        self.waiting.remove(&id)
    }

    pub fn finish(&mut self, id: u64, result: Result<Applied, DriverError>, metrics: &Metrics) {
        if let Some(reply) = self.waiting.remove(&id) {
            metrics.proposals_pending.dec();
            match &result {
                Ok(_) => metrics.proposals_committed.inc(),
                Err(_) => metrics.proposals_failed.inc(),
            }
            reply.send(result);
        }
    }

    pub fn fail_all(&mut self, e: &DriverError, metrics: &Metrics) {
        self.placed.clear();
        let ids: Vec<u64> = self.waiting.keys().copied().collect();
        for id in ids {
            self.finish(id, Err(e.clone()), metrics);
        }
    }

    pub fn forget_closed(&mut self) {
        self.waiting.retain(|_, r| !r.is_closed());
        let waiting = &self.waiting;
        self.placed.retain(|_, (_, id)| waiting.contains_key(id));
    }
}
