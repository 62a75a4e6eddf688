//! `nod sim`: the deterministic simulation (`nod-sim`) from the command
//! line; a failing seed replays with `nod sim --seed N --trace`.

use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct SimArgs {
    /// The seed to run; every run of one seed is identical.
    #[arg(long, env = "NOD_SIM_SEED", default_value_t = 1)]
    seed: u64,
    /// Run this many seeds, starting at --seed, instead of one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    seeds: u64,
    /// Print every fault, election and client operation of a single seed.
    #[arg(long)]
    trace: bool,
}

pub fn run(args: SimArgs) -> ExitCode {
    let SimArgs { seed, seeds, trace } = args;
    let Some(last) = seed.checked_add(seeds) else {
        eprintln!("nod sim: --seed {seed} plus --seeds {seeds} overflows");
        return ExitCode::from(2);
    };
    let list: Vec<u64> = (seed..last).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reports = nod_sim::run_many(&list, if trace { 1 } else { threads }, |s| {
        let mut cfg = nod_sim::SimConfig::from_seed(s);
        cfg.trace = trace && seeds == 1;
        cfg
    });
    let mut violations = 0;
    for r in &reports {
        violations += r.violations.len();
        println!(
            "seed {}: {} steps, {} faults, {} elections, {} membership changes, {} client ops ({} acknowledged), {} entries applied, {} violations",
            r.seed, r.steps, r.faults, r.elections, r.conf_changes, r.ops, r.ok_ops, r.applied_entries, r.violations.len()
        );
        for v in &r.violations {
            println!("  {v}");
        }
    }
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
