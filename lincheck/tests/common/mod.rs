//! Helpers shared by the integration tests: history builders, a generator of
//! linearizable histories, and a deliberately naive reference checker.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::HashMap;

use nod_lincheck::{Op, Operation, Outcome};

pub fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.into(),
    }
}

pub fn get(key: &str) -> Op {
    Op::Get { key: key.into() }
}

pub fn cas(key: &str, expected: Option<&str>, new: &str) -> Op {
    Op::Cas {
        key: key.into(),
        expected: expected.map(Into::into),
        new: new.into(),
    }
}

pub fn del(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

pub fn read(value: Option<&str>) -> Outcome {
    Outcome::Read(value.map(Into::into))
}

/// An operation by `client` over `[invoke, complete]`.
pub fn at(client: u64, invoke: u64, complete: u64, op: Op, outcome: Outcome) -> Operation {
    Operation {
        client,
        invoke,
        complete,
        op,
        outcome,
    }
}

/// SplitMix64: a tiny deterministic generator for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Parameters of [`generate`].
pub struct Workload {
    pub seed: u64,
    pub ops: usize,
    pub keys: usize,
    pub clients: usize,
    /// Probability that an operation's outcome is Unknown (a write then took
    /// effect or not, at random).
    pub unknown: f64,
    /// Probability that an operation Failed (and so did not take effect).
    pub failed: f64,
}

/// A linearizable history: `clients` clients each issue operations one after
/// another with random durations (so they overlap); every operation takes
/// effect at a random point inside its interval, and outcomes are computed by
/// executing the operations in the order of those points. Written values are
/// unique, so a read identifies the write it saw.
pub fn generate(w: &Workload) -> Vec<Operation> {
    let mut rng = Rng::new(w.seed);
    let mut clock: Vec<u64> = (0..w.clients).map(|_| rng.below(20)).collect();
    let mut written = 0u64;
    let mut history = Vec::with_capacity(w.ops);
    let mut points = Vec::with_capacity(w.ops);
    let mut recent: Vec<Vec<String>> = vec![Vec::new(); w.keys];
    for _ in 0..w.ops {
        let client = (0..w.clients)
            .min_by_key(|&c| (clock[c], c))
            .expect("a client");
        let invoke = clock[client];
        let duration = 1 + rng.below(60);
        let complete = invoke + duration;
        points.push(invoke + rng.below(duration + 1));
        clock[client] = complete + rng.below(4); // may be == complete: a touching interval
        let k = rng.below(w.keys as u64) as usize;
        let key = format!("key{k}");
        let mut fresh = || {
            written += 1;
            format!("v{written}")
        };
        let op = match rng.below(10) {
            0..=2 => {
                let value = fresh();
                recent[k].push(value.clone());
                put(&key, &value)
            }
            3..=6 => get(&key),
            7 | 8 => {
                let expected = match recent[k].len() {
                    0 => None,
                    n => {
                        let pick = rng.below(n.min(3) as u64 + 1) as usize;
                        (pick > 0).then(|| recent[k][n - pick].clone())
                    }
                };
                let new = fresh();
                recent[k].push(new.clone());
                cas(&key, expected.as_deref(), &new)
            }
            _ => del(&key),
        };
        history.push(at(client as u64, invoke, complete, op, Outcome::Done));
    }

    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| (points[i], i));
    let mut state: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for i in order {
        let roll = rng.next_u64() as f64 / u64::MAX as f64;
        let fate = if roll < w.failed {
            Fate::Failed
        } else if roll < w.failed + w.unknown {
            Fate::Unknown {
                applied: rng.chance(0.5),
            }
        } else {
            Fate::Done
        };
        let operation = &mut history[i];
        operation.outcome = match fate {
            Fate::Failed => Outcome::Failed,
            Fate::Unknown { applied } => {
                if applied {
                    apply(&mut state, &operation.op);
                }
                Outcome::Unknown
            }
            Fate::Done => apply(&mut state, &operation.op),
        };
    }
    history
}

enum Fate {
    Done,
    Failed,
    Unknown { applied: bool },
}

/// Executes `op` on `state`, returning the outcome it has.
pub fn apply(state: &mut HashMap<Vec<u8>, Vec<u8>>, op: &Op) -> Outcome {
    match op {
        Op::Put { key, value } => {
            state.insert(key.clone(), value.clone());
            Outcome::Done
        }
        Op::Get { key } => Outcome::Read(state.get(key).cloned()),
        Op::Cas { key, expected, new } => {
            let holds = state.get(key) == expected.as_ref();
            if holds {
                state.insert(key.clone(), new.clone());
            }
            Outcome::Swapped(holds)
        }
        Op::Delete { key } => {
            state.remove(key);
            Outcome::Done
        }
    }
}

/// Makes a Get on some key return a value that was overwritten before the
/// Get was invoked: a Put(v1) completed, then a Put or Delete of that key
/// started and completed, then the Get started. Values are unique, so
/// nothing else could have produced v1. Returns the Get's index.
pub fn plant_stale_read(history: &mut [Operation]) -> usize {
    let done = |o: &Operation| o.outcome == Outcome::Done;
    for g in history.len() / 2..history.len() {
        if !matches!(history[g].outcome, Outcome::Read(_)) {
            continue;
        }
        let key = history[g].op.key().to_vec();
        let on_key = |o: &Operation| o.op.key() == &key[..];
        let overwrites = history.iter().filter(|w2| {
            on_key(w2)
                && done(w2)
                && matches!(w2.op, Op::Put { .. } | Op::Delete { .. })
                && w2.complete < history[g].invoke
        });
        let old = overwrites
            .flat_map(|w2| {
                history.iter().filter_map(|w1| match &w1.op {
                    Op::Put { value, .. } if on_key(w1) && done(w1) && w1.complete < w2.invoke => {
                        Some(value.clone())
                    }
                    _ => None,
                })
            })
            .last();
        if let Some(old) = old {
            history[g].outcome = Outcome::Read(Some(old));
            return g;
        }
    }
    panic!("no place to plant a stale read");
}

/// The naive reference: linearizable iff, for some subset of the Unknown
/// operations, some ordering of the chosen operations (all completed ones
/// plus that subset) respects real-time order and replays on a sequential map
/// with the observed outcomes. Exponential; for histories of a handful of
/// operations only. Works on the whole history (no per-key split).
pub fn reference_linearizable(history: &[Operation]) -> bool {
    let live: Vec<&Operation> = history
        .iter()
        .filter(|o| o.outcome != Outcome::Failed)
        .collect();
    let unknown: Vec<usize> = (0..live.len())
        .filter(|&i| live[i].outcome == Outcome::Unknown)
        .collect();
    for mask in 0u32..(1 << unknown.len()) {
        let chosen: Vec<&Operation> = (0..live.len())
            .filter(|&i| match unknown.iter().position(|&u| u == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .map(|i| live[i])
            .collect();
        let mut permutation: Vec<usize> = (0..chosen.len()).collect();
        if any_permutation(&mut permutation, 0, &mut |order| replays(&chosen, order)) {
            return true;
        }
    }
    false
}

/// Calls `f` on every permutation of `items[k..]` (with `items[..k]` fixed)
/// until it returns true.
fn any_permutation(items: &mut [usize], k: usize, f: &mut impl FnMut(&[usize]) -> bool) -> bool {
    if k == items.len() {
        return f(items);
    }
    for i in k..items.len() {
        items.swap(k, i);
        let found = any_permutation(items, k + 1, f);
        items.swap(k, i);
        if found {
            return true;
        }
    }
    false
}

/// Whether executing `ops` in `order` respects real time and yields the
/// observed outcomes.
fn replays(ops: &[&Operation], order: &[usize]) -> bool {
    let end = |o: &Operation| {
        if o.outcome == Outcome::Unknown {
            u64::MAX
        } else {
            o.complete
        }
    };
    for (a, &i) in order.iter().enumerate() {
        for &j in &order[a + 1..] {
            // ops[j] is placed after ops[i], so it must not have completed
            // before ops[i] was invoked.
            if end(ops[j]) < ops[i].invoke {
                return false;
            }
        }
    }
    let mut state = HashMap::new();
    order.iter().all(|&i| {
        let observed = apply(&mut state, &ops[i].op);
        ops[i].outcome == Outcome::Unknown || ops[i].outcome == observed
    })
}

/// A second reference for somewhat larger histories (up to 20 operations): a
/// plain exhaustive search over (set of operations placed, map state), with
/// a visited set but none of the checker's reductions and no per-key split.
pub fn reference_memo_linearizable(history: &[Operation]) -> bool {
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| o.outcome != Outcome::Failed)
        .collect();
    assert!(ops.len() <= 20, "too many operations for the reference");
    let completed_mask: u32 = (0..ops.len())
        .filter(|&i| ops[i].outcome != Outcome::Unknown)
        .fold(0, |mask, i| mask | 1 << i);
    let mut visited = std::collections::HashSet::new();
    let mut stack = vec![(0u32, Vec::<(Vec<u8>, Vec<u8>)>::new())];
    while let Some((placed, state)) = stack.pop() {
        if placed & completed_mask == completed_mask {
            return true;
        }
        if !visited.insert((placed, state.clone())) {
            continue;
        }
        for i in 0..ops.len() {
            if placed & (1 << i) != 0 {
                continue;
            }
            // Some unplaced completed operation finished before this one began.
            let blocked = (0..ops.len()).any(|j| {
                completed_mask & !placed & (1 << j) != 0 && ops[j].complete < ops[i].invoke
            });
            if blocked {
                continue;
            }
            let mut map: HashMap<Vec<u8>, Vec<u8>> = state.iter().cloned().collect();
            let observed = apply(&mut map, &ops[i].op);
            if ops[i].outcome != Outcome::Unknown && ops[i].outcome != observed {
                continue;
            }
            let mut next: Vec<(Vec<u8>, Vec<u8>)> = map.into_iter().collect();
            next.sort();
            stack.push((placed | 1 << i, next));
        }
    }
    false
}
