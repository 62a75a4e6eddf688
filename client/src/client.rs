//! `Client`: the etcd v3 API over one channel per endpoint, writes and
//! linearizable reads sent to the leader, failed calls retried when that is
//! safe (`retry.rs`), within per-attempt timeouts and an overall deadline
//! (`CallOptions`), with the login token of `auth.rs` when the client has
//! credentials. Typed errors, no printing. Cheap to clone: clones share the
//! endpoints, their health and the token.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use nod_proto::etcd::mvccpb::KeyValue;
use nod_proto::nodserverpb::admin_client::AdminClient;
use nod_proto::nodserverpb::{MemberHealthRequest, MemberHealthResponse};

use nod_proto::etcd::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient, *,
};

use crate::auth::{with_token, AuthChannel, Credentials, Next, Session, Token};
use crate::backoff::Jitter;
use crate::endpoints::{EndpointInfo, Pool, Route};
use crate::options::{CallOptions, ClientBuilder};
use crate::retry::{
    auth_not_enabled, cancel_needs_new_token, may_retry, needs_new_token, Idempotence,
    CALL_TIMED_OUT,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("no endpoints given")]
    NoEndpoints,
    /// The TLS files given do not load.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A login succeeded but its token cannot be sent back.
    #[error(transparent)]
    InvalidToken(#[from] crate::auth::InvalidToken),
    /// The server answered with an error (etcd's code and message).
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
    /// A watch asked for revisions compaction removed; start again from
    /// `compact_revision` or later.
    #[error(
        "etcdserver: mvcc: required revision has been compacted (compacted at {compact_revision})"
    )]
    Compacted { compact_revision: i64 },
    /// A lease the client kept alive is gone (expired or revoked).
    #[error("lease {0:x} lost")]
    LeaseLost(i64),
}

impl ClientError {
    /// The gRPC status, when the server (or the transport) answered with one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Status(s) => Some(s),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A key range in etcd's terms: one key, a prefix, or everything from a key on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum KeySpan {
    #[default]
    Single,
    Prefix,
    FromKey,
    /// `[key, end)`.
    Until(Vec<u8>),
}

impl KeySpan {
    pub fn range_end(&self, key: &[u8]) -> Vec<u8> {
        match self {
            KeySpan::Single => Vec::new(),
            KeySpan::Prefix => prefix_end(key),
            KeySpan::FromKey => vec![0],
            KeySpan::Until(end) => end.clone(),
        }
    }
}

/// The smallest key greater than every key starting with `prefix`
/// (`"\0"`, meaning "no end", when the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub(crate) const MAX_MESSAGE: usize = 64 * 1024 * 1024;

fn kv(ch: AuthChannel) -> KvClient<AuthChannel> {
    KvClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

fn maintenance(ch: AuthChannel) -> MaintenanceClient<AuthChannel> {
    MaintenanceClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

/// Whether every operation of a txn only reads (then it may be repeated).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    fn op_reads(op: &RequestOp) -> bool {
        match &op.request {
            Some(request_op::Request::RequestRange(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
            _ => false,
        }
    }
    t.success.iter().chain(&t.failure).all(op_reads)
}

/// The etcd v3 API over every endpoint given. See the crate docs.
#[derive(Clone)]
pub struct Client {
    pool: Arc<Pool>,
    options: CallOptions,
    session: Arc<Session>,
}

impl Client {
    /// Connects lazily to every endpoint, each attempt limited to
    /// `timeout` and each call (retries included) to `timeout` as well.
    pub fn connect(endpoints: &[String], timeout: Duration) -> Result<Client> {
        ClientBuilder::new(endpoints.iter().cloned())
            .call_options(
                CallOptions::default()
                    .attempt_timeout(timeout)
                    .deadline(Some(timeout)),
            )
            .build()
    }

    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder::new(endpoints)
    }

    pub(crate) fn from_pool(
        pool: Pool,
        options: CallOptions,
        credentials: Option<Credentials>,
    ) -> Client {
        Client {
            pool: Arc::new(pool),
            options,
            session: Arc::new(Session::new(credentials)),
        }
    }

    /// This client with other call options (sharing endpoints, health and
    /// the login token).
    pub fn with_options(&self, options: CallOptions) -> Client {
        Client {
            pool: self.pool.clone(),
            options,
            session: self.session.clone(),
        }
    }

    pub fn call_options(&self) -> &CallOptions {
        &self.options
    }

    /// What the client knows about each endpoint: member, health, leader.
    pub fn endpoints(&self) -> Vec<EndpointInfo> {
        self.pool.infos()
    }

    /// Asks every endpoint for its status now, learning members and leader.
    pub async fn refresh_leader(&self) {
        self.pool.refresh(self.session.current().as_ref()).await;
    }

    /// Adds every member's client URLs (Cluster.MemberList) to the
    /// endpoints; returns how many were new.
    pub async fn sync_endpoints(&self) -> Result<usize> {
        let req = MemberListRequest {
            linearizable: false,
        };
        let list = self
            .unary(Route::Any, Idempotence::Idempotent, move |ch| async move {
                ClusterClient::new(ch).member_list(req).await
            })
            .await?;
        Ok(self.pool.add_members(list))
    }

    /// Logs in now, if the client has credentials and holds no token,
    /// instead of before the first call: a wrong password is an error here.
    /// A cluster without authentication is no error (calls then go without
    /// a token).
    pub async fn authenticate(&self) -> Result<()> {
        self.token(self.call_deadline()).await.map(drop)
    }

    fn call_deadline(&self) -> Option<Instant> {
        self.options
            .deadline
            .and_then(|d| Instant::now().checked_add(d))
    }

    /// The token for the next call, logging in first when there is none
    /// (once for every caller waiting: the others find the new token).
    pub(crate) async fn token(&self, deadline: Option<Instant>) -> Result<Option<Token>> {
        if let Next::Send(t) = self.session.next() {
            return Ok(t);
        }
        let _gate = self.session.login_gate.lock().await;
        let credentials = match self.session.next() {
            Next::Send(t) => return Ok(t),
            Next::LogIn(c) => c.clone(),
        };
        let req = AuthenticateRequest {
            name: credentials.user().to_string(),
            password: credentials.password().to_string(),
        };
        // Boxed: a login is a call, and calls log in.
        let login = Box::pin(self.send(
            Route::Any,
            Idempotence::Idempotent,
            false,
            deadline,
            move |ch| {
                let req = req.clone();
                async move { AuthClient::new(ch).authenticate(req).await }
            },
        ))
        .await;
        match login {
            Ok(r) => {
                let token = self.session.logged_in(&r.token)?;
                tracing::debug!(user = credentials.user(), "nod-client: logged in");
                Ok(Some(token))
            }
            Err(ClientError::Status(s)) if auth_not_enabled(&s) => {
                tracing::debug!("nod-client: authentication is not enabled: no token");
                self.session.not_enabled();
                Ok(None)
            }
            // tonic's answer for a missing service says nothing by itself.
            Err(ClientError::Status(s)) if s.code() == tonic::Code::Unimplemented => {
                Err(Status::unimplemented(format!(
                    "nod-client: cannot log in as {:?}: the server has no Auth service",
                    credentials.user()
                ))
                .into())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a call that carried `sent` and failed with `s` should be
    /// sent again after a new login (the token is forgotten then).
    pub(crate) fn token_rejected(&self, s: &Status, sent: Option<&Token>) -> bool {
        needs_new_token(s) && self.forget_token(s.message(), sent)
    }

    /// Same, for a watch the server cancelled with `reason`.
    pub(crate) fn watch_token_rejected(&self, reason: &str, sent: Option<&Token>) -> bool {
        cancel_needs_new_token(reason) && self.forget_token(reason, sent)
    }

    fn forget_token(&self, why: &str, sent: Option<&Token>) -> bool {
        let again = self.session.rejected(sent);
        if again {
            tracing::debug!("nod-client: {why}: logging in again");
        }
        again
    }

    /// An endpoint for a stream (watch, keep-alive), waiting for one to be
    /// healthy until `deadline`.
    pub(crate) async fn pick(
        &self,
        route: Route,
        deadline: Option<Instant>,
    ) -> Result<crate::endpoints::Picked> {
        loop {
            if route == Route::Leader && !self.pool.leader_known() {
                self.pool.refresh(self.session.current().as_ref()).await;
            }
            match self.pool.pick(route) {
                Ok(p) => return Ok(p),
                Err(wait) => {
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now + wait > d) {
                        return Err(Status::unavailable("nod-client: no healthy endpoint").into());
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Runs a unary call with the session's token (see `send`), within
    /// the call options' deadline.
    pub(crate) async fn unary<T, F, Fut>(
        &self,
        route: Route,
        idempotence: Idempotence,
        call: F,
    ) -> Result<T>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.send(route, idempotence, true, self.call_deadline(), call)
            .await
    }

    /// Sends a unary call: picks an endpoint by `route`, limits the
    /// attempt, reports the outcome to the endpoint's health, and tries
    /// again (after a jittered back-off) while `retry::may_retry` allows
    /// and the deadline has not passed. With `authenticated`, each attempt
    /// carries the session's token (logging in first if there is none),
    /// and a token the server refuses is replaced once, the call sent
    /// again at once whatever its idempotence (`retry.rs` says why).
    async fn send<T, F, Fut>(
        &self,
        route: Route,
        idempotence: Idempotence,
        authenticated: bool,
        deadline: Option<Instant>,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let opts = &self.options;
        let mut jitter = Jitter::from_entropy();
        let mut attempt = 0u32;
        let mut logged_in_again = false;
        loop {
            let token = if authenticated {
                self.token(deadline).await?
            } else {
                None
            };
            let picked = self.pick(route, deadline).await?;
            attempt += 1;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let limit = remaining.map_or(opts.attempt_timeout, |r| r.min(opts.attempt_timeout));
            let channel = with_token(picked.channel.clone(), token.as_ref());
            let result = match tokio::time::timeout(limit, call(channel)).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(CALL_TIMED_OUT)),
            };
            let status = match result {
                Ok(r) => {
                    picked.finish(Ok(()));
                    return Ok(r.into_inner());
                }
                Err(s) => s,
            };
            picked.finish(Err(&status));
            if authenticated && !logged_in_again && self.token_rejected(&status, token.as_ref()) {
                logged_in_again = true;
                continue;
            }
            if !may_retry(&status, idempotence) || attempt >= opts.max_attempts {
                return Err(status.into());
            }
            let delay = opts.backoff.delay(attempt, &mut jitter);
            if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                return Err(status.into());
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Opens a stream (or runs a call that reads one to its end) on an
    /// endpoint picked by `route`, with the session's token, replacing a
    /// token the server refuses once. Other failures are not retried here:
    /// the callers (`Watcher`, `LeaseKeeper`) decide. Returns the token the
    /// stream carries, for a refusal that comes later on it.
    pub(crate) async fn open<T, F, Fut>(
        &self,
        route: Route,
        deadline: Option<Instant>,
        mut open: F,
    ) -> Result<(T, Option<Token>)>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let mut logged_in_again = false;
        loop {
            let token = self.token(deadline).await?;
            let picked = self.pick(route, deadline).await?;
            match open(with_token(picked.channel.clone(), token.as_ref())).await {
                Ok(opened) => {
                    picked.finish(Ok(()));
                    return Ok((opened, token));
                }
                Err(s) => {
                    picked.finish(Err(&s));
                    if !logged_in_again && self.token_rejected(&s, token.as_ref()) {
                        logged_in_again = true;
                        continue;
                    }
                    return Err(s.into());
                }
            }
        }
    }

    pub async fn put(&mut self, req: PutRequest) -> Result<PutResponse> {
        self.unary(Route::Leader, Idempotence::NonIdempotent, move |ch| {
            let req = req.clone();
            async move { kv(ch).put(req).await }
        })
        .await
    }

    /// Reads; a serializable read goes to any endpoint, a linearizable one
    /// to the leader.
    pub async fn range(&mut self, req: RangeRequest) -> Result<RangeResponse> {
        let route = if req.serializable {
            Route::Any
        } else {
            Route::Leader
        };
        self.unary(route, Idempotence::Idempotent, move |ch| {
            let req = req.clone();
            async move { kv(ch).range(req).await }
        })
        .await
    }

    /// One key's current value (a linearizable read), if it exists.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        let r = self
            .range(RangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    pub async fn delete(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        self.unary(Route::Leader, Idempotence::NonIdempotent, move |ch| {
            let req = req.clone();
            async move { kv(ch).delete_range(req).await }
        })
        .await
    }

    /// A txn; one that only reads is retried like a read.
    pub async fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse> {
        let idempotence = if txn_is_read_only(&req) {
            Idempotence::Idempotent
        } else {
            Idempotence::NonIdempotent
        };
        self.unary(Route::Leader, idempotence, move |ch| {
            let req = req.clone();
            async move { kv(ch).txn(req).await }
        })
        .await
    }

    /// A txn the caller asserts may be applied twice with the same effect
    /// (for example "if the key does not exist, create it"): retried like a
    /// read.
    pub async fn txn_idempotent(&mut self, req: TxnRequest) -> Result<TxnResponse> {
        self.unary(Route::Leader, Idempotence::Idempotent, move |ch| {
            let req = req.clone();
            async move { kv(ch).txn(req).await }
        })
        .await
    }

    pub async fn compact(&mut self, revision: i64) -> Result<CompactionResponse> {
        let req = CompactionRequest {
            revision,
            physical: false,
        };
        self.unary(
            Route::Leader,
            Idempotence::NonIdempotent,
            move |ch| async move { kv(ch).compact(req).await },
        )
        .await
    }

    /// Opens a watch stream with one watcher on any healthy endpoint; send
    /// more requests through the sender. It does not resume after a
    /// failure: `Client::watcher` does.
    pub async fn watch(
        &mut self,
        create: WatchCreateRequest,
    ) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>)> {
        let (opened, _) = self
            .open(Route::Any, self.call_deadline(), move |ch| {
                open_watch(ch, create.clone())
            })
            .await?;
        Ok(opened)
    }

    pub async fn lease_grant(&mut self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        let req = LeaseGrantRequest { ttl, id };
        self.unary(
            Route::Leader,
            Idempotence::NonIdempotent,
            move |ch| async move { LeaseClient::new(ch).lease_grant(req).await },
        )
        .await
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse> {
        let req = LeaseRevokeRequest { id };
        self.unary(
            Route::Leader,
            Idempotence::NonIdempotent,
            move |ch| async move { LeaseClient::new(ch).lease_revoke(req).await },
        )
        .await
    }

    /// Opens a keep-alive stream for a lease on the leader (or, failing
    /// that, any endpoint): one request sent, more through the sender.
    /// `LeaseKeeper` keeps one alive for you.
    pub async fn lease_keep_alive(
        &mut self,
        id: i64,
    ) -> Result<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        Streaming<LeaseKeepAliveResponse>,
    )> {
        let (opened, _) = self.open_keep_alive(id).await?;
        Ok(opened)
    }

    /// `lease_keep_alive`, with the token the stream carries.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn open_keep_alive(
        &self,
        id: i64,
    ) -> Result<(
        (
            mpsc::Sender<LeaseKeepAliveRequest>,
            Streaming<LeaseKeepAliveResponse>,
        ),
        Option<Token>,
    )> {
        self.open(Route::Leader, self.call_deadline(), move |ch| async move {
            let (tx, rx) = mpsc::channel(4);
            tx.try_send(LeaseKeepAliveRequest { id })
                .map_err(|_| Status::internal("nod-client: keep-alive request not queued"))?;
            let stream = LeaseClient::new(ch)
                .lease_keep_alive(ReceiverStream::new(rx))
                .await?;
            Ok((tx, stream.into_inner()))
        })
        .await
    }

    pub async fn lease_time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse> {
        let req = LeaseTimeToLiveRequest { id, keys };
        self.unary(
            Route::Leader,
            Idempotence::Idempotent,
            move |ch| async move { LeaseClient::new(ch).lease_time_to_live(req).await },
        )
        .await
    }

    pub async fn lease_list(&mut self) -> Result<LeaseLeasesResponse> {
        self.unary(
            Route::Leader,
            Idempotence::Idempotent,
            move |ch| async move {
                LeaseClient::new(ch)
                    .lease_leases(LeaseLeasesRequest {})
                    .await
            },
        )
        .await
    }

    pub async fn member_list(&mut self) -> Result<MemberListResponse> {
        let req = MemberListRequest { linearizable: true };
        self.unary(Route::Any, Idempotence::Idempotent, move |ch| async move {
            ClusterClient::new(ch).member_list(req).await
        })
        .await
    }

    pub async fn member_add(
        &mut self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<MemberAddResponse> {
        let req = MemberAddRequest {
            peer_ur_ls: peer_urls,
            is_learner: learner,
        };
        self.unary(Route::Leader, Idempotence::NonIdempotent, move |ch| {
            let req = req.clone();
            async move { ClusterClient::new(ch).member_add(req).await }
        })
        .await
    }

    pub async fn member_remove(&mut self, id: u64) -> Result<MemberRemoveResponse> {
        let req = MemberRemoveRequest { id };
        self.unary(
            Route::Leader,
            Idempotence::NonIdempotent,
            move |ch| async move { ClusterClient::new(ch).member_remove(req).await },
        )
        .await
    }

    pub async fn member_promote(&mut self, id: u64) -> Result<MemberPromoteResponse> {
        let req = MemberPromoteRequest { id };
        self.unary(
            Route::Leader,
            Idempotence::NonIdempotent,
            move |ch| async move { ClusterClient::new(ch).member_promote(req).await },
        )
        .await
    }

    pub async fn member_update(
        &mut self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<MemberUpdateResponse> {
        let req = MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls,
        };
        self.unary(Route::Leader, Idempotence::NonIdempotent, move |ch| {
            let req = req.clone();
            async move { ClusterClient::new(ch).member_update(req).await }
        })
        .await
    }

    /// Whether authentication is on, and the auth store's revision.
    pub async fn auth_status(&mut self) -> Result<AuthStatusResponse> {
        self.unary(Route::Any, Idempotence::Idempotent, move |ch| async move {
            AuthClient::new(ch).auth_status(AuthStatusRequest {}).await
        })
        .await
    }

    /// Turns authentication on (needs the `root` user with the `root` role).
    pub async fn auth_enable(&mut self) -> Result<AuthEnableResponse> {
        // Enabling twice is no error (etcd's rule), so sending it again is safe.
        self.unary(
            Route::Leader,
            Idempotence::Idempotent,
            move |ch| async move { AuthClient::new(ch).auth_enable(AuthEnableRequest {}).await },
        )
        .await
    }

    /// Turns authentication off (as `root`).
    pub async fn auth_disable(&mut self) -> Result<AuthDisableResponse> {
        self.unary(
            Route::Leader,
            Idempotence::Idempotent,
            move |ch| async move {
                AuthClient::new(ch)
                    .auth_disable(AuthDisableRequest {})
                    .await
            },
        )
        .await
    }

    /// Adds a user with a password.
    pub async fn user_add(&mut self, name: &str, password: &str) -> Result<AuthUserAddResponse> {
        let req = AuthUserAddRequest {
            name: name.to_string(),
            password: password.to_string(),
            ..Default::default()
        };
        self.unary(Route::Leader, Idempotence::NonIdempotent, move |ch| {
            let req = req.clone();
            async move { AuthClient::new(ch).user_add(req).await }
        })
        .await
    }

    /// A user's roles.
    pub async fn user_get(&mut self, name: &str) -> Result<AuthUserGetResponse> {
        let req = AuthUserGetRequest {
            name: name.to_string(),
        };
        self.unary(Route::Any, Idempotence::Idempotent, move |ch| {
            let req = req.clone();
            async move { AuthClient::new(ch).user_get(req).await }
        })
        .await
    }

    /// Changes a user's password.
    pub async fn user_change_password(
        &mut self,
        name: &str,
        password: &str,
    ) -> Result<AuthUserChangePasswordResponse> {
        let req = AuthUserChangePasswordRequest {
            name: name.to_string(),
            password: password.to_string(),
            ..Default::default()
        };
        self.unary(Route::Leader, Idempotence::Idempotent, move |ch| {
            let req = req.clone();
            async move { AuthClient::new(ch).user_change_password(req).await }
        })
        .await
    }

    /// Grants `role` to `user` (granting a role held already is no error).
    pub async fn user_grant_role(
        &mut self,
        user: &str,
        role: &str,
    ) -> Result<AuthUserGrantRoleResponse> {
        let req = AuthUserGrantRoleRequest {
            user: user.to_string(),
            role: role.to_string(),
        };
        self.unary(Route::Leader, Idempotence::Idempotent, move |ch| {
            let req = req.clone();
            async move { AuthClient::new(ch).user_grant_role(req).await }
        })
        .await
    }

    /// The member table with role, health and lag, as the leader sees it.
    pub async fn member_health(&mut self) -> Result<MemberHealthResponse> {
        self.unary(Route::Any, Idempotence::Idempotent, move |ch| async move {
            AdminClient::new(ch)
                .member_health(MemberHealthRequest {})
                .await
        })
        .await
    }

    /// The status of whichever endpoint answers.
    pub async fn status(&mut self) -> Result<StatusResponse> {
        self.unary(Route::Any, Idempotence::Idempotent, move |ch| async move {
            maintenance(ch).status(StatusRequest {}).await
        })
        .await
    }

    /// The hash of the key-value history up to `revision` (0: all) on
    /// whichever endpoint answers (a client of one endpoint: that member).
    pub async fn hash_kv(&mut self, revision: i64) -> Result<HashKvResponse> {
        self.unary(Route::Any, Idempotence::Idempotent, move |ch| async move {
            maintenance(ch).hash_kv(HashKvRequest { revision }).await
        })
        .await
    }

    pub async fn move_leader(&mut self, target: u64) -> Result<MoveLeaderResponse> {
        let req = MoveLeaderRequest { target_id: target };
        let r = self
            .unary(
                Route::Leader,
                Idempotence::NonIdempotent,
                move |ch| async move { maintenance(ch).move_leader(req).await },
            )
            .await;
        self.pool.forget_leader();
        r
    }

    /// Streams the backup into `sink` as it arrives, one chunk in memory at
    /// a time: etcd's snapshot file, the database then its SHA-256 (what
    /// `etcdctl snapshot save` writes), the hash checked against the bytes
    /// streamed. On an error `sink` holds part of the file: write to a
    /// temporary file and rename it once this returns `Ok`.
    pub async fn snapshot_to<W>(&mut self, sink: &mut W) -> Result<SnapshotWritten>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt as _;
        let (mut stream, _) = self
            .open(Route::Any, None, |ch| async move {
                Ok(maintenance(ch)
                    .snapshot(SnapshotRequest {})
                    .await?
                    .into_inner())
            })
            .await?;
        let mut check = TrailingHash::default();
        let mut revision = 0;
        let io = |e: std::io::Error| ClientError::Protocol(format!("writing the snapshot: {e}"));
        while let Some(chunk) = stream.message().await? {
            if let Some(h) = &chunk.header {
                revision = revision.max(h.revision);
            }
            check.update(&chunk.blob);
            sink.write_all(&chunk.blob).await.map_err(io)?;
        }
        sink.flush().await.map_err(io)?;
        let bytes = check.finish()?;
        Ok(SnapshotWritten { revision, bytes })
    }

    /// The whole backup stream, concatenated.
    pub async fn snapshot(&mut self) -> Result<Vec<u8>> {
        let (out, _) = self
            .open(Route::Any, None, |ch| async move {
                let mut stream = maintenance(ch)
                    .snapshot(SnapshotRequest {})
                    .await?
                    .into_inner();
                let mut out = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    out.extend_from_slice(&chunk.blob);
                }
                Ok(out)
            })
            .await?;
        Ok(out)
    }
}

/// What [`Client::snapshot_to`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotWritten {
    /// The revision the snapshot holds (the server's response headers).
    pub revision: i64,
    /// Bytes written, the SHA-256 included.
    pub bytes: u64,
}

/// The SHA-256 of everything but the last 32 bytes of a stream, and those
/// 32 bytes: an etcd snapshot ends with the hash of the database before
/// it, and which message carries it is not marked.
#[derive(Default)]
struct TrailingHash {
    hasher: sha2::Sha256,
    tail: Vec<u8>,
    bytes: u64,
}

impl TrailingHash {
    fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest as _;
        self.bytes += chunk.len() as u64;
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 32 {
            let cut = self.tail.len() - 32;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    /// The byte count, if the last 32 bytes are the hash of the rest.
    fn finish(self) -> Result<u64> {
        use sha2::Digest as _;
        if self.tail.len() < 32 {
            return Err(ClientError::Protocol(format!(
                "snapshot stream of {} bytes has no SHA-256",
                self.bytes
            )));
        }
        if self.hasher.finalize().as_slice() != self.tail.as_slice() {
            return Err(ClientError::Protocol(
                "snapshot stream's SHA-256 does not match its data: the snapshot is corrupt".into(),
            ));
        }
        Ok(self.bytes)
    }
}

/// Opens a watch stream whose first request is `create`.
pub(crate) async fn open_watch(
    ch: AuthChannel,
    create: WatchCreateRequest,
) -> std::result::Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.try_send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    })
    .map_err(|_| Status::internal("nod-client: watch request not queued"))?;
    let stream = WatchClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .watch(ReceiverStream::new(rx))
        .await?;
    Ok((tx, stream.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(KeySpan::FromKey.range_end(b"x"), vec![0]);
    }

    /// A database and its SHA-256, cut into chunks every way: the hash may
    /// arrive alone, split, or with the end of the data.
    #[test]
    fn the_trailing_hash_is_checked_however_the_stream_is_cut() {
        use sha2::Digest as _;
        let db: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut file = db.clone();
        file.extend_from_slice(&sha2::Sha256::digest(&db));
        for size in [1, 5, 31, 32, 33, 100, 1000, 1032, 5000] {
            let mut h = TrailingHash::default();
            for chunk in file.chunks(size) {
                h.update(chunk);
            }
            assert_eq!(h.finish().ok(), Some(file.len() as u64), "chunks of {size}");
        }
        let mut bad = file.clone();
        bad[500] ^= 1;
        let mut h = TrailingHash::default();
        h.update(&bad);
        assert!(h.finish().is_err(), "a flipped byte");
        let mut h = TrailingHash::default();
        h.update(&file[..file.len() - 1]);
        assert!(h.finish().is_err(), "a cut stream");
        let mut h = TrailingHash::default();
        h.update(&file[..20]);
        assert!(h.finish().is_err(), "shorter than a hash");
    }
}
