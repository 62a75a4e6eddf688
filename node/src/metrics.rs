//! Prometheus metrics, named as etcd names them where etcd has one, so
//! existing dashboards and alerts read Nod unchanged. No I/O: `/metrics`
//! renders the registry (see `http`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use nod_query::Skip;

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
    pub index_ready: IntGaugeVec,
    pub index_failed: IntGaugeVec,
    pub index_backfill_remaining: IntGaugeVec,
    pub index_skipped: IntCounterVec,
    pub index_refused: IntCounterVec,
    /// The index names last shown (`set_indexes` removes the series of
    /// those gone), and the lock that makes one scrape's update whole.
    index_names: Arc<Mutex<BTreeSet<String>>>,
}

/// One secondary index as `/metrics` shows it, read from the store at
/// the scrape.
pub struct IndexMetric<'a> {
    pub name: &'a str,
    pub ready: bool,
    pub failed: bool,
    pub backfill_remaining: u64,
    /// By [`Skip::REASONS`], since this process started.
    pub skipped: [u64; 4],
    pub refused: u64,
}

/// Moves a counter to `v`, a count the store keeps (a new index of an
/// old name starts again: the counter resets, as after a restart).
fn counter_to(c: &IntCounter, v: u64) {
    let have = c.get();
    if v < have {
        c.reset();
        c.inc_by(v);
    } else {
        c.inc_by(v - have);
    }
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
            index_ready: reg!(IntGaugeVec::new(
                Opts::new(
                    "nod_index_ready",
                    "1 if the secondary index serves queries (built), by index."
                ),
                &["index"]
            )),
            index_failed: reg!(IntGaugeVec::new(
                Opts::new(
                    "nod_index_failed",
                    "1 if the unique index's build met a duplicate (rebuild it once they are gone), by index."
                ),
                &["index"]
            )),
            index_backfill_remaining: reg!(IntGaugeVec::new(
                Opts::new(
                    "nod_index_backfill_remaining_keys",
                    "Keys the index's build has still to index (0 once built), by index."
                ),
                &["index"]
            )),
            index_skipped: reg!(IntCounterVec::new(
                Opts::new(
                    "nod_index_skipped_total",
                    "Values under the index's prefix this member applied without an entry, by index and reason (too_large, not_json, missing, wrong_type)."
                ),
                &["index", "reason"]
            )),
            index_refused: reg!(IntCounterVec::new(
                Opts::new(
                    "nod_index_unique_refusals_total",
                    "Puts and txns this member refused because they would duplicate a unique index's value, by index."
                ),
                &["index"]
            )),
            index_names: Arc::new(Mutex::new(BTreeSet::new())),
            registry,
        }
    }

    /// Shows the indexes as they are now; series of indexes no longer
    /// there go.
    pub fn set_indexes(&self, indexes: &[IndexMetric<'_>]) {
        let mut known = self
            .index_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for gone in known.iter() {
            if indexes.iter().any(|i| i.name == gone.as_str()) {
                continue;
            }
            let _ = self.index_ready.remove_label_values(&[gone]);
            let _ = self.index_failed.remove_label_values(&[gone]);
            let _ = self.index_backfill_remaining.remove_label_values(&[gone]);
            let _ = self.index_refused.remove_label_values(&[gone]);
            for reason in Skip::REASONS {
                let _ = self
                    .index_skipped
                    .remove_label_values(&[gone.as_str(), reason]);
            }
        }
        known.clear();
        for i in indexes {
            known.insert(i.name.to_string());
            self.index_ready
                .with_label_values(&[i.name])
                .set(i64::from(i.ready));
            self.index_failed
                .with_label_values(&[i.name])
                .set(i64::from(i.failed));
            self.index_backfill_remaining
                .with_label_values(&[i.name])
                .set(i64::try_from(i.backfill_remaining).unwrap_or(i64::MAX));
            for (reason, n) in Skip::REASONS.iter().zip(i.skipped) {
                counter_to(&self.index_skipped.with_label_values(&[i.name, reason]), n);
            }
            counter_to(&self.index_refused.with_label_values(&[i.name]), i.refused);
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
