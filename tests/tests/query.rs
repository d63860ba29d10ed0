//! query-api against a real Redis filled through the real data path
//! (gateway → router → writer): point, range and every aggregation checked
//! against values computed here, over gRPC and HTTP/JSON; limits and bad
//! parameters; the Prometheus API with Prometheus's own `promtool` as the
//! client; the cluster view from a real cluster-ctl; and the dashboard in
//! headless Chromium.

use broker_common::{BrokerConfig, Service};
use broker_proto::v1::query_service_client::QueryServiceClient;
use broker_proto::v1::{
    AggregateFunction, AggregateRequest, HostSelector, HostsRequest, Member, MemberRole,
    MemberState, MetricBatch, Point, PointRequest, RangeRequest,
};
use broker_tests::{
    Reader, RedisServer, Running, config_for, enc, http, metric, metric_names, now, send_batches,
    value,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const DATA_PATH: &[Service] = &[
    Service::IngestGateway,
    Service::ShardRouter,
    Service::StorageWriter,
];
/// Hosts and their `role` label.
const HOSTS: [(&str, &str); 3] = [("web-1", "web"), ("web-2", "web"), ("db-1", "db")];
/// Snapshots per host, every 5 s.
const N: i64 = 40;
const METRICS: usize = 4;
const FUNCTIONS: [&str; 8] = ["avg", "min", "max", "sum", "count", "p50", "p90", "p99"];

/// Redis, the data path, and known points in it: every host has `N`
/// snapshots `ts0, ts0 + 5, ...` with `value(host, ts, m)` for metrics
/// m00..m03, about 15 minutes in the past (outside the fresh window).
struct Fixture {
    redis: RedisServer,
    broker: Running,
    ts0: i64,
}

impl Fixture {
    async fn start() -> Self {
        let ts0 = (now() - 900) / 60 * 60;
        Self::start_at(ts0, N).await
    }

    async fn start_at(ts0: i64, n: i64) -> Self {
        let redis = RedisServer::start().expect("redis-server");
        let broker = Running::broker(config_for(&redis.url()), DATA_PATH).await;
        let points: Vec<Point> = HOSTS
            .iter()
            .flat_map(|(h, role)| {
                (0..n).map(move |i| {
                    let mut p = broker_tests::point(h, ts0 + 5 * i, METRICS);
                    p.labels = [("role".to_string(), role.to_string())].into();
                    p
                })
            })
            .collect();
        let total = points.len();
        let acks = send_batches(
            &broker.endpoint(),
            vec![MetricBatch {
                seq: 1,
                metric_names: metric_names(METRICS),
                points,
            }],
        )
        .await;
        assert_eq!(acks[0].accepted as usize, total, "{:?}", acks[0].errors);
        // Acked means durable; it is in Redis unless the writer spooled it
        // before its connection was up, then it is replayed shortly.
        let r = Reader::connect(&redis.url()).await;
        let layout = storage_layout::by_name(broker_common::config::DEFAULT_LAYOUT).unwrap();
        for (h, _) in HOSTS {
            let req = [storage_layout::RangeReq {
                host: h.to_string(),
                start_ms: 0,
                end_ms: i64::MAX,
            }];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let frames = layout.frames(r.client(), &req, &[], None).await.unwrap();
                let stored = frames[0].timestamps.len() as i64;
                if stored == n {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{h}: {stored} of {n} snapshots readable"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Self { redis, broker, ts0 }
    }

    fn config(&self) -> BrokerConfig {
        config_for(&self.redis.url())
    }

    async fn query(&self, config: BrokerConfig) -> Query {
        Self::serving(Running::broker(config, &[Service::QueryApi]).await).await
    }

    /// A started process that runs query-api, once it serves.
    async fn serving(running: Running) -> Query {
        broker_common::serve::wait_serving(&running.endpoint(), Duration::from_secs(20))
            .await
            .expect("query-api serving");
        let grpc = QueryServiceClient::connect(running.endpoint())
            .await
            .expect("grpc client");
        Query { running, grpc }
    }

    async fn stop(self) {
        self.broker.stop().await;
    }
}

struct Query {
    running: Running,
    grpc: QueryServiceClient<tonic::transport::Channel>,
}

impl Query {
    fn http(&self) -> SocketAddr {
        self.running.http
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        http(self.http(), "GET", path, "").await
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The function as specified (linear interpolation between closest ranks
/// for the percentiles), written here independently of query-api.
fn expected(function: &str, values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len() as f64;
    let pct = |q: f64| {
        let rank = q * (n - 1.0);
        let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
        v[lo] * (1.0 - (rank - lo as f64)) + v[hi] * (rank - lo as f64)
    };
    match function {
        "avg" => v.iter().sum::<f64>() / n,
        "min" => v[0],
        "max" => v[v.len() - 1],
        "sum" => v.iter().sum(),
        "count" => n,
        "p50" => pct(0.5),
        "p90" => pct(0.9),
        "p99" => pct(0.99),
        _ => unreachable!(),
    }
}

fn grpc_function(f: &str) -> AggregateFunction {
    AggregateFunction::from_str_name(&format!("AGGREGATE_FUNCTION_{}", f.to_uppercase())).unwrap()
}

/// Expected buckets `(timestamp, value, samples)` of `function` over metric
/// `m` of `hosts` for `[start, end]` and `step`.
fn expected_buckets(
    hosts: &[&str],
    m: usize,
    function: &str,
    ts0: i64,
    start: i64,
    end: i64,
    step: i64,
) -> Vec<(i64, f64, u64)> {
    let mut by_bucket: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for h in hosts {
        for i in 0..N {
            let t = ts0 + 5 * i;
            if t < start || t > end {
                continue;
            }
            let b = if step == 0 {
                start
            } else {
                start + (t - start) / step * step
            };
            by_bucket.entry(b).or_default().push(value(h, t, m));
        }
    }
    by_bucket
        .into_iter()
        .map(|(b, v)| (b, expected(function, &v), v.len() as u64))
        .collect()
}

fn buckets_of(series: &Value) -> Vec<(i64, f64, u64)> {
    series["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["timestamp"].as_i64().unwrap(),
                b["value"].as_f64().unwrap(),
                b["samples"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn assert_buckets(got: &[(i64, f64, u64)], want: &[(i64, f64, u64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.0 == w.0 && g.2 == w.2 && close(g.1, w.1),
            "{what}: got {g:?}, want {w:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_range_hosts_and_every_aggregation() {
    let f = Fixture::start().await;
    let mut q = f.query(f.config()).await;
    let ts0 = f.ts0;
    let last = ts0 + 5 * (N - 1);

    // Point, over both APIs.
    let p = q
        .grpc
        .point(PointRequest {
            host: "web-1".into(),
            timestamp: ts0 + 5,
            metrics: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.metrics.len(), METRICS);
    for (m, name) in metric_names(METRICS).iter().enumerate() {
        assert_eq!(p.metrics[name], value("web-1", ts0 + 5, m), "{name}");
    }
    let (status, j) = q
        .get(&format!(
            "/api/query/point?host=web-1&ts={}&metrics=m02",
            ts0 + 5
        ))
        .await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["metrics"]["m02"], value("web-1", ts0 + 5, 2));
    assert_eq!(j["metrics"].as_object().unwrap().len(), 1);
    let (status, j) = q
        .get(&format!("/api/query/point?host=web-1&ts={}", ts0 + 1))
        .await;
    assert_eq!(status, 404, "{j}");
    assert!(j["error"].as_str().unwrap().contains("no snapshot"), "{j}");
    let e = q
        .grpc
        .point(PointRequest {
            host: "web-1".into(),
            timestamp: ts0 + 1,
            metrics: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // Range: every snapshot of [ts0 + 10, ts0 + 110], every metric.
    let (start, end) = (ts0 + 10, ts0 + 110);
    let want_ts: Vec<i64> = (start..=end).step_by(5).collect();
    let r = q
        .grpc
        .range(RangeRequest {
            host: "web-2".into(),
            start,
            end,
            metrics: vec![],
            limit: 0,
            max_points: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.timestamps, want_ts);
    assert_eq!(r.series.len(), METRICS);
    for (m, s) in r.series.iter().enumerate() {
        assert_eq!(s.metric, format!("m{m:02}"));
        let want: Vec<f64> = want_ts.iter().map(|&t| value("web-2", t, m)).collect();
        assert_eq!(s.values, want, "{}", s.metric);
    }
    let (status, j) = q
        .get(&format!(
            "/api/query/range?host=web-2&start={start}&end={end}"
        ))
        .await;
    assert_eq!(status, 200, "{j}");
    let http_ts: Vec<i64> = serde_json::from_value(j["timestamps"].clone()).unwrap();
    assert_eq!(http_ts, r.timestamps, "HTTP and gRPC give the same range");
    for s in &r.series {
        let v: Vec<f64> = serde_json::from_value(j["metrics"][&s.metric].clone()).unwrap();
        assert_eq!(v, s.values);
    }
    assert_eq!(j["truncated"], false);
    // A metric subset, and a limit with the next page.
    let (_, j) = q
        .get(&format!(
            "/api/query/range?host=web-2&start={start}&end={end}&metrics=m03&limit=5"
        ))
        .await;
    assert_eq!(j["metrics"].as_object().unwrap().len(), 1);
    assert_eq!(j["timestamps"].as_array().unwrap().len(), 5);
    assert_eq!(j["truncated"], true);
    assert_eq!(j["next_start"], start + 25);
    // A host that does not exist has no snapshots (not an error).
    let (status, j) = q
        .get(&format!(
            "/api/query/range?host=nope&start={start}&end={end}"
        ))
        .await;
    assert_eq!(
        (status, j["timestamps"].as_array().unwrap().len()),
        (200, 0)
    );

    // Cache: the same past range again is a hit.
    let hits = r#"broker_query_cache_hits_total{kind="range"}"#;
    let before = metric(q.http(), hits).await;
    let (status, _) = q
        .get(&format!(
            "/api/query/range?host=web-2&start={start}&end={end}"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(metric(q.http(), hits).await, before + 1.0);

    // Hosts: metadata, filters.
    let (status, j) = q.get("/api/query/hosts").await;
    assert_eq!(status, 200, "{j}");
    let hosts = j["hosts"].as_array().unwrap();
    let ids: Vec<&str> = hosts.iter().map(|h| h["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["db-1", "web-1", "web-2"]);
    for h in hosts {
        assert_eq!(h["last_seen"], last, "{h}");
        assert_eq!(h["points"], N, "{h}");
        assert_eq!(h["series"], METRICS, "{h}");
        assert!(h.get("metrics").is_none(), "names only when asked: {h}");
    }
    let (status, j) = q.get("/api/query/hosts?metrics=true&prefix=web").await;
    assert_eq!(status, 200, "{j}");
    let named = j["hosts"].as_array().unwrap();
    assert_eq!(named.len(), 2, "{j}");
    for h in named {
        assert_eq!(h["metrics"].as_array().unwrap().len(), METRICS, "{h}");
    }
    let (status, j) = q.get("/api/query/hosts?metrics=maybe").await;
    assert_eq!(status, 400, "{j}");
    assert!(j["error"].as_str().unwrap().starts_with("metrics:"), "{j}");
    assert_eq!(hosts[0]["labels"]["role"], "db");
    let (_, j) = q.get("/api/query/hosts?label=role%3Dweb").await;
    assert_eq!(j["hosts"].as_array().unwrap().len(), 2);
    let g = q
        .grpc
        .hosts(HostsRequest {
            labels: Default::default(),
            prefix: "db".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.hosts.len(), 1);
    assert_eq!(g.hosts[0].labels["role"], "db");
    let (status, j) = q.get("/api/query/hosts/web-1").await;
    assert_eq!((status, j["points"].as_i64()), (200, Some(N)));
    assert_eq!(j["metrics"].as_array().unwrap().len(), METRICS, "{j}");
    let (status, _) = q.get("/api/query/hosts/ghost").await;
    assert_eq!(status, 404);

    // Every aggregation function: whole range and 1-minute steps; one
    // host, the web hosts by label (one series and per host), all hosts by
    // id over gRPC.
    let (start, end) = (ts0 + 7, last - 3);
    for function in FUNCTIONS {
        for step in [0, 60] {
            let m = 1;
            let (status, j) = q
                .get(&format!(
                    "/api/query/aggregate?function={function}&metric=m01&hosts=db-1&start={start}&end={end}&step={step}"
                ))
                .await;
            assert_eq!(status, 200, "{j}");
            assert_buckets(
                &buckets_of(&j["series"][0]),
                &expected_buckets(&["db-1"], m, function, ts0, start, end, step),
                &format!("{function} step {step} db-1"),
            );
            let (_, j) = q
                .get(&format!(
                    "/api/query/aggregate?function={function}&metric=m01&label=role%3Dweb&start={start}&end={end}&step={step}"
                ))
                .await;
            assert_eq!(j["hosts"], serde_json::json!(["web-1", "web-2"]));
            assert_buckets(
                &buckets_of(&j["series"][0]),
                &expected_buckets(&["web-1", "web-2"], m, function, ts0, start, end, step),
                &format!("{function} step {step} role=web"),
            );
            let (_, j) = q
                .get(&format!(
                    "/api/query/aggregate?function={function}&metric=m01&prefix=web-&per_host=true&start={start}&end={end}&step={step}"
                ))
                .await;
            for (i, h) in ["web-1", "web-2"].iter().enumerate() {
                assert_eq!(j["series"][i]["host"], *h);
                assert_buckets(
                    &buckets_of(&j["series"][i]),
                    &expected_buckets(&[h], m, function, ts0, start, end, step),
                    &format!("{function} step {step} per host {h}"),
                );
            }
            let g = q
                .grpc
                .aggregate(AggregateRequest {
                    selector: Some(HostSelector {
                        hosts: vec!["web-1".into(), "db-1".into(), "web-2".into()],
                        ..Default::default()
                    }),
                    metric: "m03".into(),
                    function: grpc_function(function) as i32,
                    start,
                    end,
                    step,
                    per_host: false,
                })
                .await
                .unwrap()
                .into_inner();
            let got: Vec<(i64, f64, u64)> = g.series[0]
                .buckets
                .iter()
                .map(|b| (b.timestamp, b.value, b.samples))
                .collect();
            assert_buckets(
                &got,
                &expected_buckets(
                    &["db-1", "web-1", "web-2"],
                    3,
                    function,
                    ts0,
                    start,
                    end,
                    step,
                ),
                &format!("grpc {function} step {step}"),
            );
        }
    }
    q.running.stop().await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_bad_parameters_name_what_is_wrong() {
    let f = Fixture::start().await;
    let mut c = f.config();
    c.query.max_range = Duration::from_secs(3600);
    c.query.max_points = 30;
    c.query.max_points_scanned = 50;
    c.query.max_hosts = 2;
    let mut q = f.query(c).await;
    let ts0 = f.ts0;
    let last = ts0 + 5 * (N - 1);

    // (path, status, start of the error message)
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("/api/query/range?host=web-1&start={}&end={ts0}", ts0 + 10),
            400,
            "start: ",
        ),
        (
            format!("/api/query/range?host=web-1&start={}&end={ts0}", ts0 - 7200),
            400,
            "end: the range spans 2h",
        ),
        (
            format!("/api/query/range?host=web-1&start={ts0}&end={last}"),
            422,
            "host \"web-1\" has more than query.max_points (30)",
        ),
        (
            format!("/api/query/range?host=web-1&start={ts0}&end={last}&limit=31"),
            400,
            "limit: 31 is more than query.max_points",
        ),
        (
            format!("/api/query/range?host=a%2Ab&start={ts0}&end={last}"),
            400,
            "host: \"a*b\" is not a host id",
        ),
        (
            format!("/api/query/range?host=web-1&start=yesterday&end={last}"),
            400,
            "start: \"yesterday\" is not a time",
        ),
        (
            format!("/api/query/range?start={ts0}"),
            400,
            "host: is required",
        ),
        (
            format!("/api/query/range?host=web-1&start={ts0}&end={last}&metrics=a%20b"),
            400,
            "metrics: \"a b\" is not a metric name",
        ),
        (
            format!(
                "/api/query/aggregate?function=median&metric=m00&hosts=web-1&start={ts0}&end={last}"
            ),
            400,
            "function: unknown function \"median\"",
        ),
        (
            format!(
                "/api/query/aggregate?function=avg&metric=m00&hosts=web-1&start={ts0}&end={}&step=1",
                ts0 + 3000
            ),
            400,
            "step: gives 3001 buckets, more than query.max_points (30)",
        ),
        (
            format!("/api/query/aggregate?function=avg&metric=m00&start={ts0}&end={last}&step=60"),
            400,
            "hosts: the selection covers 3 hosts, more than query.max_hosts (2)",
        ),
        (
            format!(
                "/api/query/aggregate?function=avg&metric=m00&prefix=web&start={ts0}&end={last}"
            ),
            422,
            "the query would read 80 snapshots, more than query.max_points_scanned (50)",
        ),
        (
            format!(
                "/api/query/aggregate?function=avg&metric=m00&hosts=web-1&start={ts0}&end={last}&per_host=maybe"
            ),
            400,
            "per_host: ",
        ),
        (
            "/api/v1/query_range?query=m00&start=0&end=100000&step=1".to_string(),
            400,
            "step: exceeded maximum resolution",
        ),
    ];
    for (path, status, msg) in &cases {
        let (got, j) = q.get(path).await;
        let e = j["error"].as_str().unwrap_or_default();
        assert_eq!(got, *status, "{path}: {j}");
        assert!(
            e.starts_with(msg),
            "{path}: {e:?} should start with {msg:?}"
        );
    }

    // The same over gRPC: codes and messages naming the parameter.
    let e = q
        .grpc
        .range(RangeRequest {
            host: "web-1".into(),
            start: ts0 + 10,
            end: ts0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("start: "), "{}", e.message());
    let e = q
        .grpc
        .range(RangeRequest {
            host: "web-1".into(),
            start: ts0,
            end: last,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let e = q
        .grpc
        .aggregate(AggregateRequest {
            selector: Some(HostSelector {
                hosts: vec!["web-1".into()],
                ..Default::default()
            }),
            metric: "m00".into(),
            function: 0,
            start: ts0,
            end: last,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("function: "), "{}", e.message());
    let e = q
        .grpc
        .point(PointRequest {
            host: "web 1".into(),
            timestamp: ts0,
            metrics: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("host: "), "{}", e.message());

    // Query timeout: Redis is paused for 3 s, the query gives up first.
    let r = Reader::connect(&f.redis.url()).await;
    let mut c = f.config();
    c.query.timeout = Duration::from_millis(300);
    let slow = f.query(c).await;
    r.cmd(&["CLIENT", "PAUSE", "3000", "ALL"]).await;
    let (status, j) = slow
        .get(&format!(
            "/api/query/range?host=web-1&start={ts0}&end={}",
            ts0 + 20
        ))
        .await;
    assert_eq!(status, 503, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .starts_with("query timed out after 300ms"),
        "{j}"
    );
    let (status, j) = slow
        .get(&format!(
            "/api/v1/query?query=m00&time={last}&timeout=100ms"
        ))
        .await;
    assert_eq!(status, 503, "{j}");
    assert_eq!(j["errorType"], "timeout", "{j}");
    r.cmd(&["CLIENT", "UNPAUSE"]).await;
    slow.running.stop().await;
    q.running.stop().await;
    f.stop().await;
}

fn prom_vector(j: &Value) -> BTreeMap<String, f64> {
    assert_eq!(j["status"], "success", "{j}");
    assert_eq!(j["data"]["resultType"], "vector", "{j}");
    j["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s["metric"].as_object().unwrap();
            let key = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect::<Vec<_>>()
                .join(",");
            (key, s["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_api_and_promtool() {
    let f = Fixture::start().await;
    let q = f.query(f.config()).await;
    let ts0 = f.ts0;
    let last = ts0 + 5 * (N - 1);
    let prom = |query: &str, t: i64| format!("/api/v1/query?query={}&time={t}", enc(query));

    // A selector: the latest sample within the lookback.
    let (status, j) = q.get(&prom(r#"m00{host="web-1"}"#, last + 2)).await;
    assert_eq!(status, 200, "{j}");
    let v = prom_vector(&j);
    assert_eq!(v.len(), 1, "{j}");
    assert_eq!(
        v["__name__=m00,host=web-1,role=web"],
        value("web-1", last, 0)
    );
    // A regex on the host, no metric name: every metric of both web hosts.
    let (_, j) = q.get(&prom(r#"{host=~"web-.*"}"#, last)).await;
    assert_eq!(prom_vector(&j).len(), 2 * METRICS, "{j}");
    // A regex on the name, a label matcher from the host metadata.
    let (_, j) = q
        .get(&prom(r#"{__name__=~"m0[12]",role="db"}"#, last))
        .await;
    let v = prom_vector(&j);
    assert_eq!(v.len(), 2, "{j}");
    assert_eq!(v["__name__=m02,host=db-1,role=db"], value("db-1", last, 2));
    // *_over_time over (t - 1m, t]: the 12 samples t-55 ... t.
    let t = last - 20;
    let window: Vec<f64> = (0..12).map(|i| value("web-2", t - 5 * i, 3)).collect();
    for (func, want) in [
        ("avg_over_time", window.iter().sum::<f64>() / 12.0),
        (
            "min_over_time",
            window.iter().copied().fold(f64::MAX, f64::min),
        ),
        (
            "max_over_time",
            window.iter().copied().fold(f64::MIN, f64::max),
        ),
        ("sum_over_time", window.iter().sum::<f64>()),
        ("count_over_time", 12.0),
        ("last_over_time", value("web-2", t, 3)),
    ] {
        let (_, j) = q
            .get(&prom(&format!(r#"{func}(m03{{host="web-2"}}[1m])"#), t))
            .await;
        let v = prom_vector(&j);
        // As in Prometheus, last_over_time keeps the metric name.
        let key = if func == "last_over_time" {
            "__name__=m03,host=web-2,role=web"
        } else {
            "host=web-2,role=web"
        };
        let got = v[key];
        assert!(close(got, want), "{func}: {got} vs {want}");
    }
    // Aggregations by host and across hosts.
    let (_, j) = q.get(&prom("sum by (host) (m01)", last)).await;
    let v = prom_vector(&j);
    assert_eq!(v.len(), 3);
    assert_eq!(v["host=db-1"], value("db-1", last, 1));
    let (_, j) = q.get(&prom("max(m01)", last)).await;
    let want = HOSTS
        .iter()
        .map(|(h, _)| value(h, last, 1))
        .fold(f64::MIN, f64::max);
    assert_eq!(prom_vector(&j)[""], want);
    let (_, j) = q.get(&prom("avg by (role) (m00)", last)).await;
    let v = prom_vector(&j);
    assert!(close(
        v["role=web"],
        (value("web-1", last, 0) + value("web-2", last, 0)) / 2.0
    ));
    // POST with a form body, as Prometheus clients send it.
    let (status, j) = http(
        q.http(),
        "POST",
        "/api/v1/query",
        &format!("query={}&time={last}", enc("count(m00)")),
    )
    .await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(prom_vector(&j)[""], 3.0);
    // A range query: one value per step.
    let (status, j) = q
        .get(&format!(
            "/api/v1/query_range?query={}&start={ts0}&end={last}&step=60",
            enc(r#"m00{host="db-1"}"#)
        ))
        .await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["data"]["resultType"], "matrix");
    let values = j["data"]["result"][0]["values"].as_array().unwrap();
    let steps: Vec<i64> = (ts0..=last).step_by(60).collect();
    assert_eq!(values.len(), steps.len(), "{j}");
    for (s, v) in steps.iter().zip(values) {
        assert_eq!(v[0], *s);
        assert_eq!(
            v[1].as_str().unwrap().parse::<f64>().unwrap(),
            value("db-1", *s, 0)
        );
    }
    // Series, labels, label values.
    let (_, j) = q
        .get(&format!(
            "/api/v1/series?match[]={}",
            enc(r#"m00{role="web"}"#)
        ))
        .await;
    assert_eq!(j["data"].as_array().unwrap().len(), 2, "{j}");
    let (_, j) = q.get("/api/v1/labels").await;
    assert_eq!(j["data"], serde_json::json!(["__name__", "host", "role"]));
    let (_, j) = q.get("/api/v1/label/host/values").await;
    assert_eq!(j["data"], serde_json::json!(["db-1", "web-1", "web-2"]));
    let (_, j) = q.get("/api/v1/label/__name__/values").await;
    assert_eq!(j["data"], serde_json::json!(["m00", "m01", "m02", "m03"]));
    // What is not evaluated is named, as Prometheus's bad_data.
    for (expr, msg) in [
        ("m00{host=\"a\" or host=\"b\"}", "unsupported PromQL: "),
        ("day_of_week()", "unsupported PromQL: function day_of_week"),
        ("sum(", "query: "),
    ] {
        let (status, j) = q.get(&prom(expr, last)).await;
        assert_eq!(
            (status, &j["errorType"]),
            (400, &Value::from("bad_data")),
            "{j}"
        );
        assert!(j["error"].as_str().unwrap().starts_with(msg), "{expr}: {j}");
    }

    // Prometheus's own client.
    let promtool = which("promtool")
        .expect("promtool not found: install Debian's `prometheus` package (scripts/deps.sh does)");
    let server = format!("http://{}", q.http());
    let run = |args: Vec<String>| {
        let out = std::process::Command::new(&promtool)
            .args(&args)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(vec![
        "query".into(),
        "instant".into(),
        format!("--time={last}"),
        server.clone(),
        r#"m02{host="web-2"}"#.into(),
    ]);
    let want = format!(
        r#"m02{{host="web-2", role="web"}} => {} @[{last}]"#,
        value("web-2", last, 2)
    );
    assert!(
        out.contains(&want),
        "promtool instant printed {out:?}, want {want:?}"
    );
    let out = run(vec![
        "query".into(),
        "instant".into(),
        "-o".into(),
        "json".into(),
        format!("--time={last}"),
        server.clone(),
        "avg by (host) (avg_over_time(m00[2m]))".into(),
    ]);
    let j: Value = serde_json::from_str(&out).expect("promtool -o json");
    assert_eq!(j.as_array().unwrap().len(), 3, "{out}");
    let out = run(vec![
        "query".into(),
        "range".into(),
        "-o".into(),
        "json".into(),
        format!("--start={ts0}"),
        format!("--end={last}"),
        "--step=1m".into(),
        server.clone(),
        r#"max_over_time(m01{host="web-1"}[1m])"#.into(),
    ]);
    let j: Value = serde_json::from_str(&out).expect("promtool -o json");
    let values = j[0]["values"].as_array().expect("one series");
    assert_eq!(values.len(), steps.len(), "{out}");
    // At step t the window (t - 60, t] holds the snapshots t-55 ... t
    // (those at or after ts0).
    for (s, v) in steps.iter().zip(values) {
        let got: f64 = v[1].as_str().unwrap().parse().unwrap();
        let want = (0..12)
            .map(|i| s - 5 * i)
            .filter(|t| *t >= ts0)
            .map(|t| value("web-1", t, 1))
            .fold(f64::MIN, f64::max);
        assert_eq!(got, want, "at {s}");
    }
    let out = run(vec![
        "query".into(),
        "labels".into(),
        server.clone(),
        "role".into(),
    ]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["db", "web"],
        "{out}"
    );
    q.running.stop().await;
    f.stop().await;
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_view_static_and_from_cluster_ctl() {
    let f = Fixture::start_at(now() - 60, 2).await;
    // Static: router.writers, epoch 1.
    let mut c = f.config();
    c.router.writers = vec![
        broker_common::config::WriterEndpoint {
            id: "w-a".into(),
            addr: "http://127.0.0.1:9".into(),
            weight: 1,
        },
        broker_common::config::WriterEndpoint {
            id: "w-b".into(),
            addr: "http://127.0.0.1:10".into(),
            weight: 3,
        },
    ];
    let q = f.query(c.clone()).await;
    let (status, j) = q.get("/api/query/cluster").await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(
        (j["source"].as_str(), j["epoch"].as_u64()),
        (Some("static"), Some(1))
    );
    let ring = hash_ring::HashRing::new(
        c.router.ring(),
        c.router.writers.iter().map(|w| w.node_spec()),
    )
    .unwrap();
    for (id, share) in ring.shares() {
        let m = j["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id.as_str())
            .unwrap();
        assert!(close(m["share"].as_f64().unwrap(), share), "{m}");
    }
    q.running.stop().await;

    // From a real cluster-ctl: two writers and a router join, one writer
    // is set offline; shares over the ONLINE writers, the epoch committed.
    let mut ctl = broker_tests::cluster::CtlCluster::start(1, Duration::from_secs(600)).await;
    ctl.wait_leader(Duration::from_secs(10)).await;
    let client = ctl.client();
    let member = |id: &str, role: MemberRole, weight: u32| Member {
        id: id.into(),
        roles: vec![role as i32],
        addr: format!("http://127.0.0.1:9/{id}"),
        weight,
        ..Default::default()
    };
    client
        .set_ring(broker_proto::v1::RingSettings {
            vnodes: 120,
            hash: "crc32".into(),
        })
        .await
        .unwrap();
    for m in [
        member("w-1", MemberRole::StorageWriter, 1),
        member("w-2", MemberRole::StorageWriter, 2),
        member("w-3", MemberRole::StorageWriter, 1),
        member("r-1", MemberRole::ShardRouter, 1),
    ] {
        client.join(m).await.unwrap();
    }
    client.set_state("w-3", MemberState::Offline).await.unwrap();
    let mut c = f.config();
    c.cluster.endpoints = vec!["http://127.0.0.1:1".into(), ctl.endpoint(1)];
    let mut q = f.query(c).await;
    // query-api is a member itself, as every data-path service is (and as
    // it always was under `broker run`): its join is the last committed
    // change, after w-3 went offline.
    let state = client.members().await.unwrap();
    assert!(
        state
            .members
            .iter()
            .any(|m| m.id == "w-3" && m.state == MemberState::Offline as i32),
        "{state:?}"
    );
    let (status, j) = q.get("/api/query/cluster").await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["source"], "cluster-ctl");
    assert_eq!(j["epoch"].as_u64(), Some(state.epoch), "{j}");
    assert_eq!(j["endpoint"], ctl.endpoint(1));
    assert_eq!(j["raft"]["role"], "leader", "{j}");
    // The shape cluster-ctl's own /api/cluster has; the dashboard reads
    // `leader`.
    assert_eq!(j["raft"]["leader"], j["raft"]["id"], "{j}");
    assert_eq!(
        j["raft"]["leader_addr"],
        j["raft"]["peers"][j["raft"]["id"].to_string()],
        "{j}"
    );
    assert_eq!(
        j["ring"],
        serde_json::json!({"vnodes": 120, "hash": "crc32"})
    );
    let ring = hash_ring::HashRing::new(
        hash_ring::RingConfig {
            vnodes: 120,
            hash: hash_ring::HashAlgorithm::Crc32,
        },
        [
            hash_ring::NodeSpec::new("w-1"),
            hash_ring::NodeSpec::new("w-2").with_weight(2),
        ],
    )
    .unwrap();
    let want: BTreeMap<String, f64> = ring.shares().into_iter().collect();
    let members = j["members"].as_array().unwrap();
    // w-1..3, r-1 and this query-api (share 0: not a writer).
    assert_eq!(members.len(), 5, "{j}");
    for m in members {
        let id = m["id"].as_str().unwrap();
        let share = m["share"].as_f64().unwrap();
        assert!(
            close(share, want.get(id).copied().unwrap_or(0.0)),
            "{m} want {want:?} all {j}"
        );
    }
    let w3 = members.iter().find(|m| m["id"] == "w-3").unwrap();
    assert_eq!(w3["state"], "offline");
    let g = q
        .grpc
        .cluster_status(broker_proto::v1::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.epoch, state.epoch);
    q.running.stop().await;
    // cluster-ctl down under a running query-api: a clear 502 naming the
    // endpoints.
    let mut c = f.config();
    c.cluster.endpoints = vec![ctl.endpoint(1)];
    let q = f.query(c).await;
    ctl.stop_all().await;
    let (status, j) = q.get("/api/query/cluster").await;
    assert_eq!(status, 502, "{j}");
    assert!(
        j["error"].as_str().unwrap().contains(&ctl.endpoint(1)),
        "{j}"
    );
    q.running.stop().await;
    f.stop().await;
}

/// The dashboard in headless Chromium (Playwright for Python, from PyPI,
/// driving Debian's /usr/bin/chromium): open it, pick a host, see a chart
/// with every point, save a screenshot to test-artifacts/dashboard.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/browser/dashboard.py");
    let python = which("python3").expect("python3 not found: install Python 3");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} not found: run scripts/deps.sh (installs Debian's chromium) or set CHROMIUM"
    );
    let probe = std::process::Command::new(&python)
        .args(["-c", "import playwright.sync_api"])
        .status()
        .expect("run python3");
    assert!(
        probe.success(),
        "python3 cannot import playwright: run scripts/deps.sh (pip installs tests/requirements.txt)"
    );
    // 60 snapshots in the last 10 minutes: inside the dashboard's default
    // 1 h range.
    let n = 60;
    let f = Fixture::start_at(now() - 5 * n - 10, n).await;
    // query-api with host-manager in one process, as `broker up` runs
    // them: the fleet page reads host-manager's /api/hosts on the same port.
    let q = Fixture::serving(
        Running::broker(f.config(), &[Service::QueryApi, Service::HostManager]).await,
    )
    .await;
    let artifacts = root.join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .env("DASHBOARD_URL", format!("http://{}/dashboard/", q.http()))
        .env("DASHBOARD_HOST", "web-2")
        .env("DASHBOARD_METRIC", "m01")
        .env("DASHBOARD_EXPECT_POINTS", n.to_string())
        .env("DASHBOARD_SCREENSHOT", &shot)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the browser script ends within 2 minutes")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dashboard.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("chart m01: {n} points")),
        "{stdout}"
    );
    assert!(stdout.contains("fleet: "), "{stdout}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    q.running.stop().await;
    f.stop().await;
}
