//! The answers of a storage-writer's dead-letter queue API (`/api/dlq` on
//! its admin port): the writer serialises them, [`crate::AdminClient`] and
//! `brokerctl dlq` read them. They live here, not in the writer, so a
//! client links no Redis client or embedded store.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Hosts named in a list entry; `show` has every point.
pub const LISTED_HOSTS: usize = 5;
/// Entries per list call unless asked otherwise, and at most.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 10_000;

/// One entry in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntrySummary {
    pub id: u64,
    /// When it was dead-lettered, RFC 3339 (UTC).
    pub time: String,
    pub time_unix_ms: i64,
    /// `node_id` of the writer that dead-lettered it.
    pub writer: String,
    /// Redis's error replies, with the command and key each answered.
    pub reason: String,
    pub points: usize,
    /// The first [`LISTED_HOSTS`] distinct hosts.
    pub hosts: Vec<String>,
    pub hosts_total: usize,
    /// Size of the stored entry.
    pub bytes: u64,
    pub replay_attempts: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_replay_error: String,
}

/// `GET /api/dlq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryList {
    /// The writer answering.
    pub writer: String,
    /// Entries and bytes in the whole queue (not only this page).
    pub records: u64,
    pub bytes: u64,
    pub entries: Vec<EntrySummary>,
}

/// One point of an entry, metrics by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointView {
    pub host: String,
    pub timestamp: i64,
    /// Milliseconds past `timestamp` (remote write, OTLP).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub millis: u32,
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// `GET /api/dlq/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryDetail {
    #[serde(flatten)]
    pub summary: EntrySummary,
    pub points_detail: Vec<PointView>,
}

/// `POST /api/dlq/{id}/replay` and `DELETE /api/dlq/{id}`: what was
/// written to Redis (or discarded); the entry is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryDone {
    pub id: u64,
    pub points: usize,
    pub hosts: Vec<String>,
}

/// One entry a replay-all could not finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryFailure {
    pub id: u64,
    pub error: String,
}

/// `POST /api/dlq/replay`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplayAll {
    /// Entries fully stored and deleted, and their points.
    pub replayed: usize,
    pub points: usize,
    /// Entries Redis still refuses (some of) — kept.
    pub refused: Vec<EntryFailure>,
    /// Set when Redis could not be reached: the replay stopped at that
    /// entry (the HTTP answer is then 503, with this body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Entries left in the queue afterwards.
    pub remaining: u64,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
