//! Inputs bounded before they cost memory or Redis work (issue "hardening"),
//! with real processes over loopback: a storage-writer, a shard-router and
//! the all-in-one broker, each fed what a buggy or hostile peer could send.

use broker_common::Service;
use broker_proto::v1::router_service_client::RouterServiceClient;
use broker_proto::v1::writer_service_client::WriterServiceClient;
use broker_proto::v1::{BatchError, MetricBatch, Point, RouteRequest, WriteRequest};
use broker_tests::*;
use redis_process::RedisServer;
use tonic::Code;

/// Points the router and the writer refuse whoever sends them. (NaN and
/// ±Inf are not among them: they are values of Prometheus remote write and
/// OTLP data, which reach the router and the writer too; the agents'
/// finite-only rule is the gateway's, on its agent port,
/// `tests/tests/data_path.rs`.)
fn bad_points(ts: i64) -> Vec<(&'static str, Point)> {
    let mut labels = point("h-labels", ts, 2);
    for i in 0..100 {
        labels.labels.insert(format!("l{i}"), "v".into());
    }
    vec![
        ("'*'", point("a*b", ts, 2)),
        ("' '", point("a b", ts, 2)),
        ("'é'", point("hé", ts, 2)),
        ("bytes long", point(&"h".repeat(200), ts, 2)),
        (
            "ahead of the gateway clock",
            point("h-future", ts + 86_400, 2),
        ),
        ("older than the ttl", point("h-old", ts - 30 * 86_400, 2)),
        ("labels", labels),
    ]
}

/// `WriterService.Write` and `RouterService.Route` run the gateway's
/// checks: a host id with `*`, spaces, non-ASCII or 200 bytes, a
/// timestamp a day ahead or a month old, 100 labels: each refused with
/// INVALID_ARGUMENT naming the problem, nothing written to Redis, and the
/// writer still takes a valid batch afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_rpcs_run_the_gateways_checks() {
    let redis = RedisServer::start().unwrap();
    let writer = Running::broker(seed_config_for(&redis.url()), &[Service::StorageWriter]).await;
    let mut rc = seed_config_for("");
    rc.router.writers = vec![broker_common::config::WriterEndpoint {
        id: "w".into(),
        addr: writer.endpoint(),
        weight: 1,
    }];
    let router = Running::broker(rc, &[Service::ShardRouter]).await;
    broker_common::serve::wait_serving(&writer.endpoint(), std::time::Duration::from_secs(10))
        .await
        .unwrap();
    broker_common::serve::wait_serving(&router.endpoint(), std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let mut w = WriterServiceClient::connect(writer.endpoint())
        .await
        .unwrap();
    let mut r = RouterServiceClient::connect(router.endpoint())
        .await
        .unwrap();
    let ts = now() - 30;
    for (what, p) in bad_points(ts) {
        let batch = MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points: vec![p],
        };
        let e = w
            .write(WriteRequest {
                batch: Some(batch.clone()),
                ring_epoch: 1,
            })
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(what), "{what}: {}", e.message());
        let e = r
            .route(RouteRequest { batch: Some(batch) })
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(what), "{what}: {}", e.message());
    }
    let reader = Reader::connect(&redis.url()).await;
    let keys: Vec<String> = reader.cmd(&["KEYS", "*"]).await.convert().unwrap();
    assert!(keys.is_empty(), "nothing reached Redis: {keys:?}");
    // Still serving.
    w.write(WriteRequest {
        batch: Some(MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points: vec![point("fine", ts, 2)],
        }),
        ring_epoch: 1,
    })
    .await
    .expect("a valid batch is written");
    assert!(
        reader
            .exists(&format!("monitor:metrics:{{fine}}:{ts}"))
            .await
    );
    router.stop().await;
    writer.stop().await;
}

/// A name table with one valid point and a 15 MiB name nobody uses: the
/// gateway refuses the batch whole (BATCH_ERROR_INVALID_NAME_TABLE), and a
/// writer sent it directly refuses it too, so the name is never copied on
/// or interned (before, each such batch leaked 15 MiB in the writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_or_unused_names_are_refused_before_they_cost_memory() {
    let redis = RedisServer::start().unwrap();
    let broker = Running::broker(seed_config_for(&redis.url()), &Service::DEFAULT).await;
    let ts = now() - 30;
    let huge = "x".repeat(15 << 20);
    let batch = |seq| MetricBatch {
        seq,
        metric_names: vec!["cpu".into(), huge.clone()],
        points: vec![point("leak", ts, 1)],
    };
    let before = storage_layout::seed::interned_bytes();
    let acks = send_batches(&broker.endpoint(), (1..=10).map(batch).collect()).await;
    assert_eq!(acks.len(), 10);
    for a in &acks {
        assert_eq!(a.batch_error, BatchError::InvalidNameTable as i32, "{a:?}");
        assert!(
            a.batch_error_message.contains("metric_names[1]")
                && a.batch_error_message.contains("max_metric_name_len"),
            "{}",
            a.batch_error_message
        );
        assert_eq!(a.accepted, 0);
    }
    // Straight to the writer's gRPC service (bypassing the gateway), on
    // the internal port other processes call.
    let mut w = WriterServiceClient::connect(broker.internal_endpoint())
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    for _ in 0..10 {
        let e = w
            .write(WriteRequest {
                batch: Some(batch(1)),
                ring_epoch: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("max_metric_name_len"),
            "{}",
            e.message()
        );
    }
    let after = storage_layout::seed::interned_bytes();
    println!("interned name bytes: {before} before, {after} after 20 batches with a 15 MiB name");
    assert!(
        after - before < 1 << 20,
        "the 15 MiB name was interned: {before} -> {after}"
    );
    // A point with a name it uses is stored.
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 11,
            metric_names: vec!["cpu".into()],
            points: vec![point("leak", ts, 1)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1, "{:?}", acks[0]);
    broker.stop().await;
}

/// A browser page cannot drive the DLQ: a state-changing request with an
/// Origin header (a cross-site form, or DNS rebinding to loopback) is
/// refused with 403 before any handler runs; the same request from a tool
/// (no Origin) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_replay_or_discard_the_dlq() {
    let redis = RedisServer::start().unwrap();
    let broker = Running::broker(seed_config_for(&redis.url()), &Service::DEFAULT).await;
    let from_page = post_bytes(
        broker.http,
        "/api/dlq/replay",
        "Origin: http://attacker.example\r\n",
        b"",
    )
    .await;
    assert_eq!(from_page.status, 403, "{}", from_page.text());
    assert!(from_page.text().contains("Origin"), "{}", from_page.text());
    let from_tool = post_bytes(broker.http, "/api/dlq/replay", "", b"").await;
    assert_eq!(from_tool.status, 200, "{}", from_tool.text());
    // Reads stay open to pages (the dashboard) and to tools alike.
    let (status, _) = http(broker.http, "GET", "/api/dlq", "").await;
    assert_eq!(status, 200);
    broker.stop().await;
}

/// Calls of `command` Redis has served (INFO commandstats).
async fn calls(r: &Reader, command: &str) -> u64 {
    let info = r.cmd(&["INFO", "commandstats"]).await;
    let text = match info {
        fred::types::Value::String(s) => s.to_string(),
        fred::types::Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("INFO answered {other:?}"),
    };
    let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// Query-api bounds what it reads and answers before reading it: a query
/// past `query.max_points_scanned` is refused after counting (ZCOUNT), with
/// no snapshot read; a range query naming more than `query.max_metrics`
/// metrics is refused; the host list comes in pages of `query.max_series`
/// and label values and series past it are cut with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_bounds_what_it_reads_before_reading_it() {
    let redis = RedisServer::start().unwrap();
    let mut config = seed_config_for(&redis.url());
    config.query.max_points_scanned = 100;
    config.query.max_series = 10;
    config.query.max_hosts = 100;
    config.query.hosts_cache_ttl = std::time::Duration::from_secs(600);
    let broker = Running::broker(config, &Service::DEFAULT).await;
    let ts = now() - 60;
    // 30 hosts, 5 snapshots each: 150 snapshots.
    let batches = (0..5)
        .map(|k| MetricBatch {
            seq: k as u64 + 1,
            metric_names: metric_names(2),
            points: (0..30)
                .map(|h| point(&format!("qb-{h:02}"), ts + k * 10, 2))
                .collect(),
        })
        .collect();
    for a in send_batches(&broker.endpoint(), batches).await {
        assert_eq!(a.accepted, 30, "{a:?}");
    }
    let reader = Reader::connect(&redis.url()).await;
    let q = broker.http;
    // The host list with its series names, which selectors match against,
    // is read once here (its hosts' newest snapshots too), and kept.
    let (status, _) = http(q, "GET", "/api/query/hosts?metrics=true", "").await;
    assert_eq!(status, 200);

    // Scanned: 150 snapshots > 100, refused before any is read.
    let (hgetall, hmget, zrange) = (
        calls(&reader, "hgetall").await,
        calls(&reader, "hmget").await,
        calls(&reader, "zrangebyscore").await,
    );
    let zcount = calls(&reader, "zcount").await;
    let range = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=10",
        enc("sum(m00)"),
        ts,
        ts + 40
    );
    let (status, body) = http(q, "GET", &range, "").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("query.max_points_scanned (100)"),
        "{body}"
    );
    assert!(calls(&reader, "zcount").await > zcount, "counted first");
    let read = (
        calls(&reader, "hgetall").await - hgetall,
        calls(&reader, "hmget").await - hmget,
        calls(&reader, "zrangebyscore").await - zrange,
    );
    println!("reads by the refused query (HGETALL, HMGET, ZRANGEBYSCORE): {read:?}");
    assert_eq!(read, (0, 0, 0), "snapshots were read: {read:?}");
    // Within the bound (20 hosts x 5): answered.
    let ok = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=10",
        enc("sum(m00{host=~\"qb-0.*|qb-1.*\"})"),
        ts,
        ts + 40
    );
    let (status, body) = http(q, "GET", &ok, "").await;
    assert_eq!(status, 200, "{body}");

    // Metrics named by one range query.
    let many: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let (status, body) = http(
        q,
        "GET",
        &format!(
            "/api/query/range?host=qb-00&start={ts}&end={}&metrics={}",
            ts + 40,
            many.join(",")
        ),
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("query.max_metrics (256)"),
        "{body}"
    );

    // Host list pages of at most query.max_series.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, body) = http(q, "GET", &format!("/api/query/hosts?after={after}"), "").await;
        assert_eq!(status, 200, "{body}");
        let page = body["hosts"].as_array().unwrap();
        assert!(page.len() <= 10, "{} hosts in a page", page.len());
        seen.extend(page.iter().map(|h| h["id"].as_str().unwrap().to_string()));
        match body["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    let mut want: Vec<String> = (0..30).map(|h| format!("qb-{h:02}")).collect();
    want.sort();
    assert_eq!(seen, want);
    let (status, body) = http(q, "GET", "/api/query/hosts?limit=11", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("query.max_series (10)"), "{body}");

    // Label values and series: cut at query.max_series, with a warning.
    let (status, body) = http(q, "GET", "/api/v1/label/host/values", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 10, "{body}");
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("query.max_series is 10"),
        "{body}"
    );
    let (status, body) = http(
        q,
        "GET",
        &format!("/api/v1/series?match[]={}&limit=5", enc("m01")),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 5, "{body}");
    assert_eq!(
        body["warnings"][0], "results truncated due to limit",
        "{body}"
    );
    broker.stop().await;
}

/// A Join cannot take over a live member: the same node_id from another
/// process instance (a second process, or a stale one) is refused while
/// the member's lease is renewed, through a follower too; that instance's
/// heartbeats are not counted. Once the lease runs out, the new instance
/// joins (a restarted process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_member_cannot_be_taken_over_by_another_instance() {
    use broker_proto::v1::{Member, MemberRole, MemberState};
    use broker_tests::cluster::CtlCluster;
    use std::time::{Duration, Instant};
    let cluster = CtlCluster::start(3, Duration::from_millis(300)).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = cluster.ids().into_iter().find(|&i| i != leader).unwrap();
    let member = |instance: &str, port: u16| Member {
        id: "w-dup".into(),
        roles: vec![MemberRole::StorageWriter as i32],
        addr: format!("http://127.0.0.1:{port}"),
        weight: 1,
        instance: instance.into(),
        ..Default::default()
    };
    let client = cluster.client();
    client.join(member("aaaa", 1001)).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let beating = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let r = client.heartbeat("w-dup", "aaaa").await.unwrap();
                assert!(r.known);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let addr_of = |s: &broker_proto::v1::ClusterState| {
        let m = s.members.iter().find(|m| m.id == "w-dup").unwrap();
        (m.addr.clone(), m.state)
    };
    // Through a follower (no retries): forwarded, refused, nothing changed.
    let e = cluster
        .client_of(follower)
        .join(member("bbbb", 1002))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("alive as another process instance (at http://127.0.0.1:1001"),
        "{e}"
    );
    // The instance proves the live process: no answer hands it out (the
    // refusal above, Members, Join's state, Watch), so an attacker's Join
    // carries what it could read, an empty instance, and is refused too.
    // Before, the refusal and Members printed it, and a Join with the
    // copied instance and a foreign address replaced the live member's.
    assert!(!e.to_string().contains("aaaa"), "{e}");
    let state = client.members().await.unwrap();
    assert_eq!(addr_of(&state).0, "http://127.0.0.1:1001");
    let copied = state
        .members
        .iter()
        .find(|m| m.id == "w-dup")
        .unwrap()
        .instance
        .clone();
    assert_eq!(copied, "", "Members handed out the instance");
    let mut watch = client.watch(0).await.unwrap();
    let watched = watch.message().await.unwrap().unwrap();
    assert!(watched.members.iter().all(|m| m.instance.is_empty()));
    let e = cluster
        .client_of(follower)
        .join(member(&copied, 6666))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("alive as another process instance"),
        "{e}"
    );
    assert!(!client.heartbeat("w-dup", "").await.unwrap().known);
    let state = client.members().await.unwrap();
    assert_eq!(addr_of(&state).0, "http://127.0.0.1:1001");
    // The other instance's heartbeat does not renew the lease.
    assert!(!client.heartbeat("w-dup", "bbbb").await.unwrap().known);
    // The same instance joins again freely (a process re-joining).
    client.join(member("aaaa", 1001)).await.unwrap();

    // The first process stops: its lease runs out, the member goes
    // offline, and the new instance joins with its address.
    stop.cancel();
    beating.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = client.members().await.unwrap();
        if addr_of(&state).1 == MemberState::Offline as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease never ran out: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let joined = client.join(member("bbbb", 1002)).await.unwrap();
    let state = joined.state.unwrap();
    assert_eq!(
        addr_of(&state),
        (
            "http://127.0.0.1:1002".to_string(),
            MemberState::Online as i32
        )
    );
    assert!(!client.heartbeat("w-dup", "aaaa").await.unwrap().known);
    assert!(client.heartbeat("w-dup", "bbbb").await.unwrap().known);
}

/// The services other broker processes call (Route, Write, raft and
/// membership) are not served on the agents' port. With `internal_listen`
/// they are served there only; without it, beside a gateway, they are
/// reached in-process only; a cluster member without it refuses to start,
/// naming the key; with it, the member advertises the internal address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_services_are_not_served_on_the_agents_port() {
    use broker_common::Listeners;
    use std::time::Duration;
    let redis = RedisServer::start().unwrap();
    let reader = Reader::connect(&redis.url()).await;
    let ts = now() - 30;
    let good = |seq: u64, host: &str| MetricBatch {
        seq,
        metric_names: metric_names(2),
        points: vec![point(host, ts, 2)],
    };
    let write = |endpoint: String, b: MetricBatch| async move {
        WriterServiceClient::connect(endpoint)
            .await
            .unwrap()
            .write(WriteRequest {
                batch: Some(b),
                ring_epoch: 0,
            })
            .await
            .map(|r| r.into_inner())
    };
    let route = |endpoint: String, b: MetricBatch| async move {
        RouterServiceClient::connect(endpoint)
            .await
            .unwrap()
            .route(RouteRequest { batch: Some(b) })
            .await
            .map(|r| r.into_inner())
    };
    let stored = |host: &str| format!("monitor:metrics:{{{host}}}:{ts}");

    // 1. With an internal listener.
    let broker = Running::broker(seed_config_for(&redis.url()), &Service::DEFAULT).await;
    let (agents, internal) = (broker.endpoint(), broker.internal_endpoint());
    assert_ne!(agents, internal);
    broker_common::serve::wait_serving(&agents, Duration::from_secs(10))
        .await
        .unwrap();
    let e = write(agents.clone(), good(1, "on-agents-w"))
        .await
        .expect_err("Write on the agents' port");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    let e = route(agents.clone(), good(1, "on-agents-r"))
        .await
        .expect_err("Route on the agents' port");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    let w = write(internal.clone(), good(1, "internal-w"))
        .await
        .unwrap();
    assert!(w.failed.is_empty(), "{w:?}");
    let r = route(internal.clone(), good(1, "internal-r"))
        .await
        .unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    let e = try_send_batches(&internal, vec![good(1, "agent-on-internal")])
        .await
        .expect_err("the agents' stream on the internal port");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    let acks = send_batches(&agents, vec![good(1, "agent")]).await;
    assert_eq!(acks[0].accepted, 1, "{acks:?}");
    for host in ["internal-w", "internal-r", "agent"] {
        assert!(reader.exists(&stored(host)).await, "{host} stored");
    }
    for host in ["on-agents-w", "on-agents-r", "agent-on-internal"] {
        assert!(!reader.exists(&stored(host)).await, "{host} not stored");
    }
    broker.stop().await;

    // 2. Without one, beside the gateway: in-process only.
    let broker = Running::start_on(
        Listeners::loopback().await.unwrap(),
        seed_config_for(&redis.url()),
        |c, l, s| broker::run(c, &Service::DEFAULT, l, s),
    );
    assert_eq!(broker.internal, None);
    broker_common::serve::wait_serving(&broker.endpoint(), Duration::from_secs(10))
        .await
        .unwrap();
    let e = write(broker.endpoint(), good(2, "on-agents-w"))
        .await
        .expect_err("Write with no internal listener");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    let acks = send_batches(&broker.endpoint(), vec![good(2, "agent-2")]).await;
    assert_eq!(acks[0].accepted, 1, "{acks:?}");
    assert!(reader.exists(&stored("agent-2")).await);
    broker.stop().await;

    // 3. A cluster member must have one, and advertises it.
    let mut ctl = broker_tests::cluster::CtlCluster::start(1, Duration::from_secs(600)).await;
    ctl.wait_leader(Duration::from_secs(10)).await;
    let mut c = seed_config_for(&redis.url());
    c.node_id = "member-1".into();
    c.cluster.endpoints = ctl.endpoints();
    let e = broker::run(
        c.clone(),
        &Service::DEFAULT,
        Listeners::loopback().await.unwrap(),
        std::future::pending(),
    )
    .await
    .expect_err("a member without internal_listen");
    let e = format!("{e:#}");
    assert!(
        e.contains("internal_listen is not set") && e.contains("shard-router, storage-writer"),
        "{e}"
    );
    let member = Running::broker(c, &Service::DEFAULT).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = ctl.client().members().await.unwrap();
        if let Some(m) = state.members.iter().find(|m| m.id == "member-1") {
            assert_eq!(m.addr, member.internal_endpoint(), "{m:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "member-1 never joined"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acks = send_batches(&member.endpoint(), vec![good(3, "member-agent")]).await;
    assert_eq!(acks[0].accepted, 1, "{acks:?}");
    member.stop().await;
    ctl.stop_all().await;
}

/// Each listening port holds at most `max_connections` at once: one more
/// is closed as soon as it is accepted and counted, the admin port (its
/// own bound) still answers, and a freed place is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_port_are_bounded() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    let redis = RedisServer::start().unwrap();
    let mut c = seed_config_for(&redis.url());
    c.max_connections = 3;
    let broker = Running::broker(c, &Service::DEFAULT).await;
    let open = r#"broker_connections_open{listener="grpc"}"#;
    let refused = r#"broker_connections_refused_total{listener="grpc"}"#;
    let wait_open = |want: f64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = metric(broker.http, open).await;
            if n == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} is {n}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    broker_common::serve::wait_serving(&broker.endpoint(), Duration::from_secs(10))
        .await
        .unwrap();
    wait_open(0.0).await;
    // Three HTTP/2 connections with nothing in flight take every place
    // (each sends the preface: a silent one is closed after 10 s).
    let mut held = Vec::new();
    for _ in 0..3 {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::net::TcpStream::connect(broker.grpc).await.unwrap();
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        held.push(c);
    }
    wait_open(3.0).await;
    // The fourth is closed at once (EOF or reset), not left hanging.
    let mut fourth = tokio::net::TcpStream::connect(broker.grpc).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("the fourth connection is closed, not kept waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let e = try_send_batches(&broker.endpoint(), vec![MetricBatch::default()])
        .await
        .expect_err("an agent finds no place");
    // The connection closed under the call: a code agents retry.
    assert!(
        matches!(
            e.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        ),
        "{e:?}"
    );
    // The fourth and the agent's (which may have tried more than once).
    assert!(metric(broker.http, refused).await >= 2.0);
    assert_eq!(metric(broker.http, open).await, 3.0);
    // The admin port has its own bound.
    let (status, _) = http(broker.http, "GET", "/health", "").await;
    assert_eq!(status, 200);
    // A freed place is taken again.
    held.pop();
    wait_open(2.0).await;
    let ts = now() - 30;
    let acks = send_batches(
        &broker.endpoint(),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points: vec![point("after-free", ts, 2)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1, "{acks:?}");
    drop(held);
    broker.stop().await;
}

/// The in-process clients call the handler the gRPC adapters call: a
/// writer or router in the caller's process refuses what a remote one
/// refuses, and the caller's timeout applies to it (before, the local
/// writer skipped the checks and the local router had no timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_clients_run_what_grpc_runs() {
    use shard_router::RouterClient;
    use shard_router::service::RouteHandler;
    use std::sync::Arc;
    use std::time::Duration;
    use storage_writer::WriterClient;
    use storage_writer::service::WriteHandler;
    let redis = RedisServer::start().unwrap();
    let config = seed_config_for(&redis.url());
    let mut registry = prometheus_client::registry::Registry::default();
    let readiness = broker_common::Readiness::default();
    let w = storage_writer::WriterComponent::start(&config, &mut registry, &readiness).unwrap();
    let writer = WriterClient::local(Arc::new(
        WriteHandler::new(w.writer.clone()).with_limits(&config),
    ));
    let router = shard_router::build(
        &config,
        Some(writer.clone()),
        None,
        &Default::default(),
        &mut registry,
    )
    .unwrap();
    let router = RouterClient::local(Arc::new(RouteHandler::new(router).with_limits(&config)));
    let ts = now() - 30;
    let batch = |p| MetricBatch {
        seq: 1,
        metric_names: metric_names(2),
        points: vec![p],
    };
    let t = Duration::from_secs(5);
    for (what, p) in bad_points(ts) {
        let e = writer
            .write(Arc::new(batch(p.clone())), 1, t)
            .await
            .expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(what), "{what}: {}", e.message());
        let e = router.route(batch(p), t).await.expect_err(what);
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert!(e.message().contains(what), "{what}: {}", e.message());
    }
    let reader = Reader::connect(&redis.url()).await;
    let keys: Vec<String> = reader.cmd(&["KEYS", "*"]).await.convert().unwrap();
    assert!(keys.is_empty(), "nothing reached Redis: {keys:?}");
    // The caller's timeout bounds a local route as it bounds a remote one.
    let e = router
        .route(batch(point("late", ts, 2)), Duration::ZERO)
        .await
        .expect_err("no time to route");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    let failed = router.route(batch(point("fine", ts, 2)), t).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        reader
            .exists(&format!("monitor:metrics:{{fine}}:{ts}"))
            .await
    );
    w.shutdown().await;
}
