//! The in-memory key index: each key's changes (revision, deleted or not)
//! and what a put needs of its current value. Rebuilt from the backend on
//! open; never stored. No I/O.

use super::{KeyValue, Revision};

/// One change of a key: where its record is and whether it deleted the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Change {
    pub(super) rev: Revision,
    pub(super) tombstone: bool,
}

/// A key as the in-memory index holds it: up to 16 bytes inline, so a
/// lookup compares short keys without following a pointer per comparison.
pub(super) type IndexKey = smallvec::SmallVec<[u8; 16]>;
// No bigger than the Vec it replaces.
const _: () = assert!(std::mem::size_of::<IndexKey>() == 24);

/// A key in the in-memory index: where its changes are, and what a put
/// needs to know about its current value (create revision, version,
/// lease), so a plain put writes without reading the previous record.
#[derive(Clone, Debug)]
pub(super) struct Indexed {
    pub(super) changes: Vec<Change>,
    /// The current value's; all zero (lease 0 too) while the key is deleted.
    pub(super) live: Meta,
}

/// What a put carries over from the value it replaces (version 0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) create: i64,
    pub(super) version: i64,
    pub(super) lease: i64,
}

impl Meta {
    pub(super) fn of(kv: &KeyValue) -> Meta {
        Meta {
            create: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }

    pub(super) fn live(self) -> Option<Meta> {
        (self.version > 0).then_some(self)
    }
}

impl Indexed {
    /// A new key's entry, its change list sized for one change: most keys
    /// have one or two, and an empty Vec's first push reserves four (96
    /// bytes per key, 72 of them unused: 72 MB with 1M keys).
    pub(super) fn new() -> Indexed {
        Indexed {
            changes: Vec::with_capacity(1),
            live: Meta::default(),
        }
    }

    /// The change visible at revision `at`: the latest with main <= `at`.
    pub(super) fn visible(&self, at: i64) -> Option<Change> {
        self.changes
            .iter()
            .rev()
            .find(|c| c.rev.main <= at)
            .copied()
    }

    pub(super) fn record(&mut self, rev: Revision, kv: &KeyValue, tombstone: bool) {
        self.changes.push(Change { rev, tombstone });
        self.live = if tombstone {
            Meta::default()
        } else {
            Meta::of(kv)
        };
    }
}
