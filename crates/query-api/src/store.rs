//! Reads Redis through the writer's [`KeyLayout`]: the time index with
//! ZRANGEBYSCORE, then the snapshots' hashes in pipelined batches (HGETALL,
//! or HMGET when the metrics are named), host metadata with SCAN and
//! pipelined HGETALL / ZCARD / HKEYS. Key formats live only in the layout.

use crate::error::QueryError;
use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use storage_writer::layout::KeyLayout;

/// Pipelines of one query in flight at once: enough to overlap our decoding
/// with Redis's work, few enough to leave Redis to other queries.
const PIPELINES_PER_QUERY: usize = 4;
/// Keys asked per SCAN call.
const SCAN_COUNT: u32 = 1_000;

/// Snapshots of one host, columnar: `metrics[name][i]` belongs to
/// `timestamps[i]`; NaN where that snapshot lacks the metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub timestamps: Vec<i64>,
    pub metrics: BTreeMap<String, Vec<f64>>,
}

impl Frame {
    /// Rough heap size, for the cache's weigher.
    pub fn approx_bytes(&self) -> usize {
        64 + self.timestamps.len() * 8
            + self
                .metrics
                .iter()
                .map(|(k, v)| 48 + k.len() + v.len() * 8)
                .sum::<usize>()
    }
}

/// What the host list shows of one host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostInfo {
    pub id: String,
    /// Timestamp of the newest snapshot (0 if unknown).
    pub last_seen: i64,
    pub labels: BTreeMap<String, String>,
    /// Distinct snapshots stored (the time index's size).
    pub points: u64,
    /// Metric names of the newest snapshot.
    pub metrics: Vec<String>,
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    layout: Arc<dyn KeyLayout>,
    read_batch: usize,
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

/// A command name and its arguments.
type Cmd = (&'static str, Vec<Value>);

/// Sends one pipeline and returns its replies in order.
async fn run_pipeline(
    client: fred::clients::Client,
    chunk: Vec<Cmd>,
) -> Result<Vec<Value>, QueryError> {
    let n = chunk.len();
    let pipe = client.pipeline();
    for (name, args) in chunk {
        let _: Value = pipe.custom(cmd(name), args).await?;
    }
    let all: Vec<Value> = pipe.all().await?;
    if all.len() != n {
        return Err(QueryError::Redis(format!(
            "{n} commands answered with {} replies",
            all.len()
        )));
    }
    Ok(all)
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    v.as_bytes()
}

/// An HGETALL reply as (field, value) pairs, whether fred gives an array or
/// a map.
fn pairs(v: Value) -> Vec<(Value, Value)> {
    match v {
        Value::Map(m) => m
            .inner()
            .into_iter()
            .map(|(k, v)| (Value::Bytes(k.into_bytes()), v))
            .collect(),
        Value::Array(a) => {
            let mut it = a.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        _ => Vec::new(),
    }
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
        let config = fred::types::config::Config::from_url(url)
            .map_err(|e| anyhow::anyhow!("query.redis_url {url:?}: {e}"))?;
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
            read_batch,
        })
    }

    pub fn layout(&self) -> &dyn KeyLayout {
        &*self.layout
    }

    /// Resolves once every connection of the pool is up.
    pub async fn wait_connected(&self) -> Result<(), QueryError> {
        Ok(self.pool.wait_for_connect().await?)
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }

    async fn one(&self, name: &'static str, args: Vec<Value>) -> Result<Value, QueryError> {
        Ok(self.pool.next().custom(cmd(name), args).await?)
    }

    /// Sends `commands` as pipelines of `read_batch`, a few at once, and
    /// returns the replies in order.
    async fn pipelined(&self, commands: Vec<Cmd>) -> Result<Vec<Value>, QueryError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut chunks: Vec<Vec<Cmd>> = Vec::new();
        let mut it = commands.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(self.read_batch).collect());
        }
        let futs: Vec<_> = chunks
            .into_iter()
            .map(|chunk| run_pipeline(self.pool.next().clone(), chunk))
            .collect();
        let replies = ordered(futs, PIPELINES_PER_QUERY).await?;
        Ok(replies.into_iter().flatten().collect())
    }

    /// The metrics of one snapshot; `None` when it does not exist (never
    /// written, or expired). With `metrics` named, only those (missing ones
    /// left out).
    pub async fn point(
        &self,
        host: &str,
        ts: i64,
        metrics: &[String],
    ) -> Result<Option<BTreeMap<String, f64>>, QueryError> {
        let key = self.layout.metrics_key(host, ts);
        let mut out = BTreeMap::new();
        if metrics.is_empty() {
            let v = self.one("HGETALL", vec![key.into()]).await?;
            for (k, v) in pairs(v) {
                if let (Some(k), Some(v)) = (k.as_str(), bytes_of(&v))
                    && let Some(v) = self.layout.decode_value(v)
                {
                    out.insert(k.to_string(), v);
                }
            }
            if out.is_empty() {
                return Ok(None);
            }
        } else {
            let exists = self.one("EXISTS", vec![key.clone().into()]).await?;
            if exists.as_usize() != Some(1) {
                return Ok(None);
            }
            let mut args: Vec<Value> = vec![key.into()];
            args.extend(metrics.iter().map(|m| Value::from(m.as_str())));
            let v = self.one("HMGET", args).await?;
            for (name, v) in metrics.iter().zip(v.into_array()) {
                if let Some(v) = bytes_of(&v).and_then(|b| self.layout.decode_value(b)) {
                    out.insert(name.clone(), v);
                }
            }
        }
        Ok(Some(out))
    }

    /// Timestamps in a host's index with `start <= ts <= end`, oldest first,
    /// at most `limit`.
    pub async fn timestamps(
        &self,
        host: &str,
        start: i64,
        end: i64,
        limit: Option<usize>,
    ) -> Result<Vec<i64>, QueryError> {
        let mut args: Vec<Value> =
            vec![self.layout.index_key(host).into(), start.into(), end.into()];
        if let Some(limit) = limit {
            args.extend(["LIMIT".into(), 0.into(), (limit as i64).into()]);
        }
        let v = self.one("ZRANGEBYSCORE", args).await?;
        Ok(self.decode_timestamps(v))
    }

    fn decode_timestamps(&self, v: Value) -> Vec<i64> {
        let mut ts: Vec<i64> = v
            .into_array()
            .iter()
            .filter_map(|m| bytes_of(m).and_then(|b| self.layout.index_member_timestamp(b)))
            .collect();
        ts.sort_unstable();
        ts.dedup();
        ts
    }

    /// [`Store::timestamps`] of many hosts, pipelined.
    pub async fn timestamps_of(
        &self,
        hosts: &[String],
        start: i64,
        end: i64,
    ) -> Result<Vec<Vec<i64>>, QueryError> {
        let commands = hosts
            .iter()
            .map(|h| {
                (
                    "ZRANGEBYSCORE",
                    vec![self.layout.index_key(h).into(), start.into(), end.into()],
                )
            })
            .collect();
        Ok(self
            .pipelined(commands)
            .await?
            .into_iter()
            .map(|v| self.decode_timestamps(v))
            .collect())
    }

    /// The snapshots of `host` at `timestamps`. Snapshots that no longer
    /// exist (expired before the index was trimmed) are left out. With
    /// `metrics` empty, every metric found; else those metrics, each a
    /// column even if no snapshot has it.
    pub async fn frame(
        &self,
        host: &str,
        timestamps: &[i64],
        metrics: &[String],
    ) -> Result<Frame, QueryError> {
        let commands: Vec<Cmd> = timestamps
            .iter()
            .map(|&ts| {
                let key: Value = self.layout.metrics_key(host, ts).into();
                if metrics.is_empty() {
                    ("HGETALL", vec![key])
                } else {
                    let mut args = Vec::with_capacity(1 + metrics.len());
                    args.push(key);
                    args.extend(metrics.iter().map(|m| Value::from(m.as_str())));
                    ("HMGET", args)
                }
            })
            .collect();
        let replies = self.pipelined(commands).await?;
        let n = timestamps.len();
        let mut names: Vec<String> = metrics.to_vec();
        let mut columns: Vec<Vec<f64>> = vec![vec![f64::NAN; n]; names.len()];
        let mut index: HashMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i))
            .collect();
        let mut present = vec![false; n];
        for (row, reply) in replies.into_iter().enumerate() {
            if metrics.is_empty() {
                for (k, v) in pairs(reply) {
                    let (Some(k), Some(v)) = (k.as_str(), bytes_of(&v)) else {
                        continue;
                    };
                    let Some(v) = self.layout.decode_value(v) else {
                        continue;
                    };
                    let col = match index.get(k.as_ref()) {
                        Some(&c) => c,
                        None => {
                            index.insert(k.to_string(), names.len());
                            names.push(k.to_string());
                            columns.push(vec![f64::NAN; n]);
                            names.len() - 1
                        }
                    };
                    columns[col][row] = v;
                    present[row] = true;
                }
            } else {
                for (col, v) in reply.into_array().into_iter().enumerate().take(names.len()) {
                    if let Some(v) = bytes_of(&v).and_then(|b| self.layout.decode_value(b)) {
                        columns[col][row] = v;
                        present[row] = true;
                    }
                }
            }
        }
        let keep = |col: Vec<f64>| -> Vec<f64> {
            col.into_iter()
                .zip(&present)
                .filter(|(_, p)| **p)
                .map(|(v, _)| v)
                .collect()
        };
        let all_present = present.iter().all(|p| *p);
        let kept_ts: Vec<i64> = if all_present {
            timestamps.to_vec()
        } else {
            timestamps
                .iter()
                .zip(&present)
                .filter(|(_, p)| **p)
                .map(|(t, _)| *t)
                .collect()
        };
        let metrics = names
            .into_iter()
            .zip(columns)
            .map(|(name, col)| (name, if all_present { col } else { keep(col) }))
            .collect();
        Ok(Frame {
            timestamps: kept_ts,
            metrics,
        })
    }

    /// One metric of each host's snapshots at the given timestamps (HGET
    /// per snapshot, pipelined across hosts); NaN where missing.
    pub async fn values_of(
        &self,
        hosts: &[String],
        timestamps: &[Vec<i64>],
        metric: &str,
    ) -> Result<Vec<Vec<f64>>, QueryError> {
        let commands = hosts
            .iter()
            .zip(timestamps)
            .flat_map(|(h, ts)| {
                ts.iter().map(move |&t| {
                    (
                        "HGET",
                        vec![
                            Value::from(self.layout.metrics_key(h, t)),
                            Value::from(metric),
                        ],
                    )
                })
            })
            .collect();
        let mut replies = self.pipelined(commands).await?.into_iter();
        Ok(timestamps
            .iter()
            .map(|ts| {
                replies
                    .by_ref()
                    .take(ts.len())
                    .map(|v| {
                        bytes_of(&v)
                            .and_then(|b| self.layout.decode_value(b))
                            .unwrap_or(f64::NAN)
                    })
                    .collect()
            })
            .collect())
    }

    /// Every host with a metadata key (SCAN; on a Redis Cluster, every
    /// master), sorted.
    pub async fn host_ids(&self) -> Result<Vec<String>, QueryError> {
        let client = self.pool.next();
        let pattern = self.layout.host_key_pattern();
        let keys: Vec<fred::types::Key> = if client.is_clustered() {
            client
                .scan_cluster_buffered(pattern, Some(SCAN_COUNT), None)
                .try_collect()
                .await?
        } else {
            client
                .scan_buffered(pattern, Some(SCAN_COUNT), None)
                .try_collect()
                .await?
        };
        let mut hosts: Vec<String> = keys
            .iter()
            .filter_map(|k| k.as_str().and_then(|k| self.layout.host_of_key(k)))
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        Ok(hosts)
    }

    /// Only the metadata hash of each of `hosts` (`last_seen`, labels): one
    /// HGETALL per host, for callers that need no point counts or metric
    /// names (host-manager's inventory).
    pub async fn host_metas(
        &self,
        hosts: &[String],
    ) -> Result<Vec<Option<storage_writer::layout::HostMeta>>, QueryError> {
        let commands = hosts
            .iter()
            .map(|h| ("HGETALL", vec![self.layout.host_key(h).into()]))
            .collect();
        let replies = self.pipelined(commands).await?;
        Ok(replies
            .into_iter()
            .map(|meta| {
                let fields: Vec<(String, String)> = pairs(meta)
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.as_string()?, v.as_string()?)))
                    .collect();
                (!fields.is_empty()).then(|| self.layout.decode_host_meta(&fields))
            })
            .collect())
    }

    /// Metadata of `hosts` (`None` for a host without a metadata key).
    pub async fn host_infos(&self, hosts: &[String]) -> Result<Vec<Option<HostInfo>>, QueryError> {
        let mut commands = Vec::with_capacity(hosts.len() * 2);
        for h in hosts {
            commands.push(("HGETALL", vec![self.layout.host_key(h).into()]));
            commands.push(("ZCARD", vec![self.layout.index_key(h).into()]));
        }
        let replies = self.pipelined(commands).await?;
        let mut infos: Vec<Option<HostInfo>> = Vec::with_capacity(hosts.len());
        let mut it = replies.into_iter();
        for h in hosts {
            let (Some(meta), Some(card)) = (it.next(), it.next()) else {
                break;
            };
            let fields: Vec<(String, String)> = pairs(meta)
                .into_iter()
                .filter_map(|(k, v)| Some((k.as_string()?, v.as_string()?)))
                .collect();
            if fields.is_empty() {
                infos.push(None);
                continue;
            }
            let meta = self.layout.decode_host_meta(&fields);
            infos.push(Some(HostInfo {
                id: h.clone(),
                last_seen: meta.last_seen.unwrap_or(0),
                labels: meta.labels,
                points: card.as_usize().unwrap_or(0) as u64,
                metrics: Vec::new(),
            }));
        }
        // The newest snapshot's metric names.
        let with_last: Vec<(usize, String)> = infos
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let h = h.as_ref()?;
                (h.last_seen > 0).then(|| (i, self.layout.metrics_key(&h.id, h.last_seen)))
            })
            .collect();
        let commands = with_last
            .iter()
            .map(|(_, k)| ("HKEYS", vec![Value::from(k.as_str())]))
            .collect();
        let names = self.pipelined(commands).await?;
        for ((i, _), names) in with_last.into_iter().zip(names) {
            let mut names: Vec<String> = names
                .into_array()
                .into_iter()
                .filter_map(|v| v.as_string())
                .collect();
            names.sort_unstable();
            if let Some(info) = infos[i].as_mut() {
                info.metrics = names;
            }
        }
        Ok(infos)
    }
}
