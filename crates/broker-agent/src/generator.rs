//! [`SnapshotGenerator`]: realistic, deterministic host snapshots.
//!
//! Every value is a pure function of `(host, timestamp, metric)` ([`value`]),
//! so a test can recompute exactly what was sent and compare it with what was
//! stored, without keeping a copy.

use std::collections::HashMap;
use std::ops::Range;

use broker_proto::v1::{MetricBatch, Point};

/// The named metrics, in table order; past these come `metric_NN`.
pub const NAMED_METRICS: &[&str] = &[
    "cpu_user",
    "cpu_system",
    "cpu_idle",
    "mem_used",
    "mem_free",
    "load1",
    "load5",
    "load15",
    "disk_read_bytes",
    "disk_write_bytes",
    "net_rx_bytes",
    "net_tx_bytes",
    "mem_cached",
    "swap_used",
    "procs_running",
    "tcp_established",
];

const GIB: f64 = (1u64 << 30) as f64;
const REGIONS: &[&str] = &["eu-west", "eu-central", "us-east", "ap-south"];
const ROLES: &[&str] = &["web", "db", "cache", "batch", "ingest"];

/// Builds batches for hosts `host-00000 ..` with metrics named by
/// [`metric_name`]. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct SnapshotGenerator {
    hosts: usize,
    metric_names: Vec<String>,
    labels: bool,
}

impl SnapshotGenerator {
    /// `hosts` hosts, each reporting `metrics` metrics per snapshot.
    pub fn new(hosts: usize, metrics: usize) -> Self {
        Self {
            hosts,
            metric_names: (0..metrics).map(metric_name).collect(),
            labels: false,
        }
    }

    /// Attach `region` and `role` labels to every point (off by default).
    pub fn with_labels(mut self, labels: bool) -> Self {
        self.labels = labels;
        self
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    pub fn metrics(&self) -> usize {
        self.metric_names.len()
    }

    /// The batch-level name table every batch carries.
    pub fn metric_names(&self) -> &[String] {
        &self.metric_names
    }

    /// Same as the free function [`value`].
    pub fn value(host_idx: usize, ts: i64, metric_idx: usize) -> f64 {
        value(host_idx, ts, metric_idx)
    }

    /// One host's snapshot: values packed in name-table order (empty
    /// `name_index`).
    pub fn point(&self, host_idx: usize, ts: i64) -> Point {
        Point {
            host_id: host_id(host_idx),
            timestamp: ts,
            values: (0..self.metrics())
                .map(|m| value(host_idx, ts, m))
                .collect(),
            name_index: Vec::new(),
            labels: if self.labels {
                labels(host_idx)
            } else {
                HashMap::new()
            },
        }
    }

    /// One snapshot at `ts` for each host in `hosts`, with `seq` 0 (the
    /// client assigns it).
    ///
    /// # Panics
    /// When `hosts` reaches past [`hosts()`](Self::hosts).
    pub fn batch(&self, ts: i64, hosts: Range<usize>) -> MetricBatch {
        assert!(
            hosts.end <= self.hosts,
            "host range {hosts:?} past the {} generated hosts",
            self.hosts
        );
        self.batch_of_hosts(ts, hosts)
    }

    /// One snapshot at `ts` for each listed host, in list order, with `seq`
    /// 0. What a resend of some points of a batch carries: the same points,
    /// value for value, as the first send.
    ///
    /// # Panics
    /// When a host index reaches past [`hosts()`](Self::hosts).
    pub fn batch_of_hosts(&self, ts: i64, hosts: impl IntoIterator<Item = usize>) -> MetricBatch {
        MetricBatch {
            seq: 0,
            metric_names: self.metric_names.clone(),
            points: hosts
                .into_iter()
                .map(|h| {
                    assert!(
                        h < self.hosts,
                        "host {h} past the {} generated hosts",
                        self.hosts
                    );
                    self.point(h, ts)
                })
                .collect(),
        }
    }

    /// Splits all hosts into consecutive ranges of at most `batch_hosts`
    /// (at least one host per range).
    pub fn batch_ranges(&self, batch_hosts: usize) -> Vec<Range<usize>> {
        let k = batch_hosts.max(1);
        (0..self.hosts)
            .step_by(k)
            .map(|start| start..(start + k).min(self.hosts))
            .collect()
    }
}

/// `host-00000`, `host-00001`, ...
pub fn host_id(host_idx: usize) -> String {
    format!("host-{host_idx:05}")
}

/// The name of metric `metric_idx`: the [`NAMED_METRICS`] first, then
/// `metric_16`, `metric_17`, ...
pub fn metric_name(metric_idx: usize) -> String {
    match NAMED_METRICS.get(metric_idx) {
        Some(name) => (*name).to_string(),
        None => format!("metric_{metric_idx:02}"),
    }
}

/// The labels a host carries when labels are on.
pub fn labels(host_idx: usize) -> HashMap<String, String> {
    let h = mix(host_idx as u64 ^ 0x001a_be15);
    HashMap::from([
        (
            "region".to_string(),
            REGIONS[(h % REGIONS.len() as u64) as usize].to_string(),
        ),
        (
            "role".to_string(),
            ROLES[((h >> 32) % ROLES.len() as u64) as usize].to_string(),
        ),
    ])
}

/// The value of metric `metric_idx` of host `host_idx` at `ts`.
///
/// Deterministic and always finite. Shapes follow the names: CPU percentages
/// that add up to 100, memory in bytes against a per-host total, load
/// averages against a per-host core count, byte counters that grow with
/// `ts`, and `metric_NN` in `[0, 1000)` with three decimals.
pub fn value(host_idx: usize, ts: i64, metric_idx: usize) -> f64 {
    let h = host_idx as u64;
    // Stable per host: its size and how busy it usually is.
    let profile = unit(mix(h ^ 0x5eed));
    let cores = 2f64.powi((mix(h ^ 0xc0de) % 4) as i32 + 1); // 2..16
    let mem_total = 8.0 * GIB * 2f64.powi((mix(h ^ 0x3e3) % 4) as i32); // 8..64 GiB
    // Varies with time.
    let noise = |m: usize| unit(mix3(h, ts as u64, m as u64));

    let cpu_user = || round_to(5.0 + 55.0 * profile + 20.0 * noise(0), 2);
    let cpu_system = || round_to(1.0 + 8.0 * profile + 6.0 * noise(1), 2);
    let mem_used = || (mem_total * (0.25 + 0.5 * profile + 0.2 * noise(3))).floor();
    // Byte counters: a per-host rate (whole bytes/s) times ts stays an exact
    // integer in f64 for any realistic ts (rate <= 2^20, |ts| < 2^33).
    let counter = |m: usize| {
        let rate = 1024 + mix(h ^ (m as u64).wrapping_mul(0x9e37)) % (1 << 20);
        (rate as f64) * (ts as f64)
    };

    match metric_idx {
        0 => cpu_user(),
        1 => cpu_system(),
        2 => round_to((100.0 - cpu_user() - cpu_system()).max(0.0), 2),
        3 => mem_used(),
        4 => mem_total - mem_used(),
        5 => round_to(cores * (0.05 + 0.9 * profile) * (0.6 + 0.8 * noise(5)), 2),
        6 => round_to(cores * (0.05 + 0.9 * profile) * (0.8 + 0.4 * noise(6)), 2),
        7 => round_to(cores * (0.05 + 0.9 * profile) * (0.9 + 0.2 * noise(7)), 2),
        8..=11 => counter(metric_idx),
        12 => (mem_total * 0.15 * (0.5 + 0.5 * noise(12))).floor(),
        13 => (GIB * profile * noise(13)).floor(),
        14 => (1.0 + cores * 2.0 * profile * noise(14)).floor(),
        15 => (10.0 + 2000.0 * profile * noise(15)).floor(),
        m => round_to(1000.0 * noise(m), 3),
    }
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// splitmix64's finaliser: a cheap, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix3(a: u64, b: u64, c: u64) -> u64 {
    mix(mix(mix(a) ^ b) ^ c)
}

/// Uniform in `[0, 1)` from the top 53 bits.
fn unit(z: u64) -> f64 {
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: i64 = 1_760_000_000;

    #[test]
    fn values_are_deterministic() {
        let a = SnapshotGenerator::new(50, 40).batch(TS, 0..50);
        let b = SnapshotGenerator::new(50, 40).batch(TS, 0..50);
        assert_eq!(a, b);
        for (h, p) in a.points.iter().enumerate() {
            for (m, v) in p.values.iter().enumerate() {
                assert_eq!(v.to_bits(), value(h, TS, m).to_bits());
            }
        }
    }

    #[test]
    fn values_change_with_time_host_and_metric() {
        assert_ne!(value(1, TS, 0), value(1, TS + 5, 0));
        assert_ne!(value(1, TS, 0), value(2, TS, 0));
        assert_ne!(value(1, TS, 20), value(1, TS, 21));
    }

    #[test]
    fn batch_shape() {
        let g = SnapshotGenerator::new(300, 20);
        let b = g.batch(TS, 100..200);
        assert_eq!(b.seq, 0);
        assert_eq!(b.metric_names.len(), 20);
        assert_eq!(b.metric_names[0], "cpu_user");
        assert_eq!(b.metric_names[11], "net_tx_bytes");
        assert_eq!(b.metric_names[16], "metric_16");
        assert_eq!(b.metric_names[19], "metric_19");
        assert_eq!(b.points.len(), 100);
        assert_eq!(b.points[0].host_id, "host-00100");
        assert_eq!(b.points[99].host_id, "host-00199");
        for p in &b.points {
            assert_eq!(p.timestamp, TS);
            assert_eq!(p.values.len(), 20);
            assert!(p.name_index.is_empty(), "packed values");
            assert!(p.labels.is_empty());
        }
    }

    #[test]
    fn fewer_metrics_than_named_takes_a_prefix() {
        let g = SnapshotGenerator::new(1, 3);
        assert_eq!(g.metric_names(), ["cpu_user", "cpu_system", "cpu_idle"]);
        assert_eq!(g.batch(TS, 0..1).points[0].values.len(), 3);
    }

    #[test]
    fn names_are_unique() {
        let g = SnapshotGenerator::new(1, 1024);
        let set: std::collections::HashSet<_> = g.metric_names().iter().collect();
        assert_eq!(set.len(), 1024);
        assert_eq!(g.metric_names()[100], "metric_100");
    }

    #[test]
    fn labels_are_optional_and_stable() {
        let g = SnapshotGenerator::new(10, 4).with_labels(true);
        let a = g.point(3, TS);
        let b = g.point(3, TS + 60);
        assert_eq!(a.labels, b.labels);
        assert!(REGIONS.contains(&a.labels["region"].as_str()));
        assert!(ROLES.contains(&a.labels["role"].as_str()));
    }

    #[test]
    fn values_are_plausible() {
        for h in 0..200 {
            for ts in [0, TS, TS + 5, TS + 3600] {
                let v = |m| value(h, ts, m);
                for m in 0..64 {
                    assert!(v(m).is_finite(), "host {h} ts {ts} metric {m}");
                    assert!(v(m) >= 0.0, "host {h} ts {ts} metric {m}: {}", v(m));
                }
                let cpu = v(0) + v(1) + v(2);
                assert!((cpu - 100.0).abs() < 0.02, "cpu adds to {cpu}");
                let mem = v(3) + v(4);
                assert!((8.0 * GIB..=64.0 * GIB).contains(&mem));
                assert!(v(5) <= 16.0 * 1.4);
                assert!(v(40) < 1000.0);
            }
            // Counters grow with time.
            for m in 8..=11 {
                assert!(value(h, TS + 5, m) > value(h, TS, m));
            }
        }
    }

    #[test]
    fn batch_ranges_cover_all_hosts_once() {
        let g = SnapshotGenerator::new(250, 1);
        let r = g.batch_ranges(100);
        assert_eq!(r, vec![0..100, 100..200, 200..250]);
        assert_eq!(g.batch_ranges(0).len(), 250);
        assert_eq!(
            SnapshotGenerator::new(0, 1).batch_ranges(10),
            Vec::<std::ops::Range<usize>>::new()
        );
    }

    #[test]
    fn a_subset_batch_repeats_the_same_points() {
        let g = SnapshotGenerator::new(20, 6).with_labels(true);
        let full = g.batch(TS, 10..20);
        let some = g.batch_of_hosts(TS, [12, 17, 19]);
        assert_eq!(some.metric_names, full.metric_names);
        assert_eq!(
            some.points,
            vec![
                full.points[2].clone(),
                full.points[7].clone(),
                full.points[9].clone()
            ]
        );
        assert_eq!(g.batch_of_hosts(TS, 10..20), full);
    }

    #[test]
    #[should_panic(expected = "past the 10 generated hosts")]
    fn batch_past_the_hosts_panics() {
        SnapshotGenerator::new(10, 1).batch(TS, 5..11);
    }
}
