//! The `NodCluster` custom resource (`nod.io/v1alpha1`).
//!
//! The CRD YAML in `crds/` is generated from these types by
//! `nod-operator crd`; a test fails when the committed file differs.

// Each `printcolumn(...)` repeats `type_ = "string"`: kube-derive's syntax,
// not a mistake.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image Nod pods run when the spec names neither `image` nor `version`.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/nod-io/nod";

/// The longest cluster name: the StatefulSet labels its pods
/// `controller-revision-hash: <name>-<10 characters>`, and a label value
/// has at most 63.
pub const MAX_NAME_LEN: usize = 52;

/// A Nod cluster: a StatefulSet of `nod` members that find each other by
/// gossip, plus the Services and PodDisruptionBudget around them.
///
/// The API server refuses, by the CEL rules below and on the nested types,
/// what the operator could never carry out: a name too long for the pods'
/// labels, a changed storage class, an election timeout under five
/// heartbeats.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nod.io",
    version = "v1alpha1",
    kind = "NodCluster",
    plural = "nodclusters",
    shortname = "nodc",
    namespaced,
    status = "NodClusterStatus",
    doc = "A Nod cluster: a strongly consistent key-value store replicated with Raft, speaking the etcd v3 API",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(name = "Leader", type_ = "string", json_path = ".status.leader"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("size(self.metadata.name) <= 52").message(
        "metadata.name: at most 52 characters (the StatefulSet adds 11 to it in its pods' controller-revision-hash label, a 63-character value)"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodClusterSpec {
    /// Number of members. Odd counts tolerate the most failures for their
    /// size (3 tolerate 1, 5 tolerate 2); an even count is allowed but is
    /// flagged in status.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Nod version: the tag of the default image. Ignored when `image` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The full image reference; overrides `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the Nod container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Each member's data volume.
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU and memory of the Nod container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Raft timing.
    #[serde(default)]
    pub raft: RaftSpec,
    /// Applied entries between two snapshots (etcd's `--snapshot-count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_count: Option<i64>,
    /// Additions to the member pods.
    #[serde(default)]
    pub pod: PodSpecOverrides,
    /// TLS secrets. Reserved: Nod does not serve TLS yet, and the operator
    /// refuses a spec that sets them (status says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Monitoring.
    #[serde(default)]
    pub metrics: MetricsSpec,
}

fn default_replicas() -> i32 {
    3
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("storage.storageClassName is immutable: existing claims cannot move to another class")
)]
pub struct StorageSpec {
    /// Size of each member's volume claim, e.g. `10Gi`. A larger size
    /// expands the existing claims when their StorageClass allows volume
    /// expansion (status says so when it does not); claims never shrink.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// Storage class of the claims; the cluster default when unset.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Bounded (a DNS subdomain), so the API server's CEL cost estimate of
    // the immutability rule stays small.
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// What happens to the claims when the NodCluster is deleted: `Retain`
    /// (the default: the data outlives the resource) or `Delete`.
    #[serde(default)]
    pub claim_policy: ClaimPolicy,
}

/// The claims' fate when the NodCluster is deleted (the StatefulSet's
/// `persistentVolumeClaimRetentionPolicy.whenDeleted`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClaimPolicy {
    #[default]
    Retain,
    Delete,
}

fn default_storage_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            claim_policy: ClaimPolicy::Retain,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.electionTimeoutMs >= 5 * self.heartbeatIntervalMs")
        .message("raft.electionTimeoutMs must be at least 5 heartbeats")
)]
pub struct RaftSpec {
    /// Heartbeat interval in milliseconds.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_interval_ms: i32,
    /// Election timeout in milliseconds; at least 5 heartbeats.
    #[serde(default = "default_election")]
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_ms: i32,
}

fn default_heartbeat() -> i32 {
    100
}
fn default_election() -> i32 {
    1000
}

impl Default for RaftSpec {
    fn default() -> Self {
        RaftSpec {
            heartbeat_interval_ms: default_heartbeat(),
            election_timeout_ms: default_election(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOverrides {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Replaces the default spreading (preferred anti-affinity by host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret with the client-facing certificate (reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_secret_name: Option<String>,
    /// Secret with the peer certificate (reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_secret_name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Create a Prometheus Operator ServiceMonitor for the members.
    #[serde(default)]
    pub service_monitor: bool,
    /// Labels of that ServiceMonitor, for a Prometheus that selects
    /// ServiceMonitors by label (e.g. `release: prometheus`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_monitor_labels: BTreeMap<String, String>,
}

/// What the operator sees, from Kubernetes and from the cluster itself.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Creating, Running, Scaling, Upgrading, Degraded, QuorumLost or
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Members the StatefulSet runs.
    #[serde(default)]
    pub replicas: i32,
    /// Members whose pods are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// "ready/desired", for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// The leader's pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The label selector of the member pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The Raft members, as the leader reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Available, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last error the operator met, if the last reconcile failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The image the members run (set once every pod runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_image: Option<String>,
    /// The member count the cluster is founded with (`--bootstrap-expect`
    /// and the founders `<name>-0..`), fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_expect: Option<i32>,
    /// The Raft cluster id (hex), recorded when the operator first sees a
    /// leader with members. From then on the cluster counts as founded:
    /// new pods get no founding flags and only join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Learners without a name and when the operator first saw each; one
    /// nameless for `plan::NAMELESS_LEARNER_GRACE` is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameless_learners: Vec<NamelessLearner>,
    /// Pods whose members the operator removed from Raft and whose claims
    /// it has not deleted yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_members: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The member's name (its pod's name).
    pub name: String,
    /// The Raft member id, in hex as etcdctl prints it.
    pub id: String,
    /// `voter` or `learner`.
    pub role: String,
    pub healthy: bool,
    /// How far the member's log matches the leader's.
    #[serde(default)]
    // int64 in the schema: the API server warns on schemars' "uint64"
    // (not an OpenAPI format it knows) at every install of the CRD.
    #[schemars(extend("format" = "int64"))]
    pub applied_index: u64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamelessLearner {
    /// The member id, in hex.
    pub id: String,
    /// When it was first seen nameless, or last seen catching up (its
    /// matched index moving): a slow join of a large database is progress,
    /// not a join that never finished.
    pub first_seen: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Its matched index then.
    #[serde(default)]
    #[schemars(extend("format" = "int64"))]
    pub matched: u64,
}

impl NodClusterSpec {
    /// The image the members should run.
    pub fn image(&self) -> String {
        match (&self.image, &self.version) {
            (Some(i), _) => i.clone(),
            (None, Some(v)) => format!("{DEFAULT_IMAGE_REPOSITORY}:{v}"),
            (None, None) => format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Problems with the spec that the schema cannot express. A spec with
    /// any is not acted on (status says why).
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.replicas < 1 {
            errors.push(format!(
                "replicas must be at least 1, not {}",
                self.replicas
            ));
        }
        if self.raft.election_timeout_ms < 5 * self.raft.heartbeat_interval_ms {
            errors.push(format!(
                "raft.electionTimeoutMs ({}) must be at least 5 heartbeats ({} ms)",
                self.raft.election_timeout_ms,
                5 * self.raft.heartbeat_interval_ms
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.server_secret_name.is_some() || tls.peer_secret_name.is_some() {
                errors.push("tls is reserved: Nod does not serve TLS yet".into());
            }
        }
        if !is_quantity(&self.storage.size) {
            errors.push(format!(
                "storage.size {:?} is not a quantity such as 10Gi",
                self.storage.size
            ));
        }
        errors
    }

    /// Warnings that do not stop the operator.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.replicas > 1 && self.replicas % 2 == 0 {
            w.push(format!(
                "{} members tolerate no more failures than {}: prefer an odd count",
                self.replicas,
                self.replicas - 1
            ));
        }
        w
    }
}

/// A Kubernetes quantity with a binary or decimal suffix (the subset that
/// makes sense for a volume size).
fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && ["", "k", "M", "G", "T", "P", "Ki", "Mi", "Gi", "Ti", "Pi"].contains(&suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> NodClusterSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_fill_an_empty_spec() {
        let s = spec("{}");
        assert_eq!(s.replicas, 3);
        assert_eq!(s.storage.size, "10Gi");
        assert_eq!(s.raft.heartbeat_interval_ms, 100);
        assert_eq!(s.raft.election_timeout_ms, 1000);
        assert!(s.validate().is_empty());
        assert!(s.warnings().is_empty());
        assert_eq!(
            s.image(),
            format!("ghcr.io/nod-io/nod:{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn image_beats_version() {
        assert_eq!(spec("version: 0.3.1").image(), "ghcr.io/nod-io/nod:0.3.1");
        assert_eq!(
            spec("{version: 0.3.1, image: 'r.example/nod@sha256:ab'}").image(),
            "r.example/nod@sha256:ab"
        );
    }

    #[test]
    fn validation_names_each_problem() {
        let s = spec("{replicas: 0, raft: {heartbeatIntervalMs: 100, electionTimeoutMs: 300}, storage: {size: lots}, tls: {serverSecretName: x}}");
        let e = s.validate();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].contains("replicas"));
        assert!(e[1].contains("electionTimeoutMs"));
        assert!(e[2].contains("tls"));
        assert!(e[3].contains("storage.size"));
        assert!(spec("replicas: 4").warnings()[0].contains("odd"));
        assert!(
            is_quantity("512Mi") && is_quantity("1") && !is_quantity("Gi") && !is_quantity("1.5Gi")
        );
    }

    /// The CEL rules sit where the API server evaluates them against the
    /// right object (the real evaluation is the end-to-end suite's; no
    /// offline validator runs CEL).
    #[test]
    fn the_crd_carries_the_cel_rules() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(NodCluster::crd()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let rules = |v: &serde_json::Value| -> Vec<String> {
            v["x-kubernetes-validations"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| r["rule"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(rules(root), ["size(self.metadata.name) <= 52"]);
        let spec = &root["properties"]["spec"]["properties"];
        let storage = rules(&spec["storage"]);
        assert_eq!(storage.len(), 1, "{storage:?}");
        assert!(
            storage[0].contains("oldSelf.storageClassName"),
            "a transition rule"
        );
        assert_eq!(
            rules(&spec["raft"]),
            ["self.electionTimeoutMs >= 5 * self.heartbeatIntervalMs"]
        );
        assert_eq!(
            spec["storage"]["properties"]["claimPolicy"]["enum"],
            serde_json::json!(["Retain", "Delete"])
        );
        assert_eq!("x".repeat(MAX_NAME_LEN).len() + 11, 63);
    }

    #[test]
    fn unknown_fields_are_kept_out_by_the_schema_not_serde() {
        // The API server prunes unknown fields with the structural schema;
        // serde must still read what it knows.
        let s = spec("{replicas: 5, surprise: 1}");
        assert_eq!(s.replicas, 5);
    }
}
