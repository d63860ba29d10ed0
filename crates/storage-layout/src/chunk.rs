//! The chunked layout's byte formats.
//!
//! Times are Unix **milliseconds** in everything this module hands out.
//!
//! **Open-chunk records**, appended one per point with `APPEND`:
//! `[u32 len][body][u32 len]` (little-endian), where `body` is
//! `i64 ts, u16 n, n × (u16 name_len, name, f64 value)`. Bit 15 of `n`
//! ([`MILLIS_FLAG`]) says `ts` is in milliseconds, as every record written
//! since milliseconds were kept is; without it (records written before)
//! `ts` is whole seconds. The length at both
//! ends lets a reader parse forward from the start or backward from the
//! end (the newest points, from a `GETRANGE` of the tail). A body of
//! exactly 8 bytes is a **nonce**: sealing puts a fresh one at the start of
//! what it leaves, so a second sealer that read the chunk before can tell
//! it changed (see [`crate::chunked`]). Real bodies are at least 10 bytes.
//!
//! **Sealed chunks**, one Redis string each, immutable:
//! `"C2", u32 points, u16 names, names × (u16 len, bytes), u32 len + pco
//! i64 timestamps (milliseconds), then per name u32 len + pco f64 column`
//! (NaN where a snapshot lacks the metric). `"C1"` chunks, written before
//! milliseconds were kept, are the same with timestamps in seconds; they
//! are read as such, and rewritten as `C2` when a seal merges them. pco
//! codes the timestamps' deltas, so a regular scrape's column costs next to
//! nothing in either unit, and jitter of a few milliseconds a few bits. pco (pcodec) is lossless for every f64 bit
//! pattern, and finds the deltas of counters and the decimal grid of
//! gauges, which is where the memory goes.

use crate::frame::FrameBuilder;
use std::collections::{BTreeMap, HashMap};

const MAGIC: &[u8; 2] = b"C2";
/// Sealed chunks written before milliseconds were kept: timestamps in seconds.
const MAGIC_SECONDS: &[u8; 2] = b"C1";
/// Bit of a record's metric count saying its timestamp is in milliseconds.
pub const MILLIS_FLAG: u16 = 0x8000;
/// Metrics a record can hold (the count's other bits); validation bounds
/// `gateway.max_metrics_per_point` below it.
pub const MAX_RECORD_METRICS: usize = (MILLIS_FLAG - 1) as usize;
const NONCE_LEN: usize = 8;
/// Points a sealed chunk can hold: sealing cuts at `writer.chunk_points`.
const MAX_POINTS: usize = broker_common::config::MAX_CHUNK_POINTS;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// Appends one point's record, at `ts_ms` (Unix milliseconds), to `out`.
/// Names longer than `u16::MAX` bytes, and more than
/// [`MAX_RECORD_METRICS`] values, cannot occur (validation bounds both far
/// lower) and are cut.
pub fn encode_record<'a>(
    out: &mut Vec<u8>,
    ts_ms: i64,
    values: impl ExactSizeIterator<Item = (&'a str, f64)> + Clone,
) {
    let n = values.len().min(MAX_RECORD_METRICS);
    let body_len: usize = 10
        + values
            .clone()
            .take(n)
            .map(|(name, _)| 10 + name.len().min(u16::MAX as usize))
            .sum::<usize>();
    let len = (body_len as u32).to_le_bytes();
    out.reserve(body_len + 8);
    out.extend_from_slice(&len);
    out.extend_from_slice(&ts_ms.to_le_bytes());
    out.extend_from_slice(&(n as u16 | MILLIS_FLAG).to_le_bytes());
    for (name, v) in values.take(n) {
        let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&len);
}

/// A nonce record with `nonce`.
pub fn nonce_record(nonce: [u8; NONCE_LEN]) -> Vec<u8> {
    let len = (NONCE_LEN as u32).to_le_bytes();
    let mut out = Vec::with_capacity(NONCE_LEN + 8);
    out.extend_from_slice(&len);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&len);
    out
}

/// A chunk index member (`monitor:chunks:{host}`): `start:end:count:id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    pub start: i64,
    pub end: i64,
    pub count: u64,
    pub id: String,
}

impl ChunkRef {
    pub fn parse(member: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(member).ok()?;
        let mut it = s.splitn(4, ':');
        Some(Self {
            start: it.next()?.parse().ok()?,
            end: it.next()?.parse().ok()?,
            count: it.next()?.parse().ok()?,
            id: it.next()?.to_string(),
        })
    }
    pub fn member(&self) -> String {
        format!("{}:{}:{}:{}", self.start, self.end, self.count, self.id)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn i64_at(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn f64_at(b: &[u8], at: usize) -> Option<f64> {
    Some(f64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A decoded record body: `(ts_ms, [(name, value)])`.
type Record<'a> = (i64, Vec<(&'a str, f64)>);

/// Decodes a record body; `None` for a nonce.
fn parse_body(body: &[u8]) -> Result<Option<Record<'_>>, DecodeError> {
    if body.len() == NONCE_LEN {
        return Ok(None);
    }
    let (Some(ts), Some(n)) = (i64_at(body, 0), u16_at(body, 8)) else {
        return err("record shorter than its header");
    };
    let ts = if n & MILLIS_FLAG != 0 {
        ts
    } else {
        ts.saturating_mul(1000)
    };
    let n = n & !MILLIS_FLAG;
    let mut at = 10;
    let mut values = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let Some(len) = u16_at(body, at) else {
            return err("record ends inside a name length");
        };
        let name = body
            .get(at + 2..at + 2 + len as usize)
            .ok_or_else(|| DecodeError("record ends inside a name".into()))?;
        let name =
            std::str::from_utf8(name).map_err(|_| DecodeError("name is not UTF-8".into()))?;
        at += 2 + len as usize;
        let Some(v) = f64_at(body, at) else {
            return err("record ends inside a value");
        };
        at += 8;
        values.push((name, v));
    }
    if at != body.len() {
        return err(format!("record body of {} bytes holds {at}", body.len()));
    }
    Ok(Some((ts, values)))
}

/// Walks the records of an open chunk, oldest first: `f(ts_ms, values)` per
/// point, nonces skipped. Returns the byte offset after each record, so a
/// sealer can take a prefix.
pub fn for_each_record<'a>(
    chunk: &'a [u8],
    mut f: impl FnMut(i64, &[(&'a str, f64)], usize),
) -> Result<(), DecodeError> {
    let mut at = 0;
    while at < chunk.len() {
        let Some(len) = u32_at(chunk, at) else {
            return err(format!("open chunk ends inside a record length at {at}"));
        };
        let end = at + 8 + len as usize;
        let (Some(body), Some(trailer)) = (chunk.get(at + 4..end - 4), u32_at(chunk, end - 4))
        else {
            return err(format!("open chunk ends inside a record at {at}"));
        };
        if trailer != len {
            return err(format!(
                "record at {at}: lengths {len} and {trailer} differ"
            ));
        }
        if let Some((ts, values)) = parse_body(body)? {
            f(ts, &values, end);
        }
        at = end;
    }
    Ok(())
}

/// Decodes an open chunk into `into` (later records win).
pub fn read_records(chunk: &[u8], into: &mut FrameBuilder) -> Result<(), DecodeError> {
    for_each_record(chunk, |ts, values, _| {
        into.touch(ts);
        for (name, v) in values {
            into.set(ts, name, *v);
        }
    })
}

/// Snapshots being sealed, columnar, with metric names borrowed from the
/// bytes they were decoded from: one row of values per millisecond (NaN
/// where the snapshot lacks the metric), one column per name. Merging is
/// one hash lookup per sample and no allocation per sample.
#[derive(Debug, Default)]
pub struct Table<'a> {
    names: Vec<&'a str>,
    columns: HashMap<&'a str, usize>,
    rows: BTreeMap<i64, Vec<f64>>,
}

impl<'a> Table<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    fn row(&mut self, ts: i64) -> &mut Vec<f64> {
        self.rows.entry(ts).or_default()
    }

    /// Sets `name` at `ts` (a later value replaces an earlier one).
    pub fn set(&mut self, ts: i64, name: &'a str, v: f64) {
        let n = self.names.len();
        let col = *self.columns.entry(name).or_insert(n);
        if col == n {
            self.names.push(name);
        }
        let row = self.row(ts);
        if row.len() <= col {
            row.resize(col + 1, f64::NAN);
        }
        row[col] = v;
    }

    /// Snapshots held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Oldest and newest timestamps.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((*self.rows.keys().next()?, *self.rows.keys().next_back()?))
    }

    /// The rows, oldest first.
    pub fn rows(&self) -> impl Iterator<Item = (i64, &[f64])> {
        self.rows.iter().map(|(t, r)| (*t, r.as_slice()))
    }

    /// The value of `name` at `ts`, if present.
    pub fn get(&self, ts: i64, name: &str) -> Option<f64> {
        let col = *self.columns.get(name)?;
        self.rows
            .get(&ts)?
            .get(col)
            .copied()
            .filter(|v| !crate::value::is_absent(*v))
    }

    /// Metric names present at `ts`.
    pub fn names_at(&self, ts: i64) -> Vec<&'a str> {
        let Some(row) = self.rows.get(&ts) else {
            return Vec::new();
        };
        row.iter()
            .zip(&self.names)
            .filter(|(v, _)| !crate::value::is_absent(**v))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// Merges an open chunk's records into `table` (later records win metric
/// by metric). Returns the records merged.
pub fn merge_records<'a>(chunk: &'a [u8], table: &mut Table<'a>) -> Result<usize, DecodeError> {
    let mut n = 0;
    for_each_record(chunk, |ts, values, _| {
        table.row(ts);
        for (name, v) in values {
            table.set(ts, name, *v);
        }
        n += 1;
    })?;
    Ok(n)
}

/// One sealed chunk of `rows` of `table` (at least one). The columns are
/// written in name order, so the same snapshots always give the same bytes
/// (and the same chunk id), whatever order they were merged in.
pub fn encode_chunk(table: &Table<'_>, rows: &[(i64, &[f64])]) -> Vec<u8> {
    // The names present in these rows, sorted, with their columns.
    let mut names: Vec<(&str, usize)> = table
        .names
        .iter()
        .enumerate()
        .filter(|(col, _)| {
            rows.iter()
                .any(|(_, r)| r.get(*col).is_some_and(|v| !crate::value::is_absent(*v)))
        })
        .map(|(col, n)| (*n, col))
        .collect();
    names.sort_unstable();
    let ts: Vec<i64> = rows.iter().map(|(t, _)| *t).collect();
    let mut out = Vec::with_capacity(64 + ts.len() * names.len() * 2);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(ts.len() as u32).to_le_bytes());
    out.extend_from_slice(&(names.len() as u16).to_le_bytes());
    for (n, _) in &names {
        out.extend_from_slice(&(n.len() as u16).to_le_bytes());
        out.extend_from_slice(n.as_bytes());
    }
    // First-order deltas only: pco's automatic choice also searches
    // lookback deltas, which made sealing 4 x slower for about 3 % less
    // space on a realistic mix (docs/benchmarks.md, `broker-bench week`).
    // Decoders read either: the choice is in the column's header.
    let config = pco::ChunkConfig::default().with_delta_spec(pco::DeltaSpec::TryConsecutive(1));
    let put = |out: &mut Vec<u8>, col: Vec<u8>| {
        out.extend_from_slice(&(col.len() as u32).to_le_bytes());
        out.extend_from_slice(&col);
    };
    put(
        &mut out,
        pco::standalone::simple_compress(&ts, &config).expect("pco compresses any i64 slice"),
    );
    let mut col = Vec::with_capacity(rows.len());
    for (_, c) in &names {
        col.clear();
        col.extend(
            rows.iter()
                .map(|(_, r)| r.get(*c).copied().unwrap_or(f64::NAN)),
        );
        put(
            &mut out,
            pco::standalone::simple_compress(&col, &config).expect("pco compresses any f64 slice"),
        );
    }
    out
}

struct ChunkView<'a> {
    names: Vec<&'a str>,
    columns: Vec<&'a [u8]>,
    ts: &'a [u8],
    n: usize,
    /// A C1 chunk: timestamps in seconds.
    seconds: bool,
}

fn view(chunk: &[u8]) -> Result<ChunkView<'_>, DecodeError> {
    let seconds = match chunk.get(..2) {
        Some(m) if m == MAGIC => false,
        Some(m) if m == MAGIC_SECONDS => true,
        _ => return err("not a C2 (or C1) chunk"),
    };
    let (Some(n), Some(names_n)) = (u32_at(chunk, 2), u16_at(chunk, 6)) else {
        return err("chunk header cut short");
    };
    if n as usize > MAX_POINTS {
        return err(format!("chunk claims {n} points, more than {MAX_POINTS}"));
    }
    let mut at = 8;
    let mut names = Vec::with_capacity(names_n as usize);
    for _ in 0..names_n {
        let len = u16_at(chunk, at).ok_or_else(|| DecodeError("cut in names".into()))? as usize;
        let name = chunk
            .get(at + 2..at + 2 + len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| DecodeError("bad metric name".into()))?;
        names.push(name);
        at += 2 + len;
    }
    let take = |at: &mut usize| -> Result<&[u8], DecodeError> {
        let len = u32_at(chunk, *at).ok_or_else(|| DecodeError("cut in a column".into()))? as usize;
        let col = chunk
            .get(*at + 4..*at + 4 + len)
            .ok_or_else(|| DecodeError("column cut short".into()))?;
        *at += 4 + len;
        Ok(col)
    };
    let ts = take(&mut at)?;
    let mut columns = Vec::with_capacity(names.len());
    for _ in &names {
        columns.push(take(&mut at)?);
    }
    Ok(ChunkView {
        names,
        columns,
        ts,
        n: n as usize,
        seconds,
    })
}

/// Bytes of a sealed chunk's timestamp column (for benchmarks).
pub fn timestamp_column_len(chunk: &[u8]) -> Result<usize, DecodeError> {
    Ok(view(chunk)?.ts.len())
}

/// Exactly `n` numbers of one pco column. Decoded into a buffer of the
/// size the chunk header names (itself bounded), never one sized by pco's
/// own header, so corrupt bytes cannot make a read allocate gigabytes.
fn column<T: pco::data_types::Number + Default>(
    col: &[u8],
    n: usize,
    what: &str,
) -> Result<Vec<T>, DecodeError> {
    let mut out = vec![T::default(); n];
    let progress = pco::standalone::simple_decompress_into(col, &mut out)
        .map_err(|e| DecodeError(format!("{what}: {e}")))?;
    if progress.n_processed != n || !progress.finished {
        return err(format!(
            "{what}: {} values for {n} points{}",
            progress.n_processed,
            if progress.finished { "" } else { " and more" }
        ));
    }
    Ok(out)
}

/// A chunk's timestamps, in milliseconds.
fn timestamps(v: &ChunkView<'_>) -> Result<Vec<i64>, DecodeError> {
    let mut ts: Vec<i64> = column(v.ts, v.n, "timestamps")?;
    if v.seconds {
        ts.iter_mut().for_each(|t| *t = t.saturating_mul(1000));
    }
    Ok(ts)
}

/// A sealed chunk's timestamps (milliseconds) and the columns asked for
/// (those it has).
pub struct Decoded<'a> {
    pub timestamps: Vec<i64>,
    pub columns: Vec<(&'a str, Vec<f64>)>,
}

/// Decodes a sealed chunk's timestamps and the columns `wants` names.
pub fn decode(chunk: &[u8], wants: impl Fn(&str) -> bool) -> Result<Decoded<'_>, DecodeError> {
    let v = view(chunk)?;
    let ts = timestamps(&v)?;
    let mut columns = Vec::new();
    for (name, col) in v.names.iter().zip(&v.columns) {
        if wants(name) {
            columns.push((*name, column(col, ts.len(), &format!("column {name}"))?));
        }
    }
    Ok(Decoded {
        timestamps: ts,
        columns,
    })
}

impl Decoded<'_> {
    pub fn apply(&self, into: &mut FrameBuilder) {
        for &t in &self.timestamps {
            into.touch(t);
        }
        for (name, values) in &self.columns {
            into.set_column(&self.timestamps, name, values);
        }
    }
}

/// Decodes a sealed chunk's wanted columns into `into`.
pub fn read_chunk(chunk: &[u8], into: &mut FrameBuilder) -> Result<(), DecodeError> {
    decode(chunk, |name| into.wants(name))?.apply(into);
    Ok(())
}

/// Decodes a whole sealed chunk into `table` (values already there for
/// the same timestamp and metric are replaced).
pub fn merge_chunk<'a>(chunk: &'a [u8], table: &mut Table<'a>) -> Result<(), DecodeError> {
    let v = view(chunk)?;
    let ts = timestamps(&v)?;
    for &t in &ts {
        table.row(t);
    }
    for (name, col) in v.names.iter().zip(&v.columns) {
        let values: Vec<f64> = column(col, ts.len(), &format!("column {name}"))?;
        for (t, v) in ts.iter().zip(values) {
            if !crate::value::is_absent(v) {
                table.set(*t, name, v);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut open = nonce_record(*b"12345678");
        encode_record(
            &mut open,
            100_000,
            [("cpu", 0.5), ("mem", -0.0)].into_iter(),
        );
        encode_record(&mut open, 105_250, [("cpu", f64::MAX)].into_iter());
        // A record written before milliseconds were kept: whole seconds.
        let mut old = Vec::new();
        encode_record(&mut old, 110, [("cpu", 1.0)].into_iter());
        old[4 + 8 + 1] &= 0x7f; // the count's MILLIS_FLAG bit, cleared
        open.extend_from_slice(&old);
        let mut table = Table::new();
        assert_eq!(merge_records(&open, &mut table).unwrap(), 3);
        assert_eq!(
            table.get(100_000, "mem").unwrap().to_bits(),
            (-0.0f64).to_bits()
        );
        assert_eq!(table.get(105_250, "cpu"), Some(f64::MAX));
        assert_eq!(table.get(105_250, "mem"), None);
        assert_eq!(table.get(110_000, "cpu"), Some(1.0));
        // A cut record is an error, not a panic.
        assert!(merge_records(&open[..open.len() - 1], &mut Table::new()).is_err());
    }

    #[test]
    fn chunks_round_trip_every_bit_pattern() {
        let odd = [
            -0.0,
            0.0,
            f64::MIN_POSITIVE / 4.0,
            -f64::MIN_POSITIVE / 3.0,
            f64::MAX,
            f64::MIN,
            1e-300,
            1.0,
            1.0,
            1.0,
            0.1 + 0.2,
            // A NaN sample and a staleness marker: kept bit for bit, told
            // apart from a gap (crate::value).
            f64::from_bits(crate::value::NAN_BITS),
            f64::from_bits(crate::value::STALE_BITS),
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let mut table = Table::new();
        let mut want: Vec<(i64, &str, f64)> = Vec::new();
        for (i, v) in odd.iter().enumerate() {
            // Jittered like real scrapes, to the millisecond.
            let t = 1_000_000 + i as i64 * 5_000 + (i as i64 * 37) % 11;
            want.push((t, "x", *v));
            want.push((t, "c", i as f64));
        }
        // A snapshot without "x".
        want.push((2_000_000, "c", 7.0));
        for (t, n, v) in &want {
            table.set(*t, n, *v);
        }
        let rows: Vec<(i64, &[f64])> = table.rows().collect();
        let blob = encode_chunk(&table, &rows);
        // The same snapshots merged in another order: the same bytes.
        let mut other = Table::new();
        for (t, n, v) in want.iter().rev() {
            other.set(*t, n, *v);
        }
        let other_rows: Vec<(i64, &[f64])> = other.rows().collect();
        assert_eq!(encode_chunk(&other, &other_rows), blob);
        let mut back = Table::new();
        merge_chunk(&blob, &mut back).unwrap();
        assert_eq!(back.len(), table.len());
        for (t, n, v) in &want {
            assert_eq!(
                back.get(*t, n).unwrap().to_bits(),
                v.to_bits(),
                "{n} at {t}"
            );
        }
        assert_eq!(back.names_at(2_000_000), vec!["c"]);
        let mut b = FrameBuilder::new(1_000_000, 1_010_999, &["x".to_string()]);
        read_chunk(&blob, &mut b).unwrap();
        let f = b.finish(None);
        assert_eq!(f.timestamps, vec![1_000_000, 1_005_004, 1_010_008]);
        assert_eq!(f.metrics["x"][0].to_bits(), (-0.0f64).to_bits());
        assert!(view(b"C1\x01").is_err());
        // A C1 chunk (seconds) reads as milliseconds.
        let mut secs = Table::new();
        secs.set(100, "x", 1.0);
        secs.set(105, "x", 2.0);
        let secs_rows: Vec<(i64, &[f64])> = secs.rows().collect();
        let mut c1 = encode_chunk(&secs, &secs_rows);
        c1[..2].copy_from_slice(MAGIC_SECONDS);
        let mut back = Table::new();
        merge_chunk(&c1, &mut back).unwrap();
        assert_eq!(back.get(105_000, "x"), Some(2.0));
        // Found by the chunk_decode fuzz target: a header claiming 1.7
        // billion points made pco allocate 4 GiB.
        let oom = b"\x43\x31\x59\x39\x0a\x64\x00\x00\x28\x00\x00\x00\x70\x63\x6f\x21\x03\x03\x2c\x03\x03\x03\x03\x03\x03\x03\x03\x03\x03\x03\x03\x03\x32\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x20\x31\x00\x00\x00\x2f";
        assert!(merge_chunk(oom, &mut Table::new()).is_err());
        // A valid chunk whose header claims more points than its columns hold.
        let mut lying = blob.clone();
        lying[2..6].copy_from_slice(&1000u32.to_le_bytes());
        assert!(merge_chunk(&lying, &mut Table::new()).is_err());
        assert!(read_chunk(&blob[..blob.len() - 3], &mut FrameBuilder::new(0, 1, &[])).is_err());
    }
}
