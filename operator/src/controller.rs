//! The reconciler: apply the cluster's objects, observe Kubernetes and the
//! Nod cluster, take the planner's one next step, write status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{MemberStatus, NodCluster, NodClusterStatus};
use crate::metrics::Metrics;
use crate::nodapi::{ClusterApi, Health};
use crate::plan::{plan, MemberView, Observed, PodView, Step};
use crate::render;

pub const FINALIZER: &str = "nod.io/finalizer";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("Nod cluster: {0}")]
    Nod(String),
}

impl Error {
    /// A short label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::Nod(_) => "nod",
        }
    }
}

/// Where the operator reaches a cluster's members (tests point it at
/// loopback; in Kubernetes it is the pods' DNS names).
pub type Endpoints = Arc<dyn Fn(&NodCluster, i32) -> Vec<String> + Send + Sync>;

pub struct Context<A: ClusterApi> {
    pub client: kube::Client,
    pub api: A,
    pub metrics: Metrics,
    pub recorder: Option<Recorder>,
    pub endpoints: Endpoints,
}

impl<A: ClusterApi> Context<A> {
    pub fn new(client: kube::Client, api: A, metrics: Metrics, recorder: Option<Recorder>) -> Self {
        Context {
            client,
            api,
            metrics,
            recorder,
            endpoints: Arc::new(render::client_endpoints),
        }
    }

    async fn event(&self, nc: &NodCluster, type_: EventType, reason: &str, note: String) {
        tracing::info!(cluster = %nc.name_any(), reason, "{note}");
        if let Some(r) = &self.recorder {
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(note),
                action: reason.into(),
                secondary: None,
            };
            if let Err(e) = r.publish(&ev, &nc.object_ref(&())).await {
                tracing::warn!(error = %e, "could not record an event");
            }
        }
    }
}

pub async fn reconcile<A: ClusterApi>(
    nc: Arc<NodCluster>,
    ctx: Arc<Context<A>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<NodCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, nc, |event| async {
        match event {
            Finalizer::Apply(nc) => apply(&nc, &ctx).await,
            Finalizer::Cleanup(nc) => cleanup(&nc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.metrics.reconciles.with_label_values(&["ok"]).inc(),
        Err(e) => {
            ctx.metrics.reconciles.with_label_values(&["error"]).inc();
            ctx.metrics.failures.with_label_values(&[e.reason()]).inc();
        }
    }
    result
}

pub fn error_policy<A: ClusterApi>(
    nc: Arc<NodCluster>,
    e: &Error,
    _ctx: Arc<Context<A>>,
) -> Action {
    tracing::warn!(cluster = %nc.name_any(), error = %e, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// Deleting a NodCluster: owner references collect the objects; the claims
/// stay (data outlives the resource, as with a StatefulSet).
async fn cleanup<A: ClusterApi>(nc: &NodCluster, ctx: &Context<A>) -> Result<Action, Error> {
    ctx.event(
        nc,
        EventType::Normal,
        "Deleted",
        format!(
            "deleting the cluster's objects; volume claims {}-* are kept",
            render::claim_name(&nc.name_any())
        ),
    )
    .await;
    Ok(Action::await_change())
}

async fn apply_object<K>(client: &kube::Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(render::MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: since,
    }
}

async fn apply<A: ClusterApi>(nc: &NodCluster, ctx: &Context<A>) -> Result<Action, Error> {
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let name = nc.name_any();
    let client = &ctx.client;
    let old = nc.status.clone().unwrap_or_default();
    let mut status = NodClusterStatus {
        observed_generation: nc.metadata.generation,
        selector: Some(render::selector_string(nc)),
        bootstrap_expect: old.bootstrap_expect,
        removed_members: old.removed_members.clone(),
        current_image: old.current_image.clone(),
        ..Default::default()
    };

    let invalid = nc.spec.validate();
    if !invalid.is_empty() {
        let msg = invalid.join("; ");
        status.phase = Some("Failed".into());
        status.last_error = Some(msg.clone());
        status.conditions = vec![
            condition(
                "Available",
                false,
                "InvalidSpec",
                &msg,
                status.observed_generation,
                &old.conditions,
            ),
            condition(
                "Degraded",
                true,
                "InvalidSpec",
                &msg,
                status.observed_generation,
                &old.conditions,
            ),
        ];
        write_status(ctx, nc, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let bootstrap = *status.bootstrap_expect.get_or_insert(nc.spec.replicas);

    // Observe Kubernetes.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = sts_api.get_opt(&name).await?;
    let sts_replicas = sts.as_ref().and_then(|s| s.spec.as_ref()?.replicas);
    let lp = ListParams::default().labels(&render::selector_string(nc));
    let pods: Vec<PodView> = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&lp)
        .await?
        .into_iter()
        .filter_map(|p| pod_view(&name, &p))
        .collect();
    let claims: Vec<String> = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .list(&lp)
        .await?
        .into_iter()
        .filter_map(|c| {
            c.name_any()
                .strip_prefix(&format!("{}-", render::CLAIM_TEMPLATE))
                .map(str::to_string)
        })
        .collect();

    // Apply the objects (the StatefulSet at its current size: the planner
    // changes the size one step at a time).
    let replicas_now = sts_replicas.unwrap_or(nc.spec.replicas);
    apply_object(client, &ns, &render::service_account(nc)).await?;
    apply_object(client, &ns, &render::peers_service(nc)).await?;
    apply_object(client, &ns, &render::client_service(nc)).await?;
    apply_object(client, &ns, &render::pod_disruption_budget(nc)).await?;
    apply_object(
        client,
        &ns,
        &render::stateful_set(nc, replicas_now, bootstrap),
    )
    .await?;
    if let Some(sm) = render::service_monitor(nc) {
        let ar = ApiResource {
            group: "monitoring.coreos.com".into(),
            version: "v1".into(),
            api_version: "monitoring.coreos.com/v1".into(),
            kind: "ServiceMonitor".into(),
            plural: "servicemonitors".into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        api.patch(
            &name,
            &PatchParams::apply(render::MANAGER).force(),
            &Patch::Apply(&sm),
        )
        .await?;
    }
    if sts.is_none() {
        ctx.event(
            nc,
            EventType::Normal,
            "Created",
            format!("created the StatefulSet with {replicas_now} members"),
        )
        .await;
    }

    // Observe the Nod cluster.
    let endpoints = (ctx.endpoints)(nc, replicas_now);
    let health: Option<Health> = match ctx.api.health(endpoints.clone()).await {
        Ok(h) => Some(h),
        Err(e) => {
            status.last_error = Some(format!("no member answered: {e}"));
            None
        }
    };
    let observed = Observed {
        name: name.clone(),
        desired_replicas: nc.spec.replicas,
        desired_image: nc.spec.image(),
        sts_replicas: Some(replicas_now),
        pods: pods.clone(),
        claims,
        members: health.as_ref().map(|h| h.members.clone()),
        removed: status.removed_members.clone(),
    };
    let step = plan(&observed);
    tracing::debug!(cluster = %name, ?step, "planned");

    // Take the step.
    let mut refused = None;
    let mut waiting = None;
    match &step {
        Step::Idle => {}
        Step::ScaleTo(n) => {
            apply_object(client, &ns, &render::stateful_set(nc, *n, bootstrap)).await?;
            ctx.event(
                nc,
                EventType::Normal,
                "Scaled",
                format!("StatefulSet {replicas_now} -> {n} members"),
            )
            .await;
        }
        Step::MoveLeader { from, to } => {
            ctx.api
                .move_leader(endpoints.clone(), *to)
                .await
                .map_err(Error::Nod)?;
            ctx.event(
                nc,
                EventType::Normal,
                "LeaderMoved",
                format!("moved leadership from {from} to member {to:x}"),
            )
            .await;
        }
        Step::RemoveMember { name: member, id } => {
            ctx.api
                .remove_member(endpoints.clone(), *id)
                .await
                .map_err(Error::Nod)?;
            if !status.removed_members.contains(member) {
                status.removed_members.push(member.clone());
            }
            ctx.event(
                nc,
                EventType::Normal,
                "MemberRemoved",
                format!("removed member {member} ({id:x}) from Raft"),
            )
            .await;
        }
        Step::DeleteClaim { pod } => {
            delete_claim(client, &ns, pod).await?;
            status.removed_members.retain(|r| r != pod);
            ctx.event(
                nc,
                EventType::Normal,
                "ClaimDeleted",
                format!("deleted the volume claim of {pod}, which is no longer a member"),
            )
            .await;
        }
        Step::ReplaceMember { pod } => {
            delete_claim(client, &ns, pod).await?;
            delete_pod(client, &ns, pod).await?;
            status.removed_members.retain(|r| r != pod);
            ctx.event(
                nc,
                EventType::Normal,
                "MemberReplaced",
                format!(
                    "{pod} was removed from Raft and is wanted again: it restarts empty and joins"
                ),
            )
            .await;
        }
        Step::RollPod { pod } => {
            delete_pod(client, &ns, pod).await?;
            ctx.event(
                nc,
                EventType::Normal,
                "Upgrading",
                format!("restarting {pod} with {}", nc.spec.image()),
            )
            .await;
        }
        Step::Wait(why) => waiting = Some(why.clone()),
        Step::Refuse(why) => {
            refused = Some(why.clone());
            ctx.event(nc, EventType::Warning, "Refused", why.clone())
                .await;
        }
    }

    // Status from what was observed.
    let members = health
        .as_ref()
        .map(|h| h.members.clone())
        .unwrap_or_default();
    fill_status(&mut status, nc, &pods, &members, replicas_now, &step);
    let g = status.observed_generation;
    let voters: Vec<&MemberView> = members.iter().filter(|m| !m.learner).collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    let has_leader = members.iter().any(|m| m.leader);
    let available = has_leader && healthy_voters >= crate::plan::quorum(voters.len().max(1));
    let degraded_reason = if let Some(r) = &refused {
        Some(("Refused", r.clone()))
    } else if health.is_none() {
        Some(("NoLeader", status.last_error.clone().unwrap_or_default()))
    } else {
        members
            .iter()
            .find(|m| !m.healthy)
            .map(|m| ("MemberUnhealthy", format!("{} is unhealthy", m.name)))
    };
    let progressing = !matches!(step, Step::Idle | Step::Refuse(_));
    let progress_msg = match (&step, &waiting) {
        (_, Some(w)) => w.clone(),
        (Step::Idle, _) => "the cluster matches the spec".into(),
        (s, _) => format!("{s:?}"),
    };
    let mut conditions = vec![
        condition(
            "Available",
            available,
            if available {
                "QuorumHealthy"
            } else {
                "NoQuorum"
            },
            &if available {
                format!(
                    "{healthy_voters} of {} voters healthy, leader elected",
                    voters.len()
                )
            } else {
                "no leader with a healthy quorum".to_string()
            },
            g,
            &old.conditions,
        ),
        condition(
            "Progressing",
            progressing,
            if progressing { "Working" } else { "Done" },
            &progress_msg,
            g,
            &old.conditions,
        ),
    ];
    let (dr, dm) = degraded_reason.unwrap_or(("Healthy", String::new()));
    conditions.push(condition(
        "Degraded",
        dr != "Healthy",
        dr,
        &dm,
        g,
        &old.conditions,
    ));
    for w in nc.spec.warnings() {
        conditions.push(condition(
            "EvenMembers",
            true,
            "EvenReplicaCount",
            &w,
            g,
            &old.conditions,
        ));
    }
    status.conditions = conditions;
    write_status(ctx, nc, &status).await?;
    Ok(match step {
        Step::Idle => Action::requeue(Duration::from_secs(30)),
        Step::Refuse(_) => Action::requeue(Duration::from_secs(30)),
        _ => Action::requeue(Duration::from_secs(3)),
    })
}

fn fill_status(
    status: &mut NodClusterStatus,
    nc: &NodCluster,
    pods: &[PodView],
    members: &[MemberView],
    replicas: i32,
    step: &Step,
) {
    status.replicas = replicas;
    status.ready_replicas = pods.iter().filter(|p| p.ready && !p.terminating).count() as i32;
    status.ready = Some(format!("{}/{}", status.ready_replicas, nc.spec.replicas));
    status.leader = members.iter().find(|m| m.leader).map(|m| m.name.clone());
    status.members = members
        .iter()
        .map(|m| MemberStatus {
            name: m.name.clone(),
            id: format!("{:x}", m.id),
            role: if m.learner { "learner" } else { "voter" }.into(),
            healthy: m.healthy,
            applied_index: m.matched,
        })
        .collect();
    let image = nc.spec.image();
    if !pods.is_empty() && pods.iter().all(|p| p.image == image) {
        status.current_image = Some(image.clone());
    }
    status.phase = Some(
        match step {
            _ if members.is_empty() && pods.is_empty() => "Creating",
            Step::ScaleTo(_)
            | Step::RemoveMember { .. }
            | Step::DeleteClaim { .. }
            | Step::ReplaceMember { .. } => "Scaling",
            Step::RollPod { .. } => "Upgrading",
            Step::MoveLeader { .. } if nc.spec.replicas < replicas => "Scaling",
            Step::MoveLeader { .. } => "Upgrading",
            Step::Refuse(_) => "Degraded",
            _ if members.is_empty() => "Creating",
            _ if members.iter().any(|m| !m.healthy) => "Degraded",
            Step::Wait(_) if nc.spec.replicas != replicas => "Scaling",
            Step::Wait(_) if pods.iter().any(|p| p.image != image) => "Upgrading",
            _ => "Running",
        }
        .into(),
    );
}

async fn write_status<A: ClusterApi>(
    ctx: &Context<A>,
    nc: &NodCluster,
    status: &NodClusterStatus,
) -> Result<(), Error> {
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<NodCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": "nod.io/v1alpha1",
        "kind": "NodCluster",
        "status": status,
    });
    api.patch_status(
        &nc.name_any(),
        &PatchParams::apply(render::MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn delete_claim(client: &kube::Client, ns: &str, pod: &str) -> Result<(), Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    delete_if_present(&api, &render::claim_name(pod)).await
}

async fn delete_pod(client: &kube::Client, ns: &str, pod: &str) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    delete_if_present(&api, pod).await
}

/// Deletes `name`; already gone counts as done (a repeated reconcile).
async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A member pod of `cluster` (`<cluster>-<ordinal>`), or `None` for any other pod.
fn pod_view(cluster: &str, p: &Pod) -> Option<PodView> {
    let name = p.name_any();
    let ordinal: i32 = name.strip_prefix(&format!("{cluster}-"))?.parse().ok()?;
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let image = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "nod"))
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    Some(PodView {
        name,
        ordinal,
        ready,
        image,
        terminating: p.metadata.deletion_timestamp.is_some(),
    })
}
