//! `nod backup` and `nod snapshot restore --from-backup` on real processes:
//! a three-member cluster backed up to a real S3-compatible server (moto on
//! loopback) while 100k keys are written with leases, deletions and
//! history, the leader moved and killed; restores to revisions between full
//! snapshots compared with the source (HashKV, every key, every lease);
//! damaged and incomplete backups in a directory refused, leaving nothing.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::{Duration, Instant};

use nod_client::Client;
use nod_proto::etcd::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use nod_proto::etcd::mvccpb::KeyValue;
use serde_json::Value;
use support::{Cluster, Member, S3Server};

use support::{nod_cmd as nod, nod_cmd_ok as nod_ok};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn connect(endpoints: &[String]) -> Client {
    Client::connect(endpoints, Duration::from_secs(5)).unwrap()
}

fn put(key: String, value: String, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value: value.into_bytes(),
            lease,
            ..Default::default()
        })),
    }
}

/// `nod backup run` as a child process; SIGTERM and a clean exit on drop.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(
        dest: &str,
        endpoints: &str,
        env: &[(&str, String)],
        extra: &[&str],
        log: PathBuf,
    ) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_nod"))
            .args(["--endpoints", endpoints, "backup", "run", "--dest", dest])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn nod backup run");
        Agent {
            child: Some(child),
            log,
        }
    }

    /// SIGTERM: the agent writes what it holds and exits 0.
    fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "backup agent exited with {st}:\n{}",
                    self.logs()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backup agent ignored SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of nod backup run ----\n{}", self.logs());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `nod backup list -w json`.
fn chains(dest: &str, env: &[(&str, String)]) -> Vec<Value> {
    let out = nod_ok(&["backup", "list", "--dest", dest, "-w", "json"], env);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the newest complete chain reaches `revision`; its name.
async fn reached(dest: &str, env: &[(&str, String)], revision: i64, agent: &Agent) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let newest = chains(dest, env)
            .into_iter()
            .rfind(|c| c["complete"] == true);
        if let Some(c) = newest {
            if c["reaches"].as_i64().unwrap() >= revision {
                return c["chain"].as_str().unwrap().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the backup never reached revision {revision}: {:?}\n{}",
            chains(dest, env),
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every key, value, revision and lease at `revision`.
async fn all_at(c: &mut Client, revision: i64) -> Vec<KeyValue> {
    let r = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    };
    c.range(r).await.unwrap().kvs
}

/// The leases and their granted TTLs.
async fn leases(c: &mut Client) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for l in c.lease_list().await.unwrap().leases {
        let t = c.lease_time_to_live(l.id, false).await.unwrap();
        out.insert(l.id, t.granted_ttl);
    }
    out
}

/// What the source had at a revision.
struct Point {
    revision: i64,
    hash: u32,
    kvs: Vec<KeyValue>,
    leases: BTreeMap<i64, i64>,
}

async fn point(c: &mut Client, revision: i64) -> Point {
    Point {
        revision,
        hash: support::hash_kv_at(c, revision).await,
        kvs: all_at(c, revision).await,
        leases: leases(c).await,
    }
}

/// `rounds` transactions of 100 puts over a 100k key space (round r puts
/// keys of its own below round 1000, overwrites above: history), every 7th
/// key on one of `leases`, plus a range deletion every 50 rounds. Returns
/// the last revision.
const KEYS: usize = 100_000;

async fn write(c: &mut Client, from: usize, rounds: usize, leases: &[i64]) -> i64 {
    let mut last = 0;
    for r in from..from + rounds {
        let success = (0..100)
            .map(|i| {
                let n = r * 100 + i;
                let lease = if n % 7 == 0 {
                    leases[n % leases.len()]
                } else {
                    0
                };
                put(
                    format!("k/{:05}", (n * 7919) % KEYS),
                    format!("v{n}"),
                    lease,
                )
            })
            .collect();
        let resp = c
            .txn(TxnRequest {
                success,
                ..Default::default()
            })
            .await
            .unwrap();
        last = resp.header.unwrap().revision;
        if r % 50 == 49 {
            let d = DeleteRangeRequest {
                key: format!("k/{:05}", (r * 3_001) % KEYS).into_bytes(),
                range_end: format!("k/{:05}", (r * 3_001) % KEYS + 40).into_bytes(),
                ..Default::default()
            };
            last = c.delete(d).await.unwrap().header.unwrap().revision;
        }
    }
    last
}

/// Hands the leadership of `endpoints`' cluster to another member.
async fn move_leadership(c: &mut Client, endpoints: &[String]) {
    let leader = support::leader(endpoints).await;
    let target = c
        .member_list()
        .await
        .unwrap()
        .members
        .into_iter()
        .find(|m| m.id != leader)
        .unwrap()
        .id;
    c.move_leader(target).await.unwrap();
}

/// Restores `p.revision` (from `chain`, or the chain the restore picks)
/// into a new member and compares it with the source at that revision.
async fn restore_and_compare(
    dest: &str,
    env: &[(&str, String)],
    root: &Path,
    p: &Point,
    i: usize,
    chain: Option<&str>,
) {
    let mut m = Member::new(root, &format!("r{i}"));
    let initial = format!("{}={}", m.name, m.peer_url());
    let (revision, token, peer) = (
        p.revision.to_string(),
        format!("restored-{i}"),
        m.peer_url(),
    );
    let mut args = vec![
        "snapshot",
        "restore",
        "--from-backup",
        dest,
        "--to-revision",
        &revision,
        "--data-dir",
        s(&m.data_dir),
        "--name",
        &m.name,
        "--initial-cluster",
        &initial,
        "--initial-cluster-token",
        &token,
        "--initial-advertise-peer-urls",
        &peer,
    ];
    if let Some(chain) = chain {
        args.extend(["--chain", chain]);
    }
    let out = nod_ok(&args, env);
    assert!(out.contains(&format!("revision {}", p.revision)), "{out}");
    m.start(&initial, "new", &[]);
    support::leader(&[m.endpoint()]).await;
    let mut c = connect(&[m.endpoint()]);
    assert_eq!(
        c.hash_kv(p.revision).await.unwrap().hash,
        p.hash,
        "HashKV at {}",
        p.revision
    );
    let got = all_at(&mut c, p.revision).await;
    assert_eq!(got.len(), p.kvs.len(), "keys at {}", p.revision);
    assert!(
        got == p.kvs,
        "keys, values, revisions, versions and leases at {}",
        p.revision
    );
    // Every lease the source had then, with its granted TTL (the restore
    // may hold more: a revoke after the full is not in a watch).
    let restored = leases(&mut c).await;
    for (id, ttl) in &p.leases {
        assert_eq!(
            restored.get(id),
            Some(ttl),
            "lease {id:x} at {}",
            p.revision
        );
    }
    let next = c
        .put(PutRequest {
            key: b"after-restore".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next.header.unwrap().revision, p.revision + 1);
}

/// The round trip: 120k puts over 100k keys, incremental backup to
/// S3 across a leader move and a leader kill, a second full snapshot under
/// load and a leader move, restores to three revisions between the two
/// full snapshots, to the second and to the newest, each the source at
/// that revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restores_from_s3_match_the_source() {
    let s3 = S3Server::start("nod-backups");
    let env = s3.env();
    let dest = s3.url("prod/nod");
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    support::leader(&endpoints).await;
    let mut c = connect(&endpoints);

    // Before the first full snapshot: leases, history and a compaction.
    let mut lease_ids = Vec::new();
    for ttl in [3600, 7200] {
        lease_ids.push(c.lease_grant(ttl, 0).await.unwrap().id);
    }
    let early = write(&mut c, 0, 100, &lease_ids).await;
    c.compact(early - 50).await.unwrap();

    let root = cluster.dir.path().to_path_buf();
    let mut agent = Agent::start(
        &dest,
        &endpoints.join(","),
        &env,
        &[
            "--incremental",
            "--segment-max-age",
            "1s",
            "--full-every",
            "1h",
        ],
        root.join("agent.log"),
    );
    let first = reached(&dest, &env, early, &agent).await;

    // Under load: new leases (granted after the full), overwrites,
    // deletions, a revoke; the leader moved, then killed and restarted.
    let mut points = Vec::new();
    let l3 = c.lease_grant(9000, 0).await.unwrap().id;
    lease_ids.push(l3);
    let r1 = write(&mut c, 100, 150, &lease_ids).await;
    points.push(point(&mut c, r1).await);
    // Each point sealed in a segment before the next writes, so the chain
    // holds at least three segments whatever the machine's speed (a
    // segment is cut by age, 1 s here).
    assert_eq!(reached(&dest, &env, r1, &agent).await, first);
    c.lease_revoke(lease_ids[0]).await.unwrap();
    lease_ids.remove(0);
    move_leadership(&mut c, &endpoints).await;
    // One key put and deleted in one revision (two nested txns, which
    // etcd allows): both changes reach the backup.
    let nested = |op: request_op::Request| RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            success: vec![RequestOp { request: Some(op) }],
            ..Default::default()
        })),
    };
    let twice = TxnRequest {
        success: vec![
            nested(request_op::Request::RequestPut(PutRequest {
                key: b"k/twice".to_vec(),
                value: b"short-lived".to_vec(),
                ..Default::default()
            })),
            nested(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: b"k/twice".to_vec(),
                    ..Default::default()
                },
            )),
        ],
        ..Default::default()
    };
    c.txn(twice).await.unwrap();
    let r2 = write(&mut c, 250, 150, &lease_ids).await;
    points.push(point(&mut c, r2).await);
    let leader = support::leader(&endpoints).await;
    let mut victim = None;
    for (i, m) in cluster.members.iter().enumerate() {
        if let Ok(st) = connect(&[m.endpoint()]).status().await {
            if st.header.unwrap().member_id == leader {
                victim = Some(i);
            }
        }
    }
    let victim = victim.expect("the leader is a member");
    cluster.members[victim].kill();
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != victim)
        .map(|i| cluster.members[i].endpoint())
        .collect();
    support::leader(&survivors).await;
    let r3 = write(&mut c, 400, 300, &lease_ids).await;
    points.push(point(&mut c, r3).await);
    assert_eq!(reached(&dest, &env, r3, &agent).await, first);
    let initial = cluster.initial_cluster();
    cluster.members[victim].start(&initial, "new", &[]);
    let end = write(&mut c, 700, 500, &lease_ids).await;
    let last_chain = reached(&dest, &env, end, &agent).await;
    assert_eq!(last_chain, first, "one chain covers the whole run");
    let end_point = point(&mut c, end).await;
    agent.stop();

    // A second full snapshot, a chain of its own, taken while a writer
    // goes on and the leadership moves: the points above lie between two
    // full snapshots, and this one is checked against the source below.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (stop, eps) = (stop.clone(), endpoints.clone());
        async move {
            let mut c = connect(&eps);
            let mut acked = 0;
            for n in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let p = PutRequest {
                    key: format!("load/{n}").into_bytes(),
                    value: vec![b'x'; 100],
                    ..Default::default()
                };
                if c.put(p).await.is_ok() {
                    acked += 1;
                }
            }
            acked
        }
    });
    let save = tokio::task::spawn_blocking({
        let (eps, dest, env) = (endpoints.join(","), dest.clone(), env.clone());
        move || {
            nod_ok(
                &["--endpoints", &eps, "backup", "save", "--dest", &dest],
                &env,
            )
        }
    });
    move_leadership(&mut c, &endpoints).await;
    let saved = save.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    assert!(load.await.unwrap() > 0, "the writer ran");
    assert!(saved.contains("saved in"), "{saved}");
    let listed = chains(&dest, &env);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["chain"], first.as_str(), "{listed:?}");
    assert!(listed[0]["segments"].as_u64().unwrap() >= 3, "{listed:?}");
    assert!(listed.iter().all(|c| c["problem"].is_null()), "{listed:?}");
    let second = listed[1]["chain"].as_str().unwrap().to_string();
    assert!(listed[1]["revision"].as_i64().unwrap() >= end, "{listed:?}");
    let total_keys = end_point.kvs.len();
    assert!(total_keys > 95_000, "only {total_keys} keys");
    // The restore picks the chain that holds the revision; named, the
    // same chain gives the same state.
    for (i, p) in points.iter().enumerate() {
        restore_and_compare(&dest, &env, &root, p, i, None).await;
    }
    restore_and_compare(&dest, &env, &root, &points[1], 3, Some(&first)).await;
    // The full taken under load is the source at its revision.
    let under_load = listed[1]["revision"].as_i64().unwrap();
    let p = point(&mut c, under_load).await;
    restore_and_compare(&dest, &env, &root, &p, 4, Some(&second)).await;
    // A named chain that does not hold the revision is refused.
    let out = nod(
        &[
            "snapshot",
            "restore",
            "--from-backup",
            &dest,
            "--chain",
            &second,
            "--to-revision",
            &points[1].revision.to_string(),
            "--data-dir",
            s(&root.join("wrong-chain")),
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("chain {second} holds revisions")),
        "{err}"
    );
    assert!(!root.join("wrong-chain").exists());

    // The newest revision into three members that restore themselves on
    // start (`nod server --restore-from`, as a pod of a restored cluster).
    let mut ms: Vec<Member> = (1..=3)
        .map(|i| Member::new(&root, &format!("s{i}")))
        .collect();
    let initial = support::initial_cluster(&ms);
    let end_s = end.to_string();
    for m in &mut ms {
        m.env = env.clone();
        m.start(
            &initial,
            "new",
            &[
                "--restore-from",
                &dest,
                "--restore-revision",
                &end_s,
                "--initial-cluster-token",
                "restored-s",
            ],
        );
    }
    let eps: Vec<String> = ms.iter().map(Member::endpoint).collect();
    support::leader(&eps).await;
    for ep in &eps {
        let mut m = connect(std::slice::from_ref(ep));
        assert_eq!(
            m.hash_kv(end).await.unwrap().hash,
            end_point.hash,
            "{ep} at {end}"
        );
        let got = all_at(&mut m, end).await;
        assert!(got == end_point.kvs, "{ep}: every key at {end}");
    }
    let restored_id = connect(&eps)
        .status()
        .await
        .unwrap()
        .header
        .unwrap()
        .cluster_id;
    let source_id = c.status().await.unwrap().header.unwrap().cluster_id;
    assert_ne!(
        restored_id, source_id,
        "a restored cluster gets an id of its own"
    );

    // Revisions outside the chain are refused, naming what it holds.
    let out = nod(
        &[
            "snapshot",
            "restore",
            "--from-backup",
            &dest,
            "--to-revision",
            &(under_load + 1000).to_string(),
            "--data-dir",
            s(&root.join("no")),
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no chain reaches revision"), "{err}");
    assert!(!root.join("no").exists());
}

/// Nothing in a destination is ever replaced: a second put of a name, and
/// a large upload to a name that exists, are refused and the first bytes
/// stay. On a directory (hard links) and on S3 (moto honours
/// `If-None-Match: *` with 412).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_never_overwrite_an_object() {
    use bytes::Bytes;
    use nod_backup::store::{Destination, StoreError};
    nod_backup::install_crypto();
    let s3 = S3Server::start("nod-create-only");
    // Destination::parse reads the endpoint and keys from the environment,
    // as the AWS tools do; the other tests pass theirs to each process.
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    let dir = tempfile::tempdir().unwrap();
    for url in [s3.url("p"), dir.path().join("d").display().to_string()] {
        let d = Destination::parse(&url).unwrap();
        d.put_new("c/seg-1", Bytes::from_static(b"first"))
            .await
            .unwrap();
        let again = d.put_new("c/seg-1", Bytes::from_static(b"second")).await;
        assert!(
            matches!(again, Err(StoreError::Exists { .. })),
            "{url}: {again:?}"
        );
        assert_eq!(&d.get("c/seg-1", 100).await.unwrap()[..], b"first");

        let mut up = d.create("c/full.db.zst").await.unwrap();
        up.put(Bytes::from_static(b"the full"));
        up.finish().await.unwrap();
        match d.create("c/full.db.zst").await {
            Err(StoreError::Exists { .. }) => {}
            Err(e) => panic!("{url}: {e}"),
            Ok(_) => panic!("{url}: a second upload of the full was started"),
        }
        let put = d.put_new("c/full.db.zst", Bytes::from_static(b"x")).await;
        assert!(
            matches!(put, Err(StoreError::Exists { .. })),
            "{url}: {put:?}"
        );
        assert_eq!(&d.get("c/full.db.zst", 100).await.unwrap()[..], b"the full");
    }
}

/// A directory destination: `nod backup save`, then damage of every kind
/// is refused with a clear error and no data directory left behind; a
/// missing tail segment only shortens the reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_are_refused_and_leave_nothing() {
    let cluster = Cluster::start(1);
    let endpoints = cluster.endpoints();
    support::leader(&endpoints).await;
    let mut c = connect(&endpoints);
    let root = cluster.dir.path().to_path_buf();
    let store = root.join("backups");
    let dest = s(&store).to_string();
    write(&mut c, 0, 5, &[0]).await;
    let saved = nod_ok(
        &[
            "--endpoints",
            &endpoints[0],
            "backup",
            "save",
            "--dest",
            &dest,
        ],
        &[],
    );
    assert!(saved.contains("saved in"), "{saved}");

    let mut agent = Agent::start(
        &dest,
        &endpoints[0],
        &[],
        &["--incremental", "--segment-max-age", "1s"],
        root.join("agent.log"),
    );
    // The agent's own chain first, so that every round below lands in a
    // segment of it.
    support::eventually("the agent's full snapshot", Duration::from_secs(30), || {
        let n = chains(&dest, &[])
            .iter()
            .filter(|c| c["complete"] == true)
            .count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    let mut revs = Vec::new();
    for round in 0..4 {
        revs.push(write(&mut c, 10 + round * 3, 3, &[0]).await);
        reached(&dest, &[], *revs.last().unwrap(), &agent).await;
    }
    agent.stop();
    let listed = chains(&dest, &[]);
    assert_eq!(listed.len(), 2, "a saved chain and the agent's: {listed:?}");
    let chain_dir = {
        let c = listed.last().unwrap();
        store
            .join(c["cluster"].as_str().unwrap())
            .join(c["chain"].as_str().unwrap())
    };
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&chain_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "nseg"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 4, "{segments:?}");
    nod_ok(&["backup", "verify", "--dest", &dest], &[]);

    // Each damage in a copy of the destination.
    let copy = |name: &str| -> (PathBuf, PathBuf) {
        let to = root.join(name);
        let st = Command::new("cp")
            .arg("-a")
            .arg(&store)
            .arg(&to)
            .status()
            .unwrap();
        assert!(st.success());
        let chain = to.join(chain_dir.strip_prefix(&store).unwrap());
        (to, chain)
    };
    let restore = |from: &Path, to_revision: Option<i64>| -> (Output, PathBuf) {
        let data = root.join(format!(
            "data-{}",
            from.file_name().unwrap().to_str().unwrap()
        ));
        let mut args = vec![
            "snapshot".to_string(),
            "restore".into(),
            "--from-backup".into(),
            s(from).into(),
            "--data-dir".into(),
            s(&data).into(),
        ];
        if let Some(r) = to_revision {
            args.extend(["--to-revision".into(), r.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (nod(&args, &[]), data)
    };
    let refused = |name: &str, to: Option<i64>, damage: &dyn Fn(&Path), want: &str| {
        let (dir, chain) = copy(name);
        damage(&chain);
        let (out, data) = restore(&dir, to);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(want), "{name}: wanted {want:?} in {err:?}");
        assert!(!data.exists(), "{name}: a data dir was left");
        assert!(!PathBuf::from(format!("{}.restoring", data.display())).exists());
    };
    let seg = |i: usize| segments[i].file_name().unwrap().to_owned();
    let truncate = |p: &Path, keep: u64| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(keep).unwrap();
    };
    let last = *revs.last().unwrap();
    refused(
        "truncated-full",
        None,
        &|ch| {
            let p = ch.join("full.db.zst");
            let len = std::fs::metadata(&p).unwrap().len();
            truncate(&p, len / 2);
        },
        "full.db.zst",
    );
    refused(
        "flipped-middle",
        Some(last),
        &|ch| {
            let p = ch.join(seg(1));
            let mut b = std::fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0x20;
            std::fs::write(&p, b).unwrap();
        },
        "seg-",
    );
    refused(
        "missing-middle",
        Some(last),
        &|ch| std::fs::remove_file(ch.join(seg(1))).unwrap(),
        "no chain reaches revision",
    );
    refused(
        "truncated-last",
        Some(last),
        &|ch| {
            let p = ch.join(seg(segments.len() - 1));
            let len = std::fs::metadata(&p).unwrap().len();
            truncate(&p, len - 3);
        },
        "truncated",
    );
    // Without its manifest the agent's chain is unusable; the saved one
    // (older, complete) does not reach the revision.
    refused(
        "no-manifest",
        Some(last),
        &|ch| std::fs::remove_file(ch.join("manifest.json")).unwrap(),
        "no chain reaches revision",
    );

    // A missing tail: the chain reaches the segment before it.
    let (dir, chain) = copy("missing-tail");
    let tail = seg(segments.len() - 1);
    std::fs::remove_file(chain.join(&tail)).unwrap();
    let (out, _) = restore(&dir, Some(last));
    assert_eq!(out.status.code(), Some(1), "past the missing tail");
    let before = revs[revs.len() - 2];
    let (out, data) = restore(&dir, Some(before));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(data.join("identity.json").exists());

    // Retention: `--keep 1` with a full snapshot every second leaves one
    // chain, a new one, and no folder of a deleted chain behind.
    let (kept, _) = copy("retention");
    let kept_s = s(&kept).to_string();
    let before: Vec<String> = chains(&kept_s, &[])
        .iter()
        .map(|c| c["chain"].as_str().unwrap().to_string())
        .collect();
    let mut pruner = Agent::start(
        &kept_s,
        &endpoints[0],
        &[],
        &["--full-every", "1s", "--keep", "1"],
        root.join("pruner.log"),
    );
    support::eventually(
        "retention down to one new chain",
        Duration::from_secs(30),
        || {
            let now = chains(&kept_s, &[]);
            let done = now.len() == 1
                && now[0]["complete"] == true
                && !before.iter().any(|b| now[0]["chain"] == b.as_str());
            async move { done.then_some(()) }
        },
    )
    .await;
    pruner.stop();
    let cluster_dir = kept.join(chain_dir.parent().unwrap().file_name().unwrap());
    let folders = std::fs::read_dir(&cluster_dir).unwrap().count();
    assert!(folders <= 2, "deleted chains left {folders} folders behind");
}

/// The agent of `nod backup run --schedule ... --listen`: its status
/// (`GET /status`) says what it wrote, where its chain reaches and when the
/// next full starts; `POST /backups` starts a new chain now; a failure is
/// reported with its reason and the agent keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_status_and_takes_requests() {
    use nod_client::backup_agent::{request_backup, status, AgentStatus};
    let cluster = Cluster::start(1);
    let endpoints = cluster.endpoints();
    support::leader(&endpoints).await;
    let mut c = connect(&endpoints);
    let root = cluster.dir.path().to_path_buf();
    let store = root.join("backups");
    let dest = s(&store).to_string();
    let port = support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(
        &dest,
        &endpoints[0],
        &[],
        &[
            "--incremental",
            "--segment-max-age",
            "1s",
            "--schedule",
            "0 0 1 1 *",
            "--listen",
            &listen,
        ],
        root.join("agent.log"),
    );
    let t = Duration::from_secs(5);
    let seen = |what: &'static str, ok: fn(&AgentStatus) -> bool| {
        let url = url.clone();
        async move {
            support::eventually(what, Duration::from_secs(30), || {
                let url = url.clone();
                async move { status(&url, t).await.ok().filter(ok) }
            })
            .await
        }
    };
    let first = seen("the first full", |s| s.last_full.is_some()).await;
    let full = first.last_full.clone().unwrap();
    assert_eq!(first.destination, dest);
    assert_eq!(first.schedule, "0 0 1 1 *");
    assert!(first.incremental);
    assert_eq!(first.fulls_total, 1);
    // The agent's status and the destination agree.
    let listed = chains(&dest, &[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        format!(
            "{}/{}",
            listed[0]["cluster"].as_str().unwrap(),
            listed[0]["chain"].as_str().unwrap()
        ),
        full.chain
    );
    assert_eq!(listed[0]["revision"].as_i64(), Some(full.revision));
    assert_eq!(first.cluster_id.as_deref(), listed[0]["cluster"].as_str());
    // The next full: New Year's midnight, UTC, in the future.
    let next = first.next_full_unix_ms.expect("a next full");
    let now = nod_backup::writer::now_unix_ms();
    assert!(next > now && next - now <= 366 * 86_400_000, "{next}");
    assert_eq!(next % 86_400_000, 0, "midnight UTC: {next}");

    // Changes reach the status as segments are written.
    let rev = write(&mut c, 0, 3, &[0]).await;
    support::eventually("the segments' reach", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            status(&url, t)
                .await
                .ok()
                .filter(|s| s.reached_revision >= rev)
        }
    })
    .await;

    // A full on request: a new chain, and the request reported done.
    let asked = request_backup(&url, t).await.unwrap();
    assert_eq!(asked.request, 1);
    let second = seen("the requested full", |s| s.completed_request >= 1).await;
    let full2 = second.last_full.clone().unwrap();
    assert_ne!(full2.chain, full.chain);
    assert!(full2.revision >= rev);
    assert_eq!(second.fulls_total, 2);
    assert!(second.last_failure.is_none(), "{second:?}");

    // The destination made unusable: the next full fails, and says why.
    std::fs::rename(&store, root.join("moved")).unwrap();
    std::fs::write(&store, b"not a directory").unwrap();
    assert_eq!(request_backup(&url, t).await.unwrap().request, 2);
    let failed = seen("a reported failure", |s| s.last_failure.is_some()).await;
    let f = failed.last_failure.unwrap();
    assert!(f.message.starts_with("full backup"), "{}", f.message);
    assert!(failed.failures_total >= 1);
    assert_eq!(failed.completed_request, 1, "request 2 is not done");
    assert_eq!(failed.last_full, second.last_full, "the last success stays");

    // Bad requests get HTTP errors, not a crash.
    let e = status(&format!("{url}/nothing-here"), t).await.unwrap_err();
    assert!(e.contains("404"), "{e}");
    agent.stop();
}
