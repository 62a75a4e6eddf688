//! Multi-process tests on loopback: real `nod server` processes, real
//! sockets, real RocksDB. A cluster forms; a killed leader is replaced with
//! no acknowledged write lost; members are added, promoted and removed
//! through the API; bad input gets etcd's errors and the node keeps serving.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use nod_client::{prefix_end, Client, ClientError};
use nod_proto::etcd::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use support::{eventually, leader, Cluster, Member};

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

async fn get(c: &mut Client, k: &str, serializable: bool) -> Option<String> {
    let r = c
        .range(RangeRequest {
            key: k.into(),
            serializable,
            ..Default::default()
        })
        .await
        .ok()?;
    r.kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn code(e: ClientError) -> (tonic::Code, String) {
    match e {
        ClientError::Status(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a status, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_loses_no_acknowledged_write_and_a_restarted_node_catches_up() {
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    let first = leader(&endpoints).await;
    // Writes through every member: followers hand them to the leader and
    // answer once they applied them themselves, so a serializable read on
    // the same member right after the answer sees the write.
    let mut acked = Vec::new();
    for i in 0..30 {
        let m = &cluster.members[i % 3];
        let mut c = m.client();
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        c.put(put(&k, &v)).await.unwrap();
        assert_eq!(
            get(&mut c, &k, true).await.as_deref(),
            Some(v.as_str()),
            "member {i} answered before applying"
        );
        acked.push(i);
    }
    // Many writes at once through one follower: at most two Peer.Propose
    // calls are open to the leader, the rest wait and go in the next call;
    // every write is answered, once, with its own revision.
    let leader_idx = {
        let mut idx = None;
        for (i, m) in cluster.members.iter().enumerate() {
            let s = m.client().status().await.unwrap();
            if s.header.unwrap().member_id == first {
                idx = Some(i);
            }
        }
        idx.expect("the leader is one of the members")
    };
    let follower = &cluster.members[(leader_idx + 1) % 3];
    let writes = (0..200).map(|i| {
        let mut c = follower.client();
        async move {
            c.put(put(&format!("c{i:03}"), &format!("w{i}")))
                .await
                .map(|r| r.header.unwrap().revision)
        }
    });
    let mut revisions: Vec<i64> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| r.expect("a concurrent write through a follower"))
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 200, "each write has its own revision");
    let mut c = follower.client();
    let all = c
        .range(RangeRequest {
            key: b"c".to_vec(),
            range_end: prefix_end(b"c"),
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let got: Vec<(Vec<u8>, Vec<u8>)> = all.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = (0..200)
        .map(|i| {
            (
                format!("c{i:03}").into_bytes(),
                format!("w{i}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // Kill -9 the leader.
    let killed_at = Instant::now();
    cluster.members[leader_idx].kill();
    let survivors: Vec<String> = cluster.endpoints();
    let second = eventually("a new leader", Duration::from_secs(20), || {
        let survivors = survivors.clone();
        async move { Some(leader(&survivors).await).filter(|l| *l != first) }
    })
    .await;
    let took = killed_at.elapsed();
    assert_ne!(first, second);
    // Election timeout is 500 ms: a new leader within a few of them (plus polling).
    assert!(took < Duration::from_secs(6), "new leader took {took:?}");
    // Every acknowledged write is on the new leader (linearizable reads).
    let mut c = Client::connect(&survivors, Duration::from_secs(5)).unwrap();
    let all = c
        .range(RangeRequest {
            key: b"k".to_vec(),
            range_end: prefix_end(b"k"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), acked.len());
    // More writes while one node is down, then bring it back: it catches up.
    for i in 30..40 {
        c.put(put(&format!("k{i:02}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    let initial = cluster.initial_cluster();
    cluster.members[leader_idx].start(&initial, "new", &[]);
    let mut back = cluster.members[leader_idx].client();
    eventually("the restarted member to catch up", Duration::from_secs(20), || {
        let mut back = back.clone();
        async move { (get(&mut back, "k39", true).await.as_deref() == Some("v39")).then_some(()) }
    })
    .await;
    let r = back
        .range(RangeRequest {
            key: b"k".to_vec(),
            range_end: prefix_end(b"k"),
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.kvs.len(), 40, "the restarted member has every key");
    // All three agree on the state (HashKV at the same revision).
    let rev = r.header.unwrap().revision;
    let mut hashes = Vec::new();
    for m in &cluster.members {
        hashes.push(support::hash_kv_at(&mut m.client(), rev).await);
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_as_learners_promoted_and_removed_through_the_api() {
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    leader(&endpoints).await;
    let mut c = Client::connect(&endpoints, Duration::from_secs(5)).unwrap();
    for i in 0..20 {
        c.put(put(&format!("pre{i}"), "x")).await.unwrap();
    }
    let mut new = Member::new(cluster.dir.path(), "n4");
    let added = c.member_add(vec![new.peer_url()], true).await.unwrap();
    let id = added.member.unwrap().id;
    assert_eq!(added.members.len(), 4);
    // Promotion before it caught up is refused with etcd's error.
    let (code_, msg) = code(c.member_promote(id).await.unwrap_err());
    assert_eq!(code_, tonic::Code::FailedPrecondition);
    assert!(msg.contains("learner member which is in sync"), "{msg}");
    let initial = format!("{},n4={}", cluster.initial_cluster(), new.peer_url());
    new.start(&initial, "existing", &[]);
    let mut nc = new.client();
    eventually("the learner to catch up", Duration::from_secs(20), || {
        let mut nc = nc.clone();
        async move { (get(&mut nc, "pre19", true).await.as_deref() == Some("x")).then_some(()) }
    })
    .await;
    let status = nc.status().await.unwrap();
    assert!(status.is_learner);
    eventually("promotion", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { c.member_promote(id).await.ok() }
    })
    .await;
    let list = c.member_list().await.unwrap();
    let m = list.members.iter().find(|m| m.id == id).unwrap();
    assert!(!m.is_learner);
    // The new member publishes its name and client URL through the log.
    eventually(
        "the new member to publish its name",
        Duration::from_secs(10),
        || {
            let mut c = c.clone();
            let url = format!("http://{}", new.endpoint());
            async move {
                let list = c.member_list().await.ok()?;
                let m = list.members.into_iter().find(|m| m.id == id)?;
                (m.name == "n4" && m.client_ur_ls == vec![url]).then_some(())
            }
        },
    )
    .await;
    // Promoting a voter is refused.
    let (code_, _) = code(c.member_promote(id).await.unwrap_err());
    assert_eq!(code_, tonic::Code::FailedPrecondition);
    // Remove it again; the process notices and exits.
    c.member_remove(id).await.unwrap();
    let list = c.member_list().await.unwrap();
    assert_eq!(list.members.len(), 3);
    let mut child = new.child.take().unwrap();
    let exited = eventually(
        "the removed member to exit",
        Duration::from_secs(15),
        || {
            let r = child.try_wait().unwrap();
            async move { r }
        },
    )
    .await;
    assert!(exited.success(), "removed member exits 0: {exited:?}");
    // Removing an unknown member: etcd's error.
    let (code_, msg) = code(c.member_remove(12345).await.unwrap_err());
    assert_eq!(
        (code_, msg.as_str()),
        (tonic::Code::NotFound, "etcdserver: member not found")
    );
    cluster.members.push(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_etcd_errors_and_the_node_keeps_serving() {
    let cluster = Cluster::start(1);
    let endpoints = cluster.endpoints();
    leader(&endpoints).await;
    let m = &cluster.members[0];
    let mut c = m.client();
    // Oversize request.
    let big = "x".repeat(2 * 1024 * 1024);
    let (code_, msg) = code(c.put(put("big", &big)).await.unwrap_err());
    // Far over the limit, gRPC itself refuses the frame (etcd: ResourceExhausted).
    assert!(
        matches!(
            code_,
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{code_:?} {msg}"
    );
    let just_over = "x".repeat(1536 * 1024 + 10);
    let (code_, msg) = code(c.put(put("big", &just_over)).await.unwrap_err());
    assert_eq!(
        (code_, msg.as_str()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large"
        )
    );
    // Unknown lease, empty key, future revision.
    let (code_, msg) = code(
        c.put(PutRequest {
            key: b"k".to_vec(),
            lease: 42,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (code_, msg.as_str()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );
    let (code_, msg) = code(c.put(put("", "v")).await.unwrap_err());
    assert_eq!(
        (code_, msg.as_str()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided"
        )
    );
    let (code_, msg) = code(
        c.range(RangeRequest {
            key: b"k".to_vec(),
            revision: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (code_, msg.as_str()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    // Inverted range: empty, not an error.
    c.put(put("b", "1")).await.unwrap();
    let r = c
        .range(RangeRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.count, 0);
    let d = c
        .delete(DeleteRangeRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(d.deleted, 0);
    // Garbage bytes on the client and the peer ports.
    for port in [m.client_port, m.peer_port, m.metrics_port] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = s.write_all(b"\x00\x01garbage\xff\xfe not http/2 at all\r\n\r\n");
        let _ = s.write_all(&[0xAB; 4096]);
        drop(s);
    }
    // A well-formed gRPC call with a malformed Raft message on the peer port.
    let mut peer = nod_proto::nodserverpb::peer_client::PeerClient::connect(m.peer_url())
        .await
        .unwrap();
    let batch = nod_proto::nodraftpb::MessageBatch {
        cluster_id: 1,
        messages: vec![],
    };
    let err = peer
        .send(tokio_stream::iter(vec![batch]))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "wrong cluster id: {err}"
    );
    let me = m.client().status().await.unwrap().header.unwrap();
    let malformed = nod_proto::nodraftpb::MessageBatch {
        cluster_id: me.cluster_id,
        messages: vec![nod_proto::nodraftpb::Message {
            from: 0,
            to: me.member_id,
            term: 1,
            body: None,
        }],
    };
    let err = peer
        .send(tokio_stream::iter(vec![malformed]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // Forwarded writes (Peer.Propose): only a member, only in its own name.
    use nod_proto::nodserverpb::{command::Op, Command, ProposeBatch};
    use prost::Message as _;
    let command = |origin: u64, key: &str| {
        Command {
            id: 7,
            origin,
            op: Some(Op::Put(put(key, "fwd"))),
            caller: None,
            trace: String::new(),
        }
        .encode_to_vec()
    };
    let stranger = 0x5eed;
    let err = peer
        .propose(ProposeBatch {
            cluster_id: me.cluster_id,
            from: stranger,
            commands: vec![command(stranger, "f1")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let err = peer
        .propose(ProposeBatch {
            cluster_id: me.cluster_id,
            from: me.member_id,
            commands: vec![command(me.member_id, "f1"); 4097],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let results = peer
        .propose(ProposeBatch {
            cluster_id: me.cluster_id,
            from: me.member_id,
            commands: vec![
                command(stranger, "f1"),
                vec![0xff, 0xff, 0xff],
                command(me.member_id, "f2"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    assert!(results[0].error.contains("origin"), "{:?}", results[0]);
    assert!(results[0].index == 0 && results[1].index == 0);
    assert!(!results[1].error.is_empty(), "{:?}", results[1]);
    assert!(
        results[2].error.is_empty() && results[2].index > 0,
        "{:?}",
        results[2]
    );
    // Only the well-formed command in its sender's name was appended.
    let fwd = eventually("the forwarded write", Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { get(&mut c, "f2", false).await }
    })
    .await;
    assert_eq!(fwd, "fwd");
    assert_eq!(get(&mut c, "f1", false).await, None);
    // Still serving, data intact.
    assert_eq!(get(&mut c, "b", false).await.as_deref(), Some("1"));
    // Metrics and health answer.
    let body = http_get(m.metrics_port, "/metrics");
    assert!(body.contains("etcd_server_has_leader 1"), "{body}");
    assert!(body.contains("etcd_disk_wal_fsync_duration_seconds_bucket"));
    // Every client request is counted by method and code.
    assert!(
        body.contains(
            "grpc_server_handled_total{grpc_code=\"InvalidArgument\",grpc_method=\"Put\"}"
        ),
        "{body}"
    );
    assert!(
        body.contains("grpc_server_handled_total{grpc_code=\"OutOfRange\",grpc_method=\"Range\"}")
    );
    assert!(http_get(m.metrics_port, "/readyz").starts_with("HTTP/1.1 200"));
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leadership_over_and_exits_zero_and_data_survives_restart() {
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    let first = leader(&endpoints).await;
    let mut c = Client::connect(&endpoints, Duration::from_secs(5)).unwrap();
    c.put(put("durable", "yes")).await.unwrap();
    let idx = {
        let mut idx = 0;
        for (i, m) in cluster.members.iter().enumerate() {
            if m.client().status().await.unwrap().header.unwrap().member_id == first {
                idx = i;
            }
        }
        idx
    };
    let status = cluster.members[idx].terminate();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert!(
        cluster.members[idx]
            .logs()
            .contains("handed leadership over"),
        "{}",
        cluster.members[idx].logs()
    );
    let survivors = cluster.endpoints();
    let second = eventually("a new leader", Duration::from_secs(20), || {
        let survivors = survivors.clone();
        async move { Some(leader(&survivors).await).filter(|l| *l != first) }
    })
    .await;
    assert_ne!(second, first);
    let initial = cluster.initial_cluster();
    cluster.members[idx].start(&initial, "new", &[]);
    let mut back = cluster.members[idx].client();
    eventually(
        "the restarted member to serve",
        Duration::from_secs(20),
        || {
            let mut back = back.clone();
            async move {
                (get(&mut back, "durable", true).await.as_deref() == Some("yes")).then_some(())
            }
        },
    )
    .await;
    let _ = back.status().await.unwrap();
}

async fn hash_at(m: &Member, revision: i64) -> u32 {
    support::hash_kv_at(&mut m.client(), revision).await
}

async fn wait_for_revision(m: &Member, revision: i64) {
    let c = m.client();
    eventually(
        &format!("{} to reach revision {revision}", m.name),
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                let r = c
                    .range(RangeRequest {
                        key: b"k".to_vec(),
                        serializable: true,
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                (r.header?.revision >= revision).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_a_wiped_member_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, &["--snapshot-count", "50"]);
    let endpoints = cluster.endpoints();
    leader(&endpoints).await;
    let mut c = Client::connect(&endpoints, Duration::from_secs(5)).unwrap();
    for i in 0..300 {
        c.put(put(&format!("k{:03}", i % 120), &format!("v{i}")))
            .await
            .unwrap();
    }
    c.delete(DeleteRangeRequest {
        key: b"k000".to_vec(),
        range_end: b"k010".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    for m in &cluster.members {
        eventually(
            &format!("{} to take a snapshot", m.name),
            Duration::from_secs(20),
            || {
                let v = m.metric("nod_snapshots_total");
                async move { (v >= 1.0).then_some(()) }
            },
        )
        .await;
    }
    // Wipe n3: stop it, remove it, delete its data, add it back as a learner.
    let old_id = cluster.members[2]
        .client()
        .status()
        .await
        .unwrap()
        .header
        .unwrap()
        .member_id;
    cluster.members[2].kill();
    c = Client::connect(&cluster.endpoints(), Duration::from_secs(5)).unwrap();
    c.member_remove(old_id).await.unwrap();
    std::fs::remove_dir_all(&cluster.members[2].data_dir).unwrap();
    // If the killed member led, the new leader refuses a membership change
    // (FailedPrecondition) until it has committed an entry of its own term;
    // anything else is a failure.
    let peer_url = cluster.members[2].peer_url();
    let added = eventually("the member added", Duration::from_secs(10), || {
        let mut c = c.clone();
        let peer_url = peer_url.clone();
        async move {
            match c.member_add(vec![peer_url], true).await {
                Ok(a) => Some(a),
                Err(ClientError::Status(st)) if st.code() == tonic::Code::FailedPrecondition => {
                    None
                }
                Err(e) => panic!("member add: {e}"),
            }
        }
    })
    .await;
    let new_id = added.member.unwrap().id;
    let initial = cluster.initial_cluster();
    cluster.members[2].start(&initial, "existing", &[]);
    let rev = c
        .put(put("after", "wipe"))
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    wait_for_revision(&cluster.members[2], rev).await;
    let received = cluster.members[2].metric("etcd_network_snapshot_receive_bytes_total");
    assert!(
        received > 0.0,
        "the wiped member caught up without a snapshot"
    );
    eventually("promotion", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move { c.member_promote(new_id).await.ok() }
    })
    .await;
    // Kill -9 n2, write past another snapshot, restart it from its snapshot plus log tail.
    cluster.members[1].kill();
    let mut c = cluster.members[0].client();
    for i in 0..150 {
        c.put(put(&format!("k{:03}", i), "late")).await.unwrap();
    }
    let rev = c
        .put(put("last", "1"))
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    cluster.members[1].start(&initial, "new", &[]);
    for m in &cluster.members {
        wait_for_revision(m, rev).await;
    }
    let mut hashes = Vec::new();
    for m in &cluster.members {
        hashes.push(hash_at(m, rev).await);
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "replicas differ after snapshots: {hashes:?}"
    );
    // Every replica serves the same data.
    let mut seen = Vec::new();
    for m in &cluster.members {
        let r = m
            .client()
            .range(RangeRequest {
                key: b"k".to_vec(),
                range_end: prefix_end(b"k"),
                serializable: true,
                revision: rev,
                ..Default::default()
            })
            .await
            .unwrap();
        seen.push(
            r.kvs
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone(), kv.mod_revision))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[0].len(), 150, "k000..k149 after the late rewrite");
}

/// etcd's `KeepAliveOnce` (a keep-alive stream opened, one answer read,
/// the stream dropped) many times over one connection to a follower. The
/// follower forwards each to the leader over its one peer connection, and
/// h2's cap on the streams a connection resets in its lifetime (1024) once
/// closed that connection (ENHANCE_YOUR_CALM), failing the forwarded calls
/// on it as ResourceExhausted: etcd's benchmark tool saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_once_through_a_follower_never_wears_out_its_peer_connection() {
    use nod_proto::etcd::etcdserverpb::lease_client::LeaseClient;
    use nod_proto::etcd::etcdserverpb::LeaseKeepAliveRequest;
    let cluster = Cluster::start(3);
    let first = leader(&cluster.endpoints()).await;
    let mut follower = None;
    for m in &cluster.members {
        let s = m.client().status().await.unwrap();
        if s.header.unwrap().member_id != first {
            follower = Some(m);
        }
    }
    let f = follower.expect("two members follow");
    let id = f.client().lease_grant(600, 0).await.unwrap().id;
    let ch = tonic::transport::Endpoint::from_shared(f.client_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    // 100 callers at once, as the tool's 100 clients: streams reset
    // while answers for them are still on their way.
    let calls = (0..100).map(|c| {
        let mut lease = LeaseClient::new(ch.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
                let mut answers = lease
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map_err(|e| format!("caller {c}, keep-alive {i}: {e}"))?
                    .into_inner();
                let r = answers
                    .message()
                    .await
                    .map_err(|e| format!("caller {c}, keep-alive {i}: {e}"))?
                    .ok_or_else(|| format!("caller {c}, keep-alive {i}: no answer"))?;
                assert_eq!((r.id, r.ttl), (id, 600), "keep-alive {i}");
            }
            Ok::<(), String>(())
        })
    });
    let failed: Vec<String> = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|r| r.unwrap().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} callers failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}
