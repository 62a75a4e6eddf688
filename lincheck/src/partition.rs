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
    pub(crate) values: Values<'a>,
}

/// Splits `history` (already validated) by key, in order of each key's first
/// appearance. Failed operations and Unknown Gets are dropped; a key whose
/// operations were all dropped has no sub-history.
pub(crate) fn partition(history: &[Operation]) -> Vec<KeyHistory<'_>> {
    let mut by_key: Vec<KeyHistory<'_>> = Vec::new();
    let mut position: HashMap<&[u8], usize> = HashMap::new();
    for (index, operation) in history.iter().enumerate() {
        let known = match (&operation.op, &operation.outcome) {
            (_, Outcome::Failed) | (Op::Get { .. }, Outcome::Unknown) => continue,
            (_, Outcome::Unknown) => false,
            _ => true,
        };
        let key = operation.op.key();
        let slot = *position.entry(key).or_insert_with(|| {
            by_key.push(KeyHistory {
                key,
                ops: Vec::new(),
                values: Values::default(),
            });
            by_key.len() - 1
        });
        let key_history = &mut by_key[slot];
        let effect = effect(operation, &mut key_history.values);
        key_history.ops.push(KeyOp {
            index,
            invoke: operation.invoke,
            complete: known.then_some(operation.complete),
            effect,
        });
    }
    for key_history in &mut by_key {
        key_history.ops.sort_by_key(|op| (op.invoke, op.index));
    }
    by_key
}

/// The effect of a validated, non-Failed operation that is not an Unknown Get.
fn effect<'a>(operation: &'a Operation, values: &mut Values<'a>) -> Effect {
    match (&operation.op, &operation.outcome) {
        (Op::Put { value, .. }, _) => Effect::Write(values.intern(Some(value))),
        (Op::Delete { .. }, _) => Effect::Write(values.intern(None)),
        (Op::Get { .. }, Outcome::Read(observed)) => Effect::Read(values.intern(observed.as_deref())),
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
