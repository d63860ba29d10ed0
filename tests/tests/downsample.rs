//! Long ranges downsampled to the width asked (`max_points`), against a
//! real Redis filled through the real data path (gateway → router →
//! writer), in the seed and the chunked layout: every bucket's min and max
//! equal the raw data's (spikes included), its avg is right, there are at
//! most `max_points` rows and the newest one is the bucket ending at
//! `end`, over HTTP/JSON and gRPC alike; a range within `max_points`
//! comes back raw, as without it; the bounds (`query.max_points` on the
//! parameter, `query.max_points_scanned` on what is read, no `limit`
//! beside it) name what is wrong; and PromQL reads past `query.max_points`
//! snapshots of a host, bounded by `query.max_points_scanned`.

use broker_common::{BrokerConfig, Service};
use broker_proto::v1::query_service_client::QueryServiceClient;
use broker_proto::v1::{MetricBatch, Point, RangeRequest, RangeResponse};
use broker_tests::{
    Reader, RedisServer, Running, config_for, enc, http, metric, now, send_batches,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use storage_layout::RangeReq;

const DATA_PATH: &[Service] = &[
    Service::IngestGateway,
    Service::ShardRouter,
    Service::StorageWriter,
];
const HOST: &str = "ds-1";
/// Snapshots, every `EVERY` seconds: ten times `query.max_points` below.
const N: i64 = 2_000;
const EVERY: i64 = 5;
const NAMES: [&str; 3] = ["m00", "m01", "m02"];
/// `query.max_points` of the query-api under test.
const MAX_POINTS: usize = 200;
/// `query.max_points_scanned` of the query-api under test, and of one
/// with a bound below the host's snapshots.
const SCANNED: usize = 5_000;
const SCANNED_LOW: usize = 1_000;

/// Metric `m` of snapshot `i`; `None` where the snapshot lacks it. m00 is
/// a sawtooth with one-snapshot spikes up and dips down, m01 misses every
/// 7th snapshot, m02 exists in the first half only. All are short binary
/// fractions, which the JSON answers carry exactly (serde_json's default
/// float parsing may be off by an ulp on others).
fn raw(i: i64, m: usize) -> Option<f64> {
    match m {
        0 if i % 137 == 60 => Some(1_000.0 + i as f64),
        0 if i % 211 == 100 => Some(-500.0),
        0 => Some((i % 50) as f64 * 0.5),
        1 => (i % 7 != 3).then(|| ((i * 31) % 97) as f64 + 0.25),
        2 => (i < N / 2).then(|| i as f64 / 64.0),
        _ => unreachable!(),
    }
}

/// Snapshots `from..to` of the host, as one batch (its name table holds
/// only the metrics its points use, as the gateway wants).
fn batch(ts0: i64, from: i64, to: i64) -> MetricBatch {
    let used: Vec<usize> = (0..NAMES.len())
        .filter(|&m| (from..to).any(|i| raw(i, m).is_some()))
        .collect();
    MetricBatch {
        seq: from as u64 + 1,
        metric_names: used.iter().map(|&m| NAMES[m].to_string()).collect(),
        points: (from..to)
            .map(|i| {
                let present: Vec<(u32, f64)> = used
                    .iter()
                    .enumerate()
                    .filter_map(|(k, &m)| raw(i, m).map(|v| (k as u32, v)))
                    .collect();
                Point {
                    millis: 0,
                    host_id: HOST.into(),
                    timestamp: ts0 + EVERY * i,
                    values: present.iter().map(|&(_, v)| v).collect(),
                    name_index: present.iter().map(|&(k, _)| k).collect(),
                    labels: Default::default(),
                }
            })
            .collect(),
    }
}

/// Snapshots the chunked layout seals (7 chunks of 256) before the rest
/// is written, which stays in the open chunk: reads merge both.
const SEALED: i64 = 7 * 256;

/// Waits until `check` holds, polling Redis.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes the host's `N` snapshots through a data path writing `layout`
/// and waits until they are all readable.
async fn fill(redis: &RedisServer, layout: &str, ts0: i64) -> BrokerConfig {
    let mut c = config_for(&redis.url());
    c.writer.layout = layout.into();
    c.writer.chunk_points = 256;
    let broker = Running::broker(c.clone(), DATA_PATH).await;
    let r = Reader::connect(&redis.url()).await;
    for (from, to) in [(0, SEALED), (SEALED, N)] {
        let acks = send_batches(&broker.endpoint(), vec![batch(ts0, from, to)]).await;
        assert_eq!(acks[0].accepted as i64, to - from, "{:?}", acks[0]);
        if layout == "chunked" && from == 0 {
            let key = format!("monitor:hosts:{{{HOST}}}");
            wait_until("the first snapshots sealed", || async {
                let open: Option<i64> = r
                    .cmd(&["HGET", &key, "open_points"])
                    .await
                    .convert()
                    .unwrap();
                (open == Some(0))
                    .then_some(())
                    .ok_or(format!("open_points {open:?}"))
            })
            .await;
        }
    }
    // Acked means durable: in Redis, or spooled and replayed shortly.
    let reader = storage_layout::for_reader(&c.writer).unwrap();
    let req = [RangeReq {
        host: HOST.into(),
        start_ms: 0,
        end_ms: i64::MAX,
    }];
    wait_until("every snapshot readable", || async {
        let f = reader.frames(r.client(), &req, &[], None).await.unwrap();
        let n = f[0].timestamps.len() as i64;
        (n == N).then_some(()).ok_or(format!("{n} of {N}"))
    })
    .await;
    broker.stop().await;
    c
}

/// One expected row: the bucket's last second and per metric (avg, min,
/// max) of its values, `None` where the bucket has none.
type Row = (i64, BTreeMap<&'static str, Option<(f64, f64, f64)>>);

/// Buckets as specified, computed here independently of query-api:
/// `w = ceil((end - start + 1) / max_points)`, aligned to `end`, empty
/// ones left out. `None` when the range holds at most `max_points`
/// snapshots (the answer is raw).
fn expected(
    ts0: i64,
    start: i64,
    end: i64,
    max_points: i64,
    names: &[&'static str],
) -> (i64, Option<Vec<Row>>) {
    let w = ((end - start + 1) + max_points - 1) / max_points;
    let inside: Vec<i64> = (0..N)
        .filter(|i| (start..=end).contains(&(ts0 + EVERY * i)))
        .collect();
    if inside.len() as i64 <= max_points {
        return (w, None);
    }
    let mut buckets: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for &i in &inside {
        let t = ts0 + EVERY * i;
        buckets.entry(end - (end - t) / w * w).or_default().push(i);
    }
    let rows = buckets
        .into_iter()
        .map(|(b, idx)| {
            let per_metric = names
                .iter()
                .map(|&name| {
                    let m = NAMES.iter().position(|n| *n == name).unwrap();
                    let vals: Vec<f64> = idx.iter().filter_map(|&i| raw(i, m)).collect();
                    let stats = (!vals.is_empty()).then(|| {
                        (
                            vals.iter().sum::<f64>() / vals.len() as f64,
                            vals.iter().copied().fold(f64::INFINITY, f64::min),
                            vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        )
                    });
                    (name, stats)
                })
                .collect();
            (b, per_metric)
        })
        .collect();
    (w, Some(rows))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A column of the JSON answer, null as NaN.
fn column(j: &Value, key: &str, m: &str) -> Vec<f64> {
    j[key][m]
        .as_array()
        .unwrap_or_else(|| panic!("{key}.{m} missing: {j}"))
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// One metric's columns of an answer: avg, min, max.
type Columns = (Vec<f64>, Vec<f64>, Vec<f64>);

/// An answer's timestamps and columns (`got(metric)`) against `want`.
fn check_rows(what: &str, got_ts: &[i64], got: &dyn Fn(&str) -> Columns, want: &[Row]) {
    let want_ts: Vec<i64> = want.iter().map(|(t, _)| *t).collect();
    assert_eq!(got_ts, want_ts, "{what}: bucket timestamps");
    for name in want[0].1.keys() {
        let (avg, min, max) = got(name);
        assert_eq!(avg.len(), want.len(), "{what}: {name} avg rows");
        for (k, (t, per)) in want.iter().enumerate() {
            match per[name] {
                None => assert!(
                    avg[k].is_nan() && min[k].is_nan() && max[k].is_nan(),
                    "{what}: {name} at {t}: ({}, {}, {}) where the bucket has no value",
                    avg[k],
                    min[k],
                    max[k]
                ),
                Some((a, lo, hi)) => {
                    // Exact: a spike is never averaged away.
                    assert_eq!((min[k], max[k]), (lo, hi), "{what}: {name} min/max at {t}");
                    assert!(
                        close(avg[k], a),
                        "{what}: {name} avg at {t}: {} vs {a}",
                        avg[k]
                    );
                }
            }
        }
    }
}

fn grpc_rows(r: &RangeResponse) -> impl Fn(&str) -> Columns + '_ {
    move |name| {
        let s = r
            .series
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("no series {name}"));
        (s.values.clone(), s.min.clone(), s.max.clone())
    }
}

async fn downsampled_ranges_are_exact_per_bucket(layout: &str) {
    // N snapshots ending about 15 minutes ago: old enough to be outside
    // the fresh window, young enough for the gateway's bounds.
    let ts0 = (now() - 900 - EVERY * N) / 60 * 60;
    let last = ts0 + EVERY * (N - 1);
    let redis = RedisServer::start().expect("redis-server");
    let mut c = fill(&redis, layout, ts0).await;
    c.query.max_points = MAX_POINTS;
    c.query.max_points_scanned = SCANNED;
    let q = Running::broker(c.clone(), &[Service::QueryApi]).await;
    broker_common::serve::wait_serving(&q.endpoint(), Duration::from_secs(20))
        .await
        .expect("query-api serving");
    let mut grpc = QueryServiceClient::connect(q.endpoint()).await.unwrap();
    let all = NAMES.to_vec();

    // (start, end, max_points, metrics named): the whole host ending on
    // its newest snapshot; a range ending between snapshots, with a
    // partial first bucket and one metric gone from its second half; one
    // metric at an odd width; buckets of 10 s, two snapshots each.
    let cases: Vec<(i64, i64, i64, Vec<&'static str>)> = vec![
        (ts0, last, 100, all.clone()),
        (ts0 + 1_234, last - 2_000 + 3, 37, all.clone()),
        (ts0, last, 64, vec!["m01"]),
        (last - 1_999, last, 200, all.clone()),
    ];
    for (start, end, max_points, names) in &cases {
        let what = format!("{layout}: [{start}, {end}] max_points {max_points} {names:?}");
        let (w, want) = expected(ts0, *start, *end, *max_points, names);
        let want = want.expect("more snapshots than max_points");
        assert!(want.len() as i64 <= *max_points, "{what}");
        let path = format!(
            "/api/query/range?host={HOST}&start={start}&end={end}&max_points={max_points}&metrics={}",
            names.join(",")
        );
        let (status, j) = http(q.http, "GET", &path, "").await;
        assert_eq!(status, 200, "{what}: {j}");
        assert_eq!(j["bucket_secs"], w, "{what}");
        let ts: Vec<i64> = serde_json::from_value(j["timestamps"].clone()).unwrap();
        assert!(ts.len() as i64 <= *max_points, "{what}: {} rows", ts.len());
        let rows = |m: &str| {
            (
                column(&j, "metrics", m),
                column(&j, "min", m),
                column(&j, "max", m),
            )
        };
        check_rows(&format!("{what} http"), &ts, &rows, &want);
        assert_eq!(
            j["metrics"].as_object().unwrap().len(),
            names.len(),
            "{what}"
        );
        assert_eq!(j["truncated"], false, "{what}");

        let r = grpc
            .range(RangeRequest {
                host: HOST.into(),
                start: *start,
                end: *end,
                metrics: names.iter().map(|s| s.to_string()).collect(),
                limit: 0,
                max_points: *max_points as u32,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.bucket_secs, w as u64, "{what}");
        check_rows(
            &format!("{what} grpc"),
            &r.timestamps,
            &grpc_rows(&r),
            &want,
        );
    }

    // The newest snapshot is in the last row, the bucket ending at `end`,
    // and a spike in it keeps its height.
    let (_, j) = http(
        q.http,
        "GET",
        &format!("/api/query/range?host={HOST}&start={ts0}&end={last}&max_points=100"),
        "",
    )
    .await;
    let ts = j["timestamps"].as_array().unwrap();
    assert_eq!(
        ts.last().unwrap(),
        last,
        "{layout}: the last bucket ends at end"
    );
    let newest = raw(N - 1, 1).unwrap();
    let (lo, hi) = (column(&j, "min", "m01"), column(&j, "max", "m01"));
    assert!(lo[lo.len() - 1] <= newest && newest <= hi[hi.len() - 1]);
    let spikes = column(&j, "max", "m00");
    let top = (0..N).filter_map(|i| raw(i, 0)).fold(f64::MIN, f64::max);
    let dip = (0..N).filter_map(|i| raw(i, 0)).fold(f64::MAX, f64::min);
    assert_eq!(spikes.iter().copied().fold(f64::MIN, f64::max), top);
    assert_eq!(
        column(&j, "min", "m00")
            .iter()
            .copied()
            .fold(f64::MAX, f64::min),
        dip
    );

    // The cache key has max_points: another width is another answer, the
    // same one again is a hit.
    let hits = r#"broker_query_cache_hits_total{kind="range"}"#;
    let before = metric(q.http, hits).await;
    let (_, j50) = http(
        q.http,
        "GET",
        &format!("/api/query/range?host={HOST}&start={ts0}&end={last}&max_points=50"),
        "",
    )
    .await;
    assert_eq!(j50["bucket_secs"], expected(ts0, ts0, last, 50, &all).0);
    assert_eq!(
        metric(q.http, hits).await,
        before,
        "{layout}: 50 is not 100"
    );
    let (_, again) = http(
        q.http,
        "GET",
        &format!("/api/query/range?host={HOST}&start={ts0}&end={last}&max_points=100"),
        "",
    )
    .await;
    assert_eq!(metric(q.http, hits).await, before + 1.0);
    assert_eq!(again, j);

    // A range within max_points comes back raw: the same JSON as without
    // max_points, no bucket_secs, min or max; over gRPC bucket_secs 0 and
    // no min or max.
    let (start, end) = (ts0 + 500, ts0 + 500 + EVERY * 39);
    let (status, raw_j) = http(
        q.http,
        "GET",
        &format!("/api/query/range?host={HOST}&start={start}&end={end}&max_points=100"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{raw_j}");
    let (_, plain) = http(
        q.http,
        "GET",
        &format!("/api/query/range?host={HOST}&start={start}&end={end}"),
        "",
    )
    .await;
    assert_eq!(raw_j, plain, "{layout}: a raw answer is unchanged");
    for key in ["bucket_secs", "min", "max"] {
        assert!(raw_j.get(key).is_none(), "{layout}: {key} in a raw answer");
    }
    assert_eq!(raw_j["timestamps"].as_array().unwrap().len(), 40);
    let r = grpc
        .range(RangeRequest {
            host: HOST.into(),
            start,
            end,
            max_points: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.bucket_secs, r.timestamps.len()), (0, 40));
    assert!(
        r.series
            .iter()
            .all(|s| s.min.is_empty() && s.max.is_empty())
    );

    // Bounds, each naming what is wrong.
    let cases = [
        (
            format!("/api/query/range?host={HOST}&start={ts0}&end={last}"),
            422,
            format!("host \"{HOST}\" has more than query.max_points ({MAX_POINTS})"),
        ),
        (
            format!("/api/query/range?host={HOST}&start={ts0}&end={last}&max_points=201"),
            400,
            "max_points: 201 is more than query.max_points (200)".to_string(),
        ),
        (
            format!("/api/query/range?host={HOST}&start={ts0}&end={last}&max_points=10&limit=5"),
            400,
            "max_points: cannot be combined with limit".to_string(),
        ),
        (
            format!("/api/query/range?host={HOST}&start={ts0}&end={last}&max_points=many"),
            400,
            "max_points: \"many\" is not a non-negative integer".to_string(),
        ),
    ];
    for (path, status, msg) in &cases {
        let (got, j) = http(q.http, "GET", path, "").await;
        let e = j["error"].as_str().unwrap_or_default();
        assert_eq!(got, *status, "{path}: {j}");
        assert!(
            e.starts_with(msg.as_str()),
            "{path}: {e:?} should start with {msg:?}"
        );
    }
    let e = grpc
        .range(RangeRequest {
            host: HOST.into(),
            start: ts0,
            end: last,
            limit: 5,
            max_points: 10,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("max_points: "), "{}", e.message());

    // PromQL reads every snapshot of the host, past query.max_points: a
    // 30-minute max at a 5-minute step over the whole range matches the
    // raw data, spikes included.
    let (from, step) = (ts0 + 1_800, 300);
    let path = format!(
        "/api/v1/query_range?query={}&start={from}&end={last}&step={step}",
        enc(&format!("max_over_time(m00{{host=\"{HOST}\"}}[30m])"))
    );
    let (status, j) = http(q.http, "GET", &path, "").await;
    assert_eq!(status, 200, "{layout}: {j}");
    let values = j["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(values.len() as i64, (last - from) / step + 1);
    for v in values {
        let t = v[0].as_f64().unwrap() as i64;
        let got: f64 = v[1].as_str().unwrap().parse().unwrap();
        // Windows are left-open: (t - 30m, t].
        let want = (0..N)
            .filter(|i| {
                let s = ts0 + EVERY * i;
                s > t - 1_800 && s <= t
            })
            .filter_map(|i| raw(i, 0))
            .fold(f64::MIN, f64::max);
        assert_eq!(got, want, "{layout}: max_over_time at {t}");
    }
    let path = format!(
        "/api/v1/query_range?query={}&start={ts0}&end={last}&step=300",
        enc(&format!("rate(m00{{host=\"{HOST}\"}}[5m])"))
    );
    let (status, j) = http(q.http, "GET", &path, "").await;
    assert_eq!(status, 200, "{layout}: {j}");
    assert!(
        !j["data"]["result"][0]["values"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A query-api whose query.max_points_scanned is below the host's
    // snapshots refuses the downsampled range and PromQL, naming it.
    let mut low = c.clone();
    low.query.max_points_scanned = SCANNED_LOW;
    let q_low = Running::broker(low, &[Service::QueryApi]).await;
    broker_common::serve::wait_serving(&q_low.endpoint(), Duration::from_secs(20))
        .await
        .expect("query-api serving");
    let (status, j) = http(
        q_low.http,
        "GET",
        &format!("/api/query/range?host={HOST}&start={ts0}&end={last}&max_points=100"),
        "",
    )
    .await;
    assert_eq!(status, 422, "{j}");
    let e = j["error"].as_str().unwrap();
    assert!(
        e.contains(&format!(
            "more than query.max_points_scanned ({SCANNED_LOW})"
        )) && e.contains("narrow the range"),
        "{e}"
    );
    let mut grpc_low = QueryServiceClient::connect(q_low.endpoint()).await.unwrap();
    let e = grpc_low
        .range(RangeRequest {
            host: HOST.into(),
            start: ts0,
            end: last,
            max_points: 100,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let (status, j) = http(q_low.http, "GET", &path, "").await;
    assert_eq!(status, 422, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("query.max_points_scanned (1000)"),
        "{j}"
    );
    // A quarter of the host is within it (also as counted in the chunked
    // layout, whose count of a range is an upper bound: whole chunks).
    let quarter = ts0 + EVERY * (N * 3 / 4);
    let (status, j) = http(
        q_low.http,
        "GET",
        &format!("/api/query/range?host={HOST}&start={quarter}&end={last}&max_points=100"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(
        j["bucket_secs"],
        expected(ts0, quarter, last, 100, &all).0,
        "{j}"
    );

    q_low.stop().await;
    q.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downsampled_ranges_are_exact_per_bucket_seed() {
    downsampled_ranges_are_exact_per_bucket("seed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downsampled_ranges_are_exact_per_bucket_chunked() {
    downsampled_ranges_are_exact_per_bucket("chunked").await;
}
