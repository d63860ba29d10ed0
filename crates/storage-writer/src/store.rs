//! Where batches become durable: Redis (through the layout's commands, in
//! pipelines), or the spool when Redis is down, or the dead-letter queue
//! when Redis refuses them for good.
//!
//! Pipeline failures are of two kinds ([`crate::redis::classify`]).
//! Transient ones (connection, timeout, LOADING, OOM, cluster
//! reconfiguring...) send the batches to the spool. Permanent ones, an
//! error reply Redis will give again for the same data (WRONGTYPE on a key
//! someone created with another type, a command it refuses), would block the
//! spool forever: the write is then redone once more with each host's
//! commands kept apart (`Store::write_or_isolate`), so that only the points
//! of the hosts Redis refuses go to the dead-letter queue, with Redis's
//! reply as the reason, and every other point of the pipeline is stored.

use crate::error::WriterError;
use crate::metrics::WriterMetrics;
use crate::spool::{Spool, SpoolError};
use broker_proto::v1::{DeadLetter, MetricBatch, Point};
use fred::clients::Pool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use storage_layout::{Arrival, Command, KeyLayout};
use tokio_util::sync::CancellationToken;

use crate::redis::{classify, classify_reply};

/// Where batches become durable: Redis, or the spool when Redis is down,
/// or the dead-letter queue when Redis refuses them for good.
pub(crate) struct Store {
    pub(crate) pool: Pool,
    /// Write pipelines as one RESP buffer (`writer.direct_pipelines`);
    /// `None`: through fred.
    pub(crate) direct: Option<storage_layout::direct::DirectPipes>,
    pub(crate) layout: Arc<dyn KeyLayout>,
    pub(crate) ttl_secs: u64,
    pub(crate) timeout: Duration,
    /// Recorded in dead-letter entries.
    pub(crate) node_id: String,
    pub(crate) spool: Option<Arc<Spool>>,
    /// False from a failed pipeline until the spool is drained: meanwhile
    /// new batches go to the spool too, so Redis receives them in order.
    pub(crate) redis_up: AtomicBool,
    pub(crate) replay_points: usize,
    pub(crate) wake_replayer: tokio::sync::Notify,
    pub(crate) metrics: WriterMetrics,
}

/// The points of one batch that Redis refused for good, and its replies.
pub(crate) struct Refused {
    /// The refused points with the batch's name table and seq.
    pub batch: MetricBatch,
    pub reason: String,
}

pub(crate) async fn write_batches(
    store: &Store,
    client: &fred::clients::Client,
    batches: &[&MetricBatch],
    arrival: Arrival,
) -> Result<(), WriterError> {
    let (layout, metrics, timeout) = (store.layout.as_ref(), &store.metrics, store.timeout);
    let points: usize = batches.iter().map(|b| b.points.len()).sum();
    let mut commands = Vec::with_capacity(points * 2 + 8);
    layout.write_commands(
        batches,
        arrival,
        store.ttl_secs,
        broker_common::unix_now(),
        &mut commands,
    );
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, store.execute(client, commands)).await {
        Ok(r) => r,
        Err(_) => Err(WriterError::Timeout(timeout)),
    };
    layout.written(batches, result.is_ok(), broker_common::unix_now());
    metrics.pipelines.inc();
    metrics
        .pipeline_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.pipeline_points.observe(points as f64);
    match &result {
        Ok(()) => {
            metrics.points.inc_by(points as u64);
        }
        Err(e) => {
            metrics.pipeline_errors.inc();
            metrics.failed_points.inc_by(points as u64);
            // The caller says what happens next (spool, dead letters or an
            // error to the sender); the replayer fails here every backoff
            // step while Redis is down.
            tracing::debug!(points, error = %e, "redis pipeline failed");
        }
    }
    result
}

impl Store {
    /// Makes `batches` durable: in Redis, or in the spool when Redis is
    /// down (or its backlog is still being replayed); the points Redis
    /// refuses for good go to the dead-letter queue. One result per batch.
    pub(crate) async fn store(
        &self,
        batches: Vec<Arc<MetricBatch>>,
    ) -> Vec<Result<(), WriterError>> {
        let n = batches.len();
        if self.spool.is_some() && !self.redis_up.load(Ordering::Acquire) {
            return vec![self.spool_append(batches).await; n];
        }
        let refs: Vec<&MetricBatch> = batches.iter().map(|b| b.as_ref()).collect();
        let result = self.write_or_isolate(&refs, Arrival::Live).await;
        match (result, &self.spool) {
            (Ok(refused), _) => self.settle_refused(refused).await,
            (Err(e), None) => {
                tracing::warn!(batches = n, error = %e, "redis write failed and there is no spool; the senders will retry");
                vec![Err(e); n]
            }
            (Err(e), Some(spool)) => {
                if self.redis_up.swap(false, Ordering::AcqRel) {
                    self.metrics.redis_up.set(0);
                    tracing::warn!(error = %e, spool = %spool.path().display(), "redis write failed; spooling batches until redis answers again");
                }
                self.wake_replayer.notify_one();
                vec![self.spool_append(batches).await; n]
            }
        }
    }

    /// Writes `batches` to Redis. `Ok` once Redis answered every command,
    /// with, per batch, the points it refused for good (`None`: all
    /// stored); `Err` (transient) when Redis could not take the write.
    ///
    /// The first attempt is one pipeline for everything. Only when it meets
    /// a permanent error is the write redone with the commands of each
    /// (batch, host) grouped apart, one more pipeline, so the refused
    /// points are known host by host. Writes are idempotent, so redoing
    /// the commands that had succeeded is harmless.
    pub(crate) async fn write_or_isolate(
        &self,
        batches: &[&MetricBatch],
        arrival: Arrival,
    ) -> Result<Vec<Option<Refused>>, WriterError> {
        let client = self.pool.next().clone();
        match write_batches(self, &client, batches, arrival).await {
            Ok(()) => Ok(batches.iter().map(|_| None).collect()),
            Err(e) if e.is_permanent() => {
                tracing::warn!(error = %e, "redis refused part of a pipeline for good; writing it again host by host to set those points apart");
                self.isolate(&client, batches, arrival).await
            }
            Err(e) => Err(e),
        }
    }

    /// One pipeline in which every (batch, host) group's commands can be
    /// told apart: the groups Redis refused come back as [`Refused`]. A
    /// transient failure anywhere fails the whole write.
    pub(crate) async fn isolate(
        &self,
        client: &fred::clients::Client,
        batches: &[&MetricBatch],
        arrival: Arrival,
    ) -> Result<Vec<Option<Refused>>, WriterError> {
        struct Group {
            batch: usize,
            sub: MetricBatch,
            commands: std::ops::Range<usize>,
        }
        let now = broker_common::unix_now();
        let mut groups: Vec<Group> = Vec::new();
        let mut commands = Vec::new();
        for (bi, b) in batches.iter().enumerate() {
            let mut hosts: Vec<(&str, Vec<Point>)> = Vec::new();
            let mut index: std::collections::HashMap<&str, usize> = Default::default();
            for p in &b.points {
                let i = *index.entry(p.host_id.as_str()).or_insert_with(|| {
                    hosts.push((p.host_id.as_str(), Vec::new()));
                    hosts.len() - 1
                });
                hosts[i].1.push(p.clone());
            }
            for (_, points) in hosts {
                let sub = MetricBatch {
                    seq: b.seq,
                    metric_names: b.metric_names.clone(),
                    points,
                };
                let start = commands.len();
                self.layout
                    .write_commands(&[&sub], arrival, self.ttl_secs, now, &mut commands);
                groups.push(Group {
                    batch: bi,
                    sub,
                    commands: start..commands.len(),
                });
            }
        }
        let labels: Vec<String> = commands.iter().map(describe).collect();
        let started = Instant::now();
        let results =
            match tokio::time::timeout(self.timeout, self.execute_each(client, commands)).await {
                Ok(r) => r,
                Err(_) => Err(WriterError::Timeout(self.timeout)),
            };
        self.metrics.pipelines.inc();
        self.metrics
            .pipeline_seconds
            .observe(started.elapsed().as_secs_f64());
        let transient = match &results {
            Err(e) => Some(e.clone()),
            Ok(r) => r
                .iter()
                .find_map(|r| r.as_ref().err().filter(|e| !e.is_permanent()).cloned()),
        };
        if let Some(e) = transient {
            self.metrics.pipeline_errors.inc();
            for g in &groups {
                self.layout
                    .written(&[&g.sub], false, broker_common::unix_now());
            }
            return Err(e);
        }
        let results = results.expect("checked above");
        let mut out: Vec<Option<Refused>> = batches.iter().map(|_| None).collect();
        let (mut stored, mut refused_points) = (0u64, 0u64);
        for g in groups {
            let errors: Vec<String> = results[g.commands.clone()]
                .iter()
                .zip(&labels[g.commands.clone()])
                .filter_map(|(r, label)| match r {
                    Err(WriterError::RedisRejected(reply)) => Some(format!("{label}: {reply}")),
                    Err(e) => Some(format!("{label}: {e}")),
                    Ok(()) => None,
                })
                .collect();
            self.layout
                .written(&[&g.sub], errors.is_empty(), broker_common::unix_now());
            if errors.is_empty() {
                stored += g.sub.points.len() as u64;
                continue;
            }
            refused_points += g.sub.points.len() as u64;
            let r = out[g.batch].get_or_insert_with(|| Refused {
                batch: MetricBatch {
                    seq: g.sub.seq,
                    metric_names: g.sub.metric_names.clone(),
                    points: Vec::new(),
                },
                reason: String::new(),
            });
            r.batch.points.extend(g.sub.points);
            for e in errors {
                add_reason(&mut r.reason, &e);
            }
        }
        self.metrics.points.inc_by(stored);
        if refused_points > 0 {
            self.metrics.pipeline_errors.inc();
            self.metrics.failed_points.inc_by(refused_points);
        }
        Ok(out)
    }

    /// A dead-letter entry for `refused`, dead-lettered now by this writer.
    pub(crate) fn dead_letter_entry(&self, refused: Refused) -> DeadLetter {
        DeadLetter {
            dead_lettered_at_ms: broker_common::unix_now_ms(),
            reason: refused.reason,
            writer: self.node_id.clone(),
            batch: Some(refused.batch),
            ..Default::default()
        }
    }

    /// Completes a write Redis answered: batches with refused points fail
    /// with [`WriterError::RedisRejected`] when there is no spool, else
    /// those points go to the dead-letter queue and the batch is accepted
    /// (it is durable and replayable there).
    pub(crate) async fn settle_refused(
        &self,
        refused: Vec<Option<Refused>>,
    ) -> Vec<Result<(), WriterError>> {
        let Some(spool) = self.spool.clone() else {
            return refused
                .into_iter()
                .map(|r| match r {
                    None => Ok(()),
                    Some(r) => {
                        tracing::warn!(points = r.batch.points.len(), hosts = ?hosts_of(&r.batch, 5), reason = %r.reason, "redis refused points for good; no spool, so no dead-letter queue: refusing them to the sender");
                        Err(WriterError::RedisRejected(r.reason))
                    }
                })
                .collect();
        };
        let mut results: Vec<Result<(), WriterError>> = refused.iter().map(|_| Ok(())).collect();
        let mut which = Vec::new();
        let mut entries = Vec::new();
        for (i, r) in refused.into_iter().enumerate() {
            if let Some(r) = r {
                which.push(i);
                entries.push(self.dead_letter_entry(r));
            }
        }
        if entries.is_empty() {
            return results;
        }
        let points: usize = entries.iter().map(entry_points).sum();
        let logged: Vec<(Vec<String>, String)> = entries
            .iter()
            .map(|e| {
                (
                    hosts_of(e.batch.as_ref().expect("batch"), 5),
                    e.reason.clone(),
                )
            })
            .collect();
        let s = spool.clone();
        let result = tokio::task::spawn_blocking(move || s.dead_letter(&entries))
            .await
            .map_err(|e| SpoolError::Storage {
                path: spool.path().display().to_string(),
                message: format!("dead-letter task failed: {e}"),
            })
            .and_then(|r| r);
        self.refresh_spool_metrics();
        let error = match result {
            Ok(ids) => {
                self.metrics.dlq_points.inc_by(points as u64);
                for (id, (hosts, reason)) in ids.iter().zip(logged) {
                    tracing::warn!(id, ?hosts, %reason, "redis refused points for good; dead-lettered them (replay with `brokerctl dlq replay`)");
                }
                return results;
            }
            Err(e @ SpoolError::Full { .. }) => {
                self.metrics.spool_full.inc();
                WriterError::SpoolFull(format!(
                    "redis refused some points for good and the dead-letter queue cannot take them: {e}"
                ))
            }
            Err(e) => WriterError::Spool(format!(
                "redis refused some points for good and dead-lettering them failed: {e}"
            )),
        };
        tracing::error!(error = %error, points, "could not dead-letter refused points; their senders will retry");
        for i in which {
            results[i] = Err(error.clone());
        }
        results
    }

    pub(crate) fn refresh_spool_metrics(&self) {
        if let Some(spool) = &self.spool {
            let (records, bytes) = spool.usage();
            self.metrics.spool_records.set(records as i64);
            self.metrics.spool_bytes.set(bytes as i64);
            let (entries, bytes) = spool.dlq_usage();
            self.metrics.dlq_records.set(entries as i64);
            self.metrics.dlq_bytes.set(bytes as i64);
        }
    }

    pub(crate) async fn spool_append(
        &self,
        batches: Vec<Arc<MetricBatch>>,
    ) -> Result<(), WriterError> {
        let spool = self.spool.clone().expect("spool_append needs a spool");
        let points: usize = batches.iter().map(|b| b.points.len()).sum();
        let s = spool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let refs: Vec<&MetricBatch> = batches.iter().map(|b| b.as_ref()).collect();
            s.append(&refs)
        })
        .await
        .map_err(|e| WriterError::Spool(format!("spool task failed: {e}")))?;
        self.refresh_spool_metrics();
        match result {
            Ok(()) => {
                self.metrics.spooled_points.inc_by(points as u64);
                Ok(())
            }
            Err(e @ SpoolError::Full { .. }) => {
                self.metrics.spool_full.inc();
                Err(WriterError::SpoolFull(e.to_string()))
            }
            Err(e) => Err(WriterError::Spool(e.to_string())),
        }
    }
}

pub(crate) fn entry_points(e: &DeadLetter) -> usize {
    e.batch.as_ref().map_or(0, |b| b.points.len())
}

/// The first `max` distinct hosts of `batch`, in order.
pub(crate) fn hosts_of(batch: &MetricBatch, max: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    batch
        .points
        .iter()
        .filter(|p| seen.insert(p.host_id.as_str()))
        .take(max)
        .map(|p| p.host_id.clone())
        .collect()
}

/// Reasons kept per dead-letter entry; past this, a count.
pub(crate) const MAX_REASONS: usize = 4;

/// Adds `reason` to `reasons` ("; "-separated) unless already there.
pub(crate) fn add_reason(reasons: &mut String, reason: &str) {
    if reasons.split("; ").any(|r| r == reason) {
        return;
    }
    let kept = if reasons.is_empty() {
        0
    } else {
        reasons.matches("; ").count() + 1
    };
    if kept < MAX_REASONS {
        if !reasons.is_empty() {
            reasons.push_str("; ");
        }
        reasons.push_str(reason);
    } else if !reasons.ends_with("(and more)") {
        reasons.push_str("; (and more)");
    }
}

/// "ZADD monitor:index:metrics:{h}": a command and its key, for reasons.
pub(crate) fn describe(c: &Command) -> String {
    match c.args.first() {
        Some(key) => format!("{} {}", c.name, String::from_utf8_lossy(key)),
        None => c.name.to_string(),
    }
}

pub(crate) async fn sleep_or_stop(
    backoff: &mut impl Iterator<Item = Duration>,
    stop: &CancellationToken,
) {
    let d = backoff.next().unwrap_or(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

impl Store {
    /// Sends `commands` as one pipeline; fails if any command failed. When
    /// several failed, a transient failure wins over a permanent one: the
    /// write is then retried (spooled) as it is.
    pub(crate) async fn execute(
        &self,
        client: &fred::clients::Client,
        commands: Vec<Command>,
    ) -> Result<(), WriterError> {
        let mut permanent = None;
        for r in self.execute_each(client, commands).await? {
            match r {
                Ok(()) => {}
                Err(e) if e.is_permanent() => {
                    permanent.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        permanent.map_or(Ok(()), Err)
    }

    /// Sends `commands` as one pipeline (direct, or through fred's
    /// `client`) and returns each command's outcome. `Err` when Redis did
    /// not answer every command (connection lost...).
    pub(crate) async fn execute_each(
        &self,
        client: &fred::clients::Client,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<(), WriterError>>, WriterError> {
        if let Some(direct) = &self.direct {
            return Ok(direct
                .pipeline(&commands)
                .await
                .map_err(WriterError::Redis)?
                .into_iter()
                .map(|r| r.map_err(|reply| classify_reply(&reply)))
                .collect());
        }
        Ok(storage_layout::exec::pipeline_results(client, commands)
            .await
            .map_err(WriterError::Redis)?
            .into_iter()
            .map(|r| r.map(|_| ()).map_err(|e| classify(&e)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::Point;

    #[test]
    fn reasons_are_deduplicated_and_bounded() {
        let mut r = String::new();
        add_reason(&mut r, "ZADD a: WRONGTYPE x");
        add_reason(&mut r, "ZADD a: WRONGTYPE x");
        add_reason(&mut r, "HSET b: WRONGTYPE x");
        assert_eq!(r, "ZADD a: WRONGTYPE x; HSET b: WRONGTYPE x");
        for i in 0..10 {
            add_reason(&mut r, &format!("HSET k{i}: ERR"));
        }
        assert_eq!(r.matches("; ").count(), MAX_REASONS);
        assert!(r.ends_with("; (and more)"), "{r}");
    }

    #[test]
    fn hosts_are_listed_once_in_order() {
        let p = |h: &str| Point {
            host_id: h.into(),
            ..Default::default()
        };
        let b = MetricBatch {
            points: vec![p("b"), p("a"), p("b"), p("c")],
            ..Default::default()
        };
        assert_eq!(hosts_of(&b, 5), vec!["b", "a", "c"]);
        assert_eq!(hosts_of(&b, 2), vec!["b", "a"]);
    }
}
