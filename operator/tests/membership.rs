//! The operator's membership steps against real `nod` processes: the
//! planner decides, `NodApi` moves leadership and removes members over
//! gRPC, and a small stand-in for the StatefulSet starts, stops and wipes
//! processes as Kubernetes would start, delete and reclaim pods. No
//! Kubernetes here: what is tested is that the steps, in the planner's
//! order, keep a real cluster whole (members, leader, data).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nod_client::Client;
use nod_operator::nodapi::{ClusterApi, NodApi, Target};
use nod_operator::plan::{plan, Observed, PodView, Step};
use nod_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};

/// The `nod` binary of this build (the workspace's tests build it next to
/// this test's binary), or `$NOD_BIN`.
fn nod_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NOD_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("nod");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release --bin nod`, or run the whole workspace's tests)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One "pod": a nod process with fixed ports and a data dir (its "claim").
struct Pod {
    name: String,
    ordinal: i32,
    client: u16,
    peer: u16,
    metrics: u16,
    gossip: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    image: String,
}

impl Pod {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn ready(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.metrics)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(
            s,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.starts_with("HTTP/1.1 200")
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM, as the kubelet does: the member hands leadership off.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stands in for the StatefulSet: pods `demo-0..replicas`, all with the same
/// arguments (like one pod template), seeded by every pod's gossip address
/// (like the headless Service's DNS name).
struct FakeStatefulSet {
    pods: Vec<Pod>,
    replicas: i32,
    bootstrap_expect: i32,
    image: String,
}

impl FakeStatefulSet {
    fn new(dir: &Path, replicas: i32) -> Self {
        let mut s = FakeStatefulSet {
            pods: Vec::new(),
            replicas: 0,
            bootstrap_expect: replicas,
            image: "nod:1".into(),
        };
        // Ports for every ordinal the test may use, so seeds are stable.
        for i in 0..6 {
            let name = format!("demo-{i}");
            s.pods.push(Pod {
                ordinal: i,
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                gossip: free_port(),
                data: dir.join(&name),
                log: dir.join(format!("{name}.log")),
                name,
                child: None,
                image: String::new(),
            });
        }
        s.scale(replicas);
        s
    }

    fn seeds(&self) -> String {
        self.pods
            .iter()
            .map(|p| format!("127.0.0.1:{}", p.gossip))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start(&mut self, i: usize) {
        let seeds = self.seeds();
        let image = self.image.clone();
        let expect = self.bootstrap_expect.to_string();
        let p = &mut self.pods[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        let child = Command::new(nod_bin())
            .arg("server")
            .args(["--name", &p.name])
            .arg("--data-dir")
            .arg(&p.data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", p.client),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", p.client),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", p.peer),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", p.peer),
            ])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", p.metrics),
            ])
            .args(["--gossip-listen-addr", &format!("127.0.0.1:{}", p.gossip)])
            .args(["--gossip-seeds", &seeds, "--gossip-interval", "100"])
            .args([
                "--bootstrap-expect",
                &expect,
                "--voters",
                "9",
                "--promote-stabilize",
                "500",
            ])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nod server");
        p.child = Some(child);
        p.image = image;
    }

    /// The StatefulSet controller: pods below `replicas` run, the rest stop.
    fn scale(&mut self, replicas: i32) {
        for i in 0..self.pods.len() {
            let want = (i as i32) < replicas;
            if want && self.pods[i].child.is_none() {
                self.start(i);
            } else if !want && self.pods[i].child.is_some() {
                self.pods[i].stop();
            }
        }
        self.replicas = replicas;
    }

    fn pod(&mut self, name: &str) -> usize {
        self.pods.iter().position(|p| p.name == name).unwrap()
    }

    fn endpoints(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| p.child.is_some())
            .map(Pod::endpoint)
            .collect()
    }
}

/// What the controller keeps in status between reconciles.
#[derive(Default)]
struct Memory {
    removed: Vec<String>,
    steps: Vec<Step>,
    /// `status.hibernatedReplicas`.
    hibernated: Option<i32>,
}

async fn observe(sts: &FakeStatefulSet, desired: i32, image: &str, mem: &Memory) -> Observed {
    let health = NodApi::default()
        .health(&Target::plain(sts.endpoints()))
        .await
        .ok();
    Observed {
        name: "demo".into(),
        desired_replicas: desired,
        desired_template_hash: image.into(),
        sts_replicas: Some(sts.replicas),
        pods: sts
            .pods
            .iter()
            .filter(|p| p.child.is_some())
            .map(|p| PodView {
                name: p.name.clone(),
                ordinal: p.ordinal,
                ready: p.ready(),
                template_hash: Some(p.image.clone()),
                terminating: false,
            })
            .collect(),
        claims: sts
            .pods
            .iter()
            .filter(|p| p.data.exists())
            .map(|p| p.name.clone())
            .collect(),
        members: health.map(|h| h.members),
        removed: mem.removed.clone(),
        nameless_seen: vec![],
        hibernated: mem.hibernated,
        hibernation_backup: Default::default(),
    }
}

/// One reconcile: plan, then carry the step out. Returns the step.
async fn reconcile(sts: &mut FakeStatefulSet, desired: i32, image: &str, mem: &mut Memory) -> Step {
    let o = observe(sts, desired, image, mem).await;
    let step = plan(&o);
    let api = NodApi::default();
    match &step {
        Step::ScaleTo(n) => sts.scale(*n),
        Step::MoveLeader { to, .. } => api
            .move_leader(&Target::plain(sts.endpoints()), *to)
            .await
            .unwrap(),
        Step::RemoveMember { name, id } => {
            api.remove_member(&Target::plain(sts.endpoints()), *id)
                .await
                .unwrap();
            mem.removed.push(name.clone());
        }
        Step::DeleteClaim { pod } => {
            let i = sts.pod(pod);
            std::fs::remove_dir_all(&sts.pods[i].data).unwrap();
            mem.removed.retain(|r| r != pod);
        }
        Step::ReplaceMember { pod } => {
            let i = sts.pod(pod);
            sts.pods[i].stop();
            std::fs::remove_dir_all(&sts.pods[i].data).unwrap();
            sts.start(i);
            mem.removed.retain(|r| r != pod);
        }
        Step::RemoveNamelessLearner { id } => {
            api.remove_member(&Target::plain(sts.endpoints()), *id)
                .await
                .unwrap();
        }
        Step::RollPod { pod } => {
            let i = sts.pod(pod);
            sts.pods[i].stop();
            sts.start(i);
        }
        Step::Hibernate { members } => {
            mem.hibernated = Some(*members);
            sts.scale(0);
        }
        Step::BackupBeforeHibernation => panic!("no backups are configured here"),
        Step::Refuse(why) => panic!("refused: {why}"),
        Step::Idle | Step::Wait(_) => {}
    }
    // As the controller: awake once every hibernated member runs and a
    // leader answers.
    if let Some(h) = mem.hibernated {
        if desired > 0 && sts.replicas >= h && o_has_leader(sts).await {
            mem.hibernated = None;
        }
    }
    if !matches!(step, Step::Wait(_)) && mem.steps.last() != Some(&step) {
        mem.steps.push(step.clone());
    }
    step
}

/// Reconciles until the planner is idle; returns the steps taken (waits left out).
async fn converge(
    sts: &mut FakeStatefulSet,
    desired: i32,
    image: &str,
    mem: &mut Memory,
) -> Vec<Step> {
    let start = mem.steps.len();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Step::Idle;
    loop {
        let step = reconcile(sts, desired, image, mem).await;
        if step == Step::Idle {
            return mem.steps[start..]
                .iter()
                .filter(|s| **s != Step::Idle)
                .cloned()
                .collect();
        }
        if Instant::now() > deadline {
            panic!(
                "not converged; last step {step:?}, before {last:?}; steps {:?}",
                &mem.steps[start..]
            );
        }
        last = step;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn o_has_leader(sts: &FakeStatefulSet) -> bool {
    NodApi::default()
        .health(&Target::plain(sts.endpoints()))
        .await
        .is_ok_and(|h| h.members.iter().any(|m| m.leader))
}

async fn members(sts: &FakeStatefulSet) -> Vec<(String, bool)> {
    let h = NodApi::default()
        .health(&Target::plain(sts.endpoints()))
        .await
        .unwrap();
    let mut m: Vec<(String, bool)> = h.members.into_iter().map(|m| (m.name, m.learner)).collect();
    m.sort();
    m
}

async fn all_keys(sts: &FakeStatefulSet) -> usize {
    let mut c = Client::connect(&sts.endpoints(), Duration::from_secs(5)).unwrap();
    let r = c
        .range(RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    r.kvs.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_reverse_and_rolling_upgrade_on_real_members() {
    let dir = tempfile::tempdir().unwrap();
    let mut sts = FakeStatefulSet::new(dir.path(), 5);
    let mut mem = Memory::default();

    // Five pods founded one cluster by themselves.
    assert_eq!(converge(&mut sts, 5, "nod:1", &mut mem).await, vec![]);
    let five: Vec<(String, bool)> = (0..5).map(|i| (format!("demo-{i}"), false)).collect();
    assert_eq!(members(&sts).await, five);
    let mut c = Client::connect(&sts.endpoints(), Duration::from_secs(5)).unwrap();
    for i in 0..20 {
        c.put(PutRequest {
            key: format!("k{i:02}").into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // Make the member that goes first the leader, so the planner has to
    // move leadership away before removing it.
    let h = NodApi::default()
        .health(&Target::plain(sts.endpoints()))
        .await
        .unwrap();
    let top = h.members.iter().find(|m| m.name == "demo-4").unwrap().id;
    NodApi::default()
        .move_leader(&Target::plain(sts.endpoints()), top)
        .await
        .unwrap();

    // 5 -> 3: one member at a time, highest first; each removed from Raft
    // before its pod stops, its claim deleted after.
    let steps = converge(&mut sts, 3, "nod:1", &mut mem).await;
    let kinds: Vec<String> = steps
        .iter()
        .map(|s| match s {
            Step::MoveLeader { from, .. } => format!("move-leader {from}"),
            Step::RemoveMember { name, .. } => format!("remove {name}"),
            Step::ScaleTo(n) => format!("scale {n}"),
            Step::DeleteClaim { pod } => format!("delete-claim {pod}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "move-leader demo-4",
            "remove demo-4",
            "scale 4",
            "delete-claim demo-4",
            "remove demo-3",
            "scale 3",
            "delete-claim demo-3"
        ],
        "{steps:?}"
    );
    let three: Vec<(String, bool)> = (0..3).map(|i| (format!("demo-{i}"), false)).collect();
    assert_eq!(members(&sts).await, three);
    assert_eq!(all_keys(&sts).await, 20);
    assert!(!sts.pods[3].data.exists() && !sts.pods[4].data.exists());

    // 3 -> 2, reversed halfway: after demo-2 left Raft (its pod still
    // running) the spec goes back to 3. The pod cannot rejoin with its old
    // identity: it is replaced (claim wiped) and joins as a new member.
    let old_id = NodApi::default()
        .health(&Target::plain(sts.endpoints()))
        .await
        .unwrap()
        .members
        .iter()
        .find(|m| m.name == "demo-2")
        .unwrap()
        .id;
    loop {
        let step = reconcile(&mut sts, 2, "nod:1", &mut mem).await;
        if matches!(step, Step::RemoveMember { .. }) {
            break;
        }
        assert!(
            matches!(step, Step::MoveLeader { .. } | Step::Wait(_)),
            "{step:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let steps = converge(&mut sts, 3, "nod:1", &mut mem).await;
    assert_eq!(
        steps.first(),
        Some(&Step::ReplaceMember {
            pod: "demo-2".into()
        }),
        "{steps:?}"
    );
    assert_eq!(members(&sts).await, three);
    let h = NodApi::default()
        .health(&Target::plain(sts.endpoints()))
        .await
        .unwrap();
    let new_id = h.members.iter().find(|m| m.name == "demo-2").unwrap().id;
    assert_ne!(new_id, old_id, "demo-2 came back as a new member");
    assert_eq!(all_keys(&sts).await, 20);

    // Upgrade: every pod restarted once, followers first, the leader last
    // after handing leadership over; the cluster keeps its data.
    let leader_before = h.members.iter().find(|m| m.leader).unwrap().name.clone();
    sts.image = "nod:2".into();
    let steps = converge(&mut sts, 3, "nod:2", &mut mem).await;
    let rolled: Vec<&String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::RollPod { pod } => Some(pod),
            _ => None,
        })
        .collect();
    assert_eq!(rolled.len(), 3, "{steps:?}");
    assert_eq!(
        rolled[2], &leader_before,
        "the leader restarts last: {steps:?}"
    );
    let moved = steps
        .iter()
        .position(|s| matches!(s, Step::MoveLeader { .. }))
        .expect("leadership moved");
    assert!(moved < steps.len() - 1, "{steps:?}");
    assert!(sts.pods[..3].iter().all(|p| p.image == "nod:2"));
    assert_eq!(members(&sts).await, three);
    assert_eq!(all_keys(&sts).await, 20);

    // Hibernate (replicas 0): every member stops at once, none leaves
    // Raft, the data stays; waking to 1 brings all three back first (they
    // need each other for a quorum), then scales down as usual.
    let ids = |h: &nod_operator::nodapi::Health| {
        let mut v: Vec<(String, u64)> = h.members.iter().map(|m| (m.name.clone(), m.id)).collect();
        v.sort();
        v
    };
    let before = ids(&NodApi::default()
        .health(&Target::plain(sts.endpoints()))
        .await
        .unwrap());
    let steps = converge(&mut sts, 0, "nod:2", &mut mem).await;
    assert_eq!(steps, [Step::Hibernate { members: 3 }]);
    assert!(sts.pods.iter().all(|p| p.child.is_none()));
    assert!(
        sts.pods[..3].iter().all(|p| p.data.exists()),
        "the claims stay"
    );
    let steps = converge(&mut sts, 3, "nod:2", &mut mem).await;
    assert_eq!(steps, [Step::ScaleTo(3)]);
    assert_eq!(mem.hibernated, None);
    let after = ids(&NodApi::default()
        .health(&Target::plain(sts.endpoints()))
        .await
        .unwrap());
    assert_eq!(after, before, "the same members, the same ids");
    assert_eq!(all_keys(&sts).await, 20);
}
