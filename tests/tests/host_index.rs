//! The host index and series sets (`storage_layout::hosts`): periodic
//! work (query-api's host list, label APIs and selectors, host-manager's
//! inventory refresh, the writers' upkeep) reads them and never walks the
//! keyspace; data written before they existed is backfilled once; hosts
//! that stopped reporting a ttl ago leave them; chunks expire by
//! themselves, with no sweeper.

use broker_common::{BrokerConfig, Service};
use broker_proto::v1::MetricBatch;
use broker_tests::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use storage_layout::{Command, Exec, hosts};

/// Calls per command since Redis started (`INFO commandstats`), summed
/// over `nodes`.
async fn calls(nodes: &[&Reader]) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for r in nodes {
        let info: String = r.cmd(&["INFO", "commandstats"]).await.convert().unwrap();
        for line in info.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let n = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            *out.entry(name.to_string()).or_default() += n;
        }
    }
    out
}

fn count(stats: &HashMap<String, u64>, cmd: &str) -> u64 {
    stats.get(cmd).copied().unwrap_or(0)
}

/// `n` keys that are not the broker's, so a walk of the keyspace would cost.
async fn foreign_keys(r: &Reader, n: usize) {
    for part in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let cmds = part
            .iter()
            .map(|i| Command::of("SET", &[format!("other:{i}").as_bytes(), b"x"]))
            .collect();
        for reply in Exec::pipeline(r.client(), cmds).await.unwrap() {
            reply.ok("SET").unwrap();
        }
    }
}

/// `hosts` hosts × 3 snapshots of 4 metrics, through the data path.
async fn fill(config: &BrokerConfig, hosts: usize, ts: i64) {
    let broker = Running::broker(config.clone(), &Service::DEFAULT).await;
    let points = (0..hosts)
        .flat_map(|h| (0..3).map(move |i| point(&format!("h-{h:04}"), ts + 5 * i, 4)))
        .collect::<Vec<_>>();
    let n = points.len() as u32;
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(4),
            points,
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, n, "{:?}", acks[0].errors.first());
    // The writer's one-time backfill (of an empty index) is done.
    let r = Reader::connect(&config.writer.redis_url).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.cmd(&["GET", hosts::READY_KEY]).await.as_str().is_none() {
        assert!(
            Instant::now() < deadline,
            "the writer never marked the index ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.stop().await;
}

/// Makes Redis look as an older version left it: no host index, no
/// series sets, no `sealed_points`.
async fn forget_index(r: &Reader, hosts: usize) {
    r.cmd(&["DEL", hosts::INDEX_KEY]).await;
    r.cmd(&["DEL", hosts::READY_KEY]).await;
    for h in 0..hosts {
        let host = format!("h-{h:04}");
        r.cmd(&["DEL", &hosts::series_key(&host)]).await;
        r.cmd(&[
            "HDEL",
            &format!("monitor:hosts:{{{host}}}"),
            "sealed_points",
        ])
        .await;
    }
}

/// Query-api and host-manager refreshing their host lists every few
/// hundred milliseconds.
fn readers_config(url: &str) -> BrokerConfig {
    let mut c = config_for(url);
    c.query.hosts_cache_ttl = Duration::from_millis(100);
    c.host_manager.refresh_interval = Duration::from_millis(200);
    c
}

/// Waits until query-api lists `n` hosts; returns the list.
async fn wait_listed(q: &Running, url: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(q.http, "GET", "/api/query/hosts", "").await;
        assert_eq!(status, 200, "{body}");
        let list = body["hosts"].as_array().cloned().unwrap_or_default();
        if list.len() == n {
            return list;
        }
        if Instant::now() >= deadline {
            let r = Reader::connect(url).await;
            eprintln!(
                "index {:?} ready {:?} lock {:?}",
                r.cmd(&["ZCARD", hosts::INDEX_KEY]).await,
                r.cmd(&["GET", hosts::READY_KEY]).await,
                r.cmd(&["GET", "monitor:index:hosts:backfilling"]).await
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} hosts listed: {body}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_backfills_the_index_once_and_periodic_work_never_scans() {
    const HOSTS: usize = 50;
    let redis = RedisServer::start().unwrap();
    let r = Reader::connect(&redis.url()).await;
    foreign_keys(&r, 200_000).await;
    let ts = now() - 120;
    fill(&config_for(&redis.url()), HOSTS, ts).await;
    forget_index(&r, HOSTS).await;
    let before = calls(&[&r]).await;

    let readers = Running::broker(
        readers_config(&redis.url()),
        &[Service::QueryApi, Service::HostManager],
    )
    .await;
    let list = wait_listed(&readers, &redis.url(), HOSTS).await;
    for h in &list {
        assert_eq!(h["last_seen"], ts + 10, "{h}");
        assert_eq!(h["points"], 3, "{h}");
        assert_eq!(h["series"], 4, "{h}");
        assert!(h.get("metrics").is_none(), "names only when asked: {h}");
    }
    let (status, body) = http(readers.http, "GET", "/api/query/hosts?metrics=true", "").await;
    assert_eq!(status, 200, "{body}");
    for h in body["hosts"].as_array().unwrap() {
        assert_eq!(h["metrics"], serde_json::json!(metric_names(4)), "{h}");
    }
    let r2: String = r.cmd(&["GET", hosts::READY_KEY]).await.convert().unwrap();
    assert_eq!(r2, hosts::INDEX_VERSION);
    let backfilled = calls(&[&r]).await;
    let scans = count(&backfilled, "scan") - count(&before, "scan");
    assert!(scans >= 1, "the backfill walked the metadata keys once");
    println!("backfill: {scans} SCAN calls over 200,000 foreign keys");

    // Many refresh cycles of both readers, with a dashboard and PromQL
    // selectors asking meanwhile: the index and series sets, never a walk.
    let hgetall0 = count(&backfilled, "hgetall");
    let deadline = Instant::now() + Duration::from_secs(60);
    let paths = [
        "/api/query/hosts",
        "/api/v1/labels",
        "/api/v1/label/__name__/values",
        "/api/v1/series?match[]=m01",
        "/api/v1/query?query=count(m00)",
    ];
    loop {
        for p in paths {
            let (status, body) = http(readers.http, "GET", p, "").await;
            assert_eq!(status, 200, "{p}: {body}");
        }
        let now = calls(&[&r]).await;
        // Each list refresh reads every host's metadata once: at least
        // ten refreshes between the two readers.
        if count(&now, "hgetall") - hgetall0 >= 10 * HOSTS as u64 {
            assert_eq!(
                count(&now, "scan"),
                count(&backfilled, "scan"),
                "periodic work walked the keyspace"
            );
            assert_eq!(count(&now, "keys"), 0, "KEYS was called");
            break;
        }
        assert!(Instant::now() < deadline, "the readers did not refresh");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, body) = http(
        readers.http,
        "GET",
        &format!("/api/v1/query?query=count(m00)&time={}", ts + 10),
        "",
    )
    .await;
    assert_eq!(
        body["data"]["result"][0]["value"][1], "50",
        "every host's series selected: {body}"
    );
    readers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_backfills_the_index_on_a_cluster() {
    const HOSTS: usize = 30;
    let cluster = RedisCluster::start(3).unwrap();
    let ts = now() - 120;
    fill(&config_for(&cluster.url()), HOSTS, ts).await;
    let r = Reader::connect(&cluster.url()).await;
    forget_index(&r, HOSTS).await;
    let readers = Running::broker(readers_config(&cluster.url()), &[Service::QueryApi]).await;
    let list = wait_listed(&readers, &cluster.url(), HOSTS).await;
    assert!(list.iter().all(|h| h["points"] == 3), "{list:?}");
    let indexed = hosts::list(r.client(), 0).await.unwrap();
    assert_eq!(indexed.len(), HOSTS);
    assert!(
        indexed.iter().all(|(_, seen)| *seen == ts + 10),
        "{indexed:?}"
    );
    readers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_hosts_leave_the_index_and_chunks_expire_with_no_sweeper() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let mut config = readers_config(&url);
    config.ttl = Duration::from_secs(60);
    config.writer.chunk_points = 4;
    config.writer.chunk_max_open = Duration::from_secs(1);
    let broker = Running::broker(
        config.clone(),
        &[
            Service::IngestGateway,
            Service::ShardRouter,
            Service::StorageWriter,
            Service::QueryApi,
        ],
    )
    .await;
    let r = Reader::connect(&url).await;
    // "gone": 8 snapshots, the newest 15 s old, so its chunks expire (ttl
    // 60 s) 25 and 45 s from now. "live" keeps reporting.
    let t0 = now();
    let gone = MetricBatch {
        seq: 1,
        metric_names: metric_names(2),
        points: (0..8).map(|i| point("gone", t0 - 50 + 5 * i, 2)).collect(),
    };
    assert_eq!(
        send_batches(&broker.endpoint(), vec![gone]).await[0].accepted,
        8
    );
    let live = |seq: u64| MetricBatch {
        seq,
        metric_names: metric_names(2),
        points: vec![point("live", now(), 2)],
    };
    // Sealed into chunks (4 points each) by the writer's maintainer, and
    // counted in the metadata.
    let deadline = Instant::now() + Duration::from_secs(20);
    let chunk_keys: Vec<String> = loop {
        let members: Vec<String> = r
            .cmd(&["ZRANGE", "monitor:chunks:{gone}", "0", "-1"])
            .await
            .convert()
            .unwrap();
        let meta = r.hgetall("monitor:hosts:{gone}").await;
        let sealed = meta.get("sealed_points").map(String::as_str);
        if Instant::now() >= deadline {
            eprintln!("{meta:?}");
        }
        if sealed == Some("8") && meta.get("open_points").map(String::as_str) == Some("0") {
            assert!(members.len() >= 2, "{members:?}");
            break members
                .iter()
                .map(|m| {
                    let c = storage_layout::chunked::ChunkRef::parse(m.as_bytes()).unwrap();
                    storage_layout::chunked::chunk_key("gone", c.start, &c.id)
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "not sealed: {members:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stats0 = calls(&[&r]).await;
    let mut seq = 2;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut expired, mut unlisted, mut trimmed) = (None, None, None);
    let started = Instant::now();
    while expired.is_none() || unlisted.is_none() || trimmed.is_none() {
        assert!(
            Instant::now() < deadline,
            "gone: chunks expired {expired:?}, unlisted {unlisted:?}, trimmed {trimmed:?}"
        );
        assert_eq!(
            send_batches(&broker.endpoint(), vec![live(seq)]).await[0].accepted,
            1
        );
        seq += 1;
        if expired.is_none() {
            let mut left = 0;
            for k in &chunk_keys {
                left += r.exists(k).await as usize;
            }
            if left == 0 {
                assert!(stored(&url, "gone", t0 - 50).await.is_none());
                expired = Some(started.elapsed());
            }
        }
        if unlisted.is_none() {
            let (_, body) = http(broker.http, "GET", "/api/query/hosts", "").await;
            let ids: Vec<&str> = body["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|h| h["id"].as_str())
                .collect();
            assert!(ids.contains(&"live"), "{body}");
            if !ids.contains(&"gone") {
                unlisted = Some(started.elapsed());
            }
        }
        if trimmed.is_none() {
            let score: Option<String> = r
                .cmd(&["ZSCORE", hosts::INDEX_KEY, "gone"])
                .await
                .convert()
                .unwrap();
            if score.is_none() {
                trimmed = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "gone: chunks expired after {expired:?}, unlisted after {unlisted:?}, out of the index after {trimmed:?}"
    );
    let stats = calls(&[&r]).await;
    assert_eq!(
        count(&stats, "scan"),
        count(&stats0, "scan"),
        "a sweeper walked"
    );
    assert_eq!(count(&stats, "keys"), 0);
    let indexed: Vec<String> = hosts::list(r.client(), 0)
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert_eq!(indexed, ["live"]);
    broker.stop().await;
}
