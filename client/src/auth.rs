//! Username/password authentication, as etcd's Go client and etcdctl do
//! it. Owns `Credentials` (whose password is never printed) and `Session`:
//! the token every clone of a `Client` sends, and whether the cluster has
//! authentication on at all. No I/O here: the login call is
//! `Client::authenticate` (`client.rs`), and which failures ask for a new
//! token is decided in `retry.rs` (`needs_new_token`).
//!
//! The protocol is etcd's:
//! - log in with `Auth/Authenticate{name, password}`; the answer holds a
//!   token;
//! - send it as the gRPC metadata `token: <token>` with every later call,
//!   streams included (`TokenInterceptor`);
//! - when a call is refused with "etcdserver: invalid auth token" (the
//!   token expired or the member does not know it), "etcdserver: revision
//!   of auth store is old" (users or roles changed since the login) or
//!   "etcdserver: user name is empty" (no token reached the server), log in
//!   again and send the call once more: nothing was applied;
//! - when the login itself is answered "etcdserver: authentication is not
//!   enabled", go on without a token (etcdctl tolerates exactly this).
//!
//! Read `Session` first: its states and who moves between them.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The gRPC metadata key etcd reads the token from
/// (`rpctypes.TokenFieldNameGRPC`).
pub const TOKEN_METADATA: &str = "token";

/// A user name and password. `Debug` shows the name only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl Credentials {
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    /// etcdctl's `--user name:password`: split at the first colon, so a
    /// password may hold colons and a name may not. `None` when there is no
    /// colon (the password must come from elsewhere).
    ///
    /// ```
    /// use nod_client::auth::Credentials;
    ///
    /// let c = Credentials::parse("root:s3cr:et").unwrap();
    /// assert_eq!(c.user(), "root");
    /// assert_eq!(format!("{c:?}"), r#"Credentials { user: "root", password: "<redacted>" }"#);
    /// assert!(Credentials::parse("root").is_none());
    /// ```
    pub fn parse(user_password: &str) -> Option<Credentials> {
        let (user, password) = user_password.split_once(':')?;
        Some(Credentials::new(user, password))
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A token from one login. `login` tells logins apart, so that a call
/// reporting its token stale does not throw away a newer one another clone
/// already fetched. `Debug` hides the value (it is a bearer secret).
#[derive(Clone)]
pub(crate) struct Token {
    value: AsciiMetadataValue,
    login: u64,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("login", &self.login)
            .finish()
    }
}

/// Adds `token: <token>` to a request's metadata (nothing without one).
#[derive(Clone, Default)]
pub(crate) struct TokenInterceptor(Option<AsciiMetadataValue>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(TOKEN_METADATA, token.clone());
        }
        Ok(request)
    }
}

/// A channel whose every call carries the token it was made with.
pub(crate) type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

pub(crate) fn with_token(channel: Channel, token: Option<&Token>) -> AuthChannel {
    InterceptedService::new(channel, TokenInterceptor(token.map(|t| t.value.clone())))
}

/// The server's token does not fit in gRPC metadata (visible ASCII).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "nod-client: the server sent a token that cannot be sent back (empty or not visible ASCII)"
)]
pub struct InvalidToken;

/// What to do before a call.
pub(crate) enum Next<'a> {
    /// Send the call with this token (or none: no credentials, or
    /// authentication is not enabled).
    Send(Option<Token>),
    /// Log in with these credentials first.
    LogIn(&'a Credentials),
}

#[derive(Clone, Debug)]
enum State {
    /// No login yet, the last one failed, or the token was refused.
    LoggedOut,
    LoggedIn(Token),
    /// The server said authentication is not enabled: send no token.
    NotEnabled,
}

/// The login state a `Client` and its clones share.
///
/// ```text
///  LoggedOut --logged_in--> LoggedIn --rejected(that token)--> LoggedOut
///      |                                                          ^
///      +--not_enabled--> NotEnabled --rejected(no token)----------+
/// ```
///
/// A failed login leaves it `LoggedOut`: the next call logs in again (so a
/// wrong password is an error for each call, never a loop). Without
/// credentials it stays `LoggedOut` and every call goes without a token.
pub(crate) struct Session {
    credentials: Option<Credentials>,
    state: Mutex<State>,
    /// Logins so far: the next token's `login`.
    logins: std::sync::atomic::AtomicU64,
    /// Held while logging in, so that the callers that find no token wait
    /// for one login instead of each making their own.
    pub(crate) login_gate: tokio::sync::Mutex<()>,
}

impl Session {
    pub fn new(credentials: Option<Credentials>) -> Session {
        Session {
            credentials,
            state: Mutex::new(State::LoggedOut),
            logins: std::sync::atomic::AtomicU64::new(0),
            login_gate: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next(&self) -> Next<'_> {
        let Some(credentials) = &self.credentials else {
            return Next::Send(None);
        };
        match &*self.lock() {
            State::LoggedOut => Next::LogIn(credentials),
            State::LoggedIn(t) => Next::Send(Some(t.clone())),
            State::NotEnabled => Next::Send(None),
        }
    }

    /// The token held now, without logging in (for the pool's Status calls).
    pub fn current(&self) -> Option<Token> {
        match &*self.lock() {
            State::LoggedIn(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// Records a login's token. Validates it: it must fit in metadata.
    pub fn logged_in(&self, token: &str) -> std::result::Result<Token, InvalidToken> {
        if token.is_empty() {
            return Err(InvalidToken);
        }
        let value = AsciiMetadataValue::try_from(token).map_err(|_| InvalidToken)?;
        let login = 1 + self
            .logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Token { value, login };
        *self.lock() = State::LoggedIn(t.clone());
        Ok(t)
    }

    pub fn not_enabled(&self) {
        *self.lock() = State::NotEnabled;
    }

    /// The server refused `sent` (the token a call carried, or none) as
    /// stale. Forgets it unless a newer login replaced it already, and
    /// says whether logging in again may help (there are credentials).
    pub fn rejected(&self, sent: Option<&Token>) -> bool {
        if self.credentials.is_none() {
            return false;
        }
        let mut st = self.lock();
        let same = match (&*st, sent) {
            (State::LoggedIn(now), Some(sent)) => now.login == sent.login,
            (State::NotEnabled, None) => true,
            _ => false,
        };
        if same {
            *st = State::LoggedOut;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(Some(Credentials::new("root", "pw")))
    }

    fn sends(s: &Session) -> Option<Option<String>> {
        match s.next() {
            Next::Send(t) => Some(t.map(|t| t.value.to_str().unwrap().to_string())),
            Next::LogIn(_) => None,
        }
    }

    #[test]
    fn user_password_splits_at_the_first_colon() {
        let table = [
            ("root:pw", Some(("root", "pw"))),
            ("root:p:w:", Some(("root", "p:w:"))),
            ("root:", Some(("root", ""))),
            (":pw", Some(("", "pw"))),
            ("root", None),
            ("", None),
        ];
        for (flag, want) in table {
            let got = Credentials::parse(flag);
            assert_eq!(
                got.as_ref().map(|c| (c.user(), c.password())),
                want,
                "{flag:?}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_password_or_the_token() {
        let c = Credentials::new("alice", "hunter2");
        let shown = format!("{c:?} {c:#?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");

        let s = session();
        let t = s.logged_in("simple.token.42").unwrap();
        let shown = format!("{t:?} {:?}", *s.lock());
        assert!(!shown.contains("simple.token.42"), "{shown}");
    }

    #[test]
    fn without_credentials_calls_go_without_a_token_and_are_never_retried() {
        let s = Session::new(None);
        assert_eq!(sends(&s), Some(None));
        assert!(!s.rejected(None));
        assert_eq!(sends(&s), Some(None));
    }

    #[test]
    fn a_token_is_used_until_refused_then_a_login_is_needed() {
        let s = session();
        assert_eq!(sends(&s), None, "log in before the first call");
        let first = s.logged_in("t1").unwrap();
        assert_eq!(sends(&s), Some(Some("t1".into())));
        assert!(s.rejected(Some(&first)));
        assert_eq!(sends(&s), None);
    }

    #[test]
    fn a_stale_report_does_not_throw_away_a_newer_token() {
        let s = session();
        let old = s.logged_in("t1").unwrap();
        // Another clone saw t1 refused and logged in again meanwhile.
        s.logged_in("t2").unwrap();
        assert!(s.rejected(Some(&old)), "retrying still helps: with t2");
        assert_eq!(sends(&s), Some(Some("t2".into())));
    }

    #[test]
    fn auth_not_enabled_sends_no_token_until_the_server_asks_for_one() {
        let s = session();
        s.not_enabled();
        assert_eq!(sends(&s), Some(None));
        // Authentication was turned on since: "user name is empty".
        assert!(s.rejected(None));
        assert_eq!(sends(&s), None);
    }

    #[test]
    fn a_token_must_fit_in_metadata() {
        let s = session();
        assert_eq!(s.logged_in("").unwrap_err(), InvalidToken);
        assert_eq!(s.logged_in("bad\ntoken").unwrap_err(), InvalidToken);
        assert_eq!(sends(&s), None, "still logged out");
    }

    #[test]
    fn the_interceptor_adds_the_token_metadata() {
        let s = session();
        let t = s.logged_in("abc").unwrap();
        let r = TokenInterceptor(Some(t.value.clone()))
            .call(Request::new(()))
            .unwrap();
        assert_eq!(r.metadata().get(TOKEN_METADATA).unwrap(), "abc");
        let r = TokenInterceptor::default().call(Request::new(())).unwrap();
        assert!(r.metadata().get(TOKEN_METADATA).is_none());
    }
}
