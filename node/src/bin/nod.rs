//! The `nod` command: parses the flags and hands each command to its
//! module in `nod::cli` (one file per command group). No logic lives here.

use std::process::ExitCode;

use clap::Parser;
use nod::cli::{
    backup, dev, index, kv, lease, maintenance, member, run_client, run_server, server, sim,
    snapshot, watch, Cli, Command,
};

/// mimalloc instead of glibc's malloc: under 256 writers glibc's allocator
/// was a sixth of the leader's CPU (perf), and its per-thread arenas held
/// memory long after a burst.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let Cli { command, client } = Cli::parse();
    match command {
        Command::Sim(args) => sim::run(args),
        Command::Server(flags) => match flags.tracing.config(&flags.name) {
            Ok(tracing) => run_server(flags.log_format, "info", tracing, server::run(*flags)),
            Err(e) => {
                eprintln!("nod server: {e}");
                ExitCode::from(2)
            }
        },
        Command::Dev(flags) => match flags.tracing.config("dev") {
            Ok(tracing) => run_server(flags.log_format, "warn,nod=info", tracing, dev::run(flags)),
            Err(e) => {
                eprintln!("nod dev: {e}");
                ExitCode::from(2)
            }
        },
        Command::Put(args) => run_client(kv::put(args, client)),
        Command::Get(args) => run_client(kv::get(args, client)),
        Command::Del(args) => run_client(kv::del(args, client)),
        Command::Txn => run_client(kv::txn(client)),
        Command::Compact { revision } => run_client(kv::compact(revision, client)),
        Command::Watch(args) => run_client(watch::watch(args, client)),
        Command::Lease { command } => run_client(lease::lease(command, client)),
        Command::Member { command } => run_client(member::member(command, client)),
        Command::Index { command } => run_client(index::index(command, client)),
        Command::Query(args) => run_client(index::query(args, client)),
        Command::Status => run_client(maintenance::status(client)),
        Command::Snapshot { command } => snapshot::run(command, client),
        Command::Backup { command } => backup::run(command, client),
        Command::MoveLeader { target } => run_client(maintenance::move_leader(target, client)),
    }
}
