//! The key-value clients: each issues Put, Get (ReadIndex, then a read of
//! the member's store), compare-and-swap (a Txn) and Delete to a random live
//! member, one at a time, and records what it saw for the linearizability
//! check. No I/O.

use std::collections::BTreeMap;

use nod_lincheck as lin;
use nod_proto::etcd::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};

use super::{Event, World, CLIENT_TIMEOUT_MS, KEYS};
use crate::command::Op;
use crate::driver::{Applied, DriverError, Outcome, Request};
use crate::simulation::platform::Slot;
use crate::simulation::Planted;

pub(super) enum Waiting {
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

pub(super) struct Client {
    pub(super) done: usize,
    pub(super) pending: Option<(usize, Waiting)>,
    /// The last value this client saw for each key (its Cas expectation).
    pub(super) known: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

fn classify(e: &DriverError) -> lin::Outcome {
    match e {
        DriverError::Timeout | DriverError::Stopped => lin::Outcome::Unknown,
        _ => lin::Outcome::Failed,
    }
}

pub(super) fn op_key(op: &lin::Op) -> Option<Vec<u8>> {
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

impl World {
    pub(super) fn client_next(&mut self, c: usize) {
        if self.clients[c].pending.is_some() {
            return;
        }
        if self.clients[c].done >= self.cfg.ops_per_client {
            return;
        }
        let Some(node) = self.random_live() else {
            self.at(50, Event::ClientNext(c));
            return;
        };
        let key = KEYS[self.rng.range(0, KEYS.len() as u64) as usize].to_vec();
        let index = self.history.len();
        // Unique per operation, as the checker needs; a JSON document when
        // the run has indexes to fill.
        let value = if self.cfg.indexes {
            format!(r#"{{"c": {c}, "i": {index}}}"#).into_bytes()
        } else {
            format!("c{c}-{index}").into_bytes()
        };
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
                        caller: None,
                        trace: None,
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
                        caller: None,
                        trace: None,
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
                        caller: None,
                        trace: None,
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
        let clock = self.clock(node);
        let core = self.members[node]
            .core
            .as_mut()
            .expect("picked a live member");
        core.set_time(clock);
        core.on_request(request);
        self.after_step(node);
    }

    /// Reads the answers that arrived and moves their clients on.
    pub(super) fn poll_clients(&mut self) {
        self.poll_watchers();
        self.poll_lease();
        self.poll_probes();
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

    pub(super) fn clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.done >= self.cfg.ops_per_client && c.pending.is_none())
            && self.leases.done >= self.cfg.ops_per_client
            && self.leases.idle()
    }
}
