//! The state machine's keyspaces as column families of one RocksDB (the
//! server's backend, `<data>/kv`). Does I/O.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, WriteBatch, DB};

use super::{Backend, BackendError, Batch, BatchOp, Entry, Keyspace};

pub struct RocksBackend {
    db: Arc<DB>,
    path: PathBuf,
}

fn err(context: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError(format!("{context}: {e}"))
}

impl RocksBackend {
    /// Opens (creating if needed) the database in `dir` with every keyspace.
    pub fn open(dir: &Path) -> Result<RocksBackend, BackendError> {
        let opts = crate::storage::tuning::db_options();
        let cache = crate::storage::tuning::block_cache();
        let cfs = Keyspace::ALL.map(|k| {
            ColumnFamilyDescriptor::new(k.name(), crate::storage::tuning::cf_options(&cache))
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| {
            let text = e.to_string();
            if text.to_ascii_lowercase().contains("lock") {
                BackendError(format!(
                    "data directory {} is in use by another process (its RocksDB LOCK is held): {text}",
                    dir.display()
                ))
            } else {
                err(&format!("cannot open the state machine in {}", dir.display()), text)
            }
        })?;
        Ok(RocksBackend {
            db: Arc::new(db),
            path: dir.to_path_buf(),
        })
    }

    /// Opens a checkpoint of the store read-only (nothing in it changes),
    /// to read its meta and member keyspaces. A checkpoint from a version
    /// before the auth or secondary keyspace lacks it; opening it
    /// read-write adds it.
    pub fn open_read_only(dir: &Path) -> Result<RocksBackend, BackendError> {
        let present = DB::list_cf(&rocksdb::Options::default(), dir)
            .map_err(|e| err("listing a checkpoint's keyspaces", e))?;
        let names: Vec<&str> = Keyspace::ALL
            .iter()
            .filter(|k| !k.added_later() || present.iter().any(|p| p == k.name()))
            .map(|k| k.name())
            .collect();
        let db = DB::open_cf_for_read_only(&rocksdb::Options::default(), dir, names, false)
            .map_err(|e| err("opening a checkpoint", e))?;
        Ok(RocksBackend {
            db: Arc::new(db),
            path: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, for taking a checkpoint off the driver's thread.
    pub fn db_handle(&self) -> Arc<DB> {
        self.db.clone()
    }

    /// The keyspace's column family; none only in a checkpoint opened
    /// read-only from a version before the keyspace (`added_later`).
    fn cf(&self, keyspace: Keyspace) -> Option<&ColumnFamily> {
        self.db.cf_handle(keyspace.name())
    }

    fn rocks_batch(&self, batch: Batch) -> Result<WriteBatch, BackendError> {
        let cf = |keyspace: Keyspace| {
            self.cf(keyspace).ok_or_else(|| {
                BackendError(format!(
                    "the store in {} has no {} keyspace (a read-only checkpoint)",
                    self.path.display(),
                    keyspace.name()
                ))
            })
        };
        let mut b = WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                BatchOp::Put {
                    keyspace,
                    key,
                    value,
                } => b.put_cf(cf(keyspace)?, key, value),
                BatchOp::Delete { keyspace, key } => b.delete_cf(cf(keyspace)?, key),
                BatchOp::DeleteRange { keyspace, from, to } => {
                    b.delete_range_cf(cf(keyspace)?, from, to)
                }
            }
        }
        Ok(b)
    }
}

impl Backend for RocksBackend {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, BackendError> {
        let Some(cf) = self.cf(keyspace) else {
            return Ok(None);
        };
        self.db
            .get_cf(cf, key)
            .map(|v| v.map(Cow::Owned))
            .map_err(|e| err(&format!("reading {}", keyspace.name()), e))
    }

    fn scan_from<'a>(
        &'a self,
        keyspace: Keyspace,
        from: &[u8],
    ) -> impl Iterator<Item = Result<Entry<'a>, BackendError>> + 'a {
        self.cf(keyspace)
            .map(|cf| {
                self.db
                    .iterator_cf(cf, IteratorMode::From(from, Direction::Forward))
            })
            .into_iter()
            .flatten()
            .map(move |item| {
                item.map(|(k, v)| (Cow::Owned(k.into_vec()), Cow::Owned(v.into_vec())))
                    .map_err(|e| err(&format!("scanning {}", keyspace.name()), e))
            })
    }

    fn scan_rev<'a>(
        &'a self,
        keyspace: Keyspace,
        before: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<Entry<'a>, BackendError>> + 'a {
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(before) = before {
            opts.set_iterate_upper_bound(before.to_vec());
        }
        self.cf(keyspace)
            .map(|cf| self.db.iterator_cf_opt(cf, opts, IteratorMode::End))
            .into_iter()
            .flatten()
            .map(move |item| {
                item.map(|(k, v)| (Cow::Owned(k.into_vec()), Cow::Owned(v.into_vec())))
                    .map_err(|e| err(&format!("scanning {} backwards", keyspace.name()), e))
            })
    }

    fn write(&mut self, batch: Batch) -> Result<(), BackendError> {
        let b = self.rocks_batch(batch)?;
        self.db.write(b).map_err(|e| err("writing a batch", e))
    }

    fn write_unlogged(&mut self, batch: Batch) -> Result<(), BackendError> {
        let b = self.rocks_batch(batch)?;
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        self.db
            .write_opt(b, &opts)
            .map_err(|e| err("writing a batch without the WAL", e))
    }

    fn size(&self) -> u64 {
        // Table files and memtables only: not `sizes`' live estimate.
        Keyspace::ALL
            .iter()
            .filter_map(|k| self.db.cf_handle(k.name()))
            .map(|cf| {
                [
                    "rocksdb.total-sst-files-size",
                    "rocksdb.size-all-mem-tables",
                ]
                .iter()
                .map(|p| {
                    self.db
                        .property_int_value_cf(cf, *p)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                })
                .sum::<u64>()
            })
            .sum()
    }

    fn size_in_use(&self) -> u64 {
        sizes(&self.db).in_use
    }
}

/// What the state machine's database takes, summed over its keyspaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Table files plus memtables: what the data takes now.
    pub total: u64,
    /// RocksDB's estimate of the live data in the table files, plus the
    /// memtables: what a full compaction would leave (deleted and
    /// overwritten records, and compacted history, not counted).
    pub in_use: u64,
}

pub fn sizes(db: &DB) -> Sizes {
    let prop = |cf: &ColumnFamily, name: &str| -> u64 {
        db.property_int_value_cf(cf, name)
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    let mut s = Sizes {
        total: 0,
        in_use: 0,
    };
    for keyspace in Keyspace::ALL {
        let Some(cf) = db.cf_handle(keyspace.name()) else {
            continue;
        };
        let mem = prop(cf, "rocksdb.size-all-mem-tables");
        let files = prop(cf, "rocksdb.total-sst-files-size");
        let live = prop(cf, "rocksdb.estimate-live-data-size").min(files);
        s.total += files + mem;
        s.in_use += live + mem;
    }
    s
}

/// etcd's defragmentation, for RocksDB: a full manual compaction of every
/// keyspace, down to the last level, which drops deleted records and
/// compacted history and rewrites the table files. It runs beside reads
/// and writes (RocksDB compacts in the background of both); it blocks the
/// calling thread until it is done. Answers the sizes before and after.
pub fn defragment(db: &DB) -> (Sizes, Sizes) {
    let before = sizes(db);
    let mut opts = rocksdb::CompactOptions::default();
    opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
    for keyspace in Keyspace::ALL {
        if let Some(cf) = db.cf_handle(keyspace.name()) {
            db.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
    }
    (before, sizes(db))
}
