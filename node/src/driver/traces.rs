//! Spans of traced entries: an entry whose command carries its request's
//! `traceparent` (`Command.trace`) gets a span on each member for each of
//! its steps there ([`Step`]): appended to the log, committed (the
//! leader's wait for a quorum), applied. Time comes from the platform's
//! [`Spans`] edge; when it records nothing, entries are not even read.

use nod_raft::{Entry, EntryPayload, Role};

use super::platform::{Spans, Step};
use super::{Core, Platform, MAX_TRACED_PENDING};
use crate::command;

/// The traced entries among some: (index, traceparent).
pub(super) type Traced = Vec<(u64, String)>;

impl<P: Platform> Core<P> {
    /// The entries that carry a trace, and the time now (None: none do, or
    /// spans are off). Entries an earlier run appended are left out: a
    /// restart replays them, long after their requests.
    pub(super) fn traced_entries(
        &self,
        entries: &[Entry],
    ) -> Option<(Traced, <P::Spans as Spans>::Mark)> {
        if !self.spans.enabled() {
            return None;
        }
        let traced: Traced = entries
            .iter()
            .filter(|e| e.index.0 > self.traced_from)
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(data) => {
                    command::trace_of(data).map(|t| (e.index.0, t.to_string()))
                }
                _ => None,
            })
            .collect();
        (!traced.is_empty()).then(|| (traced, self.spans.mark()))
    }

    /// The traced entries of a log write are on disk: `raft.append`; the
    /// leader remembers when, for their commit span.
    pub(super) fn record_appended(&mut self, (traced, start): (Traced, <P::Spans as Spans>::Mark)) {
        let end = self.spans.mark();
        let leader = self.node.role() == Role::Leader;
        for (index, trace) in traced {
            self.spans.record(&trace, Step::Append, index, start, end);
            if leader && self.traced.len() < MAX_TRACED_PENDING {
                self.traced.insert(index, (trace, end));
            }
        }
    }

    /// The traced entries of an apply batch are applied: the leader's
    /// `raft.commit` (from its append until the batch began) and every
    /// member's `raft.apply`.
    pub(super) fn record_applied(&mut self, (traced, start): (Traced, <P::Spans as Spans>::Mark)) {
        let end = self.spans.mark();
        for (index, trace) in traced {
            if let Some((t, appended)) = self.traced.remove(&index) {
                if t == trace {
                    self.spans
                        .record(&trace, Step::Commit, index, appended, start);
                }
            }
            self.spans.record(&trace, Step::Apply, index, start, end);
        }
    }

    /// Forgets remembered appends at or below `applied` (entries replaced
    /// by another leader's never commit as ours).
    pub(super) fn forget_traced(&mut self, applied: u64) {
        if !self.traced.is_empty() {
            self.traced = self.traced.split_off(&(applied + 1));
        }
    }
}
