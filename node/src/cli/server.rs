//! `nod server`: one member of a cluster. The flags, and the server
//! configuration they make (every check of a flag's value is here).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::signal::StopSignal;
use super::LogFormat;
use crate::gossip::bootstrap::Founders;
use crate::gossip::GossipConfig;
use crate::server::autopilot::AutopilotConfig;
use crate::server::{self, ClusterState, Discovery, ServerConfig};
use crate::tls::{self, ServerTlsOptions, TlsVersion};

#[derive(Args)]
pub struct ServerFlags {
    /// Human-readable name of this member; unique in the cluster.
    #[arg(long, env = "NOD_NAME", default_value = "default")]
    pub name: String,
    /// Where the Raft log, the state machine and snapshots live.
    #[arg(long, env = "NOD_DATA_DIR", default_value = "./nod-data/default")]
    pub data_dir: PathBuf,
    /// Address to serve clients (the etcd v3 API) on.
    #[arg(
        long,
        env = "NOD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// Client URL other members and clients use to reach this member (default: the listen URL).
    #[arg(long, env = "NOD_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Address to serve peers (Raft messages) on.
    #[arg(
        long,
        env = "NOD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// Peer URL other members use to reach this member (default: the listen URL).
    #[arg(long, env = "NOD_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Address for /metrics, /healthz and /readyz ("" turns it off).
    #[arg(
        long,
        env = "NOD_LISTEN_METRICS_URLS",
        default_value = "http://127.0.0.1:2381"
    )]
    pub listen_metrics_urls: String,
    /// Serve the web console on the metrics port, at /ui (read-only
    /// without a login; docs/console.md). `--console=false` turns it off.
    #[arg(long, env = "NOD_CONSOLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub console: bool,
    /// Founding members (new) or members to ask (existing): name=peerURL,...
    #[arg(long, env = "NOD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` founds a cluster; `existing` joins one this member was added to.
    #[arg(long, env = "NOD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Distinguishes clusters founded with the same member names.
    #[arg(long, env = "NOD_INITIAL_CLUSTER_TOKEN", default_value = "nod-cluster")]
    pub initial_cluster_token: String,
    /// Heartbeat interval in milliseconds (one Raft tick).
    #[arg(long, env = "NOD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Election timeout in milliseconds (a multiple of the heartbeat interval).
    #[arg(long, env = "NOD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "NOD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: usize,
    /// Bytes this member's store may take before writes that add data are
    /// refused and the NOSPACE alarm is raised (etcd's flag and default):
    /// 0 is 2 GiB, a negative value turns the quota off.
    #[arg(
        long,
        env = "NOD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub quota_backend_bytes: i64,
    /// Most compares, or operations in one branch, a transaction may hold.
    #[arg(long, env = "NOD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Before serving clients, compare this member's data hash with the
    /// other members' and refuse to start on a mismatch.
    #[arg(
        long,
        alias = "experimental-initial-corrupt-check",
        env = "NOD_INITIAL_CORRUPT_CHECK",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub initial_corrupt_check: bool,
    /// Unsafe: start as the only member of this member's cluster, removing
    /// every other member, to recover from a quorum lost for good. Writes
    /// a majority committed that this member never received are lost; see
    /// the README's "Disaster recovery". Start without it afterwards.
    #[arg(
        long,
        env = "NOD_FORCE_NEW_CLUSTER",
        num_args = 0..=1,
        default_missing_value = "true",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub force_new_cluster: bool,
    /// As --force-new-cluster, for an operator that renders one flag for
    /// every member: only the member named MEMBER forces, and only once
    /// per ID (recorded in the data directory), so a restart with the same
    /// flag starts normally; a new ID forces again.
    #[arg(
        long,
        value_name = "MEMBER:ID",
        env = "NOD_FORCE_NEW_CLUSTER_ONCE",
        conflicts_with = "force_new_cluster"
    )]
    pub force_new_cluster_once: Option<String>,
    /// Found this member's data from a backup (see `nod backup`) when its
    /// data directory does not exist yet: a member of a cluster restored
    /// from DEST, with --initial-cluster, the token and the peer URL as
    /// `nod snapshot restore` takes them. Every member must restore the
    /// same revision: give --restore-revision while the source is still
    /// being backed up. Ignored once the data directory exists. The data
    /// directory must be a folder on the volume, not its mount point.
    #[arg(long, env = "NOD_RESTORE_FROM")]
    pub restore_from: Option<String>,
    /// The revision to restore (the newest a chain reaches without it).
    #[arg(long, env = "NOD_RESTORE_REVISION", requires = "restore_from", value_parser = clap::value_parser!(i64).range(1..))]
    pub restore_revision: Option<i64>,
    /// The chain to restore from (its folder name).
    #[arg(long, env = "NOD_RESTORE_CHAIN", requires = "restore_from")]
    pub restore_chain: Option<String>,
    /// The cluster whose backups to use (hex id), when DEST holds several.
    #[arg(long, env = "NOD_RESTORE_CLUSTER", requires = "restore_from", value_parser = super::backup::parse_hex_id)]
    pub restore_cluster: Option<u64>,
    /// How often the leader compares the members' data hashes and raises
    /// the CORRUPT alarm on a mismatch (a Go duration: 30s, 5m); 0: never.
    #[arg(
        long,
        alias = "experimental-corrupt-check-time",
        env = "NOD_CORRUPT_CHECK_TIME",
        default_value = "0"
    )]
    pub corrupt_check_time: String,
    /// Auth token type, as etcd spells it: `simple` (random tokens every
    /// member knows, with a sliding TTL, --auth-token-ttl) or
    /// `jwt,pub-key=PEM,priv-key=PEM,sign-method=RS256|PS256|ES256|EdDSA|HS256|...,ttl=5m`.
    #[arg(long, env = "NOD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// Seconds an unused simple token stays valid.
    #[arg(long, env = "NOD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of password hashes (4 to 31; etcd's default 10).
    #[arg(long, env = "NOD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Applied entries between snapshots.
    #[arg(long, env = "NOD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Seconds between progress notifications to watchers that asked for them.
    #[arg(long, env = "NOD_PROGRESS_NOTIFY_INTERVAL", default_value_t = 600)]
    pub progress_notify_interval: u64,
    /// The same as etcd spells it, a Go duration (10m, 5s); wins over
    /// --progress-notify-interval when given.
    #[arg(long, env = "NOD_WATCH_PROGRESS_NOTIFY_INTERVAL")]
    pub experimental_watch_progress_notify_interval: Option<String>,
    /// Log format.
    #[arg(long, env = "NOD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub tracing: TracingFlags,
    /// UDP address to gossip on (host:port); turns discovery by gossip on.
    #[arg(long, env = "NOD_GOSSIP_LISTEN_ADDR")]
    pub gossip_listen_addr: Option<String>,
    /// Gossip address other nodes use to reach this one: ip:port, [ipv6]:port,
    /// or a bare IP (IPv4 or IPv6) that takes the listen address's port
    /// (default: the listen address).
    #[arg(long, env = "NOD_GOSSIP_ADVERTISE_ADDR")]
    pub gossip_advertise_addr: Option<String>,
    /// Nodes to gossip with first: host:port,... (DNS names are resolved again every minute).
    #[arg(long, env = "NOD_GOSSIP_SEEDS", value_delimiter = ',')]
    pub gossip_seeds: Vec<String>,
    /// Milliseconds between gossip rounds.
    #[arg(long, env = "NOD_GOSSIP_INTERVAL", default_value_t = 500)]
    pub gossip_interval: u64,
    /// Seal every gossip datagram with the cluster's key (ChaCha20-Poly1305):
    /// a file of one base64 32-byte key per line (`head -c 32 /dev/urandom | base64`);
    /// the first seals, a second one also opens (rotation).
    #[arg(long, env = "NOD_GOSSIP_KEY_FILE")]
    pub gossip_key_file: Option<PathBuf>,
    /// With gossip and no data: found a new cluster once this many empty
    /// nodes (with the same setting) see each other and no member is visible.
    #[arg(long, env = "NOD_BOOTSTRAP_EXPECT", value_parser = clap::value_parser!(u16).range(1..=9))]
    pub bootstrap_expect: Option<u16>,
    /// The only names that may found the cluster: NAME,... (as many as
    /// --bootstrap-expect). A node not listed never founds; it joins.
    #[arg(long, env = "NOD_BOOTSTRAP_FOUNDERS", value_delimiter = ',')]
    pub bootstrap_founders: Vec<String>,
    /// Promote caught-up learners up to this many voters (default: 5 with
    /// gossip, 0 = never without).
    #[arg(long, env = "NOD_VOTERS")]
    pub voters: Option<usize>,
    /// A learner is caught up when its log is at most this many entries behind the leader's.
    #[arg(long, env = "NOD_PROMOTE_LAG", default_value_t = 100)]
    pub promote_lag: u64,
    /// Milliseconds a learner must stay caught up before it is promoted.
    #[arg(long, env = "NOD_PROMOTE_STABILIZE", default_value_t = 3000)]
    pub promote_stabilize: u64,
    /// Remove members unreachable (by Raft and gossip) for this many seconds; off by default.
    #[arg(long, env = "NOD_AUTOPILOT_DEAD_AFTER")]
    pub autopilot_dead_after: Option<u64>,
    /// On SIGTERM, remove this member from the cluster (after handing off
    /// leadership): scale-down outside Kubernetes.
    #[arg(long, env = "NOD_LEAVE_ON_SHUTDOWN")]
    pub leave_on_shutdown: bool,
    #[command(flatten)]
    pub tls: TlsFlags,
}

/// Distributed tracing (docs/tracing.md).
#[derive(Args, Clone, Default)]
pub struct TracingFlags {
    /// Export OpenTelemetry traces to this OTLP/gRPC collector
    /// (http://host:4317); tracing is off without it.
    #[arg(long, env = "NOD_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of client requests that start a trace (0 to 1). A request
    /// that comes with a sampled W3C `traceparent` is always traced.
    #[arg(long, env = "NOD_TRACE_SAMPLING_RATIO", default_value_t = 0.01)]
    pub trace_sampling_ratio: f64,
}

impl TracingFlags {
    /// The tracing this process does (`instance`: its spans'
    /// `service.instance.id`), checked; None when off.
    pub fn config(&self, instance: &str) -> Result<Option<crate::telemetry::TraceConfig>, String> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        crate::telemetry::check(endpoint, self.trace_sampling_ratio).map_err(|e| e.to_string())?;
        Ok(Some(crate::telemetry::TraceConfig {
            endpoint: endpoint.clone(),
            sampling_ratio: self.trace_sampling_ratio,
            instance: instance.to_string(),
        }))
    }
}

/// TLS, with etcd's flags. A port serves TLS when its listen URL is
/// `https://`; the files are re-read when they change.
#[derive(Args, Clone, Default)]
pub struct TlsFlags {
    /// Client port certificate (PEM); also the metrics port's with an `https://` metrics URL.
    #[arg(long, env = "NOD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client port private key (PEM).
    #[arg(long, env = "NOD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle client certificates must chain to.
    #[arg(long, env = "NOD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file.
    #[arg(long, env = "NOD_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
    /// Peer port certificate (PEM), also presented when dialing peers: it
    /// needs both the server and the client extended key usage.
    #[arg(long, env = "NOD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer port private key (PEM).
    #[arg(long, env = "NOD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle peer certificates must chain to.
    #[arg(long, env = "NOD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long, env = "NOD_PEER_CLIENT_CERT_AUTH")]
    pub peer_client_cert_auth: bool,
    /// Only peers whose certificate has this common name may connect.
    #[arg(long, env = "NOD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Lowest TLS version served: TLS1.2 or TLS1.3.
    #[arg(long, env = "NOD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,
    /// Highest TLS version served: TLS1.2 or TLS1.3.
    #[arg(long, env = "NOD_TLS_MAX_VERSION", default_value = "TLS1.3")]
    pub tls_max_version: String,
    /// TLS 1.2 cipher suites allowed (comma-separated IANA names); TLS 1.3's are always on.
    #[arg(long, env = "NOD_CIPHER_SUITES", value_delimiter = ',')]
    pub cipher_suites: Vec<String>,
}

fn tls_version(flag: &str, v: &str) -> Result<TlsVersion, String> {
    match v {
        "TLS1.2" => Ok(TlsVersion::Tls12),
        "TLS1.3" => Ok(TlsVersion::Tls13),
        "TLS1.0" | "TLS1.1" => Err(format!(
            "{flag} {v}: TLS 1.0 and 1.1 are not supported (deprecated); use TLS1.2 or TLS1.3"
        )),
        _ => Err(format!("{flag} is TLS1.2 or TLS1.3, not {v:?}")),
    }
}

fn is_https(url: &str) -> bool {
    url.trim().starts_with("https://")
}

/// One port's TLS from the flags: `None` for an `http://` URL, the
/// options for an `https://` one (which then needs a certificate and key).
#[allow(clippy::too_many_arguments)]
fn port_tls(
    t: &TlsFlags,
    what: &str,
    url_flag: &str,
    url: &str,
    (cert_flag, cert): (&str, &Option<PathBuf>),
    (key_flag, key): (&str, &Option<PathBuf>),
    ca: &Option<PathBuf>,
    client_cert_auth: bool,
    allowed_cn: Option<String>,
) -> Result<Option<ServerTlsOptions>, String> {
    if !is_https(url) {
        if cert.is_some() || key.is_some() {
            return Err(format!(
                "{cert_flag}/{key_flag} are set but {url_flag} {url:?} is not https://; use an https:// URL to serve {what} over TLS"
            ));
        }
        if client_cert_auth {
            return Err(format!(
                "client certificate authentication on the {what} port needs an https:// {url_flag}"
            ));
        }
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(format!(
            "{url_flag} {url:?} is https://: give {cert_flag} and {key_flag}"
        ));
    };
    let mut o = ServerTlsOptions::new(cert.clone(), key.clone());
    o.trusted_ca_file = ca.clone();
    o.client_cert_auth = client_cert_auth;
    o.allowed_cn = allowed_cn;
    o.min_version = tls_version("--tls-min-version", &t.tls_min_version)?;
    o.max_version = tls_version("--tls-max-version", &t.tls_max_version)?;
    o.cipher_suites = t
        .cipher_suites
        .iter()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    if o.min_version > o.max_version {
        return Err("--tls-min-version is above --tls-max-version".into());
    }
    if o.client_cert_auth && o.trusted_ca_file.is_none() {
        return Err(format!(
            "client certificate authentication on the {what} port needs its trusted CA file"
        ));
    }
    if o.allowed_cn.is_some() && !o.client_cert_auth {
        return Err("--peer-cert-allowed-cn needs --peer-client-cert-auth".into());
    }
    if !o.cipher_suites.is_empty() && o.min_version == TlsVersion::Tls13 {
        return Err(
            "--cipher-suites cannot be set when only TLS 1.3 is allowed (its suites are fixed)"
                .into(),
        );
    }
    tls::cipher_suites(&o.cipher_suites).map_err(|e| format!("--cipher-suites: {e}"))?;
    Ok(Some(o))
}

fn tls_config(f: &ServerFlags, cfg: &mut ServerConfig) -> Result<(), String> {
    let t = &f.tls;
    cfg.client_tls = port_tls(
        t,
        "client",
        "--listen-client-urls",
        &f.listen_client_urls,
        ("--cert-file", &t.cert_file),
        ("--key-file", &t.key_file),
        &t.trusted_ca_file,
        t.client_cert_auth,
        None,
    )?;
    cfg.peer_tls = port_tls(
        t,
        "peer",
        "--listen-peer-urls",
        &f.listen_peer_urls,
        ("--peer-cert-file", &t.peer_cert_file),
        ("--peer-key-file", &t.peer_key_file),
        &t.peer_trusted_ca_file,
        t.peer_client_cert_auth,
        t.peer_cert_allowed_cn.clone().filter(|c| !c.is_empty()),
    )?;
    if t.peer_cert_allowed_cn.is_some() && cfg.peer_tls.is_none() {
        return Err(
            "--peer-cert-allowed-cn needs peer TLS (an https:// --listen-peer-urls)".into(),
        );
    }
    // The metrics port borrows the client port's certificate, as etcd's does.
    if is_https(&f.listen_metrics_urls) {
        let Some(client) = &cfg.client_tls else {
            return Err(
                "an https:// --listen-metrics-urls uses the client port's --cert-file and --key-file: serve clients over https:// too".into(),
            );
        };
        let mut m = client.clone();
        m.client_cert_auth = false;
        m.alpn = vec![b"http/1.1".to_vec()];
        cfg.metrics_tls = Some(m);
    }
    // Other members and clients dial the advertised URLs: a scheme that
    // differs from the listen URL's could never connect.
    for (flag, urls, tls_on) in [
        (
            "--advertise-client-urls",
            &cfg.advertise_client,
            cfg.client_tls.is_some(),
        ),
        (
            "--initial-advertise-peer-urls",
            &cfg.advertise_peer,
            cfg.peer_tls.is_some(),
        ),
    ] {
        if is_https(urls) != tls_on {
            return Err(format!(
                "{flag} {urls:?} must be {} like the URL this member listens on",
                if tls_on { "https://" } else { "http://" }
            ));
        }
    }
    Ok(())
}

/// Parses `http://host:port` (or `host:port`) into a socket address.
pub fn socket_addr(url: &str) -> Result<SocketAddr, String> {
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

/// `--initial-cluster`: name=peerURL,... as (name, peer URL) pairs.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-cluster entry {part:?} is not name=peerURL"))?;
        out.push((name.trim().to_string(), url.trim().to_string()));
    }
    Ok(out)
}

pub fn server_config(f: &ServerFlags) -> Result<ServerConfig, String> {
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
    let initial_cluster = parse_initial_cluster(&initial)?;
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
    cfg.console = f.console;
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
    cfg.quota_backend_bytes = match f.quota_backend_bytes {
        q if q < 0 => None,
        0 => Some(crate::server::node::DEFAULT_QUOTA_BYTES),
        q => Some(q as u64),
    };
    if f.max_txn_ops == 0 {
        return Err("--max-txn-ops must be at least 1".into());
    }
    cfg.max_txn_ops = f.max_txn_ops;
    cfg.initial_corrupt_check = f.initial_corrupt_check;
    cfg.force_new_cluster = f.force_new_cluster;
    if let Some(once) = &f.force_new_cluster_once {
        let (member, id) = once
            .split_once(':')
            .filter(|(m, id)| !m.is_empty() && !id.is_empty())
            .ok_or_else(|| format!("--force-new-cluster-once is MEMBER:ID, not {once:?}"))?;
        if member == cfg.name {
            cfg.force_new_cluster = true;
            cfg.force_once_id = Some(id.to_string());
        }
    }
    cfg.corrupt_check_time =
        crate::auth::jwt::go_duration(&f.corrupt_check_time).ok_or_else(|| {
            format!(
                "--corrupt-check-time is a duration such as 30s or 5m, not {:?}",
                f.corrupt_check_time
            )
        })?;
    cfg.auth_jwt = crate::auth::jwt::parse_flag(&f.auth_token).map_err(|e| e.to_string())?;
    if f.auth_token_ttl == 0 {
        return Err("--auth-token-ttl must be at least 1 second".into());
    }
    cfg.auth_token_ttl = Duration::from_secs(f.auth_token_ttl);
    if !(4..=31).contains(&f.bcrypt_cost) {
        tracing::warn!(
            cost = f.bcrypt_cost,
            "--bcrypt-cost outside 4..=31; using the default 10 (as etcd does)"
        );
    }
    cfg.bcrypt_cost = f.bcrypt_cost;
    cfg.snapshot_count = f.snapshot_count;
    cfg.progress_notify_interval = match &f.experimental_watch_progress_notify_interval {
        Some(v) => crate::auth::jwt::go_duration(v)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!("--experimental-watch-progress-notify-interval is a duration such as 10m, not {v:?}")
            })?,
        None => Duration::from_secs(f.progress_notify_interval.max(1)),
    };
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
            if !f.gossip_seeds.is_empty()
                || f.bootstrap_expect.is_some()
                || f.gossip_key_file.is_some()
            {
                return Err(
                    "--gossip-seeds, --bootstrap-expect and --gossip-key-file need --gossip-listen-addr"
                        .into(),
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
                    key_file: f.gossip_key_file.clone(),
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
    tls_config(f, &mut cfg)?;
    Ok(cfg)
}

pub async fn run(flags: ServerFlags) -> ExitCode {
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
    if let Some(dest) = flags.restore_from.clone() {
        let restored = tokio::select! {
            r = restore_if_missing(&flags, &cfg, &dest) => r,
            _ = stop.recv() => return ExitCode::SUCCESS,
        };
        if let Err(e) = restored {
            eprintln!("nod server: restoring from {dest}: {e}");
            return ExitCode::FAILURE;
        }
    }
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

/// `--restore-from`: builds the data directory from the backup unless it
/// exists already (an empty directory counts as missing: a fresh volume).
async fn restore_if_missing(f: &ServerFlags, cfg: &ServerConfig, dest: &str) -> Result<(), String> {
    let dir = &cfg.data_dir;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .next()
            .is_none();
        if !empty {
            tracing::info!(data_dir = %dir.display(), "data directory exists; --restore-from is not used");
            return Ok(());
        }
        std::fs::remove_dir(dir)
            .map_err(|e| format!("removing the empty {}: {e}", dir.display()))?;
    }
    if cfg.initial_cluster_state != ClusterState::New {
        return Err("--restore-from founds a new cluster: use --initial-cluster-state new".into());
    }
    let opts = crate::server::restore::RestoreOptions {
        file: dest.into(),
        data_dir: dir.clone(),
        name: cfg.name.clone(),
        initial_cluster: cfg.initial_cluster.clone(),
        token: cfg.initial_cluster_token.clone(),
        advertise_peer: cfg.advertise_peer.clone(),
        skip_hash_check: false,
    };
    let source = super::backup::BackupSource {
        dest,
        cluster: f.restore_cluster,
        chain: f.restore_chain.as_deref(),
        to_revision: f.restore_revision,
    };
    let done = super::backup::restore_from_backup(source, opts)
        .await
        .map_err(|e| e.to_string())?;
    for w in &done.warnings {
        tracing::warn!("restoring from {dest}: {w}");
    }
    let (chain, r) = (done.chain, done.restored);
    tracing::info!(
        chain = chain.folder(),
        revision = r.revision,
        keys = r.keys,
        cluster_id = %format!("{:x}", r.identity.cluster_id),
        orphan_leases = r.orphan_leases.len(),
        "restored the data directory from a backup"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

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
    fn quota_txn_and_corruption_flags_read_as_etcds() {
        let d = server_flags(&[]).unwrap();
        assert_eq!(
            d.quota_backend_bytes,
            Some(crate::server::node::DEFAULT_QUOTA_BYTES)
        );
        assert!(!d.initial_corrupt_check);
        assert!(d.corrupt_check_time.is_zero());
        let c = server_flags(&[
            "--quota-backend-bytes=-1",
            "--max-txn-ops=4",
            "--experimental-initial-corrupt-check=true",
            "--experimental-corrupt-check-time",
            "30s",
        ])
        .unwrap();
        assert_eq!(c.quota_backend_bytes, None, "negative turns the quota off");
        assert_eq!(c.max_txn_ops, 4);
        assert!(c.initial_corrupt_check);
        assert_eq!(c.corrupt_check_time, Duration::from_secs(30));
        let q = server_flags(&[
            "--quota-backend-bytes",
            "1048576",
            "--initial-corrupt-check",
        ]);
        let q = q.unwrap();
        assert_eq!(q.quota_backend_bytes, Some(1 << 20));
        assert!(q.initial_corrupt_check);
        let e = server_flags(&["--corrupt-check-time", "soon"]).unwrap_err();
        assert!(e.contains("--corrupt-check-time"), "{e}");
        assert!(server_flags(&["--max-txn-ops", "0"]).is_err());
        let p = server_flags(&["--experimental-watch-progress-notify-interval", "500ms"]).unwrap();
        assert_eq!(p.progress_notify_interval, Duration::from_millis(500));
        assert_eq!(
            server_flags(&["--progress-notify-interval", "7"])
                .unwrap()
                .progress_notify_interval,
            Duration::from_secs(7)
        );
        assert!(server_flags(&["--experimental-watch-progress-notify-interval", "0"]).is_err());
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
    fn tls_flags_follow_the_url_scheme_and_refuse_contradictions() {
        let e = server_flags(&["--listen-client-urls=https://127.0.0.1:2379"]).unwrap_err();
        assert!(e.contains("give --cert-file and --key-file"), "{e}");
        let e = server_flags(&["--cert-file=c.pem", "--key-file=k.pem"]).unwrap_err();
        assert!(e.contains("not https://"), "{e}");
        let https = [
            "--listen-client-urls=https://127.0.0.1:2379",
            "--cert-file=c.pem",
            "--key-file=k.pem",
        ];
        let with = |extra: &[&str]| {
            let mut a = https.to_vec();
            a.extend_from_slice(extra);
            server_flags(&a)
        };
        let cfg = with(&[]).unwrap();
        let c = cfg.client_tls.unwrap();
        assert_eq!(c.cert_file, PathBuf::from("c.pem"));
        assert!(!c.client_cert_auth && cfg.peer_tls.is_none() && cfg.metrics_tls.is_none());
        assert!(cfg.advertise_client.starts_with("https://"));
        let e = with(&["--client-cert-auth"]).unwrap_err();
        assert!(e.contains("trusted CA"), "{e}");
        let cfg = with(&["--client-cert-auth", "--trusted-ca-file=ca.pem"]).unwrap();
        assert!(cfg.client_tls.unwrap().client_cert_auth);
        let e = with(&["--tls-min-version=TLS1.0"]).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = with(&["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"]).unwrap_err();
        assert!(e.contains("above"), "{e}");
        let e = with(&[
            "--tls-min-version=TLS1.3",
            "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        ])
        .unwrap_err();
        assert!(e.contains("only TLS 1.3"), "{e}");
        let e = with(&["--cipher-suites=TLS_RSA_WITH_RC4_128_SHA"]).unwrap_err();
        assert!(e.contains("unsupported cipher suite"), "{e}");
        let e = with(&["--advertise-client-urls=http://10.0.0.1:2379"]).unwrap_err();
        assert!(e.contains("must be https://"), "{e}");
        let cfg = with(&["--listen-metrics-urls=https://127.0.0.1:2381"]).unwrap();
        assert_eq!(cfg.metrics_tls.unwrap().alpn, vec![b"http/1.1".to_vec()]);
        let e = server_flags(&["--listen-metrics-urls=https://127.0.0.1:2381"]).unwrap_err();
        assert!(e.contains("client port"), "{e}");
        let e = server_flags(&[
            "--listen-peer-urls=https://127.0.0.1:2380",
            "--peer-cert-file=p.pem",
            "--peer-key-file=pk.pem",
            "--peer-cert-allowed-cn=member",
        ])
        .unwrap_err();
        assert!(e.contains("--peer-client-cert-auth"), "{e}");
        let cfg = server_flags(&[
            "--listen-peer-urls=https://127.0.0.1:2380",
            "--peer-cert-file=p.pem",
            "--peer-key-file=pk.pem",
            "--peer-trusted-ca-file=ca.pem",
            "--peer-client-cert-auth",
            "--peer-cert-allowed-cn=member",
        ])
        .unwrap();
        let p = cfg.peer_tls.unwrap();
        assert_eq!(p.allowed_cn.as_deref(), Some("member"));
        assert!(cfg.initial_cluster[0].1.starts_with("https://"));
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
