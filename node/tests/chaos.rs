//! The chaos suite: real `nod` processes under faults scheduled from a seed,
//! clients recording every operation, the history checked for
//! linearizability (`nod-lincheck`), and every acknowledged write checked to
//! be present at the end.
//!
//! `cargo test --release --test chaos`; `NOD_CHAOS_SECONDS=N` (default 30),
//! `NOD_CHAOS_SEED=S` (default: from the clock, printed). Each run ends
//! with `chaos: <ops> ops, <faults> faults, <violations> violations, <lost> lost writes`.
//!
//! The default runs twice: plain for `NOD_CHAOS_SECONDS`, then secured for
//! 20 s (or less, if `NOD_CHAOS_SECONDS` is less): client and peer mutual
//! TLS, sealed gossip and authentication on, the clients logged in as a
//! user whose role grants readwrite on their keys and nothing else
//! (`support/secure.rs`). The secure run's line reads `chaos (tls+auth): …`;
//! the checker and the lost-write check are the same. `NOD_CHAOS_SECURE=1`
//! runs only the secured schedule (for `NOD_CHAOS_SECONDS`, the planted
//! run secured too), `NOD_CHAOS_SECURE=0` only the plain one.
//!
//! A sixth client writes JSON documents under `doc/` (an index on
//! `(group, n)` is declared first) and queries them through the index or
//! by a forced prefix scan; every answer, and queries at past revisions
//! after the run, must equal what a `Range` at the answer's revision,
//! filtered in the test, gives (the query oracle). A mismatch counts as a
//! violation.
//!
//! Faults so far are process-level, on loopback: kill -9 and restart,
//! SIGSTOP/SIGCONT pauses, killing the leader, leadership transfer.
//! `NOD_CHAOS_PLANT=stale-reads` makes the clients' reads serializable (served
//! by whichever member they ask, without ReadIndex): the run must then
//! report violations, which shows the checker sees real faults.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nod_client::{prefix_end, Client};
use nod_lincheck::{Op, Operation, Outcome};
use nod_proto::etcd::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use nod_proto::nodquerypb::query_request::Plan;
use nod_proto::nodquerypb::{FieldType, IndexField, IndexSpec, QueryRequest};
use support::network::Network;
use support::proxy::DelayProxy;
use support::secure::{self, Secure};
use support::{leader_of, Cluster, Member};

/// How the secure run's user may reach keys: the three keys the clients
/// contend on (`key0`..`key2`), their append-only `log/` keys, and the
/// documents the query client writes and queries (`doc/`).
const USER_RANGES: [(&[u8], &[u8]); 3] = [(b"key", b"kez"), (b"log/", b"log0"), (b"doc/", b"doc0")];

/// How the harness and its clients reach the members: plain, or over TLS
/// with logins.
#[derive(Clone)]
enum Access {
    Plain,
    Secure(Arc<Secure>),
}

impl Access {
    /// A client as the run's user: the clients' operations and the final
    /// read. Each call and attempt limited to `timeout`.
    fn user(&self, endpoints: &[String], timeout: Duration) -> Client {
        match self {
            Access::Plain => Client::connect(endpoints, timeout).expect("client"),
            Access::Secure(s) => {
                s.client(endpoints, timeout, Some((secure::USER, secure::PASSWORD)))
            }
        }
    }

    /// A client with no login: status and member health need none.
    fn anonymous(&self, endpoints: &[String], timeout: Duration) -> Client {
        match self {
            Access::Plain => Client::connect(endpoints, timeout).expect("client"),
            Access::Secure(s) => s.client(endpoints, timeout, None),
        }
    }

    /// A client as root: moving leadership needs the root role.
    fn root(&self, endpoints: &[String], timeout: Duration) -> Client {
        match self {
            Access::Plain => Client::connect(endpoints, timeout).expect("client"),
            Access::Secure(s) => {
                s.client(endpoints, timeout, Some(("root", secure::ROOT_PASSWORD)))
            }
        }
    }

    /// The leader all `endpoints` agree on.
    async fn leader(&self, endpoints: &[String]) -> u64 {
        leader_of(endpoints, |ep| {
            Some(self.anonymous(&[ep.to_string()], Duration::from_secs(2)))
        })
        .await
    }
}

/// How long the secured run lasts when both runs go (the default).
const SECURE_SECONDS: u64 = 20;

/// A small seeded generator (xorshift64*): the schedule of faults and the
/// clients' choices follow from the seed.
#[derive(Clone)]
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

#[derive(Default)]
struct Record {
    history: Vec<Operation>,
    /// Append-only keys whose put was acknowledged: all must survive.
    acked: Vec<Vec<u8>>,
    /// The query client's answers, checked against the oracle at the end.
    answers: Vec<Answer>,
}

/// One answered query: its filter, the revision it was answered at, and
/// the keys it returned.
#[derive(Clone, Debug)]
struct Answer {
    group: u64,
    min_n: u64,
    plan: Plan,
    revision: i64,
    keys: Vec<String>,
}

/// The documents' prefix, and the index on them.
const DOCS: &str = "doc/";
const DOC_INDEX: &str = "doc_group_n";

fn doc_query(group: u64, min_n: u64, at: Option<i64>) -> String {
    let at = at.map(|r| format!(" AT REVISION {r}")).unwrap_or_default();
    format!("SELECT KEY FROM '{DOCS}' WHERE group = 'g{group}' AND n >= {min_n} ORDER BY KEY{at}")
}

/// Runs a query; its revision and keys (None: an error, under faults).
async fn query(c: &mut Client, text: String, plan: Plan) -> Option<(i64, Vec<String>)> {
    let r = c
        .query_with(QueryRequest {
            text,
            plan: plan as i32,
            index: if plan == Plan::Index {
                DOC_INDEX.into()
            } else {
                String::new()
            },
            ..Default::default()
        })
        .await
        .ok()?;
    let keys = r
        .rows
        .iter()
        .map(|row| serde_json::from_str::<String>(row.cells.first()?).ok())
        .collect::<Option<Vec<String>>>()?;
    Some((r.revision, keys))
}

/// The query client: puts and deletes documents `doc/00`..`doc/39`
/// (`{"group": "gK", "n": N}`, now and then a value that is not JSON or
/// lacks `n`), and between them asks which documents of a group have
/// `n` at least some bound, through the index or a forced
/// prefix scan.
async fn run_query_client(
    mut c: Client,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{DOCS}{:02}", rng.below(40)).into_bytes();
        let failed = match rng.below(10) {
            0 => c
                .delete(DeleteRangeRequest {
                    key,
                    ..Default::default()
                })
                .await
                .is_err(),
            1..=5 => {
                let value = match rng.below(12) {
                    0 => b"not json".to_vec(),
                    1 => format!(r#"{{"group": "g{}"}}"#, rng.below(3)).into_bytes(),
                    _ => format!(
                        r#"{{"group": "g{}", "n": {}}}"#,
                        rng.below(3),
                        rng.below(100)
                    )
                    .into_bytes(),
                };
                c.put(PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await
                .is_err()
            }
            _ => {
                let (group, min_n) = (rng.below(3), rng.below(100));
                let plan = if rng.below(2) == 0 {
                    Plan::Index
                } else {
                    Plan::PrefixScan
                };
                match query(&mut c, doc_query(group, min_n, None), plan).await {
                    Some((revision, keys)) => {
                        record.lock().unwrap().answers.push(Answer {
                            group,
                            min_n,
                            plan,
                            revision,
                            keys,
                        });
                        false
                    }
                    None => true,
                }
            }
        };
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a query must answer: the documents at `revision`, filtered here.
async fn oracle(c: &mut Client, a: &Answer) -> Result<Vec<String>, String> {
    let r = c
        .range(RangeRequest {
            key: DOCS.as_bytes().to_vec(),
            range_end: prefix_end(DOCS.as_bytes()),
            revision: a.revision,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("range at {}: {e}", a.revision))?;
    let group = format!("g{}", a.group);
    Ok(r.kvs
        .iter()
        .filter(|kv| {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&kv.value) else {
                return false;
            };
            v["group"] == group.as_str() && v["n"].as_f64().is_some_and(|n| n >= a.min_n as f64)
        })
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect())
}

/// Checks every answer against the oracle, and queries at past revisions
/// (both plans) after the run; the mismatches.
async fn check_queries(c: &mut Client, answers: &[Answer], rng: &mut Rng) -> (usize, usize) {
    let mut all = answers.to_vec();
    if let Some(last) = answers.iter().map(|a| a.revision).max() {
        for _ in 0..10 {
            let revision = 1 + rng.below(last as u64) as i64;
            let (group, min_n) = (rng.below(3), rng.below(100));
            for plan in [Plan::Index, Plan::PrefixScan] {
                if let Some((at, keys)) =
                    query(c, doc_query(group, min_n, Some(revision)), plan).await
                {
                    all.push(Answer {
                        group,
                        min_n,
                        plan,
                        revision: at,
                        keys,
                    });
                }
            }
        }
    }
    let mut wrong = 0;
    for a in &all {
        match oracle(c, a).await {
            Ok(expected) if expected == a.keys => {}
            Ok(expected) => {
                println!(
                    "query violation: {} ({:?}) at revision {} answered {:?}, the data gives {:?}",
                    doc_query(a.group, a.min_n, None),
                    a.plan,
                    a.revision,
                    a.keys,
                    expected
                );
                wrong += 1;
            }
            Err(e) => {
                println!("query oracle: {e}");
                wrong += 1;
            }
        }
    }
    (all.len(), wrong)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

struct ClientRun {
    id: u64,
    endpoint: String,
    rng: Rng,
    start: Instant,
    stale_reads: bool,
    access: Access,
}

async fn run_client(run: ClientRun, stop: Arc<AtomicBool>, record: Arc<Mutex<Record>>) {
    let ClientRun {
        id,
        endpoint,
        mut rng,
        start,
        stale_reads,
        access,
    } = run;
    let mut c = access.user(&[endpoint], Duration::from_secs(2));
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("key{}", rng.below(3)).into_bytes();
        let value = format!("c{id}-{n}").into_bytes();
        let op = match rng.below(10) {
            0..=3 => Op::Get { key },
            4..=6 => Op::Put { key, value },
            _ => {
                let expected = if rng.below(3) == 0 {
                    None
                } else {
                    Some(
                        format!("c{}-{}", rng.below(4), n.saturating_sub(1 + rng.below(3)))
                            .into_bytes(),
                    )
                };
                Op::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
        };
        let invoke = start.elapsed().as_nanos() as u64;
        let outcome = match &op {
            Op::Get { key } => c
                .range(RangeRequest {
                    key: key.clone(),
                    serializable: stale_reads,
                    ..Default::default()
                })
                .await
                .map(|r| Outcome::Read(r.kvs.first().map(|kv| kv.value.clone())))
                .unwrap_or(Outcome::Unknown),
            Op::Put { key, value } => {
                // The same put also appends a unique key in one txn: the
                // append-only keys are what the lost-write check counts.
                let log_key = format!("log/{id}/{n:08}").into_bytes();
                let txn = TxnRequest {
                    compare: vec![],
                    success: vec![
                        RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: key.clone(),
                                value: value.clone(),
                                ..Default::default()
                            })),
                        },
                        RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: log_key.clone(),
                                value: vec![1],
                                ..Default::default()
                            })),
                        },
                    ],
                    failure: vec![],
                };
                match c.txn(txn).await {
                    Ok(_) => {
                        record.lock().unwrap().acked.push(log_key);
                        Outcome::Done
                    }
                    Err(_) => Outcome::Unknown,
                }
            }
            Op::Cas { key, expected, new } => {
                let cmp = match expected {
                    Some(v) => Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Value as i32,
                        key: key.clone(),
                        range_end: vec![],
                        target_union: Some(compare::TargetUnion::Value(v.clone())),
                    },
                    None => Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Create as i32,
                        key: key.clone(),
                        range_end: vec![],
                        target_union: Some(compare::TargetUnion::CreateRevision(0)),
                    },
                };
                let txn = TxnRequest {
                    compare: vec![cmp],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.clone(),
                            value: new.clone(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                };
                c.txn(txn)
                    .await
                    .map(|r| Outcome::Swapped(r.succeeded))
                    .unwrap_or(Outcome::Unknown)
            }
            Op::Delete { .. } => unreachable!("the chaos clients do not delete"),
        };
        let complete = start.elapsed().as_nanos() as u64;
        let unknown = outcome == Outcome::Unknown;
        record.lock().unwrap().history.push(Operation {
            client: id,
            invoke,
            complete,
            op,
            outcome,
        });
        if unknown {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn leader_index(cluster: &Cluster, access: &Access) -> Option<usize> {
    let live = cluster.endpoints();
    let l = tokio::time::timeout(Duration::from_secs(5), access.leader(&live))
        .await
        .ok()?;
    for (i, m) in cluster.members.iter().enumerate() {
        if m.child.is_none() {
            continue;
        }
        let mut c = access.anonymous(&[m.endpoint()], Duration::from_secs(1));
        if c.status().await.ok()?.header?.member_id == l {
            return Some(i);
        }
    }
    None
}

struct Report {
    ops: usize,
    faults: u64,
    violations: usize,
    lost: usize,
    definite: usize,
}

/// One chaos run of `seconds` from `seed`, secured when `secure`; prints
/// its faults and findings.
async fn run(seconds: u64, seed: u64, stale_reads: bool, secure: bool) -> Report {
    println!(
        "chaos seed {seed}: {}NOD_CHAOS_SEED={seed} NOD_CHAOS_SECONDS={seconds} repeats this schedule{}{}",
        if secure { "NOD_CHAOS_SECURE=1 " } else { "" },
        if stale_reads { " (planted: stale reads)" } else { "" },
        if secure { " (tls+auth)" } else { "" },
    );
    let mut rng = Rng(seed);
    // Each node in its own network namespace when we can (root, iproute2,
    // iptables): then partitions and packet loss join the faults.
    let mut network = match Network::create(3) {
        Ok(n) => Some(n),
        Err(e) => {
            println!("network faults skipped: cannot create namespaces ({e})");
            None
        }
    };
    // Peers reach each node through a delay proxy on the gateway.
    let mut proxies = Vec::new();
    if let Some(net) = network.as_mut() {
        for (_, ip) in &net.nodes {
            let listen = format!("{}:0", net.gateway).parse().expect("address");
            let target = format!("{ip}:2380").parse().expect("address");
            match DelayProxy::start(listen, target).await {
                Ok(p) => proxies.push(p),
                Err(e) => println!("delay proxy failed: {e}"),
            }
        }
        if proxies.len() == net.nodes.len() {
            net.proxy_ports = Some(proxies.iter().map(|p| p.addr.port()).collect());
        } else {
            proxies.clear();
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // Secured: certificates for every address a client or a peer dials
    // (the namespaces' addresses, the proxies on the gateway).
    let access = if secure {
        let mut hosts = Vec::new();
        if let Some(net) = &network {
            hosts.push(net.gateway.clone());
            hosts.extend(net.nodes.iter().map(|(_, ip)| ip.clone()));
        }
        Access::Secure(Arc::new(Secure::create(dir.path(), &hosts)))
    } else {
        Access::Plain
    };
    let scheme = if secure { "https" } else { "http" };
    let members: Vec<Member> = match &network {
        Some(net) => net
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (ns, ip))| {
                let mut m = Member::in_netns(dir.path(), &format!("n{}", i + 1), ns, ip);
                m.advertise_peer = proxies.get(i).map(|p| format!("{scheme}://{}", p.addr));
                m
            })
            .collect(),
        None => (1..=3)
            .map(|i| Member::new(dir.path(), &format!("n{i}")))
            .collect(),
    };
    let mut cluster = Cluster { members, dir };
    for m in &mut cluster.members {
        m.client_scheme = scheme;
        m.peer_scheme = scheme;
    }
    // The nodes find each other by gossip and found the cluster themselves;
    // a wiped node rejoins by itself and autopilot promotes it.
    let seeds: Vec<String> = cluster.members.iter().map(|m| m.gossip_addr()).collect();
    let mut flags: Vec<String> = [
        "--bootstrap-expect",
        "3",
        "--snapshot-count",
        "500",
        "--promote-stabilize",
        "1000",
    ]
    .map(String::from)
    .to_vec();
    if let Access::Secure(s) = &access {
        flags.extend(s.server_flags());
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let launch = |m: &mut Member| m.start_gossip(&seeds, &flags);
    for m in &mut cluster.members {
        launch(m);
    }
    let eps = cluster.endpoints();
    access.leader(&eps).await;
    if let Access::Secure(s) = &access {
        s.enable_auth(&eps[0], &USER_RANGES).await;
        println!(
            "authentication on; the clients log in as {:?} (readwrite on key*, log/ and doc/)",
            secure::USER
        );
    }

    // The documents' index (root's to declare), once the leader has
    // enabled the feature (every member has published it); the prefix is
    // empty, so it is ready at once.
    let mut root = access.root(&eps, Duration::from_secs(10));
    let spec = IndexSpec {
        name: DOC_INDEX.into(),
        prefix: DOCS.as_bytes().to_vec(),
        fields: vec![
            IndexField {
                path: "group".into(),
                r#type: FieldType::String as i32,
            },
            IndexField {
                path: "n".into(),
                r#type: FieldType::Number as i32,
            },
        ],
        unique: false,
    };
    let declared = Instant::now();
    while let Err(e) = root.index_create(spec.clone()).await {
        assert!(
            declared.elapsed() < Duration::from_secs(30),
            "declare the documents' index: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let mut clients = Vec::new();
    clients.push(tokio::spawn(run_query_client(
        access.user(&eps, Duration::from_secs(2)),
        // Its own stream, so the faults and the other clients follow a
        // seed as they did before it existed.
        Rng((seed ^ 0x51ed_2705_a3c1_9f6b) | 1),
        stop.clone(),
        record.clone(),
    )));
    for id in 0..5u64 {
        let run = ClientRun {
            id,
            endpoint: eps[id as usize % eps.len()].clone(),
            rng: Rng(rng.next() | 1),
            start,
            stale_reads,
            access: access.clone(),
        };
        clients.push(tokio::spawn(run_client(run, stop.clone(), record.clone())));
    }

    let mut faults = 0u64;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(rng.millis(500, 2000)).await;
        faults += 1;
        let victim = rng.below(cluster.members.len() as u64) as usize;
        let kinds = if network.is_some() { 9 } else { 5 };
        let kind = rng.below(kinds);
        if kind == kinds - 1 {
            // Replace a member: kill it, wipe its data, start it again. It
            // removes its stale self, joins as a learner and is promoted, with
            // no member command. Only from a settled cluster: 3 healthy
            // voters, each the identity a running process holds now. (A
            // member list of 3 voters alone is not enough: right after a
            // replacement the wiped node's old entry is still a voter, and
            // wiping a second node then loses a quorum's data, which no
            // cluster survives.)
            let mut c = access.anonymous(&cluster.endpoints(), Duration::from_secs(2));
            let healthy: Option<BTreeSet<u64>> = match c.member_health().await {
                Ok(h)
                    if h.members.len() == 3
                        && h.members.iter().all(|m| !m.is_learner && m.healthy) =>
                {
                    Some(h.members.iter().map(|m| m.id).collect())
                }
                _ => None,
            };
            let mut running = BTreeSet::new();
            for m in cluster.members.iter().filter(|m| m.child.is_some()) {
                let id = access
                    .anonymous(&[m.endpoint()], Duration::from_secs(2))
                    .status()
                    .await
                    .ok()
                    .and_then(|s| s.header.map(|h| h.member_id));
                running.extend(id);
            }
            let settled = healthy.is_some_and(|ids| ids == running);
            let m = &mut cluster.members[victim];
            if !settled || m.child.is_none() {
                println!("fault {faults}: (no replacement: membership is changing)");
                continue;
            }
            println!(
                "fault {faults}: replace {} (kill -9, wipe, start empty: it rejoins by itself)",
                m.name
            );
            m.kill();
            let _ = std::fs::remove_dir_all(&m.data_dir);
            tokio::time::sleep(rng.millis(200, 2000)).await;
            launch(m);
            continue;
        }
        match kind {
            0 => {
                println!(
                    "fault {faults}: kill -9 {} and restart",
                    cluster.members[victim].name
                );
                cluster.members[victim].kill();
                tokio::time::sleep(rng.millis(200, 2000)).await;
                launch(&mut cluster.members[victim]);
            }
            1 => {
                let pid = cluster.members[victim].child.as_ref().map(|c| c.id());
                if let Some(pid) = pid {
                    println!(
                        "fault {faults}: pause {} (SIGSTOP)",
                        cluster.members[victim].name
                    );
                    signal(pid, "-STOP");
                    tokio::time::sleep(rng.millis(300, 3000)).await;
                    signal(pid, "-CONT");
                }
            }
            2 => {
                if let Some(l) = leader_index(&cluster, &access).await {
                    println!(
                        "fault {faults}: kill -9 the leader {} and restart",
                        cluster.members[l].name
                    );
                    cluster.members[l].kill();
                    tokio::time::sleep(rng.millis(500, 2500)).await;
                    launch(&mut cluster.members[l]);
                }
            }
            4..=6 if network.is_some() => {
                let net = network.as_ref().expect("checked");
                let kind = rng.below(if proxies.is_empty() { 4 } else { 5 });
                let other = (victim + 1 + rng.below(2) as usize) % cluster.members.len();
                match kind {
                    0 => {
                        println!(
                            "fault {faults}: partition {} | {}",
                            cluster.members[victim].name, cluster.members[other].name
                        );
                        net.partition(victim, other);
                    }
                    1 => {
                        let l = leader_index(&cluster, &access).await.unwrap_or(victim);
                        println!(
                            "fault {faults}: isolate the leader {}",
                            cluster.members[l].name
                        );
                        net.isolate(l);
                    }
                    2 => {
                        println!(
                            "fault {faults}: {} stops hearing {} (one way)",
                            cluster.members[victim].name, cluster.members[other].name
                        );
                        net.drop_from(victim, other);
                    }
                    4 => {
                        let ms = 20 + rng.below(200);
                        println!(
                            "fault {faults}: peers reach {} {ms} ms late",
                            cluster.members[victim].name
                        );
                        proxies[victim].set_delay(Duration::from_millis(ms));
                    }
                    _ => {
                        let p = 0.1 + rng.below(30) as f64 / 100.0;
                        println!(
                            "fault {faults}: {} drops {:.0}% of its packets",
                            cluster.members[victim].name,
                            p * 100.0
                        );
                        net.loss(victim, p);
                    }
                }
                tokio::time::sleep(rng.millis(500, 4000)).await;
                net.heal();
                for p in &proxies {
                    p.set_delay(Duration::ZERO);
                }
            }
            _ => {
                if let Some(l) = leader_index(&cluster, &access).await {
                    let target = (l + 1 + rng.below(2) as usize) % cluster.members.len();
                    let mut c =
                        access.root(&[cluster.members[l].endpoint()], Duration::from_secs(5));
                    let mut t = access.anonymous(
                        &[cluster.members[target].endpoint()],
                        Duration::from_secs(5),
                    );
                    if let (Ok(st), Ok(_)) = (t.status().await, c.status().await) {
                        let id = st.header.unwrap_or_default().member_id;
                        println!(
                            "fault {faults}: move leadership from {} to {}",
                            cluster.members[l].name, cluster.members[target].name
                        );
                        let _ = c.move_leader(id).await;
                    }
                }
            }
        }
    }
    // Heal: no network faults, everything running, a leader, then let the clients run on a little.
    if let Some(net) = &network {
        net.heal();
    }
    for p in &proxies {
        p.set_delay(Duration::ZERO);
    }
    for m in &mut cluster.members {
        if m.child.is_none() {
            launch(m);
        }
    }
    let healed = tokio::time::timeout(Duration::from_secs(30), access.leader(&cluster.endpoints()))
        .await
        .is_ok();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    let record = std::mem::take(&mut *record.lock().unwrap());
    let ops = record.history.len();
    // Violations: one per key whose history has no linearization.
    let mut by_key: BTreeMap<Vec<u8>, Vec<Operation>> = BTreeMap::new();
    for o in &record.history {
        by_key
            .entry(o.op.key().to_vec())
            .or_default()
            .push(o.clone());
    }
    let mut violations = 0;
    for (key, h) in &by_key {
        if let Err(e) = nod_lincheck::validate(h) {
            println!(
                "invalid history for {}: {e:?}",
                String::from_utf8_lossy(key)
            );
            violations += 1;
            continue;
        }
        let verdict = nod_lincheck::check(h);
        if !verdict.is_linearizable() {
            let text = format!("{verdict:?}");
            println!(
                "violation on {}: {}",
                String::from_utf8_lossy(key),
                &text[..text.len().min(600)]
            );
            violations += 1;
        }
    }
    // Lost writes: every acknowledged append-only key must be there.
    let mut c = access.user(&cluster.endpoints(), Duration::from_secs(10));
    let lost = match c
        .range(RangeRequest {
            key: b"log/".to_vec(),
            range_end: prefix_end(b"log/"),
            keys_only: true,
            ..Default::default()
        })
        .await
    {
        Ok(r) => {
            let present: HashSet<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
            record
                .acked
                .iter()
                .filter(|k| !present.contains(*k))
                .count()
        }
        Err(e) => {
            println!("the final read failed: {e}");
            record.acked.len()
        }
    };
    if !healed {
        println!("the cluster did not recover a leader within 30 s of healing");
        violations += 1;
    }
    let (checked, wrong) = check_queries(&mut c, &record.answers, &mut rng).await;
    println!("{checked} query answers checked against the data at their revision, {wrong} wrong");
    violations += wrong;
    if record.answers.len() < 20 {
        println!(
            "too few query answers during the run ({})",
            record.answers.len()
        );
        violations += 1;
    }
    let definite = record
        .history
        .iter()
        .filter(|o| o.outcome != Outcome::Unknown)
        .count();
    println!(
        "{definite} of {ops} operations had a definite outcome; {} acknowledged writes checked",
        record.acked.len()
    );
    if violations + lost > 0 && !stale_reads {
        for m in &cluster.members {
            eprintln!("---- log of {} (tail) ----", m.name);
            let logs = m.logs();
            let tail: Vec<&str> = logs.lines().rev().take(30).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    Report {
        ops,
        faults,
        violations,
        lost,
        definite,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let seconds: u64 = std::env::var("NOD_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("NOD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    let plant = std::env::var("NOD_CHAOS_PLANT").ok();
    // Which runs: plain, secured (TLS + auth), or both (the default; the
    // secured one shorter).
    let (plain, secured) = match std::env::var("NOD_CHAOS_SECURE").ok().as_deref() {
        None | Some("") => (Some(seconds), Some(seconds.min(SECURE_SECONDS))),
        Some("1") => (None, Some(seconds)),
        Some("0") => (Some(seconds), None),
        Some(other) => {
            println!(
                "NOD_CHAOS_SECURE={other:?}: 1 (secured only), 0 (plain only) or unset (both)"
            );
            return ExitCode::FAILURE;
        }
    };
    // First, the checker must see a planted fault against real processes
    // (skip with NOD_CHAOS_PLANT=none; NOD_CHAOS_PLANT=stale-reads runs only
    // it), secured when only the secured run follows.
    if plant.as_deref() != Some("none") {
        let secure = plain.is_none();
        let planted = run(
            if plant.is_some() { seconds } else { 10 },
            seed,
            true,
            secure,
        )
        .await;
        println!(
            "chaos planted stale reads{}: {} violations (must be > 0)",
            if secure { " (tls+auth)" } else { "" },
            planted.violations
        );
        if planted.violations == 0 {
            println!("the checker missed planted stale reads");
            return ExitCode::FAILURE;
        }
        if plant.is_some() {
            return ExitCode::SUCCESS;
        }
    }
    // After a plain run, the secured one follows another schedule (its
    // seed is printed, with the command that repeats it alone).
    let secure_seed = if plain.is_some() {
        Rng(seed).next() | 1
    } else {
        seed
    };
    let mut passed = true;
    for (seconds, secure) in [(plain, false), (secured, true)] {
        let Some(seconds) = seconds else { continue };
        let seed = if secure { secure_seed } else { seed };
        let r = run(seconds, seed, false, secure).await;
        println!(
            "chaos{}: {} ops, {} faults, {} violations, {} lost writes",
            if secure { " (tls+auth)" } else { "" },
            r.ops,
            r.faults,
            r.violations,
            r.lost
        );
        passed &= r.violations == 0 && r.lost == 0 && r.definite > 100;
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
