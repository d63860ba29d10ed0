//! The integration-test harness: start broker services in this process on
//! loopback listeners (the very `run` functions the binaries call), talk to
//! them over real gRPC, and read what they stored from a real Redis.
//!
//! # Layout
//! - [`Running`]: one started service set, with a clean stop.
//! - [`config_for`]: a test configuration (loopback, short timeouts).
//! - [`send_batches`]: an agent stream that sends batches and collects acks.
//! - [`Reader`]: reads Redis (standalone, cluster or sentinel) with fred.
//! - [`http`]: one HTTP/1.0 request to a service's HTTP port (JSON back).
//! - [`cluster::CtlCluster`]: N cluster-ctl raft nodes on loopback, with
//!   stop, restart, partition and add-voter.

pub mod cluster;
pub mod prometheus;

use broker_common::{BrokerConfig, Listeners, Service};
use broker_proto::v1::monitor_service_client::MonitorServiceClient;
use broker_proto::v1::{BatchAck, MetricBatch, Point};
use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use redis_process::{RedisCluster, RedisSentinel, RedisServer};

/// Redis with every write fsync'ed, so a Redis killed by the test (its
/// `stop` is SIGKILL) loses nothing it acknowledged: what a test then
/// measures is the broker. (With the default everysec Redis itself may
/// lose the last second; it did once on a loaded CI machine.)
pub fn durable_redis() -> RedisServer {
    RedisServer::start_with(redis_process::RedisOptions {
        appendonly: true,
        extra_args: vec!["--appendfsync".into(), "always".into()],
        ..Default::default()
    })
    .expect("redis-server")
}

/// Seconds since the epoch, now.
/// A loopback endpoint that refuses connections while the socket lives
/// ([`broker_common::serve::refusing_loopback_endpoint`]).
pub fn refusing_endpoint() -> (String, tokio::net::TcpSocket) {
    broker_common::serve::refusing_loopback_endpoint().expect("a loopback port")
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A fresh directory that outlives the test (for spools a restarted
/// writer must find again).
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir")
        .keep()
}

/// A configuration for tests: Redis at `redis_url`, a private spool
/// directory, fast retries.
pub fn config_for(redis_url: &str) -> BrokerConfig {
    let mut c = BrokerConfig::default();
    c.writer.redis_url = redis_url.to_string();
    c.writer.spool_dir = scratch_dir("broker-test-spool-").display().to_string();
    c.writer.redis_timeout = Duration::from_secs(2);
    c.router.retry.max_retries = 1;
    c.router.retry.initial_backoff = Duration::from_millis(50);
    c.router.retry.max_backoff = Duration::from_millis(100);
    c.shutdown_grace = Duration::from_secs(10);
    c
}

/// [`config_for`] on the seed key layout, for tests that read its keys
/// (the default layout is the chunked one).
pub fn seed_config_for(redis_url: &str) -> BrokerConfig {
    let mut c = config_for(redis_url);
    c.writer.layout = "seed".into();
    c
}

/// Whether `services` run an ingest-gateway beside services other broker
/// processes call.
fn needs_internal(services: &[Service]) -> bool {
    services.contains(&Service::IngestGateway)
        && services.iter().any(|s| {
            matches!(
                s,
                Service::ShardRouter | Service::StorageWriter | Service::ClusterCtl
            )
        })
}

/// Services running in this process until [`Running::stop`].
pub struct Running {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The internal gRPC port (`internal_listen`), when it has one.
    pub internal: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts `run(config, listeners, shutdown)` on fresh loopback ports.
    pub async fn start<F, Fut>(config: BrokerConfig, run: F) -> Self
    where
        F: FnOnce(BrokerConfig, Listeners, Box<dyn Future<Output = ()> + Send + Unpin>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listeners = Listeners::loopback().await.expect("loopback listeners");
        Self::start_on(listeners, config, run)
    }

    /// Starts `run` on `listeners` (a restart on the addresses of a
    /// stopped one: `Listeners::bind(old.grpc, old.http)`).
    pub fn start_on<F, Fut>(listeners: Listeners, config: BrokerConfig, run: F) -> Self
    where
        F: FnOnce(BrokerConfig, Listeners, Box<dyn Future<Output = ()> + Send + Unpin>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (grpc, http) = (listeners.grpc_addr(), listeners.http_addr());
        let internal = listeners.internal_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = Box::new(Box::pin(async move {
            let _ = rx.await;
        }));
        let handle = tokio::spawn(run(config, listeners, shutdown));
        Self {
            grpc,
            http,
            internal,
            stop: Some(tx),
            handle,
        }
    }

    /// The all-in-one broker with `services`, with an internal listener
    /// too when an ingest-gateway runs beside services other processes
    /// call (the agents' port does not serve those).
    pub async fn broker(config: BrokerConfig, services: &'static [Service]) -> Self {
        let listeners = Listeners::loopback().await.expect("loopback listeners");
        Self::broker_on(listeners, config, services).await
    }

    /// [`Running::broker`] on `listeners`, adding the internal one it needs.
    async fn broker_on(
        mut listeners: Listeners,
        config: BrokerConfig,
        services: &'static [Service],
    ) -> Self {
        if needs_internal(services) {
            listeners = listeners
                .with_internal("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("internal listener");
        }
        Self::start_on(listeners, config, move |c, l, s| {
            broker::run(c, services, l, s)
        })
    }

    /// Where other broker processes call it: the internal port if any.
    pub fn internal_endpoint(&self) -> String {
        format!("http://{}", self.internal.unwrap_or(self.grpc))
    }

    /// The all-in-one broker with `services` on `grpc` and `http` (the
    /// addresses of one stopped before).
    pub async fn broker_at(
        config: BrokerConfig,
        services: &'static [Service],
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> Self {
        let listeners = Listeners::bind(grpc, http).await.expect("rebinding");
        Self::broker_on(listeners, config, services).await
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Signals shutdown and waits for a clean exit.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.handle)
            .await
            .expect("service stops within 30 s")
            .expect("service task did not panic")
            .expect("service exits cleanly");
    }
}

/// A shard-router configured by `router_config` (its `router.writers` set)
/// and an ingest-gateway in front of it, each its own service over real
/// gRPC; with the ring the router uses, to check placement against.
pub async fn router_and_gateway(
    router_config: BrokerConfig,
) -> (hash_ring::HashRing, Running, Running) {
    let ring = hash_ring::HashRing::new(
        router_config.router.ring(),
        router_config.router.writers.iter().map(|w| w.node_spec()),
    )
    .expect("ring from the router config");
    let router = Running::broker(router_config, &[Service::ShardRouter]).await;
    let mut gc = config_for("");
    gc.gateway.routers = vec![router.endpoint()];
    let gateway = Running::broker(gc, &[Service::IngestGateway]).await;
    (ring, router, gateway)
}

/// A point whose values are derived from (host, ts) so tests can
/// recompute them.
pub fn point(host: &str, ts: i64, metrics: usize) -> Point {
    Point {
        millis: 0,
        host_id: host.to_string(),
        timestamp: ts,
        values: (0..metrics).map(|m| value(host, ts, m)).collect(),
        name_index: vec![],
        labels: Default::default(),
    }
}

pub fn value(host: &str, ts: i64, metric: usize) -> f64 {
    let h: u64 = host.bytes().map(u64::from).sum();
    (h as f64) * 1.5 + (ts % 1000) as f64 * 0.25 + metric as f64
}

pub fn metric_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i:02}")).collect()
}

/// Opens one agent stream, sends `batches` and returns their acks in
/// sequence order. Panics if the stream fails.
pub async fn send_batches(endpoint: &str, batches: Vec<MetricBatch>) -> Vec<BatchAck> {
    try_send_batches(endpoint, batches)
        .await
        .expect("agent stream")
}

/// As [`send_batches`], returning the stream's error status if it fails.
pub async fn try_send_batches(
    endpoint: &str,
    batches: Vec<MetricBatch>,
) -> Result<Vec<BatchAck>, tonic::Status> {
    try_send_batches_with(endpoint, &Default::default(), batches).await
}

/// As [`try_send_batches`] through `security` (TLS, token).
pub async fn try_send_batches_with(
    endpoint: &str,
    security: &broker_common::security::ClientSecurity,
    batches: Vec<MetricBatch>,
) -> Result<Vec<BatchAck>, tonic::Status> {
    let channel = security
        .connect(endpoint, |e| e)
        .await
        .map_err(|e| tonic::Status::unavailable(broker_common::error_chain(&e)))?;
    let mut client = MonitorServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let n = batches.len();
    let outbound = tokio_stream::iter(batches);
    let mut inbound = client.send_metrics(outbound).await?.into_inner();
    let mut acks = Vec::with_capacity(n);
    while acks.len() < n {
        match inbound.message().await? {
            Some(ack) => acks.push(ack),
            None => break,
        }
    }
    acks.sort_by_key(|a| a.seq);
    Ok(acks)
}

/// Reads Redis through fred, whatever the deployment.
pub struct Reader {
    client: fred::clients::Client,
}

impl Reader {
    pub async fn connect(url: &str) -> Self {
        let config = fred::types::config::Config::from_url(url).expect("redis url");
        let client = fred::types::Builder::from_config(config)
            .build()
            .expect("client");
        client.init().await.expect("connect to redis");
        Self { client }
    }

    /// The client, e.g. as a `storage_layout::Exec` to read a layout.
    pub fn client(&self) -> &fred::clients::Client {
        &self.client
    }

    pub async fn cmd(&self, args: &[&str]) -> Value {
        let (name, rest) = args.split_first().expect("a command");
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        self.client
            .custom::<Value, _>(
                CustomCommand::new_static(name, ClusterHash::FirstKey, false),
                rest.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .await
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    pub async fn hgetall(&self, key: &str) -> HashMap<String, String> {
        self.cmd(&["HGETALL", key]).await.convert().expect("hash")
    }

    pub async fn exists(&self, key: &str) -> bool {
        self.cmd(&["EXISTS", key])
            .await
            .convert::<i64>()
            .expect("int")
            == 1
    }

    pub async fn ttl(&self, key: &str) -> i64 {
        self.cmd(&["TTL", key]).await.convert().expect("int")
    }

    /// (member, score) pairs of a sorted set, by score.
    pub async fn zrange_withscores(&self, key: &str) -> Vec<(String, f64)> {
        let v: Vec<String> = self
            .cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"])
            .await
            .convert()
            .expect("array");
        v.chunks(2)
            .map(|c| (c[0].clone(), c[1].parse().expect("score")))
            .collect()
    }
}

/// The snapshot of `host` at `ts` as the default key layout reads it from
/// Redis at `redis_url` (`None`: not stored).
pub async fn stored(redis_url: &str, host: &str, ts: i64) -> Option<HashMap<String, f64>> {
    stored_in(broker_common::config::DEFAULT_LAYOUT, redis_url, host, ts).await
}

/// [`stored`], read through the key layout named `layout`.
pub async fn stored_in(
    layout: &str,
    redis_url: &str,
    host: &str,
    ts: i64,
) -> Option<HashMap<String, f64>> {
    let layout = storage_layout::by_name(layout).expect("layout");
    let r = Reader::connect(redis_url).await;
    let req = [storage_layout::RangeReq::seconds(host, ts, ts)];
    let frame = layout
        .frames(r.client(), &req, &[], None)
        .await
        .expect("read the layout")
        .pop()?
        .into_seconds();
    (!frame.timestamps.is_empty()).then(|| {
        frame
            .metrics
            .into_iter()
            .filter_map(|(k, col)| col.first().copied().filter(|v| !v.is_nan()).map(|v| (k, v)))
            .collect()
    })
}

/// Writes a known batch through the broker at `endpoint` and checks, in
/// Redis at `redis_url`, every value through the key layout named `layout`
/// (the one the broker writes), the host metadata, the host index, the
/// series sets and the keys' time to live. Shared by the standalone,
/// cluster and sentinel tests.
pub async fn write_and_verify(endpoint: &str, redis_url: &str, layout: &str, hosts: usize) {
    let ts = now() - 60;
    let names = metric_names(4);
    let points: Vec<Point> = (0..hosts)
        .flat_map(|h| {
            let host = format!("host-{h:03}");
            [point(&host, ts, 4), point(&host, ts + 5, 4)]
        })
        .collect();
    let n = points.len();
    let acks = send_batches(
        endpoint,
        vec![MetricBatch {
            seq: 1,
            metric_names: names.clone(),
            points,
        }],
    )
    .await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].accepted as usize, n, "errors: {:?}", acks[0].errors);
    let r = Reader::connect(redis_url).await;
    let index: HashMap<String, i64> = storage_layout::hosts::list(r.client(), 0)
        .await
        .expect("host index")
        .into_iter()
        .collect();
    for h in 0..hosts {
        let host = format!("host-{h:03}");
        for t in [ts, ts + 5] {
            let got = stored_in(layout, redis_url, &host, t)
                .await
                .unwrap_or_default();
            assert_eq!(got.len(), 4, "{host} at {t}: {got:?}");
            for (m, name) in names.iter().enumerate() {
                assert_eq!(got[name], value(&host, t, m), "{host} at {t}: {name}");
            }
        }
        // The key that holds the points expires a ttl after them.
        let (data, counter) = match layout {
            "seed" => (format!("monitor:metrics:{{{host}}}:{ts}"), "points_written"),
            _ => (format!("monitor:open:{{{host}}}"), "open_points"),
        };
        let ttl = r.ttl(&data).await;
        assert!((604_700..=604_900).contains(&ttl), "{data} ttl {ttl}");
        let meta = r.hgetall(&format!("monitor:hosts:{{{host}}}")).await;
        assert_eq!(meta["last_seen"], (ts + 5).to_string());
        assert_eq!(meta[counter], "2");
        assert_eq!(
            index.get(&host),
            Some(&(ts + 5)),
            "{host} in the host index"
        );
        let series = r
            .zrange_withscores(&format!("monitor:series:{{{host}}}"))
            .await;
        let mut seen: Vec<String> = series.into_iter().map(|(m, _)| m).collect();
        seen.sort();
        assert_eq!(seen, names, "{host}'s series set");
    }
}

/// `GET /metrics` on an admin port, as text.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "GET /metrics on {addr}: {body}");
    body.as_str().unwrap_or_default().to_string()
}

/// As [`scrape`], or `None` when nothing answers at `addr` (a process that
/// is down or still starting).
pub async fn try_scrape(addr: SocketAddr) -> Option<String> {
    let (status, body) = try_http(addr, "GET", "/metrics", "").await?;
    (status == 200).then(|| body.as_str().unwrap_or_default().to_string())
}

/// The sum of every sample of `name`, whatever its labels, in a scrape (0
/// when there is none).
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once(' ')?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse::<f64>().ok()
        })
        .sum::<f64>()
        // An empty sum is -0.
        + 0.0
}

/// [`sum`] of a fresh scrape of `addr`.
pub async fn metric_sum(addr: SocketAddr, name: &str) -> f64 {
    sum(&scrape(addr).await, name)
}

/// [`sample`] of a fresh scrape of `addr`, which must expose `series`.
pub async fn exposed(addr: SocketAddr, series: &str) -> f64 {
    sample(&scrape(addr).await, series)
        .unwrap_or_else(|| panic!("{series} is not in /metrics at {addr}"))
}

/// The value of the sample `series` (name and labels exactly as exposed,
/// e.g. `broker_connections_open{listener="grpc"}`) in a scrape.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// [`sample`] of a fresh scrape of `addr`; 0 when the series is absent (a
/// counter not yet incremented).
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    sample(&scrape(addr).await, series).unwrap_or(0.0)
}

/// One HTTP/1.0 request; the status and the body as JSON (or a string).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: &str,
) -> (u16, serde_json::Value) {
    try_http(addr, method, path, form)
        .await
        .unwrap_or_else(|| panic!("{method} {path}: nothing answers at {addr}"))
}

/// As [`http`], or `None` when the connection is refused or broken.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: &str,
) -> Option<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = if form.is_empty() {
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
    } else {
        format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
    };
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json =
        serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.to_string()));
    Some((status, json))
}

/// An HTTP/1.0 answer with a binary body.
pub struct RawAnswer {
    pub status: u16,
    /// The header lines, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix(&prefix)
                .map(|v| v.trim().to_string())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.0 `POST` of a binary `body` with extra `headers` (each line
/// ending in `\r\n`), as remote write, remote read and OTLP/HTTP send.
pub async fn post_bytes(addr: SocketAddr, path: &str, headers: &str, body: &[u8]) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http response");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    RawAnswer {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

/// `/api/v1/query` of `addr` (query-api or a Prometheus) at now: the
/// result vector (empty when there is none).
pub async fn instant(addr: SocketAddr, q: &str) -> Vec<serde_json::Value> {
    let (status, body) = http(addr, "GET", &format!("/api/v1/query?query={}", enc(q)), "").await;
    assert_eq!(status, 200, "{q}: {body}");
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// [`instant`], asked again until it answers something or 15 s pass: a
/// host new to query-api is in its host list within `hosts_cache_ttl`.
pub async fn instant_eventually(addr: SocketAddr, q: &str) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = instant(addr, q).await;
        if !r.is_empty() || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Percent-encodes a query parameter value.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod scrape_tests {
    use super::*;

    #[test]
    fn samples_are_read_and_summed_over_labels() {
        let text = "# HELP broker_x_total x\n# TYPE broker_x_total counter\n\
                    broker_x_total{writer=\"a\"} 2\nbroker_x_total{writer=\"b\"} 3.5\n\
                    broker_x_total_other 100\nbroker_y 7\n";
        assert_eq!(sum(text, "broker_x_total"), 5.5);
        assert_eq!(sum(text, "broker_y"), 7.0);
        assert_eq!(sum(text, "broker_absent"), 0.0);
        assert_eq!(sample(text, "broker_x_total{writer=\"b\"}"), Some(3.5));
        assert_eq!(sample(text, "broker_x"), None);
    }
}
