//! The `broker.yaml` schema.
//!
//! One file configures a whole process; each service reads its own section
//! and ignores the others, so the same file works for the all-in-one binary
//! and for separate processes. Precedence, lowest first: built-in defaults,
//! the YAML file, `BROKER_*` environment variables, `--set key=value` flags.
//! Unknown keys are rejected wherever they come from.

mod host_manager;
mod security;

pub use host_manager::*;
pub use security::*;

use hash_ring::{HashAlgorithm, NodeSpec, RingConfig};
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
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9190";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Seed: points live 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub const DEFAULT_MAX_POINTS_PER_BATCH: usize = 10_000;
pub const DEFAULT_MAX_METRICS_PER_POINT: usize = 1_024;
pub const DEFAULT_MAX_HOST_ID_LEN: usize = 128;
/// Room for a remote-written series' labels in its name
/// (`node_exporter_build_info{branch="...",goversion="...",...}`).
pub const DEFAULT_MAX_METRIC_NAME_LEN: usize = 256;
pub const DEFAULT_MAX_LABELS_PER_POINT: usize = 32;
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// One stream per agent for 10,000 agents on one gateway.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
pub const DEFAULT_MAX_INFLIGHT_BATCHES_PER_STREAM: usize = 16;
pub const DEFAULT_MAX_INFLIGHT_POINTS: usize = 200_000;
/// Long enough for the router to go through its retries (1 s, 2 s, 4 s plus
/// write deadlines) before the gateway gives up on a batch.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Longer than the writer's `redis_timeout` plus a spool append, so a
/// writer that is falling back to its spool answers before the router
/// gives up on it.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A forward unanswered this long (at least; see `router.hedge`) is also
/// sent to the points' next ring owners.
pub const DEFAULT_HEDGE_MIN_DELAY: Duration = Duration::from_millis(300);
/// Hedges a writer loses in a row before it is marked down.
pub const DEFAULT_HEDGE_EJECT_AFTER: u32 = 3;
/// Seed: back off 1 s, 2 s, 4 s.
pub const DEFAULT_RETRY_ATTEMPTS: usize = 3;
pub const DEFAULT_RETRY_INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(4);

/// Measured with `broker-bench ingest`: two connections kept Redis busier
/// than four (fewer, fuller pipelines), see docs/benchmarks.md.
pub const DEFAULT_REDIS_POOL_SIZE: usize = 2;
pub const DEFAULT_BATCH_MAX_POINTS: usize = 5_000;
pub const DEFAULT_BATCH_MAX_DELAY: Duration = Duration::from_millis(2);
pub const DEFAULT_MAX_QUEUED_POINTS: usize = 100_000;
pub const DEFAULT_MAX_CONCURRENT_PIPELINES: usize = 4;
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SPOOL_DIR: &str = "data/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// Key layouts `writer.layout` and `writer.migrate_from` can name.
pub const LAYOUTS: &[&str] = &["seed", "chunked"];
pub const DEFAULT_CHUNK_POINTS: usize = 240;
/// Points per chunk at most: a seal merges at most eight chunks' worth.
pub const MAX_CHUNK_POINTS: usize = 100_000;
pub const DEFAULT_CHUNK_MAX_OPEN: Duration = Duration::from_secs(30 * 60);

/// Seed: members beat every second and are offline after 3 missed beats.
pub const DEFAULT_MEMBER_HEARTBEAT: Duration = Duration::from_secs(1);
pub const DEFAULT_LEASE_MISSED_BEATS: u32 = 3;
/// Raft timing (seed): heartbeat about 500 ms, election about 1 s, in ticks
/// of 100 ms.
pub const DEFAULT_RAFT_TICK: Duration = Duration::from_millis(100);
pub const DEFAULT_RAFT_HEARTBEAT_TICKS: usize = 5;
pub const DEFAULT_RAFT_ELECTION_TICKS: usize = 10;
/// Applied entries between two snapshots (the log before one is compacted).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000;
pub const DEFAULT_RAFT_DATA_DIR: &str = "data/raft";

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Shard-router endpoints (`http://host:port`), used round robin with
    /// failover. Empty means the router in this same process.
    pub routers: Vec<String>,
    pub max_points_per_batch: usize,
    pub max_metrics_per_point: usize,
    pub max_host_id_len: usize,
    pub max_metric_name_len: usize,
    pub max_labels_per_point: usize,
    /// Points stamped further than this ahead of the gateway's clock are
    /// rejected (clock skew allowance).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Largest encoded message accepted on the agent stream.
    pub max_message_bytes: usize,
    /// Batches of one stream being stored at once; past this the gateway
    /// stops reading the stream, so HTTP/2 flow control slows the agent.
    pub max_inflight_batches_per_stream: usize,
    /// Points being stored at once across all streams (same mechanism).
    pub max_inflight_points: usize,
    /// Agent streams open at once; a stream past this is refused with
    /// RESOURCE_EXHAUSTED (each may hold a message being decoded).
    pub max_streams: usize,
    /// Deadline of one gateway -> router call.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Prometheus remote write (`POST /api/v1/write`): the label whose
    /// value names the host (its `:port` dropped). The series' other
    /// labels stay with the metric name.
    pub remote_write_host_label: String,
    /// OTLP metrics (gRPC `MetricsService/Export`, HTTP `/v1/metrics`):
    /// the resource attribute whose value names the host.
    pub otlp_host_attribute: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            routers: Vec::new(),
            max_points_per_batch: DEFAULT_MAX_POINTS_PER_BATCH,
            max_metrics_per_point: DEFAULT_MAX_METRICS_PER_POINT,
            max_host_id_len: DEFAULT_MAX_HOST_ID_LEN,
            max_metric_name_len: DEFAULT_MAX_METRIC_NAME_LEN,
            max_labels_per_point: DEFAULT_MAX_LABELS_PER_POINT,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_inflight_batches_per_stream: DEFAULT_MAX_INFLIGHT_BATCHES_PER_STREAM,
            max_inflight_points: DEFAULT_MAX_INFLIGHT_POINTS,
            max_streams: DEFAULT_MAX_STREAMS,
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
            remote_write_host_label: "instance".into(),
            otlp_host_attribute: "host.name".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt (seed: 3, backing off 1 s, 2 s, 4 s).
    pub max_retries: usize,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_RETRY_ATTEMPTS,
            initial_backoff: DEFAULT_RETRY_INITIAL_BACKOFF,
            max_backoff: DEFAULT_RETRY_MAX_BACKOFF,
        }
    }
}

/// A storage-writer in the static membership list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterEndpoint {
    /// Ring identity; placement hashes this id, so keep it stable.
    pub id: String,
    /// `http://host:port` of the writer's gRPC server.
    pub addr: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl WriterEndpoint {
    pub fn node_spec(&self) -> NodeSpec {
        NodeSpec::new(self.id.clone()).with_weight(self.weight)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Virtual nodes per unit of weight.
    pub vnodes: u32,
    /// `crc32` (seed-compatible) or `xxh3`.
    pub hash: HashAlgorithm,
    /// Static membership. Empty means the writer in this same process,
    /// named after `node_id`.
    pub writers: Vec<WriterEndpoint>,
    /// Deadline of one router -> writer call.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    pub retry: RetryConfig,
    pub hedge: HedgeConfig,
}

/// Hedged forwarding: what the router does about a writer that stops
/// answering without failing (see `shard_router::hedge`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgeConfig {
    /// A forward unanswered for max(this, 3 x the writer's recent p95) is
    /// also sent to the points' next ring owners; 0s turns hedging off.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Hedges in a row a writer loses (the copy answered first) before it
    /// is marked down; 0 never marks it down for slowness.
    pub eject_after: u32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            min_delay: DEFAULT_HEDGE_MIN_DELAY,
            eject_after: DEFAULT_HEDGE_EJECT_AFTER,
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        let ring = RingConfig::default();
        Self {
            vnodes: ring.vnodes,
            // ADR 0001: xxh3 balances the ring far better than CRC32;
            // `crc32` keeps the seed's exact placement.
            hash: HashAlgorithm::Xxh3,
            writers: Vec::new(),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            retry: RetryConfig::default(),
            hedge: HedgeConfig::default(),
        }
    }
}

impl RouterConfig {
    pub fn ring(&self) -> RingConfig {
        RingConfig {
            vnodes: self.vnodes,
            hash: self.hash,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// `redis://`, `redis-cluster://` or `redis-sentinel://` URL. Empty
    /// means none: `broker up` then launches a local redis-server.
    pub redis_url: String,
    /// Redis connections, used round robin.
    pub pool_size: usize,
    /// Send write pipelines as one pre-encoded RESP buffer on a plain
    /// connection per pool slot, to the server fred is connected to
    /// (standalone and sentinel; Redis Cluster always uses fred). `false`
    /// sends them through fred, command by command (ADR 0006).
    pub direct_pipelines: bool,
    /// Key layout: `seed` (the original design's, a HASH per point) or
    /// `chunked` (compressed chunks per host, a few bytes per sample).
    pub layout: String,
    /// During a migration, the layout written before `layout`: readers
    /// read both and merge them until its data has aged out (one `ttl`
    /// after the switch); then remove it. Empty: no migration.
    pub migrate_from: String,
    /// Chunked layout: points per sealed chunk.
    pub chunk_points: usize,
    /// Chunked layout: a host's open chunk is sealed once its oldest point
    /// was written this long ago, even with fewer than `chunk_points`.
    #[serde(with = "humantime_serde")]
    pub chunk_max_open: Duration,
    /// A pipeline is sent when it holds this many points...
    pub batch_max_points: usize,
    /// ...or when its first point has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
    /// Points accepted but not yet written; past this, writes wait.
    pub max_queued_points: usize,
    /// Pipelines in flight to Redis at once.
    pub max_concurrent_pipelines: usize,
    /// Deadline of one pipeline round trip.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Directory of the write-ahead spool used while Redis is unavailable
    /// (fsync'ed before the ack, replayed in order). Empty disables it:
    /// writes then fail while Redis is down and senders retry.
    pub spool_dir: String,
    /// When the spool holds this much, writes are refused with
    /// RESOURCE_EXHAUSTED until it drains.
    pub spool_max_bytes: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            pool_size: DEFAULT_REDIS_POOL_SIZE,
            direct_pipelines: true,
            layout: "seed".into(),
            migrate_from: String::new(),
            chunk_points: DEFAULT_CHUNK_POINTS,
            chunk_max_open: DEFAULT_CHUNK_MAX_OPEN,
            batch_max_points: DEFAULT_BATCH_MAX_POINTS,
            batch_max_delay: DEFAULT_BATCH_MAX_DELAY,
            max_queued_points: DEFAULT_MAX_QUEUED_POINTS,
            max_concurrent_pipelines: DEFAULT_MAX_CONCURRENT_PIPELINES,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            spool_dir: DEFAULT_SPOOL_DIR.into(),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
        }
    }
}

/// How this process takes part in cluster membership (client side of
/// cluster-ctl).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// cluster-ctl gRPC endpoints (`http://host:port`, any node will do).
    /// Empty: static membership (`router.writers`, epoch 1), no cluster-ctl.
    pub endpoints: Vec<String>,
    /// Where other broker processes reach this one's internal gRPC
    /// services. Empty means `http://` (or `https://`) + `internal_listen`,
    /// or `grpc_listen` when that is unset.
    pub advertise_addr: String,
    /// This writer's relative share of the ring (1 to 100).
    pub weight: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            advertise_addr: String::new(),
            weight: 1,
        }
    }
}

/// A cluster-ctl voter: raft id and the gRPC address of its cluster-ctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftPeer {
    pub id: u64,
    pub addr: String,
}

/// The cluster-ctl service (server side): its raft node and member leases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterCtlConfig {
    /// Raft id of this node, unique among the voters, 1 or more.
    pub id: u64,
    /// The voters a new cluster starts with, this node included (3 or 5
    /// for production). Used only to bootstrap an empty data_dir; later
    /// changes go through `brokerctl` (AddVoter / RemoveVoter). Empty: a
    /// single-node cluster of this node.
    pub peers: Vec<RaftPeer>,
    /// Start empty and wait to be added as a voter by an existing cluster
    /// instead of bootstrapping one from `peers`.
    pub join_existing: bool,
    /// Raft log, hard state and snapshots (redb).
    pub data_dir: String,
    /// One raft tick; heartbeats and elections are counted in ticks.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    pub heartbeat_ticks: usize,
    /// Minimum election timeout in ticks (raft-rs randomises it between
    /// this and twice this).
    pub election_ticks: usize,
    /// Applied entries between snapshots; the log before a snapshot is
    /// compacted.
    pub snapshot_every: u64,
    /// How often members must beat.
    #[serde(with = "humantime_serde")]
    pub member_heartbeat: Duration,
    /// Beats a member may miss before the leader marks it offline.
    pub lease_missed_beats: u32,
}

impl Default for ClusterCtlConfig {
    fn default() -> Self {
        Self {
            id: 1,
            peers: Vec::new(),
            join_existing: false,
            data_dir: DEFAULT_RAFT_DATA_DIR.into(),
            tick: DEFAULT_RAFT_TICK,
            heartbeat_ticks: DEFAULT_RAFT_HEARTBEAT_TICKS,
            election_ticks: DEFAULT_RAFT_ELECTION_TICKS,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            member_heartbeat: DEFAULT_MEMBER_HEARTBEAT,
            lease_missed_beats: DEFAULT_LEASE_MISSED_BEATS,
        }
    }
}

/// Snapshots read per Redis pipeline by query-api (HGETALL / HMGET batch).
pub const DEFAULT_QUERY_READ_BATCH: usize = 256;
/// How long a range or aggregation result is served from query-api's cache.
pub const DEFAULT_QUERY_CACHE_TTL: Duration = Duration::from_secs(60);
/// A range ending less than this before now may still receive points (agents
/// send every 5 s, the path adds a little): such results are "fresh".
pub const DEFAULT_QUERY_FRESH_WINDOW: Duration = Duration::from_secs(15);
/// Fresh results are cached this long only, so a dashboard refreshing every
/// few seconds never sees data older than this.
pub const DEFAULT_QUERY_FRESH_CACHE_TTL: Duration = Duration::from_secs(1);
pub const DEFAULT_QUERY_CACHE_MAX_BYTES: u64 = 256 << 20;
/// The host list (SCAN of host keys) is reused this long.
pub const DEFAULT_QUERY_HOSTS_CACHE_TTL: Duration = Duration::from_secs(5);
/// Longest range a query may ask for: the default `ttl`, older data is gone.
pub const DEFAULT_QUERY_MAX_RANGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Snapshots (range) or buckets (aggregation, per series) in one answer.
pub const DEFAULT_QUERY_MAX_POINTS: usize = 50_000;
/// Snapshots one query may read from Redis (an aggregation over many hosts).
pub const DEFAULT_QUERY_MAX_POINTS_SCANNED: usize = 2_000_000;
pub const DEFAULT_QUERY_MAX_HOSTS: usize = 1_000;
/// Metric names one point or range query may name.
pub const DEFAULT_QUERY_MAX_METRICS: usize = 256;
/// Entries of one list answer (hosts, label names or values, series).
pub const DEFAULT_QUERY_MAX_SERIES: usize = 10_000;
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Prometheus's default lookback delta for instant vector selectors.
pub const DEFAULT_QUERY_LOOKBACK: Duration = Duration::from_secs(300);

/// query-api: point, range, aggregation and host queries over Redis, the
/// Prometheus-compatible read API and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Redis to read. Empty means `writer.redis_url` (the Redis the writers
    /// of this deployment write).
    pub redis_url: String,
    /// Redis connections, used round robin.
    pub pool_size: usize,
    /// Snapshots fetched per pipeline.
    pub read_batch: usize,
    /// Time to live of cached range and aggregation results.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Results whose range ends less than this before now are fresh...
    #[serde(with = "humantime_serde")]
    pub fresh_window: Duration,
    /// ...and are cached only this long (0s: not cached at all).
    #[serde(with = "humantime_serde")]
    pub fresh_cache_ttl: Duration,
    /// Bound of the result cache, estimated bytes.
    pub cache_max_bytes: u64,
    /// How long the host list is reused before Redis is scanned again.
    #[serde(with = "humantime_serde")]
    pub hosts_cache_ttl: Duration,
    /// Longest `end - start` a query may ask for.
    #[serde(with = "humantime_serde")]
    pub max_range: Duration,
    /// Snapshots (range) or buckets per series (aggregation) in one answer.
    pub max_points: usize,
    /// Snapshots one query may read from Redis.
    pub max_points_scanned: usize,
    /// Hosts one aggregation or PromQL selector may cover.
    pub max_hosts: usize,
    /// Metric names one point or range query may name.
    pub max_metrics: usize,
    /// Entries one list answer carries at most: the host list (then paged
    /// with `after`), label names, label values and series (then cut,
    /// with a warning, as Prometheus's `limit` does).
    pub max_series: usize,
    /// Deadline of one query.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PromQL lookback: an instant selector takes the latest sample this far
    /// back.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            pool_size: DEFAULT_REDIS_POOL_SIZE,
            read_batch: DEFAULT_QUERY_READ_BATCH,
            cache_ttl: DEFAULT_QUERY_CACHE_TTL,
            fresh_window: DEFAULT_QUERY_FRESH_WINDOW,
            fresh_cache_ttl: DEFAULT_QUERY_FRESH_CACHE_TTL,
            cache_max_bytes: DEFAULT_QUERY_CACHE_MAX_BYTES,
            hosts_cache_ttl: DEFAULT_QUERY_HOSTS_CACHE_TTL,
            max_range: DEFAULT_QUERY_MAX_RANGE,
            max_points: DEFAULT_QUERY_MAX_POINTS,
            max_points_scanned: DEFAULT_QUERY_MAX_POINTS_SCANNED,
            max_hosts: DEFAULT_QUERY_MAX_HOSTS,
            max_metrics: DEFAULT_QUERY_MAX_METRICS,
            max_series: DEFAULT_QUERY_MAX_SERIES,
            timeout: DEFAULT_QUERY_TIMEOUT,
            lookback: DEFAULT_QUERY_LOOKBACK,
        }
    }
}

impl QueryConfig {
    /// The Redis URL query-api reads: `query.redis_url`, else
    /// `writer.redis_url`.
    pub fn effective_redis_url<'a>(&'a self, writer: &'a WriterConfig) -> &'a str {
        if self.redis_url.is_empty() {
            &writer.redis_url
        } else {
            &self.redis_url
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
        if self.ttl < Duration::from_secs(60) {
            bad("ttl", format!("{:?} is shorter than one minute", self.ttl));
        }
        let g = &self.gateway;
        for (i, r) in g.routers.iter().enumerate() {
            if let Err(e) = check_endpoint(r) {
                bad(&format!("gateway.routers[{i}]"), e);
            }
        }
        positive(
            &mut bad,
            "gateway.max_points_per_batch",
            g.max_points_per_batch,
        );
        positive(
            &mut bad,
            "gateway.max_metrics_per_point",
            g.max_metrics_per_point,
        );
        positive(&mut bad, "gateway.max_host_id_len", g.max_host_id_len);
        positive(
            &mut bad,
            "gateway.max_metric_name_len",
            g.max_metric_name_len,
        );
        positive(&mut bad, "gateway.max_message_bytes", g.max_message_bytes);
        positive(&mut bad, "gateway.max_streams", g.max_streams);
        positive(
            &mut bad,
            "gateway.max_inflight_batches_per_stream",
            g.max_inflight_batches_per_stream,
        );
        if g.max_inflight_points < g.max_points_per_batch {
            bad(
                "gateway.max_inflight_points",
                format!(
                    "{} is smaller than gateway.max_points_per_batch ({}), so a full batch could never be admitted",
                    g.max_inflight_points, g.max_points_per_batch
                ),
            );
        }
        nonzero_duration(&mut bad, "gateway.forward_timeout", g.forward_timeout);
        if g.remote_write_host_label.is_empty() {
            bad(
                "gateway.remote_write_host_label",
                "must name a label (Prometheus's is `instance`)".to_string(),
            );
        }
        if g.otlp_host_attribute.is_empty() {
            bad(
                "gateway.otlp_host_attribute",
                "must name a resource attribute (OpenTelemetry's is `host.name`)".to_string(),
            );
        }
        let r = &self.router;
        if !(1..=10_000).contains(&r.vnodes) {
            bad(
                "router.vnodes",
                format!("must be between 1 and 10000, got {}", r.vnodes),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, w) in r.writers.iter().enumerate() {
            if w.id.is_empty() || !w.id.bytes().all(id_byte) {
                bad(
                    &format!("router.writers[{i}].id"),
                    format!(
                        "{:?} must be non-empty and use only letters, digits, '.', '_' or '-'",
                        w.id
                    ),
                );
            }
            if !seen.insert(&w.id) {
                bad(
                    &format!("router.writers[{i}].id"),
                    format!("duplicate writer id {:?}", w.id),
                );
            }
            if let Err(e) = check_endpoint(&w.addr) {
                bad(&format!("router.writers[{i}].addr"), e);
            }
            if !(1..=100).contains(&w.weight) {
                bad(
                    &format!("router.writers[{i}].weight"),
                    format!("must be between 1 and 100, got {}", w.weight),
                );
            }
        }
        nonzero_duration(&mut bad, "router.write_timeout", r.write_timeout);
        if !r.hedge.min_delay.is_zero() && r.hedge.min_delay >= r.write_timeout {
            bad(
                "router.hedge.min_delay",
                format!(
                    "{:?} is not shorter than router.write_timeout ({:?}): a hedge would never start",
                    r.hedge.min_delay, r.write_timeout
                ),
            );
        }
        if r.retry.initial_backoff > r.retry.max_backoff {
            bad(
                "router.retry.initial_backoff",
                format!(
                    "{:?} is larger than router.retry.max_backoff ({:?})",
                    r.retry.initial_backoff, r.retry.max_backoff
                ),
            );
        }
        let w = &self.writer;
        if let Err(e) = check_redis_url(&w.redis_url) {
            bad("writer.redis_url", e);
        }
        positive(&mut bad, "writer.pool_size", w.pool_size);
        if !LAYOUTS.contains(&w.layout.as_str()) {
            bad(
                "writer.layout",
                format!(
                    "unknown layout {:?}, valid layouts are: {}",
                    w.layout,
                    LAYOUTS.join(", ")
                ),
            );
        }
        if !w.migrate_from.is_empty() && !LAYOUTS.contains(&w.migrate_from.as_str()) {
            bad(
                "writer.migrate_from",
                format!(
                    "unknown layout {:?}, valid layouts are: {} (or empty)",
                    w.migrate_from,
                    LAYOUTS.join(", ")
                ),
            );
        }
        positive(&mut bad, "writer.chunk_points", w.chunk_points);
        if w.chunk_points > MAX_CHUNK_POINTS {
            bad(
                "writer.chunk_points",
                format!("{} is more than {MAX_CHUNK_POINTS}", w.chunk_points),
            );
        }
        if w.chunk_max_open.is_zero() {
            bad("writer.chunk_max_open", "must be more than 0".to_string());
        }
        positive(&mut bad, "writer.batch_max_points", w.batch_max_points);
        positive(
            &mut bad,
            "writer.max_concurrent_pipelines",
            w.max_concurrent_pipelines,
        );
        if w.max_queued_points < w.batch_max_points {
            bad(
                "writer.max_queued_points",
                format!(
                    "{} is smaller than writer.batch_max_points ({})",
                    w.max_queued_points, w.batch_max_points
                ),
            );
        }
        nonzero_duration(&mut bad, "writer.redis_timeout", w.redis_timeout);
        if !w.spool_dir.is_empty() && w.spool_max_bytes < 1 << 20 {
            bad(
                "writer.spool_max_bytes",
                format!("{} is less than 1 MiB", w.spool_max_bytes),
            );
        }
        let q = &self.query;
        if let Err(e) = check_redis_url(&q.redis_url) {
            bad("query.redis_url", e);
        }
        positive(&mut bad, "query.pool_size", q.pool_size);
        positive(&mut bad, "query.read_batch", q.read_batch);
        positive(&mut bad, "query.max_points", q.max_points);
        positive(&mut bad, "query.max_hosts", q.max_hosts);
        positive(&mut bad, "query.max_metrics", q.max_metrics);
        positive(&mut bad, "query.max_series", q.max_series);
        if q.max_points_scanned < q.max_points {
            bad(
                "query.max_points_scanned",
                format!(
                    "{} is smaller than query.max_points ({})",
                    q.max_points_scanned, q.max_points
                ),
            );
        }
        if q.max_range < Duration::from_secs(60) {
            bad(
                "query.max_range",
                format!("{:?} is shorter than one minute", q.max_range),
            );
        }
        nonzero_duration(&mut bad, "query.timeout", q.timeout);
        nonzero_duration(&mut bad, "query.lookback", q.lookback);
        if q.fresh_cache_ttl > q.cache_ttl {
            bad(
                "query.fresh_cache_ttl",
                format!(
                    "{:?} is longer than query.cache_ttl ({:?})",
                    q.fresh_cache_ttl, q.cache_ttl
                ),
            );
        }
        let c = &self.cluster;
        for (i, e) in c.endpoints.iter().enumerate() {
            if let Err(e) = check_endpoint(e) {
                bad(&format!("cluster.endpoints[{i}]"), e);
            }
        }
        if !c.advertise_addr.is_empty()
            && let Err(e) = check_endpoint(&c.advertise_addr)
        {
            bad("cluster.advertise_addr", e);
        }
        if !(1..=100).contains(&c.weight) {
            bad(
                "cluster.weight",
                format!("must be between 1 and 100, got {}", c.weight),
            );
        }
        let cc = &self.cluster_ctl;
        if cc.id == 0 {
            bad(
                "cluster_ctl.id",
                "must be 1 or more (0 is raft's none)".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for (i, peer) in cc.peers.iter().enumerate() {
            if peer.id == 0 {
                bad(
                    &format!("cluster_ctl.peers[{i}].id"),
                    "must be 1 or more".into(),
                );
            }
            if !ids.insert(peer.id) {
                bad(
                    &format!("cluster_ctl.peers[{i}].id"),
                    format!("duplicate raft id {}", peer.id),
                );
            }
            if let Err(e) = check_endpoint(&peer.addr) {
                bad(&format!("cluster_ctl.peers[{i}].addr"), e);
            }
        }
        if !cc.peers.is_empty() && !ids.contains(&cc.id) && !cc.join_existing {
            bad(
                "cluster_ctl.peers",
                format!(
                    "does not list this node (cluster_ctl.id {}); list every voter, this one included",
                    cc.id
                ),
            );
        }
        nonzero_duration(&mut bad, "cluster_ctl.tick", cc.tick);
        positive(&mut bad, "cluster_ctl.heartbeat_ticks", cc.heartbeat_ticks);
        if cc.election_ticks <= cc.heartbeat_ticks {
            bad(
                "cluster_ctl.election_ticks",
                format!(
                    "{} must be larger than cluster_ctl.heartbeat_ticks ({})",
                    cc.election_ticks, cc.heartbeat_ticks
                ),
            );
        }
        if cc.snapshot_every == 0 {
            bad(
                "cluster_ctl.snapshot_every",
                "must be greater than zero".into(),
            );
        }
        nonzero_duration(
            &mut bad,
            "cluster_ctl.member_heartbeat",
            cc.member_heartbeat,
        );
        if cc.lease_missed_beats == 0 {
            bad(
                "cluster_ctl.lease_missed_beats",
                "must be greater than zero".into(),
            );
        }
        self.host_manager.validate(&mut bad);
        for (key, problem) in self.security.problems() {
            bad(&key, problem);
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

fn id_byte(b: u8) -> bool {
    crate::host_id::byte(b)
}

fn positive(bad: &mut impl FnMut(&str, String), key: &str, v: usize) {
    if v == 0 {
        bad(key, "must be greater than zero".into());
    }
}

fn nonzero_duration(bad: &mut impl FnMut(&str, String), key: &str, v: Duration) {
    if v.is_zero() {
        bad(key, "must be greater than zero".into());
    }
}

fn check_endpoint(s: &str) -> Result<(), String> {
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
