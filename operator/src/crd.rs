//! The `NodCluster` custom resource (`nod.io/v1alpha1`).
//!
//! The CRD YAML in `crds/` is generated from these types by
//! `nod-operator crd`; a test fails when the committed file differs.

// Each `printcolumn(...)` repeats `type_ = "string"`: kube-derive's syntax,
// not a mistake.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
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
    /// flagged in status. 0 hibernates the cluster: a backup first (when
    /// `backup` is set), then every pod stops and the claims stay; scaling
    /// up again brings the same members back with their data.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 9))]
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
    /// TLS on the client and peer ports, with certificates the operator
    /// makes (`auto`), cert-manager issues (`certManager`) or the user
    /// brings (`secrets`). Chosen at creation: a running cluster cannot
    /// move between plaintext and TLS (its members would stop hearing
    /// each other), so the mode is immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// etcd's authentication: users, roles and permissions, with `root`'s
    /// password from a Secret. The operator itself acts as `root` (by its
    /// client certificate with TLS, by the password without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// A NetworkPolicy for the members: peer and gossip ports from members
    /// only, the client port from the namespaces (and pods) chosen here
    /// and from the operator, metrics from anywhere. On by default.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Monitoring.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// Scheduled backups to S3-compatible storage or a volume claim, by a
    /// backup agent Deployment `<name>-backup`: full snapshots on a cron
    /// schedule and, with `incremental`, every change in between (restore
    /// to any revision with `nod snapshot restore --from-backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// Create this cluster from a backup (`spec.backup` of another cluster,
    /// or `nod backup`): every founding member restores the same revision
    /// into its volume, as a new cluster with a new id. Only read while
    /// the cluster is created; immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("restore is immutable"))]
pub struct RestoreSpec {
    /// Where the backups are: an S3-compatible bucket (a claim cannot be
    /// mounted by every member at once).
    pub destination: BackupDestination,
    /// The backed-up cluster's id (hex, as `status.clusterId` or `nod
    /// backup list` shows it), when the destination holds several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub source_cluster_id: Option<String>,
    /// The chain to restore from (its folder, `chain-...`); the one that
    /// reaches `revision` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub chain: Option<String>,
    /// The revision to restore: every member must restore the same one,
    /// so it is fixed here (`status.backup.reachedRevision` of the source,
    /// or `nod backup list`).
    #[schemars(range(min = 1))]
    pub revision: i64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When full snapshots start a new chain, in Kubernetes CronJob
    /// syntax, UTC: `0 */6 * * *`, `@daily`.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// Record every change between full snapshots as segments, so a
    /// restore can reach any revision (point-in-time restore).
    #[serde(default = "default_true")]
    pub incremental: bool,
    /// How long a change may wait before its segment is written: how far
    /// an incremental backup may trail the cluster.
    #[serde(default = "default_segment_max_age")]
    #[schemars(range(min = 5, max = 3600))]
    pub segment_max_age_seconds: i32,
    /// Where backups go.
    pub destination: BackupDestination,
    /// Which chains (a full and its segments) are kept.
    #[serde(default)]
    pub retention: BackupRetention,
    /// Stop the agent (backups already taken stay).
    #[serde(default)]
    pub suspend: bool,
    /// The `BackupStale` condition turns true, and the `NodBackupMissing`
    /// alert fires, when backups made no progress for this many hours
    /// (counted from when backups were configured, until the first one).
    #[serde(default = "default_stale_after_hours")]
    #[schemars(range(min = 1, max = 8760))]
    pub stale_after_hours: i32,
    /// CPU and memory of the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_segment_max_age() -> i32 {
    60
}
fn default_stale_after_hours() -> i32 {
    24
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.s3) != has(self.claim)")
        .message("backup.destination: exactly one of s3 and claim")
)]
pub struct BackupDestination {
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// An existing PersistentVolumeClaim in the cluster's namespace,
    /// mounted by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimDestination>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// A folder in the bucket; the cluster's chains go under
    /// `<prefix>/<cluster id>/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 512))]
    pub prefix: String,
    /// The S3 endpoint (`https://minio.storage:9000`); AWS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket's region (`us-east-1` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The Secret holding the access key.
    pub credentials_secret: S3Credentials,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Credentials {
    pub name: String,
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimDestination {
    pub name: String,
    /// A folder in the claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRetention {
    /// Keep at most this many chains (the newest).
    #[serde(default = "default_retention_count")]
    #[schemars(range(min = 1, max = 10000))]
    pub count: i32,
    /// Delete chains whose newest object is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_age_hours: Option<i32>,
}

fn default_retention_count() -> i32 {
    7
}

impl Default for BackupRetention {
    fn default() -> Self {
        BackupRetention {
            count: default_retention_count(),
            max_age_hours: None,
        }
    }
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

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode == oldSelf.mode")
        .message("tls.mode is immutable: members cannot move between certificate sources while running")
)]
pub struct TlsSpec {
    /// Where the certificates come from: `auto` (the operator's own CA,
    /// one server and one peer certificate per member, renewed before
    /// they expire, one member at a time), `certManager` (cert-manager
    /// `Certificate` objects from `certManager.issuerRef`) or `secrets`
    /// (Secrets of type kubernetes.io/tls the user made).
    pub mode: TlsMode,
    /// Clients must present a certificate from the cluster's CA
    /// (`--client-cert-auth`); with auth on, its common name is the user.
    #[serde(default = "default_true")]
    pub client_cert_auth: bool,
    /// `auto`: how long certificates are valid, in hours (90 days by default).
    #[serde(default = "default_validity_hours")]
    #[schemars(range(min = 2))]
    pub validity_hours: i32,
    /// `auto`: how long before expiry a certificate is renewed, in hours
    /// (30 days by default; less than `validityHours`).
    #[serde(default = "default_renew_before_hours")]
    #[schemars(range(min = 1))]
    pub renew_before_hours: i32,
    /// `auto`: users to issue client certificates for, each in a Secret
    /// `<cluster>-client-<user>` (kubernetes.io/tls, with `ca.crt`), for
    /// applications and etcdctl.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_users: Vec<String>,
    /// `certManager`: the issuer of the certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,
    /// `secrets`: the client port's certificate (kubernetes.io/tls with
    /// `ca.crt`); its SANs must cover `<pod>.<cluster>-peers.<ns>.svc`
    /// of every member and the client Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_secret_name: Option<String>,
    /// `secrets`: the peer port's certificate, used for serving and
    /// dialing (server and client auth), with the same SANs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_secret_name: Option<String>,
    /// `secrets`: the operator's client certificate (common name `root`
    /// when auth is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_secret_name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "certManager")]
    CertManager,
    #[serde(rename = "secrets")]
    Secrets,
}

impl TlsMode {
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Auto => "auto",
            TlsMode::CertManager => "certManager",
            TlsMode::Secrets => "secrets",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    pub issuer_ref: IssuerRef,
}

/// A cert-manager issuer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// `Issuer` (in the cluster's namespace) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_true() -> bool {
    true
}
fn default_validity_hours() -> i32 {
    90 * 24
}
fn default_renew_before_hours() -> i32 {
    30 * 24
}
fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Authentication on (the operator creates `root` and enables it) or
    /// off (the operator disables it).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Secret key holding `root`'s password, read when the operator
    /// enables authentication (change it later with `etcdctl user passwd`).
    pub root_password_secret: SecretKeyRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default = "default_password_key")]
    pub key: String,
}

fn default_password_key() -> String {
    "password".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Namespaces whose pods may reach the client port; absent: every
    /// namespace. The operator's own namespace is always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_namespace_selector: Option<LabelSelector>,
    /// Pods (in those namespaces) that may reach the client port;
    /// absent: every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_pod_selector: Option<LabelSelector>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            client_namespace_selector: None,
            client_pod_selector: None,
        }
    }
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
    /// Creating, Running, Scaling, Upgrading, Degraded, QuorumLost,
    /// Recovering, Hibernating, Hibernated, Resuming or Failed.
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
    /// The certificates, when TLS is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    /// Whether the operator turned authentication on (and has not turned
    /// it off since).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auth_enabled: bool,
    /// Backups, as the backup agent reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// Hibernation (`replicas: 0`): how many members were running when the
    /// cluster stopped; waking up brings exactly these back first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernated_replicas: Option<i32>,
    /// The backup asked of the agent before hibernating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_backup: Option<HibernationBackupStatus>,
    /// A recovery from lost quorum in progress (annotation
    /// `nod.io/recover-quorum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,
    /// The revision this cluster was restored to (`spec.restore`), once
    /// founded from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_revision: Option<i64>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the operator first saw `spec.backup`: until a backup
    /// succeeds, `BackupStale` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The newest full snapshot written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<BackupRecord>,
    /// The newest revision a restore can reach (the last incremental
    /// segment's, or the full's), and when it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The newest failure the agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<BackupFailure>,
    /// When the next full snapshot starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_scheduled: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Why the agent could not be asked, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<String>,
    /// The newest request for a backup now (`POST /backups`) the agent
    /// has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub completed_request: Option<u64>,
    /// The last on-demand backup (annotation `nod.io/backup-now`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<OnDemandBackup>,
}

/// A backup asked for with `kubectl annotate nodcluster/NAME
/// nod.io/backup-now=<any new value>`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnDemandBackup {
    /// The annotation's value it was taken for.
    pub for_value: String,
    /// The agent's number for the request.
    #[schemars(extend("format" = "int64"))]
    pub request: u64,
    pub requested: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// The full backup that answered it, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken: Option<BackupRecord>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    /// This recovery's id (the survivor forces once per id).
    pub id: String,
    /// The pod whose member held the most of the log.
    pub survivor: String,
    /// Its Raft index when chosen.
    #[schemars(extend("format" = "int64"))]
    pub raft_index: u64,
    /// `Forcing` (the survivor restarts as the only member) or
    /// `Rejoining` (the others come back empty, one at a time).
    pub stage: String,
    /// Whether the survivor's pod was restarted with the force flag.
    #[serde(default)]
    pub restarted: bool,
    /// The pods wiped to rejoin so far (each once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    pub started: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HibernationBackupStatus {
    /// The agent's number for the request (`POST /backups`).
    #[schemars(extend("format" = "int64"))]
    pub request: u64,
    pub requested: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// The chain's folder in the destination (`nod snapshot restore
    /// --from-backup DEST --chain ...`).
    pub chain: String,
    pub revision: i64,
    /// The snapshot's size (uncompressed).
    #[schemars(extend("format" = "int64"))]
    pub size_bytes: u64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupFailure {
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    pub message: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// The mode the cluster was created with (the members' URLs are
    /// https from then on).
    pub mode: String,
    /// The earliest expiry among the certificates the operator manages
    /// (`auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The member whose new certificates were just written: the next
    /// member is renewed once it serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewing: Option<String>,
    /// The value of the `nod.io/renew-certificates` annotation every
    /// member was renewed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_for: Option<String>,
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
        if self.replicas < 0 {
            errors.push(format!(
                "replicas must be at least 0 (0 hibernates), not {}",
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
            errors.extend(tls.validate());
        }
        if let Some(auth) = &self.auth {
            if auth.root_password_secret.name.is_empty() || auth.root_password_secret.key.is_empty()
            {
                errors.push("auth.rootPasswordSecret needs a name and a key".into());
            }
            if let Some(tls) = &self.tls {
                if !tls.client_cert_auth {
                    errors.push("auth with tls needs tls.clientCertAuth: the operator acts as root by its client certificate".into());
                }
            }
        }
        if let Some(b) = &self.backup {
            errors.extend(b.validate());
        }
        if let Some(r) = &self.restore {
            errors.extend(r.validate());
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

impl BackupSpec {
    fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = nod_client::backup_agent::Schedule::parse(&self.schedule) {
            errors.push(format!("backup.{e}"));
        }
        let d = &self.destination;
        match (&d.s3, &d.claim) {
            (Some(_), None) => errors.extend(s3_problems(d)),
            (None, Some(c)) => {
                if c.name.is_empty() {
                    errors.push("backup.destination.claim needs a name".into());
                }
                if c.sub_path
                    .as_deref()
                    .is_some_and(|p| p.starts_with('/') || p.split('/').any(|part| part == ".."))
                {
                    errors.push(
                        "backup.destination.claim.subPath must be a relative folder without '..'"
                            .into(),
                    );
                }
            }
            _ => errors.push("backup.destination: exactly one of s3 and claim".into()),
        }
        errors
    }

    /// The destination as `nod backup --dest` takes it.
    pub fn dest(&self) -> String {
        match (&self.destination.s3, &self.destination.claim) {
            (Some(s3), _) => s3_url(Some(s3)),
            (None, Some(c)) => match &c.sub_path {
                Some(p) => format!("{BACKUP_DIR}/{}", p.trim_matches('/')),
                None => BACKUP_DIR.into(),
            },
            (None, None) => String::new(),
        }
    }
}

impl RestoreSpec {
    fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        match &self.destination.s3 {
            Some(_) if self.destination.claim.is_none() => {
                errors.extend(
                    s3_problems(&self.destination)
                        .into_iter()
                        .map(|e| e.replacen("backup.", "restore.", 1)),
                );
            }
            _ => errors.push(
                "restore.destination: an s3 bucket (every member reads it at once; a claim cannot be mounted by all)".into(),
            ),
        }
        if let Some(id) = &self.source_cluster_id {
            if id.is_empty() || u64::from_str_radix(id, 16).is_err() {
                errors.push(format!(
                    "restore.sourceClusterId {id:?} is not a cluster id in hex"
                ));
            }
        }
        if let Some(c) = &self.chain {
            if !c.starts_with("chain-") || c.contains('/') {
                errors.push(format!(
                    "restore.chain {c:?} is not a chain folder name (chain-...)"
                ));
            }
        }
        if self.revision < 1 {
            errors.push("restore.revision must be at least 1".into());
        }
        errors
    }

    /// `nod server --restore-from`'s destination.
    pub fn dest(&self) -> String {
        s3_url(self.destination.s3.as_ref())
    }
}

fn s3_url(s3: Option<&S3Destination>) -> String {
    match s3 {
        Some(s3) => {
            let prefix = s3.prefix.trim_matches('/');
            if prefix.is_empty() {
                format!("s3://{}", s3.bucket)
            } else {
                format!("s3://{}/{prefix}", s3.bucket)
            }
        }
        None => String::new(),
    }
}

/// What is wrong with an S3 destination (none without one).
fn s3_problems(d: &BackupDestination) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(s3) = &d.s3 else {
        return errors;
    };
    if s3.bucket.is_empty() || s3.credentials_secret.name.is_empty() {
        errors.push("backup.destination.s3 needs a bucket and credentialsSecret.name".into());
    }
    if s3.bucket.contains('/') || s3.prefix.starts_with('/') {
        errors.push(
            "backup.destination.s3: the bucket is a name, and the prefix a relative folder".into(),
        );
    }
    if let Some(e) = &s3.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            errors.push(format!(
                "backup.destination.s3.endpoint {e:?} must be an http:// or https:// URL"
            ));
        }
    }
    errors
}

/// Where the backup agent mounts a claim destination.
pub const BACKUP_DIR: &str = "/var/lib/nod-backup";

impl TlsSpec {
    fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.renew_before_hours >= self.validity_hours {
            errors.push(format!(
                "tls.renewBeforeHours ({}) must be less than tls.validityHours ({})",
                self.renew_before_hours, self.validity_hours
            ));
        }
        let secrets = [
            ("serverSecretName", &self.server_secret_name),
            ("peerSecretName", &self.peer_secret_name),
            ("operatorSecretName", &self.operator_secret_name),
        ];
        match self.mode {
            TlsMode::Secrets => {
                for (field, v) in secrets {
                    if v.as_deref().is_none_or(str::is_empty) {
                        errors.push(format!("tls.mode secrets needs tls.{field}"));
                    }
                }
            }
            mode => {
                for (field, v) in secrets {
                    if v.is_some() {
                        errors.push(format!(
                            "tls.{field} is for tls.mode secrets, not {}",
                            mode.name()
                        ));
                    }
                }
            }
        }
        if self.mode == TlsMode::CertManager
            && self
                .cert_manager
                .as_ref()
                .is_none_or(|c| c.issuer_ref.name.is_empty())
        {
            errors.push("tls.mode certManager needs tls.certManager.issuerRef.name".into());
        }
        if self.mode != TlsMode::Auto && !self.client_users.is_empty() {
            errors.push("tls.clientUsers is for tls.mode auto".into());
        }
        for u in &self.client_users {
            if !is_dns_label(u) {
                errors.push(format!(
                    "tls.clientUsers: {u:?} must be a DNS label (it names a Secret)"
                ));
            }
        }
        errors
    }
}

/// Lower-case letters, digits and '-', at most 63, not starting or ending
/// with '-'.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
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
        let s = spec("{replicas: -1, raft: {heartbeatIntervalMs: 100, electionTimeoutMs: 300}, storage: {size: lots}, tls: {mode: auto, serverSecretName: x}}");
        let e = s.validate();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].contains("replicas"));
        assert!(e[1].contains("electionTimeoutMs"));
        assert!(e[2].contains("tls.serverSecretName is for tls.mode secrets"));
        assert!(e[3].contains("storage.size"));
        assert!(spec("replicas: 4").warnings()[0].contains("odd"));
        assert!(
            is_quantity("512Mi") && is_quantity("1") && !is_quantity("Gi") && !is_quantity("1.5Gi")
        );
    }

    #[test]
    fn tls_and_auth_specs_are_checked() {
        let bad = |y: &str| spec(y).validate();
        assert!(bad("{tls: {mode: auto}}").is_empty());
        assert!(
            bad("{tls: {mode: auto, renewBeforeHours: 100, validityHours: 100}}")[0]
                .contains("renewBeforeHours")
        );
        let e = bad("{tls: {mode: secrets, serverSecretName: s}}");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("peerSecretName") && e[1].contains("operatorSecretName"));
        assert!(bad("{tls: {mode: certManager}}")[0].contains("issuerRef"));
        assert!(bad(
            "{tls: {mode: certManager, clientUsers: [a], certManager: {issuerRef: {name: x}}}}"
        )[0]
        .contains("clientUsers"));
        assert!(bad("{tls: {mode: auto, clientUsers: [Bad_Name]}}")[0].contains("DNS label"));
        assert!(bad("{auth: {rootPasswordSecret: {name: r}}}").is_empty());
        assert!(bad(
            "{auth: {rootPasswordSecret: {name: r}}, tls: {mode: auto, clientCertAuth: false}}"
        )[0]
        .contains("clientCertAuth"));
        let s = spec("{auth: {rootPasswordSecret: {name: r}}}");
        let auth = s.auth.unwrap();
        assert!(auth.enabled);
        assert_eq!(auth.root_password_secret.key, "password");
        assert!(spec("{}").network_policy.enabled, "on by default");
        assert!(serde_yaml::from_str::<NodClusterSpec>("{tls: {mode: magic}}").is_err());
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
        assert_eq!(rules(&spec["tls"]), ["self.mode == oldSelf.mode"]);
        assert_eq!(
            rules(&spec["backup"]["properties"]["destination"]),
            ["has(self.s3) != has(self.claim)"]
        );
        assert_eq!(rules(&spec["restore"]), ["self == oldSelf"]);
        assert_eq!(
            spec["backup"]["properties"]["schedule"]["maxLength"],
            nod_client::backup_agent::MAX_SCHEDULE_LEN
        );
        assert_eq!(
            spec["storage"]["properties"]["claimPolicy"]["enum"],
            serde_json::json!(["Retain", "Delete"])
        );
        assert_eq!("x".repeat(MAX_NAME_LEN).len() + 11, 63);
    }

    #[test]
    fn backup_specs_are_checked() {
        let s3 = "{schedule: '0 */6 * * *', destination: {s3: {bucket: b, prefix: p/, credentialsSecret: {name: k}}}}";
        let ok = spec(&format!("{{backup: {s3}}}"));
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        let b = ok.backup.unwrap();
        assert!(b.incremental, "on by default");
        assert_eq!(
            (
                b.segment_max_age_seconds,
                b.retention.count,
                b.stale_after_hours
            ),
            (60, 7, 24)
        );
        assert_eq!(
            b.destination
                .s3
                .as_ref()
                .unwrap()
                .credentials_secret
                .access_key_id_key,
            "AWS_ACCESS_KEY_ID"
        );
        assert_eq!(b.dest(), "s3://b/p");
        let claim =
            spec("{backup: {schedule: '@daily', destination: {claim: {name: c, subPath: nod}}}}");
        assert!(claim.validate().is_empty());
        assert_eq!(claim.backup.unwrap().dest(), "/var/lib/nod-backup/nod");

        let bad = |y: &str| spec(&format!("{{backup: {y}}}")).validate().join("; ");
        assert!(
            bad("{schedule: 'every day', destination: {claim: {name: c}}}")
                .contains("backup.schedule")
        );
        assert!(bad("{schedule: '@daily', destination: {}}").contains("exactly one"));
        assert!(bad("{schedule: '@daily', destination: {claim: {name: c}, s3: {bucket: b, credentialsSecret: {name: k}}}}").contains("exactly one"));
        assert!(
            bad("{schedule: '@daily', destination: {claim: {name: c, subPath: ../x}}}")
                .contains("subPath")
        );
        assert!(bad("{schedule: '@daily', destination: {s3: {bucket: b, endpoint: 'minio:9000', credentialsSecret: {name: k}}}}").contains("endpoint"));
        assert!(bad("{schedule: '@daily', destination: {s3: {bucket: b, prefix: /abs, credentialsSecret: {name: k}}}}").contains("relative"));
    }

    #[test]
    fn restore_specs_are_checked() {
        let s3 = "{bucket: b, prefix: p, endpoint: 'http://s3:9000', credentialsSecret: {name: k}}";
        let ok = spec(&format!("{{restore: {{destination: {{s3: {s3}}}, revision: 42, sourceClusterId: 6d1c, chain: chain-1}}}}"));
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        assert_eq!(ok.restore.unwrap().dest(), "s3://b/p");
        let bad = |y: &str| spec(&format!("{{restore: {y}}}")).validate().join("; ");
        assert!(bad("{destination: {claim: {name: c}}, revision: 1}").contains("an s3 bucket"));
        assert!(bad(&format!("{{destination: {{s3: {s3}}}, revision: 0}}")).contains("at least 1"));
        assert!(bad(&format!(
            "{{destination: {{s3: {s3}}}, revision: 5, sourceClusterId: xyz}}"
        ))
        .contains("hex"));
        assert!(bad(&format!(
            "{{destination: {{s3: {s3}}}, revision: 5, chain: ../x}}"
        ))
        .contains("chain folder"));
        assert!(bad("{destination: {s3: {bucket: b, endpoint: 's3:9000', credentialsSecret: {name: k}}}, revision: 5}").contains("restore.destination.s3.endpoint"));
        assert!(
            serde_yaml::from_str::<NodClusterSpec>("{restore: {destination: {}}}").is_err(),
            "revision is required"
        );
    }

    #[test]
    fn unknown_fields_are_kept_out_by_the_schema_not_serde() {
        // The API server prunes unknown fields with the structural schema;
        // serde must still read what it knows.
        let s = spec("{replicas: 5, surprise: 1}");
        assert_eq!(s.replicas, 5);
    }
}
