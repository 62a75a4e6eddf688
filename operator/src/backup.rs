//! Scheduled backups (`spec.backup`): the backup agent's objects, its
//! status read into `status.backup`, and the conditions, Events and
//! metrics that follow from it.
//!
//! On demand: `kubectl annotate nodcluster/NAME nod.io/backup-now=<value>`
//! asks the agent for a full backup now, once per new value; status says
//! when it was written (`status.backup.onDemand`).
//!
//! The agent (`nod backup run --listen`, rendered by `render::backup_agent`)
//! does the work; the operator only reads `GET /status` on its usual timer
//! and writes what it read. It is the only writer of the NodCluster.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use nod_client::backup_agent::AgentStatus;

use crate::controller::{apply_network_policy, apply_object, delete_if_present, Context, Findings};
use crate::crd::{
    BackupFailure, BackupRecord, BackupSpec, BackupStatus, NodCluster, NodClusterStatus,
    OnDemandBackup,
};
use crate::nodapi::ClusterApi;
use crate::plan::HibernationBackup;
use crate::render;

/// Applies (or, once `spec.backup` is gone, deletes) the agent's objects,
/// reads its status into `status.backup` and records Events for what
/// changed since `old`.
pub(crate) async fn reconcile<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    old: Option<&BackupStatus>,
    hibernated: bool,
    findings: &mut Findings,
) -> Option<BackupStatus> {
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let name = render::backup_agent_name(nc);
    let client = &ctx.client;
    let Some(spec) = &nc.spec.backup else {
        ctx.metrics.forget_backups(&ns, &nc.name_any());
        // Backups were configured and are no more: the agent goes (what it
        // wrote stays in the destination). Never asked when they never
        // were, so clusters without backups cost no requests.
        if old.is_some() {
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let services: Api<Service> = Api::namespaced(client.clone(), &ns);
            let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
            for r in [
                delete_if_present(&deployments, &name).await,
                delete_if_present(&services, &name).await,
                delete_if_present(&policies, &name).await,
            ] {
                if let Err(e) = r {
                    findings
                        .errors
                        .push(format!("deleting the backup agent: {e}"));
                    return old.cloned();
                }
            }
            ctx.event(
                nc,
                EventType::Normal,
                "BackupsStopped",
                "spec.backup was removed: the backup agent is deleted; backups taken stay in their destination".into(),
            )
            .await;
        }
        return None;
    };
    if let Some(d) = render::backup_agent(nc, hibernated) {
        if let Err(e) = apply_object(client, &ns, &d).await {
            findings.kube("applying the backup agent Deployment", &e);
        }
    }
    if let Some(s) = render::backup_agent_service(nc) {
        if let Err(e) = apply_object(client, &ns, &s).await {
            findings.kube("applying the backup agent Service", &e);
        }
    }
    apply_network_policy(
        client,
        &ns,
        &name,
        render::backup_network_policy(nc, ctx.operator_namespace.as_deref()),
        "the backup agent NetworkPolicy",
        findings,
    )
    .await;
    if spec.suspend || hibernated {
        ctx.metrics.forget_backups(&ns, &nc.name_any());
        let mut kept = old.cloned().unwrap_or_default();
        kept.agent_error = None;
        kept.next_scheduled = None;
        return Some(kept);
    }
    let url = (ctx.agent_url)(nc);
    let agent = ctx.api.backup_status(&url).await;
    let mut new = read_status(old, agent);
    let now = k8s_openapi::jiff::Timestamp::now();
    new.enabled_since.get_or_insert(Time(now));
    for (type_, reason, note) in news(old, &new) {
        ctx.event(nc, type_, reason, note).await;
    }
    // On demand: a new annotation value asks for a full now.
    let wanted = nc.annotations().get(BACKUP_NOW_ANNOTATION).cloned();
    match on_demand(wanted.as_deref(), &new) {
        OnDemand::Ask(value) => match ctx.api.request_backup(&url).await {
            Ok(request) => {
                new.on_demand = Some(OnDemandBackup {
                    for_value: value.clone(),
                    request,
                    requested: Time(k8s_openapi::jiff::Timestamp::now()),
                    taken: None,
                });
                ctx.event(
                    nc,
                    EventType::Normal,
                    "BackupRequested",
                    format!("{BACKUP_NOW_ANNOTATION}={value}: a full backup is being taken"),
                )
                .await;
            }
            Err(e) => findings
                .errors
                .push(format!("asking the backup agent for a backup now: {e}")),
        },
        OnDemand::Taken(record) => {
            if let Some(o) = new.on_demand.as_mut() {
                ctx.event(
                    nc,
                    EventType::Normal,
                    "BackupTaken",
                    format!(
                        "{BACKUP_NOW_ANNOTATION}={}: backup {} at revision {}",
                        o.for_value, record.chain, record.revision
                    ),
                )
                .await;
                o.taken = Some(record);
            }
        }
        OnDemand::Nothing => {}
    }
    let cluster = nc.name_any();
    if let Some(last) = &new.last_successful {
        ctx.metrics
            .backup_last_success
            .with_label_values(&[ns.as_str(), cluster.as_str()])
            .set(last.time.0.as_second() as f64);
    }
    let stale = conditions(spec, &new, now)
        .iter()
        .any(|(type_, is, _, _)| *type_ == "BackupStale" && *is);
    ctx.metrics
        .backup_stale
        .with_label_values(&[ns.as_str(), cluster.as_str()])
        .set(i64::from(stale));
    Some(new)
}

/// The annotation that asks for a backup now (any new value).
pub const BACKUP_NOW_ANNOTATION: &str = "nod.io/backup-now";

/// What an on-demand backup needs next.
#[derive(Debug, PartialEq)]
pub enum OnDemand {
    Nothing,
    /// Ask the agent (a value not asked for yet).
    Ask(String),
    /// The agent finished the request: this full answered it.
    Taken(BackupRecord),
}

/// The next thing to do for the `nod.io/backup-now` annotation `wanted`,
/// given the status just read from the agent.
pub fn on_demand(wanted: Option<&str>, s: &BackupStatus) -> OnDemand {
    let Some(value) = wanted.filter(|v| !v.is_empty()) else {
        return OnDemand::Nothing;
    };
    match &s.on_demand {
        Some(o) if o.for_value == value => {
            let done = s.completed_request.is_some_and(|n| n >= o.request);
            match (&o.taken, &s.last_successful) {
                (None, Some(last)) if done => OnDemand::Taken(last.clone()),
                _ => OnDemand::Nothing,
            }
        }
        _ => OnDemand::Ask(value.to_string()),
    }
}

fn time(unix_ms: i64) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_millisecond(unix_ms)
        .ok()
        .map(Time)
}

/// `status.backup` from the agent's answer. An agent that cannot be asked
/// (starting, restarted, unreachable) leaves what was known, with the
/// reason; a restarted agent forgets its history, so fields it no longer
/// reports keep their old values.
pub fn read_status(old: Option<&BackupStatus>, agent: Result<AgentStatus, String>) -> BackupStatus {
    let mut s = old.cloned().unwrap_or_default();
    let a = match agent {
        Ok(a) => a,
        Err(e) => {
            s.agent_error = Some(e);
            return s;
        }
    };
    s.agent_error = None;
    if let Some(f) = &a.last_full {
        if let Some(t) = time(f.time_unix_ms) {
            s.last_successful = Some(BackupRecord {
                time: t,
                chain: f.chain.clone(),
                revision: f.revision,
                size_bytes: f.size_bytes,
            });
        }
    }
    if a.reached_revision > 0 {
        s.reached_revision = Some(a.reached_revision);
        s.reached_time = time(a.reached_unix_ms);
    }
    if let Some(f) = &a.last_failure {
        if let Some(t) = time(f.time_unix_ms) {
            s.last_failure = Some(BackupFailure {
                time: t,
                message: f.message.clone(),
            });
        }
    }
    s.next_scheduled = a.next_full_unix_ms.and_then(time);
    s.completed_request = Some(a.completed_request);
    s
}

/// Where the backup owed before hibernating stands: done once the agent
/// reports the request finished, or (an agent restarted since, which
/// numbers requests anew) a full written over a minute after the request
/// (clocks of two machines).
pub fn before_hibernation(nc: &NodCluster, status: &NodClusterStatus) -> HibernationBackup {
    let configured = nc.spec.backup.as_ref().is_some_and(|b| !b.suspend);
    if !configured || nc.spec.replicas != 0 {
        return HibernationBackup::NotConfigured;
    }
    let Some(asked) = &status.hibernation_backup else {
        return HibernationBackup::Needed;
    };
    let b = status.backup.clone().unwrap_or_default();
    let finished = b.completed_request.is_some_and(|n| n >= asked.request);
    let later_full = b
        .last_successful
        .as_ref()
        .is_some_and(|l| l.time.0.as_second() > asked.requested.0.as_second() + 60);
    if finished || later_full {
        return HibernationBackup::Done;
    }
    HibernationBackup::Pending(match (&b.agent_error, &b.last_failure) {
        (Some(e), _) => format!("the backup agent does not answer: {e}"),
        (None, Some(f)) if f.time.0 >= asked.requested.0 => {
            format!("the backup failed: {}", f.message)
        }
        _ => format!("request {} is not finished yet", asked.request),
    })
}

/// The newest time a backup made progress: its last full, or the last
/// segment of the chain after it.
fn last_progress(s: &BackupStatus) -> Option<k8s_openapi::jiff::Timestamp> {
    let full = s.last_successful.as_ref().map(|l| l.time.0);
    let reached = s.reached_time.as_ref().map(|t| t.0);
    full.max(reached)
}

/// Whether the newest thing the agent reported is a failure.
pub fn failing(s: &BackupStatus) -> bool {
    match (&s.last_failure, last_progress(s)) {
        (Some(f), Some(ok)) => f.time.0 > ok,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The Events for what changed between two statuses: a new full, a new
/// failure, the first success after failures.
pub fn news(
    old: Option<&BackupStatus>,
    new: &BackupStatus,
) -> Vec<(EventType, &'static str, String)> {
    let mut out = Vec::new();
    let old_failure = old.and_then(|o| o.last_failure.as_ref());
    if let Some(f) = &new.last_failure {
        if old_failure.is_none_or(|o| o.time != f.time) {
            out.push((EventType::Warning, "BackupFailed", f.message.clone()));
        }
    }
    let old_full = old.and_then(|o| o.last_successful.as_ref());
    if let Some(l) = &new.last_successful {
        if old_full.is_none_or(|o| o.chain != l.chain) {
            out.push((
                EventType::Normal,
                "BackupSucceeded",
                format!(
                    "full backup {} at revision {} ({} bytes)",
                    l.chain, l.revision, l.size_bytes
                ),
            ));
        }
    }
    out
}

/// The `BackupSucceeded` and `BackupStale` conditions, as (type, ok,
/// reason, message).
pub fn conditions(
    spec: &BackupSpec,
    s: &BackupStatus,
    now: k8s_openapi::jiff::Timestamp,
) -> Vec<(&'static str, bool, &'static str, String)> {
    if spec.suspend {
        return vec![(
            "BackupSucceeded",
            false,
            "Suspended",
            "backup.suspend is set: no backups are taken".into(),
        )];
    }
    let succeeded = if failing(s) {
        let f = s.last_failure.as_ref().map_or("", |f| f.message.as_str());
        ("BackupSucceeded", false, "BackupFailed", f.to_string())
    } else if let Some(l) = &s.last_successful {
        (
            "BackupSucceeded",
            true,
            "BackupWritten",
            format!(
                "last full backup {} at revision {}; backups reach revision {}",
                l.chain,
                l.revision,
                s.reached_revision.unwrap_or(l.revision)
            ),
        )
    } else {
        (
            "BackupSucceeded",
            false,
            "NoBackupYet",
            s.agent_error
                .clone()
                .unwrap_or_else(|| "the first backup is being taken".into()),
        )
    };
    let limit = i64::from(spec.stale_after_hours) * 3600;
    // Before the first backup, the clock runs from when backups were
    // configured: backups that never work must alert too.
    let since = last_progress(s).or(s.enabled_since.as_ref().map(|t| t.0));
    let stale = since.is_some_and(|t| now.as_second() - t.as_second() > limit);
    let stale_msg = match (last_progress(s), since) {
        (Some(t), _) if stale => format!(
            "no backup progress for {} h (since {t}); the limit is {} h",
            (now.as_second() - t.as_second()) / 3600,
            spec.stale_after_hours
        ),
        (Some(t), _) => format!("last backup progress at {t}"),
        (None, Some(t)) if stale => format!(
            "no backup succeeded in the {} h since backups were configured ({t}); the limit is {} h",
            (now.as_second() - t.as_second()) / 3600,
            spec.stale_after_hours
        ),
        (None, _) => "no backup taken yet".into(),
    };
    vec![
        succeeded,
        (
            "BackupStale",
            stale,
            if stale { "NoRecentBackup" } else { "Recent" },
            stale_msg,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use nod_client::backup_agent::{AgentFailure, FullBackup};

    const T0: i64 = 1_767_225_600_000;

    fn spec() -> BackupSpec {
        serde_yaml::from_str("{schedule: '@hourly', destination: {claim: {name: b}}}").unwrap()
    }

    fn agent(full_at: Option<i64>, failed_at: Option<i64>) -> AgentStatus {
        AgentStatus {
            last_full: full_at.map(|t| FullBackup {
                chain: format!("c1/chain-{t}"),
                revision: 42,
                size_bytes: 1000,
                stored_bytes: 100,
                time_unix_ms: t,
            }),
            last_failure: failed_at.map(|t| AgentFailure {
                time_unix_ms: t,
                message: "bucket gone".into(),
            }),
            reached_revision: if full_at.is_some() { 50 } else { 0 },
            reached_unix_ms: full_at.map_or(0, |t| t + 60_000),
            next_full_unix_ms: Some(T0 + 3_600_000),
            ..Default::default()
        }
    }

    fn at(ms: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap()
    }

    #[test]
    fn a_success_then_a_failure_then_a_success() {
        let first = read_status(None, Ok(agent(Some(T0), None)));
        let l = first.last_successful.clone().unwrap();
        assert_eq!((l.revision, l.size_bytes), (42, 1000));
        assert_eq!(first.reached_revision, Some(50));
        assert_eq!(first.next_scheduled, time(T0 + 3_600_000));
        let ev = news(None, &first);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1, "BackupSucceeded");
        let c = conditions(&spec(), &first, at(T0 + 120_000));
        assert_eq!((c[0].1, c[0].2), (true, "BackupWritten"));
        assert_eq!((c[1].1, c[1].2), (false, "Recent"));
        // Read again: nothing new, no Event.
        let same = read_status(Some(&first), Ok(agent(Some(T0), None)));
        assert!(news(Some(&first), &same).is_empty());

        let failed = read_status(Some(&first), Ok(agent(Some(T0), Some(T0 + 300_000))));
        let ev = news(Some(&first), &failed);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].0, ev[0].1), (EventType::Warning, "BackupFailed"));
        let c = conditions(&spec(), &failed, at(T0 + 400_000));
        assert_eq!((c[0].1, c[0].2), (false, "BackupFailed"));
        assert_eq!(c[0].3, "bucket gone");

        let again = read_status(
            Some(&failed),
            Ok(agent(Some(T0 + 3_600_000), Some(T0 + 300_000))),
        );
        let ev = news(Some(&failed), &again);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].1, "BackupSucceeded");
        assert!(conditions(&spec(), &again, at(T0 + 3_700_000))[0].1);
    }

    #[test]
    fn an_unreachable_agent_keeps_what_was_known() {
        let first = read_status(None, Ok(agent(Some(T0), None)));
        let gone = read_status(Some(&first), Err("connection refused".into()));
        assert_eq!(gone.last_successful, first.last_successful);
        assert_eq!(gone.agent_error.as_deref(), Some("connection refused"));
        assert!(news(Some(&first), &gone).is_empty());
        let mut never = read_status(None, Err("no route".into()));
        let c = conditions(&spec(), &never, at(T0));
        assert_eq!((c[0].1, c[0].2), (false, "NoBackupYet"));
        assert_eq!(c[0].3, "no route");
        assert!(!c[1].1, "nothing to be stale yet");
        // Backups that never work go stale, counted from when they were
        // configured.
        never.enabled_since = time(T0);
        assert!(!conditions(&spec(), &never, at(T0 + 23 * 3_600_000))[1].1);
        let c = conditions(&spec(), &never, at(T0 + 25 * 3_600_000));
        assert_eq!((c[1].1, c[1].2), (true, "NoRecentBackup"));
        assert!(
            c[1].3.contains("since backups were configured"),
            "{}",
            c[1].3
        );
        // A restarted agent reports no full yet: the last one is kept.
        let restarted = read_status(Some(&first), Ok(agent(None, None)));
        assert_eq!(restarted.last_successful, first.last_successful);
        assert_eq!(restarted.reached_revision, Some(50));
    }

    #[test]
    fn an_annotation_value_asks_for_one_backup_and_sees_it_taken() {
        let mut s = read_status(None, Ok(agent(Some(T0), None)));
        assert_eq!(on_demand(None, &s), OnDemand::Nothing);
        assert_eq!(on_demand(Some(""), &s), OnDemand::Nothing);
        assert_eq!(on_demand(Some("a"), &s), OnDemand::Ask("a".into()));
        s.on_demand = Some(OnDemandBackup {
            for_value: "a".into(),
            request: 3,
            requested: time(T0).unwrap(),
            taken: None,
        });
        // Asked, not finished: nothing more (never asked twice).
        s.completed_request = Some(2);
        assert_eq!(on_demand(Some("a"), &s), OnDemand::Nothing);
        // Finished: the newest full answered it.
        let later = read_status(
            Some(&s),
            Ok(AgentStatus {
                completed_request: 3,
                ..agent(Some(T0 + 5_000), None)
            }),
        );
        match on_demand(Some("a"), &later) {
            OnDemand::Taken(r) => assert_eq!(r.chain, format!("c1/chain-{}", T0 + 5_000)),
            other => panic!("{other:?}"),
        }
        let mut taken = later.clone();
        if let Some(o) = taken.on_demand.as_mut() {
            o.taken = later.last_successful.clone();
        }
        assert_eq!(on_demand(Some("a"), &taken), OnDemand::Nothing);
        // A new value: a new backup.
        assert_eq!(on_demand(Some("b"), &taken), OnDemand::Ask("b".into()));
    }

    #[test]
    fn stale_after_the_configured_hours_of_no_progress() {
        let s = read_status(None, Ok(agent(Some(T0), None)));
        let progress = T0 + 60_000; // the segment after the full
        let hours = |h: i64| at(progress + h * 3_600_000);
        assert!(!conditions(&spec(), &s, hours(24))[1].1);
        let c = conditions(&spec(), &s, hours(25));
        assert_eq!((c[1].1, c[1].2), (true, "NoRecentBackup"));
        assert!(c[1].3.contains("25 h"), "{}", c[1].3);
        let mut short = spec();
        short.stale_after_hours = 2;
        assert!(conditions(&short, &s, hours(3))[1].1);
        short.suspend = true;
        let c = conditions(&short, &s, hours(3));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].2, "Suspended");
    }
}
