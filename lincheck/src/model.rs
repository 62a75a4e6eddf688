//! The sequential model of one key: an optional value, interned to a small
//! integer so that states are cheap to compare, copy and hash.

use std::collections::HashMap;

/// The state of one key: [`ABSENT`] or `1 + ` the index of an interned value.
pub(crate) type StateId = u32;

/// The key is absent (the initial state).
pub(crate) const ABSENT: StateId = 0;

/// What an operation does to, and requires of, the state of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Effect {
    /// Put (of a value) or Delete (of [`ABSENT`]): sets the state, always succeeds.
    Write(StateId),
    /// Get that observed this state.
    Read(StateId),
    /// Compare-and-swap; `swapped` is what the client saw, None if Unknown.
    Cas {
        expected: StateId,
        new: StateId,
        swapped: Option<bool>,
    },
}

impl Effect {
    /// Applies the operation to `state`: the next state, or None if the
    /// operation could not have produced its observed outcome from `state`.
    pub(crate) fn apply(self, state: StateId) -> Option<StateId> {
        match self {
            Effect::Write(value) => Some(value),
            Effect::Read(observed) => (observed == state).then_some(state),
            Effect::Cas {
                expected,
                new,
                swapped,
            } => {
                let holds = expected == state;
                match swapped {
                    Some(saw) if saw != holds => None,
                    _ if holds => Some(new),
                    _ => Some(state),
                }
            }
        }
    }

    /// True for operations that never change the state: Gets and Cas that
    /// reported `Swapped(false)`.
    pub(crate) fn is_read_only(self) -> bool {
        matches!(
            self,
            Effect::Read(_)
                | Effect::Cas {
                    swapped: Some(false),
                    ..
                }
        )
    }

    /// True for Put and Delete, which set the state whatever it was.
    pub(crate) fn is_unconditional_write(self) -> bool {
        matches!(self, Effect::Write(_))
    }
}

/// Interns the values of one key.
///
/// Only values that some operation compares the state with (a value a Get
/// returned, or a Cas `expected`) get a state of their own. Every other
/// value, never read and never expected, behaves exactly like any other such
/// value (every comparison with the state comes out unequal), so all of them
/// share the state [`ANONYMOUS`]. This merges search states and makes
/// Unknown writes of such values interchangeable.
pub(crate) struct Values<'a> {
    ids: HashMap<&'a [u8], StateId>,
}

/// Any value that no operation compares the state with.
pub(crate) const ANONYMOUS: StateId = 1;

impl<'a> Values<'a> {
    /// Interning for a key whose operations compare the state with
    /// `observed` values.
    pub(crate) fn new(observed: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut ids = HashMap::new();
        for value in observed {
            let next = StateId::try_from(ids.len() + 2).expect("more than 2^32 distinct values");
            ids.entry(value).or_insert(next);
        }
        Values { ids }
    }

    /// The state of `value` (None = absent).
    pub(crate) fn intern(&self, value: Option<&[u8]>) -> StateId {
        match value {
            None => ABSENT,
            Some(value) => self.ids.get(value).copied().unwrap_or(ANONYMOUS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_read() {
        assert_eq!(Effect::Write(3).apply(ABSENT), Some(3));
        assert_eq!(Effect::Write(ABSENT).apply(3), Some(ABSENT));
        assert_eq!(Effect::Read(3).apply(3), Some(3));
        assert_eq!(Effect::Read(3).apply(2), None);
        assert_eq!(Effect::Read(ABSENT).apply(ABSENT), Some(ABSENT));
    }

    #[test]
    fn cas() {
        let cas = |swapped| Effect::Cas {
            expected: 1,
            new: 2,
            swapped,
        };
        assert_eq!(cas(Some(true)).apply(1), Some(2));
        assert_eq!(cas(Some(true)).apply(3), None);
        assert_eq!(cas(Some(false)).apply(1), None);
        assert_eq!(cas(Some(false)).apply(3), Some(3));
        assert_eq!(cas(None).apply(1), Some(2));
        assert_eq!(cas(None).apply(3), Some(3));
    }

    #[test]
    fn classification() {
        assert!(Effect::Read(1).is_read_only());
        assert!(!Effect::Read(1).is_unconditional_write());
        assert!(Effect::Write(1).is_unconditional_write());
        assert!(!Effect::Write(1).is_read_only());
        for swapped in [None, Some(true)] {
            let cas = Effect::Cas {
                expected: 0,
                new: 1,
                swapped,
            };
            assert!(!cas.is_read_only() && !cas.is_unconditional_write());
        }
    }

    #[test]
    fn interning() {
        let values = Values::new([&b"a"[..], b"b", b"a"]);
        assert_eq!(values.intern(None), ABSENT);
        let a = values.intern(Some(b"a"));
        let b = values.intern(Some(b"b"));
        assert!(a != b && a != ABSENT && a != ANONYMOUS && b != ABSENT && b != ANONYMOUS);
        assert_eq!(values.intern(Some(b"a")), a);
        assert_eq!(values.intern(Some(b"x")), ANONYMOUS);
        assert_eq!(values.intern(Some(b"y")), ANONYMOUS);
    }
}
