//! Reads Redis through the configured [`KeyLayout`], which owns every key
//! format and decodes what it stores; this module only decides how the
//! layout's commands travel (pipelines of `query.read_batch`, a few in
//! flight) and reads the host index and series sets the writers keep
//! ([`storage_layout::hosts`]): a host list costs O(hosts), whatever the
//! retention holds, and nothing here walks the keyspace (but the one-time
//! backfill of an index written by an older version).

use crate::error::QueryError;
use fred::clients::Pool;
use fred::interfaces::ClientLike;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use storage_layout::exec::send_pipeline;
use storage_layout::{Command, Exec, KeyLayout, LayoutError, RangeReq, Reply, meta};

pub use storage_layout::{Frame, HostMeta};

/// A host without a series set (written by a version before it, not yet
/// backfilled): its series are the metrics of its newest snapshot and of
/// the snapshots up to this many seconds before it...
const SERIES_WINDOW_SECS: i64 = 60;
/// ...at most this many of them (the oldest of the window first).
const SERIES_WINDOW_SNAPSHOTS: usize = 16;

/// Pipelines of one query in flight at once: enough to overlap our decoding
/// with Redis's work, few enough to leave Redis to other queries.
const PIPELINES_PER_QUERY: usize = 4;
/// Hosts read per layout call when a query spans many.
const HOSTS_PER_READ: usize = 64;

/// What the host list shows of one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostInfo {
    pub id: String,
    /// Timestamp of the newest snapshot (0 if unknown).
    pub last_seen: i64,
    pub labels: BTreeMap<String, String>,
    /// Snapshots stored (distinct in the seed layout; in the chunked one,
    /// sealed snapshots plus the open chunk's records).
    pub points: u64,
    /// How many series the host reported within the retention.
    pub series: usize,
    /// Their names (its series set), sorted; empty when the list was read
    /// without them.
    pub metrics: Vec<String>,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    layout: Arc<dyn KeyLayout>,
    read_batch: usize,
    /// `ttl`: hosts whose newest point is older are not listed.
    retention_secs: u64,
    /// The host index was found backfilled (or this process did it).
    index_ready: Arc<std::sync::atomic::AtomicBool>,
}

/// Runs `futs` with at most `n` at once; results in order. (The futures
/// are collected first: a stream built from a closure trips rustc's Send
/// inference for the handlers' futures.)
pub async fn ordered<T, F>(futs: Vec<F>, n: usize) -> Result<Vec<T>, QueryError>
where
    F: std::future::Future<Output = Result<T, QueryError>>,
{
    futures::stream::iter(futs).buffered(n).try_collect().await
}

impl Exec for Store {
    /// Sends `commands` as pipelines of `read_batch`, a few at once, and
    /// returns the replies in order.
    fn pipeline<'a>(
        &'a self,
        commands: Vec<Command>,
    ) -> BoxFuture<'a, Result<Vec<Reply>, LayoutError>> {
        Box::pin(async move {
            if commands.len() <= self.read_batch {
                return send_pipeline(self.pool.next(), commands).await;
            }
            let mut chunks: Vec<Vec<Command>> = Vec::new();
            let mut it = commands.into_iter().peekable();
            while it.peek().is_some() {
                chunks.push(it.by_ref().take(self.read_batch).collect());
            }
            let futs: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let client = self.pool.next().clone();
                    async move { send_pipeline(&client, chunk).await }
                })
                .collect();
            let replies: Vec<Vec<Reply>> = futures::stream::iter(futs)
                .buffered(PIPELINES_PER_QUERY)
                .try_collect()
                .await?;
            Ok(replies.into_iter().flatten().collect())
        })
    }
}

/// Reads of seconds `start..=end` of each host.
fn reqs(hosts: &[String], start: i64, end: i64) -> Vec<RangeReq> {
    hosts
        .iter()
        .map(|h| RangeReq::seconds(h.clone(), start, end))
        .collect()
}

impl Store {
    /// Builds the Redis pool for `url` and starts connecting. Commands fail
    /// fast while Redis is unreachable (a query answers UNAVAILABLE rather
    /// than waiting); the pool reconnects in the background.
    pub fn connect(
        url: &str,
        pool_size: usize,
        layout: Arc<dyn KeyLayout>,
        read_batch: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut config = fred::types::config::Config::from_url(url)
            .map_err(|e| anyhow::anyhow!("query.redis_url {url:?}: {e}"))?;
        // Started before Redis (compose, Kubernetes), keep trying with the
        // reconnect policy below instead of giving up after the first
        // attempt, fred's default.
        config.fail_fast = false;
        let pool = fred::types::Builder::from_config(config)
            .with_performance_config(|p| {
                // A backstop only: the engine drops a query at
                // `query.timeout` and answers that it timed out.
                p.default_command_timeout = timeout * 2;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                // A pipeline leaves in several writes: with Nagle's
                // algorithm the second waits for the ACK of the first,
                // which Redis delays by 40 ms.
                c.tcp = fred::types::config::TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
            })
            .set_policy(fred::types::config::ReconnectPolicy::new_exponential(
                0, 100, 5_000, 2,
            ))
            .build_pool(pool_size)?;
        pool.connect_pool();
        Ok(Self {
            pool,
            layout,
            read_batch: read_batch.max(1),
            retention_secs: broker_common::config::DEFAULT_TTL.as_secs(),
            index_ready: Arc::default(),
        })
    }

    /// Lists only hosts that reported within `ttl` (the writers' `ttl`).
    pub fn with_retention(mut self, ttl: Duration) -> Self {
        self.retention_secs = ttl.as_secs();
        self
    }

    pub fn layout(&self) -> &dyn KeyLayout {
        &*self.layout
    }

    /// Resolves once every connection of the pool is up.
    pub async fn wait_connected(&self) {
        storage_layout::exec::until_connected(&self.pool, "query.redis_url").await
    }

    pub async fn quit(&self) {
        let _ = tokio::time::timeout(
            broker_common::shutdown::REDIS_QUIT_TIMEOUT,
            self.pool.quit(),
        )
        .await;
    }

    /// The layout's frames for `reqs`, read `HOSTS_PER_READ` hosts at a
    /// time, a few at once.
    async fn frames_of(
        &self,
        reqs: Vec<RangeReq>,
        metrics: &[String],
        limit: Option<usize>,
    ) -> Result<Vec<Frame>, QueryError> {
        if reqs.len() <= HOSTS_PER_READ {
            return Ok(self.layout.frames(self, &reqs, metrics, limit).await?);
        }
        let parts: Vec<Vec<RangeReq>> = reqs.chunks(HOSTS_PER_READ).map(<[_]>::to_vec).collect();
        let futs: Vec<_> = parts
            .iter()
            .map(|part| async move {
                Ok::<_, QueryError>(self.layout.frames(self, part, metrics, limit).await?)
            })
            .collect();
        Ok(ordered(futs, PIPELINES_PER_QUERY)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// The metrics of one snapshot (second `ts`; points of that second
    /// with milliseconds merged, the later winning); `None` when it does
    /// not exist (never written, or expired). With `metrics` named, only
    /// those (missing ones left out).
    pub async fn point(
        &self,
        host: &str,
        ts: i64,
        metrics: &[String],
    ) -> Result<Option<BTreeMap<String, f64>>, QueryError> {
        let req = reqs(&[host.to_string()], ts, ts);
        let frame = self.frames_of(req.clone(), metrics, None).await?.pop();
        let frame = match frame {
            Some(f) if !f.timestamps.is_empty() => f.into_seconds(),
            // The snapshot may exist without any of the named metrics.
            _ if !metrics.is_empty() => {
                let all = self.frames_of(req, &[], Some(1)).await?.pop();
                return Ok(all
                    .filter(|f| !f.timestamps.is_empty())
                    .map(|_| BTreeMap::new()));
            }
            _ => return Ok(None),
        };
        Ok(Some(
            frame
                .metrics
                .into_iter()
                .filter_map(|(k, v)| v.first().copied().filter(|v| !v.is_nan()).map(|v| (k, v)))
                .collect(),
        ))
    }

    /// One host's snapshots with `start <= ts <= end` (seconds; points
    /// with milliseconds merged per second), oldest first, at most `limit`.
    /// With `metrics` empty, every metric found; else those metrics, each
    /// a column even if no snapshot has it.
    pub async fn range(
        &self,
        host: &str,
        start: i64,
        end: i64,
        metrics: &[String],
        limit: Option<usize>,
    ) -> Result<Frame, QueryError> {
        let req = reqs(&[host.to_string()], start, end);
        // `limit` counts seconds, a read counts stored points: a second
        // may hold several (scrapes of two jobs). Read more until the
        // points read cover more than `limit` whole seconds (or all).
        let mut fetch = limit;
        loop {
            let raw = self
                .frames_of(req.clone(), metrics, fetch)
                .await?
                .pop()
                .unwrap_or_default();
            let full = fetch.is_some_and(|f| raw.timestamps.len() >= f);
            let mut frame = raw.into_seconds();
            match (limit, fetch) {
                // The last second read may be cut short: read on.
                (Some(l), Some(f)) if full && frame.timestamps.len() <= l && f < l * 1000 => {
                    fetch = Some(f * 2);
                }
                (Some(l), _) => {
                    frame.truncate(l);
                    return Ok(frame);
                }
                (None, _) => return Ok(frame),
            }
        }
    }

    /// Each host's snapshots in the range (`metrics` as for [`Store::range`]),
    /// in order, read many hosts per pipeline.
    pub async fn frames(
        &self,
        hosts: &[String],
        start: i64,
        end: i64,
        metrics: &[String],
    ) -> Result<Vec<Frame>, QueryError> {
        Ok(self
            .frames_of(reqs(hosts, start, end), metrics, None)
            .await?
            .into_iter()
            .map(Frame::into_seconds)
            .collect())
    }

    /// Each host's snapshots within milliseconds `start_ms..=end_ms`, to
    /// the millisecond (PromQL, remote read), at most `limit` per host.
    pub async fn frames_ms(
        &self,
        hosts: &[String],
        start_ms: i64,
        end_ms: i64,
        metrics: &[String],
        limit: Option<usize>,
    ) -> Result<Vec<Frame>, QueryError> {
        let reqs = hosts
            .iter()
            .map(|h| RangeReq {
                host: h.clone(),
                start_ms,
                end_ms,
            })
            .collect();
        self.frames_of(reqs, metrics, limit).await
    }

    /// How many snapshots each host holds in the range (an upper bound in
    /// the chunked layout), without reading them: for limits.
    pub async fn counts(
        &self,
        hosts: &[String],
        start: i64,
        end: i64,
    ) -> Result<Vec<u64>, QueryError> {
        Ok(self.layout.counts(self, &reqs(hosts, start, end)).await?)
    }

    /// One metric of each host's snapshots in the range: the timestamps
    /// that have it and its values.
    pub async fn series(
        &self,
        hosts: &[String],
        start: i64,
        end: i64,
        metric: &str,
    ) -> Result<Vec<(Vec<i64>, Vec<f64>)>, QueryError> {
        let metrics = [metric.to_string()];
        Ok(self
            .frames_of(reqs(hosts, start, end), &metrics, None)
            .await?
            .into_iter()
            .map(|f| {
                let mut f = f.into_seconds();
                let values = f.metrics.remove(metric).unwrap_or_default();
                (f.timestamps, values)
            })
            .collect())
    }

    /// One metric of each host's snapshots at the given timestamps; NaN
    /// where missing.
    pub async fn values_of(
        &self,
        hosts: &[String],
        timestamps: &[Vec<i64>],
        metric: &str,
    ) -> Result<Vec<Vec<f64>>, QueryError> {
        let reqs: Vec<RangeReq> = hosts
            .iter()
            .zip(timestamps)
            .map(|(h, ts)| {
                RangeReq::seconds(
                    h.clone(),
                    ts.iter().copied().min().unwrap_or(0),
                    ts.iter().copied().max().unwrap_or(-1),
                )
            })
            .collect();
        let frames = self.frames_of(reqs, &[metric.to_string()], None).await?;
        Ok(frames
            .into_iter()
            .map(Frame::into_seconds)
            .zip(timestamps)
            .map(|(f, ts)| ts.iter().map(|&t| f.value_at(metric, t)).collect())
            .collect())
    }

    /// Every host that reported within the retention, sorted, from the
    /// host index the writers keep (one `ZRANGEBYSCORE`). The first call
    /// of a process on a Redis whose index was never backfilled (data
    /// written by an older version) backfills it once.
    pub async fn host_ids(&self) -> Result<Vec<String>, QueryError> {
        use std::sync::atomic::Ordering;
        if !self.index_ready.load(Ordering::Acquire) {
            let client = self.pool.next();
            match storage_layout::hosts::backfill(client, &*self.layout, self.retention_secs)
                .await?
            {
                storage_layout::hosts::Backfill::Busy => {
                    tracing::info!(
                        "the host index is being backfilled by another process; listing what it holds so far"
                    );
                }
                storage_layout::hosts::Backfill::Done { hosts } => {
                    tracing::info!(hosts, "backfilled the host index from existing data");
                    self.index_ready.store(true, Ordering::Release);
                }
                storage_layout::hosts::Backfill::Ready => {
                    self.index_ready.store(true, Ordering::Release);
                }
            }
        }
        let since = broker_common::unix_now().saturating_sub(self.retention_secs as i64);
        Ok(storage_layout::hosts::list(self, since)
            .await?
            .into_iter()
            .map(|(h, _)| h)
            .collect())
    }

    /// Only the metadata hash of each of `hosts` (`last_seen`, labels): one
    /// HGETALL per host, for callers that need no point counts or metric
    /// names (host-manager's inventory).
    pub async fn host_metas(&self, hosts: &[String]) -> Result<Vec<Option<HostMeta>>, QueryError> {
        let commands = hosts
            .iter()
            .map(|h| Command::of("HGETALL", &[meta::host_key(h).as_bytes()]))
            .collect();
        let replies = self.pipeline(commands).await?;
        replies
            .into_iter()
            .map(|r| {
                let fields = r.ok("HGETALL")?.into_pairs();
                Ok((!fields.is_empty()).then(|| meta::decode(&fields)))
            })
            .collect()
    }

    /// Metadata of `hosts` (`None` for a host without a metadata key):
    /// per host its metadata hash, its point count (a counter, not a walk)
    /// and its series set (with `names`; else only its size), in a few
    /// pipelined commands per host.
    pub async fn host_infos(
        &self,
        hosts: &[String],
        names: bool,
    ) -> Result<Vec<Option<HostInfo>>, QueryError> {
        let since = broker_common::unix_now().saturating_sub(self.retention_secs as i64);
        let (metas, (series, sizes)) = futures::future::try_join(self.host_metas(hosts), async {
            Ok(if names {
                let series = storage_layout::hosts::series(self, hosts, since).await?;
                let sizes = series.iter().map(Vec::len).collect();
                (series, sizes)
            } else {
                let sizes = storage_layout::hosts::series_counts(self, hosts, since).await?;
                (vec![Vec::new(); hosts.len()], sizes)
            })
        })
        .await?;
        // Point counts from the metadata just read where the layout keeps
        // them there (chunked), else one command per host (seed: ZCOUNT).
        let counts = match metas
            .iter()
            .map(|m| {
                m.as_ref()
                    .map_or(Some(0), |m| self.layout.points_from_meta(m))
            })
            .collect::<Option<Vec<u64>>>()
        {
            Some(counts) => counts,
            None => self.layout.stored_points(self, hosts).await?,
        };
        let mut infos: Vec<Option<HostInfo>> = hosts
            .iter()
            .zip(
                metas
                    .into_iter()
                    .zip(counts)
                    .zip(series.into_iter().zip(sizes)),
            )
            .map(|(h, ((meta, points), (metrics, series)))| {
                meta.map(|m| HostInfo {
                    id: h.clone(),
                    last_seen: m.last_seen.unwrap_or(0),
                    labels: m.labels,
                    points,
                    series,
                    metrics,
                })
            })
            .collect();
        if !names {
            return Ok(infos);
        }
        // Hosts without a series set (written before it existed, and not
        // backfilled yet): the names of their newest snapshots.
        let newest: Vec<(usize, RangeReq)> = infos
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let h = h.as_ref()?;
                (h.last_seen > 0 && h.metrics.is_empty())
                    .then(|| (i, RangeReq::seconds(h.id.clone(), h.last_seen, h.last_seen)))
            })
            .collect();
        if newest.is_empty() {
            return Ok(infos);
        }
        let frames = self
            .frames_of(newest.iter().map(|(_, r)| r.clone()).collect(), &[], None)
            .await?;
        // And those of the snapshots just before it: a host whose series
        // arrive at different seconds (Prometheus scraping two exporters of
        // one machine at different offsets) has them all.
        let before = self
            .frames_of(
                newest
                    .iter()
                    .map(|(_, r)| RangeReq {
                        host: r.host.clone(),
                        start_ms: r.start_ms.saturating_sub(SERIES_WINDOW_SECS * 1000),
                        end_ms: r.start_ms - 1,
                    })
                    .collect(),
                &[],
                Some(SERIES_WINDOW_SNAPSHOTS),
            )
            .await?;
        for (((i, _), f), b) in newest.into_iter().zip(frames).zip(before) {
            if let Some(info) = infos[i].as_mut() {
                let mut names: std::collections::BTreeSet<String> = f
                    .metrics
                    .iter()
                    .filter(|(_, col)| col.iter().any(|v| !v.is_nan()))
                    .map(|(n, _)| n.clone())
                    .collect();
                names.extend(
                    b.metrics
                        .into_iter()
                        .filter(|(_, col)| col.iter().any(|v| !v.is_nan()))
                        .map(|(n, _)| n),
                );
                info.metrics = names.into_iter().collect();
                info.series = info.metrics.len();
            }
        }
        Ok(infos)
    }
}
