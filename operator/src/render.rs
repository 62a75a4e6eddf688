//! The Kubernetes objects a `NodCluster` turns into. Pure functions of the
//! resource and a [`Shape`] (what the controller knows besides the spec:
//! the StatefulSet's size now, whether the cluster is still being founded,
//! the claim template it was created with), so they are tested and
//! schema-validated without a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use crate::crd::{ClaimPolicy, NodCluster, S3Destination, TlsMode, BACKUP_DIR};

pub const CLIENT_PORT: i32 = 2379;
pub const PEER_PORT: i32 = 2380;
pub const METRICS_PORT: i32 = 2381;
pub const GOSSIP_PORT: i32 = 7946;
/// The backup agent's status port (`nod backup run --listen`).
pub const AGENT_PORT: i32 = 2382;
/// Where the data volume is mounted in a member pod.
pub const DATA_DIR: &str = "/var/lib/nod";
/// The volume claim template's name: claims are `data-<pod>`.
pub const CLAIM_TEMPLATE: &str = "data";
pub const MANAGER: &str = "nod-operator";
/// The most voters a cluster promotes to (every member, up to 9).
pub const MAX_VOTERS: i32 = 9;
/// Pod-template annotation: the hash of the template a pod was made from.
/// The planner rolls pods whose hash differs from the one rendered now.
pub const TEMPLATE_HASH: &str = "nod.io/template-hash";
/// Where a member pod finds its certificates.
pub const TLS_DIR: &str = "/etc/nod/tls";
/// Where a member pod finds the gossip key (file `key`).
pub const GOSSIP_DIR: &str = "/etc/nod/gossip";
/// Secret volumes: readable by the owner and the pod's fsGroup only.
const SECRET_MODE: i32 = 0o440;

/// What the StatefulSet is rendered with besides the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The StatefulSet's replicas now (the planner moves it one step at a
    /// time on scale-down).
    pub replicas: i32,
    /// `Some(n)` while the cluster has not been seen founded: pods get
    /// `--bootstrap-expect=n` and the founders `<name>-0..n-1`. `None` once
    /// it has a leader: new pods only join.
    pub founding: Option<i32>,
    /// The claim template of the existing StatefulSet (immutable once
    /// created); `None` renders it from the spec.
    pub claim: Option<ClaimTemplate>,
    /// A quorum recovery forcing (`recovery::force_flag`): every pod gets
    /// `--force-new-cluster-once=<survivor>:<id>`, which only the survivor
    /// acts on. Outside the template hash: no pod rolls for it.
    pub force: Option<String>,
}

impl Shape {
    /// A cluster not founded yet, with `replicas` founders and its claim
    /// template from the spec (what `nod-operator render` shows).
    pub fn new(replicas: i32) -> Self {
        Shape {
            replicas,
            founding: Some(replicas),
            claim: None,
            force: None,
        }
    }
}

/// The parts of a volume claim template the spec decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimTemplate {
    pub size: String,
    pub storage_class_name: Option<String>,
}

impl ClaimTemplate {
    /// The claim template of an existing StatefulSet, if it has ours.
    pub fn of(sts: &StatefulSet) -> Option<ClaimTemplate> {
        let claim = sts
            .spec
            .as_ref()?
            .volume_claim_templates
            .as_ref()?
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(CLAIM_TEMPLATE))?;
        let spec = claim.spec.as_ref()?;
        Some(ClaimTemplate {
            size: spec
                .resources
                .as_ref()?
                .requests
                .as_ref()?
                .get("storage")?
                .0
                .clone(),
            storage_class_name: spec.storage_class_name.clone(),
        })
    }
}

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

/// `https` when the spec turns TLS on.
pub fn scheme(nc: &NodCluster) -> &'static str {
    if nc.spec.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// The client endpoints of the members `0..replicas`.
pub fn client_endpoints(nc: &NodCluster, replicas: i32) -> Vec<String> {
    (0..replicas.max(1))
        .map(|i| {
            format!(
                "{}://{}:{CLIENT_PORT}",
                scheme(nc),
                pod_host(nc, &pod_name(nc, i))
            )
        })
        .collect()
}

/// The Secret with the cluster's gossip key (made once, by the operator).
pub fn gossip_secret_name(nc: &NodCluster) -> String {
    format!("{}-gossip", nc.name_any())
}

/// `auto`: the Secret with the cluster's CA certificate and key (read by
/// the operator only; no pod mounts it).
pub fn ca_secret_name(nc: &NodCluster) -> String {
    format!("{}-ca", nc.name_any())
}

/// `auto`: the Secret every member mounts: `ca.crt` and each member's
/// `<pod>-server.crt|key` and `<pod>-peer.crt|key`.
pub fn member_tls_secret_name(nc: &NodCluster) -> String {
    format!("{}-member-tls", nc.name_any())
}

/// `certManager` and `secrets`: the client port's and the peer port's
/// certificates (kubernetes.io/tls with `ca.crt`).
pub fn server_tls_secret_name(nc: &NodCluster) -> String {
    match nc
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.server_secret_name.clone())
    {
        Some(n) => n,
        None => format!("{}-server-tls", nc.name_any()),
    }
}

pub fn peer_tls_secret_name(nc: &NodCluster) -> String {
    match nc
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.peer_secret_name.clone())
    {
        Some(n) => n,
        None => format!("{}-peer-tls", nc.name_any()),
    }
}

/// The operator's client certificate for this cluster.
pub fn operator_tls_secret_name(nc: &NodCluster) -> String {
    match nc
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.operator_secret_name.clone())
    {
        Some(n) => n,
        None => format!("{}-operator-tls", nc.name_any()),
    }
}

/// `auto`: a client certificate for `user`.
pub fn client_tls_secret_name(nc: &NodCluster, user: &str) -> String {
    format!("{}-client-{user}", nc.name_any())
}

/// The DNS names a member's certificate covers: its own stable name
/// (with and without the cluster domain) and, for the client port, the
/// client Service's names and loopback.
pub fn member_sans(nc: &NodCluster, pod: &str, client_port: bool) -> Vec<String> {
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let peers = peers_service_name(nc);
    let mut sans = vec![
        format!("{pod}.{peers}.{ns}.svc"),
        format!("{pod}.{peers}.{ns}.svc.cluster.local"),
        format!("{pod}.{peers}"),
    ];
    if client_port {
        sans.extend(client_service_sans(nc));
    }
    sans
}

/// The client Service's names, and loopback (a port-forward or a sidecar).
fn client_service_sans(nc: &NodCluster) -> Vec<String> {
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let name = nc.name_any();
    vec![
        name.clone(),
        format!("{name}.{ns}"),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ]
}

/// Every member's names at once (for one certificate shared by all
/// members, as cert-manager issues it).
fn wildcard_sans(nc: &NodCluster, client_port: bool) -> Vec<String> {
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let peers = peers_service_name(nc);
    let mut sans = vec![
        format!("*.{peers}.{ns}.svc"),
        format!("*.{peers}.{ns}.svc.cluster.local"),
    ];
    if client_port {
        sans.extend(
            client_service_sans(nc)
                .into_iter()
                .filter(|s| s.parse::<std::net::IpAddr>().is_err()),
        );
    }
    sans
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

/// Voluntary disruptions (drains) never take the cluster below a quorum of
/// its `replicas` members: `minAvailable` is that quorum. With 1 or 2
/// members that is every member, so a drain is blocked until someone
/// scales up or deletes the pod by hand (as etcd operators do): evicting
/// the only member, or one of two, is an outage.
pub fn pod_disruption_budget(nc: &NodCluster, replicas: i32) -> PodDisruptionBudget {
    // Hibernated (no members running): nothing to protect.
    let quorum = match replicas {
        0 => 0,
        n => crate::plan::quorum(n.max(1) as usize) as i32,
    };
    typed(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(nc, &nc.name_any()),
        "spec": {
            "minAvailable": quorum,
            "selector": {"matchLabels": selector(nc)},
        },
    }))
}

/// The founding flags: only the first `n` pods may found the cluster, and
/// only together. Rendered while the cluster has not been seen founded, so
/// a pod added later (a scale-up) can only join.
pub fn founding_args(nc: &NodCluster, n: i32) -> Vec<String> {
    let n = n.clamp(1, 9);
    let founders: Vec<String> = (0..n).map(|i| pod_name(nc, i)).collect();
    vec![
        format!("--bootstrap-expect={n}"),
        format!("--bootstrap-founders={}", founders.join(",")),
    ]
}

/// The hash of the pod template the spec renders (without the founding
/// flags, which matter only to a pod's first start). FNV-1a over the typed
/// template's JSON: stable across builds, unlike std's hasher.
pub fn template_hash(nc: &NodCluster) -> String {
    let template: PodTemplateSpec = typed(pod_template(nc));
    let text = serde_json::to_string(&template).expect("a pod template serializes");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The members' pod template, without the hash annotation and the
/// founding flags.
/// The pod security context of the members and the backup agent.
fn pod_security_context() -> Value {
    json!({
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        // Walk the volume to chown it only when its root is not ours yet: a
        // large data directory would otherwise delay every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "runAsNonRoot": true,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn pod_template(nc: &NodCluster) -> Value {
    let spec = &nc.spec;
    let name = nc.name_any();
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let peers = peers_service_name(nc);
    let host = format!("$(POD_NAME).{peers}.{ns}.svc");
    let token = format!(
        "{ns}/{name}/{}",
        nc.metadata.uid.clone().unwrap_or_default()
    );
    // Wildcard listeners on `[::]` serve IPv4 and IPv6 (the node falls back
    // to 0.0.0.0 where IPv6 is off), so IPv6-only clusters work. Gossip
    // advertises the bare pod IP; the node takes the port from its listen
    // address (and brackets an IPv6 address itself).
    let s = scheme(nc);
    let mut args = vec![
        "server".to_string(),
        "--name=$(POD_NAME)".into(),
        format!("--data-dir={DATA_DIR}/data"),
        format!("--listen-client-urls={s}://[::]:{CLIENT_PORT}"),
        format!("--advertise-client-urls={s}://{host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls={s}://[::]:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls={s}://{host}:{PEER_PORT}"),
        format!("--listen-metrics-urls=http://[::]:{METRICS_PORT}"),
        format!("--gossip-listen-addr=[::]:{GOSSIP_PORT}"),
        "--gossip-advertise-addr=$(POD_IP)".into(),
        format!("--gossip-seeds={peers}.{ns}.svc:{GOSSIP_PORT}"),
        // Gossip is sealed with the cluster's own key: a pod that can
        // read the NodCluster (and so the token) still cannot gossip.
        format!("--gossip-key-file={GOSSIP_DIR}/key"),
        format!("--initial-cluster-token={token}"),
        format!("--voters={MAX_VOTERS}"),
        format!("--heartbeat-interval={}", spec.raft.heartbeat_interval_ms),
        format!("--election-timeout={}", spec.raft.election_timeout_ms),
        "--log-format=json".into(),
    ];
    if let Some(n) = spec.snapshot_count {
        args.push(format!("--snapshot-count={n}"));
    }
    let mut volumes = vec![json!({
        "name": "gossip",
        "secret": {"secretName": gossip_secret_name(nc), "defaultMode": SECRET_MODE},
    })];
    let mut mounts = vec![
        json!({"name": CLAIM_TEMPLATE, "mountPath": DATA_DIR}),
        json!({"name": "gossip", "mountPath": GOSSIP_DIR, "readOnly": true}),
    ];
    if let Some(tls) = &spec.tls {
        let files = match tls.mode {
            // One Secret for all members, a certificate pair per member
            // named by the pod (the template is the same for every pod).
            TlsMode::Auto => {
                volumes.push(json!({
                    "name": "tls",
                    "secret": {"secretName": member_tls_secret_name(nc), "defaultMode": SECRET_MODE},
                }));
                mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
                let d = TLS_DIR;
                [
                    format!("{d}/$(POD_NAME)-server.crt"),
                    format!("{d}/$(POD_NAME)-server.key"),
                    format!("{d}/ca.crt"),
                    format!("{d}/$(POD_NAME)-peer.crt"),
                    format!("{d}/$(POD_NAME)-peer.key"),
                    format!("{d}/ca.crt"),
                ]
            }
            TlsMode::CertManager | TlsMode::Secrets => {
                for (v, secret) in [
                    ("tls-server", server_tls_secret_name(nc)),
                    ("tls-peer", peer_tls_secret_name(nc)),
                ] {
                    volumes.push(json!({
                        "name": v,
                        "secret": {"secretName": secret, "defaultMode": SECRET_MODE},
                    }));
                    let dir = v.trim_start_matches("tls-");
                    mounts.push(json!({"name": v, "mountPath": format!("{TLS_DIR}/{dir}"), "readOnly": true}));
                }
                let d = TLS_DIR;
                [
                    format!("{d}/server/tls.crt"),
                    format!("{d}/server/tls.key"),
                    format!("{d}/server/ca.crt"),
                    format!("{d}/peer/tls.crt"),
                    format!("{d}/peer/tls.key"),
                    format!("{d}/peer/ca.crt"),
                ]
            }
        };
        let [cert, key, ca, peer_cert, peer_key, peer_ca] = files;
        args.extend([
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            format!("--peer-cert-file={peer_cert}"),
            format!("--peer-key-file={peer_key}"),
            format!("--peer-trusted-ca-file={peer_ca}"),
            // Members accept only members on the peer port.
            "--peer-client-cert-auth".into(),
        ]);
        if tls.client_cert_auth {
            args.push("--client-cert-auth".into());
        }
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
    let mut container = json!({
        "name": "nod",
        "image": spec.image(),
        "args": args,
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            // No web console: the NetworkPolicy opens the metrics port to
            // anyone (Prometheus), and the console reads keys through it.
            // An environment variable, not a flag, so an older image that
            // has no console starts too.
            {"name": "NOD_CONSOLE", "value": "false"},
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
        // Discovery (finding the founders or the cluster by gossip) may
        // take minutes on a slow start; liveness waits for it: up to 10 min.
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "volumeMounts": mounts,
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
        "securityContext": pod_security_context(),
        "affinity": affinity,
        "containers": [container],
        "volumes": volumes,
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
    json!({"metadata": template_meta, "spec": pod_spec})
}

/// The members, as [`Shape`] says.
pub fn stateful_set(nc: &NodCluster, shape: &Shape) -> StatefulSet {
    let spec = &nc.spec;
    let name = nc.name_any();
    let mut template = pod_template(nc);
    let annotations = &mut template["metadata"]["annotations"];
    if annotations.is_null() {
        *annotations = json!({});
    }
    annotations[TEMPLATE_HASH] = json!(template_hash(nc));
    if let Some(n) = shape.founding {
        let container = &mut template["spec"]["containers"][0];
        let (extra, env) = match &spec.restore {
            Some(r) => (
                restore_args(nc, n),
                r.destination.s3.as_ref().map(s3_env).unwrap_or_default(),
            ),
            None => (founding_args(nc, n), Vec::new()),
        };
        if let Some(args) = container["args"].as_array_mut() {
            args.extend(extra.into_iter().map(Value::String));
        }
        if let Some(vars) = container["env"].as_array_mut() {
            vars.extend(env);
        }
    }
    if let Some(f) = &shape.force {
        if let Some(args) = template["spec"]["containers"][0]["args"].as_array_mut() {
            args.push(json!(format!("--force-new-cluster-once={f}")));
        }
    }
    let claim = shape.claim.clone().unwrap_or_else(|| ClaimTemplate {
        size: spec.storage.size.clone(),
        storage_class_name: spec.storage.storage_class_name.clone(),
    });
    let mut claim_spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": claim.size}},
    });
    if let Some(class) = &claim.storage_class_name {
        claim_spec["storageClassName"] = json!(class);
    }
    let when_deleted = match spec.storage.claim_policy {
        ClaimPolicy::Retain => "Retain",
        ClaimPolicy::Delete => "Delete",
    };
    typed(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(nc, &name),
        "spec": {
            "serviceName": peers_service_name(nc),
            "replicas": shape.replicas,
            // All at once: the founding members must see each other before
            // any is ready.
            "podManagementPolicy": "Parallel",
            // The operator rolls pods itself: one at a time, leader last,
            // each caught up before the next.
            "updateStrategy": {"type": "OnDelete"},
            // Claims outlive scale-down until the operator has removed the
            // member from Raft; it deletes them itself. On deletion of the
            // cluster, storage.claimPolicy decides, carried out by
            // Kubernetes' StatefulSet controller (no finalizer of ours).
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": when_deleted, "whenScaled": "Retain"},
            "selector": {"matchLabels": selector(nc)},
            "template": template,
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
    let mut metadata = meta(nc, &nc.name_any());
    // Extra labels, for a Prometheus that selects ServiceMonitors by label;
    // ours win, so the object stays recognisably the cluster's.
    let mut labels = nc.spec.metrics.service_monitor_labels.clone();
    labels.extend(self::labels(nc));
    metadata["labels"] = json!(labels);
    Some(typed(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector(nc)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
        },
    })))
}

/// The cluster's NetworkPolicy (ingress only): members reach each other
/// on every port; the client port is open to the namespaces and pods the
/// spec selects (every namespace by default) and to the operator's
/// namespace; metrics to anyone (Prometheus, and the kubelet's probes,
/// which most network plugins let through anyway). `None` when the spec
/// turns it off.
pub fn network_policy(nc: &NodCluster, operator_namespace: Option<&str>) -> Option<Value> {
    let np = &nc.spec.network_policy;
    if !np.enabled {
        return None;
    }
    let tcp = |port: i32| json!({"protocol": "TCP", "port": port});
    let mut client_from = json!({
        "namespaceSelector": np.client_namespace_selector.clone().map(|s| serde_json::to_value(s).unwrap_or_default()).unwrap_or_else(|| json!({})),
    });
    if let Some(p) = &np.client_pod_selector {
        client_from["podSelector"] = serde_json::to_value(p).unwrap_or_default();
    }
    let mut ingress = vec![
        json!({
            "from": [{"podSelector": {"matchLabels": selector(nc)}}],
            "ports": [tcp(CLIENT_PORT), tcp(PEER_PORT), {"protocol": "UDP", "port": GOSSIP_PORT}],
        }),
        json!({"from": [client_from], "ports": [tcp(CLIENT_PORT)]}),
    ];
    if let Some(op) = operator_namespace {
        ingress.push(json!({
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": op}}}],
            "ports": [tcp(CLIENT_PORT)],
        }));
    }
    if nc.spec.backup.is_some() {
        ingress.push(json!({
            "from": [{"podSelector": {"matchLabels": backup_agent_selector(nc)}}],
            "ports": [tcp(CLIENT_PORT)],
        }));
    }
    ingress.push(json!({"ports": [tcp(METRICS_PORT)]}));
    Some(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(nc, &nc.name_any()),
        "spec": {
            "podSelector": {"matchLabels": selector(nc)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }))
}

/// The environment `nod` reads an S3 destination's endpoint, region and
/// keys from (the keys from the user's Secret).
fn s3_env(s3: &S3Destination) -> Vec<Value> {
    let secret =
        |key: &str| json!({"secretKeyRef": {"name": s3.credentials_secret.name, "key": key}});
    let mut env = vec![
        json!({"name": "AWS_ACCESS_KEY_ID", "valueFrom": secret(&s3.credentials_secret.access_key_id_key)}),
        json!({"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": secret(&s3.credentials_secret.secret_access_key_key)}),
        json!({"name": "AWS_REGION", "value": s3.region.clone().unwrap_or_else(|| "us-east-1".into())}),
    ];
    if let Some(e) = &s3.endpoint {
        env.push(json!({"name": "AWS_ENDPOINT_URL", "value": e}));
        if e.starts_with("http://") {
            env.push(json!({"name": "AWS_ALLOW_HTTP", "value": "true"}));
        }
    }
    env
}

/// `spec.restore`: the flags that make the founding members `0..n`
/// restore their data from the backup (`nod server --restore-from`, which
/// does nothing once the data directory exists) instead of founding an
/// empty cluster by gossip. Like the founding flags, only rendered until
/// the cluster is founded: a member added later joins as usual.
pub fn restore_args(nc: &NodCluster, n: i32) -> Vec<String> {
    let Some(r) = &nc.spec.restore else {
        return Vec::new();
    };
    let s = scheme(nc);
    let initial: Vec<String> = (0..n.clamp(1, 9))
        .map(|i| {
            let pod = pod_name(nc, i);
            format!("{pod}={s}://{}:{PEER_PORT}", pod_host(nc, &pod))
        })
        .collect();
    let mut args = vec![
        format!("--restore-from={}", r.dest()),
        format!("--restore-revision={}", r.revision),
        format!("--initial-cluster={}", initial.join(",")),
        "--initial-cluster-state=new".into(),
    ];
    if let Some(c) = &r.chain {
        args.push(format!("--restore-chain={c}"));
    }
    if let Some(id) = &r.source_cluster_id {
        args.push(format!("--restore-cluster={id}"));
    }
    args
}

/// The backup agent's Deployment, Service and NetworkPolicy.
pub fn backup_agent_name(nc: &NodCluster) -> String {
    format!("{}-backup", nc.name_any())
}

/// The labels of the agent's pod: not the members' selector, so the
/// operator never counts it as a member.
pub fn backup_agent_selector(nc: &NodCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "nod-backup".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), nc.name_any()),
    ])
}

/// Where the operator reads the agent's status.
pub fn backup_agent_url(nc: &NodCluster) -> String {
    format!(
        "http://{}.{}.svc:{AGENT_PORT}",
        backup_agent_name(nc),
        nc.namespace().unwrap_or_else(|| "default".into())
    )
}

/// The backup agent: one `nod backup run` (never two writers of a chain:
/// one replica, replaced by `Recreate`), reaching the members through the
/// client Service as `root` (a snapshot needs it), with no Kubernetes
/// credentials. `None` without `spec.backup`.
pub fn backup_agent(nc: &NodCluster, hibernated: bool) -> Option<Deployment> {
    let b = nc.spec.backup.as_ref()?;
    let ns = nc.namespace().unwrap_or_else(|| "default".into());
    let mut args = vec![
        "backup".to_string(),
        "run".into(),
        format!("--dest={}", b.dest()),
        format!("--schedule={}", b.schedule),
        format!("--segment-max-age={}s", b.segment_max_age_seconds),
        format!("--keep={}", b.retention.count),
        format!("--listen=[::]:{AGENT_PORT}"),
        format!(
            "--endpoints={}://{}.{ns}.svc:{CLIENT_PORT}",
            scheme(nc),
            nc.name_any()
        ),
    ];
    if b.incremental {
        args.push("--incremental".into());
    }
    if let Some(h) = b.retention.max_age_hours {
        args.push(format!("--max-age={h}h"));
    }
    let mut env = Vec::new();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(s3) = &b.destination.s3 {
        env.extend(s3_env(s3));
    }
    if let Some(c) = &b.destination.claim {
        volumes.push(json!({"name": "backup", "persistentVolumeClaim": {"claimName": c.name}}));
        mounts.push(json!({"name": "backup", "mountPath": BACKUP_DIR}));
    }
    if nc.spec.tls.is_some() {
        // The operator's client certificate: common name `root`.
        volumes.push(json!({
            "name": "tls",
            "secret": {"secretName": operator_tls_secret_name(nc), "defaultMode": SECRET_MODE},
        }));
        mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
        env.push(json!({"name": "NOD_CACERT", "value": format!("{TLS_DIR}/ca.crt")}));
        env.push(json!({"name": "NOD_CERT", "value": format!("{TLS_DIR}/tls.crt")}));
        env.push(json!({"name": "NOD_KEY", "value": format!("{TLS_DIR}/tls.key")}));
    } else if let Some(auth) = nc.spec.auth.as_ref().filter(|a| a.enabled) {
        env.push(json!({"name": "NOD_USER", "value": "root"}));
        env.push(
            json!({"name": "NOD_PASSWORD", "valueFrom": {"secretKeyRef": {
            "name": auth.root_password_secret.name, "key": auth.root_password_secret.key}}}),
        );
    }
    let mut container = json!({
        "name": "backup",
        "image": nc.spec.image(),
        "args": args,
        "env": env,
        "ports": [{"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/status", "port": "agent"},
            "periodSeconds": 10,
        },
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if let Some(p) = &nc.spec.image_pull_policy {
        container["imagePullPolicy"] = json!(p);
    }
    if let Some(r) = &b.resources {
        container["resources"] = serde_json::to_value(r).unwrap_or(Value::Null);
    }
    let mut pod_labels = backup_agent_selector(nc);
    pod_labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    pod_labels.insert("app.kubernetes.io/component".into(), "backup".into());
    let mut metadata = meta(nc, &backup_agent_name(nc));
    metadata["labels"] = json!(pod_labels);
    Some(typed(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            // Nothing to back up while hibernated.
            "replicas": if b.suspend || hibernated { 0 } else { 1 },
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": backup_agent_selector(nc)},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    })))
}

/// The Service the operator reaches the agent's status through.
pub fn backup_agent_service(nc: &NodCluster) -> Option<Service> {
    nc.spec.backup.as_ref()?;
    let mut metadata = meta(nc, &backup_agent_name(nc));
    let mut labels = backup_agent_selector(nc);
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    metadata["labels"] = json!(labels);
    Some(typed(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": backup_agent_selector(nc),
            "ports": [{"name": "agent", "port": AGENT_PORT, "targetPort": "agent", "protocol": "TCP"}],
        },
    })))
}

/// The agent takes no connections but the operator's (its status, and
/// requests for a backup now) and the kubelet's probes.
pub fn backup_network_policy(nc: &NodCluster, operator_namespace: Option<&str>) -> Option<Value> {
    nc.spec.backup.as_ref()?;
    if !nc.spec.network_policy.enabled {
        return None;
    }
    let from = match operator_namespace {
        Some(op) => {
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": op}}}])
        }
        // Outside Kubernetes the operator's namespace is unknown.
        None => json!([{"namespaceSelector": {}}]),
    };
    let mut metadata = meta(nc, &backup_agent_name(nc));
    metadata["labels"] = json!(backup_agent_selector(nc));
    Some(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": backup_agent_selector(nc)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": from, "ports": [{"protocol": "TCP", "port": AGENT_PORT}]}],
        },
    }))
}

/// `certManager`: the Certificates to ask cert-manager for: the client
/// port's, the peer port's (both for every member, by wildcard) and the
/// operator's client certificate (common name `root`).
pub fn certificates(nc: &NodCluster) -> Vec<Value> {
    let Some(tls) = &nc.spec.tls else {
        return Vec::new();
    };
    let Some(cm) = tls
        .cert_manager
        .as_ref()
        .filter(|_| tls.mode == TlsMode::CertManager)
    else {
        return Vec::new();
    };
    let name = nc.name_any();
    let certificate = |suffix: &str,
                       secret: String,
                       cn: &str,
                       dns: Vec<String>,
                       usages: &[&str]| {
        let mut spec = json!({
            "secretName": secret,
            "commonName": cn,
            "duration": format!("{}h", tls.validity_hours),
            "renewBefore": format!("{}h", tls.renew_before_hours),
            "issuerRef": {"name": cm.issuer_ref.name, "kind": cm.issuer_ref.kind, "group": cm.issuer_ref.group},
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": usages,
        });
        if !dns.is_empty() {
            spec["dnsNames"] = json!(dns);
        }
        json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": meta(nc, &format!("{name}-{suffix}")),
            "spec": spec,
        })
    };
    vec![
        certificate(
            "server",
            server_tls_secret_name(nc),
            &name,
            wildcard_sans(nc, true),
            &["server auth", "digital signature", "key encipherment"],
        ),
        certificate(
            "peer",
            peer_tls_secret_name(nc),
            &name,
            wildcard_sans(nc, false),
            &[
                "server auth",
                "client auth",
                "digital signature",
                "key encipherment",
            ],
        ),
        certificate(
            "operator",
            operator_tls_secret_name(nc),
            "root",
            Vec::new(),
            &["client auth", "digital signature", "key encipherment"],
        ),
    ]
}

/// Every object, as JSON, in apply order (for `nod-operator render` and
/// the schema tests). The Secrets the operator fills itself (keys,
/// certificates) are not among them.
pub fn all(nc: &NodCluster, shape: &Shape, operator_namespace: Option<&str>) -> Vec<Value> {
    let mut out = vec![
        serde_json::to_value(service_account(nc)),
        serde_json::to_value(peers_service(nc)),
        serde_json::to_value(client_service(nc)),
        serde_json::to_value(pod_disruption_budget(nc, shape.replicas)),
        serde_json::to_value(stateful_set(nc, shape)),
    ];
    if let Some(sm) = service_monitor(nc) {
        out.push(serde_json::to_value(sm));
    }
    if let Some(d) = backup_agent(nc, nc.spec.replicas == 0 && shape.replicas == 0) {
        out.push(serde_json::to_value(d));
    }
    if let Some(s) = backup_agent_service(nc) {
        out.push(serde_json::to_value(s));
    }
    let mut out: Vec<Value> = out.into_iter().filter_map(Result::ok).collect();
    out.extend(network_policy(nc, operator_namespace));
    out.extend(backup_network_policy(nc, operator_namespace));
    out.extend(certificates(nc));
    out
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

    fn founded(replicas: i32) -> Shape {
        Shape {
            replicas,
            founding: None,
            claim: None,
            force: None,
        }
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

    fn hash_annotation(sts: &StatefulSet) -> String {
        sts.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[TEMPLATE_HASH]
            .clone()
    }

    #[test]
    fn statefulset_runs_members_that_find_each_other() {
        let nc = cluster("{replicas: 5, version: 1.2.3, raft: {heartbeatIntervalMs: 50, electionTimeoutMs: 500}, snapshotCount: 5000}");
        let sts = stateful_set(&nc, &Shape::new(5));
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
            "--listen-client-urls=http://[::]:2379",
            "--listen-peer-urls=http://[::]:2380",
            "--listen-metrics-urls=http://[::]:2381",
            "--gossip-listen-addr=[::]:7946",
            "--gossip-advertise-addr=$(POD_IP)",
            "--gossip-seeds=demo-peers.prod.svc:7946",
            "--bootstrap-expect=5",
            "--bootstrap-founders=demo-0,demo-1,demo-2,demo-3,demo-4",
            "--initial-cluster-token=prod/demo/u-1",
            "--advertise-client-urls=http://$(POD_NAME).demo-peers.prod.svc:2379",
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--snapshot-count=5000",
        ] {
            assert!(a.iter().any(|x| x == want), "missing {want} in {a:?}");
        }
        let pod = spec.template.spec.as_ref().unwrap();
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(
            psc.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("ghcr.io/nod-io/nod:1.2.3"));
        // The console stays off: the metrics port is open to anyone.
        let console = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "NOD_CONSOLE")
            .and_then(|e| e.value.as_deref());
        assert_eq!(console, Some("false"));
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        };
        assert_eq!(path(&c.readiness_probe), "/readyz");
        assert_eq!(path(&c.liveness_probe), "/healthz");
        assert_eq!(path(&c.startup_probe), "/healthz");
        let startup = c.startup_probe.as_ref().unwrap();
        let budget = startup.period_seconds.unwrap() * startup.failure_threshold.unwrap();
        assert!(budget >= 300, "discovery gets minutes, not {budget}s");
        // Owned by the NodCluster, so deleting it collects everything.
        let owners = sts.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners[0].kind, "NodCluster");
        assert_eq!(owners[0].controller, Some(true));
    }

    #[test]
    fn once_founded_new_pods_only_join_and_no_pod_rolls_for_it() {
        let nc = cluster("{replicas: 1}");
        let founding = stateful_set(&nc, &Shape::new(1));
        let restored = cluster("{replicas: 3, restore: {revision: 42, chain: chain-9, destination: {s3: {bucket: b, prefix: p, credentialsSecret: {name: k}}}}}");
        let creating = stateful_set(&restored, &Shape::new(3));
        let a = args(&creating);
        for want in [
            "--restore-from=s3://b/p",
            "--restore-revision=42",
            "--restore-chain=chain-9",
            "--initial-cluster-state=new",
            "--initial-cluster=demo-0=http://demo-0.demo-peers.prod.svc:2380,demo-1=http://demo-1.demo-peers.prod.svc:2380,demo-2=http://demo-2.demo-peers.prod.svc:2380",
        ] {
            assert!(a.contains(&want.to_string()), "{want} not in {a:?}");
        }
        assert!(!a.iter().any(|x| x.starts_with("--bootstrap")), "{a:?}");
        let env_of = |sts: &StatefulSet| {
            serde_json::to_string(
                &sts.spec
                    .as_ref()
                    .unwrap()
                    .template
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .env,
            )
            .unwrap()
        };
        assert!(env_of(&creating).contains("AWS_SECRET_ACCESS_KEY"));
        // Founded: no restore flags, no keys, and no roll (same hash).
        let running = stateful_set(&restored, &founded(3));
        assert!(!args(&running).iter().any(|x| x.starts_with("--restore")
            || x.starts_with("--initial-cluster=")
            || x.starts_with("--initial-cluster-state")));
        assert!(!env_of(&running).contains("AWS_"));
        assert_eq!(hash_annotation(&creating), hash_annotation(&running));
        assert!(args(&founding).contains(&"--bootstrap-founders=demo-0".to_string()));
        // Scaled 1 -> 3 after founding: no pod may found a cluster again.
        let grown = stateful_set(&nc, &founded(3));
        let a = args(&grown);
        assert!(
            !a.iter().any(|x| x.starts_with("--bootstrap")),
            "a founded cluster's pods only join: {a:?}"
        );
        // Dropping the flags is not a change running pods must roll for.
        assert_eq!(hash_annotation(&founding), hash_annotation(&grown));
        assert_eq!(hash_annotation(&grown), template_hash(&nc));
    }

    #[test]
    fn the_template_does_not_change_with_replicas() {
        let nc = cluster("{replicas: 3}");
        let a = stateful_set(&nc, &founded(3));
        let b = stateful_set(&nc, &founded(7));
        assert_eq!(a.spec.unwrap().template, b.spec.unwrap().template);
    }

    #[test]
    fn every_change_that_reaches_the_pods_changes_the_hash() {
        let base = "replicas: 3\nversion: '1'\n";
        let h = |extra: &str| template_hash(&cluster(&format!("{base}{extra}")));
        let unchanged = h("");
        assert_eq!(unchanged, h(""), "the hash is stable");
        assert_eq!(unchanged.len(), 16);
        for (what, extra) in [
            ("image", "image: r.example/nod:2"),
            ("resources", "resources: {requests: {cpu: '2'}}"),
            ("raft timings", "raft: {heartbeatIntervalMs: 100, electionTimeoutMs: 2000}"),
            ("snapshot count", "snapshotCount: 10"),
            ("tolerations", "pod: {tolerations: [{key: a, operator: Exists}]}"),
            ("labels", "pod: {labels: {team: kv}}"),
            ("annotations", "pod: {annotations: {a: b}}"),
            ("node selector", "pod: {nodeSelector: {disk: ssd}}"),
            ("affinity", "pod: {affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: zone}]}}}"),
            ("priority class", "pod: {priorityClassName: high}"),
            ("pull policy", "imagePullPolicy: Always"),
        ] {
            assert_ne!(h(extra), unchanged, "{what} must roll the pods");
        }
        // Not pod changes: size, storage (claims are resized in place),
        // the ServiceMonitor.
        for extra in ["storage: {size: 20Gi}", "metrics: {serviceMonitor: true}"] {
            assert_eq!(h(extra), unchanged, "{extra}");
        }
        assert_eq!(
            template_hash(&cluster("{replicas: 5, version: '1'}")),
            unchanged
        );
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
        let sts = stateful_set(&nc, &Shape::new(3));
        let spec = sts.spec.unwrap();
        let t = spec.template;
        let meta = t.metadata.as_ref().unwrap();
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "kv");
        assert_eq!(labels["app.kubernetes.io/instance"], "demo");
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations["a"], "b");
        assert_eq!(annotations[TEMPLATE_HASH], template_hash(&nc));
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
    fn an_existing_claim_template_is_kept_whatever_the_spec_says() {
        // volumeClaimTemplates are immutable: a changed size must not reach
        // the StatefulSet (the controller resizes the claims instead).
        let nc = cluster("{storage: {size: 50Gi, storageClassName: fast}}");
        let created = stateful_set(
            &cluster("{storage: {size: 10Gi, storageClassName: fast}}"),
            &Shape::new(3),
        );
        let kept = ClaimTemplate::of(&created).unwrap();
        assert_eq!(
            kept,
            ClaimTemplate {
                size: "10Gi".into(),
                storage_class_name: Some("fast".into())
            }
        );
        let sts = stateful_set(
            &nc,
            &Shape {
                claim: Some(kept),
                ..founded(3)
            },
        );
        assert_eq!(
            sts.spec.unwrap().volume_claim_templates,
            created.spec.unwrap().volume_claim_templates
        );
    }

    #[test]
    fn the_claim_policy_reaches_the_statefulset() {
        let policy = |spec: &str| {
            let sts = stateful_set(&cluster(spec), &founded(3));
            let p = sts
                .spec
                .unwrap()
                .persistent_volume_claim_retention_policy
                .unwrap();
            (p.when_deleted.unwrap(), p.when_scaled.unwrap())
        };
        assert_eq!(policy("{}"), ("Retain".into(), "Retain".into()));
        assert_eq!(
            policy("{storage: {claimPolicy: Delete}}"),
            ("Delete".into(), "Retain".into())
        );
    }

    #[test]
    fn the_disruption_budget_keeps_a_quorum() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let nc = cluster("{}");
        for (replicas, min_available) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)] {
            let pdb = pod_disruption_budget(&nc, replicas).spec.unwrap();
            assert_eq!(
                (pdb.min_available, pdb.max_unavailable),
                (Some(IntOrString::Int(min_available)), None),
                "{replicas} members"
            );
        }
    }

    #[test]
    fn services_and_monitor() {
        let nc = cluster("{metrics: {serviceMonitor: true, serviceMonitorLabels: {release: prom, app.kubernetes.io/name: other}}}");
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
        let sm = service_monitor(&nc).unwrap();
        let labels = sm.metadata.labels.unwrap();
        assert_eq!(labels["release"], "prom");
        assert_eq!(labels["app.kubernetes.io/name"], "nod", "ours win");
        assert_eq!(
            all(&nc, &Shape::new(3), None).len(),
            7,
            "with the NetworkPolicy"
        );
        assert!(service_monitor(&cluster("{}")).is_none());
        assert_eq!(
            selector_string(&nc),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=nod"
        );
    }

    #[test]
    fn the_network_policy_lets_members_talk_and_chosen_clients_in() {
        let nc = cluster("{networkPolicy: {clientNamespaceSelector: {matchLabels: {team: a}}, clientPodSelector: {matchLabels: {role: app}}}}");
        let np = network_policy(&nc, Some("nod-system")).unwrap();
        assert_eq!(
            np["spec"]["podSelector"]["matchLabels"],
            json!(selector(&nc))
        );
        let ingress = np["spec"]["ingress"].as_array().unwrap();
        // Members from members, on every port (gossip is UDP).
        assert_eq!(
            ingress[0]["from"][0]["podSelector"]["matchLabels"],
            json!(selector(&nc))
        );
        let ports: Vec<(String, i64)> = ingress[0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap().into(),
                    p["port"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                ("TCP".into(), 2379),
                ("TCP".into(), 2380),
                ("UDP".into(), 7946)
            ]
        );
        // Clients from the chosen namespaces and pods, on the client port only.
        assert_eq!(
            ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["team"],
            "a"
        );
        assert_eq!(
            ingress[1]["from"][0]["podSelector"]["matchLabels"]["role"],
            "app"
        );
        assert_eq!(
            ingress[1]["ports"],
            json!([{"protocol": "TCP", "port": 2379}])
        );
        // The operator, from its namespace.
        assert_eq!(
            ingress[2]["from"][0]["namespaceSelector"]["matchLabels"]
                ["kubernetes.io/metadata.name"],
            "nod-system"
        );
        // Metrics from anywhere.
        assert!(ingress[3].get("from").is_none());
        assert_eq!(
            ingress[3]["ports"],
            json!([{"protocol": "TCP", "port": 2381}])
        );
        // Every namespace by default; none when turned off.
        let open = network_policy(&cluster("{}"), None).unwrap();
        assert_eq!(
            open["spec"]["ingress"][1]["from"][0],
            json!({"namespaceSelector": {}})
        );
        assert_eq!(open["spec"]["ingress"].as_array().unwrap().len(), 3);
        assert!(network_policy(&cluster("{networkPolicy: {enabled: false}}"), None).is_none());
    }

    #[test]
    fn tls_modes_reach_the_members_flags_and_volumes() {
        let plain = args(&stateful_set(&cluster("{}"), &founded(3)));
        assert!(plain.contains(&"--listen-client-urls=http://[::]:2379".to_string()));
        assert!(!plain.iter().any(|a| a.starts_with("--cert-file")));
        assert!(plain.contains(&"--gossip-key-file=/etc/nod/gossip/key".to_string()));
        let nc = cluster("{tls: {mode: secrets, serverSecretName: s, peerSecretName: p, operatorSecretName: o, clientCertAuth: false}}");
        let sts = stateful_set(&nc, &founded(3));
        let a = args(&sts);
        for flag in [
            "--advertise-client-urls=https://$(POD_NAME).demo-peers.prod.svc:2379",
            "--cert-file=/etc/nod/tls/server/tls.crt",
            "--trusted-ca-file=/etc/nod/tls/server/ca.crt",
            "--peer-cert-file=/etc/nod/tls/peer/tls.crt",
            "--peer-client-cert-auth",
        ] {
            assert!(a.contains(&flag.to_string()), "{flag}: {a:?}");
        }
        assert!(!a.contains(&"--client-cert-auth".to_string()), "turned off");
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let secrets: Vec<String> = pod
            .volumes
            .unwrap()
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(secrets, ["demo-gossip", "s", "p"]);
        assert_eq!(
            client_endpoints(&nc, 1),
            ["https://demo-0.demo-peers.prod.svc:2379"]
        );
        // The operator's certificate is read, never mounted by the members.
        assert_eq!(operator_tls_secret_name(&nc), "o");
        // Turning TLS on changes the pods.
        assert_ne!(template_hash(&nc), template_hash(&cluster("{}")));
    }

    #[test]
    fn cert_manager_is_asked_for_three_certificates() {
        let nc = cluster("{tls: {mode: certManager, certManager: {issuerRef: {name: ca, kind: ClusterIssuer}}, validityHours: 48, renewBeforeHours: 12}}");
        let certs = certificates(&nc);
        let names: Vec<&str> = certs
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["demo-server", "demo-peer", "demo-operator"]);
        assert_eq!(
            certs[0]["spec"]["issuerRef"],
            json!({"name": "ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(certs[0]["spec"]["duration"], "48h");
        assert_eq!(certs[0]["spec"]["renewBefore"], "12h");
        assert!(certs[0]["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!("*.demo-peers.prod.svc")));
        assert!(certs[0]["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .contains(&json!("demo.prod.svc")));
        assert!(certs[1]["spec"]["usages"]
            .as_array()
            .unwrap()
            .contains(&json!("client auth")));
        assert_eq!(certs[2]["spec"]["commonName"], "root");
        assert!(certs[2]["spec"].get("dnsNames").is_none());
        assert!(certificates(&cluster("{tls: {mode: auto}}")).is_empty());
    }

    #[test]
    fn member_certificates_name_the_member_and_the_client_service() {
        let nc = cluster("{}");
        let server = member_sans(&nc, "demo-1", true);
        assert!(server.contains(&"demo-1.demo-peers.prod.svc".to_string()));
        assert!(server.contains(&"demo.prod.svc".to_string()));
        assert!(server.contains(&"127.0.0.1".to_string()));
        let peer = member_sans(&nc, "demo-1", false);
        assert!(peer.iter().all(|s| s.starts_with("demo-1.")), "{peer:?}");
    }
}
