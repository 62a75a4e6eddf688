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
///
/// Most keys of a large store were put once and never changed since: such
/// a key is held in the entry itself (`Put`), its create revision and
/// version implied. A key with more history keeps it behind a pointer.
/// The index's B-tree holds key and entry side by side, 48 bytes a key
/// where a change list and the current value's meta inline took 72 plus a
/// 24-byte allocation of its own: 72 MB less a member with 1M keys put
/// once (`nod dev`, measured).
#[derive(Clone, Debug)]
pub(super) enum Indexed {
    /// No change yet (a new entry, before its first `record`).
    Empty,
    /// The key's one change is the put that created it: create revision
    /// `main`, version 1.
    Put { main: i64, sub: u32, lease: i64 },
    /// Any other history.
    Many(Box<History>),
}
const _: () = assert!(std::mem::size_of::<Indexed>() == 24);

/// A key's changes, oldest first, and its current value's meta.
#[derive(Clone, Debug)]
pub(super) struct History {
    changes: Vec<Change>,
    /// The current value's; all zero (lease 0 too) while the key is deleted.
    live: Meta,
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

/// A key's changes, oldest first, as `Indexed::changes` lends them.
pub(super) enum Changes<'a> {
    One(Change),
    Many(&'a [Change]),
}

impl Changes<'_> {
    pub(super) fn as_slice(&self) -> &[Change] {
        match self {
            Changes::One(c) => std::slice::from_ref(c),
            Changes::Many(cs) => cs,
        }
    }
}

impl Indexed {
    pub(super) fn new() -> Indexed {
        Indexed::Empty
    }

    /// The key's changes, oldest first.
    pub(super) fn changes(&self) -> Changes<'_> {
        match self {
            Indexed::Empty => Changes::Many(&[]),
            Indexed::Put { main, sub, .. } => Changes::One(Change {
                rev: Revision {
                    main: *main,
                    sub: i64::from(*sub),
                },
                tombstone: false,
            }),
            Indexed::Many(h) => Changes::Many(&h.changes),
        }
    }

    /// The current value's meta; all zero (lease 0 too) while the key is
    /// deleted.
    fn meta(&self) -> Meta {
        match self {
            Indexed::Empty => Meta::default(),
            Indexed::Put { main, lease, .. } => Meta {
                create: *main,
                version: 1,
                lease: *lease,
            },
            Indexed::Many(h) => h.live,
        }
    }

    /// The current value's meta, if the key is live.
    pub(super) fn live(&self) -> Option<Meta> {
        self.meta().live()
    }

    /// The current value's lease (0 while the key is deleted).
    pub(super) fn lease(&self) -> i64 {
        self.meta().lease
    }

    /// The change visible at revision `at`: the latest with main <= `at`.
    pub(super) fn visible(&self, at: i64) -> Option<Change> {
        self.changes()
            .as_slice()
            .iter()
            .rev()
            .find(|c| c.rev.main <= at)
            .copied()
    }

    /// The latest change before `rev`.
    pub(super) fn before(&self, rev: Revision) -> Option<Change> {
        self.changes()
            .as_slice()
            .iter()
            .rev()
            .find(|c| c.rev < rev)
            .copied()
    }

    pub(super) fn record(&mut self, rev: Revision, kv: &KeyValue, tombstone: bool) {
        let live = if tombstone {
            Meta::default()
        } else {
            Meta::of(kv)
        };
        let change = Change { rev, tombstone };
        match self {
            Indexed::Empty => {
                *self = Indexed::one(change, live).unwrap_or_else(|| {
                    Indexed::Many(Box::new(History {
                        changes: vec![change],
                        live,
                    }))
                })
            }
            Indexed::Put { .. } => {
                let mut changes = Vec::with_capacity(2);
                changes.extend_from_slice(self.changes().as_slice());
                changes.push(change);
                *self = Indexed::Many(Box::new(History { changes, live }));
            }
            Indexed::Many(h) => {
                h.changes.push(change);
                h.live = live;
            }
        }
    }

    /// The compact form of a history of the one `change` with the current
    /// value `live`, where it has one.
    fn one(change: Change, live: Meta) -> Option<Indexed> {
        let sub = u32::try_from(change.rev.sub).ok()?;
        let created_by_it =
            !change.tombstone && live.version == 1 && live.create == change.rev.main;
        created_by_it.then_some(Indexed::Put {
            main: change.rev.main,
            sub,
            lease: live.lease,
        })
    }

    /// Drops the changes a compaction at `at` removes (every change at or
    /// below it but the latest one there, and that one too if it is a
    /// deletion), handing each to `dropped`; returns how many it dropped.
    pub(super) fn compact(&mut self, at: i64, mut dropped: impl FnMut(Change)) -> usize {
        let Indexed::Many(h) = self else {
            // A key's creating put is the latest change at or below any
            // revision it is at or below: kept.
            return 0;
        };
        let before = h.changes.len();
        let keep = h.changes.iter().rposition(|c| c.rev.main <= at);
        let mut i = 0;
        h.changes.retain(|c| {
            let doomed = c.rev.main <= at && (c.tombstone || Some(i) != keep);
            if doomed {
                dropped(*c);
            }
            i += 1;
            !doomed
        });
        let n = before - h.changes.len();
        match h.changes.as_slice() {
            [] => *self = Indexed::Empty,
            [only] => {
                if let Some(one) = Indexed::one(*only, h.live) {
                    *self = one;
                }
            }
            _ => {}
        }
        if let Indexed::Many(h) = self {
            // A busy key's list grew with its history: give back what the
            // compaction emptied.
            if h.changes.capacity() > 2 * h.changes.len() + 2 {
                h.changes.shrink_to_fit();
            }
        }
        n
    }

    /// Whether the key has no change left (compacted away).
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Indexed::Empty => true,
            Indexed::Put { .. } => false,
            Indexed::Many(h) => h.changes.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(create: i64, version: i64, lease: i64) -> KeyValue {
        KeyValue {
            key: b"k".to_vec(),
            create_revision: create,
            version,
            lease,
            ..Default::default()
        }
    }

    fn rev(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    fn put(e: &mut Indexed, main: i64, sub: i64, create: i64, version: i64, lease: i64) {
        let mut v = kv(create, version, lease);
        v.mod_revision = main;
        e.record(rev(main, sub), &v, false);
    }

    fn delete(e: &mut Indexed, main: i64) {
        e.record(rev(main, 0), &kv(0, 0, 0), true);
    }

    fn revs(e: &Indexed) -> Vec<(i64, i64, bool)> {
        e.changes()
            .as_slice()
            .iter()
            .map(|c| (c.rev.main, c.rev.sub, c.tombstone))
            .collect()
    }

    #[test]
    fn a_created_key_is_held_inline_and_reads_as_its_history() {
        let mut e = Indexed::new();
        assert!(e.is_empty());
        put(&mut e, 7, 3, 7, 1, 42);
        assert!(matches!(e, Indexed::Put { .. }), "{e:?}");
        assert_eq!(revs(&e), vec![(7, 3, false)]);
        assert_eq!(
            e.live(),
            Some(Meta {
                create: 7,
                version: 1,
                lease: 42
            })
        );
        assert_eq!(e.lease(), 42);
        assert_eq!(e.visible(6), None);
        assert_eq!(e.visible(7).map(|c| c.rev), Some(rev(7, 3)));
        assert_eq!(e.before(rev(7, 3)), None);
        assert_eq!(e.before(rev(7, 4)).map(|c| c.rev), Some(rev(7, 3)));
        assert!(!e.is_empty());
    }

    #[test]
    fn a_first_record_that_did_not_create_the_key_keeps_its_meta() {
        // Reopened after a compaction: the key's oldest record left is
        // its third version.
        let mut e = Indexed::new();
        put(&mut e, 9, 0, 4, 3, 0);
        assert!(matches!(e, Indexed::Many(_)), "{e:?}");
        assert_eq!(e.live().map(|m| (m.create, m.version)), Some((4, 3)));
        // A sub revision past u32 is kept exactly, in the long form.
        let mut e = Indexed::new();
        put(&mut e, 9, 1 << 40, 9, 1, 0);
        assert!(matches!(e, Indexed::Many(_)), "{e:?}");
        assert_eq!(revs(&e), vec![(9, 1 << 40, false)]);
    }

    #[test]
    fn later_changes_move_the_key_to_its_history() {
        let mut e = Indexed::new();
        put(&mut e, 2, 0, 2, 1, 5);
        put(&mut e, 4, 1, 2, 2, 0);
        assert_eq!(e.lease(), 0, "the new value has no lease");
        assert_eq!(e.live().map(|m| (m.create, m.version)), Some((2, 2)));
        delete(&mut e, 6);
        assert_eq!(revs(&e), vec![(2, 0, false), (4, 1, false), (6, 0, true)]);
        assert_eq!(e.live(), None);
        assert_eq!(e.lease(), 0);
        assert_eq!(e.visible(5).map(|c| c.rev), Some(rev(4, 1)));
        assert_eq!(e.visible(6).map(|c| c.tombstone), Some(true));
        assert_eq!(e.before(rev(4, 1)).map(|c| c.rev), Some(rev(2, 0)));
        put(&mut e, 8, 0, 8, 1, 0);
        assert_eq!(e.live().map(|m| (m.create, m.version)), Some((8, 1)));
    }

    #[test]
    fn compaction_drops_what_it_should_and_folds_back() {
        fn gone(e: &mut Indexed, at: i64) -> Vec<(i64, i64, bool)> {
            let mut out = Vec::new();
            let n = e.compact(at, |c| out.push((c.rev.main, c.rev.sub, c.tombstone)));
            assert_eq!(n, out.len(), "the count is of the changes handed over");
            out
        }
        let mut e = Indexed::new();
        put(&mut e, 2, 0, 2, 1, 0);
        put(&mut e, 4, 0, 2, 2, 0);
        put(&mut e, 6, 0, 2, 3, 0);
        assert_eq!(gone(&mut e, 5), vec![(2, 0, false)]);
        assert_eq!(revs(&e), vec![(4, 0, false), (6, 0, false)]);
        // The last change at or below stays, and the version with it.
        assert_eq!(gone(&mut e, 6), vec![(4, 0, false)]);
        assert_eq!(revs(&e), vec![(6, 0, false)]);
        assert!(matches!(e, Indexed::Many(_)), "version 3: not inline");
        assert_eq!(e.live().map(|m| (m.create, m.version)), Some((2, 3)));

        // Created and changed in one transaction: what is left is its
        // second version, created at the same revision; not inline.
        let mut e = Indexed::new();
        put(&mut e, 5, 0, 5, 1, 0);
        put(&mut e, 5, 1, 5, 2, 0);
        assert_eq!(gone(&mut e, 5), vec![(5, 0, false)]);
        assert!(matches!(e, Indexed::Many(_)), "version 2: not inline");
        assert_eq!(revs(&e), vec![(5, 1, false)]);
        assert_eq!(e.live().map(|m| (m.create, m.version)), Some((5, 2)));

        // Deleted, created again, compacted past both: inline again.
        let mut e = Indexed::new();
        put(&mut e, 2, 0, 2, 1, 0);
        delete(&mut e, 3);
        put(&mut e, 5, 0, 5, 1, 9);
        assert_eq!(gone(&mut e, 5), vec![(2, 0, false), (3, 0, true)]);
        assert!(matches!(e, Indexed::Put { .. }), "{e:?}");
        assert_eq!(revs(&e), vec![(5, 0, false)]);
        assert_eq!(e.lease(), 9);

        // Created, deleted and created again in one transaction: the
        // inline form keeps the sub revision.
        let mut e = Indexed::new();
        put(&mut e, 7, 0, 7, 1, 0);
        e.record(rev(7, 1), &kv(0, 0, 0), true);
        put(&mut e, 7, 2, 7, 1, 0);
        assert_eq!(gone(&mut e, 7), vec![(7, 0, false), (7, 1, true)]);
        assert!(matches!(e, Indexed::Put { sub: 2, .. }), "{e:?}");
        assert_eq!(revs(&e), vec![(7, 2, false)]);

        // A deletion at or below is dropped with what it deleted.
        let mut e = Indexed::new();
        put(&mut e, 2, 0, 2, 1, 0);
        delete(&mut e, 3);
        assert_eq!(gone(&mut e, 3), vec![(2, 0, false), (3, 0, true)]);
        assert!(e.is_empty());

        // A busy key's list gives back what a compaction emptied.
        let mut e = Indexed::new();
        put(&mut e, 2, 0, 2, 1, 0);
        for v in 2..=20 {
            put(&mut e, v + 1, 0, 2, v, 0);
        }
        assert_eq!(gone(&mut e, 20).len(), 18);
        let Indexed::Many(h) = &e else {
            panic!("version 20: not inline")
        };
        assert_eq!(revs(&e), vec![(20, 0, false), (21, 0, false)]);
        assert!(
            h.changes.capacity() <= 6,
            "capacity {}",
            h.changes.capacity()
        );

        // The creating put alone is never dropped.
        let mut e = Indexed::new();
        put(&mut e, 2, 0, 2, 1, 0);
        assert_eq!(gone(&mut e, 100), vec![]);
        assert!(!e.is_empty());
    }
}
