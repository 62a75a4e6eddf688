//! P-compositionality: a history is split into one sub-history per key, with
//! the operations that carry no information dropped and the rest translated
//! into [`Effect`]s on interned states.

use std::collections::HashMap;

use crate::model::{Effect, Values};
use crate::{Op, Operation, Outcome};

/// One operation of a key's sub-history.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyOp {
    /// Index into the full history.
    pub(crate) index: usize,
    pub(crate) invoke: u64,
    /// None if the outcome is Unknown (the return is at +infinity).
    pub(crate) complete: Option<u64>,
    pub(crate) effect: Effect,
}

/// The checked operations on one key, sorted by invocation (then index).
pub(crate) struct KeyHistory<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) ops: Vec<KeyOp>,
}

/// Splits `history` (already validated) by key, in order of each key's first
/// appearance. Failed operations and Unknown Gets are dropped; a key whose
/// operations were all dropped has no sub-history.
pub(crate) fn partition(history: &[Operation]) -> Vec<KeyHistory<'_>> {
    let mut keys: Vec<(&[u8], Vec<usize>)> = Vec::new();
    let mut position: HashMap<&[u8], usize> = HashMap::new();
    for (index, operation) in history.iter().enumerate() {
        if is_dropped(operation) {
            continue;
        }
        let key = operation.op.key();
        let slot = *position.entry(key).or_insert_with(|| {
            keys.push((key, Vec::new()));
            keys.len() - 1
        });
        keys[slot].1.push(index);
    }
    keys.into_iter()
        .map(|(key, indices)| key_history(history, key, indices))
        .collect()
}

fn is_dropped(operation: &Operation) -> bool {
    matches!(
        (&operation.op, &operation.outcome),
        (_, Outcome::Failed) | (Op::Get { .. }, Outcome::Unknown)
    )
}

fn key_history<'a>(history: &'a [Operation], key: &'a [u8], indices: Vec<usize>) -> KeyHistory<'a> {
    let observed = indices
        .iter()
        .filter_map(|&i| match (&history[i].op, &history[i].outcome) {
            (Op::Get { .. }, Outcome::Read(value)) => value.as_deref(),
            (Op::Cas { expected, .. }, _) => expected.as_deref(),
            _ => None,
        });
    let values = Values::new(observed);
    let mut ops: Vec<KeyOp> = indices
        .into_iter()
        .map(|index| {
            let operation = &history[index];
            let known = operation.outcome != Outcome::Unknown;
            KeyOp {
                index,
                invoke: operation.invoke,
                complete: known.then_some(operation.complete),
                effect: effect(operation, &values),
            }
        })
        .collect();
    ops.sort_by_key(|op| (op.invoke, op.index));
    KeyHistory { key, ops }
}

/// The effect of a validated operation that is not dropped.
fn effect(operation: &Operation, values: &Values<'_>) -> Effect {
    match (&operation.op, &operation.outcome) {
        (Op::Put { value, .. }, _) => Effect::Write(values.intern(Some(value))),
        (Op::Delete { .. }, _) => Effect::Write(values.intern(None)),
        (Op::Get { .. }, Outcome::Read(observed)) => {
            Effect::Read(values.intern(observed.as_deref()))
        }
        (Op::Cas { expected, new, .. }, outcome) => Effect::Cas {
            expected: values.intern(expected.as_deref()),
            new: values.intern(Some(new)),
            swapped: match outcome {
                Outcome::Swapped(swapped) => Some(*swapped),
                _ => None,
            },
        },
        (Op::Get { .. }, outcome) => unreachable!("Get with outcome {outcome:?} is not checked"),
    }
}
