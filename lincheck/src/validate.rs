//! Input validation: outcomes must fit their operations and intervals must
//! not run backwards. A malformed history is a bug in the caller's recorder.

use std::fmt;

use crate::{Op, Operation, Outcome};

/// Why a history is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// The outcome cannot result from the operation (e.g. a Put that read a
    /// value, a Get that swapped).
    OutcomeMismatch {
        /// Index of the operation in the history.
        index: usize,
        /// The operation's kind: "Put", "Get", "Cas" or "Delete".
        op: &'static str,
        /// The offending outcome.
        outcome: Outcome,
    },
    /// A completed (not Unknown) operation whose completion precedes its invocation.
    CompletesBeforeInvoke {
        /// Index of the operation in the history.
        index: usize,
        invoke: u64,
        complete: u64,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::OutcomeMismatch { index, op, outcome } => {
                let expected = match *op {
                    "Get" => "Read(..)",
                    "Cas" => "Swapped(..)",
                    _ => "Done",
                };
                write!(
                    f,
                    "operation #{index}: a {op} cannot have outcome {outcome:?} \
                     (expected {expected}, Failed or Unknown)"
                )
            }
            HistoryError::CompletesBeforeInvoke {
                index,
                invoke,
                complete,
            } => write!(
                f,
                "operation #{index}: completes at {complete}, before its invocation at {invoke}"
            ),
        }
    }
}

impl std::error::Error for HistoryError {}

/// The name of an operation's kind, as used in messages.
pub(crate) fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Put { .. } => "Put",
        Op::Get { .. } => "Get",
        Op::Cas { .. } => "Cas",
        Op::Delete { .. } => "Delete",
    }
}

/// Checks that every outcome fits its operation and that no completed
/// operation completes before it is invoked (Unknown operations have no
/// completion, so their `complete` is not checked). Returns the first problem.
pub fn validate(history: &[Operation]) -> Result<(), HistoryError> {
    for (index, operation) in history.iter().enumerate() {
        let fits = matches!(
            (&operation.op, &operation.outcome),
            (_, Outcome::Failed | Outcome::Unknown)
                | (Op::Put { .. } | Op::Delete { .. }, Outcome::Done)
                | (Op::Get { .. }, Outcome::Read(_))
                | (Op::Cas { .. }, Outcome::Swapped(_))
        );
        if !fits {
            return Err(HistoryError::OutcomeMismatch {
                index,
                op: op_name(&operation.op),
                outcome: operation.outcome.clone(),
            });
        }
        if operation.outcome != Outcome::Unknown && operation.complete < operation.invoke {
            return Err(HistoryError::CompletesBeforeInvoke {
                index,
                invoke: operation.invoke,
                complete: operation.complete,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(op: Op, outcome: Outcome, invoke: u64, complete: u64) -> Operation {
        Operation {
            client: 0,
            invoke,
            complete,
            op,
            outcome,
        }
    }

    fn put() -> Op {
        Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }
    }

    fn get() -> Op {
        Op::Get { key: b"k".to_vec() }
    }

    fn cas() -> Op {
        Op::Cas {
            key: b"k".to_vec(),
            expected: None,
            new: b"v".to_vec(),
        }
    }

    fn delete() -> Op {
        Op::Delete { key: b"k".to_vec() }
    }

    #[test]
    fn accepts_fitting_outcomes() {
        let history = vec![
            operation(put(), Outcome::Done, 0, 1),
            operation(delete(), Outcome::Done, 1, 1),
            operation(get(), Outcome::Read(None), 2, 3),
            operation(cas(), Outcome::Swapped(false), 2, 3),
            operation(put(), Outcome::Failed, 4, 5),
            operation(get(), Outcome::Failed, 4, 5),
            operation(cas(), Outcome::Unknown, 6, 0), // complete ignored
            operation(get(), Outcome::Unknown, 6, 0),
        ];
        assert_eq!(validate(&history), Ok(()));
    }

    #[test]
    fn rejects_mismatched_outcomes() {
        let cases = [
            (put(), Outcome::Read(None), "Put"),
            (put(), Outcome::Swapped(true), "Put"),
            (delete(), Outcome::Read(Some(b"v".to_vec())), "Delete"),
            (get(), Outcome::Swapped(true), "Get"),
            (get(), Outcome::Done, "Get"),
            (cas(), Outcome::Done, "Cas"),
            (cas(), Outcome::Read(None), "Cas"),
        ];
        for (op, outcome, name) in cases {
            let history = vec![
                operation(put(), Outcome::Done, 0, 1),
                operation(op, outcome.clone(), 2, 3),
            ];
            let err = validate(&history).unwrap_err();
            assert_eq!(
                err,
                HistoryError::OutcomeMismatch {
                    index: 1,
                    op: name,
                    outcome
                }
            );
            assert!(err.to_string().starts_with("operation #1: a "), "{err}");
        }
    }

    #[test]
    fn rejects_completion_before_invocation() {
        let history = vec![operation(get(), Outcome::Failed, 5, 4)];
        let err = validate(&history).unwrap_err();
        assert_eq!(
            err,
            HistoryError::CompletesBeforeInvoke {
                index: 0,
                invoke: 5,
                complete: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "operation #0: completes at 4, before its invocation at 5"
        );
        let as_error: &dyn std::error::Error = &err;
        assert!(as_error.source().is_none());
    }
}
