//! The data path end to end: agent stream -> gateway -> router -> writer ->
//! a real redis-server, in one process and across real gRPC hops.

use broker_common::Service;
use broker_proto::v1::{BatchError, MetricBatch, RejectReason};
use broker_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_the_seed_layout_exactly() {
    let redis = RedisServer::start().unwrap();
    let broker = Running::broker(seed_config_for(&redis.url()), &Service::DEFAULT).await;
    write_and_verify(&broker.endpoint(), &redis.url(), "seed", 3).await;

    // Labels land in the host hash; the index ttl and host ttl are set.
    let ts = now() - 30;
    let mut p = point("labelled", ts, 2);
    p.labels.insert("role".into(), "web".into());
    p.labels.insert("region".into(), "eu-1".into());
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 9,
            metric_names: metric_names(2),
            points: vec![p],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1);
    let r = Reader::connect(&redis.url()).await;
    let meta = r.hgetall("monitor:hosts:{labelled}").await;
    assert_eq!(meta["label:role"], "web");
    assert_eq!(meta["label:region"], "eu-1");
    assert!(r.ttl("monitor:hosts:{labelled}").await > 604_000);
    assert!(r.ttl("monitor:index:metrics:{labelled}").await > 604_000);
    broker.stop().await;
}

/// A batch the spool replays after Redis comes back is stored and counted,
/// but when a newer point reached Redis first (through another writer
/// while this one was down, here: before Redis went down) it does not take
/// the host's `last_seen` or labels back in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batch_never_takes_a_host_back_in_time() {
    let mut redis = durable_redis();
    let broker = Running::broker(seed_config_for(&redis.url()), &Service::DEFAULT).await;
    let ts = now() - 60;
    let batch = |seq, ts, role: &str| {
        let mut p = point("late", ts, 2);
        p.labels.insert("role".into(), role.into());
        MetricBatch {
            seq,
            metric_names: metric_names(2),
            points: vec![p],
        }
    };
    let acks = send_batches(&broker.endpoint(), vec![batch(1, ts, "new")]).await;
    assert_eq!(acks[0].accepted, 1);
    redis.stop();
    // Spooled while Redis is down, replayed once it is back.
    let acks = send_batches(&broker.endpoint(), vec![batch(2, ts - 30, "old")]).await;
    assert_eq!(acks[0].accepted, 1, "{:?}", acks[0].errors.first());
    redis.restart().unwrap();
    let r = Reader::connect(&redis.url()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while r
        .zrange_withscores("monitor:index:metrics:{late}")
        .await
        .len()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the spooled point was not replayed within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let meta = r.hgetall("monitor:hosts:{late}").await;
    assert_eq!(meta["last_seen"], ts.to_string());
    assert_eq!(meta["label:role"], "new");
    assert_eq!(meta["points_written"], "2");
    // A newer live batch moves it on, and replaces the labels.
    send_batches(&broker.endpoint(), vec![batch(3, ts + 10, "newer")]).await;
    let meta = r.hgetall("monitor:hosts:{late}").await;
    assert_eq!(meta["last_seen"], (ts + 10).to_string());
    assert_eq!(meta["label:role"], "newer");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_a_point_is_idempotent() {
    let redis = RedisServer::start().unwrap();
    let broker = Running::broker(seed_config_for(&redis.url()), &Service::DEFAULT).await;
    let ts = now() - 10;
    let batch = |seq| MetricBatch {
        seq,
        metric_names: metric_names(3),
        points: vec![point("idem", ts, 3)],
    };
    send_batches(&broker.endpoint(), vec![batch(1)]).await;
    let r = Reader::connect(&redis.url()).await;
    let first = r.hgetall(&format!("monitor:metrics:{{idem}}:{ts}")).await;
    send_batches(&broker.endpoint(), vec![batch(2), batch(3)]).await;
    assert_eq!(
        r.hgetall(&format!("monitor:metrics:{{idem}}:{ts}")).await,
        first
    );
    assert_eq!(
        r.zrange_withscores("monitor:index:metrics:{idem}")
            .await
            .len(),
        1
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_is_reported_and_valid_points_are_stored() {
    let redis = RedisServer::start().unwrap();
    let broker = Running::broker(seed_config_for(&redis.url()), &Service::DEFAULT).await;
    let ts = now() - 5;
    let names = metric_names(3);
    let mut points = vec![
        point("good-1", ts, 3),           // 0 ok
        point("bad host", ts, 3),         // 1 space
        point("evil*", ts, 3),            // 2 pattern char
        point("x{y}", ts, 3),             // 3 hash tag braces
        point(&"h".repeat(200), ts, 3),   // 4 too long
        point("future", ts + 3600, 3),    // 5
        point("old", ts - 8 * 86_400, 3), // 6
        point("nan", ts, 3),              // 7
        point("empty", ts, 0),            // 8
        point("wide", ts, 3),             // 9 more values than names
        point("dup", ts, 2),              // 10
        point("label", ts, 3),            // 11
        point("good-2", ts, 3),           // 12 ok
    ];
    points[7].values[1] = f64::NAN;
    points[9].values.push(1.0);
    points[10].name_index = vec![2, 2];
    points[11].labels.insert("bad label".into(), "v".into());
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 5,
            metric_names: names,
            points,
        }],
    )
    .await;
    let ack = &acks[0];
    assert_eq!(ack.seq, 5);
    assert_eq!(ack.accepted, 2);
    use RejectReason as R;
    let got: Vec<(u32, R)> = ack
        .errors
        .iter()
        .map(|e| (e.index, R::try_from(e.reason).unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, R::InvalidHostId),
            (2, R::InvalidHostId),
            (3, R::InvalidHostId),
            (4, R::InvalidHostId),
            (5, R::TimestampInFuture),
            (6, R::TimestampTooOld),
            (7, R::NonFiniteValue),
            (8, R::NoMetrics),
            (9, R::InvalidNameIndex),
            (10, R::DuplicateMetric),
            (11, R::InvalidLabel),
        ]
    );
    for e in &ack.errors {
        assert!(!e.retryable && !e.message.is_empty(), "{e:?}");
    }
    assert!(
        ack.errors[0].message.contains("' '"),
        "{}",
        ack.errors[0].message
    );
    let r = Reader::connect(&redis.url()).await;
    assert!(r.exists(&format!("monitor:metrics:{{good-1}}:{ts}")).await);
    assert!(r.exists(&format!("monitor:metrics:{{good-2}}:{ts}")).await);
    for bad in ["nan", "future", "empty", "dup", "label", "wide"] {
        assert!(
            !r.exists(&format!("monitor:index:metrics:{{{bad}}}")).await,
            "{bad} was stored"
        );
    }
    let keys: Vec<String> = r.cmd(&["KEYS", "monitor:*"]).await.convert().unwrap();
    // Per good point its data key, time index, metadata, series set and
    // first-seen set; and the host index with its ready marker.
    assert_eq!(
        keys.len(),
        12,
        "only the two good points' keys exist: {keys:?}"
    );
    let indexed: Vec<String> = storage_layout::hosts::list(r.client(), 0)
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert_eq!(indexed, ["good-1", "good-2"]);

    // A bad name in the batch's name table rejects only the points that
    // use it.
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 6,
            metric_names: vec!["ok".into(), "bad name".into()],
            points: vec![point("uses-ok", ts, 1), point("uses-bad", ts, 2)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1);
    assert_eq!(acks[0].errors.len(), 1);
    assert_eq!(acks[0].errors[0].index, 1);
    assert_eq!(acks[0].errors[0].reason, R::InvalidMetricName as i32);
    assert!(
        acks[0].errors[0].message.contains("\"bad name\""),
        "{}",
        acks[0].errors[0].message
    );
    assert!(r.exists(&format!("monitor:metrics:{{uses-ok}}:{ts}")).await);
    assert!(!r.exists("monitor:index:metrics:{uses-bad}").await);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_batches_and_messages_get_clear_errors() {
    let redis = RedisServer::start().unwrap();
    let mut config = seed_config_for(&redis.url());
    config.gateway.max_points_per_batch = 10;
    config.gateway.max_inflight_points = 10;
    config.gateway.max_metrics_per_point = 4;
    config.gateway.max_message_bytes = 64 * 1024;
    let broker = Running::broker(config, &Service::DEFAULT).await;
    let ts = now();

    // Too many points: the whole batch is refused with a batch error, and
    // the next batch on the same stream still works.
    let big = MetricBatch {
        seq: 1,
        metric_names: metric_names(2),
        points: (0..11).map(|i| point(&format!("h{i}"), ts, 2)).collect(),
    };
    let ok = MetricBatch {
        seq: 2,
        metric_names: metric_names(5),
        points: vec![point("fine", ts, 2), point("wide", ts, 5)],
    };
    let acks = send_batches(&broker.endpoint(), vec![big, ok]).await;
    assert_eq!(acks[0].batch_error, BatchError::TooManyPoints as i32);
    assert!(
        acks[0].batch_error_message.contains("11 points"),
        "{}",
        acks[0].batch_error_message
    );
    assert_eq!(acks[1].accepted, 1);
    assert_eq!(
        acks[1].errors[0].reason,
        RejectReason::TooManyMetrics as i32
    );

    // A message over max_message_bytes ends that stream with an error that
    // says so; the gateway keeps serving other streams.
    let huge = MetricBatch {
        seq: 3,
        metric_names: vec!["x".repeat(100_000)],
        points: vec![],
    };
    let err = try_send_batches(&broker.endpoint(), vec![huge])
        .await
        .unwrap_err();
    assert!(
        err.message().contains("message length too large") || err.message().contains("larger than"),
        "{err:?}"
    );
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 4,
            metric_names: metric_names(1),
            points: vec![point("after", ts, 1)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1);
    broker.stop().await;
}

/// Three writers, each with its own Redis, behind one router and one
/// gateway, all separate services talking real gRPC: each point must land
/// in the Redis of the writer the ring names, and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_writer_routing_matches_the_ring() {
    let redis: Vec<RedisServer> = (0..3).map(|_| RedisServer::start().unwrap()).collect();
    let mut writers = Vec::new();
    for (i, r) in redis.iter().enumerate() {
        let mut c = seed_config_for(&r.url());
        c.node_id = format!("writer-{i}");
        writers.push(Running::broker(c, &[Service::StorageWriter]).await);
    }
    let mut rc = seed_config_for("");
    rc.router.writers = writers
        .iter()
        .enumerate()
        .map(|(i, w)| broker_common::config::WriterEndpoint {
            id: format!("writer-{i}"),
            addr: w.endpoint(),
            weight: 1,
        })
        .collect();
    let (ring, router, gateway) = router_and_gateway(rc).await;

    let ts = now() - 100;
    let points: Vec<_> = (0..300)
        .map(|i| point(&format!("host-{i}"), ts + (i % 7) as i64 * 5, 2))
        .collect();
    let expected: Vec<(String, usize)> = points
        .iter()
        .map(|p| {
            let owner = ring.owner_index_of_point(&p.host_id, p.timestamp).unwrap();
            (
                format!("monitor:metrics:{{{}}}:{}", p.host_id, p.timestamp),
                owner,
            )
        })
        .collect();
    let acks = send_batches(
        &gateway.endpoint(),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points,
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 300, "{:?}", acks[0].errors.first());
    let readers = [
        Reader::connect(&redis[0].url()).await,
        Reader::connect(&redis[1].url()).await,
        Reader::connect(&redis[2].url()).await,
    ];
    let mut per_writer = [0usize; 3];
    for (key, owner) in &expected {
        for (i, r) in readers.iter().enumerate() {
            assert_eq!(
                r.exists(key).await,
                i == *owner,
                "{key} in redis {i}, owner {owner}"
            );
        }
        per_writer[*owner] += 1;
    }
    // ring owner index is into the sorted node list: writer-0, -1, -2.
    assert!(per_writer.iter().all(|&n| n > 50), "{per_writer:?}");
    gateway.stop().await;
    router.stop().await;
    for w in writers {
        w.stop().await;
    }
}

// Writer failure and failover: crates/shard-router/tests/failover.rs.

/// Services started before Redis answers (compose and Kubernetes start
/// them together) report ready once it does, however many connection
/// attempts were refused first, and then read and write it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_before_redis_become_ready_when_it_answers() {
    let mut redis = RedisServer::start().unwrap();
    redis.stop();
    let broker = Running::broker(config_for(&redis.url()), &Service::DEFAULT).await;
    // Several refused attempts: fred's reconnect policy backs off to 5 s.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (status, body) = http(broker.http, "GET", "/ready", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("query-api"), "{body}");
    redis.restart().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = http(broker.http, "GET", "/ready", "").await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready 30 s after redis came up: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ts = now() - 10;
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points: vec![point("late-redis", ts, 2)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1, "{:?}", acks[0].errors);
    let (status, body) = http(
        broker.http,
        "GET",
        "/api/query/range?host=late-redis&start=now-5m",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["timestamps"][0], ts, "{body}");
    broker.stop().await;
}
