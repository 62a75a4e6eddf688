//! A fixed-size set of small integers, one bit each.

#[derive(Clone, Debug)]
pub(crate) struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    /// An empty set able to hold `0..len`.
    pub(crate) fn new(len: usize) -> Self {
        Bitset {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub(crate) fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    pub(crate) fn remove(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    /// The words from the one holding bit `from` up to the last non-zero word
    /// (empty if there is none at or after it).
    pub(crate) fn words_from(&self, from: usize) -> &[u64] {
        let lo = from / 64;
        let hi = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |i| i + 1);
        &self.words[lo..hi.max(lo)]
    }
}

/// True if every bit of `a` is set in `b` (both the same length).
pub(crate) fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(&a, &b)| a & !b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_contains() {
        let mut set = Bitset::new(130);
        assert_eq!(set.words().len(), 3);
        for i in [0, 63, 64, 129] {
            assert!(!set.contains(i));
            set.insert(i);
            assert!(set.contains(i));
        }
        set.remove(63);
        assert!(!set.contains(63));
        assert!(set.contains(64));
    }

    #[test]
    fn words_from_trims_trailing_zero_words() {
        let mut set = Bitset::new(256);
        assert_eq!(set.words_from(70), &[] as &[u64]);
        set.insert(65);
        assert_eq!(set.words_from(0), &[0, 2]);
        assert_eq!(set.words_from(70), &[2]);
        assert_eq!(set.words_from(130), &[] as &[u64]);
    }

    #[test]
    fn subset() {
        assert!(is_subset(&[0b0101, 1], &[0b0111, 1]));
        assert!(!is_subset(&[0b1000, 0], &[0b0111, 1]));
        assert!(is_subset(&[], &[]));
    }
}
