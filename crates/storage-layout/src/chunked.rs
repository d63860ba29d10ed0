//! The chunked layout: each host's points in compressed chunks.
//!
//! Keys (all carry the `{host}` hash tag, so a host stays on one Redis
//! Cluster slot and every script below touches one slot):
//! - `monitor:open:{host}`: STRING, the open chunk. Each point is one
//!   `APPEND` of a raw record ([`crate::chunk`]); a resend appends again.
//! - `monitor:chunk:{host}:{start}:{id}`: STRING, a sealed chunk (pco
//!   columns), `EXPIREAT` its newest point + ttl; `id` is the xxh3 of the
//!   bytes, so sealing the same points twice writes the same key.
//! - `monitor:chunks:{host}`: ZSET score = chunk start, member =
//!   `start:end:count:id`, the chunk index. Chunk starts and ends here
//!   are whole seconds (a chunk's first and last millisecond, floored), so
//!   chunks written before milliseconds were kept index the same way.
//! - `monitor:hosts:{host}`: the seed's metadata hash ([`crate::meta`]),
//!   plus `open_points`, the records in the open chunk, and
//!   `sealed_points`, the points the chunk index names (kept by the seal
//!   script; chunks past the ttl count until the host's next seal trims
//!   them from the index), so a host's point count is one `HMGET`.
//! - the host index and series set of [`crate::hosts`].
//!
//! **Sealing.** The writer counts what it appended per host; when a host
//! has `points_per_chunk` points open, or its oldest open point is
//! `max_open` old, [`KeyLayout::maintain`] seals: it reads the open chunk,
//! merges its records by timestamp (a later record wins metric by metric,
//! as HSET does in the seed layout), merges in every sealed chunk whose
//! span overlaps them (so a resent point replaces, never duplicates), cuts
//! the result into chunks of at most `points_per_chunk` points within one
//! [`CHUNK_WINDOW`], and hands them to one Lua script that checks the open
//! chunk still starts with the bytes it read and the overlapped chunks are
//! still indexed, then atomically writes the new chunks, drops the old
//! ones, and cuts the sealed prefix off the open chunk, leaving a fresh
//! nonce at its start. A second sealer that read the same prefix finds the
//! nonce changed and does nothing. After sealing, each (host, timestamp)
//! is stored once; before, a resend may sit twice in the open chunk and
//! readers keep the later copy.
//!
//! **Reading** is one script call per host, which returns, atomically, the
//! open chunk and the sealed chunks overlapping the range: a seal can
//! never move points between the index and the open chunk under a reader.

use crate::chunk;
use crate::exec::{Command, Exec, Reply};
use crate::frame::{Frame, FrameBuilder};
use crate::meta;
use crate::read_cache::{Held, OpenRecords, ReadCache};
use crate::{Arrival, KeyLayout, LayoutError, RangeReq};
use broker_proto::v1::MetricBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A sealed chunk never spans more than one aligned window of this many
/// seconds, so a reader knows how far before a range's start a chunk that
/// overlaps it can begin. Part of the format: readers rely on it.
pub const CHUNK_WINDOW: i64 = 7_200;
/// Field of the metadata hash counting the records in the open chunk.
pub const OPEN_POINTS_FIELD: &str = "open_points";
/// Field of the metadata hash counting the points of the indexed chunks.
pub const SEALED_POINTS_FIELD: &str = "sealed_points";
/// Points per sealed chunk by default: 20 minutes of 5-second snapshots,
/// where pco's per-column overhead is under 0.3 byte per sample.
pub const DEFAULT_POINTS_PER_CHUNK: usize = 240;
/// How long a point stays in the open chunk at most, by default.
pub const DEFAULT_MAX_OPEN: Duration = Duration::from_secs(30 * 60);
/// Records one seal takes at most; the rest waits for the next.
const MAX_RECORDS_PER_SEAL_FACTOR: usize = 8;
/// Bytes compared to tell that the open chunk was sealed meanwhile.
const PREFIX_CHECK_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedConfig {
    pub points_per_chunk: usize,
    pub max_open: Duration,
    /// How often one host's key expiries are refreshed.
    pub maintenance_interval: Duration,
    /// Bytes a reader keeps of decoded chunks between reads
    /// ([`crate::read_cache`]); 0 keeps nothing (writers).
    pub read_cache_bytes: u64,
}

impl Default for ChunkedConfig {
    fn default() -> Self {
        Self {
            points_per_chunk: DEFAULT_POINTS_PER_CHUNK,
            max_open: DEFAULT_MAX_OPEN,
            maintenance_interval: crate::seed::DEFAULT_MAINTENANCE_INTERVAL,
            read_cache_bytes: 0,
        }
    }
}

/// What this process appended to a host's open chunk since its last seal.
#[derive(Debug, Clone, Copy)]
struct Open {
    points: usize,
    /// When the first of those was appended (Unix seconds).
    since: i64,
    /// Handed out by `due`, not finished yet.
    sealing: bool,
}

pub struct ChunkedLayout {
    config: ChunkedConfig,
    open: Mutex<HashMap<String, Open>>,
    /// Hosts whose expiries were refreshed within the interval.
    maintained: moka::sync::Cache<String, ()>,
    nonce_counter: std::sync::atomic::AtomicU64,
    indexer: crate::hosts::Indexer,
    cache: Option<ReadCache>,
}

impl std::fmt::Debug for ChunkedLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedLayout")
            .field("config", &self.config)
            .finish()
    }
}

pub fn open_key(host: &str) -> String {
    format!("monitor:open:{{{host}}}")
}
pub fn index_key(host: &str) -> String {
    format!("monitor:chunks:{{{host}}}")
}
fn chunk_key_prefix(host: &str) -> String {
    format!("monitor:chunk:{{{host}}}:")
}
pub fn chunk_key(host: &str, start: i64, id: &str) -> String {
    format!("{}{start}:{id}", chunk_key_prefix(host))
}

pub use crate::chunk::ChunkRef;

/// KEYS: open, index, meta, old chunk keys..., new chunk keys...
/// ARGV: prefix, sealed length, nonce record, index ttl, trim horizon,
/// sealed records, n_old, old members..., n_new, (member, start, blob,
/// expire_at)...
const SEAL_SCRIPT: &str = r#"
local open, idx, meta = KEYS[1], KEYS[2], KEYS[3]
local prefix, len = ARGV[1], tonumber(ARGV[2])
if redis.call('STRLEN', open) < len then return 0 end
if redis.call('GETRANGE', open, 0, #prefix - 1) ~= prefix then return 0 end
local n_old = tonumber(ARGV[7])
for i = 1, n_old do
  if not redis.call('ZSCORE', idx, ARGV[7 + i]) then return 0 end
end
local function count(m)
  return tonumber(string.match(m, '^%-?%d+:%-?%d+:(%d+):')) or 0
end
local sealed = 0
for i = 1, n_old do
  redis.call('ZREM', idx, ARGV[7 + i])
  redis.call('UNLINK', KEYS[3 + i])
  sealed = sealed - count(ARGV[7 + i])
end
local a = 8 + n_old
local n_new = tonumber(ARGV[a])
a = a + 1
for i = 1, n_new do
  redis.call('SET', KEYS[3 + n_old + i], ARGV[a + 2], 'EXAT', ARGV[a + 3])
  redis.call('ZADD', idx, ARGV[a + 1], ARGV[a])
  sealed = sealed + count(ARGV[a])
  a = a + 4
end
local rest = redis.call('GETRANGE', open, len, -1)
redis.call('SET', open, ARGV[3] .. rest, 'KEEPTTL')
for _, m in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. ARGV[5])) do
  sealed = sealed - count(m)
end
redis.call('ZREMRANGEBYSCORE', idx, '-inf', '(' .. ARGV[5])
redis.call('EXPIRE', idx, ARGV[4])
redis.call('HINCRBY', meta, 'sealed_points', sealed)
-- Not clamped at 0: a writer's pipeline appends its records before it
-- counts them, so a seal between the two briefly takes the count below 0.
redis.call('HINCRBY', meta, 'open_points', -tonumber(ARGV[6]))
return 1
"#;

/// KEYS: index, open. ARGV: lowest chunk start, highest chunk start,
/// range start, chunk key prefix, the open chunk's first bytes as the
/// reader holds them (empty: none held), the length held, then the ids of
/// the chunks the reader holds. Returns {1 and the open chunk's bytes past
/// the length held, or 0 and the whole open chunk or false, then per chunk
/// ending at or after the range start, oldest first: its member and its
/// bytes (false when held, or gone)}.
const READ_SCRIPT: &str = r#"
local members = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])
local held, held_len = ARGV[5], tonumber(ARGV[6])
local out
if #held > 0 and redis.call('STRLEN', KEYS[2]) >= held_len
    and redis.call('GETRANGE', KEYS[2], 0, #held - 1) == held then
  out = {1, redis.call('GETRANGE', KEYS[2], held_len, -1)}
else
  out = {0, redis.call('GET', KEYS[2])}
end
local skip = {}
for i = 7, #ARGV do skip[ARGV[i]] = true end
local from = tonumber(ARGV[3])
for _, m in ipairs(members) do
  local s, e, c, id = string.match(m, '^(-?%d+):(-?%d+):(%d+):(%x+)$')
  if s and tonumber(e) >= from then
    out[#out + 1] = m
    if skip[id] then
      out[#out + 1] = false
    else
      out[#out + 1] = redis.call('GET', ARGV[4] .. s .. ':' .. id)
    end
  end
end
return out
"#;

/// KEYS: index, meta. Sets `sealed_points` from the index when the
/// metadata hash exists without it (data sealed before it was kept).
const SEALED_COUNT_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[2], 'sealed_points') == 1 then return 0 end
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  n = n + (tonumber(string.match(m, '^%-?%d+:%-?%d+:(%d+):')) or 0)
end
redis.call('HSET', KEYS[2], 'sealed_points', n)
return 1
"#;

/// The aligned window second `ts` is in.
fn window(ts: i64) -> i64 {
    ts.div_euclid(CHUNK_WINDOW)
}

/// The second millisecond `ms` is in.
fn second(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn corrupt(what: &'static str, host: &str, e: impl std::fmt::Display) -> LayoutError {
    LayoutError::Corrupt {
        what,
        host: host.to_string(),
        reason: e.to_string(),
    }
}

impl ChunkedLayout {
    pub fn new(config: ChunkedConfig) -> Self {
        Self {
            maintained: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(config.maintenance_interval)
                .build(),
            open: Mutex::new(HashMap::new()),
            nonce_counter: std::sync::atomic::AtomicU64::new(0),
            indexer: crate::hosts::Indexer::default(),
            cache: (config.read_cache_bytes > 0).then(|| ReadCache::new(config.read_cache_bytes)),
            config,
        }
    }

    /// Estimated bytes this reader's cache holds (0 without one).
    pub fn read_cache_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, ReadCache::weighted_bytes)
    }

    pub fn config(&self) -> &ChunkedConfig {
        &self.config
    }

    fn nonce(&self, host: &str, now: i64) -> [u8; 8] {
        let n = self
            .nonce_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut seed = Vec::with_capacity(host.len() + 32);
        seed.extend_from_slice(host.as_bytes());
        seed.extend_from_slice(&now.to_le_bytes());
        seed.extend_from_slice(&nanos.to_le_bytes());
        seed.extend_from_slice(&n.to_le_bytes());
        seed.extend_from_slice(&(std::process::id() as u64).to_le_bytes());
        twox_hash::XxHash3_64::oneshot(&seed).to_le_bytes()
    }

    /// Seals what `host`'s open chunk holds now. Returns the records
    /// sealed (0: nothing open, or another sealer got there first).
    pub async fn seal(
        &self,
        db: &dyn Exec,
        host: &str,
        ttl_secs: u64,
        now: i64,
    ) -> Result<usize, LayoutError> {
        let open_key = open_key(host);
        let index_key = index_key(host);
        let open = db
            .pipeline(vec![Command::of("GET", &[open_key.as_bytes()])])
            .await?
            .pop()
            .unwrap_or(Reply::Nil)
            .ok("GET")?;
        let Reply::Bytes(open) = open else {
            return Ok(0);
        };
        // The first records, up to the per-seal bound: their span first
        // (milliseconds, then the seconds the index counts in).
        let max_records = self.config.points_per_chunk.max(1) * MAX_RECORDS_PER_SEAL_FACTOR;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        let mut records = 0;
        let mut sealed_len = 0;
        chunk::for_each_record(&open, |ts, _, end| {
            if records >= max_records {
                return;
            }
            lo = lo.min(ts);
            hi = hi.max(ts);
            records += 1;
            sealed_len = end;
        })
        .map_err(|e| corrupt("open chunk", host, e))?;
        if records == 0 {
            return Ok(0);
        }
        let (lo, hi) = (second(lo), second(hi));
        // Sealed chunks that overlap the open points are merged with them.
        let members = db
            .pipeline(vec![Command::of(
                "ZRANGEBYSCORE",
                &[
                    index_key.as_bytes(),
                    (lo.saturating_sub(CHUNK_WINDOW - 1)).to_string().as_bytes(),
                    hi.to_string().as_bytes(),
                ],
            )])
            .await?
            .pop()
            .unwrap_or(Reply::Nil)
            .ok("ZRANGEBYSCORE")?
            .into_array();
        let old: Vec<ChunkRef> = members
            .iter()
            .filter_map(|m| m.bytes().and_then(ChunkRef::parse))
            .filter(|c| c.end >= lo && c.start <= hi)
            .collect();
        let mut blobs: Vec<Bytes> = Vec::with_capacity(old.len());
        if !old.is_empty() {
            let gets = old
                .iter()
                .map(|c| Command::of("GET", &[chunk_key(host, c.start, &c.id).as_bytes()]))
                .collect();
            for blob in db.pipeline(gets).await? {
                if let Reply::Bytes(b) = blob.ok("GET")? {
                    blobs.push(b);
                }
            }
        }
        // Old chunks first, then the open records on top of them.
        let mut table = chunk::Table::new();
        for b in &blobs {
            chunk::merge_chunk(b, &mut table).map_err(|e| corrupt("sealed chunk", host, e))?;
        }
        chunk::merge_records(&open[..sealed_len], &mut table)
            .map_err(|e| corrupt("open chunk", host, e))?;
        // Cut into chunks: one window, at most points_per_chunk each.
        let mut new: Vec<(ChunkRef, Vec<u8>)> = Vec::new();
        let all: Vec<(i64, &[f64])> = table.rows().collect();
        let mut i = 0;
        while i < all.len() {
            let w = window(second(all[i].0));
            let mut j = i + 1;
            while j < all.len()
                && j - i < self.config.points_per_chunk.max(1)
                && window(second(all[j].0)) == w
            {
                j += 1;
            }
            let part = &all[i..j];
            let (start, end) = (second(part[0].0), second(part[part.len() - 1].0));
            i = j;
            if end.saturating_add(ttl_secs as i64) <= now {
                continue; // already past retention
            }
            let blob = chunk::encode_chunk(&table, part);
            let id = format!("{:016x}", twox_hash::XxHash3_64::oneshot(&blob));
            new.push((
                ChunkRef {
                    start,
                    end,
                    count: part.len() as u64,
                    id,
                },
                blob,
            ));
        }
        let meta_key = meta::host_key(host);
        let mut keys: Vec<Vec<u8>> = vec![
            open_key.into_bytes(),
            index_key.into_bytes(),
            meta_key.into_bytes(),
        ];
        keys.extend(
            old.iter()
                .map(|c| chunk_key(host, c.start, &c.id).into_bytes()),
        );
        keys.extend(
            new.iter()
                .map(|(c, _)| chunk_key(host, c.start, &c.id).into_bytes()),
        );
        let horizon = now
            .saturating_sub(ttl_secs as i64)
            .saturating_sub(CHUNK_WINDOW);
        let index_ttl = ttl_secs + CHUNK_WINDOW as u64 + self.config.maintenance_interval.as_secs();
        let mut args: Vec<Bytes> = vec![
            Bytes::copy_from_slice(&open[..sealed_len.min(PREFIX_CHECK_BYTES)]),
            Bytes::from(sealed_len.to_string()),
            Bytes::from(chunk::nonce_record(self.nonce(host, now))),
            Bytes::from(index_ttl.to_string()),
            Bytes::from(horizon.to_string()),
            Bytes::from(records.to_string()),
            Bytes::from(old.len().to_string()),
        ];
        args.extend(old.iter().map(|c| Bytes::from(c.member())));
        args.push(Bytes::from(new.len().to_string()));
        for (c, blob) in new {
            args.push(Bytes::from(c.member()));
            args.push(Bytes::from(c.start.to_string()));
            args.push(Bytes::from(blob));
            args.push(Bytes::from(
                c.end.saturating_add(ttl_secs as i64).to_string(),
            ));
        }
        let keys = keys.into_iter().map(Bytes::from).collect();
        let done = db
            .pipeline(vec![Command::eval(SEAL_SCRIPT, keys, args)])
            .await?
            .pop()
            .unwrap_or(Reply::Nil)
            .ok("EVAL")?;
        Ok(if done.int() == Some(1) { records } else { 0 })
    }

    /// The sealed chunks indexed for `host` (all of them).
    pub async fn chunks(&self, db: &dyn Exec, host: &str) -> Result<Vec<ChunkRef>, LayoutError> {
        let members = db
            .pipeline(vec![Command::of(
                "ZRANGE",
                &[index_key(host).as_bytes(), b"0", b"-1"],
            )])
            .await?
            .pop()
            .unwrap_or(Reply::Nil)
            .ok("ZRANGE")?;
        Ok(members
            .into_array()
            .iter()
            .filter_map(|m| m.bytes().and_then(ChunkRef::parse))
            .collect())
    }

    /// What a read of `req` sends: the chunk starts it covers, and what
    /// the reader's cache holds of that range (see [`crate::read_cache`]).
    fn plan(&self, req: &RangeReq, metrics: &[String]) -> Plan {
        let from = second(req.start_ms);
        let mut plan = Plan {
            host: Arc::from(req.host.as_str()),
            from,
            lo: from.saturating_sub(CHUNK_WINDOW - 1),
            hi: second(req.end_ms),
            open: None,
            held: HashMap::new(),
        };
        let Some(cache) = &self.cache else {
            return plan;
        };
        plan.open = cache.open(&req.host);
        // Sealed columns are kept for reads that name their metrics (PromQL,
        // a chart of one metric), not for whole snapshots.
        if !metrics.is_empty()
            && let Some(members) = cache.members(&req.host)
        {
            for c in members
                .iter()
                .filter(|c| c.start >= plan.lo && c.start <= plan.hi && c.end >= from)
            {
                if let Some(h) = cache.held(&plan.host, c, metrics) {
                    plan.held.insert(c.id.clone(), h);
                }
            }
        }
        plan
    }

    fn read_command(req: &RangeReq, plan: &Plan) -> Command {
        let index = index_key(&req.host);
        let open = open_key(&req.host);
        let mut args = vec![
            Bytes::from(plan.lo.to_string()),
            Bytes::from(plan.hi.to_string()),
            Bytes::from(plan.from.to_string()),
            Bytes::from(chunk_key_prefix(&req.host)),
        ];
        match &plan.open {
            Some(o) => {
                args.push(o.prefix.clone());
                args.push(Bytes::from(o.len.to_string()));
            }
            None => args.extend([Bytes::new(), Bytes::from_static(b"0")]),
        }
        args.extend(plan.held.keys().map(|id| Bytes::from(id.clone())));
        Command::eval(
            READ_SCRIPT,
            vec![Bytes::from(index), Bytes::from(open)],
            args,
        )
    }

    /// Builds one host's frame from the read script's reply.
    fn frame_of(
        &self,
        req: &RangeReq,
        plan: &Plan,
        reply: Reply,
        metrics: &[String],
        limit: Option<usize>,
    ) -> Result<Frame, LayoutError> {
        let host = req.host.as_str();
        let mut parts = reply.ok("EVAL")?.into_array().into_iter();
        let incremental = parts.next().and_then(|r| r.int()) == Some(1);
        let open = parts.next();
        let mut b = FrameBuilder::new(req.start_ms, req.end_ms, metrics);
        let mut seen = Vec::new();
        let mut pairs = Vec::new();
        while let (Some(member), Some(blob)) = (parts.next(), parts.next()) {
            if let Some(c) = member.bytes().and_then(ChunkRef::parse) {
                pairs.push((c, blob));
            }
        }
        // Room for every chunk's points and the open records, at most.
        b.reserve(
            pairs.iter().map(|(c, _)| c.count as usize).sum::<usize>()
                + plan.open.as_ref().map_or(0, |o| o.rows()),
        );
        for (c, blob) in pairs {
            match (blob.bytes(), &self.cache) {
                (Some(blob), Some(cache)) if !metrics.is_empty() => {
                    let d = chunk::decode(blob, |n| b.wants(n))
                        .map_err(|e| corrupt("sealed chunk", host, e))?;
                    d.apply(&mut b);
                    cache.keep(&plan.host, &c, metrics, &d);
                }
                (Some(blob), _) => {
                    chunk::read_chunk(blob, &mut b).map_err(|e| corrupt("sealed chunk", host, e))?
                }
                // Left out because held (else gone: expired, not yet trimmed
                // from the index).
                (None, _) => {
                    if let Some(h) = plan.held.get(&c.id) {
                        h.apply(&mut b);
                    }
                }
            }
            seen.push(c);
        }
        let open = open.as_ref().and_then(Reply::bytes);
        match &self.cache {
            None => {
                if let Some(open) = open {
                    chunk::read_records(open, &mut b)
                        .map_err(|e| corrupt("open chunk", host, e))?;
                }
            }
            Some(cache) => {
                cache.saw_members(host, plan.lo, plan.hi, plan.from, seen);
                let records = match (incremental, &plan.open, open) {
                    (true, Some(held), Some(tail)) if !tail.is_empty() => Some(Arc::new(
                        held.extended(tail)
                            .map_err(|e| corrupt("open chunk", host, e))?,
                    )),
                    (true, Some(held), _) => Some(held.clone()),
                    (false, _, Some(all)) if !all.is_empty() => Some(Arc::new(
                        OpenRecords::parse(all).map_err(|e| corrupt("open chunk", host, e))?,
                    )),
                    _ => None,
                };
                match records {
                    Some(r) => {
                        r.apply(&mut b);
                        if plan.open.as_ref().is_none_or(|o| !Arc::ptr_eq(o, &r)) {
                            cache.keep_open(host, r);
                        }
                    }
                    None => cache.forget_open(host),
                }
            }
        }
        Ok(b.finish(limit))
    }
}

/// One host's read: the chunk starts it covers and what the reader's cache
/// holds (the open chunk's records; sealed chunks' columns by chunk id).
struct Plan {
    host: Arc<str>,
    /// The range's first second: chunks ending before it are not read.
    from: i64,
    /// Chunk starts read (seconds).
    lo: i64,
    hi: i64,
    open: Option<Arc<OpenRecords>>,
    held: HashMap<String, Arc<Held>>,
}

impl KeyLayout for ChunkedLayout {
    fn name(&self) -> &'static str {
        "chunked"
    }

    fn write_commands(
        &self,
        batches: &[&MetricBatch],
        arrival: Arrival,
        ttl_secs: u64,
        _now: i64,
        out: &mut Vec<Command>,
    ) {
        struct Host<'a> {
            points: i64,
            last_seen: i64,
            labels: Option<&'a HashMap<String, String>>,
        }
        let mut order: Vec<&str> = Vec::new();
        let mut hosts: HashMap<&str, Host<'_>> = HashMap::new();
        let mut record = Vec::with_capacity(1024);
        for batch in batches {
            let names = &batch.metric_names;
            for p in &batch.points {
                let values: Vec<(&str, f64)> = p
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        let ix = if p.name_index.is_empty() {
                            i
                        } else {
                            *p.name_index.get(i)? as usize
                        };
                        Some((names.get(ix)?.as_str(), *v))
                    })
                    .collect();
                record.clear();
                let ms = p.timestamp.saturating_mul(1000) + i64::from(p.millis);
                chunk::encode_record(&mut record, ms, values.iter().copied());
                let mut key = Vec::with_capacity(p.host_id.len() + 16);
                key.extend_from_slice(b"monitor:open:{");
                key.extend_from_slice(p.host_id.as_bytes());
                key.push(b'}');
                out.push(Command::new(
                    "APPEND",
                    vec![Bytes::from(key), Bytes::copy_from_slice(&record)],
                ));
                let h = hosts.entry(p.host_id.as_str()).or_insert_with(|| {
                    order.push(p.host_id.as_str());
                    Host {
                        points: 0,
                        last_seen: i64::MIN,
                        labels: None,
                    }
                });
                h.points += 1;
                if p.timestamp >= h.last_seen {
                    h.last_seen = p.timestamp;
                    if !p.labels.is_empty() {
                        h.labels = Some(&p.labels);
                    }
                }
            }
        }
        for host in order {
            let h = &hosts[host];
            let meta_key = Bytes::from(meta::host_key(host));
            meta::update(
                out,
                arrival,
                meta_key.clone(),
                h.last_seen,
                h.labels,
                OPEN_POINTS_FIELD,
                h.points,
            );
            if !self.maintained.contains_key(host) {
                let long_ttl = Bytes::from(
                    (ttl_secs + self.config.maintenance_interval.as_secs()).to_string(),
                );
                out.push(Command::new(
                    "EXPIRE",
                    vec![Bytes::from(open_key(host)), long_ttl.clone()],
                ));
                out.push(Command::new("EXPIRE", vec![meta_key, long_ttl]));
                self.maintained.insert(host.to_string(), ());
            }
        }
        self.indexer.commands(batches, ttl_secs, out);
    }

    fn written(&self, batches: &[&MetricBatch], ok: bool, now: i64) {
        if !ok {
            for b in batches {
                for p in &b.points {
                    self.maintained.invalidate(&p.host_id);
                }
            }
            self.indexer.failed(batches);
            return;
        }
        let mut open = self.open.lock().expect("open-chunk table lock");
        for b in batches {
            for p in &b.points {
                let e = open.entry(p.host_id.clone()).or_insert(Open {
                    points: 0,
                    since: now,
                    sealing: false,
                });
                e.points += 1;
            }
        }
    }

    fn due(&self, now: i64, max: usize) -> Vec<String> {
        let max_open = self.config.max_open.as_secs() as i64;
        let mut open = self.open.lock().expect("open-chunk table lock");
        let mut out = Vec::new();
        for (host, o) in open.iter_mut() {
            if out.len() >= max {
                break;
            }
            if !o.sealing
                && (o.points >= self.config.points_per_chunk
                    || now.saturating_sub(o.since) >= max_open)
            {
                o.sealing = true;
                out.push(host.clone());
            }
        }
        out
    }

    fn maintain<'a>(
        &'a self,
        db: &'a dyn Exec,
        host: &'a str,
        ttl_secs: u64,
        now: i64,
    ) -> BoxFuture<'a, Result<(), LayoutError>> {
        Box::pin(async move {
            let result = self.seal(db, host, ttl_secs, now).await;
            let mut open = self.open.lock().expect("open-chunk table lock");
            if let Some(o) = open.get_mut(host) {
                o.sealing = false;
                if let Ok(sealed) = &result {
                    o.points = o.points.saturating_sub(*sealed);
                    if *sealed == 0 || o.points == 0 {
                        // Nothing left (or someone else sealed): forget
                        // the host until it appends again.
                        open.remove(host);
                    } else {
                        o.since = now;
                    }
                }
            }
            result.map(|_| ())
        })
    }

    fn frames<'a>(
        &'a self,
        db: &'a dyn Exec,
        reqs: &'a [RangeReq],
        metrics: &'a [String],
        limit: Option<usize>,
    ) -> BoxFuture<'a, Result<Vec<Frame>, LayoutError>> {
        Box::pin(async move {
            let plans: Vec<Plan> = reqs.iter().map(|r| self.plan(r, metrics)).collect();
            let replies = db
                .pipeline(
                    reqs.iter()
                        .zip(&plans)
                        .map(|(r, p)| Self::read_command(r, p))
                        .collect(),
                )
                .await?;
            reqs.iter()
                .zip(&plans)
                .zip(replies)
                .map(|((req, plan), reply)| self.frame_of(req, plan, reply, metrics, limit))
                .collect()
        })
    }

    /// `sealed_points` + `open_points` of the metadata hash: one `HMGET`
    /// per host, whatever the retention holds.
    fn stored_points<'a>(
        &'a self,
        db: &'a dyn Exec,
        hosts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<u64>, LayoutError>> {
        Box::pin(async move {
            let commands = hosts
                .iter()
                .map(|h| {
                    Command::of(
                        "HMGET",
                        &[
                            meta::host_key(h).as_bytes(),
                            SEALED_POINTS_FIELD.as_bytes(),
                            OPEN_POINTS_FIELD.as_bytes(),
                        ],
                    )
                })
                .collect();
            db.pipeline(commands)
                .await?
                .into_iter()
                .map(|r| {
                    Ok(r.ok("HMGET")?
                        .into_array()
                        .iter()
                        .map(|v| v.int().unwrap_or(0).max(0) as u64)
                        .sum())
                })
                .collect()
        })
    }

    fn points_from_meta(&self, meta: &crate::HostMeta) -> Option<u64> {
        let n = |f: &str| meta.counters.get(f).copied().unwrap_or(0).max(0) as u64;
        Some(n(SEALED_POINTS_FIELD) + n(OPEN_POINTS_FIELD))
    }

    /// Hosts sealed before `sealed_points` existed get it from their
    /// chunk index, atomically per host.
    fn backfill_commands(&self, hosts: &[String], out: &mut Vec<Command>) {
        for h in hosts {
            out.push(Command::eval(
                SEALED_COUNT_SCRIPT,
                vec![Bytes::from(index_key(h)), Bytes::from(meta::host_key(h))],
                vec![],
            ));
        }
    }

    fn counts<'a>(
        &'a self,
        db: &'a dyn Exec,
        reqs: &'a [RangeReq],
    ) -> BoxFuture<'a, Result<Vec<u64>, LayoutError>> {
        Box::pin(async move {
            let mut commands = Vec::with_capacity(reqs.len() * 2);
            for r in reqs {
                commands.push(Command::of(
                    "ZRANGEBYSCORE",
                    &[
                        index_key(&r.host).as_bytes(),
                        second(r.start_ms)
                            .saturating_sub(CHUNK_WINDOW - 1)
                            .to_string()
                            .as_bytes(),
                        second(r.end_ms).to_string().as_bytes(),
                    ],
                ));
                commands.push(Command::of(
                    "HGET",
                    &[
                        meta::host_key(&r.host).as_bytes(),
                        OPEN_POINTS_FIELD.as_bytes(),
                    ],
                ));
            }
            let mut replies = db.pipeline(commands).await?.into_iter();
            let mut out = Vec::with_capacity(reqs.len());
            for r in reqs {
                let (Some(members), Some(open)) = (replies.next(), replies.next()) else {
                    break;
                };
                let sealed: u64 = members
                    .ok("ZRANGEBYSCORE")?
                    .into_array()
                    .iter()
                    .filter_map(|m| m.bytes().and_then(ChunkRef::parse))
                    .filter(|c| c.end >= second(r.start_ms))
                    .map(|c| c.count)
                    .sum();
                let open = open.ok("HGET")?.int().unwrap_or(0).max(0) as u64;
                out.push(sealed + open);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::Point;

    #[test]
    fn members_round_trip() {
        let c = ChunkRef {
            start: -5,
            end: 100,
            count: 3,
            id: "00ff".into(),
        };
        assert_eq!(ChunkRef::parse(c.member().as_bytes()), Some(c));
        assert_eq!(ChunkRef::parse(b"1:2:x:id"), None);
        assert_eq!(chunk_key("h", 5, "ab"), "monitor:chunk:{h}:5:ab");
    }

    #[test]
    fn writes_append_one_record_per_point_and_count_what_is_due() {
        let layout = ChunkedLayout::new(ChunkedConfig {
            points_per_chunk: 2,
            max_open: Duration::from_secs(60),
            maintenance_interval: Duration::from_secs(30),
            ..Default::default()
        });
        let batch = MetricBatch {
            seq: 0,
            metric_names: vec!["cpu".into(), "mem".into()],
            points: vec![
                Point {
                    host_id: "h1".into(),
                    timestamp: 100,
                    values: vec![0.5, 2.0],
                    name_index: vec![],
                    labels: [("role".to_string(), "web".to_string())].into(),
                    millis: 0,
                },
                Point {
                    host_id: "h2".into(),
                    timestamp: 100,
                    values: vec![7.0],
                    name_index: vec![1],
                    labels: Default::default(),
                    millis: 250,
                },
            ],
        };
        let mut out = Vec::new();
        layout.write_commands(&[&batch], Arrival::Live, 60, 1000, &mut out);
        let names: Vec<&str> = out.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "APPEND", "APPEND", "HSET", "HINCRBY", "EXPIRE", "EXPIRE", "HSET", "HINCRBY",
                "EXPIRE", "EXPIRE",
                // The host index and series sets (crate::hosts); a
                // replay of the same hosts right after has none.
                "EVAL", "EVAL", "ZADD"
            ]
        );
        // A replay's metadata: one script per host with the key, last_seen,
        // counter and count, labels.
        let mut late = Vec::new();
        layout.write_commands(&[&batch], Arrival::Late, 60, 1000, &mut late);
        let names: Vec<&str> = late.iter().map(|c| c.name).collect();
        assert_eq!(names, ["APPEND", "APPEND", "EVAL", "EVAL"]);
        let meta: Vec<&[u8]> = late[2].args[2..].iter().map(|a| &a[..]).collect();
        assert_eq!(
            meta,
            [
                &b"monitor:hosts:{h1}"[..],
                b"100",
                b"open_points",
                b"1",
                b"label:role",
                b"web"
            ]
        );
        assert_eq!(&out[0].args[0][..], b"monitor:open:{h1}");
        let mut table = chunk::Table::new();
        chunk::merge_records(&out[1].args[1], &mut table).unwrap();
        assert_eq!(table.get(100_250, "mem"), Some(7.0));
        assert_eq!(table.names_at(100_250), vec!["mem"]);
        layout.written(&[&batch], true, 1000);
        assert!(layout.due(1000, 10).is_empty());
        layout.written(&[&batch], true, 1001);
        let mut due = layout.due(1001, 10);
        due.sort();
        assert_eq!(due, ["h1", "h2"]);
        assert!(layout.due(1001, 10).is_empty(), "handed out once");
    }
}
