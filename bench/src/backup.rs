//! `nod-bench backup --keys N`: what a full backup and a restore of N keys
//! cost, on real processes: a 3-member Nod cluster loaded with N keys,
//! `nod backup save` into a directory, `nod backup verify`, `nod snapshot
//! restore --from-backup` into a new data directory, and that directory
//! started as a one-member cluster until it serves every key. Wall time,
//! peak resident set (VmHWM, sampled every 20 ms) and sizes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{self, Cluster, System};
use crate::workload;

/// One command's cost.
struct Cost {
    seconds: f64,
    peak_rss: u64,
    stdout: String,
}

/// Runs `nod ARGS` to its end, sampling its peak resident set.
fn timed(bin: &Path, args: &[&str]) -> Result<Cost, String> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut peak = 0u64;
    let status = loop {
        if let Some(b) = cluster::peak_rss_of(child.id()) {
            peak = peak.max(b);
        }
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for nod {}: {e}", args.join(" "))),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nod {}: {e}", args.join(" ")))?;
    if !status.success() {
        return Err(format!(
            "nod {} exited with {status}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Cost {
        seconds,
        peak_rss: peak,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Counts the keys a member serves (`count_only` over the benchmark's keys).
async fn count_keys(endpoint: &str) -> Result<i64, String> {
    let access = workload::Access::default();
    let ch = workload::dial(endpoint, &access).await?;
    crate::large::count_all(&ch)
        .await
        .map(|(_, n)| n)
        .map_err(|e| format!("{endpoint}: {e}"))
}

pub async fn run(
    bin: &Path,
    root: &Path,
    keys: u64,
    value_size: usize,
    random: bool,
) -> Result<(), String> {
    let dir = root.join("backup-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let source_dir = dir.join("source");
    std::fs::create_dir_all(&source_dir).map_err(|e| format!("{}: {e}", source_dir.display()))?;
    eprintln!(
        "[backup] starting 3 Nod members in {}",
        source_dir.display()
    );
    let mut source = Cluster::start(System::Nod, bin, &source_dir, None)?;
    source.wait_ready(Duration::from_secs(60)).await?;
    let endpoints = source.endpoints();
    let ch = workload::connect(&endpoints, 32, source.access()).await?;
    let t = Instant::now();
    let errors = workload::load_values(&ch, keys, 256, value_size, random).await;
    if errors > 0 {
        return Err(format!("{errors} puts failed while loading"));
    }
    eprintln!(
        "[backup] loaded {keys} keys of {value_size} {} bytes in {:.1} s",
        if random { "random" } else { "constant" },
        t.elapsed().as_secs_f64()
    );
    let on_disk = source.disk_bytes();

    let dest = dir.join("backups");
    let dest_s = dest.to_string_lossy().into_owned();
    let eps = endpoints.join(",");
    let save = timed(
        bin,
        &[
            "--endpoints",
            &eps,
            "--command-timeout",
            "600",
            "backup",
            "save",
            "--dest",
            &dest_s,
        ],
    )?;
    eprintln!("[backup] {}", save.stdout.trim());
    let stored = cluster::dir_bytes(&dest);
    let verify = timed(bin, &["backup", "verify", "--dest", &dest_s])?;
    source.stop();

    let port = cluster::free_port();
    let peer = cluster::free_port();
    let data = dir.join("restored");
    let data_s = data.to_string_lossy().into_owned();
    let initial = format!("r1=http://127.0.0.1:{peer}");
    let restore = timed(
        bin,
        &[
            "snapshot",
            "restore",
            "--from-backup",
            &dest_s,
            "--name",
            "r1",
            "--data-dir",
            &data_s,
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            "bench-restored",
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ],
    )?;
    // The restored member serving every key: the restore's end to end.
    let t = Instant::now();
    let log = std::fs::File::create(dir.join("restored.log")).map_err(|e| e.to_string())?;
    let mut server = Command::new(bin)
        .args(["server", "--name", "r1", "--data-dir", &data_s])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{port}"),
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            "bench-restored",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let served = loop {
        match count_keys(&endpoint).await {
            Ok(n) => break n,
            Err(e) if t.elapsed() > Duration::from_secs(300) => {
                let _ = server.kill();
                return Err(format!("the restored member never served: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let serving = t.elapsed().as_secs_f64();
    let _ = server.kill();
    let _ = server.wait();
    if served != keys as i64 {
        return Err(format!(
            "the restored member serves {served} keys, not {keys}"
        ));
    }
    let restored_bytes = cluster::dir_bytes(&data);

    let kind = if random { "random" } else { "constant" };
    println!("| {keys} keys, {value_size} B {kind} values | time | peak RSS | size |");
    println!("|---|---|---|---|");
    println!(
        "| source (one member's data directory) | | | {:.0} MiB |",
        mib(on_disk)
    );
    println!(
        "| `nod backup save` (full, zstd) | {:.1} s | {:.0} MiB | {:.0} MiB stored |",
        save.seconds,
        mib(save.peak_rss),
        mib(stored)
    );
    println!(
        "| `nod backup verify` | {:.1} s | {:.0} MiB | |",
        verify.seconds,
        mib(verify.peak_rss)
    );
    println!(
        "| `nod snapshot restore --from-backup` | {:.1} s | {:.0} MiB | {:.0} MiB data directory |",
        restore.seconds,
        mib(restore.peak_rss),
        mib(restored_bytes)
    );
    println!("| restored member start to serving all {served} keys | {serving:.1} s | | |");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
