//! `nod-bench`: Nod against etcd on the same machine, in one run, with one
//! client. See BENCHMARKS.md for the command and the latest results.
//!
//! - `nod-bench run --mode quick|full` starts a 3-member Nod cluster and a
//!   3-member etcd cluster, and both again in the TLS + auth configuration
//!   (`security.rs`; not with `--plain-only`), runs every workload against
//!   each in turn, and writes `results.md` and `throughput.png` into `--out`.
//! - `nod-bench load --endpoints … --workload put --clients 16` drives any
//!   etcd v3 endpoint with one workload and prints its figures
//!   (`--cacert/--cert/--key` and `--user` for a secured one).
//! - `nod-bench backup --keys 1000000` times a full backup and a restore of
//!   that many keys (`backup.rs`).

mod backup;
mod cluster;
mod etcd_tool;
mod k8s;
mod large;
mod maint;
mod memory;
mod query;
mod report;
mod security;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use cluster::{Cluster, System};
use report::{Extras, Figures, K8sFigures, Row, ToolRow};
use security::Security;
use workload::{Access, Measured, Spec, Workload};

#[derive(Parser)]
#[command(
    name = "nod-bench",
    about = "Benchmarks Nod against etcd with one etcd v3 client"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Under 3 minutes with `--plain-only` and one etcd: short runs, 1 and
    /// 256 clients, a small data set.
    Quick,
    /// Longer runs, 1M keys for the restart measurement.
    Full,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = Mode::Quick)]
    mode: Mode,
    /// Where results.md and throughput.png go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Where the clusters keep their data (a real disk, not tmpfs, so fsync costs what it costs).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// The nod binary (default: next to this one).
    #[arg(long)]
    nod_bin: Option<PathBuf>,
    /// An etcd to compare with, as NAME=BINARY ("etcd 3.6.17=/path/etcd");
    /// repeat for several versions, side by side (default: `etcd` on PATH).
    #[arg(long = "etcd", value_name = "NAME=BINARY")]
    etcds: Vec<String>,
    /// The etcd the ratios divide by (a NAME of --etcd; default the first).
    #[arg(long)]
    reference: Option<String>,
    /// etcd's own load tool (tools/benchmark): runs its cases against every
    /// system first.
    #[arg(long)]
    etcd_benchmark: Option<PathBuf>,
    /// Grow each system to this many GiB of live data (values of 8 KiB),
    /// one at a time at the end, and measure it there (0: not at all).
    #[arg(long, default_value_t = 0)]
    large_gib: u64,
    /// Fail (exit 1) when Nod answered any request of the run with an
    /// error, or a system measured no throughput in a row.
    #[arg(long)]
    strict: bool,
    /// A TrueType font for the chart's labels.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// Only the plain clusters: no TLS + auth rows (half the time).
    #[arg(long)]
    plain_only: bool,
    /// Only the large phase (needs --large-gib): writes large.md in --out,
    /// which `scripts/bench --write-md` adds to a results.md without one.
    #[arg(long)]
    large_only: bool,
    /// Only the memory cases (on the plain clusters): writes memory.md in
    /// --out, for measuring a memory change without the whole run.
    #[arg(long, conflicts_with = "large_only")]
    memory_only: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every workload against a Nod and an etcd cluster, plain and
    /// with TLS + auth, and writes the report.
    Run(RunArgs),
    /// Times `nod backup save`, `verify` and `snapshot restore
    /// --from-backup` of a 3-member cluster loaded with --keys keys, and
    /// the restored member's start; prints a table.
    Backup {
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Values of one repeated byte (compress to nearly nothing) instead
        /// of random bytes (incompressible).
        #[arg(long)]
        constant_values: bool,
        /// Where the data goes (a real disk, not tmpfs).
        #[arg(long)]
        data_root: Option<PathBuf>,
        /// The nod binary (default: next to this one).
        #[arg(long)]
        nod_bin: Option<PathBuf>,
    },
    /// Secondary indexes and queries against etcd with the client doing
    /// the filtering, and what indexes cost writes (`query.rs`): prints a
    /// Markdown table and writes it to --out/query.md.
    Query {
        /// JSON documents under /users/ in each system.
        #[arg(long, default_value_t = 20_000)]
        docs: u64,
        /// Rounds over the queries and ways (round robin).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Calls of each query and way in a round.
        #[arg(long, default_value_t = 10)]
        repeat: usize,
        /// Clients of the write-cost runs.
        #[arg(long, default_value_t = 256)]
        clients: usize,
        /// Seconds of each write-cost run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Keys under each write-cost prefix.
        #[arg(long, default_value_t = 100_000)]
        write_keys: u64,
        /// Write-cost rounds (each runs 0, 1 and 3 indexes in turn).
        #[arg(long, default_value_t = 3)]
        write_rounds: usize,
        /// The etcd to compare with, NAME=BINARY (default: `etcd` on PATH).
        #[arg(long, default_value = "etcd")]
        etcd: String,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Where the data goes (a real disk, not tmpfs).
        #[arg(long)]
        data_root: Option<PathBuf>,
        /// The nod binary (default: next to this one).
        #[arg(long)]
        nod_bin: Option<PathBuf>,
    },
    /// Drives running endpoints with one workload.
    Load {
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// put, range, range-serializable, txn, mixed, watch (fan-out:
        /// `--clients` watchers of one key, then `--writes` puts to it;
        /// reports events delivered per second), or maintenance (a history
        /// of `--revisions` puts over `--keyspace` keys, then `--rate`
        /// writes a second through a compaction and a defragmentation sent
        /// to the first endpoint, which should be the leader)
        #[arg(long, default_value = "put")]
        workload: String,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 100_000)]
        keyspace: u64,
        /// Bytes of each value the put workloads write.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Puts for the watch workload.
        #[arg(long, default_value_t = 1000)]
        writes: usize,
        /// Puts of the maintenance workload's history.
        #[arg(long, default_value_t = 1_000_000)]
        revisions: u64,
        /// Writes a second during the maintenance workload.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Threads generating load, each with its own connections (default:
        /// one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// CA bundle for `https://` endpoints (bare `host:port` endpoints
        /// are then `https://`).
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Client certificate (with `--key`).
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// `NAME:PASSWORD`: log in once and send the token with every call.
        #[arg(long)]
        user: Option<String>,
    },
}

/// Threads the load generator uses: one per core.
fn load_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The same allocator as the server: the client shares the machine's cores
/// with the members under test, and glibc's malloc was a tenth of its CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn url(e: &str, tls: bool) -> String {
    if e.contains("://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

fn figures(m: &Measured) -> Figures {
    Figures {
        throughput: m.throughput(),
        spread: (m.throughput(), m.throughput()),
        p50: m.ms(0.5),
        p90: m.ms(0.9),
        p99: m.ms(0.99),
        p999: m.ms(0.999),
        errors: m.errors,
        fsyncs_per_write: None,
    }
}

fn watch_summary(watchers: usize, writes: usize, f: &Figures) -> String {
    format!(
        "watch fan-out {watchers} watchers × {writes} writes: {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, {} missing",
        f.throughput, f.p50, f.p99, f.errors
    )
}

fn conns_for(clients: usize) -> usize {
    match clients {
        0..=1 => 1,
        2..=16 => 4,
        _ => 32,
    }
}

const FSYNCS: &str = "etcd_disk_wal_fsync_duration_seconds_count";

/// One system under test in one configuration: its running cluster, its
/// endpoints (the leader's first) and how the client reaches them.
struct Running {
    cluster: Cluster,
    endpoints: Vec<String>,
    /// TLS, and in the TLS + auth configuration the bench user's token
    /// with the time it was given.
    access: std::sync::Mutex<(Access, Instant)>,
    /// Authentication is on: the token is renewed (`Running::access`).
    secure: bool,
    /// The system's name, and the configuration unless plain.
    label: String,
}

/// How old a token may be before a workload logs in again. Simple tokens
/// expire after 5 minutes unused on both systems (etcd's
/// `--auth-token-ttl`), and a cluster waits unused while the others run
/// their rounds.
const TOKEN_RENEWAL: Duration = Duration::from_secs(60);

impl Running {
    fn name(&self) -> &str {
        &self.label
    }

    /// How to reach the cluster: with authentication on, with a token
    /// younger than `TOKEN_RENEWAL` (logging in again when it is older).
    async fn access(&self) -> Result<Access, String> {
        let (access, given) = self
            .access
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !self.secure || given.elapsed() < TOKEN_RENEWAL {
            return Ok(access);
        }
        let fresh = access
            .login(&self.endpoints[0], security::USER, security::PASSWORD)
            .await?;
        *self.access.lock().unwrap_or_else(|p| p.into_inner()) = (fresh.clone(), Instant::now());
        Ok(fresh)
    }
}

/// What several rounds of one workload measured on one system.
#[derive(Default)]
struct Rounds {
    throughputs: Vec<f64>,
    hist: Option<hdrhistogram::Histogram<u64>>,
    ops: u64,
    errors: u64,
    fsyncs: f64,
}

impl Rounds {
    fn add(&mut self, m: &Measured, fsyncs: Option<f64>) {
        self.throughputs.push(m.throughput());
        match &mut self.hist {
            Some(h) => {
                let _ = h.add(&m.hist);
            }
            None => self.hist = Some(m.hist.clone()),
        }
        self.ops += m.ops;
        self.errors += m.errors;
        self.fsyncs += fsyncs.unwrap_or(0.0);
    }

    /// The median round's throughput, its spread, and latency over every round's samples.
    fn figures(mut self, writes: bool) -> Figures {
        self.throughputs.sort_by(f64::total_cmp);
        let n = self.throughputs.len();
        let median = match n {
            0 => 0.0,
            _ if n % 2 == 1 => self.throughputs[n / 2],
            _ => (self.throughputs[n / 2 - 1] + self.throughputs[n / 2]) / 2.0,
        };
        let q = |q: f64| {
            self.hist
                .as_ref()
                .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        Figures {
            throughput: median,
            spread: (
                self.throughputs.first().copied().unwrap_or(0.0),
                self.throughputs.last().copied().unwrap_or(0.0),
            ),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            errors: self.errors,
            fsyncs_per_write: (writes && self.ops > 0).then(|| self.fsyncs / self.ops as f64),
        }
    }
}

struct Settings {
    secs: u64,
    rounds: usize,
    keyspace: u64,
    watchers: usize,
    writes: usize,
    restart_keys: u64,
    client_counts: &'static [usize],
    k8s: k8s::Spec,
    k8s_rounds: usize,
    maint: maint::Spec,
    memory: memory::Spec,
}

impl Settings {
    fn of(mode: Mode) -> Settings {
        match mode {
            Mode::Quick => Settings {
                secs: 1,
                rounds: 2,
                keyspace: 10_000,
                watchers: 100,
                writes: 100,
                restart_keys: 20_000,
                client_counts: &[1, 256],
                k8s: k8s::Spec {
                    objects: 2_000,
                    value_size: 2048,
                    rate: 200.0,
                    duration: Duration::from_secs(5),
                },
                k8s_rounds: 1,
                maint: maint::Spec {
                    revisions: 50_000,
                    keyspace: 5_000,
                    value_size: 256,
                    rate: 500.0,
                },
                memory: memory::Spec {
                    keys: 20_000,
                    watchers: 100,
                    big_bytes: 16 << 20,
                    secs: 2,
                },
            },
            Mode::Full => Settings {
                secs: 3,
                rounds: 3,
                keyspace: 100_000,
                watchers: 1000,
                writes: 1000,
                restart_keys: 1_000_000,
                client_counts: &[1, 16, 256],
                k8s: k8s::Spec {
                    objects: 10_000,
                    value_size: 2048,
                    rate: 400.0,
                    duration: Duration::from_secs(30),
                },
                k8s_rounds: 2,
                maint: maint::Spec {
                    revisions: 1_000_000,
                    keyspace: 100_000,
                    value_size: 256,
                    rate: 1000.0,
                },
                memory: memory::Spec {
                    keys: 1_000_000,
                    watchers: 1000,
                    big_bytes: 1 << 30,
                    secs: 5,
                },
            },
        }
    }
}

/// A system under test: Nod, or one etcd build.
#[derive(Clone)]
struct Target {
    system: System,
    /// Its name in the report ("Nod", "etcd 3.6.17").
    name: String,
    bin: PathBuf,
}

impl Target {
    /// `NAME=BINARY`; a bare BINARY is named `etcd`.
    fn etcd(spec: &str) -> Result<Target, String> {
        let (name, bin) = match spec.split_once('=') {
            Some((n, b)) if !n.trim().is_empty() && !b.is_empty() => (n.trim(), b),
            Some(_) => return Err(format!("--etcd {spec:?}: expected NAME=BINARY")),
            None => ("etcd", spec),
        };
        Ok(Target {
            system: System::Etcd,
            name: name.to_string(),
            bin: PathBuf::from(bin),
        })
    }

    /// A directory name for its data.
    fn dir_name(&self) -> String {
        self.name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    }
}

/// Starts `target`'s cluster, plain or (with `security`) with client and
/// peer TLS and authentication on, and loads the workloads' keys.
async fn start(
    target: &Target,
    root: &std::path::Path,
    keyspace: u64,
    security: Option<&Security>,
) -> Result<Running, String> {
    let label = match security {
        None => target.name.clone(),
        Some(_) => format!("{} TLS + auth", target.name),
    };
    let dir = root.join(match security {
        None => target.dir_name(),
        Some(_) => format!("{}-tls", target.dir_name()),
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!("[{label}] starting 3 members in {}", dir.display());
    let cluster = Cluster::start(target.system, &target.bin, &dir, security)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let mut access = cluster.access().clone();
    if security.is_some() {
        let first = &cluster.endpoints()[0];
        security::enable_auth(first, &access).await?;
        access = access
            .login(first, security::USER, security::PASSWORD)
            .await?;
        eprintln!(
            "[{label}] authentication on; logged in as {}",
            security::USER
        );
    }
    let endpoints = leader_first(cluster.endpoints(), &access).await;
    let ch = workload::connect(&endpoints, 32, &access).await?;
    let errors = workload::load(&ch, keyspace, 256, 256).await;
    eprintln!("[{label}] loaded {keyspace} keys ({errors} errors)");
    Ok(Running {
        cluster,
        endpoints,
        access: std::sync::Mutex::new((access, Instant::now())),
        secure: security.is_some(),
        label,
    })
}

/// The endpoints with the leader's first: one client (one connection) then
/// talks to the leader on both systems, rather than to whichever member
/// happened to be listed first, which made ×1 latency a matter of luck.
async fn leader_first(mut endpoints: Vec<String>, access: &Access) -> Vec<String> {
    use nod_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
    use nod_proto::etcd::etcdserverpb::StatusRequest;
    for (i, ep) in endpoints.clone().iter().enumerate() {
        let Ok(ch) = workload::connect(std::slice::from_ref(ep), 1, access).await else {
            continue;
        };
        let Ok(st) = MaintenanceClient::new(ch[0].clone())
            .status(StatusRequest {})
            .await
        else {
            continue;
        };
        let st = st.into_inner();
        let me = st.header.map(|h| h.member_id).unwrap_or(0);
        if me != 0 && st.leader == me {
            endpoints.swap(0, i);
            return endpoints;
        }
    }
    eprintln!("no member said it leads; the endpoints stay in their order");
    endpoints
}

/// One round of one workload on one system.
async fn round(r: &Running, spec: &Spec) -> Result<(Measured, Option<f64>), String> {
    let before = r.cluster.metric_sum(FSYNCS);
    let m = workload::run(
        r.endpoints.clone(),
        r.access().await?,
        conns_for(spec.clients),
        spec.clone(),
        load_threads(),
    )
    .await?;
    let fsyncs = spec
        .workload
        .writes()
        .then(|| (r.cluster.metric_sum(FSYNCS) - before) / 3.0);
    Ok((m, fsyncs))
}

struct Finish {
    peak_rss: u64,
    disk: u64,
    restart: Option<f64>,
}

/// Loads the restart data set, restarts every member, and stops the cluster.
async fn finish(r: &mut Running, restart_keys: u64) -> Result<Finish, String> {
    let peak_rss = r.cluster.peak_rss();
    let disk = r.cluster.disk_bytes();
    eprintln!(
        "[{}] loading {restart_keys} keys for the restart measurement",
        r.name()
    );
    let ch = workload::connect(&r.endpoints, 32, &r.access().await?).await?;
    let errors = workload::load(&ch, restart_keys, 256, 256).await;
    drop(ch);
    let restart = match r.cluster.restart().await {
        Ok(d) => {
            eprintln!(
                "[{}] restart to ready with {restart_keys} keys: {:.2} s ({errors} load errors)",
                r.name(),
                d.as_secs_f64()
            );
            Some(d.as_secs_f64())
        }
        Err(e) => {
            eprintln!("[{}] restart failed: {e}", r.name());
            None
        }
    };
    let peak_rss = peak_rss.max(r.cluster.peak_rss());
    Ok(Finish {
        peak_rss,
        disk,
        restart,
    })
}

/// The clusters run side by side (the idle ones only heartbeat); every
/// workload runs `rounds` times on each, in turn, the order reversed every
/// other round, so a drift in the machine (page cache, compaction, a
/// neighbour, the disk's speed) lands on all of them. Returns each row's
/// figures in the order of `systems`.
async fn bench_all(
    systems: &[&Running],
    set: &Settings,
) -> Result<Vec<(String, usize, Vec<Figures>)>, String> {
    let mut rows = Vec::new();
    for w in Workload::ALL {
        for &clients in set.client_counts {
            let spec = Spec {
                workload: w,
                clients,
                duration: Duration::from_secs(set.secs),
                keyspace: set.keyspace,
                value_size: 256,
            };
            let mut acc: Vec<Rounds> = systems.iter().map(|_| Rounds::default()).collect();
            for i in 0..set.rounds {
                let mut order: Vec<usize> = (0..systems.len()).collect();
                if i % 2 == 1 {
                    order.reverse();
                }
                for s in order {
                    let (m, fsyncs) = round(systems[s], &spec).await?;
                    acc[s].add(&m, fsyncs);
                }
            }
            let figs: Vec<Figures> = acc.into_iter().map(|a| a.figures(w.writes())).collect();
            for (s, f) in systems.iter().zip(&figs) {
                eprintln!(
                    "[{}] {} ×{clients}: {:.0} ops/s (rounds {:.0}–{:.0}), p50 {:.2} ms, p99 {:.2} ms, {} errors",
                    s.name(),
                    w.name(),
                    f.throughput,
                    f.spread.0,
                    f.spread.1,
                    f.p50,
                    f.p99,
                    f.errors
                );
            }
            rows.push((w.name().to_string(), clients, figs));
        }
    }
    let mut watch = vec![Figures::default(); systems.len()];
    for (s, r) in systems.iter().enumerate() {
        let ch = workload::connect(&r.endpoints, 16, &r.access().await?).await?;
        let m = workload::watch_fanout(&ch, set.watchers, set.writes).await;
        let f = figures(&m);
        eprintln!(
            "[{}] {}",
            r.name(),
            watch_summary(set.watchers, set.writes, &f)
        );
        watch[s] = f;
    }
    rows.push((
        format!("watch fan-out ({} writes, events/s)", set.writes),
        set.watchers,
        watch,
    ));
    Ok(rows)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|k| format!("{:.0} GiB", k as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM")
}

/// The nod binary: the one given, else the one next to this binary.
fn nod_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let bin = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("nod"),
    };
    if !bin.exists() {
        return Err(format!(
            "no nod binary at {} (build it: cargo build --release --bin nod)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Where the clusters keep their data (a real disk, not tmpfs), created.
fn data_root_dir(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let root = given.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
            .join(".cache/nod/bench")
    });
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(root)
}

/// Writes etcd's tool's range key (256 bytes) on a system.
async fn put_range_key(r: &Running) -> Result<(), String> {
    use nod_proto::etcd::etcdserverpb::kv_client::KvClient;
    use nod_proto::etcd::etcdserverpb::PutRequest;
    let ch = workload::connect(&r.endpoints, 1, &r.access().await?).await?;
    KvClient::new(ch[0].clone())
        .put(PutRequest {
            key: etcd_tool::RANGE_KEY.as_bytes().to_vec(),
            value: vec![b'v'; 256],
            ..Default::default()
        })
        .await
        .map_err(|e| format!("[{}] put {}: {e}", r.name(), etcd_tool::RANGE_KEY))?;
    Ok(())
}

/// Every case of etcd's tool on every (plain) system, `rounds` times in
/// turn, the order reversed every other round; each figure is the median
/// over the rounds.
async fn tool_all(
    systems: &[&Running],
    tool: &etcd_tool::Tool,
    quick: bool,
    rounds: usize,
) -> Result<Vec<ToolRow>, String> {
    for r in systems {
        put_range_key(r).await?;
    }
    let mut rows = Vec::new();
    for case in etcd_tool::cases(quick) {
        let mut runs: Vec<Vec<etcd_tool::Summary>> = vec![Vec::new(); systems.len()];
        for i in 0..rounds {
            let mut order: Vec<usize> = (0..systems.len()).collect();
            if i % 2 == 1 {
                order.reverse();
            }
            for s in order {
                let r = systems[s];
                let sum = tool
                    .run(&case, &r.endpoints)
                    .map_err(|e| format!("[{}] {e}", r.name()))?;
                eprintln!(
                    "[{}] etcd benchmark {} ×{}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                    r.name(),
                    case.name,
                    case.clients,
                    sum.rps,
                    sum.p50,
                    sum.p99,
                    sum.errors
                );
                runs[s].push(sum);
            }
        }
        rows.push(ToolRow {
            case: case.name.to_string(),
            clients: case.clients,
            conns: case.conns,
            leader_only: case.leader_only,
            total: case.total,
            watch: case.watch,
            sums: runs.iter().map(|v| etcd_tool::median(v)).collect(),
        });
    }
    Ok(rows)
}

/// The Kubernetes-shaped workload on every (plain) system: each populated
/// with its objects, then `rounds` runs in turn at the same rate, the order
/// reversed every other round. Returns each system's figures.
async fn k8s_all(systems: &[&Running], set: &Settings) -> Result<Vec<K8sFigures>, String> {
    for r in systems {
        let conns = workload::connect(&r.endpoints, 8, &r.access().await?).await?;
        let rev = k8s::populate(&conns, &set.k8s).await?;
        eprintln!(
            "[{}] kubernetes-shaped: {} objects of {} B, revision {rev}",
            r.name(),
            set.k8s.objects,
            set.k8s.value_size
        );
    }
    let mut acc: Vec<(k8s::Measured, u64)> = systems
        .iter()
        .map(|_| (k8s::Measured::empty(), 0))
        .collect();
    for i in 0..set.k8s_rounds {
        let mut order: Vec<usize> = (0..systems.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for s in order {
            let r = systems[s];
            // Two apiservers' worth of connections, spread over the members;
            // the watches on connections of their own.
            let conns = workload::connect(&r.endpoints, 6, &r.access().await?).await?;
            let watch_conns = workload::connect(&r.endpoints, 3, &r.access().await?).await?;
            let cpu = r.cluster.cpu_ns();
            let m = k8s::run(&conns, &watch_conns, &set.k8s, 0x5eed + i as u64)
                .await
                .map_err(|e| format!("[{}] kubernetes-shaped: {e}", r.name()))?;
            let used = r.cluster.cpu_ns().saturating_sub(cpu);
            eprintln!(
                "[{}] kubernetes-shaped: {} ops in {:.1} s, {:.0} µs CPU per op, {} conflicts, {} progress notifications",
                r.name(),
                m.ops,
                m.elapsed.as_secs_f64(),
                used as f64 / 1000.0 / m.ops.max(1) as f64,
                m.conflicts,
                m.progress_notifications
            );
            acc[s].0.merge(&m);
            acc[s].1 += used;
        }
    }
    Ok(acc
        .into_iter()
        .map(|(m, cpu)| K8sFigures::of(&m, cpu))
        .collect())
}

/// Maintenance pauses on every (plain) system, one after the other (each
/// writes its history first).
async fn maint_all(
    systems: &[&Running],
    spec: &maint::Spec,
) -> Result<Vec<Vec<maint::Phase>>, String> {
    let mut out = Vec::new();
    for r in systems {
        let conns = workload::connect(&r.endpoints, 8, &r.access().await?).await?;
        maint::history(&conns, spec)
            .await
            .map_err(|e| format!("[{}] {e}", r.name()))?;
        let leader = workload::dial(&r.endpoints[0], &r.access().await?)
            .await?
            .with_timeout(Duration::from_secs(1800));
        let phases = maint::run(&conns, leader, spec)
            .await
            .map_err(|e| format!("[{}] maintenance: {e}", r.name()))?;
        for (name, p) in maint::PHASES.iter().zip(&phases) {
            eprintln!(
                "[{}] writes during {name}: p99.9 {:.2} ms, max {:.2} ms ({} writes, {} errors, call {:.2} s)",
                r.name(),
                p.p999,
                p.max,
                p.count,
                p.errors,
                p.call_secs
            );
        }
        out.push(phases);
    }
    Ok(out)
}

/// The memory cases on every (plain) system, one after the other.
async fn memory_all(
    systems: &[&Running],
    spec: &memory::Spec,
) -> Result<Vec<memory::Peaks>, String> {
    let mut out = Vec::new();
    for r in systems {
        let conns = workload::connect(&r.endpoints, 16, &r.access().await?).await?;
        let leader = workload::dial(&r.endpoints[0], &r.access().await?)
            .await?
            .with_timeout(Duration::from_secs(600));
        let peaks = memory::run(&r.cluster, &conns, &leader, spec).await;
        for (case, p) in memory::CASES.iter().zip(&peaks) {
            match p {
                Ok(b) => eprintln!(
                    "[{}] peak RSS {case}: {:.1} MiB",
                    r.name(),
                    *b as f64 / 1048576.0
                ),
                Err(e) => eprintln!("[{}] {case}: {e}", r.name()),
            }
        }
        out.push(peaks);
    }
    Ok(out)
}

/// A member's disk use over its live data in the large phase (Nod: 4.8 GiB
/// of values took 8 GB per member, with the Raft log and a checkpoint).
const LARGE_DISK_FACTOR: f64 = 1.75;
/// Room for everything else a full run keeps on the disk.
const LARGE_DISK_SLACK_GIB: u64 = 10;

/// Free bytes the large phase needs at `gib` GiB of data.
fn large_disk_need(gib: u64) -> u64 {
    let data = (3.0 * LARGE_DISK_FACTOR * gib as f64 * (1u64 << 30) as f64) as u64;
    data.saturating_add(LARGE_DISK_SLACK_GIB << 30)
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Result<u64, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .map_err(|e| format!("df: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("df {}: unexpected output {text:?}", dir.display()))
}

/// Every system of `plain` grown to `gib` GiB and measured there, one at
/// a time on a fresh, empty cluster, each removed after: three systems of
/// 3 members at 8 GiB would not fit on most disks, nor one beside the
/// others' earlier data (7.8 GB each by then).
async fn large_all(
    plain: &mut [Running],
    gib: u64,
    secs: u64,
) -> Result<Vec<large::Large>, String> {
    let spec = large::Spec {
        bytes: gib << 30,
        value_size: 8192,
    };
    for r in plain.iter_mut() {
        r.cluster.stop();
        r.cluster.remove_data();
    }
    let mut figs = Vec::new();
    for r in plain.iter_mut() {
        // Members started on empty directories form a new cluster.
        r.cluster
            .restart()
            .await
            .map_err(|e| format!("[{}] starting empty for the large phase: {e}", r.name()))?;
        figs.push(large_one(r, &spec, secs).await?);
        r.cluster.stop();
        r.cluster.remove_data();
    }
    Ok(figs)
}

/// Put and range throughput (256 clients) before and after `r` grows to
/// `spec`'s size, a count of every key, and a restart at that size.
async fn large_one(r: &mut Running, spec: &large::Spec, secs: u64) -> Result<large::Large, String> {
    let label = r.name().to_string();
    let measure = |w: Workload| Spec {
        workload: w,
        clients: 256,
        duration: Duration::from_secs(secs.max(3)),
        keyspace: 10_000,
        value_size: 256,
    };
    let put_empty = round(r, &measure(Workload::Put)).await?.0.throughput();
    let range_empty = round(r, &measure(Workload::RangeLinearizable))
        .await?
        .0
        .throughput();
    eprintln!(
        "[{label}] growing to {} GiB in values of {} B",
        spec.bytes >> 30,
        spec.value_size
    );
    let conns = workload::connect(&r.endpoints, 16, &r.access().await?).await?;
    let load_secs = large::grow(&conns, spec)
        .await
        .map_err(|e| format!("[{label}] {e}"))?;
    let put_loaded = round(r, &measure(Workload::Put)).await?.0.throughput();
    let settle_secs = large::settle(&r.cluster, Duration::from_secs(1800)).await;
    let put_large = round(r, &measure(Workload::Put)).await?.0.throughput();
    let range_large = round(r, &measure(Workload::RangeLinearizable))
        .await?
        .0
        .throughput();
    let leader = workload::dial(&r.endpoints[0], &r.access().await?)
        .await?
        .with_timeout(Duration::from_secs(600));
    let (count_secs, counted) = large::count_all(&leader)
        .await
        .map_err(|e| format!("[{label}] {e}"))?;
    drop((conns, leader));
    let disk = r.cluster.disk_bytes();
    let restart_secs = r
        .cluster
        .restart()
        .await
        .map_err(|e| format!("[{label}] restart at {} GiB: {e}", spec.bytes >> 30))?
        .as_secs_f64();
    let l = large::Large {
        put_empty,
        put_loaded,
        settle_secs,
        put_large,
        range_empty,
        range_large,
        load_secs,
        count_secs,
        counted,
        restart_secs,
        disk,
    };
    eprintln!(
        "[{label}] at {} GiB: put {:.0} → {:.0} ops/s ({:.0} right after the load, idle {:.0} s later), range {:.0} → {:.0}, count {} in {:.2} s, restart {:.2} s, loaded in {:.0} s",
        spec.bytes >> 30,
        l.put_empty,
        l.put_large,
        l.put_loaded,
        l.settle_secs,
        l.range_empty,
        l.range_large,
        l.counted,
        l.count_secs,
        l.restart_secs,
        l.load_secs
    );
    Ok(l)
}

/// What `--strict` refuses: a Nod error, or a row where a system measured
/// nothing.
fn strict_failures(rows: &[Row], tool: &[ToolRow], names: &[String]) -> Vec<String> {
    // (row label, Nod's errors, every system's rate)
    let ours = rows.iter().map(|r| {
        (
            format!("{} ×{}", r.workload, r.clients),
            r.figs[0].errors,
            r.figs.iter().map(|f| f.throughput).collect::<Vec<_>>(),
        )
    });
    let theirs = tool.iter().map(|r| {
        (
            format!("etcd benchmark {} ×{}", r.case, r.clients),
            r.sums[0].errors,
            r.sums.iter().map(|f| f.rps).collect(),
        )
    });
    let mut bad = Vec::new();
    for (label, nod_errors, rates) in ours.chain(theirs) {
        if nod_errors > 0 {
            bad.push(format!("{label}: Nod answered {nod_errors} errors"));
        }
        for (rate, n) in rates.iter().zip(names) {
            if *rate <= 0.0 {
                bad.push(format!("{label}: {n} measured nothing"));
            }
        }
    }
    bad
}

async fn run(args: RunArgs) -> Result<(), String> {
    let RunArgs {
        mode,
        out,
        data_root,
        nod_bin,
        etcds,
        reference,
        etcd_benchmark,
        strict,
        large_gib,
        font,
        plain_only,
        large_only,
        memory_only,
    } = args;
    if large_only && large_gib == 0 {
        return Err("--large-only needs --large-gib".into());
    }
    let nod = Target {
        system: System::Nod,
        name: "Nod".into(),
        bin: nod_binary(nod_bin)?,
    };
    let etcds = if etcds.is_empty() {
        vec![Target::etcd("etcd")?]
    } else {
        etcds
            .iter()
            .map(|e| Target::etcd(e))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut targets = vec![nod];
    targets.extend(etcds);
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    if names.iter().collect::<std::collections::HashSet<_>>().len() != names.len() {
        return Err(format!("two systems share a name: {names:?}"));
    }
    let reference = match &reference {
        None => 1,
        Some(r) => names
            .iter()
            .position(|n| n == r && n != "Nod")
            .ok_or_else(|| format!("--reference {r:?} is no --etcd NAME (have {names:?})"))?,
    };
    let tool = etcd_benchmark
        .as_deref()
        .map(etcd_tool::Tool::new)
        .transpose()?;
    let data_root = data_root_dir(data_root)?;
    if large_gib > 0 {
        // Checked first: a full run reaches the large phase after about
        // 90 minutes, and the run of 2026-12-06 died there of a full disk.
        let need = large_disk_need(large_gib);
        let free = free_bytes(&data_root)?;
        if free < need {
            return Err(format!(
                "--large-gib {large_gib} needs about {} GiB free in {} (3 members, each about \
                 {LARGE_DISK_FACTOR}x the data, plus {LARGE_DISK_SLACK_GIB} GiB for the rest); {} GiB \
                 are free: free space, or pass a smaller --large-gib (NOD_BENCH_LARGE_GIB)",
                need >> 30,
                data_root.display(),
                free >> 30
            ));
        }
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("bench: {what} at {:.0} s", t0.elapsed().as_secs_f64());
    let fdatasync = cluster::fdatasync_latency(&data_root, 500)?;
    eprintln!(
        "fdatasync in {}: p50 {:.0} µs, p99 {:.0} µs",
        data_root.display(),
        fdatasync.0,
        fdatasync.1
    );
    let set = Settings::of(mode);
    let mut plain = Vec::new();
    for t in &targets {
        plain.push(start(t, &data_root, set.keyspace, None).await?);
    }
    if large_only {
        let figs = large_all(&mut plain, large_gib, set.secs).await?;
        let mut md = format!(
            "<!-- Written by ./scripts/bench --large-only; BENCHMARKS.md shows it under a results.md without its own. -->\n\nThe large phase run on its own (`./scripts/bench --large-only`), machine: {}.\n",
            machine()
        );
        report::large_section(&mut md, &figs, large_gib, set.secs, &names, reference);
        let path = out.join("large.md");
        std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{md}");
        eprintln!("results: {}", path.display());
        let _ = std::fs::remove_dir_all(&data_root);
        return Ok(());
    }
    if memory_only {
        let systems: Vec<&Running> = plain.iter().collect();
        let peaks = memory_all(&systems, &set.memory).await?;
        let mut md = format!(
            "<!-- Written by ./scripts/bench --memory-only. -->\n\nThe memory cases run on their own (`./scripts/bench --memory-only`), machine: {}.\n",
            machine()
        );
        report::memory_section(&mut md, &peaks, &set.memory, &names, reference);
        let path = out.join("memory.md");
        std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{md}");
        eprintln!("results: {}", path.display());
        for mut r in plain {
            r.cluster.stop();
        }
        let _ = std::fs::remove_dir_all(&data_root);
        return Ok(());
    }
    // With TLS + auth, Nod and the reference a second time, secured, side
    // by side with the plain ones: each workload's rounds alternate over
    // every cluster, so the plain and secured figures of one system share
    // the machine's state and their ratio is what TLS + auth costs, not a
    // drift between two runs minutes apart.
    let mut secured = Vec::new();
    if !plain_only {
        let security = Security::create(&data_root.join("tls"))?;
        for t in [&targets[0], &targets[reference]] {
            secured.push(start(t, &data_root, set.keyspace, Some(&security)).await?);
        }
    }
    phase("clusters up and loaded");
    let tool_rounds = if mode == Mode::Full { 3 } else { 1 };
    let tool_rows = match &tool {
        Some(tool) => {
            let systems: Vec<&Running> = plain.iter().collect();
            tool_all(&systems, tool, mode == Mode::Quick, tool_rounds).await?
        }
        None => Vec::new(),
    };
    phase("etcd's tool done");
    let k8s_figs = {
        let systems: Vec<&Running> = plain.iter().collect();
        k8s_all(&systems, &set).await?
    };
    phase("kubernetes-shaped done");
    let mut running: Vec<&Running> = plain.iter().collect();
    running.extend(secured.iter());
    let k = plain.len();
    let mut rows = Vec::new();
    let mut secure_rows = Vec::new();
    for (workload, clients, figs) in bench_all(&running, &set).await? {
        if figs.len() == k + 2 {
            secure_rows.push(Row {
                workload: workload.clone(),
                clients,
                figs: figs[k..].to_vec(),
            });
        }
        rows.push(Row {
            workload,
            clients,
            figs: figs[..k].to_vec(),
        });
    }
    phase("our client done");
    let (maint_phases, memory_peaks) = {
        let systems: Vec<&Running> = plain.iter().collect();
        let m = maint_all(&systems, &set.maint).await?;
        phase("maintenance done");
        (m, memory_all(&systems, &set.memory).await?)
    };
    phase("memory done");
    // The restart measurement on the plain clusters alone, as before.
    for mut r in secured {
        r.cluster.stop();
    }
    let mut finished = Vec::new();
    for r in &mut plain {
        finished.push(finish(r, set.restart_keys).await?);
    }
    phase("restarts done");
    let restart_keys = set.restart_keys;
    let extras = Extras {
        machine: machine(),
        systems: names.clone(),
        reference,
        rounds: set.rounds,
        secs: set.secs,
        tool_rounds,
        command: match (mode, plain_only) {
            (Mode::Full, false) => "./scripts/bench --full".into(),
            (Mode::Full, true) => "nod-bench run --mode full --plain-only".into(),
            (Mode::Quick, true) => "./scripts/bench".into(),
            (Mode::Quick, false) => "./scripts/bench --tls".into(),
        },
        fdatasync_us: fdatasync,
        peak_rss: finished.iter().map(|f| f.peak_rss).collect(),
        disk_bytes: finished.iter().map(|f| f.disk).collect(),
        restart: Some((restart_keys, finished.iter().map(|f| f.restart).collect())),
    };
    // The report, written before the large phase too: that phase takes
    // an hour or more, and whatever ends the run during it leaves the
    // rest of the results written.
    let write_report = |large: &[large::Large], last: bool| -> Result<(), String> {
        let more = report::More {
            k8s: &k8s_figs,
            k8s_spec: &set.k8s,
            maint: &maint_phases,
            maint_spec: &set.maint,
            memory: &memory_peaks,
            memory_spec: &set.memory,
            large,
            large_gib,
        };
        let md = report::markdown(&rows, &secure_rows, &tool_rows, &more, &extras);
        let md_path = out.join("results.md");
        std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
        let png = out.join("throughput.png");
        match report::chart(&rows, &names, &png, &font) {
            Ok(()) => eprintln!("chart: {}", png.display()),
            Err(e) => eprintln!("no chart: {e}"),
        }
        if last {
            println!("{md}");
        }
        eprintln!("results: {}", md_path.display());
        Ok(())
    };
    if large_gib > 0 {
        write_report(&[], false)?;
    }
    // The large database last.
    let large_figs = if large_gib > 0 {
        let figs = large_all(&mut plain, large_gib, set.secs).await?;
        phase("large databases done");
        figs
    } else {
        Vec::new()
    };
    for r in &mut plain {
        r.cluster.stop();
    }
    write_report(&large_figs, true)?;
    let _ = std::fs::remove_dir_all(&data_root);
    let mut bad = strict_failures(&rows, &tool_rows, &names);
    if let Some(Err(e)) = memory_peaks
        .first()
        .and_then(|p| p.iter().find(|c| c.is_err()))
    {
        bad.push(format!("memory: Nod failed a case: {e}"));
    }
    if let Some(nod) = maint_phases.first() {
        let errors: u64 = nod.iter().map(|p| p.errors).sum();
        if errors > 0 {
            bad.push(format!(
                "maintenance: Nod answered {errors} writes with errors"
            ));
        }
    }
    if let Some(nod) = k8s_figs.first() {
        let errors: u64 = nod.ops.iter().map(|o| o.errors).sum();
        if errors > 0 {
            bad.push(format!("kubernetes-shaped: Nod answered {errors} errors"));
        }
    }
    eprintln!(
        "bench: {} rows of our client, {} of etcd's tool, {} failures",
        rows.len(),
        tool_rows.len(),
        bad.len()
    );
    if strict && !bad.is_empty() {
        return Err(format!("--strict: {}", bad.join("; ")));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nod-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async move {
        match cli.command {
            Cmd::Run(args) => run(args).await,
            Cmd::Backup {
                keys,
                value_size,
                constant_values,
                data_root,
                nod_bin,
            } => {
                let bin = nod_binary(nod_bin)?;
                let root = data_root_dir(data_root)?;
                backup::run(&bin, &root, keys, value_size, !constant_values).await
            }
            Cmd::Query {
                docs,
                rounds,
                repeat,
                clients,
                seconds,
                write_keys,
                write_rounds,
                etcd,
                out,
                data_root,
                nod_bin,
            } => {
                let bin = nod_binary(nod_bin)?;
                let root = data_root_dir(data_root)?;
                let target = Target::etcd(&etcd)?;
                let args = query::Args {
                    docs,
                    rounds,
                    repeat,
                    clients,
                    seconds,
                    write_keys,
                    write_rounds,
                };
                let md = query::run(&bin, (&target.name, &target.bin), &root, args).await?;
                print!("{md}");
                std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
                let path = out.join("query.md");
                std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))
            }
            Cmd::Load {
                endpoints,
                workload,
                clients,
                conns,
                duration,
                keyspace,
                value_size,
                writes,
                revisions,
                rate,
                threads,
                cacert,
                cert,
                key,
                user,
            } => {
                let tls = nod_client::tls::TlsOptions {
                    ca_file: cacert,
                    cert_file: cert,
                    key_file: key,
                    insecure_skip_verify: false,
                };
                let endpoints: Vec<String> =
                    endpoints.iter().map(|e| url(e, tls.is_set())).collect();
                let mut access = Access {
                    tls: tls
                        .is_set()
                        .then(|| nod_client::tls::ClientTls::new(&tls))
                        .transpose()
                        .map_err(|e| e.to_string())?
                        .map(std::sync::Arc::new),
                    token: None,
                };
                if let Some(user) = user {
                    let (name, password) = user
                        .split_once(':')
                        .ok_or("--user takes NAME:PASSWORD")?;
                    access = access.login(&endpoints[0], name, password).await?;
                }
                if workload == "watch" {
                    let ch = workload::connect(&endpoints, conns, &access).await?;
                    let m = workload::watch_fanout(&ch, clients, writes).await;
                    println!("{}", watch_summary(clients, writes, &figures(&m)));
                    return Ok(());
                }
                if workload == "maintenance" {
                    let spec = maint::Spec {
                        revisions,
                        keyspace,
                        value_size,
                        rate,
                    };
                    let conns = workload::connect(&endpoints, conns, &access).await?;
                    maint::history(&conns, &spec).await?;
                    let leader = workload::dial(&endpoints[0], &access)
                        .await?
                        .with_timeout(Duration::from_secs(1800));
                    let phases = maint::run(&conns, leader, &spec).await?;
                    for (name, p) in maint::PHASES.iter().zip(&phases) {
                        println!(
                            "writes during {name}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} writes, {} errors, call {:.2} s)",
                            p.p50, p.p99, p.p999, p.max, p.count, p.errors, p.call_secs
                        );
                    }
                    return Ok(());
                }
                let w = Workload::parse(&workload).ok_or_else(|| {
                    format!("unknown workload {workload:?}: put, range, range-serializable, txn, mixed, watch, maintenance")
                })?;
                let spec = Spec {
                    workload: w,
                    clients,
                    duration: Duration::from_secs(duration),
                    keyspace,
                    value_size,
                };
                let threads = threads.unwrap_or_else(load_threads);
                let m = workload::run(endpoints, access, conns, spec, threads).await?;
                let f = figures(&m);
                println!(
                    "{}: {:.0} ops/s, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} errors",
                    w.name(),
                    f.throughput,
                    f.p50,
                    f.p90,
                    f.p99,
                    f.p999,
                    f.errors
                );
                Ok(())
            }
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nod-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_large_phase_asks_for_the_disk_it_will_use() {
        // 8 GiB: 3 members at 1.75x plus 10 GiB.
        assert_eq!(large_disk_need(8), 52 << 30);
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).unwrap();
        assert!(free > 0 && free < large_disk_need(1 << 20), "{free}");
        assert!(free_bytes(std::path::Path::new("/proc/self/nonexistent/x")).is_err());
    }
}
