//! `PutBatcher` and the blocking client against real members.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use nod_client::{BatchOptions, PutBatcher, MAX_TXN_OPS};
use nod_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use support::Cluster;

/// 1000 concurrent puts through the batcher: all applied with their
/// values, in Txns of at most 128 puts (one revision per Txn), far fewer
/// Txns than puts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_txns_of_at_most_128() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    let batcher = PutBatcher::new(
        &client,
        BatchOptions {
            max_ops: MAX_TXN_OPS,
            linger: Duration::from_millis(5),
        },
    );
    let mut puts = Vec::new();
    for i in 0..1000 {
        let b = batcher.clone();
        puts.push(tokio::spawn(async move {
            b.put(PutRequest {
                key: format!("b/{i:04}").into_bytes(),
                value: i.to_string().into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap()
            .header
            .unwrap()
            .revision
        }));
    }
    let mut per_revision: HashMap<i64, usize> = HashMap::new();
    for p in puts {
        *per_revision.entry(p.await.unwrap()).or_default() += 1;
    }
    assert!(
        per_revision.values().all(|&n| n <= MAX_TXN_OPS),
        "{per_revision:?}"
    );
    assert!(per_revision.len() >= 1000 / MAX_TXN_OPS, "{per_revision:?}");
    assert!(
        per_revision.len() <= 200,
        "{} txns for 1000 puts",
        per_revision.len()
    );

    let mut c = client.clone();
    let all = c
        .range(RangeRequest {
            key: b"b/".to_vec(),
            range_end: nod_client::prefix_end(b"b/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), 1000);
    for kv in all.kvs {
        let i: usize = std::str::from_utf8(&kv.key[2..]).unwrap().parse().unwrap();
        assert_eq!(kv.value, i.to_string().into_bytes());
        assert!(
            per_revision.contains_key(&kv.mod_revision),
            "{kv:?} not in a batch"
        );
    }
}

#[test]
fn the_blocking_client_puts_and_gets() {
    let cluster = Cluster::start(3);
    let c = nod_client::blocking::Client::connect(&cluster.endpoints()).unwrap();
    let put = c.put("k", "v1").unwrap();
    let got = c.get("k").unwrap().unwrap();
    assert_eq!(got.value, b"v1");
    assert_eq!(got.mod_revision, put.header.unwrap().revision);
    assert!(c.get("missing").unwrap().is_none());
    assert_eq!(c.member_list().unwrap().members.len(), 3);
}
