//! The explanation attached to a [`Verdict::Violation`](crate::Verdict).

use std::fmt::Write;

use crate::display::{Bytes, MaybeBytes};
use crate::partition::KeyHistory;
use crate::search::Failure;
use crate::{Op, Operation};

/// How many operations at the end of the longest prefix are listed.
const PREFIX_TAIL: usize = 10;

pub(crate) fn violation_message(
    history: &[Operation],
    key_history: &KeyHistory<'_>,
    failure: &Failure,
) -> String {
    let ops = &key_history.ops;
    let completed = ops.iter().filter(|op| op.complete.is_some()).count();
    let unknown = ops.len() - completed;
    let prefix_completed = failure
        .prefix
        .iter()
        .filter(|&&i| ops[i].complete.is_some())
        .count();
    let line = |position: usize| {
        let index = ops[position].index;
        format!("#{index} {}", history[index])
    };

    let mut message = String::new();
    let _ = write!(
        message,
        "key {} is not linearizable ({completed} completed and {unknown} unknown {}; \
         {} search states explored). ",
        Bytes(key_history.key),
        plural(unknown, "operation"),
        failure.explored,
    );
    let _ = write!(
        message,
        "Longest linearizable prefix: {prefix_completed} of the {completed} completed operations",
    );
    let prefix_unknown = failure.prefix.len() - prefix_completed;
    if prefix_unknown > 0 {
        let _ = write!(
            message,
            " (plus {prefix_unknown} unknown {})",
            plural(prefix_unknown, "operation")
        );
    }
    let _ = write!(
        message,
        ", leaving the value {}",
        MaybeBytes(replay(history, key_history, &failure.prefix))
    );
    if failure.prefix.is_empty() {
        message.push_str(" (the initial state).");
    } else {
        let skip = failure.prefix.len().saturating_sub(PREFIX_TAIL);
        message.push_str(if skip > 0 { "; it ends with:" } else { ":" });
        for &position in &failure.prefix[skip..] {
            let _ = write!(message, "\n  {}", line(position));
        }
    }
    let _ = write!(
        message,
        "\nNo extension of it linearizes\n  {}\nwithin that operation's interval.",
        line(failure.blocked)
    );
    message
}

/// The value of the key after executing `prefix` (positions in the key's
/// operations) in order.
fn replay<'a>(
    history: &'a [Operation],
    key_history: &KeyHistory<'_>,
    prefix: &[usize],
) -> Option<&'a [u8]> {
    let mut state: Option<&[u8]> = None;
    for &position in prefix {
        match &history[key_history.ops[position].index].op {
            Op::Put { value, .. } => state = Some(value),
            Op::Delete { .. } => state = None,
            Op::Get { .. } => {}
            Op::Cas { expected, new, .. } => {
                if state == expected.as_deref() {
                    state = Some(new);
                }
            }
        }
    }
    state
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}
