//! The dead-letter queue as operators see it: list, inspect, replay and
//! discard the points Redis refused for good. The entries live in the
//! spool's database ([`crate::spool`], table `dlq`); the HTTP API
//! ([`crate::api`]) is built on these calls; the answers' types are
//! `internal_clients::dlq`'s, which `brokerctl dlq` reads.
//!
//! Replaying writes an entry's points to Redis now (the same write path
//! as any batch, host by host when Redis refuses some): when every point
//! is stored the entry is deleted; when Redis still refuses some, the
//! entry keeps only those and the call fails with the reason; when Redis
//! cannot be reached, the entry is kept as it is.

use crate::error::DlqError;
use crate::spool::{DeadLetterRecord, Spool, SpoolError};
use crate::store::{Store, hosts_of};
use broker_proto::v1::{DeadLetter, MetricBatch};
use std::sync::Arc;
use storage_layout::Arrival;

pub use internal_clients::dlq::{
    DEFAULT_LIST_LIMIT, EntryDetail, EntryDone, EntryFailure, EntryList, EntrySummary,
    LISTED_HOSTS, MAX_LIST_LIMIT, PointView, ReplayAll,
};

/// The DLQ of one writer. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetterQueue {
    store: Arc<Store>,
    spool: Arc<Spool>,
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The points of `batch` with their metrics named.
pub fn point_views(batch: &MetricBatch) -> Vec<PointView> {
    batch
        .points
        .iter()
        .map(|p| PointView {
            host: p.host_id.clone(),
            timestamp: p.timestamp,
            millis: p.millis,
            metrics: p
                .metrics(&batch.metric_names)
                .filter_map(|(name, v)| name.map(|n| (n.to_string(), v)))
                .collect(),
            labels: p
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
        .collect()
}

fn summary(record: &DeadLetterRecord) -> EntrySummary {
    match &record.entry {
        Ok(e) => {
            let empty = MetricBatch::default();
            let batch = e.batch.as_ref().unwrap_or(&empty);
            let all = hosts_of(batch, usize::MAX);
            EntrySummary {
                id: record.id,
                time: rfc3339(e.dead_lettered_at_ms),
                time_unix_ms: e.dead_lettered_at_ms,
                writer: e.writer.clone(),
                reason: e.reason.clone(),
                points: batch.points.len(),
                hosts_total: all.len(),
                hosts: all.into_iter().take(LISTED_HOSTS).collect(),
                bytes: record.bytes,
                replay_attempts: e.replay_attempts,
                last_replay_error: e.last_replay_error.clone(),
            }
        }
        Err(error) => EntrySummary {
            id: record.id,
            time: String::new(),
            time_unix_ms: 0,
            writer: String::new(),
            reason: format!("entry does not decode: {error}"),
            points: 0,
            hosts: Vec::new(),
            hosts_total: 0,
            bytes: record.bytes,
            replay_attempts: 0,
            last_replay_error: String::new(),
        },
    }
}

fn storage(e: impl std::fmt::Display) -> DlqError {
    DlqError::Storage(e.to_string())
}

impl DeadLetterQueue {
    /// `None` when the writer has no spool (and so no DLQ).
    pub(crate) fn new(store: Arc<Store>) -> Option<Self> {
        let spool = store.spool.clone()?;
        Some(Self { store, spool })
    }

    pub fn writer(&self) -> &str {
        &self.store.node_id
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, DlqError> {
        let spool = self.spool.clone();
        let r = tokio::task::spawn_blocking(move || f(&spool))
            .await
            .map_err(storage)?
            .map_err(storage);
        self.store.refresh_spool_metrics();
        r
    }

    async fn record(&self, id: u64) -> Result<DeadLetter, DlqError> {
        let record = self
            .blocking(move |s| s.dlq_get(id))
            .await?
            .ok_or(DlqError::NotFound(id))?;
        record
            .entry
            .map_err(|error| DlqError::Corrupt { id, error })
    }

    /// Entries after id `after` (from the oldest when `None`), at most
    /// `limit` (capped at [`MAX_LIST_LIMIT`]).
    pub async fn list(&self, after: Option<u64>, limit: usize) -> Result<EntryList, DlqError> {
        let limit = limit.min(MAX_LIST_LIMIT);
        let records = self.blocking(move |s| s.dlq_list(after, limit)).await?;
        let (total, bytes) = self.spool.dlq_usage();
        Ok(EntryList {
            writer: self.store.node_id.clone(),
            records: total,
            bytes,
            entries: records.iter().map(summary).collect(),
        })
    }

    /// One entry with its points.
    pub async fn show(&self, id: u64) -> Result<EntryDetail, DlqError> {
        let record = self
            .blocking(move |s| s.dlq_get(id))
            .await?
            .ok_or(DlqError::NotFound(id))?;
        let points_detail = match &record.entry {
            Ok(e) => e.batch.as_ref().map(point_views).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        Ok(EntryDetail {
            summary: summary(&record),
            points_detail,
        })
    }

    /// Writes entry `id` to Redis now; see the module docs.
    pub async fn replay(&self, id: u64) -> Result<EntryDone, DlqError> {
        let mut entry = self.record(id).await?;
        let batch = entry.batch.clone().unwrap_or_default();
        let points = batch.points.len();
        let hosts = hosts_of(&batch, LISTED_HOSTS);
        let outcome = if batch.points.is_empty() {
            Ok(vec![None])
        } else {
            self.store.write_or_isolate(&[&batch], Arrival::Late).await
        };
        let failure = match outcome {
            Ok(mut refused) => match refused.pop().flatten() {
                None => {
                    self.blocking(move |s| s.dlq_remove(id)).await?;
                    self.store.metrics.dlq_replayed_points.inc_by(points as u64);
                    tracing::info!(id, points, ?hosts, "dead-letter entry replayed into redis");
                    return Ok(EntryDone { id, points, hosts });
                }
                Some(r) => {
                    let kept = r.batch.points.len();
                    self.store
                        .metrics
                        .dlq_replayed_points
                        .inc_by((points - kept) as u64);
                    entry.batch = Some(r.batch);
                    DlqError::StillRefused {
                        id,
                        written: points - kept,
                        kept,
                        reason: r.reason,
                    }
                }
            },
            Err(e) => DlqError::Unavailable {
                id,
                error: e.to_string(),
            },
        };
        entry.replay_attempts += 1;
        entry.last_replay_error = failure.to_string();
        entry.last_replay_at_ms = broker_common::unix_now_ms();
        self.blocking(move |s| s.dlq_replace(id, &entry)).await?;
        tracing::warn!(id, error = %failure, "dead-letter replay did not store every point");
        Err(failure)
    }

    /// Replays every entry present when called, oldest first; stops at the
    /// first one Redis could not be reached for.
    pub async fn replay_all(&self) -> Result<ReplayAll, DlqError> {
        let mut report = ReplayAll::default();
        // Only what is there now: entries dead-lettered meanwhile wait for
        // the next call, so this always ends.
        let ids = self.blocking(|s| s.dlq_ids()).await?;
        for id in ids {
            match self.replay(id).await {
                Ok(done) => {
                    report.replayed += 1;
                    report.points += done.points;
                }
                // Replayed or discarded meanwhile.
                Err(DlqError::NotFound(_)) => {}
                Err(e @ DlqError::Unavailable { .. }) => {
                    report.error = Some(e.to_string());
                    break;
                }
                Err(e) => report.refused.push(EntryFailure {
                    id,
                    error: e.to_string(),
                }),
            }
        }
        report.remaining = self.spool.dlq_usage().0;
        Ok(report)
    }

    /// Deletes entry `id` without writing it (an operator's decision).
    pub async fn discard(&self, id: u64) -> Result<EntryDone, DlqError> {
        let record = self
            .blocking(move |s| s.dlq_get(id))
            .await?
            .ok_or(DlqError::NotFound(id))?;
        let s = summary(&record);
        if !self.blocking(move |sp| sp.dlq_remove(id)).await? {
            return Err(DlqError::NotFound(id));
        }
        self.store
            .metrics
            .dlq_discarded_points
            .inc_by(s.points as u64);
        tracing::warn!(id, points = s.points, hosts = ?s.hosts, reason = %s.reason, "dead-letter entry discarded by an operator; its points are not stored");
        Ok(EntryDone {
            id,
            points: s.points,
            hosts: s.hosts,
        })
    }
}
