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
use support::{alice_on_a_prefix, eventually, leader, nod_cmd, nod_cmd_ok, Cluster};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_are_declared_built_and_queried_on_every_member() {
    let mut cluster = Cluster::start(3);
    let eps = cluster.endpoints();
    let leader_id = leader(&eps).await;
    // A follower's endpoint: its declarations travel to the leader.
    let mut follower = None;
    for (i, m) in cluster.members.iter().enumerate() {
        let s = m.client().status().await.expect("status");
        if s.header.map(|h| h.member_id) != Some(leader_id) {
            follower = Some(i);
        }
    }
    let follower = follower.expect("a follower among three");
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
    let created = eventually(
        "the index declared",
        Duration::from_secs(20),
        || async move {
            let out = nod_cmd(&create, &[]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        },
    )
    .await;
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
