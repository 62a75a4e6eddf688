//! 3-member clusters of Nod or etcd as real processes on loopback, with
//! comparable settings (fsync on for both, 100 ms heartbeat, 1 s election,
//! 100k entries between snapshots), plain or with client and peer TLS
//! (`security.rs`), and what the report needs from them: peak RSS, bytes
//! on disk, metrics (always plain HTTP), restart time.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::security::Security;
use crate::workload::Access;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Nod,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Nod => "Nod",
            System::Etcd => "etcd",
        }
    }
}

struct Server {
    name: String,
    client: u16,
    peer: u16,
    metrics: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub system: System,
    bin: PathBuf,
    servers: Vec<Server>,
    /// Client and peer TLS (`https://` URLs and the certificate flags).
    security: Option<Security>,
    /// How `wait_ready` reaches the members: TLS when `security` is set,
    /// never a token (it runs before authentication is enabled).
    access: Access,
}

/// Both systems' space quota: 16 GiB, room for the large database (8 GiB
/// of live data) and its history.
const QUOTA: &str = "17179869184";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Cluster {
    /// Starts 3 members under `root` with the binary `bin`, with client and
    /// peer TLS when `security` is given.
    pub fn start(
        system: System,
        bin: &Path,
        root: &Path,
        security: Option<&Security>,
    ) -> Result<Cluster, String> {
        Cluster::start_members(system, bin, root, 3, security)
    }

    /// Starts `members` members under `root` with the binary `bin` (the
    /// tests run one: the load generator against a real server).
    pub fn start_members(
        system: System,
        bin: &Path,
        root: &Path,
        members: usize,
        security: Option<&Security>,
    ) -> Result<Cluster, String> {
        let access = Access {
            tls: security.map(Security::client_tls).transpose()?,
            token: None,
        };
        let mut servers = Vec::new();
        let mut used = std::collections::HashSet::new();
        for i in 1..=members {
            let mut port = || loop {
                let p = free_port();
                if p != 0 && used.insert(p) {
                    return p;
                }
            };
            let name = format!("{}{i}", if system == System::Nod { "n" } else { "e" });
            servers.push(Server {
                data: root.join(&name),
                log: root.join(format!("{name}.log")),
                name,
                client: port(),
                peer: port(),
                metrics: port(),
                child: None,
            });
        }
        let mut c = Cluster {
            system,
            bin: bin.to_path_buf(),
            servers,
            security: security.cloned(),
            access,
        };
        for i in 0..members {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// `https` with TLS, else `http` (client and peer URLs alike).
    fn scheme(&self) -> &'static str {
        if self.security.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let scheme = self.scheme();
        let initial = self
            .servers
            .iter()
            .map(|s| format!("{}={scheme}://127.0.0.1:{}", s.name, s.peer))
            .collect::<Vec<_>>()
            .join(",");
        let s = &mut self.servers[i];
        let url = |p: u16| format!("{scheme}://127.0.0.1:{p}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(|e| format!("{}: {e}", s.log.display()))?;
        let mut cmd = Command::new(&self.bin);
        if self.system == System::Nod {
            cmd.arg("server");
        }
        cmd.args(["--name", &s.name])
            .arg("--data-dir")
            .arg(&s.data)
            .args(["--listen-client-urls", &url(s.client)])
            .args(["--advertise-client-urls", &url(s.client)])
            .args(["--listen-peer-urls", &url(s.peer)])
            .args(["--initial-advertise-peer-urls", &url(s.peer)])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{}", s.metrics),
            ])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "bench"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--snapshot-count", "100000"]);
        if let Some(sec) = &self.security {
            cmd.args(sec.server_flags());
        }
        if self.system == System::Etcd {
            cmd.args(["--quota-backend-bytes", QUOTA, "--log-level", "error"]);
            cmd.args(["--logger", "zap"]);
        } else {
            cmd.env("RUST_LOG", "warn");
            cmd.args(["--quota-backend-bytes", QUOTA]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        s.child = Some(child);
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.servers
            .iter()
            .map(|s| format!("{scheme}://127.0.0.1:{}", s.client))
            .collect()
    }

    /// How a client reaches the members before authentication is on: TLS
    /// when the cluster has it, no token.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Waits until a linearizable read succeeds on every member (with no
    /// token: before authentication is enabled, or on a plain cluster).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        for ep in self.endpoints() {
            loop {
                if start.elapsed() > timeout {
                    return Err(format!(
                        "{} at {ep} not ready after {timeout:?}; logs in {}",
                        self.system.name(),
                        self.servers[0]
                            .log
                            .parent()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ));
                }
                if let Ok(ch) =
                    crate::workload::connect(std::slice::from_ref(&ep), 1, &self.access).await
                {
                    let mut kv =
                        nod_proto::etcd::etcdserverpb::kv_client::KvClient::new(ch[0].clone());
                    let r = kv
                        .range(nod_proto::etcd::etcdserverpb::RangeRequest {
                            key: b"ready".to_vec(),
                            ..Default::default()
                        })
                        .await;
                    if r.is_ok() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(start.elapsed())
    }

    /// The largest peak resident set of the members, in bytes (VmHWM).
    pub fn peak_rss(&self) -> u64 {
        self.servers
            .iter()
            .filter_map(|s| s.child.as_ref())
            .filter_map(|c| peak_rss_of(c.id()))
            .max()
            .unwrap_or(0)
    }

    /// Resets every member's peak resident set (VmHWM) to its current one
    /// (writing 5 to /proc/<pid>/clear_refs, allowed for our own children).
    pub fn reset_peak_rss(&self) -> Result<(), String> {
        for c in self.servers.iter().filter_map(|s| s.child.as_ref()) {
            let path = format!("/proc/{}/clear_refs", c.id());
            std::fs::write(&path, "5").map_err(|e| format!("{path}: {e}"))?;
        }
        Ok(())
    }

    /// CPU time the members have used so far (user and system, every
    /// thread), in nanoseconds, from /proc/<pid>/stat (in clock ticks of
    /// 10 ms: USER_HZ is 100 on Linux).
    pub fn cpu_ns(&self) -> u64 {
        self.servers
            .iter()
            .filter_map(|s| s.child.as_ref())
            .filter_map(|c| std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok())
            .filter_map(|s| cpu_ticks(&s))
            .sum::<u64>()
            * 10_000_000
    }

    /// Bytes on disk in the first member's data folder.
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.servers[0].data)
    }

    /// The sum over members of one metric (a plain sample line).
    pub fn metric_sum(&self, name: &str) -> f64 {
        use std::io::{Read, Write};
        let mut total = 0.0;
        for s in &self.servers {
            let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", s.metrics)) else {
                continue;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                conn,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut body = String::new();
            let _ = conn.read_to_string(&mut body);
            total += body
                .lines()
                .find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|r| r.strip_prefix(' '))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0);
        }
        total
    }

    /// Deletes every member's data directory (after `stop`).
    pub fn remove_data(&self) {
        for s in &self.servers {
            let _ = std::fs::remove_dir_all(&s.data);
        }
    }

    /// SIGTERM every member and wait for it to exit.
    pub fn stop(&mut self) {
        for s in &mut self.servers {
            if let Some(c) = &s.child {
                let _ = Command::new("kill").arg(c.id().to_string()).status();
            }
        }
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Stops every member, starts them again, and returns the time from the
    /// start until every member serves a linearizable read. Measured on
    /// clusters without authentication (the read carries no token).
    pub async fn restart(&mut self) -> Result<Duration, String> {
        self.stop();
        let start = Instant::now();
        for i in 0..self.servers.len() {
            self.spawn(i)?;
        }
        self.wait_ready(Duration::from_secs(600)).await?;
        Ok(start.elapsed())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// utime + stime of a /proc/<pid>/stat line (fields 14 and 15, counted
/// after the command name, which may hold spaces and parentheses).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The disk's fdatasync latency for a small write in `dir`, in microseconds
/// (p50, p99): the floor under any durable write.
pub fn fdatasync_latency(dir: &Path, rounds: usize) -> Result<(f64, f64), String> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let mut hist = crate::workload::histogram();
    let block = [7u8; 4096];
    for _ in 0..rounds {
        let t = Instant::now();
        f.write_all(&block).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
    }
    let _ = std::fs::remove_file(&path);
    Ok((
        hist.value_at_quantile(0.5) as f64,
        hist.value_at_quantile(0.99) as f64,
    ))
}

/// A running process's peak resident set, in bytes (VmHWM).
pub fn peak_rss_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The bytes of every file under `dir`, a file with several hard links
/// counted once: a member's snapshots are RocksDB checkpoints, hard links
/// to the live store's files, which take their space once.
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        let mut total = 0;
        for e in rd.filter_map(|e| e.ok()) {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += walk(&e.path(), seen),
                Ok(m) if seen.insert((m.dev(), m.ino())) => total += m.len(),
                _ => {}
            }
        }
        total
    }
    walk(dir, &mut std::collections::HashSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_user_plus_system() {
        let line =
            "4242 (nod (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(line), Some(1234 + 567));
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(cpu_ticks(&me).is_some(), "{me}");
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn a_hard_linked_file_takes_its_space_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("snap")).unwrap();
        std::fs::write(dir.path().join("a.sst"), vec![1u8; 1000]).unwrap();
        std::fs::write(dir.path().join("b.log"), vec![2u8; 300]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 1300);
        // A checkpoint links the store's file instead of copying it.
        std::fs::hard_link(dir.path().join("a.sst"), dir.path().join("snap/a.sst")).unwrap();
        assert_eq!(dir_bytes(dir.path()), 1300);
        // A copy is another 1000 bytes.
        std::fs::copy(dir.path().join("a.sst"), dir.path().join("snap/c.sst")).unwrap();
        assert_eq!(dir_bytes(dir.path()), 2300);
    }
}
