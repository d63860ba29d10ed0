//! Samples of labelled series (Prometheus remote write, OTLP) gathered into
//! the broker's points, and stored through the agents' ingest path.
//!
//! The broker's model is one snapshot per host and time. [`Points`]
//! collects `(host, metric, time, value)` samples: one point per (host,
//! millisecond) (a scrape's samples share their timestamp, so a scrape is
//! one point), the latest sample of a series within a millisecond winning,
//! an invalid name left out as a problem of its own (in a point it would
//! take the host's whole scrape with it). A point's `timestamp` is the
//! second (the shard key stays per host and second) and `millis` the rest. NaN, ±Inf and staleness markers are
//! values here, as in Prometheus. [`store`] sends
//! the points through [`Inner::ingest`] and tallies what became of each
//! sample, for the protocol's answer.

use crate::gateway::Inner;
use crate::metrics::ReasonLabels;
use broker_proto::v1::{MetricBatch, Point};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::{BTreeMap, HashMap};

/// Samples being gathered into points.
#[derive(Debug, Default)]
pub struct Points {
    /// (host, Unix milliseconds) -> metric name -> (time in the protocol's
    /// unit, value): that time orders samples of one millisecond.
    points: BTreeMap<(String, i64), HashMap<String, (i64, f64)>>,
    /// What could not be mapped, with why.
    pub problems: Vec<String>,
    /// Samples put into points.
    pub samples: u64,
    /// Samples skipped: a later one of the same series and millisecond won.
    pub superseded: u64,
    /// Samples left out as problems.
    pub rejected: u64,
}

impl Points {
    /// Adds one sample at `ms` (Unix milliseconds); `order` (the protocol's
    /// own timestamp, finer for OTLP) decides which of two samples of one
    /// series and millisecond wins, the later one in the request on a tie. NaN,
    /// ±Inf and staleness markers are values, as Prometheus defines them
    /// ([`broker_common::value`]).
    pub fn add(&mut self, host: &str, metric: &str, ms: i64, order: i64, value: f64) {
        let value = broker_common::value::stored(value);
        let key = (host.to_string(), ms);
        let slot = self.points.entry(key).or_default();
        match slot.get_mut(metric) {
            Some(prev) => {
                self.superseded += 1;
                if order >= prev.0 {
                    *prev = (order, value);
                }
            }
            None => {
                slot.insert(metric.to_string(), (order, value));
                self.samples += 1;
            }
        }
    }

    /// Leaves `n` samples out, for `problem`.
    pub fn reject(&mut self, n: u64, problem: String) {
        self.rejected += n;
        self.problems.push(problem);
    }

    /// The points, in batches of at most `max_points` points of at most
    /// `max_metrics` metrics each (a host's second with more metrics
    /// becomes several points; both layouts merge them metric by metric).
    /// Points are (host, millisecond): `timestamp` the second, `millis`
    /// the rest.
    pub fn batches(&mut self, max_points: usize, max_metrics: usize) -> Vec<MetricBatch> {
        let mut out = Vec::new();
        let mut batch = Batch::default();
        for ((host, ms), metrics) in std::mem::take(&mut self.points) {
            let mut metrics: Vec<(String, f64)> =
                metrics.into_iter().map(|(n, (_, v))| (n, v)).collect();
            metrics.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for part in metrics.chunks(max_metrics.max(1)) {
                if batch.batch.points.len() >= max_points.max(1) {
                    out.push(std::mem::take(&mut batch).batch);
                }
                batch.push(&host, ms, part);
            }
        }
        if !batch.batch.points.is_empty() {
            out.push(batch.batch);
        }
        out
    }
}

/// A batch being built, with its name table's index.
#[derive(Default)]
struct Batch {
    batch: MetricBatch,
    names: HashMap<String, u32>,
}

impl Batch {
    fn push(&mut self, host: &str, ms: i64, metrics: &[(String, f64)]) {
        let mut point = Point {
            host_id: host.to_string(),
            timestamp: ms.div_euclid(1000),
            millis: ms.rem_euclid(1000) as u32,
            ..Default::default()
        };
        for (name, v) in metrics {
            let next = self.names.len() as u32;
            let i = *self.names.entry(name.clone()).or_insert_with(|| {
                self.batch.metric_names.push(name.clone());
                next
            });
            point.name_index.push(i);
            point.values.push(*v);
        }
        self.batch.points.push(point);
    }
}

/// What became of a request's samples.
#[derive(Debug, Default)]
pub struct Stored {
    pub stored: u64,
    /// Samples not stored: mapping problems and points the ingest path
    /// rejected.
    pub rejected: u64,
    /// Not retryable problems, in order.
    pub problems: Vec<String>,
    /// The first problem the sender should retry (no writer, Redis and
    /// the spool unavailable), if any.
    pub retryable: Option<String>,
}

impl Stored {
    /// One line naming the counts and the first problem (Prometheus and
    /// the OTel SDKs log the first line of an answer), then up to
    /// `max_shown - 1` more problems, one per line.
    pub fn summary(&self, max_shown: usize) -> String {
        let n = self.problems.len();
        let Some(first) = self.problems.first() else {
            return String::new();
        };
        let mut body = format!(
            "{} samples stored, {} rejected, {n} problem(s): {first}\n",
            self.stored, self.rejected
        );
        for p in self.problems.iter().skip(1).take(max_shown.max(1) - 1) {
            body.push_str(p);
            body.push('\n');
        }
        if n > max_shown {
            body.push_str(&format!("... and {} more\n", n - max_shown));
        }
        body
    }
}

/// Sends `points` through the agents' ingest path (validation, routing,
/// ack after durable), all batches at once, and tallies the outcome; counts
/// the protocol's samples by outcome in `counts` (superseded, `skipped`'s
/// kind, stored, rejected).
pub(crate) async fn store(
    inner: &Inner,
    mut points: Points,
    counts: &Family<ReasonLabels, Counter>,
    skipped: (&'static str, u64),
) -> Stored {
    let count = |outcome: &'static str, n: u64| {
        counts.get_or_create(&vec![("outcome", outcome)]).inc_by(n);
    };
    count("superseded", points.superseded);
    count(skipped.0, skipped.1);
    let limits = &inner.limits;
    let batches = points.batches(limits.max_points_per_batch, limits.max_metrics_per_point);
    let mut out = Stored {
        rejected: points.rejected,
        problems: std::mem::take(&mut points.problems),
        ..Default::default()
    };
    let results = futures::future::join_all(batches.into_iter().map(|b| async move {
        // (host, Unix ms, samples) of each point, for the answer.
        let points: Vec<(String, i64, u64)> = b
            .points
            .iter()
            .map(|p| {
                let ms = p.timestamp.saturating_mul(1000) + i64::from(p.millis);
                (p.host_id.clone(), ms, p.values.len() as u64)
            })
            .collect();
        let wait = crate::gateway::Admission::Within(crate::gateway::HTTP_ADMISSION_WAIT);
        (points, inner.ingest(b, wait, true).await)
    }))
    .await;
    for (points, result) in results {
        let all: u64 = points.iter().map(|p| p.2).sum();
        match result {
            Err(rej) => {
                out.rejected += all;
                out.problems.push(rej.message);
            }
            Ok(errors) => {
                out.stored += all;
                for e in errors {
                    let Some((host, ms, n)) = points.get(e.index as usize) else {
                        continue;
                    };
                    out.stored -= n;
                    out.rejected += n;
                    let what = format!("host {host:?} at {} ms: {}", ms, e.message);
                    if e.retryable {
                        out.retryable.get_or_insert(what);
                    } else {
                        out.problems.push(what);
                    }
                }
            }
        }
    }
    count("stored", out.stored);
    count("rejected", out.rejected);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_sample_of_a_millisecond_wins_and_non_finite_values_are_values() {
        let mut p = Points::default();
        p.add("h", "m", 10_000, 10_000_900, 2.0);
        p.add("h", "m", 10_000, 10_000_100, 1.0);
        p.add("h", "n", 10_000, 10_000_000, f64::INFINITY);
        p.add("h", "m", 11_000, 11_000_000, 3.0);
        p.add("h", "q", 11_000, 11_000_000, f64::NAN);
        // Another scrape in the same second: its own point, with millis.
        p.add("h", "m", 11_250, 11_250_000, 4.0);
        assert_eq!((p.samples, p.superseded, p.rejected), (5, 1, 0));
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let b = p.batches(10, 10);
        // (second, millis, sorted value bits): NaN is stored as the NaN
        // sample.
        let got: Vec<(i64, u32, Vec<u64>)> = b[0]
            .points
            .iter()
            .map(|p| {
                let mut v: Vec<u64> = p.values.iter().map(|v| v.to_bits()).collect();
                v.sort_unstable();
                (p.timestamp, p.millis, v)
            })
            .collect();
        let bits = |v: &[f64]| {
            let mut v: Vec<u64> = v.iter().map(|v| v.to_bits()).collect();
            v.sort_unstable();
            v
        };
        let nan = f64::from_bits(broker_common::value::NAN_BITS);
        assert_eq!(
            got,
            vec![
                (10, 0, bits(&[2.0, f64::INFINITY])),
                (11, 0, bits(&[3.0, nan])),
                (11, 250, bits(&[4.0]))
            ]
        );
    }

    #[test]
    fn the_summary_leads_with_counts_and_the_first_problem() {
        let s = Stored {
            stored: 5,
            rejected: 3,
            problems: vec!["a".into(), "b".into(), "c".into()],
            retryable: None,
        };
        assert_eq!(
            s.summary(2),
            "5 samples stored, 3 rejected, 3 problem(s): a\nb\n... and 1 more\n"
        );
        assert_eq!(Stored::default().summary(5), "");
    }
}
