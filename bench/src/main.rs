//! `nod-bench`: Nod against etcd on the same machine, in one run, with one
//! client. See BENCHMARKS.md for the command and the latest results.
//!
//! - `nod-bench run --mode quick|full` starts a 3-member Nod cluster and a
//!   3-member etcd cluster in turn, runs every workload against each, and
//!   writes `results.md` and `throughput.png` into `--out`.
//! - `nod-bench load --endpoints … --workload put --clients 16` drives any
//!   etcd v3 endpoint with one workload and prints its figures.

mod cluster;
mod report;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use cluster::{Cluster, System};
use report::{Extras, Figures, Row};
use workload::{Measured, Spec, Workload};

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
    /// About 2 minutes: short runs, a small data set.
    Quick,
    /// Longer runs, 1M keys for the restart measurement.
    Full,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs every workload against a Nod and an etcd cluster and writes the report.
    Run {
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
        #[arg(long, default_value = "etcd")]
        etcd_bin: PathBuf,
        /// A TrueType font for the chart's labels.
        #[arg(
            long,
            default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
        )]
        font: PathBuf,
    },
    /// Drives running endpoints with one workload.
    Load {
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// put, range, range-serializable, txn, mixed
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
    },
}

fn url(e: &str) -> String {
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

fn figures(m: &Measured) -> Figures {
    Figures {
        throughput: m.throughput(),
        p50: m.ms(0.5),
        p90: m.ms(0.9),
        p99: m.ms(0.99),
        p999: m.ms(0.999),
        errors: m.errors,
        fsyncs_per_write: None,
    }
}

fn conns_for(clients: usize) -> usize {
    match clients {
        0..=1 => 1,
        2..=16 => 4,
        _ => 32,
    }
}

const FSYNCS: &str = "etcd_disk_wal_fsync_duration_seconds_count";

struct SystemResult {
    rows: Vec<(String, usize, Figures)>,
    peak_rss: u64,
    disk: u64,
    restart: Option<f64>,
}

async fn bench_system(
    system: System,
    bin: &std::path::Path,
    root: &std::path::Path,
    mode: Mode,
) -> Result<SystemResult, String> {
    let (secs, keyspace, watchers, writes, restart_keys) = match mode {
        Mode::Quick => (2, 10_000u64, 100, 100, 100_000u64),
        Mode::Full => (10, 100_000u64, 1000, 1000, 1_000_000u64),
    };
    let dir = root.join(system.name());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    eprintln!(
        "[{}] starting 3 members in {}",
        system.name(),
        dir.display()
    );
    let mut c = Cluster::start(system, bin, &dir)?;
    c.wait_ready(Duration::from_secs(60)).await?;
    let endpoints = c.endpoints();
    let load_ch = workload::connect(&endpoints, 32).await?;
    let errors = workload::load(&load_ch, keyspace, 256, 256).await;
    eprintln!(
        "[{}] loaded {keyspace} keys ({errors} errors)",
        system.name()
    );
    let mut rows = Vec::new();
    for w in Workload::ALL {
        for clients in [1usize, 16, 256] {
            let ch = workload::connect(&endpoints, conns_for(clients)).await?;
            let before = c.metric_sum(FSYNCS);
            let m = workload::run(
                &ch,
                &Spec {
                    workload: w,
                    clients,
                    duration: Duration::from_secs(secs),
                    keyspace,
                    value_size: 256,
                },
            )
            .await;
            let mut f = figures(&m);
            if w.writes() && m.ops > 0 {
                let fsyncs = (c.metric_sum(FSYNCS) - before) / 3.0;
                f.fsyncs_per_write = Some(fsyncs / m.ops as f64);
            }
            eprintln!(
                "[{}] {} ×{clients}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                system.name(),
                w.name(),
                f.throughput,
                f.p50,
                f.p99,
                f.errors
            );
            rows.push((w.name().to_string(), clients, f));
        }
    }
    let ch = workload::connect(&endpoints, 16).await?;
    let m = workload::watch_fanout(&ch, watchers, writes).await;
    let f = figures(&m);
    eprintln!(
        "[{}] watch fan-out {watchers} watchers × {writes} writes: {:.0} events/s, p99 {:.2} ms, {} missing",
        system.name(),
        f.throughput,
        f.p99,
        f.errors
    );
    rows.push((
        format!("watch fan-out ({writes} writes, events/s)"),
        watchers,
        f,
    ));
    let peak_rss = c.peak_rss();
    let disk = c.disk_bytes();
    eprintln!(
        "[{}] loading {restart_keys} keys for the restart measurement",
        system.name()
    );
    let errors = workload::load(&load_ch, restart_keys, 256, 256).await;
    drop(load_ch);
    drop(ch);
    let restart = match c.restart().await {
        Ok(d) => {
            eprintln!(
                "[{}] restart to ready with {restart_keys} keys: {:.2} s ({errors} load errors)",
                system.name(),
                d.as_secs_f64()
            );
            Some(d.as_secs_f64())
        }
        Err(e) => {
            eprintln!("[{}] restart failed: {e}", system.name());
            None
        }
    };
    let peak_rss = peak_rss.max(c.peak_rss());
    c.stop();
    Ok(SystemResult {
        rows,
        peak_rss,
        disk,
        restart,
    })
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

async fn run(
    mode: Mode,
    out: PathBuf,
    data_root: Option<PathBuf>,
    nod_bin: Option<PathBuf>,
    etcd_bin: PathBuf,
    font: PathBuf,
) -> Result<(), String> {
    let nod_bin = match nod_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("nod"),
    };
    if !nod_bin.exists() {
        return Err(format!(
            "no nod binary at {} (build it: cargo build --release --bin nod)",
            nod_bin.display()
        ));
    }
    let data_root = data_root.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
            .join(".cache/nod/bench")
    });
    std::fs::create_dir_all(&data_root).map_err(|e| format!("{}: {e}", data_root.display()))?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let fdatasync = cluster::fdatasync_latency(&data_root, 500)?;
    eprintln!(
        "fdatasync in {}: p50 {:.0} µs, p99 {:.0} µs",
        data_root.display(),
        fdatasync.0,
        fdatasync.1
    );
    let nod = bench_system(System::Nod, &nod_bin, &data_root, mode).await?;
    let etcd = bench_system(System::Etcd, &etcd_bin, &data_root, mode).await?;
    let rows: Vec<Row> = nod
        .rows
        .iter()
        .zip(etcd.rows.iter())
        .map(|((w, c, n), (_, _, e))| Row {
            workload: w.clone(),
            clients: *c,
            nod: *n,
            etcd: *e,
        })
        .collect();
    let restart_keys = if mode == Mode::Quick {
        100_000
    } else {
        1_000_000
    };
    let extras = Extras {
        machine: machine(),
        command: format!(
            "./scripts/bench{}",
            if mode == Mode::Full { " --full" } else { "" }
        ),
        fdatasync_us: fdatasync,
        peak_rss: (nod.peak_rss, etcd.peak_rss),
        disk_bytes: (nod.disk, etcd.disk),
        restart: match (nod.restart, etcd.restart) {
            (Some(n), Some(e)) => Some((restart_keys, n, e)),
            _ => None,
        },
    };
    let md = report::markdown(&rows, &extras);
    let md_path = out.join("results.md");
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let png = out.join("throughput.png");
    match report::chart(&rows, &png, &font) {
        Ok(()) => eprintln!("chart: {}", png.display()),
        Err(e) => eprintln!("no chart: {e}"),
    }
    println!("{md}");
    eprintln!("results: {}", md_path.display());
    let _ = std::fs::remove_dir_all(&data_root);
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
            Cmd::Run {
                mode,
                out,
                data_root,
                nod_bin,
                etcd_bin,
                font,
            } => run(mode, out, data_root, nod_bin, etcd_bin, font).await,
            Cmd::Load {
                endpoints,
                workload,
                clients,
                conns,
                duration,
                keyspace,
            } => {
                let w = Workload::parse(&workload).ok_or_else(|| {
                    format!("unknown workload {workload:?}: put, range, range-serializable, txn, mixed")
                })?;
                let endpoints: Vec<String> = endpoints.iter().map(|e| url(e)).collect();
                let ch = workload::connect(&endpoints, conns).await?;
                let m = workload::run(
                    &ch,
                    &Spec {
                        workload: w,
                        clients,
                        duration: Duration::from_secs(duration),
                        keyspace,
                        value_size: 256,
                    },
                )
                .await;
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
