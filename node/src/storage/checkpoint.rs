//! State machine snapshots as RocksDB checkpoints under `<data>/snap`.
//!
//! A checkpoint is taken from the live store in the background (RocksDB makes
//! it a consistent point in time; SST files are hard links). Its applied
//! index and member table are read back from the checkpoint itself, so the
//! Raft snapshot's index, term and configuration are exactly what it holds.
//! Each checkpoint has a digest (total bytes and CRC32 over its files in
//! name order) that travels in the Raft snapshot's data and is checked by the
//! receiver before it installs anything.
//!
//! Installing copies a checkpoint into a new folder and then switches
//! `<data>/kv.current` to it with an atomic rename, so a crash leaves either
//! the old store or the new one current; `remove_stale` clears the other at
//! startup. Does file I/O.

use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::DB;

use nod_proto::etcd::etcdserverpb::Member;

/// Most files a checkpoint may hold (a peer cannot make us create more).
pub const MAX_FILES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
#[error("snapshot: {0}")]
pub struct CheckpointError(pub String);

fn err(context: &str, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError(format!("{context}: {e}"))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub index: u64,
    pub term: u64,
    pub members: Vec<Member>,
    pub bytes: u64,
    pub crc32: u32,
    pub dir: PathBuf,
}

/// Where the checkpoint of `(index, term)` lives.
pub fn dir_for(root: &Path, index: u64, term: u64) -> PathBuf {
    root.join(format!("{index:016x}-{term:016x}"))
}

/// A file name as it may appear in a checkpoint: one plain path component.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

/// The checkpoint's files, sorted by name, with their sizes.
pub fn files(dir: &Path) -> Result<Vec<(String, u64)>, CheckpointError> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(dir).map_err(|e| err(&format!("listing {}", dir.display()), e))?
    {
        let entry = entry.map_err(|e| err("listing a checkpoint", e))?;
        let meta = entry
            .metadata()
            .map_err(|e| err("reading a checkpoint file", e))?;
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "LOCK" || name.ends_with(".log") && meta.len() == 0 {
            // RocksDB's lock file and empty WALs are not state.
            continue;
        }
        out.push((name, meta.len()));
    }
    out.sort();
    if out.len() > MAX_FILES {
        return Err(CheckpointError(format!(
            "{} files in {}",
            out.len(),
            dir.display()
        )));
    }
    Ok(out)
}

/// Total bytes and CRC32 of the files in name order.
pub fn digest(dir: &Path) -> Result<(u64, u32), CheckpointError> {
    use std::io::Read;
    let mut h = crc32fast::Hasher::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1024 * 1024];
    for (name, _) in files(dir)? {
        let mut f =
            std::fs::File::open(dir.join(&name)).map_err(|e| err(&format!("reading {name}"), e))?;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| err(&format!("reading {name}"), e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            h.update(&buf[..n]);
        }
    }
    Ok((total, h.finalize()))
}

/// Takes a checkpoint of `db` into `root` and names it by the applied index
/// and term it holds.
pub fn create(db: &DB, root: &Path) -> Result<CheckpointInfo, CheckpointError> {
    std::fs::create_dir_all(root).map_err(|e| err("creating the snapshot folder", e))?;
    let tmp = root.join(format!("tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| err("clearing a stale checkpoint", e))?;
    }
    Checkpoint::new(db)
        .and_then(|c| c.create_checkpoint(&tmp))
        .map_err(|e| err("creating a RocksDB checkpoint", e))?;
    let (index, term, members) = super::kv_store::KvStore::read_checkpoint(&tmp)
        .map_err(|e| err("reading the checkpoint back", e))?;
    let (bytes, crc32) = digest(&tmp)?;
    let dir = dir_for(root, index, term);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| err("replacing a checkpoint", e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| err("naming the checkpoint", e))?;
    sync_dir(root)?;
    Ok(CheckpointInfo {
        index,
        term,
        members,
        bytes,
        crc32,
        dir,
    })
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| err(&format!("syncing {}", dir.display()), e))
}

/// Copies a checkpoint: SST files are hard-linked (RocksDB never changes
/// them), the others (MANIFEST, CURRENT, OPTIONS, which a live store
/// appends to) are copied.
fn copy_checkpoint(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(to).map_err(|e| err("creating the store folder", e))?;
    for (name, _) in files(from)? {
        let (src, dst) = (from.join(&name), to.join(&name));
        let linked = name.ends_with(".sst") && std::fs::hard_link(&src, &dst).is_ok();
        if !linked {
            std::fs::copy(&src, &dst).map_err(|e| err(&format!("copying {name}"), e))?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| err(&format!("syncing {name}"), e))?;
        }
    }
    sync_dir(to)
}

const CURRENT: &str = "kv.current";

/// The state machine's folder: `<data>/kv`, or the installed snapshot that
/// `<data>/kv.current` names.
pub fn current_kv(data: &Path) -> Result<PathBuf, CheckpointError> {
    match std::fs::read_to_string(data.join(CURRENT)) {
        Ok(name) => {
            let name = name.trim();
            if !valid_file_name(name) || !name.starts_with("kv") {
                return Err(CheckpointError(format!("{CURRENT} names {name:?}")));
            }
            Ok(data.join(name))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(data.join("kv")),
        Err(e) => Err(err(&format!("reading {CURRENT}"), e)),
    }
}

/// Copies `checkpoint` into a new folder beside the store and makes it the
/// current one (`kv.current`, replaced atomically). Returns its path; the
/// caller opens it, closes the old store, then calls `remove_stale`.
/// (A new folder rather than a rename over the old one: the old store is
/// still open, and RocksDB locks by path.)
pub fn install(data: &Path, checkpoint: &Path, index: u64) -> Result<PathBuf, CheckpointError> {
    let name = format!("kv-{index:016x}");
    let target = data.join(&name);
    let staging = data.join(format!("{name}.installing"));
    for d in [&staging, &target] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(|e| err("clearing a stale install", e))?;
        }
    }
    copy_checkpoint(checkpoint, &staging)?;
    std::fs::rename(&staging, &target).map_err(|e| err("putting the snapshot in place", e))?;
    let tmp = data.join(format!("{CURRENT}.tmp"));
    std::fs::write(&tmp, &name)
        .and_then(|_| std::fs::File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, data.join(CURRENT)))
        .map_err(|e| err(&format!("writing {CURRENT}"), e))?;
    sync_dir(data)?;
    Ok(target)
}

/// Removes state machine folders other than the current one (old stores,
/// interrupted installs).
pub fn remove_stale(data: &Path) -> Result<(), CheckpointError> {
    let current = current_kv(data)?;
    let Ok(entries) = std::fs::read_dir(data) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if (name == "kv" || name.starts_with("kv-")) && path != current && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

/// Keeps the newest `keep` checkpoints (by index) and removes the rest,
/// and any temporary folders.
pub fn prune(root: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut named: Vec<(String, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("tmp-") || name.starts_with("recv-") {
            continue;
        }
        named.push((name, e.path()));
    }
    named.sort();
    let n = named.len();
    for (_, path) in named.into_iter().take(n.saturating_sub(keep)) {
        let _ = std::fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_peers_are_plain_components() {
        for ok in ["000012.sst", "MANIFEST-000005", "CURRENT", "OPTIONS-000007"] {
            assert!(valid_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "/abs",
            "a\\b",
            "x\0y",
        ] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
        assert!(!valid_file_name(&"x".repeat(256)));
    }
}
