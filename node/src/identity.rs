//! Who a node is: its member id, its cluster's id and its name, derived for
//! founding members and stored in `<data>/identity.json` so a restart is the
//! same member of the same cluster. Does file I/O.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
}

const FILE: &str = "identity.json";

/// A node state file (`identity.json`, `bootstrap.json`) that cannot be
/// read, parsed, written or removed; `path` names it.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} is corrupt: {cause}", path.display())]
    Corrupt {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("cannot encode {}: {cause}", path.display())]
    Encode {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot remove {}: {cause}", path.display())]
    Remove {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// 64-bit FNV-1a: stable across versions and platforms, which is all a
/// derived id needs (it is not a security boundary; the cluster id check is
/// against accidents, as in etcd).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.max(1)
}

/// A founding member's id: from its name and the cluster token, so every
/// founding node computes the same ids from the same `--initial-cluster`.
pub fn founding_member_id(name: &str, token: &str) -> u64 {
    fnv1a(&[b"member", name.as_bytes(), token.as_bytes()])
}

/// The cluster id: from the founding members' ids and the token.
pub fn cluster_id(mut member_ids: Vec<u64>, token: &str) -> u64 {
    member_ids.sort_unstable();
    let bytes: Vec<[u8; 8]> = member_ids.iter().map(|i| i.to_be_bytes()).collect();
    let mut parts: Vec<&[u8]> = vec![b"cluster", token.as_bytes()];
    parts.extend(bytes.iter().map(|b| b.as_slice()));
    fnv1a(&parts)
}

/// A restored cluster's id: also from the restored database's SHA-256, so
/// that a restore reusing its source's names and token still makes a new
/// cluster, which members of the old one cannot talk to (their messages
/// carry the old id). Every member restored from the same file with the
/// same flags computes the same id.
pub fn restored_cluster_id(mut member_ids: Vec<u64>, token: &str, digest: &[u8; 32]) -> u64 {
    member_ids.sort_unstable();
    let bytes: Vec<[u8; 8]> = member_ids.iter().map(|i| i.to_be_bytes()).collect();
    let mut parts: Vec<&[u8]> = vec![b"restore", token.as_bytes(), digest];
    parts.extend(bytes.iter().map(|b| b.as_slice()));
    fnv1a(&parts)
}

/// A random non-zero id (lease and member ids), from the standard library's
/// randomly keyed hasher and the clock: no RNG crate needed for ids.
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish().max(1)
}

impl Identity {
    pub fn load(dir: &Path) -> Result<Option<Identity>, StateFileError> {
        read_json(dir, FILE)
    }

    /// Writes the identity durably (temp file, fsync, rename, fsync dir).
    pub fn store(&self, dir: &Path) -> Result<(), StateFileError> {
        write_json(dir, FILE, self)
    }
}

/// Reads `dir/file` as JSON: `None` when it does not exist, an error naming
/// the file when it cannot be read or is corrupt.
pub fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
) -> Result<Option<T>, StateFileError> {
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(cause) => Err(StateFileError::Corrupt { path, cause }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(StateFileError::Read { path, cause }),
    }
}

/// Writes `value` as JSON to `dir/file`, durably (see [`write_durably`]).
pub fn write_json<T: Serialize>(dir: &Path, file: &str, value: &T) -> Result<(), StateFileError> {
    let body = serde_json::to_vec_pretty(value).map_err(|cause| StateFileError::Encode {
        path: dir.join(file),
        cause,
    })?;
    write_durably(dir, file, &body)
}

/// Replaces `dir/file` with `body` so that a crash leaves the old or the new
/// content, never a mix (temp file, fsync, rename, fsync the folder).
pub fn write_durably(dir: &Path, file: &str, body: &[u8]) -> Result<(), StateFileError> {
    let path = dir.join(file);
    let tmp = dir.join(format!("{file}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|cause| StateFileError::Write { path, cause })
}

/// Removes `dir/file` durably; a file that is not there is fine.
pub fn remove_file(dir: &Path, file: &str) -> Result<(), StateFileError> {
    let path = dir.join(file);
    match std::fs::remove_file(&path) {
        Ok(()) => std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|cause| StateFileError::Remove { path, cause }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(cause) => Err(StateFileError::Remove { path, cause }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn founding_ids_differ_by_name_and_token_and_are_never_zero() {
        let a = founding_member_id("a", "t");
        assert_ne!(a, founding_member_id("b", "t"));
        assert_ne!(a, founding_member_id("a", "u"));
        assert_ne!(a, 0);
        assert_eq!(
            cluster_id(vec![3, 1, 2], "t"),
            cluster_id(vec![1, 2, 3], "t"),
            "order of --initial-cluster must not matter"
        );
        assert_ne!(cluster_id(vec![1, 2, 3], "t"), cluster_id(vec![1, 2], "t"));
    }

    #[test]
    fn identity_survives_a_round_trip_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), None);
        let id = Identity {
            name: "n1".into(),
            member_id: 7,
            cluster_id: 9,
        };
        id.store(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(id));
        std::fs::write(dir.path().join(FILE), b"{garbage").unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(matches!(err, StateFileError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("identity.json is corrupt"),
            "{err}"
        );
    }
}
