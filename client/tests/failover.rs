//! The client against real members that die: a watch whose member is
//! killed mid-stream, and writes across a leader kill. Each member is a
//! `nod` process (see `support`), killed with SIGKILL.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use nod_client::{Client, KeySpan, WatchOptions};
use nod_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use support::Cluster;

fn put(key: String, value: &str) -> PutRequest {
    PutRequest {
        key: key.into_bytes(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Kill -9 the member a watch is on, while writes go on: the resumed
/// stream delivers exactly the events the store's history holds for the
/// prefix, each once, in order (compared with a fresh watch from the first
/// revision, read from a survivor afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_member_without_repeating_or_skipping() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    let mut first = client.clone();
    let start = first
        .put(put("w/start".into(), "0"))
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut watcher = client
        .watcher(
            "w/",
            WatchOptions {
                span: KeySpan::Prefix,
                start_revision: start + 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // Writes: several keys, some in multi-key txns, while the watch runs.
    let writer_client = cluster.client();
    let writer = tokio::spawn(async move {
        let mut c = writer_client;
        for i in 0..300 {
            let _ = c.put(put(format!("w/{}", i % 7), &i.to_string())).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let mut seen = Vec::new();
    while seen.len() < 100 {
        let batch = watcher.next().await.unwrap().unwrap();
        seen.extend(batch.events);
    }
    let on = watcher.endpoint().unwrap();
    let victim = cluster.index_of_endpoint(&on);
    cluster.kill(victim);
    writer.await.unwrap();

    // Everything written, as the store's history has it, from a survivor.
    let survivor = (0..3).find(|&i| i != victim).unwrap();
    let mut check = Client::connect(
        &[cluster.members[survivor].endpoint()],
        Duration::from_secs(5),
    )
    .unwrap();
    let last = check
        .range(RangeRequest {
            key: b"w/".to_vec(),
            range_end: nod_client::prefix_end(b"w/"),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut reference = check
        .watcher(
            "w/",
            WatchOptions {
                span: KeySpan::Prefix,
                start_revision: start + 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut want = Vec::new();
    while want.last().is_none_or(|(_, r): &(Vec<u8>, i64)| *r < last) {
        let b = tokio::time::timeout(Duration::from_secs(10), reference.next())
            .await
            .expect("reference watch stalled")
            .unwrap()
            .unwrap();
        want.extend(b.events.into_iter().map(|e| {
            let kv = e.kv.unwrap();
            (kv.key, kv.mod_revision)
        }));
    }
    while seen.last().map(|e| e.kv.as_ref().unwrap().mod_revision) < Some(last) {
        let b = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("resumed watch stalled")
            .unwrap()
            .unwrap();
        seen.extend(b.events);
    }
    let got: Vec<(Vec<u8>, i64)> = seen
        .into_iter()
        .map(|e| {
            let kv = e.kv.unwrap();
            (kv.key, kv.mod_revision)
        })
        .collect();
    assert!(watcher.reconnects() >= 1, "the watch never lost its member");
    assert_ne!(watcher.endpoint().unwrap(), on, "the watch did not move");
    assert!(want.len() > 150, "too few writes landed: {}", want.len());
    assert_eq!(got.len(), want.len(), "events delivered vs history");
    assert_eq!(got, want);
}

/// A progress request answered with revision R comes after every event
/// up to R, even while the watch is still sending history in chunks (the
/// server splits a revision of 128 changes across its 1000-event chunks):
/// what `nod backup` relies on to close a revision without waiting for the
/// next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_answer_follows_every_event_up_to_its_revision() {
    use nod_proto::etcd::etcdserverpb::{request_op, RequestOp, TxnRequest};
    let cluster = Cluster::start(1);
    let mut c = cluster.client();
    let mut last = 0;
    for r in 0..40 {
        let success = (0..128)
            .map(|k| RequestOp {
                request: Some(request_op::Request::RequestPut(put(
                    format!("p/{k}"),
                    &r.to_string(),
                ))),
            })
            .collect();
        let resp = c
            .txn(TxnRequest {
                success,
                ..Default::default()
            })
            .await
            .unwrap();
        last = resp.header.unwrap().revision;
    }
    let mut watcher = c
        .watcher(
            "p/",
            WatchOptions {
                span: KeySpan::Prefix,
                start_revision: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    watcher.request_progress();
    let mut seen = 0usize;
    let answer = loop {
        let b = tokio::time::timeout(Duration::from_secs(10), watcher.next())
            .await
            .expect("no progress answer")
            .unwrap()
            .unwrap();
        if b.events.is_empty() {
            break b.header_revision;
        }
        seen += b.events.len();
    };
    assert!(
        answer >= last,
        "progress {answer} before the last write {last}"
    );
    assert_eq!(
        seen,
        40 * 128,
        "events delivered before the progress answer"
    );
    // Without a request, no empty batches: a write shows up as itself.
    c.put(put("p/after".into(), "x")).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .expect("the put after the progress answer")
        .unwrap()
        .unwrap();
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].kv.as_ref().unwrap().key, b"p/after");
}

/// Puts from 8 back-to-back writers while the leader is killed: a put the
/// client answered Ok is applied exactly once (version 1 for its own
/// key), and no put — acknowledged or not — is applied twice, which a
/// retry of a put whose outcome was unknown would do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_is_never_applied_twice_across_a_leader_kill() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let client = cluster.client();
    client.refresh_leader().await;
    assert!(
        client.endpoints().iter().any(|e| e.is_leader),
        "client learned no leader"
    );

    // Writers put back to back, so puts are in flight at the leader when
    // it dies: their outcome is unknown and retrying them could apply them
    // twice.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = client.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut outcomes = HashMap::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("p/{w}/{i}");
                let r = c.put(put(key.clone(), "v")).await;
                outcomes.insert(
                    key,
                    r.map(|r| r.header.unwrap().revision)
                        .map_err(|e| e.to_string()),
                );
                i += 1;
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill(leader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut outcomes = HashMap::new();
    for w in writers {
        outcomes.extend(w.await.unwrap());
    }
    let failed: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    eprintln!(
        "{} puts, {} failed: {failed:?}",
        outcomes.len(),
        failed.len()
    );

    let mut check = cluster.client();
    let all = check
        .range(RangeRequest {
            key: b"p/".to_vec(),
            range_end: nod_client::prefix_end(b"p/"),
            ..Default::default()
        })
        .await
        .unwrap();
    let stored: HashMap<String, (i64, i64)> = all
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                (kv.version, kv.mod_revision),
            )
        })
        .collect();
    for (key, (version, _)) in &stored {
        assert_eq!(*version, 1, "{key} applied {version} times");
    }
    for (key, r) in &outcomes {
        if let Ok(rev) = r {
            assert_eq!(
                stored.get(key).map(|s| s.1),
                Some(*rev),
                "acknowledged {key} lost or moved"
            );
        }
    }
    // The writes went on after the kill, on the new leader.
    let acknowledged = outcomes.values().filter(|r| r.is_ok()).count();
    assert!(
        acknowledged > failed.len() * 10,
        "{acknowledged} acknowledged"
    );
    assert!(
        !failed.is_empty(),
        "no put was in flight when the leader died: the test proved nothing"
    );
}
