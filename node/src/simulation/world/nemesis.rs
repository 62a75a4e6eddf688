//! The nemesis: crashes (of any member, or of the leader right after it
//! appends or commits), power losses (unsynced writes gone), failing log
//! writes (fsync errors, torn records), partitions (random, or the leader
//! alone). No I/O.

use std::collections::BTreeSet;

use super::{Event, World};
use crate::simulation::{Planted, WriteFault};

impl World {
    pub(super) fn nemesis(&mut self) {
        if !self.faults_on {
            return;
        }
        let n = self.members.len();
        let down = self.members.iter().filter(|m| m.core.is_none()).count();
        let mut choice = self.rng.range(0, 7);
        if self.cfg.churny && self.chance(500) {
            choice = 7;
        } else if self.cfg.lease_reads && self.chance(333) {
            // A leader cut off while its lease may still look valid to it.
            choice = 2;
        }
        let leader = (0..n).find(|i| {
            self.members[*i]
                .core
                .as_ref()
                .is_some_and(|c| c.raw_node().role() == nod_raft::Role::Leader)
        });
        let mut next = self.rng.range(200, 900);
        if self.cfg.crashes && choice == 0 && down < (n - 1) / 2 {
            let i = self.rng.range(0, n as u64) as usize;
            self.crash(i);
            let back = self.rng.range(100, 1_200);
            self.at(back, Event::Restart(i));
        } else if self.cfg.crashes && choice == 1 && down < (n - 1) / 2 {
            // The leader, right after it appends, before it replicates to all;
            // sometimes again and again (a burst of leader churn).
            match self.rng.range(0, 3) {
                0 => self.crash_leader_on_append = true,
                1 => self.crash_leader_on_commit = true,
                _ => self.start_churn(leader, 2, 8),
            }
            if self.chance(400) {
                next = self.rng.range(100, 300);
            }
        } else if self.cfg.crashes && choice == 7 && down < (n - 1) / 2 && self.churn == 0 {
            self.start_churn(leader, 3, 10);
        } else if self.cfg.disk_faults && choice == 5 && down < (n - 1) / 2 {
            // An fsync error on the next log write: the write is lost (or
            // torn, which recovery drops) or it reached the disk anyway.
            let i = leader
                .filter(|_| self.chance(500))
                .unwrap_or_else(|| self.rng.range(0, n as u64) as usize);
            let fault = if self.chance(500) {
                WriteFault::Lost
            } else {
                WriteFault::Persisted
            };
            trace!(self, "member {}'s next log write fails: {fault:?}", i + 1);
            self.members[i].log.lock().fault = Some(fault);
        } else if self.cfg.disk_faults && choice == 6 && down < (n - 1) / 2 {
            // A power loss, often of the leader.
            let i = leader
                .filter(|_| self.chance(500))
                .unwrap_or_else(|| self.rng.range(0, n as u64) as usize);
            self.crash_as(i, true);
            let back = self.rng.range(100, 1_200);
            self.at(back, Event::Restart(i));
        } else if self.cfg.partitions && choice == 2 && self.cut.is_empty() {
            // The leader alone (with one follower in a five-member
            // cluster): a minority that still believes it leads.
            if let Some(l) = leader {
                let mut side = BTreeSet::from([l]);
                if n >= 5 {
                    side.insert((l + 1 + self.rng.range(0, n as u64 - 1) as usize) % n);
                }
                self.cut_between(&side);
                let heal = self.rng.range(200, 1_500);
                self.at(heal, Event::Heal);
                let mut window = heal.max(101);
                if self.cfg.planted == Planted::ClockBeyondBound {
                    // Its clock falls to a fifth of true time: its lease
                    // (counted in its ticks) outlives the majority's patience.
                    self.members[l].rate = 200;
                    window = window.min(500);
                }
                if self.cfg.leader_probes {
                    // Reads through the cut-off leader while the majority
                    // elects another and writes: it must not answer them
                    // from its own state.
                    for _ in 0..3 {
                        let at = self.rng.range(100, window);
                        self.at(at, Event::Probe(l));
                    }
                }
            }
        } else if self.cfg.partitions && self.cut.is_empty() {
            let mut side = BTreeSet::new();
            for i in 0..n {
                if self.rng.range(0, 2) == 0 {
                    side.insert(i);
                }
            }
            self.cut_between(&side);
            let heal = self.rng.range(200, 1_500);
            self.at(heal, Event::Heal);
        }
        self.at(next, Event::Nemesis);
    }

    /// A burst of leader churn, from the current leader on.
    fn start_churn(&mut self, leader: Option<usize>, min: u64, max: u64) {
        self.churn = self.rng.range(min, max) as u32;
        trace!(self, "a burst of {} leader crashes", self.churn);
        if let Some(core) = leader.and_then(|l| self.members[l].core.as_ref()) {
            let term = core.raw_node().term().0;
            self.fate = Some((term, self.chance(500)));
        }
    }

    /// Cuts every link between `side` and the rest.
    pub(super) fn cut_between(&mut self, side: &BTreeSet<usize>) {
        trace!(
            self,
            "partition {:?} from the rest",
            side.iter().map(|i| i + 1).collect::<Vec<_>>()
        );
        let n = self.members.len();
        for a in 0..n {
            for b in a + 1..n {
                if side.contains(&a) != side.contains(&b) {
                    self.cut.insert((a, b));
                }
            }
        }
    }
}
