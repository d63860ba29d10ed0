//! The data path under a changing ring: writers that joined cluster-ctl
//! refuse points routed under an older epoch for a range they no longer
//! own, and the router routes them again under its newer ring, so nothing
//! is lost or written by the wrong owner.

use broker_common::Service;
use broker_proto::v1::{MemberState, MetricBatch};
use broker_tests::cluster::CtlCluster;
use broker_tests::*;
use hash_ring::NodeSpec;
use shard_router::Router;
use shard_router::metrics::RouterMetrics;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage_writer::WriterClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_routed_under_an_old_epoch_are_routed_again_under_the_new_ring() {
    let redis = RedisServer::start().unwrap();
    let mut c = CtlCluster::start(3, Duration::from_secs(1)).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let mut writers = Vec::new();
    for id in ["writer-a", "writer-b"] {
        let mut config = seed_config_for(&redis.url());
        config.node_id = id.into();
        config.cluster.endpoints = c.endpoints();
        writers.push(Running::broker(config, &[Service::StorageWriter]).await);
    }
    let client = c.client();
    let deadline = Instant::now() + Duration::from_secs(15);
    let state = loop {
        let s = client.members().await.unwrap();
        let online = |id: &str| {
            s.members
                .iter()
                .any(|m| m.id == id && m.state == MemberState::Online as i32)
        };
        if online("writer-a") && online("writer-b") {
            break s;
        }
        assert!(Instant::now() < deadline, "writers did not join: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(state.epoch > 1);

    // A router that still routes under epoch 1, when writer-a was alone.
    let mut registry = prometheus_client::registry::Registry::default();
    let router = Arc::new(
        Router::with_epoch(
            &Default::default(),
            vec![(
                NodeSpec::new("writer-a"),
                WriterClient::remote(&writers[0].endpoint(), &Default::default()).unwrap(),
            )],
            RouterMetrics::new(&mut registry),
            1,
        )
        .unwrap(),
    );
    // It learns the new ring a moment after its first forward was refused.
    let r = router.clone();
    let watched = cluster_client::watch_state(client.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        shard_router::follow_cluster(&r, watched, None, Default::default());
    });

    let ts = now() - 5;
    let hosts: Vec<String> = (0..100).map(|i| format!("ring-h{i}")).collect();
    let batch = MetricBatch {
        seq: 1,
        metric_names: metric_names(3),
        points: hosts.iter().map(|h| point(h, ts, 3)).collect(),
    };
    let failed = router.route(batch).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(router.epoch() >= state.epoch);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let stale: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("broker_router_stale_rerouted_points_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        stale, 100,
        "writer-a refused the batch it no longer fully owns: {text}"
    );

    let reader = Reader::connect(&redis.url()).await;
    for h in &hosts {
        let got = reader
            .hgetall(&format!("monitor:metrics:{{{h}}}:{ts}"))
            .await;
        assert_eq!(got.len(), 3, "{h} not stored");
        assert_eq!(got["m00"].parse::<f64>().unwrap(), value(h, ts, 0));
    }
    for w in writers {
        w.stop().await;
    }
    // Both writers drained and left on shutdown.
    let s = client.members().await.unwrap();
    assert!(s.members.is_empty(), "{:?}", s.members);
    c.stop_all().await;
}
