//! The operator's Prometheus metrics.

use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub failures: IntCounterVec,
    pub reconcile_duration: Histogram,
    /// When each cluster's newest full backup was written (Unix seconds),
    /// for the `NodBackupMissing` alert.
    pub backup_last_success: GaugeVec,
    /// 1 while a cluster's `BackupStale` condition is true (no backup
    /// progress for `spec.backup.staleAfterHours`), else 0; the
    /// `NodBackupMissing` alert. No series for a cluster without backups,
    /// suspended or hibernated, or deleted.
    pub backup_stale: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("nod_operator_reconciles_total", "Reconciles, by result"),
            &["result"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "nod_operator_reconcile_failures_total",
                "Failed reconciles, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "nod_operator_reconcile_duration_seconds",
                "Time to reconcile one NodCluster",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )
        .expect("valid metric");
        let backup_last_success = GaugeVec::new(
            Opts::new(
                "nod_operator_backup_last_success_timestamp_seconds",
                "When the cluster's newest full backup was written, as its backup agent reports",
            ),
            // Not `namespace`: the scrape's own label (the operator's namespace).
            &["cluster_namespace", "cluster"],
        )
        .expect("valid metric");
        let backup_stale = IntGaugeVec::new(
            Opts::new(
                "nod_operator_backup_stale",
                "1 when the cluster's backups made no progress for spec.backup.staleAfterHours",
            ),
            &["cluster_namespace", "cluster"],
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(backup_last_success.clone()),
            Box::new(backup_stale.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        Metrics {
            registry,
            reconciles,
            failures,
            reconcile_duration,
            backup_last_success,
            backup_stale,
        }
    }

    /// Drops a cluster's backup series: its backups were removed,
    /// suspended or hibernated, or the cluster was deleted.
    pub fn forget_backups(&self, namespace: &str, cluster: &str) {
        // An error only says there was no such series.
        let _ = self
            .backup_last_success
            .remove_label_values(&[namespace, cluster]);
        let _ = self.backup_stale.remove_label_values(&[namespace, cluster]);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}
