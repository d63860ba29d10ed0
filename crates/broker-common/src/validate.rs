//! Validation of agent batches (DESIGN.md "Delivery contract"): every bad
//! point gets its own error naming the field and the problem; the valid
//! points of the same batch go on.

use crate::config::GatewayConfig;
use broker_proto::v1::{BatchError, MetricBatch, PointError, RejectReason};
use std::time::Duration;

/// Limits the gateway enforces, from `gateway.*` and `ttl`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_points_per_batch: usize,
    pub max_metrics_per_point: usize,
    pub max_host_id_len: usize,
    pub max_metric_name_len: usize,
    pub max_labels_per_point: usize,
    pub max_label_value_len: usize,
    pub max_future_skew_secs: i64,
    pub max_age_secs: i64,
    /// Refuse a batch whose name table holds entries no point uses. On for
    /// what clients send; off between services (a router sends each writer
    /// the whole table with only its share of the points).
    pub reject_unused_names: bool,
    /// Take NaN and ±Inf values (and Prometheus's staleness markers): off
    /// for the agent protocol (the seed's rule), on for Prometheus remote
    /// write and OTLP, whose data model has them, and between services.
    pub allow_non_finite: bool,
}

impl Limits {
    pub fn new(g: &GatewayConfig, ttl: Duration) -> Self {
        Self {
            max_points_per_batch: g.max_points_per_batch,
            max_metrics_per_point: g.max_metrics_per_point,
            max_host_id_len: g.max_host_id_len,
            max_metric_name_len: g.max_metric_name_len,
            max_labels_per_point: g.max_labels_per_point,
            max_label_value_len: 256,
            max_future_skew_secs: g.max_future_skew.as_secs() as i64,
            max_age_secs: ttl.as_secs() as i64,
            reject_unused_names: true,
            allow_non_finite: false,
        }
    }

    /// The same limits for samples of Prometheus remote write and OTLP:
    /// NaN, ±Inf and staleness markers are values there.
    pub fn prometheus(mut self) -> Self {
        self.allow_non_finite = true;
        self
    }

    /// What a batch may decode to, checked on its wire bytes first
    /// ([`broker_proto::bounded`]).
    pub fn batch_bounds(&self) -> broker_proto::bounded::BatchBounds {
        broker_proto::bounded::BatchBounds {
            max_points: self.max_points_per_batch,
            max_metrics_per_point: self.max_metrics_per_point,
            max_labels_per_point: self.max_labels_per_point,
        }
    }

    /// The same limits for a batch from another service (router, writer):
    /// the name table may hold names of points sent elsewhere.
    pub fn internal(mut self) -> Self {
        self.reject_unused_names = false;
        self.allow_non_finite = true;
        self
    }
}

/// The accepted part of a batch.
#[derive(Debug)]
pub struct Validated {
    /// Accepted points only, with the original name table.
    pub batch: MetricBatch,
    /// `index_map[i]` is the index in the original batch of accepted point i.
    pub index_map: Vec<u32>,
    /// One error per rejected point, by original index, ascending.
    pub errors: Vec<PointError>,
}

/// A problem with the batch as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRejection {
    pub error: BatchError,
    pub message: String,
}

/// Characters allowed in host ids: they become part of Redis keys, so
/// nothing that could act as a pattern (`*`, `?`, `[`), hash tag (`{`, `}`),
/// separator (`:`) or whitespace.
pub fn host_id_byte(b: u8) -> bool {
    crate::host_id::byte(b)
}

/// Characters allowed in metric names and label names.
pub fn name_byte(b: u8) -> bool {
    crate::series_name::base_byte(b)
}

fn check_id(
    kind: &str,
    s: &str,
    max: usize,
    ok: fn(u8) -> bool,
    allowed: &str,
) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{kind} is empty"));
    }
    if s.len() > max {
        return Err(format!(
            "{kind} is {} bytes long, the limit is {max}",
            s.len()
        ));
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii() || !ok(*c as u8)) {
        let shown: String = s.chars().take(64).collect();
        return Err(format!(
            "{kind} {shown:?} contains {c:?} (allowed: {allowed})"
        ));
    }
    Ok(())
}

const HOST_ALLOWED: &str = "letters, digits, '.', '_', '-'";
const NAME_ALLOWED: &str = "letters, digits, '.', '_', '-', ':'";

/// A metric name: a plain name of [`name_byte`]s, optionally followed by
/// its own labels in Prometheus's series notation,
/// `node_cpu_seconds_total{cpu="0",mode="idle"}`
/// ([`crate::series_name`]); at most `max` bytes in all.
pub fn check_metric_name(n: &str, max: usize) -> Result<(), String> {
    crate::series_name::check(n, max).map_err(|e| {
        if e.contains("bytes long") {
            format!("{e} (gateway.max_metric_name_len)")
        } else {
            e
        }
    })
}

pub fn validate_batch(
    batch: MetricBatch,
    limits: &Limits,
    now: i64,
) -> Result<Validated, BatchRejection> {
    if batch.points.len() > limits.max_points_per_batch {
        return Err(BatchRejection {
            error: BatchError::TooManyPoints,
            message: format!(
                "batch has {} points, the limit is {} (gateway.max_points_per_batch); split it",
                batch.points.len(),
                limits.max_points_per_batch
            ),
        });
    }
    if let Some(message) = name_table_problem(&batch, limits) {
        return Err(BatchRejection {
            error: BatchError::InvalidNameTable,
            message,
        });
    }
    let name_problem = name_problems(&batch.metric_names, limits);
    let table_ok = name_problem.iter().all(Option::is_none);

    let MetricBatch {
        seq,
        metric_names,
        points,
    } = batch;
    let mut accepted = Vec::with_capacity(points.len());
    let mut index_map = Vec::with_capacity(points.len());
    let mut errors = Vec::new();
    let mut used = Vec::<u64>::new();
    for (i, p) in points.into_iter().enumerate() {
        let problem = check_point(
            &p,
            &metric_names,
            &name_problem,
            table_ok,
            limits,
            now,
            &mut used,
        );
        match problem {
            None => {
                index_map.push(i as u32);
                accepted.push(p);
            }
            Some((reason, message)) => errors.push(PointError {
                index: i as u32,
                reason: reason as i32,
                message,
                retryable: false,
            }),
        }
    }
    Ok(Validated {
        batch: MetricBatch {
            seq,
            metric_names,
            points: accepted,
        },
        index_map,
        errors,
    })
}

/// Problems with name-table entries, reported on the points that use them.
fn name_problems(names: &[String], limits: &Limits) -> Vec<Option<String>> {
    let mut seen = std::collections::HashSet::with_capacity(names.len());
    names
        .iter()
        .map(|n| {
            check_metric_name(n, limits.max_metric_name_len)
                .err()
                .or_else(|| {
                    (!seen.insert(n.as_str()))
                        .then(|| format!("metric name {n:?} appears twice in metric_names"))
                })
        })
        .collect()
}

/// The first problem of a batch another service sent (a router's to a
/// writer, a gateway's to a router): the same checks as
/// [`validate_batch`], but any problem refuses the whole batch, since a
/// peer that validated would have sent none. `None`: every point is valid.
pub fn first_problem(batch: &MetricBatch, limits: &Limits, now: i64) -> Option<String> {
    if batch.points.len() > limits.max_points_per_batch {
        return Some(format!(
            "batch has {} points, the limit is {}",
            batch.points.len(),
            limits.max_points_per_batch
        ));
    }
    if let Some(m) = name_table_problem(batch, limits) {
        return Some(m);
    }
    let name_problem = name_problems(&batch.metric_names, limits);
    let table_ok = name_problem.iter().all(Option::is_none);
    let mut used = Vec::new();
    batch.points.iter().enumerate().find_map(|(i, p)| {
        check_point(
            p,
            &batch.metric_names,
            &name_problem,
            table_ok,
            limits,
            now,
            &mut used,
        )
        .map(|(_, m)| format!("point {i} (host {:?}): {m}", p.host_id))
    })
}

/// What is wrong with the name table as a whole, before any point is
/// looked at: more entries than the batch could use, an entry longer than
/// `max_metric_name_len` (it would be copied, and interned by the writer,
/// for nothing), or (with `reject_unused_names`) an entry no point uses.
fn name_table_problem(batch: &MetricBatch, limits: &Limits) -> Option<String> {
    let names = &batch.metric_names;
    let most = limits
        .max_points_per_batch
        .saturating_mul(limits.max_metrics_per_point);
    if names.len() > most {
        return Some(format!(
            "metric_names has {} entries, more than max_points_per_batch x max_metrics_per_point ({most})",
            names.len()
        ));
    }
    if let Some((i, n)) = names
        .iter()
        .enumerate()
        .find(|(_, n)| n.len() > limits.max_metric_name_len)
    {
        let shown: String = n.chars().take(64).collect();
        return Some(format!(
            "metric_names[{i}] ({shown:?}...) is {} bytes long, the limit is {} (gateway.max_metric_name_len)",
            n.len(),
            limits.max_metric_name_len
        ));
    }
    if !limits.reject_unused_names || batch.points.is_empty() {
        return None;
    }
    // Which entries some point refers to (valid or not: the table is
    // judged by the batch's own references).
    let mut used = vec![false; names.len()];
    let mut prefix = 0;
    for p in &batch.points {
        if p.name_index.is_empty() {
            prefix = prefix.max(p.values.len().min(names.len()));
        } else {
            for &ix in &p.name_index {
                if let Some(u) = used.get_mut(ix as usize) {
                    *u = true;
                }
            }
        }
    }
    used[..prefix].iter_mut().for_each(|u| *u = true);
    let unused = used.iter().position(|u| !u)?;
    let shown: String = names[unused].chars().take(64).collect();
    Some(format!(
        "metric_names[{unused}] ({shown:?}) is used by no point; send only the names the points use"
    ))
}

fn check_point(
    p: &broker_proto::v1::Point,
    names: &[String],
    name_problem: &[Option<String>],
    table_ok: bool,
    limits: &Limits,
    now: i64,
    used: &mut Vec<u64>,
) -> Option<(RejectReason, String)> {
    use RejectReason as R;
    if let Err(e) = check_id(
        "host_id",
        &p.host_id,
        limits.max_host_id_len,
        host_id_byte,
        HOST_ALLOWED,
    ) {
        return Some((R::InvalidHostId, e));
    }
    if p.millis >= 1000 {
        return Some((
            R::InvalidMillis,
            format!("millis {} is not within the second (0..=999)", p.millis),
        ));
    }
    if p.timestamp > now.saturating_add(limits.max_future_skew_secs) {
        return Some((
            R::TimestampInFuture,
            format!(
                "timestamp {} is {} s ahead of the gateway clock, the limit is {} s",
                p.timestamp,
                p.timestamp.saturating_sub(now),
                limits.max_future_skew_secs
            ),
        ));
    }
    if p.timestamp < now.saturating_sub(limits.max_age_secs) {
        return Some((
            R::TimestampTooOld,
            format!(
                "timestamp {} is {} s old, older than the ttl of {} s",
                p.timestamp,
                now.saturating_sub(p.timestamp),
                limits.max_age_secs
            ),
        ));
    }
    if p.values.is_empty() {
        return Some((R::NoMetrics, "point has no metric values".into()));
    }
    if p.values.len() > limits.max_metrics_per_point {
        return Some((
            R::TooManyMetrics,
            format!(
                "point has {} metrics, the limit is {} (gateway.max_metrics_per_point)",
                p.values.len(),
                limits.max_metrics_per_point
            ),
        ));
    }
    if p.name_index.is_empty() {
        if p.values.len() > names.len() {
            return Some((
                R::InvalidNameIndex,
                format!(
                    "point has {} values but metric_names has only {} names",
                    p.values.len(),
                    names.len()
                ),
            ));
        }
        if !table_ok && let Some(msg) = name_problem[..p.values.len()].iter().flatten().next() {
            return Some((R::InvalidMetricName, msg.clone()));
        }
    } else {
        if p.name_index.len() != p.values.len() {
            return Some((
                R::InvalidNameIndex,
                format!(
                    "name_index has {} entries but values has {}",
                    p.name_index.len(),
                    p.values.len()
                ),
            ));
        }
        used.clear();
        used.resize(names.len().div_ceil(64), 0);
        for &ix in &p.name_index {
            let ix = ix as usize;
            if ix >= names.len() {
                return Some((
                    R::InvalidNameIndex,
                    format!(
                        "name_index {ix} is out of range, metric_names has {} names",
                        names.len()
                    ),
                ));
            }
            if let Some(msg) = &name_problem[ix] {
                return Some((R::InvalidMetricName, msg.clone()));
            }
            let (w, b) = (ix / 64, 1u64 << (ix % 64));
            if used[w] & b != 0 {
                return Some((
                    R::DuplicateMetric,
                    format!("metric {:?} appears twice in the point", names[ix]),
                ));
            }
            used[w] |= b;
        }
    }
    if let Some((k, v)) = p
        .values
        .iter()
        .enumerate()
        .find(|(_, v)| !limits.allow_non_finite && !v.is_finite())
    {
        let name = if p.name_index.is_empty() {
            &names[k]
        } else {
            &names[p.name_index[k] as usize]
        };
        return Some((
            R::NonFiniteValue,
            format!("metric {name:?} has non-finite value {v}"),
        ));
    }
    if p.labels.len() > limits.max_labels_per_point {
        return Some((
            R::InvalidLabel,
            format!(
                "point has {} labels, the limit is {}",
                p.labels.len(),
                limits.max_labels_per_point
            ),
        ));
    }
    for (k, v) in &p.labels {
        if let Err(e) = check_id(
            "label name",
            k,
            limits.max_metric_name_len,
            name_byte,
            NAME_ALLOWED,
        ) {
            return Some((R::InvalidLabel, e));
        }
        if v.len() > limits.max_label_value_len {
            return Some((
                R::InvalidLabel,
                format!(
                    "label {k:?} value is {} bytes long, the limit is {}",
                    v.len(),
                    limits.max_label_value_len
                ),
            ));
        }
        if v.chars().any(char::is_control) {
            return Some((
                R::InvalidLabel,
                format!("label {k:?} value contains a control character"),
            ));
        }
    }
    None
}

/// Short stable name of a reject reason, for metrics labels.
pub fn reason_label(reason: i32) -> &'static str {
    match RejectReason::try_from(reason).unwrap_or(RejectReason::Unspecified) {
        RejectReason::Unspecified => "unspecified",
        RejectReason::InvalidHostId => "invalid_host_id",
        RejectReason::TimestampInFuture => "timestamp_in_future",
        RejectReason::TimestampTooOld => "timestamp_too_old",
        RejectReason::NonFiniteValue => "non_finite_value",
        RejectReason::TooManyMetrics => "too_many_metrics",
        RejectReason::InvalidMetricName => "invalid_metric_name",
        RejectReason::InvalidNameIndex => "invalid_name_index",
        RejectReason::InvalidLabel => "invalid_label",
        RejectReason::NoMetrics => "no_metrics",
        RejectReason::DuplicateMetric => "duplicate_metric",
        RejectReason::HostLimit => "host_limit",
        RejectReason::SeriesLimit => "series_limit",
        RejectReason::InvalidMillis => "invalid_millis",
        RejectReason::Unavailable => "unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::Point;
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000;

    fn limits() -> Limits {
        Limits::new(&GatewayConfig::default(), Duration::from_secs(7 * 86_400))
    }

    fn point(host: &str, ts: i64, values: Vec<f64>) -> Point {
        Point {
            millis: 0,
            host_id: host.into(),
            timestamp: ts,
            values,
            name_index: vec![],
            labels: Default::default(),
        }
    }

    fn batch(points: Vec<Point>) -> MetricBatch {
        MetricBatch {
            seq: 7,
            metric_names: vec!["cpu".into(), "mem".into()],
            points,
        }
    }

    fn reasons(v: &Validated) -> Vec<(u32, RejectReason)> {
        v.errors
            .iter()
            .map(|e| (e.index, RejectReason::try_from(e.reason).unwrap()))
            .collect()
    }

    #[test]
    fn each_reason_has_a_trigger_and_valid_points_survive() {
        let mut dup = point("h", NOW, vec![1.0, 2.0]);
        dup.name_index = vec![1, 1];
        let mut bad_ix = point("h", NOW, vec![1.0]);
        bad_ix.name_index = vec![9];
        let mut bad_label = point("h", NOW, vec![1.0]);
        bad_label.labels.insert("bad label".into(), "x".into());
        let b = batch(vec![
            point("ok-1", NOW, vec![1.0, 2.0]),
            point("bad*host", NOW, vec![1.0]),
            point("h", NOW + 3600, vec![1.0]),
            point("h", NOW - 8 * 86_400, vec![1.0]),
            point("h", NOW, vec![f64::NAN]),
            point("h", NOW, vec![]),
            point("h", NOW, vec![1.0, 2.0, 3.0]),
            dup,
            bad_ix,
            bad_label,
            point("{tag}", NOW, vec![1.0]),
            point("ok-2", NOW - 10, vec![f64::MAX]),
        ]);
        let v = validate_batch(b, &limits(), NOW).unwrap();
        use RejectReason as R;
        assert_eq!(
            reasons(&v),
            vec![
                (1, R::InvalidHostId),
                (2, R::TimestampInFuture),
                (3, R::TimestampTooOld),
                (4, R::NonFiniteValue),
                (5, R::NoMetrics),
                (6, R::InvalidNameIndex),
                (7, R::DuplicateMetric),
                (8, R::InvalidNameIndex),
                (9, R::InvalidLabel),
                (10, R::InvalidHostId),
            ]
        );
        assert_eq!(v.index_map, vec![0, 11]);
        assert_eq!(v.batch.points.len(), 2);
        assert!(
            v.errors[0].message.contains("'*'"),
            "{}",
            v.errors[0].message
        );
        assert!(
            v.errors[3].message.contains("\"cpu\""),
            "{}",
            v.errors[3].message
        );
    }

    #[test]
    fn too_many_metrics_and_bad_names() {
        let mut l = limits();
        l.max_metrics_per_point = 1;
        let v = validate_batch(batch(vec![point("h", NOW, vec![1.0, 2.0])]), &l, NOW).unwrap();
        assert_eq!(reasons(&v), vec![(0, RejectReason::TooManyMetrics)]);

        let mut b = batch(vec![
            point("h", NOW, vec![1.0]),
            point("h", NOW, vec![1.0, 2.0]),
        ]);
        b.metric_names[1] = "bad name".into();
        let v = validate_batch(b, &limits(), NOW).unwrap();
        // Only the point that uses the bad name is rejected.
        assert_eq!(reasons(&v), vec![(1, RejectReason::InvalidMetricName)]);
    }

    #[test]
    fn a_name_table_with_huge_or_unused_entries_is_rejected_whole() {
        // One valid point and a 1 MiB name nobody uses: refused whole,
        // before anything is copied on.
        let mut b = batch(vec![point("h", NOW, vec![1.0, 2.0])]);
        b.metric_names.push("x".repeat(1 << 20));
        let e = validate_batch(b, &limits(), NOW).unwrap_err();
        assert_eq!(e.error, BatchError::InvalidNameTable);
        assert!(e.message.contains("metric_names[2]"), "{}", e.message);
        assert!(e.message.contains("1048576 bytes"), "{}", e.message);
        // A short unused name: refused from clients, allowed between
        // services (a router sends each writer the whole table).
        let mut b = batch(vec![point("h", NOW, vec![1.0])]);
        b.metric_names.push("disk".into());
        let e = validate_batch(b.clone(), &limits(), NOW).unwrap_err();
        assert_eq!(e.error, BatchError::InvalidNameTable);
        assert!(e.message.contains("used by no point"), "{}", e.message);
        let v = validate_batch(b, &limits().internal(), NOW).unwrap();
        assert!(v.errors.is_empty());
        // name_index references count.
        let mut p = point("h", NOW, vec![1.0]);
        p.name_index = vec![1];
        let mut q = point("h", NOW, vec![1.0]);
        q.name_index = vec![0];
        assert!(validate_batch(batch(vec![p, q]), &limits(), NOW).is_ok());
        // A table longer than any batch could use.
        let mut l = limits();
        l.max_points_per_batch = 1;
        l.max_metrics_per_point = 1;
        let e = validate_batch(batch(vec![point("h", NOW, vec![1.0])]), &l, NOW).unwrap_err();
        assert!(e.message.contains("2 entries"), "{}", e.message);
    }

    #[test]
    fn oversized_batch_is_rejected_whole() {
        let mut l = limits();
        l.max_points_per_batch = 2;
        let b = batch(vec![point("h", NOW, vec![1.0]); 3]);
        let e = validate_batch(b, &l, NOW).unwrap_err();
        assert_eq!(e.error, BatchError::TooManyPoints);
        assert!(e.message.contains("3 points"));
    }

    proptest! {
        #[test]
        fn accepted_plus_rejected_is_everything(
            hosts in prop::collection::vec("[a-z{}* :]{0,12}", 0..40),
            skews in prop::collection::vec(-900_000i64..900_000, 40),
            vals in prop::collection::vec(prop::num::f64::ANY, 40),
        ) {
            let points: Vec<Point> = hosts.iter().enumerate()
                .map(|(i, h)| point(h, NOW + skews[i], vec![vals[i], 1.0]))
                .collect();
            let n = points.len();
            let v = validate_batch(batch(points.clone()), &limits(), NOW).unwrap();
            prop_assert_eq!(v.batch.points.len() + v.errors.len(), n);
            // Every accepted point really is valid, and kept its identity.
            for (k, p) in v.batch.points.iter().enumerate() {
                prop_assert_eq!(p, &points[v.index_map[k] as usize]);
                prop_assert!(p.host_id.bytes().all(host_id_byte) && !p.host_id.is_empty());
                prop_assert!(p.values.iter().all(|x| x.is_finite()));
                prop_assert!(p.timestamp <= NOW + 300 && p.timestamp >= NOW - 7 * 86_400);
            }
            // Errors are sorted by index and never retryable.
            prop_assert!(v.errors.windows(2).all(|w| w[0].index < w[1].index));
            prop_assert!(v.errors.iter().all(|e| !e.retryable && !e.message.is_empty()));
        }
    }
}
