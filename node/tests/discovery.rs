//! A self-managing cluster, end to end with real processes: nodes started
//! with only gossip seeds find each other, found exactly one cluster
//! (`--bootstrap-expect`, `--bootstrap-founders`), join as learners and are
//! promoted, replace their stale selves after losing their volume (a founder
//! too: it joins, never founds beside its old cluster), leave on SIGTERM,
//! and dead members are seen (member health, Status errors, metrics) and,
//! when asked, removed by autopilot. No test here types a member command.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use nod_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use support::{converge, eventually, view, Member};

fn cluster_ids_on_disk(ms: &[Member]) -> BTreeSet<u64> {
    ms.iter()
        .filter_map(|m| std::fs::read(m.data_dir.join("identity.json")).ok())
        .map(|b| {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            v["cluster_id"].as_u64().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_nothing_three_then_five_then_a_wiped_member_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=5)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms[..3].iter().map(|m| m.gossip_addr()).collect();
    for m in &mut ms[..3] {
        m.start_gossip(&seeds, &["--bootstrap-expect", "3"]);
    }
    let (cluster, _) = converge(&ms, &["n1", "n2", "n3"], Duration::from_secs(40)).await;
    let mut c = ms[0].client();
    for i in 0..50 {
        c.put(PutRequest {
            key: format!("k{i:02}").into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // Two more nodes with only a seed (a DNS name, as a headless Service
    // would be) and no bootstrap permission: they join as learners and
    // autopilot promotes them (default: up to 5 voters).
    let by_name = vec![format!("localhost:{}", ms[0].gossip_port)];
    for m in &mut ms[3..] {
        m.start_gossip(&by_name, &[]);
    }
    let (again, members) = converge(
        &ms,
        &["n1", "n2", "n3", "n4", "n5"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(again, cluster, "the newcomers joined the same cluster");
    assert_eq!(cluster_ids_on_disk(&ms), BTreeSet::from([cluster]));

    // Leadership goes to a member that joined (its log starts at the small
    // snapshot it was sent, not at the founding), so the replacement below
    // is caught up by such a leader: the joiner then learns of the leader
    // only from what it was told at join, not from that snapshot.
    let n4 = members.iter().find(|m| m.name == "n4").unwrap().id;
    eventually(
        "leadership moved to n4",
        Duration::from_secs(20),
        || async {
            for m in &ms {
                let mut c = m.client();
                if c.move_leader(n4).await.is_ok() {
                    return Some(());
                }
            }
            None
        },
    )
    .await;

    // kill -9 a founding voter: the leader sees it unhealthy (member health,
    // Status errors, metrics) while the rest keep working.
    let old = members.iter().find(|m| m.name == "n2").unwrap().id;
    ms[1].kill();
    let endpoints: Vec<String> = [0, 2, 3, 4].iter().map(|&i| ms[i].endpoint()).collect();
    let health = eventually("n2 reported unhealthy", Duration::from_secs(20), || async {
        let mut c = nod_client::Client::connect(&endpoints, Duration::from_secs(3)).ok()?;
        let h = c.member_health().await.ok()?;
        let n2 = h.members.iter().find(|m| m.id == old)?;
        (!n2.healthy && !n2.gossip_alive).then_some(h)
    })
    .await;
    assert_eq!(health.members.len(), 5);
    assert_eq!(health.target_voters, 5);
    for m in health.members.iter().filter(|m| m.id != old) {
        assert!(
            m.healthy && m.raft_active,
            "{} should be healthy: {m:?}",
            m.name
        );
    }
    let leader = health.leader;
    let leader_member = ms
        .iter()
        .find(|m| {
            health
                .members
                .iter()
                .any(|h| h.id == leader && h.name == m.name)
        })
        .unwrap();
    let status = leader_member.client().status().await.unwrap();
    assert!(
        status
            .errors
            .iter()
            .any(|e| e.contains(&format!("{old:x}"))),
        "Status errors name the unreachable member: {:?}",
        status.errors
    );
    assert_eq!(leader_member.metric("nod_members_unhealthy"), 1.0);
    // The CLI shows the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nod"))
        .args([
            "--endpoints",
            &endpoints.join(","),
            "member",
            "health",
            "-w",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n2 = json["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n2")
        .unwrap()
        .clone();
    assert_eq!(n2["healthy"], false, "{json}");

    // Its volume is gone: started again under the same name it joins as a
    // new member, and the stale entry of that name is removed.
    std::fs::remove_dir_all(&ms[1].data_dir).unwrap();
    ms[1].start_gossip(&seeds, &[]);
    let (after, members) = converge(
        &ms,
        &["n1", "n2", "n3", "n4", "n5"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(after, cluster);
    let new = members.iter().find(|m| m.name == "n2").unwrap().id;
    assert_ne!(new, old, "the replacement is a new member");
    assert!(
        members.iter().all(|m| m.id != old),
        "the stale member is gone"
    );
    // It has the data (a serializable read answers from its own store).
    let got = eventually(
        "the replacement caught up",
        Duration::from_secs(30),
        || async {
            let mut c = ms[1].client();
            let r = c
                .range(RangeRequest {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    serializable: true,
                    count_only: true,
                    ..Default::default()
                })
                .await
                .ok()?;
            (r.count == 50).then_some(r.count)
        },
    )
    .await;
    assert_eq!(got, 50);
    assert_eq!(cluster_ids_on_disk(&ms), BTreeSet::from([cluster]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_waits_for_the_expected_nodes_and_a_crowd_forms_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=5)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms.iter().map(|m| m.gossip_addr()).collect();
    // Two of three: nobody may found yet.
    for m in &mut ms[..2] {
        m.start_gossip(&seeds, &["--bootstrap-expect", "3"]);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cluster_ids_on_disk(&ms).is_empty(),
        "a cluster was founded with 2 of 3 expected nodes"
    );
    // Three more at the same moment, all allowed to found: exactly one
    // cluster forms and the other two join it.
    for m in &mut ms[2..] {
        m.start_gossip(&seeds, &["--bootstrap-expect", "3"]);
    }
    let (cluster, _) = converge(
        &ms,
        &["n1", "n2", "n3", "n4", "n5"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(cluster_ids_on_disk(&ms), BTreeSet::from([cluster]));

    // A node of another cluster (another token) gossiping with the same
    // seeds is refused by gossip: it founds its own cluster alone and
    // neither side sees the other as a member.
    let mut stranger = vec![Member::new(dir.path(), "x1")];
    stranger[0].start_gossip(
        &seeds,
        &[
            "--bootstrap-expect",
            "1",
            "--initial-cluster-token",
            "another",
        ],
    );
    let (other, _) = converge(&stranger, &["x1"], Duration::from_secs(30)).await;
    assert_ne!(other, cluster);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (still, _) = converge(
        &ms,
        &["n1", "n2", "n3", "n4", "n5"],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(still, cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_started_together_found_one_cluster() {
    // All at once, each seeded with all: the founding sets of the first
    // views may differ; the promise round must still yield one cluster.
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=5)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms.iter().map(|m| m.gossip_addr()).collect();
    for m in ms.iter_mut().rev() {
        m.start_gossip(&seeds, &["--bootstrap-expect", "3", "--voters", "3"]);
    }
    let cluster = eventually("every node a member", Duration::from_secs(60), || async {
        let mut ids = BTreeSet::new();
        let mut n = 0;
        for m in &ms {
            let (id, members) = view(m).await?;
            ids.insert(id);
            n = members.len();
        }
        assert!(ids.len() <= 1, "two clusters: {ids:x?}");
        (n == 5).then(|| *ids.iter().next().unwrap())
    })
    .await;
    assert_eq!(cluster_ids_on_disk(&ms), BTreeSet::from([cluster]));
    // Garbage on the gossip port (short, random, and chitchat's magic
    // number followed by junk) must not take a node down.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for i in 0..300usize {
        let mut buf: Vec<u8> = (0..(i % 70))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if i % 3 == 0 && buf.len() > 3 {
            // 45139, little-endian, then protocol version 0.
            buf[..3].copy_from_slice(&[0x53, 0xb0, 0]);
        }
        for m in &ms {
            let _ = sock.send_to(&buf, m.gossip_addr());
        }
    }
    // --voters 3: three voters, two learners, for good; every node still answers.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for m in &ms {
        let (_, members) = view(m).await.expect("every node still answers");
        assert_eq!(
            members.iter().filter(|m| !m.is_learner).count(),
            3,
            "{members:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_on_shutdown_and_autopilot_removes_the_dead() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=4)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms.iter().map(|m| m.gossip_addr()).collect();
    for m in &mut ms {
        m.start_gossip(
            &seeds,
            &[
                "--bootstrap-expect",
                "3",
                "--leave-on-shutdown",
                "--autopilot-dead-after",
                "3",
            ],
        );
    }
    converge(&ms, &["n1", "n2", "n3", "n4"], Duration::from_secs(60)).await;

    // SIGTERM with --leave-on-shutdown: it removes itself, then exits 0.
    let status = ms[3].terminate();
    assert!(status.success(), "{status:?}");
    converge(&ms, &["n1", "n2", "n3"], Duration::from_secs(20)).await;

    // kill -9: no goodbye; autopilot removes it after 3 s dead (2 healthy
    // voters stay, a quorum of the new configuration of 2).
    ms[2].kill();
    converge(&ms, &["n1", "n2"], Duration::from_secs(30)).await;
    let removed: f64 = [0, 1]
        .iter()
        .map(|&i| ms[i].metric("nod_autopilot_actions_total{action=\"remove\"}"))
        .sum();
    assert!(removed >= 1.0, "autopilot counted its removal");
}

/// The scale-up of a cluster created with one replica, as the operator
/// renders it: every pod gets `--bootstrap-expect=1
/// --bootstrap-founders=n1`. A pod that is not n1 never founds, even alone
/// with no seed answering (the minimum discovery period long over); it
/// joins once it sees a member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_founders_found_and_the_others_join() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=3)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms[..2].iter().map(|m| m.gossip_addr()).collect();
    let flags = ["--bootstrap-expect", "1", "--bootstrap-founders", "n1"];

    // n2 first, while n1 does not run: its only other seed never answers,
    // so the waiting of an unlisted node is all that keeps it from
    // founding (--bootstrap-expect 1; 1 s minimum period at 100 ms gossip).
    ms[1].start_gossip(&seeds, &flags);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        cluster_ids_on_disk(&ms).is_empty(),
        "a node not among --bootstrap-founders founded a cluster"
    );
    assert!(ms[1].logs().contains("not among --bootstrap-founders"));

    // The founder comes: it founds alone, and n2 joins it.
    ms[0].start_gossip(&seeds, &flags);
    let (cluster, _) = converge(&ms, &["n1", "n2"], Duration::from_secs(40)).await;

    // A pod added later next to the running cluster, with the same flags
    // and only the cluster's seed, joins it too.
    ms[2].start_gossip(&seeds[..1], &flags);
    let (again, _) = converge(&ms, &["n1", "n2", "n3"], Duration::from_secs(40)).await;
    assert_eq!(again, cluster);
    assert_eq!(cluster_ids_on_disk(&ms), BTreeSet::from([cluster]));
}

/// A founder that comes back with an empty volume next to the cluster it
/// founded, still with `--bootstrap-expect=1 --bootstrap-founders=n1`
/// (the operator's flags before it has seen the cluster founded): it may
/// found, but must first hear from its seeds, see the members and join.
/// Without that wait it founds alone on its first look, before its first
/// gossip exchange: a second cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_restarted_empty_joins_instead_of_founding() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=3)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms.iter().map(|m| m.gossip_addr()).collect();
    let flags = [
        "--bootstrap-expect",
        "1",
        "--bootstrap-founders",
        "n1",
        "--promote-stabilize",
        "500",
    ];
    ms[0].start_gossip(&seeds, &flags);
    converge(&ms[..1], &["n1"], Duration::from_secs(30)).await;
    for m in &mut ms[1..] {
        m.start_gossip(&seeds, &flags);
    }
    let (cluster, members) = converge(&ms, &["n1", "n2", "n3"], Duration::from_secs(60)).await;
    let old = members.iter().find(|m| m.name == "n1").unwrap().id;

    ms[0].kill();
    std::fs::remove_dir_all(&ms[0].data_dir).unwrap();
    ms[0].start_gossip(&seeds, &flags);
    let id = ms[0].data_dir.join("identity.json");
    eventually(
        "n1 has an identity again",
        Duration::from_secs(30),
        || async { id.exists().then_some(()) },
    )
    .await;
    assert_eq!(
        cluster_ids_on_disk(&ms),
        BTreeSet::from([cluster]),
        "the restarted founder founded a second cluster"
    );
    let (after, members) = converge(&ms, &["n1", "n2", "n3"], Duration::from_secs(60)).await;
    assert_eq!(after, cluster, "the founder rejoined its cluster");
    let new = members.iter().find(|m| m.name == "n1").unwrap().id;
    assert_ne!(new, old, "it came back as a new member");
    assert!(ms[0].logs().contains("joining an existing cluster"));
}
