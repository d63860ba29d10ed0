//! Aggregation functions and step buckets: pure, no I/O.

use crate::error::QueryError;
use broker_proto::v1::AggregateFunction;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggFn {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    P50,
    P90,
    P99,
}

impl AggFn {
    pub const ALL: [AggFn; 8] = [
        AggFn::Avg,
        AggFn::Min,
        AggFn::Max,
        AggFn::Sum,
        AggFn::Count,
        AggFn::P50,
        AggFn::P90,
        AggFn::P99,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AggFn::Avg => "avg",
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Sum => "sum",
            AggFn::Count => "count",
            AggFn::P50 => "p50",
            AggFn::P90 => "p90",
            AggFn::P99 => "p99",
        }
    }

    pub fn to_proto(self) -> AggregateFunction {
        match self {
            AggFn::Avg => AggregateFunction::Avg,
            AggFn::Min => AggregateFunction::Min,
            AggFn::Max => AggregateFunction::Max,
            AggFn::Sum => AggregateFunction::Sum,
            AggFn::Count => AggregateFunction::Count,
            AggFn::P50 => AggregateFunction::P50,
            AggFn::P90 => AggregateFunction::P90,
            AggFn::P99 => AggregateFunction::P99,
        }
    }

    /// `function` of a gRPC request; UNSPECIFIED and unknown numbers are
    /// errors naming the parameter.
    pub fn from_proto(v: i32) -> Result<Self, QueryError> {
        match AggregateFunction::try_from(v) {
            Ok(AggregateFunction::Avg) => Ok(AggFn::Avg),
            Ok(AggregateFunction::Min) => Ok(AggFn::Min),
            Ok(AggregateFunction::Max) => Ok(AggFn::Max),
            Ok(AggregateFunction::Sum) => Ok(AggFn::Sum),
            Ok(AggregateFunction::Count) => Ok(AggFn::Count),
            Ok(AggregateFunction::P50) => Ok(AggFn::P50),
            Ok(AggregateFunction::P90) => Ok(AggFn::P90),
            Ok(AggregateFunction::P99) => Ok(AggFn::P99),
            _ => Err(QueryError::invalid(
                "function",
                format!("{v} is not a function; valid functions are: {}", names()),
            )),
        }
    }

    /// Applies the function to `values` (reordered in place for the
    /// percentiles). `None` when there is no value.
    pub fn apply(self, values: &mut [f64]) -> Option<f64> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        Some(match self {
            AggFn::Sum => values.iter().sum(),
            AggFn::Avg => values.iter().sum::<f64>() / n,
            AggFn::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            AggFn::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            AggFn::Count => n,
            AggFn::P50 => percentile(values, 0.50),
            AggFn::P90 => percentile(values, 0.90),
            AggFn::P99 => percentile(values, 0.99),
        })
    }
}

fn names() -> String {
    AggFn::ALL
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for AggFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AggFn {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AggFn::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                QueryError::invalid(
                    "function",
                    format!("unknown function {s:?}; valid functions are: {}", names()),
                )
            })
    }
}

/// The `q` quantile (0..=1) by linear interpolation between the closest
/// ranks: position `q * (n - 1)` in the sorted values (numpy's default,
/// Prometheus's `quantile_over_time`). `values` must not be empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    values[lo] + (values[hi] - values[lo]) * frac
}

/// Buckets of `[start, end]`: the whole range when `step` is 0, else
/// `[start + k*step, start + (k+1)*step)`, the last one ending at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buckets {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Buckets {
    pub fn count(&self) -> usize {
        if self.step == 0 {
            1
        } else {
            ((self.end - self.start) / self.step + 1) as usize
        }
    }

    /// The bucket of timestamp `ts` (which lies in `[start, end]`).
    pub fn index(&self, ts: i64) -> usize {
        if self.step == 0 {
            0
        } else {
            ((ts - self.start) / self.step) as usize
        }
    }

    /// The timestamp a bucket is reported at: its start.
    pub fn timestamp(&self, index: usize) -> i64 {
        self.start + self.step * index as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions() {
        let v = [4.0, 1.0, 3.0, 2.0];
        let f = |f: AggFn| f.apply(&mut v.clone()).unwrap();
        assert_eq!(f(AggFn::Sum), 10.0);
        assert_eq!(f(AggFn::Avg), 2.5);
        assert_eq!(f(AggFn::Min), 1.0);
        assert_eq!(f(AggFn::Max), 4.0);
        assert_eq!(f(AggFn::Count), 4.0);
        assert_eq!(f(AggFn::P50), 2.5);
        // pos = 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
        assert!((f(AggFn::P90) - 3.7).abs() < 1e-12);
        assert_eq!(AggFn::P99.apply(&mut [7.0]), Some(7.0));
        assert_eq!(AggFn::Avg.apply(&mut []), None);
    }

    #[test]
    fn names_round_trip_and_unknown_is_named() {
        for f in AggFn::ALL {
            assert_eq!(f.as_str().parse::<AggFn>().unwrap(), f);
            assert_eq!(AggFn::from_proto(f.to_proto() as i32).unwrap(), f);
        }
        let e = "median".parse::<AggFn>().unwrap_err().to_string();
        assert!(
            e.starts_with("function: unknown function \"median\""),
            "{e}"
        );
        assert!(AggFn::from_proto(0).is_err());
    }

    #[test]
    fn buckets() {
        let b = Buckets {
            start: 100,
            end: 220,
            step: 60,
        };
        assert_eq!(b.count(), 3);
        assert_eq!(b.index(100), 0);
        assert_eq!(b.index(159), 0);
        assert_eq!(b.index(160), 1);
        assert_eq!(b.index(220), 2);
        assert_eq!(b.timestamp(2), 220);
        let whole = Buckets { step: 0, ..b };
        assert_eq!((whole.count(), whole.index(219)), (1, 0));
    }
}
