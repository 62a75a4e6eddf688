//! The results: markdown tables with every system's figures side by side
//! and the ratio of Nod to the reference etcd (etcd's own tool, our client
//! plain, then TLS + auth when it ran, and what TLS + auth costs each
//! system), and a PNG chart of the plain throughput.

use std::fmt::Write as _;
use std::path::Path;

pub struct Row {
    pub workload: String,
    pub clients: usize,
    /// One per system, in the report's order (Nod first).
    pub figs: Vec<Figures>,
}

/// A row of etcd's own tool: one case, each system's summary.
pub struct ToolRow {
    pub case: String,
    pub clients: usize,
    pub conns: usize,
    pub leader_only: bool,
    pub total: usize,
    /// The tool's watch: its rate is events per second, its latencies mean
    /// nothing (left out).
    pub watch: bool,
    /// One per system, the median over rounds of each figure.
    pub sums: Vec<crate::etcd_tool::Summary>,
}

/// One operation of the Kubernetes-shaped workload on one system.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpFigures {
    pub count: u64,
    pub errors: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// The Kubernetes-shaped workload on one system.
#[derive(Clone, Debug, Default)]
pub struct K8sFigures {
    /// In the order of `k8s::Op::ALL`.
    pub ops: Vec<OpFigures>,
    /// Operations per second completed (lease grants and deliveries not counted).
    pub rate: f64,
    /// The members' CPU time per completed operation, in microseconds.
    pub cpu_us_per_op: f64,
    pub conflicts: u64,
    pub progress_notifications: u64,
}

impl K8sFigures {
    pub fn of(m: &crate::k8s::Measured, cpu_ns: u64) -> K8sFigures {
        let q = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        K8sFigures {
            ops: m
                .hists
                .iter()
                .zip(&m.errors)
                .map(|(h, e)| OpFigures {
                    count: h.len(),
                    errors: *e,
                    p50: q(h, 0.5),
                    p99: q(h, 0.99),
                    p999: q(h, 0.999),
                })
                .collect(),
            rate: m.ops as f64 / m.elapsed.as_secs_f64().max(1e-9),
            cpu_us_per_op: cpu_ns as f64 / 1000.0 / m.ops.max(1) as f64,
            conflicts: m.conflicts,
            progress_notifications: m.progress_notifications,
        }
    }
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
    /// The systems, in the order of every row's figures: Nod first.
    pub systems: Vec<String>,
    /// The one the ratios divide by (an index into `systems`).
    pub reference: usize,
    pub rounds: usize,
    pub secs: u64,
    pub tool_rounds: usize,
    pub fdatasync_us: (f64, f64),
    /// One per system.
    pub peak_rss: Vec<u64>,
    pub disk_bytes: Vec<u64>,
    /// Keys, then seconds per system (None where the restart failed).
    pub restart: Option<(u64, Vec<Option<f64>>)>,
}

fn ratio(a: f64, b: f64) -> String {
    if a <= 0.0 || b <= 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// `names[i] figure` column headers, then the ratio column.
fn heads(names: &[String], what: &str, reference: &str, with_ratio: bool) -> String {
    let mut h: Vec<String> = names.iter().map(|n| format!("{n} {what}")).collect();
    if with_ratio {
        h.push(format!("Nod / {reference}"));
    }
    h.join(" | ")
}

/// A table's two header lines: the leading columns, then ops/s (or
/// req/s), p50, p99 and p99.9 of every system with the ratios, and errors.
fn header(s: &mut String, lead: &[&str], rate: &str, names: &[String], reference: usize) {
    let rn = &names[reference];
    let cols = lead.len() + 4 * names.len() + 3 + 1;
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} | errors ({}) |",
        lead.join(" | "),
        heads(names, rate, rn, true),
        heads(names, "p50", rn, true),
        heads(names, "p99", rn, true),
        heads(names, "p99.9", rn, false),
        names.join("/")
    );
    let _ = writeln!(s, "|---|{}", "---:|".repeat(cols - 1));
}

/// The table of rows: ops/s, p50, p99 and p99.9 for every system, each
/// with the Nod / reference ratio.
fn table(s: &mut String, rows: &[Row], names: &[String], reference: usize) {
    header(s, &["workload", "clients"], "ops/s", names, reference);
    for r in rows {
        let mut line = format!("| {} | {} |", r.workload, r.clients);
        let (n, e) = (r.figs[0], r.figs[reference]);
        for f in &r.figs {
            let _ = write!(
                line,
                " {:.0} ({:.0}–{:.0}) |",
                f.throughput, f.spread.0, f.spread.1
            );
        }
        let _ = write!(line, " {} |", ratio(n.throughput, e.throughput));
        for (get, with_ratio) in [
            ((|f: &Figures| f.p50) as fn(&Figures) -> f64, true),
            (|f: &Figures| f.p99, true),
            (|f: &Figures| f.p999, false),
        ] {
            for f in &r.figs {
                let _ = write!(line, " {:.2} |", get(f));
            }
            if with_ratio {
                let _ = write!(line, " {} |", ratio(get(&n), get(&e)));
            }
        }
        let errors: Vec<String> = r.figs.iter().map(|f| f.errors.to_string()).collect();
        let _ = writeln!(s, "{line} {} |", errors.join("/"));
    }
}

/// etcd's own tool's rows: requests/s, p50, p99, p99.9 for every system.
fn tool_table(s: &mut String, rows: &[ToolRow], names: &[String], reference: usize) {
    header(
        s,
        &["command", "clients", "conns", "target", "requests"],
        "req/s",
        names,
        reference,
    );
    for r in rows {
        let mut line = format!(
            "| {} | {} | {} | {} | {} |",
            r.case,
            r.clients,
            r.conns,
            if r.leader_only { "leader" } else { "all" },
            r.total
        );
        let (n, e) = (r.sums[0], r.sums[reference]);
        type Get = fn(&crate::etcd_tool::Summary) -> f64;
        for (get, with_ratio, digits) in [
            ((|f: &crate::etcd_tool::Summary| f.rps) as Get, true, 0usize),
            (|f| f.p50, true, 2),
            (|f| f.p99, true, 2),
            (|f| f.p999, false, 2),
        ] {
            let latency = digits > 0;
            for f in &r.sums {
                // The tool prints a percentile only when it has one (not
                // p99.9 of a few hundred requests).
                if (latency && r.watch) || get(f) <= 0.0 {
                    line.push_str(" – |");
                } else {
                    let _ = write!(line, " {:.*} |", digits, get(f));
                }
            }
            if with_ratio {
                if latency && r.watch {
                    line.push_str(" – |");
                } else {
                    let _ = write!(line, " {} |", ratio(get(&n), get(&e)));
                }
            }
        }
        let errors: Vec<String> = r.sums.iter().map(|f| f.errors.to_string()).collect();
        let _ = writeln!(s, "{line} {} |", errors.join("/"));
    }
}

/// What TLS + auth costs each system: its secure figures over its plain
/// ones, row by row (rows of the same workload and clients). The secure
/// rows hold Nod and the reference only.
fn cost_table(s: &mut String, plain: &[Row], secure: &[Row], names: &[String], reference: usize) {
    let (a, b) = (&names[0], &names[reference]);
    let _ = writeln!(
        s,
        "| workload | clients | {a} ops/s | {b} ops/s | {a} p50 | {b} p50 | {a} p99 | {b} p99 |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for t in secure {
        let Some(p) = plain
            .iter()
            .find(|p| p.workload == t.workload && p.clients == t.clients)
        else {
            continue;
        };
        let (tn, te, pn, pe) = (t.figs[0], t.figs[1], p.figs[0], p.figs[reference]);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            t.workload,
            t.clients,
            ratio(tn.throughput, pn.throughput),
            ratio(te.throughput, pe.throughput),
            ratio(tn.p50, pn.p50),
            ratio(te.p50, pe.p50),
            ratio(tn.p99, pn.p99),
            ratio(te.p99, pe.p99),
        );
    }
}

/// The Kubernetes-shaped workload: per operation, each system's p50, p99
/// and p99.9 (ms), with the ratio of the p99s; then rate, CPU per
/// operation, conflicts and progress notifications.
fn k8s_table(s: &mut String, figs: &[K8sFigures], names: &[String], reference: usize) {
    let rn = &names[reference];
    let _ = writeln!(
        s,
        "| operation | {} | {} | {} | count ({}) | errors ({}) |",
        heads(names, "p50", rn, false),
        heads(names, "p99", rn, true),
        heads(names, "p99.9", rn, true),
        names.join("/"),
        names.join("/")
    );
    let cols = 1 + 3 * names.len() + 2 + 2;
    let _ = writeln!(s, "|---|{}", "---:|".repeat(cols - 1));
    for (i, op) in crate::k8s::Op::ALL.iter().enumerate() {
        let at = |f: &K8sFigures| f.ops.get(i).copied().unwrap_or_default();
        let mut line = format!("| {} |", op.name());
        type Get = fn(&OpFigures) -> f64;
        for (get, with_ratio) in [
            ((|o: &OpFigures| o.p50) as Get, false),
            (|o| o.p99, true),
            (|o| o.p999, true),
        ] {
            for f in figs {
                let _ = write!(line, " {:.2} |", get(&at(f)));
            }
            if with_ratio {
                let _ = write!(
                    line,
                    " {} |",
                    ratio(get(&at(&figs[0])), get(&at(&figs[reference])))
                );
            }
        }
        let counts: Vec<String> = figs.iter().map(|f| at(f).count.to_string()).collect();
        let errors: Vec<String> = figs.iter().map(|f| at(f).errors.to_string()).collect();
        let _ = writeln!(s, "{line} {} | {} |", counts.join("/"), errors.join("/"));
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "| | {} | Nod / {rn} |", names.join(" | "));
    let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(names.len()));
    type Whole = fn(&K8sFigures) -> f64;
    for (what, get, digits) in [
        (
            "operations per second done",
            (|f: &K8sFigures| f.rate) as Whole,
            0usize,
        ),
        (
            "members' CPU per operation (µs, all 3 members)",
            |f| f.cpu_us_per_op,
            0,
        ),
        (
            "conflicts (compare failed, Else Get)",
            |f| f.conflicts as f64,
            0,
        ),
        (
            "progress notifications received",
            |f| f.progress_notifications as f64,
            0,
        ),
    ] {
        let cells: Vec<String> = figs
            .iter()
            .map(|f| format!("{:.*}", digits, get(f)))
            .collect();
        let _ = writeln!(
            s,
            "| {what} | {} | {} |",
            cells.join(" | "),
            ratio(get(&figs[0]), get(&figs[reference]))
        );
    }
}

/// The workloads beyond throughput, each empty when not run, one entry
/// per system.
pub struct More<'a> {
    pub k8s: &'a [K8sFigures],
    pub k8s_spec: &'a crate::k8s::Spec,
    pub maint: &'a [Vec<crate::maint::Phase>],
    pub maint_spec: &'a crate::maint::Spec,
    pub memory: &'a [crate::memory::Peaks],
    pub memory_spec: &'a crate::memory::Spec,
    pub large: &'a [crate::large::Large],
    pub large_gib: u64,
}

/// Writes during maintenance: per phase, each system's p99.9 and maximum
/// (ms) with the ratios of the maxima, and how long the call took.
fn maint_table(
    s: &mut String,
    phases: &[Vec<crate::maint::Phase>],
    names: &[String],
    reference: usize,
) {
    let rn = &names[reference];
    let _ = writeln!(
        s,
        "| writes during | {} | {} | {} | {} | {} | writes ({}) | errors ({}) |",
        heads(names, "p50", rn, false),
        heads(names, "p99", rn, false),
        heads(names, "p99.9", rn, true),
        heads(names, "max", rn, true),
        heads(names, "call (s)", rn, false),
        names.join("/"),
        names.join("/")
    );
    let cols = 1 + 5 * names.len() + 2 + 2;
    let _ = writeln!(s, "|---|{}", "---:|".repeat(cols - 1));
    for (i, name) in crate::maint::PHASES.iter().enumerate() {
        let at = |k: usize| {
            phases
                .get(k)
                .and_then(|p| p.get(i))
                .copied()
                .unwrap_or_default()
        };
        let mut line = format!("| {name} |");
        type Get = fn(&crate::maint::Phase) -> f64;
        for (get, with_ratio) in [
            ((|p: &crate::maint::Phase| p.p50) as Get, false),
            (|p| p.p99, false),
            (|p| p.p999, true),
            (|p| p.max, true),
            (|p| p.call_secs, false),
        ] {
            for k in 0..names.len() {
                let _ = write!(line, " {:.2} |", get(&at(k)));
            }
            if with_ratio {
                let _ = write!(line, " {} |", ratio(get(&at(0)), get(&at(reference))));
            }
        }
        let counts: Vec<String> = (0..names.len()).map(|k| at(k).count.to_string()).collect();
        let errors: Vec<String> = (0..names.len()).map(|k| at(k).errors.to_string()).collect();
        let _ = writeln!(s, "{line} {} | {} |", counts.join("/"), errors.join("/"));
    }
}

/// The large database: each figure per system, with the ratio.
fn large_table(s: &mut String, large: &[crate::large::Large], names: &[String], reference: usize) {
    let rn = &names[reference];
    let _ = writeln!(s, "| | {} | Nod / {rn} |", names.join(" | "));
    let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(names.len()));
    type Get = fn(&crate::large::Large) -> f64;
    let rows: [(&str, Get, usize); 12] = [
        ("put ops/s at the start", |l| l.put_empty, 0),
        ("put ops/s right after growing", |l| l.put_loaded, 0),
        ("seconds until idle after that", |l| l.settle_secs, 0),
        ("put ops/s at size", |l| l.put_large, 0),
        (
            "put at size / at the start",
            |l| l.put_large / l.put_empty.max(1e-9),
            2,
        ),
        ("range ops/s at the start", |l| l.range_empty, 0),
        ("range ops/s at size", |l| l.range_large, 0),
        (
            "range at size / at the start",
            |l| l.range_large / l.range_empty.max(1e-9),
            2,
        ),
        ("seconds to grow", |l| l.load_secs, 0),
        ("seconds to count every key", |l| l.count_secs, 2),
        ("seconds from restart to ready", |l| l.restart_secs, 2),
        (
            "data on disk per member (GiB)",
            |l| l.disk as f64 / (1u64 << 30) as f64,
            2,
        ),
    ];
    for (what, get, digits) in rows {
        let cells: Vec<String> = large
            .iter()
            .map(|l| format!("{:.*}", digits, get(l)))
            .collect();
        let r = match (large.first(), large.get(reference)) {
            (Some(a), Some(b)) => ratio(get(a), get(b)),
            _ => "–".into(),
        };
        let _ = writeln!(s, "| {what} | {} | {r} |", cells.join(" | "));
    }
    let counts: Vec<String> = large.iter().map(|l| l.counted.to_string()).collect();
    let _ = writeln!(s, "| keys counted | {} | |", counts.join(" | "));
}

/// The large database's section: how it was measured, and the table.
pub fn large_section(
    s: &mut String,
    large: &[crate::large::Large],
    large_gib: u64,
    secs: u64,
    names: &[String],
    reference: usize,
) {
    let _ = writeln!(s, "\n## A large database\n");
    let _ = writeln!(
        s,
        "Each system on its own (at the end of a full run, or alone with `--large-only`): put and linearizable range with 256 clients of our client ({} s each, on its 10,000 keys), then the system grows by {} GiB of live data (8 KiB values, {} keys, 128 puts in flight), then a put round at once, then (once the members are idle: together under a tenth of a core over 3 s, the compactions the load started done) the same put and range \"at size\", one `count_only` range over every key, and a restart of every member to ready. The goal: no cliff, throughput at size within 80% of the system's own at the start.\n",
        secs.max(3),
        large_gib,
        (large_gib << 30) / 8192
    );
    large_table(s, large, names, reference);
}

/// The section "Memory": what was measured, then `memory_table`.
pub fn memory_section(
    s: &mut String,
    peaks: &[crate::memory::Peaks],
    m: &crate::memory::Spec,
    names: &[String],
    reference: usize,
) {
    let _ = writeln!(s, "\n## Memory\n");
    let _ = writeln!(
        s,
        "Each system's largest peak resident set among its members (VmHWM, reset through /proc/<pid>/clear_refs before each case): {} s at rest after {} keys of 256 B were written; {} watchers (one stream each, prev_kv) while 1000 writes a second go to their keys for {} s; one client reading {} MiB of 1 KiB values from the leader in one range, then the same in pages of 10,000 keys at one revision.\n",
        m.secs,
        m.keys,
        m.watchers,
        m.secs,
        m.big_bytes >> 20
    );
    memory_table(s, peaks, names, reference);
}

/// Peak RSS per member in each memory case (MiB), with the ratio.
fn memory_table(
    s: &mut String,
    peaks: &[crate::memory::Peaks],
    names: &[String],
    reference: usize,
) {
    let rn = &names[reference];
    let _ = writeln!(
        s,
        "| peak RSS per member (MiB) | {} | Nod / {rn} |",
        names.join(" | ")
    );
    let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(names.len()));
    let mut refusals = Vec::new();
    for (i, case) in crate::memory::CASES.iter().enumerate() {
        let at = |k: usize| peaks.get(k).and_then(|p| p.get(i));
        let cells: Vec<String> = (0..names.len())
            .map(|k| match at(k) {
                Some(Ok(b)) => format!("{:.1}", *b as f64 / 1048576.0),
                Some(Err(e)) => {
                    refusals.push(format!("{} {case}: {e}", names[k]));
                    "failed".into()
                }
                None => "–".into(),
            })
            .collect();
        let r = match (at(0), at(reference)) {
            (Some(Ok(a)), Some(Ok(b))) => ratio(*a as f64, *b as f64),
            _ => "–".into(),
        };
        let _ = writeln!(s, "| {case} | {} | {r} |", cells.join(" | "));
    }
    for r in refusals {
        let _ = writeln!(s, "\n- {r}");
    }
}

/// The report: `rows` from the plain clusters, `secure` (empty when not
/// run) from the TLS + auth ones (Nod and the reference), `tool` (empty
/// when not run) from etcd's own tool, `more` the workloads beyond
/// throughput.
pub fn markdown(rows: &[Row], secure: &[Row], tool: &[ToolRow], more: &More, x: &Extras) -> String {
    let (k8s, k8s_spec) = (more.k8s, more.k8s_spec);
    let names = &x.systems;
    let rn = &names[x.reference];
    let mut s = String::new();
    let _ = writeln!(s, "# Nod vs etcd: benchmark results\n");
    let _ = writeln!(s, "Machine: {}\n", x.machine);
    let _ = writeln!(s, "Command: `{}`\n", x.command);
    let _ = writeln!(
        s,
        "Systems: {}. Ratios are Nod / {rn} (throughput: higher is better; latency: lower is better).\n",
        names.join(", ")
    );
    if !tool.is_empty() {
        let _ = writeln!(s, "## etcd's own tool\n");
        let _ = writeln!(
            s,
            "etcd's `benchmark` (tools/benchmark, built from its Go module by `scripts/etcd/install`) against every system with the flags of etcd's performance guide: 8-byte sequential keys over a space of 100k, 256-byte values, `--precise`; the guide's 1 client on 1 connection against the leader and 1000 clients on 100 connections against every member, and the counts between. `range` reads one 256-byte key, `lease-keepalive` sends KeepAliveOnce, `watch` is the tool's default of 10 streams × 100 watchers on one key (events delivered per second). Each case ran {} time(s) on each system in turn, the order reversed every other round; figures are the median over runs, latencies in ms.\n",
            x.tool_rounds
        );
        tool_table(&mut s, tool, names, x.reference);
    }
    if !k8s.is_empty() {
        let _ = writeln!(s, "\n## Kubernetes-shaped\n");
        let _ = writeln!(
            s,
            "kube-apiserver's etcd traffic (`bench/src/k8s.rs`, after its storage layer and etcd's robustness suite's Kubernetes profile): {} objects of {} B under `/registry/<kind>/<namespace>/<name>` (pods 40%, configmaps 20%, secrets, services, endpointslices, events 10% each; 10 namespaces), then {:.0} operations per second for {:.0} s, in open loop (latency from each operation's scheduled time): updates 60% (Txn `mod_revision = r` → Put, else Get), gets 25%, creates 5% (Txn `mod_revision = 0` → Put; events with the newest lease), deletes 5% (Txn → Delete, else Get), lists of one kind in one namespace 4% and of one kind in every namespace 1% (pages of {}, later pages at the first page's revision), a lease grant every second, and one watch per kind with `prev_kv` and progress notification, asking for progress every 5 s (the watches keep the objects' revisions, as the watch cache does). Over 6 connections plus 3 for the watches, spread over the members. CPU is the three members' run time (/proc/<pid>/schedstat) over the run, per operation done. Latencies in ms; ratios of the p99 and p99.9.\n",
            k8s_spec.objects,
            k8s_spec.value_size,
            k8s_spec.rate,
            k8s_spec.duration.as_secs_f64(),
            crate::k8s::PAGE
        );
        k8s_table(&mut s, k8s, names, x.reference);
    }
    if !more.maint.is_empty() {
        let m = more.maint_spec;
        let _ = writeln!(s, "\n## Maintenance pauses\n");
        let _ = writeln!(
            s,
            "Each system on its own: a history of {} puts over {} keys (values of {} B, so each key has {} revisions), then {:.0} writes per second (open loop, latency from each write's schedule) while nothing runs for 3 s, while the leader compacts to the current revision (`Compact`, physical: the call returns once the old revisions are gone), and while the leader defragments (`Defragment`: etcd rewrites its bbolt file; Nod compacts its RocksDB store). Latencies in ms; \"call\" is how long the maintenance call took.\n",
            m.revisions,
            m.keyspace,
            m.value_size,
            m.revisions / m.keyspace.max(1),
            m.rate
        );
        maint_table(&mut s, more.maint, names, x.reference);
    }
    if !more.memory.is_empty() {
        memory_section(&mut s, more.memory, more.memory_spec, names, x.reference);
    }
    if !more.large.is_empty() {
        large_section(
            &mut s,
            more.large,
            more.large_gib,
            x.secs,
            names,
            x.reference,
        );
    }
    if !tool.is_empty() || !k8s.is_empty() || !more.maint.is_empty() {
        let _ = writeln!(s, "\n## Our client\n");
    }
    let side_by_side = if secure.is_empty() {
        "every cluster up side by side"
    } else {
        "every cluster up side by side, and Nod and the reference again with TLS + auth (below), the idle ones only heartbeating"
    };
    let _ = writeln!(
        s,
        "Every system: 3 members on loopback, fsync on, the same client (`nod-bench`, etcd v3 gRPC), {side_by_side}. Clients spread their connections over the members, the leader's first (so 1 client talks to the leader on every system); the client runs one single-threaded runtime per core, each owning its share of the connections and the clients on them. Each workload ran {} rounds of {} s on each cluster in turn, the order reversed every other round; ops/s is the median round (the slowest and fastest round in brackets), latencies (ms) are over every round's requests.\n",
        x.rounds, x.secs
    );
    table(&mut s, rows, names, x.reference);
    if !secure.is_empty() {
        let secure_names = vec![names[0].clone(), rn.clone()];
        let _ = writeln!(s, "\n## TLS + auth\n");
        let _ = writeln!(
            s,
            "The same workloads on Nod and {rn} again, in the same rounds as the plain clusters (a workload's rounds go over every cluster in turn), each member with client TLS requiring client certificates (`--cert-file --key-file --trusted-ca-file --client-cert-auth`), peer mutual TLS (`--peer-cert-file --peer-key-file --peer-trusted-ca-file --peer-client-cert-auth`) and authentication on (a `root` user; the load runs as a user whose role grants readwrite on the benchmark's keys). The client logs in once (Auth.Authenticate, etcd's simple tokens) and sends the token as `token` metadata with every call; its certificate's common name is no user, so no call passes without it. TLS 1.3 (rustls with ring on the client and on Nod; Go's crypto/tls on etcd), ECDSA P-256 certificates.\n"
        );
        table(&mut s, secure, &secure_names, 1);
        let _ = writeln!(s, "\nWhat TLS + auth costs each system: its TLS + auth figure over its plain one above, measured in the same rounds (ops/s: below 1× is slower; latency: above 1× is slower).\n");
        cost_table(&mut s, rows, secure, names, x.reference);
    }
    let _ = writeln!(s, "\n## The physical limit and the cost per write\n");
    let _ = writeln!(
        s,
        "fdatasync of a 4 KiB write on this disk: p50 {:.0} µs, p99 {:.0} µs.\n",
        x.fdatasync_us.0, x.fdatasync_us.1
    );
    let _ = writeln!(
        s,
        "| write workload | clients | {} |",
        heads(names, "fsyncs per write", rn, false)
    );
    let _ = writeln!(s, "|---|---:|{}", "---:|".repeat(names.len()));
    for r in rows {
        let per: Option<Vec<f64>> = r.figs.iter().map(|f| f.fsyncs_per_write).collect();
        if let Some(per) = per {
            let cells: Vec<String> = per.iter().map(|v| format!("{v:.3}")).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                r.workload,
                r.clients,
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(s, "\n(WAL fsyncs per member, `etcd_disk_wal_fsync_duration_seconds_count`, divided by the writes committed.)\n");
    let _ = writeln!(s, "## Resources\n");
    let _ = writeln!(s, "| | {} | Nod / {rn} |", names.join(" | "));
    let _ = writeln!(s, "|---|{}---:|", "---:|".repeat(names.len()));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let resource = |s: &mut String, what: &str, v: &[u64]| {
        let cells: Vec<String> = v.iter().map(|b| format!("{:.1}", mib(*b))).collect();
        let _ = writeln!(
            s,
            "| {what} | {} | {} |",
            cells.join(" | "),
            ratio(v[0] as f64, v[x.reference] as f64)
        );
    };
    resource(&mut s, "peak RSS per member (MiB)", &x.peak_rss);
    resource(&mut s, "data on disk per member (MiB)", &x.disk_bytes);
    if let Some((keys, secs)) = &x.restart {
        let cells: Vec<String> = secs
            .iter()
            .map(|v| v.map_or("failed".into(), |v| format!("{v:.2}")))
            .collect();
        let r = match (secs[0], secs[x.reference]) {
            (Some(n), Some(e)) => ratio(n, e),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| restart to ready with {keys} keys (s) | {} | {r} |",
            cells.join(" | ")
        );
    }
    s
}

/// A grouped horizontal bar chart of throughput per workload and client
/// count (horizontal, so the long workload names stay readable).
pub fn chart(rows: &[Row], names: &[String], path: &Path, font: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let bytes = std::fs::read(font).map_err(|e| format!("font {}: {e}", font.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| "the font does not load".to_string())?;
    let n = rows.len();
    let max = rows
        .iter()
        .flat_map(|r| r.figs.iter().map(|f| f.throughput))
        .fold(1.0, f64::max)
        * 1.1;
    let k = names.len().max(1);
    let height = 120 + (22 * k as u32 + 10) * n.max(1) as u32;
    let colors = [
        BLUE,
        RED,
        RGBColor(230, 140, 0),
        RGBColor(0, 150, 60),
        MAGENTA,
        CYAN,
    ];
    let legend: Vec<String> = names
        .iter()
        .zip(["blue", "red", "orange", "green", "magenta", "cyan"])
        .map(|(n, c)| format!("{n} ({c})"))
        .collect();
    let caption = format!(
        "Throughput (ops/s): {}, 3 members, same machine",
        legend.join(", ")
    );
    let root = BitMapBackend::new(path, (1400, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
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
        let band = 0.8 / k as f64;
        chart
            .draw_series(r.figs.iter().enumerate().map(|(i, f)| {
                let top = y + 0.1 + band * i as f64;
                Rectangle::new(
                    [(0.0, top), (f.throughput, top + band)],
                    colors[i % colors.len()].filled(),
                )
            }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd_tool::Summary;

    fn figs(throughput: f64, p50: f64) -> Figures {
        Figures {
            throughput,
            spread: (throughput, throughput),
            p50,
            ..Default::default()
        }
    }

    const MAINT: crate::maint::Spec = crate::maint::Spec {
        revisions: 1,
        keyspace: 1,
        value_size: 1,
        rate: 1.0,
    };
    const MEMORY: crate::memory::Spec = crate::memory::Spec {
        keys: 1,
        watchers: 1,
        big_bytes: 1,
        secs: 1,
    };

    fn none(k8s: &crate::k8s::Spec) -> More<'_> {
        More {
            k8s: &[],
            k8s_spec: k8s,
            maint: &[],
            maint_spec: &MAINT,
            memory: &[],
            memory_spec: &MEMORY,
            large: &[],
            large_gib: 0,
        }
    }

    fn spec() -> crate::k8s::Spec {
        crate::k8s::Spec {
            objects: 1,
            value_size: 1,
            rate: 1.0,
            duration: std::time::Duration::from_secs(1),
        }
    }

    fn extras(systems: &[&str], reference: usize) -> Extras {
        Extras {
            machine: "m".into(),
            command: "c".into(),
            systems: systems.iter().map(|s| s.to_string()).collect(),
            reference,
            rounds: 1,
            secs: 1,
            tool_rounds: 1,
            fdatasync_us: (1.0, 2.0),
            peak_rss: vec![1 << 20, 2 << 20, 4 << 20],
            disk_bytes: vec![1 << 20, 1 << 20, 1 << 20],
            restart: Some((10, vec![Some(1.0), None, Some(4.0)])),
        }
    }

    /// The row of `what` in the markdown, split into cells.
    fn cells(md: &str, what: &str) -> Vec<String> {
        md.lines()
            .find(|l| l.starts_with(&format!("| {what} |")))
            .unwrap_or_else(|| panic!("no row {what:?} in\n{md}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn ratios_divide_by_the_reference_not_the_first_etcd() {
        let x = extras(&["Nod", "etcd 3.7", "etcd 3.6"], 2);
        let rows = [Row {
            workload: "put".into(),
            clients: 16,
            figs: vec![figs(300.0, 1.0), figs(200.0, 3.0), figs(100.0, 4.0)],
        }];
        let md = markdown(&rows, &[], &[], &none(&spec()), &x);
        let c = cells(&md, "put");
        // workload, clients, 3 × ops/s, ratio, 3 × p50, ratio, …
        assert_eq!(c[5], "3.00×", "{c:?}");
        assert_eq!(c[9], "0.25×", "{c:?}");
        assert!(md.contains("Nod / etcd 3.6"), "{md}");
        // Resources: RSS 1 MiB against the reference's 4 MiB; a failed
        // restart says so and leaves its ratio out only where needed.
        assert_eq!(cells(&md, "peak RSS per member (MiB)")[4], "0.25×");
        let restart = cells(&md, "restart to ready with 10 keys (s)");
        assert_eq!(restart[1..], ["1.00", "failed", "4.00", "0.25×"]);
    }

    #[test]
    fn the_tool_table_leaves_out_what_the_tool_did_not_measure() {
        let x = extras(&["Nod", "etcd 3.7", "etcd 3.6"], 2);
        let sum = |rps: f64, p50: f64, p999: f64| Summary {
            rps,
            p50,
            p999,
            ..Default::default()
        };
        let tool = [
            ToolRow {
                case: "put".into(),
                clients: 1,
                conns: 1,
                leader_only: true,
                total: 500,
                watch: false,
                sums: vec![
                    sum(100.0, 1.0, 0.0),
                    sum(90.0, 1.0, 0.0),
                    sum(50.0, 2.0, 3.0),
                ],
            },
            ToolRow {
                case: "watch (events)".into(),
                clients: 10,
                conns: 10,
                leader_only: false,
                total: 100,
                watch: true,
                sums: vec![
                    sum(1000.0, 0.01, 0.0),
                    sum(1000.0, 0.0, 0.0),
                    sum(4000.0, 0.0, 0.0),
                ],
            },
        ];
        let md = markdown(&[], &[], &tool, &none(&spec()), &x);
        let put = cells(&md, "put");
        assert_eq!(put[3], "leader");
        assert_eq!(put[8], "2.00×", "{put:?}");
        // p99.9 of 500 requests: the tool printed none for Nod.
        assert_eq!(put[put.len() - 4..put.len() - 1], ["–", "–", "3.00"]);
        let watch = cells(&md, "watch (events)");
        assert_eq!(watch[8], "0.25×");
        assert!(
            watch[9..watch.len() - 1].iter().all(|c| c == "–"),
            "{watch:?}"
        );
    }

    #[test]
    fn maintenance_and_memory_compare_maxima_and_name_failures() {
        let x = extras(&["Nod", "etcd 3.7", "etcd 3.6"], 2);
        let phase = |max: f64| crate::maint::Phase {
            count: 10,
            max,
            p999: max / 2.0,
            ..Default::default()
        };
        let maint: Vec<Vec<crate::maint::Phase>> = [10.0, 50.0, 500.0]
            .iter()
            .map(|m| vec![phase(1.0), phase(*m), phase(*m * 2.0)])
            .collect();
        let memory: Vec<crate::memory::Peaks> = vec![
            vec![Ok(100 << 20), Ok(200 << 20), Ok(300 << 20), Ok(10 << 20)],
            vec![Ok(1 << 20), Ok(1 << 20), Err("refused".into()), Ok(1 << 20)],
            vec![Ok(400 << 20), Ok(400 << 20), Ok(600 << 20), Ok(20 << 20)],
        ];
        let spec = spec();
        let more = More {
            maint: &maint,
            memory: &memory,
            ..none(&spec)
        };
        let md = markdown(&[], &[], &[], &more, &x);
        let compaction = cells(&md, "compaction");
        // p50 × 3, p99 × 3, p99.9 × 3 + ratio, max × 3 + ratio
        assert_eq!(compaction[14], "0.02×", "10 / 500: {compaction:?}");
        assert_eq!(
            cells(&md, "at rest")[1..],
            ["100.0", "1.0", "400.0", "0.25×"]
        );
        let range = cells(&md, "one range of every big value");
        assert_eq!(range[2], "failed");
        assert!(
            md.contains("- etcd 3.7 one range of every big value: refused"),
            "{md}"
        );
        assert_eq!(range[4], "0.50×", "Nod and the reference both measured");
    }
}
