//! Applying committed entries to the MVCC state machine: runs of ordinary
//! entries under one hold of the watch hub and the store, written as one
//! batch, their callers answered after that write; a membership change
//! ends a run (it updates the peers, which reads the store). Watch events
//! are published under the hub lock, so a new watcher sees each event once.
//! No I/O of its own: the store is the platform's.

use std::sync::{MutexGuard, RwLockWriteGuard};

use nod_raft::{ConfChange, ConfChangeKind, Entry, EntryPayload, Role};

use super::platform::{Replies, Reply};
use super::request::{Applied, DriverError, Fatal, Outcome};
use super::{Core, Platform};
use crate::auth::{auth_command::Op as AuthOp, AuthApplied};
use crate::command::{self, Caller, IndexCommand, IndexOp, MemberAttributes, Op};
use crate::storage::backend::Backend;
use crate::storage::kv_store::AuthOutcome;
use crate::storage::{kv_store, KvError, KvStore};
use crate::watch_hub::HubState;
use nod_proto::etcd::etcdserverpb::{request_op, Member, TxnRequest};

/// The hub and the store, held while a run of entries is applied.
type Held<'a, B> = (MutexGuard<'a, HubState>, RwLockWriteGuard<'a, KvStore<B>>);

type Answer<P> = (
    <<P as Platform>::Replies as Replies>::Reply<Applied>,
    Result<Applied, DriverError>,
);

/// What an applied entry answers the request waiting for it. The entry is
/// applied either way; a refused request changed nothing but the applied
/// index. A failure of the node is the [`Fatal`] beside it, not one of these.
enum Verdict {
    Done(Outcome),
    /// The request's own error, for its caller.
    Refused(DriverError),
}

impl Verdict {
    fn into_result(self) -> Result<Outcome, DriverError> {
        match self {
            Verdict::Done(o) => Ok(o),
            Verdict::Refused(e) => Err(e),
        }
    }
}

/// Hands an applied write's watch events to the hub, first reading the
/// previous values a watcher asked for that apply left out, and gives back
/// the write's outcome (a refused request publishes nothing).
fn publish<R, B: Backend>(
    hub: &mut HubState,
    store: &KvStore<B>,
    applied: kv_store::Outcome<R>,
    outcome: impl FnOnce(R) -> Outcome,
) -> Result<Verdict, Fatal> {
    let mut a = match applied {
        kv_store::Outcome::Applied(a) => a,
        kv_store::Outcome::Refused(e) => return Ok(Verdict::Refused(DriverError::from(e))),
    };
    let revision = store.current_revision();
    if hub.wants_prev(revision, &a.events) {
        store.fill_prev(&mut a.events)?;
    }
    hub.publish(revision, &a.events);
    Ok(Verdict::Done(outcome(a.response)))
}

/// The outcome of a write that has no watch events to publish.
fn settled<R>(applied: kv_store::Outcome<R>, outcome: impl FnOnce(R) -> Outcome) -> Verdict {
    match applied {
        kv_store::Outcome::Applied(a) => Verdict::Done(outcome(a.response)),
        kv_store::Outcome::Refused(e) => Verdict::Refused(DriverError::from(e)),
    }
}

impl<P: Platform> Core<P> {
    pub(super) fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        let shared = self.shared.clone();
        let hub = shared.hub.clone();
        let mut held: Option<Held<'_, P::Backend>> = None;
        let mut answers = Vec::new();
        for entry in entries {
            if matches!(entry.payload, EntryPayload::ConfChange(_)) {
                if let Some((h, mut store)) = held.take() {
                    store.end_batch()?;
                    drop(store);
                    drop(h);
                }
                self.answer(std::mem::take(&mut answers));
                self.apply_conf_entry(entry)?;
                continue;
            }
            let (h, store) = held.get_or_insert_with(|| {
                let h = hub.lock();
                let mut store = shared.store_mut();
                store.begin_batch();
                (h, store)
            });
            if let Some(a) = self.apply_entry(store, h, entry)? {
                answers.push(a);
            }
        }
        if let Some((h, mut store)) = held.take() {
            store.end_batch()?;
            drop(store);
            drop(h);
        }
        self.answer(answers);
        Ok(())
    }

    fn answer(&self, answers: Vec<Answer<P>>) {
        let metrics = &self.shared.metrics;
        for (reply, result) in answers {
            metrics.proposals_pending.dec();
            match &result {
                Ok(_) => metrics.proposals_committed.inc(),
                Err(_) => metrics.proposals_failed.inc(),
            }
            reply.send(result);
        }
    }

    /// The request waiting for `entry` on this node, if any; fails the ones
    /// the entry shows were lost or passed over.
    fn take_waiter(&mut self, entry: &Entry) -> Option<<P::Replies as Replies>::Reply<Applied>> {
        let metrics = &self.shared.metrics;
        let waiter = self.waiters.take(entry, metrics);
        self.forwarding.settle(entry, metrics);
        waiter
    }

    /// Applies an empty or ordinary entry; returns the answer for whoever waits.
    fn apply_entry(
        &mut self,
        store: &mut KvStore<P::Backend>,
        hub: &mut HubState,
        entry: Entry,
    ) -> Result<Option<Answer<P>>, Fatal> {
        let applied = (entry.index.0, entry.term.0);
        let mut waiter = self.take_waiter(&entry);
        let result: Result<Outcome, DriverError> = match entry.payload {
            EntryPayload::Normal(data) => match command::decode(&data) {
                Err(e) => {
                    tracing::warn!(index = entry.index.0, error = %e, "applying an undecodable entry as a no-op");
                    store.apply_noop(applied)?;
                    Err(DriverError::Rejected(e.to_string()))
                }
                Ok(d) => {
                    if waiter.is_none() && d.id != 0 && d.origin == self.shared.member_id {
                        waiter = self.forwarding.take(d.id);
                    }
                    self.authorize_and_apply(store, hub, d.op, d.caller, applied)?
                        .into_result()
                }
            },
            // Empty, or a membership change handed here by mistake.
            _ => {
                store.apply_noop(applied)?;
                Ok(Outcome::Nothing)
            }
        };
        let revision = store.current_revision();
        Ok(waiter.map(|reply| {
            (
                reply,
                result.map(|outcome| Applied {
                    outcome,
                    revision,
                    term: entry.term.0,
                }),
            )
        }))
    }

    fn apply_conf_entry(&mut self, entry: Entry) -> Result<(), Fatal> {
        let applied = (entry.index.0, entry.term.0);
        let waiter = self.take_waiter(&entry);
        let EntryPayload::ConfChange(cc) = &entry.payload else {
            return Err(Fatal::Store(format!(
                "entry {} is not a membership change",
                entry.index.0
            )));
        };
        let shared = self.shared.clone();
        let hub = shared.hub.lock();
        let mut store = shared.store_mut();
        let outcome = apply_conf_change(&mut store, cc, applied)?;
        let revision = store.current_revision();
        drop(store);
        drop(hub);
        self.refresh_peers();
        if cc.kind == ConfChangeKind::Remove && cc.node.0 == self.shared.member_id {
            tracing::warn!("this member was removed from the cluster; stopping");
            self.shared.status_mut().removed = true;
        }
        if let Some(reply) = waiter {
            let applied = Applied {
                outcome,
                revision,
                term: entry.term.0,
            };
            self.answer(vec![(reply, Ok(applied))]);
        }
        Ok(())
    }

    /// Checks the caller's permissions against the auth store as it is at
    /// this entry (every member decides alike), then applies the command.
    fn authorize_and_apply(
        &mut self,
        store: &mut KvStore<P::Backend>,
        hub: &mut HubState,
        op: Op,
        caller: Option<Caller>,
        applied: (u64, u64),
    ) -> Result<Verdict, Fatal> {
        if let Some(c) = &caller {
            let leases = store.leases();
            let lease_keys = |id: i64| -> Vec<Vec<u8>> {
                leases
                    .get(&id)
                    .map(|l| l.keys.iter().cloned().collect())
                    .unwrap_or_default()
            };
            if let Err(e) = store.auth().check_op(c, &op, &lease_keys) {
                store.apply_noop(applied)?;
                return Ok(Verdict::Refused(DriverError::Auth(e)));
            }
        }
        if let Op::Auth(cmd) = op {
            return self.apply_auth(store, cmd, caller, applied);
        }
        self.apply_op(store, hub, op, applied)
    }

    fn apply_auth(
        &mut self,
        store: &mut KvStore<P::Backend>,
        cmd: crate::auth::AuthCommand,
        caller: Option<Caller>,
        applied: (u64, u64),
    ) -> Result<Verdict, Fatal> {
        let Some(op) = cmd.op else {
            store.apply_noop(applied)?;
            return Ok(Verdict::Refused(DriverError::Rejected(
                "auth command has no operation".into(),
            )));
        };
        let outcome = store.apply_auth(&op, caller.as_ref(), applied)?;
        self.shared
            .auth_enabled
            .store(store.auth().enabled(), std::sync::atomic::Ordering::Relaxed);
        Ok(match outcome {
            AuthOutcome::Refused(e) => Verdict::Refused(DriverError::Auth(e)),
            AuthOutcome::Applied(done) => {
                let tokens = &self.shared.tokens;
                let token = match (&done, &op) {
                    // Without a prefix the proposer signs a JWT itself.
                    (AuthApplied::LoggedIn { name }, AuthOp::Login(l))
                        if !l.token_prefix.is_empty() =>
                    {
                        Some(tokens.assign(&l.token_prefix, applied.0, name))
                    }
                    (AuthApplied::Revoke(user), _) => {
                        tokens.revoke(user.as_deref());
                        None
                    }
                    _ => None,
                };
                Verdict::Done(Outcome::Auth {
                    applied: done,
                    token,
                })
            }
        })
    }

    fn apply_op(
        &mut self,
        store: &mut KvStore<P::Backend>,
        hub: &mut HubState,
        op: Op,
        applied: (u64, u64),
    ) -> Result<Verdict, Fatal> {
        // An active alarm refuses writes on every member alike (etcd's
        // capped and corrupt appliers).
        let adds = match &op {
            Op::Put(_) | Op::LeaseGrant(_) => Some(true),
            Op::Txn(t) => Some(txn_puts(t)),
            Op::DeleteRange(_) | Op::Compaction(_) | Op::LeaseRevoke(_) => Some(false),
            Op::Auth(_) | Op::Alarm(_) | Op::MemberAttributes(_) | Op::MemberPeerUrls(_) => None,
            // Declaring and backfilling write entries; dropping frees them.
            Op::Index(c) => Some(!matches!(c.op, Some(IndexOp::Drop(_)))),
            Op::EnableFeature(_) => None,
        };
        if let Some(e) = adds.and_then(|adds| store.alarm_refusal(adds)) {
            store.apply_noop(applied)?;
            return Ok(Verdict::Refused(DriverError::Kv(e)));
        }
        Ok(match op {
            // Handled by `authorize_and_apply`.
            Op::Auth(_) => {
                store.apply_noop(applied)?;
                Verdict::Done(Outcome::Nothing)
            }
            Op::Alarm(a) => Verdict::Done(Outcome::Alarms(store.apply_alarm(&a, applied)?)),
            Op::Put(p) => {
                let r = store.apply_put(&p, applied)?;
                publish(hub, store, r, Outcome::Put)?
            }
            Op::DeleteRange(d) => {
                let r = store.apply_delete(&d, applied)?;
                publish(hub, store, r, Outcome::Delete)?
            }
            Op::Txn(t) => {
                let r = store.apply_txn(&t, applied)?;
                publish(hub, store, r, Outcome::Txn)?
            }
            Op::Compaction(c) => {
                let r = store.apply_compaction(&c, applied)?;
                settled(r, |()| Outcome::Compacted)
            }
            Op::LeaseGrant(g) => {
                let r = store.apply_lease_grant(g.id, g.ttl, applied)?;
                let granted = matches!(r, kv_store::Outcome::Applied(_));
                if granted && self.node.role() == Role::Leader {
                    self.leases.granted(g.id, g.ttl, self.now);
                }
                settled(r, |()| Outcome::LeaseGranted)
            }
            Op::LeaseRevoke(r) => {
                self.leases.revoked(r.id);
                let r = store.apply_lease_revoke(r.id, applied)?;
                publish(hub, store, r, |()| Outcome::LeaseRevoked)?
            }
            Op::MemberAttributes(m) => {
                store.apply_member_attributes(&m, applied)?;
                Verdict::Done(Outcome::Nothing)
            }
            Op::Index(c) => apply_index(store, c, applied)?,
            Op::EnableFeature(f) => {
                let r = store.apply_enable_feature(&f, applied)?;
                if matches!(r, kv_store::Outcome::Applied(_)) {
                    tracing::info!(feature = %f, "feature enabled");
                }
                settled(r, |()| Outcome::Nothing)
            }
            Op::MemberPeerUrls(m) => match store.member(m.id).cloned() {
                Some(mut cur) => {
                    cur.peer_ur_ls = m.peer_urls;
                    store.apply_member(m.id, Some(cur), applied)?;
                    Verdict::Done(Outcome::Members(store.members()))
                }
                None => {
                    store.apply_noop(applied)?;
                    Verdict::Refused(DriverError::Rejected("member not found".into()))
                }
            },
        })
    }
}

/// Applies an index command: a declaration or a drop answers the index;
/// a backfill step (the leader's own proposal) answers nothing.
fn apply_index<B: Backend>(
    store: &mut KvStore<B>,
    c: IndexCommand,
    applied: (u64, u64),
) -> Result<Verdict, Fatal> {
    Ok(match c.op {
        Some(IndexOp::Create(spec)) => {
            settled(store.apply_index_create(&spec, applied)?, Outcome::Index)
        }
        Some(IndexOp::Drop(name)) => {
            settled(store.apply_index_drop(&name, applied)?, Outcome::Index)
        }
        Some(IndexOp::Rebuild(name)) => {
            settled(store.apply_index_rebuild(&name, applied)?, Outcome::Index)
        }
        Some(IndexOp::Backfill(step)) => settled(
            store.apply_backfill(step.index_id, step.max_keys, applied)?,
            |()| Outcome::Nothing,
        ),
        // `command::decode` refuses these; applied alike if one got by.
        None => {
            store.apply_noop(applied)?;
            Verdict::Refused(DriverError::Kv(KvError::Invalid(
                "an index command without an operation".into(),
            )))
        }
    })
}

/// Whether a transaction puts anything, in either branch, at any depth
/// (etcd's quota cost of a txn is its puts').
fn txn_puts(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_puts(inner),
            _ => false,
        })
}

fn apply_conf_change<B: Backend>(
    store: &mut KvStore<B>,
    cc: &ConfChange,
    applied: (u64, u64),
) -> Result<Outcome, Fatal> {
    let id = cc.node.0;
    match cc.kind {
        ConfChangeKind::AddLearner | ConfChangeKind::AddVoter => {
            let attrs = command::decode_member(&cc.context).unwrap_or(MemberAttributes {
                id,
                ..Default::default()
            });
            let member = Member {
                id,
                name: attrs.name,
                peer_ur_ls: attrs.peer_urls,
                client_ur_ls: attrs.client_urls,
                is_learner: cc.kind == ConfChangeKind::AddLearner,
            };
            store.apply_member(id, Some(member), applied)?;
        }
        ConfChangeKind::PromoteLearner => match store.member(id).cloned() {
            Some(mut m) => {
                m.is_learner = false;
                store.apply_member(id, Some(m), applied)?;
            }
            None => store.apply_noop(applied)?,
        },
        ConfChangeKind::Remove => store.apply_member(id, None, applied)?,
    }
    Ok(Outcome::Members(store.members()))
}
