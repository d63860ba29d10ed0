//! Counting what a load run did: ack classification, latency histogram,
//! progress snapshots and the final [`LoadReport`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use broker_proto::v1::{BatchAck, BatchError, RejectReason};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest ack latency the histogram tracks exactly (1 hour, in µs); longer
/// ones are clamped to it.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// What one ack says about the points of its batch, point by point.
///
/// Every point of the batch lands in exactly one of `accepted_indexes`, a
/// `rejected` count, and `retry`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckOutcome {
    /// Points stored (`accepted_indexes.len()`).
    pub accepted: u64,
    /// Indexes into the batch's points of the points stored, ascending.
    pub accepted_indexes: Vec<u32>,
    /// Points not stored and not worth sending again, by reason
    /// (`timestamp_too_old`, `batch_too_many_points`, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Indexes of the points that may be stored if sent again, ascending:
    /// per-point errors marked `retryable` (reason `UNAVAILABLE`), every point
    /// of a batch refused as `OVERLOADED` or `SHUTTING_DOWN`, and points the
    /// ack does not account for.
    pub retry: Vec<u32>,
    /// The points of `retry`, by reason (`unavailable`, `batch_overloaded`,
    /// `unaccounted`, ...).
    pub retry_reasons: BTreeMap<String, u64>,
    /// Points of `retry` that the ack accounts for neither way (a gateway
    /// bug).
    pub unaccounted: u64,
}

/// Reason name of points an ack does not account for.
pub const UNACCOUNTED: &str = "unaccounted";

impl AckOutcome {
    /// Classifies the ack of a batch of `points` points.
    ///
    /// A batch-level error applies to every point: `OVERLOADED` and
    /// `SHUTTING_DOWN` are worth retrying, the others reject the batch under
    /// `batch_<error>`. Otherwise each error names its point by index; an
    /// index out of range or named twice is a gateway bug and is ignored
    /// (the first error for an index wins). The points without an error are
    /// stored when `accepted` covers them all. When it covers fewer, the ack
    /// does not say which were stored, so none of them counts as stored and
    /// all go to `retry` as `unaccounted` (writes are idempotent, so sending
    /// a stored point again is harmless).
    pub fn classify(ack: &BatchAck, points: u64) -> Self {
        let n = u32::try_from(points).unwrap_or(u32::MAX);
        let mut out = AckOutcome::default();
        if ack.batch_error != BatchError::None as i32 {
            let name = batch_error_name(ack.batch_error);
            if batch_error_is_retryable(ack.batch_error) {
                out.retry = (0..n).collect();
                out.retry_reasons.insert(name, u64::from(n));
            } else {
                out.rejected.insert(name, u64::from(n));
            }
            return out;
        }
        let mut has_error = vec![false; n as usize];
        for e in &ack.errors {
            let Some(slot) = has_error.get_mut(e.index as usize).filter(|seen| !**seen) else {
                continue;
            };
            *slot = true;
            let reason = reject_reason_name(e.reason);
            if e.retryable {
                out.retry.push(e.index);
                *out.retry_reasons.entry(reason).or_default() += 1;
            } else {
                *out.rejected.entry(reason).or_default() += 1;
            }
        }
        let clean: Vec<u32> = (0..n).filter(|&i| !has_error[i as usize]).collect();
        if u64::from(ack.accepted) >= clean.len() as u64 {
            out.accepted = clean.len() as u64;
            out.accepted_indexes = clean;
        } else if !clean.is_empty() {
            out.unaccounted = clean.len() as u64;
            out.retry_reasons
                .insert(UNACCOUNTED.to_string(), out.unaccounted);
            out.retry.extend(clean);
        }
        out.retry.sort_unstable();
        out
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// True for the batch errors that say "not now" rather than "not this":
/// `BATCH_ERROR_OVERLOADED` and `BATCH_ERROR_SHUTTING_DOWN`.
pub fn batch_error_is_retryable(error: i32) -> bool {
    matches!(
        BatchError::try_from(error),
        Ok(BatchError::Overloaded | BatchError::ShuttingDown)
    )
}

/// `REJECT_REASON_TIMESTAMP_TOO_OLD` -> `timestamp_too_old`.
pub fn reject_reason_name(reason: i32) -> String {
    match RejectReason::try_from(reason) {
        Ok(r) => short_name(r.as_str_name(), "REJECT_REASON_"),
        Err(_) => format!("unknown_{reason}"),
    }
}

/// `BATCH_ERROR_OVERLOADED` -> `batch_overloaded`.
pub fn batch_error_name(error: i32) -> String {
    match BatchError::try_from(error) {
        Ok(e) => format!("batch_{}", short_name(e.as_str_name(), "BATCH_ERROR_")),
        Err(_) => format!("batch_unknown_{error}"),
    }
}

fn short_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// Ack latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct LatencySummary {
    /// Batches measured.
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// From a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

pub(crate) fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// Live counters of a run, shared by the connection tasks.
///
/// Points: `sent` counts each distinct point once, when its batch is first
/// sent; `resent` counts every resend of a point again. Each distinct point
/// ends in exactly one of `acked`, `rejected` and `failed`.
#[derive(Debug)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub resent: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_acked: AtomicU64,
    pub batches_failed: AtomicU64,
    pub resends_batches: AtomicU64,
    pub rejected_by_reason: Mutex<BTreeMap<String, u64>>,
    pub retries_by_reason: Mutex<BTreeMap<String, u64>>,
    pub failed_by_reason: Mutex<BTreeMap<String, u64>>,
    /// `(host_idx, ts)` of every acked point, when asked for.
    pub acked_points: Option<Mutex<Vec<(u32, i64)>>>,
    /// When each ack arrived and its latency, when acked points are kept.
    pub ack_times: Option<Mutex<Vec<(std::time::Instant, Duration)>>>,
    /// Ack latency in µs.
    pub latency: Mutex<Histogram<u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Counters {
    /// `record_acked`: keep the `(host_idx, ts)` of every acked point.
    pub fn new(record_acked: bool) -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            batches_acked: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            resends_batches: AtomicU64::new(0),
            rejected_by_reason: Mutex::new(BTreeMap::new()),
            retries_by_reason: Mutex::new(BTreeMap::new()),
            failed_by_reason: Mutex::new(BTreeMap::new()),
            acked_points: record_acked.then(|| Mutex::new(Vec::new())),
            ack_times: record_acked.then(|| Mutex::new(Vec::new())),
            latency: Mutex::new(new_latency_histogram()),
        }
    }

    /// A batch of `points` new points went out.
    pub fn record_sent(&self, points: u64) {
        self.sent.fetch_add(points, Ordering::Relaxed);
        self.batches_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A batch of `points` points went out again.
    pub fn record_resent(&self, points: u64) {
        self.resent.fetch_add(points, Ordering::Relaxed);
        self.resends_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an ack: its stored and rejected points, its retry reasons
    /// (the retried points themselves are settled later, by the outbox) and
    /// its latency. Returns the rejection and retry reasons seen here for the
    /// first time in the run, so the caller can log each kind once.
    pub fn record_ack(&self, outcome: &AckOutcome, latency: Duration) -> Vec<String> {
        self.acked.fetch_add(outcome.accepted, Ordering::Relaxed);
        self.batches_acked.fetch_add(1, Ordering::Relaxed);
        self.rejected
            .fetch_add(outcome.rejected_total(), Ordering::Relaxed);
        let mut new_reasons = add_by_reason(&self.rejected_by_reason, &outcome.rejected);
        new_reasons.extend(add_by_reason(
            &self.retries_by_reason,
            &outcome.retry_reasons,
        ));
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        lock(&self.latency).saturating_record(us.clamp(1, LATENCY_MAX_US));
        if let Some(t) = &self.ack_times {
            lock(t).push((std::time::Instant::now(), latency));
        }
        new_reasons
    }

    /// A send failed with a retryable transport error; its `points` will be
    /// resent (or given up on) by the outbox.
    pub fn record_retry(&self, points: u64, reason: &str) {
        add_by_reason(
            &self.retries_by_reason,
            &BTreeMap::from([(reason.to_string(), points)]),
        );
    }

    /// `points` distinct points (in `batches` batches) are given up on.
    pub fn record_failed(&self, points: u64, batches: u64, reason: &str) {
        if points == 0 && batches == 0 {
            return;
        }
        self.failed.fetch_add(points, Ordering::Relaxed);
        self.batches_failed.fetch_add(batches, Ordering::Relaxed);
        *lock(&self.failed_by_reason)
            .entry(reason.to_string())
            .or_default() += points;
    }

    /// Keeps acked points when the run records them.
    pub fn record_acked_points(&self, points: &[(u32, i64)]) {
        if let Some(acked) = &self.acked_points {
            lock(acked).extend_from_slice(points);
        }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            resent: self.resent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    pub fn latency(&self) -> LatencySummary {
        LatencySummary::from_histogram(&lock(&self.latency))
    }

    pub fn report(&self, elapsed: Duration) -> LoadReport {
        let t = self.totals();
        LoadReport {
            sent: t.sent,
            acked: t.acked,
            rejected: t.rejected,
            rejected_by_reason: lock(&self.rejected_by_reason).clone(),
            failed: t.failed,
            failed_by_reason: lock(&self.failed_by_reason).clone(),
            resent: t.resent,
            resends_batches: self.resends_batches.load(Ordering::Relaxed),
            retries_by_reason: lock(&self.retries_by_reason).clone(),
            batches_sent: self.batches_sent.load(Ordering::Relaxed),
            batches_acked: self.batches_acked.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
            elapsed,
            latency: self.latency(),
            acked_points: self.acked_points.as_ref().map(|a| {
                let mut points = lock(a).clone();
                points.sort_unstable();
                points
            }),
            ack_times: self.ack_times.as_ref().map(|t| lock(t).clone()),
        }
    }
}

/// Adds `add` into `map`; returns the keys that were new.
fn add_by_reason(map: &Mutex<BTreeMap<String, u64>>, add: &BTreeMap<String, u64>) -> Vec<String> {
    if add.is_empty() {
        return Vec::new();
    }
    let mut map = lock(map);
    let mut new = Vec::new();
    for (reason, n) in add {
        let slot = map.entry(reason.clone()).or_default();
        if *slot == 0 && *n > 0 {
            new.push(reason.clone());
        }
        *slot += n;
    }
    new
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Point counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub resent: u64,
    pub failed: u64,
}

/// A once-a-second snapshot of a running load.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    /// Distinct points handed to a stream.
    pub sent: u64,
    /// Points the gateway stored (acked as accepted).
    pub acked: u64,
    pub rejected: u64,
    /// Point resends so far (each resend of a point counts).
    pub resent: u64,
    pub failed: u64,
    /// Acked points per second since the previous snapshot.
    pub points_per_s: f64,
    pub ack_p99_ms: f64,
}

impl Progress {
    pub(crate) fn new(
        elapsed: Duration,
        now: Totals,
        previous: (Duration, u64),
        ack_p99_ms: f64,
    ) -> Self {
        let (prev_elapsed, prev_acked) = previous;
        Progress {
            elapsed,
            sent: now.sent,
            acked: now.acked,
            rejected: now.rejected,
            resent: now.resent,
            failed: now.failed,
            points_per_s: rate(
                now.acked.saturating_sub(prev_acked),
                elapsed.saturating_sub(prev_elapsed),
            ),
            ack_p99_ms,
        }
    }
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:>6.1}s] sent={} acked={} rejected={} resent={} failed={} rate={:.0} points/s ack_p99={:.1}ms",
            self.elapsed.as_secs_f64(),
            self.sent,
            self.acked,
            self.rejected,
            self.resent,
            self.failed,
            self.points_per_s,
            self.ack_p99_ms,
        )
    }
}

/// `count / elapsed`, 0 when no time has passed.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// What a load run did. Every distinct point sent ends up in exactly one of
/// `acked`, `rejected` and `failed` (`sent == acked + rejected + failed`);
/// resends are counted apart, in `resent`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Distinct points handed to a stream (a resend does not count again).
    pub sent: u64,
    /// Points acknowledged as stored.
    pub acked: u64,
    /// Points acknowledged as not stored and not worth resending (per point
    /// or whole batch).
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Points never acknowledged as stored: their resends ran out, or they
    /// were still un-acked at the drain deadline.
    pub failed: u64,
    /// `failed` by why (`drain_timeout`, `resends_exhausted`, `unreachable`,
    /// `send_error`).
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Point resends: each time a point goes out again counts once.
    pub resent: u64,
    /// Batches resent (each holds the points of one earlier batch that are
    /// still un-acked).
    pub resends_batches: u64,
    /// Points scheduled for a resend, by why (`stream_closed`,
    /// `unavailable`, `batch_overloaded`, ...), each time.
    pub retries_by_reason: BTreeMap<String, u64>,
    /// Batches sent the first time.
    pub batches_sent: u64,
    /// Acks received (for first sends and resends).
    pub batches_acked: u64,
    /// Batches (or the rest of one) given up on.
    pub batches_failed: u64,
    /// From the first send to the last ack (or the end of the drain).
    pub elapsed: Duration,
    pub latency: LatencySummary,
    /// `(host_idx, ts)` of every acked point, sorted, when
    /// [`LoadConfig::record_acked`](crate::LoadConfig::record_acked) is set.
    /// Its values are [`value(host_idx, ts, metric)`](crate::value).
    pub acked_points: Option<Vec<(u32, i64)>>,
    /// When each ack arrived and its latency, in arrival order, with
    /// `acked_points`: for latency before, during and after a fault.
    pub ack_times: Option<Vec<(std::time::Instant, Duration)>>,
}

impl LoadReport {
    /// Ack latency percentiles of the acks that arrived in `[from, to)`
    /// (with `ack_times`).
    pub fn latency_between(
        &self,
        from: std::time::Instant,
        to: std::time::Instant,
    ) -> Option<LatencySummary> {
        let mut h = new_latency_histogram();
        for (at, l) in self.ack_times.as_ref()? {
            if *at >= from && *at < to {
                let us = u64::try_from(l.as_micros()).unwrap_or(u64::MAX);
                h.saturating_record(us.clamp(1, LATENCY_MAX_US));
            }
        }
        Some(LatencySummary::from_histogram(&h))
    }
}

/// The `--json` summary line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonSummary {
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub failed: u64,
    pub resent: u64,
    pub resends_batches: u64,
    pub elapsed_s: f64,
    pub points_per_s: f64,
    pub ack_p50_ms: f64,
    pub ack_p90_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    pub batches_sent: u64,
    pub batches_acked: u64,
    pub batches_failed: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub retries_by_reason: BTreeMap<String, u64>,
}

impl LoadReport {
    /// Stored points per second of the run.
    pub fn points_per_s(&self) -> f64 {
        rate(self.acked, self.elapsed)
    }

    /// True when the gateway answered at least one batch.
    pub fn anything_answered(&self) -> bool {
        self.batches_acked > 0
    }

    /// Distinct points accounted for: `acked + rejected + failed`, which
    /// equals `sent` at the end of a run.
    pub fn settled(&self) -> u64 {
        self.acked + self.rejected + self.failed
    }

    pub fn json_summary(&self) -> JsonSummary {
        JsonSummary {
            sent: self.sent,
            acked: self.acked,
            rejected: self.rejected,
            failed: self.failed,
            resent: self.resent,
            resends_batches: self.resends_batches,
            elapsed_s: self.elapsed.as_secs_f64(),
            points_per_s: self.points_per_s(),
            ack_p50_ms: self.latency.p50_ms,
            ack_p90_ms: self.latency.p90_ms,
            ack_p99_ms: self.latency.p99_ms,
            ack_max_ms: self.latency.max_ms,
            batches_sent: self.batches_sent,
            batches_acked: self.batches_acked,
            batches_failed: self.batches_failed,
            rejected_by_reason: self.rejected_by_reason.clone(),
            failed_by_reason: self.failed_by_reason.clone(),
            retries_by_reason: self.retries_by_reason.clone(),
        }
    }

    /// The `--json` line: one JSON object, no newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(&self.json_summary()).expect("summary serializes")
    }
}

impl std::fmt::Display for LoadReport {
    /// The human summary, several lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "elapsed       {:.2}s", self.elapsed.as_secs_f64())?;
        writeln!(
            f,
            "points sent   {} ({} batches)",
            self.sent, self.batches_sent
        )?;
        writeln!(
            f,
            "acked         {} ({} batches answered)",
            self.acked, self.batches_acked
        )?;
        writeln!(f, "rejected      {}", self.rejected)?;
        for (reason, n) in &self.rejected_by_reason {
            writeln!(f, "  {reason:<24}{n}")?;
        }
        writeln!(
            f,
            "resent        {} ({} batches)",
            self.resent, self.resends_batches
        )?;
        for (reason, n) in &self.retries_by_reason {
            writeln!(f, "  {reason:<24}{n}")?;
        }
        writeln!(
            f,
            "failed        {} ({} batches unacked)",
            self.failed, self.batches_failed
        )?;
        for (reason, n) in &self.failed_by_reason {
            writeln!(f, "  {reason:<24}{n}")?;
        }
        writeln!(f, "throughput    {:.0} points/s", self.points_per_s())?;
        write!(
            f,
            "ack latency   p50 {:.2}ms  p90 {:.2}ms  p99 {:.2}ms  max {:.2}ms",
            self.latency.p50_ms, self.latency.p90_ms, self.latency.p99_ms, self.latency.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::PointError;

    fn point_error(index: u32, reason: RejectReason) -> PointError {
        PointError {
            index,
            reason: reason as i32,
            message: String::new(),
            retryable: reason == RejectReason::Unavailable,
        }
    }

    #[test]
    fn clean_ack() {
        let ack = BatchAck {
            seq: 1,
            accepted: 100,
            ..Default::default()
        };
        let o = AckOutcome::classify(&ack, 100);
        assert_eq!(o.accepted, 100);
        assert_eq!(o.rejected_total(), 0);
        assert_eq!(o.unaccounted, 0);
    }

    #[test]
    fn point_errors_are_counted_by_reason_and_retryable_ones_resent() {
        let ack = BatchAck {
            seq: 1,
            accepted: 7,
            errors: vec![
                point_error(0, RejectReason::TimestampTooOld),
                point_error(3, RejectReason::TimestampTooOld),
                point_error(5, RejectReason::Unavailable),
            ],
            ..Default::default()
        };
        let o = AckOutcome::classify(&ack, 10);
        assert_eq!(o.accepted, 7);
        assert_eq!(o.accepted_indexes, vec![1, 2, 4, 6, 7, 8, 9]);
        assert_eq!(
            o.rejected,
            BTreeMap::from([("timestamp_too_old".into(), 2)])
        );
        assert_eq!(o.retry, vec![5]);
        assert_eq!(o.retry_reasons, BTreeMap::from([("unavailable".into(), 1)]));
        assert_eq!(o.unaccounted, 0);
    }

    #[test]
    fn the_retryable_flag_decides_not_the_reason() {
        let mut e = point_error(1, RejectReason::Unavailable);
        e.retryable = false;
        let ack = BatchAck {
            seq: 1,
            accepted: 1,
            errors: vec![e],
            ..Default::default()
        };
        let o = AckOutcome::classify(&ack, 2);
        assert!(o.retry.is_empty());
        assert_eq!(o.rejected["unavailable"], 1);
    }

    #[test]
    fn a_final_batch_error_rejects_every_point() {
        let ack = BatchAck {
            seq: 1,
            accepted: 0,
            batch_error: BatchError::TooManyPoints as i32,
            batch_error_message: "too big".into(),
            ..Default::default()
        };
        let o = AckOutcome::classify(&ack, 50);
        assert_eq!(o.accepted, 0);
        assert!(o.retry.is_empty());
        assert_eq!(
            o.rejected,
            BTreeMap::from([("batch_too_many_points".into(), 50)])
        );
        let unknown = BatchAck {
            batch_error: 42,
            ..ack
        };
        assert_eq!(
            AckOutcome::classify(&unknown, 3).rejected,
            BTreeMap::from([("batch_unknown_42".into(), 3)])
        );
    }

    #[test]
    fn overloaded_and_shutting_down_batches_are_resent_whole() {
        for (error, name) in [
            (BatchError::Overloaded, "batch_overloaded"),
            (BatchError::ShuttingDown, "batch_shutting_down"),
        ] {
            let ack = BatchAck {
                seq: 1,
                batch_error: error as i32,
                ..Default::default()
            };
            let o = AckOutcome::classify(&ack, 4);
            assert_eq!(o.retry, vec![0, 1, 2, 3], "{name}");
            assert_eq!(o.retry_reasons, BTreeMap::from([(name.into(), 4)]));
            assert_eq!((o.accepted, o.rejected_total()), (0, 0));
        }
        assert!(!batch_error_is_retryable(BatchError::None as i32));
        assert!(!batch_error_is_retryable(
            BatchError::InvalidNameTable as i32
        ));
    }

    #[test]
    fn short_acks_resend_every_point_they_leave_unclear() {
        let ack = BatchAck {
            seq: 1,
            accepted: 90,
            errors: vec![point_error(0, RejectReason::NonFiniteValue)],
            ..Default::default()
        };
        let o = AckOutcome::classify(&ack, 100);
        // 99 points without an error but only 90 stored: which 90 is
        // unknown, so none counts as acked and all 99 go again.
        assert_eq!((o.accepted, o.rejected_total(), o.unaccounted), (0, 1, 99));
        assert_eq!(o.retry, (1..100).collect::<Vec<u32>>());
        assert_eq!(o.retry_reasons, BTreeMap::from([(UNACCOUNTED.into(), 99)]));
        // An ack claiming more than was sent is capped.
        let over = BatchAck {
            seq: 1,
            accepted: 500,
            ..Default::default()
        };
        let o = AckOutcome::classify(&over, 100);
        assert_eq!(o.accepted, 100);
        assert_eq!(o.accepted_indexes.len(), 100);
        // Out-of-range and repeated indexes are ignored.
        let odd = BatchAck {
            seq: 1,
            accepted: 1,
            errors: vec![
                point_error(1, RejectReason::InvalidHostId),
                point_error(1, RejectReason::Unavailable),
                point_error(9, RejectReason::InvalidHostId),
            ],
            ..Default::default()
        };
        let o = AckOutcome::classify(&odd, 2);
        assert_eq!(o.accepted_indexes, vec![0]);
        assert_eq!(o.rejected, BTreeMap::from([("invalid_host_id".into(), 1)]));
        assert!(o.retry.is_empty());
    }

    #[test]
    fn every_point_lands_in_exactly_one_place() {
        let ack = BatchAck {
            seq: 1,
            accepted: 5,
            errors: vec![
                point_error(2, RejectReason::Unavailable),
                point_error(4, RejectReason::TimestampInFuture),
                point_error(6, RejectReason::Unavailable),
            ],
            ..Default::default()
        };
        let o = AckOutcome::classify(&ack, 8);
        let mut all: Vec<u32> = o.accepted_indexes.iter().chain(&o.retry).copied().collect();
        all.push(4);
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<u32>>());
        assert_eq!(o.accepted + o.rejected_total() + o.retry.len() as u64, 8);
    }

    #[test]
    fn unknown_enum_values_get_names() {
        assert_eq!(reject_reason_name(42), "unknown_42");
        assert_eq!(batch_error_name(42), "batch_unknown_42");
        assert_eq!(
            reject_reason_name(RejectReason::InvalidHostId as i32),
            "invalid_host_id"
        );
    }

    #[test]
    fn rate_math() {
        assert_eq!(rate(1000, Duration::from_millis(500)), 2000.0);
        assert_eq!(rate(1000, Duration::ZERO), 0.0);
        let report = LoadReport {
            sent: 12_000,
            acked: 10_000,
            rejected: 1_500,
            rejected_by_reason: BTreeMap::new(),
            failed: 500,
            failed_by_reason: BTreeMap::new(),
            resent: 700,
            resends_batches: 7,
            retries_by_reason: BTreeMap::new(),
            batches_sent: 120,
            batches_acked: 115,
            batches_failed: 5,
            elapsed: Duration::from_secs(4),
            latency: LatencySummary::default(),
            acked_points: None,
            ack_times: None,
        };
        assert_eq!(report.points_per_s(), 2500.0);
        assert_eq!(report.settled(), report.sent);
    }

    #[test]
    fn progress_rate_is_over_the_last_interval() {
        let now = Totals {
            sent: 5000,
            acked: 4000,
            rejected: 0,
            resent: 12,
            failed: 0,
        };
        let p = Progress::new(
            Duration::from_secs(3),
            now,
            (Duration::from_secs(2), 3000),
            1.5,
        );
        assert_eq!(p.points_per_s, 1000.0);
        assert!(p.to_string().contains("rate=1000 points/s"));
        assert!(p.to_string().contains("resent=12 "));
    }

    #[test]
    fn latency_percentiles_in_ms() {
        let mut h = new_latency_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1..=1000 ms
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        // hdrhistogram keeps 3 significant digits.
        assert!((s.p50_ms - 500.0).abs() <= 0.5, "{s:?}");
        assert!((s.p90_ms - 900.0).abs() <= 0.9, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() <= 1.0, "{s:?}");
        assert_eq!(
            LatencySummary::from_histogram(&new_latency_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn counters_add_up_and_report_new_reasons_once() {
        let c = Counters::default();
        c.record_sent(100);
        c.record_sent(100);
        c.record_sent(100);
        let mut o = AckOutcome {
            accepted: 98,
            ..Default::default()
        };
        o.rejected.insert("timestamp_in_future".into(), 2);
        assert_eq!(
            c.record_ack(&o, Duration::from_millis(3)),
            vec!["timestamp_in_future".to_string()]
        );
        assert!(c.record_ack(&o, Duration::from_millis(5)).is_empty());
        c.record_failed(100, 1, "drain_timeout");
        c.record_failed(0, 0, "nothing");
        let r = c.report(Duration::from_secs(2));
        assert_eq!(r.sent, 300);
        assert_eq!(r.settled(), r.sent);
        assert_eq!(r.rejected_by_reason["timestamp_in_future"], 4);
        assert_eq!(
            r.failed_by_reason,
            BTreeMap::from([("drain_timeout".into(), 100)])
        );
        assert_eq!(
            (r.batches_sent, r.batches_acked, r.batches_failed),
            (3, 2, 1)
        );
        assert_eq!(r.latency.count, 2);
        assert_eq!(r.points_per_s(), 98.0);
        assert_eq!(r.acked_points, None, "not recorded unless asked");
    }

    #[test]
    fn resends_count_apart_from_distinct_points() {
        let c = Counters::new(true);
        // One batch of 4 points: 2 stored, 2 unavailable.
        c.record_sent(4);
        let first = AckOutcome::classify(
            &BatchAck {
                seq: 1,
                accepted: 2,
                errors: vec![
                    point_error(1, RejectReason::Unavailable),
                    point_error(3, RejectReason::Unavailable),
                ],
                ..Default::default()
            },
            4,
        );
        assert_eq!(
            c.record_ack(&first, Duration::from_millis(1)),
            vec!["unavailable".to_string()]
        );
        c.record_acked_points(&[(0, 100), (2, 100)]);
        // The 2 go again, the stream breaks, they go once more and are stored.
        c.record_resent(2);
        c.record_retry(2, "stream_closed");
        c.record_resent(2);
        c.record_ack(
            &AckOutcome::classify(
                &BatchAck {
                    seq: 3,
                    accepted: 2,
                    ..Default::default()
                },
                2,
            ),
            Duration::from_millis(1),
        );
        c.record_acked_points(&[(3, 100), (1, 100)]);
        let r = c.report(Duration::from_secs(1));
        assert_eq!((r.sent, r.acked, r.rejected, r.failed), (4, 4, 0, 0));
        assert_eq!((r.resent, r.resends_batches), (4, 2));
        assert_eq!(
            r.retries_by_reason,
            BTreeMap::from([("stream_closed".into(), 2), ("unavailable".into(), 2)])
        );
        assert_eq!(
            r.acked_points,
            Some(vec![(0, 100), (1, 100), (2, 100), (3, 100)])
        );
        let text = r.to_string();
        assert!(text.contains("resent        4 (2 batches)"), "{text}");
        assert!(text.contains("failed        0"), "{text}");
    }

    #[test]
    fn json_line_has_the_documented_keys() {
        let c = Counters::default();
        c.record_sent(10);
        c.record_ack(
            &AckOutcome {
                accepted: 10,
                ..Default::default()
            },
            Duration::from_millis(2),
        );
        c.record_resent(3);
        let line = c.report(Duration::from_secs(1)).to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "sent",
            "acked",
            "rejected",
            "failed",
            "resent",
            "resends_batches",
            "elapsed_s",
            "points_per_s",
            "ack_p50_ms",
            "ack_p99_ms",
            "failed_by_reason",
            "retries_by_reason",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {line}");
        }
        assert!(v.get("acked_points").is_none(), "never in the json line");
        assert_eq!(v["acked"], 10);
        assert_eq!(
            (v["resent"].as_u64(), v["resends_batches"].as_u64()),
            (Some(3), Some(1))
        );
        assert_eq!(v["points_per_s"], 10.0);
    }
}
