//! What every client-facing service shares: the driver handle, the store,
//! the limits, and the routing rules. A write on a follower is forwarded to
//! the leader's client API (once: a forwarded request is never forwarded
//! again); a request with no leader in sight waits for one up to the request
//! timeout; a linearizable read waits for a ReadIndex round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Request, Status};

use super::driver::{Applied, DriverError, DriverHandle, Shared};
use crate::api::status::to_status;
use crate::auth::jwt::JwtTokens;
use crate::auth::password::LoginLimiter;
use crate::auth::tokens::login_index;
use crate::auth::{AuthError, AuthState};
use crate::command::{Caller, Op};
use crate::storage::KvError;
use crate::tls::ConnInfo;
use crate::tls::Dialer;
use nod_proto::etcd::etcdserverpb::alarm_request::AlarmAction;
use nod_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use nod_proto::etcd::etcdserverpb::{AlarmMember, AlarmRequest, AlarmType, ResponseHeader};

/// Metadata key marking a request another member already forwarded.
pub const FORWARDED: &str = "nod-forwarded";
/// The user a forwarded request was made by, and the auth revision it was
/// authenticated at: trusted only on the peer port (members' own port,
/// behind peer TLS), ignored on the client port.
pub const FORWARDED_USER: &str = "nod-auth-user";
pub const FORWARDED_AUTH_REVISION: &str = "nod-auth-revision";

/// Seconds since the Unix epoch (JWT expiry).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Who made a request and whether a member already forwarded it.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub caller: Caller,
    pub forwarded: bool,
}

/// The auth settings of this member (`--bcrypt-cost`, `--auth-token`).
pub struct AuthSettings {
    pub bcrypt_cost: u32,
    pub limiter: LoginLimiter,
    /// bcrypt runs at most this many at once, so logins cannot take every core.
    pub bcrypt_slots: tokio::sync::Semaphore,
    /// JWT tokens (`--auth-token jwt,...`); `None`: simple tokens.
    pub jwt: Option<Arc<JwtTokens>>,
}

impl Default for AuthSettings {
    fn default() -> AuthSettings {
        AuthSettings {
            bcrypt_cost: crate::auth::password::DEFAULT_COST,
            limiter: LoginLimiter::default(),
            bcrypt_slots: tokio::sync::Semaphore::new(2),
            jwt: None,
        }
    }
}

pub struct Node {
    pub shared: Arc<Shared>,
    pub driver: DriverHandle,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    leaders: Mutex<HashMap<u64, (String, Channel)>>,
    /// Dials the leader's peer port (peer TLS when it is on).
    dialer: Dialer,
    pub auth: AuthSettings,
    /// `--quota-backend-bytes`, resolved (`None`: no quota).
    pub quota_bytes: Option<u64>,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// How long without a leader ends the streams of clients that asked
    /// for one (`hasleader`): etcd's three election timeouts.
    pub leaderless_for: Duration,
    /// The store's size as the quota check last read it, and when.
    size_seen: Mutex<Option<(Instant, u64)>>,
}

/// How long the quota check reuses the store's size: reading it asks
/// RocksDB for each keyspace's table and memtable sizes under its mutex,
/// work that grows with the table files (an 8 GiB store made every put
/// wait on it: a quarter of the empty store's throughput).
const QUOTA_SIZE_EVERY: Duration = Duration::from_millis(100);

/// Metadata a client sets to be refused, rather than wait, when the member
/// it reaches has no leader (etcd's `WithRequireLeader`).
pub const REQUIRE_LEADER: &str = "hasleader";

/// Whether `request` asks for a leader (`hasleader: true`).
pub fn requires_leader<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .get(REQUIRE_LEADER)
        .is_some_and(|v| v.as_bytes() == b"true")
}

/// etcd's default `--quota-backend-bytes` (2 GiB).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// What etcd's quota adds to a put's size (`kvOverhead`) and to a lease
/// grant (`leaseOverhead`), for the index and bookkeeping each costs.
pub const KV_OVERHEAD: usize = 256;
pub const LEASE_OVERHEAD: usize = 64;

/// Where a request ended: answered here (with its result or error), or
/// the channel to the leader it must go to instead.
pub enum Route<T = Applied> {
    Done(Result<T, Status>),
    Forward(Channel),
}

impl Node {
    pub fn new(
        shared: Arc<Shared>,
        driver: DriverHandle,
        max_request_bytes: usize,
        request_timeout: Duration,
        dialer: Dialer,
    ) -> Node {
        Node {
            shared,
            driver,
            max_request_bytes,
            request_timeout,
            leaders: Mutex::new(HashMap::new()),
            dialer,
            auth: AuthSettings::default(),
            quota_bytes: Some(DEFAULT_QUOTA_BYTES),
            max_txn_ops: crate::storage::kv_store::MAX_TXN_OPS,
            leaderless_for: Duration::from_secs(3),
            size_seen: Mutex::new(None),
        }
    }

    /// Makes the next quota check read the store's size (after a
    /// defragmentation changed it).
    pub fn forget_quota_size(&self) {
        *self.size_seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The store's size for the quota check, read at most every
    /// `QUOTA_SIZE_EVERY` (etcd's check reads bbolt's size, a field).
    fn quota_size(&self) -> u64 {
        let mut seen = self.size_seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, size)) = *seen {
            if at.elapsed() < QUOTA_SIZE_EVERY {
                return size;
            }
        }
        let size = self.shared.store().db_size().max(0) as u64;
        *seen = Some((Instant::now(), size));
        size
    }

    /// Sets how long without a leader ends `hasleader` streams (three
    /// election timeouts).
    pub fn with_election_timeout(mut self, election: Duration) -> Node {
        self.leaderless_for = election * 3;
        self
    }

    /// Sets `--quota-backend-bytes` (resolved) and `--max-txn-ops`.
    pub fn with_limits(mut self, quota_bytes: Option<u64>, max_txn_ops: usize) -> Node {
        self.quota_bytes = quota_bytes;
        self.max_txn_ops = max_txn_ops;
        self
    }

    /// etcd's quota check before a write that adds `cost` bytes: if this
    /// member's store would reach the quota, raises the NOSPACE alarm for
    /// this member (once) and refuses the write with etcd's error. Writes
    /// that only remove data are never checked. While the alarm is active,
    /// every member refuses such writes as it applies them, whatever its
    /// own size, until `alarm disarm`.
    pub async fn check_quota(&self, cost: usize) -> Result<(), Status> {
        let Some(quota) = self.quota_bytes else {
            return Ok(());
        };
        let size = self.quota_size();
        if size.saturating_add(cost as u64) < quota {
            return Ok(());
        }
        let raised = self
            .shared
            .store()
            .has_alarm_of(self.shared.member_id, AlarmType::Nospace);
        if !raised {
            tracing::warn!(
                size,
                quota,
                "the store reached --quota-backend-bytes; raising the NOSPACE alarm"
            );
            let req = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.shared.member_id,
                alarm: AlarmType::Nospace as i32,
            };
            if let Err(e) = self.own_alarm(req).await {
                tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
            }
        }
        Err(crate::api::status::kv_status(KvError::NoSpace))
    }

    /// Proposes an alarm change as this member itself (not checked against
    /// auth when applied), through the leader's peer port from a follower.
    pub async fn own_alarm(&self, req: AlarmRequest) -> Result<Vec<AlarmMember>, Status> {
        match self.propose_as(Op::Alarm(req), None, false).await {
            Route::Forward(ch) => Ok(MaintenanceClient::new(ch)
                .alarm(Request::new(req))
                .await?
                .into_inner()
                .alarms),
            Route::Done(Err(s)) => Err(s),
            Route::Done(Ok(a)) => match a.outcome {
                super::driver::Outcome::Alarms(list) => Ok(list),
                _ => Err(Status::internal("etcdserver: unexpected apply result")),
            },
        }
    }

    pub fn with_auth(mut self, auth: AuthSettings) -> Node {
        self.auth = auth;
        self
    }

    /// Who made `request` (etcd's rules): the identity a member forwarded,
    /// on the peer port, or root for a member's own call there (see
    /// below); else, with auth on, the user of its token (a token that is
    /// unknown or expired is refused), or of its client certificate's
    /// common name; else nobody, whom the checks refuse once auth is on.
    /// Tokens are ignored while auth is off.
    pub async fn ctx<T>(&self, request: &Request<T>) -> Result<Ctx, Status> {
        // etcd's interceptors: a client that requires a leader is refused
        // at once by a member that has none.
        if requires_leader(request) && self.shared.status().leader == 0 {
            return Err(Status::unavailable("etcdserver: no leader"));
        }
        let forwarded = Node::is_forwarded(request);
        let conn = request.extensions().get::<ConnInfo>();
        let md = request.metadata();
        if conn.is_some_and(|c| c.port == "peer") {
            let user = md.get(FORWARDED_USER).and_then(|v| v.to_str().ok());
            let revision = md
                .get(FORWARDED_AUTH_REVISION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let caller = match (user, revision) {
                (Some(user), Some(auth_revision)) => Caller {
                    user: user.to_string(),
                    auth_revision,
                },
                // No member forwarded it (every forward is marked and
                // carries its caller, "" for nobody): a node's own call to
                // the members' port, joining (removing its stale self,
                // adding itself) or leaving. The peer port admits members
                // only (peer mutual TLS), and already trusts the identity
                // they forward, so their own calls act as root; without
                // this, no node could join or leave once auth is on.
                (None, None) if !forwarded => Caller {
                    user: crate::auth::ROOT.to_string(),
                    auth_revision: self.shared.store().auth().revision(),
                },
                _ => crate::auth::anonymous(),
            };
            return Ok(Ctx { caller, forwarded });
        }
        if !self
            .shared
            .auth_enabled
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(Ctx {
                caller: crate::auth::anonymous(),
                forwarded,
            });
        }
        let token = md
            .get("token")
            .or_else(|| md.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_string());
        let caller = if let Some(token) = token {
            match &self.auth.jwt {
                Some(jwt) => {
                    let (user, auth_revision) = jwt
                        .verify(&token, unix_now())
                        .map_err(|e| to_status(DriverError::Auth(e)))?;
                    Caller {
                        user,
                        auth_revision,
                    }
                }
                None => {
                    let user = self.token_user(&token).await?;
                    Caller {
                        user,
                        auth_revision: self.shared.store().auth().revision(),
                    }
                }
            }
        } else if let Some(cn) = conn.and_then(|c| c.common_name()) {
            Caller {
                user: cn,
                auth_revision: self.shared.store().auth().revision(),
            }
        } else {
            crate::auth::anonymous()
        };
        Ok(Ctx { caller, forwarded })
    }

    /// The user of a simple token. A token from a login this member has
    /// not applied yet is waited for (up to the request timeout).
    async fn token_user(&self, token: &str) -> Result<String, Status> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            if let Some(user) = self.shared.tokens.user(token, Instant::now()) {
                return Ok(user);
            }
            let pending = login_index(token).is_some_and(|i| i > self.shared.status().applied);
            if !pending || Instant::now() >= deadline {
                return Err(to_status(DriverError::Auth(AuthError::InvalidAuthToken)));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        let status = self.shared.status();
        ResponseHeader {
            cluster_id: self.shared.cluster_id,
            member_id: self.shared.member_id,
            revision,
            raft_term: status.term,
        }
    }

    pub fn current_header(&self) -> ResponseHeader {
        let rev = self.shared.store().current_revision();
        self.header(rev)
    }

    /// Refuses a request whose encoding exceeds `--max-request-bytes`, with
    /// etcd's error.
    pub fn check_size(&self, len: usize) -> Result<(), Status> {
        if len > self.max_request_bytes {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        Ok(())
    }

    pub fn is_forwarded<T>(request: &Request<T>) -> bool {
        request.metadata().get(FORWARDED).is_some()
    }

    /// A channel to the leader's peer port (which serves the calls members
    /// forward, behind peer TLS), from the member table.
    pub(crate) fn peer_channel(&self, member: u64) -> Option<Channel> {
        let url = self
            .shared
            .store()
            .member(member)
            .and_then(|m| m.peer_ur_ls.first().cloned())?;
        let mut cache = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((u, ch)) = cache.get(&member) {
            if *u == url {
                return Some(ch.clone());
            }
        }
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).ok()?;
        let ch = self
            .dialer
            .lazy(endpoint.connect_timeout(Duration::from_secs(1)));
        cache.insert(member, (url, ch.clone()));
        Some(ch)
    }

    /// Runs `attempt` until it has a leader to talk to or the request timeout
    /// passes; `NotLeader` becomes a route to the leader unless `forwarded`.
    pub async fn route<T, F, Fut>(&self, forwarded: bool, mut attempt: F) -> Route<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DriverError>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let err = match attempt().await {
                Ok(v) => return Route::Done(Ok(v)),
                Err(e) => e,
            };
            match &err {
                DriverError::NotLeader { leader } if !forwarded => {
                    if let Some(ch) = self.peer_channel(leader.0) {
                        return Route::Forward(ch);
                    }
                }
                DriverError::NoLeader
                | DriverError::LeaderChanged
                | DriverError::LeaderUnreachable
                | DriverError::NotLeader { .. } => {}
                _ => return Route::Done(Err(to_status(err))),
            }
            if Instant::now() >= deadline {
                return Route::Done(Err(match err {
                    DriverError::LeaderChanged => to_status(err),
                    DriverError::NoLeader => to_status(err),
                    _ => Status::unavailable("etcdserver: request timed out"),
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes `op` for the caller of `ctx`; see `route`.
    pub async fn propose(&self, op: Op, ctx: &Ctx) -> Route {
        self.propose_as(op, Some(ctx.caller.clone()), ctx.forwarded)
            .await
    }

    /// Proposes `op` for `caller` (`None`: this member itself, as a login
    /// whose password it checked); see `route`.
    pub async fn propose_as(&self, op: Op, caller: Option<Caller>, forwarded: bool) -> Route {
        let r = tokio::time::timeout(
            self.request_timeout + Duration::from_secs(1),
            self.route(forwarded, || {
                self.driver.propose(op.clone(), caller.clone())
            }),
        )
        .await;
        match r {
            Err(_) => Route::Done(Err(Status::unavailable("etcdserver: request timed out"))),
            Ok(route) => route,
        }
    }

    /// Waits until this node may answer a linearizable read locally.
    pub async fn linearize(&self) -> Result<(), Status> {
        let r = tokio::time::timeout(
            self.request_timeout + Duration::from_secs(1),
            self.route(true, || self.driver.read_index()),
        )
        .await;
        match r {
            Err(_) => Err(Status::unavailable("etcdserver: request timed out")),
            Ok(Route::Done(r)) => r,
            // Never: routed as forwarded, a read index is answered here.
            Ok(Route::Forward(_)) => Ok(()),
        }
    }

    /// A channel to the leader for requests only the leader answers (lease
    /// keep-alive and time-to-live), or `None` if this node leads.
    pub async fn leader_route(&self) -> Result<Option<Channel>, Status> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let st = self.shared.status();
            if st.leader == self.shared.member_id {
                return Ok(None);
            }
            if st.leader != 0 {
                if let Some(ch) = self.peer_channel(st.leader) {
                    return Ok(Some(ch));
                }
            }
            if Instant::now() >= deadline {
                return Err(to_status(DriverError::NoLeader));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Calls the leader with `call` (`Ok(None)`: this node leads). While
    /// the leader cannot be reached (no connection, so nothing was sent: it
    /// died and the next one is not elected yet) it waits for the next
    /// leader and tries again, up to the request timeout.
    pub async fn call_leader<T, F, Fut>(&self, mut call: F) -> Result<Option<T>, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let Some(ch) = self.leader_route().await? else {
                return Ok(None);
            };
            match call(ch).await {
                Err(s) if nod_client::not_sent(&s) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => return r.map(Some),
            }
        }
    }

    /// Tags a request as forwarded, keeping its body and its caller.
    pub fn forward_request<T>(body: T, ctx: &Ctx) -> Request<T> {
        let mut r = Request::new(body);
        let md = r.metadata_mut();
        md.insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        if let Ok(user) = ctx.caller.user.parse() {
            md.insert(FORWARDED_USER, user);
        }
        md.insert(
            FORWARDED_AUTH_REVISION,
            tonic::metadata::MetadataValue::from(ctx.caller.auth_revision),
        );
        if let Some(tp) = crate::telemetry::current_traceparent() {
            crate::telemetry::inject(md, &tp);
        }
        r
    }

    /// Refuses a caller the auth store does not allow `check`.
    pub fn authorize(
        &self,
        check: impl FnOnce(&AuthState) -> Result<(), AuthError>,
    ) -> Result<(), Status> {
        check(self.shared.store().auth()).map_err(|e| to_status(DriverError::Auth(e)))
    }
}
