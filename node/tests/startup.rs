//! What a pod needs from a `nod server` that is still starting, with real
//! processes: the metrics port answers `/healthz` while the node waits for
//! its peers (`/readyz` does not, until it serves), SIGTERM stops such a
//! node at once with exit 0, and a gossip cluster on IPv6 (`::1`, the
//! gossip advertise address given as a bare IP) forms and serves etcdctl.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{etcdctl_ok as etcdctl, eventually, Member};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_cluster_on_ipv6_forms_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=3)
        .map(|i| Member::new_v6(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms.iter().map(|m| m.gossip_addr()).collect();
    assert!(seeds[0].starts_with("[::1]:"), "{seeds:?}");
    for m in &mut ms {
        // As a pod template passes $(POD_IP): a bare IP, the port taken
        // from the gossip listen address.
        m.start_gossip(
            &seeds,
            &["--bootstrap-expect", "3", "--gossip-advertise-addr", "::1"],
        );
    }
    let endpoints: Vec<String> = ms.iter().map(|m| m.endpoint()).collect();
    let all = endpoints.join(",");
    eventually("one cluster of three", Duration::from_secs(60), || async {
        let mut ids = BTreeSet::new();
        for m in &ms {
            let mut c = m.client();
            let r = tokio::time::timeout(Duration::from_secs(3), c.member_list())
                .await
                .ok()?
                .ok()?;
            ids.insert(r.header?.cluster_id);
            if r.members.len() != 3 {
                return None;
            }
        }
        assert_eq!(ids.len(), 1, "two clusters: {ids:x?}");
        Some(())
    })
    .await;
    eventually(
        "a write through etcdctl",
        Duration::from_secs(20),
        || async {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={all}"))
                .args(["put", "v6", "works"])
                .output()
                .ok()?;
            out.status.success().then_some(())
        },
    )
    .await;
    for ep in &endpoints {
        assert_eq!(etcdctl(ep, &["get", "v6"]), "v6\nworks\n", "{ep}");
    }
    // Every member advertises IPv6 URLs and gossips from [::1].
    let list = etcdctl(&all, &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    for line in list.lines() {
        assert!(line.contains(", http://[::1]:"), "{list}");
    }
    for m in &ms {
        let (code, _) = m.http_get("/readyz").expect("/readyz answers on ::1");
        assert_eq!(code, 200);
        assert!(m.metric("nod_gossip_nodes{state=\"alive\"}") >= 2.0);
    }
}
