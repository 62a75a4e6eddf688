//! Batched ReadIndex (paper §8, thesis §6.4). Reads that arrive while the
//! heartbeats of a round have not yet left the node join that round, so one
//! quorum round of heartbeats answers all of them. A round started before a
//! read arrived never answers it: the acknowledgements could predate the read.

use std::collections::VecDeque;

use crate::types::{Index, NodeId};

#[derive(Clone, Debug)]
pub struct PendingRead {
    pub from: NodeId,
    pub context: Vec<u8>,
    /// The commit index when the read arrived: the read may be served once the
    /// state machine has applied it.
    pub index: Index,
    pub round: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    /// The newest round started.
    last_round: u64,
    /// A round whose heartbeats are still in the outbox.
    open: bool,
    pending: VecDeque<PendingRead>,
}

impl ReadOnly {
    pub fn last_round(&self) -> u64 {
        self.last_round
    }

    /// Queues a read to be answered when `round` is confirmed.
    pub fn add(&mut self, from: NodeId, context: Vec<u8>, index: Index, round: u64) {
        self.pending.push_back(PendingRead {
            from,
            context,
            index,
            round,
        });
    }

    /// The round whose heartbeats are still in the outbox, starting one if
    /// none is; returns it and whether it is new.
    pub fn start_round(&mut self) -> (u64, bool) {
        if self.open {
            (self.last_round, false)
        } else {
            self.last_round += 1;
            self.open = true;
            (self.last_round, true)
        }
    }

    /// The outbox was handed to the driver: later reads need a new round.
    pub fn close_round(&mut self) {
        self.open = false;
    }

    /// Removes and returns the reads of every round up to `confirmed`.
    pub fn release(&mut self, confirmed: u64) -> Vec<PendingRead> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|r| r.round <= confirmed) {
            out.extend(self.pending.pop_front());
        }
        out
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Leadership ended: pending reads are dropped (their callers time out and
    /// retry), but round numbers keep growing so old acks never match new rounds.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.open = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_batch_until_the_round_leaves() {
        let mut r = ReadOnly::default();
        assert_eq!(r.start_round(), (1, true), "the first read starts round 1");
        r.add(NodeId(1), b"a".to_vec(), Index(5), 1);
        assert_eq!(
            r.start_round(),
            (1, false),
            "the next joins it while it is open"
        );
        r.add(NodeId(2), b"b".to_vec(), Index(5), 1);
        r.close_round();
        assert_eq!(
            r.start_round(),
            (2, true),
            "after the outbox left, a new round"
        );
        r.add(NodeId(1), b"c".to_vec(), Index(6), 2);
        assert!(r.release(0).is_empty());
        let released: Vec<_> = r.release(1).into_iter().map(|p| p.context).collect();
        assert_eq!(released, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(r.pending_count(), 1);
        assert_eq!(r.release(2)[0].index, Index(6));
    }
}
