//! What a reader of the chunked layout keeps between queries (query-api
//! only; `query.chunk_cache_max_bytes`), so a dashboard or a rule that asks
//! the same hosts again reads from Redis only what changed:
//!
//! - **sealed columns**: a sealed chunk never changes (its key names the
//!   hash of its bytes), so its decoded timestamps and each decoded column
//!   asked for are kept by chunk key. A read names the chunks it holds and
//!   the read script leaves their bytes out;
//! - **open chunks**: between two seals a host's open chunk only grows (one
//!   `APPEND` per point), so its decoded records are kept with the length
//!   read and the first bytes; the read script returns only the bytes past
//!   that length while the chunk still starts with those bytes (a seal
//!   rewrites the start with a fresh nonce, and then the whole chunk is
//!   read again);
//! - **chunk lists**: per host, the index members last seen, to know which
//!   chunks of a range are held before asking.
//!
//! One weighted cache holds all three, bounded in (estimated) bytes.

use crate::chunk::{self, ChunkRef, DecodeError};
use crate::frame::FrameBuilder;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of the open chunk's start remembered to tell it was not sealed.
pub const OPEN_PREFIX_BYTES: usize = 32;
/// Index members remembered per host at most (a week of 20-minute chunks
/// is 504).
const MAX_MEMBERS: usize = 4_096;
/// An entry nobody read for this long is dropped whatever the budget.
const IDLE: Duration = Duration::from_secs(3_600);

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
enum Key {
    /// A sealed chunk: host, start, id (the hash of its bytes).
    Chunk(Arc<str>, i64, u64),
    Open(Arc<str>),
    Members(Arc<str>),
}

#[derive(Clone)]
enum Value {
    Chunk(Arc<Held>),
    Open(Arc<OpenRecords>),
    Members(Arc<Vec<ChunkRef>>),
}

fn weight(key: &Key, value: &Value) -> u32 {
    let k = match key {
        Key::Chunk(a, ..) | Key::Open(a) | Key::Members(a) => a.len(),
    };
    let v = match value {
        Value::Chunk(h) => {
            h.timestamps.len() * 8
                + h.columns
                    .iter()
                    .map(|(n, c)| 48 + n.len() + c.as_ref().map_or(0, |c| c.len() * 8))
                    .sum::<usize>()
        }
        Value::Open(o) => o.approx_bytes(),
        Value::Members(m) => m.iter().map(|c| 48 + c.id.len()).sum(),
    };
    (64 + k + v).min(u32::MAX as usize) as u32
}

/// The key of a chunk; `None` for an id that is not 16 hex digits (not
/// written by this layout: such a chunk is read, never kept).
fn chunk_key(host: &Arc<str>, c: &ChunkRef) -> Option<Key> {
    let id = u64::from_str_radix(&c.id, 16).ok()?;
    Some(Key::Chunk(host.clone(), c.start, id))
}

/// An open chunk's records, decoded, columnar, sorted by time and, for one
/// time, in the order they were appended (a resend appears twice; the
/// later copy wins when applied).
#[derive(Debug, Clone, Default)]
pub struct OpenRecords {
    /// The chunk's first bytes when read.
    pub prefix: Bytes,
    /// Bytes decoded (always a record boundary).
    pub len: usize,
    timestamps: Vec<i64>,
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Per name, one value per record (NaN where the record lacks it).
    columns: Vec<Vec<f64>>,
}

impl OpenRecords {
    /// Decodes a whole open chunk.
    pub fn parse(chunk: &[u8]) -> Result<Self, DecodeError> {
        let mut o = Self {
            prefix: Bytes::copy_from_slice(&chunk[..chunk.len().min(OPEN_PREFIX_BYTES)]),
            ..Self::default()
        };
        o.append(chunk)?;
        Ok(o)
    }

    /// A copy with the records of `tail` (the bytes past `len`) added.
    pub fn extended(&self, tail: &[u8]) -> Result<Self, DecodeError> {
        let mut o = self.clone();
        o.append(tail)?;
        Ok(o)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        chunk::for_each_record(bytes, |ts, values, _| {
            let row = self.timestamps.len();
            self.timestamps.push(ts);
            for (name, v) in values {
                let col = match self.index.get(*name) {
                    Some(&c) => c,
                    None => {
                        self.index.insert(name.to_string(), self.names.len());
                        self.names.push(name.to_string());
                        self.columns.push(Vec::new());
                        self.names.len() - 1
                    }
                };
                let col = &mut self.columns[col];
                col.resize(row + 1, f64::NAN);
                col[row] = *v;
            }
        })?;
        let rows = self.timestamps.len();
        for col in &mut self.columns {
            col.resize(rows, f64::NAN);
        }
        self.len += bytes.len();
        // Points may arrive out of order (batches in flight at once, a
        // resend): kept sorted by time, a resend after the copy it
        // replaces, so reads append in order.
        if !self.timestamps.is_sorted() {
            let mut order: Vec<usize> = (0..rows).collect();
            order.sort_by_key(|&i| self.timestamps[i]);
            self.timestamps = order.iter().map(|&i| self.timestamps[i]).collect();
            for col in &mut self.columns {
                *col = order.iter().map(|&i| col[i]).collect();
            }
        }
        Ok(())
    }

    /// Records decoded.
    pub fn rows(&self) -> usize {
        self.timestamps.len()
    }

    /// Applies the records to `into`, oldest first.
    pub fn apply(&self, into: &mut FrameBuilder) {
        for &t in &self.timestamps {
            into.touch(t);
        }
        match into.wanted().cloned() {
            None => {
                for (name, col) in self.names.iter().zip(&self.columns) {
                    into.set_column(&self.timestamps, name, col);
                }
            }
            Some(wanted) => {
                for name in &wanted {
                    if let Some(&c) = self.index.get(name) {
                        into.set_column(&self.timestamps, name, &self.columns[c]);
                    }
                }
            }
        }
    }

    fn approx_bytes(&self) -> usize {
        self.prefix.len()
            + self.timestamps.len() * 8
            + self.names.iter().map(|n| 2 * (n.len() + 48)).sum::<usize>()
            + self.columns.iter().map(|c| c.len() * 8).sum::<usize>()
    }
}

/// One decoded column of a sealed chunk.
pub type Column = Arc<[f64]>;

/// A sealed chunk's pieces held for a read: its timestamps and the columns
/// asked for (`None` where the chunk lacks one).
#[derive(Clone)]
pub struct Held {
    pub timestamps: Arc<[i64]>,
    pub columns: Vec<(Arc<str>, Option<Column>)>,
}

impl Held {
    pub fn apply(&self, into: &mut FrameBuilder) {
        for &t in self.timestamps.iter() {
            into.touch(t);
        }
        for (name, col) in &self.columns {
            if let Some(col) = col {
                into.set_column(&self.timestamps, name, col);
            }
        }
    }
}

pub struct ReadCache {
    cache: moka::sync::Cache<Key, Value>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("weighted_bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl ReadCache {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(weight)
                .time_to_idle(IDLE)
                .build(),
        }
    }

    /// What is held of chunk `c` of `host`, if it has every one of `metrics`.
    pub fn held(&self, host: &Arc<str>, c: &ChunkRef, metrics: &[String]) -> Option<Arc<Held>> {
        let Some(Value::Chunk(h)) = self.cache.get(&chunk_key(host, c)?) else {
            return None;
        };
        metrics
            .iter()
            .all(|m| h.columns.iter().any(|(n, _)| **n == **m))
            .then_some(h)
    }

    /// Keeps what was decoded of chunk `c` of `host`: its timestamps, and
    /// for each of `metrics` its column or that it has none, beside the
    /// columns already held.
    pub fn keep(
        &self,
        host: &Arc<str>,
        c: &ChunkRef,
        metrics: &[String],
        decoded: &chunk::Decoded<'_>,
    ) {
        let Some(key) = chunk_key(host, c) else {
            return;
        };
        let mut held = match self.cache.get(&key) {
            Some(Value::Chunk(h)) => Held::clone(&h),
            _ => Held {
                timestamps: Arc::from(decoded.timestamps.as_slice()),
                columns: Vec::new(),
            },
        };
        for m in metrics {
            if held.columns.iter().any(|(n, _)| **n == **m) {
                continue;
            }
            let col = decoded
                .columns
                .iter()
                .find(|(n, _)| *n == m.as_str())
                .map(|(_, c)| Arc::from(c.as_slice()));
            held.columns.push((Arc::from(m.as_str()), col));
        }
        self.cache.insert(key, Value::Chunk(Arc::new(held)));
    }

    pub fn open(&self, host: &str) -> Option<Arc<OpenRecords>> {
        match self.cache.get(&Key::Open(Arc::from(host))) {
            Some(Value::Open(o)) => Some(o),
            _ => None,
        }
    }

    pub fn keep_open(&self, host: &str, open: Arc<OpenRecords>) {
        self.cache
            .insert(Key::Open(Arc::from(host)), Value::Open(open));
    }

    pub fn forget_open(&self, host: &str) {
        self.cache.invalidate(&Key::Open(Arc::from(host)));
    }

    /// The index members of `host` last seen.
    pub fn members(&self, host: &str) -> Option<Arc<Vec<ChunkRef>>> {
        match self.cache.get(&Key::Members(Arc::from(host))) {
            Some(Value::Members(m)) => Some(m),
            _ => None,
        }
    }

    /// Records that a read of `host` over the chunks starting in
    /// `[lo, hi]` and ending at or after `from` found exactly `seen`.
    pub fn saw_members(&self, host: &str, lo: i64, hi: i64, from: i64, seen: Vec<ChunkRef>) {
        let covered = |c: &ChunkRef| c.start >= lo && c.start <= hi && c.end >= from;
        let mut all: Vec<ChunkRef> = self
            .members(host)
            .map(|old| old.iter().filter(|c| !covered(c)).cloned().collect())
            .unwrap_or_default();
        all.extend(seen);
        all.sort_by_key(|c| c.start);
        if all.len() > MAX_MEMBERS {
            all.drain(..all.len() - MAX_MEMBERS);
        }
        self.cache
            .insert(Key::Members(Arc::from(host)), Value::Members(Arc::new(all)));
    }

    /// Estimated bytes held (for tests and status).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts: i64, values: &[(&str, f64)]) -> Vec<u8> {
        let mut out = Vec::new();
        chunk::encode_record(&mut out, ts, values.iter().copied());
        out
    }

    #[test]
    fn open_records_extend_and_later_copies_win() {
        let mut bytes = record(10, &[("a", 1.0), ("b", 2.0)]);
        let first = OpenRecords::parse(&bytes).unwrap();
        assert_eq!(first.len, bytes.len());
        let tail = [record(20, &[("a", 3.0)]), record(10, &[("a", 4.0)])].concat();
        bytes.extend_from_slice(&tail);
        let all = first.extended(&tail).unwrap();
        assert_eq!(all.len, bytes.len());
        let mut b = FrameBuilder::new(0, 100, &[]);
        all.apply(&mut b);
        let f = b.finish(None);
        assert_eq!(f.timestamps, vec![10, 20]);
        assert_eq!(f.metrics["a"], vec![4.0, 3.0]);
        assert_eq!(f.metrics["b"][0], 2.0);
        assert!(f.metrics["b"][1].is_nan());
        // The same as decoding the whole chunk at once.
        let mut b = FrameBuilder::new(0, 100, &[]);
        chunk::read_records(&bytes, &mut b).unwrap();
        assert_eq!(format!("{:?}", b.finish(None)), format!("{f:?}"));
    }

    #[test]
    fn members_outside_a_read_are_kept_and_inside_replaced() {
        let c = |start, id: &str| ChunkRef {
            start,
            end: start + 10,
            count: 1,
            id: id.to_string(),
        };
        let cache = ReadCache::new(1 << 20);
        cache.saw_members("h", 0, 100, 0, vec![c(0, "a"), c(50, "b")]);
        cache.saw_members("h", 40, 200, 45, vec![c(50, "b2"), c(150, "c")]);
        let ids: Vec<String> = cache
            .members("h")
            .unwrap()
            .iter()
            .map(|c| c.id.clone())
            .collect();
        assert_eq!(ids, ["a", "b2", "c"]);
    }
}
