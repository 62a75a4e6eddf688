//! Proposal waiters: who waits for which log position, and how each is
//! answered when that position is applied, taken by another leader's entry,
//! or passed over by a snapshot. No I/O.
//!
//! An entry is its index and term: a waiter whose index comes back with a
//! different term lost its entry to a new leader (its write is in no log, a
//! retry is safe); one whose index a snapshot covered has an unknown outcome
//! (never retried).

use std::collections::BTreeMap;

use nod_raft::{Entry, Index, Term};

use super::platform::{Replies, Reply};
use super::request::{Applied, DriverError};
use crate::metrics::Metrics;

pub(crate) struct Waiters<R: Replies> {
    by_index: BTreeMap<Index, (Term, R::Reply<Applied>)>,
}

impl<R: Replies> Waiters<R> {
    pub fn new() -> Self {
        Waiters {
            by_index: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, index: Index, term: Term, reply: R::Reply<Applied>) {
        self.by_index.insert(index, (term, reply));
    }

    /// Fails every waiter below `index` with `e`.
    pub fn fail_below(&mut self, index: Index, e: &DriverError, metrics: &Metrics) {
        while let Some((i, _)) = self.by_index.first_key_value() {
            if *i >= index {
                break;
            }
            if let Some((_, (_, reply))) = self.by_index.pop_first() {
                metrics.proposals_failed.inc();
                metrics.proposals_pending.dec();
                reply.send(Err(e.clone()));
            }
        }
    }

    /// The waiter for `entry`, if it waits for exactly this entry. Waiters
    /// below it were passed over and are failed; one at its index with
    /// another term lost its entry.
    pub fn take(&mut self, entry: &Entry, metrics: &Metrics) -> Option<R::Reply<Applied>> {
        self.fail_below(entry.index, &DriverError::Timeout, metrics);
        let (term, reply) = match self.by_index.first_key_value() {
            Some((i, _)) if *i == entry.index => self.by_index.pop_first()?.1,
            _ => return None,
        };
        if term == entry.term {
            return Some(reply);
        }
        metrics.proposals_failed.inc();
        metrics.proposals_pending.dec();
        reply.send(Err(DriverError::LeaderChanged));
        None
    }

    /// Frees the slots of callers that gave up.
    pub fn forget_closed(&mut self) {
        self.by_index.retain(|_, (_, r)| !r.is_closed());
    }

    pub fn fail_all(&mut self, e: &DriverError) {
        for (_, (_, r)) in std::mem::take(&mut self.by_index) {
            r.send(Err(e.clone()));
        }
    }
}
