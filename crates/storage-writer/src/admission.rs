//! Cardinality limits on hosts, as Mimir limits series per tenant: a point
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
/// How long a batch waits for the index before its hosts are admitted.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

pub struct HostAdmission {
    refused_points: Family<Vec<(&'static str, &'static str)>, Counter>,
    max_hosts: u64,
    per_minute: u64,
    known: moka::sync::Cache<String, ()>,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    admitted: u64,
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
            known: moka::sync::Cache::new(MAX_REMEMBERED),
            window: Mutex::new(Window {
                started: Instant::now(),
                admitted: 0,
            }),
        }
    }

    /// The points of `batch` that must not be stored (their host is new
    /// and over a limit), each with its reason; empty when every host
    /// passes. Admitted new hosts count against the limits from now on.
    pub async fn check(&self, db: &dyn Exec, batch: &MetricBatch) -> Vec<PointError> {
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
