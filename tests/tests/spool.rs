//! The writer's spool: with Redis down, batches are still acked (appended
//! and fsync'ed locally), and they reach Redis once it is back, including
//! after the writer itself restarted.

use broker_common::Service;
use broker_proto::v1::MetricBatch;
use broker_tests::*;
use redis_process::RedisOptions;
use std::time::{Duration, Instant};

fn batch(seq: u64, host: &str, ts: i64) -> MetricBatch {
    MetricBatch {
        seq,
        metric_names: metric_names(3),
        points: (0..20)
            .map(|i| point(&format!("{host}-{i}"), ts, 3))
            .collect(),
    }
}

async fn wait_for_key(redis_url: &str, key: &str, within: Duration) {
    let r = Reader::connect(redis_url).await;
    let deadline = Instant::now() + within;
    while !r.exists(key).await {
        assert!(
            Instant::now() < deadline,
            "{key} did not reach redis within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_all_stored(redis_url: &str, host: &str, ts: i64) {
    let r = Reader::connect(redis_url).await;
    for i in 0..20 {
        let h = format!("{host}-{i}");
        let got = r.hgetall(&format!("monitor:metrics:{{{h}}}:{ts}")).await;
        assert_eq!(got.len(), 3, "{h}");
        assert_eq!(got["m01"].parse::<f64>().unwrap(), value(&h, ts, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_while_redis_is_down_and_replays_when_it_returns() {
    // Every write fsync'ed: `stop` is SIGKILL ("before" must survive it).
    let mut redis = durable_redis();
    let url = redis.url();
    let broker = Running::broker(seed_config_for(&url), &Service::DEFAULT).await;
    let ts = now() - 30;
    let acks = send_batches(&broker.endpoint(), vec![batch(1, "before", ts)]).await;
    assert_eq!(acks[0].accepted, 20);

    redis.stop();
    // Redis is down: the batches are acked all the same (spooled).
    let acks = send_batches(
        &broker.endpoint(),
        vec![batch(2, "during-a", ts), batch(3, "during-b", ts)],
    )
    .await;
    assert_eq!(acks[0].accepted, 20, "{:?}", acks[0].errors.first());
    assert_eq!(acks[1].accepted, 20, "{:?}", acks[1].errors.first());

    redis.restart().unwrap();
    // The two batches may be spooled in either order.
    for host in ["during-a", "during-b"] {
        wait_for_key(
            &url,
            &format!("monitor:metrics:{{{host}-19}}:{ts}"),
            Duration::from_secs(30),
        )
        .await;
    }
    for host in ["before", "during-a", "during-b"] {
        assert_all_stored(&url, host, ts).await;
    }
    // And direct writes work again.
    let acks = send_batches(&broker.endpoint(), vec![batch(4, "after", ts)]).await;
    assert_eq!(acks[0].accepted, 20);
    // Until the replayer has deleted the last records it may spool this
    // batch too, to keep order: it reaches Redis shortly either way.
    wait_for_key(
        &url,
        &format!("monitor:metrics:{{after-19}}:{ts}"),
        Duration::from_secs(30),
    )
    .await;
    assert_all_stored(&url, "after", ts).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_writer_replays_what_its_predecessor_spooled() {
    let mut redis = RedisServer::start_with(RedisOptions {
        appendonly: true,
        ..Default::default()
    })
    .unwrap();
    let url = redis.url();
    let config = seed_config_for(&url);
    redis.stop();
    let broker = Running::broker(config.clone(), &Service::DEFAULT).await;
    let ts = now() - 30;
    let acks = send_batches(&broker.endpoint(), vec![batch(1, "spooled", ts)]).await;
    assert_eq!(acks[0].accepted, 20, "{:?}", acks[0].errors.first());
    // The writer stops with Redis still down: the batch stays in the spool.
    broker.stop().await;

    redis.restart().unwrap();
    let broker = Running::broker(config, &Service::DEFAULT).await;
    wait_for_key(
        &url,
        &format!("monitor:metrics:{{spooled-19}}:{ts}"),
        Duration::from_secs(30),
    )
    .await;
    assert_all_stored(&url, "spooled", ts).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_with_a_retryable_error() {
    let mut redis = RedisServer::start().unwrap();
    let mut config = seed_config_for(&redis.url());
    config.writer.spool_max_bytes = 1 << 20;
    redis.stop();
    let broker = Running::broker(config, &Service::DEFAULT).await;
    let ts = now() - 30;
    // ~100 KB per batch: the 1 MiB spool fills after about ten.
    let big = |seq: u64| MetricBatch {
        seq,
        metric_names: metric_names(40),
        points: (0..300)
            .map(|i| point(&format!("h{seq}-{i}"), ts, 40))
            .collect(),
    };
    let acks = send_batches(&broker.endpoint(), (1..=16).map(big).collect()).await;
    let accepted: u32 = acks.iter().map(|a| a.accepted).sum();
    let refused: Vec<_> = acks.iter().flat_map(|a| a.errors.iter()).collect();
    assert!(accepted > 0, "the spool took batches until full");
    assert!(!refused.is_empty(), "a full spool refuses");
    assert!(
        refused.iter().all(|e| e.retryable),
        "refusals are retryable"
    );
    assert!(
        refused[0].message.contains("spool"),
        "{}",
        refused[0].message
    );
    assert_eq!(accepted as usize + refused.len(), 16 * 300);
    broker.stop().await;
}
