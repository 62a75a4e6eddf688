//! The reconciler: apply the cluster's objects, observe Kubernetes and the
//! Nod cluster, take the planner's one next step, write status.
//!
//! Status is written at the end of every reconcile, whatever failed on the
//! way: an object Kubernetes refuses, a ServiceMonitor without its CRD, a
//! storage size the class cannot expand or a failed step each become a
//! condition (`SpecApplied`, `Degraded`) or `lastError`, and the rest of the
//! reconcile goes on, so a bad edit never blinds the operator to a running
//! cluster. Deletion needs no finalizer: owner references collect the
//! objects and the StatefulSet's claim retention policy decides the claims.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{MemberStatus, NamelessLearner, NodCluster, NodClusterStatus, MAX_NAME_LEN};
use crate::metrics::Metrics;
use crate::nodapi::{ClusterApi, Health, Target};
use crate::plan::{plan, MemberView, Observed, PodView, Step};
use crate::render::{self, ClaimTemplate, Shape};
use crate::security;

/// The finalizer operators before this one put on every NodCluster. It is
/// removed on sight: deletion must never wait for a running operator.
pub const LEGACY_FINALIZER: &str = "nod.io/finalizer";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Nod cluster: {0}")]
    Nod(String),
    /// A reconcile that went on past failures (status says which); the
    /// first of them, so the controller retries.
    #[error("{0}")]
    Partial(String),
}

impl Error {
    /// A short label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Nod(_) => "nod",
            Error::Partial(_) => "partial",
        }
    }
}

/// Where the operator reaches a cluster's members (tests point it at
/// loopback; in Kubernetes it is the pods' DNS names).
pub type Endpoints = Arc<dyn Fn(&NodCluster, i32) -> Vec<String> + Send + Sync>;

/// Where the operator reaches a cluster's backup agent.
pub type AgentUrl = Arc<dyn Fn(&NodCluster) -> String + Send + Sync>;

pub struct Context<A: ClusterApi> {
    pub client: kube::Client,
    pub api: A,
    pub metrics: Metrics,
    pub recorder: Option<Recorder>,
    pub endpoints: Endpoints,
    pub agent_url: AgentUrl,
    /// Where the operator keeps each cluster's client certificate files
    /// (`<dir>/<namespace>/<name>/`), for its TLS client to load.
    pub state_dir: std::path::PathBuf,
    /// The operator's own namespace: the NetworkPolicies let it reach the
    /// client port. `None` outside Kubernetes.
    pub operator_namespace: Option<String>,
    /// The last status this operator wrote, by the resource's uid. The
    /// watch cache can lag a status write by a few milliseconds, and a
    /// reconcile that follows at once (an owned object changed) would build
    /// on the older status and forget what the last step recorded (a
    /// member removed from Raft whose claim is still to delete). The
    /// operator is the only writer of status, so what it wrote last is the
    /// newest; after a restart the watch's first list is.
    pub written: WrittenStatus,
}

/// The last status written, by the NodCluster's uid (see `Context::written`).
pub type WrittenStatus = std::sync::Mutex<std::collections::HashMap<String, NodClusterStatus>>;

impl<A: ClusterApi> Context<A> {
    pub fn new(client: kube::Client, api: A, metrics: Metrics, recorder: Option<Recorder>) -> Self {
        Context {
            client,
            api,
            metrics,
            recorder,
            endpoints: Arc::new(render::client_endpoints),
            agent_url: Arc::new(render::backup_agent_url),
            state_dir: std::env::temp_dir().join("nod-operator"),
            operator_namespace: None,
            written: Default::default(),
        }
    }

    /// The status to build on: the last one written, else the resource's.
    fn last_status(&self, nc: &NodCluster) -> NodClusterStatus {
        let written = nc.uid().and_then(|uid| {
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&uid)
                .cloned()
        });
        written.unwrap_or_else(|| nc.status.clone().unwrap_or_default())
    }

    fn forget_status(&self, nc: &NodCluster) {
        if let Some(uid) = nc.uid() {
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
        }
    }

    fn remember_status(&self, nc: &NodCluster, status: &NodClusterStatus) {
        if let Some(uid) = nc.uid() {
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, status.clone());
        }
    }

    pub(crate) async fn event(
        &self,
        nc: &NodCluster,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.event_about(nc, type_, reason, note, None).await
    }

    /// An Event on the NodCluster about one of its pods (the Event's
    /// `related` object): events with the same reason about different pods
    /// stay apart instead of folding into one series.
    pub(crate) async fn event_about(
        &self,
        nc: &NodCluster,
        type_: EventType,
        reason: &str,
        note: String,
        pod: Option<&str>,
    ) {
        tracing::info!(cluster = %nc.name_any(), reason, "{note}");
        if let Some(r) = &self.recorder {
            let secondary = pod.map(|p| k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(p.into()),
                namespace: nc.namespace(),
                ..Default::default()
            });
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(note),
                action: reason.into(),
                secondary,
            };
            if let Err(e) = r.publish(&ev, &nc.object_ref(&())).await {
                tracing::warn!(error = %e, "could not record an event");
            }
        }
    }
}

/// What makes a NodCluster's watch event worth a reconcile: its generation,
/// which changes with the spec and with the deletion mark. Never its
/// status: every reconcile rewrites status (members' applied indexes move
/// with every write), and reacting to that would loop. The cluster itself
/// is observed on the timer `reconcile` returns.
pub fn reconcile_trigger(nc: &NodCluster) -> Option<u64> {
    let generation = kube::runtime::predicates::generation(nc)?;
    // ... and the certificate renewal annotation, which asks for action
    // without changing the spec.
    // ... and the annotations that ask for action without changing the
    // spec: a certificate renewal, a backup now.
    let mut value = generation;
    for a in [
        crate::certs::RENEW_ANNOTATION,
        crate::backup::BACKUP_NOW_ANNOTATION,
    ] {
        if let Some(r) = nc.annotations().get(a) {
            // FNV-1a: stable, unlike std's hasher (a predicate's value is
            // compared with the one seen before).
            let h = r.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            value = value.rotate_left(1) ^ h;
        }
    }
    Some(value)
}

pub async fn reconcile<A: ClusterApi>(
    nc: Arc<NodCluster>,
    ctx: Arc<Context<A>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match drop_legacy_finalizer(&nc, &ctx).await {
        Err(e) => Err(e),
        // Being deleted: owner references collect the objects, the
        // StatefulSet's retention policy the claims. Nothing to apply.
        Ok(()) if nc.metadata.deletion_timestamp.is_some() => {
            ctx.forget_status(&nc);
            Ok(Action::await_change())
        }
        Ok(()) => apply(&nc, &ctx).await,
    };
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

/// Removes the finalizer of earlier operators. A merge patch with the
/// resourceVersion it read, so a concurrent change of the list is not lost.
async fn drop_legacy_finalizer<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
) -> Result<(), Error> {
    let finalizers = nc.finalizers();
    if !finalizers.iter().any(|f| f == LEGACY_FINALIZER) {
        return Ok(());
    }
    let rest: Vec<&String> = finalizers
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let api: Api<NodCluster> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &nc.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {
            "resourceVersion": nc.resource_version(),
            "finalizers": rest,
        }})),
    )
    .await?;
    tracing::info!(cluster = %nc.name_any(), "removed the finalizer of an earlier operator");
    Ok(())
}

/// Applies a rendered NetworkPolicy, or deletes the one named `name` when
/// none is rendered (turned off); failures go to `findings`.
pub(crate) async fn apply_network_policy(
    client: &kube::Client,
    ns: &str,
    name: &str,
    rendered: Option<serde_json::Value>,
    what: &str,
    findings: &mut Findings,
) {
    match rendered {
        Some(np) => {
            let applied = match serde_json::from_value::<NetworkPolicy>(np) {
                Ok(np) => apply_object(client, ns, &np).await,
                Err(e) => Err(kube::Error::SerdeError(e)),
            };
            if let Err(e) = applied {
                findings.kube(&format!("applying {what}"), &e);
            }
        }
        None => {
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
            if let Err(e) = delete_if_present(&api, name).await {
                findings.errors.push(format!("deleting {what}: {e}"));
            }
        }
    }
}

pub(crate) async fn apply_object<K>(
    client: &kube::Client,
    ns: &str,
    obj: &K,
) -> Result<(), kube::Error>
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

pub(crate) fn condition(
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

/// What went wrong in a reconcile without ending it.
#[derive(Default)]
pub(crate) struct Findings {
    /// Failed calls (to Kubernetes or the cluster): `lastError`, and the
    /// reconcile returns an error after writing status, to be retried.
    pub(crate) errors: Vec<String>,
    /// Parts of the spec that were not applied, as (reason, why): the
    /// `SpecApplied` condition. Not errors: retrying does not help.
    pub(crate) not_applied: Vec<(&'static str, String)>,
}

impl Findings {
    pub(crate) fn kube(&mut self, what: &str, e: &kube::Error) {
        self.errors.push(format!("{what}: {e}"));
    }
}

/// Everything a reconcile observed, for status.
struct Observation {
    pods: Vec<PodView>,
    images: Vec<String>,
    health: Option<Health>,
    replicas_now: i32,
    step: Step,
}

async fn apply<A: ClusterApi>(nc: &NodCluster, ctx: &Context<A>) -> Result<Action, Error> {
    let old = ctx.last_status(nc);
    let mut status = NodClusterStatus {
        observed_generation: nc.metadata.generation,
        selector: Some(render::selector_string(nc)),
        bootstrap_expect: old.bootstrap_expect,
        cluster_id: old.cluster_id.clone(),
        nameless_learners: old.nameless_learners.clone(),
        removed_members: old.removed_members.clone(),
        current_image: old.current_image.clone(),
        tls: old.tls.clone(),
        auth_enabled: old.auth_enabled,
        backup: old.backup.clone(),
        restored_revision: old.restored_revision,
        hibernated_replicas: old.hibernated_replicas,
        recovery: old.recovery.clone(),
        hibernation_backup: old.hibernation_backup.clone(),
        ..Default::default()
    };

    let mut invalid = nc.spec.validate();
    // Members of a founded cluster speak what they were created with: a
    // plaintext member and a TLS member cannot hear each other, so a roll
    // from one to the other would split the cluster.
    let was = old.tls.as_ref().map(|t| t.mode.as_str());
    let wants = nc.spec.tls.as_ref().map(|t| t.mode.name());
    if old.cluster_id.is_some() && was != wants {
        invalid.push(format!(
            "tls: the cluster was created with {}; TLS cannot be turned on, off or changed on a running cluster",
            was.map_or("no TLS".to_string(), |m| format!("tls.mode {m}"))
        ));
    }
    if nc.name_any().len() > MAX_NAME_LEN {
        invalid.push(format!(
            "metadata.name is {} characters; at most {MAX_NAME_LEN} fit the pods' labels",
            nc.name_any().len()
        ));
    }
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
    status.bootstrap_expect.get_or_insert(nc.spec.replicas);

    let mut findings = Findings::default();
    match observe_and_act(nc, ctx, &mut status, &mut findings).await {
        Ok(seen) => {
            fill_status(&mut status, nc, &seen, &findings, &old);
            write_status(ctx, nc, &status).await?;
            if let Some(first) = findings.errors.first() {
                return Err(Error::Partial(first.clone()));
            }
            // A certificate renewal in flight is checked every 5 s.
            let renewing = status.tls.as_ref().is_some_and(|t| t.renewing.is_some());
            Ok(match seen.step {
                Step::Idle | Step::Refuse(_) if renewing => Action::requeue(Duration::from_secs(5)),
                Step::Idle | Step::Refuse(_) => Action::requeue(Duration::from_secs(30)),
                Step::Wait(_) => Action::requeue(Duration::from_secs(5)),
                _ => Action::requeue(Duration::from_secs(3)),
            })
        }
        Err(e) => {
            // Kubernetes could not be observed: keep what status said about
            // the cluster, and say why it is not newer.
            let msg = e.to_string();
            let mut kept = NodClusterStatus {
                last_error: Some(msg.clone()),
                observed_generation: status.observed_generation,
                bootstrap_expect: status.bootstrap_expect,
                ..old.clone()
            };
            kept.conditions.retain(|c| c.type_ != "Degraded");
            kept.conditions.push(condition(
                "Degraded",
                true,
                "KubernetesError",
                &msg,
                status.observed_generation,
                &old.conditions,
            ));
            if let Err(w) = write_status(ctx, nc, &kept).await {
                tracing::warn!(cluster = %nc.name_any(), error = %w, "could not write status");
            }
            Err(e)
        }
    }
}

/// Observes, applies the objects, resizes claims, plans and takes the step.
/// Only a failure to observe Kubernetes ends it early (`Err`); every other
/// failure goes into `findings`.
async fn observe_and_act<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    status: &mut NodClusterStatus,
    findings: &mut Findings,
) -> Result<Observation, Error> {
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let name = nc.name_any();
    let client = &ctx.client;

    // Observe Kubernetes.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = sts_api.get_opt(&name).await?;
    let sts_replicas = sts.as_ref().and_then(|s| s.spec.as_ref()?.replicas);
    let lp = ListParams::default().labels(&render::selector_string(nc));
    let raw_pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&lp)
        .await?;
    let pods: Vec<PodView> = raw_pods.iter().filter_map(|p| pod_view(&name, p)).collect();
    let images: Vec<String> = raw_pods.iter().filter_map(pod_image).collect();
    let claim_prefix = format!("{}-", render::CLAIM_TEMPLATE);
    let raw_claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .list(&lp)
        .await?;
    let claims: Vec<String> = raw_claims
        .iter()
        .filter_map(|c| c.name_any().strip_prefix(&claim_prefix).map(str::to_string))
        .collect();
    // A removed member with neither pod nor claim left has nothing more to
    // clean up (its claim went with a status write that failed, or by
    // hand); kept, it would mark a later pod of that name for replacement.
    status
        .removed_members
        .retain(|r| pods.iter().any(|p| &p.name == r) || claims.contains(r));

    // Apply the objects: the StatefulSet at its current size (the planner
    // changes the size one step at a time) and with the claim template it
    // was created with (immutable; claims are resized below instead).
    let replicas_now = sts_replicas.unwrap_or(nc.spec.replicas);
    // Observe the Nod cluster, before applying: a cluster seen founded
    // gets a template without founding flags in this very reconcile.
    // Secrets first: the members mount them, and the operator needs its
    // client certificate to ask the cluster anything.
    security::ensure_gossip_key(nc, ctx, findings).await;
    let prepared = security::prepare(nc, ctx, replicas_now, status, findings).await;
    let target = &prepared.target;
    // Hibernated: no member runs, none is asked.
    let hibernated = nc.spec.replicas == 0 && sts_replicas == Some(0);
    let health: Option<Health> = if hibernated {
        None
    } else {
        match ctx.api.health(target).await {
            Ok(h) => Some(h),
            Err(e) => {
                status.last_error = Some(format!("no member answered: {e}"));
                None
            }
        }
    };
    if nc.spec.replicas > 0 {
        status.hibernation_backup = None;
        // Awake again once every member that hibernated runs and a leader
        // answers; from here the usual scaling applies.
        if let Some(h) = status.hibernated_replicas {
            if replicas_now >= h && health.is_some() {
                status.hibernated_replicas = None;
                ctx.event(
                    nc,
                    EventType::Normal,
                    "Resumed",
                    format!("the {h} members that hibernated are back, with a leader"),
                )
                .await;
            }
        }
    }
    // A leader of another cluster than the one this NodCluster founded
    // (a split brain, or endpoints that reach someone else's pods) is
    // never acted on: every membership step would go to the wrong cluster.
    let mut foreign = None;
    if let Some(h) = &health {
        let id = format!("{:x}", h.cluster_id);
        let has_leader = h.members.iter().any(|m| m.leader);
        match &status.cluster_id {
            None if has_leader && h.cluster_id != 0 => {
                // Founded: from now on new pods only join.
                status.cluster_id = Some(id.clone());
                if let Some(r) = &nc.spec.restore {
                    status.restored_revision = Some(r.revision);
                    ctx.event(
                        nc,
                        EventType::Normal,
                        "Restored",
                        format!(
                            "cluster {id} was restored from {} at revision {}",
                            r.dest(),
                            r.revision
                        ),
                    )
                    .await;
                }
                ctx.event(
                    nc,
                    EventType::Normal,
                    "Founded",
                    format!(
                        "cluster {id} has a leader and {} members; new pods join it",
                        h.members.len()
                    ),
                )
                .await;
            }
            Some(founded) if h.cluster_id != 0 && *founded != id => {
                let why = format!(
                    "the leader answers for cluster {id}, but this NodCluster founded {founded}"
                );
                findings.errors.push(why.clone());
                foreign = Some(why);
            }
            _ => {}
        }
    }
    security::members_certificates(
        nc,
        ctx,
        &prepared,
        replicas_now.max(nc.spec.replicas),
        health.as_ref(),
        status,
        findings,
    )
    .await;
    let founding = match &status.cluster_id {
        Some(_) => None,
        None => status.bootstrap_expect,
    };
    let shape = Shape {
        replicas: replicas_now,
        founding,
        claim: sts.as_ref().and_then(ClaimTemplate::of),
        force: crate::recovery::force_flag(status),
    };
    if let Err(e) = apply_object(client, &ns, &render::service_account(nc)).await {
        findings.kube("applying the ServiceAccount", &e);
    }
    if let Err(e) = apply_object(client, &ns, &render::peers_service(nc)).await {
        findings.kube("applying the peers Service", &e);
    }
    if let Err(e) = apply_object(client, &ns, &render::client_service(nc)).await {
        findings.kube("applying the client Service", &e);
    }
    if let Err(e) = apply_object(
        client,
        &ns,
        &render::pod_disruption_budget(nc, replicas_now),
    )
    .await
    {
        findings.kube("applying the PodDisruptionBudget", &e);
    }
    let sts_applied = match apply_object(client, &ns, &render::stateful_set(nc, &shape)).await {
        Ok(()) => true,
        Err(e) => {
            findings.kube("applying the StatefulSet", &e);
            false
        }
    };
    apply_network_policy(
        client,
        &ns,
        &name,
        render::network_policy(nc, ctx.operator_namespace.as_deref()),
        "the NetworkPolicy",
        findings,
    )
    .await;
    if let Some(sm) = render::service_monitor(nc) {
        let ar = ApiResource {
            group: "monitoring.coreos.com".into(),
            version: "v1".into(),
            api_version: "monitoring.coreos.com/v1".into(),
            kind: "ServiceMonitor".into(),
            plural: "servicemonitors".into(),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        match api
            .patch(
                &name,
                &PatchParams::apply(render::MANAGER).force(),
                &Patch::Apply(&sm),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => findings.not_applied.push((
                "ServiceMonitorCRDMissing",
                "metrics.serviceMonitor: the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1) is not installed".into(),
            )),
            Err(e) => findings.kube("applying the ServiceMonitor", &e),
        }
    }
    if sts.is_none() && sts_applied {
        ctx.event(
            nc,
            EventType::Normal,
            "Created",
            format!("created the StatefulSet with {replicas_now} members"),
        )
        .await;
    }
    resize_claims(nc, ctx, &raw_claims.items, findings).await;
    status.backup =
        crate::backup::reconcile(nc, ctx, status.backup.as_ref(), hibernated, findings).await;

    let quorum_lost = quorum_lost(nc, status, health.is_some());
    crate::recovery::reconcile(
        nc,
        ctx,
        target,
        health.as_ref(),
        quorum_lost,
        replicas_now,
        status,
        findings,
    )
    .await;

    let nameless_seen = track_nameless_learners(status, health.as_ref());

    let observed = Observed {
        name: name.clone(),
        desired_replicas: nc.spec.replicas,
        desired_template_hash: render::template_hash(nc),
        sts_replicas: (sts.is_some() || sts_applied).then_some(replicas_now),
        pods: pods.clone(),
        claims,
        members: health.as_ref().map(|h| h.members.clone()),
        removed: status.removed_members.clone(),
        nameless_seen,
        hibernated: status.hibernated_replicas,
        hibernation_backup: crate::backup::before_hibernation(nc, status),
    };
    let step = match foreign {
        Some(why) => Step::Refuse(format!("{why}: no step is taken")),
        None => plan(&observed),
    };
    tracing::debug!(cluster = %name, ?step, "planned");
    if let Err(e) = take_step(nc, ctx, &step, &shape, target, status).await {
        findings.errors.push(format!("{step:?}: {e}"));
    }
    if !matches!(step, Step::Refuse(_)) {
        security::reconcile_auth(nc, ctx, target, health.as_ref(), status, findings).await;
    }
    Ok(Observation {
        pods,
        images,
        health,
        replicas_now,
        step,
    })
}

/// Carries out one planned step.
async fn take_step<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    step: &Step,
    shape: &Shape,
    target: &Target,
    status: &mut NodClusterStatus,
) -> Result<(), Error> {
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let client = &ctx.client;
    match step {
        Step::Idle | Step::Wait(_) => {}
        Step::ScaleTo(n) => {
            let scaled = Shape {
                replicas: *n,
                ..shape.clone()
            };
            apply_object(client, &ns, &render::stateful_set(nc, &scaled)).await?;
            // The budget follows the size at once: a drain must not take a
            // quorum of the larger (or smaller) cluster in between.
            apply_object(client, &ns, &render::pod_disruption_budget(nc, *n)).await?;
            ctx.event(
                nc,
                EventType::Normal,
                "Scaled",
                format!("StatefulSet {} -> {n} members", shape.replicas),
            )
            .await;
        }
        Step::MoveLeader { from, to } => {
            ctx.api.move_leader(target, *to).await.map_err(Error::Nod)?;
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
                .remove_member(target, *id)
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
        Step::RemoveNamelessLearner { id } => {
            ctx.api
                .remove_member(target, *id)
                .await
                .map_err(Error::Nod)?;
            let hex = format!("{id:x}");
            status.nameless_learners.retain(|l| l.id != hex);
            ctx.event(
                nc,
                EventType::Normal,
                "MemberRemoved",
                format!(
                    "removed learner {hex}: it has had no name for {} s (a join that never finished)",
                    crate::plan::NAMELESS_LEARNER_GRACE.as_secs()
                ),
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
                "PodRolled",
                format!(
                    "restarting {pod} with the changed pod template ({} {})",
                    render::TEMPLATE_HASH,
                    render::template_hash(nc)
                ),
            )
            .await;
        }
        Step::Refuse(why) => {
            ctx.event(nc, EventType::Warning, "Refused", why.clone())
                .await;
        }
        Step::BackupBeforeHibernation => {
            let asked = ctx
                .api
                .request_backup(&(ctx.agent_url)(nc))
                .await
                .map_err(Error::Nod)?;
            status.hibernation_backup = Some(crate::crd::HibernationBackupStatus {
                request: asked,
                requested: Time(k8s_openapi::jiff::Timestamp::now()),
            });
            ctx.event(
                nc,
                EventType::Normal,
                "BackupBeforeHibernation",
                "replicas is 0: a full backup is taken before the members stop".into(),
            )
            .await;
        }
        Step::Hibernate { members } => {
            // Recorded before the pods go: a crash in between still
            // knows how many to bring back.
            status.hibernated_replicas = Some(*members);
            let stopped = Shape {
                replicas: 0,
                ..shape.clone()
            };
            apply_object(client, &ns, &render::stateful_set(nc, &stopped)).await?;
            apply_object(client, &ns, &render::pod_disruption_budget(nc, 0)).await?;
            ctx.event(
                nc,
                EventType::Normal,
                "Hibernated",
                format!(
                    "all {members} members stopped together (none left Raft); their claims stay; set replicas again to resume"
                ),
            )
            .await;
        }
    }
    Ok(())
}

/// Keeps `status.namelessLearners` to the learners without a name now, with
/// when each was first seen; returns how long each has been seen so.
fn track_nameless_learners(
    status: &mut NodClusterStatus,
    health: Option<&Health>,
) -> Vec<(u64, Duration)> {
    let Some(h) = health else {
        // Nothing seen: keep the record as it is.
        return Vec::new();
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut kept = Vec::new();
    let mut seen = Vec::new();
    for m in h.members.iter().filter(|m| m.learner && m.name.is_empty()) {
        let id = format!("{:x}", m.id);
        // The clock restarts while it catches up.
        let first = status
            .nameless_learners
            .iter()
            .find(|l| l.id == id && l.matched == m.matched)
            .map_or(now, |l| l.first_seen.0);
        let for_ = now
            .duration_since(first)
            .try_into()
            .unwrap_or(Duration::ZERO);
        seen.push((m.id, for_));
        kept.push(NamelessLearner {
            id,
            first_seen: Time(first),
            matched: m.matched,
        });
    }
    status.nameless_learners = kept;
    seen
}

#[cfg(test)]
mod nameless_learner_tests {
    use super::*;

    fn learner(id: u64, matched: u64) -> MemberView {
        MemberView {
            id,
            name: String::new(),
            learner: true,
            leader: false,
            healthy: true,
            lag: 0,
            matched,
        }
    }

    #[test]
    fn a_nameless_learner_that_catches_up_is_not_counted_as_stuck() {
        let ten_minutes_ago =
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(600);
        let mut status = NodClusterStatus {
            nameless_learners: vec![
                NamelessLearner {
                    id: "a".into(),
                    first_seen: Time(ten_minutes_ago),
                    matched: 5,
                },
                NamelessLearner {
                    id: "b".into(),
                    first_seen: Time(ten_minutes_ago),
                    matched: 7,
                },
            ],
            ..Default::default()
        };
        let health = Health {
            cluster_id: 1,
            // a: stuck at 5; b: moved from 7 to 900.
            members: vec![learner(0xa, 5), learner(0xb, 900)],
            client_urls: vec![],
        };
        let seen = track_nameless_learners(&mut status, Some(&health));
        assert!(seen[0].1 >= Duration::from_secs(599), "{seen:?}");
        assert!(seen[1].1 < Duration::from_secs(5), "{seen:?}");
        assert_eq!(status.nameless_learners[1].matched, 900);
    }
}

/// Resizes claims to `storage.size` where their StorageClass allows it;
/// what cannot be applied goes into `findings` (the StatefulSet's claim
/// template is immutable, so this is the only way a size change reaches
/// the volumes).
/// A claim asked for more storage than its volume has yet (an expansion
/// in progress).
fn expanding(c: &PersistentVolumeClaim) -> bool {
    let asked = c
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity_bytes(&q.0));
    let has = c
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity_bytes(&q.0));
    matches!((asked, has), (Some(a), Some(h)) if a > h)
}

async fn resize_claims<A: ClusterApi>(
    nc: &NodCluster,
    ctx: &Context<A>,
    claims: &[PersistentVolumeClaim],
    findings: &mut Findings,
) {
    let want = &nc.spec.storage.size;
    let Some(want_bytes) = quantity_bytes(want) else {
        return;
    };
    // Per class: `Some(allowed)` when the StorageClass could be read,
    // `None` when reading it is forbidden (the chart grants nothing
    // cluster-wide with watchNamespaces): then the API server's resize
    // admission decides, and its refusal is reported the same way.
    let mut expandable: BTreeMap<String, Option<bool>> = BTreeMap::new();
    let mut shrink = Vec::new();
    let mut stuck: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // One member's volume at a time: none is asked while another is still
    // expanding (asked for more than it has), and one per reconcile.
    let mut busy = claims.iter().any(expanding);
    let mut claims: Vec<&PersistentVolumeClaim> = claims.iter().collect();
    claims.sort_by_key(|c| c.name_any());
    for claim in claims {
        let spec = claim.spec.clone().unwrap_or_default();
        let has = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default();
        let Some(has_bytes) = quantity_bytes(&has) else {
            continue;
        };
        if want_bytes < has_bytes {
            shrink.push(format!("{} ({has})", claim.name_any()));
            continue;
        }
        if want_bytes == has_bytes {
            continue;
        }
        let class = spec.storage_class_name.clone().unwrap_or_default();
        let allowed = match expandable.get(&class) {
            Some(a) => *a,
            None => {
                let a = if class.is_empty() {
                    Some(false)
                } else {
                    match Api::<StorageClass>::all(ctx.client.clone())
                        .get_opt(&class)
                        .await
                    {
                        Ok(sc) => Some(sc.and_then(|sc| sc.allow_volume_expansion) == Some(true)),
                        Err(kube::Error::Api(s)) if s.code == 403 => None,
                        Err(e) => {
                            findings.kube(&format!("reading StorageClass {class}"), &e);
                            continue;
                        }
                    }
                };
                expandable.insert(class.clone(), a);
                a
            }
        };
        if allowed == Some(false) {
            stuck.entry(class).or_default().push(claim.name_any());
            continue;
        }
        if busy {
            continue;
        }
        busy = true;
        let ns = claim.namespace().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        // A merge patch, not an apply: it must never create a claim that
        // went away in the meantime.
        let patch = json!({"spec": {"resources": {"requests": {"storage": want}}}});
        match api
            .patch(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                ctx.event(
                    nc,
                    EventType::Normal,
                    "ClaimExpanding",
                    format!("asked to expand {} from {has} to {want}", claim.name_any()),
                )
                .await
            }
            // The resize admission's refusal (the class cannot expand, or
            // the volume was not provisioned by one): not an error to retry.
            Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => {
                findings.not_applied.push((
                    "StorageNotExpandable",
                    format!(
                        "storage.size {want} not applied to {}: {}",
                        claim.name_any(),
                        s.message
                    ),
                ));
            }
            Err(e) => findings.kube(&format!("expanding {}", claim.name_any()), &e),
        }
    }
    if !shrink.is_empty() {
        findings.not_applied.push((
            "StorageShrinkRefused",
            format!(
                "storage.size {want} not applied: volumes cannot shrink ({})",
                shrink.join(", ")
            ),
        ));
    }
    for (class, names) in stuck {
        let class = if class.is_empty() {
            "(none)".to_string()
        } else {
            class
        };
        findings.not_applied.push((
            "StorageNotExpandable",
            format!(
                "storage.size {want} not applied: StorageClass {class} does not allow volume expansion ({})",
                names.join(", ")
            ),
        ));
    }
}

/// Bytes in a quantity of the form `crd::is_quantity` accepts.
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u128 = digits.parse().ok()?;
    let unit: u128 = match &q[digits.len()..] {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Status from what the reconcile observed and met.
/// A founded cluster that no leader answers for, when it is neither
/// hibernated nor coming back from it.
fn quorum_lost(nc: &NodCluster, status: &NodClusterStatus, leader_answered: bool) -> bool {
    status.cluster_id.is_some()
        && !leader_answered
        && nc.spec.replicas > 0
        && status.hibernated_replicas.is_none()
}

fn fill_status(
    status: &mut NodClusterStatus,
    nc: &NodCluster,
    seen: &Observation,
    findings: &Findings,
    old: &NodClusterStatus,
) {
    let members = seen
        .health
        .as_ref()
        .map(|h| h.members.clone())
        .unwrap_or_default();
    let pods = &seen.pods;
    let step = &seen.step;
    let replicas = seen.replicas_now;
    let hibernating = nc.spec.replicas == 0;
    let resuming = !hibernating && status.hibernated_replicas.is_some();
    let quorum_lost = quorum_lost(nc, status, seen.health.is_some());
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
    if !seen.images.is_empty() && seen.images.iter().all(|i| *i == image) {
        status.current_image = Some(image.clone());
    }
    let hash = render::template_hash(nc);
    let rolling = pods
        .iter()
        .any(|p| p.template_hash.as_deref() != Some(hash.as_str()));
    status.phase = Some(
        match step {
            // A founded cluster with no leader answering has lost its
            // quorum (or every member is down): never "Creating" again.
            _ if status.recovery.is_some() => "Recovering",
            _ if quorum_lost => "QuorumLost",
            // Hibernated once the last pod is gone, not when it is asked to go.
            _ if hibernating && replicas == 0 && pods.is_empty() => "Hibernated",
            _ if hibernating => "Hibernating",
            _ if resuming => "Resuming",
            _ if members.is_empty() && pods.is_empty() => "Creating",
            Step::ScaleTo(_)
            | Step::RemoveMember { .. }
            | Step::RemoveNamelessLearner { .. }
            | Step::DeleteClaim { .. }
            | Step::ReplaceMember { .. } => "Scaling",
            Step::RollPod { .. } => "Upgrading",
            Step::MoveLeader { .. } if nc.spec.replicas < replicas => "Scaling",
            Step::MoveLeader { .. } => "Upgrading",
            Step::Refuse(_) => "Degraded",
            _ if members.is_empty() => "Creating",
            _ if members.iter().any(|m| !m.healthy) => "Degraded",
            Step::Wait(_) if nc.spec.replicas != replicas => "Scaling",
            Step::Wait(_) if rolling => "Upgrading",
            _ => "Running",
        }
        .into(),
    );
    if let Some(e) = findings.errors.first() {
        status.last_error = Some(e.clone());
    }

    let g = status.observed_generation;
    let voters: Vec<&MemberView> = members.iter().filter(|m| !m.learner).collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    let has_leader = members.iter().any(|m| m.leader);
    let available = has_leader && healthy_voters >= crate::plan::quorum(voters.len().max(1));
    let no_leader = status.last_error.clone().unwrap_or_default();
    let degraded = if (hibernating || resuming) && seen.health.is_none() {
        // Stopped on purpose, or coming back: not a fault.
        None
    } else if let Step::Refuse(r) = step {
        Some(("Refused", r.clone()))
    } else if quorum_lost {
        Some((
            "QuorumLost",
            format!("no leader answers; the cluster was founded ({no_leader})"),
        ))
    } else if seen.health.is_none() {
        Some(("NoLeader", no_leader))
    } else if let Some(e) = findings.errors.first() {
        Some(("ReconcileError", e.clone()))
    } else {
        members
            .iter()
            .find(|m| !m.healthy)
            .map(|m| ("MemberUnhealthy", format!("{} is unhealthy", m.name)))
    };
    let progressing = !matches!(step, Step::Idle | Step::Refuse(_));
    let progress_msg = match step {
        Step::Wait(w) => w.clone(),
        Step::Idle => "the cluster matches the spec".into(),
        s => format!("{s:?}"),
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
            } else if quorum_lost {
                "quorum lost: no leader with a healthy quorum".to_string()
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
    let (dr, dm) = degraded.unwrap_or(("Healthy", String::new()));
    conditions.push(condition(
        "Degraded",
        dr != "Healthy",
        dr,
        &dm,
        g,
        &old.conditions,
    ));
    let (ar, am) = match findings.not_applied.first() {
        None => ("Applied", String::new()),
        Some((reason, _)) => (
            *reason,
            findings
                .not_applied
                .iter()
                .map(|(_, why)| why.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    conditions.push(condition(
        "SpecApplied",
        findings.not_applied.is_empty(),
        ar,
        &am,
        g,
        &old.conditions,
    ));
    if let (Some(spec), Some(b)) = (&nc.spec.backup, &status.backup) {
        let now = k8s_openapi::jiff::Timestamp::now();
        for (type_, ok, reason, message) in crate::backup::conditions(spec, b, now) {
            conditions.push(condition(type_, ok, reason, &message, g, &old.conditions));
        }
    }
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
    // Remembered whatever the write returns: the step it records has been
    // taken, and a write that timed out may have landed.
    ctx.remember_status(nc, status);
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
pub(crate) async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
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
    Some(PodView {
        name,
        ordinal,
        ready,
        template_hash: p.annotations().get(render::TEMPLATE_HASH).cloned(),
        terminating: p.metadata.deletion_timestamp.is_some(),
    })
}

/// The image a pod's Nod container runs.
fn pod_image(p: &Pod) -> Option<String> {
    p.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == "nod")?
        .image
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_compare_by_bytes() {
        assert_eq!(quantity_bytes("10Gi"), Some(10 << 30));
        assert_eq!(quantity_bytes("1G"), Some(1_000_000_000));
        assert!(quantity_bytes("20Gi") > quantity_bytes("10Gi"));
        assert!(quantity_bytes("10240Mi") == quantity_bytes("10Gi"));
        assert_eq!(quantity_bytes("1.5Gi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }

    #[test]
    fn status_writes_do_not_trigger_a_reconcile() {
        use kube::runtime::Predicate;
        let mut a: NodCluster = serde_json::from_value(json!({
            "apiVersion": "nod.io/v1alpha1", "kind": "NodCluster",
            "metadata": {"name": "demo", "generation": 3, "resourceVersion": "10"},
            "spec": {},
        }))
        .unwrap();
        let before = reconcile_trigger.hash_property(&a);
        assert!(before.is_some());
        // A status write: new resourceVersion, same generation.
        a.metadata.resource_version = Some("11".into());
        a.status = Some(NodClusterStatus {
            members: vec![MemberStatus {
                applied_index: 99,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(reconcile_trigger.hash_property(&a), before);
        // A spec edit (or the deletion mark) bumps the generation.
        a.metadata.generation = Some(4);
        let bumped = reconcile_trigger.hash_property(&a);
        assert_ne!(bumped, before);
        // A certificate renewal asked for, and asked for again.
        a.annotations_mut()
            .insert(crate::certs::RENEW_ANNOTATION.into(), "r1".into());
        let r1 = reconcile_trigger.hash_property(&a);
        assert_ne!(r1, bumped);
        a.annotations_mut()
            .insert(crate::certs::RENEW_ANNOTATION.into(), "r2".into());
        assert_ne!(reconcile_trigger.hash_property(&a), r1);
        // A backup asked for.
        let r2 = reconcile_trigger.hash_property(&a);
        a.annotations_mut()
            .insert(crate::backup::BACKUP_NOW_ANNOTATION.into(), "b1".into());
        assert_ne!(reconcile_trigger.hash_property(&a), r2);
        // Other annotations do not count.
        a.annotations_mut().insert("team".into(), "x".into());
        let r2 = reconcile_trigger.hash_property(&a);
        a.annotations_mut().insert("team".into(), "y".into());
        assert_eq!(reconcile_trigger.hash_property(&a), r2);
    }
}
