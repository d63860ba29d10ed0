//! `broker-bench`: benchmarks that start a real Redis and the real services
//! and print figures. Not tests: nothing here asserts a speed.
//!
//! - `broker-bench ingest [--layout seed|chunked]`: the Redis ceiling for
//!   the layout's command mix, the all-in-one broker (`mono`) and separate
//!   gateway/router/writer processes (`micro`) on the same Redis, Redis
//!   memory per point and per sample at rest ([`layout`]), and
//!   VictoriaMetrics on the same data when installed ([`vm`]). Ends with
//!   one JSON line on stdout.
//! - `broker-bench query`: query-api latency (range, aggregation) and the
//!   cached query rate over 1,000 hosts x 1 h filled through the writer
//!   ([`query`]). Ends with one JSON line on stdout.
//!
//! - `broker-bench hosts`: what host-manager costs the ingest path
//!   (`mono_pps` without and with it, one run) and how fast it notices a
//!   host going down and delivers the alert ([`hosts`]).
//! - `broker-bench remote-write`: Prometheus remote write into the
//!   all-in-one broker, samples/s ([`remote_write`]).
//! - `broker-bench chunks`: bytes per sample of sealed chunks with
//!   whole-second and millisecond timestamps ([`chunks`]).
//! - `broker-bench week`: a week of a fleet, time-compressed ([`week`]).
//!
//! The service processes are this same binary re-executed with the hidden
//! `serve` subcommand (the all-in-one `broker::run`), so the bench needs
//! nothing else built.

#![forbid(unsafe_code)]

/// mimalloc: the data path allocates many small buffers per point from
/// several threads; glibc malloc spent a quarter of the broker's CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod chunks;
mod hosts;
mod layout;
mod query;
mod remote_write;
mod vm;
mod week;

use anyhow::Context;
use broker_agent::generator::SnapshotGenerator;
use broker_agent::load::{LoadConfig, Pacing, run_load};
use broker_common::Service;
use clap::{Parser, Subcommand};
use redis_process::RedisServer;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "broker-bench",
    about = "Broker benchmarks (they print figures; they assert nothing)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Ingest throughput: Redis ceiling vs all-in-one vs separate processes.
    Ingest(IngestArgs),
    /// Degraded modes: ingest into the spool while Redis is down and the
    /// replay rate when it returns; ingest with one of three writers down
    /// as a ratio of the healthy rate.
    Faults(IngestArgs),
    /// Query latency and cached rate of query-api over 1,000 hosts x 1 h
    /// filled through the writer.
    Query(query::QueryArgs),
    /// host-manager: ingest with and without it, host-down detection and
    /// alert delivery latency.
    Hosts(IngestArgs),
    /// Prometheus remote write into the all-in-one broker: samples/s.
    RemoteWrite(remote_write::RemoteWriteArgs),
    /// Bytes per sample of sealed chunks with whole-second and
    /// millisecond timestamps (no Redis).
    Chunks(chunks::ChunksArgs),
    /// A week of a fleet on one Redis (time-compressed): memory, host
    /// lists, idle Redis CPU, long ranges and fleet PromQL, beside
    /// VictoriaMetrics on the same samples.
    Week(week::WeekArgs),
    /// Internal: run broker services (used by `ingest` for its children).
    #[command(hide = true)]
    Serve {
        #[command(flatten)]
        config: broker_common::cli::ConfigArgs,
        #[arg(long = "service")]
        services: Vec<Service>,
    },
}

#[derive(clap::Args, Clone)]
pub(crate) struct IngestArgs {
    /// Simulated hosts. With 10,000 a host appears at most once per writer
    /// pipeline, as with real agents sending every 5 s.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Metrics per point.
    #[arg(long, default_value_t = 32)]
    metrics: usize,
    /// Points per agent batch.
    #[arg(long, default_value_t = 500)]
    batch_hosts: usize,
    /// Agent streams.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Outstanding batches per stream.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Load time of each of mono and micro.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Points sent raw to Redis for the ceiling.
    #[arg(long, default_value_t = 400_000)]
    ceiling_points: usize,
    /// Skip a phase: ceiling, mono or micro (repeatable).
    #[arg(long)]
    skip: Vec<String>,
    /// Extra `KEY=VALUE` config for every broker process, e.g.
    /// `--broker-set writer.pool_size=2` (repeatable).
    #[arg(long = "broker-set", value_name = "KEY=VALUE")]
    broker_set: Vec<String>,
    /// Key layout of the broker processes and the ceiling: seed or chunked.
    #[arg(long, default_value = broker_common::config::DEFAULT_LAYOUT)]
    layout: String,
    /// Points sent to VictoriaMetrics (when `victoria-metrics` is
    /// installed) for the side-by-side figures; 0 skips it.
    #[arg(long, default_value_t = 400_000)]
    vm_points: usize,
    /// VictoriaMetrics import API: csv (a row per snapshot) or prometheus
    /// (a text line per sample).
    #[arg(long, value_enum, default_value = "csv")]
    vm_format: vm::Format,
    /// What the values look like: realistic (counters, gauges, constants)
    /// or synthetic (a third uniform noise), for the load, the ceiling and
    /// VictoriaMetrics alike.
    #[arg(long, value_enum, default_value = "realistic")]
    mix: broker_agent::generator::Mix,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve { config, services } => {
            let config = config.load_or_exit();
            let services = if services.is_empty() {
                Service::DEFAULT.to_vec()
            } else {
                services
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(broker::run_until_signal(config, &services))
        }
        Cmd::Faults(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(faults(args))
        }
        Cmd::Query(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(query::run(args))
        }
        Cmd::Hosts(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(hosts::run(args))
        }
        Cmd::RemoteWrite(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(remote_write::run(args))
        }
        Cmd::Chunks(args) => chunks::run(args),
        Cmd::Week(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(week::run(args))
        }
        Cmd::Ingest(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(ingest(args))
        }
    }
}

/// A service child process, killed (SIGTERM then wait) on drop.
pub(crate) struct Child_ {
    child: Child,
    /// Its admin HTTP port.
    http: u16,
    /// Removed after the process is gone.
    _spool: tempfile::TempDir,
}

impl Drop for Child_ {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--set` flags that let the whole simulated fleet in at once: the bench
/// measures a fleet at its steady pace, not its onboarding (new hosts are
/// otherwise admitted at `writer.max_new_hosts_per_minute` per writer, so
/// 10,000 hosts arriving in one second would wait five minutes).
/// `--broker-set` comes after and wins.
fn fleet_admitted(args: &IngestArgs) -> [String; 4] {
    [
        "--set".into(),
        format!("writer.max_hosts={}", args.hosts.max(1) * 2),
        "--set".into(),
        format!("writer.max_new_hosts_per_minute={}", args.hosts.max(1) * 2),
    ]
}

pub(crate) fn port() -> anyhow::Result<u16> {
    Ok(redis_process::free_port()?)
}

pub(crate) fn spawn_serve(
    args: &IngestArgs,
    services: &[&str],
    grpc: u16,
    extra: &[String],
) -> anyhow::Result<Child_> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve");
    for s in services {
        cmd.args(["--service", s]);
    }
    cmd.args(["--grpc-listen", &format!("127.0.0.1:{grpc}")]);
    let http = port()?;
    cmd.args(["--http-listen", &format!("127.0.0.1:{http}")]);
    cmd.args(["--set", "telemetry.log_level=warn"]);
    // A fresh spool per process, so runs never replay each other's data.
    let spool = tempfile::Builder::new()
        .prefix("broker-bench-spool-")
        .tempdir()?;
    cmd.args([
        "--set",
        &format!("writer.spool_dir={}", spool.path().display()),
    ]);
    cmd.args(["--set", &format!("writer.layout={}", args.layout)]);
    cmd.args(fleet_admitted(args));
    cmd.args(extra);
    for kv in &args.broker_set {
        cmd.args(["--set", kv]);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
    Ok(Child_ {
        child: cmd.spawn()?,
        http,
        _spool: spool,
    })
}

pub(crate) async fn wait_serving(grpc: u16) -> anyhow::Result<()> {
    broker_common::serve::wait_serving(&format!("http://127.0.0.1:{grpc}"), Duration::from_secs(30))
        .await
}

/// Gateway, router and `writers` writers as separate processes on `redis`:
/// the tests' sandbox, each service run by this binary's `serve`.
struct Separate {
    sb: broker_sandbox::Sandbox,
    /// Configs and spools; removed after the processes are gone.
    _dir: tempfile::TempDir,
}

impl Separate {
    async fn start(args: &IngestArgs, redis: &RedisServer, writers: usize) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("broker-bench-").tempdir()?;
        let mut extra = vec!["--set".to_string(), "telemetry.log_level=warn".to_string()];
        extra.extend(fleet_admitted(args));
        for kv in &args.broker_set {
            extra.extend(["--set".to_string(), kv.clone()]);
        }
        let program =
            broker_sandbox::Program::new(std::env::current_exe()?, &["serve"]).with_extra(extra);
        let mut sb = broker_sandbox::Sandbox::builder(program)
            .writers(writers)
            .routers(1)
            .gateways(1)
            .configure({
                let layout = args.layout.clone();
                move |c| c.writer.layout = layout.clone()
            })
            .build(&redis.url(), dir.path());
        sb.try_start_all().await.map_err(anyhow::Error::msg)?;
        Ok(Self { sb, _dir: dir })
    }

    fn gateway_endpoint(&self) -> String {
        self.sb.gateway_endpoints()[0].clone()
    }
}

pub(crate) struct Phase {
    name: &'static str,
    points: u64,
    secs: f64,
    ack_p99_ms: Option<f64>,
}

impl Phase {
    fn pps(&self) -> f64 {
        self.points as f64 / self.secs
    }
}

/// Redis memory of the mono run's data at rest.
struct Memory {
    points: u64,
    bytes: f64,
    /// Chunked layout: records sealed after the load, and how long it took.
    sealed: Option<(u64, f64)>,
}

impl Memory {
    fn per_point(&self) -> Option<f64> {
        (self.points > 0).then(|| self.bytes / self.points as f64)
    }
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let layout = layout::by_name(&args.layout)?;
    let redis = RedisServer::start().context("starting redis-server")?;
    eprintln!(
        "redis-server {} (no persistence), layout {}",
        redis.url(),
        args.layout
    );
    let mut phases: Vec<Phase> = Vec::new();
    let skip = |p: &str| args.skip.iter().any(|s| s == p);
    let hosts: Vec<String> = (0..args.hosts)
        .map(broker_agent::generator::host_id)
        .collect();

    if !skip("ceiling") {
        phases.push(ceiling(&redis, &args)?);
    }
    let mut memory = None;
    if !skip("mono") {
        redis.command(&["FLUSHALL"])?;
        let before: f64 = redis.info_field("memory", "used_memory")?.parse()?;
        let grpc = port()?;
        let child = spawn_serve(&args, &[], grpc, &["--redis-url".into(), redis.url()])?;
        wait_serving(grpc).await?;
        let phase = load("mono", &args, vec![format!("http://127.0.0.1:{grpc}")]).await?;
        drop(child);
        let db = layout::client(&redis.url()).await?;
        // At rest: the chunked layout's open chunks sealed, as the
        // writers' maintainers would seal them over the next minutes.
        let sealed = if args.layout == "chunked" {
            let (n, secs) = layout::seal_all(&db, &hosts, 7 * 86_400).await?;
            eprintln!(
                "sealed {n} open records in {secs:.1} s ({:.0} points/s)",
                n as f64 / secs
            );
            Some((n, secs))
        } else {
            None
        };
        let after: f64 = redis.info_field("memory", "used_memory")?.parse()?;
        let stored = layout::stored_points(&db, &*layout, &hosts).await?;
        let read = layout::read_back(&db, &*layout, &hosts).await?;
        eprintln!(
            "mono: {stored} points stored in redis as the layout counts them, {read} distinct read back (acked {})",
            phase.points
        );
        memory = Some(Memory {
            points: stored,
            bytes: after - before,
            sealed,
        });
        phases.push(phase);
    }
    if !skip("micro") {
        redis.command(&["FLUSHALL"])?;
        let micro = Separate::start(&args, &redis, 1).await?;
        let phase = load("micro", &args, vec![micro.gateway_endpoint()]).await?;
        drop(micro);
        phases.push(phase);
    }
    drop(redis);
    let vm = match (args.vm_points, vm::binary()) {
        (0, _) => None,
        (_, None) => {
            eprintln!(
                "victoria-metrics: not installed, no side-by-side figures (apt-get install victoria-metrics)"
            );
            None
        }
        (n, Some(bin)) => Some(
            vm::run(
                &bin,
                args.vm_format,
                &SnapshotGenerator::new(args.hosts, args.metrics).with_mix(args.mix),
                args.batch_hosts,
                args.connections,
                n,
            )
            .await?,
        ),
    };

    let get = |n: &str| phases.iter().find(|p| p.name == n);
    let ceiling_pps = get("ceiling").map(Phase::pps);
    eprintln!();
    eprintln!(
        "{:<10} {:>12} {:>10} {:>12} {:>10} {:>10}",
        "phase", "points", "seconds", "points/s", "ratio", "ack p99"
    );
    for p in &phases {
        eprintln!(
            "{:<10} {:>12} {:>10.2} {:>12.0} {:>10} {:>10}",
            p.name,
            p.points,
            p.secs,
            p.pps(),
            ceiling_pps.map_or("-".into(), |c| format!("{:.2}", p.pps() / c)),
            p.ack_p99_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
        );
    }
    if let Some(v) = &vm {
        eprintln!(
            "{:<10} {:>12} {:>10.2} {:>12.0} {:>10} {:>10}",
            "vm",
            v.points,
            v.secs,
            v.pps(),
            "-",
            "-"
        );
    }
    let per_point = memory.as_ref().and_then(Memory::per_point);
    let per_sample = per_point.map(|b| b / args.metrics as f64);
    if let (Some(b), Some(s)) = (per_point, per_sample) {
        eprintln!(
            "redis memory per stored point ({} layout, at rest): {b:.0} bytes, {s:.2} bytes per sample ({} metrics per point)",
            args.layout, args.metrics
        );
    }
    if let Some(v) = &vm {
        eprintln!(
            "victoria-metrics: {:.0} points/s, {} bytes per sample on disk ({} samples found of {} sent)",
            v.pps(),
            v.bytes_per_sample.map_or("-".into(), |b| format!("{b:.2}")),
            v.samples_found.map_or("-".into(), |n| n.to_string()),
            v.samples_sent,
        );
        if let Some(m) = get("mono") {
            eprintln!("mono / victoria-metrics: {:.2}", m.pps() / v.pps());
        }
    }
    let ratio = |n: &str| match (get(n), ceiling_pps) {
        (Some(p), Some(c)) => serde_json::json!(p.pps() / c),
        _ => serde_json::Value::Null,
    };
    let sealed = memory.as_ref().and_then(|m| m.sealed);
    let json = serde_json::json!({
        "layout": args.layout,
        "mix": args.mix.to_string(),
        "ceiling_pps": ceiling_pps,
        "mono_pps": get("mono").map(Phase::pps),
        "micro_pps": get("micro").map(Phase::pps),
        "mono_ratio": ratio("mono"),
        "micro_ratio": ratio("micro"),
        "ack_p99_ms": get("mono").and_then(|p| p.ack_p99_ms),
        "micro_ack_p99_ms": get("micro").and_then(|p| p.ack_p99_ms),
        "redis_bytes_per_point": per_point,
        "redis_bytes_per_sample": per_sample,
        "seal_pps": sealed.map(|(n, secs)| n as f64 / secs),
        "vm_pps": vm.as_ref().map(vm::VmFigures::pps),
        "vm_format": vm.as_ref().map(|_| format!("{:?}", args.vm_format).to_lowercase()),
        "vm_bytes_per_sample": vm.as_ref().and_then(|v| v.bytes_per_sample),
        "mono_vs_vm": match (get("mono"), &vm) {
            (Some(m), Some(v)) => serde_json::json!(m.pps() / v.pps()),
            _ => serde_json::Value::Null,
        },
        "metrics_per_point": args.metrics,
    });
    println!("{json}");
    Ok(())
}

/// The same command mix the writer sends, for the same kind of points,
/// pre-encoded as RESP and piped raw into Redis with `redis-cli --pipe`.
fn ceiling(redis: &RedisServer, args: &IngestArgs) -> anyhow::Result<Phase> {
    use bytes::BytesMut;
    use redis_protocol::resp2::types::BytesFrame;
    redis.command(&["FLUSHALL"])?;
    let generator = SnapshotGenerator::new(args.hosts, args.metrics).with_mix(args.mix);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let rounds = args.ceiling_points.div_ceil(args.hosts);
    // Group batches into pipelines the way the writer does (up to
    // writer.batch_max_points points each), so per-host commands are
    // shared across batches exactly as far as the writer can share them:
    // the ceiling gets the writer's cheapest possible command mix.
    let per_pipeline = broker_common::config::WriterConfig::default().batch_max_points;
    let mut buf = BytesMut::with_capacity(args.ceiling_points * 1200);
    let mut commands = Vec::new();
    let mut points = 0u64;
    let mut group = Vec::new();
    let mut group_points = 0;
    let layout = layout::by_name(&args.layout)?;
    let mut flush = |group: &mut Vec<broker_proto::v1::MetricBatch>,
                     buf: &mut BytesMut|
     -> anyhow::Result<()> {
        let refs: Vec<_> = group.iter().collect();
        commands.clear();
        layout.write_commands(
            &refs,
            storage_layout::Arrival::Live,
            7 * 86_400,
            now,
            &mut commands,
        );
        for c in commands.drain(..) {
            let mut items = Vec::with_capacity(1 + c.args.len());
            items.push(BytesFrame::BulkString(bytes::Bytes::from_static(
                c.name.as_bytes(),
            )));
            items.extend(c.args.into_iter().map(BytesFrame::BulkString));
            redis_protocol::resp2::encode::extend_encode(buf, &BytesFrame::Array(items), false)?;
        }
        group.clear();
        Ok(())
    };
    for round in 0..rounds {
        for range in generator.batch_ranges(args.batch_hosts) {
            let batch = generator.batch(now - round as i64, range);
            points += batch.points.len() as u64;
            group_points += batch.points.len();
            group.push(batch);
            if group_points >= per_pipeline {
                flush(&mut group, &mut buf)?;
                group_points = 0;
            }
        }
    }
    flush(&mut group, &mut buf)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ceiling.resp");
    std::fs::File::create(&path)?.write_all(&buf)?;
    eprintln!(
        "ceiling: {points} points as {} MiB of RESP, piping into redis",
        buf.len() >> 20
    );
    let started = Instant::now();
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string(), "--pipe"])
        .stdin(std::fs::File::open(&path)?)
        .output()
        .context("running redis-cli --pipe")?;
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && text.contains("errors: 0"),
        "redis-cli --pipe failed: {text}"
    );
    Ok(Phase {
        name: "ceiling",
        points,
        secs,
        ack_p99_ms: None,
    })
}

pub(crate) async fn load(
    name: &'static str,
    args: &IngestArgs,
    endpoints: Vec<String>,
) -> anyhow::Result<Phase> {
    load_at_most(name, args, endpoints, None).await
}

/// [`load`], ending early after `max_points` points.
async fn load_at_most(
    name: &'static str,
    args: &IngestArgs,
    endpoints: Vec<String>,
    max_points: Option<u64>,
) -> anyhow::Result<Phase> {
    eprintln!("{name}: load for {:?}", args.duration);
    let report = run_load(LoadConfig {
        endpoints,
        hosts: args.hosts,
        metrics: args.metrics,
        batch_hosts: args.batch_hosts,
        connections: args.connections,
        window: args.window,
        pacing: Pacing::Max,
        duration: Some(args.duration),
        max_points,
        labels: false,
        print_progress: true,
        mix: args.mix,
        ..LoadConfig::default()
    })
    .await?;
    anyhow::ensure!(
        report.failed == 0 && report.rejected == 0,
        "{name}: {} points failed, {} rejected",
        report.failed,
        report.rejected
    );
    Ok(Phase {
        name,
        points: report.acked,
        secs: report.elapsed.as_secs_f64(),
        ack_p99_ms: Some(report.latency.p99_ms),
    })
}

/// Points the Redis-down phase of `faults` sends at most.
const SPOOL_PHASE_MAX_POINTS: u64 = 1_500_000;

/// `broker-bench faults`: figures for degraded operation.
async fn faults(args: IngestArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.layout == "seed",
        "faults knows the replay is done by counting the seed layout's keys, so it runs the seed layout only (got --layout {})",
        args.layout
    );
    // 1. Redis down: everything goes through the spool (fsync per batch
    //    group), then the replay into Redis once it is back.
    let mut redis = RedisServer::start().context("starting redis-server")?;
    let grpc = port()?;
    let child = spawn_serve(
        &args,
        &[],
        grpc,
        &[
            "--redis-url".into(),
            redis.url(),
            "--set".into(),
            "writer.redis_timeout=1s".into(),
        ],
    )?;
    wait_serving(grpc).await?;
    redis.stop();
    // The spool is bounded (`writer.spool_max_bytes`, 1 GiB): with the
    // default load it holds about 3 million points, which a fast disk fills
    // within the phase's duration. Stop well before, so the phase measures
    // the spool's rate and not its refusals.
    let spooled = load_at_most(
        "spool",
        &args,
        vec![format!("http://127.0.0.1:{grpc}")],
        Some(SPOOL_PHASE_MAX_POINTS),
    )
    .await?;
    let started = Instant::now();
    redis.restart()?;
    // Every stored point is one data key; hosts add two keys each.
    let want = spooled.points + 2 * args.hosts.min(spooled.points as usize) as u64;
    let deadline = started + Duration::from_secs(600);
    loop {
        let keys: u64 = redis.command(&["DBSIZE"])?.parse()?;
        if keys >= want {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replay did not finish in 600 s ({keys} of {want} keys)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replay_secs = started.elapsed().as_secs_f64();
    drop(child);
    eprintln!(
        "spool: {:.0} points/s accepted with redis down; replay {:.0} points/s ({} points in {:.1} s)",
        spooled.pps(),
        spooled.points as f64 / replay_secs,
        spooled.points,
        replay_secs
    );

    // 2. Three writers; then one of them killed.
    redis.command(&["FLUSHALL", "ASYNC"])?;
    // Let Redis finish freeing in the background before measuring again.
    while redis.info_field("memory", "lazyfree_pending_objects")? != "0" {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut three = Separate::start(&args, &redis, 3).await?;
    let endpoint = vec![three.gateway_endpoint()];
    let healthy = load("3 writers", &args, endpoint.clone()).await?;
    three.sb.writers[1].kill9();
    let degraded = load("2 of 3 writers", &args, endpoint).await?;

    eprintln!();
    eprintln!(
        "ingest with redis down (spooled): {:.0} points/s",
        spooled.pps()
    );
    eprintln!(
        "replay into redis:                 {:.0} points/s ({} points in {:.1} s)",
        spooled.points as f64 / replay_secs,
        spooled.points,
        replay_secs
    );
    eprintln!(
        "3 writers:                         {:.0} points/s",
        healthy.pps()
    );
    eprintln!(
        "one of 3 writers killed:           {:.0} points/s (ratio {:.2})",
        degraded.pps(),
        degraded.pps() / healthy.pps()
    );
    println!(
        "{}",
        serde_json::json!({
            "spool_ingest_pps": spooled.pps(),
            "replay_pps": spooled.points as f64 / replay_secs,
            "three_writers_pps": healthy.pps(),
            "one_writer_down_pps": degraded.pps(),
            "one_writer_down_ratio": degraded.pps() / healthy.pps(),
        })
    );
    Ok(())
}
