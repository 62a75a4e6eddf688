//! An etcd snapshot's database made into a store: what `nod snapshot
//! restore` builds a member from. Every revision (deletions too), the
//! compacted revision, leases, users, roles and the auth flag and revision
//! come from the file; the member table is the new cluster's, given by the
//! caller (the old members and alarms describe a cluster that is gone).
//!
//! Nod's own `nod_indexes` bucket, if there, declares its indexes again:
//! each is built anew from the imported values (BUILDING until the
//! restored cluster's leader has backfilled it), as the entries are not in
//! the file.
//!
//! Every record is checked as it is read (its revision key, a KeyValue with
//! a key whose mod revision is its own), and the store is then loaded as a
//! restart loads it, which checks every record again and rebuilds the
//! index. No I/O but the backend's writes.

use prost::Message as _;

use super::super::backend::{Batch, Keyspace};
use super::auth::write_auth;
use super::encoding::{encode_kv, encode_pair, put_applied, Revision, KEY_COMPACTED};
use super::etcd_snapshot::{parse_revision_key, Lease, SnapshotError};
use super::{backend, Backend, KvStore, StoreError, MAX_LEASE_TTL};
use crate::auth::state::AuthWrite;
use crate::storage::bbolt::{self, BoltError};
use nod_proto::etcd::authpb::{Role, User};
use nod_proto::etcd::etcdserverpb::{CompactionRequest, Member};
use nod_proto::etcd::mvccpb::{event::EventType, KeyValue};
use nod_proto::nodbackuppb::RevisionBatch;

/// Records written per backend batch: bounded memory for any file size.
const BATCH: usize = 10_000;

/// Why a database could not be imported. The store may hold part of it:
/// the caller builds it in a folder it removes on failure.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store to import into is not empty")]
    NotEmpty,
    #[error("backup changes: {0}")]
    Changes(String),
    #[error("the snapshot's indexes: {0}")]
    Index(String),
}

/// The TTL given to a lease a restored key names but no backup recorded
/// (granted and attached after the full snapshot, then gone before the
/// writer could read it): the key expires a minute after the restored
/// cluster starts, as its lease was expiring anyway.
pub const ORPHAN_LEASE_TTL: i64 = 60;

/// What an import with changes made up for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportNotes {
    /// Leases created with [`ORPHAN_LEASE_TTL`].
    pub orphan_leases: Vec<i64>,
}

impl From<BoltError> for ImportError {
    fn from(e: BoltError) -> Self {
        ImportError::Snapshot(e.into())
    }
}

/// Writes `batch` when it is full (or `flush`), leaving it empty.
fn write_full<B: Backend>(b: &mut B, batch: &mut Batch, flush: bool) -> Result<(), StoreError> {
    if batch.len() >= BATCH || (flush && !batch.is_empty()) {
        b.write(std::mem::take(batch))
            .map_err(backend("importing a snapshot"))?;
    }
    Ok(())
}

fn record(bucket: &'static str) -> SnapshotError {
    SnapshotError::Record(bucket)
}

impl<B: Backend> KvStore<B> {
    /// Fills the empty `into` from the bbolt database `db` (an etcd
    /// snapshot without its hash) and `members`, at applied index and term
    /// (1, 1): the state a restored member starts from.
    pub fn import_etcd(into: B, db: &[u8], members: &[Member]) -> Result<KvStore<B>, ImportError> {
        Self::import_backup(into, db, &[], members).map(|(store, _)| store)
    }

    /// As [`KvStore::import_etcd`], then the backup's `changes` after the
    /// snapshot (one batch per revision, in order): each event is written
    /// as the record it was, with sub revisions in event order, so the
    /// store is byte for byte the source's at the last revision (the same
    /// HashKV). Leases the changes recorded join the file's.
    pub fn import_backup(
        mut into: B,
        db: &[u8],
        changes: &[RevisionBatch],
        members: &[Member],
    ) -> Result<(KvStore<B>, ImportNotes), ImportError> {
        for ks in Keyspace::ALL {
            if into.scan_from(ks, &[]).next().is_some() {
                return Err(ImportError::NotEmpty);
            }
        }
        let file = bbolt::File::open(db)?;
        let mut batch = Batch::default();
        let mut last_main = 0;
        file.for_each(b"key", &mut |item| {
            let (rev, tombstone) = parse_revision_key(&item.key).ok_or(record("key"))?;
            last_main = last_main.max(rev.main);
            let mut kv = KeyValue::decode(item.value.as_slice()).map_err(|_| record("key"))?;
            if kv.key.is_empty() {
                return Err(record("key").into());
            }
            if tombstone {
                // etcd keeps only the key of a deletion; Nod's own
                // tombstones carry their revision too.
                kv = KeyValue {
                    key: kv.key,
                    mod_revision: rev.main,
                    ..Default::default()
                };
            } else if kv.mod_revision != rev.main
                || kv.create_revision <= 0
                || kv.create_revision > kv.mod_revision
                || kv.version <= 0
            {
                return Err(record("key").into());
            }
            batch.put(Keyspace::Rev, &rev.key(), encode_kv(&kv, tombstone));
            write_full(&mut into, &mut batch, false).map_err(ImportError::from)
        })?;

        let (mut finished, mut scheduled) = (0, 0);
        for item in file.bucket(b"meta")? {
            let at = || parse_revision_key(&item.value).map(|(r, _)| r.main);
            match item.key.as_slice() {
                b"finishedCompactRev" => finished = at().ok_or(record("meta"))?,
                b"scheduledCompactRev" => scheduled = at().ok_or(record("meta"))?,
                _ => {}
            }
        }
        if finished > 0 {
            batch.put(
                Keyspace::Meta,
                KEY_COMPACTED,
                encode_pair(finished as u64, 0),
            );
        }

        // A missing lease or auth bucket means none (etcd creates them
        // lazily in some versions).
        let optional = |name: &[u8]| match file.bucket(name) {
            Ok(items) => Ok(items),
            Err(BoltError::NoBucket(_)) => Ok(Vec::new()),
            Err(e) => Err(ImportError::from(e)),
        };
        let mut leases = std::collections::BTreeSet::new();
        for item in optional(b"lease")? {
            let lease = Lease::decode(item.value.as_slice()).map_err(|_| record("lease"))?;
            if lease.id <= 0 || item.key != lease.id.to_be_bytes() || lease.ttl > MAX_LEASE_TTL {
                return Err(record("lease").into());
            }
            leases.insert(lease.id);
            batch.put(
                Keyspace::Lease,
                &lease.id.to_be_bytes(),
                encode_pair(lease.ttl as u64, 0),
            );
        }

        let (mut enabled, mut revision) = (false, 1);
        for item in optional(b"auth")? {
            match item.key.as_slice() {
                b"authEnabled" => enabled = item.value.first() == Some(&1),
                b"authRevision" => {
                    let v: [u8; 8] = item
                        .value
                        .as_slice()
                        .try_into()
                        .map_err(|_| record("auth"))?;
                    revision = u64::from_be_bytes(v);
                }
                _ => {}
            }
        }
        write_auth(&mut batch, AuthWrite::Meta { enabled, revision });
        for item in optional(b"authUsers")? {
            let user = User::decode(item.value.as_slice()).map_err(|_| record("authUsers"))?;
            if user.name.is_empty() || user.name != item.key {
                return Err(record("authUsers").into());
            }
            let name = String::from_utf8(user.name.clone()).map_err(|_| record("authUsers"))?;
            write_auth(&mut batch, AuthWrite::User(name, Some(user)));
        }
        for item in optional(b"authRoles")? {
            let role = Role::decode(item.value.as_slice()).map_err(|_| record("authRoles"))?;
            if role.name.is_empty() || role.name != item.key {
                return Err(record("authRoles").into());
            }
            let name = String::from_utf8(role.name.clone()).map_err(|_| record("authRoles"))?;
            write_auth(&mut batch, AuthWrite::Role(name, Some(role)));
        }
        let notes = import_changes(
            &mut into,
            &mut batch,
            changes,
            last_main.max(finished),
            &mut leases,
        )?;
        put_applied(&mut batch, (1, 1));
        write_full(&mut into, &mut batch, true)?;

        // Loading checks every record again and builds the index.
        let mut store = KvStore::from_backend(into)?;
        if scheduled > store.compacted && scheduled <= store.current {
            // etcd finishes a compaction it had scheduled when it starts.
            let c = CompactionRequest {
                revision: scheduled,
                physical: false,
            };
            // Refused only if out of range, which was just ruled out.
            let _ = store.apply_compaction(&c, (1, 1))?;
            // Offline: remove what it dropped now, in one pass.
            while store.compaction_step(usize::MAX)? {}
        }
        for m in members {
            store.apply_member(m.id, Some(m.clone()), (1, 1))?;
        }
        declare_indexes(&mut store, &optional(b"nod_indexes")?)?;
        Ok((store, notes))
    }
}

/// Declares the indexes of a `nod_indexes` bucket (name → `IndexSpec`)
/// in `store`, each building from its current revision; the features they
/// need are enabled, as the cluster the file comes from had them.
fn declare_indexes<B: Backend>(
    store: &mut KvStore<B>,
    items: &[bbolt::Item],
) -> Result<(), ImportError> {
    use crate::command::{FEATURE_INDEXES, FEATURE_UNIQUE_INDEXES};
    let mut specs = Vec::new();
    for item in items {
        let spec = nod_proto::nodquerypb::IndexSpec::decode(item.value.as_slice())
            .map_err(|_| record("nod_indexes"))?;
        if spec.name.as_bytes() != item.key.as_slice() || super::spec_from_proto(&spec).is_err() {
            return Err(record("nod_indexes").into());
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        return Ok(());
    }
    let mut features = vec![FEATURE_INDEXES];
    if specs.iter().any(|s| s.unique) {
        features.push(FEATURE_UNIQUE_INDEXES);
    }
    for f in features {
        if let super::Outcome::Refused(e) = store.apply_enable_feature(f, (1, 1))? {
            return Err(ImportError::Index(format!("enabling {f}: {e}")));
        }
    }
    for spec in &specs {
        if let super::Outcome::Refused(e) = store.apply_index_create(spec, (1, 1))? {
            return Err(ImportError::Index(format!("{}: {e}", spec.name)));
        }
    }
    Ok(())
}

/// Writes the records of `changes`, which must start after revision
/// `after` and follow one another; records the leases they saw.
fn import_changes<B: Backend>(
    into: &mut B,
    batch: &mut Batch,
    changes: &[RevisionBatch],
    after: i64,
    leases: &mut std::collections::BTreeSet<i64>,
) -> Result<ImportNotes, ImportError> {
    let mut notes = ImportNotes::default();
    let mut prev = after;
    let bad = |what: String| ImportError::Changes(what);
    for b in changes {
        nod_backup::segment::check_batch(b).map_err(|e| bad(e.to_string()))?;
        if b.revision <= prev {
            return Err(bad(format!(
                "revision {} does not follow revision {prev}",
                b.revision
            )));
        }
        prev = b.revision;
        for l in &b.leases {
            if l.granted_ttl > MAX_LEASE_TTL {
                return Err(bad(format!("lease {} has TTL {}", l.id, l.granted_ttl)));
            }
            if leases.insert(l.id) {
                batch.put(
                    Keyspace::Lease,
                    &l.id.to_be_bytes(),
                    encode_pair(l.granted_ttl as u64, 0),
                );
            }
        }
        for (sub, e) in b.events.iter().enumerate() {
            let kv = e.kv.as_ref().expect("check_batch checked");
            let tombstone = e.r#type == EventType::Delete as i32;
            let rec = if tombstone {
                KeyValue {
                    key: kv.key.clone(),
                    mod_revision: b.revision,
                    ..Default::default()
                }
            } else {
                if kv.lease != 0 && leases.insert(kv.lease) {
                    notes.orphan_leases.push(kv.lease);
                    batch.put(
                        Keyspace::Lease,
                        &kv.lease.to_be_bytes(),
                        encode_pair(ORPHAN_LEASE_TTL as u64, 0),
                    );
                }
                kv.clone()
            };
            let rev = Revision {
                main: b.revision,
                sub: sub as i64,
            };
            batch.put(Keyspace::Rev, &rev.key(), encode_kv(&rec, tombstone));
            write_full(into, batch, false)?;
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::auth_command::Op as AuthOp;
    use crate::storage::backend::MemoryBackend;
    use crate::storage::kv_store::etcd_snapshot::{revision_key, strip_hash, HashCheck};
    use crate::storage::kv_store::Revision;
    use nod_proto::etcd::etcdserverpb::{
        request_op, AuthRoleAddRequest, AuthUserAddRequest, DeleteRangeRequest, PutRequest,
        RequestOp, TxnRequest,
    };

    type Store = KvStore<MemoryBackend>;

    fn put(s: &mut Store, k: &str, v: &str, lease: i64, i: u64) {
        let p = PutRequest {
            key: k.into(),
            value: v.into(),
            lease,
            ..Default::default()
        };
        s.apply_put(&p, (i, 1)).unwrap().into_result().unwrap();
    }

    /// Overwrites, deletions (one in a transaction with a put), leases
    /// with keys, a compaction, a user and a role.
    fn source() -> Store {
        let mut s = KvStore::in_memory();
        let mut i = 1;
        let mut next = || {
            i += 1;
            i
        };
        s.apply_lease_grant(70, 60, (next(), 1))
            .unwrap()
            .into_result()
            .unwrap();
        s.apply_lease_grant(71, 9000, (next(), 1))
            .unwrap()
            .into_result()
            .unwrap();
        for n in 0..300 {
            let lease = [0, 70, 71][n % 3];
            put(
                &mut s,
                &format!("k/{:03}", n % 120),
                &format!("v{n}"),
                lease,
                next(),
            );
        }
        let txn = TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: b"k/000".to_vec(),
                            range_end: b"k/010".to_vec(),
                            ..Default::default()
                        },
                    )),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b"t".to_vec(),
                        value: b"in a txn".to_vec(),
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        s.apply_txn(&txn, (next(), 1))
            .unwrap()
            .into_result()
            .unwrap();
        let c = CompactionRequest {
            revision: 150,
            physical: false,
        };
        s.apply_compaction(&c, (next(), 1))
            .unwrap()
            .into_result()
            .unwrap();
        put(&mut s, "after", "compaction", 0, next());
        let user = AuthOp::UserAdd(AuthUserAddRequest {
            name: "u1".into(),
            hashed_password: "$2a$10$abcdefghijklmnopqrstuu".into(),
            ..Default::default()
        });
        let role = AuthOp::RoleAdd(AuthRoleAddRequest { name: "r1".into() });
        for op in [user, role] {
            s.apply_auth(&op, None, (next(), 1)).unwrap();
        }
        s
    }

    fn scan(s: &Store, ks: Keyspace) -> Vec<(Vec<u8>, Vec<u8>)> {
        s.backend
            .scan_from(ks, &[])
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }

    fn member(id: u64, name: &str) -> Member {
        Member {
            id,
            name: name.into(),
            peer_ur_ls: vec![format!("http://{name}:2380")],
            ..Default::default()
        }
    }

    #[test]
    fn a_store_comes_back_whole_from_its_etcd_snapshot() {
        let src = source();
        let file = src.etcd_snapshot().unwrap();
        let db = strip_hash(&file, HashCheck::Require).unwrap();
        let members = vec![member(7, "n1"), member(9, "n2")];
        let got = KvStore::import_etcd(MemoryBackend::new(), db, &members).unwrap();
        // Records byte for byte: tombstones get their revision back.
        for ks in [Keyspace::Rev, Keyspace::Lease, Keyspace::Auth] {
            assert_eq!(scan(&got, ks), scan(&src, ks), "keyspace {}", ks.name());
        }
        assert_eq!(got.current_revision(), src.current_revision());
        assert_eq!(got.compacted_revision(), 150);
        for r in 150..=src.current_revision() {
            assert_eq!(got.hash_kv(r), src.hash_kv(r), "HashKV at {r}");
        }
        assert_eq!(got.leases(), src.leases(), "TTLs and attached keys");
        assert_eq!(got.dump().unwrap(), src.dump().unwrap());
        assert_eq!(got.auth().user_names(), vec!["u1".to_string()]);
        assert_eq!(got.auth().revision(), src.auth().revision());
        assert_eq!(got.members(), members, "the new members, not the old");
        assert_eq!(got.applied(), (1, 1));
    }

    /// The changes after a snapshot, one batch per revision, as a backup
    /// writer records them from the watch (with the leases it saw).
    fn changes(src: &Store, after: i64) -> Vec<RevisionBatch> {
        let all = crate::storage::kv_store::KeyRange::new(b"\0", b"\0");
        let mut out: Vec<RevisionBatch> = Vec::new();
        for e in src
            .events_between(&all, after, src.current_revision())
            .unwrap()
        {
            let kv = e.kv.clone().unwrap();
            if out.last().is_none_or(|b| b.revision != kv.mod_revision) {
                out.push(RevisionBatch {
                    revision: kv.mod_revision,
                    ..Default::default()
                });
            }
            let b = out.last_mut().unwrap();
            if kv.lease != 0 && !b.leases.iter().any(|l| l.id == kv.lease) {
                if let Some(l) = src.leases().get(&kv.lease) {
                    b.leases.push(nod_proto::nodbackuppb::LeaseSeen {
                        id: kv.lease,
                        granted_ttl: l.ttl,
                    });
                }
            }
            b.events.push(e);
        }
        out
    }

    #[test]
    fn a_snapshot_and_its_changes_restore_any_revision_exactly() {
        let mut src = source();
        let file = src.etcd_snapshot().unwrap();
        let at_full = src.current_revision();
        let mut i = 1000;
        let mut next = || {
            i += 1;
            i
        };
        // After the full: a new lease with keys, overwrites, a deletion,
        // a multi-key txn, and a revoke that deletes its keys.
        src.apply_lease_grant(72, 300, (next(), 1))
            .unwrap()
            .into_result()
            .unwrap();
        for n in 0..60 {
            let lease = [0, 71, 72][n % 3];
            put(
                &mut src,
                &format!("k/{:03}", n % 40),
                &format!("w{n}"),
                lease,
                next(),
            );
        }
        let del = DeleteRangeRequest {
            key: b"k/020".to_vec(),
            range_end: b"k/025".to_vec(),
            ..Default::default()
        };
        src.apply_delete(&del, (next(), 1))
            .unwrap()
            .into_result()
            .unwrap();
        src.apply_lease_revoke(70, (next(), 1))
            .unwrap()
            .into_result()
            .unwrap();
        // One key changed twice in one revision (etcd allows a put and a
        // delete of it in two nested transactions): two records.
        let nested = |op: request_op::Request| RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![RequestOp { request: Some(op) }],
                ..Default::default()
            })),
        };
        let twice = TxnRequest {
            success: vec![
                nested(request_op::Request::RequestPut(PutRequest {
                    key: b"twice".to_vec(),
                    value: b"short-lived".to_vec(),
                    ..Default::default()
                })),
                nested(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b"twice".to_vec(),
                        ..Default::default()
                    },
                )),
            ],
            ..Default::default()
        };
        src.apply_txn(&twice, (next(), 1))
            .unwrap()
            .into_result()
            .unwrap();
        put(&mut src, "last", "one", 0, next());
        let end = src.current_revision();
        let batches = changes(&src, at_full);
        assert!(
            batches.iter().any(|b| b.events.len() == 2
                && b.events
                    .iter()
                    .all(|e| e.kv.as_ref().unwrap().key == b"twice")),
            "a revision that changes one key twice"
        );
        assert_eq!(
            batches.len() as i64,
            end - at_full,
            "one batch per revision"
        );

        let db = strip_hash(&file, HashCheck::Require).unwrap();
        let members = vec![member(7, "n1")];
        for upto in [at_full + 1, at_full + 30, end - 1, end] {
            let part: Vec<RevisionBatch> = batches
                .iter()
                .filter(|b| b.revision <= upto)
                .cloned()
                .collect();
            let (got, notes) =
                KvStore::import_backup(MemoryBackend::new(), db, &part, &members).unwrap();
            assert_eq!(got.current_revision(), upto);
            assert_eq!(got.hash_kv(upto), src.hash_kv(upto), "HashKV at {upto}");
            let upto_key = Revision {
                main: upto + 1,
                sub: 0,
            }
            .key();
            let src_rev: Vec<_> = scan(&src, Keyspace::Rev)
                .into_iter()
                .filter(|(k, _)| k.as_slice() < upto_key.as_slice())
                .collect();
            assert_eq!(scan(&got, Keyspace::Rev), src_rev, "records up to {upto}");
            assert!(notes.orphan_leases.is_empty());
            // Every lease the source has at the end that existed by then,
            // with its TTL and keys (the revoked 70 stays: a watch cannot
            // show a revoke, documented).
            if upto == end {
                for (id, l) in src.leases() {
                    assert_eq!(got.leases().get(id), Some(l), "lease {id}");
                }
                assert_eq!(got.dump().unwrap(), src.dump().unwrap());
            }
        }

        // A put naming a lease no batch recorded gets one that expires.
        let mut orphan = batches.clone();
        let b = orphan
            .iter_mut()
            .find(|b| b.leases.iter().any(|l| l.id == 72))
            .unwrap();
        b.leases.clear();
        let (got, notes) =
            KvStore::import_backup(MemoryBackend::new(), db, &orphan, &members).unwrap();
        assert_eq!(notes.orphan_leases, vec![72]);
        assert_eq!(got.leases()[&72].ttl, ORPHAN_LEASE_TTL);

        // Changes that do not follow the snapshot, or each other.
        let mut stale = batches.clone();
        stale[0].revision = at_full;
        for kv in stale[0].events.iter_mut().filter_map(|e| e.kv.as_mut()) {
            kv.mod_revision = at_full;
            kv.create_revision = kv.create_revision.min(at_full);
        }
        assert!(matches!(
            KvStore::import_backup(MemoryBackend::new(), db, &stale, &members),
            Err(ImportError::Changes(_))
        ));
        let mut swapped = batches.clone();
        swapped.swap(3, 4);
        assert!(matches!(
            KvStore::import_backup(MemoryBackend::new(), db, &swapped, &members),
            Err(ImportError::Changes(_))
        ));
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn bolt(buckets: &[(&[u8], Pairs)]) -> Vec<u8> {
        let mut w = bbolt::Writer::new();
        let mut values = Vec::new();
        for (name, pairs) in buckets {
            let refs: Vec<(&[u8], &[u8])> = pairs
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            values.push((*name, w.bucket(&refs)));
        }
        w.finish(&values)
    }

    fn kv_record(key: &str, create: i64, main: i64, version: i64) -> (Vec<u8>, Vec<u8>) {
        kv_at(main, key, create, main, version)
    }

    /// A put record stored under revision `at`.
    fn kv_at(at: i64, key: &str, create: i64, main: i64, version: i64) -> (Vec<u8>, Vec<u8>) {
        let kv = KeyValue {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: create,
            mod_revision: main,
            version,
            lease: 0,
        };
        (
            revision_key(Revision { main: at, sub: 0 }, false),
            kv.encode_to_vec(),
        )
    }

    fn compact_at(main: i64) -> Vec<u8> {
        revision_key(Revision { main, sub: 0 }, false)
    }

    /// The indexes of a store travel in its etcd snapshot as declarations
    /// (`nod_indexes`), and the restored store builds them again from its
    /// values: the same entries, the same answers; a unique one too.
    #[test]
    fn indexes_come_back_declared_and_are_built_again() {
        use crate::command::{FEATURE_INDEXES, FEATURE_UNIQUE_INDEXES};
        use nod_proto::nodquerypb::{FieldType, IndexField, IndexSpec};
        let mut src: Store = KvStore::in_memory();
        let mut i = 1;
        let mut next = || {
            i += 1;
            i
        };
        for f in [FEATURE_INDEXES, FEATURE_UNIQUE_INDEXES] {
            src.apply_enable_feature(f, (next(), 1)).unwrap();
        }
        let cities = ["Oslo", "Bergen", "Bodø"];
        for n in 0..90 {
            let doc = format!(r#"{{"city": "{}", "id": {n}}}"#, cities[n % 3]);
            put(&mut src, &format!("/u/{n:03}"), &doc, 0, next());
        }
        let spec = |name: &str, path: &str, ty: FieldType, unique| IndexSpec {
            name: name.into(),
            prefix: b"/u/".to_vec(),
            fields: vec![IndexField {
                path: path.into(),
                r#type: ty as i32,
            }],
            unique,
        };
        let specs = [
            spec("city", "city", FieldType::String, false),
            spec("uid", "id", FieldType::Number, true),
        ];
        fn build(s: &mut Store, next: &mut dyn FnMut() -> u64) {
            let ready = |s: &Store, id| {
                s.indexes()
                    .iter()
                    .any(|d| d.id == id && d.ready_since().is_some())
            };
            for id in s.indexes().iter().map(|d| d.id).collect::<Vec<_>>() {
                while !ready(s, id) {
                    s.apply_backfill(id, 16, (next(), 1)).unwrap();
                }
            }
        }
        for sp in &specs {
            src.apply_index_create(sp, (next(), 1))
                .unwrap()
                .into_result()
                .unwrap();
        }
        build(&mut src, &mut next);
        put(
            &mut src,
            "/u/999",
            r#"{"city": "Oslo", "id": 999}"#,
            0,
            next(),
        );

        let file = src.etcd_snapshot().unwrap();
        let db = strip_hash(&file, HashCheck::Require).unwrap();
        let mut got = KvStore::import_etcd(MemoryBackend::new(), db, &[member(7, "n1")]).unwrap();
        let declared: Vec<(String, bool)> = got
            .indexes()
            .iter()
            .map(|d| (d.spec.name.clone(), d.ready_since().is_some()))
            .collect();
        assert_eq!(
            declared,
            vec![("city".to_string(), false), ("uid".to_string(), false)],
            "declared again, building"
        );
        let mut j = 100;
        build(&mut got, &mut || {
            j += 1;
            j
        });
        for d in got.indexes() {
            let check = got.verify_secondary(d.id).unwrap().unwrap();
            assert_eq!(check.expected, 91, "{}", d.spec.name);
            assert!(check.missing.is_empty() && check.extra.is_empty());
            let theirs = src.index_named(&d.spec.name).unwrap();
            assert_eq!(theirs.spec, d.spec);
            assert_eq!(
                scan_entries(&got, d.id),
                scan_entries(&src, theirs.id),
                "{}",
                d.spec.name
            );
        }
        // Still unique: a second key with a taken id is refused.
        let dup = PutRequest {
            key: b"/u/998".to_vec(),
            value: br#"{"city": "Oslo", "id": 999}"#.to_vec(),
            ..Default::default()
        };
        assert!(matches!(
            got.apply_put(&dup, (500, 1)).unwrap(),
            crate::storage::kv_store::Outcome::Refused(
                crate::storage::KvError::UniqueViolation { .. }
            )
        ));
    }

    /// Index `id`'s entries without their id prefix.
    fn scan_entries(s: &Store, id: u32) -> Vec<Vec<u8>> {
        let p = nod_query::codec::index_prefix(id);
        scan(s, Keyspace::Secondary)
            .into_iter()
            .filter(|(k, _)| k.starts_with(&p))
            .map(|(k, _)| k[p.len()..].to_vec())
            .collect()
    }

    #[test]
    fn a_scheduled_compaction_is_finished_as_etcd_does_on_start() {
        let keys = vec![
            kv_record("a", 2, 2, 1),
            kv_record("a", 2, 3, 2),
            kv_record("a", 2, 4, 3),
        ];
        let meta = vec![
            (b"finishedCompactRev".to_vec(), compact_at(2)),
            (b"scheduledCompactRev".to_vec(), compact_at(3)),
        ];
        let db = bolt(&[(b"key", keys), (b"meta", meta)]);
        let got = KvStore::import_etcd(MemoryBackend::new(), &db, &[]).unwrap();
        assert_eq!(got.compacted_revision(), 3);
        assert_eq!(
            scan(&got, Keyspace::Rev).len(),
            2,
            "revision 2 compacted away"
        );
        assert!(got.leases().is_empty(), "no lease bucket: no leases");
        assert!(!got.auth().enabled());
    }

    #[test]
    fn malformed_records_and_a_full_store_are_refused() {
        let meta = || vec![];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "a put whose mod revision is not its own",
                bolt(&[(b"key", vec![kv_at(4, "a", 2, 3, 1)]), (b"meta", meta())]),
            ),
            (
                "a create revision after the mod revision",
                bolt(&[(b"key", vec![kv_record("a", 5, 3, 1)]), (b"meta", meta())]),
            ),
            (
                "a version 0 put",
                bolt(&[(b"key", vec![kv_record("a", 3, 3, 0)]), (b"meta", meta())]),
            ),
            (
                "a short revision key",
                bolt(&[
                    (b"key", vec![(b"12345".to_vec(), b"x".to_vec())]),
                    (b"meta", meta()),
                ]),
            ),
            (
                "a lease id 0",
                bolt(&[
                    (b"key", vec![]),
                    (
                        b"lease",
                        vec![(
                            0i64.to_be_bytes().to_vec(),
                            Lease {
                                id: 0,
                                ttl: 5,
                                remaining_ttl: 0,
                            }
                            .encode_to_vec(),
                        )],
                    ),
                    (b"meta", meta()),
                ]),
            ),
            (
                "a user stored under another name",
                bolt(&[
                    (
                        b"authUsers",
                        vec![(
                            b"bob".to_vec(),
                            User {
                                name: b"eve".to_vec(),
                                ..Default::default()
                            }
                            .encode_to_vec(),
                        )],
                    ),
                    (b"key", vec![]),
                    (b"meta", meta()),
                ]),
            ),
        ];
        let spec = |name: &str, path: &str| nod_proto::nodquerypb::IndexSpec {
            name: name.into(),
            prefix: b"/u/".to_vec(),
            fields: vec![nod_proto::nodquerypb::IndexField {
                path: path.into(),
                r#type: nod_proto::nodquerypb::FieldType::String as i32,
            }],
            unique: false,
        };
        let indexes = |name: &str, spec| {
            bolt(&[
                (b"key", vec![]),
                (b"meta", meta()),
                (b"nod_indexes", vec![(name.as_bytes().to_vec(), spec)]),
            ])
        };
        let mut cases = cases;
        cases.extend([
            (
                "an index stored under another name",
                indexes("a", spec("b", "city").encode_to_vec()),
            ),
            (
                "an index with a bad field path",
                indexes("a", spec("a", "city..x").encode_to_vec()),
            ),
            (
                "an index that is not a declaration",
                indexes("a", vec![0xff]),
            ),
        ]);
        for (what, db) in cases {
            match KvStore::import_etcd(MemoryBackend::new(), &db, &[]) {
                Err(ImportError::Snapshot(SnapshotError::Record(_))) => {}
                other => panic!("{what}: {:?}", other.map(|s| s.current_revision())),
            }
        }
        let no_key = bolt(&[(b"meta", meta())]);
        assert!(matches!(
            KvStore::import_etcd(MemoryBackend::new(), &no_key, &[]),
            Err(ImportError::Snapshot(SnapshotError::Bolt(
                BoltError::NoBucket(_)
            )))
        ));

        let full = source().into_backend();
        let db = bolt(&[(b"key", vec![]), (b"meta", meta())]);
        assert!(matches!(
            KvStore::import_etcd(full, &db, &[]),
            Err(ImportError::NotEmpty)
        ));
    }
}
