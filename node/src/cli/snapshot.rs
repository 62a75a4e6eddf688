//! `nod snapshot save | status | restore`: etcdctl's and etcdutl's snapshot
//! commands, with their flags, outputs and error texts. `save` asks a
//! member over the network; `status` and `restore` work on files only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{connect, failed, usage, ClientFlags, Failure, Output};
use crate::server::restore::{self, RestoreOptions};
use crate::storage::kv_store::etcd_snapshot::{
    human_size, snapshot_status, strip_hash, HashCheck, SnapshotStatus,
};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Saves a backup of the whole key space to a file (etcd's format: a
    /// bbolt database and its SHA-256).
    Save { file: PathBuf },
    /// Prints a snapshot file's hash, revision, total keys and size, as
    /// `etcdctl snapshot status` does (-w simple, table, json or fields).
    Status { file: PathBuf },
    /// Builds a member's data directory from a snapshot file (Nod's or
    /// etcd's) for a new cluster, as `etcdutl snapshot restore` does. Run it
    /// for every member with the same file, --initial-cluster and token,
    /// then start each with `nod server` and the same --name and --data-dir.
    Restore(Box<RestoreArgs>),
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot file (or give --from-backup).
    #[arg(required_unless_present = "from_backup")]
    file: Option<PathBuf>,
    /// Restore from a backup destination instead of a file (see `nod
    /// backup`): the newest chain, or the one that reaches --to-revision.
    #[arg(long, conflicts_with = "file")]
    from_backup: Option<String>,
    /// The revision to restore to (point in time): any revision from a
    /// chain's full snapshot to its last segment.
    #[arg(long, requires = "from_backup", value_parser = clap::value_parser!(i64).range(1..))]
    to_revision: Option<i64>,
    /// The chain to restore from (its folder name, from `nod backup list`).
    #[arg(long, requires = "from_backup")]
    chain: Option<String>,
    /// The cluster whose backups to use (hex id), when the destination
    /// holds several.
    #[arg(long, requires = "from_backup", value_parser = super::backup::parse_hex_id)]
    backup_cluster: Option<u64>,
    /// The data directory to create (it must not exist).
    #[arg(long, env = "NOD_DATA_DIR", default_value = "./nod-data/default")]
    data_dir: PathBuf,
    /// This member's name in the new cluster.
    #[arg(long, env = "NOD_NAME", default_value = "default")]
    name: String,
    /// The new cluster's members: name=peerURL,... (default: this member alone).
    #[arg(long, env = "NOD_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// The new cluster's token. Give every restore a new one.
    #[arg(long, env = "NOD_INITIAL_CLUSTER_TOKEN", default_value = "nod-cluster")]
    initial_cluster_token: String,
    /// This member's peer URL, as `nod server` will advertise it.
    #[arg(
        long,
        env = "NOD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    initial_advertise_peer_urls: String,
    /// Restore a file without a SHA-256 (a `db` copied from a data
    /// directory) or with a wrong one.
    #[arg(long)]
    skip_hash_check: bool,
}

/// Runs a snapshot command; `save` on the async runtime, the others
/// directly.
pub fn run(command: SnapshotCommand, client: ClientFlags) -> ExitCode {
    match command {
        SnapshotCommand::Save { file } => super::run_client(save(file, client)),
        SnapshotCommand::Status { file } => finish(status(&file, client.output)),
        SnapshotCommand::Restore(args) => finish(restore(*args)),
    }
}

/// A file command's failure: bad usage exits 2, anything else 1.
fn finish(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => super::client::exit_for(f),
    }
}

async fn save(file: PathBuf, client: ClientFlags) -> Result<ExitCode, Failure> {
    let mut c = connect(&client)?;
    // Streamed to a temporary file, one chunk in memory at a time, its
    // SHA-256 checked on the way; renamed once whole and synced.
    let part = file.with_extension("part");
    let cannot = |e: std::io::Error| usage(format!("cannot write {}: {e}", part.display()));
    let mut out = tokio::fs::File::create(&part).await.map_err(cannot)?;
    let written = match c.snapshot_to(&mut out).await {
        Ok(w) => w,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&part);
            return Err(e.into());
        }
    };
    out.sync_all().await.map_err(cannot)?;
    drop(out);
    std::fs::rename(&part, &file)
        .map_err(|e| usage(format!("cannot write {}: {e}", file.display())))?;
    println!(
        "Snapshot saved at {} ({}, revision {})",
        file.display(),
        human_size(written.bytes),
        written.revision
    );
    Ok(ExitCode::SUCCESS)
}

fn status(file: &PathBuf, output: Output) -> Result<(), Failure> {
    let bytes = std::fs::read(file).map_err(|e| failed(format!("open {}: {e}", file.display())))?;
    let db = strip_hash(&bytes, HashCheck::IfPresent).map_err(failed)?;
    let s = snapshot_status(db).map_err(failed)?;
    print!("{}", format_status(&s, output));
    Ok(())
}

/// `s` as etcdctl prints it in each output form.
fn format_status(s: &SnapshotStatus, output: Output) -> String {
    let hash = format!("{:x}", s.hash);
    let size = human_size(s.total_size);
    match output {
        Output::Simple => format!("{hash}, {}, {}, {size}\n", s.revision, s.total_key),
        Output::Json => format!(
            "{}\n",
            json!({"hash": s.hash, "revision": s.revision, "totalKey": s.total_key, "totalSize": s.total_size})
        ),
        Output::Fields => format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            s.hash, s.revision, s.total_key, s.total_size
        ),
        Output::Table => table(
            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
            &[hash, s.revision.to_string(), s.total_key.to_string(), size],
        ),
    }
}

/// One row under centred headers, values right-aligned: etcdctl's
/// tablewriter layout.
fn table(headers: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .zip(row)
        .map(|(h, v)| h.len().max(v.len()))
        .collect();
    let rule = format!(
        "+{}+\n",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let centred: Vec<String> = headers
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let pad = w - h.len();
            format!(" {}{h}{} ", " ".repeat(pad / 2), " ".repeat(pad - pad / 2))
        })
        .collect();
    let values: Vec<String> = row
        .iter()
        .zip(&widths)
        .map(|(v, w)| format!(" {v:>w$} "))
        .collect();
    format!(
        "{rule}|{}|\n{rule}|{}|\n{rule}",
        centred.join("|"),
        values.join("|")
    )
}

fn restore(a: RestoreArgs) -> Result<(), Failure> {
    let initial = a
        .initial_cluster
        .clone()
        .unwrap_or_else(|| format!("{}={}", a.name, a.initial_advertise_peer_urls));
    let initial_cluster = super::server::parse_initial_cluster(&initial).map_err(usage)?;
    if a.initial_cluster_token == "nod-cluster" {
        eprintln!(
            "warning: --initial-cluster-token is the default; give each restored cluster a \
             token of its own so members of another cluster restored from the same file \
             cannot mistake it for theirs"
        );
    }
    let opts = RestoreOptions {
        file: a
            .file
            .clone()
            .unwrap_or_else(|| PathBuf::from(a.from_backup.clone().unwrap_or_default())),
        data_dir: a.data_dir,
        name: a.name,
        initial_cluster,
        token: a.initial_cluster_token,
        advertise_peer: a.initial_advertise_peer_urls,
        skip_hash_check: a.skip_hash_check,
    };
    let r = match &a.from_backup {
        None => restore::restore(&opts).map_err(failed)?,
        Some(dest) => {
            if opts.data_dir.exists() {
                // Before reading anything from the destination.
                return Err(failed(restore::RestoreError::Exists(opts.data_dir.clone())));
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
            let source = super::backup::BackupSource {
                dest,
                cluster: a.backup_cluster,
                chain: a.chain.as_deref(),
                to_revision: a.to_revision,
            };
            let done = rt.block_on(super::backup::restore_from_backup(source, opts.clone()))?;
            println!(
                "Read chain {} of cluster {:016x}: full snapshot at revision {}, {} changes after it",
                done.chain.folder(),
                done.chain.cluster_id,
                done.chain.revision().unwrap_or(0),
                done.changes
            );
            for w in &done.warnings {
                eprintln!("warning: {w}");
            }
            let r = done.restored;
            if !r.orphan_leases.is_empty() {
                eprintln!(
                    "warning: {} leases named by restored keys were not in the backup; they were given {}s TTLs: {}",
                    r.orphan_leases.len(),
                    crate::storage::kv_store::ORPHAN_LEASE_TTL,
                    r.orphan_leases.iter().map(|l| format!("{l:x}")).collect::<Vec<_>>().join(", ")
                );
            }
            r
        }
    };
    println!(
        "Restored {} into {}: member {} ({:x}) of cluster {:x} with {} members; revision {}, {} keys, {} leases",
        opts.file.display(),
        opts.data_dir.display(),
        r.identity.name,
        r.identity.member_id,
        r.identity.cluster_id,
        r.members.len(),
        r.revision,
        r.keys,
        r.leases
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcdctl 3.4.23's outputs for a recorded file (docs/research/snapshot-restore.md §3.2).
    #[test]
    fn status_prints_etcdctls_forms() {
        let s = SnapshotStatus {
            hash: 2_071_735_846,
            revision: 8,
            total_key: 15,
            total_size: 20480,
        };
        assert_eq!(
            format_status(&s, Output::Simple),
            "7b7c2e26, 8, 15, 20 kB\n"
        );
        assert_eq!(
            format_status(&s, Output::Json),
            "{\"hash\":2071735846,\"revision\":8,\"totalKey\":15,\"totalSize\":20480}\n"
        );
        assert_eq!(
            format_status(&s, Output::Fields),
            "\"Hash\" : 2071735846\n\"Revision\" : 8\n\"Keys\" : 15\n\"Size\" : 20480\n"
        );
        assert_eq!(
            format_status(&s, Output::Table),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | 7b7c2e26 |        8 |         15 |      20 kB |\n\
             +----------+----------+------------+------------+\n"
        );
    }
}
