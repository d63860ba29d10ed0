//! `broker-bench week`: a week of a fleet on one Redis, time-compressed.
//!
//! Fills `--hosts` × `--days` of snapshots every `--interval` (timestamps
//! spread over the past days, the newest a minute ago) through the real
//! storage-writer into a fresh Redis with the default configuration, then
//! measures in the same run:
//! - the fill rate, Redis `used_memory`, bytes per sample and keys (with
//!   `used_memory` after each simulated day: how memory grows with
//!   retention);
//! - one host's range over 1 h, 24 h and 7 d, downsampled to 1,000 points
//!   (a chart's width), all metrics and one metric;
//! - fleet PromQL: `avg by (host) (rate(<counter>[5m]))` over every host ×
//!   1 h at a 60 s step, `topk(10, avg_over_time(<gauge>[1h]))`, and
//!   `quantile(0.99, <gauge>)` over 24 h at a 5 min step;
//! - the host list (HTTP, as the dashboard asks): the first request of a
//!   fresh query-api (read from Redis) and as a running one serves it
//!   (its list refreshed in the background), at `--hosts` and at
//!   `--more-hosts`;
//! - Redis CPU and SCAN calls over `--idle` of no ingest with query-api,
//!   host-manager and a dashboard polling every 5 s;
//! - then VictoriaMetrics (Debian's `victoria-metrics`), loaded with the
//!   newest `--vm-days` of the same samples through its CSV import and
//!   asked the same PromQL at the same times: its latencies, RSS and bytes
//!   per sample on disk.
//!
//! Prints progress on stderr and ends with one JSON line on stdout.
//! Asserts nothing about speed.

use crate::query::percentiles;
use crate::vm;
use anyhow::Context;
use broker_agent::generator::{Mix, SnapshotGenerator, counter_metric, gauge_metric, host_id};
use broker_common::{BrokerConfig, Listeners, Readiness};
use redis_process::RedisServer;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct WeekArgs {
    /// Hosts of the fleet.
    #[arg(long, default_value_t = 1_000)]
    hosts: usize,
    /// Days of retention filled (the newest point a minute ago).
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Time between a host's snapshots.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Metrics per snapshot.
    #[arg(long, default_value_t = 32)]
    metrics: usize,
    /// What the values look like: realistic (counters, gauges, constants)
    /// or synthetic (a third uniform noise).
    #[arg(long, value_enum, default_value = "realistic")]
    mix: Mix,
    /// The host list is measured again with this many hosts (the extra
    /// ones with one snapshot each).
    #[arg(long, default_value_t = 10_000)]
    more_hosts: usize,
    /// Time of no ingest over which Redis CPU and SCAN calls are counted.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Range queries per span (each on its own host: cache misses).
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Runs of each fleet PromQL query (each at its own time: no cache).
    #[arg(long, default_value_t = 8)]
    query_samples: usize,
    /// Host-list requests per measurement.
    #[arg(long, default_value_t = 30)]
    list_samples: usize,
    /// Days of the newest data loaded into VictoriaMetrics; 0 skips it.
    #[arg(long, default_value_t = 1)]
    vm_days: u32,
    /// Connections importing into VictoriaMetrics.
    #[arg(long, default_value_t = 4)]
    vm_connections: usize,
    /// Only VictoriaMetrics's side (its load and the same fleet PromQL),
    /// no broker: to redo that side of a run.
    #[arg(long)]
    only_vm: bool,
}

/// Points per writer batch during the fill, and batches in flight.
const FILL_BATCH_HOSTS: usize = 500;
const FILL_WINDOW: usize = 16;
/// Every this many time steps the fill waits while the open chunks hold
/// more than `OPEN_CHUNKS_AHEAD` chunks' worth per host: time-compressed,
/// the fill would outrun the writer's sealing (at real rates a host needs
/// a seal every 20 minutes), and unsealed records cost Redis ~10 × the
/// memory of sealed ones.
const PACE_EVERY_STEPS: i64 = 24;
const OPEN_CHUNKS_AHEAD: usize = 2;
/// Snapshots per VictoriaMetrics import request.
const VM_BATCH_POINTS: usize = 2_000;
/// How often the dashboard of the idle phase polls.
const DASHBOARD_EVERY: Duration = Duration::from_secs(5);
/// A chart's width in points, as the dashboard asks.
const CHART_POINTS: usize = 1_000;

/// A GET on a kept-alive loopback HTTP connection: status, body, ms.
struct Http {
    port: u16,
    conn: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl Http {
    async fn new(port: u16) -> anyhow::Result<Self> {
        Ok(Self {
            port,
            conn: vm::connect(port).await?,
        })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<(u16, String, f64)> {
        let t0 = Instant::now();
        let r = match vm::request_with(&mut self.conn, "GET", path, "", b"").await {
            Ok(r) => r,
            Err(_) => {
                // The server closed a kept-alive connection: once more.
                self.conn = vm::connect(self.port).await?;
                vm::request_with(&mut self.conn, "GET", path, "", b"").await?
            }
        };
        Ok((r.0, r.1, t0.elapsed().as_secs_f64() * 1000.0))
    }

    /// `get`, failing unless 200; returns ms and the body.
    async fn ok(&mut self, path: &str) -> anyhow::Result<(f64, String)> {
        let (status, body, ms) = self.get(path).await?;
        anyhow::ensure!(
            status == 200,
            "GET {path} answered {status}: {}",
            &body[..body.len().min(400)]
        );
        Ok((ms, body))
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn redis_f64(redis: &RedisServer, section: &str, field: &str) -> anyhow::Result<f64> {
    Ok(redis.info_field(section, field)?.trim().parse()?)
}

fn redis_cpu(redis: &RedisServer) -> anyhow::Result<f64> {
    Ok(redis_f64(redis, "cpu", "used_cpu_user")? + redis_f64(redis, "cpu", "used_cpu_sys")?)
}

/// Calls of `cmd` since Redis started.
fn redis_calls(redis: &RedisServer, cmd: &str) -> anyhow::Result<u64> {
    let stats = redis.cli(&["INFO", "commandstats"])?;
    Ok(stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:")))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0))
}

/// The fleet PromQL of the bench: (name, path) for an evaluation at `end`.
fn fleet_queries(mix: Mix, end: i64) -> Vec<(&'static str, String)> {
    let c = counter_metric(mix);
    let g = gauge_metric(mix);
    vec![
        (
            "avg by (host) (rate(counter[5m])), 1 h at 60 s",
            format!(
                "/api/v1/query_range?query={}&start={}&end={end}&step=60",
                enc(&format!("avg by (host) (rate({c}[5m]))")),
                end - 3600
            ),
        ),
        (
            "topk(10, avg_over_time(gauge[1h]))",
            format!(
                "/api/v1/query?query={}&time={end}",
                enc(&format!("topk(10, avg_over_time({g}[1h]))"))
            ),
        ),
        (
            "quantile(0.99, gauge), 24 h at 5 min",
            format!(
                "/api/v1/query_range?query={}&start={}&end={end}&step=300",
                enc(&format!("quantile(0.99, {g})")),
                end - 86_400
            ),
        ),
    ]
}

/// One fleet query's figures.
struct FleetFigures {
    /// The first run: nothing of it cached (a cold reader).
    first_ms: f64,
    /// Over the runs after it, as a dashboard refreshing asks again.
    p50_ms: f64,
    p99_ms: f64,
    /// Series in the first answer.
    series: usize,
}

/// Runs each fleet query once, then `samples` more times, each run at its
/// own evaluation time (one minute apart, so no result cache answers, as
/// a dashboard refreshing every minute asks) on `http`.
async fn run_fleet_queries(
    http: &mut Http,
    mix: Mix,
    end: i64,
    samples: usize,
) -> anyhow::Result<Vec<FleetFigures>> {
    let mut out = Vec::new();
    let names: Vec<&'static str> = fleet_queries(mix, end).iter().map(|q| q.0).collect();
    for (qi, name) in names.into_iter().enumerate() {
        let mut times = Vec::new();
        let mut series = 0;
        let mut first_ms = 0.0;
        for s in 0..=samples {
            let path = fleet_queries(mix, end - 60 * (samples - s) as i64)
                .swap_remove(qi)
                .1;
            let (ms, body) = http.ok(&path).await?;
            if s == 0 {
                let v: serde_json::Value = serde_json::from_str(&body)?;
                series = v["data"]["result"].as_array().map_or(0, Vec::len);
                first_ms = ms;
            } else {
                times.push(ms);
            }
        }
        let (p50_ms, p99_ms) = percentiles(times);
        eprintln!(
            "  {name}: first {first_ms:.1} ms, then p50 {p50_ms:.1} ms, p99 {p99_ms:.1} ms ({series} series)"
        );
        out.push(FleetFigures {
            first_ms,
            p50_ms,
            p99_ms,
            series,
        });
    }
    Ok(out)
}

/// The JSON keys of `fleet`, each prefixed with `prefix`.
fn fleet_json(
    prefix: &str,
    fleet: &[FleetFigures],
    out: &mut serde_json::Map<String, serde_json::Value>,
) {
    for (i, q) in fleet.iter().enumerate() {
        let k = |what: &str| format!("{prefix}fleet_q{}_{what}", i + 1);
        out.insert(k("series"), q.series.into());
        out.insert(k("first_ms"), q.first_ms.into());
        out.insert(k("p50_ms"), q.p50_ms.into());
        out.insert(k("p99_ms"), q.p99_ms.into());
    }
    out.insert(
        format!("{prefix}fleet_query_p99_ms"),
        fleet.iter().map(|q| q.p99_ms).fold(0.0, f64::max).into(),
    );
    out.insert(
        format!("{prefix}fleet_query_first_max_ms"),
        fleet.iter().map(|q| q.first_ms).fold(0.0, f64::max).into(),
    );
}

/// Starts `services` of the broker in this process on loopback; the HTTP
/// port and the stop switch.
async fn serve(
    config: &BrokerConfig,
    services: &'static [broker_common::Service],
) -> anyhow::Result<(u16, tokio::sync::oneshot::Sender<()>)> {
    let listeners = Listeners::loopback().await?;
    let grpc = format!("http://{}", listeners.grpc_addr());
    let http = listeners.http_addr().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = config.clone();
    tokio::spawn(async move {
        if let Err(e) = broker::run(config, services, listeners, async move {
            let _ = rx.await;
        })
        .await
        {
            eprintln!("broker services stopped: {e:#}");
        }
    });
    broker_common::serve::wait_serving(&grpc, Duration::from_secs(30)).await?;
    Ok((http, tx))
}

/// Host-list latency, as the dashboard asks it (every host in one page).
/// First: the first request of a fresh query-api, which waits for the read
/// from Redis (three fresh query-apis; p50 and max). Served: a query-api
/// with the default configuration, asked every 250 ms for `samples`
/// requests, across its `hosts_cache_ttl` (a refresh runs in the
/// background meanwhile). (first p50, first max, served p50, served p99).
async fn host_list(
    config: &BrokerConfig,
    warm: &mut Http,
    hosts: usize,
    samples: usize,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let path = format!("/api/query/hosts?limit={hosts}");
    // Wait until the index lists every host (it is refreshed on writes).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = warm.ok(&path).await?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let n = v["hosts"].as_array().map_or(0, Vec::len);
        if n >= hosts {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the host list holds {n} of {hosts}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        let (port, stop) = serve(config, &[broker_common::Service::QueryApi]).await?;
        let mut fresh = Http::new(port).await?;
        first.push(fresh.ok(&path).await?.0);
        let _ = stop.send(());
    }
    let mut served = Vec::new();
    for _ in 0..samples {
        served.push(warm.ok(&path).await?.0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_max = first.iter().copied().fold(0.0, f64::max);
    let (f50, _) = percentiles(first);
    let (s50, s99) = percentiles(served);
    eprintln!(
        "host list, {hosts} hosts: first request of a query-api p50 {f50:.1} / max {first_max:.1} ms, served p50 {s50:.2} / p99 {s99:.2} ms"
    );
    Ok((f50, first_max, s50, s99))
}

pub async fn run(args: WeekArgs) -> anyhow::Result<()> {
    if args.only_vm {
        let step = args.interval.as_secs().max(1) as i64;
        let end = broker_common::unix_now() - 60;
        let generator =
            Arc::new(SnapshotGenerator::new(args.hosts, args.metrics).with_mix(args.mix));
        let vm = victoria_metrics(&args, &generator, end, step).await?;
        println!("{}", serde_json::Value::Object(vm));
        return Ok(());
    }
    let redis = RedisServer::start().context("starting redis-server")?;
    eprintln!("redis-server {} (no persistence)", redis.url());
    let mut config = BrokerConfig::default();
    config.writer.redis_url = redis.url();
    config.writer.spool_dir = String::new();
    // The bench asks fleet-wide questions past the default read bounds
    // (24 h of 1,000 hosts is 17 million snapshots); what they cost is
    // the figure, so the bounds are raised and the time limit too.
    config.query.max_points_scanned = 100_000_000;
    config.query.max_hosts = args.more_hosts.max(args.hosts);
    config.query.max_series = args.more_hosts.max(args.hosts);
    config.query.timeout = Duration::from_secs(120);
    eprintln!(
        "layout {}, ttl {:?}, {} hosts x {} days every {:?} x {} metrics ({:?} mix)",
        config.writer.layout,
        config.ttl,
        args.hosts,
        args.days,
        args.interval,
        args.metrics,
        args.mix
    );

    // The fill, through the writer.
    let mut registry = prometheus_client::registry::Registry::default();
    let readiness = Readiness::default();
    let writer = storage_writer::WriterComponent::start(&config, &mut registry, &readiness)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readiness.not_ready().is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the writer did not connect to redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base_memory = redis_f64(&redis, "memory", "used_memory")?;
    let step = args.interval.as_secs().max(1) as i64;
    let per_day = 86_400 / step;
    let n = per_day * args.days as i64;
    let end = broker_common::unix_now() - 60;
    let start = end - (n - 1) * step;
    let generator = Arc::new(SnapshotGenerator::new(args.hosts, args.metrics).with_mix(args.mix));
    let total = n as u64 * args.hosts as u64;
    let samples_total = total * args.metrics as u64;
    eprintln!("fill: {total} points ({samples_total} samples), {start}..{end}");
    let db = crate::layout::client(&redis.url()).await?;
    let ids: Vec<String> = (0..args.hosts).map(host_id).collect();
    let pace_bound = (args.hosts * config.writer.chunk_points * OPEN_CHUNKS_AHEAD) as u64;
    let mut paced = Duration::ZERO;
    let t0 = Instant::now();
    let mut per_day_memory: Vec<f64> = Vec::new();
    {
        use futures::StreamExt;
        let mut inflight = futures::stream::FuturesUnordered::new();
        for i in 0..n {
            let ts = start + i * step;
            for first in (0..args.hosts).step_by(FILL_BATCH_HOSTS) {
                let g = generator.clone();
                let hosts = first..(first + FILL_BATCH_HOSTS).min(args.hosts);
                let w = writer.writer.clone();
                inflight.push(async move {
                    let batch = Arc::new(g.batch(ts, hosts));
                    w.write(batch).await
                });
                if inflight.len() >= FILL_WINDOW {
                    inflight.next().await.expect("a write")?;
                }
            }
            if (i + 1) % PACE_EVERY_STEPS == 0 {
                let waited = Instant::now();
                while crate::layout::open_points(&db, &ids).await? > pace_bound {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                paced += waited.elapsed();
            }
            if (i + 1) % per_day == 0 {
                let done = (i + 1) as u64 * args.hosts as u64;
                let mem = redis_f64(&redis, "memory", "used_memory")?;
                per_day_memory.push(mem);
                eprintln!(
                    "  day {}: {done} points, {:.0} points/s, used_memory {:.2} GiB ({:.0} s waiting for seals)",
                    (i + 1) / per_day,
                    done as f64 / t0.elapsed().as_secs_f64(),
                    mem / (1u64 << 30) as f64,
                    paced.as_secs_f64()
                );
            }
        }
        while let Some(r) = inflight.next().await {
            r?;
        }
    }
    let fill_secs = t0.elapsed().as_secs_f64();
    let fill_pps = total as f64 / fill_secs;
    eprintln!("fill: {total} points in {fill_secs:.0} s ({fill_pps:.0} points/s)");
    // Steady state: the writer's maintainer has sealed all but each
    // host's newest points (less than a chunk open per host).
    let bound = (args.hosts * config.writer.chunk_points) as u64;
    let sealing = Instant::now();
    loop {
        let open = crate::layout::open_points(&db, &ids).await?;
        if open < bound || sealing.elapsed() > Duration::from_secs(1_800) {
            eprintln!(
                "sealed after {:.0} s more: {open} points still in open chunks ({:.0} per host)",
                sealing.elapsed().as_secs_f64(),
                open as f64 / args.hosts as f64
            );
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let used_memory = redis_f64(&redis, "memory", "used_memory")?;
    let keys: u64 = redis.cli(&["DBSIZE"])?.trim().parse()?;
    let bytes_per_sample = (used_memory - base_memory) / samples_total as f64;
    eprintln!(
        "redis: used_memory {:.2} GiB, {bytes_per_sample:.3} bytes per sample, {keys} keys",
        used_memory / (1u64 << 30) as f64
    );

    // Readers: a query-api with host-manager (the defaults), and one that
    // caches nothing for long (ranges are read cold from it).
    let (warm_port, stop_warm) = serve(
        &config,
        &[
            broker_common::Service::QueryApi,
            broker_common::Service::HostManager,
        ],
    )
    .await?;
    let mut cold_config = config.clone();
    cold_config.query.hosts_cache_ttl = Duration::from_millis(1);
    let (cold_port, stop_cold) = serve(&cold_config, &[broker_common::Service::QueryApi]).await?;
    let mut warm = Http::new(warm_port).await?;
    let mut cold = Http::new(cold_port).await?;

    // One host's range, downsampled to a chart's width.
    let g = gauge_metric(args.mix);
    let mut ranges = serde_json::Map::new();
    for (label, span) in [("1h", 3_600), ("24h", 86_400), ("7d", 7 * 86_400)] {
        let span = span.min(n * step);
        for (which, metrics) in [("all", String::new()), ("one", format!("&metrics={g}"))] {
            let mut times = Vec::new();
            for s in 0..args.samples.min(args.hosts) {
                // A host of its own per (span, metrics, sample): a miss.
                let h = (s * 7 + label.len() * 13 + which.len()) % args.hosts;
                let path = format!(
                    "/api/query/range?host={}&start={}&end={end}&max_points={CHART_POINTS}{metrics}",
                    host_id(h),
                    end - span + 1
                );
                let (ms, body) = cold.ok(&path).await?;
                if s == 0 {
                    let v: serde_json::Value = serde_json::from_str(&body)?;
                    let rows = v["timestamps"].as_array().map_or(0, Vec::len);
                    anyhow::ensure!(
                        rows > 0 && rows <= CHART_POINTS,
                        "range {label} answered {rows} rows"
                    );
                }
                times.push(ms);
            }
            let (p50, p99) = percentiles(times);
            eprintln!(
                "range {label}, {which} metrics, {CHART_POINTS} points: p50 {p50:.1} / p99 {p99:.1} ms"
            );
            ranges.insert(format!("range_{label}_{which}_p50_ms"), p50.into());
            ranges.insert(format!("range_{label}_{which}_p99_ms"), p99.into());
        }
    }

    eprintln!("fleet PromQL, broker ({} hosts):", args.hosts);
    let fleet = run_fleet_queries(&mut warm, args.mix, end, args.query_samples).await?;

    let list_small = host_list(&config, &mut warm, args.hosts, args.list_samples).await?;

    // Idle: no ingest, query-api and host-manager running, a dashboard
    // polling the host list and a chart every 5 s.
    eprintln!("idle for {:?}", args.idle);
    let cpu0 = redis_cpu(&redis)?;
    let scans0 = redis_calls(&redis, "scan")?;
    let keys0 = redis_calls(&redis, "keys")?;
    let idle_start = Instant::now();
    let mut polls = 0;
    while idle_start.elapsed() < args.idle {
        let now = broker_common::unix_now();
        warm.ok("/api/query/hosts?limit=100").await?;
        warm.ok(&format!(
            "/api/query/range?host={}&start={}&end={now}&max_points={CHART_POINTS}",
            host_id(polls % args.hosts),
            now - 3_600
        ))
        .await?;
        polls += 1;
        tokio::time::sleep(DASHBOARD_EVERY.min(args.idle.saturating_sub(idle_start.elapsed())))
            .await;
    }
    let idle_secs = idle_start.elapsed().as_secs_f64();
    let idle_cpu_pct = (redis_cpu(&redis)? - cpu0) / idle_secs * 100.0;
    let scan_calls_idle = redis_calls(&redis, "scan")? - scans0;
    let keys_calls_idle = redis_calls(&redis, "keys")? - keys0;
    eprintln!(
        "idle: Redis CPU {idle_cpu_pct:.2} % of a core, {scan_calls_idle} SCAN and {keys_calls_idle} KEYS calls, {polls} dashboard polls"
    );

    // More hosts: each with one snapshot, through the writer.
    let extra = args.more_hosts.saturating_sub(args.hosts);
    let list_large = if extra > 0 {
        let more = SnapshotGenerator::new(args.more_hosts, args.metrics).with_mix(args.mix);
        for first in (args.hosts..args.more_hosts).step_by(FILL_BATCH_HOSTS) {
            let batch = more.batch(end, first..(first + FILL_BATCH_HOSTS).min(args.more_hosts));
            writer.writer.write(Arc::new(batch)).await?;
        }
        Some(host_list(&config, &mut warm, args.more_hosts, args.list_samples).await?)
    } else {
        None
    };
    let _ = stop_warm.send(());
    let _ = stop_cold.send(());

    // VictoriaMetrics on the newest vm_days of the same samples.
    let vm_json = victoria_metrics(&args, &generator, end, step).await?;

    let mut out = serde_json::Map::new();
    out.insert("hosts".into(), args.hosts.into());
    out.insert("days".into(), args.days.into());
    out.insert(
        "mix".into(),
        format!("{:?}", args.mix).to_lowercase().into(),
    );
    out.insert("metrics_per_point".into(), args.metrics.into());
    out.insert("points".into(), total.into());
    out.insert("fill_pps".into(), fill_pps.into());
    out.insert("redis_used_memory_bytes".into(), used_memory.into());
    out.insert("redis_bytes_per_sample".into(), bytes_per_sample.into());
    out.insert("redis_keys".into(), keys.into());
    out.insert(
        "used_memory_per_day_bytes".into(),
        per_day_memory
            .iter()
            .map(|m| *m as u64)
            .collect::<Vec<_>>()
            .into(),
    );
    // host_list_p99_ms: what a dashboard meets, the served p99 at the
    // largest fleet measured; the first request of a process apart.
    out.insert("host_list_first_p50_ms".into(), list_small.0.into());
    out.insert("host_list_first_max_ms".into(), list_small.1.into());
    out.insert("host_list_served_p99_ms".into(), list_small.3.into());
    if let Some(l) = list_large {
        out.insert("more_hosts".into(), args.more_hosts.into());
        out.insert("host_list_more_first_p50_ms".into(), l.0.into());
        out.insert("host_list_more_first_max_ms".into(), l.1.into());
        out.insert("host_list_more_served_p99_ms".into(), l.3.into());
        out.insert("host_list_p99_ms".into(), l.3.into());
    } else {
        out.insert("host_list_p99_ms".into(), list_small.3.into());
    }
    out.insert("idle_redis_cpu_pct".into(), idle_cpu_pct.into());
    out.insert("scan_calls_idle".into(), scan_calls_idle.into());
    out.insert("keys_calls_idle".into(), keys_calls_idle.into());
    out.extend(ranges.clone());
    out.insert(
        "range_7d_p99_ms".into(),
        ranges
            .get("range_7d_one_p99_ms")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
    );
    fleet_json("", &fleet, &mut out);
    out.extend(vm_json);
    println!("{}", serde_json::Value::Object(out));
    drop(writer);
    Ok(())
}

/// VictoriaMetrics loaded with the newest `vm_days` of `generator`'s
/// samples (ending at `end`) and asked the fleet PromQL; its JSON keys.
async fn victoria_metrics(
    args: &WeekArgs,
    generator: &Arc<SnapshotGenerator>,
    end: i64,
    step: i64,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let per_day = 86_400 / step;
    let mut vm_json = serde_json::Map::new();
    match vm::binary() {
        Some(bin) if args.vm_days > 0 => {
            let days = args.vm_days.min(args.days) as i64;
            let vm_start = end - (days * per_day - 1) * step;
            let figures = vm::load_window(
                &bin,
                generator,
                vm_start,
                end,
                step,
                VM_BATCH_POINTS,
                args.vm_connections,
            )
            .await?;
            eprintln!(
                "victoria-metrics: {} points in {:.0} s ({:.0} points/s), {:.3} bytes per sample on disk, RSS {:.0} MiB",
                figures.points,
                figures.secs,
                figures.points as f64 / figures.secs,
                figures.bytes_per_sample,
                figures.rss_bytes as f64 / (1u64 << 20) as f64
            );
            let (flushed_bps, rss, vm_pps) = (
                figures.bytes_per_sample,
                figures.rss_bytes,
                figures.points as f64 / figures.secs,
            );
            let mut http = Http::new(figures.port).await?;
            eprintln!(
                "fleet PromQL, VictoriaMetrics ({} hosts, {days} day(s)):",
                args.hosts
            );
            let vm_fleet = run_fleet_queries(&mut http, args.mix, end, args.query_samples).await?;
            fleet_json("vm_", &vm_fleet, &mut vm_json);
            vm_json.insert("vm_days".into(), days.into());
            vm_json.insert("vm_load_pps".into(), vm_pps.into());
            let on_disk = figures.stop()?;
            eprintln!(
                "victoria-metrics stopped: {on_disk:.3} bytes per sample on disk (after the flush: {:.3})",
                flushed_bps
            );
            vm_json.insert("vm_bytes_per_sample".into(), on_disk.into());
            vm_json.insert("vm_rss_bytes".into(), rss.into());
        }
        Some(_) => {}
        None => {
            eprintln!("victoria-metrics is not installed: its side of the comparison is skipped")
        }
    }

    Ok(vm_json)
}
