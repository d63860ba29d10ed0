//! The URLs this crate hands out parse with fred 10's `Config::from_url` and
//! actually connect (loopback only).

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use redis_process::{RedisCluster, RedisSentinel, RedisServer};

async fn roundtrip(url: &str) {
    let config = Config::from_url(url).unwrap_or_else(|e| panic!("fred rejects {url}: {e}"));
    let client = Builder::from_config(config).build().expect("build client");
    tokio::time::timeout(std::time::Duration::from_secs(10), client.init())
        .await
        .expect("fred init timed out")
        .expect("fred init");
    for i in 0..10 {
        let key = format!("fred:{i}");
        // Custom commands: the broker builds fred without its typed
        // command interfaces.
        let _: Value = client
            .custom(
                CustomCommand::new_static("SET", ClusterHash::FirstKey, false),
                vec![key.clone(), i.to_string()],
            )
            .await
            .expect("set");
        let back: i64 = client
            .custom(
                CustomCommand::new_static("GET", ClusterHash::FirstKey, false),
                vec![key.clone()],
            )
            .await
            .expect("get");
        assert_eq!(back, i);
    }
    client.quit().await.expect("quit");
}

#[tokio::test]
async fn centralized_url_works_with_fred() {
    let server = RedisServer::start().expect("start");
    let config = Config::from_url(&server.url()).unwrap();
    assert!(matches!(config.server, ServerConfig::Centralized { .. }));
    roundtrip(&server.url()).await;
}

#[tokio::test]
async fn cluster_url_works_with_fred() {
    let cluster = RedisCluster::start(3).expect("cluster");
    let config = Config::from_url(&cluster.url()).unwrap();
    match &config.server {
        ServerConfig::Clustered { hosts, .. } => assert_eq!(hosts.len(), 3),
        other => panic!("not clustered: {other:?}"),
    }
    roundtrip(&cluster.url()).await;
    // Keys went to more than one node.
    let with_keys = cluster
        .nodes()
        .iter()
        .filter(|n| n.cli(&["dbsize"]).unwrap() != "0")
        .count();
    assert!(with_keys > 1, "all keys landed on one node");
}

#[tokio::test]
async fn sentinel_url_works_with_fred() {
    let sentinel = RedisSentinel::start().expect("sentinel");
    let config = Config::from_url(&sentinel.url()).unwrap();
    match &config.server {
        ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } => {
            assert_eq!(service_name, "mymaster");
            assert_eq!(hosts[0].port, sentinel.sentinel().port());
        }
        other => panic!("not sentinel: {other:?}"),
    }
    assert_eq!(config.database, Some(0));
    roundtrip(&sentinel.url()).await;
    assert_eq!(sentinel.master().cli(&["get", "fred:3"]).unwrap(), "3");
}
