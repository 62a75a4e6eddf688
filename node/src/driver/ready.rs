//! One `Ready`, in the order the core requires: send what needs no fsync,
//! persist (one batch, one fsync), send what needed it, install a received
//! snapshot, apply the committed entries and answer their waiters, serve
//! the reads they unblock, then `advance`. No I/O of its own: the log store
//! and the network are the platform's.

use nod_raft::{Index, NodeId, Role, StorageWrite};

use super::platform::{Network, Stopwatch};
use super::{Core, Fatal, Platform};

impl<P: Platform> Core<P> {
    pub(super) fn process_ready(&mut self) -> Result<(), Fatal> {
        while self.node.has_ready() {
            let mut rd = self.node.ready().map_err(Fatal::from)?;
            if let Some(ss) = &rd.soft_state {
                self.on_soft_state(ss.leader, ss.role);
            }
            self.net.send(std::mem::take(&mut rd.messages));
            let write = rd.take_log_write();
            if !write.is_empty() {
                let traced = self.traced_entries(&write.entries);
                let watch = P::Stopwatch::start();
                self.node.storage_mut().write(&write)?;
                if write.sync {
                    self.shared
                        .metrics
                        .wal_fsync_seconds
                        .observe(watch.seconds());
                }
                if let Some(traced) = traced {
                    self.record_appended(traced);
                }
            }
            self.net.send(std::mem::take(&mut rd.persisted_messages));
            if let Some(snap) = &rd.snapshot {
                self.install_snapshot(snap)?;
            }
            let committed = std::mem::take(&mut rd.committed_entries);
            if !committed.is_empty() {
                let traced = self.traced_entries(&committed);
                let watch = P::Stopwatch::start();
                self.apply_committed(committed)?;
                self.shared
                    .metrics
                    .backend_commit_seconds
                    .observe(watch.seconds());
                if let Some(traced) = traced {
                    self.record_applied(traced);
                }
            }
            self.reads.confirmed(std::mem::take(&mut rd.read_states));
            let applied = self.shared.store().applied().0;
            self.forget_traced(applied);
            self.reads.serve(Index(applied));
            self.node.advance();
            let st = self.node.status();
            let mut status = self.shared.status_mut();
            status.term = st.term.0;
            status.commit = st.commit.0;
            status.applied = applied;
            let metrics = &self.shared.metrics;
            metrics.term.set(st.term.0 as i64);
            metrics.committed_index.set(st.commit.0 as i64);
            metrics.applied_index.set(applied as i64);
        }
        Ok(())
    }

    fn on_soft_state(&mut self, leader: NodeId, role: Role) {
        let before = {
            let mut status = self.shared.status_mut();
            let before = status.leader;
            status.leader = leader.0;
            status.role = Some(role);
            before
        };
        let metrics = &self.shared.metrics;
        metrics.has_leader.set(i64::from(!leader.is_none()));
        if before != leader.0 && !leader.is_none() {
            metrics.leader_changes.inc();
            tracing::info!(
                leader = leader.0,
                term = self.node.term().0,
                "leader elected"
            );
        }
        let is_leader = role == Role::Leader;
        metrics.is_leader.set(i64::from(is_leader));
        if is_leader && !self.was_leader {
            let store = self.shared.store();
            self.leases.promote(self.now, store.leases().iter());
        }
        if !is_leader && self.was_leader {
            self.leases.demote();
        }
        self.was_leader = is_leader;
        if leader.is_none() || before != leader.0 {
            self.reads.leader_changed();
        }
    }
}
