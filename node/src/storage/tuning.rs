//! RocksDB options shared by the log and the state machine. RocksDB's
//! defaults (64 MiB memtables, two per column family, a 32 MiB block cache
//! per database) made a member's peak RSS about 2.5× etcd's; each member
//! runs two databases, so memory is capped per database here.

use rocksdb::{BlockBasedOptions, Cache, Options};

/// All memtables of one database together (a flush starts when they reach it).
const DB_WRITE_BUFFER: usize = 16 << 20;
/// One column family's memtable.
const CF_WRITE_BUFFER: usize = 8 << 20;
/// Uncompressed blocks kept for reads, per database.
const BLOCK_CACHE: usize = 8 << 20;
/// Bytes written to a file between background syncs of it.
const SYNC_EVERY: u64 = 1 << 20;

pub fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_db_write_buffer_size(DB_WRITE_BUFFER);
    // Write flushed and compacted files out as they grow, not in one burst
    // when they are closed: a burst of dirty pages made the log's next fsync
    // wait behind it (writes stalled during a large compaction).
    o.set_bytes_per_sync(SYNC_EVERY);
    o.set_wal_bytes_per_sync(SYNC_EVERY);
    o
}

/// Options for each column family of one database, sharing `cache`.
pub fn cf_options(cache: &Cache) -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(CF_WRITE_BUFFER);
    o.set_max_write_buffer_number(2);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    o.set_block_based_table_factory(&table);
    o
}

pub fn block_cache() -> Cache {
    Cache::new_lru_cache(BLOCK_CACHE)
}
