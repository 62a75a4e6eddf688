//! Member health and autopilot (Consul's autopilot is the model).
//!
//! On every node a loop samples, every half second, what the leader's Raft
//! knows of each member (whether it answered within the last two election
//! timeouts, how far its log is behind) and what gossip says (alive by the
//! failure detector). The leader alone acts, one change at a time, through
//! ordinary configuration changes:
//! - it promotes a learner that stayed caught up (lag within `promote_lag`
//!   entries) for `stabilize`, while there are fewer voters than `voters`;
//! - with `dead_after` set (off by default) it removes a member that has been
//!   unreachable by Raft and dead by gossip for that long, never when the
//!   remaining healthy voters would be fewer than a quorum of the new
//!   configuration.
//!
//! `plan` is the decision, pure, with table tests; the loop only gathers
//! the observations and carries out what `plan` returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nod_raft::{ConfChange, ConfChangeKind, NodeId, Role};

use super::driver::{DriverHandle, Shared};
use crate::gossip::Gossip;
use nod_proto::nodserverpb::MemberHealth;

#[derive(Clone, Debug)]
pub struct AutopilotConfig {
    /// Learners are promoted while there are fewer voters than this (0: never).
    pub voters: usize,
    /// A learner is caught up when its log is at most this many entries behind.
    pub promote_lag: u64,
    /// How long a learner must stay caught up before it is promoted.
    pub stabilize: Duration,
    /// Remove members dead for this long (None: never, the default).
    pub dead_after: Option<Duration>,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        AutopilotConfig {
            voters: 0,
            promote_lag: 100,
            stabilize: Duration::from_secs(3),
            dead_after: None,
        }
    }
}

/// What the planner sees of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub is_learner: bool,
    pub healthy: bool,
    /// Unreachable by Raft and not alive by gossip.
    pub dead: bool,
    pub unhealthy_for: Duration,
    /// For learners: how long it has been caught up (zero when it is not).
    pub caught_up_for: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Promote(u64),
    Remove(u64),
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The next membership step, if any. `leader` is never removed.
pub fn plan(leader: u64, members: &[MemberView], cfg: &AutopilotConfig) -> Option<Action> {
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let healthy_voters = members
        .iter()
        .filter(|m| !m.is_learner && m.healthy)
        .count();
    if let Some(after) = cfg.dead_after {
        let mut dead: Vec<&MemberView> = members
            .iter()
            .filter(|m| m.id != leader && m.dead && !m.healthy && m.unhealthy_for >= after)
            .collect();
        // Learners first (always safe), then the longest dead.
        dead.sort_by_key(|m| (!m.is_learner, std::cmp::Reverse(m.unhealthy_for)));
        for m in dead {
            if m.is_learner {
                return Some(Action::Remove(m.id));
            }
            let left = voters - 1;
            if left >= 1 && healthy_voters >= quorum(left) {
                return Some(Action::Remove(m.id));
            }
        }
    }
    if voters < cfg.voters && healthy_voters >= quorum(voters + 1).saturating_sub(1) {
        let best = members
            .iter()
            .filter(|m| m.is_learner && m.healthy && m.caught_up_for >= cfg.stabilize)
            .max_by_key(|m| m.caught_up_for)?;
        return Some(Action::Promote(best.id));
    }
    None
}

#[derive(Default)]
struct Track {
    last_active: Option<Instant>,
    unhealthy_since: Option<Instant>,
    caught_up_since: Option<Instant>,
}

pub struct Autopilot {
    pub cfg: AutopilotConfig,
    shared: Arc<Shared>,
    driver: DriverHandle,
    gossip: Option<Arc<Gossip>>,
    election_timeout: Duration,
    tracks: Mutex<HashMap<u64, Track>>,
    /// The last sample, and whether it was taken as leader.
    last: Mutex<(bool, Vec<MemberHealth>)>,
    was_leading: std::sync::atomic::AtomicBool,
}

impl Autopilot {
    pub fn new(
        cfg: AutopilotConfig,
        shared: Arc<Shared>,
        driver: DriverHandle,
        gossip: Option<Arc<Gossip>>,
        election_timeout: Duration,
    ) -> Arc<Autopilot> {
        Arc::new(Autopilot {
            cfg,
            shared,
            driver,
            gossip,
            election_timeout,
            tracks: Mutex::new(HashMap::new()),
            last: Mutex::new((false, Vec::new())),
            was_leading: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The member table with health as the leader sees it now: a fresh
    /// sample, so a member removed or added a moment ago is (or is not) in
    /// it, as the operator needs when it plans its next step. `None` when
    /// this node does not lead.
    pub async fn health(&self) -> Option<Vec<MemberHealth>> {
        self.sample().await;
        self.last_health()
    }

    /// The last sample's table (at most one sampling interval old), if it
    /// was taken as leader; cheap, for `Status`.
    pub fn last_health(&self) -> Option<Vec<MemberHealth>> {
        let last = self.last.lock().ok()?;
        last.0.then(|| last.1.clone())
    }

    /// One sample: updates the health table and metrics; returns the
    /// planner's view when this node leads.
    async fn sample(&self) -> Option<(u64, Vec<MemberView>)> {
        let st = self.driver.raft_status().await.ok()?;
        let heard = self.driver.last_heard().await.ok()?;
        let members = self.shared.store().members();
        let gossip_alive: HashMap<u64, bool> = match &self.gossip {
            Some(g) => g
                .peers()
                .await
                .into_iter()
                .filter(|p| p.member_id != 0)
                .map(|p| (p.member_id, p.alive))
                .collect(),
            None => HashMap::new(),
        };
        let leading = st.role == Role::Leader;
        let now = Instant::now();
        let window = self.election_timeout * 2;
        let mut tracks = match self.tracks.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        tracks.retain(|id, _| members.iter().any(|m| m.id == *id));
        // A new leader has no history of its peers: each gets one window
        // to answer before it counts as unreachable.
        let newly_leading = leading
            && !self
                .was_leading
                .swap(true, std::sync::atomic::Ordering::Relaxed);
        if !leading {
            self.was_leading
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        if newly_leading {
            for t in tracks.values_mut() {
                t.last_active = Some(now);
            }
        }
        let mut table = Vec::new();
        let mut views = Vec::new();
        for m in &members {
            let t = tracks.entry(m.id).or_insert_with(|| Track {
                // A member first seen gets the benefit of the doubt for one window.
                last_active: Some(now),
                ..Default::default()
            });
            let progress = st.peers.iter().find(|p| p.id.0 == m.id);
            let is_self = m.id == st.id.0;
            if is_self {
                t.last_active = Some(now);
            } else if let Some(&h) = heard.get(&m.id) {
                t.last_active = Some(t.last_active.map_or(h, |a| a.max(h)));
            }
            let raft_active = leading && t.last_active.is_some_and(|a| now - a < window);
            let gossip = gossip_alive.get(&m.id).copied().unwrap_or(false) || is_self;
            let healthy = if leading {
                raft_active
            } else {
                gossip || self.gossip.is_none()
            };
            if healthy {
                t.unhealthy_since = None;
            } else if t.unhealthy_since.is_none() {
                t.unhealthy_since = Some(now);
            }
            let matched = if is_self {
                st.last_index.0
            } else {
                progress.map(|p| p.matched.0).unwrap_or(0)
            };
            let lag = st.last_index.0.saturating_sub(matched);
            if m.is_learner && leading && lag <= self.cfg.promote_lag && healthy {
                t.caught_up_since.get_or_insert(now);
            } else {
                t.caught_up_since = None;
            }
            let unhealthy_for = t.unhealthy_since.map(|s| now - s).unwrap_or_default();
            table.push(MemberHealth {
                id: m.id,
                name: m.name.clone(),
                peer_urls: m.peer_ur_ls.clone(),
                client_urls: m.client_ur_ls.clone(),
                is_learner: m.is_learner,
                is_leader: m.id == st.leader.0,
                healthy,
                raft_active,
                gossip_alive: gossip,
                matched: if leading { matched } else { 0 },
                lag: if leading { lag } else { 0 },
                unhealthy_ms: unhealthy_for.as_millis() as u64,
            });
            views.push(MemberView {
                id: m.id,
                is_learner: m.is_learner,
                healthy,
                dead: !healthy && (self.gossip.is_none() || !gossip),
                unhealthy_for,
                caught_up_for: t.caught_up_since.map(|s| now - s).unwrap_or_default(),
            });
        }
        drop(tracks);
        let metrics = &self.shared.metrics;
        metrics.member_healthy.reset();
        for h in &table {
            metrics
                .member_healthy
                .with_label_values(&[&h.name, &format!("{:x}", h.id)])
                .set(i64::from(h.healthy));
        }
        if leading {
            metrics
                .members_unhealthy
                .set(table.iter().filter(|h| !h.healthy).count() as i64);
        }
        if let Ok(mut last) = self.last.lock() {
            *last = (leading, table);
        }
        leading.then_some((st.id.0, views))
    }

    /// Runs until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some((leader, views)) = self.sample().await else {
                continue;
            };
            let Some(action) = plan(leader, &views, &self.cfg) else {
                continue;
            };
            let (kind, id, what) = match action {
                Action::Promote(id) => (ConfChangeKind::PromoteLearner, id, "promote"),
                Action::Remove(id) => (ConfChangeKind::Remove, id, "remove"),
            };
            let name = self
                .shared
                .store()
                .member(id)
                .map(|m| m.name.clone())
                .unwrap_or_default();
            tracing::info!(member = format!("{id:x}"), %name, action = what, "autopilot");
            let r = self
                .driver
                .conf_change(ConfChange {
                    kind,
                    node: NodeId(id),
                    context: Vec::new(),
                })
                .await;
            match r {
                Ok(_) => self
                    .shared
                    .metrics
                    .autopilot_actions
                    .with_label_values(&[what])
                    .inc(),
                Err(e) => {
                    tracing::warn!(member = format!("{id:x}"), error = %e, action = what, "autopilot step failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn voter(id: u64, healthy: bool, dead_for: u64) -> MemberView {
        MemberView {
            id,
            is_learner: false,
            healthy,
            dead: !healthy,
            unhealthy_for: S * dead_for as u32,
            caught_up_for: Duration::ZERO,
        }
    }

    fn learner(id: u64, caught_up_for: u64) -> MemberView {
        MemberView {
            id,
            is_learner: true,
            healthy: true,
            dead: false,
            unhealthy_for: Duration::ZERO,
            caught_up_for: S * caught_up_for as u32,
        }
    }

    fn cfg(voters: usize, dead_after: Option<u64>) -> AutopilotConfig {
        AutopilotConfig {
            voters,
            promote_lag: 10,
            stabilize: 3 * S,
            dead_after: dead_after.map(|d| S * d as u32),
        }
    }

    #[test]
    fn plans() {
        use Action::*;
        let cases: Vec<(&str, Vec<MemberView>, AutopilotConfig, Option<Action>)> = vec![
            (
                "a learner caught up long enough is promoted",
                vec![voter(1, true, 0), learner(2, 5)],
                cfg(3, None),
                Some(Promote(2)),
            ),
            (
                "not before the stabilization time",
                vec![voter(1, true, 0), learner(2, 2)],
                cfg(3, None),
                None,
            ),
            (
                "the longest caught-up learner first",
                vec![voter(1, true, 0), learner(2, 4), learner(3, 9)],
                cfg(3, None),
                Some(Promote(3)),
            ),
            (
                "never beyond the voter count",
                vec![
                    voter(1, true, 0),
                    voter(2, true, 0),
                    voter(3, true, 0),
                    learner(4, 9),
                ],
                cfg(3, None),
                None,
            ),
            (
                "voters 0 turns promotion off",
                vec![voter(1, true, 0), learner(2, 9)],
                cfg(0, None),
                None,
            ),
            (
                "removal is off by default",
                vec![voter(1, true, 0), voter(2, true, 0), voter(3, false, 999)],
                cfg(3, None),
                None,
            ),
            (
                "a long-dead voter is removed when a quorum of the rest is healthy",
                vec![voter(1, true, 0), voter(2, true, 0), voter(3, false, 60)],
                cfg(3, Some(30)),
                Some(Remove(3)),
            ),
            (
                "not before the threshold",
                vec![voter(1, true, 0), voter(2, true, 0), voter(3, false, 10)],
                cfg(3, Some(30)),
                None,
            ),
            (
                "never when it would leave fewer healthy voters than a quorum",
                // 5 voters, 3 dead: removing one leaves 4, quorum 3, only 2 healthy.
                vec![
                    voter(1, true, 0),
                    voter(2, true, 0),
                    voter(3, false, 60),
                    voter(4, false, 60),
                    voter(5, false, 60),
                ],
                cfg(5, Some(30)),
                None,
            ),
            (
                "two dead of five: one is removed (4 left, quorum 3, 3 healthy)",
                vec![
                    voter(1, true, 0),
                    voter(2, true, 0),
                    voter(3, true, 0),
                    voter(4, false, 40),
                    voter(5, false, 90),
                ],
                cfg(5, Some(30)),
                Some(Remove(5)),
            ),
            (
                "a dead learner goes before a dead voter",
                vec![
                    voter(1, true, 0),
                    voter(2, true, 0),
                    voter(3, false, 90),
                    MemberView {
                        is_learner: true,
                        ..voter(4, false, 40)
                    },
                ],
                cfg(3, Some(30)),
                Some(Remove(4)),
            ),
            (
                "the leader is never removed",
                vec![voter(1, false, 90), voter(2, true, 0), voter(3, true, 0)],
                cfg(3, Some(30)),
                None,
            ),
            (
                "unhealthy but alive by gossip is not dead",
                vec![
                    voter(1, true, 0),
                    voter(2, true, 0),
                    MemberView {
                        dead: false,
                        ..voter(3, false, 90)
                    },
                ],
                cfg(3, Some(30)),
                None,
            ),
            (
                "a dead voter replaced by a learner: removal first, then promotion",
                vec![
                    voter(1, true, 0),
                    voter(2, true, 0),
                    voter(3, false, 90),
                    learner(4, 9),
                ],
                cfg(3, Some(30)),
                Some(Remove(3)),
            ),
            (
                "no promotion while a quorum of the grown configuration could not be healthy",
                // 2 voters, 1 healthy: a third voter needs 2 healthy of 3; with
                // the learner that is 2, so it may go ahead...
                vec![voter(1, true, 0), voter(2, false, 5), learner(3, 9)],
                cfg(3, None),
                Some(Promote(3)),
            ),
            (
                "...but not with 4 voters and 1 healthy",
                vec![
                    voter(1, true, 0),
                    voter(2, false, 5),
                    voter(3, false, 5),
                    voter(4, false, 5),
                    learner(5, 9),
                ],
                cfg(5, None),
                None,
            ),
        ];
        for (what, members, c, want) in cases {
            assert_eq!(plan(1, &members, &c), want, "{what}");
        }
    }
}
