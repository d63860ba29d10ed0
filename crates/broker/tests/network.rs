//! Faults of a real network: `broker run` processes in network namespaces
//! this test makes (`common::netns`), reaching each other by name over a
//! bridge, and the network changed under them with `ip`.
//!
//! Times are printed as FIGURE lines, not asserted.

mod common;

use common::BROKER;
use common::netns::Lan;
use std::path::Path;
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["ctl-1", "ctl-2", "ctl-3"];
const GRPC: u16 = 9096;
const HTTP: u16 = 9097;

/// The config of cluster-ctl node `id` (as docker-compose.yml runs it:
/// peers and cluster-ctl endpoints by name).
fn ctl_config(dir: &Path, id: usize) -> String {
    let peers: Vec<String> = (1..=NAMES.len())
        .map(|j| format!("    - {{id: {j}, addr: 'http://ctl-{j}:{GRPC}'}}"))
        .collect();
    let endpoints: Vec<String> = (1..=NAMES.len())
        .map(|j| format!("'http://ctl-{j}:{GRPC}'"))
        .collect();
    let yaml = format!(
        "node_id: ctl-{id}\n\
         grpc_listen: 0.0.0.0:{GRPC}\n\
         http_listen: 0.0.0.0:{HTTP}\n\
         shutdown_grace: 5s\n\
         cluster:\n  advertise_addr: http://ctl-{id}:{GRPC}\n  endpoints: [{}]\n\
         cluster_ctl:\n  id: {id}\n  data_dir: {}\n  peers:\n{}\n",
        endpoints.join(", "),
        dir.join(format!("raft-{id}")).display(),
        peers.join("\n"),
    );
    let path = dir.join(format!("ctl-{id}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

/// One node's raft view from its `/api/cluster`: (leader, term, role).
fn view(lan: &Lan, name: &str) -> Option<(u64, u64, String)> {
    let body = lan.get(name, HTTP, "/api/cluster")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((
        v["leader"].as_u64()?,
        v["term"].as_u64()?,
        v["role"].as_str()?.to_string(),
    ))
}

/// Waits until every node names the same leader in the same term, later
/// than `after_term`; returns (leader, term). Panics after `within` with
/// every view and the end of every node's log.
async fn agreed(lan: &Lan, dir: &Path, after_term: u64, within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<_> = NAMES.iter().map(|n| view(lan, n)).collect();
        if let Some(Some((leader, term, _))) = views.first()
            && *leader != 0
            && *term > after_term
            && views
                .iter()
                .all(|v| v.as_ref().is_some_and(|(l, t, _)| l == leader && t == term))
        {
            return (*leader, *term);
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            for n in NAMES {
                let text =
                    std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                logs.push_str(&format!("--- {n}\n"));
                for l in tail.iter().rev() {
                    logs.push_str(l);
                    logs.push('\n');
                }
            }
            panic!(
                "the nodes did not agree on a leader in a term after {after_term} within {within:?}: {views:?}\n{logs}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader moves to a new address behind its name while running (a
/// pod restarted elsewhere keeps its DNS name; here the address is swapped
/// under the running process, so every connection to and from the old one
/// goes silent at once). The others elect a new leader, and the moved node
/// must rejoin it: it learns the new term only from the others, over
/// connections made after the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_ctl_node_at_a_new_address_behind_its_name_rejoins() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut lan = Lan::new(&NAMES);
    for (i, name) in NAMES.iter().enumerate() {
        let cfg = ctl_config(d, i + 1);
        let log = d.join(format!("{name}.log"));
        lan.spawn(
            name,
            BROKER,
            &["run", "--service", "cluster-ctl", "--config", &cfg],
            &[],
            &log,
        );
    }
    let (leader, term) = agreed(&lan, d, 0, Duration::from_secs(60)).await;
    let name = format!("ctl-{leader}");
    let old_addr = lan.addr(&name);
    lan.move_node(&name, 10 + leader as u8);
    let moved = Instant::now();
    let (new_leader, new_term) = agreed(&lan, d, term, Duration::from_secs(60)).await;
    println!(
        "FIGURE {name} (the leader, term {term}) moved from {old_addr} to {}: all three follow ctl-{new_leader} in term {new_term} {:.1}s later",
        lan.addr(&name),
        moved.elapsed().as_secs_f64()
    );
}

/// The network tests share the machine's two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The docker-compose.yml cluster's services, by the same names and ports,
/// one namespace each: (name, service, gRPC port, HTTP port).
const CLUSTER: [(&str, &str, u16, u16); 10] = [
    ("cluster-ctl-1", "cluster-ctl", 9096, 9097),
    ("cluster-ctl-2", "cluster-ctl", 9096, 9097),
    ("cluster-ctl-3", "cluster-ctl", 9096, 9097),
    ("storage-writer-1", "storage-writer", 9095, 9195),
    ("storage-writer-2", "storage-writer", 9095, 9195),
    ("storage-writer-3", "storage-writer", 9095, 9195),
    ("shard-router-1", "shard-router", 9094, 9194),
    ("shard-router-2", "shard-router", 9094, 9194),
    ("ingest-gateway-1", "ingest-gateway", 9093, 9193),
    ("ingest-gateway-2", "ingest-gateway", 9093, 9193),
];
/// What docker-compose.yml runs them with.
const COMPOSE_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/compose/broker.yaml"
);
const HOSTS: usize = 200;
const METRICS: usize = 8;

/// Seconds of each fault (`NEMESIS_FAULT_SECS`, default 15).
fn fault_secs() -> u64 {
    std::env::var("NEMESIS_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

/// Starts Redis and the compose cluster in `lan`.
fn start_cluster(lan: &mut Lan, d: &Path) {
    let redis_dir = d.join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    lan.spawn(
        "redis",
        "redis-server",
        &[
            "--bind",
            "0.0.0.0",
            "--port",
            "6379",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &redis_dir.display().to_string(),
        ],
        &[],
        &d.join("redis.log"),
    );
    let mut ctl = 0;
    let mut writer = 0;
    for (name, service, grpc, http) in CLUSTER {
        let mut env = vec![
            ("BROKER_NODE_ID".to_string(), name.to_string()),
            ("BROKER_GRPC_LISTEN".into(), format!("0.0.0.0:{grpc}")),
            ("BROKER_HTTP_LISTEN".into(), format!("0.0.0.0:{http}")),
            (
                "BROKER_CLUSTER__ADVERTISE_ADDR".into(),
                format!("http://{name}:{grpc}"),
            ),
            ("BROKER_TELEMETRY__LOG_FORMAT".into(), "text".into()),
        ];
        match service {
            "cluster-ctl" => {
                ctl += 1;
                env.push(("BROKER_CLUSTER_CTL__ID".into(), ctl.to_string()));
                env.push((
                    "BROKER_CLUSTER_CTL__DATA_DIR".into(),
                    d.join(format!("raft-{ctl}")).display().to_string(),
                ));
            }
            "storage-writer" => {
                writer += 1;
                env.push((
                    "BROKER_WRITER__SPOOL_DIR".into(),
                    d.join(format!("spool-{writer}")).display().to_string(),
                ));
            }
            _ => {}
        }
        lan.spawn(
            name,
            BROKER,
            &["run", "--service", service, "--config", COMPOSE_CONFIG],
            &env,
            &d.join(format!("{name}.log")),
        );
    }
}

/// Data-path members (writers, routers, gateways) not online in `s`.
fn not_online(s: &broker_proto::v1::ClusterState) -> Vec<String> {
    CLUSTER
        .iter()
        .filter(|(_, service, _, _)| *service != "cluster-ctl")
        .filter(|(name, ..)| {
            common::member_state(s, name) != Some(broker_proto::v1::MemberState::Online)
        })
        .map(|(name, ..)| name.to_string())
        .collect()
}

/// What one fault did to the load.
struct Phase {
    name: String,
    acked_before: u64,
    acked_during: u64,
    stall: Duration,
    recovery: Option<Duration>,
}

/// The compose cluster on a network of namespaces under a steady load
/// from the test's own namespace, through three network faults one after
/// the other:
/// - every link (each node's sends) delayed 200 ms ± 50 ms with 5 % loss;
/// - a storage-writer cut off the network (from Redis, the routers and
///   cluster-ctl at once);
/// - the cluster-ctl leader cut off.
///
/// Checked: every acked point is in Redis with its values; the cut-off
/// writer is taken out of the ring and comes back online after the heal;
/// while the leader is cut off no data-path member is marked offline (a
/// leader change must not look like their death). Per fault the acked
/// points, the longest ack stall and the time from heal to acks flowing
/// again are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_path_loses_nothing_under_latency_loss_and_partitions() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fault = Duration::from_secs(fault_secs());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut names = vec!["redis"];
    names.extend(CLUSTER.iter().map(|(n, ..)| *n));
    let mut lan = Lan::new(&names);
    lan.attach_host();
    start_cluster(&mut lan, d);
    let ctl_endpoints: Vec<String> = (1..=3)
        .map(|i| format!("http://{}:9096", lan.addr(&format!("cluster-ctl-{i}"))))
        .collect();
    let client = cluster_client::ClusterClient::new(&ctl_endpoints, &Default::default()).unwrap();
    let (took, _) = common::until(
        &client,
        "every data-path member online",
        Duration::from_secs(90),
        |s| not_online(s).is_empty(),
    )
    .await;
    println!(
        "FIGURE nemesis: the cluster is up {:.1}s after start",
        took.as_secs_f64()
    );
    let gateways: Vec<String> = (1..=2)
        .map(|i| format!("http://{}:9093", lan.addr(&format!("ingest-gateway-{i}"))))
        .collect();
    let (stop_load, stopped) = tokio::sync::oneshot::channel::<()>();
    let (load, timeline) = common::steady_load_until(
        gateways,
        HOSTS,
        METRICS,
        Duration::from_secs(600),
        async move {
            let _ = stopped.await;
        },
    );
    timeline.acked_more(6_000, Duration::from_secs(60)).await;
    let all: Vec<String> = lan.names();
    let mut phases = Vec::new();

    // 1. Latency and loss on every link.
    let phase = |name: &str, before: u64, start: Instant, healed: Instant| Phase {
        name: name.to_string(),
        acked_before: before,
        acked_during: timeline.acked_at(healed) - timeline.acked_at(start),
        stall: timeline.longest_stall_between(start, healed + Duration::from_secs(5)),
        recovery: timeline.recovery_after(healed),
    };
    let before = timeline.acked();
    let start = Instant::now();
    let mut delayed = false;
    for n in &all {
        delayed |= lan.degrade(n, Some(("200ms", "50ms", "5")));
    }
    tokio::time::sleep(fault).await;
    for n in &all {
        lan.degrade(n, None);
    }
    let healed = Instant::now();
    timeline.acked_more(2_000, Duration::from_secs(60)).await;
    phases.push(phase(
        if delayed {
            "200ms±50ms, 5% loss, every link"
        } else {
            "5% loss, every link (no sch_netem: no delay)"
        },
        before,
        start,
        healed,
    ));

    // 2. A writer cut off.
    let before = timeline.acked();
    let start = Instant::now();
    lan.set_link("storage-writer-2", false);
    let (out, _) = common::until(
        &client,
        "storage-writer-2 offline",
        fault + Duration::from_secs(30),
        |s| {
            common::member_state(s, "storage-writer-2")
                == Some(broker_proto::v1::MemberState::Offline)
        },
    )
    .await;
    println!(
        "FIGURE nemesis: storage-writer-2 cut off: offline after {:.1}s",
        out.as_secs_f64()
    );
    tokio::time::sleep(fault.saturating_sub(out)).await;
    lan.set_link("storage-writer-2", true);
    let healed = Instant::now();
    let (back, _) = common::until(
        &client,
        "storage-writer-2 online again",
        Duration::from_secs(30),
        |s| not_online(s).is_empty(),
    )
    .await;
    println!(
        "FIGURE nemesis: storage-writer-2 reconnected: online after {:.1}s",
        back.as_secs_f64()
    );
    timeline.acked_more(2_000, Duration::from_secs(60)).await;
    phases.push(phase("storage-writer-2 cut off", before, start, healed));

    // 3. The cluster-ctl leader cut off: the majority's members all stay online.
    let leader = client.status().await.unwrap().leader_id;
    let leader_name = format!("cluster-ctl-{leader}");
    let majority: Vec<String> = (1..=3u64)
        .filter(|&i| i != leader)
        .map(|i| format!("http://{}:9096", lan.addr(&format!("cluster-ctl-{i}"))))
        .collect();
    let majority = cluster_client::ClusterClient::new(&majority, &Default::default()).unwrap();
    let before = timeline.acked();
    let start = Instant::now();
    lan.set_link(&leader_name, false);
    let mut marked = Vec::new();
    while start.elapsed() < fault {
        if let Ok(s) = majority.members().await {
            for m in not_online(&s) {
                if !marked.contains(&m) {
                    marked.push(m);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let new_leader = majority.status().await.map(|s| s.leader_id).unwrap_or(0);
    lan.set_link(&leader_name, true);
    let healed = Instant::now();
    timeline.acked_more(2_000, Duration::from_secs(60)).await;
    phases.push(phase(
        &format!("{leader_name} (leader) cut off"),
        before,
        start,
        healed,
    ));
    println!(
        "FIGURE nemesis: {leader_name} (the leader) cut off: cluster-ctl-{new_leader} leads the majority; members it marked offline: {marked:?}"
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop_load.send(());
    let report = load.await.unwrap().unwrap();
    let redis_url = format!("redis://{}:6379", lan.addr("redis"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let outcome = loop {
        let o = common::verify_layout("chunked", &redis_url, &report, HOSTS, METRICS).await;
        if (o.missing == 0 && o.unindexed == 0) || Instant::now() > deadline {
            break o;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for p in &phases {
        println!(
            "FIGURE nemesis: {:<36} acked before {:>7}, during {:>6}, longest ack stall {:.1}s, acks flowing {} after the heal",
            p.name,
            p.acked_before,
            p.acked_during,
            p.stall.as_secs_f64(),
            p.recovery
                .map_or("never".into(), |d| format!("{:.1}s", d.as_secs_f64()))
        );
    }
    println!(
        "FIGURE nemesis: sent {} acked {} found in redis {} missing {} resent {} rejected {} failed {}",
        outcome.sent,
        outcome.acked,
        outcome.found,
        outcome.missing,
        report.resent,
        report.rejected,
        report.failed
    );
    assert_eq!(outcome.missing, 0, "acked points missing from redis");
    assert_eq!(
        outcome.unindexed, 0,
        "acked hosts missing from the host index"
    );
    assert!(
        marked.is_empty(),
        "the leader change marked healthy members offline: {marked:?}"
    );
    for p in &phases {
        assert!(p.recovery.is_some(), "{}: acks never resumed", p.name);
    }
}
