//! Hand-written histories with known verdicts.

mod common;

use common::{at, cas, del, get, put, read};
use nod_lincheck::{check, validate, Checker, HistoryError, Operation, Outcome, Verdict};

use Outcome::{Done, Failed, Swapped, Unknown};

fn assert_linearizable(name: &str, history: &[Operation]) {
    assert_eq!(check(history), Verdict::Linearizable, "{name}");
}

/// Asserts a violation on `key` and returns its message.
fn assert_violation(name: &str, history: &[Operation], key: &str) -> String {
    match check(history) {
        Verdict::Violation {
            key: k,
            operations,
            message,
        } => {
            assert_eq!(k, key.as_bytes(), "{name}: wrong key; {message}");
            let mut sorted = operations.clone();
            sorted.sort_by_key(|&i| (history[i].invoke, i));
            assert_eq!(operations, sorted, "{name}: not in invocation order");
            assert!(operations
                .iter()
                .all(|&i| history[i].op.key() == key.as_bytes()));
            message
        }
        other => panic!("{name}: expected a violation on {key:?}, got {other:?}"),
    }
}

#[test]
fn empty_and_trivial_histories() {
    assert_linearizable("empty", &[]);
    assert_linearizable("one read of absent", &[at(0, 0, 1, get("k"), read(None))]);
    assert_violation(
        "read of a value never written",
        &[at(0, 0, 1, get("k"), read(Some("x")))],
        "k",
    );
}

#[test]
fn sequential_histories() {
    let history = [
        at(0, 0, 1, get("k"), read(None)),
        at(1, 2, 3, put("k", "a"), Done),
        at(0, 4, 5, get("k"), read(Some("a"))),
        at(1, 6, 7, put("k", "b"), Done),
        at(2, 8, 9, get("k"), read(Some("b"))),
        at(2, 10, 11, del("k"), Done),
        at(0, 12, 13, get("k"), read(None)),
        at(0, 14, 15, put("k", "a"), Done),
        at(1, 16, 17, get("k"), read(Some("a"))),
    ];
    assert_linearizable("sequential", &history);
}

#[test]
fn stale_read_after_completed_write() {
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 20, 30, put("k", "b"), Done),
        at(2, 40, 50, get("k"), read(Some("a"))),
    ];
    let message = assert_violation("stale read", &history, "k");
    assert!(
        message.contains("key \"k\" is not linearizable"),
        "{message}"
    );
    assert!(
        message.contains("#2 client 2 [40, 50]: Get(\"k\") -> read \"a\""),
        "the unplaceable read is named: {message}"
    );
    assert!(
        message.contains("Longest linearizable prefix: 2 of the 3"),
        "{message}"
    );
}

#[test]
fn concurrent_write_and_read_may_go_either_way() {
    for seen in [None, Some("a")] {
        let history = [
            at(0, 0, 100, put("k", "a"), Done),
            at(1, 10, 20, get("k"), read(seen)),
        ];
        assert_linearizable("read concurrent with write", &history);
    }
    // Both reads overlap the write, but the first one already saw it.
    let history = [
        at(0, 0, 100, put("k", "a"), Done),
        at(1, 10, 20, get("k"), read(Some("a"))),
        at(2, 30, 40, get("k"), read(None)),
    ];
    assert_violation("read goes back in time", &history, "k");
}

#[test]
fn touching_intervals_are_concurrent() {
    // The write completes at 10 exactly when the read is invoked: either order.
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 10, 20, get("k"), read(None)),
    ];
    assert_linearizable("touching", &history);
    let history = [
        at(0, 0, 9, put("k", "a"), Done),
        at(1, 10, 20, get("k"), read(None)),
    ];
    assert_violation("strictly after", &history, "k");
}

#[test]
fn lost_write() {
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 5, 15, put("k", "b"), Done),
        at(2, 20, 30, get("k"), read(Some("b"))),
        at(0, 40, 50, get("k"), read(Some("a"))),
    ];
    assert_violation("later read sees an older value", &history, "k");
    // The same reads are fine if the writes are concurrent with both reads.
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 5, 45, put("k", "b"), Done),
        at(2, 20, 30, get("k"), read(Some("a"))),
        at(0, 40, 50, get("k"), read(Some("b"))),
    ];
    assert_linearizable("write lands between the reads", &history);
}

#[test]
fn cas_success_and_failure() {
    let history = [
        at(0, 0, 1, cas("k", None, "a"), Swapped(true)),
        at(0, 2, 3, cas("k", None, "b"), Swapped(false)),
        at(1, 4, 5, cas("k", Some("a"), "c"), Swapped(true)),
        at(1, 6, 7, cas("k", Some("a"), "d"), Swapped(false)),
        at(2, 8, 9, get("k"), read(Some("c"))),
    ];
    assert_linearizable("cas chain", &history);

    let history = [
        at(0, 0, 1, put("k", "a"), Done),
        at(1, 2, 3, cas("k", Some("a"), "b"), Swapped(false)),
    ];
    assert_violation("cas failed although expected matched", &history, "k");

    let history = [
        at(0, 0, 1, put("k", "a"), Done),
        at(1, 2, 3, cas("k", Some("b"), "c"), Swapped(true)),
    ];
    assert_violation("cas swapped although expected differed", &history, "k");

    let history = [
        at(0, 0, 1, put("k", "a"), Done),
        at(1, 2, 3, cas("k", Some("a"), "b"), Swapped(true)),
        at(2, 4, 5, get("k"), read(Some("a"))),
    ];
    assert_violation("cas result not visible", &history, "k");

    // A failed cas concurrent with the write that makes it succeed may go first.
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 2, 3, cas("k", Some("a"), "b"), Swapped(false)),
    ];
    assert_linearizable("cas before concurrent write", &history);
}

#[test]
fn two_cas_cannot_both_win() {
    let history = [
        at(0, 0, 10, cas("k", None, "a"), Swapped(true)),
        at(1, 0, 10, cas("k", None, "b"), Swapped(true)),
    ];
    assert_violation("both cas swapped on absent", &history, "k");
    let history = [
        at(0, 0, 1, put("k", "x"), Done),
        at(1, 2, 10, cas("k", Some("x"), "a"), Swapped(true)),
        at(2, 2, 10, cas("k", Some("x"), "b"), Swapped(true)),
    ];
    assert_violation("both cas swapped on x", &history, "k");
    let history = [
        at(0, 0, 10, cas("k", None, "a"), Swapped(true)),
        at(1, 0, 10, cas("k", None, "b"), Swapped(false)),
        at(2, 20, 30, get("k"), read(Some("a"))),
    ];
    assert_linearizable("one cas wins", &history);
}

#[test]
fn unknown_writes() {
    let history = [
        at(0, 0, 0, put("k", "a"), Unknown),
        at(1, 50, 60, get("k"), read(None)),
        at(1, 70, 80, get("k"), read(Some("a"))),
    ];
    assert_linearizable("unknown put becomes visible later", &history);

    let history = [
        at(0, 0, 0, put("k", "a"), Unknown),
        at(1, 50, 60, get("k"), read(None)),
    ];
    assert_linearizable("unknown put never happens", &history);

    let history = [
        at(1, 0, 10, get("k"), read(Some("a"))),
        at(0, 20, 0, put("k", "a"), Unknown),
    ];
    assert_violation("unknown put read before it was invoked", &history, "k");

    let history = [
        at(0, 0, 0, put("k", "a"), Unknown),
        at(1, 10, 20, get("k"), read(Some("a"))),
        at(1, 30, 40, get("k"), read(None)),
    ];
    assert_violation("unknown put seen, then unseen", &history, "k");

    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 20, 0, del("k"), Unknown),
        at(2, 30, 40, get("k"), read(None)),
        at(2, 50, 60, put("k", "b"), Done),
        at(2, 70, 80, get("k"), read(Some("b"))),
    ];
    assert_linearizable("unknown delete took effect", &history);

    // An unknown put applied at most once: "a" cannot come back after "b".
    let history = [
        at(0, 0, 0, put("k", "a"), Unknown),
        at(1, 10, 20, get("k"), read(Some("a"))),
        at(1, 30, 40, put("k", "b"), Done),
        at(1, 50, 60, get("k"), read(Some("a"))),
    ];
    assert_violation("unknown put applied twice", &history, "k");
    // ... but two identical unknown puts may each take effect.
    let history = [
        at(0, 0, 0, put("k", "a"), Unknown),
        at(2, 5, 0, put("k", "a"), Unknown),
        at(1, 10, 20, get("k"), read(Some("a"))),
        at(1, 30, 40, put("k", "b"), Done),
        at(1, 50, 60, get("k"), read(Some("a"))),
    ];
    assert_linearizable("two identical unknown puts", &history);
}

#[test]
fn unknown_cas() {
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 20, 0, cas("k", Some("a"), "b"), Unknown),
        at(2, 30, 40, get("k"), read(Some("b"))),
    ];
    assert_linearizable("unknown cas took effect", &history);
    let history = [
        at(0, 0, 10, put("k", "x"), Done),
        at(1, 20, 0, cas("k", Some("a"), "b"), Unknown),
        at(2, 30, 40, get("k"), read(Some("b"))),
    ];
    assert_violation("unknown cas whose precondition never held", &history, "k");
    // The precondition may come true later, through another unknown write.
    let history = [
        at(0, 0, 10, put("k", "x"), Done),
        at(1, 20, 0, cas("k", Some("a"), "b"), Unknown),
        at(3, 25, 0, put("k", "a"), Unknown),
        at(2, 30, 40, get("k"), read(Some("a"))),
        at(2, 50, 60, get("k"), read(Some("b"))),
    ];
    assert_linearizable("unknown cas after unknown put", &history);
}

#[test]
fn unknown_gets_are_dropped() {
    let history = [
        at(0, 0, 0, get("k"), Unknown),
        at(1, 10, 20, get("k"), read(None)),
    ];
    assert_linearizable("unknown get", &history);
    assert_eq!(
        check(&[at(0, 0, 0, get("k"), Unknown)]),
        Verdict::Linearizable
    );
}

#[test]
fn failed_operations_are_ignored() {
    let history = [
        at(0, 0, 10, put("k", "a"), Failed),
        at(1, 20, 30, get("k"), read(None)),
        at(2, 40, 50, cas("k", None, "b"), Failed),
        at(3, 60, 70, get("k"), read(None)),
        at(3, 80, 90, get("k"), Failed),
    ];
    assert_linearizable("failed ops", &history);
    let history = [
        at(0, 0, 10, put("k", "a"), Failed),
        at(1, 20, 30, get("k"), read(Some("a"))),
    ];
    let message = assert_violation("failed put observed", &history, "k");
    assert!(
        !message.contains("#0"),
        "failed ops are not reported: {message}"
    );
    match check(&history) {
        Verdict::Violation { operations, .. } => assert_eq!(operations, [1]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn delete() {
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 20, 30, del("k"), Done),
        at(2, 40, 50, get("k"), read(None)),
        at(2, 60, 70, cas("k", None, "b"), Swapped(true)),
        at(0, 80, 90, get("k"), read(Some("b"))),
    ];
    assert_linearizable("delete then recreate", &history);
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 20, 30, del("k"), Done),
        at(2, 40, 50, get("k"), read(Some("a"))),
    ];
    assert_violation("read after delete", &history, "k");
    let history = [
        at(0, 0, 10, put("k", "a"), Done),
        at(1, 20, 30, del("k"), Done),
        at(2, 40, 50, cas("k", Some("a"), "b"), Swapped(true)),
    ];
    assert_violation("cas on deleted value", &history, "k");
}

#[test]
fn keys_are_checked_independently() {
    let history = [
        at(0, 0, 10, put("a", "1"), Done),
        at(1, 0, 10, put("b", "1"), Done),
        at(0, 20, 30, get("a"), read(Some("1"))),
        at(1, 20, 30, put("b", "2"), Done),
        at(2, 40, 50, get("b"), read(Some("1"))),
        at(2, 60, 70, get("a"), read(Some("1"))),
        at(2, 60, 70, put("c", "1"), Failed),
    ];
    match check(&history) {
        Verdict::Violation {
            key, operations, ..
        } => {
            assert_eq!(key, b"b");
            assert_eq!(operations, [1, 3, 4]);
        }
        other => panic!("{other:?}"),
    }
    // Reads of one key say nothing about another.
    let history = [
        at(0, 0, 10, put("a", "1"), Done),
        at(1, 20, 30, get("b"), read(None)),
        at(1, 20, 30, get("a"), read(Some("1"))),
    ];
    assert_linearizable("independent keys", &history);
}

#[test]
fn binary_keys_and_values_are_reported_in_hex() {
    let history = [Operation {
        client: 0,
        invoke: 0,
        complete: 1,
        op: nod_lincheck::Op::Get { key: vec![0, 1] },
        outcome: Outcome::Read(Some(vec![0xff])),
    }];
    let message = match check(&history) {
        Verdict::Violation { message, .. } => message,
        other => panic!("{other:?}"),
    };
    assert!(message.contains("key 0x0001"), "{message}");
    assert!(message.contains("read 0xff"), "{message}");
}

#[test]
fn budget_exhaustion_is_inconclusive_and_violations_win() {
    // Many concurrent writes and a read nobody wrote: exhaustive search.
    let mut history: Vec<Operation> = (0..12)
        .map(|c| at(c, 0, 100, put("a", &c.to_string()), Done))
        .collect();
    history.push(at(99, 200, 300, get("a"), read(Some("nobody"))));
    assert_eq!(
        Checker::with_budget(100).check(&history),
        Verdict::Inconclusive {
            key: b"a".to_vec(),
            explored: 101
        }
    );
    assert!(matches!(check(&history), Verdict::Violation { .. }));

    history.push(at(0, 400, 500, get("b"), read(Some("x"))));
    match Checker::with_budget(100).check(&history) {
        Verdict::Violation { key, .. } => assert_eq!(key, b"b"),
        other => panic!("{other:?}"),
    }
    assert_eq!(Checker::new().budget(), Checker::DEFAULT_BUDGET);
    assert_eq!(Checker::default().budget(), Checker::DEFAULT_BUDGET);
}

#[test]
fn long_prefix_is_abbreviated_in_the_report() {
    let mut history: Vec<Operation> = (0..30)
        .map(|i| at(0, 10 * i, 10 * i + 5, put("k", &i.to_string()), Done))
        .collect();
    history.push(at(1, 1000, 1001, get("k"), read(Some("3"))));
    let message = assert_violation("long", &history, "k");
    assert!(
        message.contains("Longest linearizable prefix: 30 of the 31"),
        "{message}"
    );
    assert!(message.contains("it ends with:"), "{message}");
    assert!(message.contains("Put(\"k\" = \"29\")"), "{message}");
    assert!(!message.contains("Put(\"k\" = \"19\")"), "{message}");
}

#[test]
fn validation() {
    let bad = [
        at(0, 0, 1, put("k", "a"), read(None)),
        at(0, 0, 1, get("k"), Swapped(true)),
        at(0, 0, 1, cas("k", None, "a"), Done),
        at(0, 0, 1, del("k"), Swapped(false)),
    ];
    for operation in bad {
        let history = [at(1, 0, 1, get("k"), read(None)), operation];
        assert!(
            matches!(
                validate(&history),
                Err(HistoryError::OutcomeMismatch { index: 1, .. })
            ),
            "{:?}",
            history[1]
        );
    }
    let history = [at(0, 5, 4, put("k", "a"), Done)];
    assert_eq!(
        validate(&history),
        Err(HistoryError::CompletesBeforeInvoke {
            index: 0,
            invoke: 5,
            complete: 4
        })
    );
    // The completion of an Unknown operation is ignored.
    assert_eq!(validate(&[at(0, 5, 4, put("k", "a"), Unknown)]), Ok(()));
}

#[test]
#[should_panic(expected = "nod-lincheck: invalid history: operation #0: a Get cannot have outcome")]
fn check_panics_on_invalid_history() {
    check(&[at(0, 0, 1, get("k"), Done)]);
}
