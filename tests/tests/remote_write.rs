//! Prometheus remote write into the gateway (`POST /api/v1/write`):
//! a real Prometheus (Debian `prometheus`) scraping a real node_exporter
//! (Debian `prometheus-node-exporter`) on loopback and remote-writing to the
//! broker, whose query-api then answers PromQL over the same series; and the
//! endpoint's answers to bad data and to a Redis that is gone, with a
//! hand-built request.

use broker_common::Service;
use broker_proto::prometheus::WriteRequest;
use broker_tests::prometheus::{
    Proc, log_tails, port, post_write, post_write_raw, prometheus, prometheus_ready, series, spawn,
    vector_at,
};
use broker_tests::{
    RedisServer, Running, config_for, enc, http, instant, instant_eventually, now, post_bytes,
    scrape,
};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const SERVICES: &[Service] = &Service::DEFAULT;

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

/// node_exporter and a Prometheus scraping it every second and
/// remote-writing to a broker's HTTP address, in a temporary directory
/// that outlives restarts of either.
struct Scraping {
    dir: tempfile::TempDir,
    _node: Proc,
    prom: Option<Proc>,
    prom_addr: SocketAddr,
}

impl Scraping {
    fn start(broker_http: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let node_port = port();
        let node = spawn(
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
        // The README's "Use it with Prometheus" snippet, with test ports
        // and a 1 s scrape.
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n\
                 scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{node_port}']\n\
                 remote_write:\n  - url: http://{broker_http}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n      min_backoff: 100ms\n      max_backoff: 1s\n"
            ),
        )
        .unwrap();
        let mut s = Self {
            dir,
            _node: node,
            prom: None,
            prom_addr: format!("127.0.0.1:{}", port()).parse().unwrap(),
        };
        s.start_prometheus();
        s
    }

    /// Starts Prometheus on its address and data directory (again).
    fn start_prometheus(&mut self) {
        let d = self.dir.path();
        self.prom = Some(prometheus(d, self.prom_addr, &[]));
    }

    /// Stops Prometheus gracefully (SIGTERM), as an operator would.
    fn stop_prometheus(&mut self) {
        if let Some(mut p) = self.prom.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &p.0.id().to_string()])
                .status();
            let _ = p.0.wait();
        }
    }

    async fn prometheus_ready(&self) {
        prometheus_ready(self.prom_addr, || self.logs()).await;
    }

    /// The last lines of both logs, for failure messages.
    fn logs(&self) -> String {
        log_tails(self.dir.path(), &["prometheus.log", "node_exporter.log"])
    }

    /// Waits until `q` has a result in the broker at `http`.
    async fn wait_in_broker(&self, http: SocketAddr, q: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let r = instant(http, q).await;
            if !r.is_empty() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{q} never reached the broker\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scraping_node_exporter_writes_into_the_broker() {
    let redis = RedisServer::start().expect("redis-server");
    let broker = Running::broker(config_for(&redis.url()), SERVICES).await;
    let scraping = Scraping::start(broker.http);
    let prom = scraping.prom_addr;
    let logs = || scraping.logs();

    // The series arrive at query-api with the labels Prometheus has.
    let load = scraping.wait_in_broker(broker.http, "node_load1").await;
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

    // What Grafana's Prometheus data source calls on save-and-test and in
    // Explore, and scalar arithmetic compared with Prometheus's answers.
    for q in [
        "1+1",
        "2^3",
        "7 % 3",
        "-7 % 3",
        "1/0",
        "2 > bool 1",
        "1 atan2 2",
    ] {
        let scalar = |addr: SocketAddr| async move {
            let (status, body) =
                http(addr, "GET", &format!("/api/v1/query?query={}", enc(q)), "").await;
            assert_eq!(status, 200, "{q}: {body}");
            assert_eq!(body["data"]["resultType"], "scalar", "{q}: {body}");
            body["data"]["result"][1]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let (ours, theirs) = (scalar(broker.http).await, scalar(prom).await);
        assert!(
            ours == theirs || (ours - theirs).abs() < 1e-12,
            "{q}: broker {ours}, Prometheus {theirs}"
        );
    }
    let (status, info) = http(broker.http, "GET", "/api/v1/status/buildinfo", "").await;
    assert_eq!(status, 200);
    assert!(
        info["data"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
    );
    let (status, meta) = http(broker.http, "GET", "/api/v1/metadata?metric=node_load1", "").await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["data"]["node_load1"][0]["type"], "unknown", "{meta}");
    let (status, ex) = http(
        broker.http,
        "GET",
        "/api/v1/query_exemplars?query=node_load1",
        "",
    )
    .await;
    assert_eq!((status, ex["data"].clone()), (200, serde_json::json!([])));

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
    assert_eq!(post_write(broker.http, &ok).await.0, 204);

    // What a page's no-cors fetch sends (no preflight): an Origin, a
    // text/plain type and a valid snappy body. Refused before it is read,
    // nothing stored (before: 204 and the sample stored).
    use prost::Message as _;
    let cross = WriteRequest {
        timeseries: vec![series("rw_cross_site", "h1:9100", &[(ms, 6.66)])],
    };
    let a = post_bytes(
        broker.http,
        "/api/v1/write",
        "Origin: http://evil.example\r\nContent-Type: text/plain\r\n",
        &snap::raw::Encoder::new()
            .compress_vec(&cross.encode_to_vec())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.text().contains("Origin"), "{}", a.text());
    assert!(instant(broker.http, "rw_cross_site").await.is_empty());

    let mixed = WriteRequest {
        timeseries: vec![
            series("rw_good", "h1:9100", &[(ms + 1000, 2.5)]),
            series("rw_nan", "h2:9100", &[(ms, f64::NAN)]),
            series("rw_old", "h3:9100", &[(1_000, 1.0)]),
        ],
    };
    let (status, _, body) = post_write(broker.http, &mixed).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("h3"), "{body}");
    assert!(
        body.starts_with("2 samples stored, 1 rejected, 1 problem(s)"),
        "{body}"
    );
    // NaN is a value, as Prometheus defines it (an empty summary's
    // quantiles): stored and answered (before: a 400 for every request
    // that held one, and the series missing).
    let nan = instant_eventually(broker.http, "rw_nan").await;
    assert_eq!(nan.len(), 1, "{nan:?}");
    assert_eq!(nan[0]["value"][1], "NaN", "{nan:?}");
    let count = instant(broker.http, "count_over_time(rw_good[5m])").await;
    assert_eq!(count[0]["value"][1], "2", "{count:?}");
    assert_eq!(count[0]["metric"]["job"], "t");

    // Not snappy, and snappy but not a WriteRequest.
    let (status, _, body) = post_write_raw(broker.http, b"hello").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("snappy"), "{body}");
    let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
    let (status, _, body) = post_write_raw(broker.http, &garbage).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("prometheus.WriteRequest"), "{body}");

    // Redis gone and no spool: retryable, with Retry-After.
    redis.stop();
    let later = WriteRequest {
        timeseries: vec![series("rw_good", "h1:9100", &[(ms + 2000, 3.5)])],
    };
    let (status, retry_after, body) = post_write(broker.http, &later).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    broker.stop().await;
}

/// Samples keep their milliseconds (two scrapes in one second are two
/// samples, each at its own time), and a sample that arrives after newer
/// ones of its series (a Prometheus replaying its WAL, a resharded queue)
/// takes its place, before and after the host's chunk is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milliseconds_are_kept_and_late_samples_take_their_place() {
    let redis = RedisServer::start().expect("redis-server");
    let mut config = config_for(&redis.url());
    // Seal after a few points, so late samples also meet sealed chunks.
    config.writer.chunk_points = 4;
    let broker = Running::broker(config, SERVICES).await;
    let t = (now() - 60) * 1000;
    let samples = |times: &[i64]| -> Vec<(i64, f64)> {
        times.iter().map(|&dt| (t + dt, dt as f64)).collect()
    };
    let redis_reader = broker_tests::Reader::connect(&redis.url()).await;
    for (i, part) in [
        &[0, 250, 1_250][..],
        &[5_000, 10_000, 15_000, 20_000, 25_000],
        // Late: between samples already stored (and sealed).
        &[2_500, 12_001, 999],
    ]
    .into_iter()
    .enumerate()
    {
        let req = WriteRequest {
            timeseries: vec![series("rw_ms", "h1:9100", &samples(part))],
        };
        let (status, _, body) = post_write(broker.http, &req).await;
        assert_eq!(status, 204, "{body}");
        if i == 1 {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let chunks = redis_reader.cmd(&["ZCARD", "monitor:chunks:{h1}"]).await;
                if chunks.as_i64().unwrap_or(0) > 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "h1's points never sealed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let want: Vec<(i64, f64)> = samples(&[
        0, 250, 999, 1_250, 2_500, 5_000, 10_000, 12_001, 15_000, 20_000, 25_000,
    ]);
    let got = vector_at(broker.http, "rw_ms[1m]", t + 30_000)
        .await
        .unwrap();
    let mut got: Vec<(i64, f64)> = got
        .iter()
        .map(|(labels, v)| {
            let at: f64 = labels.rsplit('@').next().unwrap().parse().unwrap();
            ((at * 1000.0).round() as i64, *v)
        })
        .collect();
    got.sort_by_key(|p| p.0);
    assert_eq!(got, want);
    // An instant query between two samples of one second sees the older.
    let between = vector_at(broker.http, "rw_ms", t + 1_000).await.unwrap();
    assert_eq!(between[0].1, 999.0, "{between:?}");
    // The query API counts in seconds: the samples of one second merge
    // (the later wins), and a limit counts seconds, whatever each holds.
    let (status, body) = http(
        broker.http,
        "GET",
        &format!(
            "/api/query/range?host=h1&start={}&end={}&limit=2",
            t / 1000,
            t / 1000 + 30
        ),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["timestamps"],
        serde_json::json!([t / 1000, t / 1000 + 1]),
        "{body}"
    );
    let values = body["metrics"]["rw_ms{instance=\"h1:9100\",job=\"t\"}"].clone();
    assert_eq!(values, serde_json::json!([999.0, 1250.0]), "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    assert_eq!(body["next_start"], t / 1000 + 2, "{body}");
    broker.stop().await;
}

/// `count_over_time(node_load1[60s])` at `t_ms` from `addr`.
async fn count_at(addr: SocketAddr, t_ms: i64) -> Option<f64> {
    let path = format!(
        "/api/v1/query?query={}&time={}.{:03}",
        enc("count_over_time(node_load1[60s])"),
        t_ms / 1000,
        t_ms % 1000
    );
    let (status, body) = http(addr, "GET", &path, "").await;
    assert_eq!(status, 200, "{body}");
    body["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_the_gateway_and_of_prometheus_lose_no_sample() {
    let redis = RedisServer::start().expect("redis-server");
    let config = config_for(&redis.url());
    let broker = Running::broker(config.clone(), SERVICES).await;
    let (grpc, http_addr) = (broker.grpc, broker.http);
    let mut scraping = Scraping::start(http_addr);
    scraping.wait_in_broker(http_addr, "node_load1").await;

    // The broker goes away for 5 s (Prometheus's sends fail and are
    // retried from its WAL), then comes back on the same addresses.
    broker.stop().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let broker = Running::broker_at(config, SERVICES, grpc, http_addr).await;
    // Prometheus goes away for 3 s and comes back on its data directory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    scraping.stop_prometheus();
    tokio::time::sleep(Duration::from_secs(3)).await;
    scraping.start_prometheus();
    scraping.prometheus_ready().await;

    // Over the last minute, which spans both outages, the broker holds
    // every sample Prometheus holds: each 1 s scrape is its own second.
    // The window ends on a second's last millisecond so that both count
    // the same scrapes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t_ms = (now() - 2) * 1000 + 999;
        let in_prom = count_at(scraping.prom_addr, t_ms).await;
        let in_broker = count_at(http_addr, t_ms).await;
        if let (Some(p), Some(b)) = (in_prom, in_broker)
            && p == b
            && p >= 10.0
        {
            eprintln!(
                "after both restarts: Prometheus and the broker each hold {p} node_load1 samples of the last minute"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "at {t_ms}: Prometheus holds {in_prom:?} node_load1 samples of the last minute, the broker {in_broker:?}\n{}",
            scraping.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    broker.stop().await;
}

/// A series of `samples` for the equality test, host `h`.
/// The result vector of `q` at `t_ms` from `addr`, as sorted
/// (labels, value) pairs.
async fn answers_at(addr: SocketAddr, q: &str, t_ms: i64) -> Vec<(String, String)> {
    let path = format!(
        "/api/v1/query?query={}&time={}.{:03}",
        enc(q),
        t_ms / 1000,
        t_ms % 1000
    );
    let (status, body) = http(addr, "GET", &path, "").await;
    assert_eq!(status, 200, "{q}: {body}");
    let mut out: Vec<(String, String)> = body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| (s["metric"].to_string(), s["value"][1].to_string()))
        .collect();
    out.sort();
    out
}

/// POSTs `body` to `/api/v1/read`; status and body.
async fn post_read(addr: SocketAddr, body: &[u8]) -> (u16, String) {
    let a = post_bytes(
        addr,
        "/api/v1/read",
        "Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n",
        body,
    )
    .await;
    (a.status, a.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_reads_what_it_wrote_back_through_remote_read() {
    let redis = RedisServer::start().expect("redis-server");
    let broker = Running::broker(config_for(&redis.url()), SERVICES).await;
    let scraping = Scraping::start(broker.http);
    let writer = scraping.prom_addr;
    // At least 12 scrapes in the broker.
    wait_for("12 s of samples", Duration::from_secs(90), || async {
        let n = count_at(broker.http, now() * 1000).await?;
        (n >= 12.0).then_some(())
    })
    .await;

    // A second Prometheus that scrapes nothing and reads from the broker:
    // the README's "long-term storage" snippet.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "remote_read:\n  - url: http://{}/api/v1/read\n    read_recent: true\n",
            broker.http
        ),
    )
    .unwrap();
    let reader_addr: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let log = dir.path().join("prometheus.log");
    let _reader = prometheus(dir.path(), reader_addr, &[]);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    prometheus_ready(reader_addr, logs).await;

    // At a second's last millisecond the broker's second-resolution
    // samples select exactly what the writer's millisecond ones do, so
    // the reader must answer as the writer does.
    let t_ms = (now() - 3) * 1000 + 999;
    for q in [
        "node_load1",
        "count_over_time(node_load1[10s])",
        "sum by (mode) (node_cpu_seconds_total)",
        r#"node_cpu_seconds_total{mode="idle"}"#,
        "count(node_cpu_seconds_total)",
        "max_over_time(node_memory_MemFree_bytes[30s])",
    ] {
        let want = answers_at(writer, q, t_ms).await;
        assert!(!want.is_empty(), "{q}: the writing Prometheus has nothing");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = answers_at(reader_addr, q, t_ms).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{q} at {t_ms}: read back {got:?}, written {want:?}\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // Requests the endpoint cannot serve, by hand.
    let (status, body) = post_read(broker.http, b"hello").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("snappy"), "{body}");
    use broker_proto::prometheus::{LabelMatcher, Query, ReadRequest};
    use prost::Message;
    let streamed_only = ReadRequest {
        queries: vec![Query {
            start_timestamp_ms: 0,
            end_timestamp_ms: 1,
            matchers: vec![LabelMatcher {
                r#type: 0,
                name: "__name__".into(),
                value: "up".into(),
            }],
            hints: None,
        }],
        accepted_response_types: vec![1],
    };
    let body = snap::raw::Encoder::new()
        .compress_vec(&streamed_only.encode_to_vec())
        .unwrap();
    let (status, body) = post_read(broker.http, &body).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("SAMPLES"), "{body}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_answers_503_with_retry_after_instead_of_hanging() {
    // A "router" that accepts connections and never answers: whatever the
    // gateway forwards stays in flight until gateway.forward_timeout.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            open.push(s);
        }
    });
    let mut config = config_for("");
    config.gateway.routers = vec![format!("http://{hole_addr}")];
    config.gateway.max_points_per_batch = 10;
    config.gateway.max_inflight_points = 10;
    config.gateway.forward_timeout = Duration::from_secs(8);
    let gateway = Running::broker(config, &[Service::IngestGateway]).await;
    let ms = (now() - 10) * 1000;

    // Ten hosts' points fill the gateway's in-flight room and hang.
    let first = WriteRequest {
        timeseries: (0..10)
            .map(|i| series("up", &format!("h{i}:9100"), &[(ms, 1.0)]))
            .collect(),
    };
    let http = gateway.http;
    let hanging = tokio::spawn(async move { post_write(http, &first).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!hanging.is_finished());

    // The next request is told to come back, in about a second, not after
    // the forward timeout.
    let started = Instant::now();
    let next = WriteRequest {
        timeseries: vec![series("up", "other:9100", &[(ms, 1.0)])],
    };
    let (status, retry_after, body) = post_write(http, &next).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body.contains("gateway.max_inflight_points"), "{body}");
    assert!(
        !hanging.is_finished(),
        "answered while the first request still holds the room"
    );
    eprintln!("503 after {:?}", started.elapsed());
    let (status, _, _) = hanging.await.unwrap();
    assert_eq!(status, 503, "the hung forward is retryable too");
    held.abort();
    gateway.stop().await;
}
