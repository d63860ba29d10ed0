//! `histogram_quantile` over classic Prometheus histograms: series that
//! differ only in their `le` label are one histogram's cumulative buckets
//! (as remote write and OTLP store them); the quantile is interpolated
//! linearly within the bucket it falls in, as Prometheus 2.x's
//! `bucketQuantile` does.

use super::{Labels, NAME, Scalar, Series};
use std::collections::BTreeMap;

const LE: &str = "le";

/// The `q` quantile (per step) of each histogram in `v`, labelled with
/// the histogram's labels (without `le` and the metric name). Series
/// without a parseable `le` are ignored.
pub fn quantiles(q: &Scalar, v: Vec<Series>) -> Vec<Series> {
    // histogram labels -> step -> (upper bound, cumulative count)
    let mut histograms: BTreeMap<Labels, BTreeMap<i64, Vec<(f64, f64)>>> = BTreeMap::new();
    for mut s in v {
        let Some(bound) = s.labels.remove(LE).and_then(|le| parse_bound(&le)) else {
            continue;
        };
        s.labels.remove(NAME);
        let h = histograms.entry(s.labels).or_default();
        for (t, count) in s.points {
            h.entry(t).or_default().push((bound, count));
        }
    }
    histograms
        .into_iter()
        .map(|(labels, by_t)| Series {
            labels,
            points: by_t
                .into_iter()
                .map(|(t, mut buckets)| (t, bucket_quantile(q.at(t), &mut buckets)))
                .collect(),
        })
        .collect()
}

/// An `le` value: a float, `+Inf`/`Inf` included.
fn parse_bound(le: &str) -> Option<f64> {
    match le.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

/// Prometheus 2.x's `bucketQuantile`: buckets sorted by bound, equal
/// bounds merged, counts made monotonic; NaN without a `+Inf` bucket,
/// with fewer than two buckets or no observations.
fn bucket_quantile(q: f64, buckets: &mut [(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Coalesce equal bounds.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for &(bound, count) in buckets.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => merged.push((bound, count)),
        }
    }
    // Ensure monotonic counts.
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1]
        .iter()
        .position(|b| b.1 >= rank)
        .unwrap_or(merged.len() - 1);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // 10 observations: 2 <= 0.1, 6 <= 0.5, 9 <= 1, 10 in all.
        let mut b = vec![(1.0, 9.0), (0.1, 2.0), (f64::INFINITY, 10.0), (0.5, 6.0)];
        assert_eq!(bucket_quantile(0.5, &mut b), 0.1 + 0.4 * (3.0 / 4.0));
        assert_eq!(bucket_quantile(0.1, &mut b), 0.1 * (1.0 / 2.0));
        // Past the last finite bucket: its bound.
        assert_eq!(bucket_quantile(0.99, &mut b), 1.0);
        assert!(bucket_quantile(f64::NAN, &mut b).is_nan());
        assert_eq!(bucket_quantile(-1.0, &mut b), f64::NEG_INFINITY);
        assert!(bucket_quantile(0.5, &mut [(1.0, 3.0)]).is_nan());
    }

    #[test]
    fn buckets_group_by_labels_without_le() {
        let s = |le: &str, job: &str, count: f64| Series {
            labels: [("__name__", "h_bucket"), ("le", le), ("job", job)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            points: vec![(1000, count)],
        };
        let out = quantiles(
            &Scalar::Const(0.5),
            vec![
                s("1", "a", 1.0),
                s("+Inf", "a", 2.0),
                s("2", "b", 4.0),
                s("+Inf", "b", 4.0),
                s("x", "b", 1.0),
            ],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].labels.get("job").unwrap(), "a");
        assert!(!out[0].labels.contains_key("le") && !out[0].labels.contains_key(NAME));
        assert_eq!(out[0].points, vec![(1000, 1.0)]);
        assert_eq!(out[1].points, vec![(1000, 1.0)]);
    }
}
