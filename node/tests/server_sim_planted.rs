//! The server simulation's checks can fail: with a planted bug, some seeds
//! must report a violation (and without it, the same seeds report none).

use nod::simulation::{run, Config, Planted};

fn failing_seeds(planted: Planted, seeds: std::ops::Range<u64>) -> usize {
    seeds
        .map(|seed| {
            let mut cfg = Config::from_seed(seed);
            cfg.planted = planted;
            run(cfg)
        })
        .filter(|r| !r.violations.is_empty())
        .count()
}

#[test]
fn stale_reads_are_reported() {
    let failing = failing_seeds(Planted::StaleReads, 1..301);
    println!("stale reads: reported by {failing} of 300 seeds");
    assert!(
        failing > 0,
        "no seed of 300 caught reads served without ReadIndex"
    );
    assert_eq!(failing_seeds(Planted::None, 1..301), 0);
}

#[test]
fn lease_reads_on_clocks_past_their_bound_are_reported() {
    let failing = failing_seeds(Planted::ClockBeyondBound, 1..301);
    println!("clock beyond bound: reported by {failing} of 300 seeds");
    assert!(
        failing > 0,
        "no seed of 300 caught a lease read on a leader whose clock ran too slow"
    );
}

/// Seed 764 once ended with a follower 36 entries behind after settling:
/// its leader's log started at a snapshot the leader had itself been sent,
/// which the simulation kept apart from the checkpoints it streams from, so
/// every snapshot to the follower failed. Pinned, as a scenario the random
/// seeds reach only rarely.
#[test]
fn a_leader_streams_on_a_snapshot_it_was_sent() {
    // As the seed ran before runs had indexes (which reshape it).
    let mut cfg = Config::from_seed(764);
    cfg.indexes = false;
    let report = run(cfg);
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(
        report.snapshots_installed >= 2,
        "the second stream is the point"
    );
}
