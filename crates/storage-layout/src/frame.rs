//! [`Frame`]: one host's snapshots, columnar, as every read returns them,
//! and [`FrameBuilder`], which merges pieces (chunks, open records, two
//! layouts) into one frame with the seed layout's semantics: snapshots are
//! keyed by timestamp, a later piece's value of a metric wins, and metrics
//! a later piece lacks keep the earlier value (as HSET does).

use std::collections::{BTreeMap, HashMap, HashSet};

/// Snapshots of one host, columnar: `metrics[name][i]` belongs to
/// `timestamps[i]`; NaN where that snapshot lacks the metric. Timestamps
/// are Unix milliseconds as layouts return them, whole seconds after
/// [`Frame::into_seconds`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub timestamps: Vec<i64>,
    pub metrics: BTreeMap<String, Vec<f64>>,
}

impl Frame {
    /// Rough heap size, for caches' weighers.
    pub fn approx_bytes(&self) -> usize {
        64 + self.timestamps.len() * 8
            + self
                .metrics
                .iter()
                .map(|(k, v)| 48 + k.len() + v.len() * 8)
                .sum::<usize>()
    }

    /// Keeps the first `n` snapshots.
    pub fn truncate(&mut self, n: usize) {
        self.timestamps.truncate(n);
        for col in self.metrics.values_mut() {
            col.truncate(n);
        }
    }

    /// The value of `metric` at `ts` (milliseconds; NaN when absent).
    pub fn value_at(&self, metric: &str, ts: i64) -> f64 {
        match (self.timestamps.binary_search(&ts), self.metrics.get(metric)) {
            (Ok(i), Some(col)) => col[i],
            _ => f64::NAN,
        }
    }

    /// The same snapshots by whole second, for the APIs that count in
    /// seconds (the agent protocol's query API, downsampling): snapshots
    /// of one second merge, a later one's value of a metric winning.
    /// Frames of whole-second points (agents) are returned as they are,
    /// their timestamps divided by 1000.
    pub fn into_seconds(mut self) -> Frame {
        if self.timestamps.iter().all(|t| t % 1000 == 0) {
            self.timestamps.iter_mut().for_each(|t| *t /= 1000);
            return self;
        }
        let mut b = FrameBuilder::new(i64::MIN, i64::MAX, &[]);
        let seconds: Vec<i64> = self.timestamps.iter().map(|t| t.div_euclid(1000)).collect();
        for &t in &seconds {
            b.row(t);
        }
        for (name, col) in &self.metrics {
            b.set_column(&seconds, name, col);
        }
        // Columns named by the read but empty stay columns.
        for name in self.metrics.keys() {
            if !b.columns.contains_key(name) {
                b.columns.insert(name.clone(), Vec::new());
            }
        }
        b.finish(None)
    }

    /// Names of the metrics the snapshot at `ts` has, sorted.
    pub fn names_at(&self, ts: i64) -> Vec<String> {
        let Ok(i) = self.timestamps.binary_search(&ts) else {
            return Vec::new();
        };
        self.metrics
            .iter()
            .filter(|(_, col)| !crate::value::is_absent(col[i]))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Collects snapshot values in any order and builds a [`Frame`].
///
/// Pieces usually arrive oldest first (sealed chunks in order, then the
/// open records): while every new timestamp is past the newest one, a row
/// is appended with no hashing and `finish` needs no sort. Anything else
/// (a resend, a second column of the same rows) is found by binary search
/// while the rows are sorted, and through a hash index once they are not.
#[derive(Debug)]
pub struct FrameBuilder {
    start: i64,
    end: i64,
    /// Requested metrics (empty: all).
    wanted: Option<HashSet<String>>,
    /// ts → row, complete once `sorted` is false.
    rows: HashMap<i64, usize>,
    timestamps: Vec<i64>,
    /// `timestamps` ascends strictly (rows were only ever appended in order).
    sorted: bool,
    columns: HashMap<String, Vec<f64>>,
}

impl FrameBuilder {
    /// Keeps snapshots with `start <= ts <= end` (milliseconds); with
    /// `metrics` named, only those.
    pub fn new(start: i64, end: i64, metrics: &[String]) -> Self {
        let mut columns = HashMap::new();
        let wanted = (!metrics.is_empty()).then(|| {
            for m in metrics {
                columns.insert(m.clone(), Vec::new());
            }
            metrics.iter().cloned().collect()
        });
        Self {
            start,
            end,
            wanted,
            rows: HashMap::new(),
            timestamps: Vec::new(),
            sorted: true,
            columns,
        }
    }

    /// Room for `rows` more snapshots (an estimate; a hint only).
    pub fn reserve(&mut self, rows: usize) {
        self.timestamps.reserve(rows);
        for col in self.columns.values_mut() {
            col.reserve(rows);
        }
    }

    pub fn in_range(&self, ts: i64) -> bool {
        ts >= self.start && ts <= self.end
    }

    /// Whether metric `name` is read at all.
    pub fn wants(&self, name: &str) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.contains(name))
    }

    /// The metrics asked for (`None`: all).
    pub fn wanted(&self) -> Option<&HashSet<String>> {
        self.wanted.as_ref()
    }

    fn row(&mut self, ts: i64) -> usize {
        let n = self.timestamps.len();
        if self.sorted {
            match self.timestamps.last() {
                Some(&last) if ts <= last => {
                    if let Ok(i) = self.timestamps.binary_search(&ts) {
                        return i;
                    }
                    // Out of order: index every row from now on.
                    self.rows = self
                        .timestamps
                        .iter()
                        .enumerate()
                        .map(|(i, &t)| (t, i))
                        .collect();
                    self.sorted = false;
                }
                _ => {
                    self.timestamps.push(ts);
                    return n;
                }
            }
        }
        *self.rows.entry(ts).or_insert_with(|| {
            self.timestamps.push(ts);
            n
        })
    }

    /// Records that a snapshot exists at `ts` (kept when no metrics were
    /// named, even if it has no value).
    pub fn touch(&mut self, ts: i64) {
        if self.in_range(ts) && self.wanted.is_none() {
            self.row(ts);
        }
    }

    /// Sets `name` at `ts` (a later call wins). [`crate::value::ABSENT`]
    /// means absent.
    pub fn set(&mut self, ts: i64, name: &str, value: f64) {
        if !self.in_range(ts) || crate::value::is_absent(value) || !self.wants(name) {
            return;
        }
        let row = self.row(ts);
        let col = match self.columns.get_mut(name) {
            Some(c) => c,
            None => self.columns.entry(name.to_string()).or_default(),
        };
        if col.len() <= row {
            col.resize(row + 1, f64::NAN);
        }
        col[row] = value;
    }

    /// A whole column of one piece: `values[i]` at `timestamps[i]` (NaN:
    /// absent), in order, so a later duplicate timestamp wins.
    pub fn set_column(&mut self, timestamps: &[i64], name: &str, values: &[f64]) {
        if !self.wants(name) {
            return;
        }
        let (key, mut col) = self.columns.remove_entry(name).unwrap_or_else(|| {
            (
                name.to_string(),
                Vec::with_capacity(self.timestamps.capacity()),
            )
        });
        for (&ts, &v) in timestamps.iter().zip(values) {
            if crate::value::is_absent(v) || !self.in_range(ts) {
                continue;
            }
            let row = self.row(ts);
            if col.len() <= row {
                col.resize(row + 1, f64::NAN);
            }
            col[row] = v;
        }
        self.columns.insert(key, col);
    }

    /// The frame, oldest first, at most `limit` snapshots.
    pub fn finish(self, limit: Option<usize>) -> Frame {
        let n = self.timestamps.len();
        let keep = limit.map_or(n, |l| l.min(n));
        if self.sorted {
            let mut timestamps = self.timestamps;
            timestamps.truncate(keep);
            let metrics = self
                .columns
                .into_iter()
                .map(|(name, mut col)| {
                    col.resize(keep, f64::NAN);
                    (name, col)
                })
                .collect();
            return Frame {
                timestamps,
                metrics,
            };
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_unstable_by_key(|&i| self.timestamps[i]);
        order.truncate(keep);
        let timestamps = order.iter().map(|&i| self.timestamps[i]).collect();
        let metrics = self
            .columns
            .into_iter()
            .map(|(name, col)| {
                let v = order
                    .iter()
                    .map(|&i| col.get(i).copied().unwrap_or(f64::NAN))
                    .collect();
                (name, v)
            })
            .collect();
        Frame {
            timestamps,
            metrics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_values_win_and_missing_metrics_merge() {
        let mut b = FrameBuilder::new(0, 100, &[]);
        b.set(20, "a", 1.0);
        b.set(10, "a", 2.0);
        b.set(20, "b", 3.0);
        b.set(20, "a", 4.0);
        b.set(200, "a", 9.0);
        b.touch(30);
        let f = b.finish(None);
        assert_eq!(f.timestamps, vec![10, 20, 30]);
        assert_eq!(f.metrics["a"][..2], [2.0, 4.0]);
        assert!(f.metrics["a"][2].is_nan());
        assert!(f.metrics["b"][0].is_nan());
        assert_eq!(f.metrics["b"][1], 3.0);
        assert_eq!(f.value_at("a", 20), 4.0);
        assert_eq!(f.names_at(20), vec!["a", "b"]);
    }

    #[test]
    fn snapshots_of_one_second_merge_into_seconds() {
        let mut b = FrameBuilder::new(0, 100_000, &[]);
        b.set(10_000, "a", 1.0);
        b.set(10_250, "b", 2.0);
        b.set(10_900, "a", 3.0);
        b.set(12_000, "a", 4.0);
        let f = b.finish(None).into_seconds();
        assert_eq!(f.timestamps, vec![10, 12]);
        assert_eq!(f.metrics["a"], vec![3.0, 4.0]);
        assert_eq!(f.metrics["b"][0], 2.0);
        assert!(f.metrics["b"][1].is_nan());
        let mut b = FrameBuilder::new(0, 100_000, &["z".to_string()]);
        b.set(5_000, "z", 1.0);
        assert_eq!(b.finish(None).into_seconds().timestamps, vec![5]);
    }

    #[test]
    fn named_metrics_are_columns_and_pick_snapshots() {
        let mut b = FrameBuilder::new(0, 100, &["a".to_string(), "z".to_string()]);
        b.touch(5);
        b.set(10, "b", 1.0);
        b.set(20, "a", 2.0);
        b.set(30, "a", 3.0);
        let f = b.finish(Some(1));
        assert_eq!(f.timestamps, vec![20]);
        assert_eq!(f.metrics.len(), 2);
        assert_eq!(f.metrics["a"], vec![2.0]);
        assert!(f.metrics["z"][0].is_nan());
    }
}
