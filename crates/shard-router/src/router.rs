use crate::metrics::RouterMetrics;
use backon::{ExponentialBuilder, Retryable};
use broker_common::config::{RetryConfig, RouterConfig};
use broker_proto::v1::{MetricBatch, Point, PointError, RejectReason};
use hash_ring::{HashRing, NodeSpec, RingError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage_writer::WriterClient;
use tonic::{Code, Status};

/// Groups points by owner and forwards each group to its writer.
pub struct Router {
    ring: HashRing,
    /// Aligned with `ring.nodes()`.
    writers: Vec<WriterClient>,
    epoch: u64,
    write_timeout: Duration,
    retry: RetryConfig,
    metrics: RouterMetrics,
}

impl Router {
    pub fn new(
        config: &RouterConfig,
        writers: Vec<(NodeSpec, WriterClient)>,
        metrics: RouterMetrics,
    ) -> Result<Self, RingError> {
        let ring = HashRing::new(config.ring(), writers.iter().map(|(n, _)| n.clone()))?;
        let mut by_id: std::collections::HashMap<String, WriterClient> =
            writers.into_iter().map(|(n, c)| (n.id, c)).collect();
        let writers = ring
            .nodes()
            .iter()
            .map(|n| by_id.remove(&n.id).expect("every ring node has a client"))
            .collect();
        Ok(Self {
            ring,
            writers,
            // Static membership: one epoch for the life of the process.
            epoch: 1,
            write_timeout: config.write_timeout,
            retry: config.retry.clone(),
            metrics,
        })
    }

    pub fn ring(&self) -> &HashRing {
        &self.ring
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Stores the points of `batch`; returns the ones that could not be
    /// stored (by index into `batch.points`). Every point not returned is
    /// durable.
    pub async fn route(&self, batch: MetricBatch) -> Vec<PointError> {
        let total = batch.points.len();
        self.metrics.points.inc_by(total as u64);
        self.metrics.batch_points.observe(total as f64);
        let n = self.writers.len();
        let mut groups: Vec<(Vec<u32>, Vec<Point>)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, p) in batch.points.into_iter().enumerate() {
            let owner = self
                .ring
                .owner_index_of_point(&p.host_id, p.timestamp)
                .expect("the ring has at least one writer");
            groups[owner].0.push(i as u32);
            groups[owner].1.push(p);
        }
        let names = batch.metric_names;
        let forwards = groups
            .into_iter()
            .enumerate()
            .filter(|(_, (idx, _))| !idx.is_empty())
            .map(|(owner, (idx, points))| {
                let sub = Arc::new(MetricBatch {
                    seq: 0,
                    metric_names: names.clone(),
                    points,
                });
                async move {
                    let r = self.forward(owner, sub).await;
                    (idx, r)
                }
            });
        let mut failed = Vec::new();
        for (idx, result) in futures::future::join_all(forwards).await {
            if let Err(status) = result {
                self.metrics.failed_points.inc_by(idx.len() as u64);
                for i in idx {
                    failed.push(PointError {
                        index: i,
                        reason: RejectReason::Unavailable as i32,
                        message: status.message().to_string(),
                        retryable: true,
                    });
                }
            }
        }
        failed.sort_by_key(|e| e.index);
        failed
    }

    async fn forward(&self, owner: usize, batch: Arc<MetricBatch>) -> Result<(), Status> {
        let writer = &self.writers[owner];
        let id = &self.ring.nodes()[owner].id;
        let started = Instant::now();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.initial_backoff)
            .with_max_delay(self.retry.max_backoff)
            .with_max_times(self.retry.max_retries)
            .with_jitter();
        let result = (|| {
            let batch = batch.clone();
            async move { writer.write(batch, self.epoch, self.write_timeout).await }
        })
        .retry(backoff)
        .when(retryable)
        .notify(|e: &Status, after: Duration| {
            self.metrics.retries.get_or_create(&vec![("writer", id.clone())]).inc();
            tracing::warn!(writer = %id, code = ?e.code(), error = %e.message(), retry_in = ?after, "forward failed, retrying");
        })
        .await;
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
        result.map_err(|e| Status::new(e.code(), format!("writer {id}: {}", e.message())))
    }
}

/// Transient failures worth another attempt; writes are idempotent, so a
/// retry after a timeout cannot corrupt data.
pub fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
            | Code::Internal
    )
}
