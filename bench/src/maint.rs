//! Maintenance pauses (etcd issue 9222): writes at a steady rate while the
//! leader compacts a long history and then defragments, against the same
//! writes with no maintenance running.
//!
//! The history: `revisions` puts over `keyspace` keys (each key overwritten
//! revisions / keyspace times, so the compaction has old revisions to drop).
//! Then, with the writer on: 3 s of baseline; `Compact(current revision,
//! physical)` sent to the leader, measured until it returns; 2 s; then
//! `Defragment` sent to the leader (etcd rewrites its bbolt file; Nod
//! compacts its RocksDB store fully), measured until it returns. Each
//! write's latency counts from its scheduled time (open loop).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nod_proto::etcd::etcdserverpb::kv_client::KvClient;
use nod_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use nod_proto::etcd::etcdserverpb::{
    CompactionRequest, DefragmentRequest, PutRequest, RangeRequest,
};

use crate::workload::{histogram, key, Conn};

#[derive(Clone, Debug)]
pub struct Spec {
    pub revisions: u64,
    pub keyspace: u64,
    pub value_size: usize,
    /// Writes per second during the measurement.
    pub rate: f64,
}

/// The phases, in order.
pub const PHASES: [&str; 3] = ["no maintenance", "compaction", "defragmentation"];

/// One phase's writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phase {
    pub count: u64,
    pub errors: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// How long the maintenance call took (s); 0 for the baseline.
    pub call_secs: f64,
}

fn phase_of(h: &Histogram<u64>, errors: u64, call: Duration) -> Phase {
    let ms = |v: u64| v as f64 / 1000.0;
    Phase {
        count: h.len(),
        errors,
        p50: ms(h.value_at_quantile(0.5)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        call_secs: call.as_secs_f64(),
    }
}

/// Writes the history: `revisions` puts over the key space, 64 at a time.
pub async fn history(conns: &[Conn], spec: &Spec) -> Result<(), String> {
    let (keyspace, size) = (spec.keyspace.max(1), spec.value_size);
    crate::workload::put_all(conns, spec.revisions, 64, move |i| {
        (maint_key(i % keyspace), vec![b'h'; size])
    })
    .await
    .map_err(|e| format!("history: {e}"))
}

fn maint_key(i: u64) -> Vec<u8> {
    let mut k = b"m/".to_vec();
    k.extend_from_slice(&key(i));
    k
}

/// The writer and the phases: `conns` carry the writes, `leader` the
/// maintenance calls. Returns one `Phase` per entry of `PHASES`.
pub async fn run(conns: &[Conn], leader: Conn, spec: &Spec) -> Result<Vec<Phase>, String> {
    let hists: Arc<Vec<Mutex<Histogram<u64>>>> =
        Arc::new(PHASES.iter().map(|_| Mutex::new(histogram())).collect());
    let errors: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new(PHASES.iter().map(|_| Default::default()).collect());
    // usize::MAX: between phases, not counted.
    let current = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let conns = conns.to_vec();
        let (hists, errors, current, stop) =
            (hists.clone(), errors.clone(), current.clone(), stop.clone());
        let spec = spec.clone();
        tokio::spawn(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(512));
            let interval = Duration::from_secs_f64(1.0 / spec.rate.max(1.0));
            let start = Instant::now();
            let mut tasks = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = start + interval.mul_f64(n as f64);
                tokio::time::sleep_until(at.into()).await;
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    break;
                };
                let phase = current.load(Ordering::Relaxed);
                let mut kv = KvClient::new(conns[n as usize % conns.len()].clone());
                let (hists, errors) = (hists.clone(), errors.clone());
                let k = maint_key(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % spec.keyspace.max(1));
                let v = vec![b'w'; spec.value_size];
                tasks.push(tokio::spawn(async move {
                    let ok = kv
                        .put(PutRequest {
                            key: k,
                            value: v,
                            ..Default::default()
                        })
                        .await
                        .is_ok();
                    if let (Some(h), Some(e)) = (hists.get(phase), errors.get(phase)) {
                        if ok {
                            let us = at.elapsed().as_micros().max(1) as u64;
                            let _ = h.lock().unwrap_or_else(|e| e.into_inner()).record(us);
                        } else {
                            e.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                }));
                n += 1;
                if tasks.len() > 10_000 {
                    tasks.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                }
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    let mut calls = [Duration::ZERO; 3];
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Compaction to the current revision, physical: the call returns when
    // the leader has dropped the old revisions.
    current.store(usize::MAX, Ordering::Relaxed);
    let rev = KvClient::new(leader.clone())
        .range(RangeRequest {
            key: b"m/".to_vec(),
            limit: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("revision: {e}"))?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    current.store(1, Ordering::Relaxed);
    let t = Instant::now();
    let compact = KvClient::new(leader.clone())
        .compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await;
    calls[1] = t.elapsed();
    current.store(usize::MAX, Ordering::Relaxed);
    let mut failure = compact.err().map(|e| format!("compact to {rev}: {e}"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    if failure.is_none() {
        current.store(2, Ordering::Relaxed);
        let t = Instant::now();
        // A defragmentation of a large store takes a while: no deadline
        // but the connection's.
        let defrag = MaintenanceClient::new(leader)
            .defragment(DefragmentRequest {})
            .await;
        calls[2] = t.elapsed();
        current.store(usize::MAX, Ordering::Relaxed);
        failure = defrag.err().map(|e| format!("defragment: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    if let Some(f) = failure {
        return Err(f);
    }
    Ok(PHASES
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let h = hists[i].lock().unwrap_or_else(|e| e.into_inner());
            phase_of(&h, errors[i].load(Ordering::Relaxed), calls[i])
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_reports_its_tail_and_maximum() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        h.record(2_000_000).unwrap();
        let p = phase_of(&h, 3, Duration::from_millis(1500));
        assert_eq!(p.count, 1001);
        assert_eq!(p.errors, 3);
        assert!((p.max - 2000.0).abs() / 2000.0 < 0.01, "{}", p.max);
        assert!(p.p50 > 4.9 && p.p50 < 5.1, "{}", p.p50);
        assert!((p.call_secs - 1.5).abs() < 1e-9);
    }

    #[test]
    fn history_keys_stay_in_their_space() {
        assert!(maint_key(3).starts_with(b"m/"));
        assert_eq!(maint_key(7), maint_key(7));
        assert_ne!(maint_key(7), maint_key(8));
    }
}
