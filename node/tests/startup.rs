//! What a pod needs from a `nod server` that is still starting, with real
//! processes: the metrics port answers `/healthz` while the node waits for
//! its peers (`/readyz` does not, until it serves), and SIGTERM stops such
//! a node at once with exit 0.

mod support;

use std::time::{Duration, Instant};

use support::{eventually, Member};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waiting_for_peers_is_live_not_ready_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=3)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms.iter().map(|m| m.gossip_addr()).collect();
    // Expects three; the other two never come.
    ms[0].start_gossip(&seeds, &["--bootstrap-expect", "3"]);
    let (code, body) = eventually("/healthz answers", Duration::from_secs(10), || async {
        ms[0].http_get("/healthz")
    })
    .await;
    assert_eq!(code, 200, "{body}");
    // Well past the minimum discovery period: still waiting, still live.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = ms[0].http_get("/healthz").expect("/healthz answers");
    assert_eq!(code, 200, "{body}");
    let (code, body) = ms[0].http_get("/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "not ready before it serves: {body}");
    assert!(
        !ms[0].data_dir.join("identity.json").exists(),
        "it was to wait for its peers"
    );
    assert!(ms[0].http_get("/metrics").is_some_and(|(c, _)| c == 200));

    let asked = Instant::now();
    let status = ms[0].terminate();
    let took = asked.elapsed();
    assert!(status.success(), "SIGTERM while waiting: {status:?}");
    assert!(
        took < Duration::from_secs(3),
        "it took {took:?} to stop after SIGTERM"
    );
    assert!(ms[0].http_get("/healthz").is_none(), "the port is closed");
}
