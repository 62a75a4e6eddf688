//! `nod snapshot status` and `nod snapshot restore` on real files and real
//! processes: an etcd 3.4 snapshot (etcd's own bbolt file) restored into a
//! three-member Nod cluster that then grows by a learner; a Nod snapshot
//! restored with the same HashKV at every revision; etcdctl's status output
//! matched byte for byte; damaged files refused with nothing left behind.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use nod_client::auth::Credentials;
use nod_client::Client;
use nod_proto::etcd::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use nod_proto::etcd::mvccpb::KeyValue;
use support::{etcdctl, etcdctl_ok, eventually, Cluster, Etcd, Member};

fn nod(args: &[&str]) -> Output {
    support::nod_cmd(args, &[])
}

fn nod_ok(args: &[&str]) -> String {
    support::nod_cmd_ok(args, &[])
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn connect(ep: &str) -> Client {
    Client::connect(&[ep.to_string()], Duration::from_secs(5)).unwrap()
}

fn put(key: String, value: String, lease: i64) -> PutRequest {
    PutRequest {
        key: key.into_bytes(),
        value: value.into_bytes(),
        lease,
        ..Default::default()
    }
}

/// Overwrites, range deletions, a transaction, three leases with keys and a
/// compaction half-way. Returns the lease ids and the revisions worth
/// reading back: the compacted one, some after it, the last.
async fn workload(c: &mut Client) -> (Vec<i64>, Vec<i64>) {
    let mut leases = Vec::new();
    for ttl in [60, 600, 9000] {
        leases.push(c.lease_grant(ttl, 0).await.unwrap().id);
    }
    for i in 0..600 {
        let lease = match i % 7 {
            1..=3 => leases[i % 7 - 1],
            _ => 0,
        };
        let p = put(format!("w/{:03}", i % 150), format!("v{i}"), lease);
        c.put(p).await.unwrap();
    }
    let d = DeleteRangeRequest {
        key: b"w/000".to_vec(),
        range_end: b"w/020".to_vec(),
        ..Default::default()
    };
    c.delete(d).await.unwrap();
    let mid = c.put(put("mid".into(), "x".into(), 0)).await.unwrap();
    let mid = mid.header.unwrap().revision;
    let txn = TxnRequest {
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b"w/100".to_vec(),
                        ..Default::default()
                    },
                )),
            },
            RequestOp {
                request: Some(request_op::Request::RequestPut(put(
                    "t".into(),
                    "in a txn".into(),
                    0,
                ))),
            },
        ],
        ..Default::default()
    };
    c.txn(txn).await.unwrap();
    c.compact(mid - 100).await.unwrap();
    let mut last = 0;
    for i in 0..100 {
        let p = put(format!("w/{:03}", 40 + i % 30), format!("after{i}"), 0);
        last = c.put(p).await.unwrap().header.unwrap().revision;
    }
    (
        leases,
        vec![mid - 100, mid - 1, mid, mid + 1, last - 50, last],
    )
}

async fn all_at(c: &mut Client, revision: i64) -> Vec<KeyValue> {
    let r = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        serializable: true,
        ..Default::default()
    };
    c.range(r).await.unwrap().kvs
}

/// etcdctl's and Nod's `snapshot status` of `file`, in every output form.
fn statuses_agree(file: &Path) {
    for w in ["simple", "table", "json", "fields"] {
        let etcd = etcdctl_ok("127.0.0.1:1", &["snapshot", "status", s(file), "-w", w]);
        let ours = nod_ok(&["snapshot", "status", s(file), "-w", w]);
        assert_eq!(ours, etcd, "snapshot status -w {w}");
    }
}

/// `nod snapshot restore` of `file` for each of `members`, as one cluster.
fn restore_all(file: &Path, members: &[Member], token: &str) -> String {
    let initial = support::initial_cluster(members);
    for m in members {
        nod_ok(&[
            "snapshot",
            "restore",
            s(file),
            "--data-dir",
            s(&m.data_dir),
            "--name",
            &m.name,
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            token,
            "--initial-advertise-peer-urls",
            &m.peer_url(),
        ]);
    }
    initial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_a_nod_cluster_that_grows() {
    let etcd = Etcd::start(&[]);
    etcd.wait_ready();
    let ep = etcd.endpoint();
    let mut c = connect(&ep);
    let (leases, revisions) = workload(&mut c).await;
    let mut want = Vec::new();
    for &r in &revisions {
        want.push((r, all_at(&mut c, r).await));
    }
    let mut want_leases = Vec::new();
    for &id in &leases {
        let mut l = c.lease_time_to_live(id, true).await.unwrap();
        // etcd lists a lease's keys in map order.
        l.keys.sort();
        want_leases.push((l.granted_ttl, l.keys));
    }
    let last = *revisions.last().unwrap();
    for args in [
        &["role", "add", "r1"][..],
        &["user", "add", "root:rootpw"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "u1:u1pw"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(&ep, args);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    etcdctl_ok(
        &ep,
        &["--user", "root:rootpw", "snapshot", "save", s(&file)],
    );
    drop(etcd);
    // etcd's own file, with its freelist and page layout.
    statuses_agree(&file);

    let mut members: Vec<Member> = (1..=3)
        .map(|i| Member::new(dir.path(), &format!("n{i}")))
        .collect();
    let initial = restore_all(&file, &members, "t-restore");
    for m in &mut members {
        m.start(&initial, "new", &[]);
    }
    let root = |ep: &str| {
        Client::builder([ep.to_string()])
            .credentials(Credentials::new("root", "rootpw"))
            .build()
            .unwrap()
    };
    let eps: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    support::leader_of(&eps, |ep| Some(root(ep))).await;

    let mut hashes = Vec::new();
    let mut clusters = Vec::new();
    for m in &members {
        let mut mc = root(&m.endpoint());
        for (r, kvs) in &want {
            assert_eq!(
                &all_at(&mut mc, *r).await,
                kvs,
                "{} at revision {r}",
                m.name
            );
        }
        let below = RangeRequest {
            key: b"w/050".to_vec(),
            revision: revisions[0] - 1,
            serializable: true,
            ..Default::default()
        };
        let err = mc.range(below).await.unwrap_err().to_string();
        assert!(
            err.contains("required revision has been compacted"),
            "{err}"
        );
        for (&id, (ttl, keys)) in leases.iter().zip(&want_leases) {
            let mut l = mc.lease_time_to_live(id, true).await.unwrap();
            l.keys.sort();
            assert_eq!((l.granted_ttl, &l.keys), (*ttl, keys), "lease {id:x}");
            assert!(l.ttl > 0, "lease {id:x} got its TTL back, not expired");
        }
        let h = mc.hash_kv(0).await.unwrap();
        clusters.push(h.header.unwrap().cluster_id);
        hashes.push(h.hash);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    assert!(clusters.iter().all(|h| *h == clusters[0]), "{clusters:?}");
    // Users and auth came along: u1 logs in (and may not read), a wrong
    // password does not.
    let denied = etcdctl(&eps[0], &["--user", "u1:u1pw", "get", "t"], None);
    let text = String::from_utf8_lossy(&denied.stderr);
    assert!(text.contains("permission denied"), "{text}");
    let wrong = etcdctl(&eps[0], &["--user", "u1:nope", "get", "t"], None);
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert!(text.contains("authentication failed"), "{text}");
    // Revisions go on from the snapshot's.
    let mut rc = root(&eps[0]);
    let next = rc.put(put("new".into(), "v".into(), 0)).await.unwrap();
    assert_eq!(next.header.unwrap().revision, last + 1);

    // A learner added now has an empty log: the leader sends it the
    // restored checkpoint, not just a member table.
    let mut n4 = Member::new(dir.path(), "n4");
    let added = rc
        .member_add(vec![n4.peer_url()], true)
        .await
        .unwrap()
        .member
        .unwrap();
    n4.start(&format!("{initial},n4={}", n4.peer_url()), "existing", &[]);
    let want_now = all_at(&mut rc, 0).await;
    let ep4 = n4.endpoint();
    let got = eventually("the learner to catch up", Duration::from_secs(30), || {
        let (ep4, want_now) = (ep4.clone(), &want_now);
        async move {
            let r = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                serializable: true,
                ..Default::default()
            };
            let kvs = root(&ep4).range(r).await.ok()?.kvs;
            (&kvs == want_now).then_some(kvs)
        }
    })
    .await;
    let mut c4 = root(&ep4);
    assert!(got.len() > 100, "{} keys", got.len());
    assert_eq!(all_at(&mut c4, want[1].0).await, want[1].1);
    assert_eq!(
        c4.hash_kv(0).await.unwrap().hash,
        rc.hash_kv(0).await.unwrap().hash
    );
    assert!(added.is_learner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nod_snapshot_restores_with_the_same_hash_kv_at_every_revision() {
    let source = Cluster::start(1);
    let ep = source.members[0].endpoint();
    support::leader(std::slice::from_ref(&ep)).await;
    let mut c = connect(&ep);
    // JSON documents and an index over them: the snapshot carries its
    // declaration, and each restored member builds it again.
    for i in 0..40 {
        let doc = format!(r#"{{"city": "{}", "n": {i}}}"#, ["Oslo", "Bergen"][i % 2]);
        c.put(put(format!("/docs/{i:02}"), doc, 0)).await.unwrap();
    }
    let declare = [
        "--endpoints",
        ep.as_str(),
        "index",
        "create",
        "docs_city",
        "--prefix",
        "/docs/",
        "--field",
        "city:string",
    ];
    eventually("the index declared", Duration::from_secs(20), || async {
        nod(&declare).status.success().then_some(())
    })
    .await;
    let (_, revisions) = workload(&mut c).await;
    let mut want = Vec::new();
    for r in revisions[0]..=*revisions.last().unwrap() {
        want.push((r, c.hash_kv(r).await.unwrap().hash));
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("nod.db");
    let theirs = dir.path().join("etcdctl.db");
    let saved = nod_ok(&["--endpoints", &ep, "snapshot", "save", s(&ours)]);
    let last = *revisions.last().unwrap();
    assert!(saved.contains(&format!("revision {last})")), "{saved}");
    etcdctl_ok(&ep, &["snapshot", "save", s(&theirs)]);
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
        "nod's streamed save and etcdctl's are the same file"
    );
    assert!(!dir.path().join("nod.part").exists());
    drop(source);
    statuses_agree(&ours);
    for (i, file) in [ours, theirs].iter().enumerate() {
        let mut m = [Member::new(dir.path(), &format!("r{i}"))];
        let initial = restore_all(file, &m, &format!("t{i}"));
        m[0].start(&initial, "new", &[]);
        support::leader(&[m[0].endpoint()]).await;
        let mut rc = connect(&m[0].endpoint());
        for &(r, h) in &want {
            assert_eq!(rc.hash_kv(r).await.unwrap().hash, h, "{file:?} at {r}");
        }
        let rep = m[0].endpoint();
        eventually("the index built again", Duration::from_secs(20), || {
            let rep = rep.clone();
            async move {
                let out = nod(&[
                    "--endpoints",
                    &rep,
                    "index",
                    "describe",
                    "docs_city",
                    "--verify",
                ]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                (out.status.success() && text.contains("ready (from revision")).then_some(())
            }
        })
        .await;
        let q = "SELECT KEY FROM '/docs/' WHERE city = 'Oslo'";
        let got = nod_ok(&["--endpoints", &rep, "query", "--plan", "index:docs_city", q]);
        let keys: Vec<&str> = got.lines().skip(1).collect();
        let oslo: Vec<String> = (0..40)
            .step_by(2)
            .map(|i| format!("/docs/{i:02}"))
            .collect();
        assert_eq!(keys, oslo, "{file:?}: {got}");
    }
}

#[test]
fn damaged_files_and_existing_dirs_are_refused_leaving_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A small real snapshot from a store written in this process.
    let mut store = nod::storage::KvStore::in_memory();
    for i in 0..300u64 {
        let p = put(format!("k{i}"), "v".repeat(40), 0);
        let _applied = store.apply_put(&p, (i + 1, 1)).unwrap();
    }
    let good = store.etcd_snapshot().unwrap();
    let db = &good[..good.len() - 32];
    let mut flipped = good.clone();
    flipped[5000] ^= 1;
    let files: [(&str, &[u8]); 5] = [
        ("good.db", &good),
        ("nohash.db", db),
        ("flipped.db", &flipped),
        ("cut.db", &good[..good.len() - 4096]),
        ("empty.db", &[]),
    ];
    for (name, bytes) in files {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    let restore = |file: &str, target: &str, extra: &[&str]| {
        let mut args = vec![
            "snapshot",
            "restore",
            file,
            "--data-dir",
            target,
            "--initial-cluster-token",
            "t",
        ];
        args.extend_from_slice(extra);
        nod(&args)
    };
    let j = |n: &str| s(&d.join(n)).to_string();
    std::fs::create_dir(d.join("exists")).unwrap();
    let cases = [
        ("good.db", "exists", "data-dir \""),
        (
            "nohash.db",
            "t1",
            "snapshot missing hash but --skip-hash-check=false",
        ),
        ("flipped.db", "t2", "expected sha256 "),
        ("cut.db", "t3", "expected sha256 "),
        (
            "empty.db",
            "t4",
            "snapshot missing hash but --skip-hash-check=false",
        ),
        ("missing.db", "t5", "open "),
    ];
    for (file, target, message) in cases {
        let out = restore(&j(file), &j(target), &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(&format!("Error: {message}")), "{file}: {err}");
        if target != "exists" {
            assert!(!d.join(target).exists(), "{file} left {target}");
            assert!(!d.join(format!("{target}.restoring")).exists());
        }
    }
    assert_eq!(std::fs::read_dir(d.join("exists")).unwrap().count(), 0);
    // Without a hash, --skip-hash-check restores; a file that is not a
    // database is refused even then.
    let out = restore(&j("nohash.db"), &j("t6"), &["--skip-hash-check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(d.join("t6/identity.json").exists());
    let out = restore(&j("empty.db"), &j("t7"), &["--skip-hash-check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a valid database"), "{err}");
    assert!(!d.join("t7").exists());

    // status: the same checks, and never a panic (etcdctl 3.4 panics on some).
    let status = |file: &str| nod(&["snapshot", "status", &j(file)]);
    assert!(status("good.db").status.success());
    assert!(status("nohash.db").status.success(), "a data-dir db");
    for (file, message) in [
        ("flipped.db", "expected sha256"),
        ("cut.db", "expected sha256"),
        ("empty.db", "is not a valid database"),
        ("missing.db", "open "),
    ] {
        let out = status(file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(message), "{file}: {err}");
    }
    let mut bad_meta = db.to_vec();
    bad_meta[16..4096].fill(0xff);
    bad_meta[4096 + 16..8192].fill(0xff);
    std::fs::write(d.join("metas.db"), &bad_meta).unwrap();
    let out = status("metas.db");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
