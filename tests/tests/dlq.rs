//! The writer's dead-letter queue: points Redis refuses for good (here a
//! WRONGTYPE reply, from an index key an "operator" created as a string)
//! are acked, kept durably with the reason, listed and replayed through
//! the admin HTTP API, and never block the other points or the spool.

use broker_common::Service;
use broker_proto::v1::MetricBatch;
use broker_tests::*;
use internal_clients::AdminClient;
use redis_process::RedisOptions;
use std::time::{Duration, Instant};
use storage_writer::dlq::EntrySummary;

const POISON: &str = "poison-host";

fn index_key(host: &str) -> String {
    format!("monitor:index:metrics:{{{host}}}")
}

/// Makes `host`'s time index a string, so every ZADD to it fails with
/// WRONGTYPE: a write Redis refuses however often it is retried.
async fn poison(r: &Reader, host: &str) {
    r.cmd(&["SET", &index_key(host), "not-a-zset"]).await;
}

fn admin(broker: &Running) -> AdminClient {
    AdminClient::new(&broker.http.to_string(), Duration::from_secs(30)).expect("admin address")
}

async fn assert_stored(r: &Reader, host: &str, timestamps: &[i64]) {
    for &ts in timestamps {
        let got = r.hgetall(&format!("monitor:metrics:{{{host}}}:{ts}")).await;
        assert_eq!(got.len(), 3, "{host} {ts}: {got:?}");
        for m in 0..3 {
            let v: f64 = got[&format!("m{m:02}")].parse().unwrap();
            assert_eq!(v, value(host, ts, m), "{host} {ts} m{m:02}");
        }
    }
    let index: Vec<i64> = r
        .zrange_withscores(&index_key(host))
        .await
        .into_iter()
        .map(|(m, _)| m.parse().unwrap())
        .collect();
    assert_eq!(index, timestamps, "{host}'s index");
}

async fn key_type(r: &Reader, key: &str) -> String {
    r.cmd(&["TYPE", key]).await.convert().expect("type")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_redis_refuses_are_dead_lettered_then_replayed_once_fixed() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let r = Reader::connect(&url).await;
    poison(&r, POISON).await;
    let config = seed_config_for(&url);
    let broker = Running::broker(config.clone(), &Service::DEFAULT).await;
    let admin = admin(&broker);

    let ts = now() - 30;
    let batch = MetricBatch {
        seq: 1,
        metric_names: metric_names(3),
        points: vec![
            point(POISON, ts, 3),
            point("good-1", ts, 3),
            point(POISON, ts + 5, 3),
            point("good-2", ts, 3),
        ],
    };
    let acks = send_batches(&broker.endpoint(), vec![batch]).await;
    // Accepted whole: the refused points are durable in the DLQ.
    assert_eq!(acks[0].accepted, 4, "{:?}", acks[0].errors);
    assert!(acks[0].errors.is_empty(), "{:?}", acks[0].errors);

    // The other hosts of the same pipeline are stored all the same.
    assert_stored(&r, "good-1", &[ts]).await;
    assert_stored(&r, "good-2", &[ts]).await;

    // The DLQ holds the poison host's points, with Redis's reply.
    let list = admin.list(None, 100).await.unwrap();
    assert_eq!(list.records, 1, "{list:?}");
    assert_eq!(list.writer, config.node_id);
    let e: &EntrySummary = &list.entries[0];
    assert_eq!(e.points, 2);
    assert_eq!(e.hosts, vec![POISON]);
    assert_eq!(e.writer, config.node_id);
    assert!(
        e.reason
            .contains(&format!("ZADD {}: WRONGTYPE", index_key(POISON))),
        "{}",
        e.reason
    );
    let id = e.id;
    let detail = admin.show(id).await.unwrap();
    assert_eq!(detail.summary.id, id);
    let mut points: Vec<(String, i64)> = detail
        .points_detail
        .iter()
        .map(|p| (p.host.clone(), p.timestamp))
        .collect();
    points.sort();
    assert_eq!(
        points,
        vec![(POISON.to_string(), ts), (POISON.to_string(), ts + 5)]
    );
    for p in &detail.points_detail {
        for m in 0..3 {
            assert_eq!(
                p.metrics[&format!("m{m:02}")],
                value(POISON, p.timestamp, m)
            );
        }
    }
    assert_eq!(exposed(broker.http, "broker_writer_dlq_records").await, 1.0);
    assert_eq!(
        exposed(broker.http, "broker_writer_dlq_points_total").await,
        2.0
    );

    // Replayed while the key is still wrong: refused again, entry kept.
    let err = admin.replay(id).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    let list = admin.list(None, 100).await.unwrap();
    assert_eq!(list.entries[0].points, 2);
    assert_eq!(list.entries[0].replay_attempts, 1);
    assert!(
        list.entries[0].last_replay_error.contains("WRONGTYPE"),
        "{:?}",
        list.entries[0]
    );

    // The operator fixes the key; the replay stores the points.
    r.cmd(&["DEL", &index_key(POISON)]).await;
    let done = admin.replay(id).await.unwrap();
    assert_eq!((done.id, done.points), (id, 2));
    assert_stored(&r, POISON, &[ts, ts + 5]).await;
    assert_eq!(admin.list(None, 100).await.unwrap().records, 0);
    let err = admin.show(id).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("no dead-letter entry with id {id}")),
        "{err}"
    );
    assert_eq!(exposed(broker.http, "broker_writer_dlq_records").await, 0.0);
    assert_eq!(
        exposed(broker.http, "broker_writer_dlq_replayed_points_total").await,
        2.0
    );

    // And new points of that host go straight to Redis again.
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 2,
            metric_names: metric_names(3),
            points: vec![point(POISON, ts + 10, 3)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1);
    assert_stored(&r, POISON, &[ts, ts + 5, ts + 10]).await;
    assert_eq!(admin.list(None, 100).await.unwrap().records, 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_points_redis_refuses_leave_the_spool_for_the_dlq_and_outlive_a_restart() {
    let mut redis = RedisServer::start_with(RedisOptions {
        appendonly: true,
        ..Default::default()
    })
    .unwrap();
    let url = redis.url();
    let r = Reader::connect(&url).await;
    // fsync'ed before the reply, so the SIGKILL below cannot lose them
    // (with everysec a write can wait behind a background fsync).
    r.cmd(&["CONFIG", "SET", "appendfsync", "always"]).await;
    poison(&r, "poison-a").await;
    poison(&r, "poison-b").await;
    drop(r);
    let config = seed_config_for(&url);
    let broker = Running::broker(config.clone(), &Service::DEFAULT).await;

    // Redis is down: both batches are spooled and acked.
    redis.stop();
    let ts = now() - 30;
    let batch = |seq: u64, hosts: [&str; 2]| MetricBatch {
        seq,
        metric_names: metric_names(3),
        points: hosts.iter().map(|h| point(h, ts, 3)).collect(),
    };
    let acks = send_batches(
        &broker.endpoint(),
        vec![
            batch(1, ["poison-a", "good-a"]),
            batch(2, ["poison-b", "good-b"]),
        ],
    )
    .await;
    for a in &acks {
        assert_eq!(a.accepted, 2, "{:?}", a.errors.first());
    }

    // Redis is back: the replayer stores the good points and moves the
    // refused ones to the DLQ instead of retrying them forever.
    redis.restart().unwrap();
    let r = Reader::connect(&url).await;
    for h in ["poison-a", "poison-b"] {
        assert_eq!(key_type(&r, &index_key(h)).await, "string", "{h}");
    }
    let admin = admin(&broker);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = admin.list(None, 100).await.unwrap();
        if list.records == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spool was not replayed into redis and the DLQ within 30 s: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_stored(&r, "good-a", &[ts]).await;
    assert_stored(&r, "good-b", &[ts]).await;
    // The spool drained: new points go straight to Redis.
    let acks = send_batches(&broker.endpoint(), vec![batch(3, ["good-c", "good-d"])]).await;
    assert_eq!(acks[0].accepted, 2);
    assert_stored(&r, "good-c", &[ts]).await;
    broker.stop().await;

    // The DLQ outlives the writer.
    let broker = Running::broker(config, &Service::DEFAULT).await;
    let admin = self::admin(&broker);
    let list = admin.list(None, 100).await.unwrap();
    assert_eq!(list.records, 2, "{list:?}");
    assert_eq!(
        exposed(broker.http, "broker_writer_dlq_records").await,
        2.0,
        "the gauge counts what a previous run left"
    );
    let by_host = |h: &str| {
        list.entries
            .iter()
            .find(|e| e.hosts == vec![h.to_string()])
            .unwrap_or_else(|| panic!("no entry for {h}: {list:?}"))
            .clone()
    };
    let a = by_host("poison-a");
    assert_eq!(by_host("poison-b").points, 1);
    assert!(a.reason.contains("WRONGTYPE"), "{}", a.reason);

    // An operator discards one entry, fixes the other's key, replays all.
    let gone = admin.discard(a.id).await.unwrap();
    assert_eq!((gone.id, gone.points), (a.id, 1));
    assert_eq!(
        admin.discard(a.id).await.unwrap_err().status(),
        Some(404),
        "discarded already"
    );
    r.cmd(&["DEL", &index_key("poison-b")]).await;
    let report = admin.replay_all().await.unwrap();
    assert_eq!(report.error, None);
    assert_eq!((report.replayed, report.points), (1, 1), "{report:?}");
    assert!(report.refused.is_empty(), "{report:?}");
    assert_eq!(report.remaining, 0);
    assert_stored(&r, "poison-b", &[ts]).await;
    assert_eq!(key_type(&r, &index_key("poison-a")).await, "string");
    assert_eq!(admin.list(None, 100).await.unwrap().records, 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_spool_refused_points_go_back_to_the_sender() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let r = Reader::connect(&url).await;
    poison(&r, POISON).await;
    let mut config = seed_config_for(&url);
    config.writer.spool_dir = String::new();
    let broker = Running::broker(config, &Service::DEFAULT).await;
    let ts = now() - 30;
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(3),
            points: vec![point(POISON, ts, 3), point("good-1", ts, 3)],
        }],
    )
    .await;
    // No DLQ to keep them: the batch is refused, naming Redis's reply.
    assert_eq!(acks[0].accepted, 0);
    assert_eq!(acks[0].errors.len(), 2, "{:?}", acks[0].errors);
    for e in &acks[0].errors {
        assert!(
            e.message.contains("redis refused the write")
                && e.message
                    .contains(&format!("ZADD {}: WRONGTYPE", index_key(POISON))),
            "{}",
            e.message
        );
    }
    // The other host's points were stored anyway (a resend is harmless).
    assert_stored(&r, "good-1", &[ts]).await;
    let err = admin(&broker).list(None, 10).await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    assert!(err.to_string().contains("no dead-letter queue"), "{err}");
    broker.stop().await;
}
