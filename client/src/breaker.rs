//! `CircuitBreaker`: one per endpoint. After `threshold` consecutive
//! failures it opens: the endpoint gets no calls for a cool-down; then one
//! trial call is let through (half-open); its success closes the breaker,
//! its failure opens it again for twice as long (up to a cap). Pure: the
//! caller passes the time in.

use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; `failures` consecutive ones have failed so far.
    Closed { failures: u32 },
    /// No calls until `until`.
    Open { until: Instant },
    /// One trial call is out; others wait for its outcome.
    HalfOpen,
}

#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    state: BreakerState,
    threshold: u32,
    cool_down: Duration,
    max_cool_down: Duration,
    /// The cool-down of the next opening (doubles while trials fail).
    next_cool_down: Duration,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down: Duration) -> CircuitBreaker {
        CircuitBreaker {
            state: BreakerState::Closed { failures: 0 },
            threshold: threshold.max(1),
            cool_down,
            max_cool_down: cool_down * 16,
            next_cool_down: cool_down,
        }
    }

    pub fn state(&self) -> &BreakerState {
        &self.state
    }

    /// Whether a call may go now. An open breaker whose cool-down is over
    /// lets exactly one trial through (and becomes half-open).
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => false,
        }
    }

    /// Whether `try_acquire` would let a call through, without taking the trial.
    pub fn is_available(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen => false,
        }
    }

    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
        self.next_cool_down = self.cool_down;
    }

    pub fn on_failure(&mut self, now: Instant) {
        match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.threshold => {
                self.state = BreakerState::Closed {
                    failures: failures + 1,
                };
            }
            BreakerState::Closed { .. } => self.open(now),
            BreakerState::HalfOpen | BreakerState::Open { .. } => {
                self.next_cool_down = (self.next_cool_down * 2).min(self.max_cool_down);
                self.open(now);
            }
        }
    }

    /// A trial that ended with neither success nor failure (cancelled):
    /// let the next caller try.
    pub fn on_abandoned(&mut self, now: Instant) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open { until: now };
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open {
            until: now + self.next_cool_down,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(1);

    #[test]
    fn opens_after_threshold_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, COOL);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(); // resets the count
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), &BreakerState::Closed { failures: 2 });
        assert!(b.try_acquire(t0));
        b.on_failure(t0);
        assert_eq!(b.state(), &BreakerState::Open { until: t0 + COOL });
        assert!(!b.try_acquire(t0 + COOL / 2));
        assert!(!b.is_available(t0 + COOL / 2));
    }

    #[test]
    fn after_the_cool_down_one_trial_goes_and_its_outcome_decides() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(1, COOL);
        b.on_failure(t0);
        let t1 = t0 + COOL;
        assert!(b.is_available(t1));
        assert!(b.try_acquire(t1));
        assert_eq!(b.state(), &BreakerState::HalfOpen);
        assert!(!b.try_acquire(t1), "a second call during the trial");
        // The trial fails: open again, twice as long.
        b.on_failure(t1);
        assert_eq!(
            b.state(),
            &BreakerState::Open {
                until: t1 + 2 * COOL
            }
        );
        assert!(!b.try_acquire(t1 + COOL));
        let t2 = t1 + 2 * COOL;
        assert!(b.try_acquire(t2));
        b.on_success();
        assert_eq!(b.state(), &BreakerState::Closed { failures: 0 });
        // Closed again, the cool-down is back to its first length.
        b.on_failure(t2);
        assert_eq!(b.state(), &BreakerState::Open { until: t2 + COOL });
    }

    #[test]
    fn cool_down_growth_is_capped_and_abandoned_trials_free_the_slot() {
        let mut t = Instant::now();
        let mut b = CircuitBreaker::new(1, COOL);
        b.on_failure(t);
        for _ in 0..10 {
            t += Duration::from_secs(100);
            assert!(b.try_acquire(t));
            b.on_failure(t);
        }
        assert_eq!(
            b.state(),
            &BreakerState::Open {
                until: t + 16 * COOL
            }
        );
        t += 16 * COOL;
        assert!(b.try_acquire(t));
        b.on_abandoned(t);
        assert!(
            b.try_acquire(t),
            "an abandoned trial must not wedge the breaker"
        );
    }
}
