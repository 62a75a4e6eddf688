//! Real `nod server` processes on loopback for end-to-end tests: free ports,
//! a data directory each, logs kept in the temp dir (printed when a test
//! fails), and kill -9 on drop so no test leaves a process behind.

#![allow(dead_code)]

pub mod network;
pub mod proxy;
pub mod secure;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nod_client::Client;
use nod_proto::etcd::etcdserverpb::Member as EtcdMember;

/// A port nothing listens on now, never the same twice in one test binary
/// (the kernel may hand a just-released port out again; tests in one binary
/// run concurrently and must not share one).
pub fn free_port() -> u16 {
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

/// A base port for `nod dev` whose ports are all free: member i uses
/// base+100*i .. base+100*i+2, for three members.
pub fn dev_base_port() -> u16 {
    loop {
        let base = 20000 + (free_port() % 20000);
        let free = (0..3u16)
            .flat_map(|i| (0..3u16).map(move |k| base + 100 * i + k))
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
}

/// A plain HTTP/1.1 GET of `path` from `addr` (host:port): the status
/// code and the whole response, headers included.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, response))
}

/// Starts `nod dev --base-port base --data-dir dir` and reads what it
/// prints until a line starting with `last` (stdout is drained after);
/// the child and every `name: value` line, by name.
pub fn start_dev(
    dir: &Path,
    base: u16,
    last: &str,
) -> (Child, std::collections::BTreeMap<String, String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_nod"))
        .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = std::collections::BTreeMap::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("nod dev exited before printing {last:?}"))
            .unwrap();
        let done = line.starts_with(last);
        if let Some((name, value)) = line.split_once(": ") {
            printed.insert(name.to_string(), value.to_string());
        }
        if done {
            break;
        }
    }
    // Keep reading stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, printed)
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub gossip_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// The address the member listens on (loopback unless in a namespace).
    pub host: String,
    /// The network namespace it runs in, if any.
    pub netns: Option<String>,
    /// The peer URL it advertises when others must reach it another way
    /// (through a delay proxy).
    pub advertise_peer: Option<String>,
    /// `https` when the member serves clients over TLS (give the
    /// certificate flags in `extra`).
    pub client_scheme: &'static str,
    /// `https` when the member serves peers over TLS.
    pub peer_scheme: &'static str,
    /// `https` when the member serves metrics over TLS.
    pub metrics_scheme: &'static str,
    /// Extra environment for the process (S3 credentials, for one).
    pub env: Vec<(&'static str, String)>,
}

impl Member {
    pub fn new(root: &Path, name: &str) -> Member {
        Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            gossip_port: free_port(),
            data_dir: root.join(name),
            log: root.join(format!("{name}.log")),
            child: None,
            host: "127.0.0.1".into(),
            netns: None,
            advertise_peer: None,
            client_scheme: "http",
            peer_scheme: "http",
            metrics_scheme: "http",
            env: Vec::new(),
        }
    }

    /// A member in its own network namespace at `host`, on etcd's ports.
    pub fn in_netns(root: &Path, name: &str, netns: &str, host: &str) -> Member {
        Member {
            name: name.to_string(),
            client_port: 2379,
            peer_port: 2380,
            metrics_port: 2381,
            gossip_port: 2382,
            data_dir: root.join(name),
            log: root.join(format!("{name}.log")),
            child: None,
            host: host.to_string(),
            netns: Some(netns.to_string()),
            advertise_peer: None,
            client_scheme: "http",
            peer_scheme: "http",
            metrics_scheme: "http",
            env: Vec::new(),
        }
    }

    /// A member on IPv6 loopback (`::1`).
    pub fn new_v6(root: &Path, name: &str) -> Member {
        let mut m = Member::new(root, name);
        m.host = "::1".into();
        m
    }

    /// host:port, the host in brackets when it is an IPv6 address.
    pub fn host_port(&self, port: u16) -> String {
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }

    pub fn endpoint(&self) -> String {
        self.host_port(self.client_port)
    }

    /// The client URL, with the member's scheme.
    pub fn client_url(&self) -> String {
        format!("{}://{}", self.client_scheme, self.endpoint())
    }

    pub fn peer_url(&self) -> String {
        if let Some(url) = &self.advertise_peer {
            return url.clone();
        }
        format!("{}://{}", self.peer_scheme, self.host_port(self.peer_port))
    }

    pub fn client(&self) -> Client {
        Client::connect(&[self.endpoint()], Duration::from_secs(5)).unwrap()
    }

    pub fn gossip_addr(&self) -> String {
        self.host_port(self.gossip_port)
    }

    /// Starts the process with no member list: it finds its cluster by
    /// gossip from `seeds` (and founds one if `extra` allows it).
    pub fn start_gossip(&mut self, seeds: &[String], extra: &[&str]) {
        let gossip = self.gossip_addr();
        let seeds = seeds.join(",");
        let mut args = vec![
            "--gossip-listen-addr",
            gossip.as_str(),
            "--gossip-seeds",
            seeds.as_str(),
            "--gossip-interval",
            "100",
        ];
        args.extend_from_slice(extra);
        self.spawn(None, &args);
    }

    /// Starts the process with `initial_cluster` and `state` (new/existing).
    pub fn start(&mut self, initial_cluster: &str, state: &str, extra: &[&str]) {
        self.spawn(Some((initial_cluster, state)), extra);
    }

    fn spawn(&mut self, initial: Option<(&str, &str)>, extra: &[&str]) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the server in place: the pid is the server's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_nod")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_nod")),
        };
        let child = cmd
            .arg("server")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url()])
            .args([
                "--listen-peer-urls",
                &format!("{}://{}", self.peer_scheme, self.host_port(self.peer_port)),
            ])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args([
                "--listen-metrics-urls",
                &format!(
                    "{}://{}",
                    self.metrics_scheme,
                    self.host_port(self.metrics_port)
                ),
            ])
            .args(match initial {
                Some((cluster, state)) => vec![
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    state,
                ],
                None => vec![],
            })
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nod server");
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let c = self.child.as_mut().expect("running");
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_kill(c.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{} did not exit within 15 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET `path` on the metrics port: the status code and the whole
    /// response; `None` when nothing answers.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("{}:{}", self.host, self.metrics_port), path)
    }

    /// One metric's value from `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let Some((_, body)) = self.http_get("/metrics") else {
            return 0.0;
        };
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Member {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.logs());
        }
        self.kill();
    }
}

pub struct Cluster {
    // Members drop first: their logs are printed from the temp dir on failure.
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

/// `--initial-cluster` for `members`: name=peerURL,...
pub fn initial_cluster(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

impl Cluster {
    pub fn initial_cluster(&self) -> String {
        initial_cluster(&self.members)
    }

    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Starts `n` founding members with extra server flags.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (1..=n)
            .map(|i| Member::new(dir.path(), &format!("n{i}")))
            .collect();
        let mut c = Cluster { members, dir };
        let initial = c.initial_cluster();
        for m in &mut c.members {
            m.start(&initial, "new", extra);
        }
        c
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.endpoint())
            .collect()
    }
}

/// One etcd 3.4 server (`/usr/bin/etcd`) on free loopback ports with its
/// data in a temp dir, for tests that compare Nod with etcd: bcrypt cost 4
/// (fast logins) and whatever `extra` flags the test gives. Killed on drop;
/// its log is printed when a test fails.
pub struct Etcd {
    pub client_port: u16,
    pub peer_port: u16,
    pub log: PathBuf,
    child: Option<Child>,
    // Dropped after the process is killed (fields drop after `drop`).
    pub dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start(extra: &[&str]) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("e1");
        Etcd::spawn(dir, &data, free_port(), extra)
    }

    /// etcd on a data directory `etcdctl snapshot restore` made for a
    /// member `e1` whose peer URL is `http://127.0.0.1:<peer_port>`.
    pub fn start_restored(data: &Path, peer_port: u16) -> Etcd {
        Etcd::spawn(tempfile::tempdir().unwrap(), data, peer_port, &[])
    }

    fn spawn(dir: tempfile::TempDir, data: &Path, peer_port: u16, extra: &[&str]) -> Etcd {
        let client_port = free_port();
        let log = dir.path().join("etcd.log");
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("/usr/bin/etcd")
            .args(["--name", "e1"])
            .arg("--data-dir")
            .arg(data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e1={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--bcrypt-cost", "4"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start /usr/bin/etcd ({e}); ./scripts/setup installs it")
            });
        Etcd {
            client_port,
            peer_port,
            log,
            child: Some(child),
            dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Waits until a read succeeds (call it before enabling auth).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let ep = self.endpoint();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok()
                && etcdctl(&ep, &["get", "ready"], None).status.success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not ready after 20 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of etcd ----\n{}", self.logs());
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the `nod` command with `args` and extra environment.
pub fn nod_cmd(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nod"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run nod")
}

/// `nod_cmd`, which must succeed; its standard output.
pub fn nod_cmd_ok(args: &[&str], env: &[(&str, String)]) -> String {
    let out = nod_cmd(args, env);
    assert!(
        out.status.success(),
        "nod {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An S3-compatible server on a free loopback port: moto's `moto_server`
/// from the venv `scripts/setup` makes (`moto[server]`), with one bucket.
/// Credentials are moto's test ones; `env()` gives what `nod backup` reads.
/// Killed on drop; its log is printed when a test fails.
pub struct S3Server {
    pub port: u16,
    pub bucket: String,
    pub log: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        let bin =
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/nod/venv/bin/moto_server");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); ./scripts/setup installs it",
                    bin.display()
                )
            });
        let s = S3Server {
            port,
            bucket: bucket.to_string(),
            log,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match s.request("PUT", &format!("/{bucket}")) {
                Some(200) => return s,
                Some(code) => panic!("moto refused the bucket: HTTP {code}"),
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                None => panic!("moto_server did not answer on port {port}:\n{}", s.logs()),
            }
        }
    }

    /// A bodiless request; the response's status code.
    fn request(&self, method: &str, path: &str) -> Option<u16> {
        use std::io::Read;
        let mut t = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        write!(
            t,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut buf = Vec::new();
        t.read_to_end(&mut buf).ok()?;
        let line = String::from_utf8_lossy(&buf);
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Stops the server (a destination that went away).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!("---- last lines of moto's log ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        self.stop();
    }
}

/// The member list and cluster id as `m` sees them (linearizable), if it answers.
pub async fn view(m: &Member) -> Option<(u64, Vec<EtcdMember>)> {
    m.child.as_ref()?;
    let mut c = m.client();
    let r = tokio::time::timeout(Duration::from_secs(3), c.member_list())
        .await
        .ok()?
        .ok()?;
    Some((r.header?.cluster_id, r.members))
}

/// Waits until every running member in `ms` reports one cluster id and a
/// member list of exactly `names`, all voters; returns the id and the list.
pub async fn converge(ms: &[Member], names: &[&str], timeout: Duration) -> (u64, Vec<EtcdMember>) {
    let want: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    eventually(
        &format!("one cluster of voters {names:?}"),
        timeout,
        || async {
            let mut seen = None;
            for m in ms.iter().filter(|m| m.child.is_some()) {
                let (id, members) = view(m).await?;
                let got: BTreeSet<String> = members.iter().map(|m| m.name.clone()).collect();
                if got != want
                    || members.len() != want.len()
                    || members.iter().any(|m| m.is_learner)
                {
                    return None;
                }
                match &seen {
                    None => seen = Some((id, members)),
                    Some((first, _)) if *first != id => {
                        panic!("two clusters: {first:x} and {id:x}")
                    }
                    Some(_) => {}
                }
            }
            seen
        },
    )
    .await
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's member id as `endpoints` report it, once they agree.
/// HashKV at `revision` on whichever member `c` reaches. HashKV is local
/// to a member (as in etcd): a member that has not yet applied `revision`
/// answers OutOfRange ("future revision"), so this waits for it to catch up.
pub async fn hash_kv_at(c: &mut Client, revision: i64) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.hash_kv(revision).await {
            Ok(r) => return r.hash,
            Err(e) if Instant::now() < deadline && e.to_string().contains("future revision") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("HashKV at {revision}: {e}"),
        }
    }
}

pub async fn leader(endpoints: &[String]) -> u64 {
    leader_of(endpoints, |ep| {
        Client::connect(&[ep.to_string()], Duration::from_secs(2)).ok()
    })
    .await
}

/// `leader`, asking each endpoint through a client `connect` makes (TLS,
/// for instance).
pub async fn leader_of(endpoints: &[String], connect: impl Fn(&str) -> Option<Client>) -> u64 {
    let connect = &connect;
    eventually(
        "a leader all members agree on",
        Duration::from_secs(20),
        || async move {
            let mut seen = None;
            for ep in endpoints {
                let mut c = connect(ep)?;
                let s = c.status().await.ok()?;
                if s.leader == 0 || seen.is_some_and(|l| l != s.leader) {
                    return None;
                }
                seen = Some(s.leader);
            }
            seen
        },
    )
    .await
}

/// Runs Debian's etcdctl (v3 API) against `endpoints`, with `stdin` piped in.
pub fn etcdctl(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("etcdctl is not installed ({e}); ./scripts/setup installs Debian's etcd-client")
    });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs etcdctl, asserts success, returns stdout.
pub fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args, None);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Auth as most auth tests want it, through etcdctl at `endpoint`: `root`
/// (password `rootpw`) and `alice` (`alicepw`) with the role `app`
/// granting readwrite on the prefix `/a/`, then auth enabled.
pub fn alice_on_a_prefix(endpoint: &str) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "--prefix",
            "app",
            "readwrite",
            "/a/",
        ],
        &["user", "grant-role", "alice", "app"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(endpoint, args);
    }
}
