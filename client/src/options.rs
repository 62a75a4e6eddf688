//! `CallOptions` (per-attempt timeout, overall deadline, attempts) and
//! `ClientBuilder`. No I/O.

use std::time::Duration;

use crate::auth::Credentials;
use crate::backoff::Backoff;
use crate::endpoints::{HealthSettings, Pool};
use crate::tls::TlsOptions;
use crate::{Client, Result};

/// How long one call may take, overall and per attempt.
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// One attempt's limit; when it passes, the attempt counts as a
    /// transport failure (and, for a write, an unknown outcome).
    pub attempt_timeout: Duration,
    /// The limit across every attempt and back-off, as a Go context's
    /// deadline. `None`: only `max_attempts` bounds the call.
    pub deadline: Option<Duration>,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Waits between attempts.
    pub backoff: Backoff,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            attempt_timeout: Duration::from_secs(5),
            deadline: Some(Duration::from_secs(10)),
            max_attempts: 10,
            backoff: Backoff::default(),
        }
    }
}

impl CallOptions {
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = d;
        self
    }

    pub fn deadline(mut self, d: Option<Duration>) -> Self {
        self.deadline = d;
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }
}

/// Builds a `Client`:
///
/// ```
/// use std::time::Duration;
/// use nod_client::{Client, CallOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = Client::builder(["127.0.0.1:2379", "127.0.0.1:22379"])
///     .call_options(CallOptions::default().attempt_timeout(Duration::from_secs(2)))
///     .breaker(5, Duration::from_secs(2))
///     .build()
///     .unwrap(); // connects lazily: no server needed here
/// assert_eq!(client.endpoints().len(), 2);
/// assert!(client.endpoints().iter().all(|e| e.healthy && !e.is_leader));
/// # }
/// ```
///
/// Build it inside a tokio runtime: each endpoint's connection is a task.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    call: CallOptions,
    health: HealthSettings,
    tls: Option<TlsOptions>,
    /// `Debug` shows the user, never the password.
    credentials: Option<Credentials>,
}

impl ClientBuilder {
    pub fn new<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            call: CallOptions::default(),
            health: HealthSettings::default(),
            tls: None,
            credentials: None,
        }
    }

    pub fn call_options(mut self, o: CallOptions) -> Self {
        self.call = o;
        self
    }

    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.health.connect_timeout = d;
        self
    }

    /// `threshold` consecutive failures open an endpoint's breaker for
    /// `cool_down`.
    pub fn breaker(mut self, threshold: u32, cool_down: Duration) -> Self {
        self.health.breaker_threshold = threshold;
        self.health.breaker_cool_down = cool_down;
        self
    }

    /// The back-off before an endpoint that failed at the transport is
    /// tried again.
    pub fn unhealthy_backoff(mut self, b: Backoff) -> Self {
        self.health.unhealthy_backoff = b;
        self
    }

    /// TLS for `https://` endpoints (and bare `host:port` ones, which then
    /// mean `https://`): the CA to trust, a client certificate, or
    /// `insecure_skip_verify`. The files are read when `build` runs (an
    /// error there names the file) and again for each new connection.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Logs in as `user` (etcd's Auth.Authenticate, on any healthy
    /// endpoint) before the first call, and sends the token with every call
    /// and stream of the client and its clones; a token the server refuses
    /// as stale is replaced once and the call sent again. A wrong password
    /// is the first call's error (or `Client::authenticate`'s); a cluster
    /// without authentication is no error.
    ///
    /// ```no_run
    /// # async fn demo() -> nod_client::Result<()> {
    /// let mut client = nod_client::Client::builder(["https://10.0.0.1:2379"])
    ///     .user("root", "s3cret")
    ///     .build()?;
    /// client.authenticate().await?; // optional: a wrong password is an error here
    /// let value = client.get("greeting").await?; // carries the token
    /// # Ok(()) }
    /// ```
    pub fn user(self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials(Credentials::new(user, password))
    }

    /// `user`, with credentials already made (`Credentials::parse` reads
    /// etcdctl's `name:password`).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Connects lazily: no I/O until the first call (nor a login).
    pub fn build(self) -> Result<Client> {
        let pool = Pool::new(&self.endpoints, self.health, self.tls.as_ref())?;
        Ok(Client::from_pool(pool, self.call, self.credentials))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_prints_its_user_but_never_the_password() {
        let b = ClientBuilder::new(["127.0.0.1:2379"]).user("alice", "hunter2");
        let shown = format!("{b:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
