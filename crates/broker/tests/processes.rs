//! The services as separate processes (`broker run --service X --config
//! F.yaml`), configured by YAML files, over real gRPC and a real Redis.

mod common;

use broker_proto::v1::{MemberState, MetricBatch};
use broker_tests::*;
use common::BROKER;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_with_yaml_configs() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A writer, a router listing it, a gateway listing the router: each
    // `broker run --service X --config <its YAML file>`.
    let mut sb = common::sandbox()
        .writers(1)
        .routers(1)
        .gateways(1)
        .build(&redis.url(), dir.path());
    sb.start_all().await;
    let gateway = sb.gateway_endpoints()[0].clone();
    write_and_verify(&gateway, &redis.url(), "chunked", 10).await;

    // Acked batches survive a SIGTERM of every process: send, then stop in
    // data-path order (each must exit 0).
    let ts = now() - 1;
    let acks = send_batches(
        &gateway,
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points: vec![point("last", ts, 2)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1);
    sb.stop_all().await;
    assert!(stored(&redis.url(), "last", ts).await.is_some());
}

/// The same sandbox with its members as tasks of this process (what
/// `broker up` does for its cluster-ctl nodes): three raft nodes, a
/// writer, a router and a gateway that learn the ring from them, a batch
/// stored, and every member stopped cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_runs_in_this_process_too() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let program = common::Program::in_process(|config, service, listeners, stop| async move {
        broker::run(config, &[service], listeners, stop.cancelled_owned()).await
    });
    let mut sb = common::Sandbox::builder(program)
        .ctl(3)
        .writers(1)
        .routers(1)
        .gateways(1)
        .build(&redis.url(), dir.path());
    sb.start_all().await;
    let client = cluster_client::ClusterClient::new(&sb.endpoints, &Default::default()).unwrap();
    common::until(
        &client,
        "every member online",
        Duration::from_secs(30),
        |s| {
            ["writer-0", "router", "gateway"]
                .iter()
                .all(|id| common::member_state(s, id) == Some(MemberState::Online))
        },
    )
    .await;
    write_and_verify(&sb.gateway_endpoints()[0], &redis.url(), "chunked", 10).await;
    sb.stop_all().await;
}

#[test]
fn invalid_config_exits_64_naming_the_keys() {
    let out = Command::new(BROKER)
        .args([
            "run",
            "--set",
            "router.vnodes=0",
            "--set",
            "writer.redis_url=mysql://x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("router.vnodes") && err.contains("writer.redis_url"),
        "{err}"
    );

    // Plain mode off loopback is refused before anything listens (as
    // Redis's protected mode does), naming what is missing and the way
    // to ask for it on purpose; before, the process served every role to
    // anyone who reached it.
    let out = Command::new(BROKER)
        .args(["run", "--set", "grpc_listen=0.0.0.0:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("grpc_listen 0.0.0.0:0 is not on loopback")
            && err.contains("security.tls.cert")
            && err.contains("security.insecure: true"),
        "{err}"
    );
    let out = Command::new(BROKER)
        .args([
            "run",
            "--set",
            "grpc_listen=0.0.0.0:0",
            "--set",
            "security.insecure=true",
            "--set",
            "router.vnodes=0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        !err.contains("not on loopback"),
        "insecure on purpose: {err}"
    );

    let out = Command::new(BROKER)
        .args(["run", "--service", "router"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shard-router"), "lists valid services: {err}");
}
