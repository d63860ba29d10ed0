//! The host metadata hash both layouts keep (the seed's
//! `monitor:hosts:{host}`): `last_seen`, `label:<name>` fields and
//! counters. The `{host}` braces are a Redis Cluster hash tag, so every key
//! of one host lives in one slot.

use bytes::Bytes;
use std::collections::BTreeMap;

pub const LAST_SEEN_FIELD: &str = "last_seen";
pub const POINTS_WRITTEN_FIELD: &str = "points_written";
pub const LABEL_FIELD_PREFIX: &str = "label:";
/// SCAN `MATCH` pattern of every host metadata key (and possibly more:
/// check each key with [`host_of_key`]).
pub const HOST_KEY_PATTERN: &str = "monitor:hosts:{*}";

/// What a layout keeps about a host, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostMeta {
    /// Timestamp of the newest point written (`None` if never set).
    pub last_seen: Option<i64>,
    pub labels: BTreeMap<String, String>,
    /// Writes including retries (not distinct points); the seed layout
    /// counts them, the chunked one does not.
    pub points_written: u64,
}

pub fn host_key(host: &str) -> String {
    format!("monitor:hosts:{{{host}}}")
}

/// The host of a metadata key; `None` if `key` is not one.
pub fn host_of_key(key: &str) -> Option<String> {
    let host = key.strip_prefix("monitor:hosts:{")?.strip_suffix('}')?;
    (!host.is_empty() && !host.contains(['{', '}'])).then(|| host.to_string())
}

/// A host metadata hash (field, value pairs as HGETALL returns them).
pub fn decode(fields: &[(Bytes, Bytes)]) -> HostMeta {
    let mut meta = HostMeta::default();
    for (k, v) in fields {
        let (Ok(k), Ok(v)) = (std::str::from_utf8(k), std::str::from_utf8(v)) else {
            continue;
        };
        if k == LAST_SEEN_FIELD {
            meta.last_seen = v.parse().ok();
        } else if k == POINTS_WRITTEN_FIELD {
            meta.points_written = v.parse().unwrap_or(0);
        } else if let Some(label) = k.strip_prefix(LABEL_FIELD_PREFIX) {
            meta.labels.insert(label.to_string(), v.to_string());
        }
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_fields_read_back() {
        let key = host_key("web-1.a_b");
        assert_eq!(host_of_key(&key).as_deref(), Some("web-1.a_b"));
        assert_eq!(host_of_key("monitor:hosts:{}"), None);
        assert_eq!(host_of_key("monitor:index:metrics:{h}"), None);
        let fields: Vec<(Bytes, Bytes)> = [
            ("last_seen", "105"),
            ("label:role", "web"),
            ("label:dc", "x:y"),
            ("points_written", "7"),
            ("other", "1"),
        ]
        .iter()
        .map(|(a, b)| (Bytes::from(*a), Bytes::from(*b)))
        .collect();
        let meta = decode(&fields);
        assert_eq!(meta.last_seen, Some(105));
        assert_eq!(meta.points_written, 7);
        assert_eq!(meta.labels.len(), 2);
        assert_eq!(meta.labels["dc"], "x:y");
    }
}
