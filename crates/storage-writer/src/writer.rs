//! The batcher: collects write jobs into Redis pipelines and completes each
//! job once its points are durable in the [`Store`]: confirmed by Redis, or,
//! when Redis cannot take them, appended and fsync'ed to the spool (then
//! replayed into Redis in order by the replayer task, [`crate::replay`]).

use crate::error::WriterError;
use crate::metrics::WriterMetrics;
use crate::spool::Spool;
use broker_common::config::WriterConfig;
use broker_proto::v1::MetricBatch;
use fred::clients::Pool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use storage_layout::KeyLayout;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use crate::store::Store;
struct Job {
    batch: Arc<MetricBatch>,
    done: oneshot::Sender<Result<(), WriterError>>,
    _queued: OwnedSemaphorePermit,
}

/// Accepts batches and stores them in Redis. Cheap to share behind an `Arc`.
pub struct Writer {
    tx: mpsc::UnboundedSender<Job>,
    queued: Arc<Semaphore>,
    max_queued: usize,
    metrics: WriterMetrics,
    stop: CancellationToken,
    batcher: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    replayer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// Seals open chunks (the chunked layout); idle for the seed layout.
    maintainer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    store: Arc<Store>,
}

struct Batcher {
    rx: mpsc::UnboundedReceiver<Job>,
    store: Arc<Store>,
    max_points: usize,
    max_delay: Duration,
    pipelines: Arc<Semaphore>,
    max_pipelines: usize,
    metrics: WriterMetrics,
    stop: CancellationToken,
}

impl Writer {
    /// Starts the batcher on an already-created (possibly still connecting)
    /// Redis pool. `node_id` names this writer in dead-letter entries.
    pub fn start(
        config: &WriterConfig,
        node_id: &str,
        ttl: Duration,
        pool: Pool,
        layout: Arc<dyn KeyLayout>,
        spool: Option<Arc<Spool>>,
        metrics: WriterMetrics,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let spool_empty = spool.as_ref().is_none_or(|s| s.is_empty());
        if let Some(s) = &spool {
            let (records, bytes) = s.usage();
            metrics.spool_records.set(records as i64);
            metrics.spool_bytes.set(bytes as i64);
            if records > 0 {
                tracing::info!(records, bytes, path = %s.path().display(), "spool holds batches from a previous run; replaying them into redis");
            }
            let (entries, bytes) = s.dlq_usage();
            metrics.dlq_records.set(entries as i64);
            metrics.dlq_bytes.set(bytes as i64);
            if entries > 0 {
                tracing::warn!(entries, bytes, path = %s.path().display(), "the dead-letter queue holds points redis refused; list them with `brokerctl dlq list`");
            }
        }
        metrics.redis_up.set(i64::from(spool_empty));
        let direct = if config.direct_pipelines {
            storage_layout::direct::DirectPipes::new(&pool)
        } else {
            None
        };
        let store = Arc::new(Store {
            direct,
            pool,
            layout,
            ttl_secs: ttl.as_secs(),
            timeout: config.redis_timeout,
            node_id: node_id.to_string(),
            spool,
            redis_up: AtomicBool::new(spool_empty),
            replay_points: config.batch_max_points,
            wake_replayer: tokio::sync::Notify::new(),
            metrics: metrics.clone(),
        });
        let replayer = store
            .spool
            .is_some()
            .then(|| tokio::spawn(store.clone().replay(stop.clone())));
        let maintainer = tokio::spawn(store.clone().maintain(stop.clone()));
        let batcher = Batcher {
            rx,
            store: store.clone(),
            max_points: config.batch_max_points,
            max_delay: config.batch_max_delay,
            pipelines: Arc::new(Semaphore::new(config.max_concurrent_pipelines)),
            max_pipelines: config.max_concurrent_pipelines,
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        let handle = tokio::spawn(batcher.run());
        Arc::new(Self {
            tx,
            queued: Arc::new(Semaphore::new(config.max_queued_points)),
            max_queued: config.max_queued_points,
            metrics,
            stop,
            batcher: tokio::sync::Mutex::new(Some(handle)),
            replayer: tokio::sync::Mutex::new(replayer),
            maintainer: tokio::sync::Mutex::new(Some(maintainer)),
            store,
        })
    }

    /// Whether batches currently go straight to Redis (false while the
    /// spool is being used or drained).
    pub fn redis_up(&self) -> bool {
        self.store.redis_up.load(Ordering::Acquire)
    }

    /// (records, bytes) in the spool, if there is one.
    pub fn spool_usage(&self) -> Option<(u64, u64)> {
        self.store.spool.as_ref().map(|s| s.usage())
    }

    /// The dead-letter queue, when this writer has a spool to keep it in.
    pub fn dead_letter_queue(&self) -> Option<crate::dlq::DeadLetterQueue> {
        crate::dlq::DeadLetterQueue::new(self.store.clone())
    }

    /// A Redis client of this writer's pool.
    pub(crate) fn redis(&self) -> fred::clients::Client {
        self.store.pool.next().clone()
    }

    pub(crate) fn metrics(&self) -> &WriterMetrics {
        &self.metrics
    }

    /// The `node_id` this writer records in dead-letter entries.
    pub fn node_id(&self) -> &str {
        &self.store.node_id
    }

    /// Stores `batch`; returns once it is durable: Redis confirmed every
    /// command of it, or it is in the spool, or the points Redis refused
    /// for good are in the dead-letter queue (the rest being in Redis).
    /// Without a spool, points Redis refuses fail the batch with
    /// [`WriterError::RedisRejected`].
    /// Waits (backpressure) while `max_queued_points` are already queued.
    pub async fn write(&self, batch: Arc<MetricBatch>) -> Result<(), WriterError> {
        if batch.points.is_empty() {
            return Ok(());
        }
        let n = batch.points.len().min(self.max_queued) as u32;
        let permit = tokio::select! {
            p = self.queued.clone().acquire_many_owned(n) => p.map_err(|_| WriterError::ShuttingDown)?,
            _ = self.stop.cancelled() => return Err(WriterError::ShuttingDown),
        };
        self.metrics.queued_points.inc_by(n as i64);
        let (done, rx) = oneshot::channel();
        let sent = self.tx.send(Job {
            batch,
            done,
            _queued: permit,
        });
        if sent.is_err() {
            self.metrics.queued_points.dec_by(n as i64);
            return Err(WriterError::ShuttingDown);
        }
        rx.await.unwrap_or(Err(WriterError::ShuttingDown))
    }

    /// Stops taking writes, writes everything already queued, and returns
    /// once the last pipeline finished.
    /// What is not in Redis by then stays in the spool for the next start.
    pub async fn flush_and_stop(&self) {
        self.stop.cancel();
        if let Some(h) = self.batcher.lock().await.take()
            && let Err(e) = h.await
        {
            tracing::error!(error = %e, "writer batcher task failed");
        }
        if let Some(h) = self.replayer.lock().await.take()
            && let Err(e) = h.await
        {
            tracing::error!(error = %e, "writer spool replayer task failed");
        }
        // Open chunks are durable in Redis: a seal cut short is redone by
        // whichever writer appends to that host next.
        if let Some(h) = self.maintainer.lock().await.take()
            && let Err(e) = h.await
        {
            tracing::error!(error = %e, "writer layout maintenance task failed");
        }
    }
}

impl Batcher {
    async fn run(mut self) {
        loop {
            let first = tokio::select! {
                job = self.rx.recv() => job,
                _ = self.stop.cancelled() => {
                    // Refuse new jobs; drain the ones already queued.
                    self.rx.close();
                    self.rx.recv().await
                }
            };
            let Some(first) = first else { break };
            let mut points = first.batch.points.len();
            let mut jobs = vec![first];
            // Take what is already waiting; if pipelines are in flight, give
            // more jobs a short time to arrive so the pipeline fills up.
            let busy = self.pipelines.available_permits() < self.max_pipelines;
            let deadline = tokio::time::Instant::now() + self.max_delay;
            while points < self.max_points {
                match self.rx.try_recv() {
                    Ok(job) => {
                        points += job.batch.points.len();
                        jobs.push(job);
                    }
                    Err(mpsc::error::TryRecvError::Empty) if busy && !self.stop.is_cancelled() => {
                        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                            Ok(Some(job)) => {
                                points += job.batch.points.len();
                                jobs.push(job);
                            }
                            _ => break,
                        }
                    }
                    Err(_) => break,
                }
            }
            let permit = self
                .pipelines
                .clone()
                .acquire_owned()
                .await
                .expect("pipeline semaphore is never closed");
            let store = self.store.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                metrics.inflight_pipelines.inc();
                let batches: Vec<Arc<MetricBatch>> = jobs.iter().map(|j| j.batch.clone()).collect();
                let results = store.store(batches).await;
                metrics.inflight_pipelines.dec();
                metrics.queued_points.dec_by(points as i64);
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.done.send(result);
                }
                drop(permit);
            });
        }
        // Wait for the pipelines still in flight.
        let _ = self.pipelines.acquire_many(self.max_pipelines as u32).await;
    }
}
