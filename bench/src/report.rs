//! The results: a markdown table with the Nod/etcd ratio of every figure
//! (plain, then TLS + auth when it ran, and what TLS + auth costs each
//! system), and a PNG chart of the plain throughput.

use std::fmt::Write as _;
use std::path::Path;

pub struct Row {
    pub workload: String,
    pub clients: usize,
    /// (throughput ops/s, p50, p90, p99, p99.9 in ms, errors) for Nod, etcd.
    pub nod: Figures,
    pub etcd: Figures,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    /// The median round's throughput.
    pub throughput: f64,
    /// The slowest and the fastest round's throughput.
    pub spread: (f64, f64),
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub errors: u64,
    /// fsyncs per committed write per member (write workloads).
    pub fsyncs_per_write: Option<f64>,
}

pub struct Extras {
    pub machine: String,
    pub command: String,
    pub rounds: usize,
    pub secs: u64,
    pub fdatasync_us: (f64, f64),
    /// (Nod, etcd)
    pub peak_rss: (u64, u64),
    pub disk_bytes: (u64, u64),
    pub restart: Option<(u64, f64, f64)>,
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// The table of rows: each figure for Nod and etcd, with their ratios.
fn table(s: &mut String, rows: &[Row]) {
    let _ = writeln!(
        s,
        "| workload | clients | Nod ops/s | etcd ops/s | ratio | Nod p50 | etcd p50 | ratio | Nod p90 | etcd p90 | Nod p99 | etcd p99 | ratio | Nod p99.9 | etcd p99.9 | errors (Nod/etcd) |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let (n, e) = (r.nod, r.etcd);
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {}/{} |",
            r.workload,
            r.clients,
            n.throughput,
            n.spread.0,
            n.spread.1,
            e.throughput,
            e.spread.0,
            e.spread.1,
            ratio(n.throughput, e.throughput),
            n.p50,
            e.p50,
            ratio(n.p50, e.p50),
            n.p90,
            e.p90,
            n.p99,
            e.p99,
            ratio(n.p99, e.p99),
            n.p999,
            e.p999,
            n.errors,
            e.errors
        );
    }
}

/// What TLS + auth costs each system: its secure figures over its plain
/// ones, row by row (rows of the same workload and clients).
fn cost_table(s: &mut String, plain: &[Row], secure: &[Row]) {
    let _ = writeln!(
        s,
        "| workload | clients | Nod ops/s | etcd ops/s | Nod p50 | etcd p50 | Nod p99 | etcd p99 |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for t in secure {
        let Some(p) = plain
            .iter()
            .find(|p| p.workload == t.workload && p.clients == t.clients)
        else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            t.workload,
            t.clients,
            ratio(t.nod.throughput, p.nod.throughput),
            ratio(t.etcd.throughput, p.etcd.throughput),
            ratio(t.nod.p50, p.nod.p50),
            ratio(t.etcd.p50, p.etcd.p50),
            ratio(t.nod.p99, p.nod.p99),
            ratio(t.etcd.p99, p.etcd.p99),
        );
    }
}

/// The report: `rows` from the plain clusters, `secure` (empty when not
/// run) from the TLS + auth ones.
pub fn markdown(rows: &[Row], secure: &[Row], x: &Extras) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Nod vs etcd: benchmark results\n");
    let _ = writeln!(s, "Machine: {}\n", x.machine);
    let _ = writeln!(s, "Command: `{}`\n", x.command);
    let side_by_side = if secure.is_empty() {
        "both clusters up side by side"
    } else {
        "both clusters up side by side, and both again with TLS + auth (below): four clusters, the idle ones only heartbeating"
    };
    let _ = writeln!(
        s,
        "Both systems: 3 members on loopback, fsync on, the same client (`nod-bench`, etcd v3 gRPC), {side_by_side}. Clients spread their connections over the members, the leader's first (so 1 client talks to the leader on both); the client runs one single-threaded runtime per core, each owning its share of the connections and the clients on them. Each workload ran {} rounds of {} s on each cluster in turn, the order reversed every other round; ops/s is the median round (the slowest and fastest round in brackets), latencies (ms) are over every round's requests. Ratio = Nod / etcd (throughput: higher is better; latency: lower is better).\n",
        x.rounds, x.secs
    );
    table(&mut s, rows);
    if !secure.is_empty() {
        let _ = writeln!(s, "\n## TLS + auth\n");
        let _ = writeln!(
            s,
            "The same workloads on both systems again, in the same rounds as the plain clusters (a workload's rounds go over all four clusters in turn), each member with client TLS requiring client certificates (`--cert-file --key-file --trusted-ca-file --client-cert-auth`), peer mutual TLS (`--peer-cert-file --peer-key-file --peer-trusted-ca-file --peer-client-cert-auth`) and authentication on (a `root` user; the load runs as a user whose role grants readwrite on the benchmark's keys). The client logs in once (Auth.Authenticate, etcd's simple tokens) and sends the token as `token` metadata with every call; its certificate's common name is no user, so no call passes without it. TLS 1.3 (rustls with ring on the client and on Nod; Go's crypto/tls on etcd), ECDSA P-256 certificates. Ratios as above.\n"
        );
        table(&mut s, secure);
        let _ = writeln!(s, "\nWhat TLS + auth costs each system: its TLS + auth figure over its plain one above, measured in the same rounds (ops/s: below 1× is slower; latency: above 1× is slower).\n");
        cost_table(&mut s, rows, secure);
    }
    let _ = writeln!(s, "\n## The physical limit and the cost per write\n");
    let _ = writeln!(
        s,
        "fdatasync of a 4 KiB write on this disk: p50 {:.0} µs, p99 {:.0} µs.\n",
        x.fdatasync_us.0, x.fdatasync_us.1
    );
    let _ = writeln!(
        s,
        "| write workload | clients | Nod fsyncs per write | etcd fsyncs per write |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for r in rows {
        if let (Some(n), Some(e)) = (r.nod.fsyncs_per_write, r.etcd.fsyncs_per_write) {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.3} |",
                r.workload, r.clients, n, e
            );
        }
    }
    let _ = writeln!(s, "\n(WAL fsyncs per member, `etcd_disk_wal_fsync_duration_seconds_count`, divided by the writes committed.)\n");
    let _ = writeln!(s, "## Resources\n");
    let _ = writeln!(s, "| | Nod | etcd | ratio |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let _ = writeln!(
        s,
        "| peak RSS per member (MiB) | {:.1} | {:.1} | {} |",
        mib(x.peak_rss.0),
        mib(x.peak_rss.1),
        ratio(x.peak_rss.0 as f64, x.peak_rss.1 as f64)
    );
    let _ = writeln!(
        s,
        "| data on disk per member (MiB) | {:.1} | {:.1} | {} |",
        mib(x.disk_bytes.0),
        mib(x.disk_bytes.1),
        ratio(x.disk_bytes.0 as f64, x.disk_bytes.1 as f64)
    );
    if let Some((keys, n, e)) = x.restart {
        let _ = writeln!(
            s,
            "| restart to ready with {keys} keys (s) | {n:.2} | {e:.2} | {} |",
            ratio(n, e)
        );
    }
    s
}

/// A grouped horizontal bar chart of throughput per workload and client
/// count (horizontal, so the long workload names stay readable).
pub fn chart(rows: &[Row], path: &Path, font: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let bytes = std::fs::read(font).map_err(|e| format!("font {}: {e}", font.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| "the font does not load".to_string())?;
    let n = rows.len();
    let max = rows
        .iter()
        .map(|r| r.nod.throughput.max(r.etcd.throughput))
        .fold(1.0, f64::max)
        * 1.1;
    let height = 120 + 44 * n.max(1) as u32;
    let root = BitMapBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Throughput (ops/s): Nod (blue) vs etcd (red), 3 members, same machine",
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(330)
        // Row 0 at the top.
        .build_cartesian_2d(0f64..max, (n as f64)..0f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("ops/s")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    let label_style = ("sans-serif", 15)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for (i, r) in rows.iter().enumerate() {
        let y = i as f64;
        chart
            .draw_series([
                Rectangle::new([(0.0, y + 0.1), (r.nod.throughput, y + 0.5)], BLUE.filled()),
                Rectangle::new([(0.0, y + 0.5), (r.etcd.throughput, y + 0.9)], RED.filled()),
            ])
            .map_err(|e| e.to_string())?;
        let (px, py) = chart.backend_coord(&(0.0, y + 0.5));
        root.draw(&Text::new(
            format!("{} ×{}", r.workload, r.clients),
            (px - 10, py),
            label_style.clone(),
        ))
        .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
