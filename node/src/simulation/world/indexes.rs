//! Index DDL under the faults (runs with `Config::indexes`): two indexes
//! over the clients' JSON values declared, one dropped and declared
//! again, each request through a random live member (through Raft, as the
//! Index service sends it). A request is sent again until it has an
//! answer that settles it: refused while the feature is not enabled
//! (members publish theirs as they start, through the leader, which then
//! enables it), lost with a crash, or timed out, it goes again;
//! "already exists" or "not found" for a request sent twice settle it as
//! done. The leader's backfill steps build the indexes while the nemesis
//! strikes; the checks then want one catalog on every member, every index
//! ready, and every index matching its records. No I/O.

use nod_proto::nodquerypb::{FieldType, IndexField, IndexSpec};

use super::{Event, World};
use crate::command::{IndexCommand, IndexOp, Op};
use crate::driver::{Applied, DriverError, Request};
use crate::simulation::platform::Slot;
use crate::storage::kv_store::IndexState;
use crate::storage::KvError;

/// A DDL request sent: which step of the plan, and its answer.
pub(super) struct Ddl {
    step: usize,
    slot: Slot<Applied>,
    /// When it was sent; after `DDL_PATIENCE_MS` without an answer it is
    /// sent again.
    sent: u64,
}

const DDL_PATIENCE_MS: u64 = 1_500;

fn spec(name: &str, field: &str) -> IndexSpec {
    IndexSpec {
        name: name.into(),
        prefix: b"/sim/".to_vec(),
        fields: vec![IndexField {
            path: field.into(),
            r#type: FieldType::Number as i32,
        }],
        unique: false,
    }
}

/// The run's DDL, in order.
fn plan(step: usize) -> Option<IndexOp> {
    match step {
        0 => Some(IndexOp::Create(spec("by_client", "c"))),
        1 => Some(IndexOp::Create(spec("by_op", "i"))),
        2 => Some(IndexOp::Drop("by_client".into())),
        3 => Some(IndexOp::Create(spec("by_client", "c"))),
        _ => None,
    }
}

/// Whether an answer settles its step (`Some(true)`: done; `Some(false)`:
/// a refusal that can never pass, reported).
fn settled(answer: &Result<Applied, DriverError>) -> Option<bool> {
    match answer {
        Ok(_) => Some(true),
        // A request sent twice, whose first copy applied.
        Err(DriverError::Kv(KvError::IndexExists(_) | KvError::IndexNotFound(_))) => Some(true),
        // Not every member has published its features yet; or the
        // request met a fault on its way.
        Err(DriverError::Kv(KvError::FeatureMissing(_)))
        | Err(
            DriverError::NotLeader { .. }
            | DriverError::NoLeader
            | DriverError::LeaderChanged
            | DriverError::LeaderUnreachable
            | DriverError::Rejected(_)
            | DriverError::Stopped
            | DriverError::Timeout,
        ) => None,
        Err(_) => Some(false),
    }
}

impl World {
    /// The step the plan is at: the first not settled yet.
    fn ddl_step(&mut self) -> usize {
        let mut step = 0;
        let mut kept = Vec::new();
        for d in std::mem::take(&mut self.ddl) {
            match d.slot.take().map(|a| (settled(&a), a)) {
                Some((Some(true), _)) => step = step.max(d.step + 1),
                Some((Some(false), a)) => {
                    self.report.violations.push(format!(
                        "index DDL step {} refused: {:?}",
                        d.step,
                        a.err()
                    ));
                    step = step.max(d.step + 1);
                }
                // Sent again below, or still waiting.
                Some((None, _)) => {}
                None if self.now.saturating_sub(d.sent) < DDL_PATIENCE_MS => kept.push(d),
                None => {}
            }
        }
        let done = self.ddl_done;
        self.ddl = kept;
        step.max(done)
    }

    pub(super) fn index_ddl(&mut self) {
        // Nothing new once the faults stop: what is in flight then applies
        // while the members settle, and is built before the checks.
        if !self.cfg.indexes || !self.faults_on {
            return;
        }
        let step = self.ddl_step();
        self.ddl_done = step;
        let Some(op) = plan(step) else {
            return;
        };
        let next = self.rng.range(100, 600);
        self.at(next, Event::IndexDdl);
        if self.ddl.iter().any(|d| d.step == step) {
            return; // still waiting for its answer
        }
        let Some(node) = self.random_live() else {
            return;
        };
        trace!(self, "index DDL step {step} through member {}", node + 1);
        let clock = self.clock(node);
        let core = self.members[node]
            .core
            .as_mut()
            .expect("picked a live member");
        let (reply, slot) = Slot::new();
        core.set_time(clock);
        core.on_request(Request::Propose {
            caller: None,
            trace: None,
            op: Op::Index(IndexCommand { op: Some(op) }),
            reply,
        });
        self.ddl.push(Ddl {
            step,
            slot,
            sent: self.now,
        });
        self.after_step(node);
    }

    /// After settling: every member holds the same indexes, each ready and
    /// holding exactly the entries its records give.
    pub(super) fn check_indexes(&mut self) {
        if !self.cfg.indexes {
            return;
        }
        let mut catalogs = Vec::new();
        for m in &self.members {
            let Some(core) = m.core.as_ref() else {
                continue;
            };
            let store = core.shared().store();
            for def in store.indexes() {
                if !matches!(def.state, IndexState::Ready { .. }) {
                    self.report.violations.push(format!(
                        "member {}: index {} is not ready after settling: {:?}",
                        m.id.0, def.spec.name, def.state
                    ));
                }
                match store.verify_secondary(def.id) {
                    Ok(Some(c)) if c.missing.is_empty() && c.extra.is_empty() => {}
                    other => self.report.violations.push(format!(
                        "member {}: index {} does not match its records: {other:?}",
                        m.id.0, def.spec.name
                    )),
                }
            }
            catalogs.push((m.id.0, store.indexes().to_vec()));
        }
        self.report.indexes_built = catalogs.first().map_or(0, |(_, c)| {
            c.iter().filter(|d| d.ready_since().is_some()).count() as u64
        });
        if let Some((first, want)) = catalogs.first() {
            for (id, got) in &catalogs[1..] {
                if got != want {
                    self.report.violations.push(format!(
                        "members {first} and {id} hold different indexes: {want:?} and {got:?}"
                    ));
                }
            }
        }
    }
}
