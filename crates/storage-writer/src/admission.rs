//! Cardinality limits on hosts and their series, as Mimir limits series
//! per tenant. Hosts: a point
//! of a host the host index does not hold (a new host) is refused once the
//! index holds `writer.max_hosts` hosts, or once this writer admitted
//! `writer.max_new_hosts_per_minute` new hosts in the current minute. A
//! flood of invented host ids (a million in a minute, each acked and kept
//! for a `ttl` before) then cannot make every host list, label API and
//! selector slow for the whole retention.
//!
//! Hosts the index holds pass untouched: the writer remembers those it
//! has seen (bounded, [`MAX_REMEMBERED`]), and asks the index about the
//! others in one round trip per batch (`ZMSCORE` + `ZCARD`). The index
//! is the one truth all writers share, so a restarted writer knows the
//! fleet again without counting it as new. The bound is per writer and
//! approximate by a few batches in flight: with N writers the cluster
//! admits up to N × `max_new_hosts_per_minute` new hosts a minute. If the
//! index cannot be read within [`CHECK_TIMEOUT`] (Redis down or slow: the
//! batch goes to the spool), every host is admitted rather than the fleet
//! refused or held up.
//!
//! Series: a point whose names are new to its host's series set (the
//! names it reported within the ttl) has those new series refused once the
//! set holds `writer.max_series_per_host`; the point's other values are
//! stored. A (host, name set) found within the limit is remembered for
//! [`SERIES_REMEMBERED_FOR`], so a fleet reporting the same series asks
//! nothing; a new name set costs one `ZCARD` + `ZMSCORE` of its host.

use broker_common::config::WriterConfig;
use broker_proto::v1::{MetricBatch, PointError, RejectReason};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use storage_layout::exec::Exec;

/// Hosts a writer remembers as known before some are asked about again
/// (one more `ZMSCORE` argument each).
const MAX_REMEMBERED: u64 = 200_000;
const WINDOW: Duration = Duration::from_secs(60);
/// How long a (host, name set) found within the series limit is admitted
/// without asking again.
pub const SERIES_REMEMBERED_FOR: Duration = Duration::from_secs(60);
/// (host, name set) pairs remembered.
const SERIES_REMEMBERED: u64 = 200_000;
/// How long a batch waits for the index before its hosts are admitted.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub struct HostAdmission {
    refused_points: Family<Vec<(&'static str, &'static str)>, Counter>,
    max_hosts: u64,
    per_minute: u64,
    max_series: u64,
    known: moka::sync::Cache<String, ()>,
    /// Hashes of (host, a point's names) found within the series limit
    /// (a hash, not the strings: no allocation per point on the hot path;
    /// a collision only spares one check).
    series_ok: moka::sync::Cache<u64, ()>,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    admitted: u64,
}

/// A point the limits keep out, whole or in part.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// What the sender is told about the point.
    pub error: PointError,
    /// `None`: the whole point is refused; else the names of its values
    /// that are not stored (its series past the limit).
    pub strip: Option<std::collections::HashSet<String>>,
}

/// Why a new host was not admitted.
enum Refusal {
    Full { held: u64 },
    Rate,
}

impl HostAdmission {
    /// Counts refused points in `broker_writer_host_limit_points_total`.
    pub fn new(config: &WriterConfig, metrics: &crate::metrics::WriterMetrics) -> Self {
        Self {
            refused_points: metrics.host_limit_points.clone(),
            max_hosts: config.max_hosts as u64,
            per_minute: config.max_new_hosts_per_minute as u64,
            max_series: config.max_series_per_host as u64,
            known: moka::sync::Cache::new(MAX_REMEMBERED),
            series_ok: moka::sync::Cache::builder()
                .max_capacity(SERIES_REMEMBERED)
                .time_to_live(SERIES_REMEMBERED_FOR)
                .build(),
            window: Mutex::new(Window {
                started: Instant::now(),
                admitted: 0,
            }),
        }
    }

    /// The points of `batch` that must not be stored, whole (their host is
    /// new and over a host limit) or in part (their series new to the host
    /// past the series limit), each with its reason, in point order; empty
    /// when everything passes. Admitted new hosts count against the limits
    /// from now on.
    pub async fn check(&self, db: &dyn Exec, batch: &MetricBatch) -> Vec<Refused> {
        let hosts = self.check_hosts(db, batch).await;
        let mut series = self.check_series(db, batch, &hosts).await;
        let mut all: Vec<Refused> = hosts
            .into_iter()
            .map(|error| Refused { error, strip: None })
            .collect();
        all.append(&mut series);
        all.sort_by_key(|r| r.error.index);
        all
    }

    async fn check_hosts(&self, db: &dyn Exec, batch: &MetricBatch) -> Vec<PointError> {
        let mut unknown: Vec<&str> = batch
            .points
            .iter()
            .map(|p| p.host_id.as_str())
            .filter(|h| !self.known.contains_key(*h))
            .collect();
        if unknown.is_empty() {
            return Vec::new();
        }
        unknown.sort_unstable();
        unknown.dedup();
        let (present, held) = match storage_layout::hosts::known(db, &unknown).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "host index unreadable; admitting the batch's hosts");
                return Vec::new();
            }
        };
        let mut refused: BTreeMap<&str, Refusal> = BTreeMap::new();
        {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if w.started.elapsed() >= WINDOW {
                (w.started, w.admitted) = (Instant::now(), 0);
            }
            let mut new_here = 0;
            for (host, present) in unknown.iter().zip(present) {
                if present {
                    self.known.insert(host.to_string(), ());
                } else if held + new_here >= self.max_hosts {
                    refused.insert(host, Refusal::Full { held });
                } else if w.admitted >= self.per_minute {
                    refused.insert(host, Refusal::Rate);
                } else {
                    w.admitted += 1;
                    new_here += 1;
                    self.known.insert(host.to_string(), ());
                }
            }
        }
        if refused.is_empty() {
            return Vec::new();
        }
        for (host, why) in &refused {
            let why = match why {
                Refusal::Full { .. } => "max_hosts",
                Refusal::Rate => "max_new_hosts_per_minute",
            };
            tracing::debug!(host = %host, limit = why, "new host refused");
        }
        batch
            .points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let why = refused.get(p.host_id.as_str())?;
                let limit = match why {
                    Refusal::Full { .. } => "max_hosts",
                    Refusal::Rate => "max_new_hosts_per_minute",
                };
                self.refused_points.get_or_create(&vec![("limit", limit)]).inc();
                let (message, retryable) = match why {
                    Refusal::Full { held } => (
                        format!(
                            "host {:?} is new and the host index holds {held} hosts, writer.max_hosts is {}; \
                             hosts leave it a ttl after they last reported",
                            p.host_id, self.max_hosts
                        ),
                        false,
                    ),
                    Refusal::Rate => (
                        format!(
                            "host {:?} is new and this writer admitted writer.max_new_hosts_per_minute ({}) new hosts this minute; retry later",
                            p.host_id, self.per_minute
                        ),
                        true,
                    ),
                };
                Some(PointError {
                    index: i as u32,
                    reason: RejectReason::HostLimit as i32,
                    message,
                    retryable,
                })
            })
            .collect()
    }
}

impl HostAdmission {
    /// The points (not already refused by host, `refused`) that bring
    /// series new to their host past `max_series_per_host`.
    async fn check_series(
        &self,
        db: &dyn Exec,
        batch: &MetricBatch,
        refused: &[PointError],
    ) -> Vec<Refused> {
        use std::collections::{HashMap, HashSet};
        use std::hash::{Hash, Hasher};
        let skip: HashSet<u32> = refused.iter().map(|e| e.index).collect();
        // Points whose (host, names) were not found within the limit lately.
        let mut pending: Vec<(usize, &str, Vec<&str>, u64)> = Vec::new();
        for (i, p) in batch.points.iter().enumerate() {
            if skip.contains(&(i as u32)) {
                continue;
            }
            let mut h = std::hash::DefaultHasher::new();
            p.host_id.hash(&mut h);
            for name in storage_layout::hosts::point_names(batch, p) {
                name.hash(&mut h);
            }
            let hash = h.finish();
            if !self.series_ok.contains_key(&hash) {
                let names: Vec<&str> = storage_layout::hosts::point_names(batch, p).collect();
                pending.push((i, p.host_id.as_str(), names, hash));
            }
        }
        if pending.is_empty() {
            return Vec::new();
        }
        let mut asked: Vec<(&str, Vec<&str>)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for (_, host, names, _) in &pending {
            let k = *at.entry(host).or_insert_with(|| {
                asked.push((host, Vec::new()));
                asked.len() - 1
            });
            asked[k].1.extend(names.iter().copied());
        }
        for (_, names) in &mut asked {
            names.sort_unstable();
            names.dedup();
        }
        let known = match storage_layout::hosts::known_series(db, &asked).await {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "series sets unreadable; admitting the batch's series");
                return Vec::new();
            }
        };
        // Per host: how many series it holds, and the new ones past the
        // limit (the first new ones, in name order, fill what is left).
        let mut over: HashMap<&str, (u64, HashSet<&str>)> = HashMap::new();
        for ((host, names), (count, present)) in asked.iter().zip(known) {
            let room = self.max_series.saturating_sub(count) as usize;
            let refused: HashSet<&str> = names
                .iter()
                .zip(present)
                .filter(|(_, present)| !present)
                .map(|(n, _)| *n)
                .skip(room)
                .collect();
            if !refused.is_empty() {
                over.insert(host, (count, refused));
            }
        }
        let mut out = Vec::new();
        for (i, host, names, hash) in pending {
            let Some((count, refused)) = over.get(host) else {
                self.series_ok.insert(hash, ());
                continue;
            };
            let strip: HashSet<String> = names
                .iter()
                .filter(|n| refused.contains(*n))
                .map(|n| n.to_string())
                .collect();
            if strip.is_empty() {
                self.series_ok.insert(hash, ());
                continue;
            }
            self.refused_points
                .get_or_create(&vec![("limit", "max_series_per_host")])
                .inc();
            let mut example: Vec<&String> = strip.iter().collect();
            example.sort_unstable();
            let whole = strip.len() == names.len();
            tracing::debug!(host = %host, refused = strip.len(), "new series refused");
            out.push(Refused {
                error: PointError {
                    index: i as u32,
                    reason: RejectReason::SeriesLimit as i32,
                    message: format!(
                        "host {host:?} has {count} series within the ttl and writer.max_series_per_host is {}: \
                         {} new series of this point were not stored (first {:?}){}",
                        self.max_series,
                        strip.len(),
                        example[0],
                        if whole { "" } else { "; its other values were" }
                    ),
                    retryable: false,
                },
                strip: (!whole).then_some(strip),
            });
        }
        out
    }
}

/// `batch` without what `refused` (in point order) keeps out: whole points,
/// or the values of a point's refused series.
pub fn without(batch: &MetricBatch, refused: &[Refused]) -> MetricBatch {
    let mut by_index = refused
        .iter()
        .map(|r| (r.error.index as usize, r))
        .peekable();
    let mut points = Vec::with_capacity(batch.points.len());
    for (i, p) in batch.points.iter().enumerate() {
        let r = match by_index.peek() {
            Some((j, r)) if *j == i => {
                let r = *r;
                by_index.next();
                r
            }
            _ => {
                points.push(p.clone());
                continue;
            }
        };
        let Some(strip) = &r.strip else { continue };
        let mut kept = p.clone();
        let names: Vec<&str> = storage_layout::hosts::point_names(batch, p).collect();
        let (mut values, mut index) = (Vec::new(), Vec::new());
        for (k, name) in names.iter().enumerate() {
            if strip.contains(*name) {
                continue;
            }
            values.push(p.values[k]);
            index.push(if p.name_index.is_empty() {
                k as u32
            } else {
                p.name_index[k]
            });
        }
        kept.values = values;
        kept.name_index = index;
        points.push(kept);
    }
    MetricBatch {
        seq: batch.seq,
        metric_names: batch.metric_names.clone(),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::Point;

    fn refused(index: u32, strip: Option<&[&str]>) -> Refused {
        Refused {
            error: PointError {
                index,
                ..Default::default()
            },
            strip: strip.map(|s| s.iter().map(|n| n.to_string()).collect()),
        }
    }

    #[test]
    fn without_drops_points_and_strips_series() {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let batch = MetricBatch {
            seq: 1,
            metric_names: names,
            points: vec![
                Point {
                    host_id: "h0".into(),
                    values: vec![1.0, 2.0, 3.0],
                    ..Default::default()
                },
                Point {
                    host_id: "h1".into(),
                    values: vec![4.0, 5.0],
                    name_index: vec![2, 0],
                    ..Default::default()
                },
                Point {
                    host_id: "h2".into(),
                    values: vec![6.0],
                    ..Default::default()
                },
            ],
        };
        let out = without(
            &batch,
            &[
                refused(0, Some(&["b"])),
                refused(1, Some(&["c"])),
                refused(2, None),
            ],
        );
        assert_eq!(out.points.len(), 2);
        assert_eq!(out.points[0].values, [1.0, 3.0]);
        assert_eq!(out.points[0].name_index, [0, 2]);
        assert_eq!(out.points[1].values, [5.0]);
        assert_eq!(out.points[1].name_index, [0]);
        let kept: Vec<&str> = storage_layout::hosts::point_names(&out, &out.points[1]).collect();
        assert_eq!(kept, ["a"]);
    }
}
