//! Recovery from a quorum lost for good, the README's "Disaster recovery"
//! runbook step by step on real processes: five self-managing members
//! (gossip) under a writer, the two future survivors stopped at different
//! points while the other three go on acknowledging writes, those three
//! killed and wiped, the most advanced survivor started with
//! `--force-new-cluster`, the other survivor refused until wiped, and every
//! wiped node rejoining by itself until the cluster has five voters again.
//! Every write acknowledged at or below the kept revision is kept; the
//! ones the lost majority alone acknowledged are lost, and not claimed.

mod support;

use std::time::Duration;

use nod_client::Client;
use nod_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use support::{converge, eventually, Member};

/// Every key=value `m` serves with its mod revision, in key order.
async fn served(m: &Member) -> Vec<(String, i64)> {
    let r = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let kvs = m.client().range(r).await.unwrap().kvs;
    kvs.into_iter()
        .map(|kv| {
            let kv_text = format!(
                "{}={}",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value)
            );
            (kv_text, kv.mod_revision)
        })
        .collect()
}

/// Every key=value `m` serves, in key order.
async fn all_keys(m: &Member) -> Vec<String> {
    served(m).await.into_iter().map(|(kv, _)| kv).collect()
}

/// Puts keys `k<from>`.. until `to - from` were acknowledged, through
/// `endpoints`, recording `key=value` and the revision of each answer. A
/// put that fails (a leader lost mid-way) may or may not have happened:
/// its key is skipped and never written again.
async fn write_keys(endpoints: &[String], from: usize, to: usize, acked: &mut Vec<(String, i64)>) {
    let mut c = Client::connect(endpoints, Duration::from_secs(5)).unwrap();
    let (want, mut n) = (acked.len() + to - from, from);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.len() < want {
        assert!(
            std::time::Instant::now() < deadline,
            "writes to {endpoints:?} stalled"
        );
        let (k, v) = (format!("k{n:04}"), format!("v{n}"));
        n += 1;
        let put = c
            .put(PutRequest {
                key: k.clone().into_bytes(),
                value: v.clone().into_bytes(),
                ..Default::default()
            })
            .await;
        if let Ok(r) = put {
            acked.push((format!("{k}={v}"), r.header.unwrap().revision));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_lose_three_and_recover_from_the_most_advanced_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let mut ms: Vec<Member> = (1..=5)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let seeds: Vec<String> = ms.iter().map(|m| m.gossip_addr()).collect();
    for m in &mut ms {
        m.start_gossip(&seeds, &["--bootstrap-expect", "3"]);
    }
    let names = ["n1", "n2", "n3", "n4", "n5"];
    let (cluster, _) = converge(&ms, &names, Duration::from_secs(60)).await;

    // A writer records what it was told: each key once, with the revision
    // of its acknowledgement; a write without an answer is left out.
    let endpoints: Vec<String> = ms.iter().map(|m| m.endpoint()).collect();
    let mut acked: Vec<(String, i64)> = Vec::new();
    // Everyone has these.
    write_keys(&endpoints, 0, 100, &mut acked).await;
    // n2 stops: it will be the survivor that is behind.
    ms[1].kill();
    write_keys(&endpoints[2..], 100, 200, &mut acked).await;
    // n1 stops too. n3, n4 and n5 are three of five, a majority: they
    // still commit and acknowledge writes that neither survivor holds.
    ms[0].kill();
    let lost_from = acked.len();
    write_keys(&endpoints[2..], 200, 300, &mut acked).await;

    // Those three are lost for good: killed, their volumes gone. The two
    // survivors come back with their data, no majority: writes fail.
    for m in &mut ms[2..] {
        m.kill();
        std::fs::remove_dir_all(&m.data_dir).unwrap();
    }
    for m in &mut ms[..2] {
        m.start_gossip(&seeds, &[]);
    }
    let mut two = Client::connect(&endpoints[..2], Duration::from_secs(2)).unwrap();
    let refused = two
        .put(PutRequest {
            key: b"lost".to_vec(),
            value: b"quorum".to_vec(),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err(), "a write without a quorum: {refused:?}");

    // Runbook: the survivor with the highest raft index carries on.
    let mut index = Vec::new();
    for m in &ms[..2] {
        let s = eventually("a survivor's status", Duration::from_secs(20), || async {
            m.client().status().await.ok()
        })
        .await;
        index.push(s.raft_index);
    }
    let (keep, other) = if index[1] > index[0] { (1, 0) } else { (0, 1) };
    assert_eq!(keep, 0, "n1 saw writes n2 did not: {index:?}");
    for m in &mut ms[..2] {
        m.kill();
    }
    ms[keep].start_gossip(&seeds, &["--force-new-cluster"]);
    let keep_name = ms[keep].name.clone();
    let (id, members) = converge(&ms, &[keep_name.as_str()], Duration::from_secs(30)).await;
    assert_eq!(id, cluster, "the same cluster goes on, with one member");
    assert_eq!(members.len(), 1);

    // What the recovery keeps is the survivor's data up to its revision:
    // every write acknowledged at or below it is there with its value and
    // revision, and none acknowledged above it is claimed (they were
    // committed by the lost majority only: exactly the writes made while
    // both survivors were down).
    let kept_revision = ms[keep]
        .client()
        .status()
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let kept: std::collections::HashMap<String, i64> =
        served(&ms[keep]).await.into_iter().collect();
    // Refused because no leader could be elected, it never reached a log.
    assert!(
        !kept.contains_key("lost=quorum"),
        "a refused write came back"
    );
    let mut lost = Vec::new();
    for (i, (kv, revision)) in acked.iter().enumerate() {
        if *revision <= kept_revision {
            assert_eq!(
                kept.get(kv),
                Some(revision),
                "{kv}, acknowledged at {revision}, at or below the kept revision {kept_revision}"
            );
        } else {
            assert!(
                !kept.contains_key(kv),
                "{kv}, acknowledged at {revision} by the lost majority, above the kept revision {kept_revision}"
            );
            lost.push(i);
        }
    }
    assert!(
        lost_from < acked.len(),
        "the lost majority acknowledged writes"
    );
    assert_eq!(
        lost,
        (lost_from..acked.len()).collect::<Vec<_>>(),
        "exactly the writes made while both survivors were down are lost"
    );
    assert!(ms[keep].data_dir.join("forced.json").exists());
    ms[keep]
        .client()
        .put(PutRequest {
            key: b"after".to_vec(),
            value: b"force".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let reference = all_keys(&ms[keep]).await;

    // The other survivor still believes in the old membership: it is told
    // it was removed and stops, until its volume is wiped.
    ms[other].start_gossip(&seeds, &[]);
    let exit = ms[other].wait_exit(Duration::from_secs(30));
    assert!(
        exit.is_some(),
        "a removed member must stop\n{}",
        ms[other].logs()
    );
    assert!(
        ms[other]
            .logs()
            .contains("this member was removed from the cluster"),
        "{}",
        ms[other].logs()
    );
    std::fs::remove_dir_all(&ms[other].data_dir).unwrap();
    let survivor = vec![ms[keep].gossip_addr()];
    for i in [other, 2, 3, 4] {
        ms[i].start_gossip(&survivor, &[]);
    }
    let (id, _) = converge(&ms, &names, Duration::from_secs(120)).await;
    assert_eq!(id, cluster);
    for m in &ms {
        assert_eq!(all_keys(m).await, reference, "{} serves the data", m.name);
    }

    // Left on, the flag would remove the members who rejoined: refused.
    ms[keep].kill();
    ms[keep].start_gossip(&seeds, &["--force-new-cluster"]);
    let exit = ms[keep].wait_exit(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| !s.success()), "{exit:?}");
    assert!(
        ms[keep].logs().contains("members joined since"),
        "{}",
        ms[keep].logs()
    );
    // Without it the member rejoins its five-member cluster.
    ms[keep].start_gossip(&seeds, &[]);
    converge(&ms, &names, Duration::from_secs(60)).await;
    assert!(!ms[keep].data_dir.join("forced.json").exists());

    // The operator's form, one flag in every member's template: a member
    // it does not name starts normally and stays in the five.
    let once = format!("--force-new-cluster-once={keep_name}:r1");
    ms[other].kill();
    ms[other].start_gossip(&seeds, &[&once]);
    converge(&ms, &names, Duration::from_secs(60)).await;
    // The member it names forces (a new id), once: the same flag at its
    // next start is a normal start, not a second force.
    for (i, m) in ms.iter_mut().enumerate() {
        if i != keep {
            m.kill();
        }
    }
    ms[keep].kill();
    ms[keep].start_gossip(&seeds, &[&once]);
    let (id, members) = converge(&ms, &[keep_name.as_str()], Duration::from_secs(30)).await;
    assert_eq!((id, members.len()), (cluster, 1));
    let record = std::fs::read_to_string(ms[keep].data_dir.join("forced.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["once"], "r1", "{record}");
    let before = all_keys(&ms[keep]).await;
    ms[keep].kill();
    ms[keep].start_gossip(&seeds, &[&once]);
    converge(&ms, &[keep_name.as_str()], Duration::from_secs(30)).await;
    assert!(
        ms[keep].logs().contains("already forced for this id"),
        "{}",
        ms[keep].logs()
    );
    assert_eq!(all_keys(&ms[keep]).await, before);
}
