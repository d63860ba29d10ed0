//! `broker-bench chunks`: bytes per sample of the chunked layout's sealed
//! chunks (encoded here, no Redis), the same snapshots stamped four ways:
//! whole seconds as chunks stored them before milliseconds were kept (`C1`),
//! whole seconds in milliseconds (agents' points now), milliseconds at a
//! fixed per-target offset with a few milliseconds of jitter (Prometheus's
//! scrapes), and a random millisecond each time (a push client's clock).
//! What the timestamps cost is the difference: the values are the same.

use broker_agent::generator::{Mix, value_of};
use storage_layout::chunk;

#[derive(clap::Args)]
pub struct ChunksArgs {
    /// Hosts (each its own chunks).
    #[arg(long, default_value_t = 200)]
    hosts: usize,
    /// Metrics per snapshot.
    #[arg(long, default_value_t = 32)]
    metrics: usize,
    /// Snapshots per chunk (`writer.chunk_points`).
    #[arg(long, default_value_t = storage_layout::chunked::DEFAULT_POINTS_PER_CHUNK)]
    points: usize,
    /// Chunks per host.
    #[arg(long, default_value_t = 6)]
    chunks: usize,
    /// Seconds between snapshots.
    #[arg(long, default_value_t = 5)]
    interval: i64,
    /// Jitter of a scrape's timestamp around its offset, ± milliseconds.
    #[arg(long, default_value_t = 3)]
    jitter_ms: i64,
    #[arg(long, value_enum, default_value = "realistic")]
    mix: Mix,
}

/// A snapshot's timestamp from (host, snapshot number, its second).
type Stamp = Box<dyn Fn(usize, i64, i64) -> i64>;

/// A deterministic hash, for offsets and jitter.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

pub fn run(args: ChunksArgs) -> anyhow::Result<()> {
    let names: Vec<String> = (0..args.metrics)
        .map(|m| broker_agent::generator::metric_name_of(args.mix, m))
        .collect();
    let base: i64 = 1_700_000_000;
    let stamps: [(&str, Stamp); 4] = [
        ("seconds (C1, before)", Box::new(|_, _, s| s)),
        ("whole seconds in ms", Box::new(|_, _, s| s * 1000)),
        (
            "ms, per-target offset ± jitter",
            Box::new(move |h, k, s| {
                let offset = (mix64(h as u64) % 1000) as i64;
                let j = args.jitter_ms;
                let jitter = (mix64((h as u64) << 32 ^ k as u64) % (2 * j as u64 + 1)) as i64 - j;
                s * 1000 + offset + jitter
            }),
        ),
        (
            "ms, random each time",
            Box::new(|h, k, s| {
                s * 1000 + (mix64((h as u64) << 20 ^ k as u64 ^ 0x5eed) % 1000) as i64
            }),
        ),
    ];
    let mut figures = serde_json::Map::new();
    for (label, stamp) in &stamps {
        let (mut bytes, mut ts_bytes, mut samples) = (0usize, 0usize, 0usize);
        for h in 0..args.hosts {
            for c in 0..args.chunks {
                let mut table = chunk::Table::new();
                for i in 0..args.points {
                    let k = (c * args.points + i) as i64;
                    let second = base + k * args.interval;
                    let t = stamp(h, k, second);
                    for (m, name) in names.iter().enumerate() {
                        table.set(t, name, value_of(args.mix, h, second, m));
                        samples += 1;
                    }
                }
                let rows: Vec<(i64, &[f64])> = table.rows().collect();
                let blob = chunk::encode_chunk(&table, &rows);
                bytes += blob.len();
                ts_bytes += chunk::timestamp_column_len(&blob).unwrap_or(0);
            }
        }
        let per_sample = bytes as f64 / samples as f64;
        eprintln!(
            "{label:34} {per_sample:.3} bytes/sample ({:.3} of them the timestamp column), {} chunks",
            ts_bytes as f64 / samples as f64,
            args.hosts * args.chunks
        );
        figures.insert(label.to_string(), serde_json::json!(per_sample));
    }
    println!("{}", serde_json::Value::Object(figures));
    Ok(())
}
