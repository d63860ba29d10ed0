//! `broker-bench query`: fills a fresh Redis with `hosts` × `span` at
//! `interval` (32 metrics) through the storage-writer, then measures
//! query-api over gRPC: range 1 host × 1 h (all metrics) uncached and
//! cached, aggregation avg per 1-minute step over 1 h for 1 host and for
//! 100 hosts, and the sustained rate of cached queries from 50 concurrent
//! clients. Prints a table on stderr and one JSON line on stdout. Asserts
//! nothing about speed; it fails only if an answer is wrong in shape.

use anyhow::Context;
use broker_agent::generator::{SnapshotGenerator, host_id, metric_name};
use broker_common::{BrokerConfig, Listeners, Readiness};
use broker_proto::v1::query_service_client::QueryServiceClient;
use broker_proto::v1::{AggregateFunction, AggregateRequest, HostSelector, RangeRequest};
use redis_process::RedisServer;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(clap::Args, Clone)]
pub struct QueryArgs {
    /// Hosts to fill.
    #[arg(long, default_value_t = 1_000)]
    hosts: usize,
    /// Metrics per snapshot.
    #[arg(long, default_value_t = 32)]
    metrics: usize,
    /// Time between a host's snapshots.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Time covered by the fill (and by the range and aggregation queries).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    span: Duration,
    /// Range queries measured, uncached and cached (each on its own host).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// 100-host aggregations measured.
    #[arg(long, default_value_t = 20)]
    agg_samples: usize,
    /// Concurrent clients of the cached-rate phase, each with its own
    /// connection.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Length of the cached-rate phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    qps_duration: Duration,
    /// Key layout the writer fills and query-api reads: seed or chunked.
    #[arg(long, default_value = broker_common::config::DEFAULT_LAYOUT)]
    layout: String,
}

/// Points per writer batch during the fill, and batches in flight.
const FILL_BATCH_HOSTS: usize = 500;
const FILL_WINDOW: usize = 16;
/// Hosts the cached-rate phase cycles over (all cached after one round).
const QPS_HOSTS: usize = 100;
/// Upper bound on requests of the cached-rate phase, whatever its length.
const QPS_MAX_REQUESTS: u64 = 5_000_000;

/// p50 / p99 in milliseconds.
pub(crate) fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99))
}

async fn timed<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    f: F,
) -> anyhow::Result<(f64, T)> {
    let t0 = Instant::now();
    let r = f.await?;
    Ok((t0.elapsed().as_secs_f64() * 1000.0, r))
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let redis = RedisServer::start().context("starting redis-server")?;
    eprintln!("redis-server {} (no persistence)", redis.url());
    let mut config = BrokerConfig::default();
    config.writer.redis_url = redis.url();
    config.writer.spool_dir = String::new();
    crate::layout::by_name(&args.layout)?;
    config.writer.layout = args.layout.clone();

    // Fill through the writer.
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
    let step = args.interval.as_secs().max(1) as i64;
    let n = (args.span.as_secs() as i64 / step).max(1);
    // The newest snapshot 30 s ago: past query.fresh_window, so the
    // measured ranges are cacheable for query.cache_ttl.
    let end = broker_common::unix_now() - 30;
    let start = end - (n - 1) * step;
    let generator = SnapshotGenerator::new(args.hosts, args.metrics);
    let total = n as usize * args.hosts;
    eprintln!(
        "fill: {} hosts x {n} snapshots ({}s apart) x {} metrics = {total} points",
        args.hosts, step, args.metrics
    );
    let t0 = Instant::now();
    let mut inflight = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let ts = start + i * step;
        for first in (0..args.hosts).step_by(FILL_BATCH_HOSTS) {
            let batch =
                Arc::new(generator.batch(ts, first..(first + FILL_BATCH_HOSTS).min(args.hosts)));
            let w = writer.writer.clone();
            inflight.push(async move { w.write(batch).await });
            if inflight.len() >= FILL_WINDOW {
                use futures::StreamExt;
                inflight.next().await.expect("a write")?;
            }
        }
    }
    {
        use futures::StreamExt;
        while let Some(r) = inflight.next().await {
            r?;
        }
    }
    let fill_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "fill: {total} points in {fill_secs:.1} s ({:.0} points/s)",
        total as f64 / fill_secs
    );
    if args.layout == "chunked" {
        // Steady state: the writer's maintainer has sealed all but each
        // host's newest points (less than a chunk open per host).
        let db = crate::layout::client(&config.writer.redis_url).await?;
        let hosts: Vec<String> = (0..args.hosts).map(host_id).collect();
        let bound = (args.hosts * config.writer.chunk_points) as u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let open = crate::layout::open_points(&db, &hosts).await?;
            if open < bound || Instant::now() > deadline {
                eprintln!(
                    "chunked: {open} points still in open chunks ({:.0} per host), the rest sealed",
                    open as f64 / args.hosts as f64
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // query-api in this process, on loopback.
    let listeners = Listeners::loopback().await?;
    let endpoint = format!("http://{}", listeners.grpc_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config_run = config.clone();
    let server = tokio::spawn(async move {
        let services = [broker_common::Service::QueryApi];
        broker::run(config_run, &services, listeners, async move {
            let _ = stop_rx.await;
        })
        .await
    });
    broker_common::serve::wait_serving(&endpoint, Duration::from_secs(20)).await?;
    let channel = || async {
        anyhow::Ok(
            QueryServiceClient::new(Channel::from_shared(endpoint.clone())?.connect().await?)
                .max_decoding_message_size(64 << 20),
        )
    };
    let mut client = channel().await?;
    let range = |host: usize, metrics: Vec<String>| RangeRequest {
        host: host_id(host),
        start,
        end,
        metrics,
        limit: 0,
        max_points: 0,
    };

    // Range 1 host x span, all metrics: each sample on its own host (a
    // miss), then the same requests again (hits).
    let samples = args.samples.min(args.hosts);
    let phase = |name: &str| eprintln!("{name}");
    phase("range, uncached");
    let mut uncached = Vec::new();
    for i in 0..samples {
        let (ms, r) =
            timed(async { Ok(client.range(range(i, vec![])).await?.into_inner()) }).await?;
        anyhow::ensure!(
            r.timestamps.len() == n as usize && r.series.len() == args.metrics,
            "range of {} answered {} snapshots x {} metrics",
            host_id(i),
            r.timestamps.len(),
            r.series.len()
        );
        uncached.push(ms);
    }
    phase("range, cached");
    let mut cached = Vec::new();
    for i in 0..samples {
        let (ms, _) =
            timed(async { Ok(client.range(range(i, vec![])).await?.into_inner()) }).await?;
        cached.push(ms);
    }

    // Aggregation avg per 1-minute step: 1 host, then 100 hosts; every
    // sample a different request (a miss).
    let agg = |hosts: Vec<String>, end: i64| AggregateRequest {
        selector: Some(HostSelector {
            hosts,
            ..Default::default()
        }),
        metric: metric_name(0),
        function: AggregateFunction::Avg as i32,
        start,
        end,
        step: 60,
        per_host: false,
    };
    phase("aggregation, 1 host");
    let mut agg1 = Vec::new();
    for i in 0..samples.min(50) {
        let (ms, r) = timed(async {
            Ok(client
                .aggregate(agg(vec![host_id(i)], end))
                .await?
                .into_inner())
        })
        .await?;
        anyhow::ensure!(!r.series[0].buckets.is_empty(), "empty aggregation");
        agg1.push(ms);
    }
    phase("aggregation, 100 hosts");
    let mut agg100 = Vec::new();
    let group = 100.min(args.hosts);
    for i in 0..args.agg_samples {
        let hosts = (0..group)
            .map(|k| host_id((i * 50 + k) % args.hosts))
            .collect();
        let (ms, r) = timed(async {
            Ok(client
                .aggregate(agg(hosts, end - i as i64))
                .await?
                .into_inner())
        })
        .await?;
        anyhow::ensure!(
            r.hosts.len() == group,
            "aggregation over {} hosts",
            r.hosts.len()
        );
        agg100.push(ms);
    }

    // Cached rate: `clients` connections, each asking for one metric of one
    // host over the span (a dashboard chart), cycling over QPS_HOSTS hosts
    // whose answers are cached after the warm-up.
    phase("cached rate");
    let one_metric = || vec![metric_name(0)];
    for h in 0..QPS_HOSTS.min(args.hosts) {
        client.range(range(h, one_metric())).await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + args.qps_duration;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut client = channel().await?;
        let done = done.clone();
        let hosts = QPS_HOSTS.min(args.hosts);
        let req = move |k: usize| RangeRequest {
            host: host_id(k % hosts),
            start,
            end,
            metrics: vec![metric_name(0)],
            limit: 0,
            max_points: 0,
        };
        tasks.push(tokio::spawn(async move {
            let mut k = c;
            while Instant::now() < until && done.load(Ordering::Relaxed) < QPS_MAX_REQUESTS {
                client.range(req(k)).await?;
                done.fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let qps = done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();

    let _ = stop_tx.send(());
    server.await??;
    writer.shutdown().await;

    let (u50, u99) = percentiles(uncached);
    let (c50, c99) = percentiles(cached);
    let (a1_50, a1_99) = percentiles(agg1);
    let (a100_50, a100_99) = percentiles(agg100);
    eprintln!();
    eprintln!("{:<44} {:>10} {:>10}", "query (gRPC)", "p50 ms", "p99 ms");
    eprintln!(
        "{:<44} {u50:>10.2} {u99:>10.2}",
        "range 1 host x 1 h, all metrics, uncached"
    );
    eprintln!(
        "{:<44} {c50:>10.2} {c99:>10.2}",
        "range 1 host x 1 h, all metrics, cached"
    );
    eprintln!(
        "{:<44} {a1_50:>10.2} {a1_99:>10.2}",
        "avg per 1 min over 1 h, 1 host"
    );
    eprintln!(
        "{:<44} {a100_50:>10.2} {a100_99:>10.2}",
        "avg per 1 min over 1 h, 100 hosts"
    );
    eprintln!(
        "cached rate: {qps:.0} queries/s ({} clients, range 1 host x 1 h, 1 metric)",
        args.clients
    );
    let json = serde_json::json!({
        "layout": args.layout,
        "range_1h_p99_ms_uncached": u99,
        "range_1h_p99_ms_cached": c99,
        "agg_100hosts_1h_p99_ms": a100_99,
        "cached_qps": qps,
        "range_1h_p50_ms_uncached": u50,
        "range_1h_p50_ms_cached": c50,
        "agg_1host_1h_p50_ms": a1_50,
        "agg_1host_1h_p99_ms": a1_99,
        "agg_100hosts_1h_p50_ms": a100_50,
        "fill_points_per_s": total as f64 / fill_secs,
        "hosts": args.hosts,
        "snapshots_per_host": n,
        "metrics": args.metrics,
        "clients": args.clients,
    });
    println!("{json}");
    Ok(())
}
