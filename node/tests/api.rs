//! The etcd API's finer points through Nod's own Rust client, against one
//! real process: range filters, txn compares on every target, watch filters,
//! prev_kv and progress, member update, move-leader, compaction errors.

mod support;

use std::time::Duration;

use nod_client::prefix_end;
use nod_proto::etcd::etcdserverpb::{
    compare, request_op, watch_create_request::FilterType, watch_request, Compare, PutRequest,
    RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use nod_proto::etcd::mvccpb::event::EventType;
use prost::Message;
use support::{leader, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn cmp(
    key: &str,
    target: compare::CompareTarget,
    result: compare::CompareResult,
    u: compare::TargetUnion,
) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        range_end: vec![],
        target_union: Some(u),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finer_points_of_the_etcd_api() {
    let cluster = Cluster::start(1);
    leader(&cluster.endpoints()).await;
    let mut c = cluster.members[0].client();
    let r1 = c.put(put("a", "1")).await.unwrap().header.unwrap().revision;
    let r2 = c.put(put("b", "2")).await.unwrap().header.unwrap().revision;
    let r3 = c.put(put("a", "3")).await.unwrap().header.unwrap().revision;

    // Range filters on mod and create revisions.
    let all = |min_mod, max_mod, min_create, max_create| RangeRequest {
        key: b"a".to_vec(),
        range_end: b"c".to_vec(),
        min_mod_revision: min_mod,
        max_mod_revision: max_mod,
        min_create_revision: min_create,
        max_create_revision: max_create,
        ..Default::default()
    };
    let keys = |r: nod_proto::etcd::etcdserverpb::RangeResponse| {
        r.kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(c.range(all(r3, 0, 0, 0)).await.unwrap()),
        vec![b"a".to_vec()]
    );
    assert_eq!(
        keys(c.range(all(0, r2, 0, 0)).await.unwrap()),
        vec![b"b".to_vec()]
    );
    assert_eq!(
        keys(c.range(all(0, 0, r2, 0)).await.unwrap()),
        vec![b"b".to_vec()]
    );
    assert_eq!(
        keys(c.range(all(0, 0, 0, r1)).await.unwrap()),
        vec![b"a".to_vec()]
    );

    // Txn compares on version, create, mod and lease; nested txn.
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let lease = c.lease_grant(60, 0).await.unwrap().id;
    c.put(PutRequest {
        key: b"l".to_vec(),
        value: b"x".to_vec(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap();
    let t = TxnRequest {
        compare: vec![
            cmp("a", T::Version, R::Equal, U::Version(2)),
            cmp("a", T::Create, R::Equal, U::CreateRevision(r1)),
            cmp("a", T::Mod, R::Greater, U::ModRevision(r2)),
            cmp("l", T::Lease, R::Equal, U::Lease(lease)),
            cmp("missing", T::Version, R::Equal, U::Version(0)),
        ],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![cmp("b", T::Value, R::NotEqual, U::Value(b"2".to_vec()))],
                success: vec![],
                failure: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(put("nested", "yes"))),
                }],
            })),
        }],
        failure: vec![],
    };
    assert!(c.txn(t).await.unwrap().succeeded);
    let nested = c
        .range(RangeRequest {
            key: b"nested".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        nested.kvs[0].value, b"yes",
        "the nested txn took its failure branch"
    );
    let wrong = TxnRequest {
        compare: vec![cmp("a", T::Version, R::Less, U::Version(2))],
        ..Default::default()
    };
    assert!(!c.txn(wrong).await.unwrap().succeeded);
    // As etcd: a value compare on a missing key fails, whatever the operator.
    let missing = TxnRequest {
        compare: vec![cmp("nokey", T::Value, R::NotEqual, U::Value(b"x".to_vec()))],
        ..Default::default()
    };
    assert!(!c.txn(missing).await.unwrap().succeeded);

    // Watch: NOPUT filter, prev_kv, and a progress request answered at the current revision.
    let create = WatchCreateRequest {
        key: b"w".to_vec(),
        range_end: prefix_end(b"w"),
        prev_kv: true,
        filters: vec![FilterType::Noput as i32],
        ..Default::default()
    };
    let (tx, mut stream) = c.watch(create).await.unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    // Puts are applied without reading the value they replace; a watcher
    // that asks for it still gets it, one that does not gets none.
    let (_tx_puts, mut puts) = c
        .watch(WatchCreateRequest {
            key: b"w1".to_vec(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(puts.message().await.unwrap().unwrap().created);
    let (_tx_plain, mut plain) = c
        .watch(WatchCreateRequest {
            key: b"w1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(plain.message().await.unwrap().unwrap().created);
    c.put(put("w1", "old")).await.unwrap();
    c.put(put("w1", "new")).await.unwrap();
    let del = c
        .delete(nod_proto::etcd::etcdserverpb::DeleteRangeRequest {
            key: b"w1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.events.len(), 1, "puts are filtered out: {ev:?}");
    assert_eq!(ev.events[0].r#type, EventType::Delete as i32);
    assert_eq!(ev.events[0].prev_kv.as_ref().unwrap().value, b"new");
    assert_eq!(ev.header.unwrap().revision, del.header.unwrap().revision);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), puts.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(
            m.events
                .into_iter()
                .map(|e| (e.r#type, e.kv.unwrap().value, e.prev_kv.map(|p| p.value))),
        );
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Put as i32, b"old".to_vec(), None),
            (
                EventType::Put as i32,
                b"new".to_vec(),
                Some(b"old".to_vec())
            ),
            (EventType::Delete as i32, Vec::new(), Some(b"new".to_vec())),
        ]
    );
    let mut seen = 0;
    while seen < 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), plain.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for e in m.events {
            assert_eq!(e.prev_kv, None, "not asked for: {e:?}");
            seen += 1;
        }
    }
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        )),
    })
    .await
    .unwrap();
    let progress = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(progress.events.is_empty());
    assert_eq!(
        progress.header.unwrap().revision,
        c.status().await.unwrap().header.unwrap().revision
    );

    // Compaction: older reads refused, watches from before it canceled with the compact revision.
    let now = c.status().await.unwrap().header.unwrap().revision;
    c.compact(now).await.unwrap();
    let err = c
        .range(RangeRequest {
            key: b"a".to_vec(),
            revision: r1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");
    let (_tx, mut old) = c
        .watch(WatchCreateRequest {
            key: b"a".to_vec(),
            start_revision: r1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut canceled = None;
    while canceled.is_none() {
        let m = tokio::time::timeout(Duration::from_secs(5), old.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if m.canceled {
            canceled = Some(m);
        }
    }
    assert_eq!(canceled.unwrap().compact_revision, now);

    // Member update changes peer URLs; move-leader to itself is a no-op on a single node.
    let me = c.status().await.unwrap().header.unwrap().member_id;
    let url = cluster.members[0].peer_url();
    let updated = c.member_update(me, vec![url.clone()]).await.unwrap();
    assert_eq!(updated.members[0].peer_ur_ls, vec![url]);
    let moved = c.move_leader(me).await.unwrap();
    assert_eq!(
        moved.header, None,
        "etcd's MoveLeader answers without a header"
    );
    let err = c.move_leader(12345).await.unwrap_err();
    assert!(err.to_string().contains("bad leader transferee"), "{err}");
    let err = c
        .member_update(999, vec!["http://127.0.0.1:1".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("member not found"), "{err}");
}

/// One HTTP/2 frame: 9-byte header, then the payload.
fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK literal header field without indexing, new name, no Huffman
/// (RFC 7541 6.2.2); lengths under 127.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// The HEADERS block of a gRPC KV.Range call to `authority`.
fn range_headers(authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.KV/Range"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hpack_literal(&mut block, name, value);
    }
    block
}

/// etcd's clientv3 3.5.0 sends `:authority: #initially=[http://host:port]`
/// on every call (etcd-io/etcd#13192), which is not an authority; etcd
/// serves it. A request written frame by frame with that authority gets
/// its answer from Nod, not a stream reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_authority_is_served() {
    let cluster = Cluster::start(1);
    leader(&cluster.endpoints()).await;
    let mut c = cluster.members[0].client();
    c.put(put("k", "v")).await.unwrap();
    let ep = cluster.members[0].endpoint();

    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
    let authority = format!("#initially=[http://{ep}]");
    let block = range_headers(&authority);
    h2_frame(&mut out, 0x1, 0x4, 1, &block); // HEADERS, END_HEADERS
    let msg = RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut data = vec![0u8];
    data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    data.extend_from_slice(&msg);
    h2_frame(&mut out, 0x0, 0x1, 1, &data); // DATA, END_STREAM

    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&ep).await.unwrap();
        s.write_all(&out).await.unwrap();
        let mut body = Vec::new();
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            match (kind, stream) {
                (0x4, 0) if flags & 0x1 == 0 => {
                    let mut ack = Vec::new();
                    h2_frame(&mut ack, 0x4, 0x1, 0, &[]);
                    s.write_all(&ack).await.unwrap();
                }
                (0x3, 1) => panic!("the request was reset: {payload:?}"),
                (0x7, _) => panic!("the connection was closed: {payload:?}"),
                (0x0, 1) => body.extend_from_slice(&payload),
                _ => {}
            }
            // The trailers (HEADERS with END_STREAM) end the response.
            if stream == 1 && kind == 0x1 && flags & 0x1 != 0 {
                return body;
            }
        }
    };
    let body = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s");
    assert!(body.len() >= 5, "no response message: {body:?}");
    let resp = nod_proto::etcd::etcdserverpb::RangeResponse::decode(&body[5..]).unwrap();
    assert_eq!(resp.kvs.len(), 1);
    assert_eq!(resp.kvs[0].value, b"v");
}

/// "MadeYouReset" (CVE-2025-8671): a client whose frames make the server
/// reset its own streams (here a WINDOW_UPDATE that overflows the
/// stream's window, a flow-control error) frees a stream slot with every
/// reset while the handler may go on working. The member closes such a
/// connection (GOAWAY, ENHANCE_YOUR_CALM) after `MAX_LOCAL_ERROR_RESETS`;
/// tonic's server, left to itself, turns h2's guard off and never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_makes_the_server_reset_streams_is_cut_off() {
    use nod::server::MAX_LOCAL_ERROR_RESETS;
    let cluster = Cluster::start(1);
    leader(&cluster.endpoints()).await;
    let ep = cluster.members[0].endpoint();

    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
    let block = range_headers(&ep);
    let streams = MAX_LOCAL_ERROR_RESETS as u32 + 200;
    for i in 0..streams {
        let id = 2 * i + 1;
        h2_frame(&mut out, 0x1, 0x4, id, &block); // HEADERS, END_HEADERS
        h2_frame(&mut out, 0x8, 0, id, &0x7fff_ffffu32.to_be_bytes()); // WINDOW_UPDATE
    }

    let s = tokio::net::TcpStream::connect(&ep).await.unwrap();
    let (mut r, mut w) = s.into_split();
    // The member may close before it read everything.
    tokio::spawn(async move {
        let _ = w.write_all(&out).await;
        // Keep the write half open until the read side is done.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let exchange = async {
        let mut resets = 0;
        loop {
            let mut head = [0u8; 9];
            if r.read_exact(&mut head).await.is_err() {
                return (resets, None);
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            r.read_exact(&mut payload).await.unwrap();
            match head[3] {
                0x3 => resets += 1,
                0x7 => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    return (resets, Some(code));
                }
                _ => {}
            }
        }
    };
    let (resets, goaway) = tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("the member must close the connection, not serve it on");
    assert_eq!(
        goaway,
        Some(0xb),
        "GOAWAY ENHANCE_YOUR_CALM after {resets} resets"
    );
    assert!(
        resets <= MAX_LOCAL_ERROR_RESETS,
        "{resets} streams reset before the connection was closed"
    );
    // The member itself is fine.
    let mut c = cluster.members[0].client();
    c.put(put("after", "reset storm")).await.unwrap();
}

/// The responses inside a transaction, as etcd 3.4 shapes them: each
/// operation's header holds only the revision it saw (the store's, then
/// the transaction's own once it changed something), a nested
/// transaction's header is empty. Compared whole against etcd (python-etcd3
/// reads these headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_responses_carry_etcds_nested_headers() {
    use nod_proto::etcd::etcdserverpb::{kv_client::KvClient, DeleteRangeRequest, TxnResponse};
    let op = |r: request_op::Request| RequestOp { request: Some(r) };
    let range = |k: &str| {
        op(request_op::Request::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        }))
    };
    let delete = |k: &str| {
        op(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: k.into(),
                prev_kv: true,
                ..Default::default()
            },
        ))
    };
    let txns = vec![
        // Reads only, then a write after a delete of nothing.
        TxnRequest {
            success: vec![range("a"), delete("missing"), range("a")],
            ..Default::default()
        },
        TxnRequest {
            success: vec![
                range("a"),
                delete("missing"),
                op(request_op::Request::RequestPut(put("b", "2"))),
                range("a"),
                delete("a"),
                op(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![
                        range("b"),
                        op(request_op::Request::RequestPut(put("c", "3"))),
                    ],
                    ..Default::default()
                })),
            ],
            ..Default::default()
        },
    ];
    async fn run(endpoint: String, txns: &[TxnRequest]) -> Vec<TxnResponse> {
        let mut kv = KvClient::connect(format!("http://{endpoint}"))
            .await
            .unwrap();
        kv.put(put("a", "1")).await.unwrap();
        let mut out = Vec::new();
        for t in txns {
            let mut r = kv.txn(t.clone()).await.unwrap().into_inner();
            // The outer header names the member: compare its revision only.
            let rev = r.header.take().unwrap().revision;
            r.header = Some(nod_proto::etcd::etcdserverpb::ResponseHeader {
                revision: rev,
                ..Default::default()
            });
            out.push(r);
        }
        out
    }
    let etcd = support::Etcd::start(&[]);
    etcd.wait_ready();
    let want = run(etcd.endpoint(), &txns).await;
    let cluster = Cluster::start(1);
    leader(&cluster.endpoints()).await;
    let got = run(cluster.endpoints()[0].clone(), &txns).await;
    assert_eq!(got, want);
    // The shape this test relies on, as etcd answered it.
    let inner = &want[1].responses;
    let rev_of = |i: usize| match &inner[i].response {
        Some(nod_proto::etcd::etcdserverpb::response_op::Response::ResponseRange(r)) => {
            r.header.unwrap().revision
        }
        Some(nod_proto::etcd::etcdserverpb::response_op::Response::ResponsePut(r)) => {
            r.header.unwrap().revision
        }
        Some(nod_proto::etcd::etcdserverpb::response_op::Response::ResponseDeleteRange(r)) => {
            r.header.unwrap().revision
        }
        Some(nod_proto::etcd::etcdserverpb::response_op::Response::ResponseTxn(r)) => {
            assert_eq!(r.header, Some(Default::default()));
            -1
        }
        None => unreachable!(),
    };
    assert_eq!(
        (0..6).map(rev_of).collect::<Vec<_>>(),
        vec![2, 2, 3, 3, 3, -1],
        "{want:?}"
    );
}

/// etcd's `hasleader` metadata (clientv3's WithRequireLeader, which
/// kube-apiserver sets on its watches): a member without a leader refuses
/// such a call at once, and ends such a watch with "no leader" after three
/// election timeouts; a watch that did not ask stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_require_a_leader_fail_fast_without_one() {
    use nod_proto::etcd::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient};
    let mut cluster = Cluster::start(3);
    let eps = cluster.endpoints();
    leader(&eps).await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", eps[0]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    fn with_leader<T>(mut r: tonic::Request<T>) -> tonic::Request<T> {
        r.metadata_mut()
            .insert("hasleader", "true".parse().unwrap());
        r
    }
    let create = || WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"w".to_vec(),
                ..Default::default()
            },
        )),
    };
    let (tx1, rx1) = tokio::sync::mpsc::channel(1);
    tx1.send(create()).await.unwrap();
    let mut required = WatchClient::new(ch.clone())
        .watch(with_leader(tonic::Request::new(
            tokio_stream::wrappers::ReceiverStream::new(rx1),
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(required.message().await.unwrap().unwrap().created);
    let (tx2, rx2) = tokio::sync::mpsc::channel(1);
    tx2.send(create()).await.unwrap();
    let mut plain = WatchClient::new(ch.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap()
        .into_inner();
    assert!(plain.message().await.unwrap().unwrap().created);

    cluster.members[1].kill();
    cluster.members[2].kill();
    let mut kv = KvClient::new(ch.clone());
    let range = || RangeRequest {
        key: b"w".to_vec(),
        serializable: true,
        ..Default::default()
    };
    // Once n1 knows it has no leader, required calls fail at once.
    let refused = support::eventually("n1 to lose its leader", Duration::from_secs(20), || {
        let mut kv = kv.clone();
        async move {
            match kv.range(with_leader(tonic::Request::new(range()))).await {
                Err(s) if s.code() == tonic::Code::Unavailable => Some(s),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(refused.message(), "etcdserver: no leader");
    // A serializable read that did not ask is still served.
    kv.range(range()).await.unwrap();
    // The required watch ends with "no leader" (three 500 ms election
    // timeouts in these tests); the plain one stays open.
    let ended = tokio::time::timeout(Duration::from_secs(10), required.message())
        .await
        .expect("the hasleader watch ended")
        .unwrap_err();
    assert_eq!(
        (ended.code(), ended.message()),
        (tonic::Code::Unavailable, "etcdserver: no leader")
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(2), plain.message())
            .await
            .is_err(),
        "the plain watch stays open"
    );
    drop((tx1, tx2));
}

/// A watch that asks for `fragment` gets a response larger than
/// `--max-request-bytes` in pieces, as etcd sends them; one that does not
/// ask gets it whole. The same writes and watches go to etcd 3.4 and Nod:
/// a transaction rewrites three 300 KiB values under a 1 MiB limit, and a
/// watch with prev_kv sees about 1.8 MB of events at one revision (over
/// the 1.5 MiB etcd allows a watch response before it splits one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_watch_responses_come_in_etcds_fragments() {
    use nod_proto::etcd::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient};
    const KEYS: usize = 3;
    // (events, fragment) of each response, past the create.
    async fn run(endpoint: String) -> Vec<Vec<(usize, bool)>> {
        let url = format!("http://{endpoint}");
        let mut kv = KvClient::connect(url.clone()).await.unwrap();
        let value = |fill: &str| fill.repeat(300 * 1024);
        for i in 0..KEYS {
            kv.put(put(&format!("big/{i}"), &value("a"))).await.unwrap();
        }
        let mut out = Vec::new();
        for (round, fragment) in [(0, true), (1, false)] {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: b"big/".to_vec(),
                        range_end: prefix_end(b"big/"),
                        prev_kv: true,
                        fragment,
                        ..Default::default()
                    },
                )),
            })
            .await
            .unwrap();
            let mut stream = WatchClient::new(
                tonic::transport::Channel::from_shared(url.clone())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            )
            .max_decoding_message_size(16 << 20)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
            let created = stream.message().await.unwrap().unwrap();
            assert!(created.created);
            let fill = ["b", "c"][round];
            kv.txn(TxnRequest {
                success: (0..KEYS)
                    .map(|i| RequestOp {
                        request: Some(request_op::Request::RequestPut(put(
                            &format!("big/{i}"),
                            &value(fill),
                        ))),
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap();
            let mut seen = Vec::new();
            let mut events = 0;
            while events < KEYS {
                let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .expect("watch answers")
                    .unwrap()
                    .unwrap();
                events += m.events.len();
                seen.push((m.events.len(), m.fragment));
            }
            drop(tx);
            out.push(seen);
        }
        out
    }
    let limit = ["--max-request-bytes", "1048576"];
    let etcd = support::Etcd::start(&limit);
    etcd.wait_ready();
    let want = run(etcd.endpoint()).await;
    let cluster = Cluster::start_with(1, &limit);
    leader(&cluster.endpoints()).await;
    let got = run(cluster.endpoints()[0].clone()).await;
    assert_eq!(got, want);
    // What etcd did: pieces under the limit plus gRPC's 512 KiB allowance
    // (two 600 KB events, value and prev_kv, then the third), all but the
    // last marked; whole without fragments.
    assert_eq!(want, vec![vec![(2, true), (1, false)], vec![(3, false)]]);
}
