//! The `nod` command line: one file per command group, each owning its
//! flags and what it prints. `bin/nod.rs` parses `Cli` and dispatches.
//!
//! - `server`, `dev`, `sim`: run a member, a local cluster, the simulation;
//! - `kv` (put, get, del, txn, compact), `watch`, `lease`, `member` and
//!   `maintenance` (status, move-leader): etcdctl-style client
//!   commands over `nod-client`, sharing the flags, printing and exit codes
//!   of `client`; `index` and `query`, Nod's own, the same way;
//! - `snapshot`: save (from a member), status and restore (from a file or
//!   a backup);
//! - `backup`: full and incremental backups into a directory or a bucket;
//! - `signal`: stopping on SIGTERM or SIGINT.
//!
//! Exit codes: 0 success; 1 the server refused the request (its etcd error
//! is printed); 2 bad usage; 3 the cluster could not be reached or had no
//! leader in time.

pub mod backup;
pub mod client;
pub mod dev;
pub mod index;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod member;
pub mod server;
pub mod signal;
pub mod sim;
pub mod snapshot;
pub mod watch;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use client::{ClientFlags, Failure};

#[derive(Parser)]
#[command(
    name = "nod",
    version,
    about = "Nod: a strongly consistent key-value store replicated with Raft, speaking the etcd v3 API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub client: ClientFlags,
}

#[derive(Subcommand)]
pub enum Command {
    /// Runs one Nod server (a member of a cluster).
    Server(Box<server::ServerFlags>),
    /// Runs a whole local cluster on loopback, for development: the quickest way to try Nod.
    Dev(dev::DevFlags),
    /// Puts a key.
    Put(kv::PutArgs),
    /// Gets a key or a range of keys.
    Get(kv::GetArgs),
    /// Deletes a key or a range of keys.
    Del(kv::DelArgs),
    /// Runs a transaction read from standard input, in etcdctl's format:
    /// compares, a blank line, success operations, a blank line, failure operations.
    Txn,
    /// Watches a key or range and prints events until interrupted.
    Watch(watch::WatchArgs),
    /// Leases: grant, revoke, keep-alive, timetolive, list.
    Lease {
        #[command(subcommand)]
        command: lease::LeaseCommand,
    },
    /// Members: list, add, remove, promote, update.
    Member {
        #[command(subcommand)]
        command: member::MemberCommand,
    },
    /// Secondary indexes over JSON values: create, list, describe, drop.
    Index {
        #[command(subcommand)]
        command: index::IndexCommand,
    },
    /// Runs a query over JSON values (SELECT … FROM 'prefix' WHERE …).
    Query(index::QueryArgs),
    /// Prints each endpoint's status (leader, Raft index and term, db size).
    Status,
    /// Snapshots (backups): save one from a member, print a file's status,
    /// restore a file into a new member's data directory.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Backups into a directory or an S3-compatible bucket: one full
    /// snapshot (save), or full snapshots on an interval and every change
    /// in between (run --incremental); list and verify what is there.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Compacts history up to a revision.
    Compact { revision: i64 },
    /// Hands leadership to another voter (hex member id).
    MoveLeader { target: String },
    /// Runs a simulated cluster (3 to 7 in-memory nodes, clients and a nemesis
    /// injecting faults) and checks every safety property and linearizability.
    Sim(sim::SimArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init_logs(format: LogFormat, default: &str) {
    init_logs_traced(format, default, None);
}

/// Logs to stderr (`RUST_LOG`, else `default`), and with a tracer, Nod's
/// spans at info and above (and the events inside them) exported as
/// OpenTelemetry spans, whatever the log level.
pub fn init_logs_traced(
    format: LogFormat,
    default: &str,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let traces = tracer.map(|t| {
        tracing_opentelemetry::layer().with_tracer(t).with_filter(
            tracing_subscriber::filter::Targets::new().with_target("nod", tracing::Level::INFO),
        )
    });
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(logs)
        .try_init();
}

/// Runs a server command (`nod server`, `nod dev`): logs, tracing when
/// asked (it needs the runtime), and the exporter flushed at the end.
pub fn run_server(
    format: LogFormat,
    default_logs: &'static str,
    tracing: Option<crate::telemetry::TraceConfig>,
    f: impl Future<Output = ExitCode>,
) -> ExitCode {
    run_async(async move {
        let telemetry = match tracing.as_ref().map(crate::telemetry::Telemetry::start) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                eprintln!("nod: {e}");
                return ExitCode::from(2);
            }
        };
        init_logs_traced(format, default_logs, telemetry.as_ref().map(|t| t.tracer()));
        let code = f.await;
        if let Some(t) = telemetry {
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        code
    })
}

/// Runs `f` on a multi-threaded runtime of its own.
pub fn run_async(f: impl Future<Output = ExitCode>) -> ExitCode {
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

/// Runs a client command: warnings-only logs, its failure as an exit code.
pub fn run_client(f: impl Future<Output = Result<ExitCode, Failure>>) -> ExitCode {
    init_logs(LogFormat::Text, "warn");
    run_async(async { f.await.unwrap_or_else(client::exit_for) })
}
