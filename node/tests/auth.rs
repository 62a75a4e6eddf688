//! etcd-compatible authentication, compared with etcd 3.4 rather than
//! assumed: one scenario of Debian's etcdctl 3.4 (users, roles, prefix and
//! key permissions, auth enable, reads and writes inside and outside the
//! grant, Txn, Watch, password change, revocations, deletions, auth
//! disable) runs against a real etcd 3.4.23 and against a 3-member Nod
//! cluster, and the two transcripts of (stdout, stderr, exit code) must be
//! equal step by step. Only what must differ is normalised: addresses,
//! member ids, versions, sizes, Raft indexes, durations, log timestamps.
//! Key etcd outputs are also asserted directly, so an empty or broken
//! scenario cannot pass by matching itself.
//!
//! A second test drives tokens over gRPC by hand (the `token` metadata):
//! idle tokens expire after `--auth-token-ttl`, used ones slide, garbage
//! tokens are refused, oversized logins fail cleanly, and tokens issued
//! by one Nod member work at another.
//!
//! A JWT test gives etcd 3.4 and Nod the same ES256 key pair
//! (`--auth-token jwt,...`) and compares a session: etcd's claims, tokens
//! forged with another key, an auth change outdating a token, expiry.
//!
//! A fourth covers what is Nod's own: the `nod` CLI's `--user`, the Rust
//! client logging in again when its token expired, the login rate limit,
//! and no password in a member's log or on its disk. A fifth sends random
//! and malformed bytes to every Auth method (no login, then as root):
//! refusals are etcd's errors or decode errors, nothing changes without a
//! login, nothing crashes. A sixth covers leases through a follower with
//! auth on, and a follower that catches up by a snapshot forgetting the
//! tokens an auth change it never applied revoked.
//!
//! Read `scenario` first; `Session` records, `normalize` says what is
//! ignored. Transcripts are printed (shown by cargo when a test fails).

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nod_proto::etcd::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, AuthDisableRequest, AuthRoleListRequest,
    AuthStatusRequest, AuthUserGetRequest, AuthUserListRequest, AuthenticateRequest, PutRequest,
    RangeRequest,
};
use support::{etcdctl_ok, eventually, leader, Cluster, Etcd};
use tonic::transport::Channel;

/// Where the scenario runs, as etcdctl sees it.
struct Target {
    name: &'static str,
    /// Every client endpoint, comma-joined: etcdctl spreads calls over them.
    all: String,
    /// One endpoint that is not the leader's (etcd's only one).
    follower: String,
    /// Every endpoint, to normalise addresses out of the outputs.
    endpoints: Vec<String>,
}

impl Target {
    fn etcd(etcd: &Etcd) -> Target {
        Target {
            name: "etcd 3.4",
            all: etcd.endpoint(),
            follower: etcd.endpoint(),
            endpoints: vec![etcd.endpoint()],
        }
    }

    /// The cluster once it has a leader and every member serves reads.
    async fn nod(cluster: &Cluster) -> Target {
        let endpoints = cluster.endpoints();
        let leader_id = leader(&endpoints).await;
        let mut follower = None;
        for ep in &endpoints {
            let mut c =
                nod_client::Client::connect(std::slice::from_ref(ep), Duration::from_secs(5))
                    .unwrap();
            let status = c.status().await.unwrap();
            if status.header.map(|h| h.member_id) != Some(leader_id) {
                follower = Some(ep.clone());
            }
            eventually(
                "a read on every member",
                Duration::from_secs(20),
                || async {
                    support::etcdctl(ep, &["get", "ready"], None)
                        .status
                        .success()
                        .then_some(())
                },
            )
            .await;
        }
        Target {
            name: "Nod",
            all: endpoints.join(","),
            follower: follower.expect("a member that is not the leader"),
            endpoints,
        }
    }
}

#[derive(Clone, Copy)]
enum At {
    /// `--endpoints` lists every member.
    All,
    /// Only a follower's endpoint.
    Follower,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Exit {
    Code(i32),
    /// The test ended it after it printed what was expected (a watch).
    KilledByTest,
    /// Still running when the test gave up on it.
    StillRunning,
    /// Ended by a signal the test did not send.
    Signal,
}

#[derive(Clone, Debug)]
struct Step {
    label: &'static str,
    command: String,
    stdout: String,
    stderr: String,
    exit: Exit,
}

impl Step {
    fn same_output(&self, other: &Step) -> bool {
        (&self.stdout, &self.stderr, &self.exit) == (&other.stdout, &other.stderr, &other.exit)
    }

    /// The `Error: ...` line etcdctl printed, if any.
    fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("Error: "))
            .unwrap_or("")
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} ({})", self.label, self.command)?;
        writeln!(f, "    exit: {:?}", self.exit)?;
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            writeln!(f, "    {name}:")?;
            for line in text.split_inclusive('\n') {
                writeln!(f, "      {}", line.escape_debug())?;
            }
        }
        Ok(())
    }
}

struct Transcript {
    target: &'static str,
    steps: Vec<Step>,
}

impl Transcript {
    fn step(&self, label: &str) -> &Step {
        self.steps
            .iter()
            .find(|s| s.label == label)
            .unwrap_or_else(|| panic!("no step {label:?} in the {} transcript", self.target))
    }
}

/// Runs etcdctl steps against one target and records what each printed.
struct Session<'a> {
    target: &'a Target,
    steps: Vec<Step>,
}

/// When a long-running etcdctl (watch) is done.
enum Until {
    /// It exits by itself (within 5 s).
    Exit,
    /// It has printed this many lines (within 5 s); then the test kills it.
    Lines(usize),
}

impl<'a> Session<'a> {
    fn new(target: &'a Target) -> Session<'a> {
        Session {
            target,
            steps: Vec::new(),
        }
    }

    /// etcdctl at `at` with the arguments in `line`, split on spaces
    /// (`''` stands for an empty argument).
    fn command(&self, at: At, line: &str) -> Command {
        let endpoints = match at {
            At::All => &self.target.all,
            At::Follower => &self.target.follower,
        };
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(
                line.split_whitespace()
                    .map(|w| if w == "''" { "" } else { w }),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn all(&mut self, label: &'static str, line: &str) {
        self.record(label, At::All, line, None, None);
    }

    fn follower(&mut self, label: &'static str, line: &str) {
        self.record(label, At::Follower, line, None, None);
    }

    fn with_stdin(&mut self, label: &'static str, at: At, line: &str, stdin: &str) {
        self.record(label, at, line, Some(stdin), None);
    }

    /// A step whose stdout is reduced by `shape` to what both systems
    /// must share (member ids, versions and sizes differ).
    fn shaped(&mut self, label: &'static str, at: At, line: &str, shape: fn(&str) -> String) {
        self.record(label, at, line, None, Some(shape));
    }

    fn record(
        &mut self,
        label: &'static str,
        at: At,
        line: &str,
        stdin: Option<&str>,
        shape: Option<fn(&str) -> String>,
    ) {
        let mut cmd = self.command(at, line);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("etcdctl (./scripts/setup installs it)");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = normalize(self.target, &String::from_utf8_lossy(&out.stdout));
        let stdout = match shape {
            Some(shape) => shape(&stdout),
            None => stdout,
        };
        let exit = match out.status.code() {
            Some(c) => Exit::Code(c),
            None => Exit::Signal,
        };
        self.push(Step {
            label,
            command: describe(at, line),
            stdout,
            stderr: normalize(self.target, &String::from_utf8_lossy(&out.stderr)),
            exit,
        });
    }

    /// Starts a long-running etcdctl (a watch), runs `during` (more steps,
    /// recorded first), then waits for `until` and records what it printed.
    fn watch(
        &mut self,
        label: &'static str,
        at: At,
        line: &str,
        until: Until,
        during: impl FnOnce(&mut Session),
    ) {
        let mut child = self
            .command(at, line)
            .stdin(Stdio::null())
            .spawn()
            .expect("etcdctl");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            drain(child.stdout.take().unwrap(), stdout.clone()),
            drain(child.stderr.take().unwrap(), stderr.clone()),
        ];
        during(self);
        let lines = || {
            stdout
                .lock()
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let exit = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code().map_or(Exit::Signal, Exit::Code);
            }
            if let Until::Lines(n) = until {
                if lines() >= n {
                    // Anything more it would print (it should not).
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = child.kill();
                    let _ = child.wait();
                    break Exit::KilledByTest;
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break Exit::StillRunning;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for r in readers {
            r.join().unwrap();
        }
        let text = |b: &Arc<Mutex<Vec<u8>>>| {
            normalize(self.target, &String::from_utf8_lossy(&b.lock().unwrap()))
        };
        let step = Step {
            label,
            command: describe(at, line),
            stdout: text(&stdout),
            stderr: text(&stderr),
            exit,
        };
        self.push(step);
    }

    /// Records a step, and prints it (cargo shows it when the test fails,
    /// also when a later step panics).
    fn push(&mut self, step: Step) {
        assert!(
            self.steps.iter().all(|s| s.label != step.label),
            "two steps are labelled {:?}",
            step.label
        );
        println!("{} [{:02}] {step}", self.target.name, self.steps.len());
        self.steps.push(step);
    }

    /// The store's current revision (not recorded: it differs by design).
    fn revision(&self) -> i64 {
        let out = self
            .command(At::All, "get /a/x -w json --user=root:rootpw")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no revision from {} ({e}): {}{}",
                self.target.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        v["header"]["revision"].as_i64().unwrap()
    }

    fn finish(self) -> Transcript {
        Transcript {
            target: self.target.name,
            steps: self.steps,
        }
    }
}

fn describe(at: At, line: &str) -> String {
    let at = match at {
        At::All => "all members",
        At::Follower => "a follower",
    };
    format!("at {at}: etcdctl {line}")
}

fn drain(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// What must differ between two systems, replaced by placeholders: the
/// target's addresses, and in etcdctl's JSON log lines (the client's retry
/// interceptor prints each failed call with its gRPC code) the timestamp
/// and the client's target id; the duration `endpoint health` measured.
/// Error texts and gRPC codes stay byte-exact.
fn normalize(target: &Target, text: &str) -> String {
    let mut text = text.to_string();
    let mut endpoints = target.endpoints.clone();
    endpoints.sort_by_key(|e| std::cmp::Reverse(e.len()));
    for ep in endpoints {
        text = text.replace(&ep, "<endpoint>");
    }
    text.split('\n')
        .map(|line| {
            if let Ok(serde_json::Value::Object(mut log)) = serde_json::from_str(line) {
                for field in ["ts", "target"] {
                    log.remove(field);
                }
                return serde_json::Value::Object(log).to_string();
            }
            match line.find("took = ") {
                Some(i) => format!("{}took = <duration>", &line[..i]),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `member list`: one line per member, ids, names and URLs out; etcd has
/// one member here, Nod three, so identical lines count once.
fn member_list_shape(stdout: &str) -> String {
    let mut lines: Vec<String> = stdout
        .lines()
        .map(|l| match l.split(", ").collect::<Vec<_>>()[..] {
            [_, status, _, _, _, learner] => {
                format!("<id>, {status}, <name>, <peer urls>, <client urls>, {learner}\n")
            }
            _ => format!("unexpected member line: {l}\n"),
        })
        .collect();
    lines.sort();
    lines.dedup();
    lines.concat()
}

/// `endpoint status` of one endpoint: keeps the learner flag and the
/// errors column.
fn endpoint_status_shape(stdout: &str) -> String {
    stdout
        .lines()
        .map(|l| match l.split(", ").collect::<Vec<_>>()[..] {
            [endpoint, _, _, _, _, learner, _, _, _, errors] => format!(
                "{endpoint}, <id>, <version>, <db size>, <is leader>, {learner}, \
                 <term>, <index>, <applied>, {errors}\n"
            ),
            _ => format!("unexpected status line: {l}\n"),
        })
        .collect()
}

/// The whole etcdctl scenario against one target. alice holds role
/// reader-writer: readwrite on prefix /a/, read on key /ro.
fn scenario(target: &Target) -> Transcript {
    use At::{All, Follower};
    let mut s = Session::new(target);

    // Users, roles and permissions while auth is off.
    s.all("enable without root", "auth enable");
    s.all("add root", "user add root:rootpw");
    s.all("add root again", "user add root:rootpw");
    s.all(
        "add alice",
        "user add alice --new-user-password=alicepw --interactive=false",
    );
    s.all("add a user without password", "user add nopw --no-password");
    s.all("add role", "role add reader-writer");
    s.all("add role again", "role add reader-writer");
    s.all(
        "grant readwrite on prefix /a/",
        "role grant-permission --prefix reader-writer readwrite /a/",
    );
    s.all(
        "grant read on key /ro",
        "role grant-permission reader-writer read /ro",
    );
    s.all(
        "grant to a missing role",
        "role grant-permission nope read /x",
    );
    s.all(
        "grant the role to alice",
        "user grant-role alice reader-writer",
    );
    s.all("grant a missing role", "user grant-role alice nope");
    s.all(
        "grant to a missing user",
        "user grant-role bob reader-writer",
    );
    // Every range form, to see how `role get` prints each.
    s.all("add role wide", "role add wide");
    s.all(
        "grant read from key /k",
        "role grant-permission wide read /k --from-key",
    );
    s.all(
        "grant write on every key",
        "role grant-permission wide write '' --prefix",
    );
    s.all(
        "grant readwrite on [/m, /o)",
        "role grant-permission wide readwrite /m /o",
    );
    s.all("get role wide", "role get wide");
    s.all("get role reader-writer", "role get reader-writer");
    s.all("get user alice", "user get alice");
    s.all("list users", "user list");
    s.all("list roles", "role list");
    s.follower(
        "alice reads while auth is off",
        "get /a/x --user=alice:alicepw",
    );
    // etcdctl adds role root and grants it to root, then retries.
    s.all("enable", "auth enable");
    s.all("enable again as root", "auth enable --user=root:rootpw");

    // alice inside and outside her grant, through a follower.
    let alice = |cmd: &str| format!("{cmd} --user=alice:alicepw");
    s.follower("alice writes inside her prefix", &alice("put /a/x 1"));
    s.follower("alice reads inside her prefix", &alice("get /a/x"));
    s.follower("alice reads her prefix", &alice("get /a/ --prefix"));
    s.follower("alice writes outside", &alice("put /b/x 1"));
    s.follower("alice reads outside", &alice("get /b/x"));
    s.follower(
        "alice reads a range wider than her prefix",
        &alice("get /a --prefix"),
    );
    s.follower("alice reads every key", &alice("get '' --prefix"));
    s.follower("alice deletes outside", &alice("del /b/ --prefix"));
    s.follower("alice writes her read-only key", &alice("put /ro 1"));
    s.all(
        "root writes the read-only key",
        "put /ro v --user=root:rootpw",
    );
    s.follower("alice reads her read-only key", &alice("get /ro"));
    s.follower("read with no user", "get /a/x");
    s.all("write with no user", "put /a/x 2");
    // Failed logins at one endpoint: etcdctl tries each endpoint in turn
    // (and logs each try), so the count would show the topology.
    s.follower("alice with a wrong password", "get /a/x --user=alice:wrong");
    s.follower("an unknown user", "get /a/x --user=bob:pw");
    s.follower(
        "a password for a user without one",
        "get /a/x --user=nopw:x",
    );
    s.all("root writes anywhere", "put /b/x 1 --user=root:rootpw");
    s.follower("root reads anywhere", "get /b/x --user=root:rootpw");
    s.all("root deletes anywhere", "del /b/x --user=root:rootpw");

    // Cluster calls and admin calls as alice and as root.
    let members = member_list_shape;
    s.shaped("alice lists members", All, &alice("member list"), members);
    s.shaped(
        "root lists members",
        All,
        "member list --user=root:rootpw",
        members,
    );
    let status = endpoint_status_shape;
    s.shaped(
        "alice asks endpoint status",
        Follower,
        &alice("endpoint status"),
        status,
    );
    s.shaped(
        "root asks endpoint status",
        Follower,
        "endpoint status --user=root:rootpw",
        status,
    );
    // etcdctl counts "permission denied" on its probe key as healthy.
    s.follower("alice asks endpoint health", &alice("endpoint health"));
    s.follower("endpoint health with no user", "endpoint health");
    s.follower("alice gets herself", &alice("user get alice"));
    s.follower("alice gets root", &alice("user get root"));
    s.all("alice lists users", &alice("user list"));
    s.all("alice lists roles", &alice("role list"));
    s.follower("alice gets her role", &alice("role get reader-writer"));
    s.all("alice gets another role", &alice("role get wide"));
    s.all("alice adds a user", &alice("user add eve:evepw"));
    s.all("alice disables auth", &alice("auth disable"));

    // Txn: every compare and every op of both branches is checked. Input:
    // compares, blank line, success ops, blank line, failure ops.
    let txn = alice("txn --interactive=false");
    s.with_stdin(
        "txn writing outside",
        Follower,
        &txn,
        "value(\"/a/x\") = \"1\"\n\nput /b/y 1\n\n\n",
    );
    s.with_stdin(
        "txn comparing outside",
        All,
        &txn,
        "value(\"/b/x\") = \"1\"\n\nput /a/y 1\n\n\n",
    );
    s.with_stdin(
        "txn whose other branch writes outside",
        All,
        &txn,
        "value(\"/a/x\") = \"1\"\n\nget /a/x\n\nput /b/z 1\n\n",
    );
    s.with_stdin(
        "txn inside",
        Follower,
        &txn,
        "value(\"/a/x\") = \"1\"\n\nput /a/y 1\nget /a/x\n\nput /a/z 1\n\n",
    );
    s.with_stdin(
        "txn inside, failure branch",
        All,
        &txn,
        "value(\"/a/x\") = \"nope\"\n\nput /a/y 2\n\nget /a/y\n\n",
    );

    // Watch: refused at create with a cancel; an allowed one sees puts.
    s.watch(
        "alice watches outside",
        Follower,
        &alice("watch /b/ --prefix"),
        Until::Exit,
        |_| {},
    );
    s.watch(
        "watch with no user",
        All,
        "watch /a/ --prefix",
        Until::Exit,
        |_| {},
    );
    // From the next revision, so the puts below are seen however late
    // the watch is created.
    let from_next = format!("watch /a/x --rev={}", s.revision() + 1);
    s.watch(
        "alice watches /a/x",
        Follower,
        &alice(&from_next),
        Until::Lines(6),
        |s| {
            s.all("alice puts the watched key", &alice("put /a/x 5"));
            s.follower("alice puts another key", &alice("put /a/y 5"));
            s.all("root puts the watched key", "put /a/x 6 --user=root:rootpw");
        },
    );

    // A new password: the old one fails at once, at a follower too.
    s.with_stdin(
        "change alice's password",
        All,
        "user passwd alice --interactive=false --user=root:rootpw",
        "newpw\n",
    );
    s.follower("alice with the old password", &alice("get /a/x"));
    let alice = |cmd: &str| format!("{cmd} --user=alice:newpw");
    s.follower("alice with the new password", &alice("get /a/x"));

    // Revocations.
    let root = |cmd: &str| format!("{cmd} --user=root:rootpw");
    s.all(
        "revoke read on /ro",
        &root("role revoke-permission reader-writer /ro"),
    );
    s.follower("alice reads /ro after the revoke", &alice("get /ro"));
    s.all(
        "revoke read on /ro again",
        &root("role revoke-permission reader-writer /ro"),
    );
    s.all(
        "get role reader-writer after the revoke",
        &root("role get reader-writer"),
    );
    s.all(
        "revoke [/m, /o)",
        &root("role revoke-permission wide /m /o"),
    );
    s.all(
        "revoke from key /k",
        &root("role revoke-permission wide /k --from-key"),
    );
    s.all(
        "revoke every key",
        &root("role revoke-permission wide '' --prefix"),
    );
    s.all("get role wide after the revokes", &root("role get wide"));
    s.all(
        "revoke alice's role",
        &root("user revoke-role alice reader-writer"),
    );
    s.all(
        "revoke alice's role again",
        &root("user revoke-role alice reader-writer"),
    );
    s.all("get alice without roles", &root("user get alice"));
    s.follower("alice reads without her role", &alice("get /a/x"));

    // Deletions; root and its role are protected while auth is on.
    s.all("delete alice", &root("user delete alice"));
    s.follower("alice after her deletion", &alice("get /a/x"));
    s.all("delete alice again", &root("user delete alice"));
    s.all(
        "delete role reader-writer",
        &root("role delete reader-writer"),
    );
    s.all("delete role wide", &root("role delete wide"));
    s.all("delete a missing role", &root("role delete reader-writer"));
    s.all("delete root", &root("user delete root"));
    s.all("delete role root", &root("role delete root"));
    s.all("revoke root from root", &root("user revoke-role root root"));
    s.all("list users at the end", &root("user list"));
    s.all("list roles at the end", &root("role list"));
    s.all("get user root", &root("user get root"));
    s.all("get role root", &root("role get root"));

    // Off again.
    s.all("disable with no user", "auth disable");
    s.all("disable as root", &root("auth disable"));
    s.all("disable again", "auth disable");
    s.follower("write with no user after disable", "put /b/z 1");
    s.all("read with no user after disable", "get /b/z");
    s.follower("root reads after disable", &root("get /b/z"));

    s.finish()
}

/// etcd's own answers to the steps everything else hangs on, so the
/// comparison cannot pass on an empty or broken scenario.
fn check_reference(t: &Transcript) {
    let prints = [
        ("add root", "User root created\n"),
        (
            "grant readwrite on prefix /a/",
            "Role reader-writer updated\n",
        ),
        (
            "get role reader-writer",
            "Role reader-writer\nKV Read:\n\t[/a/, /a0) (prefix /a/)\n\t/ro\n\
             KV Write:\n\t[/a/, /a0) (prefix /a/)\n",
        ),
        ("get user alice", "User: alice\nRoles: reader-writer\n"),
        ("list users", "alice\nnopw\nroot\n"),
        ("enable", "Authentication Enabled\n"),
        ("alice writes inside her prefix", "OK\n"),
        ("alice reads inside her prefix", "/a/x\n1\n"),
        ("alice reads her read-only key", "/ro\nv\n"),
        ("root writes anywhere", "OK\n"),
        ("txn inside", "SUCCESS\n\nOK\n\n/a/x\n1\n"),
        ("change alice's password", "Password updated\n"),
        ("alice with the new password", "/a/x\n6\n"),
        ("disable as root", "Authentication Disabled\n"),
        ("write with no user after disable", "OK\n"),
    ];
    for (label, stdout) in prints {
        let step = t.step(label);
        assert!(
            step.exit == Exit::Code(0) && step.stdout == stdout && step.error_line().is_empty(),
            "etcd 3.4 did not print {stdout:?} for {label:?}:\n{step}"
        );
    }
    let denied = "Error: etcdserver: permission denied";
    let bad_login = "Error: etcdserver: authentication failed, invalid user ID or password";
    let no_user = "Error: etcdserver: user name is empty";
    let fails = [
        (
            "enable without root",
            1,
            "Error: etcdserver: root user does not exist",
        ),
        (
            "add root again",
            1,
            "Error: etcdserver: user name already exists",
        ),
        ("alice writes outside", 1, denied),
        ("alice reads outside", 1, denied),
        ("alice reads a range wider than her prefix", 1, denied),
        ("alice writes her read-only key", 1, denied),
        ("read with no user", 1, no_user),
        ("write with no user", 1, no_user),
        // A failed login is a bad connection to etcdctl: exit 2.
        ("alice with a wrong password", 2, bad_login),
        ("an unknown user", 2, bad_login),
        ("alice gets root", 1, denied),
        ("txn writing outside", 1, denied),
        ("txn comparing outside", 1, denied),
        ("alice with the old password", 2, bad_login),
        ("alice reads without her role", 1, denied),
        ("alice after her deletion", 2, bad_login),
        (
            "delete root",
            1,
            "Error: etcdserver: invalid auth management",
        ),
    ];
    for (label, code, error) in fails {
        let step = t.step(label);
        assert!(
            step.exit == Exit::Code(code) && step.stdout.is_empty() && step.error_line() == error,
            "etcd 3.4 did not fail {label:?} with exit {code} and {error:?}:\n{step}"
        );
    }
    // The events of the allowed watch, in order.
    let watch = t.step("alice watches /a/x");
    assert_eq!(watch.stdout, "PUT\n/a/x\n5\nPUT\n/a/x\n6\n", "{watch}");
    assert_eq!(watch.exit, Exit::KilledByTest, "{watch}");
    // A refused watch: the cancel reason, then etcdctl gives up.
    let watch = t.step("alice watches outside");
    assert_eq!(
        watch.stderr,
        "watch was canceled (rpc error: code = PermissionDenied desc = \
         etcdserver: permission denied)\nError: watch is canceled by the server\n",
        "{watch}"
    );
    assert_eq!(watch.stdout, "", "{watch}");
}

/// Equal step by step; on the first difference, both sides of it.
fn assert_same(reference: &Transcript, other: &Transcript) {
    assert_eq!(reference.steps.len(), other.steps.len());
    for (r, o) in reference.steps.iter().zip(&other.steps) {
        assert_eq!(r.label, o.label);
        assert!(
            r.same_output(o),
            "{} differs from {} first at step {:?}\n--- {} ---\n{r}--- {} ---\n{o}\
             (every step of both is printed above)",
            other.target,
            reference.target,
            r.label,
            reference.target,
            other.target,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_auth_matches_etcd() {
    let etcd = Etcd::start(&[]);
    etcd.wait_ready();
    let reference = scenario(&Target::etcd(&etcd));
    check_reference(&reference);
    drop(etcd);

    let cluster = Cluster::start_with(3, &["--bcrypt-cost", "4"]);
    let target = Target::nod(&cluster).await;
    let nod = scenario(&target);
    assert_same(&reference, &nod);
}

// ---- tokens over gRPC ----

/// One gRPC call's outcome: `ok`, or the status code and message.
#[derive(Debug)]
struct Call {
    label: &'static str,
    outcome: String,
}

fn outcome<T>(r: &Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

async fn channel(endpoint: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().unwrap());
    }
    r
}

async fn authenticate(
    channel: &Channel,
    name: &str,
    password: &str,
) -> Result<String, tonic::Status> {
    AuthClient::new(channel.clone())
        .max_decoding_message_size(usize::MAX)
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().token)
}

async fn range(channel: &Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    KvClient::new(channel.clone())
        .range(with_token(
            RangeRequest {
                key: b"/t/k".to_vec(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(drop)
}

/// `<16 letters>.<digits>`, etcd's simple token, as a shape to compare.
fn token_shape(token: &str) -> String {
    match token.split_once('.') {
        Some((random, index))
            if random.len() == 16
                && random.bytes().all(|b| b.is_ascii_alphabetic())
                && !index.is_empty()
                && index.bytes().all(|b| b.is_ascii_digit()) =>
        {
            "<16 letters>.<index>".into()
        }
        _ => format!("unexpected token {token:?}"),
    }
}

struct Tokens {
    calls: Vec<Call>,
    /// The answer to a 2 MiB login, not compared (the gRPC libraries
    /// word their size errors differently) but checked on each side.
    oversized: Result<String, tonic::Status>,
}

/// Logins, token use at three endpoints (three members of Nod, etcd's
/// one three times), expiry after 2 s idle, sliding on use, bad tokens.
async fn token_scenario(target: &'static str, endpoints: &[String; 3]) -> Tokens {
    let all = endpoints.join(",");
    for line in [
        "user add root:rootpw",
        "user add bob:bobpw",
        "role add t",
        "role grant-permission --prefix t readwrite /t/",
        "user grant-role bob t",
        "auth enable",
    ] {
        etcdctl_ok(&all, &line.split_whitespace().collect::<Vec<_>>());
    }
    let [a, b, c] = [
        channel(&endpoints[0]).await,
        channel(&endpoints[1]).await,
        channel(&endpoints[2]).await,
    ];
    let mut calls = Vec::new();
    let mut note = |label: &'static str, outcome: String| {
        println!("{target}: {label}: {outcome}");
        calls.push(Call { label, outcome });
    };

    note("range without a token", outcome(&range(&b, None).await));
    note(
        "login with a wrong password",
        outcome(&authenticate(&a, "bob", "wrong").await),
    );
    note(
        "login as an unknown user",
        outcome(&authenticate(&a, "nobody", "bobpw").await),
    );
    let idle = authenticate(&a, "bob", "bobpw").await;
    note("login", outcome(&idle));
    let idle = idle.unwrap_or_default();
    note("token shape", token_shape(&idle));
    let put = KvClient::new(b.clone())
        .put(with_token(
            PutRequest {
                key: b"/t/k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            },
            Some(&idle),
        ))
        .await;
    note("put with the token at another member", outcome(&put));
    note(
        "range with the token at a third member",
        outcome(&range(&c, Some(&idle)).await),
    );

    // `idle` rests from here; `used` is used every second at one member
    // (each etcd member times its tokens out on its own).
    let used = authenticate(&a, "bob", "bobpw").await;
    note("second login", outcome(&used));
    let used = used.unwrap_or_default();
    let mut kept = Vec::new();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        kept.push(outcome(&range(&b, Some(&used)).await));
    }
    note("token used every second for 4 s", kept.join(", "));
    note(
        "idle token after 4 s (TTL 2 s)",
        outcome(&range(&b, Some(&idle)).await),
    );
    note(
        "used token after 4 s (TTL 2 s)",
        outcome(&range(&b, Some(&used)).await),
    );
    note("garbage token", outcome(&range(&b, Some("garbage")).await));
    note(
        "well-formed unknown token",
        outcome(&range(&b, Some("abcdefghijklmnop.1")).await),
    );
    note(
        "login with a 1 MiB password",
        outcome(&authenticate(&a, "bob", &"p".repeat(1 << 20)).await),
    );
    let oversized = authenticate(&a, &"n".repeat(2 << 20), "bobpw").await;
    println!(
        "{target}: login with a 2 MiB name (not compared): {}",
        outcome(&oversized)
    );
    let after = authenticate(&a, "bob", "bobpw").await;
    note("login after the oversized one", outcome(&after));
    let after = after.unwrap_or_default();
    note(
        "range after the oversized login",
        outcome(&range(&a, Some(&after)).await),
    );

    let disable = |token: String| {
        let a = a.clone();
        async move {
            AuthClient::new(a)
                .auth_disable(with_token(AuthDisableRequest {}, Some(&token)))
                .await
        }
    };
    note("disable as bob", outcome(&disable(after.clone()).await));
    let root = authenticate(&c, "root", "rootpw").await;
    note("login as root at a third member", outcome(&root));
    note(
        "disable as root with a token from another member",
        outcome(&disable(root.unwrap_or_default()).await),
    );
    note(
        "range without a token after disable",
        outcome(&range(&b, None).await),
    );
    // Left out: a bad token while auth is off. etcd 3.4 refuses it
    // ("invalid auth token"), 3.5.10+ ignores it; Nod may do either.
    note(
        "login after disable",
        outcome(&authenticate(&b, "bob", "bobpw").await),
    );
    Tokens { calls, oversized }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tokens_match_etcd() {
    let etcd = Etcd::start(&["--auth-token-ttl", "2"]);
    etcd.wait_ready();
    let ep = etcd.endpoint();
    let reference = token_scenario("etcd 3.4", &[ep.clone(), ep.clone(), ep]).await;
    let invalid = "Unauthenticated: etcdserver: invalid auth token";
    let bad_login =
        "InvalidArgument: etcdserver: authentication failed, invalid user ID or password";
    let expected = [
        (
            "range without a token",
            "InvalidArgument: etcdserver: user name is empty",
        ),
        ("login with a wrong password", bad_login),
        ("login as an unknown user", bad_login),
        ("token shape", "<16 letters>.<index>"),
        ("put with the token at another member", "ok"),
        ("token used every second for 4 s", "ok, ok, ok, ok"),
        ("idle token after 4 s (TTL 2 s)", invalid),
        ("used token after 4 s (TTL 2 s)", "ok"),
        ("garbage token", invalid),
        ("well-formed unknown token", invalid),
        ("login with a 1 MiB password", bad_login),
        ("range after the oversized login", "ok"),
        (
            "disable as bob",
            "PermissionDenied: etcdserver: permission denied",
        ),
        ("disable as root with a token from another member", "ok"),
        (
            "login after disable",
            "FailedPrecondition: etcdserver: authentication is not enabled",
        ),
    ];
    for (label, want) in expected {
        let call = reference.calls.iter().find(|c| c.label == label).unwrap();
        assert_eq!(
            call.outcome, want,
            "etcd 3.4 answered {label:?} unexpectedly"
        );
    }
    let etcd_oversized = reference
        .oversized
        .as_ref()
        .expect_err("a 2 MiB login must fail");
    assert_eq!(etcd_oversized.code(), tonic::Code::ResourceExhausted);
    drop(etcd);

    let cluster = Cluster::start_with(3, &["--bcrypt-cost", "4", "--auth-token-ttl", "2"]);
    let target = Target::nod(&cluster).await;
    let eps: [String; 3] = target.endpoints.clone().try_into().unwrap();
    let nod = token_scenario("Nod", &eps).await;
    for (r, n) in reference.calls.iter().zip(&nod.calls) {
        assert_eq!(
            (r.label, &r.outcome),
            (n.label, &n.outcome),
            "Nod differs from etcd 3.4 (transcripts printed above)"
        );
    }
    assert_eq!(reference.calls.len(), nod.calls.len());
    // Nod may word its size error as its gRPC library does, but it must
    // be a clear refusal, and the member must go on answering (checked
    // above: the next login and range succeed).
    let nod_oversized = nod.oversized.as_ref().expect_err("a 2 MiB login must fail");
    assert!(
        matches!(
            nod_oversized.code(),
            tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument | tonic::Code::OutOfRange
        ) && !nod_oversized.message().is_empty(),
        "unclear refusal of a 2 MiB login: {nod_oversized:?}"
    );
}

/// The `nod` CLI with etcd's flags.
fn nod_cli(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nod"))
        .args(["--endpoints", endpoint, "--command-timeout", "5"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nod")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A one-member cluster with `extra` flags, once it has a leader, and its
/// endpoint.
async fn one_member(extra: &[&str]) -> (Cluster, String) {
    let cluster = Cluster::start_with(1, extra);
    let ep = cluster.endpoints()[0].clone();
    eventually("a leader", Duration::from_secs(20), || async {
        (leader(std::slice::from_ref(&ep)).await != 0).then_some(())
    })
    .await;
    (cluster, ep)
}

/// Nod's own clients log in as etcd's do, a token that expired is
/// replaced without the caller noticing, and guessing passwords is slowed
/// down (etcd has no limit: this is Nod's own rule, so etcd is not asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nod_clients_log_in_and_password_guessing_is_limited() {
    let (cluster, ep) = one_member(&["--bcrypt-cost", "4", "--auth-token-ttl", "1"]).await;
    support::alice_on_a_prefix(&ep);

    // The CLI: --user name:password, etcd's errors, exit 1.
    let ok = nod_cli(&ep, &["--user", "alice:alicepw", "put", "/a/x", "1"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let got = nod_cli(
        &ep,
        &["--user", "alice", "--password", "alicepw", "get", "/a/x"],
    );
    assert!(got.status.success(), "{}", stderr(&got));
    assert!(String::from_utf8_lossy(&got.stdout).contains('1'));
    for (args, error) in [
        (
            &["--user", "alice:alicepw", "put", "/b/x", "1"][..],
            "Error: etcdserver: permission denied",
        ),
        (
            &["--user", "alice:wrong", "get", "/a/x"],
            "Error: etcdserver: authentication failed, invalid user ID or password",
        ),
        (&["get", "/a/x"], "Error: etcdserver: user name is empty"),
    ] {
        let out = nod_cli(&ep, args);
        assert_eq!(out.status.code(), Some(1), "nod {args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(error),
            "nod {args:?} printed {:?}, not {error:?}",
            stderr(&out)
        );
    }

    // The identity members forward to each other is trusted on the peer
    // port only: a client claiming it on the client port is nobody.
    let forged = {
        let mut r = tonic::Request::new(PutRequest {
            key: b"/b/forged".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        });
        let md = r.metadata_mut();
        md.insert("nod-forwarded", "1".parse().unwrap());
        md.insert("nod-auth-user", "root".parse().unwrap());
        md.insert("nod-auth-revision", "1000".parse().unwrap());
        KvClient::new(channel(&ep).await).put(r).await
    };
    assert_eq!(
        outcome(&forged),
        "InvalidArgument: etcdserver: user name is empty",
        "a forwarded identity claimed on the client port"
    );

    // The Rust client: its token expires (TTL 1 s) while it idles, and the
    // next call logs in again by itself.
    let mut client = nod_client::Client::builder([ep.clone()])
        .user("alice", "alicepw")
        .build()
        .unwrap();
    let put = |k: &str| PutRequest {
        key: k.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    client.put(put("/a/one")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    client
        .put(put("/a/two"))
        .await
        .expect("a write after the token expired logs in again");
    let denied = client.put(put("/b/no")).await.unwrap_err().to_string();
    assert!(denied.contains("permission denied"), "{denied}");

    // Guessing: five wrong passwords are checked, then the user must wait,
    // even with the right password; after the wait it works again.
    let ch = channel(&ep).await;
    for i in 0..5 {
        let e = authenticate(&ch, "alice", &format!("guess{i}"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "guess {i}: {e}");
    }
    let limited = authenticate(&ch, "alice", "alicepw").await.unwrap_err();
    assert_eq!(
        (limited.code(), limited.message()),
        (
            tonic::Code::ResourceExhausted,
            "etcdserver: too many requests"
        )
    );
    let other = authenticate(&ch, "root", "rootpw").await;
    assert!(other.is_ok(), "other users are not limited: {other:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    authenticate(&ch, "alice", "alicepw")
        .await
        .expect("the right password after the wait");
    // Passwords never reach the member's log, nor its disk (the Raft log's
    // RocksDB write-ahead log holds entries uncompressed, so a password in
    // an entry would show there).
    let logs = cluster.members[0].logs();
    for pw in ["alicepw", "rootpw", "guess0"] {
        assert!(!logs.contains(pw), "the member's log shows a password");
    }
    let mut files = vec![cluster.members[0].data_dir.clone()];
    let mut seen = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        seen += bytes.len();
        assert!(
            !bytes.windows(7).any(|w| w == b"alicepw"),
            "{} holds a password",
            path.display()
        );
    }
    assert!(seen > 0, "the data directory was read");
}

/// What a JWT says about itself: its header's `alg` and its claim names.
fn jwt_shape(token: &str) -> String {
    use base64::Engine as _;
    let part = |i: usize| -> serde_json::Value {
        let b64 = token.split('.').nth(i).unwrap_or("");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    };
    let header = part(0);
    let claims = part(1);
    let mut names: Vec<&String> = claims
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    names.sort();
    format!("alg {} claims {names:?}", header["alg"])
}

/// The JWT session both etcd 3.4 and Nod go through, as (label, outcome).
async fn jwt_scenario(endpoint: &str, forged: &dyn Fn(u64) -> String) -> Vec<(String, String)> {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "t"],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "t",
            "readwrite",
            "/t/",
        ],
        &["user", "grant-role", "alice", "t"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(endpoint, args);
    }
    let ch = channel(endpoint).await;
    let mut out = Vec::new();
    let token = authenticate(&ch, "alice", "alicepw").await.unwrap();
    out.push(("token".to_string(), jwt_shape(&token)));
    out.push((
        "range with it".into(),
        outcome(&range(&ch, Some(&token)).await),
    ));
    // Auth revision 5 after the setup above (fresh 1, +4 changes).
    out.push((
        "forged with another key".into(),
        outcome(&range(&ch, Some(&forged(5))).await),
    ));
    out.push(("garbage".into(), outcome(&range(&ch, Some("a.b.c")).await)));
    etcdctl_ok(
        endpoint,
        &["--user", "root:rootpw", "user", "add", "bob:bobpw"],
    );
    out.push((
        "after an auth change".into(),
        outcome(&range(&ch, Some(&token)).await),
    ));
    let fresh = authenticate(&ch, "alice", "alicepw").await.unwrap();
    out.push((
        "a new login".into(),
        outcome(&range(&ch, Some(&fresh)).await),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    out.push((
        "after its ttl".into(),
        outcome(&range(&ch, Some(&fresh)).await),
    ));
    out
}

/// `--auth-token jwt,...` as etcd spells it: the same key pair given to
/// etcd 3.4 and Nod, the same session, the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = dir.path().join(format!("{name}.pub.pem"));
        let private = dir.path().join(format!("{name}.pem"));
        std::fs::write(&public, pair.public_key_pem()).unwrap();
        std::fs::write(&private, pair.serialize_pem()).unwrap();
        (public, private)
    };
    let (public, private) = write("cluster");
    let (other_public, other_private) = write("other");
    let spec = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=2s",
        public.display(),
        private.display()
    );
    let forger = nod::auth::jwt::JwtTokens::load(&nod::auth::jwt::JwtOptions {
        public_key: Some(other_public),
        private_key: Some(other_private),
        sign_method: "ES256".into(),
        ttl: Duration::from_secs(60),
    })
    .unwrap();
    let forged = |revision: u64| {
        forger
            .sign("root", revision, nod::server::node::unix_now())
            .unwrap()
    };

    let etcd = Etcd::start(&["--auth-token", &spec]);
    etcd.wait_ready();
    let reference = jwt_scenario(&etcd.endpoint(), &forged).await;
    println!("etcd 3.4: {reference:#?}");
    let invalid = "Unauthenticated: etcdserver: invalid auth token";
    let expected = [
        (
            "token",
            "alg \"ES256\" claims [\"exp\", \"revision\", \"username\"]",
        ),
        ("range with it", "ok"),
        ("forged with another key", invalid),
        ("garbage", invalid),
        (
            "after an auth change",
            "InvalidArgument: etcdserver: revision of auth store is old",
        ),
        ("a new login", "ok"),
        ("after its ttl", invalid),
    ];
    let got: Vec<(&str, &str)> = reference
        .iter()
        .map(|(l, o)| (l.as_str(), o.as_str()))
        .collect();
    assert_eq!(got, expected, "etcd 3.4's answers");
    drop(etcd);

    let cluster = Cluster::start_with(1, &["--bcrypt-cost", "4", "--auth-token", &spec]);
    let ep = cluster.endpoints()[0].clone();
    eventually("a leader", Duration::from_secs(20), || async {
        (leader(std::slice::from_ref(&ep)).await != 0).then_some(())
    })
    .await;
    let nod = jwt_scenario(&ep, &forged).await;
    println!("Nod: {nod:#?}");
    assert_eq!(nod, reference, "Nod answers as etcd 3.4 does");
}

/// Passes request bytes through untouched, so the server decodes what the
/// test sends, however malformed.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; bytes::Buf::remaining(src)];
        bytes::Buf::copy_to_slice(src, &mut v);
        Ok(Some(v))
    }
}

const AUTH_METHODS: [&str; 17] = [
    "AuthEnable",
    "AuthDisable",
    "AuthStatus",
    "Authenticate",
    "UserAdd",
    "UserGet",
    "UserList",
    "UserDelete",
    "UserChangePassword",
    "UserGrantRole",
    "UserRevokeRole",
    "RoleAdd",
    "RoleGet",
    "RoleList",
    "RoleDelete",
    "RoleGrantPermission",
    "RoleRevokePermission",
];

/// A request body for the Auth service: random bytes, a valid encoding
/// with bytes flipped, cut or extended, or fields far over any limit.
fn random_body(rng: &mut u64) -> Vec<u8> {
    use prost::Message as _;
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let name = |n: u64| match n % 4 {
        0 => "root".to_string(),
        1 => "alice".to_string(),
        2 => "x".repeat(70_000),
        _ => String::new(),
    };
    let valid = match next() % 4 {
        0 => nod_proto::etcd::etcdserverpb::AuthUserAddRequest {
            name: name(next()),
            password: name(next()),
            ..Default::default()
        }
        .encode_to_vec(),
        1 => nod_proto::etcd::etcdserverpb::AuthRoleGrantPermissionRequest {
            name: name(next()),
            perm: Some(nod_proto::etcd::authpb::Permission {
                perm_type: (next() % 5) as i32,
                key: vec![0xff; (next() % 3000) as usize],
                range_end: vec![0],
            }),
        }
        .encode_to_vec(),
        2 => AuthenticateRequest {
            name: name(next()),
            password: name(next()),
        }
        .encode_to_vec(),
        _ => Vec::new(),
    };
    match next() % 4 {
        // Pure noise.
        0 => (0..next() % 300).map(|_| next() as u8).collect(),
        // Bytes flipped.
        1 => {
            let mut b = valid;
            for _ in 0..1 + next() % 4 {
                if !b.is_empty() {
                    let at = (next() as usize) % b.len();
                    b[at] ^= next() as u8 | 1;
                }
            }
            b
        }
        // Cut short.
        2 => {
            let mut b = valid;
            let keep = if b.is_empty() {
                0
            } else {
                (next() as usize) % b.len()
            };
            b.truncate(keep);
            b
        }
        // A length prefix claiming far more than follows, or invalid
        // UTF-8 in a string field.
        _ => {
            let mut b = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
            if next() % 2 == 0 {
                b = vec![0x0a, 0x02, 0xc3, 0x28];
            }
            b.extend(valid);
            b
        }
    }
}

/// Random and malformed bytes to every Auth method, with auth on: without
/// a login every call but `Authenticate` and `AuthStatus` is refused with
/// an etcd error or a decode error and changes nothing; as root, nothing
/// panics, no call ends with `Unknown` (a crashed handler), and the member
/// serves throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_to_the_auth_service_are_refused_cleanly() {
    let (cluster, ep) = one_member(&["--bcrypt-cost", "4"]).await;
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "app"],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(&ep, args);
    }
    let ch = channel(&ep).await;
    let root = authenticate(&ch, "root", "rootpw").await.unwrap();
    // Read with the token taken first: the random logins below may lock
    // root's password out for a while (the login rate limit).
    let listing = || {
        let mut a = AuthClient::new(ch.clone());
        let root = root.clone();
        async move {
            let users = a
                .user_list(with_token(AuthUserListRequest {}, Some(&root)))
                .await
                .unwrap()
                .into_inner()
                .users;
            let roles = a
                .role_list(with_token(AuthRoleListRequest {}, Some(&root)))
                .await
                .unwrap()
                .into_inner()
                .roles;
            let alice = a
                .user_get(with_token(
                    AuthUserGetRequest {
                        name: "alice".into(),
                    },
                    Some(&root),
                ))
                .await
                .unwrap()
                .into_inner()
                .roles;
            let status = a
                .auth_status(with_token(AuthStatusRequest {}, Some(&root)))
                .await
                .unwrap()
                .into_inner();
            (users, roles, alice, status.enabled, status.auth_revision)
        }
    };
    let before = listing().await;
    assert!(before.3, "auth is on");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = seed;
    let call = |method: &'static str, body: Vec<u8>, token: Option<String>| {
        let ch = ch.clone();
        async move {
            let mut g = tonic::client::Grpc::new(ch);
            g.ready().await.expect("channel ready");
            let path = tonic::codegen::http::uri::PathAndQuery::from_maybe_shared(format!(
                "/etcdserverpb.Auth/{method}"
            ))
            .unwrap();
            g.unary(with_token(body, token.as_deref()), path, Raw).await
        }
    };
    let clean = |method: &str, body: &[u8], s: &tonic::Status| {
        let m = s.message();
        assert_ne!(
            s.code(),
            tonic::Code::Unknown,
            "{method} {body:02x?}: {m} (seed {seed})"
        );
        assert!(
            m.starts_with("etcdserver: ")
                || m.starts_with("auth: ")
                || m.starts_with("failed to decode Protobuf message"),
            "{method} {body:02x?}: {:?} {m:?} is no etcd error (seed {seed})",
            s.code()
        );
    };
    // How many bodies decoded and reached the checks (an etcd error), so
    // the run cannot pass on decode errors alone.
    let mut checked = 0;
    for round in 0..30 {
        for method in AUTH_METHODS {
            let body = random_body(&mut rng);
            match call(method, body.clone(), None).await {
                Ok(_) => assert!(
                    matches!(method, "AuthStatus" | "Authenticate"),
                    "round {round}: {method} {body:02x?} accepted without a login (seed {seed})"
                ),
                Err(s) => {
                    clean(method, &body, &s);
                    checked += usize::from(s.message().starts_with("etcdserver: "));
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} bodies reached the checks");
    assert_eq!(
        listing().await,
        before,
        "anonymous calls changed the auth store"
    );
    // As root, whatever decodes may apply; nothing may crash.
    let mut applied = 0;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        for method in AUTH_METHODS {
            let body = random_body(&mut rng);
            let got = call(method, body.clone(), Some(root.clone())).await;
            applied += usize::from(got.is_ok());
            if let Err(s) = &got {
                let m: String = s.message().chars().take(50).collect();
                *seen.entry(m).or_insert(0) += 1;
            }
            if let Err(s) = got {
                if s.message() != "etcdserver: invalid auth token"
                    && s.message() != "etcdserver: revision of auth store is old"
                {
                    clean(method, &body, &s);
                }
            }
        }
    }
    println!("root's refusals: {seen:#?}");
    println!("{checked} anonymous calls refused by the checks, {applied} of root's accepted");
    // Most bodies do not decode, and a decoded change of root's password
    // or user ends its token; some must still have applied.
    assert!(applied > 0, "none of root's calls was accepted");
    let mut c = cluster.members[0].client();
    c.status().await.expect("the member still serves");
    let logs = cluster.members[0].logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

/// Leases with auth on, through a follower (which forwards grants,
/// keep-alives and revokes to the leader with the caller's identity): a
/// logged-in user keeps a lease and its key alive past the TTL and revokes
/// it; without a login each is refused. Then a follower that catches up
/// by a snapshot forgets its simple tokens: a token revoked (by a password
/// change) while the follower was stopped is refused there once it
/// resumes, where it would otherwise still name its user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_through_a_follower_and_tokens_after_a_snapshot() {
    use nod_proto::etcd::etcdserverpb::{
        lease_client::LeaseClient, AuthUserChangePasswordRequest, LeaseGrantRequest,
        LeaseKeepAliveRequest, LeaseRevokeRequest,
    };
    let cluster = Cluster::start_with(3, &["--bcrypt-cost", "4", "--snapshot-count", "50"]);
    let target = Target::nod(&cluster).await;
    support::alice_on_a_prefix(&target.follower);
    let f = channel(&target.follower).await;
    let alice = authenticate(&f, "alice", "alicepw").await.unwrap();
    let mut lease = LeaseClient::new(f.clone());
    let grant = |token: Option<&str>| {
        with_token(
            LeaseGrantRequest {
                ttl: 2,
                ..Default::default()
            },
            token,
        )
    };
    assert_eq!(
        outcome(&lease.lease_grant(grant(None)).await),
        "InvalidArgument: etcdserver: user name is empty"
    );
    let id = lease
        .lease_grant(grant(Some(&alice)))
        .await
        .unwrap()
        .into_inner()
        .id;
    KvClient::new(f.clone())
        .put(with_token(
            PutRequest {
                key: b"/a/leased".to_vec(),
                value: b"v".to_vec(),
                lease: id,
                ..Default::default()
            },
            Some(&alice),
        ))
        .await
        .unwrap();
    let keep_alive = |token: Option<String>| {
        let mut lease = lease.clone();
        async move {
            let once = futures::stream::iter([LeaseKeepAliveRequest { id }]);
            let mut responses = lease
                .lease_keep_alive(with_token(once, token.as_deref()))
                .await?
                .into_inner();
            responses
                .message()
                .await?
                .ok_or_else(|| tonic::Status::unavailable("stream ended"))
        }
    };
    let refused = keep_alive(None).await;
    assert_eq!(
        outcome(&refused),
        "InvalidArgument: etcdserver: user name is empty"
    );
    // Five seconds of keep-alives, every 0.5 s, on a 2 s lease.
    for _ in 0..10 {
        let r = keep_alive(Some(alice.clone())).await.unwrap();
        assert_eq!((r.id, r.ttl), (id, 2), "a refreshed lease");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let get = |token: String| {
        let f = f.clone();
        async move {
            KvClient::new(f)
                .range(with_token(
                    RangeRequest {
                        key: b"/a/leased".to_vec(),
                        ..Default::default()
                    },
                    Some(&token),
                ))
                .await
                .map(|r| r.into_inner().count)
        }
    };
    assert_eq!(
        get(alice.clone()).await.unwrap(),
        1,
        "kept alive past its TTL"
    );
    let revoke = |token: Option<&str>| with_token(LeaseRevokeRequest { id }, token);
    assert_eq!(
        outcome(&lease.lease_revoke(revoke(None)).await),
        "InvalidArgument: etcdserver: user name is empty"
    );
    lease.lease_revoke(revoke(Some(&alice))).await.unwrap();
    assert_eq!(get(alice.clone()).await.unwrap(), 0, "revoked with its key");

    // The follower stops (SIGSTOP: its process and its tokens live on);
    // meanwhile alice's password changes, which ends her tokens, and the
    // log moves past two snapshots, so the follower resumes from one.
    let stopped = cluster
        .members
        .iter()
        .position(|m| m.endpoint() == target.follower)
        .unwrap();
    let pid = cluster.members[stopped].child.as_ref().unwrap().id();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    assert_eq!(
        get(alice.clone()).await.unwrap(),
        0,
        "the token works there"
    );
    signal("-STOP");
    let others: Vec<String> = target
        .endpoints
        .iter()
        .filter(|e| **e != target.follower)
        .cloned()
        .collect();
    let o = channel(&others[0]).await;
    let root = authenticate(&o, "root", "rootpw").await.unwrap();
    // First more entries than the leader sends a silent follower before it
    // waits for answers (256 messages in flight, each already in the
    // follower's socket), then the password change, then enough for two
    // snapshots: the change is compacted away before the follower can ask
    // for it, and reaches it only inside a snapshot.
    let kv = KvClient::new(o.clone());
    let put = |i: usize| {
        let mut kv = kv.clone();
        let root = root.clone();
        async move {
            kv.put(with_token(
                PutRequest {
                    key: format!("/b/{i}").into_bytes(),
                    value: b"x".to_vec(),
                    ..Default::default()
                },
                Some(&root),
            ))
            .await
        }
    };
    for i in 0..400 {
        put(i).await.unwrap();
    }
    AuthClient::new(o.clone())
        .user_change_password(with_token(
            AuthUserChangePasswordRequest {
                name: "alice".into(),
                password: "newpw".into(),
                ..Default::default()
            },
            Some(&root),
        ))
        .await
        .unwrap();
    for i in 400..600 {
        put(i).await.unwrap();
    }
    signal("-CONT");
    let m = &cluster.members[stopped];
    eventually(
        "the follower installs a snapshot",
        Duration::from_secs(30),
        || async { m.logs().contains("installed a snapshot").then_some(()) },
    )
    .await;
    assert_eq!(
        outcome(&get(alice.clone()).await),
        "Unauthenticated: etcdserver: invalid auth token",
        "a token revoked while the follower was stopped"
    );
    let f = channel(&target.follower).await;
    assert!(authenticate(&f, "alice", "alicepw").await.is_err());
    let fresh = authenticate(&f, "alice", "newpw").await.unwrap();
    assert_eq!(get(fresh).await.unwrap(), 0);
}
