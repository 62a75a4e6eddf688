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
struct Lease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// etcd's key for a revision in its `key` bucket.
fn revision_key(rev: Revision, tombstone: bool) -> Vec<u8> {
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
fn parse_revision_key(k: &[u8]) -> Option<(Revision, bool)> {
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

/// Why a file is not an etcd snapshot we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot of {0} bytes is truncated")]
    Truncated(usize),
    #[error("snapshot checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("snapshot: {0}")]
    Bolt(#[from] BoltError),
    #[error("snapshot: a malformed record in bucket {0}")]
    Record(&'static str),
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
    if bytes.len() < 32 || !(bytes.len() - 32).is_multiple_of(512) {
        return Err(SnapshotError::Truncated(bytes.len()));
    }
    let (db, sum) = bytes.split_at(bytes.len() - 32);
    if sha2::Sha256::digest(db).as_slice() != sum {
        return Err(SnapshotError::Checksum);
    }
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
        assert_eq!(read_etcd_snapshot(&bad), Err(SnapshotError::Checksum));
        assert!(matches!(
            read_etcd_snapshot(&file[..file.len() - 1]),
            Err(SnapshotError::Truncated(_))
        ));
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
