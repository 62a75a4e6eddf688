//! `nod snapshot restore`: a member's data directory built from a snapshot
//! file (Nod's or etcd's: both are etcd's bbolt format), as etcdutl's
//! `snapshot restore` builds one for etcd. Does file I/O; no network.
//!
//! What it writes is what founding writes (`super::found`), with the
//! snapshot's state machine instead of an empty one:
//! - `kv-…1/` and `kv.current`: the imported store at applied index 1,
//!   with the new member table (`KvStore::import_etcd`);
//! - `snap/…1-…1/`: a checkpoint of that store, and in `log/` a Raft
//!   snapshot at index 1, term 1 that names it. A learner added later gets
//!   this checkpoint streamed, not just a member table; without it the
//!   learner would miss every restored key;
//! - `identity.json`: the member id from the name and token (as founding
//!   derives it) and a cluster id that also takes in the database's
//!   SHA-256 (`identity::restored_cluster_id`).
//!
//! Everything is built in `<data-dir>.restoring` and renamed into place
//! once synced, so a failed restore leaves nothing behind (etcd writes in
//! place). Every member restored from the same file, `--initial-cluster`
//! and token gets the same ids and byte-identical state.

use std::path::{Path, PathBuf};

use nod_raft::{ConfState, NodeId};
use prost::Message as _;
use sha2::Digest as _;

use crate::command::SnapshotData;
use crate::identity::{self, Identity};
use crate::storage::backend::RocksBackend;
use crate::storage::kv_store::etcd_snapshot::{strip_hash, HashCheck, SnapshotError};
use crate::storage::kv_store::ImportError;
use crate::storage::{checkpoint, KvStore, LogStore};
use nod_proto::etcd::etcdserverpb::Member;
use nod_proto::nodbackuppb::RevisionBatch;

/// What to restore, and as which member of which new cluster.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub name: String,
    /// (name, peer URL) of every member of the new cluster.
    pub initial_cluster: Vec<(String, String)>,
    pub token: String,
    /// This member's peer URL: it must be its entry's in `initial_cluster`.
    pub advertise_peer: String,
    /// Restore a file without a hash, or whose hash is wrong
    /// (`--skip-hash-check`: a `db` copied out of a data directory).
    pub skip_hash_check: bool,
}

/// What a restore built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub identity: Identity,
    pub members: Vec<Member>,
    /// The last revision restored; the next write gets the one after it.
    pub revision: i64,
    pub compacted: i64,
    pub keys: usize,
    pub leases: usize,
    /// Leases restored keys named that the backup never recorded, given
    /// `ORPHAN_LEASE_TTL` (a restore from a file has none).
    pub orphan_leases: Vec<i64>,
}

/// Why a restore did not happen. Nothing is left in the data directory.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// etcdutl's text, word for word.
    #[error("data-dir {:?} exists", .0.display().to_string())]
    Exists(PathBuf),
    #[error("open {}: {cause}", path.display())]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{0}")]
    Config(String),
    #[error("restoring into {}: {cause}", path.display())]
    Write { path: PathBuf, cause: String },
}

/// The folder a restore into `data_dir` builds in.
fn staging_dir(data_dir: &Path) -> PathBuf {
    let mut s = data_dir.as_os_str().to_owned();
    s.push(".restoring");
    PathBuf::from(s)
}

/// Builds `opts.data_dir` from `opts.file`. Refuses a data directory that
/// exists (even empty), a file whose hash is missing or wrong (unless
/// skipped), and any file that is not a sound etcd database.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    if opts.data_dir.exists() {
        return Err(RestoreError::Exists(opts.data_dir.clone()));
    }
    let bytes = std::fs::read(&opts.file).map_err(|cause| RestoreError::Open {
        path: opts.file.clone(),
        cause,
    })?;
    restore_snapshot(opts, &bytes, &[], None)
}

/// Builds `opts.data_dir` from a snapshot file's `bytes` and the backup
/// `changes` after it (`nod snapshot restore --from-backup`; `opts.file`
/// only names the source in errors). `digest` identifies the content for
/// the new cluster id: a backup passes one that takes in the revision
/// restored to, so restores of one chain to different revisions never
/// share a cluster id; without it, the database's SHA-256.
pub fn restore_snapshot(
    opts: &RestoreOptions,
    bytes: &[u8],
    changes: &[RevisionBatch],
    digest: Option<[u8; 32]>,
) -> Result<Restored, RestoreError> {
    if opts.data_dir.exists() {
        return Err(RestoreError::Exists(opts.data_dir.clone()));
    }
    let check = if opts.skip_hash_check {
        HashCheck::Skip
    } else {
        HashCheck::Require
    };
    let db = strip_hash(bytes, check)?;
    let digest: [u8; 32] = digest.unwrap_or_else(|| sha2::Sha256::digest(db).into());
    let (attrs, member_id) = super::founding_members(
        &opts.initial_cluster,
        &opts.name,
        &opts.advertise_peer,
        &opts.token,
    )
    .map_err(|e| RestoreError::Config(e.to_string()))?;
    let members: Vec<Member> = attrs
        .into_iter()
        .map(|m| Member {
            id: m.id,
            name: m.name,
            peer_ur_ls: m.peer_urls,
            client_ur_ls: m.client_urls,
            is_learner: false,
        })
        .collect();
    let identity = Identity {
        name: opts.name.clone(),
        member_id,
        cluster_id: identity::restored_cluster_id(
            members.iter().map(|m| m.id).collect(),
            &opts.token,
            &digest,
        ),
    };

    let staging = staging_dir(&opts.data_dir);
    let write = |cause: String| RestoreError::Write {
        path: opts.data_dir.clone(),
        cause,
    };
    if staging.exists() {
        // A restore that died half-way; nothing in it is anyone's data.
        std::fs::remove_dir_all(&staging)
            .map_err(|e| write(format!("clearing {}: {e}", staging.display())))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| write(e.to_string()))?;
    let restored = match build(&staging, &opts.data_dir, db, changes, &members, &identity) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    std::fs::rename(&staging, &opts.data_dir)
        .map_err(|e| write(format!("renaming {}: {e}", staging.display())))?;
    let parent = match opts.data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::File::open(&parent)
        .and_then(|f| f.sync_all())
        .map_err(|e| write(format!("syncing {}: {e}", parent.display())))?;
    Ok(Restored {
        identity,
        members,
        ..restored
    })
}

/// Builds the member's data in `dir`; errors name `target`, the folder the
/// user asked for, which `dir` becomes.
fn build(
    dir: &Path,
    target: &Path,
    db: &[u8],
    changes: &[RevisionBatch],
    members: &[Member],
    identity: &Identity,
) -> Result<Restored, RestoreError> {
    let write = |what: &str, e: &dyn std::fmt::Display| RestoreError::Write {
        path: target.to_path_buf(),
        cause: format!("{what}: {e}"),
    };
    let backend =
        RocksBackend::open(&dir.join("kv")).map_err(|e| write("opening the store", &e))?;
    let (kv, notes) =
        KvStore::import_backup(backend, db, changes, members).map_err(|e| match e {
            ImportError::Snapshot(e) => RestoreError::Snapshot(e),
            other => write("importing the snapshot", &other),
        })?;
    let info = checkpoint::create(&kv.db_handle(), &dir.join("snap"))
        .map_err(|e| write("taking a checkpoint", &e))?;
    drop(kv);
    if (info.index, info.term) != (1, 1) {
        return Err(write(
            "the checkpoint",
            &format!("holds index {} term {}, not 1 1", info.index, info.term),
        ));
    }
    // The checkpoint's files are synced; the import's store is not (its
    // writes skip the WAL's fsync), so the member runs on a copy of the
    // checkpoint, as after a snapshot install.
    let path = checkpoint::install(dir, &info.dir, 1).map_err(|e| write("installing", &e))?;
    checkpoint::remove_stale(dir).map_err(|e| write("removing the import", &e))?;
    let kv = KvStore::open(&path).map_err(|e| write("reopening the store", &e))?;
    let restored = Restored {
        identity: identity.clone(),
        members: Vec::new(),
        revision: kv.current_revision(),
        compacted: kv.compacted_revision(),
        keys: kv.key_count(),
        leases: kv.leases().len(),
        orphan_leases: notes.orphan_leases,
    };
    drop(kv);

    let mut log = LogStore::open(&dir.join("log")).map_err(|e| write("opening the log", &e))?;
    let data = SnapshotData {
        members: Vec::new(),
        checkpoint_index: info.index,
        checkpoint_bytes: info.bytes,
        checkpoint_crc32: info.crc32,
    };
    let conf = ConfState::with_voters(members.iter().map(|m| NodeId(m.id)));
    log.bootstrap(conf, data.encode_to_vec())
        .map_err(|e| write("writing the log", &e))?;
    drop(log);
    identity
        .store(dir)
        .map_err(|e| write("writing the identity", &e))?;
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_sits_beside_the_data_dir() {
        assert_eq!(
            staging_dir(Path::new("/d/n1")),
            PathBuf::from("/d/n1.restoring")
        );
        assert_eq!(staging_dir(Path::new("n1")), PathBuf::from("n1.restoring"));
    }
}
