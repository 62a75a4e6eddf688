//! Storage and wire microbenchmarks (criterion):
//! - the Raft log: appending a batch of entries with one fsync (what one
//!   Ready costs the disk), for 1, 16 and 256 entries of 256 bytes;
//! - the Raft log's steady state: append one entry (no fsync) and read its
//!   term back, as the leader does for every entry (a range tombstone per
//!   append once made this grow with every write);
//! - the MVCC store: applying a put, and a one-key and a 100-key range,
//!   over RocksDB (`mvcc`, the server's) and over memory (`mvcc_memory`,
//!   the simulator's);
//! - the peer codec: encoding and decoding an Append of 64 entries;
//! - secondary indexes: a batch of 64 puts of JSON documents (as one
//!   Ready applies them) under a prefix with 0, 1 and 3 indexes, over
//!   RocksDB (`index_put`), and the tuple of one document read in one
//!   pass over its text against parsing it into a `serde_json::Value`
//!   first, the route that pass replaced (`index_tuple`).
//!
//! `cargo bench -p nod --bench storage`
//!
//! With the server's allocator (mimalloc, src/bin/nod.rs): glibc's malloc
//! was a fifth of an indexed put's profile here, which the server never pays.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nod::storage::backend::Backend;
use nod::storage::{KvStore, LogStore};
use nod::transport::codec::{decode_message, encode_message};
use nod_proto::etcd::etcdserverpb::{PutRequest, RangeRequest};
use nod_proto::nodquerypb::{FieldType, IndexField, IndexSpec};
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

/// Document `i`, shaped as `nod-bench query`'s.
fn doc(i: u64) -> Vec<u8> {
    format!(
        r#"{{"name":"user {i}","email":"user{i}@example.com","city":"City {:02}","age":{}}}"#,
        i % 50,
        (i * 37 + i / 50) % 100
    )
    .into_bytes()
}

fn field(path: &str, ty: FieldType) -> IndexField {
    IndexField {
        path: path.into(),
        r#type: ty as i32,
    }
}

fn index_put(c: &mut Criterion) {
    let sets: [(&str, Vec<Vec<IndexField>>); 3] = [
        ("0_indexes", vec![]),
        ("1_index", vec![vec![field("city", FieldType::String)]]),
        (
            "3_indexes",
            vec![
                vec![field("city", FieldType::String)],
                vec![
                    field("city", FieldType::String),
                    field("age", FieldType::Number),
                ],
                vec![field("email", FieldType::String)],
            ],
        ),
    ];
    let mut group = c.benchmark_group("index_put");
    group.throughput(Throughput::Elements(64));
    for (name, indexes) in sets {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut kv = KvStore::open(&dir.path().join("kv")).expect("open store");
        let mut index = 1u64;
        kv.apply_enable_feature(nod::command::FEATURE_INDEXES, (index, 1))
            .expect("enable")
            .into_result()
            .expect("enabled");
        for (n, fields) in indexes.into_iter().enumerate() {
            index += 1;
            let spec = IndexSpec {
                name: format!("i{n}"),
                prefix: b"/w/".to_vec(),
                fields,
                unique: false,
            };
            kv.apply_index_create(&spec, (index, 1))
                .expect("create")
                .into_result()
                .expect("created");
        }
        let mut i = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                kv.begin_batch();
                for _ in 0..64 {
                    i += 1;
                    index += 1;
                    let req = PutRequest {
                        key: format!("/w/{:07}", i % 100_000).into_bytes(),
                        value: doc(i),
                        ..Default::default()
                    };
                    kv.apply_put(&req, (index, 1))
                        .expect("put")
                        .into_result()
                        .expect("applied");
                }
                kv.end_batch().expect("write")
            })
        });
    }
    group.finish();
}

fn index_tuple(c: &mut Criterion) {
    let spec = nod_query::IndexSpec {
        name: "city".into(),
        prefix: b"/w/".to_vec(),
        fields: vec![nod_query::IndexField {
            path: nod_query::FieldPath::parse("city").expect("path"),
            ty: nod_query::FieldType::String,
        }],
        unique: false,
    };
    let value = doc(12345);
    let mut group = c.benchmark_group("index_tuple");
    group.bench_function("one_pass", |b| b.iter(|| spec.tuple(&value)));
    group.bench_function("value_then_lookup", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(&value).ok()?;
            spec.fields
                .iter()
                .map(|f| nod_query::FieldValue::from_json(f.path.lookup(&v)?, f.ty))
                .collect::<Option<Vec<_>>>()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    log_append,
    log_append_then_term,
    mvcc,
    codec,
    index_put,
    index_tuple
);
criterion_main!(benches);
