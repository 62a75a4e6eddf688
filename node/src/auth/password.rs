//! Passwords: bcrypt hashes (etcd's `--bcrypt-cost`, default 10), made on
//! the member that receives the request so the log and snapshots hold only
//! hashes; and a login limiter, since a bcrypt check is costly and
//! passwords can be guessed: after [`FREE_FAILURES`] failed logins a user
//! must wait, doubling up to [`MAX_BACKOFF`], before the next attempt is
//! checked. No clock here: the caller passes `now`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AuthError;

pub const DEFAULT_COST: u32 = 10;
/// Failed logins a user may make before the limiter answers "too many requests".
pub const FREE_FAILURES: u32 = 5;
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Users the limiter tracks at most (failures of unknown names included):
/// when full, the entries idle longest go.
const MAX_TRACKED: usize = 10_000;

/// etcd's rule: a cost outside bcrypt's range falls back to the default.
pub fn effective_cost(cost: u32) -> u32 {
    if (4..=31).contains(&cost) {
        cost
    } else {
        DEFAULT_COST
    }
}

/// The bcrypt hash of `password`; bcrypt reads at most 72 bytes, and a
/// longer password is refused rather than silently cut.
pub fn hash(password: &str, cost: u32) -> Result<String, AuthError> {
    bcrypt::non_truncating_hash(password, effective_cost(cost)).map_err(|e| match e {
        bcrypt::BcryptError::Truncation(_) => AuthError::PasswordTooLong,
        // Only a cost out of range fails otherwise, and effective_cost rules it out.
        _ => AuthError::AuthFailed,
    })
}

/// Whether `password` matches `hashed` (false for a malformed hash).
pub fn verify(password: &str, hashed: &[u8]) -> bool {
    let Ok(hashed) = std::str::from_utf8(hashed) else {
        return false;
    };
    bcrypt::verify(password, hashed).unwrap_or(false)
}

struct Failures {
    count: u32,
    last: Instant,
}

/// Counts failed logins per user name.
#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Failures>>,
}

impl LoginLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn backoff(count: u32) -> Duration {
        if count < FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (count - FREE_FAILURES).min(6);
        (Duration::from_secs(1) * (1 << doublings)).min(MAX_BACKOFF)
    }

    /// Refuses an attempt for `user` made too soon after its failures.
    pub fn admit(&self, user: &str, now: Instant) -> Result<(), AuthError> {
        match self.lock().get(user) {
            Some(f) if now.saturating_duration_since(f.last) < Self::backoff(f.count) => {
                Err(AuthError::TooManyRequests)
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, user: &str, now: Instant) {
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(user) {
            // Forget the half idle longest.
            let mut lasts: Vec<Instant> = failures.values().map(|f| f.last).collect();
            lasts.sort();
            let cut = lasts[lasts.len() / 2];
            failures.retain(|_, f| f.last > cut);
        }
        let f = failures.entry(user.to_string()).or_insert(Failures {
            count: 0,
            last: now,
        });
        // A failure long after the last starts the count again.
        if now.saturating_duration_since(f.last) > MAX_BACKOFF * 10 {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
    }

    pub fn succeeded(&self, user: &str) {
        self.lock().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_long_passwords_are_refused() {
        let h = hash("s3cret", 4).unwrap();
        assert!(h.starts_with("$2"));
        assert!(verify("s3cret", h.as_bytes()));
        assert!(!verify("s3cret!", h.as_bytes()));
        assert!(!verify("s3cret", b"not a hash"));
        assert_eq!(hash(&"x".repeat(73), 4), Err(AuthError::PasswordTooLong));
        assert_eq!(effective_cost(2), DEFAULT_COST);
        assert_eq!(effective_cost(40), DEFAULT_COST);
        assert_eq!(effective_cost(12), 12);
    }

    #[test]
    fn repeated_failures_back_off_and_success_resets() {
        let l = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..FREE_FAILURES {
            assert_eq!(l.admit("alice", t0), Ok(()), "attempt {i} is free");
            l.failed("alice", t0);
        }
        assert_eq!(l.admit("alice", t0), Err(AuthError::TooManyRequests));
        assert_eq!(l.admit("bob", t0), Ok(()), "other users are not limited");
        assert_eq!(l.admit("alice", t0 + Duration::from_millis(1100)), Ok(()));
        l.failed("alice", t0 + Duration::from_millis(1100));
        assert_eq!(
            l.admit("alice", t0 + Duration::from_millis(2200)),
            Err(AuthError::TooManyRequests),
            "the wait doubles"
        );
        l.succeeded("alice");
        assert_eq!(l.admit("alice", t0), Ok(()));
    }
}
