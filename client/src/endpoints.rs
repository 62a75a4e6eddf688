//! `Pool`: one channel per endpoint, each with its health (a circuit
//! breaker and a back-off after transport failures) and the member id it
//! answers for, plus the leader as last learned (Maintenance.Status). Picks
//! the endpoint for each call: the leader for writes and linearizable
//! reads when it is healthy, otherwise any healthy endpoint, round-robin.
//! Does I/O only in `refresh` (Status calls, with the caller's login token);
//! the rest is bookkeeping.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint as TonicEndpoint};
use tonic::Status;

use nod_proto::etcd::etcdserverpb::{
    maintenance_client::MaintenanceClient, MemberListResponse, StatusRequest,
};

use crate::auth::{with_token, AuthChannel, Token};
use crate::backoff::{Backoff, Jitter};
use crate::breaker::{BreakerState, CircuitBreaker};
use crate::retry::{is_leader_failure, is_transport_failure};
use crate::tls::{ClientTls, Connector, TlsOptions};
use crate::{ClientError, Result};

/// Where a call should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The leader if known and healthy, else any healthy endpoint (which
    /// forwards to the leader).
    Leader,
    /// Any healthy endpoint.
    Any,
}

/// How the pool treats failing endpoints.
#[derive(Clone, Debug)]
pub struct HealthSettings {
    /// Consecutive failures that open an endpoint's breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker keeps calls away (doubles while trials fail).
    pub breaker_cool_down: Duration,
    /// The back-off before an endpoint that failed at the transport is
    /// tried again (while others are healthy).
    pub unhealthy_backoff: Backoff,
    pub connect_timeout: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            breaker_threshold: 3,
            breaker_cool_down: Duration::from_secs(1),
            unhealthy_backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// What the pool knows about one endpoint, as `Client::endpoints` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub url: String,
    /// The member answering there, once learned.
    pub member_id: Option<u64>,
    pub healthy: bool,
    pub breaker: BreakerState,
    pub is_leader: bool,
}

struct Endpoint {
    url: String,
    channel: Channel,
    member_id: Option<u64>,
    breaker: CircuitBreaker,
    /// Consecutive transport failures.
    failures: u32,
    unhealthy_until: Option<Instant>,
}

impl Endpoint {
    fn healthy(&self, now: Instant) -> bool {
        self.breaker.is_available(now) && self.unhealthy_until.is_none_or(|u| now >= u)
    }

    /// When it may be tried again.
    fn ready_at(&self, now: Instant) -> Instant {
        let breaker = match self.breaker.state() {
            BreakerState::Open { until } => *until,
            // A trial is out: its outcome comes soon.
            BreakerState::HalfOpen => now + Duration::from_millis(20),
            BreakerState::Closed { .. } => now,
        };
        breaker.max(self.unhealthy_until.unwrap_or(now))
    }
}

struct State {
    endpoints: Vec<Endpoint>,
    leader: Option<u64>,
    next: usize,
    jitter: Jitter,
    last_refresh: Option<Instant>,
}

pub(crate) struct Pool {
    state: Mutex<State>,
    refreshing: tokio::sync::Mutex<()>,
    settings: HealthSettings,
    connector: Connector,
    tls: bool,
}

/// Turns `host:port` or a URL into a URL: a bare address is `https://`
/// when the client has TLS options, `http://` otherwise.
pub(crate) fn normalize(endpoint: &str, tls: bool) -> String {
    let e = endpoint.trim();
    if e.contains("://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

/// A picked endpoint. Report the call's outcome with `finish`; dropped
/// unreported (the caller gave up), it frees a half-open breaker's trial.
pub(crate) struct Picked {
    pool: Arc<Pool>,
    index: usize,
    pub channel: Channel,
    pub url: String,
    done: bool,
}

impl Picked {
    pub fn finish(mut self, result: std::result::Result<(), &Status>) {
        self.done = true;
        self.pool.report(self.index, result);
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        if !self.done {
            let now = Instant::now();
            self.pool.lock().endpoints[self.index]
                .breaker
                .on_abandoned(now);
        }
    }
}

impl Pool {
    pub fn new(
        urls: &[String],
        settings: HealthSettings,
        tls: Option<&TlsOptions>,
    ) -> Result<Pool> {
        if urls.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let client_tls = match tls {
            Some(t) => Some(Arc::new(ClientTls::new(t).map_err(ClientError::Tls)?)),
            None => None,
        };
        let connector = Connector::new(client_tls);
        let tls = tls.is_some_and(TlsOptions::is_set);
        let mut endpoints = Vec::new();
        for u in urls {
            let url = normalize(u, tls);
            if endpoints.iter().any(|e: &Endpoint| e.url == url) {
                continue;
            }
            endpoints.push(
                Self::endpoint(&url, &settings, &connector)
                    .map_err(|e| ClientError::Endpoint(u.clone(), e))?,
            );
        }
        Ok(Pool {
            state: Mutex::new(State {
                endpoints,
                leader: None,
                next: 0,
                jitter: Jitter::from_entropy(),
                last_refresh: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
            settings,
            connector,
            tls,
        })
    }

    fn endpoint(
        url: &str,
        s: &HealthSettings,
        connector: &Connector,
    ) -> std::result::Result<Endpoint, String> {
        let endpoint = TonicEndpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(s.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = connector.channel(endpoint);
        Ok(Endpoint {
            url: url.to_string(),
            channel,
            member_id: None,
            breaker: CircuitBreaker::new(s.breaker_threshold, s.breaker_cool_down),
            failures: 0,
            unhealthy_until: None,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn leader_known(&self) -> bool {
        let st = self.lock();
        st.leader
            .is_some_and(|l| st.endpoints.iter().any(|e| e.member_id == Some(l)))
    }

    /// The endpoint for a call, or how long until one may be tried.
    pub fn pick(self: &Arc<Self>, route: Route) -> std::result::Result<Picked, Duration> {
        let now = Instant::now();
        let mut st = self.lock();
        let n = st.endpoints.len();
        let mut chosen = None;
        if route == Route::Leader {
            if let Some(l) = st.leader {
                chosen = st
                    .endpoints
                    .iter()
                    .position(|e| e.member_id == Some(l) && e.healthy(now));
            }
        }
        if chosen.is_none() {
            let start = st.next;
            chosen = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| st.endpoints[i].healthy(now));
            if let Some(i) = chosen {
                st.next = (i + 1) % n;
            }
        }
        let Some(i) = chosen else {
            let wait = st
                .endpoints
                .iter()
                .map(|e| e.ready_at(now))
                .min()
                .unwrap_or(now)
                .saturating_duration_since(now);
            return Err(wait.max(Duration::from_millis(5)));
        };
        let e = &mut st.endpoints[i];
        if !e.breaker.try_acquire(now) {
            return Err(Duration::from_millis(5));
        }
        Ok(Picked {
            pool: self.clone(),
            index: i,
            channel: e.channel.clone(),
            url: e.url.clone(),
            done: false,
        })
    }

    fn report(&self, index: usize, result: std::result::Result<(), &Status>) {
        let now = Instant::now();
        let mut st = self.lock();
        let leader = st.leader;
        let State {
            endpoints, jitter, ..
        } = &mut *st;
        let e = &mut endpoints[index];
        let mut forget_leader = false;
        match result {
            Err(s) if is_transport_failure(s) => {
                e.breaker.on_failure(now);
                e.failures += 1;
                e.unhealthy_until =
                    Some(now + self.settings.unhealthy_backoff.delay(e.failures, jitter));
                forget_leader = leader.is_some() && e.member_id == leader;
            }
            other => {
                // The member answered: the endpoint works, whatever it said.
                e.breaker.on_success();
                e.failures = 0;
                e.unhealthy_until = None;
                if let Err(s) = other {
                    forget_leader = is_leader_failure(s);
                }
            }
        }
        if forget_leader {
            st.leader = None;
        }
    }

    pub fn forget_leader(&self) {
        self.lock().leader = None;
    }

    /// Asks every endpoint for its Status (at most once per 100 ms across
    /// callers), with `token` if the client holds one: learns which member
    /// answers where and who leads (the leader named at the highest term
    /// wins).
    pub async fn refresh(self: &Arc<Self>, token: Option<&Token>) {
        let _gate = self.refreshing.lock().await;
        let targets: Vec<(usize, AuthChannel)> = {
            let st = self.lock();
            if st
                .last_refresh
                .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
            {
                return;
            }
            st.endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (i, with_token(e.channel.clone(), token)))
                .collect()
        };
        let asks = targets.into_iter().map(|(i, ch)| async move {
            let call = async move { MaintenanceClient::new(ch).status(StatusRequest {}).await };
            let r = match tokio::time::timeout(Duration::from_secs(1), call).await {
                Ok(r) => r.map(|r| r.into_inner()),
                Err(_) => Err(Status::deadline_exceeded(crate::retry::CALL_TIMED_OUT)),
            };
            (i, r)
        });
        let answers = futures::future::join_all(asks).await;
        let mut best: Option<(u64, u64)> = None; // (term, leader)
        for (i, r) in &answers {
            match r {
                Ok(s) => {
                    self.report(*i, Ok(()));
                    let member = s.header.as_ref().map(|h| h.member_id).filter(|&m| m != 0);
                    self.lock().endpoints[*i].member_id = member;
                    if s.leader != 0 && best.is_none_or(|(t, _)| s.raft_term > t) {
                        best = Some((s.raft_term, s.leader));
                    }
                }
                Err(s) => self.report(*i, Err(s)),
            }
        }
        let mut st = self.lock();
        st.leader = best.map(|(_, l)| l);
        st.last_refresh = Some(Instant::now());
    }

    /// Adds the client URLs of every member in `list` (Cluster.MemberList)
    /// not yet in the pool, as etcd's client does with `AutoSyncInterval`;
    /// returns how many were new. Endpoints are never removed here: one the
    /// caller gave stays.
    pub fn add_members(&self, list: MemberListResponse) -> usize {
        let mut st = self.lock();
        let mut added = 0;
        for m in list.members {
            for u in m.client_ur_ls {
                let url = normalize(&u, self.tls);
                if st.endpoints.iter().any(|e| e.url == url) {
                    continue;
                }
                if let Ok(mut e) = Self::endpoint(&url, &self.settings, &self.connector) {
                    e.member_id = Some(m.id);
                    st.endpoints.push(e);
                    added += 1;
                }
            }
        }
        added
    }

    pub fn infos(&self) -> Vec<EndpointInfo> {
        let now = Instant::now();
        let st = self.lock();
        st.endpoints
            .iter()
            .map(|e| EndpointInfo {
                url: e.url.clone(),
                member_id: e.member_id,
                healthy: e.healthy(now),
                breaker: e.breaker.state().clone(),
                is_leader: e.member_id.is_some() && e.member_id == st.leader,
            })
            .collect()
    }
}
