//! `Client`: the etcd v3 API over one channel per endpoint, writes and
//! linearizable reads sent to the leader, failed calls retried when that is
//! safe (`retry.rs`), within per-attempt timeouts and an overall deadline
//! (`CallOptions`). Typed errors, no printing. Cheap to clone: clones share
//! the endpoints and their health.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use nod_proto::etcd::mvccpb::KeyValue;
use nod_proto::nodserverpb::admin_client::AdminClient;
use nod_proto::nodserverpb::{MemberHealthRequest, MemberHealthResponse};

use nod_proto::etcd::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, *,
};

use crate::backoff::Jitter;
use crate::endpoints::{EndpointInfo, Pool, Route};
use crate::options::{CallOptions, ClientBuilder};
use crate::retry::{may_retry, Idempotence, CALL_TIMED_OUT};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("no endpoints given")]
    NoEndpoints,
    /// The TLS files given do not load.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

fn kv(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

fn maintenance(ch: Channel) -> MaintenanceClient<Channel> {
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

    pub(crate) fn from_pool(pool: Pool, options: CallOptions) -> Client {
        Client {
            pool: Arc::new(pool),
            options,
        }
    }

    /// This client with other call options (sharing endpoints and health).
    pub fn with_options(&self, options: CallOptions) -> Client {
        Client {
            pool: self.pool.clone(),
            options,
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
        self.pool.refresh().await;
    }

    /// Adds every member's client URLs (Cluster.MemberList) to the
    /// endpoints; returns how many were new.
    pub async fn sync_endpoints(&self) -> Result<usize> {
        let picked = self.pick(Route::Any, None).await?;
        let ch = picked.channel.clone();
        picked.finish(Ok(()));
        self.pool.sync_members(ch).await
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
                self.pool.refresh().await;
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

    /// Runs a unary call: picks an endpoint by `route`, limits the attempt,
    /// reports the outcome to the endpoint's health, and tries again (after
    /// a jittered back-off) while `retry::may_retry` allows and the
    /// deadline has not passed.
    async fn unary<T, F, Fut>(
        &self,
        route: Route,
        idempotence: Idempotence,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let opts = &self.options;
        let deadline = opts.deadline.and_then(|d| Instant::now().checked_add(d));
        let mut jitter = Jitter::from_entropy();
        let mut attempt = 0u32;
        loop {
            let picked = match self.pick(route, deadline).await {
                Ok(p) => p,
                Err(e) => return Err(e),
            };
            attempt += 1;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let limit = remaining.map_or(opts.attempt_timeout, |r| r.min(opts.attempt_timeout));
            let result = match tokio::time::timeout(limit, call(picked.channel.clone())).await {
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
        let deadline = self
            .options
            .deadline
            .and_then(|d| Instant::now().checked_add(d));
        let picked = self.pick(Route::Any, deadline).await?;
        let (tx, rx) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| ClientError::Protocol("watch stream closed".into()))?;
        let r = WatchClient::new(picked.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(ReceiverStream::new(rx))
            .await;
        match r {
            Ok(stream) => {
                picked.finish(Ok(()));
                Ok((tx, stream.into_inner()))
            }
            Err(s) => {
                picked.finish(Err(&s));
                Err(s.into())
            }
        }
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
        let deadline = self
            .options
            .deadline
            .and_then(|d| Instant::now().checked_add(d));
        let picked = self.pick(Route::Leader, deadline).await?;
        let (tx, rx) = mpsc::channel(4);
        tx.send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| ClientError::Protocol("keep-alive stream closed".into()))?;
        let r = LeaseClient::new(picked.channel.clone())
            .lease_keep_alive(ReceiverStream::new(rx))
            .await;
        match r {
            Ok(stream) => {
                picked.finish(Ok(()));
                Ok((tx, stream.into_inner()))
            }
            Err(s) => {
                picked.finish(Err(&s));
                Err(s.into())
            }
        }
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

    /// The whole backup stream, concatenated.
    pub async fn snapshot(&mut self) -> Result<Vec<u8>> {
        let picked = self.pick(Route::Any, None).await?;
        let r = async {
            let mut stream = maintenance(picked.channel.clone())
                .snapshot(SnapshotRequest {})
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(chunk) = stream.message().await? {
                out.extend_from_slice(&chunk.blob);
            }
            Ok::<_, Status>(out)
        }
        .await;
        match r {
            Ok(out) => {
                picked.finish(Ok(()));
                Ok(out)
            }
            Err(s) => {
                picked.finish(Err(&s));
                Err(s.into())
            }
        }
    }
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
}
