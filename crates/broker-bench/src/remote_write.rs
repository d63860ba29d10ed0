//! `broker-bench remote-write`: Prometheus remote write 1.0 into the
//! all-in-one broker (a child process) on a fresh Redis, as Prometheus
//! sends it: snappy-compressed `prometheus.WriteRequest`s of
//! `--samples-per-request` samples (Prometheus's `max_samples_per_send`
//! default, 2,000), over `--connections` keep-alive connections (its
//! shards). The series look like node_exporter's: per host, `--series`
//! series of a few metric names with `cpu` / `device` / `mode` labels and a
//! `job` label, one sample per series per round, 15 s apart. Requests are
//! encoded before the clock starts; the clock stops when every request was
//! answered 204 (acked = durable). Bounded by `--samples` and `--duration`.

use crate::{IngestArgs, port, spawn_serve, wait_serving};
use anyhow::Context;
use broker_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use prost::Message;
use redis_process::RedisServer;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub(crate) struct RemoteWriteArgs {
    #[command(flatten)]
    pub ingest: IngestArgs,
    /// Series per host.
    #[arg(long, default_value_t = 200)]
    pub series: usize,
    /// Samples per request (Prometheus's max_samples_per_send).
    #[arg(long, default_value_t = 2_000)]
    pub samples_per_request: usize,
    /// Samples sent in all.
    #[arg(long, default_value_t = 2_000_000)]
    pub samples: usize,
}

/// The labels of series `i` of a host, node_exporter-like.
fn series_labels(host: &str, i: usize) -> Vec<Label> {
    const MODES: [&str; 8] = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    let l = |n: &str, v: String| Label {
        name: n.into(),
        value: v,
    };
    let mut labels = match i % 4 {
        0 | 1 => vec![
            l("__name__", "node_cpu_seconds_total".into()),
            l("cpu", (i / 8).to_string()),
            l("mode", MODES[i % 8].into()),
        ],
        2 => vec![
            l("__name__", "node_network_receive_bytes_total".into()),
            l("device", format!("eth{i}")),
        ],
        _ => vec![l("__name__", format!("node_memory_{i}_bytes"))],
    };
    labels.push(l("instance", format!("{host}:9100")));
    labels.push(l("job", "node".into()));
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

/// The requests of the run, encoded and compressed, and their samples.
fn requests(args: &RemoteWriteArgs, now_ms: i64) -> (Vec<Vec<u8>>, usize) {
    let hosts = args.ingest.hosts.max(1);
    let per_round = hosts * args.series.max(1);
    let rounds = args.samples.div_ceil(per_round).max(1);
    let mut out = Vec::new();
    let mut samples = 0;
    let mut req = WriteRequest::default();
    let mut encoder = snap::raw::Encoder::new();
    for round in 0..rounds {
        // Oldest first, 15 s apart, ending a minute ago.
        let ts = now_ms - 60_000 - (rounds - 1 - round) as i64 * 15_000;
        for h in 0..hosts {
            let host = format!("host-{h:05}");
            // Each target is scraped at its own offset, to the millisecond.
            let scraped = ts + (h as i64 * 7_919) % 15_000;
            for i in 0..args.series {
                req.timeseries.push(TimeSeries {
                    labels: series_labels(&host, i),
                    samples: vec![Sample {
                        value: (round * 7 + i) as f64 * 1.5,
                        timestamp: scraped,
                    }],
                });
                samples += 1;
                if req.timeseries.len() >= args.samples_per_request {
                    out.push(
                        encoder
                            .compress_vec(&std::mem::take(&mut req).encode_to_vec())
                            .expect("snappy"),
                    );
                }
            }
        }
    }
    if !req.timeseries.is_empty() {
        out.push(encoder.compress_vec(&req.encode_to_vec()).expect("snappy"));
    }
    (out, samples)
}

pub(crate) async fn run(args: RemoteWriteArgs) -> anyhow::Result<()> {
    let redis = RedisServer::start().context("starting redis-server")?;
    let grpc = port()?;
    let child = spawn_serve(
        &args.ingest,
        &[],
        grpc,
        &["--redis-url".into(), redis.url()],
    )?;
    wait_serving(grpc).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let (bodies, samples) = requests(&args, now_ms);
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    eprintln!(
        "remote-write: {samples} samples ({} hosts x {} series) in {} requests, {} MiB compressed, over {} connections",
        args.ingest.hosts,
        args.series,
        bodies.len(),
        bytes >> 20,
        args.ingest.connections
    );
    let http = child.http;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies = std::sync::Arc::new(bodies);
    let deadline = Instant::now() + args.ingest.duration.max(Duration::from_secs(1)) * 4;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.ingest.connections.max(1) {
        let (next, bodies) = (next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = crate::vm::connect(http).await?;
            let mut sent = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return Ok::<_, anyhow::Error>(sent);
                };
                anyhow::ensure!(Instant::now() < deadline, "the run took too long");
                let (status, text) = crate::vm::request_with(
                    &mut conn,
                    "POST",
                    "/api/v1/write",
                    "Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n",
                    body,
                )
                .await?;
                anyhow::ensure!(status == 204, "remote write answered {status}: {text}");
                sent += 1;
            }
        }));
    }
    let mut requests = 0;
    for t in tasks {
        requests += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let sps = samples as f64 / secs;
    eprintln!(
        "remote-write: {requests} requests, {samples} samples in {secs:.2} s: {sps:.0} samples/s ({:.0} requests/s)",
        requests as f64 / secs
    );
    println!(
        "{}",
        serde_json::json!({
            "layout": args.ingest.layout,
            "remote_write_samples_per_s": sps,
            "remote_write_requests_per_s": requests as f64 / secs,
            "samples": samples,
            "samples_per_request": args.samples_per_request,
            "connections": args.ingest.connections,
        })
    );
    drop(child);
    Ok(())
}
