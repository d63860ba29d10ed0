//! The durable raft log: a [`raft::Storage`] on `redb` (ADR 0002).
//!
//! It keeps the semantics of raft-rs's in-memory reference `MemStorage`
//! (raft-0.7.0 `src/storage.rs`): `first_index` is the snapshot index + 1
//! while the log is empty, the term of the snapshot index is answered from
//! the snapshot metadata, reads below the first index are `Compacted`, terms
//! past the last index are `Unavailable`, an older snapshot is
//! `SnapshotOutOfDate`, and `entries` honours `max_size` with
//! [`raft::util::limit_size`] (always at least one entry).
//!
//! Storage is one `redb` database, `raft.redb`, with three tables:
//! - `entries`: key = log index, value = the protobuf-encoded `Entry`;
//! - `raft_state`: the hard state, the conf state, the snapshot metadata and
//!   the snapshot data (the serialized state machine at the snapshot index),
//!   each protobuf-encoded under its own key so a term lookup or a restart
//!   never decodes the snapshot data;
//! - `meta`: the caller's small key/value side table (e.g. peer addresses),
//!   kept apart from `raft_state` so no caller key can clobber raft's state.
//!
//! Every change is one write transaction committed with
//! `Durability::Immediate` (redb's default): it is on disk (fsync'ed) when
//! the call returns, which is what raft requires before a ready's persisted
//! messages go out. All calls block on disk I/O.
//!
//! Where `MemStorage` panics on a caller bug (appending over compacted
//! entries or past a gap, compacting past the log, reading past the last
//! index) this store returns an error instead: raft-rs treats any storage
//! error other than `Compacted` / `*TemporarilyUnavailable` as fatal anyway,
//! and a status page reading concurrently must not take the process down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const RAFT_FILE: &str = "raft.redb";
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
const SNAPSHOT_METADATA: &str = "snapshot_metadata";
const SNAPSHOT_DATA: &str = "snapshot_data";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create raft data directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open raft store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    #[error("raft store database error")]
    Db(#[source] redb::Error),
    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: protobuf::ProtobufError,
    },
    #[error("cannot decode stored {what}")]
    Decode {
        what: &'static str,
        #[source]
        source: protobuf::ProtobufError,
    },
    #[error("raft store is inconsistent: {0}")]
    Corrupt(String),
    #[error("raft store is already initialized")]
    AlreadyInitialized,
    #[error("cannot overwrite compacted raft log: first index {first_index}, append from {index}")]
    AppendCompacted { first_index: u64, index: u64 },
    #[error("raft log must be continuous: last index {last_index}, append from {index}")]
    AppendGap { last_index: u64, index: u64 },
    #[error("cannot compact to {applied}: last index is {last_index}")]
    CompactPastLog { applied: u64, last_index: u64 },
    #[error("snapshot at {index} is out of date: first index is {first_index}")]
    SnapshotOutOfDate { index: u64, first_index: u64 },
}

impl StoreError {
    /// Whether the error says the stored state itself cannot be read back
    /// (a disk fault, a file written by something else), as opposed to a
    /// directory that cannot be created or a file another process holds.
    pub fn is_damage(&self) -> bool {
        match self {
            Self::Open { source, .. } => source.is_damage(),
            Self::Db(e) => matches!(
                e,
                redb::Error::Corrupted(_)
                    | redb::Error::TableTypeMismatch { .. }
                    | redb::Error::TypeDefinitionChanged { .. }
            ),
            Self::Decode { .. } | Self::Corrupt(_) => true,
            _ => false,
        }
    }
}

fn db(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

fn encode(what: &'static str, m: &impl protobuf::Message) -> Result<Vec<u8>, StoreError> {
    m.write_to_bytes()
        .map_err(|source| StoreError::Encode { what, source })
}

fn decode<M: protobuf::Message>(what: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })
}

/// Inside the `raft::Storage` impl: raft sees our failures as `Other`.
fn raft_err(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

/// What raft asks for on every step, kept in memory; always equal to what
/// the last committed transaction wrote.
#[derive(Debug, Default)]
struct Cached {
    /// Index of the first entry in `entries`, or snapshot index + 1 when the
    /// log is empty (as `MemStorage`).
    first_index: u64,
    /// Index of the last entry, or the snapshot index when the log is empty.
    last_index: u64,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_metadata: SnapshotMetadata,
}

#[derive(Debug)]
struct Inner {
    db: redb::Database,
    path: PathBuf,
    /// Writers hold it for writing across their transaction and the cache
    /// update, readers for reading across their cache and database reads,
    /// so a reader never sees the cache and the tables disagree.
    cached: RwLock<Cached>,
}

/// The raft log store. Cheap to clone; the clones share one database.
#[derive(Debug, Clone)]
pub struct RaftStore {
    inner: Arc<Inner>,
}

impl RaftStore {
    /// Opens or creates `dir/raft.redb` (creating `dir`).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(RAFT_FILE);
        let open_err = |e: StoreError| StoreError::Open {
            path: path.clone(),
            source: Box::new(e),
        };
        let db = redb::Database::create(&path).map_err(|e| open_err(db(e)))?;
        let cached = Self::load(&db).map_err(open_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                cached: RwLock::new(cached),
            }),
        })
    }

    /// Creates the tables if they are missing and reads the cached state.
    fn load(database: &redb::Database) -> Result<Cached, StoreError> {
        let tx = database.begin_write().map_err(db)?;
        let cached = {
            let entries = tx.open_table(ENTRIES).map_err(db)?;
            let state = tx.open_table(STATE).map_err(db)?;
            tx.open_table(META).map_err(db)?;
            let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
                Ok(state.get(key).map_err(db)?.map(|v| v.value().to_vec()))
            };
            let hard_state = match get(HARD_STATE)? {
                Some(b) => decode("hard state", &b)?,
                None => HardState::default(),
            };
            let conf_state = match get(CONF_STATE)? {
                Some(b) => decode("conf state", &b)?,
                None => ConfState::default(),
            };
            let snapshot_metadata: SnapshotMetadata = match get(SNAPSHOT_METADATA)? {
                Some(b) => decode("snapshot metadata", &b)?,
                None => SnapshotMetadata::default(),
            };
            let first = entries.first().map_err(db)?.map(|(k, _)| k.value());
            let last = entries.last().map_err(db)?.map(|(k, _)| k.value());
            let (first_index, last_index) = match (first, last) {
                (Some(first), Some(last)) => (first, last),
                _ => (snapshot_metadata.index + 1, snapshot_metadata.index),
            };
            Cached {
                first_index,
                last_index,
                hard_state,
                conf_state,
                snapshot_metadata,
            }
        };
        tx.commit().map_err(db)?;
        Ok(cached)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn read(&self) -> RwLockReadGuard<'_, Cached> {
        self.inner.cached.read().expect("raft store lock")
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cached> {
        self.inner.cached.write().expect("raft store lock")
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn transact<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Durability::Immediate is redb's default: commit returns after fsync.
        let tx = self.inner.db.begin_write().map_err(db)?;
        let out = f(&tx)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// True once anything was stored (hard state, conf state, entries or a
    /// snapshot): a restart, not a new node.
    pub fn is_initialized(&self) -> bool {
        let c = self.read();
        c.hard_state != HardState::default()
            || c.conf_state != ConfState::default()
            || c.last_index > 0
            || c.snapshot_metadata.index > 0
    }

    /// Bootstrap of a brand-new cluster: the conf state becomes these voters,
    /// exactly as `MemStorage::initialize_with_conf_state` (the log stays
    /// empty at index 0, every founding node starts from the same state).
    pub fn initialize(&self, voters: &[u64]) -> Result<(), StoreError> {
        if self.is_initialized() {
            return Err(StoreError::AlreadyInitialized);
        }
        let cs = ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        };
        self.set_conf_state(&cs)
    }

    /// Appends entries (a ready's `entries()`), dropping any conflicting
    /// suffix, in one durable transaction. Errors where `MemStorage::append`
    /// panics: entries below the first index, or a gap after the last one.
    pub fn append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.persist_ready(entries, None)
    }

    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), StoreError> {
        self.persist_ready(&[], Some(hs))
    }

    /// [`append`](Self::append) and [`set_hard_state`](Self::set_hard_state)
    /// in one transaction: what a ready asks to persist, for one fsync
    /// instead of two.
    pub fn persist_ready(
        &self,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let encoded = entries
            .iter()
            .map(|e| Ok((e.index, encode("entry", e)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let hs_bytes = hs.map(|hs| encode("hard state", hs)).transpose()?;
        if encoded.is_empty() && hs_bytes.is_none() {
            return Ok(());
        }
        let mut c = self.write();
        let first_new = entries.first().map(|e| e.index);
        if let Some(first_new) = first_new {
            if first_new < c.first_index {
                return Err(StoreError::AppendCompacted {
                    first_index: c.first_index,
                    index: first_new,
                });
            }
            if first_new > c.last_index + 1 {
                return Err(StoreError::AppendGap {
                    last_index: c.last_index,
                    index: first_new,
                });
            }
        }
        // Entries from `first_new` on that are already stored conflict
        // with the new ones (or equal them): drop them first.
        let truncate_from = first_new.filter(|i| *i <= c.last_index);
        self.transact(|tx| {
            if !encoded.is_empty() {
                let mut table = tx.open_table(ENTRIES).map_err(db)?;
                if let Some(from) = truncate_from {
                    table.retain_in(from.., |_, _| false).map_err(db)?;
                }
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(db)?;
                }
            }
            match &hs_bytes {
                Some(bytes) => put_state(tx, HARD_STATE, bytes),
                None => Ok(()),
            }
        })?;
        if let Some(last) = entries.last() {
            c.last_index = last.index;
        }
        if let Some(hs) = hs {
            c.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Updates only the commit index of the stored hard state (a light
    /// ready's commit index).
    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut c = self.write();
        let hs = HardState {
            commit,
            ..c.hard_state.clone()
        };
        let bytes = encode("hard state", &hs)?;
        self.transact(|tx| put_state(tx, HARD_STATE, &bytes))?;
        c.hard_state = hs;
        Ok(())
    }

    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        let bytes = encode("conf state", cs)?;
        let mut c = self.write();
        self.transact(|tx| put_state(tx, CONF_STATE, &bytes))?;
        c.conf_state = cs.clone();
        Ok(())
    }

    /// Installs a snapshot received from the leader (a ready's snapshot), as
    /// `MemStorage::apply_snapshot`: the whole log is dropped, the snapshot
    /// (metadata and data) stored, the conf state taken from it, and the hard
    /// state's term and commit raised to at least its term and index.
    ///
    /// The whole log goes, not only the part up to the snapshot index:
    /// raft-rs hands out a snapshot only when the local log does not hold
    /// the snapshot's (index, term) (or a snapshot was requested), so the
    /// entries after it belong to a divergent history, and raft itself
    /// considers the log to end at the snapshot index after restoring.
    ///
    /// Refuses a snapshot older than the first index with `SnapshotOutOfDate`.
    pub fn apply_snapshot(&self, mut snapshot: Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.take_metadata();
        let data = std::mem::take(&mut snapshot.data);
        let mut c = self.write();
        if c.first_index > meta.index {
            return Err(StoreError::SnapshotOutOfDate {
                index: meta.index,
                first_index: c.first_index,
            });
        }
        let hs = HardState {
            term: c.hard_state.term.max(meta.term),
            commit: c.hard_state.commit.max(meta.index),
            ..c.hard_state.clone()
        };
        let cs = meta.get_conf_state().clone();
        let hs_bytes = encode("hard state", &hs)?;
        let cs_bytes = encode("conf state", &cs)?;
        let meta_bytes = encode("snapshot metadata", &meta)?;
        self.transact(|tx| {
            tx.open_table(ENTRIES)
                .map_err(db)?
                .retain(|_, _| false)
                .map_err(db)?;
            put_state(tx, SNAPSHOT_METADATA, &meta_bytes)?;
            put_state(tx, SNAPSHOT_DATA, &data)?;
            put_state(tx, CONF_STATE, &cs_bytes)?;
            put_state(tx, HARD_STATE, &hs_bytes)
        })?;
        c.first_index = meta.index + 1;
        c.last_index = meta.index;
        c.hard_state = hs;
        c.conf_state = cs;
        c.snapshot_metadata = meta;
        Ok(())
    }

    /// Records a snapshot of the state machine at `applied` (`data` = the
    /// caller's serialized state, `conf_state` = the conf state as of
    /// `applied`) and compacts the log: entries up to and including `applied`
    /// are deleted, the first index becomes `applied + 1`, and the term of
    /// `applied` lives on in the snapshot metadata. One transaction.
    ///
    /// The stored commit index is raised to `applied` if it is behind (an
    /// applied entry is committed; the example ready loop applies a ready's
    /// committed entries before it persists that ready's hard state), since
    /// raft-rs refuses to start when the commit index is below the first
    /// index - 1.
    ///
    /// Nothing happens when `applied` is not past the current snapshot (as
    /// `MemStorage::compact` ignores compacting below the first index).
    pub fn snapshot_and_compact(
        &self,
        applied: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut c = self.write();
        if applied <= c.snapshot_metadata.index {
            return Ok(());
        }
        if applied > c.last_index {
            return Err(StoreError::CompactPastLog {
                applied,
                last_index: c.last_index,
            });
        }
        let term = self.term_in_log(&c, applied)?;
        let meta = SnapshotMetadata {
            conf_state: Some(conf_state.clone()).into(),
            index: applied,
            term,
            ..SnapshotMetadata::default()
        };
        let meta_bytes = encode("snapshot metadata", &meta)?;
        let hs = HardState {
            commit: c.hard_state.commit.max(applied),
            ..c.hard_state.clone()
        };
        let hs_bytes = (hs.commit != c.hard_state.commit)
            .then(|| encode("hard state", &hs))
            .transpose()?;
        self.transact(|tx| {
            tx.open_table(ENTRIES)
                .map_err(db)?
                .retain_in(..=applied, |_, _| false)
                .map_err(db)?;
            put_state(tx, SNAPSHOT_METADATA, &meta_bytes)?;
            put_state(tx, SNAPSHOT_DATA, &data)?;
            match &hs_bytes {
                Some(bytes) => put_state(tx, HARD_STATE, bytes),
                None => Ok(()),
            }
        })?;
        c.first_index = applied + 1;
        c.hard_state = hs;
        c.snapshot_metadata = meta;
        Ok(())
    }

    /// Reads the term of the stored entry at `index` (first..=last); the
    /// caller holds the lock (`_locked`) so the log cannot change meanwhile.
    fn term_in_log(&self, _locked: &Cached, index: u64) -> Result<u64, StoreError> {
        let tx = self.inner.db.begin_read().map_err(db)?;
        let table = tx.open_table(ENTRIES).map_err(db)?;
        let bytes = table
            .get(index)
            .map_err(db)?
            .ok_or_else(|| StoreError::Corrupt(format!("entry {index} is missing")))?;
        let entry: Entry = decode("entry", bytes.value())?;
        Ok(entry.term)
    }

    /// The stored snapshot (an empty default if none), for restoring the
    /// state machine on restart.
    pub fn stored_snapshot(&self) -> Result<Snapshot, StoreError> {
        let c = self.read();
        self.snapshot_with_data(&c)
    }

    fn snapshot_with_data(&self, c: &Cached) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(c.snapshot_metadata.clone());
        if c.snapshot_metadata.index > 0 {
            let tx = self.inner.db.begin_read().map_err(db)?;
            let table = tx.open_table(STATE).map_err(db)?;
            if let Some(data) = table.get(SNAPSHOT_DATA).map_err(db)? {
                snapshot.data = data.value().to_vec().into();
            }
        }
        Ok(snapshot)
    }

    /// Writes a key of the caller's side table durably.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.open_table(META)
                .map_err(db)?
                .insert(key, value)
                .map_err(db)?;
            Ok(())
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.inner.db.begin_read().map_err(db)?;
        let table = tx.open_table(META).map_err(db)?;
        Ok(table.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// First index available through `entries` (snapshot index + 1 when the
    /// log is empty).
    pub fn first_log_index(&self) -> u64 {
        self.read().first_index
    }

    /// Last index in the log (the snapshot index when the log is empty).
    pub fn last_log_index(&self) -> u64 {
        self.read().last_index
    }

    /// Index of the stored snapshot (0 when there is none).
    pub fn snapshot_index(&self) -> u64 {
        self.read().snapshot_metadata.index
    }

    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }

    pub fn conf_state(&self) -> ConfState {
        self.read().conf_state.clone()
    }
}

fn put_state(tx: &redb::WriteTransaction, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
    tx.open_table(STATE)
        .map_err(db)?
        .insert(key, bytes)
        .map_err(db)?;
    Ok(())
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.read();
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    /// Entries in `[low, high)`, at most `max_size` bytes but at least one.
    /// Reading stops once the limit is crossed; `limit_size` then trims
    /// exactly as raft-rs does.
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let c = self.read();
        if low < c.first_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > c.last_index + 1 {
            // MemStorage panics here ("index out of bound").
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::new();
        if low >= high {
            return Ok(out);
        }
        let read = || -> Result<Vec<Entry>, StoreError> {
            let tx = self.inner.db.begin_read().map_err(db)?;
            let table = tx.open_table(ENTRIES).map_err(db)?;
            let limit = max_size.unwrap_or(raft::NO_LIMIT);
            let mut size = 0u64;
            let mut next = low;
            for row in table.range(low..high).map_err(db)? {
                let (k, v) = row.map_err(db)?;
                if k.value() != next {
                    break;
                }
                let entry: Entry = decode("entry", v.value())?;
                size = size.saturating_add(u64::from(entry.compute_size()));
                out.push(entry);
                next += 1;
                if size > limit {
                    // Read one past the limit; limit_size decides what goes.
                    break;
                }
            }
            if size <= limit && next != high {
                return Err(StoreError::Corrupt(format!("entry {next} is missing")));
            }
            raft::util::limit_size(&mut out, max_size);
            Ok(out)
        };
        read().map_err(raft_err)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let c = self.read();
        if idx == c.snapshot_metadata.index {
            return Ok(c.snapshot_metadata.term);
        }
        if idx < c.first_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > c.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.term_in_log(&c, idx).map_err(raft_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first_index)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index)
    }

    /// The snapshot taken at the last compaction (or installed from the
    /// leader). `MemStorage` fabricates one at the commit index instead; this
    /// store has no state machine to snapshot, so when the stored one is
    /// older than `request_index` (or there is none) raft is told to retry
    /// later with `SnapshotTemporarilyUnavailable`.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let c = self.read();
        let index = c.snapshot_metadata.index;
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        self.snapshot_with_data(&c).map_err(raft_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfChange, ConfChangeType, EntryType, Message};
    use raft::{Config, RawNode, StateRole, Storage};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn size_of(e: &Entry) -> u64 {
        u64::from(e.compute_size())
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState {
            voters: ids.to_vec(),
            ..ConfState::default()
        }
    }

    fn snapshot(index: u64, term: u64, ids: &[u64], data: &[u8]) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().set_conf_state(voters(ids));
        s.data = data.to_vec().into();
        s
    }

    fn all(store: &RaftStore) -> Vec<Entry> {
        let (first, last) = (store.first_log_index(), store.last_log_index());
        store
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    /// A store whose log is `ents` (contiguous, starting after index 1):
    /// a snapshot at `ents[0].index - 1` (term = index, as MemStorage's
    /// tests number them) then an append.
    fn store_with(dir: &tempfile::TempDir, ents: &[Entry]) -> RaftStore {
        let store = RaftStore::open(dir.path()).unwrap();
        let before = ents[0].index - 1;
        store
            .apply_snapshot(snapshot(before, before, &[1, 2, 3], b""))
            .unwrap();
        store.append(ents).unwrap();
        store
    }

    fn log_3_to_5() -> Vec<Entry> {
        vec![entry(3, 3), entry(4, 4), entry(5, 5)]
    }

    #[test]
    fn term_like_mem_storage() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        let compacted = Err(raft::Error::Store(StorageError::Compacted));
        let unavailable = Err(raft::Error::Store(StorageError::Unavailable));
        assert_eq!(store.term(1), compacted);
        // The entry before the first index is answered from the snapshot.
        assert_eq!(store.term(2), Ok(2));
        assert_eq!(store.term(3), Ok(3));
        assert_eq!(store.term(4), Ok(4));
        assert_eq!(store.term(5), Ok(5));
        assert_eq!(store.term(6), unavailable);
    }

    #[test]
    fn entries_like_mem_storage_with_max_size() {
        let ents = vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 6)];
        let max = u64::MAX;
        let (s1, s2, s3) = (size_of(&ents[1]), size_of(&ents[2]), size_of(&ents[3]));
        let cases: Vec<(u64, u64, u64, raft::Result<Vec<Entry>>)> = vec![
            (2, 6, max, Err(raft::Error::Store(StorageError::Compacted))),
            (3, 4, max, Ok(vec![entry(3, 3)])),
            (4, 5, max, Ok(vec![entry(4, 4)])),
            (4, 6, max, Ok(vec![entry(4, 4), entry(5, 5)])),
            (4, 7, max, Ok(vec![entry(4, 4), entry(5, 5), entry(6, 6)])),
            // even if max_size is zero, the first entry is returned
            (4, 7, 0, Ok(vec![entry(4, 4)])),
            (4, 7, s1 + s2, Ok(vec![entry(4, 4), entry(5, 5)])),
            (4, 7, s1 + s2 + s3 / 2, Ok(vec![entry(4, 4), entry(5, 5)])),
            (4, 7, s1 + s2 + s3 - 1, Ok(vec![entry(4, 4), entry(5, 5)])),
            (
                4,
                7,
                s1 + s2 + s3,
                Ok(vec![entry(4, 4), entry(5, 5), entry(6, 6)]),
            ),
            // past the last index: an error where MemStorage panics
            (
                4,
                8,
                max,
                Err(raft::Error::Store(StorageError::Unavailable)),
            ),
            (5, 5, max, Ok(vec![])),
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &ents);
        for (i, (lo, hi, max_size, want)) in cases.into_iter().enumerate() {
            let got = store.entries(lo, hi, max_size, GetEntriesContext::empty(false));
            assert_eq!(got, want, "case {i}: entries({lo}, {hi}, {max_size})");
        }
    }

    #[test]
    fn entries_keep_their_payload() {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path()).unwrap();
        let mut e = entry(1, 1);
        e.data = b"payload".to_vec().into();
        e.context = b"ctx".to_vec().into();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        store.append(std::slice::from_ref(&e)).unwrap();
        assert_eq!(all(&store), vec![e]);
    }

    #[test]
    fn first_and_last_index() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = RaftStore::open(dir.path()).unwrap();
        assert_eq!(fresh.first_index(), Ok(1));
        assert_eq!(fresh.last_index(), Ok(0));
        drop(fresh);

        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        assert_eq!(store.first_index(), Ok(3));
        assert_eq!(store.last_index(), Ok(5));
        store.append(&[entry(6, 5)]).unwrap();
        assert_eq!(store.last_index(), Ok(6));
        store
            .snapshot_and_compact(3, &voters(&[1]), vec![])
            .unwrap();
        assert_eq!(store.first_index(), Ok(4));
        assert_eq!(store.last_index(), Ok(6));
    }

    #[test]
    fn compaction_like_mem_storage() {
        // MemStorage::compact(i) keeps entries >= i; compacting to `applied`
        // keeps entries > applied, so case i is applied = i - 1.
        // (applied, first index, term at first index, entries left)
        let cases = [(1, 3, 3, 3), (2, 3, 3, 3), (3, 4, 4, 2), (4, 5, 5, 1)];
        for (i, (applied, want_first, want_term, want_len)) in cases.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with(&dir, &log_3_to_5());
            store
                .snapshot_and_compact(applied, &voters(&[1, 2, 3]), b"state".to_vec())
                .unwrap();
            let first = store.first_index().unwrap();
            assert_eq!(first, want_first, "case {i}");
            let got = store
                .entries(first, first + 1, 1, GetEntriesContext::empty(false))
                .unwrap();
            assert_eq!(got[0].term, want_term, "case {i}");
            assert_eq!(all(&store).len(), want_len, "case {i}");
            // The compacted index's term survives in the snapshot.
            assert_eq!(store.term(first - 1), Ok(first - 1), "case {i}");
            assert_eq!(
                store.term(first - 2),
                Err(raft::Error::Store(StorageError::Compacted)),
                "case {i}"
            );
        }
    }

    #[test]
    fn compaction_raises_a_lagging_commit_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        store
            .set_hard_state(&HardState {
                term: 5,
                vote: 1,
                commit: 3,
                ..HardState::default()
            })
            .unwrap();
        store
            .snapshot_and_compact(4, &voters(&[1]), vec![])
            .unwrap();
        let want = HardState {
            term: 5,
            vote: 1,
            commit: 4,
            ..HardState::default()
        };
        assert_eq!(store.hard_state(), want);
        drop(store);
        let store = RaftStore::open(dir.path()).unwrap();
        assert_eq!(store.initial_state().unwrap().hard_state, want);
    }

    #[test]
    fn compaction_past_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        let err = store
            .snapshot_and_compact(6, &voters(&[1]), vec![])
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::CompactPastLog {
                    applied: 6,
                    last_index: 5
                }
            ),
            "{err:?}"
        );
        assert_eq!(all(&store), log_3_to_5());
    }

    #[test]
    fn snapshot_is_the_one_taken_at_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        let unavailable = Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ));
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = RaftStore::open(fresh_dir.path()).unwrap();
        assert_eq!(fresh.snapshot(0, 2), unavailable);
        assert!(fresh.stored_snapshot().unwrap().is_empty());

        store
            .snapshot_and_compact(4, &voters(&[1, 2, 3]), b"state at 4".to_vec())
            .unwrap();
        let want = snapshot(4, 4, &[1, 2, 3], b"state at 4");
        assert_eq!(store.snapshot(0, 2), Ok(want.clone()));
        assert_eq!(store.snapshot(4, 2), Ok(want.clone()));
        // Older than requested: raft retries later.
        assert_eq!(store.snapshot(5, 2), unavailable);
        assert_eq!(store.stored_snapshot().unwrap(), want);
        assert_eq!(store.snapshot_index(), 4);
        // Compacting to the snapshot index again changes nothing.
        store
            .snapshot_and_compact(4, &voters(&[1]), b"other".to_vec())
            .unwrap();
        assert_eq!(store.stored_snapshot().unwrap(), want);
    }

    #[test]
    fn append_like_mem_storage() {
        let cases: Vec<(Vec<Entry>, Option<Vec<Entry>>)> = vec![
            (log_3_to_5(), Some(log_3_to_5())),
            (
                vec![entry(3, 3), entry(4, 6), entry(5, 6)],
                Some(vec![entry(3, 3), entry(4, 6), entry(5, 6)]),
            ),
            (
                vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 5)],
                Some(vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 5)]),
            ),
            // overwriting compacted raft logs is refused
            (vec![entry(2, 3), entry(3, 3), entry(4, 5)], None),
            // truncate the conflicting suffix and append
            (vec![entry(4, 5)], Some(vec![entry(3, 3), entry(4, 5)])),
            // direct append
            (
                vec![entry(6, 6)],
                Some(vec![entry(3, 3), entry(4, 4), entry(5, 5), entry(6, 6)]),
            ),
            // a gap is refused
            (vec![entry(7, 6)], None),
        ];
        for (i, (ents, want)) in cases.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let store = store_with(&dir, &log_3_to_5());
            let res = store.append(&ents);
            match want {
                Some(want) => {
                    res.unwrap();
                    assert_eq!(all(&store), want, "case {i}");
                    assert_eq!(store.last_log_index(), want.last().unwrap().index);
                }
                None => {
                    let err = res.unwrap_err();
                    assert!(
                        matches!(
                            err,
                            StoreError::AppendCompacted { .. } | StoreError::AppendGap { .. }
                        ),
                        "case {i}: {err:?}"
                    );
                    assert_eq!(all(&store), log_3_to_5(), "case {i}: log changed");
                }
            }
        }
    }

    #[test]
    fn persist_ready_writes_entries_and_hard_state_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        let hs = HardState {
            term: 6,
            vote: 1,
            commit: 5,
            ..HardState::default()
        };
        store.persist_ready(&[entry(5, 6)], Some(&hs)).unwrap();
        assert_eq!(all(&store), vec![entry(3, 3), entry(4, 4), entry(5, 6)]);
        assert_eq!(store.hard_state(), hs);

        // A refused append writes the hard state neither.
        let newer = HardState {
            term: 7,
            ..hs.clone()
        };
        let err = store.persist_ready(&[entry(9, 7)], Some(&newer));
        assert!(matches!(err, Err(StoreError::AppendGap { .. })), "{err:?}");
        assert_eq!(store.hard_state(), hs);

        // Only a hard state.
        store.persist_ready(&[], Some(&newer)).unwrap();
        drop(store);
        let store = RaftStore::open(dir.path()).unwrap();
        assert_eq!(store.hard_state(), newer);
        assert_eq!(store.last_log_index(), 5);
    }

    #[test]
    fn truncated_suffix_stays_gone_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        store.append(&[entry(4, 7)]).unwrap();
        drop(store);
        let store = RaftStore::open(dir.path()).unwrap();
        assert_eq!(all(&store), vec![entry(3, 3), entry(4, 7)]);
        assert_eq!(store.last_index(), Ok(4));
        assert_eq!(
            store.term(5),
            Err(raft::Error::Store(StorageError::Unavailable))
        );
    }

    #[test]
    fn apply_snapshot_like_mem_storage() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        store
            .set_hard_state(&HardState {
                term: 5,
                vote: 2,
                commit: 4,
                ..HardState::default()
            })
            .unwrap();

        store
            .apply_snapshot(snapshot(7, 6, &[1, 2, 3, 4], b"leader state"))
            .unwrap();
        assert_eq!(store.first_index(), Ok(8));
        assert_eq!(store.last_index(), Ok(7));
        assert_eq!(store.term(7), Ok(6));
        assert!(all(&store).is_empty());
        let state = store.initial_state().unwrap();
        assert_eq!(state.hard_state.term, 6);
        assert_eq!(state.hard_state.vote, 2);
        assert_eq!(state.hard_state.commit, 7);
        assert_eq!(state.conf_state, voters(&[1, 2, 3, 4]));
        assert_eq!(
            store.stored_snapshot().unwrap(),
            snapshot(7, 6, &[1, 2, 3, 4], b"leader state")
        );
        // After a snapshot the log continues right after it.
        store.append(&[entry(8, 6)]).unwrap();
        assert_eq!(all(&store), vec![entry(8, 6)]);

        // An older snapshot is refused and changes nothing.
        let err = store
            .apply_snapshot(snapshot(3, 3, &[1, 2, 3], b""))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::SnapshotOutOfDate {
                    index: 3,
                    first_index: 8
                }
            ),
            "{err:?}"
        );
        assert_eq!(store.snapshot_index(), 7);
        assert_eq!(all(&store), vec![entry(8, 6)]);
    }

    #[test]
    fn snapshot_inside_the_log_drops_the_whole_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &log_3_to_5());
        store
            .apply_snapshot(snapshot(4, 9, &[1, 2, 3], b"x"))
            .unwrap();
        assert_eq!(store.first_index(), Ok(5));
        assert_eq!(store.last_index(), Ok(4));
        assert_eq!(store.term(4), Ok(9));
        assert_eq!(
            store.term(5),
            Err(raft::Error::Store(StorageError::Unavailable))
        );
    }

    #[test]
    fn initialize_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path()).unwrap();
        assert!(!store.is_initialized());
        store.set_meta("peer/2", b"127.0.0.2:7001").unwrap();
        assert!(!store.is_initialized(), "side table is not raft state");
        store.initialize(&[1, 2, 3]).unwrap();
        assert!(store.is_initialized());
        let state = store.initial_state().unwrap();
        assert!(state.initialized());
        assert_eq!(state.conf_state, voters(&[1, 2, 3]));
        assert_eq!(state.hard_state, HardState::default());
        assert_eq!(store.first_index(), Ok(1));
        assert_eq!(store.last_index(), Ok(0));
        assert_eq!(store.term(0), Ok(0));
        assert!(matches!(
            store.initialize(&[1]),
            Err(StoreError::AlreadyInitialized)
        ));
        assert_eq!(store.conf_state(), voters(&[1, 2, 3]));
    }

    #[test]
    fn a_hard_state_alone_means_initialized() {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path()).unwrap();
        store
            .set_hard_state(&HardState {
                term: 1,
                ..HardState::default()
            })
            .unwrap();
        drop(store);
        assert!(RaftStore::open(dir.path()).unwrap().is_initialized());
    }

    #[test]
    fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 3,
            vote: 1,
            commit: 6,
            ..HardState::default()
        };
        let cs = voters(&[1, 2, 3]);
        let ents: Vec<Entry> = (1..=8)
            .map(|i| {
                let mut e = entry(i, 1 + i / 3);
                e.data = format!("op {i}").into_bytes().into();
                e
            })
            .collect();
        {
            let store = RaftStore::open(dir.path()).unwrap();
            store.initialize(&[1, 2, 3]).unwrap();
            store.append(&ents).unwrap();
            store.set_hard_state(&hs).unwrap();
            store.set_commit(7).unwrap();
            store.set_conf_state(&cs).unwrap();
            store
                .snapshot_and_compact(5, &cs, b"state at 5".to_vec())
                .unwrap();
            store.set_meta("peer/2", b"127.0.0.2:7001").unwrap();
            store.set_meta("peer/2", b"127.0.0.2:7002").unwrap();
            // A clone shares the database; dropping only one keeps it open.
            let clone = store.clone();
            drop(store);
            assert_eq!(clone.last_log_index(), 8);
        }
        let store = RaftStore::open(dir.path()).unwrap();
        assert!(store.is_initialized());
        let state = store.initial_state().unwrap();
        assert_eq!(state.hard_state, HardState { commit: 7, ..hs });
        assert_eq!(state.conf_state, cs);
        assert_eq!(store.first_index(), Ok(6));
        assert_eq!(store.last_index(), Ok(8));
        assert_eq!(store.snapshot_index(), 5);
        assert_eq!(store.term(5), Ok(ents[4].term));
        assert_eq!(
            store.term(4),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        assert_eq!(all(&store), ents[5..].to_vec());
        let mut want = Snapshot::default();
        want.mut_metadata().index = 5;
        want.mut_metadata().term = ents[4].term;
        want.mut_metadata().set_conf_state(cs);
        want.data = b"state at 5".to_vec().into();
        assert_eq!(store.stored_snapshot().unwrap(), want);
        assert_eq!(store.snapshot(0, 2), Ok(want));
        assert_eq!(
            store.meta("peer/2").unwrap().as_deref(),
            Some(&b"127.0.0.2:7002"[..])
        );
        assert_eq!(store.meta("peer/3").unwrap(), None);
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let err = RaftStore::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");

        // A directory where the database file should be.
        std::fs::create_dir(dir.path().join(RAFT_FILE)).unwrap();
        let err = RaftStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains(RAFT_FILE), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn store_and_errors_can_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<RaftStore>();
        send_sync::<StoreError>();
        let err = raft_err(StoreError::Corrupt("x".into()));
        assert!(matches!(err, raft::Error::Store(StorageError::Other(_))));
    }

    /// One raft node over a `RaftStore`, with a state machine that is the
    /// list of applied payloads; its ready handling follows raft-rs's
    /// `single_mem_node` example.
    struct TestNode {
        node: RawNode<RaftStore>,
        store: RaftStore,
        applied: Vec<Vec<u8>>,
        applied_index: u64,
    }

    const HEARTBEAT_TICK: usize = 3;

    fn logger() -> slog::Logger {
        slog::Logger::root(slog::Discard, slog::o!())
    }

    impl TestNode {
        /// Starts from the store as a restarted process would: the state
        /// machine from the stored snapshot, raft told it is applied there.
        fn new(id: u64, store: RaftStore) -> Self {
            let snap = store.stored_snapshot().unwrap();
            let cfg = Config {
                id,
                election_tick: 10,
                heartbeat_tick: HEARTBEAT_TICK,
                applied: snap.get_metadata().index,
                ..Config::default()
            };
            let node = RawNode::new(&cfg, store.clone(), &logger()).unwrap();
            Self {
                node,
                store,
                applied: decode_state(&snap.data),
                applied_index: snap.get_metadata().index,
            }
        }

        fn state(&self) -> Vec<u8> {
            self.applied.join(&b'\n')
        }

        /// Handles readies until there are none; returns the messages to send.
        fn on_ready(&mut self) -> Vec<Message> {
            let mut out = Vec::new();
            while self.node.has_ready() {
                let mut ready = self.node.ready();
                out.extend(ready.take_messages());
                if !ready.snapshot().is_empty() {
                    let snap = ready.snapshot().clone();
                    self.applied = decode_state(&snap.data);
                    self.applied_index = snap.get_metadata().index;
                    self.store.apply_snapshot(snap).unwrap();
                }
                self.apply(ready.take_committed_entries());
                self.store
                    .persist_ready(ready.entries(), ready.hs())
                    .unwrap();
                out.extend(ready.take_persisted_messages());
                let mut light = self.node.advance(ready);
                if let Some(commit) = light.commit_index() {
                    self.store.set_commit(commit).unwrap();
                }
                out.extend(light.take_messages());
                self.apply(light.take_committed_entries());
                self.node.advance_apply();
            }
            out
        }

        fn apply(&mut self, entries: Vec<Entry>) {
            for e in entries {
                self.applied_index = e.index;
                match e.get_entry_type() {
                    EntryType::EntryNormal if !e.data.is_empty() => {
                        self.applied.push(e.data.to_vec());
                    }
                    EntryType::EntryConfChange => {
                        let cc: ConfChange = decode("conf change", &e.data).unwrap();
                        let cs = self.node.apply_conf_change(&cc).unwrap();
                        self.store.set_conf_state(&cs).unwrap();
                    }
                    _ => {}
                }
            }
        }

        fn propose(&mut self, data: &[u8]) {
            self.node.propose(vec![], data.to_vec()).unwrap();
        }
    }

    fn decode_state(data: &[u8]) -> Vec<Vec<u8>> {
        if data.is_empty() {
            return Vec::new();
        }
        data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
    }

    /// Delivers messages between nodes (node id = position + 1) until quiet.
    fn settle(nodes: &mut [TestNode]) {
        loop {
            let msgs: Vec<Message> = nodes.iter_mut().flat_map(|n| n.on_ready()).collect();
            if msgs.is_empty() {
                return;
            }
            for m in msgs {
                let to = usize::try_from(m.to - 1).unwrap();
                nodes[to].node.step(m).unwrap();
            }
        }
    }

    fn applied(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn raw_node_commits_and_restarts_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path()).unwrap();
        store.initialize(&[1]).unwrap();
        let mut n = TestNode::new(1, store.clone());
        n.node.campaign().unwrap();
        assert!(n.on_ready().is_empty(), "a single voter sends nothing");
        assert_eq!(n.node.raft.state, StateRole::Leader);

        n.propose(b"hello");
        n.on_ready();
        assert_eq!(n.applied, applied(&["hello"]));
        let last = store.last_log_index();
        assert_eq!(store.hard_state().commit, last);
        assert_eq!(store.hard_state().term, 1);
        assert_eq!(all(&store).last().unwrap().data, b"hello".to_vec());
        drop(n);
        drop(store);

        let store = RaftStore::open(dir.path()).unwrap();
        assert!(store.is_initialized());
        let mut n = TestNode::new(1, store.clone());
        assert_eq!(n.node.raft.raft_log.last_index(), last);
        assert_eq!(n.node.raft.raft_log.committed, last);
        // Committed entries are replayed into the (empty) state machine.
        n.on_ready();
        assert_eq!(n.applied, applied(&["hello"]));
        n.node.campaign().unwrap();
        n.on_ready();
        assert_eq!(n.node.raft.state, StateRole::Leader);
        assert_eq!(n.node.raft.term, 2);
        n.propose(b"world");
        n.on_ready();
        assert_eq!(n.applied, applied(&["hello", "world"]));
        assert_eq!(store.hard_state().commit, store.last_log_index());
    }

    #[test]
    fn raw_node_restarts_from_a_compacted_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = RaftStore::open(dir.path()).unwrap();
        store.initialize(&[1]).unwrap();
        let mut n = TestNode::new(1, store.clone());
        n.node.campaign().unwrap();
        n.on_ready();
        for op in ["a", "b", "c"] {
            n.propose(op.as_bytes());
            n.on_ready();
        }
        let cs = store.conf_state();
        store
            .snapshot_and_compact(n.applied_index, &cs, n.state())
            .unwrap();
        let compacted_at = n.applied_index;
        n.propose(b"d");
        n.on_ready();
        assert_eq!(store.first_log_index(), compacted_at + 1);
        drop(n);
        drop(store);

        let store = RaftStore::open(dir.path()).unwrap();
        let mut n = TestNode::new(1, store.clone());
        assert_eq!(n.applied, applied(&["a", "b", "c"]));
        n.on_ready();
        assert_eq!(n.applied, applied(&["a", "b", "c", "d"]));
        n.node.campaign().unwrap();
        n.on_ready();
        n.propose(b"e");
        n.on_ready();
        assert_eq!(n.applied, applied(&["a", "b", "c", "d", "e"]));
    }

    #[test]
    fn a_new_voter_catches_up_from_the_stored_snapshot() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let s1 = RaftStore::open(dirs[0].path()).unwrap();
        s1.initialize(&[1]).unwrap();
        // Node 2 starts empty, waiting to be added.
        let s2 = RaftStore::open(dirs[1].path()).unwrap();
        let mut nodes = [TestNode::new(1, s1.clone()), TestNode::new(2, s2.clone())];
        nodes[0].node.campaign().unwrap();
        settle(&mut nodes);
        nodes[0].propose(b"a");
        nodes[0].propose(b"b");
        settle(&mut nodes);

        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = 2;
        nodes[0].node.propose_conf_change(vec![], cc).unwrap();
        nodes[0].on_ready();
        assert_eq!(s1.conf_state(), voters(&[1, 2]));
        // Compact before node 2 has anything: it can only catch up from
        // the snapshot.
        let at = nodes[0].applied_index;
        let state = nodes[0].state();
        s1.snapshot_and_compact(at, &voters(&[1, 2]), state)
            .unwrap();
        assert_eq!(s1.first_log_index(), at + 1);

        nodes[0].propose(b"c");
        settle(&mut nodes);
        // The leader sends a snapshot only to a peer it has heard from
        // (`recent_active`): a new peer answers its first heartbeat.
        assert_eq!(s2.snapshot_index(), 0);
        for _ in 0..HEARTBEAT_TICK {
            nodes[0].node.tick();
        }
        settle(&mut nodes);
        assert_eq!(s2.snapshot_index(), at);
        assert_eq!(s2.conf_state(), voters(&[1, 2]));
        assert_eq!(nodes[1].applied, applied(&["a", "b", "c"]));
        assert_eq!(nodes[0].applied, applied(&["a", "b", "c"]));
        assert_eq!(s2.last_log_index(), s1.last_log_index());
        assert_eq!(s2.hard_state().commit, s1.hard_state().commit);

        // Node 2 restarts from its own store.
        drop(nodes);
        drop(s2);
        let s2 = RaftStore::open(dirs[1].path()).unwrap();
        let mut n2 = TestNode::new(2, s2);
        n2.on_ready();
        assert_eq!(n2.applied, applied(&["a", "b", "c"]));
    }
}
