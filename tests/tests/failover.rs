//! Failover end to end, with the broker's real `run` in this process, one
//! service per instance: storage-writers, a shard-router and an ingest-gateway over real
//! gRPC on loopback, and a real redis-server. One writer stops: its share
//! goes to the other and every point is still acked and stored. It restarts
//! on the same port: the router's probe finds it and its share goes back to
//! it. A writer that never answers gets nothing and loses nothing; with no
//! writer at all, points come back `UNAVAILABLE` naming it.

use broker_common::config::WriterEndpoint;
use broker_common::{Listeners, Service};
use broker_proto::v1::{MetricBatch, RejectReason};
use broker_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

/// The value of the sample `series` (name and labels exactly as exposed).
async fn sample(http: SocketAddr, series: &str) -> f64 {
    let text = scrape(http).await;
    broker_tests::sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

const WRITER_POINTS: &str = "broker_writer_points_total";
const REROUTED: &str = "broker_router_rerouted_points_total";

fn writer_up(id: &str) -> String {
    format!("broker_router_writer_up{{writer=\"{id}\"}}")
}

struct Writer {
    running: Running,
    grpc: SocketAddr,
    http: SocketAddr,
}

/// A storage-writer named `id`; on `grpc` when given (a restart), else on a
/// fresh port.
async fn start_writer(redis_url: &str, id: &str, grpc: Option<SocketAddr>) -> Writer {
    let mut c = seed_config_for(redis_url);
    c.node_id = id.to_string();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = Listeners::bind(grpc.unwrap_or(any), any)
        .await
        .expect("bind the writer's ports");
    let (grpc, http) = (listeners.grpc_addr(), listeners.http_addr());
    // `Running` binds fresh listeners of its own; use ours instead.
    let running = Running::start(c, move |c, _unused, stop| {
        broker::run(c, &[Service::StorageWriter], listeners, stop)
    })
    .await;
    broker_common::serve::wait_serving(&format!("http://{grpc}"), Duration::from_secs(10))
        .await
        .unwrap();
    Writer {
        running,
        grpc,
        http,
    }
}

/// Sends one batch of `hosts` at `ts` through the gateway; asserts that
/// every point was acked.
async fn send_all(gateway: &str, hosts: &[String], ts: i64) {
    let acks = send_batches(
        gateway,
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(1),
            points: hosts.iter().map(|h| point(h, ts, 1)).collect(),
        }],
    )
    .await;
    assert_eq!(
        acks[0].accepted as usize,
        hosts.len(),
        "{:?}",
        acks[0].errors
    );
    assert!(acks[0].errors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_writers_share_moves_to_the_other_and_comes_back_when_it_restarts() {
    let redis = RedisServer::start().unwrap();
    let w1 = start_writer(&redis.url(), "w1", None).await;
    let w2 = start_writer(&redis.url(), "w2", None).await;
    let mut rc = seed_config_for("");
    rc.router.writers = [("w1", &w1), ("w2", &w2)]
        .map(|(id, w)| WriterEndpoint {
            id: id.into(),
            addr: format!("http://{}", w.grpc),
            weight: 1,
        })
        .into();
    let (ring, router, gateway) = router_and_gateway(rc).await;
    let gw = gateway.endpoint();

    let hosts: Vec<String> = (0..40).map(|i| format!("host-{i:02}")).collect();
    let ts = now() - 60;
    let owned_by = |id: &str, ts: i64| {
        hosts
            .iter()
            .filter(|h| ring.owner_of_point(h, ts).unwrap().id == id)
            .count() as f64
    };
    let timestamps = [ts, ts + 5, ts + 10, ts + 15];
    for t in timestamps {
        assert!(owned_by("w1", t) > 0.0 && owned_by("w2", t) > 0.0);
    }

    // 1. Both up: each writer takes its share.
    send_all(&gw, &hosts, ts).await;
    assert_eq!(sample(w1.http, WRITER_POINTS).await, owned_by("w1", ts));
    assert_eq!(sample(w2.http, WRITER_POINTS).await, owned_by("w2", ts));
    assert_eq!(sample(router.http, &writer_up("w2")).await, 1.0);
    assert_eq!(sample(router.http, REROUTED).await, 0.0);

    // 2. w2 stops: its points fail over to w1, all acked; w2 is marked down.
    let w2_grpc = w2.grpc;
    w2.running.stop().await;
    send_all(&gw, &hosts, ts + 5).await;
    assert_eq!(sample(router.http, &writer_up("w2")).await, 0.0);
    assert_eq!(sample(router.http, &writer_up("w1")).await, 1.0);
    assert_eq!(sample(router.http, REROUTED).await, owned_by("w2", ts + 5));
    let w1_before = owned_by("w1", ts);
    assert_eq!(sample(w1.http, WRITER_POINTS).await, w1_before + 40.0);

    // 3. While w2 is down its share goes straight to w1.
    send_all(&gw, &hosts, ts + 10).await;
    assert_eq!(sample(w1.http, WRITER_POINTS).await, w1_before + 80.0);
    assert_eq!(
        sample(router.http, REROUTED).await,
        owned_by("w2", ts + 5) + owned_by("w2", ts + 10)
    );

    // 4. w2 restarts on the same port: the probe marks it up again.
    let w2 = start_writer(&redis.url(), "w2", Some(w2_grpc)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sample(router.http, &writer_up("w2")).await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "w2 not marked up within 30 s of its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 5. Its share goes back to it.
    let rerouted = sample(router.http, REROUTED).await;
    send_all(&gw, &hosts, ts + 15).await;
    assert_eq!(
        sample(w2.http, WRITER_POINTS).await,
        owned_by("w2", ts + 15)
    );
    assert_eq!(
        sample(w1.http, WRITER_POINTS).await,
        w1_before + 80.0 + owned_by("w1", ts + 15)
    );
    assert_eq!(sample(router.http, REROUTED).await, rerouted);

    // Every acked point is in Redis with its value.
    let r = Reader::connect(&redis.url()).await;
    for t in timestamps {
        for h in &hosts {
            let got = r.hgetall(&format!("monitor:metrics:{{{h}}}:{t}")).await;
            let stored: f64 = got["m00"].parse().unwrap();
            assert_eq!(stored, value(h, t, 0), "{h}:{t}");
        }
    }

    gateway.stop().await;
    router.stop().await;
    w1.running.stop().await;
    w2.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_for_a_dead_writer_fail_over_to_the_live_one() {
    // A port that refuses connections.
    let (dead_addr, _held) = refusing_endpoint();
    dead_writer_fails_over(dead_addr).await;
}

/// A writer's address where a foreign gRPC server answers (a reused port
/// or pod IP: here a query-api, which answers UNIMPLEMENTED): the points
/// fail over as for a dead writer, none is refused for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_for_a_writer_address_a_foreign_server_answers_fail_over() {
    let redis = RedisServer::start().unwrap();
    let foreign = Running::broker(seed_config_for(&redis.url()), &[Service::QueryApi]).await;
    dead_writer_fails_over(foreign.endpoint()).await;
    foreign.stop().await;
}

async fn dead_writer_fails_over(dead_addr: String) {
    let redis = RedisServer::start().unwrap();
    let writer = Running::broker(
        {
            let mut c = seed_config_for(&redis.url());
            c.node_id = "alive".into();
            c
        },
        &[Service::StorageWriter],
    )
    .await;
    let mut c = seed_config_for("");
    c.router.writers = vec![
        broker_common::config::WriterEndpoint {
            id: "alive".into(),
            addr: writer.endpoint(),
            weight: 1,
        },
        broker_common::config::WriterEndpoint {
            id: "dead".into(),
            addr: dead_addr,
            weight: 1,
        },
    ];
    let (ring, router, gateway) = router_and_gateway(c).await;
    let ts = now();
    let points: Vec<_> = (0..40).map(|i| point(&format!("h{i}"), ts, 1)).collect();
    let dead_owned = points
        .iter()
        .filter(|p| ring.owner_of_point(&p.host_id, p.timestamp).unwrap().id == "dead")
        .count();
    assert!(dead_owned > 0);
    let acks = send_batches(
        &gateway.endpoint(),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(1),
            points,
        }],
    )
    .await;
    // The dead writer's share went to the live one: nothing failed.
    assert!(acks[0].errors.is_empty(), "{:?}", acks[0].errors);
    assert_eq!(acks[0].accepted, 40);
    let r = Reader::connect(&redis.url()).await;
    for i in 0..40 {
        let host = format!("h{i}");
        let got = r.hgetall(&format!("monitor:metrics:{{{host}}}:{ts}")).await;
        let stored: f64 = got["m00"].parse().unwrap();
        assert_eq!(stored, value(&host, ts, 0), "{host}");
    }
    gateway.stop().await;
    router.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_no_writer_can_take_are_reported_unavailable_not_dropped() {
    // A port that refuses connections, and no other writer.
    let (dead_addr, _held) = refusing_endpoint();
    let mut c = seed_config_for("");
    c.router.writers = vec![broker_common::config::WriterEndpoint {
        id: "dead".into(),
        addr: dead_addr,
        weight: 1,
    }];
    let router = Running::broker(c, &[Service::ShardRouter]).await;
    let mut gc = seed_config_for("");
    gc.gateway.routers = vec![router.endpoint()];
    let gateway = Running::broker(gc, &[Service::IngestGateway]).await;
    let ts = now();
    let points: Vec<_> = (0..40).map(|i| point(&format!("h{i}"), ts, 1)).collect();
    let acks = send_batches(
        &gateway.endpoint(),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(1),
            points,
        }],
    )
    .await;
    let failed: Vec<u32> = acks[0].errors.iter().map(|e| e.index).collect();
    assert_eq!(failed, (0..40).collect::<Vec<u32>>());
    assert!(
        acks[0]
            .errors
            .iter()
            .all(|e| e.retryable && e.reason == RejectReason::Unavailable as i32)
    );
    assert!(
        acks[0].errors[0].message.contains("tried writer dead"),
        "{}",
        acks[0].errors[0].message
    );
    assert_eq!(acks[0].accepted, 0);
    gateway.stop().await;
    router.stop().await;
}
