//! `Client`: the etcd v3 API over one load-balanced channel to every
//! endpoint given, retrying calls that surely never left. Typed options,
//! typed errors, no printing.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use nod_proto::nodserverpb::admin_client::AdminClient;
use nod_proto::nodserverpb::{MemberHealthRequest, MemberHealthResponse};

use nod_proto::etcd::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, *,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("no endpoints given")]
    NoEndpoints,
    /// The server answered with an error (etcd's code and message).
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
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

#[derive(Clone)]
pub struct Client {
    pub kv: KvClient<Channel>,
    pub watch: WatchClient<Channel>,
    pub lease: LeaseClient<Channel>,
    pub cluster: ClusterClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
    /// Nod's extensions (member health).
    pub admin: AdminClient<Channel>,
}

/// Turns `host:port` or a URL into a URL.
fn normalize(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// Whether a request surely never reached a server (no connection could be
/// made), so sending it again cannot apply it twice.
pub fn not_sent(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.message().contains("tcp connect error")
}

/// Runs a unary call, retrying (up to 5 times, backing off) while the
/// endpoint it went to refuses connections: with several endpoints, the
/// balancer tries another.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let mut tries = 0u64;
    loop {
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if not_sent(&s) && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
}

impl Client {
    /// Connects lazily to every endpoint; requests go to whichever is up.
    pub fn connect(endpoints: &[String], timeout: Duration) -> Result<Client> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut list = Vec::new();
        for e in endpoints {
            let url = normalize(e.trim());
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|err| ClientError::Endpoint(e.clone(), err.to_string()))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(timeout);
            list.push(ep);
        }
        let channel = Channel::balance_list(list.into_iter());
        Ok(Client::from_channel(channel))
    }

    pub fn from_channel(channel: Channel) -> Client {
        let max = 64 * 1024 * 1024;
        Client {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(max),
            watch: WatchClient::new(channel.clone()).max_decoding_message_size(max),
            lease: LeaseClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel.clone()).max_decoding_message_size(max),
            admin: AdminClient::new(channel),
        }
    }

    pub async fn put(&mut self, req: PutRequest) -> Result<PutResponse> {
        {
            let client = self.kv.clone();
            retrying(move || {
                let mut client = client.clone();
                let req = req.clone();
                async move { client.put(req).await }
            })
            .await
        }
    }

    pub async fn range(&mut self, req: RangeRequest) -> Result<RangeResponse> {
        {
            let client = self.kv.clone();
            retrying(move || {
                let mut client = client.clone();
                let req = req.clone();
                async move { client.range(req).await }
            })
            .await
        }
    }

    pub async fn delete(&mut self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        {
            let client = self.kv.clone();
            retrying(move || {
                let mut client = client.clone();
                let req = req.clone();
                async move { client.delete_range(req).await }
            })
            .await
        }
    }

    pub async fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse> {
        {
            let client = self.kv.clone();
            retrying(move || {
                let mut client = client.clone();
                let req = req.clone();
                async move { client.txn(req).await }
            })
            .await
        }
    }

    pub async fn compact(&mut self, revision: i64) -> Result<CompactionResponse> {
        {
            let client = self.kv.clone();
            let req = CompactionRequest {
                revision,
                physical: false,
            };
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.compact(req).await }
            })
            .await
        }
    }

    /// Opens a watch stream with one watcher; send more requests through the sender.
    pub async fn watch(
        &mut self,
        create: WatchCreateRequest,
    ) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>)> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| ClientError::Protocol("watch stream closed".into()))?;
        let stream = self
            .watch
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, stream))
    }

    pub async fn lease_grant(&mut self, ttl: i64, id: i64) -> Result<LeaseGrantResponse> {
        {
            let client = self.lease.clone();
            let req = LeaseGrantRequest { ttl, id };
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.lease_grant(req).await }
            })
            .await
        }
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse> {
        {
            let client = self.lease.clone();
            let req = LeaseRevokeRequest { id };
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.lease_revoke(req).await }
            })
            .await
        }
    }

    /// Keeps a lease alive: one request per `every`, yielding each answer.
    pub async fn lease_keep_alive(
        &mut self,
        id: i64,
    ) -> Result<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        Streaming<LeaseKeepAliveResponse>,
    )> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| ClientError::Protocol("keep-alive stream closed".into()))?;
        let stream = self
            .lease
            .lease_keep_alive(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, stream))
    }

    pub async fn lease_time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse> {
        {
            let client = self.lease.clone();
            let req = LeaseTimeToLiveRequest { id, keys };
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.lease_time_to_live(req).await }
            })
            .await
        }
    }

    pub async fn lease_list(&mut self) -> Result<LeaseLeasesResponse> {
        {
            let client = self.lease.clone();
            let req = LeaseLeasesRequest {};
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.lease_leases(req).await }
            })
            .await
        }
    }

    pub async fn member_list(&mut self) -> Result<MemberListResponse> {
        {
            let client = self.cluster.clone();
            let req = MemberListRequest { linearizable: true };
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.member_list(req).await }
            })
            .await
        }
    }

    pub async fn member_add(
        &mut self,
        peer_urls: Vec<String>,
        learner: bool,
    ) -> Result<MemberAddResponse> {
        {
            let client = self.cluster.clone();
            let req = MemberAddRequest {
                peer_ur_ls: peer_urls,
                is_learner: learner,
            };
            retrying(move || {
                let mut client = client.clone();
                let req = req.clone();
                async move { client.member_add(req).await }
            })
            .await
        }
    }

    pub async fn member_remove(&mut self, id: u64) -> Result<MemberRemoveResponse> {
        {
            let client = self.cluster.clone();
            let req = MemberRemoveRequest { id };
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.member_remove(req).await }
            })
            .await
        }
    }

    pub async fn member_promote(&mut self, id: u64) -> Result<MemberPromoteResponse> {
        {
            let client = self.cluster.clone();
            let req = MemberPromoteRequest { id };
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.member_promote(req).await }
            })
            .await
        }
    }

    pub async fn member_update(
        &mut self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> Result<MemberUpdateResponse> {
        {
            let client = self.cluster.clone();
            let req = MemberUpdateRequest {
                id,
                peer_ur_ls: peer_urls,
            };
            retrying(move || {
                let mut client = client.clone();
                let req = req.clone();
                async move { client.member_update(req).await }
            })
            .await
        }
    }

    /// The member table with role, health and lag, as the leader sees it.
    pub async fn member_health(&mut self) -> Result<MemberHealthResponse> {
        let client = self.admin.clone();
        retrying(move || {
            let mut client = client.clone();
            async move { client.member_health(MemberHealthRequest {}).await }
        })
        .await
    }

    pub async fn status(&mut self) -> Result<StatusResponse> {
        {
            let client = self.maintenance.clone();
            let req = StatusRequest {};
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.status(req).await }
            })
            .await
        }
    }

    pub async fn move_leader(&mut self, target: u64) -> Result<MoveLeaderResponse> {
        {
            let client = self.maintenance.clone();
            let req = MoveLeaderRequest { target_id: target };
            retrying(move || {
                let mut client = client.clone();
                let req = req;
                async move { client.move_leader(req).await }
            })
            .await
        }
    }

    /// The whole backup stream, concatenated.
    pub async fn snapshot(&mut self) -> Result<Vec<u8>> {
        let mut stream = self
            .maintenance
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            out.extend_from_slice(&chunk.blob);
        }
        Ok(out)
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
