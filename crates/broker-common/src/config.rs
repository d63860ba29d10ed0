//! The `broker.yaml` schema.
//!
//! One file configures a whole process; each service reads its own section
//! and ignores the others, so the same file works for the all-in-one binary
//! and for separate processes. Precedence, lowest first: built-in defaults,
//! the YAML file, `BROKER_*` environment variables, `--set key=value` flags.
//! Unknown keys are rejected wherever they come from.
//!
//! Each section is a module with its structs, its defaults as named
//! constants and a `validate` that reports every problem of the section
//! with its key; [`BrokerConfig::validate`] checks the top-level keys and
//! asks each section, so one run names every problem.
//!
//! # Layout
//! - this module: the top-level keys, loading (file, environment, flags)
//!   and [`ConfigError`].
//! - `gateway`, `router`, `writer`, `query`, `cluster` (with
//!   `cluster_ctl`), `host_manager`, `security`: one section each.
//!
//! `writer.layout` and `writer.migrate_from` stay strings checked in
//! `validate` rather than serde enums: serde stops at the first value it
//! cannot read, and a bad layout is to be reported with every other
//! problem (as `router.hash`, an enum, cannot be).

mod cluster;
mod gateway;
mod host_manager;
mod query;
mod router;
mod security;
mod writer;

pub use cluster::*;
pub use gateway::*;
pub use host_manager::*;
pub use query::*;
pub use router::*;
pub use security::*;
pub use writer::*;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_NODE_ID: &str = "broker-1";
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:9093";
/// Connections each listening port holds open at once; agents hold one
/// each, so a gateway takes this many agents (raise the process's open
/// files limit with it).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Of those, from one peer address: one host (or a flood from it) cannot
/// take a whole port.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 1_000;
/// Bytes of incomplete gRPC messages the process holds at once, across
/// every stream and call: eight of the largest messages the agents' port
/// takes.
pub const DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT: usize = 128 << 20;
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9190";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Seed: points live 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Prefix of environment overrides: `BROKER_WRITER__REDIS_URL=...` sets
/// `writer.redis_url` (`__` separates levels).
pub const ENV_PREFIX: &str = "BROKER_";

/// Variables with [`ENV_PREFIX`] that are not config keys: the config file
/// itself (`--config`), the tools' security flags and the load
/// generator's flags. Every other
/// `BROKER_*` name must be a key, so a typo is an error, not ignored.
fn env_is_reserved(name: &str) -> bool {
    matches!(
        name,
        "BROKER_CONFIG"
            | "BROKER_TOKEN"
            | "BROKER_TOKEN_FILE"
            | "BROKER_TLS_CA"
            | "BROKER_TLS_CERT"
            | "BROKER_TLS_KEY"
    ) || name.starts_with("BROKER_LOADGEN_")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// This process's name in logs, metrics and (for a writer) the ring.
    pub node_id: String,
    /// gRPC port of the services clients call: the agents' stream
    /// (ingest-gateway), queries, host-manager.
    pub grpc_listen: SocketAddr,
    /// gRPC port of the services other broker processes call: shard-router,
    /// storage-writer, cluster-ctl (raft and membership). Unset, they share
    /// `grpc_listen`, except beside an ingest-gateway: the agents' port
    /// never serves them, so they are then reached in-process only (and a
    /// cluster member that needs them reachable must set this). Members
    /// advertise this address when it is set.
    pub internal_listen: Option<SocketAddr>,
    /// Connections each listening port holds open at once; one more is
    /// closed on accept.
    pub max_connections: usize,
    /// Of `max_connections`, how many one peer address may hold (agents
    /// behind one NAT address share it).
    pub max_connections_per_peer: usize,
    /// Bytes of gRPC messages and HTTP request bodies still arriving that
    /// the process holds at once, all streams, calls and requests
    /// together; one that finds no room waits, then its call ends with
    /// RESOURCE_EXHAUSTED (HTTP: 503 with Retry-After).
    pub max_request_bytes_in_flight: usize,
    /// Admin HTTP port: /health, /ready, /metrics.
    pub http_listen: SocketAddr,
    /// How long shutdown may take to drain and flush before it gives up.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long points live in Redis; the gateway rejects points older than
    /// this, since they would expire on arrival.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    pub telemetry: TelemetryConfig,
    pub gateway: GatewayConfig,
    pub router: RouterConfig,
    pub writer: WriterConfig,
    pub cluster: ClusterConfig,
    pub cluster_ctl: ClusterCtlConfig,
    pub query: QueryConfig,
    pub host_manager: HostManagerConfig,
    pub security: SecurityConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: DEFAULT_NODE_ID.into(),
            grpc_listen: DEFAULT_GRPC_LISTEN.parse().expect("valid default"),
            http_listen: DEFAULT_HTTP_LISTEN.parse().expect("valid default"),
            internal_listen: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_request_bytes_in_flight: DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            ttl: DEFAULT_TTL,
            telemetry: TelemetryConfig::default(),
            gateway: GatewayConfig::default(),
            router: RouterConfig::default(),
            writer: WriterConfig::default(),
            cluster: ClusterConfig::default(),
            cluster_ctl: ClusterCtlConfig::default(),
            query: QueryConfig::default(),
            host_manager: HostManagerConfig::default(),
            security: SecurityConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` for people, `json` for log shippers.
    pub log_format: LogFormat,
    /// A tracing filter (`info`, `storage_writer=debug,info`); `RUST_LOG`
    /// wins when set.
    pub log_level: String,
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`. Off when empty.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: "info".into(),
            otlp_endpoint: None,
        }
    }
}

/// One problem with the configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid configuration:\n  {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<ConfigProblem>),
}

/// Where a config comes from; see the module docs for precedence.
#[derive(Debug, Default, Clone)]
pub struct ConfigSource<'a> {
    pub file: Option<&'a Path>,
    /// Environment, passed in so tests can inject it.
    pub env: Vec<(String, String)>,
    /// `key.path=value` pairs from `--set` and dedicated flags.
    pub overrides: Vec<(String, String)>,
}

impl BrokerConfig {
    /// Loads and validates: file, then environment, then overrides.
    pub fn load(source: &ConfigSource<'_>) -> Result<Self, ConfigError> {
        let mut doc = match source.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    source: e,
                })?;
                if text.trim().is_empty() {
                    Value::Mapping(Default::default())
                } else {
                    serde_yaml_ng::from_str::<Value>(&text).map_err(|e| ConfigError::Parse {
                        origin: path.display().to_string(),
                        message: e.to_string(),
                    })?
                }
            }
            None => Value::Mapping(Default::default()),
        };
        // Which keys came from the environment or flags, to name the origin
        // of a bad value or unknown key.
        let mut origins: Vec<(String, String)> = Vec::new();
        for (name, value) in &source.env {
            if let Some(path) = name.strip_prefix(ENV_PREFIX)
                && !env_is_reserved(name)
            {
                let key = path.to_ascii_lowercase().replace("__", ".");
                let origin = format!("environment variable {name}");
                set_path(&mut doc, &key, value).map_err(|message| ConfigError::Parse {
                    origin: origin.clone(),
                    message,
                })?;
                origins.push((key, origin));
            }
        }
        for (key, value) in &source.overrides {
            let origin = format!("flag --set {key}");
            set_path(&mut doc, key, value).map_err(|message| ConfigError::Parse {
                origin: origin.clone(),
                message,
            })?;
            origins.push((key.clone(), origin));
        }
        let config: BrokerConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            let origin = origins
                .iter()
                .rev()
                .find(|(k, _)| {
                    path == *k
                        || path.starts_with(&format!("{k}."))
                        || path.starts_with(&format!("{k}["))
                })
                .map(|(_, o)| o.clone())
                .or_else(|| source.file.map(|p| p.display().to_string()))
                .unwrap_or_else(|| "configuration".into());
            ConfigError::Parse {
                origin,
                message: format!("{path}: {}", e.into_inner()),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reports every problem at once, each with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let mut bad = |key: &str, problem: String| {
            p.push(ConfigProblem {
                key: key.into(),
                problem,
            })
        };
        if self.node_id.is_empty() || !self.node_id.bytes().all(id_byte) {
            bad(
                "node_id",
                format!(
                    "{:?} must be non-empty and use only letters, digits, '.', '_' or '-'",
                    self.node_id
                ),
            );
        }
        if self.grpc_listen == self.http_listen && self.grpc_listen.port() != 0 {
            bad(
                "http_listen",
                format!("{} is the same as grpc_listen", self.http_listen),
            );
        }
        if let Some(i) = self.internal_listen
            && i.port() != 0
        {
            for (key, other) in [
                ("grpc_listen", self.grpc_listen),
                ("http_listen", self.http_listen),
            ] {
                if i == other {
                    bad("internal_listen", format!("{i} is the same as {key}"));
                }
            }
        }
        positive(&mut bad, "max_connections", self.max_connections);
        positive(
            &mut bad,
            "max_connections_per_peer",
            self.max_connections_per_peer,
        );
        if self.max_request_bytes_in_flight < self.gateway.max_message_bytes {
            bad(
                "max_request_bytes_in_flight",
                format!(
                    "{} is less than gateway.max_message_bytes ({}): the largest message could never be taken",
                    self.max_request_bytes_in_flight, self.gateway.max_message_bytes
                ),
            );
        }
        if self.ttl < Duration::from_secs(60) {
            bad("ttl", format!("{:?} is shorter than one minute", self.ttl));
        }
        self.gateway.validate(&mut bad);
        self.router.validate(&mut bad);
        self.writer.validate(&mut bad);
        self.query.validate(&mut bad);
        self.cluster.validate(&mut bad);
        self.cluster_ctl.validate(&mut bad);
        self.host_manager.validate(&mut bad);
        for (key, problem) in self.security.problems() {
            bad(&key, problem);
        }
        // Secure by default off loopback: anyone who reaches a plain port
        // has every role (forged raft input, joins, writes).
        let exposed: Vec<String> = [
            ("grpc_listen", Some(self.grpc_listen)),
            ("http_listen", Some(self.http_listen)),
            ("internal_listen", self.internal_listen),
        ]
        .into_iter()
        .filter_map(|(k, a)| {
            a.filter(|a| !a.ip().is_loopback())
                .map(|a| format!("{k} {a}"))
        })
        .collect();
        let missing = self.security.missing_off_loopback();
        if !self.security.insecure && !exposed.is_empty() && !missing.is_empty() {
            bad(
                "security",
                format!(
                    "{} is not on loopback, and {} unset: anyone who reaches it could act as any role. \
                     Turn on TLS and tokens (`broker certs --out DIR --host NAME` prints a security section), \
                     or set security.insecure: true (BROKER_SECURITY__INSECURE=true) to serve it plain on purpose",
                    exposed.join(", "),
                    missing.join(", ")
                ),
            );
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }

    /// The gRPC address other services reach this process at: its
    /// internal listener when it has one.
    pub fn advertise_addr(&self) -> String {
        self.advertise_addr_for(self.internal_listen.unwrap_or(self.grpc_listen))
    }

    /// As [`Self::advertise_addr`] for a process whose gRPC listener is
    /// bound at `grpc` (port 0 in tests resolves to the real port):
    /// `cluster.advertise_addr`, else `https://` (TLS on) or `http://`.
    pub fn advertise_addr_for(&self, grpc: SocketAddr) -> String {
        if self.cluster.advertise_addr.is_empty() {
            format!("{}://{grpc}", self.security.tls.scheme())
        } else {
            self.cluster.advertise_addr.clone()
        }
    }

    /// The annotated defaults, as YAML.
    pub fn defaults_yaml() -> String {
        serde_yaml_ng::to_string(&BrokerConfig::default()).expect("defaults serialize")
    }
}

/// URL schemes the Redis client is built for.
const REDIS_SCHEMES: [&str; 3] = ["redis://", "redis-cluster://", "redis-sentinel://"];

/// An empty URL (unset) or one of [`REDIS_SCHEMES`]. TLS schemes are
/// refused by name: fred is built without TLS, and would otherwise connect
/// in plaintext to a `rediss://` URL without a word.
pub(crate) fn check_redis_url(url: &str) -> Result<(), String> {
    if url.is_empty() || REDIS_SCHEMES.iter().any(|s| url.starts_with(s)) {
        return Ok(());
    }
    if url.starts_with("rediss") || url.starts_with("valkeys") {
        return Err(format!(
            "{url:?}: TLS to Redis is not built in (it would silently connect in plaintext); \
             reach Redis over a private network or a TLS tunnel, with redis://"
        ));
    }
    Err(format!(
        "{url:?} must start with redis://, redis-cluster:// or redis-sentinel://"
    ))
}

pub(crate) fn id_byte(b: u8) -> bool {
    crate::host_id::byte(b)
}

pub(crate) fn positive(bad: &mut impl FnMut(&str, String), key: &str, v: usize) {
    if v == 0 {
        bad(key, "must be greater than zero".into());
    }
}

pub(crate) fn nonzero_duration(bad: &mut impl FnMut(&str, String), key: &str, v: Duration) {
    if v.is_zero() {
        bad(key, "must be greater than zero".into());
    }
}

pub(crate) fn check_endpoint(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{s:?} must start with http:// or https://"))?;
    let host_port = rest.trim_end_matches('/');
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{s:?} must be http://host:port")),
    }
}

/// Sets `a.b.c` in a YAML document to `raw`, parsed as a YAML scalar (or a
/// flow sequence/mapping such as `[a, b]`).
fn set_path(doc: &mut Value, key: &str, raw: &str) -> Result<(), String> {
    let parsed: Value = serde_yaml_ng::from_str(raw)
        .map_err(|e| format!("value {raw:?} is not valid YAML: {e}"))?;
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("key {key:?} is malformed"));
    }
    let mut cur = doc;
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_mapping() {
            if cur.is_null() {
                *cur = Value::Mapping(Default::default());
            } else {
                return Err(format!("{} is not a section", parts[..i].join(".")));
            }
        }
        let map = cur.as_mapping_mut().expect("mapping");
        let k = Value::String((*part).to_string());
        if i == parts.len() - 1 {
            map.insert(k, parsed);
            return Ok(());
        }
        cur = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_str(
        yaml: &str,
        env: &[(&str, &str)],
        set: &[(&str, &str)],
    ) -> Result<BrokerConfig, ConfigError> {
        let mut f = tempfile_like();
        f.1.write_all(yaml.as_bytes()).unwrap();
        BrokerConfig::load(&ConfigSource {
            file: Some(&f.0),
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            overrides: set
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        })
    }

    fn tempfile_like() -> (std::path::PathBuf, std::fs::File) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "broker-config-test-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let f = std::fs::File::create(&path).unwrap();
        (path, f)
    }

    #[test]
    fn tls_redis_urls_are_refused_by_name() {
        for url in [
            "rediss://127.0.0.1:6379",
            "rediss-cluster://a:1",
            "valkeys://a:1",
        ] {
            let e = load_str(&format!("writer:\n  redis_url: {url}\n"), &[], &[]).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("writer.redis_url"), "{text}");
            assert!(text.contains("TLS to Redis is not built in"), "{text}");
        }
        assert!(load_str("query:\n  redis_url: redis://127.0.0.1:1\n", &[], &[]).is_ok());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load_str("", &[], &[]).unwrap();
        assert_eq!(c, BrokerConfig::default());
        assert_eq!(c.ttl, Duration::from_secs(604_800));
    }

    #[test]
    fn example_file_in_repo_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../broker.yaml");
        let c = BrokerConfig::load(&ConfigSource {
            file: Some(&path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.grpc_listen.port(), 9093);
    }

    #[test]
    fn precedence_file_env_flag() {
        let c = load_str(
            "writer:\n  pool_size: 2\n  redis_url: redis://127.0.0.1:1\n",
            &[
                ("BROKER_WRITER__POOL_SIZE", "3"),
                ("OTHER", "x"),
                // Not keys: the file's own variable, the load generator's.
                ("BROKER_CONFIG", "/etc/broker/broker.yaml"),
                ("BROKER_LOADGEN_ENDPOINTS", "http://127.0.0.1:9093"),
            ],
            &[("writer.redis_url", "redis://127.0.0.1:2")],
        )
        .unwrap();
        assert_eq!(c.writer.pool_size, 3);
        assert_eq!(c.writer.redis_url, "redis://127.0.0.1:2");
    }

    #[test]
    fn durations_and_lists_parse() {
        let c = load_str(
            "ttl: 2d\nrouter:\n  writers:\n    - {id: w1, addr: 'http://127.0.0.1:9095'}\n    - {id: w2, addr: 'http://127.0.0.1:9096', weight: 2}\n",
            &[],
            &[("gateway.routers", "[http://127.0.0.1:9094]")],
        )
        .unwrap();
        assert_eq!(c.ttl, Duration::from_secs(2 * 86_400));
        assert_eq!(c.router.writers[1].weight, 2);
        assert_eq!(c.gateway.routers, vec!["http://127.0.0.1:9094".to_string()]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load_str("writer:\n  redis_ulr: x\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis_ulr"), "{e}");
        let e = load_str("", &[("BROKER_GATEWAY__NOPE", "1")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope") && e.contains("BROKER_GATEWAY__NOPE"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let e = load_str(
            "node_id: 'bad id'\nrouter:\n  vnodes: 0\n  writers:\n    - {id: w, addr: 'localhost'}\n    - {id: w, addr: 'http://127.0.0.1:1', weight: 0}\nwriter:\n  redis_url: mysql://x\n  layout: other\n",
            &[],
            &[],
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = e else {
            panic!("expected validation errors, got {e}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "node_id",
            "router.vnodes",
            "router.writers[0].addr",
            "router.writers[1].id",
            "router.writers[1].weight",
            "writer.redis_url",
            "writer.layout",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }
}
