//! The lease workload: one actor grants a lease, attaches keys under
//! `/sim/lease/` to it, reads them back and revokes it (or lets it expire,
//! revoked by the leader through the log). Lease safety: once a revoke is
//! acknowledged, no read that starts later may see a key attached to that
//! lease, and once the faults stop no key is attached to a lease the store
//! no longer has. Kept apart from the linearizability history, whose model
//! knows nothing of expiry.

use std::collections::BTreeMap;

use nod_proto::etcd::etcdserverpb::{
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
};

use super::{Event, Time, World, CLIENT_TIMEOUT_MS};
use crate::command::Op;
use crate::driver::{Applied, DriverError, Request};
use crate::simulation::platform::Slot;
use crate::storage::KvError;

const LEASE_KEYS: &[&[u8]] = &[b"/sim/lease/a", b"/sim/lease/b"];

pub(super) enum LeaseWaiting {
    Grant(Slot<Applied>, i64),
    Put(Slot<Applied>, Vec<u8>, i64),
    Revoke(Slot<Applied>, i64),
    Read {
        slot: Slot<()>,
        node: usize,
        key: Vec<u8>,
        invoke: Time,
    },
}

#[derive(Default)]
pub(super) struct LeaseActor {
    pending: Option<(u64, LeaseWaiting)>,
    seq: u64,
    pub done: usize,
    lease: Option<i64>,
    /// When each revoke was acknowledged.
    revoked_at: BTreeMap<i64, Time>,
    /// The lease each written value was attached to.
    value_lease: BTreeMap<Vec<u8>, i64>,
}

impl LeaseActor {
    pub fn idle(&self) -> bool {
        self.pending.is_none()
    }
}

impl World {
    pub(super) fn lease_next(&mut self) {
        if self.leases.pending.is_some() || self.leases.done >= self.cfg.ops_per_client {
            return;
        }
        let Some(node) = self.random_live() else {
            self.at(50, Event::LeaseNext);
            return;
        };
        self.leases.seq += 1;
        let seq = self.leases.seq;
        let key = LEASE_KEYS[self.rng.range(0, LEASE_KEYS.len() as u64) as usize].to_vec();
        let choice = self.rng.range(0, 10);
        let (request, waiting) = match self.leases.lease {
            None if choice < 6 => {
                let id = 1_000 + seq as i64;
                let ttl = self.rng.range(1, 3) as i64;
                let (reply, slot) = Slot::new();
                (
                    Request::Propose {
                        caller: None,
                        trace: None,
                        op: Op::LeaseGrant(LeaseGrantRequest { id, ttl }),
                        reply,
                    },
                    LeaseWaiting::Grant(slot, id),
                )
            }
            Some(id) if choice < 6 => {
                let value = format!("lease-{id}-{seq}").into_bytes();
                let (reply, slot) = Slot::new();
                (
                    Request::Propose {
                        caller: None,
                        trace: None,
                        op: Op::Put(PutRequest {
                            key,
                            value: value.clone(),
                            lease: id,
                            ..Default::default()
                        }),
                        reply,
                    },
                    LeaseWaiting::Put(slot, value, id),
                )
            }
            Some(id) if choice < 8 => {
                let (reply, slot) = Slot::new();
                (
                    Request::Propose {
                        caller: None,
                        trace: None,
                        op: Op::LeaseRevoke(LeaseRevokeRequest { id }),
                        reply,
                    },
                    LeaseWaiting::Revoke(slot, id),
                )
            }
            _ => {
                let (reply, slot) = Slot::new();
                (
                    Request::ReadIndex { reply },
                    LeaseWaiting::Read {
                        slot,
                        node,
                        key,
                        invoke: self.now,
                    },
                )
            }
        };
        self.leases.pending = Some((seq, waiting));
        self.at(CLIENT_TIMEOUT_MS, Event::LeaseTimeout(seq));
        let clock = self.clock(node);
        let core = self.members[node]
            .core
            .as_mut()
            .expect("picked a live member");
        core.set_time(clock);
        core.on_request(request);
        self.after_step(node);
    }

    pub(super) fn lease_timeout(&mut self, seq: u64) {
        if self.leases.pending.as_ref().is_some_and(|(s, _)| *s == seq) {
            // Unknown outcome: a grant may have happened, a revoke too.
            self.leases.pending = None;
            self.leases.lease = None;
            self.leases.done += 1;
            self.at(1, Event::LeaseNext);
        }
    }

    pub(super) fn poll_lease(&mut self) {
        let Some((_, waiting)) = &self.leases.pending else {
            return;
        };
        let answered = match waiting {
            LeaseWaiting::Grant(slot, id) => slot.take().map(|r| {
                if r.is_ok() {
                    self.leases.lease = Some(*id);
                }
            }),
            LeaseWaiting::Put(slot, value, id) => slot.take().map(|r| match r {
                Ok(_) => {
                    self.leases.value_lease.insert(value.clone(), *id);
                }
                Err(DriverError::Kv(KvError::LeaseNotFound)) => self.leases.lease = None,
                Err(_) => {
                    // The put may still apply: remember its lease.
                    self.leases.value_lease.insert(value.clone(), *id);
                }
            }),
            LeaseWaiting::Revoke(slot, id) => slot.take().map(|r| {
                if r.is_ok() {
                    self.leases.revoked_at.insert(*id, self.now);
                    self.leases.lease = None;
                }
            }),
            LeaseWaiting::Read {
                slot,
                node,
                key,
                invoke,
            } => slot.take().map(|r| {
                let Some(core) = self.members[*node].core.as_ref() else {
                    return;
                };
                if r.is_err() {
                    return;
                }
                let range = RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                let Ok(found) = core.shared().store().range(&range) else {
                    return;
                };
                for kv in found.kvs {
                    let lease = self.leases.value_lease.get(&kv.value).copied();
                    if let Some(at) = lease.and_then(|l| self.leases.revoked_at.get(&l)) {
                        if *at < *invoke {
                            self.report.violations.push(format!(
                                "a read at {invoke} ms saw {} of lease {}, revoked at {at} ms",
                                String::from_utf8_lossy(&kv.value),
                                lease.unwrap_or_default()
                            ));
                        }
                    }
                }
            }),
        };
        if answered.is_some() {
            self.leases.pending = None;
            self.leases.done += 1;
            let think = self.rng.range(0, 200);
            self.at(think, Event::LeaseNext);
        }
    }

    /// Once the faults stop: no key is attached to a lease the store no
    /// longer has.
    pub(super) fn check_leases(&mut self) {
        for m in &self.members {
            let Some(core) = m.core.as_ref() else {
                continue;
            };
            let store = core.shared().store();
            let range = RangeRequest {
                key: b"/sim/lease/".to_vec(),
                range_end: b"/sim/lease0".to_vec(),
                ..Default::default()
            };
            let Ok(found) = store.range(&range) else {
                continue;
            };
            for kv in found.kvs {
                if kv.lease != 0 && !store.leases().contains_key(&kv.lease) {
                    self.report.violations.push(format!(
                        "member {} keeps {} attached to lease {}, which it no longer has",
                        m.id.0,
                        String::from_utf8_lossy(&kv.key),
                        kv.lease
                    ));
                }
            }
        }
    }
}
