//! Maintenance as an etcd operator meets it: the NOSPACE alarm under
//! `--quota-backend-bytes` (writes refused, reads, deletes and compaction
//! served, `defrag` reclaiming the space, `alarm disarm`), alarms as
//! replicated state, CORRUPT found by the corruption checks on a member
//! whose data was changed on disk on purpose, and a member that serves
//! clients only once its attributes are in the member table. The NOSPACE
//! scenario runs against etcd 3.4 and Nod alike, through real etcdctl.

mod support;

use std::time::{Duration, Instant};

use nod_proto::etcd::etcdserverpb::alarm_request::AlarmAction;
use nod_proto::etcd::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, AlarmRequest, AlarmType,
    AuthenticateRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, PutRequest,
    RangeRequest, RequestOp, StatusRequest, TxnRequest,
};
use support::{etcdctl, etcdctl_ok, eventually, leader, Cluster, Etcd};
use tonic::transport::Channel;
use tonic::Code;

const QUOTA: u64 = 16 << 20;
const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";
const CORRUPT: &str = "etcdserver: corrupt cluster";

/// What etcdctl said last on stderr (its client logs retries before it).
fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    text.trim().lines().last().unwrap_or_default().to_string()
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A put of `len` bytes that do not compress (RocksDB compresses its
/// files; etcd's bbolt does not), so sizes grow alike on both.
fn put(key: &str, len: usize) -> PutRequest {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ key.len() as u64;
    for b in key.bytes() {
        x = x.rotate_left(5) ^ u64::from(b);
    }
    let value = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        ..Default::default()
    }
}

fn alarm(action: AlarmAction, member_id: u64, kind: AlarmType) -> AlarmRequest {
    AlarmRequest {
        action: action as i32,
        member_id,
        alarm: kind as i32,
    }
}

/// What the NOSPACE scenario saw on one system, compared across systems.
#[derive(Debug, PartialEq, Eq)]
struct NoSpaceTranscript {
    refused_put: (Code, String),
    etcdctl_put: String,
    alarm_list: String,
    lease_grant: String,
    get_served: bool,
    delete: String,
    put_after_delete: String,
    compact: String,
    defrag: String,
    disarm: String,
    alarm_list_after: String,
    put_after_disarm: String,
}

/// Fills the store past the quota and frees it again, as etcd's runbook
/// says: delete, compact, defragment, disarm. `endpoint` is one member.
async fn nospace_scenario(endpoint: &str) -> (NoSpaceTranscript, (i64, i64, i64)) {
    let ch = channel(endpoint).await;
    let mut kv = KvClient::new(ch.clone());
    let mut m = MaintenanceClient::new(ch.clone());
    let member = m
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .member_id;
    let mut refused = None;
    for i in 0..200 {
        match kv.put(put(&format!("k{i:03}"), 512 << 10)).await {
            Ok(_) => {}
            Err(s) => {
                assert!(i > 4, "refused after only {i} puts: {s:?}");
                refused = Some((s.code(), s.message().to_string()));
                break;
            }
        }
    }
    let refused = refused.expect("200 puts of 512 KiB never reached a 16 MiB quota");
    let full = m.status(StatusRequest {}).await.unwrap().into_inner();
    let full_size = full.db_size;
    assert!(
        full.db_size_in_use <= full.db_size,
        "in use {} > size {}",
        full.db_size_in_use,
        full.db_size
    );
    assert!(
        full.errors.iter().any(|e| e.contains("alarm:NOSPACE")),
        "status errors name the alarm: {:?}",
        full.errors
    );

    let stderr = |out: std::process::Output| -> String {
        assert!(!out.status.success(), "expected a failure");
        last_line(&out.stderr).replace(&member.to_string(), "<member>")
    };
    let normal = |s: String| s.replace(&member.to_string(), "<member>");
    let etcdctl_put = stderr(etcdctl(endpoint, &["put", "small", "v"], None));
    let alarm_list = normal(etcdctl_ok(endpoint, &["alarm", "list"]));
    let lease_grant = stderr(etcdctl(endpoint, &["lease", "grant", "30"], None));
    let get_served = kv
        .range(RangeRequest {
            key: b"k000".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs[0]
        .value
        .len()
        == 512 << 10;
    let delete = etcdctl_ok(endpoint, &["del", "--prefix", "k"]);
    let put_after_delete = stderr(etcdctl(endpoint, &["put", "small", "v"], None));
    let rev = m
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let compact = etcdctl_ok(endpoint, &["compact", &rev.to_string()]);
    let defrag = etcdctl_ok(endpoint, &["defrag"]).replace(endpoint, "<endpoint>");
    let after_defrag = m.status(StatusRequest {}).await.unwrap().into_inner();
    let disarm = normal(etcdctl_ok(endpoint, &["alarm", "disarm"]));
    let alarm_list_after = etcdctl_ok(endpoint, &["alarm", "list"]);
    let put_after_disarm = etcdctl_ok(endpoint, &["put", "small", "v"]);
    (
        NoSpaceTranscript {
            refused_put: refused,
            etcdctl_put,
            alarm_list,
            lease_grant,
            get_served,
            delete,
            put_after_delete,
            compact,
            defrag,
            disarm,
            alarm_list_after,
            put_after_disarm,
        },
        (full_size, after_defrag.db_size, after_defrag.db_size_in_use),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_refuses_writes_until_space_is_freed_and_disarmed_as_in_etcd() {
    let quota = QUOTA.to_string();
    let etcd = Etcd::start(&["--quota-backend-bytes", &quota]);
    etcd.wait_ready();
    let (want, etcd_sizes) = nospace_scenario(&etcd.endpoint()).await;
    let expected = NoSpaceTranscript {
        refused_put: (Code::ResourceExhausted, NOSPACE.into()),
        etcdctl_put: format!("Error: {NOSPACE}"),
        alarm_list: "memberID:<member> alarm:NOSPACE \n".into(),
        lease_grant: format!("Error: failed to grant lease ({NOSPACE})"),
        get_served: true,
        delete: want.delete.clone(),
        put_after_delete: format!("Error: {NOSPACE}"),
        compact: want.compact.clone(),
        defrag: "Finished defragmenting etcd member[<endpoint>]\n".into(),
        disarm: "memberID:<member> alarm:NOSPACE \n".into(),
        alarm_list_after: String::new(),
        put_after_disarm: "OK\n".into(),
    };
    assert_eq!(want, expected, "etcd 3.4 as this test expects it");
    assert!(want.delete.trim().parse::<u32>().unwrap() > 4);
    assert!(want.compact.starts_with("compacted revision "));
    assert!(
        etcd_sizes.1 < etcd_sizes.0 / 2,
        "etcd's defrag: {etcd_sizes:?}"
    );

    let cluster = Cluster::start_with(1, &["--quota-backend-bytes", &quota]);
    let eps = cluster.endpoints();
    leader(&eps).await;
    let (got, (full, after, in_use)) = nospace_scenario(&eps[0]).await;
    assert_eq!(
        NoSpaceTranscript {
            delete: want.delete.clone(),
            compact: want.compact.clone(),
            ..got
        },
        want,
        "Nod answers as etcd"
    );
    // Revisions and counts may differ by a put or two; both deleted what
    // they stored and compacted at their own revision.
    assert!(got.delete.trim().parse::<u32>().unwrap() > 4);
    assert!(got.compact.starts_with("compacted revision "));
    // Defragment reclaimed the deleted values: most of the store is gone.
    assert!(
        after < full / 4,
        "defragment left {after} of {full} bytes (in use {in_use})"
    );
    assert!(in_use <= after);
    let logs = cluster.members[0].logs();
    assert!(logs.contains("defragmented the store"), "{logs}");
    let reclaimed = cluster.members[0].metric("nod_defrag_reclaimed_bytes_total");
    assert!(
        reclaimed > (full / 2) as f64,
        "reclaimed {reclaimed} of {full}"
    );
}

/// Alarms are cluster state: raised through one member, every member
/// refuses the same writes as it applies them, they survive a restart, and
/// `alarm disarm` through any member clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_replicated_refuse_writes_everywhere_and_survive_restarts() {
    let mut cluster = Cluster::start(3);
    let eps = cluster.endpoints();
    leader(&eps).await;
    let ids = {
        let mut ids = Vec::new();
        for ep in &eps {
            let mut m = MaintenanceClient::new(channel(ep).await);
            let s = m.status(StatusRequest {}).await.unwrap().into_inner();
            ids.push(s.header.unwrap().member_id);
        }
        ids
    };
    let mut m1 = MaintenanceClient::new(channel(&eps[0]).await);
    let mut kv3 = KvClient::new(channel(&eps[2]).await);
    kv3.put(put("before", 3)).await.unwrap();

    // An alarm of no type raises nothing; n2's NOSPACE is raised through n1.
    let none = m1
        .alarm(alarm(AlarmAction::Activate, ids[1], AlarmType::None))
        .await
        .unwrap()
        .into_inner();
    assert!(none.alarms.is_empty());
    let raised = m1
        .alarm(alarm(AlarmAction::Activate, ids[1], AlarmType::Nospace))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raised.alarms.len(), 1);
    let listed = etcdctl_ok(&eps[2], &["alarm", "list"]);
    assert_eq!(listed, format!("memberID:{} alarm:NOSPACE \n", ids[1]));

    // n3's own size is far under the quota; it refuses as it applies.
    let e = kv3.put(put("k", 3)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::ResourceExhausted, NOSPACE));
    let put_txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("t", 1))),
        }],
        ..Default::default()
    };
    let e = kv3.txn(put_txn.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let mut lease3 = LeaseClient::new(channel(&eps[2]).await);
    let e = lease3
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Deleting, a delete-only txn and compacting free space: served.
    let delete_txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: b"nothing".to_vec(),
                    ..Default::default()
                },
            )),
        }],
        ..Default::default()
    };
    kv3.txn(delete_txn.clone()).await.unwrap();
    let deleted = kv3
        .delete_range(DeleteRangeRequest {
            key: b"before".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    kv3.compact(CompactionRequest {
        revision: deleted.header.unwrap().revision,
        physical: false,
    })
    .await
    .unwrap();

    // CORRUPT refuses every write, reads still served.
    m1.alarm(alarm(AlarmAction::Activate, ids[1], AlarmType::Corrupt))
        .await
        .unwrap();
    let e = kv3.txn(delete_txn.clone()).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::DataLoss, CORRUPT));
    let out = etcdctl(&eps[1], &["del", "x"], None);
    assert_eq!(last_line(&out.stderr), format!("Error: {CORRUPT}"));
    kv3.range(RangeRequest {
        key: b"before".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut m2 = MaintenanceClient::new(channel(&eps[1]).await);
    let errors = m2
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .errors;
    assert!(
        errors.iter().any(|e| e.contains("alarm:CORRUPT")) && errors.len() >= 2,
        "{errors:?}"
    );

    // A restarted member still holds both alarms.
    let initial = cluster.initial_cluster();
    cluster.members[2].kill();
    cluster.members[2].start(&initial, "existing", &[]);
    let listed = eventually(
        "n3 to serve after its restart",
        Duration::from_secs(20),
        || async {
            let out = etcdctl(&eps[2], &["alarm", "list"], None);
            out.status
                .success()
                .then(|| String::from_utf8(out.stdout).unwrap())
        },
    )
    .await;
    assert_eq!(
        listed,
        format!(
            "memberID:{0} alarm:NOSPACE \nmemberID:{0} alarm:CORRUPT \n",
            ids[1]
        )
    );
    let disarmed = etcdctl_ok(&eps[2], &["alarm", "disarm"]);
    assert_eq!(disarmed.lines().count(), 2, "{disarmed}");
    assert_eq!(etcdctl_ok(&eps[0], &["alarm", "list"]), "");
    let mut kv1 = KvClient::new(channel(&eps[0]).await);
    kv1.txn(put_txn).await.unwrap();
    eventually("a put through n3 again", Duration::from_secs(10), || {
        let mut kv3 = kv3.clone();
        async move { kv3.put(put("after", 1)).await.ok() }
    })
    .await;

    // Under auth, anyone may list alarms; only root may raise or clear one.
    support::alice_on_a_prefix(&eps[0]);
    let alice = etcdctl(&eps[1], &["--user", "alice:alicepw", "alarm", "list"], None);
    assert!(alice.status.success(), "{alice:?}");
    let mut m_anon = MaintenanceClient::new(channel(&eps[1]).await);
    let e = m_anon
        .alarm(alarm(AlarmAction::Activate, ids[0], AlarmType::Nospace))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "etcdserver: user name is empty")
    );
    let token = AuthClient::new(channel(&eps[1]).await)
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut as_alice =
        tonic::Request::new(alarm(AlarmAction::Deactivate, ids[0], AlarmType::Nospace));
    as_alice
        .metadata_mut()
        .insert("token", token.parse().unwrap());
    let e = m_anon.alarm(as_alice).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let root_disarm = etcdctl(&eps[1], &["--user", "root:rootpw", "alarm", "disarm"], None);
    assert!(root_disarm.status.success(), "{root_disarm:?}");
}

/// Changes a key's latest value in a stopped member's store on disk,
/// keeping the record well formed (its checksum recomputed): what a bad
/// disk that passes checksums, or a bug, would leave behind.
fn tamper(data_dir: &std::path::Path, key: &[u8]) {
    use nod::storage::backend::{Backend, Batch, Keyspace, RocksBackend};
    use nod::storage::codec;
    use prost::Message as _;
    let dir = nod::storage::checkpoint::current_kv(data_dir).unwrap();
    let mut db = RocksBackend::open(&dir).unwrap();
    let mut last = None;
    for item in db.scan_from(Keyspace::Rev, &[]) {
        let (k, v) = item.unwrap();
        let (tag, body) = codec::decode_tagged(&v).unwrap();
        let kv = nod_proto::etcd::mvccpb::KeyValue::decode(body).unwrap();
        if kv.key == key {
            last = Some((k.to_vec(), tag, kv));
        }
    }
    let (k, tag, mut kv) = last.expect("the key is in the store");
    kv.value = b"flipped on disk".to_vec();
    let mut batch = Batch::default();
    batch.put(
        Keyspace::Rev,
        &k,
        codec::encode_tagged(tag, &kv.encode_to_vec()),
    );
    db.write(batch).unwrap();
}

/// A member whose data changed on disk: with `--initial-corrupt-check` it
/// refuses to start; without, the leader's periodic check raises CORRUPT
/// for it and the cluster refuses writes until the member is removed and
/// the alarm disarmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_data_changed_on_disk_is_found_by_the_corruption_checks() {
    let check = ["--corrupt-check-time", "1s"];
    let mut cluster = Cluster::start_with(3, &check);
    let eps = cluster.endpoints();
    leader(&eps).await;
    for i in 0..20 {
        etcdctl_ok(&eps[i % 3], &["put", &format!("k{i}"), &format!("v{i}")]);
    }
    // Every member has applied everything before n3 stops.
    let rev = {
        let mut m = MaintenanceClient::new(channel(&eps[0]).await);
        m.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision
    };
    let n3_id = eventually("n3 to apply every put", Duration::from_secs(10), || async {
        let mut m = MaintenanceClient::new(channel(&eps[2]).await);
        let h = m.status(StatusRequest {}).await.ok()?.into_inner().header?;
        (h.revision == rev).then_some(h.member_id)
    })
    .await;
    // Nothing differs yet: no alarm after a few checks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(etcdctl_ok(&eps[0], &["alarm", "list"]), "");

    let initial = cluster.initial_cluster();
    assert!(cluster.members[2].terminate().success());
    tamper(&cluster.members[2].data_dir, b"k7");

    // With the initial check it refuses to start, naming the mismatch.
    let started = Instant::now();
    let extra = ["--initial-corrupt-check", "--corrupt-check-time", "1s"];
    cluster.members[2].start(&initial, "existing", &extra);
    let status = loop {
        let child = cluster.members[2].child.as_mut().unwrap();
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "n3 still runs with corrupt data:\n{}",
            cluster.members[2].logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    cluster.members[2].child = None;
    assert!(!status.success());
    let logs = cluster.members[2].logs();
    assert!(
        logs.contains("found data inconsistency with peers"),
        "{logs}"
    );
    // It never served a client.
    assert!(!etcdctl(&eps[2], &["--dial-timeout=1s", "get", "k7"], None)
        .status
        .success());

    // Without it, n3 serves, and the leader's check raises CORRUPT for it.
    cluster.members[2].start(&initial, "existing", &check);
    let listed = eventually("the CORRUPT alarm", Duration::from_secs(20), || async {
        let out = etcdctl(&eps[0], &["alarm", "list"], None);
        let text = String::from_utf8(out.stdout).unwrap();
        (!text.is_empty()).then_some(text)
    })
    .await;
    assert_eq!(listed, format!("memberID:{n3_id} alarm:CORRUPT \n"));
    let out = etcdctl(&eps[0], &["put", "k1", "again"], None);
    assert_eq!(last_line(&out.stderr), format!("Error: {CORRUPT}"));
    assert_eq!(
        etcdctl_ok(&eps[1], &["get", "k7", "--print-value-only"]),
        "v7\n"
    );
    assert_eq!(
        etcdctl_ok(
            &eps[2],
            &["get", "k7", "--print-value-only", "--consistency=s"]
        ),
        "flipped on disk\n",
        "n3 serves what its disk holds"
    );

    // The runbook: remove the member, disarm; writes are served again.
    cluster.members[2].kill();
    etcdctl_ok(&eps[0], &["member", "remove", &format!("{n3_id:x}")]);
    etcdctl_ok(&eps[0], &["alarm", "disarm"]);
    assert_eq!(etcdctl_ok(&eps[0], &["put", "k1", "again"]), "OK\n");
    // With n3 gone the hashes agree: no new alarm.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(etcdctl_ok(&eps[1], &["alarm", "list"]), "");
}

/// A member answers clients only once its name and client URL are in the
/// member table, so the first answer already lists it, and once every
/// member answers, `endpoint status --cluster` finds all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_serves_clients_only_once_its_attributes_are_published() {
    let cluster = Cluster::start(3);
    let eps = cluster.endpoints();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answered = [false; 3];
    while answered.iter().any(|a| !a) {
        assert!(Instant::now() < deadline, "members never answered");
        for (i, ep) in eps.iter().enumerate() {
            if answered[i] {
                continue;
            }
            let out = etcdctl(
                ep,
                &[
                    "--dial-timeout=200ms",
                    "--command-timeout=500ms",
                    "member",
                    "list",
                    "-w",
                    "json",
                ],
                None,
            );
            if !out.status.success() {
                continue;
            }
            answered[i] = true;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let me = v["header"]["member_id"].as_u64().unwrap();
            let mine = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["ID"].as_u64() == Some(me))
                .expect("the member lists itself");
            assert_eq!(mine["name"], format!("n{}", i + 1), "{v}");
            assert_eq!(mine["clientURLs"][0], format!("http://{ep}"), "{v}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = etcdctl_ok(&eps[0], &["endpoint", "status", "--cluster", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "{out}");
    for m in &cluster.members {
        let (code, body) = m.http_get("/readyz").unwrap();
        assert_eq!(code, 200, "{body}");
    }
}
