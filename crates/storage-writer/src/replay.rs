//! The store's background work: replaying the spool into Redis in order
//! once Redis is back, and the layout's maintenance (sealing open chunks).

use crate::spool::SpoolError;
use broker_proto::v1::{DeadLetter, MetricBatch};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use storage_layout::Arrival;
use tokio_util::sync::CancellationToken;

use crate::store::*;

impl Store {
    /// Replays the spool into Redis, oldest first, deleting what Redis
    /// confirmed and moving what it refuses for good to the dead-letter
    /// queue (one transaction); backs off while Redis does not answer.
    /// When the spool is empty, batches go straight to Redis again.
    pub(crate) async fn replay(self: Arc<Self>, stop: CancellationToken) {
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
            match self.write_or_isolate(&refs, Arrival::Late).await {
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
                                tracing::warn!(id, hosts = ?hosts_of(e.batch.as_ref().expect("batch"), 5), reason = %e.reason, "spool replay: redis refused points for good; dead-lettered them (replay with `brokerctl dlq replay`)");
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
/// How often the host index drops hosts that stopped reporting a ttl ago
/// (and, until it succeeds once, how often the backfill is tried).
const INDEX_UPKEEP_EVERY: Duration = Duration::from_secs(30);

impl Store {
    /// Keeps the host index ([`storage_layout::hosts`]) until `stop`: once,
    /// backfills it from data written before it existed (one walk of the
    /// metadata keys per Redis, whichever process gets there first); then
    /// drops the hosts whose newest point is a ttl old. Neither walks the
    /// keyspace periodically.
    async fn index_upkeep(self: Arc<Self>, stop: CancellationToken) {
        use storage_layout::hosts;
        let mut tick = tokio::time::interval(INDEX_UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ready = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if !self.redis_up.load(Ordering::Acquire) {
                continue;
            }
            let client = self.pool.next().clone();
            // Cancelled with the writer: a command to a Redis that went
            // away waits for the reconnection, and this task holds the
            // store (and its spool) until it returns.
            let work = async {
                if !ready {
                    match hosts::backfill(&client, &*self.layout, self.ttl_secs).await {
                        Ok(hosts::Backfill::Ready) => ready = true,
                        Ok(hosts::Backfill::Done { hosts }) => {
                            tracing::info!(hosts, "backfilled the host index from existing data");
                            ready = true;
                        }
                        Ok(hosts::Backfill::Busy) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "backfilling the host index failed; retrying later");
                            return;
                        }
                    }
                }
                let trim = hosts::trim_command(broker_common::unix_now(), self.ttl_secs);
                match storage_layout::Exec::pipeline(&client, vec![trim]).await {
                    Ok(mut r) => {
                        if let Some(Ok(n)) = r.pop().map(|r| r.ok("ZREMRANGEBYSCORE")) {
                            let n = n.int().unwrap_or(0);
                            if n > 0 {
                                tracing::info!(
                                    hosts = n,
                                    "hosts silent for a ttl left the host index"
                                );
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "trimming the host index failed"),
                }
            };
            tokio::select! {
                _ = work => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Runs the layout's maintenance (sealing open chunks) until `stop`;
    /// a host whose maintenance failed is due again on a later tick.
    pub(crate) async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        use futures::StreamExt;
        tokio::spawn(self.clone().index_upkeep(stop.clone()));
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
