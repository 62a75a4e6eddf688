//! Real `nod` members on loopback for the client's tests: a static
//! 3-member cluster (`--initial-cluster`), each member a process the test
//! can kill with SIGKILL. The binary is `$NOD_BIN`, or `nod` in the target
//! folder above this test's `deps/` (`cargo build --release --bin nod`), as
//! the bench and operator tests find it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nod_client::Client;

pub fn nod_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NOD_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("nod");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release --bin nod`) or set NOD_BIN",
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

pub struct Member {
    pub name: String,
    pub client: u16,
    peer: u16,
    metrics: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
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

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` members and waits until each is ready.
    pub fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut members: Vec<Member> = (1..=n)
            .map(|i| Member {
                name: format!("n{i}"),
                client: free_port(),
                peer: free_port(),
                metrics: free_port(),
                log: dir.path().join(format!("n{i}.log")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        for m in &mut members {
            let log = std::fs::File::create(&m.log).unwrap();
            let child = Command::new(nod_bin())
                .arg("server")
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(dir.path().join(&m.name))
                .args(["--listen-client-urls", &url(m.client)])
                .args(["--advertise-client-urls", &url(m.client)])
                .args(["--listen-peer-urls", &url(m.peer)])
                .args(["--initial-advertise-peer-urls", &url(m.peer)])
                .args(["--listen-metrics-urls", &url(m.metrics)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "client-tests"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn nod server");
            m.child = Some(child);
        }
        let c = Cluster { members, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.members.iter().all(Member::ready) {
            assert!(Instant::now() < deadline, "cluster not ready in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.endpoints(), Duration::from_secs(5)).unwrap()
    }

    /// SIGKILL: no hand-off, no flush; the kernel closes its sockets.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn index_of_endpoint(&self, url: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.endpoint() == url)
            .unwrap_or_else(|| panic!("{url} is no member's endpoint"))
    }

    /// The index of the member that leads (asked of every live member).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.alive()) {
                let mut c = Client::connect(&[m.endpoint()], Duration::from_secs(1)).unwrap();
                if let Ok(s) = c.status().await {
                    if s.leader != 0 && s.header.map(|h| h.member_id) == Some(s.leader) {
                        return i;
                    }
                }
                let _ = i;
            }
            assert!(Instant::now() < deadline, "no leader in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if std::thread::panicking() {
                eprintln!(
                    "---- log of {} ----\n{}",
                    m.name,
                    std::fs::read_to_string(&m.log)
                        .unwrap_or_default()
                        .lines()
                        .rev()
                        .take(40)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
