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

use std::collections::HashMap;
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
    digest_reusing(dir, &mut TableSums::default()).map(|d| (d.bytes, d.crc32))
}

/// The CRC32 of each table file of the last checkpoint digested, so the
/// next digest reads only the table files new since then. A checkpoint's
/// table files are hard links to the store's, which RocksDB never changes
/// once written, and most of them are in the checkpoint before: reading
/// every file of every checkpoint (one per `snapshot_count` writes) read
/// the whole database again each time, 9 GiB at a time for a member
/// grown to 8 GiB, on the disk and in the page cache the store serves from.
#[derive(Default)]
pub struct TableSums {
    /// The checkpoint the sums were taken of.
    dir: Option<PathBuf>,
    files: HashMap<String, TableSum>,
}

#[derive(Clone)]
struct TableSum {
    dev: u64,
    ino: u64,
    len: u64,
    crc: crc32fast::Hasher,
}

/// A checkpoint's digest, and how much of it was read to make it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub bytes: u64,
    pub crc32: u32,
    /// Bytes read from the disk (the rest were table files whose sums
    /// `TableSums` held).
    pub read: u64,
}

/// `digest`, taking the sum of each table file that is the same file
/// (device and inode, still linked in the checkpoint `sums` were taken of)
/// from `sums`, which it then replaces by this checkpoint's.
pub fn digest_reusing(dir: &Path, sums: &mut TableSums) -> Result<Digest, CheckpointError> {
    use std::os::unix::fs::MetadataExt;
    let prev = std::mem::take(sums);
    let mut next = TableSums {
        dir: Some(dir.to_path_buf()),
        files: HashMap::new(),
    };
    let mut h = crc32fast::Hasher::new();
    let mut out = Digest {
        bytes: 0,
        crc32: 0,
        read: 0,
    };
    let mut buf = Vec::new();
    for (name, _) in files(dir)? {
        let path = dir.join(&name);
        let meta = std::fs::metadata(&path).map_err(|e| err(&format!("reading {name}"), e))?;
        let sum = match prev.reusable(&name, &meta) {
            Some(sum) => sum,
            None => {
                if buf.is_empty() {
                    buf = vec![0u8; 1024 * 1024];
                }
                let (len, crc) = hash_file(&path, &name, &mut buf)?;
                out.read += len;
                TableSum {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    len,
                    crc,
                }
            }
        };
        out.bytes += sum.len;
        h.combine(&sum.crc);
        if name.ends_with(".sst") {
            next.files.insert(name, sum);
        }
    }
    out.crc32 = h.finalize();
    *sums = next;
    Ok(out)
}

impl TableSums {
    /// The sum of table file `name` whose metadata is `meta`, if it is the
    /// very file summed before.
    fn reusable(&self, name: &str, meta: &std::fs::Metadata) -> Option<TableSum> {
        use std::os::unix::fs::MetadataExt;
        if !name.ends_with(".sst") {
            return None;
        }
        let sum = self.files.get(name)?;
        if (meta.dev(), meta.ino(), meta.len()) != (sum.dev, sum.ino, sum.len) {
            return None;
        }
        // Still linked where it was summed: the same file, not another
        // that was given a freed inode number since.
        let there = std::fs::symlink_metadata(self.dir.as_ref()?.join(name)).ok()?;
        ((there.dev(), there.ino()) == (sum.dev, sum.ino)).then(|| sum.clone())
    }
}

fn hash_file(
    path: &Path,
    name: &str,
    buf: &mut [u8],
) -> Result<(u64, crc32fast::Hasher), CheckpointError> {
    use std::io::Read;
    let mut h = crc32fast::Hasher::new();
    let mut len = 0u64;
    let mut f = std::fs::File::open(path).map_err(|e| err(&format!("reading {name}"), e))?;
    loop {
        let n = f
            .read(buf)
            .map_err(|e| err(&format!("reading {name}"), e))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
    Ok((len, h))
}

/// Takes a checkpoint of `db` into `root` and names it by the applied index
/// and term it holds.
pub fn create(db: &DB, root: &Path) -> Result<CheckpointInfo, CheckpointError> {
    create_reusing(db, root, &mut TableSums::default())
}

/// `create`, digesting the checkpoint with `digest_reusing` and `sums`.
pub fn create_reusing(
    db: &DB,
    root: &Path,
    sums: &mut TableSums,
) -> Result<CheckpointInfo, CheckpointError> {
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
    let dir = dir_for(root, index, term);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| err("replacing a checkpoint", e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| err("naming the checkpoint", e))?;
    sync_dir(root)?;
    // Digested where it stays, so the next checkpoint finds these files.
    let d = digest_reusing(&dir, sums)?;
    Ok(CheckpointInfo {
        index,
        term,
        members,
        bytes: d.bytes,
        crc32: d.crc32,
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

    /// A fresh folder under the system's temporary directory.
    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nod-checkpoint-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn digests_reuse_only_the_very_table_files_summed_before() {
        let root = scratch("reuse");
        let (a, b, c) = (root.join("a"), root.join("b"), root.join("c"));
        for d in [&a, &b, &c] {
            std::fs::create_dir_all(d).unwrap();
        }
        let big = |seed: u8| -> Vec<u8> { (0..300_000u32).map(|i| (i as u8) ^ seed).collect() };
        std::fs::write(a.join("000007.sst"), big(1)).unwrap();
        std::fs::write(a.join("000009.sst"), big(2)).unwrap();
        std::fs::write(a.join("MANIFEST-000005"), b"manifest a").unwrap();
        let mut sums = TableSums::default();
        let first = digest_reusing(&a, &mut sums).unwrap();
        assert_eq!((first.bytes, first.crc32), digest(&a).unwrap());
        assert_eq!(first.read, first.bytes, "nothing to reuse yet");

        // The next checkpoint: one table file linked from the last, one
        // new, and a manifest of the same name but other bytes.
        std::fs::hard_link(a.join("000007.sst"), b.join("000007.sst")).unwrap();
        std::fs::write(b.join("000011.sst"), big(3)).unwrap();
        std::fs::write(b.join("MANIFEST-000005"), b"manifest b").unwrap();
        let second = digest_reusing(&b, &mut sums).unwrap();
        assert_eq!(
            (second.bytes, second.crc32),
            digest(&b).unwrap(),
            "the same digest as reading every byte"
        );
        assert_eq!(
            second.read,
            300_000 + 10,
            "only the new table file and the manifest were read"
        );

        // A file of the same name and length that is another file (not
        // linked from the last checkpoint) is read, never trusted.
        std::fs::write(c.join("000007.sst"), big(9)).unwrap();
        std::fs::hard_link(b.join("000011.sst"), c.join("000011.sst")).unwrap();
        let third = digest_reusing(&c, &mut sums).unwrap();
        assert_eq!((third.bytes, third.crc32), digest(&c).unwrap());
        assert_eq!(
            third.read, 300_000,
            "the impostor was read, the link reused"
        );

        // Sums are only of the checkpoint they were taken of: once it is
        // gone, every file is read again.
        std::fs::remove_dir_all(&c).unwrap();
        std::fs::create_dir_all(&c).unwrap();
        std::fs::hard_link(b.join("000011.sst"), c.join("000011.sst")).unwrap();
        let mut from_c = TableSums::default();
        digest_reusing(&c, &mut from_c).unwrap();
        std::fs::remove_dir_all(&c).unwrap();
        let d = root.join("d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::hard_link(b.join("000011.sst"), d.join("000011.sst")).unwrap();
        let fourth = digest_reusing(&d, &mut from_c).unwrap();
        assert_eq!(fourth.read, 300_000, "its checkpoint removed: read again");
        let _ = std::fs::remove_dir_all(&root);
    }

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
