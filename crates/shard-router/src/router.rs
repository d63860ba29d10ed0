//! Grouping points by writer, forwarding the groups, and failing over.

use crate::error::RouterError;
use crate::health::{Health, WriterStatus};
use crate::metrics::RouterMetrics;
use backon::{ExponentialBuilder, Retryable};
use broker_common::config::{RetryConfig, RouterConfig};
use broker_proto::v1::{MetricBatch, Point, PointError, RejectReason};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hash_ring::{HashRing, NodeSpec, RingError};
use internal_clients::WriterClient;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::Status;

/// Groups points by writer and forwards each group to it; moves the share
/// of a down or failing writer to its ring successors.
pub struct Router {
    /// The ring and writers of the current epoch; replaced as a whole when
    /// cluster-ctl commits a new epoch ([`Router::set_topology`]). A batch
    /// is routed under the topology it started with.
    topology: RwLock<Arc<Topology>>,
    /// The epoch of `topology`, for callers that wait for a newer one.
    epoch_tx: watch::Sender<u64>,
    config: RouterConfig,
    write_timeout: Duration,
    retry: RetryConfig,
    metrics: RouterMetrics,
}

/// One epoch's ring and its writers.
pub struct Topology {
    pub ring: HashRing,
    /// Aligned with `ring.nodes()`.
    writers: Vec<WriterClient>,
    /// Aligned with `ring.nodes()`; dropping it stops the probes.
    health: Health,
    pub epoch: u64,
}

/// How often a batch whose points came back stale is routed again (each
/// time under a newer epoch).
const MAX_REROUTES: usize = 3;
/// How long a router waits for an epoch newer than the one a writer called
/// stale before routing again anyway.
const EPOCH_WAIT: Duration = Duration::from_secs(2);

/// Points on their way to one writer.
struct Job {
    /// Ring index of the writer they go to.
    target: usize,
    /// Writers that already failed them, in order.
    tried: Vec<usize>,
    /// Indexes into the routed batch's points.
    idx: Vec<u32>,
    points: Vec<Point>,
}

/// The first writer in `owners` (a point's ring fallback order, see
/// [`HashRing::owners_of_point`]) that is up, if any. `up` is indexed by
/// ring index.
pub fn pick(owners: impl IntoIterator<Item = usize>, up: &[bool]) -> Option<usize> {
    owners.into_iter().find(|&i| up[i])
}

/// Where a point goes after the writers in `tried` failed it: the next
/// writer in its ring order that is up and not yet tried.
pub fn failover_target(
    ring: &HashRing,
    host_id: &str,
    timestamp: i64,
    tried: &[usize],
    up: &[bool],
) -> Option<usize> {
    pick(
        ring.owners_of_point(host_id, timestamp)
            .filter(|i| !tried.contains(i)),
        up,
    )
}

impl Router {
    /// A router over `writers` (static membership, epoch 1); every writer
    /// starts up. Must be called within a tokio runtime if a writer is
    /// remote (its channel connects lazily on that runtime).
    pub fn new(
        config: &RouterConfig,
        writers: Vec<(NodeSpec, WriterClient)>,
        metrics: RouterMetrics,
    ) -> Result<Self, RingError> {
        Self::with_epoch(config, writers, metrics, 1)
    }

    /// As [`Router::new`], starting at `epoch`.
    pub fn with_epoch(
        config: &RouterConfig,
        writers: Vec<(NodeSpec, WriterClient)>,
        metrics: RouterMetrics,
        epoch: u64,
    ) -> Result<Self, RingError> {
        let topology = Topology::build(config, config.ring(), writers, epoch, &metrics)?;
        metrics.epoch.set(epoch as i64);
        Ok(Self {
            topology: RwLock::new(Arc::new(topology)),
            epoch_tx: watch::channel(epoch).0,
            config: config.clone(),
            write_timeout: config.write_timeout,
            retry: config.retry.clone(),
            metrics,
        })
    }

    /// Replaces the ring with the one of `epoch` (ignored unless newer).
    /// Writers keep their clients across epochs when the caller passes the
    /// same ones; their up/down state starts afresh.
    pub fn set_topology(
        &self,
        epoch: u64,
        ring: hash_ring::RingConfig,
        writers: Vec<(NodeSpec, WriterClient)>,
    ) -> Result<(), RingError> {
        if epoch <= self.epoch() {
            return Ok(());
        }
        let old = self.topology();
        let topology = Topology::build(&self.config, ring, writers, epoch, &self.metrics)?;
        for n in old.ring.nodes() {
            if !topology.ring.nodes().iter().any(|m| m.id == n.id) {
                self.metrics
                    .writer_up
                    .remove(&vec![("writer", n.id.clone())]);
            }
        }
        tracing::info!(
            epoch,
            writers = ?topology.ring.nodes().iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            "ring changed"
        );
        *self.topology.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(topology);
        self.epoch_tx.send_replace(epoch);
        self.metrics.epoch.set(epoch as i64);
        Ok(())
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The writer clients of the current topology by id, to reuse them.
    pub fn writer_clients(&self) -> Vec<(String, WriterClient)> {
        let t = self.topology();
        t.ring
            .nodes()
            .iter()
            .map(|n| n.id.clone())
            .zip(t.writers.iter().cloned())
            .collect()
    }

    pub fn ring(&self) -> HashRing {
        self.topology().ring.clone()
    }

    pub fn epoch(&self) -> u64 {
        *self.epoch_tx.borrow()
    }

    /// Every writer's health, in ring order (`ring().nodes()`).
    pub fn writer_status(&self) -> Vec<WriterStatus> {
        self.topology().health.status()
    }

    /// Waits until the epoch is above `epoch`, at most `timeout`.
    async fn wait_epoch_above(&self, epoch: u64, timeout: Duration) {
        let mut rx = self.epoch_tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|e| *e > epoch)).await;
    }

    /// Stores the points of `batch`; returns the ones that could not be
    /// stored (by index into `batch.points`). Every point not returned is
    /// durable.
    ///
    /// A point goes to its ring owner, or, while the owner is down, to the
    /// first writer after it in ring order that is up (to the owner anyway
    /// if none is). When a forward fails after its retries with a transient
    /// status, its points go on to the next writer up in their ring order
    /// that has not failed them yet; they come back as `UNAVAILABLE`
    /// (retryable) only when no such writer is left.
    pub async fn route(&self, batch: MetricBatch) -> Vec<PointError> {
        let total = batch.points.len();
        self.metrics.points.inc_by(total as u64);
        self.metrics.batch_points.observe(total as f64);
        let names = batch.metric_names.clone();
        let mut topo = self.topology();
        let (mut failed, mut stale) = self.route_in(&topo, batch).await;
        // Points a writer called stale: route them again under a newer
        // epoch (each writer owns its range only in the newest one).
        for _ in 0..MAX_REROUTES {
            if stale.is_empty() {
                break;
            }
            self.wait_epoch_above(topo.epoch, EPOCH_WAIT).await;
            topo = self.topology();
            tracing::info!(
                points = stale.len(),
                epoch = topo.epoch,
                "re-routing points a writer called stale"
            );
            self.metrics
                .stale_rerouted_points
                .inc_by(stale.len() as u64);
            let (idx, points): (Vec<u32>, Vec<Point>) = stale.into_iter().unzip();
            let (f, s) = self
                .route_in(
                    &topo,
                    MetricBatch {
                        seq: 0,
                        metric_names: names.clone(),
                        points,
                    },
                )
                .await;
            failed.extend(f.into_iter().map(|mut e| {
                e.index = idx[e.index as usize];
                e
            }));
            stale = s.into_iter().map(|(i, p)| (idx[i as usize], p)).collect();
        }
        if !stale.is_empty() {
            let idx: Vec<u32> = stale.into_iter().map(|(i, _)| i).collect();
            self.fail(&mut failed, idx, "ring changed while routing; resend", true);
        }
        failed.sort_by_key(|e| e.index);
        failed
    }

    /// Routes `batch` under `topo`. Returns the points that failed, and
    /// those a writer refused as routed under a stale epoch (with their
    /// index, for another round).
    async fn route_in(
        &self,
        topo: &Topology,
        batch: MetricBatch,
    ) -> (Vec<PointError>, Vec<(u32, Point)>) {
        if topo.ring.is_empty() {
            let mut failed = Vec::new();
            let message = format!(
                "no storage-writer is online in ring epoch {}; retry later",
                topo.epoch
            );
            self.fail(
                &mut failed,
                (0..batch.points.len() as u32).collect(),
                &message,
                true,
            );
            return (failed, Vec::new());
        }
        let n = topo.writers.len();
        let up = topo.health.up_if_any_down();
        let mut groups: Vec<(Vec<u32>, Vec<Point>)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        let mut rerouted = 0u64;
        for (i, p) in batch.points.into_iter().enumerate() {
            let owner = topo
                .ring
                .owner_index_of_point(&p.host_id, p.timestamp)
                .expect("the ring has at least one writer");
            let target = match &up {
                Some(up) if !up[owner] => {
                    pick(topo.ring.owners_of_point(&p.host_id, p.timestamp), up)
                        // Nobody is up: the owner is as good a bet as any.
                        .unwrap_or(owner)
                }
                _ => owner,
            };
            rerouted += u64::from(target != owner);
            groups[target].0.push(i as u32);
            groups[target].1.push(p);
        }
        self.metrics.rerouted_points.inc_by(rerouted);
        let names = batch.metric_names;
        let mut inflight: FuturesUnordered<_> = groups
            .into_iter()
            .enumerate()
            .filter(|(_, (idx, _))| !idx.is_empty())
            .map(|(target, (idx, points))| {
                self.deliver(
                    topo,
                    Job {
                        target,
                        tried: Vec::new(),
                        idx,
                        points,
                    },
                    &names,
                )
            })
            .collect();
        let mut failed = Vec::new();
        let mut stale = Vec::new();
        while let Some((job, result)) = inflight.next().await {
            let error = match result {
                // Stored, but for the points the writer refused for what
                // they are (a host over a cardinality limit).
                Ok(refused) => {
                    failed.extend(refused.into_iter().map(|mut e| {
                        e.index = job.idx[e.index as usize];
                        e
                    }));
                    continue;
                }
                Err(error) => error,
            };
            if error.stale_epoch().is_some() {
                stale.extend(job.idx.into_iter().zip(job.points));
                continue;
            }
            if !error.retryable() {
                // The batch itself was refused: another writer would too.
                self.fail(&mut failed, job.idx, &error.to_string(), false);
                continue;
            }
            let mut tried = job.tried;
            tried.push(job.target);
            let up = topo.health.up_all();
            let mut next: Vec<(Vec<u32>, Vec<Point>)> =
                (0..n).map(|_| (Vec::new(), Vec::new())).collect();
            let mut stuck = Vec::new();
            let mut rerouted = 0u64;
            for (i, p) in job.idx.into_iter().zip(job.points) {
                match failover_target(&topo.ring, &p.host_id, p.timestamp, &tried, &up) {
                    Some(t) => {
                        let owner = topo.ring.owner_index_of_point(&p.host_id, p.timestamp);
                        rerouted += u64::from(owner != Some(t));
                        next[t].0.push(i);
                        next[t].1.push(p);
                    }
                    None => stuck.push(i),
                }
            }
            self.metrics.rerouted_points.inc_by(rerouted);
            if !stuck.is_empty() {
                let tried_ids: Vec<&str> = tried
                    .iter()
                    .map(|&t| topo.ring.nodes()[t].id.as_str())
                    .collect();
                let message = format!(
                    "no writer could store the point, tried writer {}; last error: {}",
                    tried_ids.join(", writer "),
                    error
                );
                self.fail(&mut failed, stuck, &message, true);
            }
            for (target, (idx, points)) in next.into_iter().enumerate() {
                if idx.is_empty() {
                    continue;
                }
                tracing::info!(
                    from = %topo.ring.nodes()[*tried.last().expect("one tried")].id,
                    to = %topo.ring.nodes()[target].id,
                    points = idx.len(),
                    "failing over"
                );
                inflight.push(self.deliver(
                    topo,
                    Job {
                        target,
                        tried: tried.clone(),
                        idx,
                        points,
                    },
                    &names,
                ));
            }
        }
        (failed, stale)
    }

    /// `retryable` is false when a writer refused the points for good
    /// (e.g. Redis rejected them and the writer has no dead-letter queue):
    /// resending would fail the same way.
    fn fail(&self, failed: &mut Vec<PointError>, idx: Vec<u32>, message: &str, retryable: bool) {
        self.metrics.failed_points.inc_by(idx.len() as u64);
        failed.extend(idx.into_iter().map(|i| PointError {
            index: i,
            reason: RejectReason::Unavailable as i32,
            message: message.to_string(),
            retryable,
        }));
    }

    /// Forwards `job`'s points to its target; gives the job back (points
    /// included) with the outcome.
    async fn deliver(
        &self,
        topo: &Topology,
        mut job: Job,
        names: &[String],
    ) -> (Job, Result<Vec<PointError>, RouterError>) {
        let batch = Arc::new(MetricBatch {
            seq: 0,
            metric_names: names.to_vec(),
            points: std::mem::take(&mut job.points),
        });
        let primary = self.forward(topo, job.target, &job.tried, batch.clone());
        let hedge_delay =
            topo.health
                .hedge_delay(job.target, self.config.hedge.min_delay, self.write_timeout);
        let result = match hedge_delay {
            Some(delay) => self.hedged(topo, &job, &batch, primary, delay).await,
            None => primary.await,
        };
        if result.is_err() {
            // Every attempt has ended, so this is normally the last
            // reference (a local write that timed out may still hold one).
            job.points = Arc::try_unwrap(batch)
                .map(|b| b.points)
                .unwrap_or_else(|b| b.points.clone());
        }
        (job, result)
    }

    /// Runs `primary` (the forward of `job`); if it has not answered after
    /// `delay`, also sends the same points to their next ring owners that
    /// are up (see [`crate::hedge`]). The first of the two to store every
    /// point decides; the other is dropped (cancelled). If one fails, the
    /// other still decides.
    async fn hedged(
        &self,
        topo: &Topology,
        job: &Job,
        batch: &Arc<MetricBatch>,
        primary: impl Future<Output = Result<Vec<PointError>, RouterError>>,
        delay: Duration,
    ) -> Result<Vec<PointError>, RouterError> {
        let mut primary = std::pin::pin!(primary);
        tokio::select! {
            r = &mut primary => return r,
            _ = tokio::time::sleep(delay) => {}
        }
        let mut tried = job.tried.clone();
        tried.push(job.target);
        let up = topo.health.up_all();
        // Per writer: the positions in `batch` of its points, and them.
        let mut groups: Vec<(Vec<u32>, Vec<Point>)> =
            vec![(Vec::new(), Vec::new()); topo.writers.len()];
        for (i, p) in batch.points.iter().enumerate() {
            match failover_target(&topo.ring, &p.host_id, p.timestamp, &tried, &up) {
                Some(t) => {
                    groups[t].0.push(i as u32);
                    groups[t].1.push(p.clone());
                }
                // Nowhere else to send this point: wait for the writer.
                None => return primary.await,
            }
        }
        let id = topo.ring.nodes()[job.target].id.clone();
        self.metrics.hedged_points.inc_by(batch.points.len() as u64);
        tracing::debug!(writer = %id, after = ?delay, points = batch.points.len(), "hedging a slow forward");
        let copies = groups
            .into_iter()
            .enumerate()
            .filter(|(_, (_, points))| !points.is_empty())
            .map(|(t, (positions, points))| {
                let copy = Arc::new(MetricBatch {
                    seq: 0,
                    metric_names: batch.metric_names.clone(),
                    points,
                });
                let tried = tried.clone();
                async move {
                    // The copy's refusals, named by position in `batch`.
                    let refused = self.forward(topo, t, &tried, copy).await?;
                    Ok::<_, RouterError>(
                        refused
                            .into_iter()
                            .map(|mut e| {
                                e.index = positions[e.index as usize];
                                e
                            })
                            .collect::<Vec<_>>(),
                    )
                }
            });
        let mut hedge = std::pin::pin!(futures::future::try_join_all(copies));
        let joined = |r: Vec<Vec<PointError>>| {
            let mut all: Vec<PointError> = r.into_iter().flatten().collect();
            all.sort_by_key(|e| e.index);
            all
        };
        let outcome = |o: &str| {
            self.metrics
                .hedges
                .get_or_create(&vec![("writer", id.clone()), ("outcome", o.to_string())])
                .inc();
        };
        tokio::select! {
            r = &mut primary => match r {
                Ok(refused) => {
                    outcome("won");
                    Ok(refused)
                }
                // The writer failed: the copy decides.
                Err(e) => hedge.await.map(joined).map_err(|_| e),
            },
            r = &mut hedge => match r {
                Ok(r) => {
                    outcome("lost");
                    topo.health.hedge_lost(job.target, self.config.hedge.eject_after);
                    Ok(joined(r))
                }
                Err(_) => {
                    outcome("failed");
                    primary.await
                }
            },
        }
    }

    /// One forward with retries. Retries stop early when the writer gets
    /// marked down meanwhile and another writer is up to fail over to.
    async fn forward(
        &self,
        topo: &Topology,
        target: usize,
        tried: &[usize],
        batch: Arc<MetricBatch>,
    ) -> Result<Vec<PointError>, RouterError> {
        let writer = &topo.writers[target];
        let id = &topo.ring.nodes()[target].id;
        let started = Instant::now();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.initial_backoff)
            .with_max_delay(self.retry.max_backoff)
            .with_max_times(self.retry.max_retries)
            .with_jitter();
        let result = (|| {
            let batch = batch.clone();
            async move {
                let attempt = Instant::now();
                let r = writer.write(batch, topo.epoch, self.write_timeout).await;
                match &r {
                    Ok(_) => {
                        topo.health.observe(target, attempt.elapsed());
                        topo.health.answered(target);
                    }
                    Err(e) if retryable(e) => topo.health.attempt_failed(target),
                    // Success, or a refusal: either way the writer answered.
                    _ => topo.health.answered(target),
                }
                r
            }
        })
        .retry(backoff)
        .when(|e| retryable(e) && (topo.health.is_up(target) || !topo.other_writer_up(target, tried)))
        .notify(|e: &Status, after: Duration| {
            self.metrics.retries.get_or_create(&vec![("writer", id.clone())]).inc();
            tracing::warn!(writer = %id, code = ?e.code(), error = %e.message(), retry_in = ?after, "forward failed, retrying");
        })
        .await;
        if let Err(e) = &result
            && retryable(e)
        {
            topo.health.forward_failed(target);
        }
        self.metrics
            .forward_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.metrics
            .forwards
            .get_or_create(&vec![
                ("writer", id.clone()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
        result.map_err(|status| RouterError::Writer {
            writer: id.clone(),
            status,
        })
    }
}

impl Topology {
    fn build(
        config: &RouterConfig,
        ring: hash_ring::RingConfig,
        writers: Vec<(NodeSpec, WriterClient)>,
        epoch: u64,
        metrics: &RouterMetrics,
    ) -> Result<Self, RingError> {
        let ring = HashRing::new(ring, writers.iter().map(|(n, _)| n.clone()))?;
        let mut by_id: std::collections::HashMap<String, WriterClient> =
            writers.into_iter().map(|(n, c)| (n.id, c)).collect();
        let writers: Vec<WriterClient> = ring
            .nodes()
            .iter()
            .map(|n| by_id.remove(&n.id).expect("every ring node has a client"))
            .collect();
        let health = Health::new(
            ring.nodes()
                .iter()
                .map(|n| n.id.as_str())
                .zip(writers.iter()),
            |id| {
                metrics
                    .writer_up
                    .get_or_create(&vec![("writer", id.to_string())])
                    .clone()
            },
            config.retry.initial_backoff,
            config.write_timeout,
        );
        Ok(Self {
            ring,
            writers,
            health,
            epoch,
        })
    }

    /// True when a writer other than `target` and those in `tried` is up.
    fn other_writer_up(&self, target: usize, tried: &[usize]) -> bool {
        (0..self.writers.len()).any(|i| i != target && !tried.contains(&i) && self.health.is_up(i))
    }
}

pub use internal_clients::retryable;

#[cfg(test)]
mod tests {
    use super::*;
    use hash_ring::{HashAlgorithm, RingConfig};

    fn ring(n: usize) -> HashRing {
        HashRing::new(
            RingConfig {
                vnodes: 500,
                hash: HashAlgorithm::Xxh3,
            },
            (1..=n).map(|i| NodeSpec::new(format!("w{i}"))),
        )
        .unwrap()
    }

    fn keys() -> impl Iterator<Item = (String, i64)> {
        (0..200).flat_map(|h| (0..25).map(move |k| (format!("host-{h}"), 1_700_000_000 + 5 * k)))
    }

    #[test]
    fn pick_takes_the_first_writer_up_in_ring_order() {
        assert_eq!(pick([2, 0, 1], &[true, true, true]), Some(2));
        assert_eq!(pick([2, 0, 1], &[true, true, false]), Some(0));
        assert_eq!(pick([2, 0, 1], &[false, true, false]), Some(1));
        assert_eq!(pick([2, 0, 1], &[false, false, false]), None);
        assert_eq!(pick([], &[true]), None);
    }

    #[test]
    fn with_every_writer_up_each_point_goes_to_its_owner() {
        let ring = ring(4);
        let up = [true; 4];
        for (h, ts) in keys() {
            assert_eq!(
                pick(ring.owners_of_point(&h, ts), &up),
                ring.owner_index_of_point(&h, ts)
            );
        }
    }

    /// The share of down writers spreads over the others, and goes where
    /// it would if they left the ring; nothing else moves.
    #[test]
    fn a_down_writers_share_spreads_over_its_ring_successors() {
        let ring = ring(5);
        for down in [vec![1], vec![0, 3]] {
            let up: Vec<bool> = (0..5).map(|i| !down.contains(&i)).collect();
            let without = HashRing::new(
                ring.config(),
                ring.nodes()
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| up[*i])
                    .map(|(_, n)| n.clone()),
            )
            .unwrap();
            let mut moved_to = [0usize; 5];
            let mut moved = 0;
            for (h, ts) in keys() {
                let owner = ring.owner_index_of_point(&h, ts).unwrap();
                let target = pick(ring.owners_of_point(&h, ts), &up).unwrap();
                assert!(up[target]);
                assert_eq!(
                    ring.nodes()[target].id,
                    without.owner_of_point(&h, ts).unwrap().id
                );
                if up[owner] {
                    assert_eq!(target, owner, "{h}:{ts} moved off a writer that is up");
                } else {
                    moved_to[target] += 1;
                    moved += 1;
                }
            }
            assert!(moved > 0);
            for (i, &m) in moved_to.iter().enumerate() {
                if up[i] {
                    // ideal: moved / (writers up); one writer taking it all fails
                    let ideal = moved as f64 / up.iter().filter(|u| **u).count() as f64;
                    assert!(
                        m as f64 > 0.4 * ideal && (m as f64) < 1.8 * ideal,
                        "down {down:?}: writer {i} took {m} of {moved}"
                    );
                } else {
                    assert_eq!(m, 0);
                }
            }
        }
    }

    #[test]
    fn failover_skips_writers_tried_and_down() {
        let ring = ring(4);
        for (h, ts) in keys().take(200) {
            let order: Vec<usize> = ring.owners_of_point(&h, ts).collect();
            let all_up = [true; 4];
            assert_eq!(failover_target(&ring, &h, ts, &[], &all_up), Some(order[0]));
            assert_eq!(
                failover_target(&ring, &h, ts, &order[..1], &all_up),
                Some(order[1])
            );
            let mut up = all_up;
            up[order[1]] = false;
            assert_eq!(
                failover_target(&ring, &h, ts, &order[..1], &up),
                Some(order[2])
            );
            // a writer not tried but down is skipped too; the tried owner is not retried
            assert_eq!(
                failover_target(&ring, &h, ts, &[order[0], order[2], order[3]], &up),
                None
            );
            assert_eq!(failover_target(&ring, &h, ts, &order, &all_up), None);
        }
    }

    /// A loopback endpoint that refuses connections, its port held for the
    /// rest of the test process so nothing else can take it.
    fn dead_endpoint() -> String {
        let (endpoint, socket) =
            broker_common::serve::refusing_loopback_endpoint().expect("a loopback port");
        std::mem::forget(socket);
        endpoint
    }

    fn point(host: &str, ts: i64) -> Point {
        Point {
            millis: 0,
            host_id: host.to_string(),
            timestamp: ts,
            values: vec![1.0],
            name_index: vec![],
            labels: Default::default(),
        }
    }

    fn encode(registry: &prometheus_client::registry::Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    /// Two writers on loopback ports nothing listens on: points of `a` fail
    /// over to `b` and come back retryable naming both; both are marked
    /// down; with both down, points still go to their owner (and are not
    /// failed over to a writer that is down); dropping the router stops the
    /// probes.
    #[tokio::test]
    async fn points_no_writer_can_take_come_back_unavailable_naming_the_writers_tried() {
        let config = RouterConfig {
            write_timeout: Duration::from_secs(2),
            retry: RetryConfig {
                max_retries: 1,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
            },
            ..RouterConfig::default()
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = RouterMetrics::new(&mut registry);
        let writers = ["a", "b"]
            .map(|id| {
                (
                    NodeSpec::new(id),
                    WriterClient::remote(&dead_endpoint(), &Default::default()).unwrap(),
                )
            })
            .into();
        let router = Router::new(&config, writers, metrics).unwrap();
        assert!(encode(&registry).contains("broker_router_writer_up{writer=\"a\"} 1"));
        let ts = 1_700_000_000;
        let batch = |hosts: &[String]| MetricBatch {
            seq: 1,
            metric_names: vec!["m".into()],
            points: hosts.iter().map(|h| point(h, ts)).collect(),
        };
        // Points owned by `a` only, so `b` is up when `a` fails them.
        let owned_by_a: Vec<String> = (0..100)
            .map(|i| format!("h{i}"))
            .filter(|h| router.ring().owner_of_point(h, ts).unwrap().id == "a")
            .take(10)
            .collect();
        assert_eq!(owned_by_a.len(), 10);
        let failed = router.route(batch(&owned_by_a)).await;
        assert_eq!(failed.len(), 10);
        for (i, e) in failed.iter().enumerate() {
            assert_eq!(e.index, i as u32);
            assert!(e.retryable);
            assert_eq!(e.reason, RejectReason::Unavailable as i32);
            assert!(
                e.message.starts_with(
                    "no writer could store the point, tried writer a, writer b; last error: writer b: "
                ),
                "{}",
                e.message
            );
        }
        assert!(router.writer_status().iter().all(|s| !s.up));
        let text = encode(&registry);
        for id in ["a", "b"] {
            let line = format!("broker_router_writer_up{{writer=\"{id}\"}} 0");
            assert!(text.contains(&line), "{text}");
        }
        // each point was sent once to a writer other than its owner
        assert!(
            text.contains("broker_router_rerouted_points_total 10"),
            "{text}"
        );

        // Nobody up: each point goes to its owner only, and fails naming it.
        let mixed: Vec<String> = (0..8).map(|i| format!("h{i}")).collect();
        let failed = router.route(batch(&mixed)).await;
        assert_eq!(failed.len(), 8);
        for (e, h) in failed.iter().zip(&mixed) {
            let ring = router.ring();
            let owner = ring.owner_of_point(h, ts).unwrap();
            let tried = format!("tried writer {};", owner.id);
            assert!(e.message.contains(&tried), "{}", e.message);
        }

        let probes = router.topology().health.shared_weak();
        assert!(probes.upgrade().is_some());
        drop(router);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while probes.upgrade().is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "probes still running after the router was dropped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
