//! Linearizable reads (ReadIndex, §8 / thesis §6.4): reads queued during a
//! loop turn share one round; a read is answered once the state machine
//! has applied the index the round returned. A leader change fails the
//! rounds in flight (the old leader will not answer them). No I/O.

use std::collections::BTreeMap;

use nod_raft::{Index, ProposeError, RawNode, ReadState};

use super::platform::{Replies, Reply};
use super::request::DriverError;

pub(crate) struct Reads<R: Replies> {
    unsent: Vec<R::Reply<()>>,
    in_flight: BTreeMap<Vec<u8>, Vec<R::Reply<()>>>,
    ready: Vec<(Index, R::Reply<()>)>,
    seq: u64,
}

impl<R: Replies> Reads<R> {
    pub fn new() -> Self {
        Reads {
            unsent: Vec::new(),
            in_flight: BTreeMap::new(),
            ready: Vec::new(),
            seq: 0,
        }
    }

    pub fn queue(&mut self, reply: R::Reply<()>) {
        self.unsent.push(reply);
    }

    /// One ReadIndex round for every read queued since the last one.
    pub fn send<S: nod_raft::Storage>(
        &mut self,
        node: &mut RawNode<S>,
        error: impl Fn(ProposeError) -> DriverError,
    ) {
        if self.unsent.is_empty() {
            return;
        }
        self.seq += 1;
        let ctx = self.seq.to_be_bytes().to_vec();
        match node.request_read(ctx.clone()) {
            Ok(()) => {
                let readers = std::mem::take(&mut self.unsent);
                self.in_flight.insert(ctx, readers);
            }
            Err(e) => {
                let err = error(e);
                for r in self.unsent.drain(..) {
                    r.send(Err(err.clone()));
                }
            }
        }
    }

    /// Rounds the core confirmed: their reads wait for `applied`.
    pub fn confirmed(&mut self, states: Vec<ReadState>) {
        for rs in states {
            if let Some(readers) = self.in_flight.remove(&rs.context) {
                self.ready
                    .extend(readers.into_iter().map(|r| (rs.index, r)));
            }
        }
    }

    /// Answers the reads whose index is applied.
    pub fn serve(&mut self, applied: Index) {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.ready = later;
        for (_, r) in now {
            r.send(Ok(()));
        }
    }

    /// Rounds sent to a leader that is no longer leading will not be answered.
    pub fn leader_changed(&mut self) {
        for (_, rs) in std::mem::take(&mut self.in_flight) {
            for r in rs {
                r.send(Err(DriverError::LeaderChanged));
            }
        }
    }

    pub fn forget_closed(&mut self) {
        self.ready.retain(|(_, r)| !r.is_closed());
        self.in_flight.retain(|_, rs| {
            rs.retain(|r| !r.is_closed());
            !rs.is_empty()
        });
    }

    pub fn fail_all(&mut self, e: &DriverError) {
        for r in std::mem::take(&mut self.unsent) {
            r.send(Err(e.clone()));
        }
        for (_, rs) in std::mem::take(&mut self.in_flight) {
            for r in rs {
                r.send(Err(e.clone()));
            }
        }
        for (_, r) in std::mem::take(&mut self.ready) {
            r.send(Err(e.clone()));
        }
    }
}
