//! The write-ahead spool: where accepted batches go, fsync'ed, when Redis
//! cannot take them, so they can still be acked (DESIGN.md "Delivery
//! contract"). Replayed into Redis in order once Redis answers again, and
//! on start.
//!
//! Storage is a `redb` database (one table, key = a monotonically
//! increasing record id, value = the prost-encoded `MetricBatch`); every
//! append is one write transaction committed with `Durability::Immediate`,
//! so it is on disk when `append` returns. All calls block on disk I/O: call
//! them from `spawn_blocking`.

use broker_proto::v1::MetricBatch;
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool at {path} is full ({bytes} of {max} bytes used)")]
    Full { path: String, bytes: u64, max: u64 },
    #[error("spool at {path}: {message}")]
    Storage { path: String, message: String },
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    next_id: u64,
    bytes: u64,
    entries: u64,
}

pub struct Spool {
    db: redb::Database,
    path: PathBuf,
    max_bytes: u64,
    usage: Mutex<Usage>,
}

/// A spooled batch with its record id.
pub struct Record {
    pub id: u64,
    pub batch: MetricBatch,
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
        let mut usage = Usage::default();
        {
            let tx = db.begin_write().map_err(|e| err(&e))?;
            {
                let table = tx.open_table(RECORDS).map_err(|e| err(&e))?;
                usage.entries = table.len().map_err(|e| err(&e))?;
                for row in table.iter().map_err(|e| err(&e))? {
                    let (k, v) = row.map_err(|e| err(&e))?;
                    usage.bytes += v.value().len() as u64;
                    usage.next_id = usage.next_id.max(k.value() + 1);
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_empty(&self) -> bool {
        self.usage.lock().expect("spool usage").entries == 0
    }

    /// (records, bytes) held.
    pub fn usage(&self) -> (u64, u64) {
        let u = self.usage.lock().expect("spool usage");
        (u.entries, u.bytes)
    }

    /// Appends `batches` in one transaction; durable when this returns.
    /// Refuses (nothing written) when the spool would grow past its bound.
    pub fn append(&self, batches: &[&MetricBatch]) -> Result<(), SpoolError> {
        let encoded: Vec<Vec<u8>> = batches.iter().map(|b| b.encode_to_vec()).collect();
        let add: u64 = encoded.iter().map(|e| e.len() as u64).sum();
        // One writer at a time: redb serializes write transactions anyway,
        // and holding the lock keeps ids in commit order.
        let mut usage = self.usage.lock().expect("spool usage");
        if usage.bytes + add > self.max_bytes {
            return Err(SpoolError::Full {
                path: self.path.display().to_string(),
                bytes: usage.bytes,
                max: self.max_bytes,
            });
        }
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        let mut id = usage.next_id;
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
        usage.next_id = id;
        usage.bytes += add;
        usage.entries += encoded.len() as u64;
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
        let mut usage = self.usage.lock().expect("spool usage");
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        let mut freed = 0u64;
        let mut removed = 0u64;
        {
            let mut table = tx.open_table(RECORDS).map_err(|e| self.storage(e))?;
            for id in ids {
                if let Some(v) = table.remove(id).map_err(|e| self.storage(e))? {
                    freed += v.value().len() as u64;
                    removed += 1;
                }
            }
        }
        tx.commit().map_err(|e| self.storage(e))?;
        usage.bytes = usage.bytes.saturating_sub(freed);
        usage.entries = usage.entries.saturating_sub(removed);
        Ok(())
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
