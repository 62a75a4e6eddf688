//! etcd's own load tool, `benchmark` (etcd's `tools/benchmark`, built from
//! its Go module by `scripts/etcd/install`), run against every system with
//! the flags etcd's performance guide uses (`op-guide/performance.md`: 8-byte
//! sequential keys, 256-byte values, 1 client on 1 connection against the
//! leader, 1000 clients on 100 connections against every member), plus the
//! client counts and commands the comparison needs. Our own client
//! (`workload.rs`) stays as a second opinion.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One invocation of the tool: a command with its flags, a client count
/// and a connection count.
#[derive(Clone, Debug)]
pub struct Case {
    /// The row's name in the report ("put", "range (linearizable)", …).
    pub name: &'static str,
    pub clients: usize,
    pub conns: usize,
    /// Only the leader's endpoint (the guide's "leader only"), else every member.
    pub leader_only: bool,
    /// The subcommand and its flags, without `--total`.
    pub args: Vec<String>,
    /// Requests per run (`--total`; for `watch`, `--put-total`).
    pub total: usize,
    /// `watch` counts its total in puts and reports the events delivered.
    pub watch: bool,
}

/// The key the range cases read (written once, 256 bytes, before they run).
pub const RANGE_KEY: &str = "bench-range";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The cases, smaller in quick mode (`scale` divides the guide's totals;
/// every case still sends at least 20 requests per client… but never fewer
/// than 200 in all).
pub fn cases(quick: bool) -> Vec<Case> {
    let total = |full: usize, clients: usize| {
        if quick {
            (full / 20).max(clients * 2).max(200)
        } else {
            full
        }
    };
    let put = s(&[
        "put",
        "--key-size=8",
        "--sequential-keys",
        "--val-size=256",
        "--key-space-size=100000",
    ]);
    let mut v = Vec::new();
    for (clients, conns, full) in [
        (1usize, 1usize, 10_000usize),
        (16, 4, 20_000),
        (256, 32, 100_000),
        (1000, 100, 100_000),
    ] {
        v.push(Case {
            name: "put",
            clients,
            conns,
            leader_only: clients == 1,
            args: put.clone(),
            total: total(full, clients),
            watch: false,
        });
    }
    for (name, consistency) in [
        ("range (linearizable)", "--consistency=l"),
        ("range (serializable)", "--consistency=s"),
    ] {
        for (clients, conns, full) in [
            (1usize, 1usize, 10_000usize),
            (256, 32, 100_000),
            (1000, 100, 100_000),
        ] {
            v.push(Case {
                name,
                clients,
                conns,
                // The guide reads linearizably from the leader with one client.
                leader_only: clients == 1 && consistency == "--consistency=l",
                args: s(&["range", RANGE_KEY, consistency]),
                total: total(full, clients),
                watch: false,
            });
        }
    }
    for (clients, conns, full) in [(16usize, 4usize, 20_000usize), (256, 32, 50_000)] {
        v.push(Case {
            name: "txn-put",
            clients,
            conns,
            leader_only: false,
            args: s(&[
                "txn-put",
                "--key-size=8",
                "--val-size=256",
                "--txn-ops=1",
                "--key-space-size=100000",
            ]),
            total: total(full, clients),
            watch: false,
        });
    }
    v.push(Case {
        name: "lease-keepalive",
        clients: 100,
        conns: 10,
        leader_only: false,
        args: s(&["lease-keepalive"]),
        total: total(100_000, 100),
        watch: false,
    });
    // The tool's defaults: 10 streams of 100 watchers on one key; each put
    // is delivered to all 1000.
    v.push(Case {
        name: "watch (events)",
        clients: 10,
        conns: 10,
        leader_only: false,
        args: s(&[
            "watch",
            "--streams=10",
            "--watch-per-stream=100",
            "--watched-key-total=1",
        ]),
        total: if quick { 100 } else { 1000 },
        watch: true,
    });
    v
}

/// What one run printed: its summary (for `watch`, the delivery summary:
/// its rate is events delivered per second; its latencies mean nothing, the
/// tool times each event from its own receipt).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub total_secs: f64,
    pub rps: f64,
    /// Latencies in milliseconds.
    pub average: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub slowest: f64,
    /// Requests that failed (the tool's error distribution).
    pub errors: u64,
}

/// The median of each figure over runs (errors: their sum).
pub fn median(runs: &[Summary]) -> Summary {
    let m = |get: fn(&Summary) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(get).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    Summary {
        total_secs: m(|s| s.total_secs),
        rps: m(|s| s.rps),
        average: m(|s| s.average),
        p50: m(|s| s.p50),
        p90: m(|s| s.p90),
        p99: m(|s| s.p99),
        p999: m(|s| s.p999),
        slowest: m(|s| s.slowest),
        errors: runs.iter().map(|s| s.errors).sum(),
    }
}

fn secs(v: &str) -> Option<f64> {
    v.trim()
        .trim_end_matches('.')
        .trim_end_matches("secs")
        .trim()
        .parse()
        .ok()
}

/// Parses the tool's report (`pkg/report`): blocks that start with a line
/// ending in "Summary:" or "summary:", then `Total:`, `Slowest:`,
/// `Average:`, `Requests/sec:`, a histogram, "Latency distribution:" with
/// lines like `99% in 0.0031 secs.`, and "Error distribution:" with lines
/// like `[12]\terror text`. Returns the blocks by their heading.
pub fn parse(out: &str) -> Vec<(String, Summary)> {
    let mut blocks: Vec<(String, Summary)> = Vec::new();
    let mut in_errors = false;
    for line in out.lines() {
        let t = line.trim();
        if t.ends_with("Summary:") || t.ends_with("summary:") {
            // "Summary:" alone follows a heading such as "Watch events received summary:".
            let heading = if t == "Summary:" {
                match blocks.last() {
                    Some((h, sum)) if *sum == Summary::default() => {
                        let h = h.clone();
                        blocks.pop();
                        h
                    }
                    _ => String::new(),
                }
            } else {
                t.trim_end_matches(':').to_string()
            };
            blocks.push((heading, Summary::default()));
            in_errors = false;
            continue;
        }
        let Some((_, sum)) = blocks.last_mut() else {
            continue;
        };
        if t == "Error distribution:" {
            in_errors = true;
            continue;
        }
        if t.ends_with(':') && !t.contains('\t') {
            in_errors = false;
            continue;
        }
        if in_errors {
            if let Some(n) = t
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .and_then(|(n, _)| n.parse::<u64>().ok())
            {
                sum.errors += n;
            }
            continue;
        }
        if let Some((k, v)) = t.split_once(':') {
            match k.trim() {
                "Total" => sum.total_secs = secs(v).unwrap_or(0.0),
                "Slowest" => sum.slowest = secs(v).unwrap_or(0.0) * 1000.0,
                "Average" => sum.average = secs(v).unwrap_or(0.0) * 1000.0,
                "Requests/sec" => sum.rps = v.trim().parse().unwrap_or(0.0),
                _ => {}
            }
            continue;
        }
        if let Some((pct, v)) = t.split_once("% in ") {
            let ms = secs(v).unwrap_or(0.0) * 1000.0;
            match pct.trim() {
                "50" => sum.p50 = ms,
                "90" => sum.p90 = ms,
                "99" => sum.p99 = ms,
                "99.9" => sum.p999 = ms,
                _ => {}
            }
        }
    }
    blocks
}

pub struct Tool {
    bin: PathBuf,
}

impl Tool {
    pub fn new(bin: &Path) -> Result<Tool, String> {
        if !bin.exists() {
            return Err(format!(
                "no etcd benchmark tool at {} (scripts/etcd/install builds it)",
                bin.display()
            ));
        }
        Ok(Tool {
            bin: bin.to_path_buf(),
        })
    }

    /// Runs one case against `endpoints` (the leader's first) and returns
    /// its summary; an exit other than 0, or no summary, is an error.
    pub fn run(&self, case: &Case, endpoints: &[String]) -> Result<Summary, String> {
        let eps = if case.leader_only {
            endpoints[..1].join(",")
        } else {
            endpoints.join(",")
        };
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--endpoints={eps}"))
            .arg(format!("--clients={}", case.clients))
            .arg(format!("--conns={}", case.conns))
            .arg("--precise")
            .args(&case.args)
            .arg(if case.watch {
                format!("--put-total={}", case.total)
            } else {
                format!("--total={}", case.total)
            });
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{} {:?} exited with {}: {}{}",
                self.bin.display(),
                case.args,
                out.status,
                stdout.lines().rev().take(5).collect::<Vec<_>>().join(" | "),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        let blocks = parse(&stdout);
        let wanted = if case.watch {
            "Watch events received summary"
        } else {
            ""
        };
        blocks
            .into_iter()
            .find(|(h, _)| h == wanted)
            .map(|(_, s)| s)
            .ok_or_else(|| {
                format!(
                    "no {wanted:?} summary in the output of {:?}: {}",
                    case.args,
                    stdout.chars().take(400).collect::<String>()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report format of etcd's pkg/report (v3.6, v3.7), `--precise`.
    const PUT: &str = "\nSummary:\n  Total:\t2.0000 secs.\n  Slowest:\t0.0500 secs.\n  Fastest:\t0.0010 secs.\n  Average:\t0.0040 secs.\n  Stddev:\t0.0010 secs.\n  Requests/sec:\t5000.5\n\nResponse time histogram:\n  0.0010 [1]\t|\n  0.0059 [9000]\t|∎∎∎∎\n\nLatency distribution:\n  10% in 0.0020 secs.\n  50% in 0.0035 secs.\n  90% in 0.0060 secs.\n  99% in 0.0120 secs.\n  99.9% in 0.0400 secs.\n\nError distribution:\n  [3]\tetcdserver: too many requests\n  [2]\tcontext deadline exceeded\n";

    #[test]
    fn a_report_parses_to_its_figures() {
        let b = parse(PUT);
        assert_eq!(b.len(), 1);
        let (h, s) = &b[0];
        assert_eq!(h, "");
        assert!((s.rps - 5000.5).abs() < 1e-9);
        assert!((s.total_secs - 2.0).abs() < 1e-9);
        assert!((s.average - 4.0).abs() < 1e-9);
        assert!((s.p50 - 3.5).abs() < 1e-9);
        assert!((s.p90 - 6.0).abs() < 1e-9);
        assert!((s.p99 - 12.0).abs() < 1e-9);
        assert!((s.p999 - 40.0).abs() < 1e-9);
        assert!((s.slowest - 50.0).abs() < 1e-9);
        assert_eq!(s.errors, 5, "the error distribution's counts add up");
    }

    #[test]
    fn the_watch_report_has_two_named_blocks() {
        let out = format!(
            "Watch creation summary:\n{PUT}Watch events received summary:\n{}",
            PUT.replace("5000.5", "70000")
        );
        let b = parse(&out);
        let heads: Vec<&str> = b.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(
            heads,
            ["Watch creation summary", "Watch events received summary"]
        );
        assert!((b[1].1.rps - 70000.0).abs() < 1e-9);
        assert!((b[0].1.rps - 5000.5).abs() < 1e-9);
    }

    #[test]
    fn the_median_takes_each_figure_alone_and_sums_errors() {
        let run = |rps: f64, p99: f64, errors: u64| Summary {
            rps,
            p99,
            errors,
            ..Default::default()
        };
        let m = median(&[run(300.0, 9.0, 1), run(100.0, 1.0, 0), run(200.0, 5.0, 2)]);
        assert_eq!((m.rps, m.p99, m.errors), (200.0, 5.0, 3));
        let even = median(&[run(100.0, 1.0, 0), run(300.0, 3.0, 0)]);
        assert_eq!(even.rps, 200.0);
    }

    #[test]
    fn quick_cases_are_smaller_but_give_every_client_work() {
        let full = cases(false);
        let quick = cases(true);
        assert_eq!(full.len(), quick.len());
        for (f, q) in full.iter().zip(&quick) {
            assert!(q.total <= f.total, "{}", f.name);
            assert!(
                q.total >= q.clients.min(f.total),
                "{} ×{}",
                q.name,
                q.clients
            );
            assert!(q.conns <= q.clients);
        }
    }
}
