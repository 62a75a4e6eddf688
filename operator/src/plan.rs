//! The planner: what the operator observed, and the spec, in; the one next
//! step out. Pure, so every path (including the refusals that protect
//! quorum and changes reversed halfway) is a table test.
//!
//! One step per reconcile: the controller carries it out, observes again
//! and asks for the next. Membership steps happen in Raft before the
//! StatefulSet follows (remove the member, then shrink, then delete the
//! claim), so a pod is never gone while its member still counts.
//!
//! Rolling changes compare each pod's template hash (the annotation
//! `render::TEMPLATE_HASH` the pod was created with) with the hash of the
//! template the spec renders now, so any change that reaches the pods
//! (image, resources, Raft timings, scheduling, labels) rolls them the same
//! way: one at a time, followers first, the leader last after handing
//! leadership over, each ready and caught up before the next.

use std::time::Duration;

/// A member pod as Kubernetes shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub ordinal: i32,
    pub ready: bool,
    /// The template hash the pod was created with; `None` for a pod made
    /// from a template without one (an older operator's).
    pub template_hash: Option<String>,
    /// Being deleted (has a deletion timestamp).
    pub terminating: bool,
}

/// A Raft member as the leader reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub name: String,
    pub learner: bool,
    pub leader: bool,
    pub healthy: bool,
    /// Entries behind the leader.
    pub lag: u64,
    /// How far the member's log matches the leader's.
    pub matched: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    /// What the spec asks for.
    pub desired_replicas: i32,
    /// The hash of the pod template the spec renders now.
    pub desired_template_hash: String,
    /// The StatefulSet's replicas; `None` before it exists.
    pub sts_replicas: Option<i32>,
    pub pods: Vec<PodView>,
    /// Claims of the cluster that exist, by pod name.
    pub claims: Vec<String>,
    /// The member table from the leader; `None` when no leader answered.
    pub members: Option<Vec<MemberView>>,
    /// Members this operator removed from Raft whose claims it has not
    /// deleted yet (kept in status, so a crash in between is finished).
    pub removed: Vec<String>,
    /// Learners without a name (added to Raft by a node that never started
    /// or never published its name), with how long the operator has seen
    /// each one nameless.
    pub nameless_seen: Vec<(u64, Duration)>,
    /// The member count the cluster hibernated with (`replicas: 0`), until
    /// it is back.
    pub hibernated: Option<i32>,
    /// The backup owed before hibernating.
    pub hibernation_backup: HibernationBackup,
}

/// The backup taken before a hibernation (`spec.backup` set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HibernationBackup {
    /// No backups configured (or suspended): hibernate at once.
    #[default]
    NotConfigured,
    /// To be asked of the backup agent.
    Needed,
    /// Asked; the agent has not written a full since (its state, for
    /// status).
    Pending(String),
    /// A full was written after it was asked.
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do: the cluster is as the spec asks.
    Idle,
    /// Set the StatefulSet's replicas.
    ScaleTo(i32),
    /// Hand leadership to `to` (a member id) before the leader's pod or
    /// member goes away.
    MoveLeader { from: String, to: u64 },
    /// Remove a member from Raft (scale-down, before its pod goes).
    RemoveMember { name: String, id: u64 },
    /// Delete the claim of a pod that is no longer a member, so a later
    /// scale-up starts it clean.
    DeleteClaim { pod: String },
    /// Replace a pod whose member was removed (a scale-down reversed
    /// halfway): delete its claim and its pod, so it starts empty and joins.
    ReplaceMember { pod: String },
    /// Delete a pod so the StatefulSet recreates it with the new template.
    RollPod { pod: String },
    /// Remove a learner that has had no name for `NAMELESS_LEARNER_GRACE`:
    /// no pod will ever claim it.
    RemoveNamelessLearner { id: u64 },
    /// Ask the backup agent for a full backup before hibernating.
    BackupBeforeHibernation,
    /// Stop every pod (`replicas: 0`) without removing any member from
    /// Raft: record `members`, the count to bring back, then scale the
    /// StatefulSet to 0.
    Hibernate { members: i32 },
    /// Waiting for the cluster to get somewhere by itself (reason for the
    /// Progressing condition).
    Wait(String),
    /// A step that would put the cluster at risk; the reason goes in the
    /// Degraded condition.
    Refuse(String),
}

/// A member further behind the leader than this many entries is still
/// catching up: no restart waits on it being the next to go.
pub const CAUGHT_UP_LAG: u64 = 1000;

/// How long a learner may stay nameless before it is taken for the
/// leftover of a join that never finished. A joining node publishes its
/// name as soon as it starts, within seconds of being added.
pub const NAMELESS_LEARNER_GRACE: Duration = Duration::from_secs(300);

pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn pod_name(name: &str, ordinal: i32) -> String {
    format!("{name}-{ordinal}")
}

/// The best voter to take leadership over: healthy, least lag, not `except`.
fn successor(members: &[MemberView], except: u64) -> Option<u64> {
    members
        .iter()
        .filter(|m| !m.learner && m.healthy && m.id != except)
        .min_by_key(|m| (m.lag, m.name.clone()))
        .map(|m| m.id)
}

/// Could the cluster lose `member` (one voter) and keep a healthy quorum of
/// what is left?
fn can_lose(members: &[MemberView], member: Option<&MemberView>) -> bool {
    let voters: Vec<&MemberView> = members.iter().filter(|m| !m.learner).collect();
    let losing_voter = member.is_some_and(|m| !m.learner);
    let left = voters.len() - usize::from(losing_voter);
    let healthy_left = voters
        .iter()
        .filter(|m| m.healthy && member.is_none_or(|x| x.id != m.id))
        .count();
    left >= 1 && healthy_left >= quorum(left)
}

pub fn plan(o: &Observed) -> Step {
    let Some(sts) = o.sts_replicas else {
        // The StatefulSet is created with the spec's size by the apply.
        return Step::Wait("creating the StatefulSet".into());
    };
    // Hibernation: all members stop together and keep their identities
    // (no Raft removal), after a backup when backups are configured.
    if o.desired_replicas == 0 {
        if sts == 0 {
            return Step::Idle;
        }
        return match &o.hibernation_backup {
            HibernationBackup::Needed => Step::BackupBeforeHibernation,
            HibernationBackup::Pending(why) => {
                Step::Wait(format!("a backup before hibernating: {why}"))
            }
            HibernationBackup::NotConfigured | HibernationBackup::Done => Step::Hibernate {
                members: o.hibernated.unwrap_or(sts),
            },
        };
    }
    // Waking up: every member that hibernated comes back at once (they
    // need each other for a quorum); the usual scaling follows.
    if let Some(h) = o.hibernated {
        if sts < h {
            return Step::ScaleTo(h);
        }
    }
    let desired = o.desired_replicas.max(1);

    // A member removed on the way down whose pod is wanted again (the
    // change was reversed halfway): it cannot rejoin with its old identity.
    // Only when the leader's table shows it is not a member: a pod of that
    // name that joined since (a stale record) is a member to keep.
    for r in &o.removed {
        let in_range = o
            .pods
            .iter()
            .any(|p| &p.name == r && p.ordinal < sts.min(desired));
        let not_a_member = o
            .members
            .as_ref()
            .is_some_and(|ms| !ms.iter().any(|m| &m.name == r));
        if in_range && not_a_member {
            return Step::ReplaceMember { pod: r.clone() };
        }
    }
    // Claims left by members that are gone (removed, pod scaled away).
    for c in &o.removed {
        let pod_gone = !o.pods.iter().any(|p| &p.name == c);
        if pod_gone && o.claims.contains(c) {
            return Step::DeleteClaim { pod: c.clone() };
        }
    }

    let Some(all_members) = &o.members else {
        if desired > sts {
            // Growing needs no leader's consent: new pods join when they can.
            return Step::ScaleTo(desired);
        }
        return Step::Wait("no leader answers: waiting for the cluster to elect one".into());
    };
    // A nameless learner belongs to no pod: it neither votes nor blocks.
    // Once it has been nameless long enough it is removed (first, so the
    // member table is clean before any other change); until then the rest
    // of the plan looks past it.
    for m in all_members
        .iter()
        .filter(|m| m.learner && m.name.is_empty())
    {
        let seen = o
            .nameless_seen
            .iter()
            .find(|(id, _)| *id == m.id)
            .map_or(Duration::ZERO, |(_, d)| *d);
        if seen >= NAMELESS_LEARNER_GRACE {
            return Step::RemoveNamelessLearner { id: m.id };
        }
    }
    let named: Vec<MemberView> = all_members
        .iter()
        .filter(|m| !(m.learner && m.name.is_empty()))
        .cloned()
        .collect();
    let members = &named;

    // Scale up: stale claims at the new ordinals would bring back members
    // with an old identity, so they go first.
    if desired > sts {
        for ordinal in sts..desired {
            let pod = pod_name(&o.name, ordinal);
            let is_member = members.iter().any(|m| m.name == pod);
            if !is_member && o.claims.contains(&pod) && !o.pods.iter().any(|p| p.name == pod) {
                return Step::DeleteClaim { pod };
            }
        }
        return Step::ScaleTo(desired);
    }

    // Scale down, one member at a time, highest ordinal first.
    if desired < sts {
        let top = pod_name(&o.name, sts - 1);
        match members.iter().find(|m| m.name == top) {
            Some(m) => {
                let voters = members.iter().filter(|m| !m.learner).count();
                if !m.learner && voters <= 1 {
                    return Step::Refuse(format!("{top} is the only voter"));
                }
                if !can_lose(members, Some(m)) {
                    return Step::Refuse(format!(
                        "removing {top} would leave fewer healthy voters than a quorum"
                    ));
                }
                if m.leader {
                    return match successor(members, m.id) {
                        Some(to) => Step::MoveLeader { from: top, to },
                        None => {
                            Step::Refuse(format!("{top} leads and no healthy voter can take over"))
                        }
                    };
                }
                return Step::RemoveMember {
                    name: top,
                    id: m.id,
                };
            }
            // Not (or no longer) a member: the StatefulSet can shrink.
            None => return Step::ScaleTo(sts - 1),
        }
    }

    // At the desired size. Wait for every pod to exist, be ready and be a
    // member before anything else.
    let expected: Vec<String> = (0..sts).map(|i| pod_name(&o.name, i)).collect();
    for pod in &expected {
        match o.pods.iter().find(|p| &p.name == pod) {
            None => return Step::Wait(format!("{pod} is not running yet")),
            Some(p) if p.terminating => return Step::Wait(format!("{pod} is restarting")),
            Some(p) if !p.ready => return Step::Wait(format!("{pod} is not ready yet")),
            _ => {}
        }
        if !members.iter().any(|m| &m.name == pod) {
            return Step::Wait(format!("{pod} is joining the cluster"));
        }
    }
    if let Some(l) = members.iter().find(|m| m.learner) {
        return Step::Wait(format!("{} is a learner, catching up", l.name));
    }
    if let Some(u) = members.iter().find(|m| !m.healthy) {
        return Step::Wait(format!("{} is unhealthy", u.name));
    }
    if let Some(l) = members.iter().find(|m| m.lag > CAUGHT_UP_LAG) {
        return Step::Wait(format!(
            "{} is catching up ({} entries behind)",
            l.name, l.lag
        ));
    }

    // Rolling change: one pod at a time, followers first, the leader last.
    let mut outdated: Vec<&PodView> = o
        .pods
        .iter()
        .filter(|p| {
            p.ordinal < sts && p.template_hash.as_deref() != Some(o.desired_template_hash.as_str())
        })
        .collect();
    if outdated.is_empty() {
        return Step::Idle;
    }
    let leader_pod = members.iter().find(|m| m.leader).map(|m| m.name.clone());
    outdated.sort_by_key(|p| (Some(&p.name) == leader_pod.as_ref(), -p.ordinal));
    let next = outdated[0];
    if sts == 1 {
        // One member: its restart is an outage the spec chose.
        return Step::RollPod {
            pod: next.name.clone(),
        };
    }
    let member = members.iter().find(|m| m.name == next.name);
    if !can_lose(members, member) {
        return Step::Refuse(format!(
            "restarting {} would leave fewer healthy voters than a quorum",
            next.name
        ));
    }
    if let Some(m) = member.filter(|m| m.leader) {
        if members.iter().filter(|m| !m.learner).count() > 1 {
            return match successor(members, m.id) {
                Some(to) => Step::MoveLeader {
                    from: next.name.clone(),
                    to,
                },
                None => Step::Refuse(format!(
                    "{} leads and no healthy voter can take over",
                    next.name
                )),
            };
        }
    }
    Step::RollPod {
        pod: next.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "nod:1";
    const NEW: &str = "nod:2";

    fn pods(n: i32, hash: &str) -> Vec<PodView> {
        (0..n)
            .map(|i| PodView {
                name: format!("demo-{i}"),
                ordinal: i,
                ready: true,
                template_hash: Some(hash.into()),
                terminating: false,
            })
            .collect()
    }

    /// A learner added to Raft whose node never published its name.
    fn nameless_learner(id: u64) -> MemberView {
        MemberView {
            id,
            name: String::new(),
            learner: true,
            leader: false,
            healthy: false,
            lag: 10,
            matched: 0,
        }
    }

    /// Voters demo-0.. with ids 100+i; `leader` is an ordinal.
    fn members(n: i32, leader: i32) -> Vec<MemberView> {
        (0..n)
            .map(|i| MemberView {
                id: 100 + i as u64,
                name: format!("demo-{i}"),
                learner: false,
                leader: i == leader,
                healthy: true,
                lag: 0,
                matched: 10,
            })
            .collect()
    }

    fn observed(desired: i32, sts: i32, leader: i32) -> Observed {
        Observed {
            name: "demo".into(),
            desired_replicas: desired,
            desired_template_hash: OLD.into(),
            sts_replicas: Some(sts),
            pods: pods(sts, OLD),
            claims: (0..sts).map(|i| format!("demo-{i}")).collect(),
            members: Some(members(sts, leader)),
            removed: vec![],
            nameless_seen: vec![],
            hibernated: None,
            hibernation_backup: Default::default(),
        }
    }

    #[test]
    fn table() {
        type Case = (&'static str, Box<dyn Fn(&mut Observed)>, i32, i32, Step);
        let cases: Vec<Case> = vec![
            ("steady", Box::new(|_| {}), 3, 3, Step::Idle),
            (
                "no StatefulSet yet",
                Box::new(|o| o.sts_replicas = None),
                3,
                3,
                Step::Wait("creating the StatefulSet".into()),
            ),
            (
                "scale up raises the StatefulSet at once",
                Box::new(|_| {}),
                5,
                3,
                Step::ScaleTo(5),
            ),
            (
                "scale up even with no leader (new pods join when they can)",
                Box::new(|o| o.members = None),
                5,
                3,
                Step::ScaleTo(5),
            ),
            (
                "scale up deletes a stale claim at a new ordinal first",
                Box::new(|o| o.claims.push("demo-3".into())),
                5,
                3,
                Step::DeleteClaim {
                    pod: "demo-3".into(),
                },
            ),
            (
                "scale down removes the highest member first",
                Box::new(|_| {}),
                3,
                5,
                Step::RemoveMember {
                    name: "demo-4".into(),
                    id: 104,
                },
            ),
            (
                "scale down moves leadership off the member first",
                Box::new(|_| {}),
                3,
                5,
                // leader is set below for this case
                Step::MoveLeader {
                    from: "demo-4".into(),
                    to: 100,
                },
            ),
            (
                "once the member is gone the StatefulSet shrinks by one",
                Box::new(|o| {
                    o.members.as_mut().unwrap().retain(|m| m.name != "demo-4");
                    o.removed.push("demo-4".into());
                }),
                3,
                5,
                Step::ScaleTo(4),
            ),
            (
                "then the claim of the pod that went away is deleted",
                Box::new(|o| {
                    o.pods.retain(|p| p.name != "demo-4");
                    o.members.as_mut().unwrap().retain(|m| m.name != "demo-4");
                    o.removed.push("demo-4".into());
                    o.sts_replicas = Some(4);
                    o.claims.push("demo-4".into());
                }),
                3,
                4,
                Step::DeleteClaim {
                    pod: "demo-4".into(),
                },
            ),
            (
                "scale down refused when it would break quorum",
                Box::new(|o| {
                    let m = o.members.as_mut().unwrap();
                    m[1].healthy = false;
                    m[2].healthy = false;
                }),
                3,
                5,
                Step::Refuse(
                    "removing demo-4 would leave fewer healthy voters than a quorum".into(),
                ),
            ),
            (
                "a learner is removed without a quorum question",
                Box::new(|o| {
                    o.members.as_mut().unwrap().truncate(1);
                    o.members.as_mut().unwrap().push(MemberView {
                        id: 101,
                        name: "demo-1".into(),
                        learner: true,
                        leader: false,
                        healthy: true,
                        lag: 0,
                        matched: 10,
                    });
                }),
                1,
                2,
                Step::RemoveMember {
                    name: "demo-1".into(),
                    id: 101,
                },
            ),
            (
                "scale down waits for a leader",
                Box::new(|o| o.members = None),
                3,
                5,
                Step::Wait("no leader answers: waiting for the cluster to elect one".into()),
            ),
            (
                "reversed halfway: a removed member whose pod is wanted again is replaced",
                Box::new(|o| {
                    o.members.as_mut().unwrap().retain(|m| m.name != "demo-4");
                    o.removed.push("demo-4".into());
                }),
                5,
                5,
                Step::ReplaceMember {
                    pod: "demo-4".into(),
                },
            ),
            (
                "a stale removal record never wipes a pod that is a member again",
                Box::new(|o| o.removed.push("demo-4".into())),
                5,
                5,
                Step::Idle,
            ),
            (
                "a removal record is not acted on while no leader answers",
                Box::new(|o| {
                    o.members = None;
                    o.removed.push("demo-4".into());
                }),
                5,
                5,
                Step::Wait("no leader answers: waiting for the cluster to elect one".into()),
            ),
            (
                "a missing pod is waited for, never taken for a scale-down",
                Box::new(|o| {
                    o.pods.retain(|p| p.name != "demo-1");
                }),
                3,
                3,
                Step::Wait("demo-1 is not running yet".into()),
            ),
            (
                "a learner is waited for",
                Box::new(|o| o.members.as_mut().unwrap()[2].learner = true),
                3,
                3,
                Step::Wait("demo-2 is a learner, catching up".into()),
            ),
            (
                "upgrade rolls the highest follower first",
                Box::new(|o| o.desired_template_hash = NEW.into()),
                3,
                3,
                Step::RollPod {
                    pod: "demo-2".into(),
                },
            ),
            (
                "upgrade rolls the leader last, after moving leadership",
                Box::new(|o| {
                    o.desired_template_hash = NEW.into();
                    for p in &mut o.pods {
                        if p.name != "demo-0" {
                            p.template_hash = Some(NEW.into());
                        }
                    }
                }),
                3,
                3,
                Step::MoveLeader {
                    from: "demo-0".into(),
                    to: 101,
                },
            ),
            (
                "upgrade waits while a member is unhealthy",
                Box::new(|o| {
                    o.desired_template_hash = NEW.into();
                    o.members.as_mut().unwrap()[1].healthy = false;
                }),
                3,
                3,
                Step::Wait("demo-1 is unhealthy".into()),
            ),
            (
                "upgrade waits for the rolled pod to be ready again",
                Box::new(|o| {
                    o.desired_template_hash = NEW.into();
                    o.pods[2].template_hash = Some(NEW.into());
                    o.pods[2].ready = false;
                }),
                3,
                3,
                Step::Wait("demo-2 is not ready yet".into()),
            ),
            (
                "upgrade waits for a restarted member to catch up",
                Box::new(|o| {
                    o.desired_template_hash = NEW.into();
                    o.pods[2].template_hash = Some(NEW.into());
                    o.members.as_mut().unwrap()[2].lag = 5000;
                }),
                3,
                3,
                Step::Wait("demo-2 is catching up (5000 entries behind)".into()),
            ),
            (
                "a pod made from a template without a hash (an older operator's) rolls",
                Box::new(|o| o.pods[1].template_hash = None),
                3,
                3,
                Step::RollPod {
                    pod: "demo-1".into(),
                },
            ),
            (
                "a nameless learner does not hold up a rolling change",
                Box::new(|o| {
                    o.desired_template_hash = NEW.into();
                    o.members.as_mut().unwrap().push(nameless_learner(999));
                    o.nameless_seen = vec![(999, Duration::from_secs(10))];
                }),
                3,
                3,
                Step::RollPod {
                    pod: "demo-2".into(),
                },
            ),
            (
                "a nameless learner does not hold up a scale-down",
                Box::new(|o| {
                    o.members.as_mut().unwrap().push(nameless_learner(999));
                }),
                3,
                5,
                Step::RemoveMember {
                    name: "demo-4".into(),
                    id: 104,
                },
            ),
            (
                "a learner nameless past the grace is removed first",
                Box::new(|o| {
                    o.desired_template_hash = NEW.into();
                    o.members.as_mut().unwrap().push(nameless_learner(999));
                    o.nameless_seen = vec![(999, NAMELESS_LEARNER_GRACE)];
                }),
                3,
                3,
                Step::RemoveNamelessLearner { id: 999 },
            ),
            (
                "a single member upgrades in place (nothing to hand over to)",
                Box::new(|o| o.desired_template_hash = NEW.into()),
                1,
                1,
                Step::RollPod {
                    pod: "demo-0".into(),
                },
            ),
            (
                "replicas 0 without backups stops every member at once, none removed",
                Box::new(|_| {}),
                0,
                3,
                Step::Hibernate { members: 3 },
            ),
            (
                "replicas 0 with backups asks for one first",
                Box::new(|o| o.hibernation_backup = HibernationBackup::Needed),
                0,
                3,
                Step::BackupBeforeHibernation,
            ),
            (
                "replicas 0 waits for that backup",
                Box::new(|o| o.hibernation_backup = HibernationBackup::Pending("request 1".into())),
                0,
                3,
                Step::Wait("a backup before hibernating: request 1".into()),
            ),
            (
                "replicas 0 once the backup is written",
                Box::new(|o| o.hibernation_backup = HibernationBackup::Done),
                0,
                3,
                Step::Hibernate { members: 3 },
            ),
            (
                "replicas 0 hibernates even with a member unhealthy (nothing leaves Raft)",
                Box::new(|o| {
                    if let Some(m) = o.members.as_mut() {
                        m[2].healthy = false;
                    }
                }),
                0,
                3,
                Step::Hibernate { members: 3 },
            ),
            (
                "hibernated: nothing to do",
                Box::new(|o| {
                    o.members = None;
                    o.pods.clear();
                    o.hibernated = Some(3);
                }),
                0,
                0,
                Step::Idle,
            ),
            (
                "waking brings back every member that hibernated, even to a smaller size",
                Box::new(|o| {
                    o.members = None;
                    o.pods.clear();
                    o.hibernated = Some(3);
                }),
                1,
                0,
                Step::ScaleTo(3),
            ),
            (
                "woken at the hibernated size, a smaller spec scales down as usual",
                Box::new(|o| o.hibernated = Some(3)),
                1,
                3,
                Step::RemoveMember {
                    name: "demo-2".into(),
                    id: 102,
                },
            ),
        ];
        for (i, (what, edit, desired, sts, want)) in cases.into_iter().enumerate() {
            // Leader is demo-0, except where the case is about the top member leading.
            let leader = if what.contains("moves leadership off") {
                sts - 1
            } else {
                0
            };
            let mut o = observed(desired, sts, leader);
            edit(&mut o);
            assert_eq!(plan(&o), want, "case {i}: {what}");
        }
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3]);
    }
}
