//! Measures the choice of point encoding: packed values against a batch-level
//! name table (what `broker.v1.Point` does) versus `map<string, double>` per
//! point (`broker.v1.bench.MapPoint`). 1,000 hosts x 32 metrics per batch,
//! the shape the gateway, router and writer each decode on the hot path.

use broker_proto::bench::{MapBatch, MapPoint};
use broker_proto::v1::{MetricBatch, Point};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;

const HOSTS: usize = 1000;
const METRICS: usize = 32;

fn names() -> Vec<String> {
    (0..METRICS).map(|i| format!("metric_{i:02}")).collect()
}

fn packed() -> MetricBatch {
    MetricBatch {
        seq: 1,
        metric_names: names(),
        points: (0..HOSTS)
            .map(|h| Point {
                millis: 0,
                host_id: format!("host-{h:05}"),
                timestamp: 1_700_000_000,
                values: (0..METRICS).map(|m| (h * m) as f64 * 0.5).collect(),
                name_index: vec![],
                labels: Default::default(),
            })
            .collect(),
    }
}

fn mapped() -> MapBatch {
    let names = names();
    MapBatch {
        seq: 1,
        points: (0..HOSTS)
            .map(|h| MapPoint {
                host_id: format!("host-{h:05}"),
                timestamp: 1_700_000_000,
                metrics: names
                    .iter()
                    .enumerate()
                    .map(|(m, n)| (n.clone(), (h * m) as f64 * 0.5))
                    .collect(),
                labels: Default::default(),
            })
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let p = packed();
    let m = mapped();
    let pb = p.encode_to_vec();
    let mb = m.encode_to_vec();
    println!(
        "encoded size for {HOSTS} points x {METRICS} metrics: packed {} bytes, map {} bytes",
        pb.len(),
        mb.len()
    );
    let mut g = c.benchmark_group("batch_1000x32");
    g.throughput(Throughput::Elements(HOSTS as u64));
    g.bench_function("decode_packed", |b| {
        b.iter(|| MetricBatch::decode(black_box(pb.as_slice())).unwrap())
    });
    g.bench_function("decode_map", |b| {
        b.iter(|| MapBatch::decode(black_box(mb.as_slice())).unwrap())
    });
    g.bench_function("encode_packed", |b| {
        b.iter(|| black_box(&p).encode_to_vec())
    });
    g.bench_function("encode_map", |b| b.iter(|| black_box(&m).encode_to_vec()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
