//! The memo of search nodes known to lead to no linearization.
//!
//! A node is (linearized completed operations, model state, applied unknown
//! operations, whether an unknown operation was applied since the last
//! completed one). The first two form the hash key; under it the cache keeps
//! the (unknowns, restricted) pairs that failed. A failed node also covers
//! every node with the same key that applied a superset of its unknowns
//! under at least the same restriction: that node can do no more than the
//! failed one (unknown operations never have to be linearized, and nothing
//! has to be linearized after them).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::bitset::is_subset;

#[derive(Default)]
pub(crate) struct FailedCache {
    map: HashMap<Box<[u64]>, Vec<Failed>, BuildHasherDefault<FxHasher>>,
}

struct Failed {
    unknowns: Box<[u64]>,
    restricted: bool,
}

impl Failed {
    fn covers(&self, unknowns: &[u64], restricted: bool) -> bool {
        (!self.restricted || restricted) && is_subset(&self.unknowns, unknowns)
    }
}

impl FailedCache {
    /// True if a failed node covers the node (`key`, `unknowns`, `restricted`).
    pub(crate) fn covers(&self, key: &[u64], unknowns: &[u64], restricted: bool) -> bool {
        self.map
            .get(key)
            .is_some_and(|failed| failed.iter().any(|f| f.covers(unknowns, restricted)))
    }

    /// Records that the node (`key`, `unknowns`, `restricted`) failed.
    pub(crate) fn insert(&mut self, key: &[u64], unknowns: &[u64], restricted: bool) {
        let new = Failed {
            unknowns: unknowns.into(),
            restricted,
        };
        match self.map.get_mut(key) {
            Some(failed) => {
                if failed.iter().any(|f| f.covers(unknowns, restricted)) {
                    return;
                }
                failed.retain(|f| !new.covers(&f.unknowns, f.restricted));
                failed.push(new);
            }
            None => {
                self.map.insert(key.into(), vec![new]);
            }
        }
    }
}

/// The multiply-rotate hash of rustc (FxHash): fast, and good enough for
/// keys that are not chosen by an adversary.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match() {
        let mut cache = FailedCache::default();
        assert!(!cache.covers(&[1, 2], &[], false));
        cache.insert(&[1, 2], &[], false);
        assert!(cache.covers(&[1, 2], &[], false));
        assert!(!cache.covers(&[1, 3], &[], false));
        assert!(!cache.covers(&[1], &[], false));
    }

    #[test]
    fn fewer_unknowns_cover_more() {
        let mut cache = FailedCache::default();
        cache.insert(&[7], &[0b001], false);
        assert!(cache.covers(&[7], &[0b001], false));
        assert!(cache.covers(&[7], &[0b011], true));
        assert!(!cache.covers(&[7], &[0b010], false));
        assert!(!cache.covers(&[7], &[0b000], false));
    }

    #[test]
    fn restricted_failure_covers_only_restricted_nodes() {
        let mut cache = FailedCache::default();
        cache.insert(&[7], &[0b001], true);
        assert!(cache.covers(&[7], &[0b001], true));
        assert!(!cache.covers(&[7], &[0b001], false));
        // A wider failure replaces the narrower one.
        cache.insert(&[7], &[0b000], false);
        assert!(cache.covers(&[7], &[0b001], false));
        assert_eq!(cache.map[&[7u64][..]].len(), 1);
    }
}
