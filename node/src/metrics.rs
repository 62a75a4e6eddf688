//! Prometheus metrics, named as etcd names them where etcd has one, so
//! existing dashboards and alerts read Nod unchanged. No I/O: `/metrics`
//! renders the registry (see `http`).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub term: IntGauge,
    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntCounter,
    pub proposals_failed: IntCounter,
    pub proposals_pending: IntGauge,
    pub applied_index: IntGauge,
    pub committed_index: IntGauge,
    pub wal_fsync_seconds: Histogram,
    pub backend_commit_seconds: Histogram,
    pub snapshots: IntCounter,
    pub snapshot_seconds: Histogram,
    pub snapshot_sent_bytes: IntCounter,
    pub snapshot_received_bytes: IntCounter,
    pub grpc_requests: IntCounterVec,
    pub grpc_seconds: HistogramVec,
    pub db_size: IntGauge,
    pub db_size_in_use: IntGauge,
    pub defrag_reclaimed: IntCounter,
    pub watchers: IntGauge,
    pub leases: IntGauge,
    pub member_healthy: IntGaugeVec,
    pub members_unhealthy: IntGauge,
    pub autopilot_actions: IntCounterVec,
    pub gossip_nodes: IntGaugeVec,
    pub gossip_packets_dropped: IntCounterVec,
}

fn buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                registry
                    .register(Box::new(m.clone()))
                    .expect("unique metric");
                m
            }};
        }
        Metrics {
            term: reg!(IntGauge::new("etcd_server_term", "The current Raft term.")),
            has_leader: reg!(IntGauge::new(
                "etcd_server_has_leader",
                "1 if a leader exists, else 0."
            )),
            is_leader: reg!(IntGauge::new(
                "etcd_server_is_leader",
                "1 if this member leads, else 0."
            )),
            leader_changes: reg!(IntCounter::new(
                "etcd_server_leader_changes_seen_total",
                "Leader changes seen."
            )),
            proposals_committed: reg!(IntCounter::new(
                "etcd_server_proposals_committed_total",
                "Proposals applied with a result."
            )),
            proposals_failed: reg!(IntCounter::new(
                "etcd_server_proposals_failed_total",
                "Proposals that failed."
            )),
            proposals_pending: reg!(IntGauge::new(
                "etcd_server_proposals_pending",
                "Proposals waiting to commit."
            )),
            applied_index: reg!(IntGauge::new(
                "etcd_server_proposals_applied_total",
                "The applied Raft index."
            )),
            committed_index: reg!(IntGauge::new(
                "etcd_server_proposals_committed_index",
                "The committed Raft index."
            )),
            wal_fsync_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "etcd_disk_wal_fsync_duration_seconds",
                    "Latency of log fsyncs (one per Ready)."
                )
                .buckets(buckets())
            )),
            backend_commit_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "etcd_disk_backend_commit_duration_seconds",
                    "Latency of state machine batch commits."
                )
                .buckets(buckets())
            )),
            snapshots: reg!(IntCounter::new("nod_snapshots_total", "Snapshots taken.")),
            snapshot_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "etcd_debugging_snap_save_total_duration_seconds",
                    "Time to take a snapshot."
                )
                .buckets(buckets())
            )),
            snapshot_sent_bytes: reg!(IntCounter::new(
                "etcd_network_snapshot_send_bytes_total",
                "Snapshot bytes sent to peers."
            )),
            snapshot_received_bytes: reg!(IntCounter::new(
                "etcd_network_snapshot_receive_bytes_total",
                "Snapshot bytes received from peers."
            )),
            grpc_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "grpc_server_handled_total",
                    "Client gRPC requests by method and code."
                ),
                &["grpc_method", "grpc_code"]
            )),
            grpc_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Client gRPC latency by method."
                )
                .buckets(buckets()),
                &["grpc_method"]
            )),
            db_size: reg!(IntGauge::new(
                "etcd_mvcc_db_total_size_in_bytes",
                "State machine size on disk."
            )),
            db_size_in_use: reg!(IntGauge::new(
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "The part of the state machine's size live data takes (RocksDB's estimate)."
            )),
            defrag_reclaimed: reg!(IntCounter::new(
                "nod_defrag_reclaimed_bytes_total",
                "Bytes Defragment calls reclaimed on this member."
            )),
            watchers: reg!(IntGauge::new(
                "etcd_debugging_mvcc_watcher_total",
                "Active watchers."
            )),
            leases: reg!(IntGauge::new("nod_leases", "Granted leases.")),
            member_healthy: reg!(IntGaugeVec::new(
                Opts::new(
                    "nod_member_healthy",
                    "1 if the member is healthy (the leader hears from it; on followers: alive by gossip)."
                ),
                &["name", "member_id"]
            )),
            members_unhealthy: reg!(IntGauge::new(
                "nod_members_unhealthy",
                "Members the leader has not heard from within two election timeouts (leader only)."
            )),
            autopilot_actions: reg!(IntCounterVec::new(
                Opts::new(
                    "nod_autopilot_actions_total",
                    "Membership changes made by autopilot, by action (promote, remove)."
                ),
                &["action"]
            )),
            gossip_nodes: reg!(IntGaugeVec::new(
                Opts::new(
                    "nod_gossip_nodes",
                    "Other nodes known by gossip, by state (alive, dead)."
                ),
                &["state"]
            )),
            gossip_packets_dropped: reg!(IntCounterVec::new(
                Opts::new(
                    "nod_gossip_packets_dropped_total",
                    "Gossip datagrams dropped unopened (--gossip-key-file), by reason (unknown_key, unauthenticated)."
                ),
                &["reason"]
            )),
            registry,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
