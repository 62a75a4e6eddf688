//! Proposals committed per second by 3 in-memory nodes (no disk, no network):
//! the cost of the consensus core alone. "batched" proposes 100 entries and
//! then lets the cluster settle, so one Ready and one Append carry them all;
//! "unbatched" settles after every proposal.
//!
//! `cargo bench -p nod-raft --bench propose`

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use support::{no_tweak, Cluster};

const PROPOSALS: u64 = 100;

fn elected() -> Cluster {
    let mut c = Cluster::new(3, no_tweak);
    c.keep_applied = false;
    c.elect(1);
    c
}

fn bench_propose(crit: &mut Criterion) {
    let payload = vec![7u8; 256];
    let mut group = crit.benchmark_group("commit_3_nodes_in_memory");
    group.throughput(Throughput::Elements(PROPOSALS));
    for (name, settle_each) in [("batched_100", false), ("unbatched", true)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                elected,
                |mut c| {
                    for _ in 0..PROPOSALS {
                        c.node(1).propose(payload.clone()).expect("leader");
                        if settle_each {
                            c.stabilize();
                        }
                    }
                    c.stabilize();
                    assert!(c.commit(1).0 >= PROPOSALS + 2);
                    c
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_propose);
criterion_main!(benches);
