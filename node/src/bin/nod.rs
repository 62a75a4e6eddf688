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

/// How often an idle process hands memory freed over a while back to the
/// system (see `collect_freed_memory`).
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// mimalloc hands freed memory back to the system a short delay after the
/// free, and only when some thread next allocates: a member that went idle
/// after sending one large Range answer kept the answer's buffer resident
/// (0.5 GB after a 0.5 GB answer, measured). A thread of its own asks it,
/// twice a second, to return what has waited long enough.
fn collect_freed_memory() {
    let collect = || {
        // `mi_collect` works through the calling thread's own heap and
        // returns at once while it has none; this thread may never
        // allocate, so it sets its heap up first.
        // SAFETY: `mi_thread_init` and `mi_collect` take no pointer and may
        // be called from any thread at any time; `false` only returns
        // memory already free.
        unsafe { libmimalloc_sys::mi_thread_init() };
        loop {
            std::thread::sleep(COLLECT_EVERY);
            // SAFETY: as above.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    };
    // Without the thread, memory is returned later; nothing else changes.
    let _ = std::thread::Builder::new()
        .name("mi-collect".into())
        .spawn(collect);
}

fn main() -> ExitCode {
    let Cli { command, client } = Cli::parse();
    if matches!(command, Command::Server(_) | Command::Dev(_)) {
        collect_freed_memory();
    }
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
