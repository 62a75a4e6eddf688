//! `nod backup save | run | list | verify`: backups into a directory or an
//! S3-compatible bucket (crate `nod-backup` holds the formats and the
//! writer). `save` takes one full snapshot; `run` keeps taking them on an
//! interval or a cron schedule and, with `--incremental`, records every
//! change in between as segments, so `nod snapshot restore --from-backup DEST --to-revision R`
//! can bring back any revision a chain covers.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use nod_backup::reader::{self, ChainInfo};
use nod_backup::retention::{self, ChainState, Policy};
use nod_backup::store::Destination;
use nod_backup::writer::{self, FollowEnd, SegmentOptions};
use nod_client::backup_agent::{AgentFailure, AgentStatus, FullBackup, Requested, Schedule};
use serde_json::json;

use super::client::{connect, failed, usage, ClientFlags, Failure, Output};
use crate::server::restore::{self, RestoreOptions, Restored};
use crate::storage::kv_store::etcd_snapshot::human_size;

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Takes one full snapshot into a new chain of DEST, then exits.
    Save(DestFlag),
    /// Keeps DEST backed up: a full snapshot every --full-every (or on
    /// --schedule) and, with --incremental, the changes in between;
    /// retention after each full. With --listen, serves its status and
    /// takes requests for a full now (the operator's backup agent). Stops
    /// on SIGTERM or SIGINT after writing what it holds.
    Run(RunArgs),
    /// Lists the chains in DEST: revisions each reaches, size, problems.
    List(ListArgs),
    /// Reads a chain whole (the newest, or --chain) and checks every
    /// checksum and link.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct DestFlag {
    /// Where backups go: a directory (file:///DIR or a path) or
    /// s3://BUCKET/PREFIX (endpoint, region and credentials from
    /// AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY; AWS_ALLOW_HTTP=true for plain HTTP).
    #[arg(long, env = "NOD_BACKUP_DEST")]
    pub dest: String,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    dest: DestFlag,
    /// Record the changes between full snapshots (point-in-time restore).
    #[arg(long, env = "NOD_BACKUP_INCREMENTAL")]
    incremental: bool,
    /// How often a new chain starts with a full snapshot (90s, 30m, 6h, 1d).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    full_every: Duration,
    /// When new chains start, in Kubernetes CronJob syntax, UTC
    /// ("0 */6 * * *", "@daily"); instead of --full-every.
    #[arg(long, conflicts_with = "full_every")]
    schedule: Option<String>,
    /// Serve GET /status (JSON) and POST /backups (a full now) here.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Cut a segment once its oldest change is this old: how far a backup
    /// may trail the cluster.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    segment_max_age: Duration,
    /// Cut a segment once it holds this many bytes of changes.
    #[arg(long, default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..=(256 << 20)))]
    segment_max_bytes: u64,
    /// Keep at most this many chains (the newest).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keep: Option<u64>,
    /// Delete chains whose newest object is older than this.
    #[arg(long, value_parser = parse_duration)]
    max_age: Option<Duration>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    dest: DestFlag,
    /// Only this cluster's chains (hex id).
    #[arg(long, value_parser = parse_hex_id)]
    backup_cluster: Option<u64>,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    dest: DestFlag,
    /// The chain to read (its folder name); the newest without it.
    #[arg(long)]
    chain: Option<String>,
    /// The cluster whose chains to read (hex id), when DEST holds several.
    #[arg(long, value_parser = parse_hex_id)]
    backup_cluster: Option<u64>,
}

pub fn run(command: BackupCommand, client: ClientFlags) -> ExitCode {
    nod_backup::install_crypto();
    match command {
        BackupCommand::Save(d) => super::run_client(save(d, client)),
        BackupCommand::Run(a) => {
            super::init_logs(super::LogFormat::Text, "info");
            super::run_async(async {
                run_loop(a, client)
                    .await
                    .unwrap_or_else(super::client::exit_for)
            })
        }
        BackupCommand::List(a) => super::run_client(list(a, client.output)),
        BackupCommand::Verify(a) => super::run_client(verify(a)),
    }
}

fn destination(d: &DestFlag) -> Result<Destination, Failure> {
    Destination::parse(&d.dest).map_err(|e| usage(e.to_string()))
}

/// `90`, `90s`, `30m`, `6h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (90s, 30m, 6h, 1d)"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?} is not a duration (90s, 30m, 6h, 1d)"))?;
    if secs == 0 {
        return Err("a duration must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}

/// A cluster id flag (hex), for clap.
pub fn parse_hex_id(s: &str) -> Result<u64, String> {
    super::client::parse_hex(s, "cluster").map_err(|f| f.to_string())
}

async fn save(d: DestFlag, client: ClientFlags) -> Result<ExitCode, Failure> {
    let dest = destination(&d)?;
    let mut c = connect(&client)?;
    let chain = writer::take_full(&mut c, &dest, false)
        .await
        .map_err(failed)?;
    println!(
        "Backup {} saved in {dest}: revision {}, {} ({} stored)",
        chain.dir,
        chain.manifest.revision,
        human_size(chain.manifest.full.size),
        human_size(chain.manifest.full.stored_size)
    );
    Ok(ExitCode::SUCCESS)
}

/// What `run` shares with its HTTP listener.
struct Agent {
    status: std::sync::Mutex<AgentStatus>,
    /// `POST /backups`: the newest request number.
    requested: tokio::sync::watch::Sender<u64>,
}

impl Agent {
    fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn failed(&self, message: String) {
        self.update(|s| {
            s.failures_total += 1;
            s.last_failure = Some(AgentFailure {
                time_unix_ms: writer::now_unix_ms(),
                message,
            });
        });
    }
}

/// When the next full starts: at the schedule's next time, or
/// `--full-every` after the last one started.
enum Fulls {
    Every(Duration),
    Cron(Box<Schedule>),
}

impl Fulls {
    fn next_unix_ms(&self, started_unix_ms: i64) -> i64 {
        match self {
            Fulls::Every(d) => started_unix_ms.saturating_add(d.as_millis() as i64),
            Fulls::Cron(c) => c
                .next_after(writer::now_unix_ms())
                // A schedule that never comes again: no more fulls.
                .unwrap_or(i64::MAX),
        }
    }

    fn describe(&self) -> String {
        match self {
            Fulls::Every(d) => format!("every {}s", d.as_secs()),
            Fulls::Cron(c) => c.as_str().to_string(),
        }
    }
}

/// Sleeps until `unix_ms` by the wall clock (a schedule names wall times).
async fn sleep_until_unix_ms(unix_ms: i64) {
    loop {
        let left = unix_ms.saturating_sub(writer::now_unix_ms());
        if left <= 0 {
            return;
        }
        // Woken at least every minute: the wall clock may be set.
        tokio::time::sleep(Duration::from_millis(left.min(60_000) as u64)).await;
    }
}

async fn run_loop(a: RunArgs, client: ClientFlags) -> Result<ExitCode, Failure> {
    let dest = destination(&a.dest)?;
    let fulls = match &a.schedule {
        Some(s) => Fulls::Cron(Box::new(Schedule::parse(s).map_err(usage)?)),
        None => Fulls::Every(a.full_every),
    };
    let mut c = connect(&client)?;
    let policy = Policy {
        max_count: a.keep.map(|n| n as usize),
        max_age_s: a.max_age.map(|d| d.as_secs() as i64),
    };
    let segments = SegmentOptions {
        max_bytes: a.segment_max_bytes as usize,
        max_age: a.segment_max_age,
    };
    let agent = Arc::new(Agent {
        status: std::sync::Mutex::new(AgentStatus {
            destination: dest.to_string(),
            schedule: fulls.describe(),
            incremental: a.incremental,
            ..Default::default()
        }),
        requested: tokio::sync::watch::channel(0).0,
    });
    if let Some(addr) = a.listen {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            // `[::]` where IPv6 is off: the IPv4 wildcard, as the server's
            // listeners do.
            Err(_) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
                let v4 = std::net::SocketAddr::from(([0, 0, 0, 0], addr.port()));
                tokio::net::TcpListener::bind(v4)
                    .await
                    .map_err(|e| usage(format!("--listen {addr}: {e}")))?
            }
            Err(e) => return Err(usage(format!("--listen {addr}: {e}"))),
        };
        tracing::info!(%addr, "backup agent listening (GET /status, POST /backups)");
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, agent_routes(agent)).await {
                tracing::error!(error = %e, "backup agent listener ended");
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::signal::stop_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = || *stop_rx.borrow();
    let mut requests = agent.requested.subscribe();
    let mut failures = 0u32;
    while !stopped() {
        let started = writer::now_unix_ms();
        let request = *requests.borrow_and_update();
        let mut chain = match writer::take_full(&mut c, &dest, a.incremental).await {
            Ok(chain) => chain,
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, "full backup failed");
                agent.failed(format!("full backup: {e}"));
                let wait = Duration::from_secs(5 * u64::from(failures.min(12)));
                let mut rx = requests.clone();
                tokio::select! {
                    () = wait_or_stop(stop_rx.clone(), wait) => {}
                    _ = rx.changed() => {}
                }
                continue;
            }
        };
        failures = 0;
        tracing::info!(
            chain = %chain.dir,
            revision = chain.manifest.revision,
            size = chain.manifest.full.size,
            stored = chain.manifest.full.stored_size,
            "full backup written"
        );
        let next_full = fulls.next_unix_ms(started);
        agent.update(|s| {
            s.cluster_id = Some(chain.manifest.cluster_id.clone());
            s.last_full = Some(FullBackup {
                chain: chain.dir.clone(),
                revision: chain.manifest.revision,
                size_bytes: chain.manifest.full.size,
                stored_bytes: chain.manifest.full.stored_size,
                time_unix_ms: chain.manifest.created_unix_ms,
            });
            s.fulls_total += 1;
            s.completed_request = s.completed_request.max(request);
            s.chain = a.incremental.then(|| chain.dir.clone());
            s.reached_revision = chain.manifest.revision;
            s.reached_unix_ms = chain.manifest.created_unix_ms;
            s.next_full_unix_ms = (next_full < i64::MAX).then_some(next_full);
        });
        prune(&dest, &chain, policy).await;
        // Until the next full is due, a backup is requested, or a stop.
        let mut rx = stop_rx.clone();
        let mut asked = requests.clone();
        let until = async move {
            tokio::select! {
                () = sleep_until_unix_ms(next_full) => {}
                _ = asked.changed() => {}
                _ = rx.wait_for(|s| *s) => {}
            }
        };
        if !a.incremental {
            until.await;
            continue;
        }
        let on_cut = &mut |chain: &writer::Chain| {
            agent.update(|s| {
                s.reached_revision = chain.sequence.reached();
                s.reached_unix_ms = writer::now_unix_ms();
            })
        };
        match writer::follow(&mut c, &dest, &mut chain, segments, until, on_cut).await {
            Ok(FollowEnd::Stopped) => {}
            Ok(end) => {
                tracing::warn!(chain = %chain.dir, reached = chain.sequence.reached(), ?end, "chain ended; starting a new one")
            }
            Err(e) => {
                tracing::error!(chain = %chain.dir, reached = chain.sequence.reached(), error = %e, "incremental backup failed; starting a new chain");
                agent.failed(format!("incremental backup of {}: {e}", chain.dir));
                wait_or_stop(stop_rx.clone(), Duration::from_secs(5)).await;
            }
        }
        agent.update(|s| s.chain = None);
        tracing::info!(chain = %chain.dir, segments = chain.segments, segment_bytes = chain.segment_bytes, reached = chain.sequence.reached(), "chain closed");
    }
    Ok(ExitCode::SUCCESS)
}

fn json_answer(
    code: axum::http::StatusCode,
    body: &impl serde::Serialize,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match serde_json::to_vec(body) {
        Ok(b) => (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            b,
        )
            .into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `GET /status` and `POST /backups` (nod_client::backup_agent).
fn agent_routes(agent: Arc<Agent>) -> axum::Router {
    use axum::routing::{get, post};
    let status = agent.clone();
    axum::Router::new()
        .route(
            "/status",
            get(move || {
                let s = status
                    .status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                async move { json_answer(axum::http::StatusCode::OK, &s) }
            }),
        )
        .route(
            "/backups",
            post(move || {
                let mut request = 0;
                agent.requested.send_modify(|n| {
                    *n += 1;
                    request = *n;
                });
                tracing::info!(request, "full backup requested");
                async move { json_answer(axum::http::StatusCode::ACCEPTED, &Requested { request }) }
            }),
        )
}

async fn wait_or_stop(mut stop: tokio::sync::watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// Retention after a new chain; failures are logged, never fatal.
async fn prune(dest: &Destination, current: &writer::Chain, policy: Policy) {
    if policy.max_count.is_none() && policy.max_age_s.is_none() {
        return;
    }
    let cluster = current.sequence.cluster_id;
    let chains = match reader::chains(dest, Some(cluster)).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "listing backups for retention");
            return;
        }
    };
    let states: Vec<ChainState> = chains
        .iter()
        .map(|c| ChainState {
            name: c.dir.clone(),
            full_revision: c.name.revision,
            complete: c.complete(),
            last_modified_unix_s: c.last_modified_unix_s,
            writing: c.dir == current.dir,
            pinned: false,
        })
        .collect();
    let now = writer::now_unix_ms() / 1000;
    for dir in retention::expired(&states, now, policy) {
        match delete_chain(dest, &dir).await {
            Ok(()) => tracing::info!(chain = %dir, "backup chain deleted (retention)"),
            Err(e) => tracing::warn!(chain = %dir, error = %e, "deleting a backup chain"),
        }
    }
}

/// The manifest first (the chain stops being usable), then the rest.
async fn delete_chain(dest: &Destination, dir: &str) -> Result<(), nod_backup::store::StoreError> {
    dest.delete(&format!("{dir}/{}", nod_backup::names::MANIFEST))
        .await?;
    for o in dest.objects(dir).await? {
        dest.delete(&format!("{dir}/{}", o.name)).await?;
    }
    Ok(())
}

async fn list(a: ListArgs, output: Output) -> Result<ExitCode, Failure> {
    let dest = destination(&a.dest)?;
    let chains = reader::chains(&dest, a.backup_cluster)
        .await
        .map_err(failed)?;
    match output {
        Output::Json => {
            let rows: Vec<_> = chains
                .iter()
                .map(|c| {
                    json!({
                        "cluster": format!("{:016x}", c.cluster_id),
                        "chain": c.folder(),
                        "complete": c.complete(),
                        "revision": c.revision(),
                        "reaches": c.reaches(),
                        "segments": c.segments.len(),
                        "storedBytes": c.stored_bytes,
                        "createdUnix": c.name.created_unix_s,
                        "lastModifiedUnix": c.last_modified_unix_s,
                        "problem": c.problem,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(rows));
        }
        _ => {
            for c in &chains {
                println!("{}", describe(c));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(c: &ChainInfo) -> String {
    let span = match (c.revision(), c.reaches()) {
        (Some(a), Some(b)) => format!("revisions {a}..={b}"),
        _ => "incomplete".into(),
    };
    let mut s = format!(
        "{:016x}/{}  {span}  {} segments  {}",
        c.cluster_id,
        c.folder(),
        c.segments.len(),
        human_size(c.stored_bytes)
    );
    if let Some(p) = &c.problem {
        s.push_str(&format!("  ({p})"));
    }
    s
}

/// The chains of one cluster in `dest`: the one asked for, or the only one
/// there.
pub async fn cluster_chains(
    dest: &Destination,
    cluster: Option<u64>,
) -> Result<Vec<ChainInfo>, Failure> {
    let chains = reader::chains(dest, cluster).await.map_err(failed)?;
    let clusters: std::collections::BTreeSet<u64> = chains.iter().map(|c| c.cluster_id).collect();
    if clusters.len() > 1 {
        return Err(usage(format!(
            "{dest} holds backups of {} clusters ({}); choose one with --backup-cluster",
            clusters.len(),
            clusters
                .iter()
                .map(|c| format!("{c:016x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(chains)
}

/// Where a restore from a backup reads: the destination, and which
/// cluster, chain and revision (the newest without them).
pub struct BackupSource<'a> {
    pub dest: &'a str,
    pub cluster: Option<u64>,
    pub chain: Option<&'a str>,
    pub to_revision: Option<i64>,
}

/// What a restore from a backup did.
pub struct FromBackup {
    pub chain: ChainInfo,
    /// Revisions restored after the full snapshot.
    pub changes: usize,
    /// What the restore could not bring back exactly.
    pub warnings: Vec<String>,
    pub restored: Restored,
}

/// Reads the chosen chain, checked, and builds `opts.data_dir` from it (on
/// a blocking thread): `nod snapshot restore --from-backup` and `nod
/// server --restore-from`.
pub async fn restore_from_backup(
    src: BackupSource<'_>,
    opts: RestoreOptions,
) -> Result<FromBackup, Failure> {
    nod_backup::install_crypto();
    let dest = Destination::parse(src.dest).map_err(|e| usage(e.to_string()))?;
    let chains = cluster_chains(&dest, src.cluster).await?;
    let chain = reader::choose(&chains, src.chain, src.to_revision)
        .map_err(failed)?
        .clone();
    let fetched = reader::fetch(&dest, &chain, src.to_revision)
        .await
        .map_err(failed)?;
    let changes = fetched.changes.len();
    let warnings = fetched.warnings.clone();
    let restored = tokio::task::spawn_blocking(move || {
        restore::restore_snapshot(
            &opts,
            &fetched.snapshot,
            &fetched.changes,
            Some(fetched.digest),
        )
    })
    .await
    .map_err(failed)?
    .map_err(failed)?;
    Ok(FromBackup {
        chain,
        changes,
        warnings,
        restored,
    })
}

async fn verify(a: VerifyArgs) -> Result<ExitCode, Failure> {
    let dest = destination(&a.dest)?;
    let chains = cluster_chains(&dest, a.backup_cluster).await?;
    let chosen = reader::choose(&chains, a.chain.as_deref(), None).map_err(failed)?;
    let fetched = reader::fetch(&dest, chosen, None).await.map_err(failed)?;
    let db = &fetched.snapshot[..fetched.snapshot.len() - 32];
    crate::storage::kv_store::etcd_snapshot::snapshot_status(db).map_err(failed)?;
    println!(
        "{}: full snapshot at revision {} and {} segments to revision {}: all checks pass",
        describe(chosen).split("  ").next().unwrap_or(""),
        chosen.revision().unwrap_or(0),
        chosen.segments.len(),
        fetched.revision
    );
    if let Some(p) = &chosen.problem {
        println!("note: {p}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "0s", "h", "5w", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
