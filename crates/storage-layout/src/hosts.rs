//! The host index and each host's series set: what periodic work reads
//! instead of walking the keyspace, so a host list costs O(hosts) whatever
//! the retention holds.
//!
//! Keys (both layouts):
//! - `monitor:index:hosts`: ZSET member = host, score = the newest
//!   timestamp written for it (refreshed at most every [`REFRESH`] per
//!   writer and host, only ever forward: `ZADD GT`). One key for the fleet:
//!   on Redis Cluster it lives in one slot, and writers touch it once per
//!   pipeline (one `ZADD` naming every host due), not once per point.
//! - `monitor:series:{host}`: ZSET member = metric name (as stored, labels
//!   included), score = the newest second it was seen at (same refresh, so
//!   up to [`REFRESH`] behind). Carries the `{host}` hash tag, so it sits in
//!   the host's slot. Trimmed past the ttl and expiring with the host's
//!   other keys.
//! - `monitor:series:first:{host}`: ZSET, when each series was first seen
//!   (score = the oldest millisecond, `ZADD LT`: only ever backward, so a late
//!   point moves it back), for the series born after their host's series
//!   set was: those born with it share its one entry, the empty member
//!   [`BORN_WITH_HOST`] (so a new host costs one entry here, not one per
//!   series). With the newest, a series' time range: a selector or a
//!   label API over any past range finds series that have since gone, and
//!   not those born after it ([`series_between`]). A member leaves both
//!   sets together, when its newest is past the ttl.
//! - `monitor:index:hosts:ready`: set once the index was backfilled from
//!   data written before it existed ([`backfill`]), so nothing walks the
//!   keyspace again.
//!
//! Writers add to both on the write path ([`Indexer`]); their maintainer
//! drops hosts that have not reported for a ttl ([`trim_command`]). Readers
//! (query-api's host list, label APIs and selectors, host-manager's
//! inventory) read them with [`list`] and [`series`].

use crate::exec::{Command, Exec, Reply};
use crate::{KeyLayout, LayoutError, RangeReq, meta};
use broker_proto::v1::MetricBatch;
use bytes::Bytes;
use std::collections::HashMap;
use std::time::Duration;

/// The host index (ZSET host → last seen).
pub const INDEX_KEY: &str = "monitor:index:hosts";
/// Set (to [`INDEX_VERSION`]) once the index holds every host written
/// before the index existed.
pub const READY_KEY: &str = "monitor:index:hosts:ready";
pub const INDEX_VERSION: &str = "1";
/// Held by the one process backfilling, so two do not walk at once.
const BACKFILL_LOCK_KEY: &str = "monitor:index:hosts:backfilling";
const BACKFILL_LOCK_SECS: u64 = 30;
/// A writer refreshes a host's index entry and series set at most this
/// often (per set of metric names it sees for that host), so the index
/// costs the write path a few commands per host and minute.
pub const REFRESH: Duration = Duration::from_secs(30);
/// (host, name set) pairs a writer remembers at most; past that some are
/// refreshed early, which only costs an idempotent ZADD.
const MAX_REMEMBERED: u64 = 1_000_000;
/// Keys asked per SCAN call of the one-time backfill.
const SCAN_COUNT: u32 = 1_000;
/// Hosts backfilled per round trip.
const BACKFILL_BATCH: usize = 256;

pub fn series_key(host: &str) -> String {
    format!("monitor:series:{{{host}}}")
}

pub fn series_first_key(host: &str) -> String {
    format!("monitor:series:first:{{{host}}}")
}

/// The member of `monitor:series:first:{host}` that stands for every
/// series born with the host's series set.
pub const BORN_WITH_HOST: &str = "";

/// KEYS: series (newest), series first. ARGV: newest (second), oldest
/// (millisecond), horizon (second), ttl, names... Records a point's names: when the series set is new, one
/// [`BORN_WITH_HOST`] entry at `oldest` for all of them; else a first-seen
/// entry at `oldest` for each name the set does not hold yet. Then the
/// newest second of every name (`GT`), drops the series last seen before
/// the horizon from both sets, and sets both expiries. Names go 1,000 at a
/// time (Lua's `unpack` limit).
const SERIES_SCRIPT: &str = r#"
local last, first = KEYS[1], KEYS[2]
local newest, oldest = ARGV[1], ARGV[2]
local n = #ARGV - 4
local fresh = redis.call('EXISTS', last) == 0
if fresh then
  redis.call('ZADD', first, oldest, '')
end
for i = 1, n, 1000 do
  local names = {}
  for j = i, math.min(i + 999, n) do names[#names + 1] = ARGV[4 + j] end
  if not fresh then
    local seen = redis.call('ZMSCORE', last, unpack(names))
    local born = {}
    for k = 1, #names do
      if not seen[k] then
        born[#born + 1] = oldest
        born[#born + 1] = names[k]
      end
    end
    if #born > 0 then redis.call('ZADD', first, 'LT', unpack(born)) end
  end
  local add = {}
  for k = 1, #names do
    add[#add + 1] = newest
    add[#add + 1] = names[k]
  end
  redis.call('ZADD', last, 'GT', unpack(add))
end
local gone = redis.call('ZRANGEBYSCORE', last, '-inf', '(' .. ARGV[3])
for i = 1, #gone, 1000 do
  local part = {}
  for j = i, math.min(i + 999, #gone) do part[#part + 1] = gone[j] end
  redis.call('ZREM', last, unpack(part))
  redis.call('ZREM', first, unpack(part))
end
redis.call('EXPIRE', last, ARGV[4])
redis.call('EXPIRE', first, ARGV[4])
return #gone
"#;

/// Decides, per write, which hosts' index entries and series sets are due
/// and appends the commands that refresh them. Shared by both layouts.
#[derive(Clone)]
pub struct Indexer {
    /// (host, hash of the metric-name set) refreshed within [`REFRESH`].
    recent: moka::sync::Cache<(String, u64), ()>,
}

impl Default for Indexer {
    fn default() -> Self {
        Self {
            recent: moka::sync::Cache::builder()
                .max_capacity(MAX_REMEMBERED)
                .time_to_live(REFRESH)
                .build(),
        }
    }
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer").finish_non_exhaustive()
    }
}

/// One host's distinct name sets in a write.
struct Due<'a> {
    host: &'a str,
    newest: i64,
    sets: Vec<NameSet>,
}

/// A distinct set of metric names of one host in a write.
#[derive(Clone, Copy)]
struct NameSet {
    hash: u64,
    /// Newest second and oldest millisecond of the points carrying it.
    newest: i64,
    oldest_ms: i64,
    /// A point carrying it: batch and point index.
    batch: usize,
    point: usize,
}

fn name_hash(name: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(name.as_bytes())
}

/// The names a point carries: by its name indexes, or packed in table order.
/// The metric names of point `p` of `batch`, in its values' order.
pub fn point_names<'a>(
    batch: &'a MetricBatch,
    p: &'a broker_proto::v1::Point,
) -> impl Iterator<Item = &'a str> + 'a {
    let names = &batch.metric_names;
    (0..p.values.len()).filter_map(move |i| {
        let ix = if p.name_index.is_empty() {
            i
        } else {
            *p.name_index.get(i)? as usize
        };
        names.get(ix).map(String::as_str)
    })
}

impl Indexer {
    /// For every host of `batches`: its name sets, keyed as remembered.
    fn scan<'a>(batches: &[&'a MetricBatch]) -> Vec<Due<'a>> {
        let mut order: Vec<Due<'a>> = Vec::new();
        let mut at: HashMap<&'a str, usize> = HashMap::new();
        for (b, batch) in batches.iter().enumerate() {
            // Each name of the table hashed once per batch.
            let table: Vec<u64> = batch.metric_names.iter().map(|n| name_hash(n)).collect();
            for (i, p) in batch.points.iter().enumerate() {
                let mut set = 0u64;
                for (k, _) in p.values.iter().enumerate() {
                    let ix = if p.name_index.is_empty() {
                        Some(k)
                    } else {
                        p.name_index.get(k).map(|&n| n as usize)
                    };
                    if let Some(h) = ix.and_then(|ix| table.get(ix)) {
                        set = set.wrapping_add(*h);
                    }
                }
                let slot = *at.entry(p.host_id.as_str()).or_insert_with(|| {
                    order.push(Due {
                        host: p.host_id.as_str(),
                        newest: i64::MIN,
                        sets: Vec::new(),
                    });
                    order.len() - 1
                });
                let due = &mut order[slot];
                due.newest = due.newest.max(p.timestamp);
                let ms = p.timestamp.saturating_mul(1000) + i64::from(p.millis);
                match due.sets.iter_mut().find(|s| s.hash == set) {
                    Some(s) => {
                        s.oldest_ms = s.oldest_ms.min(ms);
                        if p.timestamp > s.newest {
                            (s.newest, s.batch, s.point) = (p.timestamp, b, i);
                        }
                    }
                    None => due.sets.push(NameSet {
                        hash: set,
                        newest: p.timestamp,
                        oldest_ms: ms,
                        batch: b,
                        point: i,
                    }),
                }
            }
        }
        order
    }

    /// Appends the index and series-set refreshes due for `batches` (at
    /// most one `ZADD` on the index for all hosts due, and per host and
    /// new name set one script on its series sets, [`SERIES_SCRIPT`]).
    pub fn commands(&self, batches: &[&MetricBatch], ttl_secs: u64, out: &mut Vec<Command>) {
        let mut index = vec![
            Bytes::from_static(INDEX_KEY.as_bytes()),
            Bytes::from_static(b"GT"),
        ];
        let long_ttl = Bytes::from((ttl_secs + REFRESH.as_secs() * 2).to_string());
        for due in Self::scan(batches) {
            let mut indexed = false;
            for set in &due.sets {
                let key = (due.host.to_string(), set.hash);
                if self.recent.contains_key(&key) {
                    continue;
                }
                self.recent.insert(key, ());
                if !indexed {
                    indexed = true;
                    index.push(Bytes::from(due.newest.to_string()));
                    index.push(Bytes::copy_from_slice(due.host.as_bytes()));
                }
                let batch = batches[set.batch];
                let series = Bytes::from(series_key(due.host));
                let first = Bytes::from(series_first_key(due.host));
                let horizon = set.newest.saturating_sub(ttl_secs as i64);
                let mut args = vec![
                    Bytes::from(set.newest.to_string()),
                    Bytes::from(set.oldest_ms.to_string()),
                    Bytes::from(horizon.to_string()),
                    long_ttl.clone(),
                ];
                args.extend(
                    point_names(batch, &batch.points[set.point])
                        .map(|name| Bytes::copy_from_slice(name.as_bytes())),
                );
                if args.len() == 4 {
                    continue;
                }
                out.push(Command::eval(SERIES_SCRIPT, vec![series, first], args));
            }
        }
        if index.len() > 2 {
            out.push(Command::new("ZADD", index));
        }
    }

    /// Told that the commands for `batches` may not have been applied:
    /// their refreshes are due again.
    pub fn failed(&self, batches: &[&MetricBatch]) {
        for due in Self::scan(batches) {
            for set in &due.sets {
                self.recent.invalidate(&(due.host.to_string(), set.hash));
            }
        }
    }
}

/// Drops hosts whose newest point is a ttl old from the index (their keys
/// have expired or are about to). O(log n + hosts dropped).
pub fn trim_command(now: i64, ttl_secs: u64) -> Command {
    let horizon = now.saturating_sub(ttl_secs as i64);
    Command::of(
        "ZREMRANGEBYSCORE",
        &[
            INDEX_KEY.as_bytes(),
            b"-inf",
            format!("({horizon}").as_bytes(),
        ],
    )
}

/// `(member, score)` pairs of a WITHSCORES reply (flat, or pairs as RESP3
/// gives them).
fn scored(reply: Reply) -> Vec<(String, i64)> {
    let mut flat = Vec::new();
    for r in reply.into_array() {
        match r {
            Reply::Array(pair) => flat.extend(pair),
            r => flat.push(r),
        }
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(m), Some(s)) = (it.next(), it.next()) {
        let (Some(m), Some(s)) = (m.bytes(), s.bytes()) else {
            continue;
        };
        let (Ok(m), Ok(s)) = (std::str::from_utf8(m), std::str::from_utf8(s)) else {
            continue;
        };
        // Scores come back as "1700000000" or "1.7e9".
        let s = s
            .parse::<i64>()
            .ok()
            .or_else(|| s.parse::<f64>().ok().map(|f| f as i64));
        if let Some(s) = s {
            out.push((m.to_string(), s));
        }
    }
    out
}

/// Every indexed host whose newest point is at or after `since`, with
/// that timestamp, sorted by host id.
pub async fn list(db: &dyn Exec, since: i64) -> Result<Vec<(String, i64)>, LayoutError> {
    let reply = db
        .pipeline(vec![Command::of(
            "ZRANGEBYSCORE",
            &[
                INDEX_KEY.as_bytes(),
                since.to_string().as_bytes(),
                b"+inf",
                b"WITHSCORES",
            ],
        )])
        .await?
        .pop()
        .unwrap_or(Reply::Nil)
        .ok("ZRANGEBYSCORE")?;
    let mut hosts = scored(reply);
    hosts.sort_unstable();
    hosts.dedup_by(|a, b| a.0 == b.0);
    Ok(hosts)
}

/// Which of `hosts` the index holds, and how many hosts it holds in all
/// (`ZMSCORE` and `ZCARD`, one round trip): what a writer's cardinality
/// limit needs to tell a new host from a known one.
pub async fn known(db: &dyn Exec, hosts: &[&str]) -> Result<(Vec<bool>, u64), LayoutError> {
    let mut args: Vec<&[u8]> = vec![INDEX_KEY.as_bytes()];
    args.extend(hosts.iter().map(|h| h.as_bytes()));
    let mut replies = db
        .pipeline(vec![
            Command::of("ZMSCORE", &args),
            Command::of("ZCARD", &[INDEX_KEY.as_bytes()]),
        ])
        .await?
        .into_iter();
    let scores = replies.next().unwrap_or(Reply::Nil).ok("ZMSCORE")?;
    let count = match replies.next().unwrap_or(Reply::Nil).ok("ZCARD")? {
        Reply::Int(n) => n.max(0) as u64,
        _ => 0,
    };
    let present = match scores {
        Reply::Array(a) => a.iter().map(|r| !matches!(r, Reply::Nil)).collect(),
        _ => vec![false; hosts.len()],
    };
    Ok((present, count))
}

/// For each (host, names): how many series the host's series set holds,
/// and which of `names` it holds (`ZCARD` and `ZMSCORE` per host, one
/// round trip): what a writer's series limit needs to tell a new series
/// from a known one.
pub async fn known_series(
    db: &dyn Exec,
    asked: &[(&str, Vec<&str>)],
) -> Result<Vec<(u64, Vec<bool>)>, LayoutError> {
    let mut commands = Vec::with_capacity(asked.len() * 2);
    for (host, names) in asked {
        let key = series_key(host);
        let mut args: Vec<&[u8]> = vec![key.as_bytes()];
        args.extend(names.iter().map(|n| n.as_bytes()));
        commands.push(Command::of("ZCARD", &[key.as_bytes()]));
        commands.push(Command::of("ZMSCORE", &args));
    }
    let mut replies = db.pipeline(commands).await?.into_iter();
    asked
        .iter()
        .map(|(_, names)| {
            let count = match replies.next().unwrap_or(Reply::Nil).ok("ZCARD")? {
                Reply::Int(n) => n.max(0) as u64,
                _ => 0,
            };
            let present = match replies.next().unwrap_or(Reply::Nil).ok("ZMSCORE")? {
                Reply::Array(a) => a.iter().map(|r| !matches!(r, Reply::Nil)).collect(),
                _ => vec![false; names.len()],
            };
            Ok((count, present))
        })
        .collect()
}

/// Each host's series names seen at or after second `since` (sorted),
/// one `ZRANGEBYSCORE` per host; empty for a host without a series set.
pub async fn series(
    db: &dyn Exec,
    hosts: &[String],
    since: i64,
) -> Result<Vec<Vec<String>>, LayoutError> {
    series_between(db, hosts, since.saturating_mul(1000), i64::MAX).await
}

/// Each host's series names whose time range meets milliseconds
/// `start_ms..=end_ms` (sorted): seen at or after `start - REFRESH` (the
/// newest is refreshed that often, by second) and first seen at or before
/// `end_ms` (a series without its
/// own first-seen entry was born with its host's series set,
/// [`BORN_WITH_HOST`]; without that either, written before first-seen
/// times were kept: seen from the start). Two reads per host, the second
/// (the first-seen set) only when `end` is bounded.
pub async fn series_between(
    db: &dyn Exec,
    hosts: &[String],
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<Vec<String>>, LayoutError> {
    let since = start_ms
        .div_euclid(1000)
        .saturating_sub(REFRESH.as_secs() as i64)
        .max(i64::MIN + 1)
        .to_string();
    let bounded = end_ms != i64::MAX;
    let mut commands = Vec::with_capacity(hosts.len() * 2);
    for h in hosts {
        commands.push(Command::of(
            "ZRANGEBYSCORE",
            &[series_key(h).as_bytes(), since.as_bytes(), b"+inf"],
        ));
        if bounded {
            commands.push(Command::of(
                "ZRANGE",
                &[series_first_key(h).as_bytes(), b"0", b"-1", b"WITHSCORES"],
            ));
        }
    }
    let mut replies = db.pipeline(commands).await?.into_iter();
    let mut out = Vec::with_capacity(hosts.len());
    for _ in hosts {
        let mut names: Vec<String> = replies
            .next()
            .unwrap_or(Reply::Nil)
            .ok("ZRANGEBYSCORE")?
            .into_array()
            .iter()
            .filter_map(|m| m.bytes().and_then(|b| std::str::from_utf8(b).ok()))
            .map(str::to_string)
            .collect();
        if bounded {
            let born: HashMap<String, i64> = scored(replies.next().unwrap_or(Reply::Nil))
                .into_iter()
                .collect();
            let with_host = born.get(BORN_WITH_HOST).copied().unwrap_or(i64::MIN);
            names.retain(|n| born.get(n).copied().unwrap_or(with_host) <= end_ms);
        }
        names.sort_unstable();
        out.push(names);
    }
    Ok(out)
}

/// How many series each of `hosts` reported at or after `since` (a
/// `ZCOUNT` of its series set, not the names).
pub async fn series_counts(
    db: &dyn Exec,
    hosts: &[String],
    since: i64,
) -> Result<Vec<usize>, LayoutError> {
    let since = since.to_string();
    let commands = hosts
        .iter()
        .map(|h| {
            Command::of(
                "ZCOUNT",
                &[series_key(h).as_bytes(), since.as_bytes(), b"+inf"],
            )
        })
        .collect();
    db.pipeline(commands)
        .await?
        .into_iter()
        .map(|r| Ok(r.ok("ZCOUNT")?.int().unwrap_or(0).max(0) as usize))
        .collect()
}

/// Whether the index was backfilled (the ready marker is set).
pub async fn ready(db: &dyn Exec) -> Result<bool, LayoutError> {
    let r = db
        .pipeline(vec![Command::of("GET", &[READY_KEY.as_bytes()])])
        .await?
        .pop()
        .unwrap_or(Reply::Nil)
        .ok("GET")?;
    Ok(r.bytes() == Some(INDEX_VERSION.as_bytes()))
}

/// What [`backfill`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backfill {
    /// The index was ready already: nothing read.
    Ready,
    /// Another process holds the backfill lock; ask again later.
    Busy,
    /// Walked the metadata keys once and indexed this many hosts.
    Done { hosts: usize },
}

/// Makes the index hold every host written before it existed (an upgrade
/// from a version without it): once per Redis, guarded by a lock, it walks
/// the host metadata keys (`SCAN`, on every master of a cluster), adds each
/// host with its `last_seen` to the index, gives hosts without a series
/// set one from their newest snapshot (read through `layout`), and lets
/// `layout` backfill what it keeps per host; then sets the ready marker.
/// Cheap when the index is ready (one `GET`); never part of a periodic
/// path once that marker is set.
pub async fn backfill(
    client: &fred::clients::Client,
    layout: &dyn KeyLayout,
    ttl_secs: u64,
) -> Result<Backfill, LayoutError> {
    if ready(client).await? {
        return Ok(Backfill::Ready);
    }
    let pid = std::process::id().to_string();
    let lock_secs = BACKFILL_LOCK_SECS.to_string();
    let locked = Exec::pipeline(
        client,
        vec![Command::of(
            "SET",
            &[
                BACKFILL_LOCK_KEY.as_bytes(),
                pid.as_bytes(),
                b"NX",
                b"EX",
                lock_secs.as_bytes(),
            ],
        )],
    )
    .await?
    .pop()
    .unwrap_or(Reply::Nil)
    .ok("SET")?;
    if locked == Reply::Nil {
        return Ok(Backfill::Busy);
    }
    let result = walk(client, layout, ttl_secs).await;
    // Released on failure too, so another process can try at once; a
    // process killed meanwhile leaves it to expire within BACKFILL_LOCK_SECS.
    let mut commands = vec![Command::of("DEL", &[BACKFILL_LOCK_KEY.as_bytes()])];
    if result.is_ok() {
        commands.insert(
            0,
            Command::of("SET", &[READY_KEY.as_bytes(), INDEX_VERSION.as_bytes()]),
        );
    }
    for r in Exec::pipeline(client, commands).await? {
        r.ok("SET")?;
    }
    Ok(Backfill::Done { hosts: result? })
}

/// The walk of [`backfill`]: metadata keys as SCAN returns them, indexed
/// `BACKFILL_BATCH` hosts at a time, the lock's expiry pushed on as it goes.
async fn walk(
    client: &fred::clients::Client,
    layout: &dyn KeyLayout,
    ttl_secs: u64,
) -> Result<usize, LayoutError> {
    use fred::interfaces::ClientLike;
    use futures::TryStreamExt;
    let mut keys = if client.is_clustered() {
        Box::pin(client.scan_cluster_buffered(meta::HOST_KEY_PATTERN, Some(SCAN_COUNT), None))
            as std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>>
    } else {
        Box::pin(client.scan_buffered(meta::HOST_KEY_PATTERN, Some(SCAN_COUNT), None))
    };
    let now = broker_common::unix_now();
    let lock_secs = BACKFILL_LOCK_SECS.to_string();
    let mut batch: Vec<String> = Vec::with_capacity(BACKFILL_BATCH);
    let mut done = 0;
    loop {
        let key: Option<fred::types::Key> = keys
            .try_next()
            .await
            .map_err(|e| LayoutError::Redis(e.to_string()))?;
        if let Some(host) = key
            .as_ref()
            .and_then(|k| k.as_str().and_then(meta::host_of_key))
        {
            batch.push(host);
        }
        if batch.len() >= BACKFILL_BATCH || (key.is_none() && !batch.is_empty()) {
            // SCAN may return a key twice; indexing it twice is harmless.
            batch.sort_unstable();
            batch.dedup();
            backfill_hosts(client, layout, &batch, ttl_secs, now).await?;
            done += batch.len();
            batch.clear();
            Exec::pipeline(
                client,
                vec![Command::of(
                    "EXPIRE",
                    &[BACKFILL_LOCK_KEY.as_bytes(), lock_secs.as_bytes()],
                )],
            )
            .await?;
        }
        if key.is_none() {
            return Ok(done);
        }
    }
}

async fn backfill_hosts(
    db: &dyn Exec,
    layout: &dyn KeyLayout,
    hosts: &[String],
    ttl_secs: u64,
    now: i64,
) -> Result<(), LayoutError> {
    let seen: Vec<Option<i64>> = db
        .pipeline(
            hosts
                .iter()
                .map(|h| {
                    Command::of(
                        "HGET",
                        &[
                            meta::host_key(h).as_bytes(),
                            meta::LAST_SEEN_FIELD.as_bytes(),
                        ],
                    )
                })
                .collect(),
        )
        .await?
        .into_iter()
        .map(|r| Ok(r.ok("HGET")?.int()))
        .collect::<Result<_, LayoutError>>()?;
    let known = series(db, hosts, i64::MIN).await?;
    let mut index = vec![
        Bytes::from_static(INDEX_KEY.as_bytes()),
        Bytes::from_static(b"GT"),
    ];
    let mut newest = Vec::new();
    for ((h, seen), names) in hosts.iter().zip(&seen).zip(&known) {
        let Some(seen) = *seen else { continue };
        if seen.saturating_add(ttl_secs as i64) < now {
            continue; // past retention: leave it to expire
        }
        index.push(Bytes::from(seen.to_string()));
        index.push(Bytes::copy_from_slice(h.as_bytes()));
        if names.is_empty() {
            newest.push((seen, RangeReq::seconds(h.clone(), seen, seen)));
        }
    }
    let mut commands = Vec::new();
    if index.len() > 2 {
        commands.push(Command::new("ZADD", index));
    }
    let reqs: Vec<RangeReq> = newest.iter().map(|(_, r)| r.clone()).collect();
    let frames = layout.frames(db, &reqs, &[], None).await?;
    let long_ttl = (ttl_secs + REFRESH.as_secs() * 2).to_string();
    for ((seen, req), frame) in newest.iter().zip(frames) {
        let names = frame.into_seconds().names_at(*seen);
        if names.is_empty() {
            continue;
        }
        let key = Bytes::from(series_key(&req.host));
        let score = Bytes::from(seen.to_string());
        let mut zadd = vec![key.clone(), Bytes::from_static(b"GT")];
        for n in names {
            zadd.push(score.clone());
            zadd.push(Bytes::from(n));
        }
        commands.push(Command::new("ZADD", zadd));
        commands.push(Command::new(
            "EXPIRE",
            vec![key, Bytes::from(long_ttl.clone())],
        ));
    }
    layout.backfill_commands(hosts, &mut commands);
    for r in db.pipeline(commands).await? {
        r.ok("backfill")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::Point;

    fn batch(points: Vec<(&str, i64, Vec<u32>)>) -> MetricBatch {
        MetricBatch {
            seq: 0,
            metric_names: vec!["a".into(), "b".into(), "c".into()],
            points: points
                .into_iter()
                .map(|(h, ts, ix)| Point {
                    host_id: h.into(),
                    timestamp: ts,
                    values: vec![1.0; ix.len()],
                    name_index: ix,
                    labels: Default::default(),
                    millis: 0,
                })
                .collect(),
        }
    }

    fn render(out: &[Command]) -> Vec<String> {
        out.iter()
            .map(|c| {
                // EVAL is shown without its script and key count.
                let skip = if c.name == "EVAL" { 2 } else { 0 };
                let args: Vec<String> = c
                    .args
                    .iter()
                    .skip(skip)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                format!("{} {}", c.name, args.join(" "))
            })
            .collect()
    }

    #[test]
    fn refreshes_once_per_host_and_name_set_until_a_failure() {
        let ix = Indexer::default();
        let b = batch(vec![
            ("h1", 100, vec![0, 1]),
            ("h1", 105, vec![1, 0]),
            ("h2", 100, vec![2]),
        ]);
        let mut out = Vec::new();
        ix.commands(&[&b], 60, &mut out);
        assert_eq!(
            render(&out),
            [
                "EVAL monitor:series:{h1} monitor:series:first:{h1} 105 100000 45 120 b a",
                "EVAL monitor:series:{h2} monitor:series:first:{h2} 100 100000 40 120 c",
                "ZADD monitor:index:hosts GT 105 h1 100 h2",
            ]
        );
        // The same name sets again: nothing due.
        let mut again = Vec::new();
        ix.commands(&[&b], 60, &mut again);
        assert!(again.is_empty(), "{:?}", render(&again));
        // A new name for h1 is due at once.
        let c = batch(vec![("h1", 110, vec![0, 1, 2]), ("h2", 110, vec![2])]);
        let mut new = Vec::new();
        ix.commands(&[&c], 60, &mut new);
        assert_eq!(
            render(&new)[0],
            "EVAL monitor:series:{h1} monitor:series:first:{h1} 110 110000 50 120 a b c"
        );
        assert_eq!(
            render(&new).last().unwrap(),
            "ZADD monitor:index:hosts GT 110 h1"
        );
        // After a failure the refreshes are sent again.
        ix.failed(&[&b]);
        let mut retry = Vec::new();
        ix.commands(&[&b], 60, &mut retry);
        assert_eq!(retry.len(), 3);
    }

    #[test]
    fn scores_parse_in_both_shapes() {
        let flat = Reply::Array(vec![
            Reply::Bytes("h1".into()),
            Reply::Bytes("100".into()),
            Reply::Bytes("h2".into()),
            Reply::Bytes("1.7e9".into()),
        ]);
        assert_eq!(
            scored(flat),
            [("h1".to_string(), 100), ("h2".to_string(), 1_700_000_000)]
        );
        let pairs = Reply::Array(vec![Reply::Array(vec![
            Reply::Bytes("h".into()),
            Reply::Bytes("5".into()),
        ])]);
        assert_eq!(scored(pairs), [("h".to_string(), 5)]);
        assert_eq!(
            render(&[trim_command(1000, 100)]),
            ["ZREMRANGEBYSCORE monitor:index:hosts -inf (900"]
        );
    }
}
