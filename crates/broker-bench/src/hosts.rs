//! `broker-bench hosts`: what host-manager costs and how fast it reacts.
//!
//! 1. `mono` ingest as `broker-bench ingest` measures it, without and
//!    with host-manager in the same process, alternated twice (default settings: the
//!    inventory refreshed from the writers' host metadata every 5 s, so
//!    the ingest path itself does nothing per point); the ratio is the
//!    inventory's cost.
//! 2. Host-down detection: a host sends one point and stops; the time from
//!    the moment it is due down (`last point + down_after`) to host-manager
//!    listing it `down`, and from there to the HostDown alert in a real
//!    Alertmanager (`prometheus-alertmanager`, when installed).

use crate::{IngestArgs, load, port, spawn_serve, wait_serving};
use anyhow::Context;
use broker_agent::generator::SnapshotGenerator;
use host_manager::http_client::HttpClient;
use redis_process::RedisServer;
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const DOWN_AFTER_S: u64 = 4;

async fn get_json(http: &HttpClient, url: &str) -> Option<serde_json::Value> {
    let text = http.get_text(url, Duration::from_secs(5)).await.ok()?;
    serde_json::from_str(&text).ok()
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let redis = RedisServer::start().context("starting redis-server")?;
    eprintln!("redis-server {} (no persistence)", redis.url());
    // A, B, A, B: the two alternate so that drift (Redis warming up, the
    // machine's other work) falls on both alike; each figure is the mean
    // of its two runs.
    let mut runs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let phases: [(&'static str, Vec<&str>); 2] = [
        ("mono", vec![]),
        (
            "mono+host-manager",
            vec![
                "ingest-gateway",
                "shard-router",
                "storage-writer",
                "query-api",
                "host-manager",
            ],
        ),
    ];
    for _ in 0..2 {
        for (i, (name, services)) in phases.iter().enumerate() {
            redis.command(&["FLUSHALL"])?;
            let grpc = port()?;
            let child = spawn_serve(&args, services, grpc, &["--redis-url".into(), redis.url()])?;
            wait_serving(grpc).await?;
            let phase = load(name, &args, vec![format!("http://127.0.0.1:{grpc}")]).await?;
            drop(child);
            eprintln!(
                "{name}: {:.0} points/s, ack p99 {:.1} ms",
                phase.pps(),
                phase.ack_p99_ms.unwrap_or(0.0)
            );
            runs[i].push(phase.pps());
        }
    }
    let pps: Vec<f64> = runs
        .iter()
        .map(|r| r.iter().sum::<f64>() / r.len() as f64)
        .collect();
    let ratio = pps[1] / pps[0];

    // Detection and alert latency.
    redis.command(&["FLUSHALL"])?;
    let dir = tempfile::tempdir()?;
    let am = start_alertmanager(dir.path());
    let grpc = port()?;
    let mut extra = vec!["--redis-url".to_string(), redis.url()];
    for kv in [
        "host_manager.refresh_interval=500ms".to_string(),
        "host_manager.report_interval=1s".into(),
        format!("host_manager.down_after={DOWN_AFTER_S}s"),
        "host_manager.alerts.interval=500ms".into(),
    ] {
        extra.push("--set".into());
        extra.push(kv);
    }
    if let Some((_, url)) = &am {
        extra.push("--set".into());
        extra.push(format!("host_manager.alerts.alertmanagers=['{url}']"));
    }
    let services = [
        "ingest-gateway",
        "shard-router",
        "storage-writer",
        "host-manager",
    ];
    let child = spawn_serve(&args, &services, grpc, &extra)?;
    let admin = child.http;
    wait_serving(grpc).await?;
    let http = HttpClient::default();
    let endpoint = format!("http://127.0.0.1:{grpc}");
    let generator = SnapshotGenerator::new(ROUNDS, 4);
    let (mut detect, mut deliver) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let host = broker_agent::generator::host_id(round);
        let ts = broker_common::unix_now_ms() / 1000;
        let batch = generator.batch(ts, round..round + 1);
        let mut client = broker_proto::v1::monitor_service_client::MonitorServiceClient::connect(
            endpoint.clone(),
        )
        .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(batch).await?;
        drop(tx);
        let mut acks = client.send_metrics(tokio_stream_of(rx)).await?.into_inner();
        while acks.message().await?.is_some() {}
        let due_ms = (ts + DOWN_AFTER_S as i64) * 1000;
        let deadline = Instant::now() + Duration::from_secs(30);
        let down_ms = loop {
            let v = get_json(
                &http,
                &format!("http://127.0.0.1:{admin}/api/hosts?state=down"),
            )
            .await;
            if v.as_ref()
                .and_then(|v| v["hosts"].as_array())
                .is_some_and(|a| a.iter().any(|h| h["id"] == host))
            {
                break broker_common::unix_now_ms();
            }
            anyhow::ensure!(Instant::now() < deadline, "{host} never listed down");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        detect.push((down_ms - due_ms) as f64);
        if let Some((_, url)) = &am {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let v = get_json(&http, &format!("{url}/api/v2/alerts")).await;
                if v.as_ref().and_then(|v| v.as_array()).is_some_and(|a| {
                    a.iter().any(|x| {
                        x["labels"]["alertname"] == "HostDown" && x["labels"]["host"] == host
                    })
                }) {
                    deliver.push((broker_common::unix_now_ms() - down_ms) as f64);
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "HostDown for {host} never reached alertmanager"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        eprintln!(
            "{host}: listed down {:.0} ms after due{}",
            detect[round],
            deliver.get(round).map_or(String::new(), |d| format!(
                ", HostDown in alertmanager {d:.0} ms later"
            ))
        );
    }
    drop(child);
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let max = |v: &[f64]| {
        v.iter()
            .cloned()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    eprintln!();
    eprintln!("mono without host-manager: {:.0} points/s", pps[0]);
    eprintln!(
        "mono with host-manager:    {:.0} points/s ({:.3} of it)",
        pps[1], ratio
    );
    eprintln!(
        "host-down detection after due (refresh 500 ms): mean {:.0} ms, max {:.0} ms",
        mean(&detect).unwrap_or(0.0),
        max(&detect).unwrap_or(0.0)
    );
    match mean(&deliver) {
        Some(m) => eprintln!(
            "alert delivery (alerts.interval 500 ms): mean {m:.0} ms, max {:.0} ms",
            max(&deliver).unwrap_or(0.0)
        ),
        None => eprintln!("alert delivery: prometheus-alertmanager not installed, not measured"),
    }
    println!(
        "{}",
        serde_json::json!({
            "mono_pps": pps[0],
            "mono_with_host_manager_pps": pps[1],
            "host_manager_ratio": ratio,
            "down_detection_ms_mean": mean(&detect),
            "down_detection_ms_max": max(&detect),
            "alert_delivery_ms_mean": mean(&deliver),
            "alert_delivery_ms_max": max(&deliver),
            "metrics_per_point": args.metrics,
            "hosts": args.hosts,
        })
    );
    if let Some((mut c, _)) = am {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<broker_proto::v1::MetricBatch>,
) -> impl futures::Stream<Item = broker_proto::v1::MetricBatch> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A real Alertmanager on a free loopback port, if the package is there.
fn start_alertmanager(dir: &std::path::Path) -> Option<(std::process::Child, String)> {
    let p = port().ok()?;
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .ok()?;
    let child = std::process::Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{p}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // ready within a few seconds
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", p)).is_ok() {
            return Some((child, format!("http://127.0.0.1:{p}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
