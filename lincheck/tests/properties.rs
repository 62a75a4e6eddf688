//! Property tests: the checker against a naive reference on small random
//! histories, and on histories that are linearizable by construction.

mod common;

use common::{at, cas, del, get, put, reference_linearizable, reference_memo_linearizable};
use nod_lincheck::{check, Op, Operation, Outcome, Verdict};
use proptest::prelude::*;

const KEYS: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 3] = ["1", "2", "3"];

fn value() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&VALUES[..])
}

fn maybe_value() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::weighted(0.7, value())
}

/// An operation on `key` with an outcome that fits it (Unknown and Failed
/// included) but is otherwise random.
fn operation(keys: usize) -> impl Strategy<Value = Operation> {
    let key = prop::sample::select(&KEYS[..keys]);
    let op_and_outcome = (key, 0..4u8, value(), maybe_value(), any::<bool>(), 0..10u8).prop_map(
        |(key, kind, value, maybe, swapped, fate)| {
            let (op, outcome) = match kind {
                0 => (put(key, value), Outcome::Done),
                1 => (get(key), Outcome::Read(maybe.map(Into::into))),
                2 => (cas(key, maybe, value), Outcome::Swapped(swapped)),
                _ => (del(key), Outcome::Done),
            };
            let outcome = match fate {
                0 | 1 => Outcome::Unknown,
                2 => Outcome::Failed,
                _ => outcome,
            };
            (op, outcome)
        },
    );
    (op_and_outcome, 0..4u64, 0..20u64, 0..10u64).prop_map(
        |((op, outcome), client, invoke, duration)| {
            at(client, invoke, invoke + duration, op, outcome)
        },
    )
}

fn small_history() -> impl Strategy<Value = Vec<Operation>> {
    (1..=2usize).prop_flat_map(|keys| prop::collection::vec(operation(keys), 0..=7))
}

/// Up to 16 operations on one or two keys with Unknown outcomes, built from a
/// sequential execution (so most are close to linearizable) with one read
/// possibly corrupted.
fn medium_history() -> impl Strategy<Value = Vec<Operation>> {
    (
        (1..=2usize).prop_flat_map(|keys| prop::collection::vec(step_with_unknowns(keys), 4..=16)),
        any::<prop::sample::Index>(),
        maybe_value(),
    )
        .prop_map(|(steps, corrupt, read_value)| {
            let mut history = sequential_history(&steps);
            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| matches!(history[i].outcome, Outcome::Read(_)))
                .collect();
            if !reads.is_empty() {
                let i = reads[corrupt.index(reads.len())];
                history[i].outcome = Outcome::Read(read_value.map(Into::into));
            }
            history
        })
}

/// One step of a sequential execution, before timing and outcome are chosen.
#[derive(Clone, Debug)]
struct Step {
    op: Op,
    /// How far the interval is widened before / after the linearization point.
    before: u64,
    after: u64,
    fate: u8,
}

fn step(keys: usize) -> impl Strategy<Value = Step> {
    step_with_fates(keys, 20)
}

/// Like [`step`], with Unknown outcomes far more frequent.
fn step_with_unknowns(keys: usize) -> impl Strategy<Value = Step> {
    step_with_fates(keys, 6)
}

/// Fates `0` (Failed), `1` (Unknown, took effect) and `2` (Unknown, did not)
/// each come with probability `1 / fates`.
fn step_with_fates(keys: usize, fates: u8) -> impl Strategy<Value = Step> {
    let key = prop::sample::select(&KEYS[..keys]);
    (
        key,
        0..4u8,
        value(),
        maybe_value(),
        0..40u64,
        0..40u64,
        0..fates,
    )
        .prop_map(|(key, kind, value, expected, before, after, fate)| Step {
            op: match kind {
                0 => put(key, value),
                1 => get(key),
                2 => cas(key, expected, value),
                _ => del(key),
            },
            before,
            after,
            fate,
        })
}

/// Executes `steps` one after another, the i-th taking effect at time
/// 10 * (i + 1), and records each with its interval widened around that
/// point. Some become Failed (and do not take effect) or Unknown (and take
/// effect or not).
fn sequential_history(steps: &[Step]) -> Vec<Operation> {
    let mut state: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
    let mut history = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let point = 10 * (i as u64 + 1);
        let fails = step.fate == 0;
        let unknown = matches!(step.fate, 1 | 2);
        let takes_effect = !fails && step.fate != 2;
        let outcome = if takes_effect {
            common::apply(&mut state, &step.op)
        } else {
            Outcome::Failed
        };
        let outcome = if unknown { Outcome::Unknown } else { outcome };
        history.push(at(
            i as u64 % 5,
            point.saturating_sub(step.before),
            point + step.after,
            step.op.clone(),
            outcome,
        ));
    }
    history
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn agrees_with_naive_reference(history in small_history()) {
        let expected = reference_linearizable(&history);
        prop_assert_eq!(expected, reference_memo_linearizable(&history), "the references disagree");
        let verdict = check(&history);
        match &verdict {
            Verdict::Linearizable => prop_assert!(expected, "checker accepted a non-linearizable history"),
            Verdict::Violation { key, operations, .. } => {
                prop_assert!(!expected, "checker rejected a linearizable history: {verdict:?}");
                prop_assert!(operations.iter().all(|&i| history[i].op.key() == &key[..]));
                // The key blamed is itself not linearizable on its own.
                let own: Vec<Operation> = history
                    .iter()
                    .filter(|o| o.op.key() == &key[..])
                    .cloned()
                    .collect();
                prop_assert!(!reference_linearizable(&own));
            }
            Verdict::Inconclusive { .. } => prop_assert!(false, "inconclusive: {verdict:?}"),
        }
    }

    #[test]
    fn medium_histories_agree_with_memoized_reference(history in medium_history()) {
        prop_assert_eq!(
            check(&history).is_linearizable(),
            reference_memo_linearizable(&history),
            "{:#?}", history
        );
    }

    #[test]
    fn sequential_executions_are_linearizable(
        steps in (1..=3usize).prop_flat_map(|keys| prop::collection::vec(step(keys), 0..60)),
    ) {
        let history = sequential_history(&steps);
        let verdict = check(&history);
        prop_assert_eq!(verdict, Verdict::Linearizable, "{:#?}", history);
    }

    #[test]
    fn small_sequential_executions_agree_with_reference(
        steps in (1..=2usize).prop_flat_map(|keys| prop::collection::vec(step(keys), 0..=7)),
        corrupt in any::<prop::sample::Index>(),
        read_value in maybe_value(),
    ) {
        // A linearizable history with one read possibly corrupted: a mix of
        // verdicts closer to the boundary than fully random outcomes.
        let mut history = sequential_history(&steps);
        if !history.is_empty() {
            let i = corrupt.index(history.len());
            if matches!(history[i].outcome, Outcome::Read(_)) {
                history[i].outcome = Outcome::Read(read_value.map(Into::into));
            }
        }
        prop_assert_eq!(
            check(&history).is_linearizable(),
            reference_linearizable(&history),
            "{:#?}", history
        );
    }
}
