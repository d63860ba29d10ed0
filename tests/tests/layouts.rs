//! The chunked key layout against real Redis (standalone and a 3-master
//! cluster): every f64 bit pattern survives the data path and sealing; a
//! point resent while its chunk is being sealed is stored once; the spool
//! replays into the chunked layout; a late write (a replay) never takes a
//! host's metadata back in time, in either layout; and query-api answers the same
//! questions the same way over the seed layout, the chunked layout, and a
//! migration window that reads both (`writer.migrate_from`); query-api's
//! chunk cache reads what Redis holds through appends, seals and resends.

use broker_common::{BrokerConfig, Service};
use broker_proto::v1::{MetricBatch, Point};
use broker_tests::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use storage_layout::chunked::{ChunkRef, index_key, open_key};
use storage_layout::{
    Arrival, ChunkedConfig, ChunkedLayout, Command, Exec, KeyLayout, RangeReq, Reply,
};

const TTL: u64 = 7 * 86_400;

/// A data-path configuration writing the chunked layout, sealing after
/// `chunk_points` points or `max_open`.
fn chunked(url: &str, chunk_points: usize, max_open: Duration) -> BrokerConfig {
    let mut c = config_for(url);
    c.writer.layout = "chunked".into();
    c.writer.chunk_points = chunk_points;
    c.writer.chunk_max_open = max_open;
    c
}

/// Values that break naive float codecs.
fn odd_values() -> Vec<f64> {
    vec![
        -0.0,
        0.0,
        f64::from_bits(1), // the smallest subnormal
        -f64::MIN_POSITIVE / 3.0,
        f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        1e308,
        -1e-308,
        1.0,
        1.0,
        1.0,
        0.1 + 0.2,
        123_456_789.123_456_78,
        -7.5,
        2f64.powi(53) + 1.0,
    ]
}

/// Snapshot `i` of the odd-values host: metrics `a`, `b`, `c`, where
/// every 5th snapshot lacks `b`.
fn odd_point(host: &str, ts: i64, i: usize) -> (Point, BTreeMap<String, f64>) {
    let odd = odd_values();
    let a = odd[i % odd.len()];
    let b = odd[(i * 7 + 3) % odd.len()];
    let c = i as f64 * 1e-3;
    let mut want = BTreeMap::from([("a".to_string(), a), ("c".to_string(), c)]);
    let p = if i % 5 == 4 {
        Point {
            millis: 0,
            host_id: host.into(),
            timestamp: ts,
            values: vec![a, c],
            name_index: vec![0, 2],
            labels: Default::default(),
        }
    } else {
        want.insert("b".into(), b);
        Point {
            millis: 0,
            host_id: host.into(),
            timestamp: ts,
            values: vec![a, b, c],
            name_index: vec![],
            labels: Default::default(),
        }
    };
    (p, want)
}

/// Waits until every host's open chunk is sealed (no open records).
async fn wait_sealed(r: &Reader, hosts: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    for h in hosts {
        loop {
            let open: Option<i64> = r
                .cmd(&["HGET", &format!("monitor:hosts:{{{h}}}"), "open_points"])
                .await
                .convert()
                .unwrap();
            let chunks: i64 = r.cmd(&["ZCARD", &index_key(h)]).await.convert().unwrap();
            if open == Some(0) && chunks > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{h}: not sealed within {within:?} (open_points {open:?}, {chunks} chunks)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every snapshot of `host` in `[start, end]`, as the chunked layout reads it.
async fn read_all(
    db: &dyn Exec,
    host: &str,
    start: i64,
    end: i64,
) -> BTreeMap<i64, BTreeMap<String, f64>> {
    let layout = ChunkedLayout::new(ChunkedConfig::default());
    let req = [RangeReq::seconds(host, start, end)];
    let frame = layout
        .frames(db, &req, &[], None)
        .await
        .expect("read")
        .pop()
        .unwrap()
        .into_seconds();
    frame
        .timestamps
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let snap = frame
                .metrics
                .iter()
                .filter(|(_, col)| !col[i].is_nan())
                .map(|(k, col)| (k.clone(), col[i]))
                .collect();
            (*t, snap)
        })
        .collect()
}

/// `got` equals `want` bit for bit.
fn assert_same_bits(
    got: &BTreeMap<i64, BTreeMap<String, f64>>,
    want: &BTreeMap<i64, BTreeMap<String, f64>>,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "timestamps"
    );
    for (t, w) in want {
        let g = &got[t];
        assert_eq!(g.len(), w.len(), "metrics at {t}: {g:?} vs {w:?}");
        for (k, v) in w {
            assert_eq!(g[k].to_bits(), v.to_bits(), "{k} at {t}: {} vs {v}", g[k]);
        }
    }
}

/// Sealed snapshot count of `host`: the sum of its indexed chunks' counts,
/// and that each indexed chunk's key exists.
async fn sealed_count(r: &Reader, host: &str) -> u64 {
    let members: Vec<String> = r
        .cmd(&["ZRANGE", &index_key(host), "0", "-1"])
        .await
        .convert()
        .unwrap();
    let mut n = 0;
    for m in members {
        let c = ChunkRef::parse(m.as_bytes()).expect("index member");
        let key = storage_layout::chunked::chunk_key(host, c.start, &c.id);
        assert!(r.exists(&key).await, "{key} indexed but missing");
        n += c.count;
    }
    n
}

async fn odd_values_round_trip(url: String) {
    let broker = Running::broker(chunked(&url, 8, Duration::from_secs(1)), &Service::DEFAULT).await;
    let ts0 = now() - 3_600;
    let hosts: Vec<String> = (0..4).map(|h| format!("odd-{h}")).collect();
    let mut want: BTreeMap<String, BTreeMap<i64, BTreeMap<String, f64>>> = BTreeMap::new();
    let mut points = Vec::new();
    for h in &hosts {
        for i in 0..30 {
            let ts = ts0 + 5 * i as i64;
            let (p, w) = odd_point(h, ts, i);
            points.push(p);
            want.entry(h.clone()).or_default().insert(ts, w);
        }
    }
    let batch = MetricBatch {
        seq: 1,
        metric_names: vec!["a".into(), "b".into(), "c".into()],
        points,
    };
    let acks = send_batches(&broker.endpoint(), vec![batch.clone()]).await;
    assert_eq!(acks[0].accepted, 120, "{:?}", acks[0].errors);
    let r = Reader::connect(&url).await;
    wait_sealed(&r, &hosts, Duration::from_secs(30)).await;
    for h in &hosts {
        assert_same_bits(&read_all(r.client(), h, ts0, ts0 + 200).await, &want[h]);
        assert_eq!(sealed_count(&r, h).await, 30, "{h}");
    }
    // The same batch again (an agent's resend after a lost ack): appended
    // to the open chunk, then sealed over the chunks it overlaps.
    let acks = send_batches(&broker.endpoint(), vec![batch]).await;
    assert_eq!(acks[0].accepted, 120, "{:?}", acks[0].errors);
    wait_sealed(&r, &hosts, Duration::from_secs(30)).await;
    for h in &hosts {
        assert_same_bits(&read_all(r.client(), h, ts0, ts0 + 200).await, &want[h]);
        assert_eq!(sealed_count(&r, h).await, 30, "{h}: stored once");
        // Sealed data carries the TTL of its newest point.
        let ttl = r.ttl(&index_key(h)).await;
        assert!(ttl > 0, "{h}: index ttl {ttl}");
    }
    broker.stop().await;
}

/// A late write (a replay) stores its point but never takes the host's
/// `last_seen` or labels back, in both layouts, on a Redis Cluster (the
/// script is routed by the host's hash tag); a live or late newer write
/// moves them on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_writes_keep_host_metadata_moving_forward_on_a_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    let r = Reader::connect(&cluster.url()).await;
    let db: &dyn Exec = r.client();
    let chunked = ChunkedLayout::new(ChunkedConfig::default());
    let seed = storage_layout::SeedLayout::default();
    let layouts: [(&str, &dyn KeyLayout); 2] = [("seed", &seed), ("chunked", &chunked)];
    let ts = now() - 60;
    for (name, layout) in layouts {
        let host = format!("meta-{name}");
        let batch = |ts, role: &str| {
            let mut p = point(&host, ts, 2);
            p.labels.insert("role".into(), role.into());
            MetricBatch {
                seq: 1,
                metric_names: metric_names(2),
                points: vec![p],
            }
        };
        let meta = || async { r.hgetall(&format!("monitor:hosts:{{{host}}}")).await };
        write(layout, db, &batch(ts, "new"), Arrival::Live).await;
        write(layout, db, &batch(ts - 30, "old"), Arrival::Late).await;
        let m = meta().await;
        assert_eq!(m["last_seen"], ts.to_string(), "{name}");
        assert_eq!(m["label:role"], "new", "{name}");
        let counter = if name == "seed" {
            "points_written"
        } else {
            "open_points"
        };
        assert_eq!(m[counter], "2", "{name}: the late point still counts");
        write(layout, db, &batch(ts + 10, "newer"), Arrival::Late).await;
        let m = meta().await;
        assert_eq!(m["last_seen"], (ts + 10).to_string(), "{name}");
        assert_eq!(m["label:role"], "newer", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_round_trips_through_chunks() {
    let redis = RedisServer::start().unwrap();
    odd_values_round_trip(redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_round_trips_through_chunks_on_a_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    odd_values_round_trip(cluster.url()).await;
}

/// Applies the layout's write commands for `batch` as the writer does.
async fn write(layout: &dyn KeyLayout, db: &dyn Exec, batch: &MetricBatch, arrival: Arrival) {
    let mut commands: Vec<Command> = Vec::new();
    layout.write_commands(&[batch], arrival, TTL, now(), &mut commands);
    for reply in db.pipeline(commands).await.expect("pipeline") {
        assert!(!matches!(reply, Reply::Error(_)), "{reply:?}");
    }
    layout.written(&[batch], true, now());
}

async fn resend_while_sealing(url: String) {
    let r = Reader::connect(&url).await;
    let db: &dyn Exec = r.client();
    let layout = ChunkedLayout::new(ChunkedConfig {
        points_per_chunk: 10,
        max_open: Duration::from_secs(60),
        maintenance_interval: Duration::from_secs(60),
        ..Default::default()
    });
    let host = "resent";
    let ts0 = now() - 1_800;
    let names = metric_names(4);
    let batch = MetricBatch {
        seq: 1,
        metric_names: names.clone(),
        points: (0..40).map(|i| point(host, ts0 + 5 * i, 4)).collect(),
    };
    let want: BTreeMap<i64, BTreeMap<String, f64>> = (0..40)
        .map(|i| {
            let ts = ts0 + 5 * i;
            let snap = (0..4)
                .map(|m| (names[m].clone(), value(host, ts, m)))
                .collect();
            (ts, snap)
        })
        .collect();
    write(&layout, db, &batch, Arrival::Live).await;
    // Sealers race each other and resends of the whole batch: each seal
    // either wins and cuts what it read, or finds the chunk changed and
    // does nothing; the resends land before or after a cut.
    let mut sealed = 0;
    for _ in 0..6 {
        let (a, b, (), c, ()) = tokio::join!(
            layout.seal(db, host, TTL, now()),
            layout.seal(db, host, TTL, now()),
            write(&layout, db, &batch, Arrival::Live),
            layout.seal(db, host, TTL, now()),
            write(&layout, db, &batch, Arrival::Live),
        );
        sealed += a.unwrap() + b.unwrap() + c.unwrap();
    }
    while layout.seal(db, host, TTL, now()).await.unwrap() > 0 {}
    assert!(sealed > 0, "some seals won");
    let open = r.cmd(&["GET", &open_key(host)]).await;
    let open: Vec<u8> = open.convert().unwrap_or_default();
    let mut left = storage_layout::chunk::Table::new();
    assert_eq!(
        storage_layout::chunk::merge_records(&open, &mut left).unwrap(),
        0,
        "nothing left open"
    );
    assert_same_bits(&read_all(db, host, ts0, ts0 + 400).await, &want);
    assert_eq!(
        sealed_count(&r, host).await,
        40,
        "each snapshot stored once"
    );
    let counts = layout
        .counts(db, &[RangeReq::seconds(host, ts0, ts0 + 400)])
        .await
        .unwrap();
    assert_eq!(counts, vec![40]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_resent_while_its_chunk_is_sealed_is_stored_once() {
    let redis = RedisServer::start().unwrap();
    resend_while_sealing(redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_resent_while_its_chunk_is_sealed_is_stored_once_on_a_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    resend_while_sealing(cluster.url()).await;
}

/// Reads `host` through `cached` and `plain` over a few ranges and metric
/// choices and asserts the frames are the same.
async fn same_frames(
    db: &dyn Exec,
    cached: &ChunkedLayout,
    plain: &ChunkedLayout,
    host: &str,
    ts0: i64,
    step: &str,
) {
    let names = metric_names(4);
    let choices = [
        vec![],
        vec![names[0].clone()],
        vec![names[1].clone(), names[3].clone()],
    ];
    let ranges = [(ts0 - 100, ts0 + 10_000), (ts0 + 42, ts0 + 97)];
    for metrics in &choices {
        for &(start, end) in &ranges {
            let req = [RangeReq::seconds(host, start, end)];
            let a = cached.frames(db, &req, metrics, None).await.unwrap();
            let b = plain.frames(db, &req, metrics, None).await.unwrap();
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "{step}: metrics {metrics:?}, {start}..={end}"
            );
            assert!(!b[0].timestamps.is_empty(), "{step}: something read");
        }
    }
}

async fn redis_output_bytes(r: &Reader) -> u64 {
    let info: String = r.cmd(&["INFO", "stats"]).await.convert().unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_net_output_bytes")
}

/// query-api's reader keeps decoded chunks between reads (sealed columns,
/// the open chunk's records) and asks Redis only for what changed; through
/// appends, seals, resends with new values and points lacking a metric it
/// reads exactly what a reader without the cache reads.
async fn cached_reads(url: String, standalone: bool) {
    let r = Reader::connect(&url).await;
    let db: &dyn Exec = r.client();
    let config = ChunkedConfig {
        points_per_chunk: 10,
        ..Default::default()
    };
    let writer = ChunkedLayout::new(config.clone());
    let plain = ChunkedLayout::new(config.clone());
    let cached = ChunkedLayout::new(ChunkedConfig {
        read_cache_bytes: 64 << 20,
        ..config
    });
    let host = "cached";
    let names = metric_names(4);
    let ts0 = now() - 3_600;
    let batch = |from: i64, to: i64, shift: f64| MetricBatch {
        seq: 1,
        metric_names: names.clone(),
        points: (from..to)
            .map(|i| {
                let mut p = point(host, ts0 + 5 * i, 4);
                p.values.iter_mut().for_each(|v| *v += shift);
                if i % 7 == 3 {
                    // This snapshot lacks m01.
                    p.values.remove(1);
                    p.name_index = vec![0, 2, 3];
                }
                p
            })
            .collect(),
    };
    write(&writer, db, &batch(0, 25, 0.0), Arrival::Live).await;
    same_frames(db, &cached, &plain, host, ts0, "all open").await;
    assert!(writer.seal(db, host, TTL, now()).await.unwrap() > 0);
    same_frames(db, &cached, &plain, host, ts0, "sealed once").await;
    write(&writer, db, &batch(25, 32, 0.0), Arrival::Live).await;
    same_frames(db, &cached, &plain, host, ts0, "more appended").await;
    // Resends of sealed and open points with other values: the later wins.
    write(&writer, db, &batch(5, 9, 0.5), Arrival::Live).await;
    write(&writer, db, &batch(27, 30, 0.25), Arrival::Live).await;
    same_frames(db, &cached, &plain, host, ts0, "resent").await;
    while writer.seal(db, host, TTL, now()).await.unwrap() > 0 {}
    same_frames(db, &cached, &plain, host, ts0, "all sealed").await;
    write(&writer, db, &batch(32, 40, 0.0), Arrival::Live).await;
    same_frames(db, &cached, &plain, host, ts0, "appended after sealing").await;
    // Out of order, as batches in flight at once or a spool replay append.
    let mut late = batch(40, 46, 0.0);
    late.points.reverse();
    write(&writer, db, &late, Arrival::Live).await;
    write(&writer, db, &batch(43, 44, 0.75), Arrival::Live).await;
    same_frames(db, &cached, &plain, host, ts0, "appended out of order").await;
    let held = cached.read_cache_bytes();
    assert!(held > 0, "the cached reader keeps what it decoded");
    if standalone {
        // Asked again, Redis sends the cached reader only what changed.
        let req = [RangeReq::seconds(host, ts0 - 100, ts0 + 10_000)];
        let one = [names[0].clone()];
        // What one INFO reply itself adds to the count.
        let info = redis_output_bytes(&r).await;
        let before = redis_output_bytes(&r).await;
        let info = before - info;
        plain.frames(db, &req, &one, None).await.unwrap();
        let middle = redis_output_bytes(&r).await;
        cached.frames(db, &req, &one, None).await.unwrap();
        let after = redis_output_bytes(&r).await;
        let (plain_bytes, cached_bytes) = (middle - before - info, after - middle - info);
        assert!(
            cached_bytes * 4 < plain_bytes,
            "Redis sent {cached_bytes} bytes to the cached reader, {plain_bytes} to the other"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_reader_reads_what_redis_holds() {
    let redis = RedisServer::start().unwrap();
    cached_reads(redis.url(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caching_reader_reads_what_redis_holds_on_a_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    cached_reads(cluster.url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_replays_into_the_chunked_layout() {
    let mut redis = durable_redis();
    let url = redis.url();
    let broker = Running::broker(chunked(&url, 4, Duration::from_secs(1)), &Service::DEFAULT).await;
    let ts0 = now() - 600;
    let batch = |seq: u64, host: &str| MetricBatch {
        seq,
        metric_names: metric_names(3),
        points: (0..10).map(|i| point(host, ts0 + 5 * i, 3)).collect(),
    };
    let acks = send_batches(&broker.endpoint(), vec![batch(1, "before")]).await;
    assert_eq!(acks[0].accepted, 10);
    redis.stop();
    let acks = send_batches(
        &broker.endpoint(),
        vec![batch(2, "during-a"), batch(3, "during-b")],
    )
    .await;
    assert_eq!(acks[0].accepted, 10, "{:?}", acks[0].errors.first());
    assert_eq!(acks[1].accepted, 10, "{:?}", acks[1].errors.first());
    redis.restart().unwrap();
    let r = Reader::connect(&url).await;
    let hosts: Vec<String> = ["before", "during-a", "during-b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    wait_sealed(&r, &hosts, Duration::from_secs(60)).await;
    for h in &hosts {
        let got = read_all(r.client(), h, ts0, ts0 + 100).await;
        assert_eq!(got.len(), 10, "{h}: {got:?}");
        for (t, snap) in &got {
            for m in 0..3 {
                assert_eq!(snap[&format!("m{m:02}")], value(h, *t, m), "{h} {t}");
            }
        }
        assert_eq!(sealed_count(&r, h).await, 10, "{h}");
    }
    // The host index and series sets came through the replay too.
    let indexed = storage_layout::hosts::list(r.client(), 0).await.unwrap();
    assert_eq!(
        indexed,
        hosts
            .iter()
            .map(|h| (h.clone(), ts0 + 45))
            .collect::<Vec<_>>()
    );
    let series = storage_layout::hosts::series(r.client(), &hosts, 0)
        .await
        .unwrap();
    assert!(series.iter().all(|s| *s == metric_names(3)), "{series:?}");
    broker.stop().await;
}

/// Hosts and their `role` label, as in the query test.
const HOSTS: [(&str, &str); 3] = [("web-1", "web"), ("web-2", "web"), ("db-1", "db")];
const N: i64 = 40;
const METRICS: usize = 4;

/// Snapshots `from..to` of every host (ts0 + 5 i), with labels.
fn snapshots(ts0: i64, from: i64, to: i64) -> MetricBatch {
    MetricBatch {
        seq: from as u64 + 1,
        metric_names: metric_names(METRICS),
        points: HOSTS
            .iter()
            .flat_map(|(h, role)| {
                (from..to).map(move |i| {
                    let mut p = point(h, ts0 + 5 * i, METRICS);
                    p.labels = [("role".to_string(), role.to_string())].into();
                    p
                })
            })
            .collect(),
    }
}

/// Writes `batch` through a data path configured by `config`, then stops it.
async fn write_through(config: BrokerConfig, batch: MetricBatch) {
    let n = batch.points.len() as u32;
    let broker = Running::broker(config, &Service::DEFAULT).await;
    let acks = send_batches(&broker.endpoint(), vec![batch]).await;
    assert_eq!(acks[0].accepted, n, "{:?}", acks[0].errors.first());
    broker.stop().await;
}

/// Waits until `host`'s snapshots are all readable through `config`'s
/// layout (a batch acked from the spool reaches Redis shortly after).
async fn wait_readable(config: &BrokerConfig, n: usize) {
    let layout = storage_layout::for_reader(&config.writer).unwrap();
    let r = Reader::connect(&config.writer.redis_url).await;
    let reqs: Vec<RangeReq> = HOSTS
        .iter()
        .map(|(h, _)| RangeReq {
            host: h.to_string(),
            start_ms: 0,
            end_ms: i64::MAX,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let frames = layout.frames(r.client(), &reqs, &[], None).await.unwrap();
        if frames.iter().all(|f| f.timestamps.len() == n) {
            return;
        }
        assert!(Instant::now() < deadline, "not all {n} snapshots readable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_answers_are_equal_across_layouts_and_a_migration() {
    let ts0 = (now() - 900) / 60 * 60;
    let all = || snapshots(ts0, 0, N);

    // Seed layout: everything.
    let seed_redis = RedisServer::start().unwrap();
    let seed = seed_config_for(&seed_redis.url());
    write_through(seed.clone(), all()).await;
    wait_readable(&seed, N as usize).await;

    // Chunked: 32 snapshots sealed into chunks of 16, the last 8 left in
    // the open chunk (max_open far away), so reads merge both.
    let chunked_redis = RedisServer::start().unwrap();
    let chunked_config = chunked(&chunked_redis.url(), 16, Duration::from_secs(3_600));
    {
        let broker = Running::broker(chunked_config.clone(), &Service::DEFAULT).await;
        let acks = send_batches(&broker.endpoint(), vec![snapshots(ts0, 0, 32)]).await;
        assert_eq!(acks[0].accepted, 96);
        let r = Reader::connect(&chunked_redis.url()).await;
        let hosts: Vec<String> = HOSTS.iter().map(|(h, _)| h.to_string()).collect();
        wait_sealed(&r, &hosts, Duration::from_secs(30)).await;
        let acks = send_batches(&broker.endpoint(), vec![snapshots(ts0, 32, N)]).await;
        assert_eq!(acks[0].accepted, 24);
        broker.stop().await;
        for h in &hosts {
            assert_eq!(sealed_count(&r, h).await, 32, "{h}");
            let open: i64 = r
                .cmd(&["HGET", &format!("monitor:hosts:{{{h}}}"), "open_points"])
                .await
                .convert()
                .unwrap();
            assert_eq!(open, 8, "{h}: the newest 8 stay open");
        }
    }
    wait_readable(&chunked_config, N as usize).await;

    // A migration: the first half written in the seed layout, the rest
    // after the switch to chunked, read with `migrate_from: seed`.
    let migrated_redis = RedisServer::start().unwrap();
    write_through(
        seed_config_for(&migrated_redis.url()),
        snapshots(ts0, 0, N / 2),
    )
    .await;
    let mut migrating = chunked(&migrated_redis.url(), 8, Duration::from_secs(1));
    migrating.writer.migrate_from = "seed".into();
    write_through(migrating.clone(), snapshots(ts0, N / 2, N)).await;
    wait_readable(&migrating, N as usize).await;

    // And back: the first half in the chunked layout (sealed), the rest
    // after a switch to seed, read with `migrate_from: chunked`.
    let back_redis = RedisServer::start().unwrap();
    write_through(
        chunked(&back_redis.url(), 8, Duration::from_secs(1)),
        snapshots(ts0, 0, N / 2),
    )
    .await;
    let mut back = seed_config_for(&back_redis.url());
    back.writer.migrate_from = "chunked".into();
    write_through(back.clone(), snapshots(ts0, N / 2, N)).await;
    wait_readable(&back, N as usize).await;

    let start_query = |c: BrokerConfig| async move {
        let q = Running::broker(c, &[Service::QueryApi]).await;
        broker_common::serve::wait_serving(&q.endpoint(), Duration::from_secs(20))
            .await
            .expect("query-api serving");
        q
    };
    let apis = [
        ("seed", start_query(seed).await),
        ("chunked", start_query(chunked_config).await),
        ("migrating", start_query(migrating).await),
        ("migrating back", start_query(back).await),
    ];

    let last = ts0 + 5 * (N - 1);
    let mut paths = vec![
        format!("/api/query/point?host=web-1&ts={}", ts0 + 15),
        format!("/api/query/point?host=web-1&ts={last}&metrics=m02"),
        // No snapshot there: the same 404 from each.
        format!("/api/query/point?host=web-1&ts={}", ts0 + 16),
        format!("/api/query/range?host=web-2&start={ts0}&end={last}"),
        format!(
            "/api/query/range?host=web-2&start={}&end={}&metrics=m03&limit=5",
            ts0 + 50,
            ts0 + 170
        ),
        format!(
            "/api/query/range?host=db-1&start={}&end={last}&metrics=m00,m01",
            ts0 + 100
        ),
        "/api/query/hosts".to_string(),
        "/api/query/hosts?label=role%3Dweb".to_string(),
        "/api/query/hosts/web-1".to_string(),
    ];
    for f in ["avg", "min", "max", "sum", "count", "p50", "p90", "p99"] {
        paths.push(format!(
            "/api/query/aggregate?function={f}&metric=m01&hosts=db-1&start={ts0}&end={last}&step=60"
        ));
        paths.push(format!(
            "/api/query/aggregate?function={f}&metric=m02&label=role%3Dweb&start={ts0}&end={last}"
        ));
        paths.push(format!(
            "/api/query/aggregate?function={f}&metric=m00&prefix=web-&per_host=true&start={ts0}&end={last}&step=30"
        ));
    }
    for q in [
        "m01",
        "m02{role=\"web\"}",
        "avg_over_time(m01[5m])",
        "max_over_time(m03[2m])",
        "sum(m00)",
        "avg by (role) (m01)",
    ] {
        paths.push(format!("/api/v1/query?query={}&time={last}", enc(q)));
        paths.push(format!(
            "/api/v1/query_range?query={}&start={ts0}&end={last}&step=15",
            enc(q)
        ));
    }
    paths.push(format!("/api/v1/series?match[]=m00&start={ts0}&end={last}"));
    paths.push("/api/v1/labels".to_string());
    paths.push("/api/v1/label/role/values".to_string());

    let mut answered = 0;
    for path in &paths {
        let mut answers = Vec::new();
        for (name, q) in &apis {
            let (status, body) = http(q.http, "GET", path, "").await;
            answers.push((name, status, body));
        }
        let (_, status0, body0) = &answers[0];
        let missing = path.ends_with(&format!("ts={}", ts0 + 16));
        assert_eq!(*status0, if missing { 404 } else { 200 }, "{path}: {body0}");
        for (name, status, body) in &answers[1..] {
            assert_eq!(status, status0, "{path}: {name}");
            assert_eq!(body, body0, "{path}: {name} differs from seed");
        }
        answered += 1;
    }
    println!("{answered} queries answered the same over seed, chunked and a migration both ways");
    for (_, q) in apis {
        q.stop().await;
    }
}
