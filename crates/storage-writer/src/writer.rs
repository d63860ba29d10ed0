//! The batcher: collects write jobs into Redis pipelines and completes each
//! job once its points are durable: confirmed by Redis, or, when Redis
//! cannot take them, appended and fsync'ed to the spool (then replayed into
//! Redis in order by the replayer task).

use crate::error::WriterError;
use crate::layout::{Command, KeyLayout};
use crate::metrics::WriterMetrics;
use crate::spool::{Spool, SpoolError};
use broker_common::config::WriterConfig;
use broker_proto::v1::MetricBatch;
use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    replayer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    store: Arc<Store>,
}

/// Where batches become durable: Redis, or the spool when Redis is down.
struct Store {
    pool: Pool,
    layout: Arc<dyn KeyLayout>,
    ttl_secs: u64,
    timeout: Duration,
    spool: Option<Arc<Spool>>,
    /// False from a failed pipeline until the spool is drained: meanwhile
    /// new batches go to the spool too, so Redis receives them in order.
    redis_up: AtomicBool,
    replay_points: usize,
    wake_replayer: tokio::sync::Notify,
    metrics: WriterMetrics,
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
    /// Redis pool.
    pub fn start(
        config: &WriterConfig,
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
        }
        metrics.redis_up.set(i64::from(spool_empty));
        let store = Arc::new(Store {
            pool,
            layout,
            ttl_secs: ttl.as_secs(),
            timeout: config.redis_timeout,
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
                let result = store.store(batches).await;
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

async fn write_batches(
    client: &fred::clients::Client,
    layout: &dyn KeyLayout,
    batches: &[&MetricBatch],
    ttl: u64,
    timeout: Duration,
    metrics: &WriterMetrics,
) -> Result<(), WriterError> {
    let points: usize = batches.iter().map(|b| b.points.len()).sum();
    let mut commands = Vec::with_capacity(points * 2 + 8);
    layout.write_commands(batches, ttl, now_secs(), &mut commands);
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, execute(client, commands)).await {
        Ok(r) => r,
        Err(_) => Err(WriterError::Timeout(timeout)),
    };
    layout.written(batches, result.is_ok());
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

impl Store {
    /// Makes `batches` durable: in Redis, or in the spool when Redis is
    /// down (or its backlog is still being replayed).
    async fn store(&self, batches: Vec<Arc<MetricBatch>>) -> Result<(), WriterError> {
        let refs: Vec<&MetricBatch> = batches.iter().map(|b| b.as_ref()).collect();
        if self.spool.is_some() && !self.redis_up.load(Ordering::Acquire) {
            return self.spool_append(batches).await;
        }
        let client = self.pool.next().clone();
        let result = write_batches(
            &client,
            self.layout.as_ref(),
            &refs,
            self.ttl_secs,
            self.timeout,
            &self.metrics,
        )
        .await;
        match (result, &self.spool) {
            (Ok(()), _) => Ok(()),
            (Err(e), None) => Err(e),
            (Err(e), Some(spool)) => {
                if self.redis_up.swap(false, Ordering::AcqRel) {
                    self.metrics.redis_up.set(0);
                    tracing::warn!(error = %e, spool = %spool.path().display(), "redis write failed; spooling batches until redis answers again");
                }
                self.wake_replayer.notify_one();
                self.spool_append(batches).await
            }
        }
    }

    async fn spool_append(&self, batches: Vec<Arc<MetricBatch>>) -> Result<(), WriterError> {
        let spool = self.spool.clone().expect("spool_append needs a spool");
        let points: usize = batches.iter().map(|b| b.points.len()).sum();
        let s = spool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let refs: Vec<&MetricBatch> = batches.iter().map(|b| b.as_ref()).collect();
            s.append(&refs)
        })
        .await
        .map_err(|e| WriterError::Spool(format!("spool task failed: {e}")))?;
        let (records, bytes) = spool.usage();
        self.metrics.spool_records.set(records as i64);
        self.metrics.spool_bytes.set(bytes as i64);
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

    /// Replays the spool into Redis, oldest first, deleting what Redis
    /// confirmed; backs off while Redis does not answer. When the spool is
    /// empty, batches go straight to Redis again.
    async fn replay(self: Arc<Self>, stop: CancellationToken) {
        use backon::BackoffBuilder;
        let spool = self.spool.clone().expect("replay needs a spool");
        let new_backoff = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut backoff = new_backoff();
        while !stop.is_cancelled() {
            if spool.is_empty() {
                if !self.redis_up.swap(true, Ordering::AcqRel) {
                    self.metrics.redis_up.set(1);
                    tracing::info!("spool drained; writing to redis directly again");
                }
                tokio::select! {
                    _ = self.wake_replayer.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            let s = spool.clone();
            let max = self.replay_points;
            let chunk = tokio::task::spawn_blocking(move || s.oldest(max)).await;
            let (records, corrupt) = match chunk {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reading the spool failed");
                    sleep_or_stop(&mut backoff, &stop).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool read task failed");
                    sleep_or_stop(&mut backoff, &stop).await;
                    continue;
                }
            };
            if !corrupt.is_empty() {
                // redb checksums its pages, so this means a bug or a foreign
                // file: say so loudly and do not let it block the rest.
                tracing::error!(records = ?corrupt, "spool records do not decode; dropping them");
                self.metrics.spool_corrupt.inc_by(corrupt.len() as u64);
                let s = spool.clone();
                let _ = tokio::task::spawn_blocking(move || s.remove(&corrupt)).await;
            }
            if records.is_empty() {
                continue;
            }
            let refs: Vec<&MetricBatch> = records.iter().map(|r| &r.batch).collect();
            let points: usize = refs.iter().map(|b| b.points.len()).sum();
            let client = self.pool.next().clone();
            match write_batches(
                &client,
                self.layout.as_ref(),
                &refs,
                self.ttl_secs,
                self.timeout,
                &self.metrics,
            )
            .await
            {
                Ok(()) => {
                    let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
                    let s = spool.clone();
                    match tokio::task::spawn_blocking(move || s.remove(&ids)).await {
                        Ok(Ok(())) => {
                            self.metrics.replayed_points.inc_by(points as u64);
                            let (records, bytes) = spool.usage();
                            self.metrics.spool_records.set(records as i64);
                            self.metrics.spool_bytes.set(bytes as i64);
                            backoff = new_backoff();
                        }
                        // Replayed but not deleted: replaying again later is
                        // harmless (idempotent writes).
                        other => {
                            tracing::error!(result = ?other.map(|r| r.map_err(|e| e.to_string())), "deleting replayed spool records failed");
                            sleep_or_stop(&mut backoff, &stop).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "spool replay: redis not answering yet");
                    sleep_or_stop(&mut backoff, &stop).await;
                }
            }
        }
    }
}

async fn sleep_or_stop(backoff: &mut impl Iterator<Item = Duration>, stop: &CancellationToken) {
    let d = backoff.next().unwrap_or(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
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
