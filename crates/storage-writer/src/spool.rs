//! The write-ahead spool: where accepted batches go, fsync'ed, when Redis
//! cannot take them, so they can still be acked (DESIGN.md "Delivery
//! contract"). Replayed into Redis in order once Redis answers again, and
//! on start. The same database holds the dead-letter queue: points Redis
//! refused for good (an error reply such as WRONGTYPE), kept until an
//! operator replays or discards them.
//!
//! Storage is a `redb` database with three tables:
//! - `spool`: key = a monotonically increasing record id, value = the
//!   prost-encoded `MetricBatch`;
//! - `dlq`: key = a dead-letter id (never reused, also across restarts),
//!   value = the prost-encoded `DeadLetter` (proto/broker/v1/dlq.proto);
//! - `meta`: counters that must outlive their rows (the next dead-letter id).
//!
//! Every change is one write transaction committed with
//! `Durability::Immediate` (redb's default), so it is on disk when the call
//! returns. `max_bytes` bounds both tables together. All calls block on disk
//! I/O: call them from `spawn_blocking`.

use broker_proto::v1::{DeadLetter, MetricBatch};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dlq");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key in `meta` of the next dead-letter id, so ids are never reused even
/// after the queue was emptied and the writer restarted.
const DLQ_NEXT_ID: &str = "dlq_next_id";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "spool at {path} is full ({bytes} of {max} bytes used, {dead_letter_bytes} of them by dead letters)"
    )]
    Full {
        path: String,
        bytes: u64,
        max: u64,
        dead_letter_bytes: u64,
    },
    #[error("spool at {path}: {message}")]
    Storage { path: String, message: String },
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    next_id: u64,
    bytes: u64,
    entries: u64,
}

/// What both tables hold; one lock so the shared bound is checked and
/// updated atomically with the commit.
#[derive(Debug, Default)]
struct Usages {
    spool: Usage,
    dlq: Usage,
}

impl Usages {
    fn total_bytes(&self) -> u64 {
        self.spool.bytes + self.dlq.bytes
    }
}

pub struct Spool {
    db: redb::Database,
    path: PathBuf,
    max_bytes: u64,
    usage: Mutex<Usages>,
}

/// A spooled batch with its record id.
pub struct Record {
    pub id: u64,
    pub batch: MetricBatch,
}

/// A dead-letter entry as stored: its id, its encoded size, and the entry,
/// or why it does not decode.
pub struct DeadLetterRecord {
    pub id: u64,
    pub bytes: u64,
    pub entry: Result<DeadLetter, String>,
}

impl DeadLetterRecord {
    fn decode(id: u64, bytes: &[u8]) -> Self {
        Self {
            id,
            bytes: bytes.len() as u64,
            entry: DeadLetter::decode(bytes).map_err(|e| e.to_string()),
        }
    }
}

fn scan(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<Usage, redb::StorageError> {
    let mut usage = Usage {
        entries: table.len()?,
        ..Usage::default()
    };
    for row in table.iter()? {
        let (k, v) = row?;
        usage.bytes += v.value().len() as u64;
        usage.next_id = usage.next_id.max(k.value() + 1);
    }
    Ok(usage)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, counting what it holds.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let path = dir.join("spool.redb");
        let err = |e: &dyn std::fmt::Display| SpoolError::Storage {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = redb::Database::create(&path).map_err(|e| err(&e))?;
        let mut usage = Usages::default();
        {
            let tx = db.begin_write().map_err(|e| err(&e))?;
            {
                let table = tx.open_table(RECORDS).map_err(|e| err(&e))?;
                usage.spool = scan(&table).map_err(|e| err(&e))?;
                let table = tx.open_table(DEAD_LETTERS).map_err(|e| err(&e))?;
                usage.dlq = scan(&table).map_err(|e| err(&e))?;
                let meta = tx.open_table(META).map_err(|e| err(&e))?;
                if let Some(next) = meta.get(DLQ_NEXT_ID).map_err(|e| err(&e))? {
                    usage.dlq.next_id = usage.dlq.next_id.max(next.value());
                }
            }
            tx.commit().map_err(|e| err(&e))?;
        }
        Ok(Self {
            db,
            path,
            max_bytes,
            usage: Mutex::new(usage),
        })
    }

    fn storage(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Storage {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn usages(&self) -> std::sync::MutexGuard<'_, Usages> {
        self.usage.lock().expect("spool usage")
    }

    fn full(&self, usage: &Usages) -> SpoolError {
        SpoolError::Full {
            path: self.path.display().to_string(),
            bytes: usage.total_bytes(),
            max: self.max_bytes,
            dead_letter_bytes: usage.dlq.bytes,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_empty(&self) -> bool {
        self.usages().spool.entries == 0
    }

    /// (records, bytes) held in the spool (dead letters not included).
    pub fn usage(&self) -> (u64, u64) {
        let u = self.usages();
        (u.spool.entries, u.spool.bytes)
    }

    /// (entries, bytes) held in the dead-letter queue.
    pub fn dlq_usage(&self) -> (u64, u64) {
        let u = self.usages();
        (u.dlq.entries, u.dlq.bytes)
    }

    /// Appends `batches` in one transaction; durable when this returns.
    /// Refuses (nothing written) when the database would grow past its bound.
    pub fn append(&self, batches: &[&MetricBatch]) -> Result<(), SpoolError> {
        let encoded: Vec<Vec<u8>> = batches.iter().map(|b| b.encode_to_vec()).collect();
        let add: u64 = encoded.iter().map(|e| e.len() as u64).sum();
        // One writer at a time: redb serializes write transactions anyway,
        // and holding the lock keeps ids in commit order.
        let mut usage = self.usages();
        if usage.total_bytes() + add > self.max_bytes {
            return Err(self.full(&usage));
        }
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        let mut id = usage.spool.next_id;
        {
            let mut table = tx.open_table(RECORDS).map_err(|e| self.storage(e))?;
            for e in &encoded {
                table
                    .insert(id, e.as_slice())
                    .map_err(|e| self.storage(e))?;
                id += 1;
            }
        }
        tx.commit().map_err(|e| self.storage(e))?;
        usage.spool.next_id = id;
        usage.spool.bytes += add;
        usage.spool.entries += encoded.len() as u64;
        Ok(())
    }

    /// The oldest records, up to `max_points` points (at least one record).
    /// Records that no longer decode are returned as ids in the second
    /// vector so the caller can drop them loudly.
    pub fn oldest(&self, max_points: usize) -> Result<(Vec<Record>, Vec<u64>), SpoolError> {
        let tx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = tx.open_table(RECORDS).map_err(|e| self.storage(e))?;
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        let mut points = 0;
        for row in table.iter().map_err(|e| self.storage(e))? {
            let (k, v) = row.map_err(|e| self.storage(e))?;
            match MetricBatch::decode(v.value()) {
                Ok(batch) => {
                    points += batch.points.len();
                    out.push(Record {
                        id: k.value(),
                        batch,
                    });
                }
                Err(_) => corrupt.push(k.value()),
            }
            if points >= max_points {
                break;
            }
        }
        Ok((out, corrupt))
    }

    /// Deletes records (after they were written to Redis).
    pub fn remove(&self, ids: &[u64]) -> Result<(), SpoolError> {
        self.move_to_dlq(ids, &[]).map(|_| ())
    }

    /// Adds dead-letter entries in one transaction; durable when this
    /// returns. Returns their ids. Refuses (nothing written) when the
    /// database would grow past its bound.
    pub fn dead_letter(&self, entries: &[DeadLetter]) -> Result<Vec<u64>, SpoolError> {
        let add: u64 = entries.iter().map(|e| e.encoded_len() as u64).sum();
        let usage = self.usages();
        if usage.total_bytes() + add > self.max_bytes {
            return Err(self.full(&usage));
        }
        drop(usage);
        self.move_to_dlq(&[], entries)
    }

    /// In one transaction: deletes the spool records `ids` and adds the
    /// dead-letter `entries` (the parts of those records Redis refused).
    /// Returns the new entries' ids. Not checked against the bound: the
    /// entries are a subset of the records' points, so the database does
    /// not grow by more than the reasons, and refusing would leave those
    /// records blocking the spool.
    pub fn move_to_dlq(&self, ids: &[u64], entries: &[DeadLetter]) -> Result<Vec<u64>, SpoolError> {
        let encoded: Vec<Vec<u8>> = entries.iter().map(|e| e.encode_to_vec()).collect();
        let mut usage = self.usages();
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        let mut freed = 0u64;
        let mut removed = 0u64;
        let mut next = usage.dlq.next_id;
        let mut new_ids = Vec::with_capacity(encoded.len());
        {
            let mut table = tx.open_table(RECORDS).map_err(|e| self.storage(e))?;
            for id in ids {
                if let Some(v) = table.remove(id).map_err(|e| self.storage(e))? {
                    freed += v.value().len() as u64;
                    removed += 1;
                }
            }
            if !encoded.is_empty() {
                let mut dlq = tx.open_table(DEAD_LETTERS).map_err(|e| self.storage(e))?;
                for e in &encoded {
                    dlq.insert(next, e.as_slice())
                        .map_err(|e| self.storage(e))?;
                    new_ids.push(next);
                    next += 1;
                }
                let mut meta = tx.open_table(META).map_err(|e| self.storage(e))?;
                meta.insert(DLQ_NEXT_ID, next)
                    .map_err(|e| self.storage(e))?;
            }
        }
        tx.commit().map_err(|e| self.storage(e))?;
        usage.spool.bytes = usage.spool.bytes.saturating_sub(freed);
        usage.spool.entries = usage.spool.entries.saturating_sub(removed);
        usage.dlq.next_id = next;
        usage.dlq.bytes += encoded.iter().map(|e| e.len() as u64).sum::<u64>();
        usage.dlq.entries += encoded.len() as u64;
        Ok(new_ids)
    }

    /// Dead-letter entries with an id greater than `after` (all when
    /// `None`), oldest first, at most `limit`.
    pub fn dlq_list(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>, SpoolError> {
        let tx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = tx.open_table(DEAD_LETTERS).map_err(|e| self.storage(e))?;
        let from = match after {
            None => 0,
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(a) => a + 1,
        };
        let mut out = Vec::new();
        for row in table.range(from..).map_err(|e| self.storage(e))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(|e| self.storage(e))?;
            out.push(DeadLetterRecord::decode(k.value(), v.value()));
        }
        Ok(out)
    }

    /// Ids of every dead-letter entry, oldest first.
    pub fn dlq_ids(&self) -> Result<Vec<u64>, SpoolError> {
        let tx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = tx.open_table(DEAD_LETTERS).map_err(|e| self.storage(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.storage(e))? {
            out.push(row.map_err(|e| self.storage(e))?.0.value());
        }
        Ok(out)
    }

    /// One dead-letter entry.
    pub fn dlq_get(&self, id: u64) -> Result<Option<DeadLetterRecord>, SpoolError> {
        let tx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = tx.open_table(DEAD_LETTERS).map_err(|e| self.storage(e))?;
        let row = table.get(id).map_err(|e| self.storage(e))?;
        Ok(row.map(|v| DeadLetterRecord::decode(id, v.value())))
    }

    /// Replaces entry `id` (after a replay stored part of it, or to record
    /// a failed replay). Returns false, writing nothing, when `id` is not
    /// there (discarded or replayed meanwhile).
    pub fn dlq_replace(&self, id: u64, entry: &DeadLetter) -> Result<bool, SpoolError> {
        let encoded = entry.encode_to_vec();
        let mut usage = self.usages();
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        let old = {
            let mut table = tx.open_table(DEAD_LETTERS).map_err(|e| self.storage(e))?;
            let old = table
                .get(id)
                .map_err(|e| self.storage(e))?
                .map(|v| v.value().len() as u64);
            if old.is_some() {
                table
                    .insert(id, encoded.as_slice())
                    .map_err(|e| self.storage(e))?;
            }
            old
        };
        let Some(old) = old else {
            tx.abort().map_err(|e| self.storage(e))?;
            return Ok(false);
        };
        tx.commit().map_err(|e| self.storage(e))?;
        usage.dlq.bytes = usage.dlq.bytes.saturating_sub(old) + encoded.len() as u64;
        Ok(true)
    }

    /// Deletes entry `id` (replayed, or discarded by an operator). Returns
    /// false when it was not there.
    pub fn dlq_remove(&self, id: u64) -> Result<bool, SpoolError> {
        let mut usage = self.usages();
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        let freed = {
            let mut table = tx.open_table(DEAD_LETTERS).map_err(|e| self.storage(e))?;
            table
                .remove(id)
                .map_err(|e| self.storage(e))?
                .map(|v| v.value().len() as u64)
        };
        tx.commit().map_err(|e| self.storage(e))?;
        let Some(freed) = freed else {
            return Ok(false);
        };
        usage.dlq.bytes = usage.dlq.bytes.saturating_sub(freed);
        usage.dlq.entries = usage.dlq.entries.saturating_sub(1);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::Point;

    fn batch(host: &str, n: usize) -> MetricBatch {
        MetricBatch {
            seq: 0,
            metric_names: vec!["m".into()],
            points: (0..n)
                .map(|i| Point {
                    millis: 0,
                    host_id: host.into(),
                    timestamp: i as i64,
                    values: vec![i as f64],
                    name_index: vec![],
                    labels: Default::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn append_read_remove_and_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.is_empty());
        spool.append(&[&batch("a", 2), &batch("b", 3)]).unwrap();
        spool.append(&[&batch("c", 1)]).unwrap();
        assert_eq!(spool.usage().0, 3);
        drop(spool);

        // Survives a reopen (the process restarting), order kept.
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.usage().0, 3);
        let (recs, corrupt) = spool.oldest(4).unwrap();
        assert!(corrupt.is_empty());
        let hosts: Vec<&str> = recs
            .iter()
            .map(|r| r.batch.points[0].host_id.as_str())
            .collect();
        assert_eq!(hosts, vec!["a", "b"], "stops once 4 points are reached");
        spool
            .remove(&recs.iter().map(|r| r.id).collect::<Vec<_>>())
            .unwrap();
        let (recs, _) = spool.oldest(100).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].batch, batch("c", 1));
        spool.remove(&[recs[0].id]).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.usage(), (0, 0));
        // Ids keep increasing after a drain and a reopen.
        spool.append(&[&batch("d", 1)]).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let (recs, _) = spool.oldest(100).unwrap();
        assert_eq!(recs[0].batch.points[0].host_id, "d");
    }

    fn dead(host: &str, n: usize, reason: &str) -> DeadLetter {
        DeadLetter {
            dead_lettered_at_ms: 1_700_000_000_000,
            reason: reason.into(),
            writer: "w1".into(),
            batch: Some(batch(host, n)),
            ..Default::default()
        }
    }

    fn entries(spool: &Spool) -> Vec<(u64, DeadLetter)> {
        spool
            .dlq_list(None, 100)
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.entry.unwrap()))
            .collect()
    }

    #[test]
    fn dead_letters_are_kept_listed_replaced_removed_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let ids = spool
            .dead_letter(&[dead("a", 2, "WRONGTYPE a"), dead("b", 1, "WRONGTYPE b")])
            .unwrap();
        assert_eq!(ids, vec![0, 1]);
        let ids = spool.dead_letter(&[dead("c", 3, "ERR c")]).unwrap();
        assert_eq!(ids, vec![2]);
        assert_eq!(spool.dlq_usage().0, 3);
        assert!(spool.is_empty(), "dead letters are not spool records");
        assert_eq!(spool.usage(), (0, 0));

        // Paging: after an id, with a limit.
        let page: Vec<u64> = spool
            .dlq_list(Some(0), 1)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(page, vec![1]);
        assert!(spool.dlq_list(Some(u64::MAX), 10).unwrap().is_empty());

        let got = spool.dlq_get(1).unwrap().expect("entry 1");
        let entry = got.entry.unwrap();
        assert_eq!(entry.reason, "WRONGTYPE b");
        assert_eq!(entry.batch, Some(batch("b", 1)));
        assert_eq!(got.bytes, entry.encoded_len() as u64);
        assert!(spool.dlq_get(7).unwrap().is_none());
        assert_eq!(spool.dlq_ids().unwrap(), vec![0, 1, 2]);

        // Replace keeps the id and accounts the new size.
        let mut smaller = dead("c", 1, "ERR c");
        smaller.replay_attempts = 1;
        assert!(spool.dlq_replace(2, &smaller).unwrap());
        assert!(!spool.dlq_replace(9, &smaller).unwrap(), "unknown id");
        let bytes: u64 = entries(&spool)
            .iter()
            .map(|(_, e)| e.encoded_len() as u64)
            .sum();
        assert_eq!(spool.dlq_usage(), (3, bytes));

        assert!(spool.dlq_remove(0).unwrap());
        assert!(!spool.dlq_remove(0).unwrap(), "already removed");
        drop(spool);

        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let got = entries(&spool);
        assert_eq!(
            got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(got[1].1, smaller);
        assert_eq!(
            spool.dlq_usage(),
            (2, bytes - dead("a", 2, "WRONGTYPE a").encoded_len() as u64)
        );

        // Emptied and reopened, ids still are not reused.
        spool.dlq_remove(1).unwrap();
        spool.dlq_remove(2).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.dlq_usage(), (0, 0));
        assert_eq!(spool.dead_letter(&[dead("d", 1, "x")]).unwrap(), vec![3]);
    }

    #[test]
    fn moving_spool_records_to_the_dlq_is_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append(&[&batch("a", 2), &batch("b", 2)]).unwrap();
        let (recs, _) = spool.oldest(100).unwrap();
        let ids: Vec<u64> = recs.iter().map(|r| r.id).collect();
        let new = spool
            .move_to_dlq(&ids, &[dead("b", 2, "WRONGTYPE b")])
            .unwrap();
        assert_eq!(new, vec![0]);
        assert!(spool.is_empty());
        assert_eq!(spool.usage(), (0, 0));
        assert_eq!(entries(&spool)[0].1.reason, "WRONGTYPE b");
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.dlq_usage().0, 1);
    }

    #[test]
    fn spool_and_dead_letters_share_one_bound() {
        let dir = tempfile::tempdir().unwrap();
        let big = batch("a", 100);
        let entry = dead("a", 100, "WRONGTYPE");
        let max = big.encoded_len() as u64 + entry.encoded_len() as u64;
        let spool = Spool::open(dir.path(), max).unwrap();
        spool.dead_letter(std::slice::from_ref(&entry)).unwrap();
        spool.append(&[&big]).unwrap();
        let e = spool.append(&[&batch("b", 1)]).unwrap_err();
        assert!(
            matches!(e, SpoolError::Full { dead_letter_bytes, .. } if dead_letter_bytes == entry.encoded_len() as u64),
            "{e}"
        );
        assert!(e.to_string().contains("by dead letters"), "{e}");
        let e = spool.dead_letter(&[dead("b", 1, "x")]).unwrap_err();
        assert!(matches!(e, SpoolError::Full { .. }), "{e}");
        assert_eq!(spool.dlq_usage().0, 1);
    }

    #[test]
    fn refuses_past_its_bound_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let big = batch("a", 100);
        let size = big.encoded_len() as u64;
        let spool = Spool::open(dir.path(), size * 2).unwrap();
        spool.append(&[&big]).unwrap();
        spool.append(&[&big]).unwrap();
        let e = spool.append(&[&big]).unwrap_err();
        assert!(matches!(e, SpoolError::Full { .. }), "{e}");
        assert!(e.to_string().contains("is full"), "{e}");
        assert_eq!(spool.usage().0, 2);
    }
}
