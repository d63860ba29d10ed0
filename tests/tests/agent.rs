//! The host agent (`broker_agent::run_agent` with the real
//! `HostCollector`, as `broker-agent` and `broker up` run it) against the
//! all-in-one broker over real gRPC: its first endpoint is dead, so it
//! fails over; the broker is stopped and started again on the same ports
//! mid-run; every snapshot it took is then in query-api, with the values
//! it read.

use broker_agent::{AgentConfig, HostCollector, run_agent};
use broker_common::Service;
use broker_tests::{RedisServer, Running, config_for, http, instant};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVICES: &[Service] = &Service::DEFAULT;
const HOST: &str = "agent-test-host";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_streams_this_host_through_failover_and_a_broker_restart() {
    let redis = RedisServer::start().expect("redis-server");
    let config = config_for(&redis.url());
    let broker = Running::broker(config.clone(), SERVICES).await;
    let (grpc, http_addr) = (broker.grpc, broker.http);
    // Nothing listens on the first endpoint.
    let dead = format!(
        "http://127.0.0.1:{}",
        redis_process::free_port().expect("a free port")
    );
    let mut cfg = AgentConfig::new(vec![dead, broker.endpoint()], HOST.into());
    cfg.interval = Duration::from_secs(1);
    cfg.labels = [("role".to_string(), "test".to_string())].into();

    // What the agent read, snapshot by snapshot: mem_used and the CPUs.
    let read: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
    let mut collector = HostCollector::new().expect("sysinfo reads this host");
    let collect = {
        let read = read.clone();
        move || {
            let snapshot = collector.collect();
            let get = |n: &str| snapshot.iter().find(|(m, _)| m == n).map(|m| m.1);
            read.lock()
                .unwrap()
                .push((get("mem_used").unwrap(), get("cpu_count").unwrap()));
            snapshot
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run_agent(cfg, collect, async move {
        let _ = stop_rx.await;
    }));

    // The host shows up with its metrics and labels.
    let q = format!("mem_total{{host=\"{HOST}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let series = loop {
        if let Some(s) = instant(http_addr, &q).await.first() {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "{q} never arrived");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(series["metric"]["role"], "test", "{series}");
    let total: f64 = series["value"][1].as_str().unwrap().parse().unwrap();
    assert!(total > 0.0);
    let lo = format!("net_rx_bytes_total{{host=\"{HOST}\",interface=\"lo\"}}");
    assert_eq!(instant(http_addr, &lo).await.len(), 1, "{lo}");

    // The broker goes away for 3 s (snapshots wait in the agent) and comes
    // back on the same ports.
    broker.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker = Running::broker_at(config, SERVICES, grpc, http_addr).await;
    // Until the backlog is delivered and four snapshots read after the
    // restart are stored too: Redis holds every snapshot read so far.
    let restarted_at = read.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = read.lock().unwrap().len();
        let stored = stored_snapshots(http_addr).await;
        if n >= restarted_at + 4 && stored == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {n} snapshots stored 30 s after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = stop_tx.send(());
    let report = agent.await.unwrap().expect("the agent ran");
    assert_eq!(report.dropped, 0, "{report:?}");
    assert_eq!(report.rejected, 0, "{report:?}");
    assert_eq!(report.stored, report.collected, "{report:?}");
    assert!(report.reconnects >= 1, "{report:?}");
    assert!(report.collected >= 8, "{report:?}");

    // Every snapshot is stored, one per second, with the values read.
    let read = read.lock().unwrap().clone();
    assert_eq!(read.len() as u64, report.collected);
    let (status, range) = http(
        http_addr,
        "GET",
        &format!("/api/query/range?host={HOST}&start=now-5m&end=now&metrics=mem_used,cpu_count"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{range}");
    let ts: Vec<i64> = serde_json::from_value(range["timestamps"].clone()).unwrap();
    assert_eq!(ts.len(), read.len(), "{range}");
    assert!(ts.windows(2).all(|w| w[1] - w[0] == 1), "{ts:?}");
    let mem: Vec<f64> = serde_json::from_value(range["metrics"]["mem_used"].clone()).unwrap();
    let cpus: Vec<f64> = serde_json::from_value(range["metrics"]["cpu_count"].clone()).unwrap();
    assert_eq!(mem, read.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!(cpus, read.iter().map(|r| r.1).collect::<Vec<_>>());
    broker.stop().await;
}

/// Snapshots of the test host in Redis (the last five minutes).
async fn stored_snapshots(http_addr: std::net::SocketAddr) -> usize {
    let (status, range) = http(
        http_addr,
        "GET",
        &format!("/api/query/range?host={HOST}&start=now-5m&end=now&metrics=mem_used"),
        "",
    )
    .await;
    if status != 200 {
        return 0;
    }
    range["timestamps"].as_array().map_or(0, Vec::len)
}
