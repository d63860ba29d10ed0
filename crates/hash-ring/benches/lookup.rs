//! Lookup and build cost of the ring at the default vnode count.
//!
//! ```text
//! cargo bench -p hash-ring -- --warm-up-time 1 --measurement-time 2
//! ```

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hash_ring::{DEFAULT_VNODES, HashAlgorithm, HashRing, NodeSpec, RingConfig};

const KEYS: usize = 1024;

fn nodes(n: usize) -> Vec<NodeSpec> {
    (1..=n)
        .map(|i| NodeSpec::new(format!("broker-{i}")))
        .collect()
}

fn config(hash: HashAlgorithm) -> RingConfig {
    RingConfig {
        vnodes: DEFAULT_VNODES,
        hash,
    }
}

/// Realistic points: 1024 distinct hosts, timestamps 5 s apart.
fn points() -> Vec<(String, i64)> {
    (0..KEYS)
        .map(|i| (format!("host-{i}"), 1_700_000_000 + 5 * i as i64))
        .collect()
}

fn lookup(c: &mut Criterion) {
    let points = points();
    let mut group = c.benchmark_group("owner_of_point");
    group.throughput(Throughput::Elements(KEYS as u64));
    for hash in HashAlgorithm::ALL {
        for n in [3, 10] {
            let ring = HashRing::new(config(hash), nodes(n)).unwrap();
            group.bench_with_input(BenchmarkId::new(hash.as_str(), n), &ring, |b, ring| {
                b.iter(|| {
                    for (host, ts) in &points {
                        black_box(ring.owner_of_point(black_box(host), black_box(*ts)));
                    }
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("hash_point");
    group.throughput(Throughput::Elements(KEYS as u64));
    for hash in HashAlgorithm::ALL {
        group.bench_function(hash.as_str(), |b| {
            b.iter(|| {
                for (host, ts) in &points {
                    black_box(hash.hash_point(black_box(host), black_box(*ts)));
                }
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    for hash in HashAlgorithm::ALL {
        for n in [3, 10] {
            let nodes = nodes(n);
            group.bench_with_input(BenchmarkId::new(hash.as_str(), n), &nodes, |b, nodes| {
                b.iter(|| HashRing::new(config(hash), black_box(nodes.clone())).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
