//! The inventory: every host host-manager knows, its state and how it was
//! found.
//!
//! Hosts that report are read from what the writers already keep
//! (`monitor:hosts:{host}`: `last_seen`, labels), so the ingest path does
//! no extra work per point. What only host-manager knows (how a host was
//! found, its address, when it was first seen and when it went down,
//! registered labels) is kept in Redis beside it, under the seed's key
//! space: `monitor:inventory` (SET of ids) and `monitor:inventory:{host}`
//! (HASH), written only when one of those fields changes. ADR 0004 says
//! why Redis and not cluster-ctl's raft state.

use broker_common::config::HostManagerConfig;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use query_api::store::Store;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

/// SET of every inventory id.
pub const INVENTORY_SET: &str = "monitor:inventory";

pub fn inventory_key(id: &str) -> String {
    format!("monitor:inventory:{{{id}}}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Up,
    Stale,
    Down,
    Discovered,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Up => "up",
            HostState::Stale => "stale",
            HostState::Down => "down",
            HostState::Discovered => "discovered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            HostState::Up,
            HostState::Stale,
            HostState::Down,
            HostState::Discovered,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Agent,
    Registration,
    Scan,
    Multicast,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Agent => "agent",
            Source::Registration => "registration",
            Source::Scan => "scan",
            Source::Multicast => "multicast",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "registration" => Source::Registration,
            "scan" => Source::Scan,
            "multicast" => Source::Multicast,
            _ => Source::Agent,
        }
    }
}

/// One host, as `/api/hosts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRecord {
    pub id: String,
    pub state: HostState,
    /// Unix seconds of its newest point (0: none).
    pub last_seen: i64,
    pub source: Source,
    /// `ip` or `ip:port`; empty when unknown.
    pub addr: String,
    /// The agent's labels, then registered ones on top.
    pub labels: BTreeMap<String, String>,
    pub first_seen: i64,
    /// Unix seconds it went down (0: not down).
    pub down_since: i64,
    /// Ports the scan found open.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub open_ports: Vec<u16>,
    /// Labels given by registration (kept in the inventory key).
    #[serde(skip)]
    pub registered: BTreeMap<String, String>,
}

/// What is persisted of a record (the rest comes from the writers' data);
/// beside each record, what was last written.
#[derive(Debug, Clone, PartialEq, Default)]
struct Persisted {
    source: String,
    addr: String,
    first_seen: i64,
    down_since: i64,
    labels: BTreeMap<String, String>,
    open_ports: Vec<u16>,
}

/// A host's state from the age of its newest point: `up` within 3 report
/// intervals, `stale` after, `down` once `down_after` has passed;
/// `discovered` when it never reported.
pub fn state_of(
    last_seen: i64,
    now: i64,
    report_interval: Duration,
    down_after: Duration,
) -> HostState {
    if last_seen <= 0 {
        return HostState::Discovered;
    }
    let age = now.saturating_sub(last_seen).max(0) as u64;
    if age >= down_after.as_secs() {
        HostState::Down
    } else if age > 3 * report_interval.as_secs() {
        HostState::Stale
    } else {
        HostState::Up
    }
}

/// What the writers' metadata says of a host that reports.
struct Reported {
    id: String,
    last_seen: i64,
    labels: BTreeMap<String, String>,
}

/// A change of a host's state, for alerts and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub id: String,
    pub from: Option<HostState>,
    pub to: HostState,
}

pub struct Inventory {
    hosts: RwLock<BTreeMap<String, (HostRecord, Persisted)>>,
    redis: Client,
    store: Store,
    report_interval: Duration,
    down_after: Duration,
}

fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::FirstKey, false)
}

fn persisted_of(r: &HostRecord) -> Persisted {
    Persisted {
        source: r.source.as_str().into(),
        addr: r.addr.clone(),
        first_seen: r.first_seen,
        down_since: r.down_since,
        labels: r.registered.clone(),
        open_ports: r.open_ports.clone(),
    }
}

/// An id for a host found only by its address: the address itself, which
/// is a valid host id (`127.0.0.1`, `fd00--1` for IPv6).
pub fn id_of_addr(ip: &std::net::IpAddr) -> String {
    ip.to_string().replace(':', "-")
}

impl Inventory {
    pub fn new(config: &HostManagerConfig, redis: Client, store: Store) -> Self {
        Self {
            hosts: RwLock::default(),
            redis,
            store,
            report_interval: config.report_interval,
            down_after: config.down_after,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, (HostRecord, Persisted)>> {
        self.hosts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, (HostRecord, Persisted)>> {
        self.hosts.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every host, sorted by id; only `state` when given.
    pub fn list(&self, state: Option<HostState>) -> Vec<HostRecord> {
        self.read()
            .values()
            .map(|(r, _)| r.clone())
            .filter(|r| state.is_none_or(|s| r.state == s))
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<HostRecord> {
        self.read().get(id).map(|(r, _)| r.clone())
    }

    /// Reads what earlier runs persisted (after a restart).
    pub async fn load(&self) -> Result<usize, fred::error::Error> {
        let ids: Vec<String> = self
            .redis
            .custom::<Value, _>(cmd("SMEMBERS"), vec![INVENTORY_SET])
            .await?
            .into_array()
            .into_iter()
            .filter_map(|v| v.as_string())
            .collect();
        let mut loaded = BTreeMap::new();
        for id in ids {
            let v: Value = self
                .redis
                .custom(cmd("HGETALL"), vec![inventory_key(&id)])
                .await?;
            let fields: BTreeMap<String, String> = match v {
                Value::Map(m) => m
                    .inner()
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_string()?)))
                    .collect(),
                Value::Array(a) => a
                    .chunks(2)
                    .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.as_string()?)))
                    .collect(),
                _ => BTreeMap::new(),
            };
            if fields.is_empty() {
                continue;
            }
            let num = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            let p = Persisted {
                source: fields.get("source").cloned().unwrap_or_default(),
                addr: fields.get("addr").cloned().unwrap_or_default(),
                first_seen: num("first_seen"),
                down_since: num("down_since"),
                labels: fields
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("label:")?.to_string(), v.clone())))
                    .collect(),
                open_ports: fields
                    .get("open_ports")
                    .map(|s| s.split(',').filter_map(|p| p.parse().ok()).collect())
                    .unwrap_or_default(),
            };
            let r = HostRecord {
                id: id.clone(),
                state: if p.down_since > 0 {
                    HostState::Down
                } else {
                    HostState::Discovered
                },
                last_seen: 0,
                source: Source::parse(&p.source),
                addr: p.addr.clone(),
                labels: p.labels.clone(),
                first_seen: p.first_seen,
                down_since: p.down_since,
                open_ports: p.open_ports.clone(),
                registered: p.labels.clone(),
            };
            loaded.insert(id, (r, p));
        }
        let n = loaded.len();
        let mut hosts = self.write();
        for (id, v) in loaded {
            hosts.entry(id).or_insert(v);
        }
        Ok(n)
    }

    async fn persist(&self, id: &str, p: &Persisted) -> Result<(), fred::error::Error> {
        let key = inventory_key(id);
        let mut args: Vec<Value> = vec![
            key.clone().into(),
            "source".into(),
            p.source.clone().into(),
            "addr".into(),
            p.addr.clone().into(),
            "first_seen".into(),
            p.first_seen.into(),
            "down_since".into(),
            p.down_since.into(),
            "open_ports".into(),
            p.open_ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
                .into(),
        ];
        for (k, v) in &p.labels {
            args.push(format!("label:{k}").into());
            args.push(v.clone().into());
        }
        // The whole hash is rewritten, so labels no longer registered go.
        let _: Value = self.redis.custom(cmd("DEL"), vec![key]).await?;
        let _: Value = self.redis.custom(cmd("HSET"), args).await?;
        let _: Value = self
            .redis
            .custom(cmd("SADD"), vec![Value::from(INVENTORY_SET), id.into()])
            .await?;
        Ok(())
    }

    /// Persists every record whose persisted fields changed.
    async fn flush(&self) {
        let dirty: Vec<(String, Persisted)> = {
            let hosts = self.read();
            hosts
                .iter()
                .filter_map(|(id, (r, p))| {
                    let now = persisted_of(r);
                    (now != *p).then(|| (id.clone(), now))
                })
                .collect()
        };
        for (id, p) in dirty {
            match self.persist(&id, &p).await {
                Ok(()) => {
                    if let Some((_, old)) = self.write().get_mut(&id) {
                        *old = p;
                    }
                }
                Err(e) => {
                    tracing::warn!(host = %id, error = %e, "persisting inventory record failed, will retry")
                }
            }
        }
    }

    /// Rebuilds states from the writers' host metadata at `now` (Unix
    /// seconds), persists what changed, and returns the state changes.
    pub async fn refresh(&self, now: i64) -> Result<Vec<Transition>, query_api::QueryError> {
        let ids = self.store.host_ids().await?;
        let metas = self.store.host_metas(&ids).await?;
        let mut transitions = Vec::new();
        {
            let mut hosts = self.write();
            for (id, meta) in ids.into_iter().zip(metas) {
                let Some(meta) = meta else { continue };
                let info = Reported {
                    id,
                    last_seen: meta.last_seen.unwrap_or(0),
                    labels: meta.labels,
                };
                let entry = hosts.entry(info.id.clone()).or_insert_with(|| {
                    let r = HostRecord {
                        id: info.id.clone(),
                        state: HostState::Discovered,
                        last_seen: 0,
                        source: Source::Agent,
                        addr: String::new(),
                        labels: BTreeMap::new(),
                        first_seen: if info.last_seen > 0 {
                            info.last_seen.min(now)
                        } else {
                            now
                        },
                        down_since: 0,
                        open_ports: Vec::new(),
                        registered: BTreeMap::new(),
                    };
                    (r, Persisted::default())
                });
                let (r, _) = entry;
                r.last_seen = r.last_seen.max(info.last_seen);
                let mut labels = info.labels.clone();
                labels.extend(r.registered.clone());
                r.labels = labels;
                if r.addr.is_empty()
                    && let Some(a) = info.labels.get("addr").or_else(|| info.labels.get("ip"))
                {
                    r.addr = a.clone();
                }
            }
            for (r, _) in hosts.values_mut() {
                let state = state_of(r.last_seen, now, self.report_interval, self.down_after);
                if state != r.state {
                    transitions.push(Transition {
                        id: r.id.clone(),
                        from: Some(r.state),
                        to: state,
                    });
                    if state == HostState::Down {
                        if r.down_since == 0 {
                            r.down_since =
                                (r.last_seen + self.down_after.as_secs() as i64).min(now);
                        }
                    } else if state != HostState::Discovered {
                        r.down_since = 0;
                    }
                    r.state = state;
                }
            }
        }
        self.flush().await;
        Ok(transitions)
    }

    /// Registers (or updates) a host: by an agent or an operator, or by
    /// discovery. Labels given replace the registered ones; an existing
    /// host keeps how it was first found unless this is a registration.
    pub async fn register(
        &self,
        id: &str,
        addr: &str,
        labels: BTreeMap<String, String>,
        source: Source,
        now: i64,
    ) -> HostRecord {
        let record = {
            let mut hosts = self.write();
            let (r, _) = hosts.entry(id.to_string()).or_insert_with(|| {
                (
                    HostRecord {
                        id: id.to_string(),
                        state: HostState::Discovered,
                        last_seen: 0,
                        source,
                        addr: String::new(),
                        labels: BTreeMap::new(),
                        first_seen: now,
                        down_since: 0,
                        open_ports: Vec::new(),
                        registered: BTreeMap::new(),
                    },
                    Persisted::default(),
                )
            });
            if source == Source::Registration {
                r.source = source;
            }
            if !addr.is_empty() {
                r.addr = addr.to_string();
            }
            if !labels.is_empty() || source == Source::Registration {
                // the agent's labels stay; registered ones go on top
                for k in r.registered.keys() {
                    r.labels.remove(k);
                }
                r.labels.extend(labels.clone());
                r.registered = labels;
            }
            r.clone()
        };
        self.flush().await;
        record
    }

    /// A scan found `ports` open on `ip`: the host with that address (or
    /// id) gets them; otherwise a new `discovered` host named after it.
    pub async fn scanned(&self, ip: std::net::IpAddr, ports: Vec<u16>, now: i64) {
        let ip_s = ip.to_string();
        let id = {
            let hosts = self.read();
            hosts
                .values()
                .find(|(r, _)| {
                    r.id == id_of_addr(&ip)
                        || r.addr == ip_s
                        || r.addr.rsplit_once(':').is_some_and(|(h, _)| h == ip_s)
                })
                .map(|(r, _)| r.id.clone())
        };
        let id = id.unwrap_or_else(|| id_of_addr(&ip));
        let mut r = self
            .register(&id, "", BTreeMap::new(), Source::Scan, now)
            .await;
        if r.addr.is_empty() {
            r.addr = ip_s;
        }
        {
            let mut hosts = self.write();
            if let Some((rec, _)) = hosts.get_mut(&id) {
                rec.addr = r.addr.clone();
                rec.open_ports = ports;
            }
        }
        self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_the_age_of_the_newest_point() {
        let (ri, down) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(state_of(0, 1000, ri, down), HostState::Discovered);
        assert_eq!(state_of(1000, 1000, ri, down), HostState::Up);
        assert_eq!(state_of(985, 1000, ri, down), HostState::Up);
        assert_eq!(state_of(984, 1000, ri, down), HostState::Stale);
        assert_eq!(state_of(941, 1000, ri, down), HostState::Stale);
        assert_eq!(state_of(940, 1000, ri, down), HostState::Down);
        // a point from the future (clock skew) is up, not negative age
        assert_eq!(state_of(1010, 1000, ri, down), HostState::Up);
    }

    #[test]
    fn addresses_make_valid_host_ids() {
        assert_eq!(id_of_addr(&"127.0.0.1".parse().unwrap()), "127.0.0.1");
        assert_eq!(id_of_addr(&"::1".parse().unwrap()), "--1");
    }
}
