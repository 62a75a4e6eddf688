//! Linearizability checker for Nod's key-value client histories.
//!
//! # What it checks
//!
//! Given a history of client operations on a key-value store (`Put`, `Get`,
//! compare-and-swap `Cas`, `Delete`), each with an invocation time, a
//! completion time and the outcome the client saw, [`check`] decides whether
//! the history is *linearizable* (Herlihy & Wing): whether every operation can
//! be assigned a single point in time inside its `[invoke, complete]` interval
//! so that, executed one after another in that order, a sequential map would
//! have produced exactly the outcomes the clients observed.
//!
//! The sequential model, per key, is an `Option<Value>` that starts absent:
//! `Put` stores a value, `Delete` removes it, `Get` must return the current
//! value, and `Cas { expected, new }` stores `new` (reporting
//! `Swapped(true)`) exactly when the current value equals `expected`, otherwise
//! it changes nothing and reports `Swapped(false)`.
//!
//! Operations whose outcome the client does not know ([`Outcome::Unknown`]:
//! timeouts, lost connections) may take effect at any point after their
//! invocation, or never; operations that definitely failed
//! ([`Outcome::Failed`]) are ignored, as are `Get`s with unknown outcome.
//!
//! ```
//! use nod_lincheck::{check, Op, Operation, Outcome, Verdict};
//!
//! let op = |client, invoke, complete, op, outcome| Operation { client, invoke, complete, op, outcome };
//! let key = b"k".to_vec();
//! let history = [
//!     op(0, 0, 10, Op::Put { key: key.clone(), value: b"a".to_vec() }, Outcome::Done),
//!     op(1, 20, 30, Op::Put { key: key.clone(), value: b"b".to_vec() }, Outcome::Done),
//!     // A stale read: "a" was overwritten before this Get began.
//!     op(2, 40, 50, Op::Get { key: key.clone() }, Outcome::Read(Some(b"a".to_vec()))),
//! ];
//! match check(&history) {
//!     Verdict::Violation { key, operations, message } => {
//!         assert_eq!(key, b"k");
//!         assert_eq!(operations, [0, 1, 2]);
//!         println!("{message}");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(check(&history[..2]), Verdict::Linearizable);
//! ```
//!
//! # Algorithm
//!
//! The checker is the Wing & Gong search with the memoization of Lowe
//! ("Testing for linearizability", Concurrency and Computation, 2017), in the
//! form used by Porcupine (<https://github.com/anishathalye/porcupine>):
//!
//! * **P-compositionality.** Linearizability is a local property, so the
//!   history is split by key and every key is checked on its own (a single
//!   register-like object with a far smaller search space).
//! * **Depth-first search.** Call and return events are kept in a doubly
//!   linked list sorted by time (calls before returns at equal timestamps, so
//!   operations that touch at one instant count as concurrent). Any operation
//!   whose call precedes the first pending return may be linearized next if
//!   the model accepts its outcome; the search lifts it out of the list and
//!   descends, and backtracks when the first pending return is reached.
//! * **Memoization.** A search node is determined by the set of linearized
//!   operations (a bitset, stored from the first unlinearized operation on)
//!   and the model state (values are interned to small integers). Nodes whose
//!   subtree held no linearization are cached and never explored again.
//! * **Unknown operations.** Their return is at +infinity, so they never
//!   block the search and the search succeeds once every *completed*
//!   operation is linearized (the unused ones never took effect).
//! * **Reductions.** Each of these only skips linearizations that have an
//!   equivalent the search still tries, so the check stays exact:
//!   a Get (or non-swapping Cas) that fits the current state is linearized
//!   at once without branching; values that no operation reads or expects
//!   share one model state; Unknown operations are applied only when they
//!   change the state, at most one Put/Delete per run of them, and only
//!   right before a completed Get or Cas; of identical pending Unknown
//!   operations only the latest-invoked is tried and the memo counts, rather
//!   than names, the ones used; and a failed node also rules out every node
//!   that differs only by having used *more* Unknown operations. See
//!   `src/search.rs` for the arguments.
//!
//! # Limits
//!
//! * Deciding linearizability is NP-complete; the search is exponential in
//!   the worst case: in practice in the number of operations concurrent at
//!   one moment on one key, and in the number of Unknown operations on a key
//!   that could explain the same observation. Each key has a budget of
//!   search states ([`Checker::with_budget`]); running out yields
//!   [`Verdict::Inconclusive`], never a silent pass.
//! * Only the key-value model above is supported, and operations touch a
//!   single key each (no transactions or multi-key reads).
//! * Timestamps must come from one clock (or be conservatively widened), as
//!   real-time order is taken from them verbatim.
//! * For a violation the report names the key, its operations and the longest
//!   linearizable prefix the search found; it is not a minimal counterexample.

mod bitset;
mod cache;
mod display;
mod links;
mod model;
mod partition;
mod report;
mod search;
mod validate;

pub use validate::{validate, HistoryError};

use search::SearchResult;

/// A key of the store.
pub type Key = Vec<u8>;
/// A value of the store.
pub type Value = Vec<u8>;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Key,
        value: Value,
    },
    Get {
        key: Key,
    },
    /// Compare-and-swap: sets `new` if the current value equals `expected` (None = key absent).
    Cas {
        key: Key,
        expected: Option<Value>,
        new: Value,
    },
    Delete {
        key: Key,
    },
}

impl Op {
    /// The key this operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Cas { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// What the client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Put/Delete succeeded.
    Done,
    /// Get returned this (None = key absent).
    Read(Option<Value>),
    /// Cas returned whether it swapped.
    Swapped(bool),
    /// Definitely did not take effect (e.g. rejected before being proposed). Such operations are dropped from the history.
    Failed,
    /// May or may not have taken effect (timeout, connection lost). It may linearize anywhere after its invocation, or never; its return value is unconstrained. An Unknown Get carries no information and is dropped.
    Unknown,
}

/// One client operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    /// Invocation time (any monotonic unit, e.g. simulated microseconds or nanoseconds since start).
    pub invoke: u64,
    /// Completion time; must be >= invoke. Ignored for Unknown (treated as +infinity).
    pub complete: u64,
    pub op: Op,
    pub outcome: Outcome,
}

/// The result of checking a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No linearization exists for this key. `operations` are the indices
    /// (into the input slice) of that key's checked operations (Failed
    /// operations and Unknown Gets are left out), in invocation order;
    /// `message` is a human-readable explanation: the longest linearizable
    /// prefix found and the operation that could not be placed after it.
    Violation {
        key: Key,
        operations: Vec<usize>,
        message: String,
    },
    /// The search exceeded its budget for this key (report, don't silently pass).
    Inconclusive {
        key: Key,
        explored: u64,
    },
}

impl Verdict {
    /// True for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// A linearizability checker with a per-key search budget.
#[derive(Clone, Debug)]
pub struct Checker {
    max_states_per_key: u64,
}

impl Checker {
    /// The default budget: search states explored per key before giving up.
    pub const DEFAULT_BUDGET: u64 = 5_000_000;

    /// A checker with [`Checker::DEFAULT_BUDGET`].
    pub fn new() -> Self {
        Self::with_budget(Self::DEFAULT_BUDGET)
    }

    /// A checker that explores at most `max_states_per_key` search states for
    /// each key before answering [`Verdict::Inconclusive`].
    pub fn with_budget(max_states_per_key: u64) -> Self {
        Checker { max_states_per_key }
    }

    /// The per-key budget of search states.
    pub fn budget(&self) -> u64 {
        self.max_states_per_key
    }

    /// Checks every key; returns the first Violation (preferred) or
    /// Inconclusive found, else Linearizable. Keys are checked in the order of
    /// their first appearance in `history`.
    ///
    /// # Panics
    ///
    /// If the history is malformed (see [`validate`]).
    pub fn check(&self, history: &[Operation]) -> Verdict {
        if let Err(e) = validate(history) {
            panic!("nod-lincheck: invalid history: {e}");
        }
        let mut inconclusive = None;
        for key_history in partition::partition(history) {
            match search::search(&key_history, self.max_states_per_key) {
                SearchResult::Linearizable => {}
                SearchResult::Violation(failure) => {
                    return Verdict::Violation {
                        key: key_history.key.to_vec(),
                        operations: key_history.ops.iter().map(|op| op.index).collect(),
                        message: report::violation_message(history, &key_history, &failure),
                    };
                }
                SearchResult::Inconclusive { explored } => {
                    inconclusive.get_or_insert(Verdict::Inconclusive {
                        key: key_history.key.to_vec(),
                        explored,
                    });
                }
            }
        }
        inconclusive.unwrap_or(Verdict::Linearizable)
    }
}

impl Default for Checker {
    fn default() -> Self {
        Self::new()
    }
}

/// Convenience: `Checker::new().check(history)`.
///
/// # Panics
///
/// If the history is malformed (see [`validate`]).
pub fn check(history: &[Operation]) -> Verdict {
    Checker::new().check(history)
}
