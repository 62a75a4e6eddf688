//! Simple tokens (etcd's default `--auth-token simple`): the member that
//! checks a password picks 16 random letters, proposes the login, and
//! every member, applying it at index `i`, maps `<letters>.<i>` to the
//! user. A token lives while it is used: each use restarts its TTL, and a
//! sweep forgets the ones idle longer. Tokens are never persisted; a
//! restarted member forgets them (clients log in again, as with etcd).
//! No clock here: the caller passes `now`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most tokens a member keeps; logins beyond it are refused until some expire.
pub const MAX_TOKENS: usize = 100_000;

struct Entry {
    user: String,
    /// When it was last used; `None` until the first use or sweep sees it.
    last_used: Option<Instant>,
}

#[derive(Default)]
pub struct SimpleTokens {
    tokens: Mutex<HashMap<String, Entry>>,
}

/// What a simple token says about itself: the index of the login entry
/// that created it, so a member that has not applied it yet can wait.
pub fn login_index(token: &str) -> Option<u64> {
    let (prefix, index) = token.rsplit_once('.')?;
    if prefix.len() != 16 || !prefix.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    index.parse().ok()
}

impl SimpleTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a login applied at `index` (called when the entry applies).
    pub fn assign(&self, prefix: &str, index: u64, user: &str) -> String {
        let token = format!("{prefix}.{index}");
        self.lock().insert(
            token.clone(),
            Entry {
                user: user.to_string(),
                last_used: None,
            },
        );
        token
    }

    /// The user `token` belongs to, restarting its TTL.
    pub fn user(&self, token: &str, now: Instant) -> Option<String> {
        let mut tokens = self.lock();
        let e = tokens.get_mut(token)?;
        e.last_used = Some(now);
        Some(e.user.clone())
    }

    /// Forgets `user`'s tokens, or all of them.
    pub fn revoke(&self, user: Option<&str>) {
        let mut tokens = self.lock();
        match user {
            Some(u) => tokens.retain(|_, e| e.user != u),
            None => tokens.clear(),
        }
    }

    /// Forgets the tokens idle for longer than `ttl`.
    pub fn sweep(&self, now: Instant, ttl: Duration) {
        self.lock().retain(|_, e| match e.last_used {
            None => {
                e.last_used = Some(now);
                true
            }
            Some(t) => now.saturating_duration_since(t) <= ttl,
        });
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_slide_expire_and_are_revoked() {
        let t = SimpleTokens::default();
        let start = Instant::now();
        let ttl = Duration::from_secs(2);
        let a = t.assign("abcdefghijklmnop", 7, "alice");
        let b = t.assign("ABCDEFGHIJKLMNOP", 9, "bob");
        assert_eq!(a, "abcdefghijklmnop.7");
        assert_eq!(login_index(&a), Some(7));
        assert_eq!(login_index("short.7"), None);
        assert_eq!(login_index("abcdefghijklmnop"), None);
        t.sweep(start, ttl);
        assert_eq!(
            t.user(&a, start + Duration::from_secs(1)).as_deref(),
            Some("alice")
        );
        t.sweep(start + Duration::from_secs(3), ttl);
        assert_eq!(
            t.user(&a, start + Duration::from_secs(3)).as_deref(),
            Some("alice"),
            "used 2 s ago"
        );
        assert_eq!(t.user(&b, start + Duration::from_secs(3)), None, "idle 3 s");
        t.revoke(Some("alice"));
        assert_eq!(t.user(&a, start + Duration::from_secs(3)), None);
        t.assign("abcdefghijklmnop", 11, "carol");
        t.revoke(None);
        assert!(t.is_empty());
    }
}
