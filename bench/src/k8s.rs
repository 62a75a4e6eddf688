//! A Kubernetes-shaped workload: the etcd traffic kube-apiserver sends,
//! after its storage layer (k8s.io/apiserver/pkg/storage/etcd3) and etcd's
//! robustness suite's Kubernetes profile (docs/research/k8s-traffic.md).
//!
//! - Objects of 2 KiB under `/registry/<kind>/<namespace>/<name>` (pods,
//!   configmaps, secrets, services, endpointslices, events).
//! - Creates are a Txn comparing `mod_revision == 0`, then Put; updates and
//!   deletes compare the object's last seen `mod_revision`, Else Get (what
//!   `OptimisticPut`/`OptimisticDelete` send). Events carry a lease: one is
//!   granted every second, as the apiserver's lease manager does.
//! - Gets are linearizable single-key ranges; lists are paginated, `limit`
//!   500, later pages at the first page's revision and from the last key +
//!   `\0`: a namespace's objects of a kind, and now and then every
//!   namespace's (a relist).
//! - One watch per kind prefix (the watch cache's), with `prev_kv` and
//!   progress notification, asking for progress every 5 s; the watches keep
//!   the objects' revisions up to date, as the watch cache does for updates.
//! - Operations arrive at a steady rate (open loop: each has its scheduled
//!   time, and its latency counts from then, so a stall is not hidden by
//!   the requests it held back).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nod_proto::etcd::etcdserverpb::kv_client::KvClient;
use nod_proto::etcd::etcdserverpb::lease_client::LeaseClient;
use nod_proto::etcd::etcdserverpb::watch_client::WatchClient;
use nod_proto::etcd::etcdserverpb::{
    compare, request_op, watch_request, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};

use nod_client::prefix_end;

use crate::workload::{histogram, list_pages, Conn};

/// The kinds and their share of the objects.
const KINDS: [(&str, u32); 6] = [
    ("pods", 40),
    ("configmaps", 20),
    ("secrets", 10),
    ("services", 10),
    ("endpointslices", 10),
    ("events", 10),
];
const NAMESPACES: usize = 10;
/// kube-apiserver's page size for lists it sends to etcd.
pub const PAGE: i64 = 500;
/// How often each watch asks for progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The lease TTL an event gets (1 h, plus the lease manager's 5%, at most 60 s).
const EVENT_TTL: i64 = 3660;
/// Operations in flight at most; beyond it, an operation waits (its
/// latency still counts from its scheduled time).
const MAX_IN_FLIGHT: usize = 512;

/// The operations, in the report's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
    Get,
    List,
    Relist,
    LeaseGrant,
    /// From the write's scheduled time to the event's arrival at its watch.
    WatchEvent,
}

impl Op {
    pub const ALL: [Op; 8] = [
        Op::Create,
        Op::Update,
        Op::Delete,
        Op::Get,
        Op::List,
        Op::Relist,
        Op::LeaseGrant,
        Op::WatchEvent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create (Txn mod_revision = 0 → Put)",
            Op::Update => "update (Txn mod_revision = r → Put, else Get)",
            Op::Delete => "delete (Txn mod_revision = r → Delete, else Get)",
            Op::Get => "get (linearizable)",
            Op::List => "list a namespace (pages of 500)",
            Op::Relist => "list every namespace (pages of 500, at a revision)",
            Op::LeaseGrant => "lease grant (every second)",
            Op::WatchEvent => "watch event delivered (from the write's schedule)",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub objects: usize,
    pub value_size: usize,
    /// Operations per second (not counting lease grants).
    pub rate: f64,
    pub duration: Duration,
}

/// What one run measured, per operation.
pub struct Measured {
    pub hists: Vec<Histogram<u64>>,
    pub errors: Vec<u64>,
    /// Updates and deletes whose compare failed (a stale revision: the
    /// apiserver's conflict), counted apart from errors.
    pub conflicts: u64,
    pub progress_notifications: u64,
    /// Operations completed (lease grants and deliveries not counted).
    pub ops: u64,
    pub elapsed: Duration,
}

impl Measured {
    pub fn empty() -> Measured {
        Measured {
            hists: Op::ALL.iter().map(|_| histogram()).collect(),
            errors: vec![0; Op::ALL.len()],
            conflicts: 0,
            progress_notifications: 0,
            ops: 0,
            elapsed: Duration::ZERO,
        }
    }

    pub fn merge(&mut self, m: &Measured) {
        for (a, b) in self.hists.iter_mut().zip(&m.hists) {
            let _ = a.add(b);
        }
        for (a, b) in self.errors.iter_mut().zip(&m.errors) {
            *a += b;
        }
        self.conflicts += m.conflicts;
        self.progress_notifications += m.progress_notifications;
        self.ops += m.ops;
        self.elapsed += m.elapsed;
    }
}

fn slot(op: Op) -> usize {
    Op::ALL.iter().position(|o| *o == op).unwrap_or(0)
}

/// The objects and their last seen mod revisions, shared by the writers and
/// the watches.
#[derive(Default)]
struct Objects {
    keys: Vec<Vec<u8>>,
    revs: HashMap<Vec<u8>, i64>,
    next_name: u64,
}

impl Objects {
    fn pick(&self, r: u64) -> Option<(Vec<u8>, i64)> {
        if self.keys.is_empty() {
            return None;
        }
        let k = &self.keys[(r % self.keys.len() as u64) as usize];
        Some((k.clone(), self.revs.get(k).copied().unwrap_or(0)))
    }

    fn remove(&mut self, key: &[u8]) {
        if self.revs.remove(key).is_some() {
            if let Some(i) = self.keys.iter().position(|k| k == key) {
                self.keys.swap_remove(i);
            }
        }
    }

    fn set(&mut self, key: &[u8], rev: i64) {
        match self.revs.get_mut(key) {
            Some(r) => *r = (*r).max(rev),
            None => {
                self.revs.insert(key.to_vec(), rev);
                self.keys.push(key.to_vec());
            }
        }
    }
}

/// A kind for the `r`-th draw, weighted by `KINDS`.
fn kind(r: u64) -> &'static str {
    let total: u32 = KINDS.iter().map(|k| k.1).sum();
    let mut x = (r % total as u64) as u32;
    for (k, w) in KINDS {
        if x < w {
            return k;
        }
        x -= w;
    }
    KINDS[0].0
}

pub fn object_key(kind: &str, ns: usize, name: u64) -> Vec<u8> {
    format!("/registry/{kind}/ns-{ns:02}/{kind}-{name:07}").into_bytes()
}

/// A value of `size` bytes starting with the time since `base` in
/// nanoseconds (for the watch's delivery latency), then filler.
fn value(base: Instant, at: Instant, size: usize, r: u64) -> Vec<u8> {
    let mut v = at
        .saturating_duration_since(base)
        .as_nanos()
        .to_be_bytes()
        .to_vec();
    let mut x = r | 1;
    while v.len() < size.max(16) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size.max(16));
    v
}

fn put_op(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

fn get_op(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key,
            ..Default::default()
        })),
    }
}

fn mod_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.to_vec(),
        range_end: vec![],
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
    }
}

/// Creates `spec.objects` objects (as creates: Txn on mod_revision 0) over
/// `conns`, 64 at a time; returns the revision after the last.
pub async fn populate(conns: &[Conn], spec: &Spec) -> Result<i64, String> {
    let base = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..64usize {
        let mut kv = KvClient::new(conns[c % conns.len()].clone());
        let next = next.clone();
        let (objects, size) = (spec.objects as u64, spec.value_size);
        tasks.push(tokio::spawn(async move {
            let mut last = 0i64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= objects {
                    return Ok::<i64, String>(last);
                }
                let key = object_key(
                    kind(i.wrapping_mul(0x9e37_79b9)),
                    i as usize % NAMESPACES,
                    i,
                );
                let r = kv
                    .txn(TxnRequest {
                        compare: vec![mod_is(&key, 0)],
                        success: vec![put_op(key.clone(), value(base, Instant::now(), size, i), 0)],
                        failure: vec![],
                    })
                    .await
                    .map_err(|e| format!("populate {}: {e}", String::from_utf8_lossy(&key)))?
                    .into_inner();
                last = last.max(r.header.map_or(0, |h| h.revision));
            }
        }));
    }
    let mut rev = 0;
    for t in tasks {
        rev = rev.max(t.await.map_err(|e| e.to_string())??);
    }
    Ok(rev)
}

/// Lists every object under `/registry/` (paginated) into the shared map.
async fn list_all(kv: &mut KvClient<Conn>) -> Result<Objects, String> {
    let mut objects = Objects::default();
    let prefix = b"/registry/".to_vec();
    let end = prefix_end(&prefix);
    list_pages(kv, prefix, end, PAGE, |r| {
        for kv in &r.kvs {
            objects.set(&kv.key, kv.mod_revision);
        }
    })
    .await
    .map_err(|e| format!("list /registry/: {e}"))?;
    objects.next_name = objects.keys.len() as u64 + 1_000_000;
    Ok(objects)
}

/// A list of one prefix in pages of `PAGE`, as kube-apiserver sends it.
async fn paginated(kv: &mut KvClient<Conn>, prefix: Vec<u8>) -> bool {
    let end = prefix_end(&prefix);
    list_pages(kv, prefix, end, PAGE, |_| {}).await.is_ok()
}

/// Shared by the tasks of one run.
struct Shared {
    objects: Mutex<Objects>,
    measured: Mutex<Measured>,
    lease: std::sync::atomic::AtomicI64,
    base: Instant,
    value_size: usize,
}

impl Shared {
    fn record(&self, op: Op, since: Instant, ok: bool) {
        let us = since.elapsed().as_micros().max(1) as u64;
        let mut m = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        let i = slot(op);
        if ok {
            let _ = m.hists[i].record(us);
            if op != Op::LeaseGrant {
                m.ops += 1;
            }
        } else {
            m.errors[i] += 1;
        }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One operation, drawn from the mix: update 60%, get 25%, create 5%,
/// delete 5%, list of a namespace 4%, relist 1%.
async fn one(kv: &mut KvClient<Conn>, sh: &Shared, at: Instant, r: u64) {
    let pick = r % 100;
    let r2 = r / 100;
    let op = match pick {
        0..60 => Op::Update,
        60..85 => Op::Get,
        85..90 => Op::Create,
        90..95 => Op::Delete,
        95..99 => Op::List,
        _ => Op::Relist,
    };
    let ok = match op {
        Op::Create => {
            let (key, lease) = {
                let mut o = sh.objects();
                o.next_name += 1;
                let k = kind(r2);
                let lease = if k == "events" {
                    sh.lease.load(std::sync::atomic::Ordering::Relaxed)
                } else {
                    0
                };
                (
                    object_key(k, (r2 as usize / 7) % NAMESPACES, o.next_name),
                    lease,
                )
            };
            let v = value(sh.base, at, sh.value_size, r);
            match kv
                .txn(TxnRequest {
                    compare: vec![mod_is(&key, 0)],
                    success: vec![put_op(key.clone(), v, lease)],
                    failure: vec![],
                })
                .await
            {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    if resp.succeeded {
                        let rev = resp.header.map_or(0, |h| h.revision);
                        sh.objects().set(&key, rev);
                    }
                    true
                }
                Err(_) => false,
            }
        }
        Op::Update | Op::Delete => {
            let Some((key, rev)) = sh.objects().pick(r2) else {
                return;
            };
            let success = if op == Op::Update {
                put_op(key.clone(), value(sh.base, at, sh.value_size, r), 0)
            } else {
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: key.clone(),
                            ..Default::default()
                        },
                    )),
                }
            };
            match kv
                .txn(TxnRequest {
                    compare: vec![mod_is(&key, rev)],
                    success: vec![success],
                    failure: vec![get_op(key.clone())],
                })
                .await
            {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    let now = resp.header.as_ref().map_or(0, |h| h.revision);
                    if resp.succeeded {
                        if op == Op::Delete {
                            sh.objects().remove(&key);
                        } else {
                            sh.objects().set(&key, now);
                        }
                    } else {
                        // The apiserver's conflict: it takes the object from
                        // the Else Get (or learns it is gone).
                        sh.measured
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .conflicts += 1;
                        let got = resp.responses.first().and_then(|r| match &r.response {
                            Some(
                                nod_proto::etcd::etcdserverpb::response_op::Response::ResponseRange(
                                    g,
                                ),
                            ) => Some(g.kvs.first().map(|kv| kv.mod_revision)),
                            _ => None,
                        });
                        match got {
                            Some(Some(rev)) => sh.objects().set(&key, rev),
                            Some(None) => sh.objects().remove(&key),
                            None => {}
                        }
                    }
                    true
                }
                Err(_) => false,
            }
        }
        Op::Get => {
            let Some((key, _)) = sh.objects().pick(r2) else {
                return;
            };
            kv.range(RangeRequest {
                key,
                ..Default::default()
            })
            .await
            .is_ok()
        }
        Op::List => {
            let p = format!(
                "/registry/{}/ns-{:02}/",
                kind(r2),
                (r2 as usize / 7) % NAMESPACES
            )
            .into_bytes();
            paginated(kv, p).await
        }
        Op::Relist => paginated(kv, format!("/registry/{}/", kind(r2)).into_bytes()).await,
        Op::LeaseGrant | Op::WatchEvent => return,
    };
    sh.record(op, at, ok);
}

/// One watch on `/registry/<kind>/` from `start`, with prev_kv and progress
/// notification, asking for progress every 5 s, until `stop`.
async fn watch(
    conn: Conn,
    kind: &'static str,
    start: i64,
    sh: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let prefix = format!("/registry/{kind}/").into_bytes();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                start_revision: start,
                progress_notify: true,
                prev_kv: true,
                ..Default::default()
            },
        )),
    })
    .await
    .map_err(|e| e.to_string())?;
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) });
    let mut resp = WatchClient::new(conn)
        .watch(stream)
        .await
        .map_err(|e| format!("watch {kind}: {e}"))?
        .into_inner();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    let mut stop = stop;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = progress.tick() => {
                let _ = tx
                    .send(WatchRequest {
                        request_union: Some(watch_request::RequestUnion::ProgressRequest(
                            WatchProgressRequest {},
                        )),
                    })
                    .await;
            }
            m = resp.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(format!("watch {kind}: the stream ended")),
                    Err(e) => return Err(format!("watch {kind}: {e}")),
                };
                if m.canceled {
                    return Err(format!("watch {kind} canceled: {}", m.cancel_reason));
                }
                if m.events.is_empty() {
                    if !m.created {
                        sh.measured.lock().unwrap_or_else(|e| e.into_inner()).progress_notifications += 1;
                    }
                    continue;
                }
                let now = sh.base.elapsed().as_nanos();
                let mut o = sh.objects();
                let mut lat = Vec::new();
                for e in &m.events {
                    let Some(kv) = &e.kv else { continue };
                    if e.r#type == 1 {
                        o.remove(&kv.key);
                        continue;
                    }
                    o.set(&kv.key, kv.mod_revision);
                    if kv.value.len() >= 16 {
                        let sent = u128::from_be_bytes(kv.value[..16].try_into().unwrap_or([0; 16]));
                        lat.push((now.saturating_sub(sent) / 1000).max(1) as u64);
                    }
                }
                drop(o);
                let mut ms = sh.measured.lock().unwrap_or_else(|e| e.into_inner());
                for us in lat {
                    let _ = ms.hists[slot(Op::WatchEvent)].record(us);
                }
            }
        }
    }
}

/// Runs the workload on a populated system: one watch per kind (on its own
/// connections), lease grants every second, and operations at `spec.rate`
/// over `conns` for `spec.duration`.
pub async fn run(
    conns: &[Conn],
    watch_conns: &[Conn],
    spec: &Spec,
    seed: u64,
) -> Result<Measured, String> {
    let mut kv0 = KvClient::new(conns[0].clone());
    let objects = list_all(&mut kv0).await?;
    let start_rev = {
        let r = kv0
            .range(RangeRequest {
                key: b"/registry/".to_vec(),
                limit: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        r.header.map_or(0, |h| h.revision) + 1
    };
    let sh = Arc::new(Shared {
        objects: Mutex::new(objects),
        measured: Mutex::new(Measured::empty()),
        lease: std::sync::atomic::AtomicI64::new(0),
        base: Instant::now(),
        value_size: spec.value_size,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut watches = Vec::new();
    for (i, (k, _)) in KINDS.iter().enumerate() {
        watches.push(tokio::spawn(watch(
            watch_conns[i % watch_conns.len()].clone(),
            k,
            start_rev,
            sh.clone(),
            stop_rx.clone(),
        )));
    }
    // Lease grants, one a second, the newest used by new events.
    let leases = {
        let sh = sh.clone();
        let mut lease = LeaseClient::new(conns[0].clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => {
                        let at = Instant::now();
                        let r = lease.lease_grant(LeaseGrantRequest { ttl: EVENT_TTL, id: 0 }).await;
                        if let Ok(r) = &r {
                            sh.lease.store(r.get_ref().id, std::sync::atomic::Ordering::Relaxed);
                        }
                        sh.record(Op::LeaseGrant, at, r.is_ok());
                    }
                }
            }
        })
    };
    // Operations on schedule: the n-th at start + n / rate.
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / spec.rate.max(1.0));
    let total = (spec.duration.as_secs_f64() * spec.rate) as u64;
    let mut rng = seed | 1;
    let mut tasks = Vec::new();
    for n in 0..total {
        let at = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(at.into()).await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let r = rng;
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let mut kv = KvClient::new(conns[n as usize % conns.len()].clone());
        let sh = sh.clone();
        tasks.push(tokio::spawn(async move {
            one(&mut kv, &sh, at, r).await;
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    // Let the last events arrive, then stop the watches and the leases.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    let _ = leases.await;
    for w in watches {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut m = std::mem::replace(
        &mut *sh.measured.lock().unwrap_or_else(|e| e.into_inner()),
        Measured::empty(),
    );
    m.elapsed = elapsed;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_their_shares() {
        let mut n: HashMap<&str, u32> = HashMap::new();
        for r in 0..10_000u64 {
            *n.entry(kind(r)).or_default() += 1;
        }
        for (k, w) in KINDS {
            assert_eq!(n[k], w * 100, "{k}");
        }
    }

    #[test]
    fn keys_sort_under_their_prefixes() {
        let k = object_key("pods", 3, 42);
        assert!(k.starts_with(b"/registry/pods/ns-03/"));
        let p = b"/registry/pods/".to_vec();
        assert!(k.as_slice() >= p.as_slice() && k.as_slice() < prefix_end(&p).as_slice());
        assert!(object_key("pods", 9, 1) < prefix_end(b"/registry/pods/"));
    }

    #[test]
    fn a_value_carries_its_time_and_its_size() {
        let base = Instant::now();
        let at = base + Duration::from_millis(1500);
        let v = value(base, at, 2048, 7);
        assert_eq!(v.len(), 2048);
        assert_eq!(
            u128::from_be_bytes(v[..16].try_into().unwrap()),
            1_500_000_000
        );
    }

    #[test]
    fn objects_track_revisions_and_removals() {
        let mut o = Objects::default();
        o.set(b"a", 5);
        o.set(b"b", 6);
        o.set(b"a", 4);
        assert_eq!(o.revs[&b"a".to_vec()], 5, "an older event does not go back");
        o.remove(b"a");
        assert_eq!(o.keys, vec![b"b".to_vec()]);
        assert_eq!(o.pick(99), Some((b"b".to_vec(), 6)));
        o.remove(b"b");
        assert_eq!(o.pick(0), None);
    }
}
