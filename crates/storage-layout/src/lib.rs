//! Redis key layouts: for each storage format, the commands that write it
//! and the reads that answer queries from it, in one crate, so the writer
//! and the readers (query-api, host-manager, `broker migrate`) cannot
//! disagree about a key or a byte.
//!
//! # Layout
//! - [`seed`]: the original design's layout (a HASH per point, a ZSET time
//!   index per host).
//! - [`chunked`]: points appended to an open chunk per host, sealed into
//!   compressed immutable chunks with a chunk index per host.
//! - [`chunk`]: the chunked layout's byte formats (open-chunk records,
//!   sealed chunks compressed with pco).
//! - [`meta`]: the host metadata hash both layouts keep, and how a write
//!   updates it ([`Arrival`]: live in order, or a late replay).
//! - [`direct`]: write pipelines encoded once into one RESP buffer and
//!   sent on a plain connection beside fred (standalone and sentinel).
//! - [`dual`]: reads two layouts as one, for a migration window.
//! - [`hosts`]: the host index and each host's series set, kept on the
//!   write path, so periodic work costs O(hosts), never O(keys).
//! - [`exec`]: [`Command`], [`Reply`] and [`Exec`], the one way a layout
//!   talks to Redis, with the fred-backed executor.
//! - [`frame`]: [`Frame`], what reads return, and how pieces merge into it.
//! - [`value`]: how a gap, a NaN sample and a staleness marker are told
//!   apart in one f64.
//!
//! A layout's writes are idempotent: applying them twice leaves the data
//! read back the same, so a resend after a failover never corrupts it.

#![forbid(unsafe_code)]

pub mod chunk;
pub mod chunked;
pub mod direct;
pub mod dual;
pub mod exec;
pub mod frame;
pub mod hosts;
pub mod meta;
pub mod read_cache;
pub mod seed;
pub use broker_common::value;

pub use chunked::{ChunkedConfig, ChunkedLayout};
pub use exec::{Command, Exec, Reply};
pub use frame::Frame;
pub use meta::{Arrival, HostMeta};
pub use seed::SeedLayout;

use broker_proto::v1::MetricBatch;
use futures::future::BoxFuture;
use std::sync::Arc;

/// What a layout's reads and maintenance can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LayoutError {
    /// Redis could not be reached or did not answer every command.
    #[error("redis: {0}")]
    Redis(String),
    /// Redis answered a command with an error.
    #[error("redis refused {command}: {message}")]
    Refused {
        command: &'static str,
        message: String,
    },
    /// Stored bytes that do not decode: a bug or a foreign writer.
    #[error("corrupt {what} of host {host:?}: {reason}")]
    Corrupt {
        what: &'static str,
        host: String,
        reason: String,
    },
}

/// One host's time range to read, in Unix milliseconds, both ends
/// included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeReq {
    pub host: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl RangeReq {
    /// The whole of seconds `start..=end` of `host`.
    pub fn seconds(host: impl Into<String>, start: i64, end: i64) -> Self {
        Self {
            host: host.into(),
            start_ms: start.saturating_mul(1000),
            end_ms: end.saturating_mul(1000).saturating_add(999),
        }
    }
}

/// A storage format: how points are written, maintained and read.
pub trait KeyLayout: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Appends the commands that store `batches` (already validated) with
    /// a time to live of `ttl_secs`, at wall-clock time `now` (Unix seconds);
    /// `arrival` says whether newer points may already be in Redis.
    /// Applying the commands twice must leave the data read back unchanged.
    fn write_commands(
        &self,
        batches: &[&MetricBatch],
        arrival: Arrival,
        ttl_secs: u64,
        now: i64,
        out: &mut Vec<Command>,
    );

    /// Told whether the commands for `batches` were applied, so a layout
    /// can redo skipped housekeeping after a failure, or note work due.
    fn written(&self, _batches: &[&MetricBatch], _ok: bool, _now: i64) {}

    /// Hosts with maintenance due at `now` (the chunked layout: open
    /// chunks to seal), at most `max`; each is handed to
    /// [`KeyLayout::maintain`] once, until that finishes.
    fn due(&self, _now: i64, _max: usize) -> Vec<String> {
        Vec::new()
    }

    /// Does the maintenance [`KeyLayout::due`] named for `host`.
    fn maintain<'a>(
        &'a self,
        _db: &'a dyn Exec,
        _host: &'a str,
        _ttl_secs: u64,
        _now: i64,
    ) -> BoxFuture<'a, Result<(), LayoutError>> {
        Box::pin(async { Ok(()) })
    }

    /// The snapshots of each request's host within its range, oldest
    /// first, at most `limit` per host, timestamped in milliseconds. With `metrics` empty, every metric
    /// found, and a snapshot is kept when it exists; else exactly those
    /// metrics as columns, and a snapshot is kept when it has at least one.
    fn frames<'a>(
        &'a self,
        db: &'a dyn Exec,
        reqs: &'a [RangeReq],
        metrics: &'a [String],
        limit: Option<usize>,
    ) -> BoxFuture<'a, Result<Vec<Frame>, LayoutError>>;

    /// How many snapshots each host holds in all, cheaply (a counter or
    /// a cardinality, not a walk of the retention): for host lists.
    fn stored_points<'a>(
        &'a self,
        db: &'a dyn Exec,
        hosts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<u64>, LayoutError>> {
        Box::pin(async move {
            let reqs: Vec<RangeReq> = hosts
                .iter()
                .map(|h| RangeReq {
                    host: h.clone(),
                    start_ms: 0,
                    end_ms: i64::MAX,
                })
                .collect();
            self.counts(db, &reqs).await
        })
    }

    /// How many snapshots a host holds, from its metadata hash alone
    /// (already read for the host list); `None`: ask [`KeyLayout::stored_points`].
    fn points_from_meta(&self, _meta: &HostMeta) -> Option<u64> {
        None
    }

    /// Commands that give `hosts`, written before the host index existed,
    /// what this layout keeps per host beside it ([`hosts::backfill`]).
    fn backfill_commands(&self, _hosts: &[String], _out: &mut Vec<Command>) {}

    /// How many snapshots each request's range holds, at least (an upper
    /// bound where the layout cannot tell duplicates apart without reading
    /// the data); for limits checked before reading.
    fn counts<'a>(
        &'a self,
        db: &'a dyn Exec,
        reqs: &'a [RangeReq],
    ) -> BoxFuture<'a, Result<Vec<u64>, LayoutError>>;
}

pub use broker_common::config::LAYOUTS;

impl ChunkedConfig {
    pub fn from_config(w: &broker_common::config::WriterConfig) -> Self {
        Self {
            points_per_chunk: w.chunk_points,
            max_open: w.chunk_max_open,
            maintenance_interval: seed::DEFAULT_MAINTENANCE_INTERVAL,
            read_cache_bytes: 0,
        }
    }
}

/// The layout a writer writes with `writer.*` (validated config).
pub fn for_writer(w: &broker_common::config::WriterConfig) -> Option<Arc<dyn KeyLayout>> {
    by_name_with(&w.layout, ChunkedConfig::from_config(w))
}

/// The layout readers read with `writer.*`: `writer.layout`, and
/// `writer.migrate_from` too during a migration.
pub fn for_reader(w: &broker_common::config::WriterConfig) -> Option<Arc<dyn KeyLayout>> {
    let previous = (!w.migrate_from.is_empty()).then_some(w.migrate_from.as_str());
    reader(&w.layout, previous, ChunkedConfig::from_config(w))
}

/// The layout query-api reads with: [`for_reader`]'s, keeping up to
/// `cache_bytes` of decoded chunks between reads ([`read_cache`]).
pub fn for_query(
    w: &broker_common::config::WriterConfig,
    cache_bytes: u64,
) -> Option<Arc<dyn KeyLayout>> {
    let previous = (!w.migrate_from.is_empty()).then_some(w.migrate_from.as_str());
    let chunked = ChunkedConfig {
        read_cache_bytes: cache_bytes,
        ..ChunkedConfig::from_config(w)
    };
    reader(&w.layout, previous, chunked)
}

/// The layout named `name` (one of [`LAYOUTS`]), with default settings
/// for the chunked one.
pub fn by_name(name: &str) -> Option<Arc<dyn KeyLayout>> {
    by_name_with(name, ChunkedConfig::default())
}

/// The layout named `name`, the chunked one with `chunked`.
pub fn by_name_with(name: &str, chunked: ChunkedConfig) -> Option<Arc<dyn KeyLayout>> {
    match name {
        "seed" => Some(Arc::new(SeedLayout::default())),
        "chunked" => Some(Arc::new(ChunkedLayout::new(chunked))),
        _ => None,
    }
}

/// The layout that reads `primary` and, during a migration window,
/// `previous` too (see [`dual`]).
pub fn reader(
    primary: &str,
    previous: Option<&str>,
    chunked: ChunkedConfig,
) -> Option<Arc<dyn KeyLayout>> {
    let primary = by_name_with(primary, chunked.clone())?;
    match previous {
        None => Some(primary),
        Some(p) if p == primary.name() => Some(primary),
        Some(p) => Some(Arc::new(dual::DualRead::new(
            primary,
            by_name_with(p, chunked)?,
        ))),
    }
}
