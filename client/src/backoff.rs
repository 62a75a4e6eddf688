//! `Backoff`: exponential back-off with jitter, for retries and for an
//! endpoint that failed. Pure: the caller sleeps; randomness comes from a
//! small seeded generator (`Jitter`), so tests can fix the seed.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// SplitMix64: a tiny, well-mixed generator; plenty for spreading retries
/// apart (this is not cryptography).
#[derive(Clone, Debug)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn seeded(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    /// A generator seeded from the process's random hasher keys, so two
    /// clients started together do not retry in lockstep.
    pub fn from_entropy() -> Jitter {
        Jitter::seeded(RandomState::new().hash_one(std::time::Instant::now()))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound]` (inclusive), in nanoseconds.
    fn up_to(&mut self, bound: u128) -> u128 {
        if bound == 0 {
            return 0;
        }
        u128::from(self.next_u64()) % (bound + 1)
    }
}

/// The delay before attempt `n + 1`: `base * 2^n`, capped at `max`, of which
/// the upper half is random ("equal jitter": never shorter than half the
/// nominal delay, never longer than it).
#[derive(Clone, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// 25 ms, 50 ms, 100 ms, … up to 2 s: close to etcd's Go client
    /// (25 ms waits between retries, with jitter).
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The nominal (un-jittered) delay after `failures` consecutive failures
    /// (`failures >= 1`).
    pub fn nominal(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << shift).min(self.max)
    }

    /// The jittered delay after `failures` consecutive failures: within
    /// `[nominal / 2, nominal]`.
    pub fn delay(&self, failures: u32, jitter: &mut Jitter) -> Duration {
        let nominal = self.nominal(failures).as_nanos();
        let half = nominal / 2;
        let nanos = half + jitter.up_to(nominal - half);
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_delay_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(300),
        };
        let got: Vec<u128> = (1..=8).map(|n| b.nominal(n).as_millis()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.nominal(0).as_millis(), 10);
        assert_eq!(b.nominal(u32::MAX), Duration::from_millis(300));
    }

    #[test]
    fn jittered_delay_stays_within_half_and_full_nominal() {
        let b = Backoff::default();
        let mut j = Jitter::seeded(7);
        for n in 1..=12 {
            let nominal = b.nominal(n);
            let mut seen_low = false;
            let mut seen_high = false;
            for _ in 0..500 {
                let d = b.delay(n, &mut j);
                assert!(
                    d >= nominal / 2 && d <= nominal,
                    "{d:?} outside [{:?}, {nominal:?}]",
                    nominal / 2
                );
                seen_low |= d < nominal * 3 / 4;
                seen_high |= d > nominal * 3 / 4;
            }
            // Jitter that never moves is no jitter.
            assert!(seen_low && seen_high, "attempt {n}: delays not spread");
        }
    }

    #[test]
    fn generators_with_the_same_seed_agree_and_different_seeds_differ() {
        let (mut a, mut b, mut c) = (Jitter::seeded(1), Jitter::seeded(1), Jitter::seeded(2));
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }
}
