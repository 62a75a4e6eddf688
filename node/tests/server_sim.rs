//! `cargo test --release --test server_sim`: the shipped driver and MVCC
//! state machine under deterministic simulation (`nod::simulation`), over
//! many seeds. `NOD_SIM_SEEDS=N` sets how many (default 200), `NOD_SIM_SEED=S`
//! replays one, `NOD_SIM_THREADS` sets parallelism, `NOD_SIM_PLANTED` plants
//! one of the simulation's own bugs (`server_sim_planted.rs`). The last line is
//! `server-sim: <seeds> seeds, <ops> ops, <violations> violations`.

use std::time::Instant;

use nod::simulation::{run, Config, Planted, Report};

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
    let started = Instant::now();
    let trace = std::env::var_os("NOD_SIM_SEED").is_some();
    let seeds: Vec<u64> = match env_u64("NOD_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let n = env_u64("NOD_SIM_SEEDS").unwrap_or(200);
            let base = env_u64("NOD_SIM_BASE").unwrap_or(1);
            (base..base + n).collect()
        }
    };
    // NOD_SIM_PLANTED=stale-reads|clock-beyond-bound replays a planted run.
    let planted = match std::env::var("NOD_SIM_PLANTED").as_deref() {
        Err(_) => Planted::None,
        Ok("stale-reads") => Planted::StaleReads,
        Ok("clock-beyond-bound") => Planted::ClockBeyondBound,
        Ok(other) => {
            eprintln!("NOD_SIM_PLANTED={other:?}: expected stale-reads or clock-beyond-bound");
            std::process::exit(2);
        }
    };
    let threads = env_u64("NOD_SIM_THREADS")
        .map(|t| t as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let mut reports: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .into_iter()
                        .map(|seed| {
                            let mut cfg = Config::from_seed(seed);
                            cfg.trace = trace;
                            cfg.planted = planted;
                            // A panic in the shipped code is a finding too.
                            std::panic::catch_unwind(|| run(cfg)).unwrap_or_else(|p| {
                                let why = p
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_default();
                                Report {
                                    seed,
                                    violations: vec![format!("panicked: {why}")],
                                    ..Default::default()
                                }
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    reports.sort_by_key(|r| r.seed);
    let (mut ops, mut completed, mut violations, mut leaders, mut snaps, mut crashes) =
        (0, 0, 0, 0, 0, 0);
    let (mut power_losses, mut write_faults, mut indexes_built) = (0, 0, 0);
    for r in &reports {
        indexes_built += r.indexes_built;
        ops += r.operations;
        completed += r.completed;
        leaders += r.leader_changes;
        snaps += r.snapshots_installed;
        crashes += r.crashes;
        power_losses += r.power_losses;
        write_faults += r.write_faults;
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
                "  replay: NOD_SIM_SEED={} cargo test --release --test server_sim",
                r.seed
            );
        }
    }
    println!(
        "{ops} client ops ({completed} answered), {leaders} leaders elected, {crashes} crashes \
         ({power_losses} power losses, {write_faults} failed log writes), {snaps} snapshots sent, \
         {indexes_built} indexes built, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Half the seeds declare indexes under the faults: some must get built,
    // or the checks on them checked nothing.
    if reports.len() >= 50 && planted == Planted::None && indexes_built == 0 {
        eprintln!("no seed built an index: the index checks saw nothing");
        std::process::exit(1);
    }
    println!(
        "server-sim: {} seeds, {ops} ops, {violations} violations",
        reports.len()
    );
    if violations > 0 {
        std::process::exit(1);
    }
}
