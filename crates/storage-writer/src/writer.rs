//! The batcher: collects write jobs into Redis pipelines and completes each
//! job once its points are durable: confirmed by Redis, or, when Redis
//! cannot take them, appended and fsync'ed to the spool (then replayed into
//! Redis in order by the replayer task).
//!
//! Pipeline failures are of two kinds ([`classify`]). Transient ones
//! (connection, timeout, LOADING, OOM, cluster reconfiguring...) send the
//! batches to the spool. Permanent ones, an error reply Redis will give
//! again for the same data (WRONGTYPE on a key someone created with another
//! type, a command it refuses), would block the spool forever: the write is
//! then redone once more with each host's commands kept apart
//! (`Store::write_or_isolate`), so that only the points of the hosts Redis
//! refuses go to the dead-letter queue, with Redis's reply as the reason,
//! and every other point of the pipeline is stored.

use crate::error::WriterError;
use crate::metrics::WriterMetrics;
use crate::spool::{Spool, SpoolError};
use broker_common::config::WriterConfig;
use broker_proto::v1::{DeadLetter, MetricBatch, Point};
use fred::clients::Pool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use storage_layout::{Command, KeyLayout};
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
    /// Seals open chunks (the chunked layout); idle for the seed layout.
    maintainer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    store: Arc<Store>,
}

/// Where batches become durable: Redis, or the spool when Redis is down,
/// or the dead-letter queue when Redis refuses them for good.
pub(crate) struct Store {
    pool: Pool,
    /// Write pipelines as one RESP buffer (`writer.direct_pipelines`);
    /// `None`: through fred.
    direct: Option<storage_layout::direct::DirectPipes>,
    layout: Arc<dyn KeyLayout>,
    ttl_secs: u64,
    timeout: Duration,
    /// Recorded in dead-letter entries.
    pub(crate) node_id: String,
    pub(crate) spool: Option<Arc<Spool>>,
    /// False from a failed pipeline until the spool is drained: meanwhile
    /// new batches go to the spool too, so Redis receives them in order.
    redis_up: AtomicBool,
    replay_points: usize,
    wake_replayer: tokio::sync::Notify,
    pub(crate) metrics: WriterMetrics,
}

/// The points of one batch that Redis refused for good, and its replies.
pub(crate) struct Refused {
    /// The refused points with the batch's name table and seq.
    pub batch: MetricBatch,
    pub reason: String,
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
                tracing::warn!(entries, bytes, path = %s.path().display(), "the dead-letter queue holds points redis refused; list them with `broker dlq list`");
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

async fn write_batches(
    store: &Store,
    client: &fred::clients::Client,
    batches: &[&MetricBatch],
) -> Result<(), WriterError> {
    let (layout, metrics, timeout) = (store.layout.as_ref(), &store.metrics, store.timeout);
    let points: usize = batches.iter().map(|b| b.points.len()).sum();
    let mut commands = Vec::with_capacity(points * 2 + 8);
    layout.write_commands(
        batches,
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
    async fn store(&self, batches: Vec<Arc<MetricBatch>>) -> Vec<Result<(), WriterError>> {
        let n = batches.len();
        if self.spool.is_some() && !self.redis_up.load(Ordering::Acquire) {
            return vec![self.spool_append(batches).await; n];
        }
        let refs: Vec<&MetricBatch> = batches.iter().map(|b| b.as_ref()).collect();
        let result = self.write_or_isolate(&refs).await;
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
    ) -> Result<Vec<Option<Refused>>, WriterError> {
        let client = self.pool.next().clone();
        match write_batches(self, &client, batches).await {
            Ok(()) => Ok(batches.iter().map(|_| None).collect()),
            Err(e) if e.is_permanent() => {
                tracing::warn!(error = %e, "redis refused part of a pipeline for good; writing it again host by host to set those points apart");
                self.isolate(&client, batches).await
            }
            Err(e) => Err(e),
        }
    }

    /// One pipeline in which every (batch, host) group's commands can be
    /// told apart: the groups Redis refused come back as [`Refused`]. A
    /// transient failure anywhere fails the whole write.
    async fn isolate(
        &self,
        client: &fred::clients::Client,
        batches: &[&MetricBatch],
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
                    .write_commands(&[&sub], self.ttl_secs, now, &mut commands);
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
    async fn settle_refused(&self, refused: Vec<Option<Refused>>) -> Vec<Result<(), WriterError>> {
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
                    tracing::warn!(id, ?hosts, %reason, "redis refused points for good; dead-lettered them (replay with `broker dlq replay`)");
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

    /// Replays the spool into Redis, oldest first, deleting what Redis
    /// confirmed and moving what it refuses for good to the dead-letter
    /// queue (one transaction); backs off while Redis does not answer.
    /// When the spool is empty, batches go straight to Redis again.
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
            match self.write_or_isolate(&refs).await {
                Ok(refused) => {
                    let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
                    let entries: Vec<DeadLetter> = refused
                        .into_iter()
                        .flatten()
                        .map(|r| self.dead_letter_entry(r))
                        .collect();
                    let dead: usize = entries.iter().map(entry_points).sum();
                    let s = spool.clone();
                    match tokio::task::spawn_blocking(move || {
                        let ids = s.move_to_dlq(&ids, &entries)?;
                        Ok::<_, SpoolError>((ids, entries))
                    })
                    .await
                    {
                        Ok(Ok((ids, entries))) => {
                            self.metrics.replayed_points.inc_by((points - dead) as u64);
                            self.metrics.dlq_points.inc_by(dead as u64);
                            for (id, e) in ids.iter().zip(&entries) {
                                tracing::warn!(id, hosts = ?hosts_of(e.batch.as_ref().expect("batch"), 5), reason = %e.reason, "spool replay: redis refused points for good; dead-lettered them (replay with `broker dlq replay`)");
                            }
                            self.refresh_spool_metrics();
                            backoff = new_backoff();
                        }
                        // Replayed but not deleted: replaying again later is
                        // harmless (idempotent writes).
                        other => {
                            tracing::error!(result = ?other.map(|r| r.map(|(ids, _)| ids).map_err(|e| e.to_string())), "deleting replayed spool records failed");
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

/// How often the maintainer asks the layout for due work.
const MAINTAIN_TICK: Duration = Duration::from_millis(250);
/// Hosts maintained at once (each seal is a few round trips).
const MAINTAIN_CONCURRENCY: usize = 4;
/// Hosts taken per tick at most.
const MAINTAIN_PER_TICK: usize = 256;

impl Store {
    /// Runs the layout's maintenance (sealing open chunks) until `stop`;
    /// a host whose maintenance failed is due again on a later tick.
    async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        use futures::StreamExt;
        let mut tick = tokio::time::interval(MAINTAIN_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if !self.redis_up.load(Ordering::Acquire) {
                continue;
            }
            let now = broker_common::unix_now();
            let due = self.layout.due(now, MAINTAIN_PER_TICK);
            if due.is_empty() {
                continue;
            }
            let client = self.pool.next().clone();
            // The futures are collected first: a stream built from a
            // closure trips rustc's Send inference for the spawned task.
            let futs: Vec<_> = due
                .iter()
                .map(|host| {
                    let (store, client) = (self.clone(), client.clone());
                    async move {
                        let started = Instant::now();
                        let r = store
                            .layout
                            .maintain(&client, host, store.ttl_secs, now)
                            .await;
                        store
                            .metrics
                            .maintain_seconds
                            .observe(started.elapsed().as_secs_f64());
                        (host, r)
                    }
                })
                .collect();
            let results: Vec<_> = futures::stream::iter(futs)
                .buffer_unordered(MAINTAIN_CONCURRENCY)
                .collect()
                .await;
            for (host, r) in results {
                match r {
                    Ok(()) => self.metrics.maintained.inc(),
                    Err(e) => {
                        self.metrics.maintain_errors.inc();
                        tracing::warn!(host = %host, error = %e, "sealing an open chunk failed; retrying later");
                        0
                    }
                };
            }
        }
    }
}

fn entry_points(e: &DeadLetter) -> usize {
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
const MAX_REASONS: usize = 4;

/// Adds `reason` to `reasons` ("; "-separated) unless already there.
fn add_reason(reasons: &mut String, reason: &str) {
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
fn describe(c: &Command) -> String {
    match c.args.first() {
        Some(key) => format!("{} {}", c.name, String::from_utf8_lossy(key)),
        None => c.name.to_string(),
    }
}

async fn sleep_or_stop(backoff: &mut impl Iterator<Item = Duration>, stop: &CancellationToken) {
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
    async fn execute(
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
    async fn execute_each(
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

/// Error replies that say "not now" rather than "never": Redis is loading,
/// busy, out of memory, failing over or resharding, or refuses this client
/// (auth, ACL) until an operator fixes the configuration. Such writes are
/// spooled and retried, not dead-lettered.
const TRANSIENT_REPLIES: &[&str] = &[
    "LOADING",
    "BUSY",
    "OOM",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "MISCONF",
    "NOREPLICAS",
    "MOVED",
    "ASK",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
];

/// Turns a fred error into a [`WriterError`]: [`WriterError::RedisRejected`]
/// (permanent) for an error reply Redis will give again for the same data
/// (WRONGTYPE, `ERR wrong number of arguments`, ...) or for arguments the
/// client cannot encode; [`WriterError::Redis`] (transient) for everything
/// else: connection and IO errors, timeouts, cancellations, cluster
/// redirections and the replies in `TRANSIENT_REPLIES`.
pub fn classify(e: &fred::error::Error) -> WriterError {
    use fred::error::ErrorKind as K;
    let details = e.details();
    let permanent = match (e.kind(), reply_code(details)) {
        (K::InvalidArgument | K::InvalidCommand | K::Unknown, Some(code)) => {
            !transient_reply(code, details)
        }
        // Arguments the client cannot encode, or Redis's "Invalid argument".
        (K::InvalidArgument, None) => true,
        // Redis's "Invalid command" reply, not the client's own state.
        (K::InvalidCommand, None) => details.starts_with("Invalid"),
        _ => false,
    };
    if permanent {
        WriterError::RedisRejected(details.to_string())
    } else {
        WriterError::Redis(e.to_string())
    }
}

/// [`classify`] for an error reply read off a direct pipeline: permanent
/// unless its code is one of `TRANSIENT_REPLIES`.
pub fn classify_reply(reply: &str) -> WriterError {
    match reply_code(reply) {
        Some(code) if transient_reply(code, reply) => WriterError::Redis(reply.to_string()),
        _ => WriterError::RedisRejected(reply.to_string()),
    }
}

/// The code an error reply starts with, upper case: "WRONGTYPE ...".
fn reply_code(reply: &str) -> Option<&str> {
    reply
        .split_whitespace()
        .next()
        .filter(|w| w.len() >= 2 && w.bytes().all(|b| b.is_ascii_uppercase()))
}

fn transient_reply(code: &str, reply: &str) -> bool {
    TRANSIENT_REPLIES.contains(&code)
        // Refused at connect time, not for this data.
        || (code == "ERR" && reply.contains("max number of clients"))
}

/// Builds the Redis pool for `url` (`redis://`, `redis-cluster://`,
/// `redis-sentinel://`) and starts connecting; reconnects forever with
/// exponential backoff.
pub fn redis_pool(url: &str, size: usize) -> Result<Pool, WriterError> {
    let mut config = fred::types::config::Config::from_url(url)
        .map_err(|e| WriterError::Redis(format!("writer.redis_url {url:?}: {e}")))?;
    // A writer started while Redis is down keeps trying (the reconnect
    // policy below) instead of giving up after the first attempt, fred's
    // default: with a spool it takes writes meanwhile and replays them.
    config.fail_fast = false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error, ErrorKind};

    fn permanent(kind: ErrorKind, details: &'static str) -> bool {
        classify(&Error::new(kind, details)).is_permanent()
    }

    #[test]
    fn direct_error_replies_classify_as_fred_errors_do() {
        for reply in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR wrong number of arguments for 'zadd' command",
            "ERR value is not a valid float",
        ] {
            assert!(classify_reply(reply).is_permanent(), "{reply}");
            assert!(permanent(ErrorKind::Unknown, reply), "{reply}");
        }
        for reply in [
            "LOADING Redis is loading the dataset in memory",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "READONLY You can't write against a read only replica.",
            "ERR max number of clients reached",
        ] {
            assert!(!classify_reply(reply).is_permanent(), "{reply}");
        }
    }

    #[test]
    fn redis_refusing_the_data_is_permanent() {
        // As fred parses these replies (protocol/utils.rs `pretty_error`).
        assert!(permanent(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        ));
        assert!(permanent(
            ErrorKind::Unknown,
            "ERR wrong number of arguments for 'zadd' command"
        ));
        assert!(permanent(
            ErrorKind::Unknown,
            "ERR value is not a valid float"
        ));
        assert!(permanent(
            ErrorKind::Unknown,
            "CROSSSLOT Keys in request don't hash to the same slot"
        ));
        assert!(permanent(
            ErrorKind::InvalidArgument,
            "Cannot convert NaN to redis value."
        ));
        assert!(permanent(
            ErrorKind::InvalidCommand,
            "Invalid command 'FOO'"
        ));
        // The message is Redis's reply, kept whole for the DLQ reason.
        let e = classify(&Error::new(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ));
        assert_eq!(
            e.to_string(),
            "redis refused the write: WRONGTYPE Operation against a key holding the wrong kind of value"
        );
        assert_eq!(e.to_status().code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn what_can_pass_by_itself_is_transient() {
        for (kind, details) in [
            (ErrorKind::IO, "Os { code: 111, kind: ConnectionRefused }"),
            (ErrorKind::Timeout, "Request timed out."),
            (ErrorKind::Canceled, "Canceled."),
            (ErrorKind::Cluster, "MOVED 3999 127.0.0.1:6381"),
            (ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            (ErrorKind::Unknown, "BUSY Redis is busy running a script"),
            (
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'.",
            ),
            (
                ErrorKind::Unknown,
                "TRYAGAIN Multiple keys request during rehashing of slot",
            ),
            (ErrorKind::Unknown, "MASTERDOWN Link with MASTER is down"),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
            ),
            (
                ErrorKind::Unknown,
                "MISCONF Redis is configured to save RDB snapshots",
            ),
            (ErrorKind::Unknown, "ERR max number of clients reached"),
            (ErrorKind::Auth, "NOAUTH Authentication required."),
            (
                ErrorKind::Unknown,
                "NOPERM this user has no permissions to run the 'zadd' command",
            ),
            (ErrorKind::Unknown, "channel closed"),
            (
                ErrorKind::InvalidCommand,
                "Error sending command while connection is blocked.",
            ),
            (ErrorKind::Backpressure, "Max in-flight commands reached."),
            (ErrorKind::Routing, "Failed to find cluster node."),
            (ErrorKind::Protocol, "Invalid frame."),
        ] {
            let e = classify(&Error::new(kind.clone(), details));
            assert!(!e.is_permanent(), "{kind:?} {details}");
            assert!(matches!(e, WriterError::Redis(_)), "{kind:?} {details}");
            assert_eq!(e.to_status().code(), tonic::Code::Unavailable);
        }
    }

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
