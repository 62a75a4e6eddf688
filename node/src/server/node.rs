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
use crate::command::Op;
use crate::tls::Dialer;
use nod_proto::etcd::etcdserverpb::ResponseHeader;

/// Metadata key marking a request another member already forwarded.
pub const FORWARDED: &str = "nod-forwarded";

pub struct Node {
    pub shared: Arc<Shared>,
    pub driver: DriverHandle,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    leaders: Mutex<HashMap<u64, (String, Channel)>>,
    /// Dials the leader's peer port (peer TLS when it is on).
    dialer: Dialer,
}

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
    fn leader_channel(&self, leader: u64) -> Option<Channel> {
        let url = self
            .shared
            .store()
            .member(leader)
            .and_then(|m| m.peer_ur_ls.first().cloned())?;
        let mut cache = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((u, ch)) = cache.get(&leader) {
            if *u == url {
                return Some(ch.clone());
            }
        }
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).ok()?;
        let ch = self
            .dialer
            .lazy(endpoint.connect_timeout(Duration::from_secs(1)));
        cache.insert(leader, (url, ch.clone()));
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
                    if let Some(ch) = self.leader_channel(leader.0) {
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

    /// Proposes `op`; see `route`.
    pub async fn propose(&self, op: Op, forwarded: bool) -> Route {
        let started = Instant::now();
        let r = tokio::time::timeout(
            self.request_timeout + Duration::from_secs(1),
            self.route(forwarded, || self.driver.propose(op.clone())),
        )
        .await;
        let _ = started;
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
                if let Some(ch) = self.leader_channel(st.leader) {
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

    /// Tags a request as forwarded, keeping its body.
    pub fn forward_request<T>(body: T) -> Request<T> {
        let mut r = Request::new(body);
        r.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        r
    }
}
