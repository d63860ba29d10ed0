//! The batcher: collects write jobs into Redis pipelines and completes each
//! job once Redis confirmed its commands.

use crate::error::WriterError;
use crate::layout::{Command, KeyLayout};
use crate::metrics::WriterMetrics;
use broker_common::config::WriterConfig;
use broker_proto::v1::MetricBatch;
use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
}

struct Batcher {
    rx: mpsc::UnboundedReceiver<Job>,
    pool: Pool,
    layout: Arc<dyn KeyLayout>,
    ttl_secs: u64,
    max_points: usize,
    max_delay: Duration,
    timeout: Duration,
    pipelines: Arc<Semaphore>,
    max_pipelines: usize,
    metrics: WriterMetrics,
    stop: CancellationToken,
}

impl Writer {
    /// Starts the batcher on an already-created (possibly still connecting)
    /// Redis pool.
    pub fn start(
        config: &WriterConfig,
        ttl: Duration,
        pool: Pool,
        layout: Arc<dyn KeyLayout>,
        metrics: WriterMetrics,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let batcher = Batcher {
            rx,
            pool,
            layout,
            ttl_secs: ttl.as_secs(),
            max_points: config.batch_max_points,
            max_delay: config.batch_max_delay,
            timeout: config.redis_timeout,
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
        })
    }

    /// Stores `batch`; returns once Redis confirmed every command of it.
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
    pub async fn flush_and_stop(&self) {
        self.stop.cancel();
        if let Some(h) = self.batcher.lock().await.take()
            && let Err(e) = h.await
        {
            tracing::error!(error = %e, "writer batcher task failed");
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
            let client = self.pool.next().clone();
            let layout = self.layout.clone();
            let metrics = self.metrics.clone();
            let (ttl, timeout) = (self.ttl_secs, self.timeout);
            tokio::spawn(async move {
                metrics.inflight_pipelines.inc();
                let result =
                    write_jobs(&client, layout.as_ref(), &jobs, ttl, timeout, &metrics).await;
                metrics.inflight_pipelines.dec();
                metrics.queued_points.dec_by(points as i64);
                for job in jobs {
                    let _ = job.done.send(result.clone());
                }
                drop(permit);
            });
        }
        // Wait for the pipelines still in flight.
        let _ = self.pipelines.acquire_many(self.max_pipelines as u32).await;
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn write_jobs(
    client: &fred::clients::Client,
    layout: &dyn KeyLayout,
    jobs: &[Job],
    ttl: u64,
    timeout: Duration,
    metrics: &WriterMetrics,
) -> Result<(), WriterError> {
    let batches: Vec<&MetricBatch> = jobs.iter().map(|j| j.batch.as_ref()).collect();
    let points: usize = batches.iter().map(|b| b.points.len()).sum();
    let mut commands = Vec::with_capacity(points * 2 + 8);
    layout.write_commands(&batches, ttl, now_secs(), &mut commands);
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, execute(client, commands)).await {
        Ok(r) => r,
        Err(_) => Err(WriterError::Timeout(timeout)),
    };
    layout.written(&batches, result.is_ok());
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
            tracing::warn!(points, error = %e, "redis pipeline failed");
        }
    }
    result
}

/// Sends `commands` as one pipeline; fails if any command failed.
pub async fn execute(
    client: &fred::clients::Client,
    commands: Vec<Command>,
) -> Result<(), WriterError> {
    let pipe = client.pipeline();
    for c in commands {
        let args: Vec<Value> = c.args.into_iter().map(Value::Bytes).collect();
        let _: Value = pipe
            .custom(
                CustomCommand::new_static(c.name, ClusterHash::FirstKey, false),
                args,
            )
            .await
            .map_err(|e| WriterError::Redis(e.to_string()))?;
    }
    for r in pipe.try_all::<Value>().await {
        r.map_err(|e| WriterError::Redis(e.to_string()))?;
    }
    Ok(())
}

/// Builds the Redis pool for `url` (`redis://`, `redis-cluster://`,
/// `redis-sentinel://`) and starts connecting; reconnects forever with
/// exponential backoff.
pub fn redis_pool(url: &str, size: usize) -> Result<Pool, WriterError> {
    let config = fred::types::config::Config::from_url(url)
        .map_err(|e| WriterError::Redis(format!("writer.redis_url {url:?}: {e}")))?;
    let pool = fred::types::Builder::from_config(config)
        .with_performance_config(|p| {
            // No per-command timer: a pipeline has thousands of commands and
            // the whole round trip is bounded by `redis_timeout` instead.
            p.default_command_timeout = Duration::ZERO;
            // Pipelines hold thousands of commands: flush the socket less often.
            p.max_feed_count = 1_000;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.max_command_attempts = 3;
        })
        .set_policy(fred::types::config::ReconnectPolicy::new_exponential(
            0, 100, 5_000, 2,
        ))
        .build_pool(size)
        .map_err(|e| WriterError::Redis(e.to_string()))?;
    pool.connect_pool();
    Ok(pool)
}
