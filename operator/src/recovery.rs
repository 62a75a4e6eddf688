//! Recovery from a quorum lost for good, as an operator action: the
//! README's "Disaster recovery" runbook, carried out when the user sets
//! `nod.io/recover-quorum: "<status.clusterId>"` on a NodCluster whose
//! status says `QuorumLost`.
//!
//! 1. Survey: every member pod that answers is asked for its own Raft index
//!    (Maintenance.Status at that pod alone); the highest is the survivor
//!    (ties: the lowest ordinal). Recorded in `status.recovery`.
//! 2. Force: the StatefulSet's template gets
//!    `--force-new-cluster-once=<survivor>:<recovery id>` (every pod gets
//!    the flag; only the survivor acts on it, and only once per id) and the
//!    survivor's pod is deleted, so it restarts as its cluster's only
//!    member, with its data, the same cluster id and revisions.
//! 3. Rejoin, one at a time: each other pod that is not a member is marked
//!    removed, so the planner replaces it (claim wiped, pod deleted) and it
//!    joins empty as a learner and is promoted; the next only once it is a
//!    healthy voter.
//! 4. Done: the annotation is removed (a later loss needs a new decision).
//!
//! Each step records an Event. What may be lost is what the runbook says:
//! writes a majority committed that never reached the survivor.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;

use crate::controller::{Context, Findings};
use crate::crd::{NodCluster, NodClusterStatus, RecoveryStatus};
use crate::nodapi::{ClusterApi, Health, MemberIndex, Target};
use crate::render;

/// The annotation that starts a recovery; its value must be the cluster id.
pub const RECOVER_ANNOTATION: &str = "nod.io/recover-quorum";

/// The survivor: the pod whose member holds the most of the log.
/// `answers` are (pod, ordinal, what it said); only members of `cluster`
/// count.
pub fn choose_survivor(
    answers: &[(String, i32, Result<MemberIndex, String>)],
    cluster: u64,
) -> Result<(String, u64), String> {
    answers
        .iter()
        .filter_map(|(pod, ordinal, a)| match a {
            Ok(m) if m.cluster_id == cluster => Some((pod, *ordinal, m.raft_index)),
            _ => None,
        })
        .max_by_key(|(_, ordinal, index)| (*index, -ordinal))
        .map(|(pod, _, index)| (pod.clone(), index))
        .ok_or_else(|| {
            let seen: Vec<String> = answers
                .iter()
                .map(|(pod, _, a)| match a {
                    Ok(m) => format!("{pod}: cluster {:x}", m.cluster_id),
                    Err(e) => format!("{pod}: {e}"),
                })
                .collect();
            format!(
                "no member of cluster {cluster:x} answered: {}",
                seen.join("; ")
            )
        })
}

/// What the rejoin stage does next, given the leader's member table.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejoin {
    /// Mark this pod removed: the planner wipes and restarts it.
    Replace(String),
    /// A pod is on its way (replaced, joining or catching up).
    Wait(String),
    /// Every pod is a healthy voter.
    Done,
}

/// `removed`: pods the planner is to replace; `replaced`: pods this
/// recovery wiped already (each is wiped once, then waited for: wiping it
/// again while it joins would start it over).
pub fn rejoin(
    pods: &[String],
    survivor: &str,
    health: &Health,
    removed: &[String],
    replaced: &[String],
) -> Rejoin {
    for pod in pods.iter().filter(|p| *p != survivor) {
        match health.members.iter().find(|m| &m.name == pod) {
            Some(m) if !m.learner && m.healthy => continue,
            Some(_) => return Rejoin::Wait(format!("{pod} is catching up")),
            None if removed.contains(pod) || replaced.contains(pod) => {
                return Rejoin::Wait(format!("{pod} is rejoining empty"))
            }
            None => return Rejoin::Replace(pod.clone()),
        }
    }
    Rejoin::Done
}

/// The survivor's `--force-new-cluster-once` value while the recovery
/// forces, for the StatefulSet's template.
pub fn force_flag(status: &NodClusterStatus) -> Option<String> {
    let r = status.recovery.as_ref()?;
    (r.stage == "Forcing").then(|| format!("{}:{}", r.survivor, r.id))
}

/// One reconcile's part of a recovery, after the objects were applied
/// (the StatefulSet with [`force_flag`] of this status). `quorum_lost`:
/// founded and no leader answers.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn reconcile<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    target: &Target,
    health: Option<&Health>,
    quorum_lost: bool,
    replicas: i32,
    status: &mut NodClusterStatus,
    findings: &mut Findings,
) {
    let asked = nc.annotations().get(RECOVER_ANNOTATION).cloned();
    let pods: Vec<String> = (0..replicas).map(|i| render::pod_name(nc, i)).collect();
    let Some(r) = status.recovery.clone() else {
        let Some(value) = asked else { return };
        let Some(cluster) = status.cluster_id.clone() else {
            findings.not_applied.push((
                "RecoveryRefused",
                format!("{RECOVER_ANNOTATION}: the cluster was never founded"),
            ));
            return;
        };
        if value != cluster {
            findings.not_applied.push((
                "RecoveryRefused",
                format!("{RECOVER_ANNOTATION} is {value:?}, not this cluster's id {cluster:?}: nothing is done"),
            ));
            return;
        }
        if !quorum_lost {
            findings.not_applied.push((
                "RecoveryRefused",
                format!(
                    "{RECOVER_ANNOTATION}: the cluster has a leader; there is no quorum to recover"
                ),
            ));
            return;
        }
        let Ok(cluster_id) = u64::from_str_radix(&cluster, 16) else {
            return;
        };
        let endpoints = (ctx.endpoints)(nc, replicas);
        // Status needs no login (and a login may need the leader that is
        // missing): the TLS client certificate only.
        let anonymous = Target {
            credentials: None,
            ..target.clone()
        };
        let mut answers = Vec::new();
        for (i, (pod, ep)) in pods.iter().zip(&endpoints).enumerate() {
            answers.push((
                pod.clone(),
                i as i32,
                ctx.api.member_status(&anonymous, ep).await,
            ));
        }
        let (survivor, index) = match choose_survivor(&answers, cluster_id) {
            Ok(s) => s,
            Err(e) => {
                findings.errors.push(format!("quorum recovery: {e}"));
                return;
            }
        };
        let id = format!("{}", k8s_openapi::jiff::Timestamp::now().as_second());
        let seen: Vec<String> = answers
            .iter()
            .map(|(pod, _, a)| match a {
                Ok(m) => format!("{pod} at raft index {}", m.raft_index),
                Err(_) => format!("{pod} did not answer"),
            })
            .collect();
        status.recovery = Some(RecoveryStatus {
            id,
            survivor: survivor.clone(),
            raft_index: index,
            stage: "Forcing".into(),
            restarted: false,
            replaced: Vec::new(),
            started: Time(k8s_openapi::jiff::Timestamp::now()),
        });
        ctx.event(
            nc,
            EventType::Warning,
            "RecoveryStarted",
            format!(
                "recovering from lost quorum: {survivor} holds the most of the log ({}); it restarts as the only member, the others rejoin empty",
                seen.join(", ")
            ),
        )
        .await;
        // The next reconcile applies the StatefulSet with the flag, then
        // restarts the survivor.
        return;
    };
    match r.stage.as_str() {
        "Forcing" if !r.restarted => {
            // The template carries the flag (applied earlier in this
            // reconcile): the survivor's new pod starts with it.
            let ns = nc.namespace().unwrap_or_else(|| "default".into());
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            match crate::controller::delete_if_present(&api, &r.survivor).await {
                Ok(()) => {
                    if let Some(rec) = status.recovery.as_mut() {
                        rec.restarted = true;
                    }
                    ctx.event(
                        nc,
                        EventType::Normal,
                        "RecoveryForcing",
                        format!(
                            "restarting {} with --force-new-cluster-once={}:{}",
                            r.survivor, r.survivor, r.id
                        ),
                    )
                    .await;
                }
                Err(e) => findings
                    .errors
                    .push(format!("restarting {} to force: {e}", r.survivor)),
            }
        }
        "Forcing" => {
            let alone = health.is_some_and(|h| {
                h.members.len() == 1 && h.members[0].name == r.survivor && h.members[0].leader
            });
            if alone {
                if let Some(rec) = status.recovery.as_mut() {
                    rec.stage = "Rejoining".into();
                }
                ctx.event(
                    nc,
                    EventType::Normal,
                    "RecoveryForced",
                    format!(
                        "{} leads as the only member of cluster {}; the others rejoin one at a time",
                        r.survivor,
                        status.cluster_id.clone().unwrap_or_default()
                    ),
                )
                .await;
            }
        }
        _ => {
            let Some(h) = health else { return };
            match rejoin(&pods, &r.survivor, h, &status.removed_members, &r.replaced) {
                Rejoin::Replace(pod) => {
                    status.removed_members.push(pod.clone());
                    if let Some(rec) = status.recovery.as_mut() {
                        rec.replaced.push(pod.clone());
                    }
                    ctx.event(
                        nc,
                        EventType::Normal,
                        "RecoveryRejoin",
                        format!("{pod} is wiped and rejoins as a new member"),
                    )
                    .await;
                }
                Rejoin::Wait(_) => {}
                Rejoin::Done => {
                    status.recovery = None;
                    ctx.event(
                        nc,
                        EventType::Normal,
                        "Recovered",
                        format!(
                            "quorum recovered from {}: {} voters",
                            r.survivor,
                            h.members.len()
                        ),
                    )
                    .await;
                    let api: Api<NodCluster> = Api::namespaced(
                        ctx.client.clone(),
                        &nc.namespace().unwrap_or_else(|| "default".into()),
                    );
                    let patch = json!({"metadata": {"annotations": {RECOVER_ANNOTATION: null}}});
                    if let Err(e) = api
                        .patch(
                            &nc.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        findings.kube("removing the recover-quorum annotation", &e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::MemberView;

    fn idx(cluster: u64, raft_index: u64) -> Result<MemberIndex, String> {
        Ok(MemberIndex {
            cluster_id: cluster,
            member_id: 1,
            raft_index,
        })
    }

    #[test]
    fn the_survivor_holds_the_most_of_the_log() {
        let answers = vec![
            (
                "demo-0".to_string(),
                0,
                Err("connection refused".to_string()),
            ),
            ("demo-1".to_string(), 1, idx(0xc1, 40)),
            ("demo-2".to_string(), 2, idx(0xc1, 42)),
            ("demo-3".to_string(), 3, idx(0xc1, 42)),
            // Another cluster's member never counts, however far it is.
            ("demo-4".to_string(), 4, idx(0xee, 99)),
        ];
        assert_eq!(
            choose_survivor(&answers, 0xc1),
            Ok(("demo-2".to_string(), 42)),
            "the highest index; the lowest ordinal on a tie"
        );
        let e = choose_survivor(&answers[..1], 0xc1).unwrap_err();
        assert!(e.contains("demo-0: connection refused"), "{e}");
    }

    fn member(name: &str, learner: bool, healthy: bool) -> MemberView {
        MemberView {
            id: 1,
            name: name.into(),
            learner,
            leader: name == "demo-2",
            healthy,
            lag: 0,
            matched: 1,
        }
    }

    #[test]
    fn the_others_rejoin_one_at_a_time() {
        let pods: Vec<String> = (0..3).map(|i| format!("demo-{i}")).collect();
        let mut h = Health {
            cluster_id: 0xc1,
            members: vec![member("demo-2", false, true)],
            client_urls: vec![],
        };
        assert_eq!(
            rejoin(&pods, "demo-2", &h, &[], &[]),
            Rejoin::Replace("demo-0".into())
        );
        // Marked for the planner, then wiped: waited for, never wiped twice.
        let zero = ["demo-0".to_string()];
        assert!(matches!(
            rejoin(&pods, "demo-2", &h, &zero, &[]),
            Rejoin::Wait(_)
        ));
        assert!(matches!(
            rejoin(&pods, "demo-2", &h, &[], &zero),
            Rejoin::Wait(_)
        ));
        h.members.push(member("demo-0", true, true));
        assert!(matches!(
            rejoin(&pods, "demo-2", &h, &[], &zero),
            Rejoin::Wait(_)
        ));
        h.members[1].learner = false;
        assert_eq!(
            rejoin(&pods, "demo-2", &h, &[], &zero),
            Rejoin::Replace("demo-1".into())
        );
        h.members.push(member("demo-1", false, true));
        assert_eq!(rejoin(&pods, "demo-2", &h, &[], &zero), Rejoin::Done);
    }

    #[test]
    fn the_flag_is_rendered_only_while_forcing() {
        let mut s = NodClusterStatus::default();
        assert_eq!(force_flag(&s), None);
        s.recovery = Some(RecoveryStatus {
            id: "170".into(),
            survivor: "demo-2".into(),
            raft_index: 42,
            stage: "Forcing".into(),
            restarted: false,
            replaced: Vec::new(),
            started: Time(k8s_openapi::jiff::Timestamp::now()),
        });
        assert_eq!(force_flag(&s).as_deref(), Some("demo-2:170"));
        if let Some(r) = s.recovery.as_mut() {
            r.stage = "Rejoining".into();
        }
        assert_eq!(force_flag(&s), None);
    }
}
