//! The compactor: now and then, a compaction to a recent revision through a
//! random live member (through Raft, as etcd's Compact call and
//! kube-apiserver's compactor do). Watchers that fall behind it are told
//! "compacted" and must resume at the compacted revision; the checks see
//! that nobody is told so wrongly. No I/O.

use nod_proto::etcd::etcdserverpb::CompactionRequest;

use super::{Event, World};
use crate::command::Op;
use crate::driver::Request;
use crate::simulation::platform::Slot;

impl World {
    pub(super) fn compact(&mut self) {
        if !self.faults_on || !self.cfg.compactions {
            return;
        }
        let next = self.rng.range(300, 1_500);
        self.at(next, Event::Compact);
        let Some(node) = self.random_live() else {
            return;
        };
        let back = self.rng.range(0, 4) as i64;
        let clock = self.clock(node);
        let core = self.members[node]
            .core
            .as_mut()
            .expect("picked a live member");
        let revision = core.shared().store().current_revision() - back;
        if revision < 2 {
            return;
        }
        self.compacted_asked = self.compacted_asked.max(revision);
        trace!(self, "compact to {revision} through member {}", node + 1);
        let (reply, slot) = Slot::new();
        core.set_time(clock);
        core.on_request(Request::Propose {
            caller: None,
            trace: None,
            op: Op::Compaction(CompactionRequest {
                revision,
                physical: false,
            }),
            reply,
        });
        // Kept, so the driver sees a caller still waiting.
        self.compactions.push(slot);
        self.after_step(node);
    }
}
