//! The `nod` command. Only wiring lives here: flags in, library calls out,
//! results printed.
//!
//! Exit codes: 0 success; 1 the server refused the request (its etcd error
//! is printed); 2 bad usage; 3 the cluster could not be reached or had no
//! leader in time.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nod::gossip::bootstrap::Founders;
use nod::gossip::GossipConfig;
use nod::server::autopilot::AutopilotConfig;
use nod::server::{self, ClusterState, Discovery, ServerConfig};
use nod_client::txn::parse_txn;
use nod_client::{Client, ClientError, KeySpan};
use nod_proto::etcd::etcdserverpb::{
    range_request, DeleteRangeRequest, PutRequest, RangeRequest, ResponseHeader, WatchCreateRequest,
};
use nod_proto::etcd::mvccpb::{event::EventType, KeyValue};
use serde_json::{json, Value};

/// mimalloc instead of glibc's malloc: under 256 writers glibc's allocator
/// was a sixth of the leader's CPU (perf), and its per-thread arenas held
/// memory long after a burst.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nod",
    version,
    about = "Nod: a strongly consistent key-value store replicated with Raft, speaking the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    client: ClientFlags,
}

#[derive(Args, Clone)]
struct ClientFlags {
    /// Comma-separated client endpoints (host:port or URLs).
    #[arg(
        long,
        env = "NOD_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short = 'w', env = "NOD_OUTPUT", value_enum, default_value_t = Output::Simple, global = true)]
    output: Output,
    /// Give up on a request after this many seconds.
    #[arg(long, env = "NOD_COMMAND_TIMEOUT", default_value_t = 10, global = true)]
    command_timeout: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Simple,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one Nod server (a member of a cluster).
    Server(Box<ServerFlags>),
    /// Runs a whole local cluster on loopback, for development: the quickest way to try Nod.
    Dev(DevFlags),
    /// Puts a key.
    Put {
        key: String,
        /// The value; read from standard input when omitted.
        value: Option<String>,
        /// Attach the key to this lease (hex id, as `lease grant` prints it).
        #[arg(long)]
        lease: Option<String>,
        /// Print the previous key-value.
        #[arg(long)]
        prev_kv: bool,
        /// Keep the current value (update the lease only).
        #[arg(long)]
        ignore_value: bool,
        /// Keep the current lease.
        #[arg(long)]
        ignore_lease: bool,
    },
    /// Gets a key or a range of keys.
    Get {
        key: String,
        /// End of the range [key, range_end).
        range_end: Option<String>,
        #[command(flatten)]
        span: SpanFlags,
        /// At most this many keys.
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Read at this revision (0: latest).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Keys without values.
        #[arg(long)]
        keys_only: bool,
        /// Only the number of keys.
        #[arg(long)]
        count_only: bool,
        /// Serve from the contacted member without a quorum round (may be stale).
        #[arg(long, visible_alias = "consistency-s")]
        serializable: bool,
        /// Sort by KEY, VERSION, CREATE, MODIFY or VALUE.
        #[arg(long)]
        sort_by: Option<String>,
        /// ASCEND or DESCEND.
        #[arg(long)]
        order: Option<String>,
        /// Print only values.
        #[arg(long)]
        print_value_only: bool,
    },
    /// Deletes a key or a range of keys.
    Del {
        key: String,
        range_end: Option<String>,
        #[command(flatten)]
        span: SpanFlags,
        /// Print the deleted key-values.
        #[arg(long)]
        prev_kv: bool,
    },
    /// Runs a transaction read from standard input, in etcdctl's format:
    /// compares, a blank line, success operations, a blank line, failure operations.
    Txn,
    /// Watches a key or range and prints events until interrupted.
    Watch {
        key: String,
        range_end: Option<String>,
        #[command(flatten)]
        span: SpanFlags,
        /// Start at this revision (replaying history).
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// Include previous values.
        #[arg(long)]
        prev_kv: bool,
        /// Exit after this many events.
        #[arg(long)]
        max_events: Option<u64>,
    },
    /// Leases: grant, revoke, keep-alive, timetolive, list.
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Members: list, add, remove, promote, update.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Prints each endpoint's status (leader, Raft index and term, db size).
    Status,
    /// Snapshots (backups) of the key space.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Compacts history up to a revision.
    Compact { revision: i64 },
    /// Hands leadership to another voter (hex member id).
    MoveLeader { target: String },
    /// Runs a simulated cluster (3 to 7 in-memory nodes, clients and a nemesis
    /// injecting faults) and checks every safety property and linearizability.
    Sim {
        /// The seed to run; every run of one seed is identical.
        #[arg(long, env = "NOD_SIM_SEED", default_value_t = 1)]
        seed: u64,
        /// Run this many seeds, starting at --seed, instead of one.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        seeds: u64,
        /// Print every fault, election and client operation of a single seed.
        #[arg(long)]
        trace: bool,
    },
}

#[derive(Args, Clone, Default)]
struct SpanFlags {
    /// Treat the key as a prefix.
    #[arg(long)]
    prefix: bool,
    /// Every key from the key on.
    #[arg(long)]
    from_key: bool,
}

impl SpanFlags {
    fn span(&self, range_end: &Option<String>) -> Result<KeySpan, String> {
        match (self.prefix, self.from_key, range_end) {
            (true, true, _) => Err("--prefix and --from-key exclude each other".into()),
            (true, _, Some(_)) | (_, true, Some(_)) => {
                Err("a range end cannot be combined with --prefix or --from-key".into())
            }
            (true, false, None) => Ok(KeySpan::Prefix),
            (false, true, None) => Ok(KeySpan::FromKey),
            (false, false, Some(end)) => Ok(KeySpan::Until(end.as_bytes().to_vec())),
            (false, false, None) => Ok(KeySpan::Single),
        }
    }
}

#[derive(Subcommand)]
enum LeaseCommand {
    /// Grants a lease with a TTL in seconds.
    Grant { ttl: i64 },
    /// Revokes a lease, deleting its keys.
    Revoke { id: String },
    /// Keeps a lease alive until interrupted (or once).
    KeepAlive {
        id: String,
        #[arg(long)]
        once: bool,
    },
    /// Shows a lease's remaining time (and keys with --keys).
    Timetolive {
        id: String,
        #[arg(long)]
        keys: bool,
    },
    /// Lists leases.
    List,
}

#[derive(Subcommand)]
enum MemberCommand {
    List,
    /// Role, health and replication lag of every member (the leader's view).
    Health,
    /// Adds a member; start it with `nod server --initial-cluster-state existing`.
    Add {
        name: String,
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add as a non-voting learner (promote it once it caught up).
        #[arg(long)]
        learner: bool,
    },
    Remove {
        id: String,
    },
    Promote {
        id: String,
    },
    Update {
        id: String,
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Saves a backup of the whole key space to a file.
    Save { file: PathBuf },
}

#[derive(Args)]
struct ServerFlags {
    /// Human-readable name of this member; unique in the cluster.
    #[arg(long, env = "NOD_NAME", default_value = "default")]
    name: String,
    /// Where the Raft log, the state machine and snapshots live.
    #[arg(long, env = "NOD_DATA_DIR", default_value = "./nod-data/default")]
    data_dir: PathBuf,
    /// Address to serve clients (the etcd v3 API) on.
    #[arg(
        long,
        env = "NOD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    listen_client_urls: String,
    /// Client URL other members and clients use to reach this member (default: the listen URL).
    #[arg(long, env = "NOD_ADVERTISE_CLIENT_URLS")]
    advertise_client_urls: Option<String>,
    /// Address to serve peers (Raft messages) on.
    #[arg(
        long,
        env = "NOD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    listen_peer_urls: String,
    /// Peer URL other members use to reach this member (default: the listen URL).
    #[arg(long, env = "NOD_INITIAL_ADVERTISE_PEER_URLS")]
    initial_advertise_peer_urls: Option<String>,
    /// Address for /metrics, /healthz and /readyz ("" turns it off).
    #[arg(
        long,
        env = "NOD_LISTEN_METRICS_URLS",
        default_value = "http://127.0.0.1:2381"
    )]
    listen_metrics_urls: String,
    /// Founding members (new) or members to ask (existing): name=peerURL,...
    #[arg(long, env = "NOD_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// `new` founds a cluster; `existing` joins one this member was added to.
    #[arg(long, env = "NOD_INITIAL_CLUSTER_STATE", default_value = "new")]
    initial_cluster_state: String,
    /// Distinguishes clusters founded with the same member names.
    #[arg(long, env = "NOD_INITIAL_CLUSTER_TOKEN", default_value = "nod-cluster")]
    initial_cluster_token: String,
    /// Heartbeat interval in milliseconds (one Raft tick).
    #[arg(long, env = "NOD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    heartbeat_interval: u64,
    /// Election timeout in milliseconds (a multiple of the heartbeat interval).
    #[arg(long, env = "NOD_ELECTION_TIMEOUT", default_value_t = 1000)]
    election_timeout: u64,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "NOD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    max_request_bytes: usize,
    /// Applied entries between snapshots.
    #[arg(long, env = "NOD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    snapshot_count: u64,
    /// Seconds between progress notifications to watchers that asked for them.
    #[arg(long, env = "NOD_PROGRESS_NOTIFY_INTERVAL", default_value_t = 600)]
    progress_notify_interval: u64,
    /// Log format.
    #[arg(long, env = "NOD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// UDP address to gossip on (host:port); turns discovery by gossip on.
    #[arg(long, env = "NOD_GOSSIP_LISTEN_ADDR")]
    gossip_listen_addr: Option<String>,
    /// Gossip address other nodes use to reach this one: ip:port, [ipv6]:port,
    /// or a bare IP (IPv4 or IPv6) that takes the listen address's port
    /// (default: the listen address).
    #[arg(long, env = "NOD_GOSSIP_ADVERTISE_ADDR")]
    gossip_advertise_addr: Option<String>,
    /// Nodes to gossip with first: host:port,... (DNS names are resolved again every minute).
    #[arg(long, env = "NOD_GOSSIP_SEEDS", value_delimiter = ',')]
    gossip_seeds: Vec<String>,
    /// Milliseconds between gossip rounds.
    #[arg(long, env = "NOD_GOSSIP_INTERVAL", default_value_t = 500)]
    gossip_interval: u64,
    /// With gossip and no data: found a new cluster once this many empty
    /// nodes (with the same setting) see each other and no member is visible.
    #[arg(long, env = "NOD_BOOTSTRAP_EXPECT", value_parser = clap::value_parser!(u16).range(1..=9))]
    bootstrap_expect: Option<u16>,
    /// The only names that may found the cluster: NAME,... (as many as
    /// --bootstrap-expect). A node not listed never founds; it joins.
    #[arg(long, env = "NOD_BOOTSTRAP_FOUNDERS", value_delimiter = ',')]
    bootstrap_founders: Vec<String>,
    /// Promote caught-up learners up to this many voters (default: 5 with
    /// gossip, 0 = never without).
    #[arg(long, env = "NOD_VOTERS")]
    voters: Option<usize>,
    /// A learner is caught up when its log is at most this many entries behind the leader's.
    #[arg(long, env = "NOD_PROMOTE_LAG", default_value_t = 100)]
    promote_lag: u64,
    /// Milliseconds a learner must stay caught up before it is promoted.
    #[arg(long, env = "NOD_PROMOTE_STABILIZE", default_value_t = 3000)]
    promote_stabilize: u64,
    /// Remove members unreachable (by Raft and gossip) for this many seconds; off by default.
    #[arg(long, env = "NOD_AUTOPILOT_DEAD_AFTER")]
    autopilot_dead_after: Option<u64>,
    /// On SIGTERM, remove this member from the cluster (after handing off
    /// leadership): scale-down outside Kubernetes.
    #[arg(long, env = "NOD_LEAVE_ON_SHUTDOWN")]
    leave_on_shutdown: bool,
}

#[derive(Args)]
struct DevFlags {
    /// How many members.
    #[arg(long, env = "NOD_DEV_NODES", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    nodes: u16,
    /// Where the members keep their data (one folder each).
    #[arg(long, env = "NOD_DEV_DATA_DIR", default_value = "./nod-data")]
    data_dir: PathBuf,
    /// Member i serves clients on base+100*i, peers on base+100*i+1, metrics on base+100*i+2.
    #[arg(long, env = "NOD_DEV_BASE_PORT", default_value_t = 2379)]
    base_port: u16,
    #[arg(long, env = "NOD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parses `http://host:port` (or `host:port`) into a socket address.
fn socket_addr(url: &str) -> Result<SocketAddr, String> {
    let hostport = url.split("://").last().unwrap_or(url).trim_end_matches('/');
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url:?} is not a host:port address: {e}"))?
        .next()
        .ok_or_else(|| format!("{url:?} resolves to no address"))
}

/// Parses `--gossip-advertise-addr`: ip:port, [ipv6]:port or host:port, or a
/// bare IP (`10.0.0.1`, `fd00::1`, `[fd00::1]`) that takes `port`, since a
/// pod template passes `$(POD_IP)`, which may be either family.
fn advertise_addr(a: &str, port: u16) -> Result<SocketAddr, String> {
    let a = a.trim();
    let bare = a
        .strip_prefix('[')
        .and_then(|v6| v6.strip_suffix(']'))
        .unwrap_or(a);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(format!(
                "--gossip-advertise-addr {a:?} is a wildcard: other nodes cannot reach it"
            ));
        }
        return Ok(SocketAddr::new(ip, port));
    }
    socket_addr(a)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim { seed, seeds, trace } => sim(seed, seeds, trace),
        Command::Server(flags) => {
            init_logs(flags.log_format, "info");
            run_async(run_server(*flags))
        }
        Command::Dev(flags) => {
            init_logs(flags.log_format, "warn,nod=info");
            run_async(run_dev(flags))
        }
        other => {
            init_logs(LogFormat::Text, "warn");
            run_async(run_client(other, cli.client))
        }
    }
}

fn run_async(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(f);
            // Tasks of a server stopped while it was still starting (gossip,
            // a DNS lookup on a blocking thread) must not hold the exit.
            rt.shutdown_timeout(Duration::from_secs(1));
            code
        }
        Err(e) => {
            eprintln!("nod: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn server_config(f: &ServerFlags) -> Result<ServerConfig, String> {
    let listen_client = socket_addr(&f.listen_client_urls)?;
    let listen_peer = socket_addr(&f.listen_peer_urls)?;
    let advertise_peer = f
        .initial_advertise_peer_urls
        .clone()
        .unwrap_or_else(|| f.listen_peer_urls.clone());
    let initial = f
        .initial_cluster
        .clone()
        .unwrap_or_else(|| format!("{}={}", f.name, advertise_peer));
    let mut initial_cluster = Vec::new();
    for part in initial.split(',').filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster entry {part:?} is not name=peerURL"))?;
        initial_cluster.push((name.trim().to_string(), url.trim().to_string()));
    }
    if f.heartbeat_interval == 0 || f.election_timeout < 5 * f.heartbeat_interval {
        return Err("--election-timeout must be at least 5 heartbeat intervals".into());
    }
    let mut cfg = ServerConfig::local(&f.name, f.data_dir.clone(), listen_client, listen_peer);
    cfg.advertise_client = f
        .advertise_client_urls
        .clone()
        .unwrap_or_else(|| f.listen_client_urls.clone());
    cfg.advertise_peer = advertise_peer;
    cfg.listen_metrics = if f.listen_metrics_urls.is_empty() {
        None
    } else {
        Some(socket_addr(&f.listen_metrics_urls)?)
    };
    cfg.initial_cluster = initial_cluster;
    cfg.initial_cluster_state = match f.initial_cluster_state.as_str() {
        "new" => ClusterState::New,
        "existing" => ClusterState::Existing,
        other => {
            return Err(format!(
                "--initial-cluster-state is new or existing, not {other:?}"
            ))
        }
    };
    cfg.initial_cluster_token = f.initial_cluster_token.clone();
    cfg.heartbeat = Duration::from_millis(f.heartbeat_interval);
    cfg.election_ticks = f.election_timeout / f.heartbeat_interval;
    cfg.max_request_bytes = f.max_request_bytes;
    cfg.snapshot_count = f.snapshot_count;
    cfg.progress_notify_interval = Duration::from_secs(f.progress_notify_interval.max(1));
    let founders: Vec<String> = f
        .bootstrap_founders
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let founders =
        Founders::new(&founders, f.bootstrap_expect.map(usize::from)).map_err(|e| e.to_string())?;
    cfg.discovery = match &f.gossip_listen_addr {
        None => {
            if !f.gossip_seeds.is_empty() || f.bootstrap_expect.is_some() {
                return Err(
                    "--gossip-seeds and --bootstrap-expect need --gossip-listen-addr".into(),
                );
            }
            None
        }
        Some(listen) => {
            let listen = socket_addr(listen)?;
            let advertise =
                match &f.gossip_advertise_addr {
                    Some(a) => advertise_addr(a, listen.port())?,
                    None if listen.ip().is_unspecified() => return Err(
                        "--gossip-listen-addr is a wildcard address: set --gossip-advertise-addr"
                            .into(),
                    ),
                    None => listen,
                };
            if f.gossip_interval < 10 {
                return Err("--gossip-interval is at least 10 ms".into());
            }
            Some(Discovery {
                gossip: GossipConfig {
                    listen,
                    advertise,
                    seeds: f
                        .gossip_seeds
                        .iter()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    interval: Duration::from_millis(f.gossip_interval),
                },
                bootstrap_expect: f.bootstrap_expect.map(usize::from),
                bootstrap_founders: founders,
            })
        }
    };
    if cfg.discovery.is_some() && f.initial_cluster.is_none() {
        cfg.initial_cluster_state = ClusterState::Discover;
        cfg.initial_cluster = Vec::new();
    }
    cfg.autopilot = AutopilotConfig {
        voters: f
            .voters
            .unwrap_or(if cfg.discovery.is_some() { 5 } else { 0 }),
        promote_lag: f.promote_lag,
        stabilize: Duration::from_millis(f.promote_stabilize),
        dead_after: f
            .autopilot_dead_after
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
    };
    cfg.leave_on_shutdown = f.leave_on_shutdown;
    Ok(cfg)
}

/// SIGTERM or SIGINT (Ctrl-C), caught from the moment `install` returns:
/// until then the default action (die by the signal) applies.
struct StopSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignal {
    fn install() -> StopSignal {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = signal(SignalKind::terminate())
                .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
                .ok();
            StopSignal { signals }
        }
        #[cfg(not(unix))]
        StopSignal {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn stop_signal() {
    StopSignal::install().recv().await
}

async fn run_server(flags: ServerFlags) -> ExitCode {
    // Caught before anything slow (opening the stores, waiting for peers):
    // a pod deleted while it waits for its peers stops at once, cleanly,
    // instead of being killed at the end of its grace period.
    let mut stop = StopSignal::install();
    let cfg = match server_config(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nod server: {e}");
            return ExitCode::from(2);
        }
    };
    // Stopping mid-start drops `start` at an await point: every durable
    // step (promise, identity, founding) is written whole or not at all,
    // and the next start resumes from what is on disk.
    let started = tokio::select! {
        r = server::start(cfg) => r,
        _ = stop.recv() => {
            tracing::info!("stopping before serving (still starting or finding the cluster)");
            return ExitCode::SUCCESS;
        }
    };
    let mut running = match started {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nod server: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = stop.recv() => {
            tracing::info!("stopping");
            match running.shutdown().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => { eprintln!("nod server: {e}"); ExitCode::FAILURE }
            }
        }
        r = running.stopped() => match r {
            Ok(()) => {
                eprintln!("nod server: this member was removed from the cluster");
                ExitCode::SUCCESS
            }
            Err(e) => { eprintln!("nod server: stopped: {e}"); ExitCode::FAILURE }
        }
    }
}

async fn run_dev(flags: DevFlags) -> ExitCode {
    let n = flags.nodes;
    let port = |i: u16, k: u16| -> Option<u16> { flags.base_port.checked_add(i * 100 + k) };
    let mut members = Vec::new();
    for i in 0..n {
        let (Some(c), Some(p), Some(m)) = (port(i, 0), port(i, 1), port(i, 2)) else {
            eprintln!(
                "nod dev: --base-port {} leaves no room for {n} members",
                flags.base_port
            );
            return ExitCode::from(2);
        };
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        members.push((format!("node-{}", i + 1), addr(c), addr(p), addr(m)));
    }
    let initial: Vec<(String, String)> = members
        .iter()
        .map(|(name, _, p, _)| (name.clone(), format!("http://{p}")))
        .collect();
    let mut servers = Vec::new();
    for (name, c, p, m) in &members {
        let mut cfg = ServerConfig::local(name, flags.data_dir.join(name), *c, *p);
        cfg.listen_metrics = Some(*m);
        cfg.initial_cluster = initial.clone();
        cfg.initial_cluster_token = "nod-dev".into();
        match server::start(cfg).await {
            Ok(s) => servers.push(s),
            Err(e) => {
                eprintln!("nod dev: {name}: {e}");
                for s in servers {
                    let _ = s.shutdown().await;
                }
                return ExitCode::FAILURE;
            }
        }
    }
    let endpoints: Vec<String> = servers.iter().map(|s| s.client_addr.to_string()).collect();
    // Wait for a leader so the first command a user types works.
    for _ in 0..100 {
        if servers.iter().any(|s| s.shared.status().leader != 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("nod dev: {n} members, data in {}", flags.data_dir.display());
    println!("endpoints: {}", endpoints.join(","));
    println!(
        "metrics: {}",
        servers
            .iter()
            .filter_map(|s| s.metrics_addr.map(|a| format!("http://{a}/metrics")))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "try:  etcdctl --endpoints={} put hello world",
        endpoints.join(",")
    );
    println!(
        "      nod --endpoints={} get hello   (Ctrl-C stops the cluster)",
        endpoints.join(",")
    );
    stop_signal().await;
    println!("nod dev: stopping");
    let mut ok = true;
    for s in servers {
        if let Err(e) = s.shutdown().await {
            eprintln!("nod dev: {e}");
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---- client commands ----

enum Failure {
    Usage(String),
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

fn usage(s: impl Into<String>) -> Failure {
    Failure::Usage(s.into())
}

fn exit_for(f: Failure) -> ExitCode {
    match f {
        Failure::Usage(m) => {
            eprintln!("nod: {m}");
            ExitCode::from(2)
        }
        Failure::Client(ClientError::Status(s)) => {
            eprintln!("Error: {}", s.message());
            match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
        Failure::Client(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_hex(s: &str, what: &str) -> Result<u64, Failure> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|_| usage(format!("{what} {s:?} is not a hexadecimal id")))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": format!("{:x}", kv.lease),
    })
}

fn header_json(h: &Option<ResponseHeader>) -> Value {
    let h = h.unwrap_or_default();
    json!({
        "cluster_id": format!("{:x}", h.cluster_id),
        "member_id": format!("{:x}", h.member_id),
        "revision": h.revision,
        "raft_term": h.raft_term,
    })
}

fn print_json(v: Value) {
    println!("{v}");
}

async fn run_client(cmd: Command, client: ClientFlags) -> ExitCode {
    match client_command(cmd, client).await {
        Ok(code) => code,
        Err(f) => exit_for(f),
    }
}

fn connect(c: &ClientFlags) -> Result<Client, Failure> {
    Ok(Client::connect(
        &c.endpoints,
        Duration::from_secs(c.command_timeout),
    )?)
}

fn sort_target(s: &str) -> Result<range_request::SortTarget, Failure> {
    use range_request::SortTarget as T;
    Ok(match s.to_ascii_uppercase().as_str() {
        "KEY" => T::Key,
        "VERSION" => T::Version,
        "CREATE" => T::Create,
        "MODIFY" | "MOD" => T::Mod,
        "VALUE" => T::Value,
        _ => {
            return Err(usage(format!(
                "--sort-by {s:?}: use KEY, VERSION, CREATE, MODIFY or VALUE"
            )))
        }
    })
}

async fn client_command(cmd: Command, client: ClientFlags) -> Result<ExitCode, Failure> {
    match cmd {
        Command::Put {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None if ignore_value => Vec::new(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .map_err(|e| usage(format!("reading the value from stdin: {e}")))?;
                    buf
                }
            };
            let lease = match lease {
                Some(l) => parse_hex(&l, "lease")? as i64,
                None => 0,
            };
            let mut c = connect(&client)?;
            let r = c
                .put(PutRequest {
                    key: key.into_bytes(),
                    value,
                    lease,
                    prev_kv,
                    ignore_value,
                    ignore_lease,
                })
                .await?;
            match client.output {
                Output::Json => print_json(json!({
                    "header": header_json(&r.header),
                    "prev_kv": r.prev_kv.as_ref().map(kv_json),
                })),
                Output::Simple => {
                    println!("OK");
                    if let Some(p) = r.prev_kv {
                        println!("{}\n{}", text(&p.key), text(&p.value));
                    }
                }
            }
        }
        Command::Get {
            key,
            range_end,
            span,
            limit,
            rev,
            keys_only,
            count_only,
            serializable,
            sort_by,
            order,
            print_value_only,
        } => {
            let span = span.span(&range_end).map_err(usage)?;
            let mut req = RangeRequest {
                range_end: span.range_end(key.as_bytes()),
                key: key.into_bytes(),
                limit,
                revision: rev,
                keys_only,
                count_only,
                serializable,
                ..Default::default()
            };
            if let Some(s) = sort_by {
                req.sort_target = sort_target(&s)? as i32;
                req.sort_order = range_request::SortOrder::Ascend as i32;
            }
            if let Some(o) = order {
                req.sort_order = match o.to_ascii_uppercase().as_str() {
                    "ASCEND" => range_request::SortOrder::Ascend,
                    "DESCEND" => range_request::SortOrder::Descend,
                    _ => return Err(usage(format!("--order {o:?}: use ASCEND or DESCEND"))),
                } as i32;
            }
            let mut c = connect(&client)?;
            let r = c.range(req).await?;
            match client.output {
                Output::Json => print_json(json!({
                    "header": header_json(&r.header),
                    "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>(),
                    "more": r.more,
                    "count": r.count,
                })),
                Output::Simple => {
                    if count_only {
                        println!("{}", r.count);
                    }
                    for kv in &r.kvs {
                        if !print_value_only {
                            println!("{}", text(&kv.key));
                        }
                        if !keys_only {
                            println!("{}", text(&kv.value));
                        }
                    }
                }
            }
        }
        Command::Del {
            key,
            range_end,
            span,
            prev_kv,
        } => {
            let span = span.span(&range_end).map_err(usage)?;
            let mut c = connect(&client)?;
            let r = c
                .delete(DeleteRangeRequest {
                    range_end: span.range_end(key.as_bytes()),
                    key: key.into_bytes(),
                    prev_kv,
                })
                .await?;
            match client.output {
                Output::Json => print_json(json!({
                    "header": header_json(&r.header),
                    "deleted": r.deleted,
                    "prev_kvs": r.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
                })),
                Output::Simple => {
                    println!("{}", r.deleted);
                    for kv in &r.prev_kvs {
                        println!("{}\n{}", text(&kv.key), text(&kv.value));
                    }
                }
            }
        }
        Command::Txn => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| usage(format!("reading stdin: {e}")))?;
            let req = parse_txn(&input).map_err(|e| usage(e.to_string()))?;
            let mut c = connect(&client)?;
            let r = c.txn(req).await?;
            match client.output {
                Output::Json => print_json(json!({
                    "header": header_json(&r.header),
                    "succeeded": r.succeeded,
                    "responses": r.responses.len(),
                })),
                Output::Simple => {
                    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
                    use nod_proto::etcd::etcdserverpb::response_op::Response as R;
                    for op in r.responses {
                        println!();
                        match op.response {
                            Some(R::ResponsePut(_)) => println!("OK"),
                            Some(R::ResponseDeleteRange(d)) => println!("{}", d.deleted),
                            Some(R::ResponseRange(g)) => {
                                for kv in g.kvs {
                                    println!("{}\n{}", text(&kv.key), text(&kv.value));
                                }
                            }
                            Some(R::ResponseTxn(t)) => {
                                println!("{}", if t.succeeded { "SUCCESS" } else { "FAILURE" })
                            }
                            None => {}
                        }
                    }
                }
            }
        }
        Command::Watch {
            key,
            range_end,
            span,
            rev,
            prev_kv,
            max_events,
        } => {
            let span = span.span(&range_end).map_err(usage)?;
            let mut c = Client::connect(&client.endpoints, Duration::from_secs(u64::MAX / 4))?;
            let create = WatchCreateRequest {
                range_end: span.range_end(key.as_bytes()),
                key: key.into_bytes(),
                start_revision: rev,
                prev_kv,
                ..Default::default()
            };
            let (_tx, mut stream) = c.watch(create).await?;
            let mut seen = 0u64;
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m.map_err(ClientError::from)?,
                    _ = stop_signal() => return Ok(ExitCode::SUCCESS),
                };
                let Some(resp) = msg else {
                    eprintln!("Error: watch stream closed by the server");
                    return Ok(ExitCode::from(3));
                };
                if resp.canceled {
                    eprintln!("Error: watch canceled: {}", resp.cancel_reason);
                    return Ok(ExitCode::FAILURE);
                }
                for ev in resp.events {
                    let kv = ev.kv.unwrap_or_default();
                    let kind = if ev.r#type == EventType::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    };
                    match client.output {
                        Output::Json => print_json(json!({
                            "type": kind,
                            "kv": kv_json(&kv),
                            "prev_kv": ev.prev_kv.as_ref().map(kv_json),
                        })),
                        Output::Simple => {
                            println!("{kind}");
                            if let Some(p) = &ev.prev_kv {
                                println!("{}\n{}", text(&p.key), text(&p.value));
                            }
                            println!("{}", text(&kv.key));
                            if kind == "PUT" {
                                println!("{}", text(&kv.value));
                            }
                        }
                    }
                    seen += 1;
                    if max_events.is_some_and(|m| seen >= m) {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
        }
        Command::Lease { command } => {
            let mut c = connect(&client)?;
            match command {
                LeaseCommand::Grant { ttl } => {
                    let r = c.lease_grant(ttl, 0).await?;
                    match client.output {
                        Output::Json => print_json(
                            json!({"header": header_json(&r.header), "id": format!("{:x}", r.id), "ttl": r.ttl}),
                        ),
                        Output::Simple => println!("lease {:x} granted with TTL({}s)", r.id, r.ttl),
                    }
                }
                LeaseCommand::Revoke { id } => {
                    let id = parse_hex(&id, "lease")?;
                    let r = c.lease_revoke(id as i64).await?;
                    match client.output {
                        Output::Json => print_json(json!({"header": header_json(&r.header)})),
                        Output::Simple => println!("lease {id:x} revoked"),
                    }
                }
                LeaseCommand::KeepAlive { id, once } => {
                    let id = parse_hex(&id, "lease")? as i64;
                    let (tx, mut stream) = c.lease_keep_alive(id).await?;
                    loop {
                        let Some(r) = stream.message().await.map_err(ClientError::from)? else {
                            eprintln!("Error: keep-alive stream closed");
                            return Ok(ExitCode::from(3));
                        };
                        if r.ttl <= 0 {
                            eprintln!("lease {id:x} expired or revoked.");
                            return Ok(ExitCode::FAILURE);
                        }
                        match client.output {
                            Output::Json => {
                                print_json(json!({"id": format!("{:x}", r.id), "ttl": r.ttl}))
                            }
                            Output::Simple => {
                                println!("lease {:x} keepalived with TTL({})", r.id, r.ttl)
                            }
                        }
                        if once {
                            return Ok(ExitCode::SUCCESS);
                        }
                        let wait = Duration::from_millis((r.ttl as u64 * 1000 / 3).max(500));
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop_signal() => return Ok(ExitCode::SUCCESS),
                        }
                        if tx
                            .send(nod_proto::etcd::etcdserverpb::LeaseKeepAliveRequest { id })
                            .await
                            .is_err()
                        {
                            return Ok(ExitCode::from(3));
                        }
                    }
                }
                LeaseCommand::Timetolive { id, keys } => {
                    let id = parse_hex(&id, "lease")? as i64;
                    let r = c.lease_time_to_live(id, keys).await?;
                    match client.output {
                        Output::Json => print_json(json!({
                            "id": format!("{:x}", r.id), "ttl": r.ttl, "granted_ttl": r.granted_ttl,
                            "keys": r.keys.iter().map(|k| text(k)).collect::<Vec<_>>(),
                        })),
                        Output::Simple if r.ttl == -1 => println!("lease {id:x} already expired"),
                        Output::Simple => {
                            print!(
                                "lease {id:x} granted with TTL({}s), remaining({}s)",
                                r.granted_ttl, r.ttl
                            );
                            if keys {
                                print!(
                                    ", attached keys({:?})",
                                    r.keys.iter().map(|k| text(k)).collect::<Vec<_>>()
                                );
                            }
                            println!();
                        }
                    }
                }
                LeaseCommand::List => {
                    let r = c.lease_list().await?;
                    match client.output {
                        Output::Json => print_json(
                            json!({"leases": r.leases.iter().map(|l| format!("{:x}", l.id)).collect::<Vec<_>>()}),
                        ),
                        Output::Simple => {
                            println!("found {} leases", r.leases.len());
                            for l in r.leases {
                                println!("{:x}", l.id);
                            }
                        }
                    }
                }
            }
        }
        Command::Member { command } => {
            let mut c = connect(&client)?;
            let member_json = |m: &nod_proto::etcd::etcdserverpb::Member| json!({"id": format!("{:x}", m.id), "name": m.name, "peer_urls": m.peer_ur_ls, "client_urls": m.client_ur_ls, "is_learner": m.is_learner});
            match command {
                MemberCommand::List => {
                    let r = c.member_list().await?;
                    match client.output {
                        Output::Json => print_json(
                            json!({"header": header_json(&r.header), "members": r.members.iter().map(member_json).collect::<Vec<_>>()}),
                        ),
                        Output::Simple => {
                            for m in r.members {
                                println!(
                                    "{:x}, started, {}, {}, {}, {}",
                                    m.id,
                                    m.name,
                                    m.peer_ur_ls.join(","),
                                    m.client_ur_ls.join(","),
                                    m.is_learner
                                );
                            }
                        }
                    }
                }
                MemberCommand::Health => {
                    let r = c.member_health().await?;
                    match client.output {
                        Output::Json => print_json(json!({
                            "header": header_json(&r.header),
                            "leader": format!("{:x}", r.leader),
                            "target_voters": r.target_voters,
                            "members": r.members.iter().map(|m| json!({
                                "id": format!("{:x}", m.id), "name": m.name,
                                "role": if m.is_leader { "leader" } else if m.is_learner { "learner" } else { "voter" },
                                "healthy": m.healthy, "raft_active": m.raft_active,
                                "gossip_alive": m.gossip_alive, "matched": m.matched, "lag": m.lag,
                                "unhealthy_ms": m.unhealthy_ms, "peer_urls": m.peer_urls,
                                "client_urls": m.client_urls,
                            })).collect::<Vec<_>>(),
                        })),
                        Output::Simple => {
                            println!(
                                "{:<16} {:<12} {:<8} {:<9} {:>10} {:>8}  GOSSIP",
                                "ID", "NAME", "ROLE", "HEALTHY", "MATCHED", "LAG"
                            );
                            for m in r.members {
                                let role = if m.is_leader {
                                    "leader"
                                } else if m.is_learner {
                                    "learner"
                                } else {
                                    "voter"
                                };
                                let healthy = if m.healthy {
                                    "yes".to_string()
                                } else {
                                    format!("no {}s", m.unhealthy_ms / 1000)
                                };
                                println!(
                                    "{:<16x} {:<12} {:<8} {:<9} {:>10} {:>8}  {}",
                                    m.id,
                                    m.name,
                                    role,
                                    healthy,
                                    m.matched,
                                    m.lag,
                                    if m.gossip_alive { "alive" } else { "-" }
                                );
                            }
                        }
                    }
                }
                MemberCommand::Add {
                    name,
                    peer_urls,
                    learner,
                } => {
                    let r = c.member_add(peer_urls.clone(), learner).await?;
                    let m = r.member.clone().unwrap_or_default();
                    match client.output {
                        Output::Json => print_json(
                            json!({"header": header_json(&r.header), "member": member_json(&m)}),
                        ),
                        Output::Simple => {
                            println!(
                                "Member {:x} added to cluster {:x}",
                                m.id,
                                r.header.unwrap_or_default().cluster_id
                            );
                            let mut initial: Vec<String> = r
                                .members
                                .iter()
                                .filter(|x| x.id != m.id && !x.name.is_empty())
                                .filter_map(|x| {
                                    x.peer_ur_ls.first().map(|u| format!("{}={u}", x.name))
                                })
                                .collect();
                            initial.push(format!("{name}={}", peer_urls[0]));
                            println!("\nNOD_NAME=\"{name}\"");
                            println!("NOD_INITIAL_CLUSTER=\"{}\"", initial.join(","));
                            println!(
                                "NOD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"",
                                peer_urls.join(",")
                            );
                            println!("NOD_INITIAL_CLUSTER_STATE=\"existing\"");
                        }
                    }
                }
                MemberCommand::Remove { id } => {
                    let id = parse_hex(&id, "member")?;
                    let r = c.member_remove(id).await?;
                    match client.output {
                        Output::Json => print_json(json!({"header": header_json(&r.header)})),
                        Output::Simple => println!(
                            "Member {id:x} removed from cluster {:x}",
                            r.header.unwrap_or_default().cluster_id
                        ),
                    }
                }
                MemberCommand::Promote { id } => {
                    let id = parse_hex(&id, "member")?;
                    let r = c.member_promote(id).await?;
                    match client.output {
                        Output::Json => print_json(json!({"header": header_json(&r.header)})),
                        Output::Simple => println!(
                            "Member {id:x} promoted in cluster {:x}",
                            r.header.unwrap_or_default().cluster_id
                        ),
                    }
                }
                MemberCommand::Update { id, peer_urls } => {
                    let id = parse_hex(&id, "member")?;
                    let r = c.member_update(id, peer_urls).await?;
                    match client.output {
                        Output::Json => print_json(json!({"header": header_json(&r.header)})),
                        Output::Simple => println!(
                            "Member {id:x} updated in cluster {:x}",
                            r.header.unwrap_or_default().cluster_id
                        ),
                    }
                }
            }
        }
        Command::Status => {
            let mut failed = false;
            for ep in &client.endpoints {
                let mut c = Client::connect(
                    std::slice::from_ref(ep),
                    Duration::from_secs(client.command_timeout),
                )?;
                match c.status().await {
                    Ok(s) => {
                        let h = s.header.unwrap_or_default();
                        match client.output {
                            Output::Json => print_json(json!({
                                "endpoint": ep, "id": format!("{:x}", h.member_id), "version": s.version,
                                "db_size": s.db_size, "leader": format!("{:x}", s.leader), "is_leader": s.leader == h.member_id,
                                "is_learner": s.is_learner, "raft_term": s.raft_term, "raft_index": s.raft_index,
                                "raft_applied_index": s.raft_applied_index, "errors": s.errors,
                            })),
                            Output::Simple => println!(
                                "{ep}, {:x}, {}, {} B, {}, {}, {}, {}, {}",
                                h.member_id,
                                s.version,
                                s.db_size,
                                s.leader == h.member_id,
                                s.is_learner,
                                s.raft_term,
                                s.raft_index,
                                s.raft_applied_index
                            ),
                        }
                    }
                    Err(e) => {
                        eprintln!("{ep}: Error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Snapshot {
            command: SnapshotCommand::Save { file },
        } => {
            let mut c = connect(&client)?;
            let bytes = c.snapshot().await?;
            nod::api::maintenance::decode_backup(&bytes)
                .map_err(|e| Failure::Client(ClientError::Protocol(e)))?;
            let part = file.with_extension("part");
            std::fs::write(&part, &bytes)
                .and_then(|_| std::fs::rename(&part, &file))
                .map_err(|e| usage(format!("cannot write {}: {e}", file.display())))?;
            println!(
                "Snapshot saved at {} ({} bytes)",
                file.display(),
                bytes.len()
            );
        }
        Command::Compact { revision } => {
            let mut c = connect(&client)?;
            c.compact(revision).await?;
            println!("compacted revision {revision}");
        }
        Command::MoveLeader { target } => {
            let target = parse_hex(&target, "member")?;
            // Only the leader can move leadership: find it first.
            let mut c = connect(&client)?;
            let leader = c.status().await?.leader;
            let members = c.member_list().await?.members;
            let url = members
                .iter()
                .find(|m| m.id == leader)
                .and_then(|m| m.client_ur_ls.first().cloned())
                .ok_or_else(|| usage("no leader with a known client URL"))?;
            let mut lc = Client::connect(&[url], Duration::from_secs(client.command_timeout))?;
            lc.move_leader(target).await?;
            println!("Leadership transferred from {leader:x} to {target:x}");
        }
        Command::Server(_) | Command::Dev(_) | Command::Sim { .. } => {
            unreachable!("handled in main")
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn sim(seed: u64, seeds: u64, trace: bool) -> ExitCode {
    let Some(last) = seed.checked_add(seeds) else {
        eprintln!("nod sim: --seed {seed} plus --seeds {seeds} overflows");
        return ExitCode::from(2);
    };
    let list: Vec<u64> = (seed..last).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reports = nod_sim::run_many(&list, if trace { 1 } else { threads }, |s| {
        let mut cfg = nod_sim::SimConfig::from_seed(s);
        cfg.trace = trace && seeds == 1;
        cfg
    });
    let mut violations = 0;
    for r in &reports {
        violations += r.violations.len();
        println!(
            "seed {}: {} steps, {} faults, {} elections, {} membership changes, {} client ops ({} acknowledged), {} entries applied, {} violations",
            r.seed, r.steps, r.faults, r.elections, r.conf_changes, r.ops, r.ok_ops, r.applied_entries, r.violations.len()
        );
        for v in &r.violations {
            println!("  {v}");
        }
    }
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_advertise_takes_a_bare_ip_of_either_family() {
        let ok = [
            ("10.0.0.7", "10.0.0.7:7946"),
            ("fd00::7", "[fd00::7]:7946"),
            ("[fd00::7]", "[fd00::7]:7946"),
            ("10.0.0.7:9000", "10.0.0.7:9000"),
            ("[fd00::7]:9000", "[fd00::7]:9000"),
            ("::1", "[::1]:7946"),
        ];
        for (given, want) in ok {
            let got = advertise_addr(given, 7946).unwrap();
            assert_eq!(got, want.parse::<SocketAddr>().unwrap(), "{given}");
        }
        for bad in ["::", "0.0.0.0", "[fd00::7", "not an address"] {
            assert!(advertise_addr(bad, 7946).is_err(), "{bad} must be refused");
        }
    }

    fn server_flags(args: &[&str]) -> Result<ServerConfig, String> {
        let mut argv = vec!["nod", "server"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Server(f) => server_config(&f),
            _ => unreachable!("parsed as the server command"),
        }
    }

    #[test]
    fn bootstrap_founders_need_a_matching_expect() {
        let gossip = ["--gossip-listen-addr", "127.0.0.1:7946"];
        let with = |extra: &[&str]| {
            let mut a = gossip.to_vec();
            a.extend_from_slice(extra);
            server_flags(&a)
        };
        let e = with(&["--bootstrap-founders", "c-0"]).unwrap_err();
        assert!(e.contains("needs --bootstrap-expect"), "{e}");
        let e = with(&["--bootstrap-expect", "3", "--bootstrap-founders", "c-0,c-1"]).unwrap_err();
        assert!(e.contains("must be equal"), "{e}");
        let cfg = with(&["--bootstrap-expect=2", "--bootstrap-founders=c-0,c-1"]).unwrap();
        let d = cfg.discovery.unwrap();
        assert!(d.bootstrap_founders.allows("c-1") && !d.bootstrap_founders.allows("c-2"));
    }

    #[test]
    fn ipv6_listen_urls_and_a_bare_ipv6_advertise_address_parse() {
        let cfg = server_flags(&[
            "--listen-client-urls=http://[::]:2379",
            "--listen-peer-urls=http://[::]:2380",
            "--listen-metrics-urls=http://[::]:2381",
            "--gossip-listen-addr=[::]:7946",
            "--gossip-advertise-addr=fd00::7",
        ])
        .unwrap();
        assert_eq!(cfg.listen_client, "[::]:2379".parse().unwrap());
        assert_eq!(cfg.listen_peer, "[::]:2380".parse().unwrap());
        assert_eq!(cfg.listen_metrics, Some("[::]:2381".parse().unwrap()));
        let g = cfg.discovery.unwrap().gossip;
        assert_eq!(g.listen, "[::]:7946".parse().unwrap());
        assert_eq!(g.advertise, "[fd00::7]:7946".parse().unwrap());
    }
}
