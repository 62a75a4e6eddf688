//! The Kubernetes objects a `NodCluster` turns into. Pure functions of the
//! resource (and the bootstrap size recorded in its status), so they are
//! tested and schema-validated without a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use crate::crd::NodCluster;

pub const CLIENT_PORT: i32 = 2379;
pub const PEER_PORT: i32 = 2380;
pub const METRICS_PORT: i32 = 2381;
pub const GOSSIP_PORT: i32 = 7946;
/// Where the data volume is mounted in a member pod.
pub const DATA_DIR: &str = "/var/lib/nod";
/// The volume claim template's name: claims are `data-<pod>`.
pub const CLAIM_TEMPLATE: &str = "data";
pub const MANAGER: &str = "nod-operator";
/// The most voters a cluster promotes to (every member, up to 9).
pub const MAX_VOTERS: i32 = 9;

/// Labels every object of the cluster carries.
pub fn labels(nc: &NodCluster) -> BTreeMap<String, String> {
    let mut l = selector(nc);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l.insert("app.kubernetes.io/component".into(), "member".into());
    l
}

/// The labels that select the cluster's member pods.
pub fn selector(nc: &NodCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "nod".to_string()),
        ("app.kubernetes.io/instance".to_string(), nc.name_any()),
    ])
}

/// The selector as a string, for the scale subresource.
pub fn selector_string(nc: &NodCluster) -> String {
    selector(nc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn peers_service_name(nc: &NodCluster) -> String {
    format!("{}-peers", nc.name_any())
}

pub fn pod_name(nc: &NodCluster, ordinal: i32) -> String {
    format!("{}-{ordinal}", nc.name_any())
}

pub fn claim_name(pod: &str) -> String {
    format!("{CLAIM_TEMPLATE}-{pod}")
}

/// A member's stable DNS name (through the headless Service).
pub fn pod_host(nc: &NodCluster, pod: &str) -> String {
    format!(
        "{pod}.{}.{}.svc",
        peers_service_name(nc),
        nc.namespace().unwrap_or_else(|| "default".into())
    )
}

/// The client endpoints of the members `0..replicas`.
pub fn client_endpoints(nc: &NodCluster, replicas: i32) -> Vec<String> {
    (0..replicas.max(1))
        .map(|i| format!("http://{}:{CLIENT_PORT}", pod_host(nc, &pod_name(nc, i))))
        .collect()
}

fn owner(nc: &NodCluster) -> Value {
    let o: OwnerReference = nc.controller_owner_ref(&()).unwrap_or_default();
    serde_json::to_value(o).unwrap_or(Value::Null)
}

fn meta(nc: &NodCluster, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": nc.namespace(),
        "labels": labels(nc),
        "ownerReferences": [owner(nc)],
    })
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    // The JSON is built above from fixed shapes; a mismatch is a bug caught
    // by the unit tests, never by user input.
    serde_json::from_value(v).expect("rendered object matches its type")
}

pub fn service_account(nc: &NodCluster) -> ServiceAccount {
    typed(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(nc, &nc.name_any()),
        // Members never call the Kubernetes API.
        "automountServiceAccountToken": false,
    }))
}

/// The headless Service: stable member DNS names and the gossip seed. It
/// publishes not-ready addresses, since members must find each other
/// before any of them is ready.
pub fn peers_service(nc: &NodCluster) -> Service {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(nc, &peers_service_name(nc)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(nc),
            "ports": [
                {"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP"},
                {"name": "peer", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP"},
                {"name": "gossip", "port": GOSSIP_PORT, "targetPort": "gossip", "protocol": "UDP"},
            ],
        },
    }))
}

/// The client Service: what applications connect to (ready members only).
pub fn client_service(nc: &NodCluster) -> Service {
    typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(nc, &nc.name_any()),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(nc),
            "ports": [
                {"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }))
}

/// At most one member down by voluntary disruption (drains, upgrades).
pub fn pod_disruption_budget(nc: &NodCluster) -> PodDisruptionBudget {
    typed(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(nc, &nc.name_any()),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(nc)},
        },
    }))
}

/// The members. `replicas` is what the StatefulSet should run now (the
/// planner moves it one step at a time on scale-down); `bootstrap_expect`
/// is the size the cluster was founded with, fixed for its lifetime so the
/// pod template does not change on scaling.
pub fn stateful_set(nc: &NodCluster, replicas: i32, bootstrap_expect: i32) -> StatefulSet {
    let spec = &nc.spec;
    let name = nc.name_any();
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let peers = peers_service_name(nc);
    let host = format!("$(POD_NAME).{peers}.{ns}.svc");
    let token = format!(
        "{ns}/{name}/{}",
        nc.metadata.uid.clone().unwrap_or_default()
    );
    let mut args = vec![
        "server".to_string(),
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={DATA_DIR}/data"),
        format!("--listen-client-urls=http://0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise-client-urls=http://{host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls=http://0.0.0.0:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls=http://{host}:{PEER_PORT}"),
        format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"),
        format!("--gossip-listen-addr=0.0.0.0:{GOSSIP_PORT}"),
        format!("--gossip-advertise-addr=$(POD_IP):{GOSSIP_PORT}"),
        format!("--gossip-seeds={peers}.{ns}.svc:{GOSSIP_PORT}"),
        format!("--bootstrap-expect={}", bootstrap_expect.clamp(1, 9)),
        format!("--initial-cluster-token={token}"),
        format!("--voters={MAX_VOTERS}"),
        format!("--heartbeat-interval={}", spec.raft.heartbeat_interval_ms),
        format!("--election-timeout={}", spec.raft.election_timeout_ms),
        "--log-format=json".into(),
    ];
    if let Some(n) = spec.snapshot_count {
        args.push(format!("--snapshot-count={n}"));
    }
    let mut pod_labels = spec.pod.labels.clone();
    pod_labels.extend(labels(nc));
    let affinity = match &spec.pod.affinity {
        Some(a) => serde_json::to_value(a).unwrap_or(Value::Null),
        None => json!({
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector(nc)},
                    },
                }],
            },
        }),
    };
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    });
    if let Some(class) = &spec.storage.storage_class_name {
        claim_spec["storageClassName"] = json!(class);
    }
    let mut container = json!({
        "name": "nod",
        "image": spec.image(),
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
            {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "gossip", "containerPort": GOSSIP_PORT, "protocol": "UDP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "volumeMounts": [{"name": CLAIM_TEMPLATE, "mountPath": DATA_DIR}],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(p) = &spec.image_pull_policy {
        container["imagePullPolicy"] = json!(p);
    }
    if let Some(r) = &spec.resources {
        container["resources"] = serde_json::to_value(r).unwrap_or(Value::Null);
    }
    let mut pod_spec = json!({
        "serviceAccountName": name,
        "automountServiceAccountToken": false,
        // Long enough to hand leadership over on SIGTERM.
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": affinity,
        "containers": [container],
    });
    if !spec.pod.tolerations.is_empty() {
        pod_spec["tolerations"] = serde_json::to_value(&spec.pod.tolerations).unwrap_or_default();
    }
    if !spec.pod.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(spec.pod.node_selector);
    }
    if let Some(p) = &spec.pod.priority_class_name {
        pod_spec["priorityClassName"] = json!(p);
    }
    let mut template_meta = json!({"labels": pod_labels});
    if !spec.pod.annotations.is_empty() {
        template_meta["annotations"] = json!(spec.pod.annotations);
    }
    typed(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(nc, &name),
        "spec": {
            "serviceName": peers,
            "replicas": replicas,
            // All at once: the founding members must see each other before
            // any is ready.
            "podManagementPolicy": "Parallel",
            // The operator rolls pods itself: one at a time, leader last,
            // each caught up before the next.
            "updateStrategy": {"type": "OnDelete"},
            // Claims outlive scale-down until the operator has removed the
            // member from Raft; it deletes them itself.
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "selector": {"matchLabels": selector(nc)},
            "template": {"metadata": template_meta, "spec": pod_spec},
            "volumeClaimTemplates": [{
                "metadata": {"name": CLAIM_TEMPLATE, "labels": selector(nc)},
                "spec": claim_spec,
            }],
        },
    }))
}

/// The Prometheus Operator ServiceMonitor, when the spec asks for one.
pub fn service_monitor(nc: &NodCluster) -> Option<DynamicObject> {
    if !nc.spec.metrics.service_monitor {
        return None;
    }
    Some(typed(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta(nc, &nc.name_any()),
        "spec": {
            "selector": {"matchLabels": selector(nc)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    })))
}

/// Every object, as JSON, in apply order (for `nod-operator render` and
/// the schema tests).
pub fn all(nc: &NodCluster, replicas: i32, bootstrap_expect: i32) -> Vec<Value> {
    let mut out = vec![
        serde_json::to_value(service_account(nc)),
        serde_json::to_value(peers_service(nc)),
        serde_json::to_value(client_service(nc)),
        serde_json::to_value(pod_disruption_budget(nc)),
        serde_json::to_value(stateful_set(nc, replicas, bootstrap_expect)),
    ];
    if let Some(sm) = service_monitor(nc) {
        out.push(serde_json::to_value(sm));
    }
    out.into_iter().filter_map(Result::ok).collect()
}

/// The pod template's image, to tell which pods an upgrade still has to roll.
pub fn template_image(sts: &StatefulSet) -> Option<String> {
    sts.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::NodClusterSpec;

    fn cluster(spec: &str) -> NodCluster {
        let spec: NodClusterSpec = serde_yaml::from_str(spec).unwrap();
        let mut nc = NodCluster::new("demo", spec);
        nc.metadata.namespace = Some("prod".into());
        nc.metadata.uid = Some("u-1".into());
        nc
    }

    fn args(sts: &StatefulSet) -> Vec<String> {
        sts.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap()
    }

    #[test]
    fn statefulset_runs_members_that_find_each_other() {
        let nc = cluster("{replicas: 5, version: 1.2.3, raft: {heartbeatIntervalMs: 50, electionTimeoutMs: 500}, snapshotCount: 5000}");
        let sts = stateful_set(&nc, 5, 3);
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.service_name.as_deref(), Some("demo-peers"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        let a = args(&sts);
        for want in [
            "--name=$(POD_NAME)",
            "--gossip-seeds=demo-peers.prod.svc:7946",
            "--bootstrap-expect=3",
            "--initial-cluster-token=prod/demo/u-1",
            "--advertise-client-urls=http://$(POD_NAME).demo-peers.prod.svc:2379",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--snapshot-count=5000",
        ] {
            assert!(a.iter().any(|x| x == want), "missing {want} in {a:?}");
        }
        let c = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.image.as_deref(), Some("ghcr.io/nod-io/nod:1.2.3"));
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(
            template_image(&sts).as_deref(),
            Some("ghcr.io/nod-io/nod:1.2.3")
        );
        // Owned by the NodCluster, so deleting it collects everything.
        let owners = sts.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners[0].kind, "NodCluster");
        assert_eq!(owners[0].controller, Some(true));
    }

    #[test]
    fn the_template_does_not_change_with_replicas() {
        let nc = cluster("{replicas: 3}");
        let a = stateful_set(&nc, 3, 3);
        let b = stateful_set(&nc, 7, 3);
        assert_eq!(a.spec.unwrap().template, b.spec.unwrap().template);
    }

    #[test]
    fn overrides_reach_the_pods() {
        let nc = cluster(
            "{pod: {labels: {team: kv}, annotations: {a: b}, nodeSelector: {disk: ssd}, priorityClassName: high,
               tolerations: [{key: dedicated, operator: Equal, value: nod, effect: NoSchedule}],
               affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: zone}]}}},
              storage: {size: 50Gi, storageClassName: fast}, imagePullPolicy: Always,
              resources: {requests: {cpu: '1', memory: 1Gi}}}",
        );
        let sts = stateful_set(&nc, 3, 3);
        let spec = sts.spec.unwrap();
        let t = spec.template;
        let labels = t.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels["team"], "kv");
        assert_eq!(labels["app.kubernetes.io/instance"], "demo");
        let pod = t.spec.unwrap();
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        let aa = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        assert!(aa
            .preferred_during_scheduling_ignored_during_execution
            .is_none());
        assert_eq!(
            aa.required_during_scheduling_ignored_during_execution
                .unwrap()[0]
                .topology_key,
            "zone"
        );
        assert_eq!(
            pod.containers[0].image_pull_policy.as_deref(),
            Some("Always")
        );
        assert!(pod.containers[0].resources.is_some());
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let cs = claim.spec.as_ref().unwrap();
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            "50Gi"
        );
    }

    #[test]
    fn services_pdb_and_monitor() {
        let nc = cluster("{metrics: {serviceMonitor: true}}");
        let peers = peers_service(&nc).spec.unwrap();
        assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
        assert_eq!(peers.publish_not_ready_addresses, Some(true));
        let gossip = peers
            .ports
            .unwrap()
            .into_iter()
            .find(|p| p.name.as_deref() == Some("gossip"))
            .unwrap();
        assert_eq!(gossip.protocol.as_deref(), Some("UDP"));
        let pdb = pod_disruption_budget(&nc).spec.unwrap();
        assert_eq!(
            pdb.max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
        assert!(service_monitor(&nc).is_some());
        assert_eq!(all(&nc, 3, 3).len(), 6);
        assert!(service_monitor(&cluster("{}")).is_none());
        assert_eq!(
            selector_string(&nc),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=nod"
        );
    }
}
