//! The load generator against the real broker: everything it reports as
//! acked is in Redis, with the values it sent.

use broker_agent::generator::{SnapshotGenerator, host_id, value};
use broker_agent::load::{LoadConfig, Pacing, run_load};
use broker_common::Service;
use broker_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_point_is_in_redis_with_its_values() {
    let redis = RedisServer::start().unwrap();
    let broker = Running::broker(seed_config_for(&redis.url()), &Service::DEFAULT).await;
    let (hosts, metrics) = (50, 8);
    let report = run_load(LoadConfig {
        endpoints: vec![broker.endpoint()],
        hosts,
        metrics,
        // The values are checked with `generator::value`.
        mix: broker_agent::generator::Mix::Synthetic,
        batch_hosts: 25,
        connections: 2,
        window: 4,
        pacing: Pacing::Max,
        duration: Some(Duration::from_secs(20)),
        max_points: Some(2_000),
        ..LoadConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(report.sent, 2_000);
    assert_eq!(report.acked, 2_000, "{report}");
    assert_eq!(report.rejected + report.failed, 0);

    let names = SnapshotGenerator::new(hosts, metrics)
        .metric_names()
        .to_vec();
    let r = Reader::connect(&redis.url()).await;
    let mut found = 0;
    for h in 0..hosts {
        let host = host_id(h);
        let index = r
            .zrange_withscores(&format!("monitor:index:metrics:{{{host}}}"))
            .await;
        for (member, _) in index {
            let ts: i64 = member.parse().unwrap();
            let got = r.hgetall(&format!("monitor:metrics:{{{host}}}:{ts}")).await;
            assert_eq!(got.len(), metrics, "{host} {ts}");
            for (m, name) in names.iter().enumerate() {
                assert_eq!(
                    got[name].parse::<f64>().unwrap(),
                    value(h, ts, m),
                    "{host} {ts} {name}"
                );
            }
            found += 1;
        }
    }
    assert_eq!(found, 2_000);
    broker.stop().await;
}
