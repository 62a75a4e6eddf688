//! Storage and wire microbenchmarks (criterion):
//! - the Raft log: appending a batch of entries with one fsync (what one
//!   Ready costs the disk), for 1, 16 and 256 entries of 256 bytes;
//! - the Raft log's steady state: append one entry (no fsync) and read its
//!   term back, as the leader does for every entry (a range tombstone per
//!   append once made this grow with every write);
//! - the MVCC store: applying a put, and a one-key and a 100-key range,
//!   over RocksDB (`mvcc`, the server's) and over memory (`mvcc_memory`,
//!   the simulator's);
//! - the peer codec: encoding and decoding an Append of 64 entries.
//!
//! `cargo bench -p nod --bench storage`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nod::storage::backend::Backend;
use nod::storage::{KvStore, LogStore};
use nod::transport::codec::{decode_message, encode_message};
use nod_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use nod_raft::{
    Entry, EntryPayload, Index, LogWrite, Message, MessageBody, NodeId, Storage, StorageWrite, Term,
};

fn entries(from: u64, n: u64) -> Vec<Entry> {
    (from..from + n)
        .map(|i| Entry {
            index: Index(i),
            term: Term(1),
            payload: EntryPayload::Normal(vec![7u8; 256]),
        })
        .collect()
}

fn log_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = LogStore::open(&dir.path().join("log")).expect("open log");
    let mut next = 1u64;
    let mut group = c.benchmark_group("log_append_fsync");
    for n in [1u64, 16, 256] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("{n}_entries"), |b| {
            b.iter(|| {
                let w = LogWrite {
                    entries: entries(next, n),
                    sync: true,
                    ..Default::default()
                };
                log.write(&w).expect("append");
                next += n;
            })
        });
    }
    group.finish();
}

fn log_append_then_term(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = LogStore::open(&dir.path().join("log")).expect("open log");
    let mut next = 1u64;
    c.bench_function("log_append_then_term", |b| {
        b.iter(|| {
            let w = LogWrite {
                entries: entries(next, 1),
                sync: false,
                ..Default::default()
            };
            log.write(&w).expect("append");
            let t = log.term(Index(next)).expect("term");
            next += 1;
            t
        })
    });
}

fn mvcc(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let kv = KvStore::open(&dir.path().join("kv")).expect("open store");
    mvcc_over(c, "mvcc", kv);
    mvcc_over(c, "mvcc_memory", KvStore::in_memory());
}

fn mvcc_over<B: Backend>(c: &mut Criterion, group: &str, mut kv: KvStore<B>) {
    let mut index = 1u64;
    for i in 0..10_000u64 {
        let req = PutRequest {
            key: format!("{i:08x}").into_bytes(),
            value: vec![b'v'; 256],
            ..Default::default()
        };
        index += 1;
        kv.apply_put(&req, (index, 1))
            .expect("put")
            .into_result()
            .expect("applied");
    }
    let mut group = c.benchmark_group(group);
    group.bench_function("put", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            index += 1;
            let req = PutRequest {
                key: format!("{:08x}", i % 10_000).into_bytes(),
                value: vec![b'v'; 256],
                ..Default::default()
            };
            kv.apply_put(&req, (index, 1))
                .expect("put")
                .into_result()
                .expect("applied");
        })
    });
    group.bench_function("range_1_key", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let req = RangeRequest {
                key: format!("{:08x}", i % 10_000).into_bytes(),
                ..Default::default()
            };
            kv.range(&req).expect("range")
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("range_100_keys", |b| {
        b.iter(|| {
            let req = RangeRequest {
                key: b"00000100".to_vec(),
                range_end: b"00000164".to_vec(),
                ..Default::default()
            };
            kv.range(&req).expect("range")
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let m = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body: MessageBody::Append {
            prev_index: Index(99),
            prev_term: Term(3),
            entries: entries(100, 64),
            commit: Index(98),
            quiet: false,
        },
    };
    let mut group = c.benchmark_group("codec_append_64x256B");
    group.throughput(Throughput::Elements(64));
    group.bench_function("encode", |b| b.iter(|| encode_message(&m)));
    let wire = encode_message(&m);
    group.bench_function("decode", |b| {
        b.iter_batched(
            || wire.clone(),
            |w| decode_message(w).expect("decodes"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, log_append, log_append_then_term, mvcc, codec);
criterion_main!(benches);
