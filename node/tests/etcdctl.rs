//! Compatibility with real etcd clients: Debian's `etcdctl` (3.4, installed
//! by `scripts/setup`) and the `etcd-client` crate, against a 3-member Nod
//! cluster of real processes. Outputs are asserted as etcdctl prints them.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{etcdctl, etcdctl_ok as ok, eventually, leader, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_nod() {
    let cluster = Cluster::start(3);
    let eps = cluster.endpoints();
    leader(&eps).await;
    let all = eps.join(",");
    let one = eps[0].clone();

    // put / get with prefix, limit and revision / del
    assert_eq!(ok(&all, &["put", "app/a", "1"]), "OK\n");
    let rev_after_a = {
        let json = ok(&all, &["get", "app/a", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    };
    assert_eq!(ok(&all, &["put", "app/b", "2"]), "OK\n");
    assert_eq!(ok(&all, &["put", "app/a", "3"]), "OK\n");
    assert_eq!(ok(&all, &["put", "other", "x"]), "OK\n");
    assert_eq!(
        ok(&all, &["get", "app/", "--prefix"]),
        "app/a\n3\napp/b\n2\n"
    );
    assert_eq!(
        ok(&all, &["get", "app/", "--prefix", "--limit", "1"]),
        "app/a\n3\n"
    );
    assert_eq!(
        ok(&all, &["get", "app/a", &format!("--rev={rev_after_a}")]),
        "app/a\n1\n"
    );
    assert_eq!(
        ok(&all, &["get", "app/", "--prefix", "--keys-only"]),
        "app/a\n\napp/b\n\n"
    );
    assert_eq!(ok(&all, &["del", "other"]), "1\n");
    assert_eq!(ok(&all, &["get", "other"]), "");
    // A compacted revision is refused with etcd's message.
    ok(&all, &["compact", &(rev_after_a + 1).to_string()]);
    let out = etcdctl(
        &all,
        &["get", "app/a", &format!("--rev={rev_after_a}")],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("required revision has been compacted"));

    // txn, both branches
    let txn = "value(\"app/a\") = \"3\"\n\nput app/a 4\n\nget app/a\n\n";
    let out = etcdctl(&all, &["txn"], Some(txn));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SUCCESS\n\nOK\n");
    let out = etcdctl(&all, &["txn"], Some(txn));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "FAILURE\n\napp/a\n4\n"
    );

    // watch: a put and a delete arrive in order, from history (--rev) and live
    let watch_rev = {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&all, &["get", "app/a", "-w", "json"])).unwrap();
        v["header"]["revision"].as_i64().unwrap() + 1
    };
    assert_eq!(ok(&all, &["put", "w/1", "x"]), "OK\n");
    let watcher = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={one}"),
            "watch",
            "w/",
            "--prefix",
            &format!("--rev={watch_rev}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ok(&eps[1], &["del", "w/1"]), "1\n");
    assert_eq!(ok(&eps[2], &["put", "w/2", "y"]), "OK\n");
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").arg(watcher.id().to_string()).status();
    let out = watcher.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "PUT\nw/1\nx\nDELETE\nw/1\n\nPUT\nw/2\ny\n"
    );

    // leases: grant, attach, time-to-live, keep-alive, revoke deletes the key
    let grant = ok(&all, &["lease", "grant", "60"]);
    let id = grant.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(grant, format!("lease {id} granted with TTL(60s)\n"));
    assert_eq!(
        ok(&all, &["put", "leased", "v", &format!("--lease={id}")]),
        "OK\n"
    );
    let ttl = ok(&all, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    assert_eq!(
        ok(&all, &["lease", "keep-alive", "--once", &id]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert!(ok(&all, &["lease", "list"]).contains(&id));
    assert_eq!(
        ok(&all, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(&all, &["get", "leased"]), "");
    assert_eq!(
        ok(&all, &["lease", "timetolive", &id]),
        format!("lease {id} already expired\n")
    );
    // A short lease expires by itself and takes its key along.
    let short = ok(&all, &["lease", "grant", "2"]);
    let sid = short.split_whitespace().nth(1).unwrap().to_string();
    ok(&all, &["put", "ephemeral", "v", &format!("--lease={sid}")]);
    let all2 = all.clone();
    eventually("the 2 s lease to expire", Duration::from_secs(10), || {
        let all = all2.clone();
        async move { ok(&all, &["get", "ephemeral"]).is_empty().then_some(()) }
    })
    .await;

    // members: list, add (learner), remove
    let list = ok(&all, &["member", "list"]);
    assert_eq!(list.lines().count(), 3);
    for m in &cluster.members {
        assert!(
            list.contains(&format!(
                ", started, {}, {}, http://{}, false",
                m.name,
                m.peer_url(),
                m.endpoint()
            )),
            "{list}"
        );
    }
    let add = ok(
        &all,
        &[
            "member",
            "add",
            "n9",
            "--peer-urls=http://127.0.0.1:1",
            "--learner",
        ],
    );
    let new_id = add.split_whitespace().nth(1).unwrap().to_string();
    assert!(add.contains("added to cluster"), "{add}");
    assert!(
        add.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{add}"
    );
    let list = ok(&all, &["member", "list"]);
    assert!(
        list.contains(&format!(
            "{new_id}, unstarted, , http://127.0.0.1:1, , true"
        )),
        "{list}"
    );
    // etcdctl prints ids with %16x: a short id is padded with spaces.
    let removed = ok(&all, &["member", "remove", &new_id]);
    let removed = removed.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        removed.starts_with(&format!("Member {new_id} removed from cluster")),
        "{removed}"
    );
    assert_eq!(ok(&all, &["member", "list"]).lines().count(), 3);

    // endpoint status and health, with and without a scheme on the
    // endpoints. With one, etcdctl 3.4 sends the whole URL as the HTTP/2
    // :authority of these calls; etcd serves them, so does Nod
    // (third_party/h2/NOD-PATCH.md).
    let with_scheme = eps
        .iter()
        .map(|e| format!("http://{e}"))
        .collect::<Vec<_>>()
        .join(",");
    for endpoints in [&all, &with_scheme] {
        // One leader among three, same Raft term.
        let status = ok(endpoints, &["endpoint", "status"]);
        assert_eq!(status.lines().count(), 3, "{status}");
        assert!(
            status.lines().all(|l| endpoints
                .split(',')
                .any(|e| l.starts_with(&format!("{e}, ")))),
            "{status}"
        );
        assert_eq!(
            status
                .lines()
                .filter(|l| l.contains(", true, false,"))
                .count(),
            1,
            "{status}"
        );
        let health = etcdctl(endpoints, &["endpoint", "health"], None);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&health.stdout),
            String::from_utf8_lossy(&health.stderr)
        );
        assert!(health.status.success(), "{text}");
        assert_eq!(
            text.matches("is healthy: successfully committed proposal")
                .count(),
            3,
            "{text}"
        );
    }

    // An index: its declaration travels in the snapshot, in a bucket of
    // Nod's own that etcd leaves alone (restored below).
    let declare = [
        "--endpoints",
        one.as_str(),
        "index",
        "create",
        "app_keys",
        "--prefix",
        "app/",
        "--field",
        "n:number",
    ];
    support::eventually("the index declared", Duration::from_secs(20), || async {
        support::nod_cmd(&declare, &[])
            .status
            .success()
            .then_some(())
    })
    .await;

    // snapshot save
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let out = etcdctl(&one, &["snapshot", "save", file.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&file).unwrap();
    let backup = nod::storage::kv_store::etcd_snapshot::read_etcd_snapshot(&bytes).unwrap();
    let keys: Vec<String> = backup
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    assert!(
        keys.contains(&"app/a".to_string()) && keys.contains(&"w/2".to_string()),
        "{keys:?}"
    );
    // It is an etcd snapshot: etcdctl reads it, and etcd 3.4 serves a
    // member restored from it with the same keys, values and revisions.
    let status = ok(
        &one,
        &["snapshot", "status", file.to_str().unwrap(), "-w", "json"],
    );
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["revision"].as_i64(),
        Some(backup.revision),
        "{status}"
    );
    assert_eq!(status["totalSize"].as_u64(), Some(bytes.len() as u64 - 32));
    let restored = dir.path().join("restored");
    let peer_port = support::free_port();
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let out = etcdctl(
        &one,
        &[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
            "--name",
            "e1",
            "--initial-cluster",
            &format!("e1={peer_url}"),
            "--initial-advertise-peer-urls",
            &peer_url,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let etcd = support::Etcd::start_restored(&restored, peer_port);
    etcd.wait_ready();
    let json = ok(&etcd.endpoint(), &["get", "", "--from-key", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["header"]["revision"].as_i64(),
        Some(backup.revision),
        "{json}"
    );
    let kvs = v["kvs"].as_array().unwrap();
    assert_eq!(kvs.len(), backup.kvs.len());
    for (got, want) in kvs.iter().zip(&backup.kvs) {
        assert_eq!(got["mod_revision"].as_i64(), Some(want.mod_revision));
        assert_eq!(got["create_revision"].as_i64(), Some(want.create_revision));
        assert_eq!(got["version"].as_i64(), Some(want.version));
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(got["key"].as_str().unwrap(), b64.encode(&want.key));
        assert_eq!(
            got["value"].as_str().unwrap_or_default(),
            b64.encode(&want.value)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_client_crate_works_against_nod() {
    use etcd_client::{
        Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    };
    let cluster = Cluster::start(3);
    let eps = cluster.endpoints();
    leader(&eps).await;
    let mut c = Client::connect(eps.clone(), None).await.unwrap();
    let put = c.put("k", "v1", None).await.unwrap();
    let rev1 = put.header().unwrap().revision();
    c.put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    let got = c.get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v2");
    assert_eq!(got.kvs()[0].version(), 2);
    let old = c
        .get("k", Some(GetOptions::new().with_revision(rev1)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"v1");
    // Compare-and-swap.
    let txn = Txn::new()
        .when(vec![Compare::value("k", CompareOp::Equal, "v2")])
        .and_then(vec![TxnOp::put("k", "v3", None)])
        .or_else(vec![TxnOp::get("k", None)]);
    assert!(c.txn(txn.clone()).await.unwrap().succeeded());
    assert!(!c.txn(txn).await.unwrap().succeeded());
    // Watch from a past revision, then live.
    let (_w, mut stream) = c
        .watch("k", Some(WatchOptions::new().with_start_revision(rev1)))
        .await
        .unwrap();
    let mut values = Vec::new();
    let mut c2 = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c2.delete("k", None).await.unwrap();
    });
    while values.len() < 4 {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for e in resp.events() {
            let v = e
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                .unwrap_or_default();
            values.push(match e.event_type() {
                EventType::Put => v,
                EventType::Delete => "<deleted>".to_string(),
            });
        }
    }
    assert_eq!(values, vec!["v1", "v2", "v3", "<deleted>"]);
    // Leases and membership.
    let lease = c.lease_grant(30, None).await.unwrap();
    c.put(
        "leased",
        "x",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .unwrap();
    let ttl = c.lease_time_to_live(lease.id(), None).await.unwrap();
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 30);
    c.lease_revoke(lease.id()).await.unwrap();
    assert_eq!(c.get("leased", None).await.unwrap().count(), 0);
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
    let status = c.status().await.unwrap();
    assert_ne!(status.leader(), 0);
    // Errors carry etcd's codes.
    let err = c
        .put("x", "y", Some(PutOptions::new().with_lease(424242)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("requested lease not found"),
        "{err}"
    );
}

/// Moving between etcd and Nod with etcdctl's `make-mirror`: everything
/// under a prefix, then the changes made while it runs (puts and deletes),
/// in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_mirror_moves_keys_from_etcd_to_nod_and_back() {
    let etcd = support::Etcd::start(&[]);
    etcd.wait_ready();
    let cluster = Cluster::start(1);
    let eps = cluster.endpoints();
    leader(&eps).await;
    let (e, n) = (etcd.endpoint(), eps[0].clone());

    let mirror = |from: &str, to: &str, prefix: &str| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={from}"))
            .args(["make-mirror", "--prefix", prefix, to])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl make-mirror")
    };
    let listing = |ep: &str, prefix: &str| ok(ep, &["get", "--prefix", prefix]);
    let same = |prefix: &'static str, a: String, b: String| async move {
        eventually(
            &format!("{prefix} mirrored"),
            Duration::from_secs(20),
            || {
                let (a, b) = (a.clone(), b.clone());
                async move {
                    let (x, y) = (listing(&a, prefix), listing(&b, prefix));
                    (x == y).then_some(x)
                }
            },
        )
        .await
    };

    // etcd -> Nod: the existing keys, then changes while mirroring.
    for i in 0..30 {
        ok(&e, &["put", &format!("m/{i:02}"), &format!("v{i}")]);
    }
    ok(&e, &["del", "m/07"]);
    let mut to_nod = mirror(&e, &n, "m/");
    let first = same("m/", e.clone(), n.clone()).await;
    assert_eq!(first.lines().count(), 2 * 29, "{first}");
    ok(&e, &["put", "m/30", "late"]);
    ok(&e, &["put", "m/01", "changed"]);
    ok(&e, &["del", "m/02"]);
    let later = same("m/", e.clone(), n.clone()).await;
    assert!(later.contains("m/30\nlate\n") && later.contains("m/01\nchanged\n"));
    assert!(!later.contains("m/02\n"), "{later}");
    let _ = to_nod.kill();
    let _ = to_nod.wait();

    // Nod -> etcd, the same way.
    for i in 0..10 {
        ok(&n, &["put", &format!("r/{i}"), &format!("nod{i}")]);
    }
    let mut to_etcd = mirror(&n, &e, "r/");
    let first = same("r/", n.clone(), e.clone()).await;
    assert_eq!(first.lines().count(), 2 * 10, "{first}");
    ok(&n, &["put", "r/1", "again"]);
    ok(&n, &["del", "r/2"]);
    let later = same("r/", n.clone(), e.clone()).await;
    assert!(
        later.contains("r/1\nagain\n") && !later.contains("r/2\n"),
        "{later}"
    );
    let _ = to_etcd.kill();
    let _ = to_etcd.wait();
}
