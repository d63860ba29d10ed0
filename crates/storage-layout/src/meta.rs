//! The host metadata hash both layouts keep (the seed's
//! `monitor:hosts:{host}`): `last_seen`, `label:<name>` fields and
//! counters. The `{host}` braces are a Redis Cluster hash tag, so every key
//! of one host lives in one slot.

use crate::exec::Command;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

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
    /// Every other integer field (the chunked layout's `open_points` and
    /// `sealed_points`), for the layout to read its counters from.
    pub counters: BTreeMap<String, i64>,
}

pub fn host_key(host: &str) -> String {
    format!("monitor:hosts:{{{host}}}")
}

/// The host of a metadata key; `None` if `key` is not one.
pub fn host_of_key(key: &str) -> Option<String> {
    let host = key.strip_prefix("monitor:hosts:{")?.strip_suffix('}')?;
    (!host.is_empty() && !host.contains(['{', '}'])).then(|| host.to_string())
}

/// How a write stands in time against what Redis may already hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Live traffic, in time order per host (an agent's stream through
    /// the host's writer): the metadata is set plainly (HSET, HINCRBY).
    Live,
    /// A replay (the spool's backlog, a dead-letter entry) that newer
    /// points may have overtaken, through another writer while this one
    /// was down: the metadata only moves forward (one script per host,
    /// dearer for Redis than the plain commands).
    Late,
}

/// KEYS: the host's metadata hash. ARGV: last_seen, counter field, count,
/// label field/value pairs. `last_seen` and the labels are set only when
/// they are not older than what the hash holds; the counter always adds.
/// Labels go in slices so that no `unpack` outgrows Lua's stack.
const FORWARD_SCRIPT: &str = r#"
local k, t = KEYS[1], tonumber(ARGV[1])
local seen = tonumber(redis.call('HGET', k, 'last_seen'))
if not seen or seen <= t then
  redis.call('HSET', k, 'last_seen', ARGV[1])
  for i = 4, #ARGV, 1000 do
    redis.call('HSET', k, unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
return redis.call('HINCRBY', k, ARGV[2], ARGV[3])
"#;

/// Appends the commands that update a host's metadata hash after a write:
/// `last_seen` and the `labels` of the host's newest point, and `counter`
/// grown by `count`. A [`Arrival::Late`] write never takes `last_seen` or
/// the labels back in time, so host-manager does not see a live host go
/// stale because an old backlog was replayed.
pub fn update(
    out: &mut Vec<Command>,
    arrival: Arrival,
    host_key: Bytes,
    last_seen: i64,
    labels: Option<&HashMap<String, String>>,
    counter: &'static str,
    count: i64,
) {
    let n = labels.map_or(0, |l| l.len());
    let mut fields = Vec::with_capacity(2 + 2 * n);
    fields.push(Bytes::from_static(LAST_SEEN_FIELD.as_bytes()));
    fields.push(Bytes::from(last_seen.to_string()));
    if let Some(labels) = labels {
        let mut sorted: Vec<_> = labels.iter().collect();
        sorted.sort();
        for (k, v) in sorted {
            fields.push(Bytes::from(format!("{LABEL_FIELD_PREFIX}{k}")));
            fields.push(Bytes::copy_from_slice(v.as_bytes()));
        }
    }
    let counter = Bytes::from_static(counter.as_bytes());
    let count = Bytes::from(count.to_string());
    match arrival {
        Arrival::Live => {
            let mut hset = Vec::with_capacity(1 + fields.len());
            hset.push(host_key.clone());
            hset.extend(fields);
            out.push(Command::new("HSET", hset));
            out.push(Command::new("HINCRBY", vec![host_key, counter, count]));
        }
        Arrival::Late => {
            let mut args = Vec::with_capacity(1 + fields.len());
            let mut fields = fields.into_iter().skip(1);
            args.extend(fields.next()); // last_seen's value
            args.push(counter);
            args.push(count);
            args.extend(fields);
            out.push(Command::eval(FORWARD_SCRIPT, vec![host_key], args));
        }
    }
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
        } else if let Ok(n) = v.parse() {
            meta.counters.insert(k.to_string(), n);
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
        assert_eq!(meta.counters.get("other"), Some(&1));
    }
}
