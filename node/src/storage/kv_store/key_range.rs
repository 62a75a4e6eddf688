//! Key ranges as etcd requests give them. No I/O.

use std::ops::Bound;

/// A key range as etcd gives it: `range_end` empty is the single key,
/// `"\0"` is every key from `key` on, otherwise `[key, range_end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    /// `None`: unbounded above.
    pub end: Option<Vec<u8>>,
    pub single: bool,
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            KeyRange {
                start: key.to_vec(),
                end: None,
                single: true,
            }
        } else if range_end == b"\0" {
            KeyRange {
                start: key.to_vec(),
                end: None,
                single: false,
            }
        } else {
            KeyRange {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
                single: false,
            }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.single {
            return k == self.start.as_slice();
        }
        k >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| k < e.as_slice())
    }

    /// An inverted range (`range_end <= key`) holds nothing.
    pub fn is_empty(&self) -> bool {
        !self.single
            && self
                .end
                .as_ref()
                .is_some_and(|e| e.as_slice() <= self.start.as_slice())
    }

    pub(super) fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        if self.single {
            return (
                Bound::Included(self.start.as_slice()),
                Bound::Included(self.start.as_slice()),
            );
        }
        (
            Bound::Included(self.start.as_slice()),
            match &self.end {
                Some(e) => Bound::Excluded(e.as_slice()),
                None => Bound::Unbounded,
            },
        )
    }
}
