//! Secondary indexes and queries end to end: three `nod server`
//! processes, the `nod index` and `nod query` commands against a
//! follower (so declarations are forwarded to the leader), writes during
//! the build, every member's index verified against its values and every
//! member answering the test's own expected rows through the index and
//! without it, a member killed and restarted, and the errors a user meets;
//! then with authentication on: declarations are root's, and a query or
//! a listing reaches only prefixes the user may read.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use nod_proto::etcd::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
use serde_json::Value;
use support::{
    alice_on_a_prefix, etcdctl, etcdctl_ok, eventually, leader, nod_cmd, nod_cmd_ok, Cluster,
};

const CITIES: [&str; 5] = ["Oslo", "Bergen", "Trondheim", "Tromsø", "Bodø"];

fn doc(i: usize) -> String {
    format!(
        r#"{{"name": "user {i}", "city": "{}", "age": {}}}"#,
        CITIES[i % CITIES.len()],
        i % 90
    )
}

/// The keys a query for Oslo and age over 80 must answer, of users
/// `0..n`: few enough (one in 90) that the planner's count of the index's
/// entries stays under its cap and it reads the index.
fn oslo_over_80(n: usize) -> Vec<String> {
    let keys: BTreeSet<String> = (0..n)
        .filter(|i| i % CITIES.len() == 0 && i % 90 > 80)
        .map(|i| format!("/users/{i:05}"))
        .collect();
    keys.into_iter().collect()
}

async fn write_users(c: &mut nod_client::Client, range: std::ops::Range<usize>) {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(100) {
        let success = chunk
            .iter()
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: format!("/users/{i:05}").into_bytes(),
                    value: doc(*i).into_bytes(),
                    ..Default::default()
                })),
            })
            .collect();
        c.txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .expect("a txn of puts");
    }
}

/// `nod -w json query TEXT` through `endpoint`, parsed.
fn query_json(endpoint: &str, text: &str, plan: &str) -> Value {
    let out = nod_cmd_ok(
        &[
            "--endpoints",
            endpoint,
            "-w",
            "json",
            "query",
            "--plan",
            plan,
            text,
        ],
        &[],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn keys_of(v: &Value) -> Vec<String> {
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r[0].as_str().expect("a key").to_string())
        .collect()
}

/// The index of a member that is not the leader.
async fn a_follower(cluster: &Cluster) -> usize {
    let leader_id = leader(&cluster.endpoints()).await;
    let mut follower = None;
    for (i, m) in cluster.members.iter().enumerate() {
        let s = m.client().status().await.expect("status");
        if s.header.map(|h| h.member_id) != Some(leader_id) {
            follower = Some(i);
        }
    }
    follower.expect("a follower among three")
}

/// `nod ARGS` (an `index create`), sent again until the cluster has
/// enabled indexes (every member publishes its features as it starts):
/// its output.
async fn declared(args: &[&str]) -> String {
    eventually(
        "the index declared",
        Duration::from_secs(20),
        || async move {
            let out = nod_cmd(args, &[]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_declared_built_and_queried_on_every_member() {
    let mut cluster = Cluster::start(3);
    // A follower's endpoint: its declarations travel to the leader.
    let follower = a_follower(&cluster).await;
    let fep = cluster.members[follower].endpoint();
    let mut c = cluster.members[follower].client();
    write_users(&mut c, 0..2000).await;

    // Declared once every member has published its features (at start).
    let create = [
        "--endpoints",
        fep.as_str(),
        "index",
        "create",
        "users_city_age",
        "--prefix",
        "/users/",
        "--field",
        "city:string",
        "--field",
        "age:number",
    ];
    let created = declared(&create).await;
    assert!(
        created.contains("index users_city_age created: building"),
        "{created}"
    );
    // Writes during the build are indexed by apply.
    write_users(&mut c, 2000..3000).await;
    let want = oslo_over_80(3000);
    assert!(want.len() > 20, "{}", want.len());

    let text = "SELECT KEY FROM '/users/' WHERE city = 'Oslo' AND age > 80 ORDER BY KEY";
    for m in &cluster.members {
        let ep = m.endpoint();
        // Ready on every member, and matching the values it covers.
        eventually(
            "the index ready and verified",
            Duration::from_secs(30),
            || {
                let ep = ep.clone();
                async move {
                    let out = nod_cmd(
                        &[
                            "--endpoints",
                            &ep,
                            "index",
                            "describe",
                            "users_city_age",
                            "--verify",
                        ],
                        &[],
                    );
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    (out.status.success() && text.contains("ready (from revision")).then_some(text)
                }
            },
        )
        .await;
        let indexed = query_json(&ep, text, "best");
        let scanned = query_json(&ep, text, "prefix");
        assert_eq!(keys_of(&indexed), want, "through the index on {ep}");
        assert_eq!(keys_of(&scanned), want, "by a prefix scan on {ep}");
        let plan = indexed["plan"].as_str().unwrap();
        assert!(plan.contains("read index users_city_age"), "{plan}");
        let (read, all) = (
            indexed["stats"]["docs"].as_u64().unwrap(),
            scanned["stats"]["docs"].as_u64().unwrap(),
        );
        assert_eq!(all, 3000, "a prefix scan reads every user");
        assert!(read < 100, "the index reads Oslo's over-80s only: {read}");
    }

    // A member killed and restarted keeps its index and its entries.
    let initial = cluster.initial_cluster();
    cluster.members[follower].kill();
    write_users(
        &mut cluster.members[(follower + 1) % 3].client(),
        3000..3500,
    )
    .await;
    cluster.members[follower].start(&initial, "new", &[]);
    let want = oslo_over_80(3500);
    let got = eventually(
        "the restarted member caught up",
        Duration::from_secs(30),
        || {
            let fep = fep.clone();
            let want = want.clone();
            async move {
                let out = nod_cmd(
                    &[
                        "--endpoints",
                        &fep,
                        "-w",
                        "json",
                        "query",
                        &format!("{text} SERIALIZABLE"),
                    ],
                    &[],
                );
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                (keys_of(&v) == want).then_some(v)
            }
        },
    )
    .await;
    assert!(got["plan"].as_str().unwrap().contains("serializable"));
    nod_cmd_ok(
        &[
            "--endpoints",
            &fep,
            "index",
            "describe",
            "users_city_age",
            "--verify",
        ],
        &[],
    );

    // COUNT(*), a union of indexed conditions, the table output.
    let counted = query_json(
        &fep,
        "SELECT COUNT(*) FROM '/users/' WHERE city = 'Oslo' OR city = 'Bodø'",
        "best",
    );
    assert_eq!(counted["count"].as_u64(), Some(1400), "{counted}");
    let table = nod_cmd_ok(
        &[
            "--endpoints",
            &fep,
            "-w",
            "table",
            "query",
            "SELECT KEY, city, age FROM '/users/' WHERE city = 'Bodø' AND age = 4 ORDER BY KEY LIMIT 2",
        ],
        &[],
    );
    assert!(
        table.starts_with("KEY") && table.contains("/users/00004 | Bodø") && table.contains("| 4"),
        "{table}"
    );

    // Pages: Oslo's 700 users by age, 100 a page, read through the index
    // in its order. A write between pages does not move them off the first
    // page's revision, and together they are the whole answer there.
    let paged = "SELECT KEY, age FROM '/users/' WHERE city = 'Oslo' AND age >= 0 ORDER BY age DESC";
    let page = |cursor: Option<&str>, text: &str| -> std::process::Output {
        let mut args = vec![
            "--endpoints",
            fep.as_str(),
            "-w",
            "json",
            "query",
            "--page-size",
            "100",
        ];
        if let Some(c) = cursor {
            args.extend(["--cursor", c]);
        }
        args.push(text);
        nod_cmd(&args, &[])
    };
    let json = |out: std::process::Output| -> Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let first = json(page(None, paged));
    let revision = first["revision"].as_i64().unwrap();
    let plan = first["plan"].as_str().unwrap();
    assert!(plan.contains("backward, in the order of age"), "{plan}");
    let first_cursor = first["cursor"].as_str().expect("a cursor").to_string();
    c.put(PutRequest {
        key: b"/users/00000".to_vec(),
        value: br#"{"name": "user 0", "city": "Oslo", "age": 5}"#.to_vec(),
        ..Default::default()
    })
    .await
    .expect("a put between pages");
    let mut rows = first["rows"].as_array().unwrap().clone();
    let mut cursor = Some(first_cursor.clone());
    let mut pages = 1;
    while let Some(at) = cursor {
        let next = json(page(Some(&at), paged));
        assert_eq!(next["revision"].as_i64(), Some(revision), "{next}");
        assert!(next["rows"].as_array().unwrap().len() <= 100);
        rows.extend(next["rows"].as_array().unwrap().iter().cloned());
        cursor = next["cursor"].as_str().map(str::to_string);
        pages += 1;
    }
    assert_eq!(pages, 7);
    let whole = query_json(&fep, &format!("{paged} AT REVISION {revision}"), "best");
    assert_eq!(&rows, whole["rows"].as_array().unwrap());
    assert_eq!(rows.len(), 700);
    assert!(
        rows.contains(&serde_json::json!(["/users/00000", 0])),
        "user 0 as the first page's revision had it"
    );
    let all = json(nod_cmd(
        &[
            "--endpoints",
            &fep,
            "-w",
            "json",
            "query",
            "--page-size",
            "64",
            "--all",
            &format!("{paged} AT REVISION {revision}"),
        ],
        &[],
    ));
    assert_eq!(&all["rows"], &whole["rows"]);
    assert!(all["cursor"].is_null());
    // A cursor serves its own query only, and only one Nod gave.
    let other = page(Some(&first_cursor), "SELECT KEY FROM '/users/'");
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("belongs to another query"));
    let forged = page(Some("AAAA"), paged);
    assert_eq!(forged.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&forged.stderr).contains("cursor: not one"));
    assert_eq!(page(Some("!!"), paged).status.code(), Some(2));
    // Its revision compacted, a cursor ends as a Range there would.
    let now = c.status().await.expect("status").header.unwrap().revision;
    c.compact(now).await.expect("compact");
    let gone = page(Some(&first_cursor), paged);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("compacted"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );

    // What a user gets wrong: a readable error and exit 1, nothing changed.
    let bad = nod_cmd(
        &[
            "--endpoints",
            &fep,
            "query",
            "SELECT * FROM '/users/' WHERE age >",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert!(err.contains("line 1, column"), "{err}");
    let again = nod_cmd(&create, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let unknown = nod_cmd(
        &["--endpoints", &fep, "query", "--plan", "index:nope", text],
        &[],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no index named \"nope\""));
    let usage = nod_cmd(
        &[
            "--endpoints",
            &fep,
            "index",
            "create",
            "x",
            "--prefix",
            "/x/",
            "--field",
            "age:int",
        ],
        &[],
    );
    assert_eq!(usage.status.code(), Some(2), "a bad --field is bad usage");
    let future = nod_cmd(
        &[
            "--endpoints",
            &fep,
            "query",
            &format!("{text} AT REVISION 100000000"),
        ],
        &[],
    );
    assert_eq!(future.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&future.stderr).contains("future revision"));

    // Dropped: gone from every member's list; queries scan the prefix.
    nod_cmd_ok(
        &["--endpoints", &fep, "index", "drop", "users_city_age"],
        &[],
    );
    for m in &cluster.members {
        let list = nod_cmd_ok(&["--endpoints", &m.endpoint(), "index", "list"], &[]);
        assert_eq!(list, "", "no index left on {}", m.endpoint());
        let v = query_json(&m.endpoint(), text, "best");
        assert_eq!(keys_of(&v), want);
        assert!(v["plan"].as_str().unwrap().contains("prefix"), "{v}");
    }
}

/// Every member's `nod index describe NAME --verify` line, once it
/// contains `want` (and the entries match the values).
async fn described_everywhere(cluster: &Cluster, name: &str, want: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for m in &cluster.members {
        let ep = m.endpoint();
        let line = eventually(
            &format!("{name} to be {want} on {ep}"),
            Duration::from_secs(30),
            || {
                let ep = ep.clone();
                async move {
                    let out = nod_cmd(
                        &["--endpoints", &ep, "index", "describe", name, "--verify"],
                        &[],
                    );
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    (out.status.success() && text.contains(want)).then_some(text)
                }
            },
        )
        .await;
        lines.push(line);
    }
    lines
}

/// A unique index on a cluster: its build over a duplicate fails on every
/// member, with the keys in its state; once the duplicate is deleted,
/// `nod index rebuild` makes it ready; then a put (etcdctl's, and ours
/// through a follower) or a txn that would duplicate a value is refused
/// with FAILED_PRECONDITION and the holder's key, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_index_refuses_duplicates_and_a_failed_build_is_rebuilt() {
    let cluster = Cluster::start(3);
    let follower = a_follower(&cluster).await;
    let fep = cluster.members[follower].endpoint();
    let mut c = cluster.members[0].client();
    let put = |k: String, email: String| PutRequest {
        key: k.into_bytes(),
        value: format!(r#"{{"email": "{email}"}}"#).into_bytes(),
        ..Default::default()
    };
    for i in 0..300 {
        c.put(put(format!("/acct/{i:05}"), format!("u{i}@x")))
            .await
            .expect("put");
    }
    c.put(put("/acct/dup".into(), "u7@x".into()))
        .await
        .expect("put");

    let create = [
        "--endpoints",
        fep.as_str(),
        "index",
        "create",
        "acct_email",
        "--prefix",
        "/acct/",
        "--field",
        "email:string",
        "--unique",
    ];
    let created = declared(&create).await;
    assert!(created.contains("created: building"), "{created}");
    for line in described_everywhere(&cluster, "acct_email", "failed:").await {
        assert!(
            line.contains(r#"value "u7@x" is held by keys "/acct/00007" and "/acct/dup""#)
                && line.contains("0 missing, 0 extra"),
            "{line}"
        );
    }
    for m in &cluster.members {
        assert_eq!(m.metric(r#"nod_index_failed{index="acct_email"}"#), 1.0);
        assert_eq!(m.metric(r#"nod_index_ready{index="acct_email"}"#), 0.0);
    }
    // Failed: it checks nothing, and a query does not use it.
    c.put(put("/acct/dup2".into(), "u8@x".into()))
        .await
        .expect("a failed index refuses nothing");

    // The duplicates deleted, rebuilt (from a follower): ready everywhere.
    for k in ["/acct/dup", "/acct/dup2"] {
        etcdctl_ok(&fep, &["del", k]);
    }
    let rebuilt = nod_cmd_ok(
        &["--endpoints", &fep, "index", "rebuild", "acct_email"],
        &[],
    );
    assert!(
        rebuilt.contains("index acct_email rebuilding: building (0 of 300 keys"),
        "{rebuilt}"
    );
    described_everywhere(&cluster, "acct_email", "ready (from revision").await;
    for m in &cluster.members {
        assert_eq!(m.metric(r#"nod_index_ready{index="acct_email"}"#), 1.0);
        assert_eq!(m.metric(r#"nod_index_failed{index="acct_email"}"#), 0.0);
        assert_eq!(
            m.metric(r#"nod_index_backfill_remaining_keys{index="acct_email"}"#),
            0.0
        );
    }
    let list = nod_cmd_ok(&["--endpoints", &fep, "index", "list"], &[]);
    assert!(
        list.contains("acct_email, /acct/, email:string unique, ready"),
        "{list}"
    );

    // etcdctl's put of a used value: refused with the holder's key.
    let refused = etcdctl(&fep, &["put", "/acct/new", r#"{"email": "u1@x"}"#], None);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains(
            r#"nod: unique index "acct_email": value "u1@x" is already used by key "/acct/00001""#
        ),
        "{err}"
    );
    // Ours through a follower: FAILED_PRECONDITION, after forwarding.
    let mut f = cluster.members[follower].client();
    match f.put(put("/acct/new".into(), "u2@x".into())).await {
        Err(nod_client::ClientError::Status(s)) => {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}")
        }
        other => panic!("a duplicate put answered {other:?}"),
    }
    // A txn whose second put duplicates: nothing of it is written.
    let txn = TxnRequest {
        success: [("/acct/t1", "t1@x"), ("/acct/t2", "u3@x")]
            .iter()
            .map(|(k, e)| RequestOp {
                request: Some(request_op::Request::RequestPut(put(
                    k.to_string(),
                    e.to_string(),
                ))),
            })
            .collect(),
        ..Default::default()
    };
    let rev = c.status().await.expect("status").header.unwrap().revision;
    assert!(c.txn(txn).await.is_err(), "a duplicating txn is refused");
    assert_eq!(etcdctl_ok(&fep, &["get", "/acct/t1"]), "");
    // A key keeping its value, or moving to a free one, is fine.
    c.put(put("/acct/00004".into(), "u4@x".into()))
        .await
        .expect("the same key again");
    c.put(put("/acct/00005".into(), "five@x".into()))
        .await
        .expect("a free value");
    let after = c.status().await.expect("status").header.unwrap().revision;
    assert_eq!(after, rev + 2, "only the two good puts wrote");
    // A value that is not JSON is skipped, counted, never refused.
    etcdctl_ok(&fep, &["put", "/acct/plain", "not json"]);
    described_everywhere(&cluster, "acct_email", "0 missing, 0 extra").await;
    // Every member applied the three refusals and the skip itself.
    for m in &cluster.members {
        let ep = m.endpoint();
        eventually(
            &format!("the index's counters on {ep}"),
            Duration::from_secs(10),
            || async {
                (m.metric(r#"nod_index_unique_refusals_total{index="acct_email"}"#) == 3.0
                    && m.metric(r#"nod_index_skipped_total{index="acct_email",reason="not_json"}"#)
                        == 1.0)
                    .then_some(())
            },
        )
        .await;
    }
}

fn as_user(endpoint: &str, user: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--endpoints", endpoint, "--user", user];
    all.extend_from_slice(args);
    nod_cmd(&all, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_indexes_are_roots_and_queries_need_read_access() {
    let cluster = Cluster::start(1);
    let ep = cluster.members[0].endpoint();
    let ep = ep.as_str();
    leader(&cluster.endpoints()).await;
    // alice may read and write /a/ only.
    alice_on_a_prefix(ep);
    let root = "root:rootpw";
    let alice = "alice:alicepw";
    for i in 0..20 {
        let put = as_user(ep, alice, &["put", &format!("/a/{i:02}"), &doc(i)]);
        assert!(
            put.status.success(),
            "{}",
            String::from_utf8_lossy(&put.stderr)
        );
    }
    let create = |user: &str, name: &str, prefix: &str| {
        as_user(
            ep,
            user,
            &[
                "index",
                "create",
                name,
                "--prefix",
                prefix,
                "--field",
                "city:string",
            ],
        )
    };
    let denied = create(alice, "a_city", "/a/");
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    eventually("root declares", Duration::from_secs(20), || async move {
        create(root, "a_city", "/a/").status.success().then_some(())
    })
    .await;
    assert!(create(root, "users_city", "/users/").status.success());

    // alice queries her prefix, through the index once it is built.
    let q = "SELECT KEY FROM '/a/' WHERE city = 'Oslo' ORDER BY KEY";
    let rows = eventually(
        "alice's query through the index",
        Duration::from_secs(20),
        || async move {
            let out = as_user(ep, alice, &["-w", "json", "query", q]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            v["plan"]
                .as_str()?
                .contains("read index a_city")
                .then(|| keys_of(&v))
        },
    )
    .await;
    assert_eq!(rows, ["/a/00", "/a/05", "/a/10", "/a/15"]);
    // Not a prefix she may not read, nor a wider one.
    for text in [
        "SELECT KEY FROM '/users/' WHERE city = 'Oslo'",
        "SELECT KEY FROM '/' WHERE city = 'Oslo'",
    ] {
        let out = as_user(ep, alice, &["query", text]);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"));
    }
    // Her listing shows her index only; root's shows both.
    let list = String::from_utf8(as_user(ep, alice, &["index", "list"]).stdout).unwrap();
    assert!(
        list.starts_with("a_city, /a/") && !list.contains("users_city"),
        "{list}"
    );
    let list = String::from_utf8(as_user(ep, root, &["index", "list"]).stdout).unwrap();
    assert_eq!(list.lines().count(), 2, "{list}");
    // Verifying reads every value: root's.
    let verify = as_user(ep, alice, &["index", "describe", "a_city", "--verify"]);
    assert_eq!(verify.status.code(), Some(1));
    let verify = as_user(ep, root, &["index", "describe", "a_city", "--verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains("0 missing, 0 extra"));
    let drop = as_user(ep, alice, &["index", "drop", "a_city"]);
    assert_eq!(drop.status.code(), Some(1), "dropping is root's too");
}
