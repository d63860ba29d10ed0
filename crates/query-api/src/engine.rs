//! The query engine: validates requests and applies the limits, answers
//! point, range, aggregation and host queries from Redis through
//! [`Store`], and keeps range and aggregation results in a moka cache.
//!
//! # Cache and freshness
//! Range and aggregation results are cached by their exact request for
//! `query.cache_ttl`. A result whose range ends less than
//! `query.fresh_window` before now may still get points (agents send every
//! 5 s); it is cached for `query.fresh_cache_ttl` only (default 1 s, `0s`:
//! not cached), so a dashboard that refreshes sees new points within that
//! time while many viewers of the same live chart still share one Redis
//! read. Points that arrive late for an older range (a writer replaying its
//! spool) show after at most `query.cache_ttl`.
//!
//! # Downsampled ranges
//! A range query with `max_points` over a range holding more snapshots
//! than that is answered in at most `max_points` rows (avg, min and max per
//! bucket; [`crate::downsample`]): such a range may read up to
//! `query.max_points_scanned` snapshots, counted before any is read, and
//! only the downsampled answer is cached. PromQL's raw reads
//! ([`Engine::frames_ms`]) are bounded the same way, by
//! `query.max_points_scanned` in all rather than `query.max_points` per
//! host.

use crate::agg::{AggFn, Buckets};
use crate::downsample::{Downsampled, downsample};
use crate::error::QueryError;
use crate::metrics::QueryMetrics;
use crate::store::{Frame, HostInfo, Store};
use broker_common::config::{BrokerConfig, QueryConfig};
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointResult {
    pub host: String,
    pub timestamp: i64,
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default)]
pub struct RangeQuery {
    pub host: String,
    pub start: i64,
    pub end: i64,
    /// Empty: every metric.
    pub metrics: Vec<String>,
    /// 0: no limit (up to `query.max_points`, past which the query fails).
    pub limit: usize,
    /// Rows the answer may hold (a chart's width in pixels), at most
    /// `query.max_points`; 0: raw snapshots. A range holding more
    /// snapshots than this is downsampled ([`crate::downsample`]), reading
    /// up to `query.max_points_scanned` of them; one holding fewer is
    /// answered raw. Not with `limit`.
    pub max_points: usize,
}

/// A host's snapshots: `metrics[name][i]` belongs to `timestamps[i]`, null
/// (NaN) where missing. Downsampled (`bucket_secs` > 0): one row per bucket
/// holding a snapshot, stamped with the bucket's last second; `metrics`
/// holds each bucket's average, `min` and `max` its extremes. The JSON of a
/// raw answer has no `bucket_secs`, `min` or `max`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeResult {
    pub host: String,
    pub timestamps: Vec<i64>,
    pub metrics: BTreeMap<String, Vec<f64>>,
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_start: Option<i64>,
    /// Seconds per bucket when downsampled; 0: raw snapshots.
    #[serde(skip_serializing_if = "is_zero")]
    pub bucket_secs: u64,
    /// Downsampled only: each bucket's least value per metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<BTreeMap<String, Vec<f64>>>,
    /// Downsampled only: each bucket's greatest value per metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<BTreeMap<String, Vec<f64>>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RangeResult {
    /// A raw answer: the snapshots of `frame`.
    fn raw(host: String, frame: Frame, truncated: bool, next_start: Option<i64>) -> Self {
        Self {
            host,
            timestamps: frame.timestamps,
            metrics: frame.metrics,
            truncated,
            next_start,
            bucket_secs: 0,
            min: None,
            max: None,
        }
    }

    /// A downsampled answer.
    fn downsampled(host: String, d: Downsampled) -> Self {
        Self {
            host,
            timestamps: d.timestamps,
            metrics: d.avg,
            truncated: false,
            next_start: None,
            bucket_secs: d.bucket_secs,
            min: Some(d.min),
            max: Some(d.max),
        }
    }

    /// Rough heap size, for the cache's weigher.
    fn approx_bytes(&self) -> usize {
        let cols = |m: &BTreeMap<String, Vec<f64>>| {
            m.iter()
                .map(|(k, v)| 48 + k.len() + v.len() * 8)
                .sum::<usize>()
        };
        64 + self.host.len()
            + self.timestamps.len() * 8
            + cols(&self.metrics)
            + self.min.as_ref().map_or(0, cols)
            + self.max.as_ref().map_or(0, cols)
    }
}

/// Which hosts: the ids, else those matching every label and the prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSelector {
    pub hosts: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub prefix: String,
}

impl HostSelector {
    pub fn matches(&self, h: &HostInfo) -> bool {
        h.id.starts_with(&self.prefix)
            && self
                .labels
                .iter()
                .all(|(k, v)| h.labels.get(k).is_some_and(|hv| hv == v))
    }
}

#[derive(Debug, Clone)]
pub struct AggQuery {
    pub selector: HostSelector,
    pub metric: String,
    pub function: AggFn,
    pub start: i64,
    pub end: i64,
    /// Seconds; 0: the whole range.
    pub step: i64,
    pub per_host: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    pub timestamp: i64,
    pub value: f64,
    pub samples: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggSeries {
    /// Set when the query was per host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AggResult {
    pub metric: String,
    pub function: String,
    pub hosts: Vec<String>,
    pub series: Vec<AggSeries>,
}

#[derive(Clone)]
enum Cached {
    Range(Arc<RangeResult>),
    Agg(Arc<AggResult>),
}

#[derive(Clone)]
struct Entry {
    value: Cached,
    ttl: Duration,
    bytes: u32,
}

struct PerEntryTtl;

impl moka::Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, v: &Entry, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// Limits on identifiers, shared with the gateway's validation.
#[derive(Debug, Clone, Copy)]
struct NameLimits {
    host: usize,
    metric: usize,
}

pub struct Engine {
    store: Store,
    cfg: QueryConfig,
    names: NameLimits,
    cache: moka::sync::Cache<String, Entry>,
    /// The host list with each host's series names (selectors, labels).
    hosts: HostListCache,
    /// The host list without them (the listing), cheaper to read.
    summaries: HostListCache,
    pub metrics: QueryMetrics,
}

/// A host list read again at most every `ttl`. Once a process has a list,
/// no request waits for Redis: the first request that finds it older than
/// `ttl` starts one read in the background and answers from the list it
/// has, as everyone does until the read lands (at 10,000 hosts a read takes
/// ~200 ms; a dashboard should not pay it every `ttl`). Only the first
/// requests of a process, with no list yet, wait, and share one read.
#[derive(Default, Clone)]
struct HostListCache(Arc<HostListInner>);

#[derive(Default)]
struct HostListInner {
    /// The list and when it was read.
    list: std::sync::Mutex<Option<(Instant, Arc<Vec<HostInfo>>)>>,
    /// A background read is running.
    refreshing: std::sync::atomic::AtomicBool,
    /// Held by the request reading the first list.
    first: tokio::sync::Mutex<()>,
}

impl HostListCache {
    fn cached(&self) -> Option<(Instant, Arc<Vec<HostInfo>>)> {
        self.0.list.lock().expect("host list lock").clone()
    }

    fn store(&self, list: Arc<Vec<HostInfo>>) {
        *self.0.list.lock().expect("host list lock") = Some((Instant::now(), list));
    }

    async fn get<F>(&self, ttl: Duration, read: F) -> Result<Arc<Vec<HostInfo>>, QueryError>
    where
        F: std::future::Future<Output = Result<Arc<Vec<HostInfo>>, QueryError>> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        match self.cached() {
            Some((at, list)) if at.elapsed() < ttl => Ok(list),
            Some((_, stale)) => {
                if !self.0.refreshing.swap(true, Ordering::AcqRel) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        match read.await {
                            Ok(list) => this.store(list),
                            // The previous list stays; the next request
                            // past `ttl` tries again.
                            Err(e) => {
                                tracing::warn!(error = %e, "reading the host list again failed")
                            }
                        }
                        this.0.refreshing.store(false, Ordering::Release);
                    });
                }
                Ok(stale)
            }
            None => {
                let _first = self.0.first.lock().await;
                // The request that held it has read the list.
                if let Some((_, list)) = self.cached() {
                    return Ok(list);
                }
                let list = read.await?;
                self.store(list.clone());
                Ok(list)
            }
        }
    }
}

/// Reads the host index, then each host's metadata and series set
/// (`names`) or its size: O(hosts), whatever the retention holds.
async fn read_host_list(store: Store, names: bool) -> Result<Arc<Vec<HostInfo>>, QueryError> {
    let ids = store.host_ids().await?;
    let infos = store.host_infos(&ids, names).await?;
    Ok(Arc::new(infos.into_iter().flatten().collect()))
}

impl Engine {
    pub fn new(config: &BrokerConfig, store: Store, metrics: QueryMetrics) -> Self {
        let cfg = config.query.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(cfg.cache_max_bytes)
            .weigher(|k: &String, v: &Entry| v.bytes.saturating_add(k.len() as u32))
            .expire_after(PerEntryTtl)
            .build();
        Self {
            store,
            cfg,
            names: NameLimits {
                host: config.gateway.max_host_id_len,
                metric: config.gateway.max_metric_name_len,
            },
            cache,
            hosts: HostListCache::default(),
            summaries: HostListCache::default(),
            metrics,
        }
    }

    pub fn config(&self) -> &QueryConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs one query under `query.timeout`, counting it and its latency.
    pub async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, QueryError>>,
    ) -> Result<T, QueryError> {
        self.run_within(op, self.cfg.timeout, fut).await
    }

    /// As [`Engine::run`] with a deadline of `timeout` (at most
    /// `query.timeout`).
    pub async fn run_within<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        fut: impl Future<Output = Result<T, QueryError>>,
    ) -> Result<T, QueryError> {
        let timeout = timeout.min(self.cfg.timeout);
        let t0 = Instant::now();
        let r = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(QueryError::Timeout(timeout)),
        };
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.metrics
            .observe(op, outcome, t0.elapsed().as_secs_f64());
        if let Err(e) = &r {
            tracing::debug!(op, error = %e, "query failed");
        }
        r
    }

    // ---- validation -------------------------------------------------------

    pub fn check_host(&self, param: &str, host: &str) -> Result<(), QueryError> {
        if host.is_empty() {
            return Err(QueryError::invalid(param, "is empty"));
        }
        if host.len() > self.names.host {
            return Err(QueryError::invalid(
                param,
                format!("is longer than {} bytes", self.names.host),
            ));
        }
        if !host.bytes().all(broker_common::host_id::byte) {
            return Err(QueryError::invalid(
                param,
                format!("{host:?} is not a host id: use only letters, digits, '.', '_' or '-'"),
            ));
        }
        Ok(())
    }

    pub fn check_metric(&self, param: &str, metric: &str) -> Result<(), QueryError> {
        if metric.is_empty() {
            return Err(QueryError::invalid(param, "is empty"));
        }
        broker_common::series_name::check(metric, self.names.metric).map_err(|e| {
            QueryError::invalid(param, format!("{metric:?} is not a metric name: {e}"))
        })
    }

    pub fn check_range(&self, start: i64, end: i64) -> Result<(), QueryError> {
        check_range(&self.cfg, start, end)
    }

    fn check_metrics(&self, metrics: &[String]) -> Result<Vec<String>, QueryError> {
        if metrics.len() > self.cfg.max_metrics {
            return Err(QueryError::limit(
                "metrics",
                format!(
                    "names {} metrics, more than query.max_metrics ({}); ask for fewer, or for all by naming none",
                    metrics.len(),
                    self.cfg.max_metrics
                ),
            ));
        }
        for m in metrics {
            self.check_metric("metrics", m)?;
        }
        let mut m = metrics.to_vec();
        m.sort();
        m.dedup();
        Ok(m)
    }

    fn check_scanned(&self, n: usize) -> Result<(), QueryError> {
        check_scanned(&self.cfg, n)
    }

    // ---- cache ------------------------------------------------------------

    /// How long a result for a range ending at `end` may be cached.
    pub fn cache_ttl_for(&self, end: i64, now: i64) -> Option<Duration> {
        let fresh = end >= now - self.cfg.fresh_window.as_secs() as i64;
        let ttl = if fresh {
            self.cfg.fresh_cache_ttl
        } else {
            self.cfg.cache_ttl
        };
        (!ttl.is_zero()).then_some(ttl)
    }

    fn cache_put(&self, key: String, end: i64, value: Cached, bytes: usize) {
        if let Some(ttl) = self.cache_ttl_for(end, broker_common::unix_now()) {
            self.cache.insert(
                key,
                Entry {
                    value,
                    ttl,
                    bytes: bytes.min(u32::MAX as usize) as u32,
                },
            );
        }
    }

    // ---- queries ----------------------------------------------------------

    pub async fn point(
        &self,
        host: &str,
        ts: i64,
        metrics: &[String],
    ) -> Result<PointResult, QueryError> {
        self.check_host("host", host)?;
        if ts < 0 {
            return Err(QueryError::invalid("timestamp", "is negative"));
        }
        let metrics = self.check_metrics(metrics)?;
        let m = self.store.point(host, ts, &metrics).await?;
        let m = m.ok_or_else(|| QueryError::PointNotFound {
            host: host.to_string(),
            timestamp: ts,
        })?;
        self.metrics.points_read.inc();
        Ok(PointResult {
            host: host.to_string(),
            timestamp: ts,
            metrics: m,
        })
    }

    pub async fn range(&self, q: &RangeQuery) -> Result<Arc<RangeResult>, QueryError> {
        self.check_host("host", &q.host)?;
        self.check_range(q.start, q.end)?;
        let metrics = self.check_metrics(&q.metrics)?;
        let max = self.cfg.max_points;
        if q.limit > max {
            return Err(QueryError::limit(
                "limit",
                format!("{} is more than query.max_points ({max})", q.limit),
            ));
        }
        if q.max_points > max {
            return Err(QueryError::limit(
                "max_points",
                format!(
                    "{} is more than query.max_points ({max}); ask for fewer rows",
                    q.max_points
                ),
            ));
        }
        if q.limit > 0 && q.max_points > 0 {
            return Err(QueryError::invalid(
                "max_points",
                "cannot be combined with limit: a downsampled answer covers the whole range in at most max_points rows; pass max_points to downsample, or limit to page through raw snapshots",
            ));
        }
        let key = range_key(&q.host, q.start, q.end, &metrics, q.limit, q.max_points);
        if let Some(r) = self.cached_range(&key) {
            return Ok(r);
        }
        let r = Arc::new(if q.max_points > 0 {
            self.read_downsampled(q, &metrics).await?
        } else {
            self.read_raw(q, &metrics).await?
        });
        self.cache_put(key, q.end, Cached::Range(r.clone()), r.approx_bytes());
        Ok(r)
    }

    /// A cached range answer, counting the hit or miss.
    fn cached_range(&self, key: &str) -> Option<Arc<RangeResult>> {
        let hit = match self.cache.get(key) {
            Some(Entry {
                value: Cached::Range(r),
                ..
            }) => Some(r),
            _ => None,
        };
        self.metrics.cache("range", hit.is_some());
        hit
    }

    /// A raw range: at most `limit` snapshots, else at most
    /// `query.max_points` (more fails).
    async fn read_raw(
        &self,
        q: &RangeQuery,
        metrics: &[String],
    ) -> Result<RangeResult, QueryError> {
        let fetch = if q.limit > 0 {
            q.limit + 1
        } else {
            self.cfg.max_points + 1
        };
        let mut frame = self
            .store
            .range(&q.host, q.start, q.end, metrics, Some(fetch))
            .await?;
        let (mut truncated, mut next_start) = (false, None);
        if q.limit > 0 {
            if frame.timestamps.len() > q.limit {
                truncated = true;
                next_start = Some(frame.timestamps[q.limit]);
                frame.truncate(q.limit);
            }
        } else if frame.timestamps.len() > self.cfg.max_points {
            return Err(QueryError::TooManyPoints(format!(
                "host {:?} has more than query.max_points ({}) snapshots from {} to {}; narrow the range, name fewer metrics, pass a limit, or pass max_points to downsample",
                q.host, self.cfg.max_points, q.start, q.end
            )));
        }
        self.metrics
            .points_read
            .inc_by(frame.timestamps.len() as u64);
        Ok(RangeResult::raw(
            q.host.clone(),
            frame,
            truncated,
            next_start,
        ))
    }

    /// A range with `max_points`: every snapshot is read (at most
    /// `query.max_points_scanned`, counted first) and, when there are more
    /// than `max_points`, downsampled.
    async fn read_downsampled(
        &self,
        q: &RangeQuery,
        metrics: &[String],
    ) -> Result<RangeResult, QueryError> {
        let scanned = self.cfg.max_points_scanned;
        let too_many = |n: u64| {
            QueryError::TooManyPoints(format!(
                "host {:?} has {n} snapshots from {} to {}, more than query.max_points_scanned ({scanned}), the most a downsampled range may read; narrow the range",
                q.host, q.start, q.end
            ))
        };
        // Counted first (ZCOUNT; an upper bound in the chunked layout), so
        // a range too long to read is refused before any snapshot is.
        let counted = self
            .store
            .counts(std::slice::from_ref(&q.host), q.start, q.end)
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        if counted > scanned as u64 {
            return Err(too_many(counted));
        }
        // Points written since the count could still pass the bound.
        let frame = self
            .store
            .range(&q.host, q.start, q.end, metrics, Some(scanned + 1))
            .await?;
        let n = frame.timestamps.len();
        self.metrics.points_read.inc_by(n as u64);
        if n > scanned {
            return Err(too_many(n as u64));
        }
        if n <= q.max_points {
            return Ok(RangeResult::raw(q.host.clone(), frame, false, None));
        }
        let d = downsample(&frame, q.start, q.end, q.max_points);
        Ok(RangeResult::downsampled(q.host.clone(), d))
    }

    /// The hosts a selector picks, sorted; at most `query.max_hosts`.
    pub async fn select_hosts(&self, sel: &HostSelector) -> Result<Vec<String>, QueryError> {
        let mut hosts = if sel.hosts.is_empty() {
            if sel.labels.keys().any(String::is_empty) {
                return Err(QueryError::invalid("labels", "a label name is empty"));
            }
            self.host_list()
                .await?
                .iter()
                .filter(|h| sel.matches(h))
                .map(|h| h.id.clone())
                .collect()
        } else {
            for h in &sel.hosts {
                self.check_host("hosts", h)?;
            }
            let mut h = sel.hosts.clone();
            h.sort();
            h.dedup();
            h
        };
        if hosts.len() > self.cfg.max_hosts {
            return Err(QueryError::limit(
                "hosts",
                format!(
                    "the selection covers {} hosts, more than query.max_hosts ({}); select fewer by id, label or prefix",
                    hosts.len(),
                    self.cfg.max_hosts
                ),
            ));
        }
        hosts.shrink_to_fit();
        Ok(hosts)
    }

    pub async fn aggregate(&self, q: &AggQuery) -> Result<Arc<AggResult>, QueryError> {
        self.check_metric("metric", &q.metric)?;
        self.check_range(q.start, q.end)?;
        if q.step < 0 {
            return Err(QueryError::invalid("step", "is negative"));
        }
        let buckets = Buckets {
            start: q.start,
            end: q.end,
            step: q.step,
        };
        if buckets.count() > self.cfg.max_points {
            return Err(QueryError::limit(
                "step",
                format!(
                    "gives {} buckets, more than query.max_points ({}); use a longer step",
                    buckets.count(),
                    self.cfg.max_points
                ),
            ));
        }
        let hosts = self.select_hosts(&q.selector).await?;
        let key = format!(
            "a|{}|{}|{}|{}|{}|{}|{}",
            q.function,
            q.metric,
            q.start,
            q.end,
            q.step,
            q.per_host,
            hosts.join(",")
        );
        if let Some(Entry {
            value: Cached::Agg(r),
            ..
        }) = self.cache.get(&key)
        {
            self.metrics.cache("aggregate", true);
            return Ok(r);
        }
        self.metrics.cache("aggregate", false);
        let counts = self.store.counts(&hosts, q.start, q.end).await?;
        self.check_scanned(counts.iter().sum::<u64>() as usize)?;
        let (ts, columns): (Vec<Vec<i64>>, Vec<Vec<f64>>) = self
            .store
            .series(&hosts, q.start, q.end, &q.metric)
            .await?
            .into_iter()
            .unzip();
        self.metrics
            .points_read
            .inc_by(ts.iter().map(|t| t.len() as u64).sum());
        let n = buckets.count();
        let collect = |pairs: &mut dyn Iterator<Item = (i64, f64)>| -> Vec<Bucket> {
            let mut values: Vec<Vec<f64>> = vec![Vec::new(); n];
            for (t, v) in pairs {
                if !v.is_nan() {
                    values[buckets.index(t)].push(v);
                }
            }
            values
                .into_iter()
                .enumerate()
                .filter_map(|(i, mut vals)| {
                    let samples = vals.len() as u64;
                    q.function.apply(&mut vals).map(|value| Bucket {
                        timestamp: buckets.timestamp(i),
                        value,
                        samples,
                    })
                })
                .collect()
        };
        let series = if q.per_host {
            hosts
                .iter()
                .zip(ts.iter().zip(&columns))
                .map(|(h, (t, v))| AggSeries {
                    host: Some(h.clone()),
                    buckets: collect(&mut t.iter().copied().zip(v.iter().copied())),
                })
                .collect()
        } else {
            let mut all = ts
                .iter()
                .zip(&columns)
                .flat_map(|(t, v)| t.iter().copied().zip(v.iter().copied()));
            vec![AggSeries {
                host: None,
                buckets: collect(&mut all),
            }]
        };
        let bytes = 128
            + hosts.iter().map(|h| h.len() + 24).sum::<usize>()
            + series
                .iter()
                .map(|s| 64 + s.buckets.len() * 24)
                .sum::<usize>();
        let r = Arc::new(AggResult {
            metric: q.metric.clone(),
            function: q.function.to_string(),
            hosts,
            series,
        });
        self.cache_put(key, q.end, Cached::Agg(r.clone()), bytes);
        Ok(r)
    }

    /// Every host with its series names, sorted by id, read again at most
    /// every `query.hosts_cache_ttl` ([`HostListCache`]).
    /// Each of `hosts`' series whose time range meets milliseconds
    /// `start_ms..=end_ms` (the writers' series sets: when each was first
    /// and last seen), sorted; for the label and series APIs over a past
    /// range.
    pub async fn series_between(
        &self,
        hosts: &[String],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Vec<String>>, QueryError> {
        Ok(storage_layout::hosts::series_between(&self.store, hosts, start_ms, end_ms).await?)
    }

    pub async fn host_list(&self) -> Result<Arc<Vec<HostInfo>>, QueryError> {
        self.hosts
            .get(
                self.cfg.hosts_cache_ttl,
                read_host_list(self.store.clone(), true),
            )
            .await
    }

    /// Every host with the number of its series but not their names: what
    /// the listing shows, a few small replies per host.
    async fn host_summaries(&self) -> Result<Arc<Vec<HostInfo>>, QueryError> {
        self.summaries
            .get(
                self.cfg.hosts_cache_ttl,
                read_host_list(self.store.clone(), false),
            )
            .await
    }

    /// A page of the hosts with `labels` and `prefix`, sorted by id: up
    /// to `limit` (0: `query.max_series`) after the id `after`, and the id
    /// to continue after when there are more.
    pub async fn hosts(
        &self,
        labels: &BTreeMap<String, String>,
        prefix: &str,
        after: &str,
        limit: usize,
        names: bool,
    ) -> Result<(Vec<HostInfo>, Option<String>), QueryError> {
        let max = self.cfg.max_series;
        let limit = match limit {
            0 => max,
            n if n > max => {
                return Err(QueryError::limit(
                    "limit",
                    format!("{n} is more than query.max_series ({max})"),
                ));
            }
            n => n,
        };
        let sel = HostSelector {
            hosts: Vec::new(),
            labels: labels.clone(),
            prefix: prefix.to_string(),
        };
        let list = if names {
            self.host_list().await?
        } else {
            self.host_summaries().await?
        };
        let from = list.partition_point(|h| h.id.as_str() <= after);
        let mut page: Vec<HostInfo> = list[from..]
            .iter()
            .filter(|h| sel.matches(h))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page[limit - 1].id.clone()
        });
        Ok((page, next))
    }

    pub async fn host(&self, id: &str) -> Result<HostInfo, QueryError> {
        self.check_host("host", id)?;
        self.store
            .host_infos(&[id.to_string()], true)
            .await?
            .pop()
            .flatten()
            .ok_or_else(|| QueryError::HostNotFound(id.to_string()))
    }

    /// Raw snapshots of several hosts in milliseconds `start_ms..=end_ms`,
    /// to the millisecond, for the PromQL evaluator, bounded by
    /// `query.max_points_scanned` in all (counted before reading), not by
    /// `query.max_points` per host: a 7-day `rate(m{host="h"}[5m])` at a
    /// 5-minute step reads 120,960 snapshots of one host to answer 2,016
    /// points. Read in pipelines of many hosts; not through the range
    /// cache (an evaluation at another time never asks the same range
    /// again: the layout's chunk cache is what a refresh reuses).
    pub async fn frames_ms(
        &self,
        hosts: &[String],
        start_ms: i64,
        end_ms: i64,
        metrics: &[String],
    ) -> Result<Vec<Frame>, QueryError> {
        for h in hosts {
            self.check_host("host", h)?;
        }
        let metrics = self.check_metrics(metrics)?;
        // Counted first (the chunk index and open count per host), so a
        // query too large is refused before its snapshots are read.
        let (start, end) = (start_ms.div_euclid(1000), end_ms.div_euclid(1000));
        let counts = self.store.counts(hosts, start, end).await?;
        self.check_scanned(counts.iter().sum::<u64>() as usize)?;
        let frames = self
            .store
            .frames_ms(hosts, start_ms, end_ms, &metrics, None)
            .await?;
        let read: usize = frames.iter().map(|f| f.timestamps.len()).sum();
        self.metrics.points_read.inc_by(read as u64);
        // Points written since the count could still pass the bound.
        self.check_scanned(read)?;
        Ok(frames)
    }
}

/// The cache key of a range query (metrics checked: sorted, deduplicated).
fn range_key(
    host: &str,
    start: i64,
    end: i64,
    metrics: &[String],
    limit: usize,
    max_points: usize,
) -> String {
    format!(
        "r|{host}|{start}|{end}|{}|{limit}|{max_points}",
        metrics.join(",")
    )
}

/// `[start, end]` (seconds) is a range a query may read.
pub fn check_range(cfg: &QueryConfig, start: i64, end: i64) -> Result<(), QueryError> {
    if start < 0 {
        return Err(QueryError::invalid("start", "is negative"));
    }
    if start > end {
        return Err(QueryError::invalid(
            "start",
            format!("{start} is after end ({end})"),
        ));
    }
    let max = cfg.max_range.as_secs() as i64;
    if end - start > max {
        return Err(QueryError::limit(
            "end",
            format!(
                "the range spans {}, more than query.max_range ({})",
                humantime::format_duration(Duration::from_secs((end - start) as u64)),
                humantime::format_duration(cfg.max_range)
            ),
        ));
    }
    Ok(())
}

/// A query may read `n` snapshots.
pub fn check_scanned(cfg: &QueryConfig, n: usize) -> Result<(), QueryError> {
    if n > cfg.max_points_scanned {
        return Err(QueryError::TooManyPoints(format!(
            "the query would read {n} snapshots, more than query.max_points_scanned ({}); narrow the range or the hosts",
            cfg.max_points_scanned
        )));
    }
    Ok(())
}
