//! The store as an etcd v3 snapshot, and an etcd snapshot read back: a
//! bbolt file (`storage::bbolt`) holding etcd 3.4's buckets, then the
//! SHA-256 of the file, which is what etcd's Snapshot stream sends and
//! `etcdctl snapshot save` keeps. etcd's tools read it (`snapshot status`,
//! `snapshot restore`), and etcd serves a member restored from it.
//!
//! Buckets, as etcd writes them:
//! - `key`: every kept revision, keyed by the main revision (8 bytes BE),
//!   `_`, the sub revision (8 bytes BE), and `t` for a deletion; the value
//!   is the `mvccpb.KeyValue` (a deletion's holds only the key).
//! - `meta`: `consistent_index` (the applied index, 8 bytes BE) and, once
//!   compacted, `scheduledCompactRev` and `finishedCompactRev` (a revision
//!   key).
//! - `lease`: lease id (8 bytes BE) → `leasepb.Lease` (id and TTL).
//! - `auth`: `authEnabled` (one byte) and `authRevision` (8 bytes BE);
//!   `authUsers` and `authRoles`: name → `authpb.User` / `authpb.Role`.
//! - `members`: hex id → the member as JSON; `members_removed`: hex id →
//!   `removed`; `alarm`: an encoded `AlarmMember` → nothing; `cluster`:
//!   `clusterVersion` → `3.4.0`.
//! - `nod_indexes` (Nod's own, which etcd leaves alone): index name → its
//!   declaration (`nodquerypb.IndexSpec`); a store restored from the file
//!   builds each again from the values (`import`).
//!
//! No I/O but the store's reads.

use std::collections::BTreeMap;

use prost::Message as _;
use sha2::Digest as _;

use super::encoding::Revision;
use super::{Backend, KvStore, StoreError};
use crate::storage::bbolt::{self, BoltError};
use nod_proto::etcd::mvccpb::KeyValue;

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Lease {
    #[prost(int64, tag = "1")]
    pub(super) id: i64,
    #[prost(int64, tag = "2")]
    pub(super) ttl: i64,
    #[prost(int64, tag = "3")]
    pub(super) remaining_ttl: i64,
}

/// etcd's key for a revision in its `key` bucket.
pub(super) fn revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&(rev.main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// A revision key back: (revision, deletion?).
pub(super) fn parse_revision_key(k: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
    (main > 0 && sub >= 0).then_some((Revision { main, sub }, tombstone))
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn sorted(mut pairs: Pairs) -> Pairs {
    pairs.sort();
    pairs.dedup_by(|a, b| a.0 == b.0);
    pairs
}

impl<B: Backend> KvStore<B> {
    /// This store as an etcd snapshot file (bbolt plus SHA-256).
    pub fn etcd_snapshot(&self) -> Result<Vec<u8>, StoreError> {
        let mut keys = Vec::new();
        for record in super::records(&self.backend) {
            let (rev, tombstone, kv) = record?;
            let value = if tombstone {
                KeyValue {
                    key: kv.key,
                    ..Default::default()
                }
                .encode_to_vec()
            } else {
                kv.encode_to_vec()
            };
            keys.push((revision_key(rev, tombstone), value));
        }
        let mut meta = vec![(
            b"consistent_index".to_vec(),
            self.applied.0.to_be_bytes().to_vec(),
        )];
        if self.compacted > 0 {
            let at = revision_key(
                Revision {
                    main: self.compacted,
                    sub: 0,
                },
                false,
            );
            meta.push((b"finishedCompactRev".to_vec(), at.clone()));
            meta.push((b"scheduledCompactRev".to_vec(), at));
        }
        let leases = self
            .leases
            .iter()
            .map(|(&id, rec)| {
                let lease = Lease {
                    id,
                    ttl: rec.ttl,
                    remaining_ttl: 0,
                };
                (id.to_be_bytes().to_vec(), lease.encode_to_vec())
            })
            .collect();
        let auth = vec![
            (b"authEnabled".to_vec(), vec![u8::from(self.auth.enabled())]),
            (
                b"authRevision".to_vec(),
                self.auth.revision().to_be_bytes().to_vec(),
            ),
        ];
        let users = self
            .auth
            .user_names()
            .into_iter()
            .filter_map(|n| Some((n.clone().into_bytes(), self.auth.user(&n)?.encode_to_vec())))
            .collect();
        let roles = self
            .auth
            .role_names()
            .into_iter()
            .filter_map(|n| Some((n.clone().into_bytes(), self.auth.role(&n)?.encode_to_vec())))
            .collect();
        let members = self
            .members
            .values()
            .map(|m| {
                let mut json = serde_json::json!({
                    "id": m.id,
                    "peerURLs": m.peer_ur_ls,
                    "name": m.name,
                    "clientURLs": m.client_ur_ls,
                });
                if m.is_learner {
                    json["isLearner"] = serde_json::Value::Bool(true);
                }
                (
                    format!("{:x}", m.id).into_bytes(),
                    json.to_string().into_bytes(),
                )
            })
            .collect();
        let removed = self
            .removed
            .iter()
            .map(|id| (format!("{id:x}").into_bytes(), b"removed".to_vec()))
            .collect();
        let alarms = self
            .alarms()
            .iter()
            .map(|a| (a.encode_to_vec(), Vec::new()))
            .collect();
        let cluster = vec![(b"clusterVersion".to_vec(), b"3.4.0".to_vec())];
        let indexes = self
            .indexes()
            .iter()
            .map(|d| {
                (
                    d.spec.name.clone().into_bytes(),
                    super::spec_to_proto(&d.spec).encode_to_vec(),
                )
            })
            .collect();

        let buckets: BTreeMap<&[u8], Pairs> = [
            (&b"alarm"[..], alarms),
            (b"auth", auth),
            (b"authRoles", roles),
            (b"authUsers", users),
            (b"cluster", cluster),
            (b"key", keys),
            (b"lease", leases),
            (b"members", members),
            (b"members_removed", removed),
            (b"meta", meta),
            (b"nod_indexes", indexes),
        ]
        .into_iter()
        .collect();
        let mut w = bbolt::Writer::new();
        let mut values = Vec::new();
        for (name, pairs) in buckets {
            let pairs = sorted(pairs);
            let refs: Vec<(&[u8], &[u8])> = pairs
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            values.push((name, w.bucket(&refs)));
        }
        let mut file = w.finish(&values);
        let sum = sha2::Sha256::digest(&file);
        file.extend_from_slice(&sum);
        Ok(file)
    }
}

/// Why a file is not an etcd snapshot we can read. The hash texts are
/// etcdctl's, word for word: scripts look for them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("expected sha256 {}, got {}", hex(.expected), hex(.got))]
    HashMismatch { expected: [u8; 32], got: [u8; 32] },
    #[error("snapshot is not a valid database: {0}")]
    Bolt(#[from] BoltError),
    #[error("snapshot: a malformed record in bucket {0}")]
    Record(&'static str),
    #[error("cannot get hash of bucket {0}")]
    NotBucket(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What to do with the SHA-256 that `etcdctl snapshot save` (and Nod's)
/// appends to the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashCheck {
    /// It must be there and match (restore's default).
    Require,
    /// Check it when the size says it is there (a data-dir `db` has none).
    IfPresent,
    /// Strip it when the size says it is there, unchecked
    /// (`--skip-hash-check`).
    Skip,
}

/// Splits a snapshot file into the database and its SHA-256, checked as
/// `check` says. As in etcd, the hash is there when the size is a multiple
/// of 512 plus 32: bbolt's pages are at least 512 bytes.
pub fn strip_hash(bytes: &[u8], check: HashCheck) -> Result<&[u8], SnapshotError> {
    let has_hash = bytes.len() >= 32 && bytes.len() % 512 == 32;
    if !has_hash {
        return match check {
            HashCheck::Require => Err(SnapshotError::MissingHash),
            HashCheck::IfPresent | HashCheck::Skip => Ok(bytes),
        };
    }
    let (db, sum) = bytes.split_at(bytes.len() - 32);
    if check != HashCheck::Skip {
        let got: [u8; 32] = sha2::Sha256::digest(db).into();
        if got.as_slice() != sum {
            let mut expected = [0u8; 32];
            expected.copy_from_slice(sum);
            return Err(SnapshotError::HashMismatch { expected, got });
        }
    }
    Ok(db)
}

/// What `etcdctl snapshot status` prints of a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// CRC-32C of every bucket's name, then its keys and values, in order.
    pub hash: u32,
    /// The main revision of the last record of the `key` bucket.
    pub revision: i64,
    /// Entries in all buckets.
    pub total_key: u64,
    /// The pages in use times the page size (not the file size).
    pub total_size: u64,
}

/// Reads a bbolt database (without its hash) as etcd's `snapshot status`
/// does, with the same totals; a damaged file is an error, never a panic.
pub fn snapshot_status(db: &[u8]) -> Result<SnapshotStatus, SnapshotError> {
    let file = bbolt::File::open(db)?;
    let mut out = SnapshotStatus {
        hash: 0,
        revision: 0,
        total_key: 0,
        total_size: file.high_water * file.page_size() as u64,
    };
    for top in file.top_level()? {
        if !top.bucket {
            return Err(SnapshotError::NotBucket(
                String::from_utf8_lossy(&top.key).into_owned(),
            ));
        }
        out.hash = crc32c::crc32c_append(out.hash, &top.key);
        let is_key = top.key == b"key";
        file.for_each(&top.key, &mut |item| {
            out.hash = crc32c::crc32c_append(out.hash, &item.key);
            // A nested bucket's value is nil to bbolt's ForEach.
            if !item.bucket {
                out.hash = crc32c::crc32c_append(out.hash, &item.value);
            }
            if is_key {
                let (rev, _) = parse_revision_key(&item.key).ok_or(SnapshotError::Record("key"))?;
                out.revision = rev.main;
            }
            out.total_key += 1;
            Ok::<(), SnapshotError>(())
        })?;
    }
    Ok(out)
}

/// A size as etcdctl prints it (go-humanize's `Bytes`: SI units, one
/// decimal under 10).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let n = bytes as f64;
    let e = (n.ln() / 1000f64.ln()).floor();
    let val = (n / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    let unit = UNITS[(e as usize).min(UNITS.len() - 1)];
    if val < 10.0 {
        format!("{val:.1} {unit}")
    } else {
        format!("{val:.0} {unit}")
    }
}

/// What an etcd snapshot holds of the key space.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotContents {
    /// Every live key at the last revision, in key order.
    pub kvs: Vec<KeyValue>,
    /// The last revision in the file.
    pub revision: i64,
    /// Compacted up to this revision (0: never).
    pub compacted: i64,
    /// Revisions kept (etcd's `snapshot status` counts every key of every
    /// bucket instead).
    pub revisions: usize,
    /// Lease id → TTL.
    pub leases: BTreeMap<i64, i64>,
    /// Bytes of the database (without the checksum).
    pub size: usize,
}

/// Reads an etcd snapshot (ours or etcd's): checks its SHA-256, then the
/// bbolt file, then etcd's `key`, `meta` and `lease` buckets.
pub fn read_etcd_snapshot(bytes: &[u8]) -> Result<SnapshotContents, SnapshotError> {
    let db = strip_hash(bytes, HashCheck::Require)?;
    let file = bbolt::File::open(db)?;
    let mut live: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
    let mut out = SnapshotContents {
        size: db.len(),
        ..Default::default()
    };
    for item in file.bucket(b"key")? {
        let (rev, tombstone) = parse_revision_key(&item.key).ok_or(SnapshotError::Record("key"))?;
        let kv =
            KeyValue::decode(item.value.as_slice()).map_err(|_| SnapshotError::Record("key"))?;
        if tombstone {
            live.remove(&kv.key);
        } else {
            live.insert(kv.key.clone(), kv);
        }
        out.revision = out.revision.max(rev.main);
        out.revisions += 1;
    }
    out.kvs = live.into_values().collect();
    for item in file.bucket(b"meta")? {
        if item.key == b"finishedCompactRev" {
            let (rev, _) = parse_revision_key(&item.value).ok_or(SnapshotError::Record("meta"))?;
            out.compacted = rev.main;
        }
    }
    for item in file.bucket(b"lease")? {
        let lease =
            Lease::decode(item.value.as_slice()).map_err(|_| SnapshotError::Record("lease"))?;
        out.leases.insert(lease.id, lease.ttl);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::KvStore;
    use nod_proto::etcd::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};

    fn put(s: &mut KvStore<crate::storage::backend::MemoryBackend>, k: &str, v: &str, i: u64) {
        let p = PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        };
        s.apply_put(&p, (i, 1)).unwrap().into_result().unwrap();
    }

    #[test]
    fn a_store_reads_back_from_its_etcd_snapshot() {
        let mut s = KvStore::in_memory();
        put(&mut s, "a", "1", 1);
        put(&mut s, "a", "2", 2);
        put(&mut s, "gone", "x", 3);
        let d = DeleteRangeRequest {
            key: b"gone".to_vec(),
            ..Default::default()
        };
        s.apply_delete(&d, (4, 1)).unwrap().into_result().unwrap();
        s.apply_lease_grant(77, 30, (5, 1))
            .unwrap()
            .into_result()
            .unwrap();
        let c = CompactionRequest {
            revision: 3,
            physical: false,
        };
        s.apply_compaction(&c, (6, 1))
            .unwrap()
            .into_result()
            .unwrap();
        for i in 0..2000 {
            put(&mut s, &format!("bulk/{i:05}"), &"v".repeat(50), 7 + i);
        }
        let file = s.etcd_snapshot().unwrap();
        assert_eq!(file.len() % 4096, 32);
        let got = read_etcd_snapshot(&file).unwrap();
        assert_eq!(got.revision, s.current_revision());
        assert_eq!(got.compacted, 3);
        assert_eq!(got.leases, [(77, 30)].into_iter().collect());
        let want = s.dump().unwrap();
        assert_eq!(got.kvs, want);
        assert_eq!(got.kvs.len(), 2001, "a, and the bulk keys");

        let mut bad = file.clone();
        bad[5000] ^= 1;
        assert!(matches!(
            read_etcd_snapshot(&bad),
            Err(SnapshotError::HashMismatch { .. })
        ));
        assert_eq!(
            read_etcd_snapshot(&file[..file.len() - 1]),
            Err(SnapshotError::MissingHash)
        );
    }

    #[test]
    fn the_hash_is_found_checked_or_skipped_as_etcdctl_does() {
        let mut s = KvStore::in_memory();
        put(&mut s, "a", "1", 1);
        let file = s.etcd_snapshot().unwrap();
        let db = &file[..file.len() - 32];
        let mut bad = file.clone();
        bad[100] ^= 1;
        let cut = &file[..file.len() - 512];
        use HashCheck::*;
        let mismatch =
            |r: Result<&[u8], SnapshotError>| matches!(r, Err(SnapshotError::HashMismatch { .. }));
        // (input, check) -> the database, or the error.
        assert_eq!(strip_hash(&file, Require), Ok(db));
        assert_eq!(strip_hash(&file, IfPresent), Ok(db));
        assert_eq!(strip_hash(&file, Skip), Ok(db));
        assert_eq!(strip_hash(db, Require), Err(SnapshotError::MissingHash));
        assert_eq!(strip_hash(db, IfPresent), Ok(db), "a data-dir db has none");
        assert_eq!(strip_hash(db, Skip), Ok(db));
        assert!(mismatch(strip_hash(&bad, Require)));
        assert!(mismatch(strip_hash(&bad, IfPresent)));
        assert_eq!(strip_hash(&bad, Skip).map(<[u8]>::len), Ok(db.len()));
        // Cut by whole pages: the last 32 bytes are not the hash of the rest.
        assert!(mismatch(strip_hash(cut, Require)));
        assert_eq!(strip_hash(&[], Require), Err(SnapshotError::MissingHash));
        let text = SnapshotError::HashMismatch {
            expected: [0xab; 32],
            got: [1; 32],
        }
        .to_string();
        assert!(text.starts_with("expected sha256 abab"), "{text}");
    }

    #[test]
    fn sizes_print_as_go_humanize_does() {
        for (n, want) in [
            (0, "0 B"),
            (9, "9 B"),
            (10, "10 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (1500, "1.5 kB"),
            (20480, "20 kB"),
            (217_088, "217 kB"),
            (9_940_000, "9.9 MB"),
            (9_950_000, "10 MB"),
            (3 * 1024 * 1024 * 1024, "3.2 GB"),
        ] {
            assert_eq!(human_size(n), want, "{n} bytes");
        }
    }

    #[test]
    fn status_counts_every_bucket_and_reads_the_last_revision() {
        let mut s = KvStore::in_memory();
        for i in 0..700 {
            put(&mut s, &format!("k{i}"), "v", i + 1);
        }
        let file = s.etcd_snapshot().unwrap();
        let db = strip_hash(&file, HashCheck::Require).unwrap();
        let st = snapshot_status(db).unwrap();
        assert_eq!(st.revision, s.current_revision());
        let f = bbolt::File::open(db).unwrap();
        let all: usize = f
            .buckets()
            .unwrap()
            .iter()
            .map(|b| f.bucket(b).unwrap().len())
            .sum();
        assert_eq!(st.total_key as usize, all);
        assert_eq!(
            st.total_key,
            700 + 2 + 1 + 1,
            "revisions, auth, cluster, meta"
        );
        assert_eq!(st.total_size as usize, db.len());
        // The hash covers every byte of every bucket.
        let mut other = KvStore::in_memory();
        for i in 0..700 {
            put(
                &mut other,
                &format!("k{i}"),
                if i == 699 { "w" } else { "v" },
                i + 1,
            );
        }
        let file2 = other.etcd_snapshot().unwrap();
        let st2 = snapshot_status(strip_hash(&file2, HashCheck::Require).unwrap()).unwrap();
        assert_ne!(st.hash, st2.hash);
        assert_eq!((st.revision, st.total_key), (st2.revision, st2.total_key));
    }

    #[test]
    fn revision_keys_are_etcds() {
        let k = revision_key(Revision { main: 5, sub: 2 }, true);
        assert_eq!(k, b"\0\0\0\0\0\0\0\x05_\0\0\0\0\0\0\0\x02t".to_vec());
        assert_eq!(
            parse_revision_key(&k),
            Some((Revision { main: 5, sub: 2 }, true))
        );
        assert_eq!(parse_revision_key(&k[..16]), None);
    }
}
