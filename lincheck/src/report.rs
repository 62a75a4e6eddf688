//! The explanation attached to a [`Verdict::Violation`](crate::Verdict).

use std::fmt::Write;

use crate::display::{Bytes, MaybeBytes};
use crate::partition::KeyHistory;
use crate::search::Failure;
use crate::Operation;

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
        "key {} is not linearizable ({completed} completed and {unknown} unknown operations; \
         {} search states explored). ",
        Bytes(key_history.key),
        failure.explored,
    );
    let _ = write!(
        message,
        "Longest linearizable prefix: {prefix_completed} of the {completed} completed operations",
    );
    let prefix_unknown = failure.prefix.len() - prefix_completed;
    if prefix_unknown > 0 {
        let _ = write!(message, " (and {prefix_unknown} unknown ones)");
    }
    let _ = write!(
        message,
        ", leaving the value {}",
        MaybeBytes(key_history.values.get(failure.state))
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
        "\nAfter it, no order of the pending operations places\n  {}\nbefore its completion.",
        line(failure.blocked)
    );
    message
}
