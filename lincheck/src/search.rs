//! The Wing & Gong / Lowe depth-first search for a linearization of one
//! key's sub-history, with memoization of failed nodes.
//!
//! Completed operations live in a linked list of call and return events
//! sorted by time (calls first at equal times). At a node, every operation
//! whose call precedes the first remaining return may be linearized next;
//! the search tries them in call order, then tries the pending Unknown
//! operations invoked no later than that first return. Linearizing lifts the
//! operation's events out of the list; backtracking puts them back. The
//! search succeeds when no completed operation is left: Unknown operations
//! that were not used never took effect.
//!
//! Rules that only skip redundant work (each skipped linearization has an
//! equivalent one that is still tried):
//! * a read-only operation (a Get, or a Cas that did not swap) that fits the
//!   current state is linearized at once, without trying alternatives: in
//!   any linearization from here it could be moved to the front;
//! * an Unknown operation is applied only if it changes the state (otherwise
//!   it might as well never have happened);
//! * after an Unknown operation, the next Unknown one applied before a
//!   completed operation is a Cas, not a Put or Delete (which would overwrite
//!   whatever the first did, so the first is not needed), and the next
//!   completed operation is not a Put or Delete either (which would overwrite
//!   the Unknown ones, so they are not needed);
//! * of several pending Unknown operations with the same effect, only the one
//!   invoked last is tried (the earlier ones can stand in for it anywhere);
//!   likewise the memo key records how many of them are used, not which;
//! * a node covered by a failed node (see [`FailedCache`]) is not explored.
//!
//! Why this stays exact: deleting Unknown operations from a linearization
//! keeps it valid as long as the states seen by the completed operations do
//! not change (nothing ever has to come after an Unknown operation), and
//! moving a fitting read-only operation to the front keeps it valid too (it
//! may go first, since every completed operation still pending finished no
//! earlier than it started, and it does not change the state). Any
//! linearization from a node can be brought into the shape the rules
//! allow by such deletions and moves, so a node fails only if no
//! linearization from it exists at all.

use crate::bitset::Bitset;
use crate::cache::FailedCache;
use crate::links::Links;
use crate::model::{StateId, ABSENT};
use crate::partition::{KeyHistory, KeyOp};

pub(crate) enum SearchResult {
    Linearizable,
    Violation(Failure),
    /// The budget of search states ran out.
    Inconclusive {
        explored: u64,
    },
}

/// Where the search got furthest, for the report.
pub(crate) struct Failure {
    /// The longest linearizable prefix found (positions in `KeyHistory::ops`):
    /// the one that linearized the most completed operations.
    pub(crate) prefix: Vec<usize>,
    /// The completed operation that had to be linearized next but could not
    /// be (position in `KeyHistory::ops`).
    pub(crate) blocked: usize,
    /// Search states explored.
    pub(crate) explored: u64,
}

/// Searches for a linearization of `history`, exploring at most `budget` states.
pub(crate) fn search(history: &KeyHistory<'_>, budget: u64) -> SearchResult {
    Search::new(&history.ops, budget).run()
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Event {
    time: u64,
    is_return: bool,
    /// Rank of the completed operation (its position in `Search::completed`).
    rank: u32,
}

/// The next candidate to try at the current node.
#[derive(Clone, Copy)]
enum Cursor {
    /// A read-only completed operation (by rank) that fits the state: the
    /// only candidate of the node.
    Forced(u32),
    /// Every candidate of the node has been tried.
    Exhausted,
    /// An event of the completed-operation list.
    Completed(u32),
    /// A node of the unknown-operation list; `bound` is the time of the
    /// first remaining return: only operations invoked by then may go next.
    Unknown { id: u32, bound: u64 },
}

/// How the current node was reached from its parent.
#[derive(Clone, Copy)]
enum Choice {
    /// `forced`: the operation was the node's only candidate.
    Completed {
        rank: u32,
        forced: bool,
    },
    Unknown {
        id: u32,
        bound: u64,
    },
}

struct Frame {
    choice: Choice,
    /// The parent's state and restriction, restored on backtracking.
    state: StateId,
    after_unknown: bool,
}

enum Attempt {
    /// The operation was linearized and the search is at a new node.
    Descended,
    /// The operation cannot go next (or leads to a known failure).
    Rejected,
    Linearizable,
    OutOfBudget,
}

struct Best {
    depth: usize,
    prefix: Vec<usize>,
    blocked: usize,
}

struct Search<'h> {
    ops: &'h [KeyOp],
    /// Completed operations by rank (call order): positions in `ops`.
    completed: Vec<usize>,
    /// Unknown operations by id - 1 (invocation order): positions in `ops`.
    unknown: Vec<usize>,
    /// Index 0 and the last index are the list sentinels.
    events: Vec<Event>,
    call_event: Vec<u32>,
    return_event: Vec<u32>,
    event_list: Links,
    unknown_list: Links,
    /// For each unknown id, the next unknown id with the same effect (or NONE).
    same_effect_next: Vec<u32>,
    /// For each unknown id - 1, its class: the unknown operations with the
    /// same effect.
    class_of: Vec<u32>,
    /// For each class, its members (unknown id - 1) in invocation order.
    class_members: Vec<Vec<u32>>,
    /// For each class, how many members are applied.
    class_used: Vec<u32>,

    linearized: Bitset,
    /// Applied unknown operations (by id - 1).
    applied: Bitset,
    /// `applied` up to symmetry, for the memo: the first `class_used[c]`
    /// members of each class c. Applied members have all been invoked before
    /// the current bound, as have those earlier members, so from here on it
    /// only matters how many members of a class are used, not which.
    applied_canonical: Bitset,
    remaining: usize,
    state: StateId,
    /// An Unknown operation was applied since the last completed one.
    after_unknown: bool,
    stack: Vec<Frame>,

    cache: FailedCache,
    key_scratch: Vec<u64>,
    explored: u64,
    budget: u64,
    best: Best,
}

impl<'h> Search<'h> {
    fn new(ops: &'h [KeyOp], budget: u64) -> Self {
        let completed: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].complete.is_some())
            .collect();
        let unknown: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].complete.is_none())
            .collect();

        let mut events = Vec::with_capacity(2 * completed.len() + 2);
        for (rank, &i) in completed.iter().enumerate() {
            let rank = u32::try_from(rank).expect("too many operations");
            let complete = ops[i].complete.expect("completed operation");
            events.push(Event {
                time: ops[i].invoke,
                is_return: false,
                rank,
            });
            events.push(Event {
                time: complete,
                is_return: true,
                rank,
            });
        }
        events.sort_by_key(|e| (e.time, e.is_return, e.rank));
        let sentinel = Event {
            time: u64::MAX,
            is_return: true,
            rank: NONE,
        };
        events.insert(0, sentinel);
        events.push(sentinel);
        let mut call_event = vec![0; completed.len()];
        let mut return_event = vec![0; completed.len()];
        for (id, event) in events.iter().enumerate().skip(1).take(2 * completed.len()) {
            let slot = if event.is_return {
                &mut return_event
            } else {
                &mut call_event
            };
            slot[event.rank as usize] = id as u32;
        }

        let mut same_effect_next = vec![NONE; unknown.len() + 1];
        let mut last_with_effect = std::collections::HashMap::new();
        for id in (1..=unknown.len()).rev() {
            let effect = ops[unknown[id - 1]].effect;
            if let Some(next) = last_with_effect.insert(effect, id as u32) {
                same_effect_next[id] = next;
            }
        }
        let mut class_of = Vec::with_capacity(unknown.len());
        let mut class_members: Vec<Vec<u32>> = Vec::new();
        let mut class_by_effect = std::collections::HashMap::new();
        for (rank, &i) in unknown.iter().enumerate() {
            let class = *class_by_effect.entry(ops[i].effect).or_insert_with(|| {
                class_members.push(Vec::new());
                class_members.len() as u32 - 1
            });
            class_members[class as usize].push(rank as u32);
            class_of.push(class);
        }

        Search {
            ops,
            event_list: Links::new(2 * completed.len()),
            unknown_list: Links::new(unknown.len()),
            linearized: Bitset::new(completed.len()),
            applied: Bitset::new(unknown.len()),
            applied_canonical: Bitset::new(unknown.len()),
            remaining: completed.len(),
            completed,
            unknown,
            events,
            call_event,
            return_event,
            same_effect_next,
            class_of,
            class_used: vec![0; class_members.len()],
            class_members,
            state: ABSENT,
            after_unknown: false,
            stack: Vec::new(),
            cache: FailedCache::default(),
            key_scratch: Vec::new(),
            explored: 0,
            budget,
            best: Best {
                depth: 0,
                prefix: Vec::new(),
                blocked: usize::MAX,
            },
        }
    }

    fn run(mut self) -> SearchResult {
        if self.remaining == 0 {
            return SearchResult::Linearizable;
        }
        self.best.blocked = self.blocking_operation();
        let mut cursor = self.node_start();
        loop {
            let next = match cursor {
                Cursor::Forced(rank) => match self.try_completed(rank, true) {
                    Attempt::Descended => Some(self.node_start()),
                    Attempt::Rejected => None,
                    Attempt::Linearizable => return SearchResult::Linearizable,
                    Attempt::OutOfBudget => return self.out_of_budget(),
                },
                Cursor::Exhausted => None,
                Cursor::Completed(event_id) => {
                    let event = self.events[event_id as usize];
                    if event.is_return {
                        // No completed operation called before this return is
                        // left to try; move on to the unknown ones.
                        Some(Cursor::Unknown {
                            id: self.unknown_list.first(),
                            bound: event.time,
                        })
                    } else {
                        match self.try_completed(event.rank, false) {
                            Attempt::Descended => Some(self.node_start()),
                            Attempt::Rejected => {
                                Some(Cursor::Completed(self.event_list.next(event_id)))
                            }
                            Attempt::Linearizable => return SearchResult::Linearizable,
                            Attempt::OutOfBudget => return self.out_of_budget(),
                        }
                    }
                }
                Cursor::Unknown { id, bound } => {
                    if id != self.unknown_list.tail() && self.unknown_op(id).invoke <= bound {
                        match self.try_unknown(id, bound) {
                            Attempt::Descended => Some(self.node_start()),
                            Attempt::Rejected => Some(Cursor::Unknown {
                                id: self.unknown_list.next(id),
                                bound,
                            }),
                            Attempt::Linearizable => return SearchResult::Linearizable,
                            Attempt::OutOfBudget => return self.out_of_budget(),
                        }
                    } else {
                        // The unknown list is in invocation order: nothing
                        // further can go next either.
                        None
                    }
                }
            };
            cursor = match next {
                Some(cursor) => cursor,
                None => match self.backtrack() {
                    Some(cursor) => cursor,
                    None => return self.violation(),
                },
            };
        }
    }

    fn unknown_op(&self, id: u32) -> &KeyOp {
        &self.ops[self.unknown[id as usize - 1]]
    }

    /// The first cursor of a node just entered.
    fn node_start(&self) -> Cursor {
        let mut event_id = self.event_list.first();
        loop {
            let event = self.events[event_id as usize];
            if event.is_return {
                return Cursor::Completed(self.event_list.first());
            }
            let effect = self.ops[self.completed[event.rank as usize]].effect;
            if effect.is_read_only() && effect.apply(self.state).is_some() {
                return Cursor::Forced(event.rank);
            }
            event_id = self.event_list.next(event_id);
        }
    }

    fn try_completed(&mut self, rank: u32, forced: bool) -> Attempt {
        let effect = self.ops[self.completed[rank as usize]].effect;
        if self.after_unknown && effect.is_unconditional_write() {
            return Attempt::Rejected;
        }
        let Some(next_state) = effect.apply(self.state) else {
            return Attempt::Rejected;
        };
        let frame = Frame {
            choice: Choice::Completed { rank, forced },
            state: self.state,
            after_unknown: self.after_unknown,
        };
        self.event_list.lift(self.call_event[rank as usize]);
        self.event_list.lift(self.return_event[rank as usize]);
        self.linearized.insert(rank as usize);
        self.remaining -= 1;
        self.state = next_state;
        self.after_unknown = false;
        self.enter(frame)
    }

    fn try_unknown(&mut self, id: u32, bound: u64) -> Attempt {
        let effect = self.unknown_op(id).effect;
        if self.after_unknown && effect.is_unconditional_write() {
            return Attempt::Rejected;
        }
        let next_state = effect
            .apply(self.state)
            .expect("unknown outcomes always fit");
        if next_state == self.state || self.has_pending_twin(id, bound) {
            return Attempt::Rejected;
        }
        let frame = Frame {
            choice: Choice::Unknown { id, bound },
            state: self.state,
            after_unknown: self.after_unknown,
        };
        self.unknown_list.lift(id);
        self.applied.insert(id as usize - 1);
        let class = self.class_of[id as usize - 1] as usize;
        let used = &mut self.class_used[class];
        self.applied_canonical
            .insert(self.class_members[class][*used as usize] as usize);
        *used += 1;
        self.state = next_state;
        self.after_unknown = true;
        self.enter(frame)
    }

    /// True if an unapplied Unknown operation with the same effect as `id`
    /// was invoked later than it but no later than `bound`.
    fn has_pending_twin(&self, id: u32, bound: u64) -> bool {
        let mut twin = self.same_effect_next[id as usize];
        while twin != NONE && self.unknown_op(twin).invoke <= bound {
            if !self.applied.contains(twin as usize - 1) {
                return true;
            }
            twin = self.same_effect_next[twin as usize];
        }
        false
    }

    /// Called after applying `frame.choice`: decides whether to explore the
    /// resulting node.
    fn enter(&mut self, frame: Frame) -> Attempt {
        if self.remaining == 0 {
            return Attempt::Linearizable;
        }
        self.build_key();
        if self.cache.covers(
            &self.key_scratch,
            self.applied_canonical.words(),
            self.after_unknown,
        ) {
            self.undo(&frame);
            return Attempt::Rejected;
        }
        self.explored += 1;
        if self.explored > self.budget {
            return Attempt::OutOfBudget;
        }
        self.stack.push(frame);
        let depth = self.completed.len() - self.remaining;
        if depth > self.best.depth {
            self.best = Best {
                depth,
                prefix: self.stack.iter().map(|f| self.position(f.choice)).collect(),
                blocked: self.blocking_operation(),
            };
        }
        Attempt::Descended
    }

    /// The current node failed: remember it and return to its parent,
    /// positioned on the parent's next candidate. None at the root.
    fn backtrack(&mut self) -> Option<Cursor> {
        let frame = self.stack.pop()?;
        self.build_key();
        self.cache.insert(
            &self.key_scratch,
            self.applied_canonical.words(),
            self.after_unknown,
        );
        self.undo(&frame);
        Some(match frame.choice {
            Choice::Completed { forced: true, .. } => Cursor::Exhausted,
            Choice::Completed { rank, .. } => {
                Cursor::Completed(self.event_list.next(self.call_event[rank as usize]))
            }
            Choice::Unknown { id, bound } => Cursor::Unknown {
                id: self.unknown_list.next(id),
                bound,
            },
        })
    }

    fn undo(&mut self, frame: &Frame) {
        match frame.choice {
            Choice::Completed { rank, .. } => {
                self.event_list.unlift(self.return_event[rank as usize]);
                self.event_list.unlift(self.call_event[rank as usize]);
                self.linearized.remove(rank as usize);
                self.remaining += 1;
            }
            Choice::Unknown { id, .. } => {
                self.unknown_list.unlift(id);
                self.applied.remove(id as usize - 1);
                let class = self.class_of[id as usize - 1] as usize;
                let used = &mut self.class_used[class];
                *used -= 1;
                self.applied_canonical
                    .remove(self.class_members[class][*used as usize] as usize);
            }
        }
        self.state = frame.state;
        self.after_unknown = frame.after_unknown;
    }

    /// The memo key of the current node's linearized completed operations and
    /// state: the first rank not linearized (all before it are), the state,
    /// and the bitset words from that rank on. Requires `remaining > 0`.
    fn build_key(&mut self) {
        let first = self.events[self.event_list.first() as usize];
        debug_assert!(!first.is_return, "a call precedes every return");
        let first_pending = first.rank as usize;
        self.key_scratch.clear();
        self.key_scratch
            .push(first_pending as u64 | (u64::from(self.state) << 32));
        self.key_scratch
            .extend_from_slice(self.linearized.words_from(first_pending));
    }

    /// The completed operation whose return is the first remaining one.
    fn blocking_operation(&self) -> usize {
        let mut event_id = self.event_list.first();
        while !self.events[event_id as usize].is_return {
            event_id = self.event_list.next(event_id);
        }
        self.completed[self.events[event_id as usize].rank as usize]
    }

    fn position(&self, choice: Choice) -> usize {
        match choice {
            Choice::Completed { rank, .. } => self.completed[rank as usize],
            Choice::Unknown { id, .. } => self.unknown[id as usize - 1],
        }
    }

    fn out_of_budget(&self) -> SearchResult {
        SearchResult::Inconclusive {
            explored: self.explored,
        }
    }

    fn violation(self) -> SearchResult {
        SearchResult::Violation(Failure {
            prefix: self.best.prefix,
            blocked: self.best.blocked,
            explored: self.explored,
        })
    }
}
