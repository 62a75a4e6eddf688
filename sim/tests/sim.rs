//! `cargo test --release --test sim`: runs the deterministic simulation over
//! many seeds. `NOD_SIM_SEEDS=N` sets how many (default 200), `NOD_SIM_SEED=S`
//! replays one seed with a trace, `NOD_SIM_THREADS` sets parallelism. The last
//! line is `sim: <seeds> seeds, <steps> steps, <violations> violations`.

use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("{name}={raw:?} is not a whole number");
            std::process::exit(2);
        }
    }
}

fn main() {
    // `cargo test` passes harness flags (e.g. --nocapture); this runner takes none.
    let started = Instant::now();
    let (seeds, trace): (Vec<u64>, bool) = match env_u64("NOD_SIM_SEED") {
        Some(seed) => (vec![seed], true),
        None => {
            let n = env_u64("NOD_SIM_SEEDS").unwrap_or(200);
            let base = env_u64("NOD_SIM_BASE").unwrap_or(1);
            ((base..base + n).collect(), false)
        }
    };
    let threads = env_u64("NOD_SIM_THREADS")
        .map(|t| t as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let reports = nod_sim::run_many(&seeds, if trace { 1 } else { threads }, |seed| {
        let mut cfg = nod_sim::SimConfig::from_seed(seed);
        cfg.trace = trace;
        cfg
    });
    let (mut steps, mut violations, mut ops, mut ok, mut faults, mut elections, mut confs) =
        (0, 0, 0, 0, 0, 0, 0);
    for r in &reports {
        steps += r.steps;
        ops += r.ops;
        ok += r.ok_ops;
        faults += r.faults;
        elections += r.elections;
        confs += r.conf_changes;
        violations += r.violations.len();
        if !r.violations.is_empty() {
            eprintln!(
                "seed {} failed with {} violation(s):",
                r.seed,
                r.violations.len()
            );
            for v in &r.violations {
                eprintln!("  {v}");
            }
            eprintln!(
                "  replay: NOD_SIM_SEED={} cargo test --release --test sim",
                r.seed
            );
        }
    }
    println!(
        "{} client ops ({} acknowledged), {} faults, {} elections, {} membership changes, {:.1}s",
        ops,
        ok,
        faults,
        elections,
        confs,
        started.elapsed().as_secs_f64()
    );
    println!(
        "sim: {} seeds, {} steps, {} violations",
        reports.len(),
        steps,
        violations
    );
    if violations > 0 {
        std::process::exit(1);
    }
}
