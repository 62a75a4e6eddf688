//! Histories of the size the simulation produces.

mod common;

use common::{generate, plant_stale_read, Workload};
use nod_lincheck::{check, Operation, Outcome, Verdict};

fn workload(seed: u64, unknown: f64, failed: f64) -> Workload {
    Workload {
        seed,
        ops: 3000,
        keys: 10,
        clients: 8,
        unknown,
        failed,
    }
}

/// Checks `history`. Speed is not asserted here (a timer in a test is not a
/// benchmark); a search that blows up shows as `Inconclusive`, which the
/// callers reject.
fn timed_check(history: &[Operation]) -> Verdict {
    check(history)
}

#[test]
fn large_linearizable_history_and_planted_stale_read() {
    for seed in 1..=3 {
        let mut history = generate(&workload(seed, 0.0, 0.0));
        assert_eq!(timed_check(&history), Verdict::Linearizable, "seed {seed}");

        let g = plant_stale_read(&mut history);
        match timed_check(&history) {
            Verdict::Violation {
                key,
                operations,
                message,
            } => {
                assert_eq!(key, history[g].op.key(), "seed {seed}: {message}");
                assert!(operations.contains(&g), "seed {seed}");
                assert!(
                    operations.iter().all(|&i| history[i].op.key() == &key[..]),
                    "seed {seed}"
                );
            }
            other => panic!("seed {seed}: expected a violation, got {other:?}"),
        }
    }
}

#[test]
fn large_history_with_unknown_and_failed_operations() {
    for seed in 10..=12 {
        let history = generate(&workload(seed, 0.05, 0.05));
        assert!(
            history.iter().any(|o| o.outcome == Outcome::Unknown),
            "the workload has unknown outcomes"
        );
        assert_eq!(timed_check(&history), Verdict::Linearizable, "seed {seed}");
    }
}

#[test]
fn large_history_with_unknowns_and_planted_stale_read() {
    let mut history = generate(&workload(20, 0.03, 0.02));
    let g = plant_stale_read(&mut history);
    // Values are unique, so no unknown write can explain the stale value.
    match timed_check(&history) {
        Verdict::Violation {
            key, operations, ..
        } => {
            assert_eq!(key, history[g].op.key());
            assert!(operations.contains(&g));
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn many_clients_on_one_key() {
    let history = generate(&Workload {
        seed: 7,
        ops: 2000,
        keys: 1,
        clients: 10,
        unknown: 0.02,
        failed: 0.02,
    });
    assert_eq!(timed_check(&history), Verdict::Linearizable);
}
