//! Downsampling a host's range to the width a chart asks for (a range
//! query's `max_points`), pure and columnar.
//!
//! `[start, end]` is cut into at most `max_points` buckets of one whole
//! number of seconds `w = ceil((end - start + 1) / max_points)`, aligned
//! to `end`: bucket `k` of `n` covers `(end - (n-k)*w, end - (n-k-1)*w]`,
//! so the newest bucket always ends at `end` and only the oldest may reach
//! before `start` (it is cut short there). Each bucket holding at least one
//! snapshot gives one row, stamped with the bucket's last second, with the
//! average, least and greatest of every metric's values in it (NaN values,
//! a snapshot lacking the metric, are skipped; NaN where the bucket has
//! none). Buckets without a snapshot give no row. Min and max are exact,
//! so a one-snapshot spike survives any bucket width.
//!
//! Aligning to `end` rather than `start` keeps the buckets of a live chart
//! (`end` = now) whole at the side that matters: the newest points are
//! never averaged over a bucket that is mostly in the future.

use crate::store::Frame;
use std::collections::BTreeMap;

/// The buckets of one downsampled range: `count` buckets of `width`
/// seconds, the last one ending at `end` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub end: i64,
    /// Seconds per bucket, at least 1.
    pub width: u64,
    /// Buckets covering `[start, end]`, at most the `max_points` asked.
    pub count: usize,
}

impl Grid {
    /// The buckets for `[start, end]` (`0 <= start <= end`, as
    /// [`crate::engine::check_range`] allows) and at most `max_points`
    /// rows (0 is taken as 1).
    pub fn new(start: i64, end: i64, max_points: usize) -> Self {
        debug_assert!(0 <= start && start <= end, "[{start}, {end}]");
        // Seconds in the range: at most 2^63, for [0, i64::MAX].
        let span = end.abs_diff(start) + 1;
        let width = span.div_ceil(max_points.max(1) as u64).max(1);
        Self {
            end,
            width,
            count: span.div_ceil(width) as usize,
        }
    }

    /// The bucket of `t`, for `end - count * width < t <= end`.
    pub fn index(&self, t: i64) -> usize {
        let back = (self.end.abs_diff(t) / self.width) as usize;
        self.count - 1 - back
    }

    /// The last second bucket `k` covers: its row's timestamp.
    pub fn last_second(&self, k: usize) -> i64 {
        // Less than the range's span (at most 2^63): an i64.
        let back = (self.count - 1 - k) as u64 * self.width;
        self.end - back as i64
    }

    /// The first second bucket `k` covers (the oldest bucket may start
    /// before the range does).
    pub fn first_second(&self, k: usize) -> i64 {
        self.last_second(k) - (self.width as i64 - 1)
    }
}

/// A downsampled range: one row per non-empty bucket, oldest first;
/// `avg[m][i]`, `min[m][i]` and `max[m][i]` belong to `timestamps[i]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Downsampled {
    /// Seconds per bucket.
    pub bucket_secs: u64,
    /// The last second of each non-empty bucket.
    pub timestamps: Vec<i64>,
    pub avg: BTreeMap<String, Vec<f64>>,
    pub min: BTreeMap<String, Vec<f64>>,
    pub max: BTreeMap<String, Vec<f64>>,
}

/// Downsamples `frame` (timestamps ascending, as reads return them) over
/// `[start, end]` to at most `max_points` rows; snapshots outside the
/// range are ignored. Every metric of the frame is a column of the answer,
/// even one with no value in the range.
pub fn downsample(frame: &Frame, start: i64, end: i64, max_points: usize) -> Downsampled {
    let grid = Grid::new(start, end, max_points);
    let ts = &frame.timestamps;
    let lo = ts.partition_point(|&t| t < start);
    let hi = ts.partition_point(|&t| t <= end).max(lo);
    // Runs of snapshots in one bucket: (bucket, first row, end of rows).
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &t) in ts.iter().enumerate().take(hi).skip(lo) {
        let k = grid.index(t);
        match runs.last_mut() {
            Some((last, _, to)) if *last == k => *to = i + 1,
            _ => runs.push((k, i, i + 1)),
        }
    }
    let mut out = Downsampled {
        bucket_secs: grid.width,
        timestamps: runs.iter().map(|&(k, _, _)| grid.last_second(k)).collect(),
        ..Default::default()
    };
    for (name, col) in &frame.metrics {
        let (mut avg, mut min, mut max) = (
            Vec::with_capacity(runs.len()),
            Vec::with_capacity(runs.len()),
            Vec::with_capacity(runs.len()),
        );
        for &(_, from, to) in &runs {
            let s = Stats::of(col.get(from..to).unwrap_or_default());
            avg.push(s.avg());
            min.push(s.min);
            max.push(s.max);
        }
        out.avg.insert(name.clone(), avg);
        out.min.insert(name.clone(), min);
        out.max.insert(name.clone(), max);
    }
    out
}

/// Sum, count and extremes of a bucket's values, NaN skipped.
struct Stats {
    sum: f64,
    n: u64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Self {
        let mut s = Stats {
            sum: 0.0,
            n: 0,
            min: f64::NAN,
            max: f64::NAN,
        };
        for &v in values.iter().filter(|v| !v.is_nan()) {
            s.sum += v;
            s.n += 1;
            // f64::min/max return the other operand when one is NaN, so
            // the first value replaces the NaN start.
            s.min = s.min.min(v);
            s.max = s.max.max(v);
        }
        s
    }

    fn avg(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a seeded generator for the property checks below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn frame(timestamps: Vec<i64>, metrics: &[(&str, Vec<f64>)]) -> Frame {
        Frame {
            timestamps,
            metrics: metrics
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn grid_is_aligned_to_end() {
        // 10 seconds in 3 buckets: width 4, the oldest cut short.
        let g = Grid::new(100, 109, 3);
        assert_eq!((g.width, g.count), (4, 3));
        assert_eq!(
            (0..3)
                .map(|k| (g.first_second(k), g.last_second(k)))
                .collect::<Vec<_>>(),
            vec![(98, 101), (102, 105), (106, 109)]
        );
        assert_eq!(g.index(100), 0);
        assert_eq!(g.index(101), 0);
        assert_eq!(g.index(102), 1);
        assert_eq!(g.index(109), 2);
        // Never narrower than a second, never more buckets than seconds.
        let g = Grid::new(5, 5, 1000);
        assert_eq!((g.width, g.count), (1, 1));
        let g = Grid::new(0, 9, 1000);
        assert_eq!((g.width, g.count), (1, 10));
        // 7 days at 1000 px: 605 s buckets, the newest ending at end.
        let g = Grid::new(0, 7 * 86_400 - 1, 1000);
        assert_eq!((g.width, g.count), (605, 1000));
        assert_eq!(g.last_second(999), 7 * 86_400 - 1);
        // The widest range there is.
        let g = Grid::new(0, i64::MAX, 1);
        assert_eq!((g.width, g.count), (1 << 63, 1));
        assert_eq!((g.index(0), g.index(i64::MAX)), (0, 0));
        assert_eq!(g.last_second(0), i64::MAX);
    }

    #[test]
    fn a_spike_keeps_its_height_and_missing_values_are_skipped() {
        // Snapshots every 5 s over 60 s, 4 buckets of 15 s.
        let ts: Vec<i64> = (0..12).map(|i| 1_000 + 5 * i).collect();
        let mut cpu = vec![1.0; 12];
        cpu[4] = 97.0;
        let mut disk = vec![f64::NAN; 12];
        disk[11] = 3.0;
        disk[10] = 1.0;
        let f = frame(ts, &[("cpu", cpu), ("disk", disk)]);
        let d = downsample(&f, 1_000, 1_059, 4);
        assert_eq!(d.bucket_secs, 15);
        assert_eq!(d.timestamps, vec![1_014, 1_029, 1_044, 1_059]);
        assert_eq!(d.max["cpu"], vec![1.0, 97.0, 1.0, 1.0]);
        assert_eq!(d.min["cpu"], vec![1.0; 4]);
        assert_eq!(d.avg["cpu"][1], (97.0 + 2.0) / 3.0);
        assert!(d.avg["disk"][..3].iter().all(|v| v.is_nan()));
        assert!(d.min["disk"][..3].iter().all(|v| v.is_nan()));
        assert_eq!(
            (d.avg["disk"][3], d.min["disk"][3], d.max["disk"][3]),
            (2.0, 1.0, 3.0)
        );
    }

    #[test]
    fn empty_buckets_and_snapshots_outside_the_range_give_no_row() {
        let f = frame(
            vec![5, 10, 11, 40, 95],
            &[("m", vec![9.0, 1.0, 2.0, 3.0, 9.0])],
        );
        let d = downsample(&f, 10, 49, 4);
        assert_eq!(d.bucket_secs, 10);
        assert_eq!(d.timestamps, vec![19, 49]);
        assert_eq!(d.avg["m"], vec![1.5, 3.0]);
        let none = downsample(&frame(vec![], &[("m", vec![])]), 10, 49, 4);
        assert!(none.timestamps.is_empty());
        assert_eq!(none.avg["m"], Vec::<f64>::new());
    }

    /// Random frames against a bucket-by-bucket recomputation: every row's
    /// min, max and avg are those of the raw values in its bucket, every
    /// raw value lies within its bucket's [min, max], there are at most
    /// `max_points` rows, and the last one is the bucket ending at `end`
    /// whenever the newest snapshot is in it.
    #[test]
    fn rows_agree_with_their_buckets() {
        let mut rng = Rng(0x5eed);
        for case in 0..2_000 {
            let start = rng.below(1 << 40) as i64;
            let end = start + rng.below(if case % 3 == 0 { 20 } else { 700_000 }) as i64;
            let max_points = 1 + rng.below(if case % 2 == 0 { 8 } else { 3_000 }) as usize;
            let n = rng.below(600) as usize;
            let mut ts: Vec<i64> = (0..n)
                .map(|_| start + rng.below((end - start + 1) as u64) as i64)
                .collect();
            if case % 3 == 1 {
                ts.push(end);
            }
            ts.sort_unstable();
            ts.dedup();
            let col = |rng: &mut Rng, gaps: u64| -> Vec<f64> {
                ts.iter()
                    .map(|_| match rng.below(100) {
                        k if k < gaps => f64::NAN,
                        k if k < gaps + 2 => 1e6 * (rng.below(3) as f64 - 1.0),
                        _ => rng.below(1_000) as f64 / 8.0,
                    })
                    .collect()
            };
            let f = frame(
                ts.clone(),
                &[("a", col(&mut rng, 0)), ("b", col(&mut rng, 40))],
            );
            let d = downsample(&f, start, end, max_points);
            let grid = Grid::new(start, end, max_points);
            let what = format!("case {case}: [{start}, {end}] max_points {max_points}");
            assert!(d.timestamps.len() <= max_points, "{what}");
            assert!(grid.count <= max_points, "{what}");
            assert_eq!(d.bucket_secs, grid.width, "{what}");
            assert!(grid.first_second(0) <= start, "{what}");
            assert_eq!(grid.last_second(grid.count - 1), end, "{what}");
            assert!(d.timestamps.windows(2).all(|w| w[0] < w[1]), "{what}");
            // The last row is the bucket of the newest snapshot: the one
            // ending at `end` when that snapshot is in its last width.
            if let Some(&newest) = ts.last() {
                let last = grid.last_second(grid.index(newest));
                assert_eq!(d.timestamps.last(), Some(&last), "{what}: newest {newest}");
                assert!(
                    last - (grid.width as i64) < newest && newest <= last,
                    "{what}"
                );
                if newest > end - grid.width as i64 {
                    assert_eq!(last, end, "{what}");
                }
            }
            // Recompute each row from the snapshots its bucket covers.
            let mut rows = 0;
            for (i, &row) in d.timestamps.iter().enumerate() {
                let from = row - (d.bucket_secs as i64 - 1);
                let inside: Vec<usize> = (0..ts.len())
                    .filter(|&j| ts[j] >= from && ts[j] <= row)
                    .collect();
                assert!(!inside.is_empty(), "{what}: empty bucket at {row}");
                rows += inside.len();
                for (name, col) in &f.metrics {
                    let vals: Vec<f64> = inside
                        .iter()
                        .map(|&j| col[j])
                        .filter(|v| !v.is_nan())
                        .collect();
                    let (avg, min, max) = (d.avg[name][i], d.min[name][i], d.max[name][i]);
                    if vals.is_empty() {
                        assert!(avg.is_nan() && min.is_nan() && max.is_nan(), "{what}");
                        continue;
                    }
                    let want_min = vals.iter().copied().fold(f64::INFINITY, f64::min);
                    let want_max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    assert_eq!((min, max), (want_min, want_max), "{what}: {name} at {row}");
                    for v in &vals {
                        assert!(min <= *v && *v <= max, "{what}: {v} outside [{min}, {max}]");
                    }
                    let want_avg = vals.iter().sum::<f64>() / vals.len() as f64;
                    assert!(
                        (avg - want_avg).abs() <= 1e-9 * want_avg.abs().max(1.0),
                        "{what}"
                    );
                }
            }
            // Every snapshot is in exactly one row.
            assert_eq!(rows, ts.len(), "{what}");
        }
    }
}
