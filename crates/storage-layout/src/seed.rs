//! The seed layout: the key schema of the original design, one HASH per
//! point. Reads go index first (ZRANGEBYSCORE), then the points' hashes.

use crate::exec::{Command, Exec};
use crate::frame::{Frame, FrameBuilder};
use crate::meta::{self, POINTS_WRITTEN_FIELD};
use crate::{Arrival, KeyLayout, LayoutError, RangeReq};
use broker_proto::v1::MetricBatch;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use std::collections::HashMap;

/// The layout of the original design ("键空间设计"), with Redis Cluster hash
/// tags so that every key of one host lands in one slot:
///
/// - `monitor:metrics:{host}:{ts}`: HASH metric -> value, EXPIRE ttl
/// - `monitor:index:metrics:{host}`: ZSET score = ts, member = ts
/// - `monitor:hosts:{host}`: HASH `last_seen`, `label:<name>` fields, and
///   `points_written` (HINCRBY: counts writes including retries; the number
///   of distinct points is the index's ZCARD); a replay sets them through
///   a script that never takes `last_seen` or labels back ([`meta::update`])
///
/// Housekeeping of a host's two long-lived keys (trim index entries older
/// than the ttl; EXPIRE both at ttl + `maintenance_interval`, so they outlive
/// the host's last point) is sent at most once per `maintenance_interval`
/// per host and process, not with every point: that takes a point from 8
/// Redis commands to 5 when hosts send one point per interval.
#[derive(Clone)]
pub struct SeedLayout {
    /// Hosts whose housekeeping was sent within the interval.
    maintained: moka::sync::Cache<String, ()>,
    indexer: crate::hosts::Indexer,
    maintenance_secs: u64,
}

/// How often one host's index trim and key expiries are refreshed.
pub const DEFAULT_MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Hosts remembered as maintained; past this, some get housekeeping again
/// early, which is harmless.
const MAINTAINED_HOSTS_CAPACITY: u64 = 1_000_000;

impl Default for SeedLayout {
    fn default() -> Self {
        Self::new(DEFAULT_MAINTENANCE_INTERVAL)
    }
}

impl SeedLayout {
    pub fn new(maintenance_interval: std::time::Duration) -> Self {
        Self {
            maintained: moka::sync::Cache::builder()
                .max_capacity(MAINTAINED_HOSTS_CAPACITY)
                .time_to_live(maintenance_interval)
                .build(),
            maintenance_secs: maintenance_interval.as_secs(),
            indexer: crate::hosts::Indexer::default(),
        }
    }
}

impl std::fmt::Debug for SeedLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedLayout")
            .field("maintenance_secs", &self.maintenance_secs)
            .finish()
    }
}

/// Builds arguments into one buffer so a command's arguments share one
/// allocation.
struct Args {
    buf: BytesMut,
    args: Vec<Bytes>,
}

impl Args {
    fn with_capacity(bytes: usize, args: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(bytes),
            args: Vec::with_capacity(args),
        }
    }
    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        self.args.push(self.buf.split().freeze());
    }
    fn push_f64(&mut self, v: f64) {
        if crate::value::is_stale(v) {
            return self.push(b"stale");
        }
        let mut b = ryu::Buffer::new();
        self.push(b.format(v).as_bytes());
    }
    fn push_key(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.args.push(self.buf.split().freeze());
    }
    fn done(self, name: &'static str) -> Command {
        Command::new(name, self.args)
    }
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

fn fmt_i64(buf: &mut [u8; 20], v: i64) -> &[u8] {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    write!(cur, "{v}").expect("20 bytes hold any i64");
    let n = cur.position() as usize;
    &buf[..n]
}

struct HostAgg<'a> {
    /// The points' stamps ([`stamp`]).
    stamps: Vec<Vec<u8>>,
    last_seen: i64,
    labels: Option<&'a HashMap<String, String>>,
}

/// The key of `host`'s point at `ms` (Unix milliseconds).
pub fn metrics_key(host: &str, ms: i64) -> String {
    let stamp = stamp(ms.div_euclid(1000), ms.rem_euclid(1000) as u32);
    format!(
        "monitor:metrics:{{{host}}}:{}",
        String::from_utf8_lossy(&stamp)
    )
}

/// How a point's time is written in its key, its index member and score:
/// Unix seconds as the seed has them (`1700000000`), and for a point with
/// milliseconds (remote write, OTLP) decimal seconds (`1700000000.250`),
/// which Redis reads as the same score.
pub fn stamp(second: i64, millis: u32) -> Vec<u8> {
    if millis == 0 {
        second.to_string().into_bytes()
    } else {
        format!("{second}.{millis:03}").into_bytes()
    }
}

/// A score bound for Unix milliseconds `ms`: decimal seconds.
fn score(ms: i64) -> String {
    match ms {
        i64::MAX => "+inf".to_string(),
        i64::MIN => "-inf".to_string(),
        ms => String::from_utf8_lossy(&stamp(ms.div_euclid(1000), ms.rem_euclid(1000) as u32))
            .into_owned(),
    }
}

pub fn index_key(host: &str) -> String {
    format!("monitor:index:metrics:{{{host}}}")
}

/// The time a time-index member stands for, in Unix milliseconds
/// ([`stamp`]'s forms).
pub fn index_member_timestamp(member: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(member).ok()?;
    let (second, millis) = match s.split_once('.') {
        None => (s, 0),
        Some((second, frac)) => {
            if frac.len() != 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (second, frac.parse::<i64>().ok()?)
        }
    };
    second
        .parse::<i64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(millis)
}

/// A metric value as stored in a point's hash (ryu's format; `NaN` is a
/// NaN sample and `stale` a staleness marker, see [`crate::value`]).
pub fn decode_value(raw: &[u8]) -> Option<f64> {
    match raw {
        b"stale" => Some(f64::from_bits(crate::value::STALE_BITS)),
        b"NaN" => Some(f64::from_bits(crate::value::NAN_BITS)),
        _ => std::str::from_utf8(raw).ok()?.parse().ok(),
    }
}

impl SeedLayout {
    /// Round 1 of a read: each host's timestamps in range, oldest first.
    async fn timestamps(
        db: &dyn Exec,
        reqs: &[RangeReq],
        limit: Option<usize>,
    ) -> Result<Vec<Vec<i64>>, LayoutError> {
        let commands = reqs
            .iter()
            .map(|r| {
                let mut args: Vec<Bytes> = vec![
                    Bytes::from(index_key(&r.host)),
                    Bytes::from(score(r.start_ms)),
                    Bytes::from(score(r.end_ms)),
                ];
                if let Some(limit) = limit {
                    args.extend([
                        Bytes::from_static(b"LIMIT"),
                        Bytes::from_static(b"0"),
                        Bytes::from(limit.to_string()),
                    ]);
                }
                Command::new("ZRANGEBYSCORE", args)
            })
            .collect();
        db.pipeline(commands)
            .await?
            .into_iter()
            .map(|v| {
                let mut ts: Vec<i64> = v
                    .ok("ZRANGEBYSCORE")?
                    .into_array()
                    .iter()
                    .filter_map(|m| m.bytes().and_then(index_member_timestamp))
                    .collect();
                ts.sort_unstable();
                ts.dedup();
                Ok(ts)
            })
            .collect()
    }
}

impl KeyLayout for SeedLayout {
    fn name(&self) -> &'static str {
        "seed"
    }

    fn frames<'a>(
        &'a self,
        db: &'a dyn Exec,
        reqs: &'a [RangeReq],
        metrics: &'a [String],
        limit: Option<usize>,
    ) -> BoxFuture<'a, Result<Vec<Frame>, LayoutError>> {
        Box::pin(async move {
            let timestamps = Self::timestamps(db, reqs, limit).await?;
            let mut commands = Vec::new();
            for (r, ts) in reqs.iter().zip(&timestamps) {
                for &t in ts {
                    let key = Bytes::from(metrics_key(&r.host, t));
                    commands.push(if metrics.is_empty() {
                        Command::new("HGETALL", vec![key])
                    } else {
                        let mut args = Vec::with_capacity(1 + metrics.len());
                        args.push(key);
                        args.extend(metrics.iter().map(|m| Bytes::copy_from_slice(m.as_bytes())));
                        Command::new("HMGET", args)
                    });
                }
            }
            let mut replies = db.pipeline(commands).await?.into_iter();
            let mut frames = Vec::with_capacity(reqs.len());
            for (r, ts) in reqs.iter().zip(&timestamps) {
                let mut b = FrameBuilder::new(r.start_ms, r.end_ms, metrics);
                for &t in ts {
                    let Some(reply) = replies.next() else { break };
                    if metrics.is_empty() {
                        for (k, v) in reply.ok("HGETALL")?.into_pairs() {
                            let (Ok(k), Some(v)) = (std::str::from_utf8(&k), decode_value(&v))
                            else {
                                continue;
                            };
                            b.touch(t);
                            b.set(t, k, v);
                        }
                    } else {
                        for (name, v) in metrics.iter().zip(reply.ok("HMGET")?.into_array()) {
                            if let Some(v) = v.bytes().and_then(decode_value) {
                                b.set(t, name, v);
                            }
                        }
                    }
                }
                frames.push(b.finish(limit));
            }
            Ok(frames)
        })
    }

    fn counts<'a>(
        &'a self,
        db: &'a dyn Exec,
        reqs: &'a [RangeReq],
    ) -> BoxFuture<'a, Result<Vec<u64>, LayoutError>> {
        Box::pin(async move {
            let commands = reqs
                .iter()
                .map(|r| {
                    Command::of(
                        "ZCOUNT",
                        &[
                            index_key(&r.host).as_bytes(),
                            score(r.start_ms).as_bytes(),
                            score(r.end_ms).as_bytes(),
                        ],
                    )
                })
                .collect();
            db.pipeline(commands)
                .await?
                .into_iter()
                .map(|v| Ok(v.ok("ZCOUNT")?.int().unwrap_or(0).max(0) as u64))
                .collect()
        })
    }

    fn write_commands(
        &self,
        batches: &[&MetricBatch],
        arrival: Arrival,
        ttl_secs: u64,
        now: i64,
        out: &mut Vec<Command>,
    ) {
        let mut ttl_buf = itoa_buf();
        let ttl = Bytes::copy_from_slice(fmt_i64(&mut ttl_buf, ttl_secs as i64));
        let mut order: Vec<&str> = Vec::new();
        let mut hosts: HashMap<&str, HostAgg<'_>> = HashMap::new();
        for batch in batches {
            let names = &batch.metric_names;
            // Interned when first used: a router sends each writer the
            // whole name table, most of it for other writers' points.
            let mut name_args: Vec<Option<Bytes>> = vec![None; names.len()];
            for p in &batch.points {
                let key_len = p.host_id.len() + 40;
                let mut a =
                    Args::with_capacity(key_len + p.values.len() * 40, 1 + 2 * p.values.len());
                let mut tsb = itoa_buf();
                let stamped;
                let ts = if p.millis == 0 {
                    fmt_i64(&mut tsb, p.timestamp)
                } else {
                    stamped = stamp(p.timestamp, p.millis);
                    &stamped[..]
                };
                a.push_key(&[b"monitor:metrics:{", p.host_id.as_bytes(), b"}:", ts]);
                let key = a.args[0].clone();
                for (i, v) in p.values.iter().enumerate() {
                    let ix = if p.name_index.is_empty() {
                        Some(i)
                    } else {
                        p.name_index.get(i).map(|&n| n as usize)
                    };
                    // The gateway rejects, and the writer's service refuses,
                    // points whose name indexes do not match the values.
                    let Some(ix) = ix.filter(|&ix| ix < names.len()) else {
                        continue;
                    };
                    let name = name_args[ix].get_or_insert_with(|| intern(&names[ix]));
                    a.args.push(name.clone());
                    a.push_f64(*v);
                }
                out.push(a.done("HSET"));
                out.push(Command::new("EXPIRE", vec![key, ttl.clone()]));
                let agg = hosts.entry(p.host_id.as_str()).or_insert_with(|| {
                    order.push(p.host_id.as_str());
                    HostAgg {
                        stamps: Vec::new(),
                        last_seen: i64::MIN,
                        labels: None,
                    }
                });
                agg.stamps.push(ts.to_vec());
                if p.timestamp >= agg.last_seen {
                    agg.last_seen = p.timestamp;
                    if !p.labels.is_empty() {
                        agg.labels = Some(&p.labels);
                    }
                }
            }
        }
        let horizon = now.saturating_sub(ttl_secs as i64);
        for host in order {
            let agg = &hosts[host];
            let h = host.as_bytes();
            let index_key = {
                let mut a = Args::with_capacity(h.len() + 24, 1);
                a.push_key(&[b"monitor:index:metrics:{", h, b"}"]);
                a.args.pop().expect("key")
            };
            let host_key = {
                let mut a = Args::with_capacity(h.len() + 16, 1);
                a.push_key(&[b"monitor:hosts:{", h, b"}"]);
                a.args.pop().expect("key")
            };
            let mut z = Args::with_capacity(agg.stamps.len() * 32, 1 + 2 * agg.stamps.len());
            z.args.push(index_key.clone());
            for ts in &agg.stamps {
                z.push(ts);
                z.push(ts);
            }
            out.push(z.done("ZADD"));
            meta::update(
                out,
                arrival,
                host_key.clone(),
                agg.last_seen,
                agg.labels,
                POINTS_WRITTEN_FIELD,
                agg.stamps.len() as i64,
            );
            // After the writes, so both keys exist when EXPIRE runs.
            if !self.maintained.contains_key(host) {
                let long_ttl = Bytes::from((ttl_secs + self.maintenance_secs).to_string());
                let mut trim = Args::with_capacity(24, 3);
                trim.args.push(index_key.clone());
                trim.push(b"-inf");
                trim.push(format!("({horizon}").as_bytes());
                out.push(trim.done("ZREMRANGEBYSCORE"));
                out.push(Command::new("EXPIRE", vec![index_key, long_ttl.clone()]));
                out.push(Command::new("EXPIRE", vec![host_key.clone(), long_ttl]));
                self.maintained.insert(host.to_string(), ());
            }
        }
        self.indexer.commands(batches, ttl_secs, out);
    }

    fn written(&self, batches: &[&MetricBatch], ok: bool, _now: i64) {
        if !ok {
            // The housekeeping may not have been applied: send it again.
            for b in batches {
                for p in &b.points {
                    self.maintained.invalidate(&p.host_id);
                }
            }
            self.indexer.failed(batches);
        }
    }
}

/// Metric names seen so far, leaked once as `'static` so that every point's
/// field arguments are `Bytes::from_static`: cloning and dropping those is
/// free, where a shared buffer's reference count is touched six times per
/// argument on the way through the Redis client, from several threads.
static INTERNED: std::sync::LazyLock<
    std::sync::RwLock<std::collections::HashMap<&'static str, Bytes>>,
> = std::sync::LazyLock::new(Default::default);
/// Names interned at most, and their bytes at most; past either (many
/// distinct names, or hostile input) names are copied per batch instead,
/// so the leaked memory stays bounded.
const MAX_INTERNED: usize = 65_536;
const MAX_INTERNED_BYTES: usize = 8 << 20;
/// Longer names are never interned (the gateway's default limit is 256).
const MAX_INTERNED_NAME_LEN: usize = 1024;
static INTERNED_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes of metric names interned so far (bounded by
/// `MAX_INTERNED_BYTES`); for tests and the hardening suite.
pub fn interned_bytes() -> usize {
    INTERNED_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

fn intern(name: &str) -> Bytes {
    if name.len() > MAX_INTERNED_NAME_LEN {
        return Bytes::copy_from_slice(name.as_bytes());
    }
    if let Some(b) = INTERNED.read().expect("interner lock").get(name) {
        return b.clone();
    }
    let mut map = INTERNED.write().expect("interner lock");
    if let Some(b) = map.get(name) {
        return b.clone();
    }
    let bytes = INTERNED_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    if map.len() >= MAX_INTERNED || bytes + name.len() > MAX_INTERNED_BYTES {
        return Bytes::copy_from_slice(name.as_bytes());
    }
    INTERNED_BYTES.store(bytes + name.len(), std::sync::atomic::Ordering::Relaxed);
    let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
    let b = Bytes::from_static(leaked.as_bytes());
    map.insert(leaked, b.clone());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::Point;

    fn s(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn seed_layout_commands() {
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
                    host_id: "h1".into(),
                    timestamp: 105,
                    values: vec![7.0],
                    name_index: vec![1],
                    labels: Default::default(),
                    millis: 0,
                },
            ],
        };
        let layout = SeedLayout::new(std::time::Duration::from_secs(30));
        // EVAL is shown without its script and key count.
        let render = |out: &[Command]| -> Vec<String> {
            out.iter()
                .map(|c| {
                    let skip = if c.name == "EVAL" { 2 } else { 0 };
                    std::iter::once(c.name.to_string())
                        .chain(c.args.iter().skip(skip).map(|a| s(a).to_string()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        let mut out = Vec::new();
        layout.write_commands(&[&batch], Arrival::Live, 60, 1000, &mut out);
        assert_eq!(
            render(&out),
            vec![
                "HSET monitor:metrics:{h1}:100 cpu 0.5 mem 2.0",
                "EXPIRE monitor:metrics:{h1}:100 60",
                "HSET monitor:metrics:{h1}:105 mem 7.0",
                "EXPIRE monitor:metrics:{h1}:105 60",
                "ZADD monitor:index:metrics:{h1} 100 100 105 105",
                "HSET monitor:hosts:{h1} last_seen 105 label:role web",
                "HINCRBY monitor:hosts:{h1} points_written 2",
                "ZREMRANGEBYSCORE monitor:index:metrics:{h1} -inf (940",
                "EXPIRE monitor:index:metrics:{h1} 90",
                "EXPIRE monitor:hosts:{h1} 90",
                // The series set, once per name set, and the host index.
                "EVAL monitor:series:{h1} monitor:series:first:{h1} 100 100000 40 120 cpu mem",
                "EVAL monitor:series:{h1} monitor:series:first:{h1} 105 105000 45 120 mem",
                "ZADD monitor:index:hosts GT 105 h1",
            ]
        );
        // Within the interval the housekeeping is not repeated...
        out.clear();
        layout.write_commands(&[&batch], Arrival::Live, 60, 1000, &mut out);
        assert_eq!(out.len(), 7);
        assert!(out.iter().all(|c| c.name != "ZREMRANGEBYSCORE"));
        // ...unless the previous write failed.
        layout.written(&[&batch], false, 1000);
        out.clear();
        layout.write_commands(&[&batch], Arrival::Live, 60, 1000, &mut out);
        assert_eq!(out.len(), 13);
        // A replay's metadata goes through the script, in one command.
        out.clear();
        layout.write_commands(&[&batch], Arrival::Late, 60, 1000, &mut out);
        assert_eq!(
            render(&out)[5],
            "EVAL monitor:hosts:{h1} 105 points_written 2 label:role web"
        );
        assert_eq!(out.len(), 6);
        assert_eq!(metrics_key("h1", 100_000), "monitor:metrics:{h1}:100");
        assert_eq!(metrics_key("h1", 100_050), "monitor:metrics:{h1}:100.050");
        assert_eq!(index_key("h1"), "monitor:index:metrics:{h1}");
    }

    #[test]
    fn seed_values_read_back() {
        assert_eq!(
            index_member_timestamp(b"1700000000"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            index_member_timestamp(b"1700000000.250"),
            Some(1_700_000_000_250)
        );
        assert_eq!(score(1_700_000_000_250), "1700000000.250");
        assert_eq!(score(1_700_000_000_000), "1700000000");
        for bad in [&b"x"[..], b"1.5", b"1.2500", b"1.-25", b""] {
            assert_eq!(index_member_timestamp(bad), None, "{bad:?}");
        }
        // ryu's format, as the writer stores values.
        let mut b = ryu::Buffer::new();
        for v in [
            0.25,
            -3.0,
            1e300,
            123456.789,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(decode_value(b.format(v).as_bytes()), Some(v));
        }
        // A NaN sample and a staleness marker, as push_f64 writes them.
        let nan = decode_value(b.format(f64::NAN).as_bytes()).unwrap();
        assert_eq!(nan.to_bits(), crate::value::NAN_BITS);
        let stale = decode_value(b"stale").unwrap();
        assert!(crate::value::is_stale(stale));
    }

    #[test]
    fn malformed_points_do_not_panic() {
        // Found by the spool_records fuzz target: name_index shorter than
        // values. The service refuses such batches; the layout must not
        // panic on them either.
        let batch = MetricBatch {
            seq: 0,
            metric_names: vec!["a".into()],
            points: vec![Point {
                host_id: "h".into(),
                timestamp: 1,
                values: vec![1.0, 2.0, 3.0],
                name_index: vec![0],
                labels: Default::default(),
                millis: 0,
            }],
        };
        let mut out = Vec::new();
        SeedLayout::default().write_commands(&[&batch], Arrival::Live, 60, 10, &mut out);
        assert_eq!(out[0].args.len(), 3, "key plus the one value with a name");
    }
}
