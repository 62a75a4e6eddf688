//! Recovery from a quorum lost for good, the README's "Disaster recovery"
//! runbook step by step on real processes: five self-managing members
//! (gossip), three killed and wiped, the most advanced survivor started
//! with `--force-new-cluster`, the other survivor refused until wiped, and
//! every wiped node rejoining by itself until the cluster has five voters
//! again, with every acknowledged write kept.

mod support;

use std::time::Duration;

use nod_client::Client;
use nod_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use support::{converge, eventually, Member};

/// Every key=value `m` serves, in key order.
async fn all_keys(m: &Member) -> Vec<String> {
    let r = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let kvs = m.client().range(r).await.unwrap().kvs;
    kvs.into_iter()
        .map(|kv| {
            format!(
                "{}={}",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value)
            )
        })
        .collect()
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

    // Acknowledged writes, then every member caught up with them.
    let endpoints: Vec<String> = ms.iter().map(|m| m.endpoint()).collect();
    let mut c = Client::connect(&endpoints, Duration::from_secs(5)).unwrap();
    let mut acked = Vec::new();
    for i in 0..200 {
        let (k, v) = (
            format!("k{i:03}").into_bytes(),
            format!("v{i}").into_bytes(),
        );
        c.put(PutRequest {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        acked.push(format!("k{i:03}=v{i}"));
    }
    let last = c.status().await.unwrap().raft_index;
    eventually(
        "every member applied the writes",
        Duration::from_secs(20),
        || {
            let ms = &ms;
            async move {
                for m in ms {
                    let s = m.client().status().await.ok()?;
                    (s.raft_applied_index >= last).then_some(())?;
                }
                Some(())
            }
        },
    )
    .await;

    // Three members are lost for good: killed, their volumes gone. The two
    // left are no majority, so writes fail.
    for m in &mut ms[2..] {
        m.kill();
        std::fs::remove_dir_all(&m.data_dir).unwrap();
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
        index.push(m.client().status().await.unwrap().raft_index);
    }
    let (keep, other) = if index[1] > index[0] { (1, 0) } else { (0, 1) };
    for m in &mut ms[..2] {
        m.kill();
    }
    ms[keep].start_gossip(&seeds, &["--force-new-cluster"]);
    let keep_name = ms[keep].name.clone();
    let (id, members) = converge(&ms, &[keep_name.as_str()], Duration::from_secs(30)).await;
    assert_eq!(id, cluster, "the same cluster goes on, with one member");
    assert_eq!(members.len(), 1);
    // Every acknowledged write is kept. The refused write's outcome was
    // unknown to its client: if it reached this survivor's log, forcing
    // keeps it (and so commits it); either is correct.
    let mut kept = all_keys(&ms[keep]).await;
    let lost_kept = kept.last().is_some_and(|kv| kv == "lost=quorum");
    if lost_kept {
        kept.pop();
    }
    assert_eq!(kept, acked, "every acknowledged write");
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
    let mut want = acked.clone();
    want.insert(0, "after=force".to_string());
    if lost_kept {
        want.push("lost=quorum".to_string());
    }
    for m in &ms {
        assert_eq!(all_keys(m).await, want, "{} serves the data", m.name);
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
