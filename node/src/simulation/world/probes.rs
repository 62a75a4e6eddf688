//! Reads aimed at leader changes: the moment a member becomes leader, a
//! prober reads every key through it (ReadIndex), before it has committed
//! anything in its term; and through a leader the nemesis cut off, while
//! the majority elects another. A new leader's commit index may lag what its
//! predecessor committed and acknowledged (Raft §8), so a read it answered
//! from there would miss an acknowledged write: the linearizability check
//! sees it. No I/O.

use nod_lincheck as lin;
use nod_proto::etcd::etcdserverpb::RangeRequest;

use super::{Event, World, KEYS};
use crate::driver::Request;
use crate::simulation::platform::Slot;

/// Probe reads take client numbers from here up (one each: a probe's reads
/// are concurrent).
const PROBE_CLIENTS: u64 = 1 << 32;

pub(super) struct Probe {
    pub(super) op: usize,
    slot: Slot<()>,
    node: usize,
    key: Vec<u8>,
}

impl World {
    /// Member `i` just became leader: probe it soon (before its first
    /// commit, most of the time).
    pub(super) fn new_leader(&mut self, i: usize) {
        if self.faults_on && self.cfg.leader_probes {
            let delay = self.rng.range(0, 3);
            self.at(delay, Event::Probe(i));
        }
    }

    pub(super) fn probe(&mut self, i: usize) {
        let clock = self.clock(i);
        let Some(core) = self.members[i].core.as_mut() else {
            return;
        };
        core.set_time(clock);
        for key in KEYS {
            let op = self.history.len();
            self.history.push(lin::Operation {
                client: PROBE_CLIENTS + op as u64,
                invoke: self.now,
                complete: self.now,
                op: lin::Op::Get { key: key.to_vec() },
                outcome: lin::Outcome::Unknown,
            });
            let (reply, slot) = Slot::new();
            core.on_request(Request::ReadIndex { reply });
            self.probes.push(Probe {
                op,
                slot,
                node: i,
                key: key.to_vec(),
            });
        }
        trace!(self, "probe reads at member {}", i + 1);
        self.after_step(i);
    }

    /// Records the probe reads that were answered.
    pub(super) fn poll_probes(&mut self) {
        let mut waiting = Vec::new();
        for p in std::mem::take(&mut self.probes) {
            let Some(result) = p.slot.take() else {
                waiting.push(p);
                continue;
            };
            let h = &mut self.history[p.op];
            h.complete = self.now;
            // A refused or lost read tells nothing: it stays Unknown.
            if result.is_err() {
                continue;
            }
            let Some(core) = self.members[p.node].core.as_ref() else {
                continue;
            };
            let range = RangeRequest {
                key: p.key,
                ..Default::default()
            };
            match core.shared().store().range(&range) {
                Ok(r) => {
                    let value = r.kvs.first().map(|kv| kv.value.clone());
                    trace!(
                        self,
                        "probe read #{} at member {}: {value:?}",
                        p.op,
                        p.node + 1
                    );
                    self.history[p.op].outcome = lin::Outcome::Read(value);
                }
                Err(e) => self.report.violations.push(format!("a read failed: {e}")),
            }
        }
        self.probes = waiting;
    }
}
