//! The load generator: etcd v3 requests over gRPC, so the same code drives
//! Nod and etcd. Workloads in the spirit of etcd's `benchmark` tool; every
//! request's latency goes into an HDR histogram (microseconds).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nod_client::tls::{ClientTls, Connector};
use nod_proto::etcd::etcdserverpb::auth_client::AuthClient;
use nod_proto::etcd::etcdserverpb::kv_client::KvClient;
use nod_proto::etcd::etcdserverpb::watch_client::WatchClient;
use nod_proto::etcd::etcdserverpb::AuthenticateRequest;
use nod_proto::etcd::etcdserverpb::{
    compare, request_op, watch_request, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use tokio::sync::Mutex;
use tonic::codegen::http::header::{HeaderName, HeaderValue};
use tonic::codegen::http::uri::{Authority, PathAndQuery, Scheme};
use tonic::codegen::http::{Request, Response, Uri};
use tonic::codegen::{Context, Poll, Service};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Put an 8-byte key (uniform over the key space) with a 256-byte value.
    Put,
    /// Get one key, linearizable (etcd's default).
    RangeLinearizable,
    /// Get one key, serializable (served by the member asked).
    RangeSerializable,
    /// Compare the key's mod revision, then put: a compare-and-swap.
    Txn,
    /// 90% linearizable gets, 10% puts.
    Mixed,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Put,
        Workload::RangeLinearizable,
        Workload::RangeSerializable,
        Workload::Txn,
        Workload::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::RangeLinearizable => "range (linearizable)",
            Workload::RangeSerializable => "range (serializable)",
            Workload::Txn => "txn compare-and-swap",
            Workload::Mixed => "mixed 90% read / 10% write",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        match s {
            "put" => Some(Workload::Put),
            "range" | "range-linearizable" => Some(Workload::RangeLinearizable),
            "range-serializable" => Some(Workload::RangeSerializable),
            "txn" => Some(Workload::Txn),
            "mixed" => Some(Workload::Mixed),
            _ => None,
        }
    }

    pub fn writes(self) -> bool {
        matches!(self, Workload::Put | Workload::Txn)
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub workload: Workload,
    pub clients: usize,
    pub duration: Duration,
    pub keyspace: u64,
    pub value_size: usize,
}

/// What one run measured.
pub struct Measured {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub hist: Histogram<u64>,
}

impl Measured {
    pub(crate) fn empty() -> Measured {
        Measured {
            ops: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            hist: histogram(),
        }
    }

    /// Adds `m`'s requests to these; the elapsed time is the longer one.
    pub(crate) fn merge(&mut self, m: &Measured) {
        self.ops += m.ops;
        self.errors += m.errors;
        self.elapsed = self.elapsed.max(m.elapsed);
        // Every histogram comes from `histogram()`, with the same bounds,
        // so adding one cannot go out of range.
        let _ = self.hist.add(&m.hist);
    }

    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency percentile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// How long a request may wait for its response before it fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection (TCP, and TLS when `https://`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The gRPC metadata an etcd client sends its auth token in.
const TOKEN: HeaderName = HeaderName::from_static("token");

/// The key the watch fan-out watches and writes.
pub const WATCH_KEY: &[u8] = b"watch-fanout";

/// How the client reaches the servers: the TLS configuration for
/// `https://` endpoints (the CA to trust and the client certificate to
/// show), and the auth token every request carries once logged in.
#[derive(Clone, Default)]
pub struct Access {
    /// `None`: `https://` endpoints are refused (the benchmark always
    /// brings its own CA).
    pub tls: Option<Arc<ClientTls>>,
    /// Sent as the `token` metadata of every call, as etcd's clients send
    /// it (clientv3 adds it per call, as a gRPC per-RPC credential).
    pub token: Option<HeaderValue>,
}

impl Access {
    /// Logs in as `user` through `endpoint` (Auth.Authenticate) and returns
    /// this access with the token. A simple token is known to every member
    /// (each applies the login), so one login serves every endpoint.
    pub async fn login(
        &self,
        endpoint: &str,
        user: &str,
        password: &str,
    ) -> Result<Access, String> {
        let conn = dial(
            endpoint,
            &Access {
                tls: self.tls.clone(),
                token: None,
            },
        )
        .await?;
        let r = AuthClient::new(conn)
            .authenticate(AuthenticateRequest {
                name: user.to_string(),
                password: password.to_string(),
            })
            .await
            .map_err(|e| format!("{endpoint}: login as {user}: {}", e.message()))?;
        let token = HeaderValue::from_str(&r.into_inner().token)
            .map_err(|e| format!("{endpoint}: the token does not fit in metadata: {e}"))?;
        Ok(Access {
            tls: self.tls.clone(),
            token: Some(token),
        })
    }
}

/// One HTTP/2 connection to a server, used directly as the gRPC clients'
/// transport. tonic's `Channel` queues every request through a buffer task
/// before hyper's own dispatch; going to hyper's sender directly saves that
/// hop (a channel send and a task wake per request), which matters because
/// the client shares the machine's cores with the servers it measures.
/// Every call fails after `REQUEST_TIMEOUT` without a response (as the
/// `Endpoint::timeout` of the `Channel` it replaces did). With a token,
/// every request carries it: the same header a tonic interceptor would
/// add, put in here where the request passes anyway, without the
/// interceptor's conversion of the request to tonic's and back.
#[derive(Clone)]
pub struct Conn {
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
    token: Option<HeaderValue>,
}

impl Conn {
    /// The same connection with another request timeout (a defragmentation
    /// of a large store takes longer than a request should).
    pub fn with_timeout(mut self, timeout: Duration) -> Conn {
        self.timeout = timeout;
        self
    }
}

impl Service<Request<tonic::body::Body>> for Conn {
    type Response = Response<hyper::body::Incoming>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        // tonic sets the path; HTTP/2 also needs the scheme and authority.
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        if let Some(token) = &self.token {
            req.headers_mut().insert(TOKEN, token.clone());
        }
        let (response, timeout) = (self.send.send_request(req), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err("no response within the request timeout".into()),
            }
        })
    }
}

/// Opens one HTTP/2 connection to `url` (`host:port`, `http://host:port`,
/// or `https://host:port` with `access.tls`), its requests carrying
/// `access.token`.
pub async fn dial(url: &str, access: &Access) -> Result<Conn, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url}: no host:port"))?;
    let send = if scheme == Scheme::HTTP {
        let port = authority.port_u16().unwrap_or(80);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((authority.host(), port)),
        )
        .await
        .map_err(|_| format!("{url}: connect timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("{url}: {e}"))?;
        handshake(hyper_util::rt::TokioIo::new(tcp), url).await?
    } else if scheme == Scheme::HTTPS {
        // nod-client's connector: TCP without Nagle, then rustls (ring)
        // with the client certificate, the server checked against the CA
        // and the URL's host, ALPN h2.
        let tls = access
            .tls
            .clone()
            .ok_or_else(|| format!("{url}: https:// needs a CA and a client certificate"))?;
        let mut connector = Connector::new(Some(tls));
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let io = tokio::time::timeout(CONNECT_TIMEOUT, connector.call(uri.clone()))
            .await
            .map_err(|_| format!("{url}: connect timed out"))?
            .map_err(|e| format!("{url}: {e}"))?;
        handshake(io, url).await?
    } else {
        return Err(format!(
            "{url}: only http:// and https:// endpoints are supported"
        ));
    };
    Ok(Conn {
        send,
        scheme,
        authority,
        timeout: REQUEST_TIMEOUT,
        token: access.token.clone(),
    })
}

/// The HTTP/2 handshake over an open connection; the connection's task is spawned.
async fn handshake<T>(
    io: T,
    url: &str,
) -> Result<hyper::client::conn::http2::SendRequest<tonic::body::Body>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// `conns` connections, spread over `endpoints` round robin.
pub async fn connect(
    endpoints: &[String],
    conns: usize,
    access: &Access,
) -> Result<Vec<Conn>, String> {
    let mut out = Vec::new();
    for i in 0..conns.max(1) {
        out.push(dial(&endpoints[i % endpoints.len()], access).await?);
    }
    Ok(out)
}

/// A small xorshift generator per client: cheap and reproducible.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The 8-byte key `i`.
pub fn key(i: u64) -> Vec<u8> {
    format!("{:08x}", i & 0xffff_ffff).into_bytes()
}

async fn one(
    kv: &mut KvClient<Conn>,
    w: Workload,
    rng: &mut Rng,
    keyspace: u64,
    value: &[u8],
) -> Result<(), tonic::Status> {
    let k = key(rng.next() % keyspace.max(1));
    let put = |k: Vec<u8>| PutRequest {
        key: k,
        value: value.to_vec(),
        ..Default::default()
    };
    match w {
        Workload::Put => kv.put(put(k)).await.map(|_| ()),
        Workload::RangeLinearizable | Workload::RangeSerializable => kv
            .range(RangeRequest {
                key: k,
                serializable: w == Workload::RangeSerializable,
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Workload::Txn => kv
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Less as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: k.clone(),
                    range_end: vec![],
                    target_union: Some(compare::TargetUnion::ModRevision(i64::MAX)),
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(put(k))),
                }],
                failure: vec![],
            })
            .await
            .map(|_| ()),
        Workload::Mixed => {
            if rng.next().is_multiple_of(10) {
                kv.put(put(k)).await.map(|_| ())
            } else {
                kv.range(RangeRequest {
                    key: k,
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        }
    }
}

/// Runs `spec` with `conns` connections spread over `endpoints` (connection
/// `i` to endpoint `i mod n`, client `c` on connection `c mod conns`), on
/// `shards` threads with a single-threaded runtime each. Each thread owns
/// its connections and the clients on them, so a request never wakes
/// another thread, and the requests its clients issue in one scheduler
/// turn leave in one write: the client costs the machine less CPU, which
/// is shared with the servers under test. Returns the merged measurement.
pub async fn run(
    endpoints: Vec<String>,
    access: Access,
    conns: usize,
    spec: Spec,
    shards: usize,
) -> Result<Measured, String> {
    tokio::task::spawn_blocking(move || run_sharded(&endpoints, &access, conns, &spec, shards))
        .await
        .map_err(|e| format!("load threads: {e}"))?
}

fn run_sharded(
    endpoints: &[String],
    access: &Access,
    conns: usize,
    spec: &Spec,
    shards: usize,
) -> Result<Measured, String> {
    let conns = conns.max(1);
    let shards = shards.clamp(1, conns);
    // Every thread connects first; the clock starts when all have.
    let connected = Arc::new(std::sync::Barrier::new(shards));
    let threads: Vec<_> = plan(endpoints, conns, spec.clients, shards)
        .into_iter()
        .enumerate()
        .map(|(s, (mine, clients))| {
            let spec = spec.clone();
            let access = access.clone();
            let connected = connected.clone();
            std::thread::Builder::new()
                .name(format!("load-{s}"))
                .spawn(move || -> Result<Measured, String> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async move {
                        let ch = connect(&mine, mine.len(), &access).await;
                        connected.wait();
                        Ok(run_clients(&ch?, &spec, &clients).await)
                    })
                })
                .map_err(|e| format!("cannot start a load thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut total = Measured::empty();
    for t in threads {
        let m = t
            .join()
            .map_err(|_| "a load thread panicked".to_string())??;
        total.merge(&m);
    }
    Ok(total)
}

/// Which connections (endpoint URLs, in order) and clients (client number,
/// index of its connection among the shard's) each of `shards` threads
/// runs. Connection `i` goes to endpoint `i mod n` and belongs to shard
/// `i mod shards`; client `c` rides connection `c mod conns`.
#[allow(clippy::type_complexity)]
fn plan(
    endpoints: &[String],
    conns: usize,
    clients: usize,
    shards: usize,
) -> Vec<(Vec<String>, Vec<(usize, usize)>)> {
    (0..shards)
        .map(|s| {
            let urls = (0..conns)
                .filter(|i| i % shards == s)
                .map(|i| endpoints[i % endpoints.len()].clone())
                .collect();
            let mine = (0..clients)
                .filter(|c| (c % conns) % shards == s)
                .map(|c| (c, (c % conns) / shards))
                .collect();
            (urls, mine)
        })
        .collect()
}

/// Runs `clients` (each a client number, which seeds its keys, and the
/// index of its channel) for the spec's duration.
async fn run_clients(channels: &[Conn], spec: &Spec, clients: &[(usize, usize)]) -> Measured {
    let start = Instant::now();
    let deadline = start + spec.duration;
    let value = Arc::new(vec![b'v'; spec.value_size]);
    let mut tasks = Vec::new();
    for &(c, ch) in clients {
        let mut kv = KvClient::new(channels[ch].clone());
        let value = value.clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1).wrapping_mul(0x2545_f491));
            let mut m = Measured::empty();
            while Instant::now() < deadline {
                let t = Instant::now();
                match one(&mut kv, spec.workload, &mut rng, spec.keyspace, &value).await {
                    Ok(()) => {
                        m.ops += 1;
                        let _ = m.hist.record((t.elapsed().as_micros() as u64).max(1));
                    }
                    Err(_) => m.errors += 1,
                }
            }
            m
        }));
    }
    let mut total = Measured::empty();
    for t in tasks {
        if let Ok(m) = t.await {
            total.merge(&m);
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Writes `count` keys (0..count) with `clients` concurrent clients: the data
/// set for reads and for the restart measurement.
pub async fn load(channels: &[Conn], count: u64, clients: usize, value_size: usize) -> u64 {
    load_values(channels, count, clients, value_size, false).await
}

/// As [`load`], with `random` values (incompressible: what a backup's
/// compression meets at worst) or all `v`.
pub async fn load_values(
    channels: &[Conn],
    count: u64,
    clients: usize,
    value_size: usize,
    random: bool,
) -> u64 {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let value = Arc::new(vec![b'v'; value_size]);
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let next = next.clone();
        let value = value.clone();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
        tasks.push(tokio::spawn(async move {
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return errors;
                }
                let value = if random {
                    (0..value_size.div_ceil(8))
                        .flat_map(|_| rng.next().to_le_bytes())
                        .take(value_size)
                        .collect()
                } else {
                    value.to_vec()
                };
                let req = PutRequest {
                    key: key(i),
                    value,
                    ..Default::default()
                };
                if kv.put(req).await.is_err() {
                    errors += 1;
                }
            }
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(0);
    }
    errors
}

/// Reads `[key, end)` as kube-apiserver lists: pages of `limit` keys (0:
/// one range of everything), later pages at the first page's revision and
/// from the last key + `\0`; `each` sees every page.
pub async fn list_pages(
    kv: &mut KvClient<Conn>,
    key: Vec<u8>,
    end: Vec<u8>,
    limit: i64,
    mut each: impl FnMut(&nod_proto::etcd::etcdserverpb::RangeResponse),
) -> Result<(), tonic::Status> {
    let mut from = key;
    let mut revision = 0;
    loop {
        let r = kv
            .range(RangeRequest {
                key: from,
                range_end: end.clone(),
                limit,
                revision,
                ..Default::default()
            })
            .await?
            .into_inner();
        if revision == 0 {
            revision = r.header.as_ref().map_or(0, |h| h.revision);
        }
        each(&r);
        match r.kvs.last() {
            Some(last) if r.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// Puts `count` keys, `concurrency` in flight over `conns`, the i-th key
/// and value made by `make(i)`; stops at the first error.
pub async fn put_all<F>(
    conns: &[Conn],
    count: u64,
    concurrency: usize,
    make: F,
) -> Result<(), String>
where
    F: Fn(u64) -> (Vec<u8>, Vec<u8>) + Send + Sync + 'static,
{
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for c in 0..concurrency.max(1) {
        let mut kv = KvClient::new(conns[c % conns.len()].clone());
        let (next, make) = (next.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), String>(());
                }
                let (key, value) = make(i);
                kv.put(PutRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("put {i} of {count}: {e}"))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Watch fan-out: `watchers` watch streams on one key (spread over the
/// channels), then `writes` puts to it; each event's latency is from just
/// before its put was sent to its arrival at a watcher.
pub async fn watch_fanout(channels: &[Conn], watchers: usize, writes: usize) -> Measured {
    const KEY: &[u8] = WATCH_KEY;
    let base = Instant::now();
    let hist = Arc::new(Mutex::new(histogram()));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let mut client = WatchClient::new(channels[w % channels.len()].clone());
        let hist = hist.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let _ = tx
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(
                        WatchCreateRequest {
                            key: KEY.to_vec(),
                            ..Default::default()
                        },
                    )),
                })
                .await;
            let Ok(resp) = client
                .watch(tokio_stream_from(rx))
                .await
                .map(|r| r.into_inner())
            else {
                return 0u64;
            };
            let mut stream = resp;
            let mut seen = 0u64;
            let mut local = histogram();
            let mut announced = false;
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
                let Ok(Ok(Some(m))) = msg else { break };
                if m.created && !announced {
                    announced = true;
                    let _ = ready.send(()).await;
                }
                for e in m.events {
                    let Some(kv) = e.kv else { continue };
                    if kv.value.len() >= 16 {
                        let sent =
                            u128::from_be_bytes(kv.value[..16].try_into().unwrap_or([0; 16]));
                        let now = base.elapsed().as_nanos();
                        let _ = local.record(((now.saturating_sub(sent)) / 1000).max(1) as u64);
                        seen += 1;
                    }
                }
                if seen >= writes as u64 {
                    break;
                }
            }
            drop(tx);
            let _ = hist.lock().await.add(&local);
            seen
        }));
    }
    drop(ready_tx);
    let mut created = 0;
    while created < watchers {
        match tokio::time::timeout(Duration::from_secs(20), ready_rx.recv()).await {
            Ok(Some(())) => created += 1,
            _ => break,
        }
    }
    let mut kv = KvClient::new(channels[0].clone());
    let start = Instant::now();
    let mut errors = 0u64;
    for _ in 0..writes {
        let mut value = base.elapsed().as_nanos().to_be_bytes().to_vec();
        value.resize(256, b'w');
        if kv
            .put(PutRequest {
                key: KEY.to_vec(),
                value,
                ..Default::default()
            })
            .await
            .is_err()
        {
            errors += 1;
        }
    }
    let mut delivered = 0u64;
    for t in tasks {
        delivered += t.await.unwrap_or(0);
    }
    let expected = (watchers * writes) as u64;
    let hist = std::mem::replace(&mut *hist.lock().await, histogram());
    Measured {
        ops: delivered,
        errors: errors + expected.saturating_sub(delivered),
        elapsed: start.elapsed(),
        hist,
    }
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, System};

    #[test]
    fn keys_are_eight_bytes_and_distinct() {
        assert_eq!(key(0).len(), 8);
        assert_eq!(key(u64::MAX).len(), 8);
        assert_ne!(key(1), key(2));
    }

    #[test]
    fn every_client_runs_once_on_its_connection() {
        let eps: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        for (conns, clients, shards) in
            [(32, 256, 2), (1, 1, 2), (4, 16, 2), (5, 7, 3), (32, 256, 1)]
        {
            let shards = shards.min(conns);
            let p = plan(&eps, conns, clients, shards);
            assert_eq!(p.len(), shards);
            let mut seen = vec![0; clients];
            let mut urls = 0;
            for (s, (mine, cs)) in p.iter().enumerate() {
                urls += mine.len();
                for &(c, ch) in cs {
                    seen[c] += 1;
                    // The connection it rides is global connection c mod conns,
                    // to endpoint (c mod conns) mod 3, owned by this shard.
                    let global = c % conns;
                    assert_eq!(global % shards, s, "{conns} {clients} {shards}");
                    assert_eq!(mine[ch], eps[global % eps.len()]);
                }
            }
            assert_eq!(urls, conns);
            assert!(
                seen.iter().all(|&n| n == 1),
                "{conns} {clients} {shards}: {seen:?}"
            );
        }
    }

    #[test]
    fn merging_adds_requests_and_keeps_the_longer_time() {
        let part = |ops, errors, secs, us: &[u64]| {
            let mut m = Measured::empty();
            m.ops = ops;
            m.errors = errors;
            m.elapsed = Duration::from_secs(secs);
            for &u in us {
                m.hist.record(u).unwrap();
            }
            m
        };
        let mut total = Measured::empty();
        total.merge(&part(3, 1, 5, &[10, 20, 30]));
        total.merge(&part(2, 0, 6, &[1000, 2000]));
        assert_eq!((total.ops, total.errors), (5, 1));
        assert_eq!(total.elapsed, Duration::from_secs(6));
        assert_eq!(total.hist.len(), 5);
        assert_eq!(total.hist.max(), total.hist.highest_equivalent(2000));
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut m = Measured {
            ops: 100,
            errors: 0,
            elapsed: Duration::from_secs(2),
            hist: histogram(),
        };
        for us in 1..=100u64 {
            m.hist.record(us * 1000).unwrap();
        }
        assert_eq!(m.throughput(), 50.0);
        assert!((m.ms(0.5) - 50.0).abs() < 0.1, "{}", m.ms(0.5));
        assert!((m.ms(0.99) - 99.0).abs() < 0.1, "{}", m.ms(0.99));
    }

    fn free_addr() -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// A server that takes the connection but never answers: the request
    /// fails after the timeout instead of holding its client forever.
    #[tokio::test]
    async fn a_request_without_an_answer_fails_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            use tokio::io::AsyncReadExt;
            while sock.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let mut conn = dial(&url, &Access::default()).await.unwrap();
        conn.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let mut kv = KvClient::new(conn);
        let r = kv.range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        });
        let e = tokio::time::timeout(Duration::from_secs(5), r)
            .await
            .expect("the request must end by itself")
            .unwrap_err();
        assert!(e.message().contains("timeout"), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        silent.abort();
    }

    #[tokio::test]
    async fn dialing_reports_what_is_wrong_with_the_endpoint() {
        let none = Access::default();
        let e = dial("ftp://127.0.0.1:1", &none).await.err().unwrap();
        assert!(e.contains("only http:// and https://"), "{e}");
        let e = dial("https://127.0.0.1:1", &none).await.err().unwrap();
        assert!(e.contains("needs a CA"), "{e}");
        let closed = free_addr();
        let url = format!("http://{closed}");
        let e = dial(&url, &none).await.err().unwrap();
        assert!(e.starts_with(&url), "{e}");
        let e = dial("http://", &none).await.err().unwrap();
        assert!(e.starts_with("http://:"), "{e}");
    }

    /// The `nod` binary of this build: `$NOD_BIN`, or `target/<profile>/nod`
    /// next to this test's `deps/` folder (`cargo build --release --bins`
    /// puts it there; a crate's tests cannot name another crate's binary).
    fn nod_bin() -> std::path::PathBuf {
        if let Ok(p) = std::env::var("NOD_BIN") {
            return p.into();
        }
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("nod");
        assert!(
            bin.exists(),
            "{} is missing: build it first (`cargo build --release --bin nod`) or set NOD_BIN",
            bin.display()
        );
        bin
    }

    /// One Nod member as a real process (its data and log in the returned
    /// folder) and its client URL; dropping the cluster kills it.
    async fn member() -> (Cluster, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::start_members(System::Nod, &nod_bin(), dir.path(), 1, None).unwrap();
        cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
        let ep = cluster.endpoints()[0].clone();
        (cluster, ep, dir)
    }

    /// Waits until the member serves a range; its revision then.
    async fn serving_revision(kv: &mut KvClient<Conn>) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A key the bench role may read, for the TLS + auth test.
            let r = kv
                .range(RangeRequest {
                    key: key(0),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(r) => return r.into_inner().header.unwrap().revision,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the member never served: {e}"),
            }
        }
    }

    /// The load runs its requests through `Conn` against a real Nod
    /// member: every put it counts is one revision on the server, and the
    /// keys it wrote hold the value it sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_counted_put_is_one_revision_on_a_real_server() {
        let (mut server, ep, _dir) = member().await;
        let conns = connect(std::slice::from_ref(&ep), 1, &Access::default())
            .await
            .unwrap();
        let mut kv = KvClient::new(conns[0].clone());
        let before = serving_revision(&mut kv).await;
        let spec = Spec {
            workload: Workload::Put,
            clients: 8,
            duration: Duration::from_millis(800),
            keyspace: 16,
            value_size: 100,
        };
        let m = run(vec![ep.clone()], Access::default(), 3, spec, 2)
            .await
            .unwrap();
        assert!(m.ops > 0, "no put succeeded");
        assert_eq!(m.errors, 0);
        assert_eq!(m.hist.len(), m.ops);
        let all = kv
            .range(RangeRequest {
                key: key(0),
                range_end: key(16),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let after = all.header.unwrap().revision;
        assert_eq!(
            (after - before) as u64,
            m.ops,
            "one revision per counted put"
        );
        assert!(!all.kvs.is_empty() && all.kvs.len() <= 16);
        for kv in &all.kvs {
            assert_eq!(kv.value, vec![b'v'; 100]);
        }
        drop((kv, conns));
        server.stop();
    }

    /// The fan-out counts each watcher's copy of each put exactly once: every
    /// watcher sees every write, and nothing is reported missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_fan_out_counts_every_event_each_watcher_gets() {
        let (mut server, ep, _dir) = member().await;
        let conns = connect(std::slice::from_ref(&ep), 2, &Access::default())
            .await
            .unwrap();
        serving_revision(&mut KvClient::new(conns[0].clone())).await;
        let m = watch_fanout(&conns, 5, 20).await;
        assert_eq!(m.ops, 100, "5 watchers × 20 writes");
        assert_eq!(m.errors, 0);
        assert_eq!(m.hist.len(), 100, "one latency per event");
        drop(conns);
        server.stop();
    }

    /// The TLS + auth configuration on one real member of each system
    /// (`nod`, and etcd 3.4 from `$ETCD_BIN` or the path): over `https://`
    /// with the client certificate, the load logs in and every put it
    /// counts is one revision; the same load without the token has every
    /// call refused (the certificate's common name is no user); the token
    /// opens only the bench role's keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_and_auth_pass_only_with_the_token_on_both_systems() {
        use crate::security::{self, Security};
        let etcd = std::path::PathBuf::from(std::env::var("ETCD_BIN").unwrap_or("etcd".into()));
        for (system, bin) in [(System::Nod, nod_bin()), (System::Etcd, etcd)] {
            let dir = tempfile::tempdir().unwrap();
            let sec = Security::create(&dir.path().join("tls")).unwrap();
            let mut server = Cluster::start_members(system, &bin, dir.path(), 1, Some(&sec))
                .unwrap_or_else(|e| panic!("{e} (./scripts/setup installs etcd)"));
            server
                .wait_ready(Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let ep = server.endpoints()[0].clone();
            assert!(ep.starts_with("https://"), "{ep}");
            let no_token = server.access().clone();
            security::enable_auth(&ep, &no_token).await.unwrap();
            let access = no_token
                .login(&ep, security::USER, security::PASSWORD)
                .await
                .unwrap();
            let wrong = no_token
                .login(&ep, security::USER, "not the password")
                .await;
            assert!(
                wrong.is_err(),
                "{}: a wrong password logs in",
                system.name()
            );

            let mut kv = KvClient::new(dial(&ep, &access).await.unwrap());
            let before = serving_revision(&mut kv).await;
            let spec = Spec {
                workload: Workload::Put,
                clients: 8,
                duration: Duration::from_millis(800),
                keyspace: 16,
                value_size: 100,
            };
            let m = run(vec![ep.clone()], access.clone(), 3, spec.clone(), 2)
                .await
                .unwrap();
            assert!(m.ops > 0, "{}: no put succeeded", system.name());
            assert_eq!(m.errors, 0, "{}", system.name());
            let after = serving_revision(&mut kv).await;
            assert_eq!((after - before) as u64, m.ops, "{}", system.name());

            let refused = run(
                vec![ep.clone()],
                no_token.clone(),
                1,
                Spec {
                    duration: Duration::from_millis(300),
                    ..spec
                },
                1,
            )
            .await
            .unwrap();
            assert_eq!(
                refused.ops,
                0,
                "{}: a put passed without the token",
                system.name()
            );
            assert!(refused.errors > 0);
            let outside = kv
                .put(PutRequest {
                    key: b"/not-the-bench-keys".to_vec(),
                    value: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                outside.message(),
                "etcdserver: permission denied",
                "{}",
                system.name()
            );
            assert_eq!(serving_revision(&mut kv).await, after);
            drop(kv);
            server.stop();
        }
    }
}
