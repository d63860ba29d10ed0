//! The same write test against Redis Cluster (3 masters) and Sentinel.

use broker_common::Service;
use broker_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_three_master_cluster_with_hash_tags() {
    let cluster = RedisCluster::start(3).unwrap();
    let broker = Running::broker(config_for(&cluster.url()), &Service::DEFAULT).await;
    write_and_verify(&broker.endpoint(), &cluster.url(), "chunked", 20).await;
    // Hash tags: all keys of one host share one slot; hosts spread over
    // several masters.
    let r = Reader::connect(&cluster.url()).await;
    let mut slots = std::collections::HashSet::new();
    for h in 0..20 {
        let host = format!("host-{h:03}");
        let keys = [
            format!("monitor:open:{{{host}}}"),
            format!("monitor:chunks:{{{host}}}"),
            format!("monitor:chunk:{{{host}}}:1:ab"),
            format!("monitor:series:{{{host}}}"),
            format!("monitor:series:first:{{{host}}}"),
            format!("monitor:hosts:{{{host}}}"),
        ];
        let s: Vec<i64> = futures_slots(&r, &keys).await;
        assert!(s.windows(2).all(|w| w[0] == w[1]), "{host}: {s:?}");
        slots.insert(s[0]);
    }
    let mut masters_with_keys = 0;
    for node in cluster.nodes() {
        let n: i64 = node.command(&["DBSIZE"]).unwrap().parse().unwrap();
        if n > 0 {
            masters_with_keys += 1;
        }
    }
    assert!(masters_with_keys >= 2, "keys spread over masters");
    broker.stop().await;
}

async fn futures_slots(r: &Reader, keys: &[String]) -> Vec<i64> {
    let mut out = Vec::new();
    for k in keys {
        out.push(r.cmd(&["CLUSTER", "KEYSLOT", k]).await.convert().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_sentinel() {
    let sentinel = RedisSentinel::start().unwrap();
    let broker = Running::broker(config_for(&sentinel.url()), &Service::DEFAULT).await;
    write_and_verify(&broker.endpoint(), &sentinel.url(), "chunked", 5).await;
    // The data is on the master the sentinel names.
    let n: i64 = sentinel
        .master()
        .command(&["DBSIZE"])
        .unwrap()
        .parse()
        .unwrap();
    // Per host: its open chunk, metadata and series set.
    assert!(n >= 5 * 3, "dbsize {n}");
    broker.stop().await;
}
