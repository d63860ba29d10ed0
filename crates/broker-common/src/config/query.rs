//! `query.*`: query-api's Redis, cache and limits.

use super::{DEFAULT_REDIS_POOL_SIZE, WriterConfig, check_redis_url, nonzero_duration, positive};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Snapshots read per Redis pipeline by query-api (HGETALL / HMGET batch).
pub const DEFAULT_QUERY_READ_BATCH: usize = 256;
/// How long a range or aggregation result is served from query-api's cache.
pub const DEFAULT_QUERY_CACHE_TTL: Duration = Duration::from_secs(60);
/// A range ending less than this before now may still receive points (agents
/// send every 5 s, the path adds a little): such results are "fresh".
pub const DEFAULT_QUERY_FRESH_WINDOW: Duration = Duration::from_secs(15);
/// Fresh results are cached this long only, so a dashboard refreshing every
/// few seconds never sees data older than this.
pub const DEFAULT_QUERY_FRESH_CACHE_TTL: Duration = Duration::from_secs(1);
pub const DEFAULT_QUERY_CACHE_MAX_BYTES: u64 = 256 << 20;
/// Decoded chunks (chunked layout) kept between queries: a day of one
/// metric of 1,000 hosts at 5 s, timestamps included, is about 280 MB.
pub const DEFAULT_QUERY_CHUNK_CACHE_MAX_BYTES: u64 = 512 << 20;
/// The host list (the host index and each host's metadata) is reused this long.
pub const DEFAULT_QUERY_HOSTS_CACHE_TTL: Duration = Duration::from_secs(5);
/// Longest range a query may ask for: the default `ttl`, older data is gone.
pub const DEFAULT_QUERY_MAX_RANGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Snapshots (range) or buckets (aggregation, per series) in one answer.
pub const DEFAULT_QUERY_MAX_POINTS: usize = 50_000;
/// Snapshots one query may read from Redis: an aggregation over many
/// hosts, a downsampled range, or PromQL's raw reads across all its hosts.
pub const DEFAULT_QUERY_MAX_POINTS_SCANNED: usize = 2_000_000;
pub const DEFAULT_QUERY_MAX_HOSTS: usize = 1_000;
/// Metric names one point or range query may name.
pub const DEFAULT_QUERY_MAX_METRICS: usize = 256;
/// Entries of one list answer (hosts, label names or values, series).
pub const DEFAULT_QUERY_MAX_SERIES: usize = 10_000;
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Prometheus's default lookback delta for instant vector selectors.
pub const DEFAULT_QUERY_LOOKBACK: Duration = Duration::from_secs(300);

/// query-api: point, range, aggregation and host queries over Redis, the
/// Prometheus-compatible read API and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Redis to read. Empty means `writer.redis_url` (the Redis the writers
    /// of this deployment write).
    pub redis_url: String,
    /// Redis connections, used round robin.
    pub pool_size: usize,
    /// Snapshots fetched per pipeline.
    pub read_batch: usize,
    /// Time to live of cached range and aggregation results.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Results whose range ends less than this before now are fresh...
    #[serde(with = "humantime_serde")]
    pub fresh_window: Duration,
    /// ...and are cached only this long (0s: not cached at all).
    #[serde(with = "humantime_serde")]
    pub fresh_cache_ttl: Duration,
    /// Bound of the result cache, estimated bytes.
    pub cache_max_bytes: u64,
    /// Bound of the decoded chunks kept between queries (chunked layout:
    /// sealed columns asked for, open chunks' records), estimated bytes;
    /// 0 keeps none and reads every chunk whole each time.
    pub chunk_cache_max_bytes: u64,
    /// How long the host list is reused before the host index is read again.
    #[serde(with = "humantime_serde")]
    pub hosts_cache_ttl: Duration,
    /// Longest `end - start` a query may ask for.
    #[serde(with = "humantime_serde")]
    pub max_range: Duration,
    /// Snapshots (range) or buckets per series (aggregation) in one answer.
    pub max_points: usize,
    /// Snapshots one query may read from Redis.
    pub max_points_scanned: usize,
    /// Hosts one aggregation or PromQL selector may cover.
    pub max_hosts: usize,
    /// Metric names one point or range query may name.
    pub max_metrics: usize,
    /// Entries one list answer carries at most: the host list (then paged
    /// with `after`), label names, label values and series (then cut,
    /// with a warning, as Prometheus's `limit` does).
    pub max_series: usize,
    /// Deadline of one query.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PromQL lookback: an instant selector takes the latest sample this far
    /// back.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            pool_size: DEFAULT_REDIS_POOL_SIZE,
            read_batch: DEFAULT_QUERY_READ_BATCH,
            cache_ttl: DEFAULT_QUERY_CACHE_TTL,
            fresh_window: DEFAULT_QUERY_FRESH_WINDOW,
            fresh_cache_ttl: DEFAULT_QUERY_FRESH_CACHE_TTL,
            cache_max_bytes: DEFAULT_QUERY_CACHE_MAX_BYTES,
            chunk_cache_max_bytes: DEFAULT_QUERY_CHUNK_CACHE_MAX_BYTES,
            hosts_cache_ttl: DEFAULT_QUERY_HOSTS_CACHE_TTL,
            max_range: DEFAULT_QUERY_MAX_RANGE,
            max_points: DEFAULT_QUERY_MAX_POINTS,
            max_points_scanned: DEFAULT_QUERY_MAX_POINTS_SCANNED,
            max_hosts: DEFAULT_QUERY_MAX_HOSTS,
            max_metrics: DEFAULT_QUERY_MAX_METRICS,
            max_series: DEFAULT_QUERY_MAX_SERIES,
            timeout: DEFAULT_QUERY_TIMEOUT,
            lookback: DEFAULT_QUERY_LOOKBACK,
        }
    }
}

impl QueryConfig {
    /// The Redis URL query-api reads: `query.redis_url`, else
    /// `writer.redis_url`.
    pub fn effective_redis_url<'a>(&'a self, writer: &'a WriterConfig) -> &'a str {
        if self.redis_url.is_empty() {
            &writer.redis_url
        } else {
            &self.redis_url
        }
    }
}

impl QueryConfig {
    /// Reports every problem of `query.*` to `bad`, with its key.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if let Err(e) = check_redis_url(&self.redis_url) {
            bad("query.redis_url", e);
        }
        positive(bad, "query.pool_size", self.pool_size);
        positive(bad, "query.read_batch", self.read_batch);
        positive(bad, "query.max_points", self.max_points);
        positive(bad, "query.max_hosts", self.max_hosts);
        positive(bad, "query.max_metrics", self.max_metrics);
        positive(bad, "query.max_series", self.max_series);
        if self.max_points_scanned < self.max_points {
            bad(
                "query.max_points_scanned",
                format!(
                    "{} is smaller than query.max_points ({})",
                    self.max_points_scanned, self.max_points
                ),
            );
        }
        if self.max_range < Duration::from_secs(60) {
            bad(
                "query.max_range",
                format!("{:?} is shorter than one minute", self.max_range),
            );
        }
        nonzero_duration(bad, "query.timeout", self.timeout);
        nonzero_duration(bad, "query.lookback", self.lookback);
        if self.fresh_cache_ttl > self.cache_ttl {
            bad(
                "query.fresh_cache_ttl",
                format!(
                    "{:?} is longer than query.cache_ttl ({:?})",
                    self.fresh_cache_ttl, self.cache_ttl
                ),
            );
        }
    }
}
