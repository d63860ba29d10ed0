//! [`SnapshotGenerator`]: deterministic host snapshots in one of two metric
//! [`Mix`]es.
//!
//! Every value is a pure function of `(mix, host, timestamp, metric)`
//! ([`value_of`]; [`value`] is the synthetic mix), so a test can recompute
//! exactly what was sent and compare it with what was stored, without
//! keeping a copy.
//!
//! - [`Mix::Synthetic`]: the sixteen [`NAMED_METRICS`] with fresh noise in
//!   every sample, then `metric_16 ..` uniform in `[0, 1000)` with three
//!   decimals. Mostly incompressible: a worst case for storage.
//! - [`Mix::Realistic`]: shaped like node_exporter on real hosts sampled
//!   every 5 s. Of every 32 metrics, 4 are per-host constants, 12 counters
//!   that grow at a per-host rate that wanders slowly, with jitter, and 16
//!   gauges that follow slow waves (periods from minutes to a day) plus
//!   noise at their last digits, at the precision a real exporter reports:
//!   percentages and seconds to 2 decimals, memory and filesystem bytes to a
//!   4096-byte page, disk bytes to a 512-byte sector, counts to integers.
//!   Related series share their slow wave, so the rate of
//!   `cpu_user_seconds_total` follows `cpu_user_pct` and `load1`, and
//!   packets follow bytes.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use broker_proto::v1::{MetricBatch, Point};

/// The synthetic mix's named metrics, in table order; past these come
/// `metric_NN`.
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

/// Which metrics a [`SnapshotGenerator`] reports and how their values move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Mix {
    /// [`NAMED_METRICS`] with fresh noise in every sample, then `metric_NN`
    /// uniform in `[0, 1000)`: what [`value`] computes.
    Synthetic,
    /// node_exporter-like constants, counters and gauges (see the module
    /// docs). Dearer to compute: about 2.5 µs per 32-metric point on one
    /// core (release build), against about 1.2 µs for the synthetic mix.
    Realistic,
}

impl Mix {
    pub const ALL: [Mix; 2] = [Mix::Synthetic, Mix::Realistic];

    /// The name `--mix` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mix::Synthetic => "synthetic",
            Mix::Realistic => "realistic",
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mix::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Mix::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "unknown metric mix {s:?}, expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// How a metric moves over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Never changes for a host.
    Constant,
    /// Never decreases (the generated hosts never reboot).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A counter in the first 32 metrics of `mix`, for `rate(..[5m])` queries.
pub fn counter_metric(mix: Mix) -> &'static str {
    match mix {
        Mix::Synthetic => "net_rx_bytes",
        Mix::Realistic => "net_rx_bytes_total",
    }
}

/// A gauge in the first 32 metrics of `mix`, for `avg_over_time(..[1h])`
/// queries.
pub fn gauge_metric(mix: Mix) -> &'static str {
    match mix {
        Mix::Synthetic => "cpu_user",
        Mix::Realistic => "cpu_user_pct",
    }
}

/// Builds batches for hosts `host-00000 ..` with the metrics of one
/// [`Mix`] (synthetic unless [`with_mix`](Self::with_mix) says otherwise).
/// Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct SnapshotGenerator {
    hosts: usize,
    mix: Mix,
    metric_names: Vec<String>,
    labels: bool,
}

impl SnapshotGenerator {
    /// `hosts` hosts, each reporting `metrics` metrics of the synthetic mix
    /// per snapshot.
    pub fn new(hosts: usize, metrics: usize) -> Self {
        Self {
            hosts,
            mix: Mix::Synthetic,
            metric_names: (0..metrics).map(metric_name).collect(),
            labels: false,
        }
    }

    /// Report the metrics of `mix` instead (names and values), as many as
    /// before.
    pub fn with_mix(mut self, mix: Mix) -> Self {
        self.metric_names = (0..self.metrics())
            .map(|m| metric_name_of(mix, m))
            .collect();
        self.mix = mix;
        self
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

    pub fn mix(&self) -> Mix {
        self.mix
    }

    /// The batch-level name table every batch carries.
    pub fn metric_names(&self) -> &[String] {
        &self.metric_names
    }

    /// Same as the free function [`value`]: the synthetic mix, whatever
    /// this generator's mix.
    pub fn value(host_idx: usize, ts: i64, metric_idx: usize) -> f64 {
        value(host_idx, ts, metric_idx)
    }

    /// The value this generator sends: [`value_of`] its mix.
    pub fn value_at(&self, host_idx: usize, ts: i64, metric_idx: usize) -> f64 {
        value_of(self.mix, host_idx, ts, metric_idx)
    }

    /// One host's snapshot: values packed in name-table order (empty
    /// `name_index`).
    pub fn point(&self, host_idx: usize, ts: i64) -> Point {
        Point {
            millis: 0,
            host_id: host_id(host_idx),
            timestamp: ts,
            values: (0..self.metrics())
                .map(|m| value_of(self.mix, host_idx, ts, m))
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

/// The name of metric `metric_idx` in `mix`. Synthetic: [`metric_name`].
/// Realistic: the 32 names of the realistic table, then the same again for
/// a further instance, numbered after the first word (`cpu1_count`,
/// `net1_rx_bytes_total`, `load1_1`, ..., `cpu2_count`, ...).
pub fn metric_name_of(mix: Mix, metric_idx: usize) -> String {
    match mix {
        Mix::Synthetic => metric_name(metric_idx),
        Mix::Realistic => {
            let (name, _) = REALISTIC[metric_idx % REALISTIC.len()];
            match metric_idx / REALISTIC.len() {
                0 => name.to_string(),
                rep => match name.split_once('_') {
                    Some((first, rest)) => format!("{first}{rep}_{rest}"),
                    None => format!("{name}_{rep}"),
                },
            }
        }
    }
}

/// How metric `metric_idx` of `mix` moves. Synthetic: the four byte
/// counters are counters, everything else (noise included) a gauge.
pub fn metric_kind(mix: Mix, metric_idx: usize) -> Kind {
    match mix {
        Mix::Synthetic if (8..=11).contains(&metric_idx) => Kind::Counter,
        Mix::Synthetic => Kind::Gauge,
        Mix::Realistic => REALISTIC[metric_idx % REALISTIC.len()].1.kind(),
    }
}

/// The value of metric `metric_idx` of host `host_idx` at `ts` in `mix`:
/// [`value`] for the synthetic mix. Deterministic, finite and at least 0.
pub fn value_of(mix: Mix, host_idx: usize, ts: i64, metric_idx: usize) -> f64 {
    match mix {
        Mix::Synthetic => value(host_idx, ts, metric_idx),
        Mix::Realistic => realistic(host_idx, ts, metric_idx),
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

// ---- The realistic mix ----

/// The realistic mix's metrics, in table order. Metric `i` is
/// `REALISTIC[i % 32]` of instance `i / 32`, and each instance draws its own
/// parameters, so any metric count keeps the same kinds in proportion.
const REALISTIC: [(&str, Series); 32] = {
    use Series::*;
    [
        ("cpu_count", CpuCount),
        ("cpu_user_seconds_total", CpuUserSeconds),
        ("cpu_system_seconds_total", CpuSystemSeconds),
        ("cpu_iowait_seconds_total", CpuIowaitSeconds),
        ("cpu_user_pct", CpuUserPct),
        ("cpu_system_pct", CpuSystemPct),
        ("cpu_iowait_pct", CpuIowaitPct),
        ("cpu_idle_pct", CpuIdlePct),
        ("load1", Load1),
        ("load5", Load5),
        ("load15", Load15),
        ("mem_total_bytes", MemTotal),
        ("mem_used_bytes", MemUsed),
        ("mem_cached_bytes", MemCached),
        ("mem_free_bytes", MemFree),
        ("swap_used_bytes", SwapUsed),
        ("net_rx_bytes_total", NetRxBytes),
        ("net_tx_bytes_total", NetTxBytes),
        ("net_rx_packets_total", NetRxPackets),
        ("net_tx_packets_total", NetTxPackets),
        ("tcp_established", TcpEstablished),
        ("disk_total_bytes", DiskTotal),
        ("filesystem_free_bytes", FilesystemFree),
        ("disk_read_bytes_total", DiskReadBytes),
        ("disk_written_bytes_total", DiskWrittenBytes),
        ("context_switches_total", ContextSwitches),
        ("interrupts_total", Interrupts),
        ("forks_total", Forks),
        ("procs_running", ProcsRunning),
        ("open_fds", OpenFds),
        ("hwmon_temp_celsius", Temperature),
        ("boot_time_seconds", BootTime),
    ]
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Series {
    CpuCount,
    CpuUserSeconds,
    CpuSystemSeconds,
    CpuIowaitSeconds,
    CpuUserPct,
    CpuSystemPct,
    CpuIowaitPct,
    CpuIdlePct,
    Load1,
    Load5,
    Load15,
    MemTotal,
    MemUsed,
    MemCached,
    MemFree,
    SwapUsed,
    NetRxBytes,
    NetTxBytes,
    NetRxPackets,
    NetTxPackets,
    TcpEstablished,
    DiskTotal,
    FilesystemFree,
    DiskReadBytes,
    DiskWrittenBytes,
    ContextSwitches,
    Interrupts,
    Forks,
    ProcsRunning,
    OpenFds,
    Temperature,
    BootTime,
}

impl Series {
    fn kind(self) -> Kind {
        use Series::*;
        match self {
            CpuCount | MemTotal | DiskTotal | BootTime => Kind::Constant,
            CpuUserSeconds | CpuSystemSeconds | CpuIowaitSeconds | NetRxBytes | NetTxBytes
            | NetRxPackets | NetTxPackets | DiskReadBytes | DiskWrittenBytes | ContextSwitches
            | Interrupts | Forks => Kind::Counter,
            CpuUserPct | CpuSystemPct | CpuIowaitPct | CpuIdlePct | Load1 | Load5 | Load15
            | MemUsed | MemCached | MemFree | SwapUsed | TcpEstablished | FilesystemFree
            | ProcsRunning | OpenFds | Temperature => Kind::Gauge,
        }
    }

    /// Hash key of the series' own randomness (noise, jitter, fast waves).
    fn key(self) -> u64 {
        0x5e71_e500 + self as u64
    }
}

/// What drives a slow wave. Series of one activity share it, so they rise
/// and fall together.
#[derive(Debug, Clone, Copy)]
enum Activity {
    Cpu = 1,
    Io,
    NetRx,
    NetTx,
    DiskRead,
    DiskWrite,
    Sched,
    Mem,
    Tcp,
    Fs,
    Fds,
}

/// Boot times are up to `MAX_UPTIME` seconds before this (2025-06-15), so
/// counters at today's timestamps hold months of growth, and stay exact
/// integers in an f64 (below 2^53) for years after.
const BOOT_EPOCH: i64 = 1_750_000_000;
const MAX_UPTIME: u64 = 180 * 86_400;
const PAGE: f64 = 4096.0;
const PAGES_PER_GIB: i64 = 1 << 18;
const DAY: f64 = 86_400.0;

/// A counter's rate is its host's mean rate times
/// `1 + SLOW_SWING·slow wave + FAST_SWING·fast wave`, so between 0.2 and 1.8
/// times the mean; on top comes a jitter of up to `JITTER` seconds' worth,
/// fresh every second. The jitter is below the least growth of a second
/// (`1 - SLOW_SWING - FAST_SWING`), so a counter never decreases from one
/// second to the next, let alone between samples.
const SLOW_SWING: f64 = 0.5;
const FAST_SWING: f64 = 0.3;
const JITTER: f64 = 0.18;

// Keys of per-host parameters.
const K_CORES: u64 = 1;
const K_MEM: u64 = 2;
const K_MEM_RESERVED: u64 = 3;
const K_DISK: u64 = 4;
const K_BOOT: u64 = 5;
const K_USER: u64 = 6;
const K_SYSTEM: u64 = 7;
const K_IOWAIT: u64 = 8;
const K_MEM_USED: u64 = 9;
const K_MEM_CACHED: u64 = 10;
const K_SWAP_ON: u64 = 11;
const K_SWAP: u64 = 12;
const K_RX: u64 = 13;
const K_TX: u64 = 14;
const K_RX_PACKET: u64 = 15;
const K_TX_PACKET: u64 = 16;
const K_TCP: u64 = 17;
const K_FS_FREE: u64 = 18;
const K_READ: u64 = 19;
const K_WRITE: u64 = 20;
const K_CONTEXT: u64 = 21;
const K_INTERRUPTS: u64 = 22;
const K_FORKS: u64 = 23;
const K_FDS: u64 = 24;
const K_TEMP: u64 = 25;
const K_TIME_ZONE: u64 = 26;
const K_WAVE: u64 = 0x3a7e_0000;
const K_NOISE: u64 = 0x0015_e000;
const K_JITTER: u64 = 0x0717_7e00;

fn realistic(host_idx: usize, ts: i64, metric_idx: usize) -> f64 {
    use Series::*;
    let (_, series) = REALISTIC[metric_idx % REALISTIC.len()];
    let host = Host::new(host_idx, metric_idx / REALISTIC.len());
    let cores = host.cores();
    let counter = |a: Activity, rate: f64| rate * host.progress(series, a, ts);
    match series {
        CpuCount => cores,
        MemTotal => pages(host.mem_total()),
        DiskTotal => pages(host.disk_blocks()),
        BootTime => host.boot() as f64,

        CpuUserSeconds => hundredths(counter(Activity::Cpu, cores * host.user())),
        CpuSystemSeconds => hundredths(counter(Activity::Cpu, cores * host.system())),
        CpuIowaitSeconds => hundredths(counter(Activity::Io, cores * host.iowait())),
        NetRxBytes => counter(Activity::NetRx, host.rx()).floor(),
        NetTxBytes => counter(Activity::NetTx, host.tx()).floor(),
        NetRxPackets => {
            let size = host.between(K_RX_PACKET, 150.0, 1400.0);
            counter(Activity::NetRx, host.rx() / size).floor()
        }
        NetTxPackets => {
            let size = host.between(K_TX_PACKET, 150.0, 1400.0);
            counter(Activity::NetTx, host.tx() / size).floor()
        }
        DiskReadBytes => sectors(counter(Activity::DiskRead, host.spread(K_READ, 1e3, 2e7))),
        DiskWrittenBytes => sectors(counter(Activity::DiskWrite, host.spread(K_WRITE, 1e4, 3e7))),
        ContextSwitches => {
            counter(Activity::Sched, cores * host.spread(K_CONTEXT, 200.0, 5e3)).floor()
        }
        Interrupts => counter(
            Activity::Sched,
            cores * host.spread(K_INTERRUPTS, 100.0, 3e3),
        )
        .floor(),
        Forks => counter(Activity::Sched, host.spread(K_FORKS, 0.2, 30.0)).floor(),

        CpuUserPct | CpuSystemPct | CpuIowaitPct => host.cpu_pct(series, ts) as f64 / 100.0,
        CpuIdlePct => {
            let busy: i64 = [CpuUserPct, CpuSystemPct, CpuIowaitPct]
                .into_iter()
                .map(|s| host.cpu_pct(s, ts))
                .sum();
            (10_000 - busy).max(0) as f64 / 100.0
        }
        // Load follows CPU activity, the longer averages later and smoother.
        Load1 | Load5 | Load15 => {
            let level = 130.0 * cores * host.user();
            let (lag, noise) = match series {
                Load1 => (0, 2.0 + level / 25.0),
                Load5 => (150, 1.0 + level / 100.0),
                _ => (450, level / 300.0),
            };
            let wave = host.slow(Activity::Cpu).at(ts.saturating_sub(lag));
            host.gauge(series, ts, level, SLOW_SWING, wave, noise as i64) as f64 / 100.0
        }
        MemUsed => pages(host.mem_used(ts)),
        MemCached => pages(host.mem_cached(ts)),
        MemFree => pages((host.mem_total() - host.mem_used(ts) - host.mem_cached(ts)).max(0)),
        // Half the hosts never swap; the others hold an amount that drifts
        // over the day by a few pages a sample at most.
        SwapUsed if host.frac(K_SWAP_ON) < 0.5 => 0.0,
        SwapUsed => {
            let level = host.spread(K_SWAP, 4096.0, 262_144.0);
            let wave = host.slow(Activity::Mem).day_at(ts);
            pages(host.gauge(series, ts, level, 0.05, wave, 0))
        }
        TcpEstablished => {
            let level = host.spread(K_TCP, 20.0, 4000.0);
            let wave = host.slow(Activity::Tcp).at(ts);
            host.gauge(series, ts, level, 0.3, wave, 1 + (level / 100.0) as i64) as f64
        }
        // Fills and is cleaned up over the day, by up to 0.5% of what is
        // free, a few blocks at a time.
        FilesystemFree => {
            let level = host.disk_blocks() as f64 * host.between(K_FS_FREE, 0.15, 0.85);
            let wave = host.slow(Activity::Fs).day_at(ts);
            pages(host.gauge(series, ts, level, 0.005, wave, 16))
        }
        ProcsRunning => {
            let level = cores * host.user();
            let wave = host.slow(Activity::Cpu).at(ts);
            (1 + host.gauge(series, ts, level, SLOW_SWING, wave, 1)) as f64
        }
        OpenFds => {
            let level = host.spread(K_FDS, 500.0, 40_000.0);
            let wave = host.slow(Activity::Fds).at(ts);
            host.gauge(series, ts, level, 0.1, wave, 2 + (level / 2000.0) as i64) as f64
        }
        // Tenths of a degree, warmer when the CPUs are busy.
        Temperature => {
            let level = host.between(K_TEMP, 350.0, 600.0);
            let wave = host.slow(Activity::Cpu).at(ts);
            host.gauge(series, ts, level, 60.0 / level, wave, 3) as f64 / 10.0
        }
    }
}

/// A count of pages (or filesystem blocks) in bytes.
fn pages(n: i64) -> f64 {
    n as f64 * PAGE
}

/// Seconds floored to hundredths, as the decimal an exporter prints
/// (`12345.67`): the division gives the f64 nearest the decimal, as parsing
/// it would.
fn hundredths(x: f64) -> f64 {
    (x * 100.0).floor() / 100.0
}

/// Bytes floored to whole 512-byte sectors, as disk statistics count them.
fn sectors(bytes: f64) -> f64 {
    (bytes / 512.0).floor() * 512.0
}

/// One host's parameters (of one instance of the table, for metric counts
/// past 32), drawn from its seed when asked: nothing is stored per host.
#[derive(Debug, Clone, Copy)]
struct Host {
    seed: u64,
}

impl Host {
    fn new(host_idx: usize, instance: usize) -> Self {
        Self {
            seed: mix(host_idx as u64 ^ (instance as u64).rotate_left(32) ^ 0x7265_616c_6973_7463),
        }
    }

    fn hash(self, key: u64) -> u64 {
        mix(self.seed ^ key.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// Fresh for every sample: one splitmix64 step from the host's seed.
    fn sample_hash(self, ts: i64, key: u64) -> u64 {
        mix(self
            .seed
            .wrapping_add((ts as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            ^ key)
    }

    /// Uniform in `[0, 1)`, the same for every sample of the host.
    fn frac(self, key: u64) -> f64 {
        unit(self.hash(key))
    }

    fn between(self, key: u64, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.frac(key)
    }

    /// Log-uniform in `[lo, hi)`: rates and sizes spread over orders of
    /// magnitude across hosts.
    fn spread(self, key: u64, lo: f64, hi: f64) -> f64 {
        lo * (self.frac(key) * (hi / lo).ln()).exp()
    }

    fn cores(self) -> f64 {
        const CORES: [u8; 8] = [2, 4, 4, 8, 8, 16, 32, 64];
        CORES[(self.hash(K_CORES) % 8) as usize] as f64
    }

    /// Pages: 2, 4 or 8 GiB a core, less what the kernel keeps (64 to
    /// 256 MiB), as `MemTotal` reports it.
    fn mem_total(self) -> i64 {
        let gib_per_core = 2i64 << (self.hash(K_MEM) % 3);
        let reserved = 16_384 + (self.hash(K_MEM_RESERVED) % 49_152) as i64;
        self.cores() as i64 * gib_per_core * PAGES_PER_GIB - reserved
    }

    /// 4096-byte blocks of the root filesystem: 20 GiB to 4 TiB.
    fn disk_blocks(self) -> i64 {
        (self.spread(K_DISK, 20.0 * GIB, 4096.0 * GIB) / PAGE) as i64
    }

    fn boot(self) -> i64 {
        BOOT_EPOCH - (self.hash(K_BOOT) % MAX_UPTIME) as i64
    }

    /// Mean shares of the CPU time: user, system, iowait.
    fn user(self) -> f64 {
        self.between(K_USER, 0.03, 0.45)
    }

    fn system(self) -> f64 {
        self.between(K_SYSTEM, 0.01, 0.08)
    }

    fn iowait(self) -> f64 {
        self.between(K_IOWAIT, 0.002, 0.03)
    }

    /// Mean network bytes per second.
    fn rx(self) -> f64 {
        self.spread(K_RX, 2e3, 2e7)
    }

    fn tx(self) -> f64 {
        self.spread(K_TX, 2e3, 2e7)
    }

    /// The slow wave of `activity`: a day (peaking at the same hour for
    /// every activity of the host, its "time zone"), one of 1 to 4 hours
    /// and one of 5 to 20 minutes, weighted 0.55, 0.3 and 0.15.
    fn slow(self, activity: Activity) -> Wave {
        let key = K_WAVE + 16 * activity as u64;
        let zone = (self.hash(K_TIME_ZONE) % 24) as f64 / 24.0;
        Wave([
            (0.55, DAY, zone + 0.05 * self.frac(key)),
            self.component(key + 1, 0.3, 3600.0, 4.0 * 3600.0),
            self.component(key + 2, 0.15, 300.0, 1200.0),
        ])
    }

    /// A counter's own fast wave: periods of 11 to 47 s, so that sampled
    /// every 5 s its rate looks noisy, as traffic does.
    fn fast(self, series: Series) -> Wave {
        let key = K_WAVE + 0x1000 + 16 * series as u64;
        Wave([
            self.component(key, 0.5, 11.0, 23.0),
            self.component(key + 1, 0.3, 17.0, 31.0),
            self.component(key + 2, 0.2, 29.0, 47.0),
        ])
    }

    /// One wave of a [`Wave`]: `weight`, a period between `lo` and `hi`
    /// seconds and a phase, both from one hash.
    fn component(self, key: u64, weight: f64, lo: f64, hi: f64) -> (f64, f64, f64) {
        let z = self.hash(key);
        let half = |bits: u64| bits as f64 * (1.0 / (1u64 << 32) as f64);
        (
            weight,
            lo + (hi - lo) * half(z >> 32),
            half(z & 0xffff_ffff),
        )
    }

    /// Seconds' worth of the host's mean rate of counter `series` since
    /// boot: 0 up to boot, then rising by 0.02 to 1.98 every second (see
    /// [`SLOW_SWING`]), so never decreasing.
    fn progress(self, series: Series, activity: Activity, ts: i64) -> f64 {
        let boot = self.boot();
        if ts <= boot {
            return 0.0;
        }
        let smooth = (ts - boot) as f64
            + SLOW_SWING * self.slow(activity).integral(ts)
            + FAST_SWING * self.fast(series).integral(ts);
        smooth + JITTER * unit(self.sample_hash(ts, K_JITTER + series.key()))
    }

    /// Triangular noise in `[-n, n]` whole quanta, fresh every sample.
    fn noise(self, series: Series, ts: i64, n: i64) -> i64 {
        if n <= 0 {
            return 0;
        }
        let z = self.sample_hash(ts, K_NOISE + series.key());
        let span = n as u64 + 1;
        ((z & 0xffff_ffff) % span) as i64 - ((z >> 32) % span) as i64
    }

    /// A gauge in whole quanta (hundredths, pages, counts...):
    /// `level · (1 + swing · wave)`, rounded, plus noise of up to `noise`
    /// quanta, never below 0.
    fn gauge(self, series: Series, ts: i64, level: f64, swing: f64, wave: f64, noise: i64) -> i64 {
        // `level` is positive and the swing less than 1: rounding by adding
        // a half and truncating, no libm call.
        let smooth = (level * (1.0 + swing * wave) + 0.5) as i64;
        (smooth + self.noise(series, ts, noise)).max(0)
    }

    /// A CPU percentage in hundredths; user and system follow the CPU
    /// wave (as the CPU seconds counters do), iowait the I/O wave.
    fn cpu_pct(self, series: Series, ts: i64) -> i64 {
        let (share, activity) = match series {
            Series::CpuUserPct => (self.user(), Activity::Cpu),
            Series::CpuSystemPct => (self.system(), Activity::Cpu),
            _ => (self.iowait(), Activity::Io),
        };
        let level = 10_000.0 * share;
        let noise = 3 + (level / 20.0) as i64;
        let wave = self.slow(activity).at(ts);
        self.gauge(series, ts, level, SLOW_SWING, wave, noise)
            .min(10_000)
    }

    /// Pages in use: 20 to 55% of the memory, swinging by 15% of that.
    fn mem_used(self, ts: i64) -> i64 {
        let level = self.mem_total() as f64 * self.between(K_MEM_USED, 0.2, 0.55);
        let wave = self.slow(Activity::Mem).at(ts);
        self.gauge(
            Series::MemUsed,
            ts,
            level,
            0.15,
            wave,
            32 + (level / 8000.0) as i64,
        )
    }

    /// Page-cache pages: 5 to 25% of the memory, following disk reads.
    fn mem_cached(self, ts: i64) -> i64 {
        let level = self.mem_total() as f64 * self.between(K_MEM_CACHED, 0.05, 0.25);
        let wave = self.slow(Activity::DiskRead).at(ts);
        self.gauge(
            Series::MemCached,
            ts,
            level,
            0.1,
            wave,
            8 + (level / 20_000.0) as i64,
        )
    }
}

/// Three sine-like waves `(weight, period in seconds, phase in cycles)`,
/// weights adding up to 1.
#[derive(Debug, Clone, Copy)]
struct Wave([(f64, f64, f64); 3]);

impl Wave {
    /// In `[-1, 1]`.
    fn at(&self, ts: i64) -> f64 {
        self.0
            .iter()
            .map(|&(w, period, phase)| w * swing(cycle(ts, period, phase)))
            .sum()
    }

    /// The first (daily) wave alone, in `[-1, 1]`.
    fn day_at(&self, ts: i64) -> f64 {
        let (_, period, phase) = self.0[0];
        swing(cycle(ts, period, phase))
    }

    /// An antiderivative of [`at`](Self::at) over seconds: at least 0, at
    /// most the weighted sum of the periods over 3.
    fn integral(&self, ts: i64) -> f64 {
        self.0
            .iter()
            .map(|&(w, period, phase)| w * period * swept(cycle(ts, period, phase)))
            .sum()
    }
}

/// Where `ts` falls in a cycle of `period` seconds (at least 1) shifted
/// by `phase`, in `[0, 1)`. Good to a few millionths of a cycle at today's
/// timestamps (the product carries 53 bits). The integer part goes by a
/// truncating cast (`|c|` stays below 2^63) rather than `floor`, a libm call
/// on baseline x86-64: this runs six times per counter sample.
fn cycle(ts: i64, period: f64, phase: f64) -> f64 {
    let c = ts as f64 * (1.0 / period) + phase;
    let f = c - (c as i64) as f64;
    if f < 0.0 { f + 1.0 } else { f }
}

/// A sine-like wave over one cycle `c` in `[0, 1)`: two parabolic arches,
/// +1 at a quarter and -1 at three quarters, smooth (its slope is
/// continuous) and much cheaper than `sin`.
fn swing(c: f64) -> f64 {
    let (sign, u) = if c < 0.5 { (1.0, c) } else { (-1.0, c - 0.5) };
    sign * 16.0 * u * (0.5 - u)
}

/// The integral of [`swing`] from 0 to `c`, in `[0, 1/3]`, back to 0 at the
/// end of the cycle.
fn swept(c: f64) -> f64 {
    let (base, sign, u) = if c < 0.5 {
        (0.0, 1.0, c)
    } else {
        (1.0 / 3.0, -1.0, c - 0.5)
    };
    base + sign * u * u * (4.0 - 16.0 / 3.0 * u)
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

    // ---- The realistic mix ----

    const DAY_STEPS: i64 = 86_400 / 5;

    fn realistic(h: usize, ts: i64, m: usize) -> f64 {
        value_of(Mix::Realistic, h, ts, m)
    }

    fn of_kind(kind: Kind, metrics: usize) -> Vec<usize> {
        (0..metrics)
            .filter(|&m| metric_kind(Mix::Realistic, m) == kind)
            .collect()
    }

    #[test]
    fn mix_names_parse_and_list_the_valid_ones() {
        for mix in Mix::ALL {
            assert_eq!(mix.to_string().parse::<Mix>(), Ok(mix));
        }
        assert_eq!("Realistic".parse::<Mix>(), Ok(Mix::Realistic));
        let err = "noise".parse::<Mix>().unwrap_err();
        assert!(err.contains("synthetic, realistic"), "{err}");
    }

    #[test]
    fn the_realistic_table_has_the_node_exporter_proportions() {
        assert_eq!(of_kind(Kind::Constant, 32).len(), 4);
        assert_eq!(of_kind(Kind::Counter, 32).len(), 12);
        assert_eq!(of_kind(Kind::Gauge, 32).len(), 16);
        // Repeats keep them.
        assert_eq!(of_kind(Kind::Counter, 96).len(), 36);
        for m in 0..96 {
            let name = metric_name_of(Mix::Realistic, m);
            let counter = name.ends_with("_total");
            assert_eq!(
                counter,
                metric_kind(Mix::Realistic, m) == Kind::Counter,
                "{name}"
            );
        }
    }

    #[test]
    fn bench_metrics_are_of_their_kind_in_the_first_32() {
        for mix in Mix::ALL {
            let g = SnapshotGenerator::new(1, 32).with_mix(mix);
            let at = |name: &str| g.metric_names().iter().position(|n| n == name);
            let c = at(counter_metric(mix)).expect("the counter is in the first 32");
            let v = at(gauge_metric(mix)).expect("the gauge is in the first 32");
            assert_eq!(metric_kind(mix, c), Kind::Counter, "{mix}");
            assert_eq!(metric_kind(mix, v), Kind::Gauge, "{mix}");
        }
    }

    #[test]
    fn realistic_names_are_unique_and_repeat_numbered() {
        let g = SnapshotGenerator::new(1, 1024).with_mix(Mix::Realistic);
        let set: std::collections::HashSet<_> = g.metric_names().iter().collect();
        assert_eq!(set.len(), 1024);
        let names = g.metric_names();
        assert_eq!(names[0], "cpu_count");
        assert_eq!(names[32], "cpu1_count");
        assert_eq!(names[32 + 16], "net1_rx_bytes_total");
        assert_eq!(names[64 + 8], "load1_2");
        // Taking a mix keeps the count, and a prefix is the table's head.
        let few = SnapshotGenerator::new(1, 3).with_mix(Mix::Realistic);
        assert_eq!(
            few.metric_names(),
            [
                "cpu_count",
                "cpu_user_seconds_total",
                "cpu_system_seconds_total"
            ]
        );
    }

    #[test]
    fn realistic_values_are_deterministic_and_what_batches_carry() {
        let g = SnapshotGenerator::new(50, 40).with_mix(Mix::Realistic);
        let a = g.batch(TS, 0..50);
        assert_eq!(a, g.clone().batch(TS, 0..50));
        assert_eq!(a.metric_names[0], "cpu_count");
        for (h, p) in a.points.iter().enumerate() {
            for (m, v) in p.values.iter().enumerate() {
                assert_eq!(v.to_bits(), realistic(h, TS, m).to_bits());
                assert_eq!(v.to_bits(), g.value_at(h, TS, m).to_bits());
            }
        }
        // The synthetic default is untouched.
        let s = SnapshotGenerator::new(50, 40);
        assert_eq!(s.mix(), Mix::Synthetic);
        assert_eq!(s.value_at(7, TS, 3), value(7, TS, 3));
        assert_ne!(realistic(1, TS, 12), realistic(2, TS, 12));
        assert_ne!(realistic(1, TS, 12), realistic(1, TS, 12 + 32));
    }

    #[test]
    fn realistic_values_are_finite_and_not_negative() {
        let far = [
            0,
            -1,
            i64::MIN,
            i64::MAX,
            TS,
            TS + 5,
            TS + 86_400,
            BOOT_EPOCH,
        ];
        for h in 0..200 {
            for ts in far {
                for m in 0..96 {
                    let v = realistic(h, ts, m);
                    assert!(
                        v.is_finite() && v >= 0.0,
                        "host {h} ts {ts} metric {m}: {v}"
                    );
                }
            }
        }
    }

    #[test]
    fn constants_never_change() {
        for h in 0..50 {
            for m in of_kind(Kind::Constant, 64) {
                let first = realistic(h, 0, m);
                for ts in [TS, TS + 5, TS + 86_400, i64::MAX] {
                    assert_eq!(realistic(h, ts, m), first, "host {h} metric {m}");
                }
            }
        }
    }

    #[test]
    fn counters_never_decrease_over_a_day_and_grow() {
        let counters = of_kind(Kind::Counter, 32);
        for h in 0..50 {
            for &m in &counters {
                let mut prev = realistic(h, TS, m);
                let start = prev;
                for step in 1..=DAY_STEPS {
                    let v = realistic(h, TS + 5 * step, m);
                    assert!(
                        v >= prev,
                        "host {h} metric {m} step {step}: {prev} then {v}"
                    );
                    prev = v;
                }
                assert!(prev > start, "host {h} metric {m} grew over a day");
            }
        }
    }

    #[test]
    fn counters_never_decrease_second_by_second_nor_across_boot() {
        let counters = of_kind(Kind::Counter, 64);
        for h in 0..20 {
            for &m in &counters {
                // Each instance of the table has its own boot time.
                let boot = realistic(h, 0, 31 + 32 * (m / 32)) as i64;
                for from in [boot - 3, TS] {
                    let mut prev = realistic(h, from, m);
                    for ts in from + 1..from + 600 {
                        let v = realistic(h, ts, m);
                        assert!(v >= prev, "host {h} metric {m} at {ts}: {prev} then {v}");
                        prev = v;
                    }
                }
                assert_eq!(realistic(h, boot, m), 0.0, "nothing counted before boot");
            }
        }
    }

    /// Consecutive 5-second samples of a gauge are close: on average a tenth
    /// of the range the gauge covers in a day at most, plus a few quanta of
    /// noise at its last digit (which is all `procs_running` or the iowait
    /// of an idle host do), unlike the synthetic mix's noise.
    #[test]
    fn gauges_move_in_small_steps() {
        let day_steps = |mix: Mix, h: usize, m: usize| -> (f64, f64) {
            let (mut lo, mut hi, mut moved) = (f64::MAX, f64::MIN, 0.0);
            let mut prev = value_of(mix, h, TS, m);
            for step in 1..=DAY_STEPS {
                let v = value_of(mix, h, TS + 5 * step, m);
                (lo, hi) = (lo.min(v), hi.max(v));
                moved += (v - prev).abs();
                prev = v;
            }
            (moved / DAY_STEPS as f64, hi - lo)
        };
        for h in 0..20 {
            for m in of_kind(Kind::Gauge, 32) {
                let (step, range) = day_steps(Mix::Realistic, h, m);
                let name = metric_name_of(Mix::Realistic, m);
                let quantum = match name.rsplit('_').next() {
                    Some("pct") => 0.01,
                    Some("bytes") => 4096.0,
                    Some("celsius") => 0.1,
                    _ if name.starts_with("load") => 0.01,
                    _ => 1.0,
                };
                assert!(
                    step <= 0.1 * range + 3.0 * quantum,
                    "host {h} {name}: mean step {step} for a range of {range}"
                );
            }
        }
        // The test tells noise from a gauge.
        let (step, range) = day_steps(Mix::Synthetic, 0, 0);
        assert!(step > 0.1 * range + 3.0 * 0.01);
    }

    #[test]
    fn related_series_agree() {
        for h in 0..50 {
            for ts in [TS, TS + 3_600, TS + 40_000] {
                let v = |m| realistic(h, ts, m);
                let cpu = v(4) + v(5) + v(6) + v(7);
                assert!((cpu - 100.0).abs() < 1e-9, "host {h}: cpu adds to {cpu}");
                let mem = v(12) + v(13) + v(14);
                assert_eq!(mem, v(11), "host {h}: used + cached + free");
                assert!(v(22) <= v(21), "host {h}: free space within the disk");
                assert_eq!(v(12) % 4096.0, 0.0);
                assert_eq!(v(23) % 512.0, 0.0);
                assert_eq!((v(1) * 100.0).round() / 100.0, v(1), "2 decimals");
            }
            // The rate of the CPU seconds follows the CPU percentage.
            let (t0, t1) = (TS, TS + 3_600);
            let rate = (realistic(h, t1, 1) - realistic(h, t0, 1)) / 3_600.0;
            let pct: f64 = (0..720).map(|i| realistic(h, t0 + 5 * i, 4)).sum::<f64>() / 720.0;
            let cores = realistic(h, t0, 0);
            let want = cores * pct / 100.0;
            assert!(
                (rate - want).abs() <= 0.05 * want + 0.01,
                "host {h}: {rate} cpu-seconds/s against {want}"
            );
        }
    }
}
