//! A checker that cannot fail proves nothing: each test plants a bug the
//! core relies on not having, and asserts the simulation reports it.

use nod_sim::{run_many, Planted, SimConfig, SimReport};

fn run_planted(planted: Planted, seeds: u64) -> Vec<SimReport> {
    let seeds: Vec<u64> = (1..=seeds).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    run_many(&seeds, threads, |seed| {
        let mut cfg = SimConfig::from_seed(seed);
        cfg.planted = planted;
        // More faults per run make the planted bug bite in fewer seeds.
        cfg.nemesis_interval_us = 150_000;
        // Without pre-vote, candidates meet in the same term more often, which
        // is when a forgotten vote can be given twice.
        // Quick restarts let a node vote again within the same election.
        if planted == Planted::ForgetVote {
            cfg.pre_vote = false;
            cfg.restart_delay_us = (500, 10_000);
            cfg.nemesis_interval_us = 50_000;
            cfg.min_delay_us = 5_000;
            cfg.max_delay_us = 30_000;
        }
        cfg
    })
}

fn violations_matching(reports: &[SimReport], needles: &[&str]) -> usize {
    let mut kinds = std::collections::BTreeMap::new();
    for v in reports.iter().flat_map(|r| r.violations.iter()) {
        let kind: String = v
            .split(':')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        *kinds.entry(kind).or_insert(0) += 1;
    }
    let seeds = reports.iter().filter(|r| !r.violations.is_empty()).count();
    println!("violations by kind: {kinds:?} in {seeds} failing seeds");
    reports
        .iter()
        .flat_map(|r| r.violations.iter())
        .filter(|v| needles.iter().any(|n| v.contains(n)))
        .count()
}

#[test]
fn the_same_seeds_pass_without_a_planted_fault() {
    let reports = run_planted(Planted::None, 50);
    let bad: Vec<_> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    assert!(
        bad.is_empty(),
        "clean runs must pass: {:?}",
        bad.first().map(|r| (&r.seed, &r.violations))
    );
    assert!(
        reports.iter().all(|r| r.ok_ops > 0),
        "every run acknowledges operations"
    );
}

#[test]
fn storage_that_forgets_its_vote_is_caught() {
    let reports = run_planted(Planted::ForgetVote, 1000);
    let found = violations_matching(&reports, &["election safety"]);
    println!("forget-vote: {found} violations in {} seeds", reports.len());
    assert!(found > 0, "two leaders in one term must be reported");
}

#[test]
fn storage_that_loses_acknowledged_appends_is_caught() {
    let reports = run_planted(Planted::LoseAckedAppend, 200);
    let found = violations_matching(
        &reports,
        &[
            "state machine safety",
            "leader completeness",
            "linearizability",
        ],
    );
    println!(
        "lose-acked-append: {found} violations in {} seeds",
        reports.len()
    );
    assert!(found > 0, "losing acknowledged entries must be reported");
}

#[test]
fn reads_served_without_read_index_are_caught() {
    let reports = run_planted(Planted::StaleReads, 100);
    let found = violations_matching(&reports, &["linearizability"]);
    println!("stale-reads: {found} violations in {} seeds", reports.len());
    assert!(found > 0, "stale reads must fail the linearizability check");
}
