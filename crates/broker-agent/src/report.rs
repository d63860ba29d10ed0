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

/// What one ack says about the points of its batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckOutcome {
    /// Points stored.
    pub accepted: u64,
    /// Points not stored, by reason (`timestamp_too_old`, `batch_overloaded`, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Points the ack accounts for neither way (a gateway bug; counted as
    /// failed).
    pub unaccounted: u64,
}

impl AckOutcome {
    /// Classifies the ack of a batch of `points` points. A batch-level error
    /// rejects every point of the batch under `batch_<error>`.
    pub fn classify(ack: &BatchAck, points: u64) -> Self {
        let mut out = AckOutcome::default();
        if ack.batch_error != BatchError::None as i32 {
            out.rejected
                .insert(batch_error_name(ack.batch_error), points);
            return out;
        }
        out.accepted = u64::from(ack.accepted).min(points);
        for e in &ack.errors {
            *out.rejected
                .entry(reject_reason_name(e.reason))
                .or_default() += 1;
        }
        let rejected = out.rejected_total().min(points - out.accepted);
        out.unaccounted = points - out.accepted - rejected;
        out
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
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
#[derive(Debug)]
pub(crate) struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_acked: AtomicU64,
    pub batches_failed: AtomicU64,
    pub rejected_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Ack latency in µs.
    pub latency: Mutex<Histogram<u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            batches_sent: AtomicU64::new(0),
            batches_acked: AtomicU64::new(0),
            batches_failed: AtomicU64::new(0),
            rejected_by_reason: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(new_latency_histogram()),
        }
    }
}

impl Counters {
    pub fn record_sent(&self, points: u64) {
        self.sent.fetch_add(points, Ordering::Relaxed);
        self.batches_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an ack; returns the reasons seen here for the first time in
    /// the run, so the caller can log each kind of rejection once.
    pub fn record_ack(&self, outcome: &AckOutcome, latency: Duration) -> Vec<String> {
        self.acked.fetch_add(outcome.accepted, Ordering::Relaxed);
        self.batches_acked.fetch_add(1, Ordering::Relaxed);
        let mut new_reasons = Vec::new();
        if !outcome.rejected.is_empty() {
            self.rejected
                .fetch_add(outcome.rejected_total(), Ordering::Relaxed);
            let mut by_reason = lock(&self.rejected_by_reason);
            for (reason, n) in &outcome.rejected {
                let slot = by_reason.entry(reason.clone()).or_default();
                if *slot == 0 {
                    new_reasons.push(reason.clone());
                }
                *slot += n;
            }
        }
        if outcome.unaccounted > 0 {
            self.failed
                .fetch_add(outcome.unaccounted, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        lock(&self.latency).saturating_record(us.clamp(1, LATENCY_MAX_US));
        new_reasons
    }

    pub fn record_failed(&self, points: u64, batches: u64) {
        self.failed.fetch_add(points, Ordering::Relaxed);
        self.batches_failed.fetch_add(batches, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        Totals {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
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
            batches_sent: self.batches_sent.load(Ordering::Relaxed),
            batches_acked: self.batches_acked.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
            elapsed,
            latency: self.latency(),
        }
    }
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
    pub failed: u64,
}

/// A once-a-second snapshot of a running load.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub elapsed: Duration,
    /// Points handed to a stream.
    pub sent: u64,
    /// Points the gateway stored (acked as accepted).
    pub acked: u64,
    pub rejected: u64,
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
            "[{:>6.1}s] sent={} acked={} rejected={} failed={} rate={:.0} points/s ack_p99={:.1}ms",
            self.elapsed.as_secs_f64(),
            self.sent,
            self.acked,
            self.rejected,
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

/// What a load run did. Every sent point ends up in exactly one of `acked`,
/// `rejected` and `failed`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Points handed to a stream.
    pub sent: u64,
    /// Points acknowledged as stored.
    pub acked: u64,
    /// Points acknowledged as not stored (per point or whole batch).
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Points sent and never acknowledged: the stream broke, or no ack came
    /// before the drain timeout.
    pub failed: u64,
    pub batches_sent: u64,
    pub batches_acked: u64,
    pub batches_failed: u64,
    /// From the first send to the last ack (or the end of the drain).
    pub elapsed: Duration,
    pub latency: LatencySummary,
}

/// The `--json` summary line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonSummary {
    pub sent: u64,
    pub acked: u64,
    pub rejected: u64,
    pub failed: u64,
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

    pub fn json_summary(&self) -> JsonSummary {
        JsonSummary {
            sent: self.sent,
            acked: self.acked,
            rejected: self.rejected,
            failed: self.failed,
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
            "failed        {} ({} batches unacked)",
            self.failed, self.batches_failed
        )?;
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
    fn point_errors_are_counted_by_reason() {
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
        assert_eq!(o.rejected["timestamp_too_old"], 2);
        assert_eq!(o.rejected["unavailable"], 1);
        assert_eq!(o.unaccounted, 0);
    }

    #[test]
    fn batch_error_rejects_every_point() {
        let ack = BatchAck {
            seq: 1,
            accepted: 0,
            batch_error: BatchError::Overloaded as i32,
            batch_error_message: "too busy".into(),
            ..Default::default()
        };
        let o = AckOutcome::classify(&ack, 50);
        assert_eq!(o.accepted, 0);
        assert_eq!(
            o.rejected,
            BTreeMap::from([("batch_overloaded".into(), 50)])
        );
    }

    #[test]
    fn short_acks_leave_the_rest_unaccounted() {
        let ack = BatchAck {
            seq: 1,
            accepted: 90,
            errors: vec![point_error(0, RejectReason::NonFiniteValue)],
            ..Default::default()
        };
        let o = AckOutcome::classify(&ack, 100);
        assert_eq!((o.accepted, o.rejected_total(), o.unaccounted), (90, 1, 9));
        // An ack claiming more than was sent is capped.
        let over = BatchAck {
            seq: 1,
            accepted: 500,
            ..Default::default()
        };
        assert_eq!(AckOutcome::classify(&over, 100).accepted, 100);
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
            batches_sent: 120,
            batches_acked: 115,
            batches_failed: 5,
            elapsed: Duration::from_secs(4),
            latency: LatencySummary::default(),
        };
        assert_eq!(report.points_per_s(), 2500.0);
    }

    #[test]
    fn progress_rate_is_over_the_last_interval() {
        let now = Totals {
            sent: 5000,
            acked: 4000,
            rejected: 0,
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
        c.record_failed(100, 1);
        let r = c.report(Duration::from_secs(2));
        assert_eq!(r.sent, 300);
        assert_eq!(r.acked + r.rejected + r.failed, r.sent);
        assert_eq!(r.rejected_by_reason["timestamp_in_future"], 4);
        assert_eq!(
            (r.batches_sent, r.batches_acked, r.batches_failed),
            (3, 2, 1)
        );
        assert_eq!(r.latency.count, 2);
        assert_eq!(r.points_per_s(), 98.0);
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
        let line = c.report(Duration::from_secs(1)).to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for key in [
            "sent",
            "acked",
            "rejected",
            "failed",
            "elapsed_s",
            "points_per_s",
            "ack_p50_ms",
            "ack_p99_ms",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {line}");
        }
        assert_eq!(v["acked"], 10);
        assert_eq!(v["points_per_s"], 10.0);
    }
}
