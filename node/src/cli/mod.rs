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
