//! `router.*`: the shard-router's ring, static writers, retries and hedging.

use super::{check_endpoint, id_byte, nonzero_duration};
use hash_ring::{HashAlgorithm, NodeSpec, RingConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Longer than the writer's `redis_timeout` plus a spool append, so a
/// writer that is falling back to its spool answers before the router
/// gives up on it.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A forward unanswered this long (at least; see `router.hedge`) is also
/// sent to the points' next ring owners.
pub const DEFAULT_HEDGE_MIN_DELAY: Duration = Duration::from_millis(300);
/// Hedges a writer loses in a row before it is marked down.
pub const DEFAULT_HEDGE_EJECT_AFTER: u32 = 3;
/// Seed: back off 1 s, 2 s, 4 s.
pub const DEFAULT_RETRY_ATTEMPTS: usize = 3;
pub const DEFAULT_RETRY_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt (seed: 3, backing off 1 s, 2 s, 4 s).
    pub max_retries: usize,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_RETRY_ATTEMPTS,
            initial_backoff: DEFAULT_RETRY_INITIAL_BACKOFF,
            max_backoff: DEFAULT_RETRY_MAX_BACKOFF,
        }
    }
}

/// A storage-writer in the static membership list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterEndpoint {
    /// Ring identity; placement hashes this id, so keep it stable.
    pub id: String,
    /// `http://host:port` of the writer's gRPC server.
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl WriterEndpoint {
    pub fn node_spec(&self) -> NodeSpec {
        NodeSpec::new(self.id.clone()).with_weight(self.weight)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Virtual nodes per unit of weight.
    pub vnodes: u32,
    /// `crc32` (seed-compatible) or `xxh3`.
    pub hash: HashAlgorithm,
    /// Static membership. Empty means the writer in this same process,
    /// named after `node_id`.
    pub writers: Vec<WriterEndpoint>,
    /// Deadline of one router -> writer call.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    pub retry: RetryConfig,
    pub hedge: HedgeConfig,
}

/// Hedged forwarding: what the router does about a writer that stops
/// answering without failing (see `shard_router::hedge`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    /// A forward unanswered for max(this, 3 x the writer's recent p95) is
    /// also sent to the points' next ring owners; 0s turns hedging off.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Hedges in a row a writer loses (the copy answered first) before it
    /// is marked down; 0 never marks it down for slowness.
    pub eject_after: u32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            min_delay: DEFAULT_HEDGE_MIN_DELAY,
            eject_after: DEFAULT_HEDGE_EJECT_AFTER,
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        let ring = RingConfig::default();
        Self {
            vnodes: ring.vnodes,
            // ADR 0001: xxh3 balances the ring far better than CRC32;
            // `crc32` keeps the seed's exact placement.
            hash: HashAlgorithm::Xxh3,
            writers: Vec::new(),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            retry: RetryConfig::default(),
            hedge: HedgeConfig::default(),
        }
    }
}

impl RouterConfig {
    pub fn ring(&self) -> RingConfig {
        RingConfig {
            vnodes: self.vnodes,
            hash: self.hash,
        }
    }
}

impl RouterConfig {
    /// Reports every problem of `router.*` to `bad`, with its key.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if !(1..=10_000).contains(&self.vnodes) {
            bad(
                "router.vnodes",
                format!("must be between 1 and 10000, got {}", self.vnodes),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, w) in self.writers.iter().enumerate() {
            if w.id.is_empty() || !w.id.bytes().all(id_byte) {
                bad(
                    &format!("router.writers[{i}].id"),
                    format!(
                        "{:?} must be non-empty and use only letters, digits, '.', '_' or '-'",
                        w.id
                    ),
                );
            }
            if !seen.insert(&w.id) {
                bad(
                    &format!("router.writers[{i}].id"),
                    format!("duplicate writer id {:?}", w.id),
                );
            }
            if let Err(e) = check_endpoint(&w.addr) {
                bad(&format!("router.writers[{i}].addr"), e);
            }
            if !(1..=100).contains(&w.weight) {
                bad(
                    &format!("router.writers[{i}].weight"),
                    format!("must be between 1 and 100, got {}", w.weight),
                );
            }
        }
        nonzero_duration(bad, "router.write_timeout", self.write_timeout);
        if !self.hedge.min_delay.is_zero() && self.hedge.min_delay >= self.write_timeout {
            bad(
                "router.hedge.min_delay",
                format!(
                    "{:?} is not shorter than router.write_timeout ({:?}): a hedge would never start",
                    self.hedge.min_delay, self.write_timeout
                ),
            );
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            bad(
                "router.retry.initial_backoff",
                format!(
                    "{:?} is larger than router.retry.max_backoff ({:?})",
                    self.retry.initial_backoff, self.retry.max_backoff
                ),
            );
        }
    }
}
