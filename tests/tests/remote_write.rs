//! Prometheus remote write into the gateway (`POST /api/v1/write`):
//! a real Prometheus (Debian `prometheus`) scraping a real node_exporter
//! (Debian `prometheus-node-exporter`) on loopback and remote-writing to the
//! broker, whose query-api then answers PromQL over the same series; and the
//! endpoint's answers to bad data and to a Redis that is gone, with a
//! hand-built request.

use broker_common::Service;
use broker_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use broker_tests::{RedisServer, Running, config_for, enc, http, now};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVICES: &[Service] = &Service::DEFAULT;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &'static str, args: &[String], log: &std::path::Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin} (scripts/deps.sh installs it): {e}"));
    Proc(child)
}

fn port() -> u16 {
    redis_process::free_port().unwrap()
}

/// `/api/v1/query` of `addr` (query-api or Prometheus): the result vector.
async fn instant(addr: SocketAddr, q: &str) -> Vec<Value> {
    let (status, body) = http(addr, "GET", &format!("/api/v1/query?query={}", enc(q)), "").await;
    assert_eq!(status, 200, "{q}: {body}");
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls until `f` answers `Some`, for at most `within`.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scraping_node_exporter_writes_into_the_broker() {
    let redis = RedisServer::start().expect("redis-server");
    let broker = Running::broker(config_for(&redis.url()), SERVICES).await;
    let dir = tempfile::tempdir().unwrap();
    let node_port = port();
    let _node = spawn(
        "prometheus-node-exporter",
        &[
            format!("--web.listen-address=127.0.0.1:{node_port}"),
            // Collectors that read /proc and /sys only.
            "--collector.disable-defaults".into(),
            "--collector.cpu".into(),
            "--collector.loadavg".into(),
            "--collector.meminfo".into(),
            "--collector.netdev".into(),
            "--collector.stat".into(),
        ],
        &dir.path().join("node_exporter.log"),
    );
    let prom_port = port();
    let config = dir.path().join("prometheus.yml");
    // The README's "Use it with Prometheus" snippet, with test ports and a
    // 1 s scrape.
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n\
             scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{node_port}']\n\
             remote_write:\n  - url: http://{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n",
            broker.http
        ),
    )
    .unwrap();
    let _prom = spawn(
        "prometheus",
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &dir.path().join("prometheus.log"),
    );
    let prom: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();

    // The series arrive at query-api with the labels Prometheus has.
    let logs = || {
        ["prometheus.log", "node_exporter.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {f}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let load = loop {
        let r = instant(broker.http, "node_load1").await;
        if !r.is_empty() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "node_load1 never reached the broker\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(load.len(), 1, "{load:?}");
    let m = &load[0]["metric"];
    assert_eq!(m["__name__"], "node_load1");
    assert_eq!(m["host"], "127.0.0.1", "instance without its port: {m}");
    assert_eq!(m["job"], "node");

    // A labelled series: one per CPU, as in Prometheus.
    let q = r#"count(node_cpu_seconds_total{mode="idle"})"#;
    let in_prom = wait_for(
        "Prometheus's own answer",
        Duration::from_secs(30),
        || async { instant(prom, q).await.first().cloned() },
    )
    .await;
    let cpus: f64 = in_prom["value"][1].as_str().unwrap().parse().unwrap();
    assert!(cpus >= 1.0);
    let idle = instant(broker.http, r#"node_cpu_seconds_total{mode="idle"}"#).await;
    assert_eq!(idle.len() as f64, cpus, "{idle:?}");
    for s in &idle {
        assert_eq!(s["metric"]["mode"], "idle");
        assert!(s["metric"]["cpu"].is_string(), "{s}");
    }
    let mut cpu_labels: Vec<&str> = idle
        .iter()
        .map(|s| s["metric"]["cpu"].as_str().unwrap())
        .collect();
    cpu_labels.sort();
    cpu_labels.dedup();
    assert_eq!(cpu_labels.len() as f64, cpus, "one series per cpu");
    let counted = instant(broker.http, q).await;
    assert_eq!(
        counted[0]["value"][1].as_str(),
        Some(cpus.to_string().as_str())
    );

    // A label values lookup sees labels carried by the series.
    let (status, modes) = http(broker.http, "GET", "/api/v1/label/mode/values", "").await;
    assert_eq!(status, 200);
    assert!(
        modes["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "idle"),
        "{modes}"
    );

    // Prometheus saw its writes succeed, and the gateway stored samples and
    // rejected none.
    let prom_metrics = scrape(prom).await;
    assert!(
        value_of(&prom_metrics, "prometheus_remote_storage_samples_total", "") > 0.0,
        "Prometheus sent nothing"
    );
    assert_eq!(
        value_of(
            &prom_metrics,
            "prometheus_remote_storage_samples_failed_total",
            ""
        ),
        0.0,
        "{}",
        logs()
    );
    let broker_metrics = scrape(broker.http).await;
    let samples = "broker_ingest_remote_write_samples_total";
    assert!(value_of(&broker_metrics, samples, "outcome=\"stored\"") > 0.0);
    assert_eq!(
        value_of(&broker_metrics, samples, "outcome=\"rejected\""),
        0.0
    );
    broker.stop().await;
}

/// `/metrics` of `addr` as text.
async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    body.as_str().unwrap_or_default().to_string()
}

/// The sum of the samples of `name` whose labels contain `labels` (0 when
/// there are none).
fn value_of(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// POSTs `body` to `/api/v1/write` as Prometheus does; status,
/// Retry-After and body.
async fn post_raw(addr: SocketAddr, body: &[u8]) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/write HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let retry_after = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_string())
    });
    (status, retry_after, body.to_string())
}

/// POSTs `req`, snappy-compressed protobuf.
async fn post(addr: SocketAddr, req: &WriteRequest) -> (u16, Option<String>, String) {
    use prost::Message;
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap();
    post_raw(addr, &body).await
}

fn series(name: &str, instance: &str, samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: [("__name__", name), ("instance", instance), ("job", "t")]
            .iter()
            .map(|(n, v)| Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| Sample { value, timestamp })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_samples_get_400_and_the_good_ones_are_stored_and_no_redis_gets_503() {
    let mut redis = RedisServer::start().expect("redis-server");
    let mut config = config_for(&redis.url());
    // No spool: with Redis gone nothing can be made durable.
    config.writer.spool_dir = String::new();
    config.writer.redis_timeout = Duration::from_millis(500);
    config.router.write_timeout = Duration::from_secs(2);
    config.router.retry.max_retries = 0;
    let broker = Running::broker(config, SERVICES).await;
    let ms = (now() - 60) * 1000;

    let ok = WriteRequest {
        timeseries: vec![series("rw_good", "h1:9100", &[(ms, 1.5)])],
    };
    assert_eq!(post(broker.http, &ok).await.0, 204);

    let mixed = WriteRequest {
        timeseries: vec![
            series("rw_good", "h1:9100", &[(ms + 1000, 2.5)]),
            series("rw_nan", "h2:9100", &[(ms, f64::NAN)]),
            series("rw_old", "h3:9100", &[(1_000, 1.0)]),
        ],
    };
    let (status, _, body) = post(broker.http, &mixed).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("h2") && body.contains("NaN"), "{body}");
    assert!(body.contains("h3"), "{body}");
    assert!(
        body.starts_with("1 samples stored, 2 rejected, 2 problem(s)"),
        "{body}"
    );
    let count = instant(broker.http, "count_over_time(rw_good[5m])").await;
    assert_eq!(count[0]["value"][1], "2", "{count:?}");
    assert_eq!(count[0]["metric"]["job"], "t");

    // Not snappy, and snappy but not a WriteRequest.
    let (status, _, body) = post_raw(broker.http, b"hello").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("snappy"), "{body}");
    let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
    let (status, _, body) = post_raw(broker.http, &garbage).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("prometheus.WriteRequest"), "{body}");

    // Redis gone and no spool: retryable, with Retry-After.
    redis.stop();
    let later = WriteRequest {
        timeseries: vec![series("rw_good", "h1:9100", &[(ms + 2000, 3.5)])],
    };
    let (status, retry_after, body) = post(broker.http, &later).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    broker.stop().await;
}
