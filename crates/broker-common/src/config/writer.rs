//! `writer.*`: the storage-writer's Redis, key layout, batching and spool.

use super::{check_redis_url, nonzero_duration, positive};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Measured with `broker-bench ingest`: two connections kept Redis busier
/// than four (fewer, fuller pipelines), see docs/benchmarks.md.
pub const DEFAULT_REDIS_POOL_SIZE: usize = 2;
pub const DEFAULT_BATCH_MAX_POINTS: usize = 5_000;
pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(2);
pub const DEFAULT_MAX_QUEUED_POINTS: usize = 100_000;
pub const DEFAULT_MAX_CONCURRENT_PIPELINES: usize = 4;
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SPOOL_DIR: &str = "data/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// Key layouts `writer.layout` and `writer.migrate_from` can name.
pub const LAYOUTS: &[&str] = &["seed", "chunked"];
/// `writer.layout` by default: a week of 1,000 hosts fits one Redis in a
/// few GiB (docs/benchmarks.md, `broker-bench week`).
pub const DEFAULT_LAYOUT: &str = "chunked";
pub const DEFAULT_CHUNK_POINTS: usize = 240;
/// Hosts the index may hold before a writer refuses new ones: ten times
/// the fleet the product is sized for, so a flood of invented host ids
/// cannot make every host list and selector slow for a whole `ttl`.
pub const DEFAULT_MAX_HOSTS: usize = 10_000;
/// New hosts one writer admits per minute.
pub const DEFAULT_MAX_NEW_HOSTS_PER_MINUTE: usize = 2_000;
/// Series (metric names, with their labels for Prometheus and OTLP data)
/// one host may have reported within the ttl. node_exporter exposes one to
/// three thousand on a large machine.
pub const DEFAULT_MAX_SERIES_PER_HOST: usize = 10_000;
/// Points per chunk at most: a seal merges at most eight chunks' worth.
pub const MAX_CHUNK_POINTS: usize = 100_000;
pub const DEFAULT_CHUNK_MAX_OPEN: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// `redis://`, `redis-cluster://` or `redis-sentinel://` URL. Empty
    /// means none: `broker up` then launches a local redis-server.
    pub redis_url: String,
    /// Redis connections, used round robin.
    pub pool_size: usize,
    /// Send write pipelines as one pre-encoded RESP buffer on a plain
    /// connection per pool slot, to the server fred is connected to
    /// (standalone and sentinel; Redis Cluster always uses fred). `false`
    /// sends them through fred, command by command (ADR 0006).
    pub direct_pipelines: bool,
    /// Key layout: `chunked` (the default: compressed chunks per host,
    /// about 2 bytes per sample) or `seed` (the original design's key
    /// schema, a HASH per point, about 29 bytes per sample).
    pub layout: String,
    /// During a migration, the layout written before `layout`: readers
    /// read both and merge them until its data has aged out (one `ttl`
    /// after the switch); then remove it. Empty: no migration.
    pub migrate_from: String,
    /// Chunked layout: points per sealed chunk.
    pub chunk_points: usize,
    /// Chunked layout: a host's open chunk is sealed once its oldest point
    /// was written this long ago, even with fewer than `chunk_points`.
    #[serde(with = "humantime_serde")]
    pub chunk_max_open: Duration,
    /// A pipeline is sent when it holds this many points...
    pub batch_max_points: usize,
    /// ...or when its first point has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
    /// Points accepted but not yet written; past this, writes wait.
    pub max_queued_points: usize,
    /// Pipelines in flight to Redis at once.
    pub max_concurrent_pipelines: usize,
    /// Deadline of one pipeline round trip.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Directory of the write-ahead spool used while Redis is unavailable
    /// (fsync'ed before the ack, replayed in order). Empty disables it:
    /// writes then fail while Redis is down and senders retry.
    pub spool_dir: String,
    /// When the spool holds this much, writes are refused with
    /// RESOURCE_EXHAUSTED until it drains.
    pub spool_max_bytes: u64,
    /// Hosts the host index may hold: a point of a host it does not hold
    /// is refused once it holds this many (hosts leave it a `ttl` after
    /// they last reported).
    pub max_hosts: usize,
    /// New hosts (not in the host index) this writer admits per minute;
    /// past it their points are refused as retryable.
    pub max_new_hosts_per_minute: usize,
    /// Series a host may have reported within the ttl (its series set):
    /// past it, a point's new series are refused (the rest of the point is
    /// stored), as Mimir limits series per tenant. Churning label values
    /// (a request id, a timestamp in a label) cannot grow a host without
    /// bound.
    pub max_series_per_host: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            pool_size: DEFAULT_REDIS_POOL_SIZE,
            direct_pipelines: true,
            layout: DEFAULT_LAYOUT.into(),
            migrate_from: String::new(),
            chunk_points: DEFAULT_CHUNK_POINTS,
            chunk_max_open: DEFAULT_CHUNK_MAX_OPEN,
            batch_max_points: DEFAULT_BATCH_MAX_POINTS,
            batch_max_delay: DEFAULT_BATCH_MAX_DELAY,
            max_queued_points: DEFAULT_MAX_QUEUED_POINTS,
            max_concurrent_pipelines: DEFAULT_MAX_CONCURRENT_PIPELINES,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            spool_dir: DEFAULT_SPOOL_DIR.into(),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            max_hosts: DEFAULT_MAX_HOSTS,
            max_new_hosts_per_minute: DEFAULT_MAX_NEW_HOSTS_PER_MINUTE,
            max_series_per_host: DEFAULT_MAX_SERIES_PER_HOST,
        }
    }
}

impl WriterConfig {
    /// Reports every problem of `writer.*` to `bad`, with its key.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if let Err(e) = check_redis_url(&self.redis_url) {
            bad("writer.redis_url", e);
        }
        positive(bad, "writer.pool_size", self.pool_size);
        positive(bad, "writer.max_hosts", self.max_hosts);
        positive(
            bad,
            "writer.max_new_hosts_per_minute",
            self.max_new_hosts_per_minute,
        );
        positive(bad, "writer.max_series_per_host", self.max_series_per_host);
        if !LAYOUTS.contains(&self.layout.as_str()) {
            bad(
                "writer.layout",
                format!(
                    "unknown layout {:?}, valid layouts are: {}",
                    self.layout,
                    LAYOUTS.join(", ")
                ),
            );
        }
        if !self.migrate_from.is_empty() && !LAYOUTS.contains(&self.migrate_from.as_str()) {
            bad(
                "writer.migrate_from",
                format!(
                    "unknown layout {:?}, valid layouts are: {} (or empty)",
                    self.migrate_from,
                    LAYOUTS.join(", ")
                ),
            );
        }
        positive(bad, "writer.chunk_points", self.chunk_points);
        if self.chunk_points > MAX_CHUNK_POINTS {
            bad(
                "writer.chunk_points",
                format!("{} is more than {MAX_CHUNK_POINTS}", self.chunk_points),
            );
        }
        if self.chunk_max_open.is_zero() {
            bad("writer.chunk_max_open", "must be more than 0".to_string());
        }
        positive(bad, "writer.batch_max_points", self.batch_max_points);
        positive(
            bad,
            "writer.max_concurrent_pipelines",
            self.max_concurrent_pipelines,
        );
        if self.max_queued_points < self.batch_max_points {
            bad(
                "writer.max_queued_points",
                format!(
                    "{} is smaller than writer.batch_max_points ({})",
                    self.max_queued_points, self.batch_max_points
                ),
            );
        }
        nonzero_duration(bad, "writer.redis_timeout", self.redis_timeout);
        if !self.spool_dir.is_empty() && self.spool_max_bytes < 1 << 20 {
            bad(
                "writer.spool_max_bytes",
                format!("{} is less than 1 MiB", self.spool_max_bytes),
            );
        }
    }
}
