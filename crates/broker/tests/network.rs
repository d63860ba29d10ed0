//! Faults of a real network: `broker run` processes in network namespaces
//! this test makes (`common::netns`), reaching each other by name over a
//! bridge, and the network changed under them with `ip`.
//!
//! Times are printed as FIGURE lines, not asserted.

mod common;

use broker_proto::v1::MemberState;
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
         security: {{insecure: true}}\n\
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
    let redis_server = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    lan.spawn(
        "redis",
        &redis_server,
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
    // Redis answers before the cluster starts, or the test stops here
    // saying why (writers would spool everything and the check fail late).
    let addr: std::net::SocketAddr = format!("{}:6379", lan.addr("redis")).parse().unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{redis_server} in the redis namespace does not answer at {addr}: {}",
            std::fs::read_to_string(d.join("redis.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
            // Plain on the test's own namespaces, on purpose.
            ("BROKER_SECURITY__INSECURE".into(), "true".into()),
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
        .filter(|(name, ..)| common::member_state(s, name) != Some(MemberState::Online))
        .map(|(name, ..)| name.to_string())
        .collect()
}

/// What an observer saw of the control plane during the run, sampled
/// every 200 ms from the test's namespace: each cluster-ctl node's raft
/// status and each router's ring epoch.
#[derive(Default)]
struct Seen {
    /// Term → the nodes that said they led it (one at most, or raft is
    /// broken).
    leaders: std::collections::BTreeMap<u64, std::collections::BTreeSet<u64>>,
    /// Observer (node) → the last ring epoch it reported.
    epochs: std::collections::BTreeMap<String, u64>,
    /// Epochs that went backwards: "observer: from → to".
    backwards: Vec<String>,
    samples: u64,
}

impl Seen {
    fn epoch(&mut self, observer: &str, epoch: u64) {
        if let Some(last) = self.epochs.insert(observer.to_string(), epoch)
            && epoch < last
        {
            self.backwards
                .push(format!("{observer}: epoch {last} -> {epoch}"));
        }
    }
}

/// GETs `path` at `addr` within a second (a node cut off drops the SYN).
async fn probe(addr: &str, port: u16, path: &str) -> Option<String> {
    let addr: std::net::SocketAddr = format!("{addr}:{port}").parse().unwrap();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(1),
        broker_tests::try_http(addr, "GET", path, ""),
    )
    .await
    .ok()??;
    (status == 200).then(|| match body {
        serde_json::Value::String(s) => s,
        v => v.to_string(),
    })
}

/// Samples the control plane into `seen` until `stop` fires.
async fn observe(
    ctl: Vec<String>,
    routers: Vec<(String, String)>,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) {
    while !stop.is_cancelled() {
        let ctl_views =
            futures::future::join_all(ctl.iter().map(|a| probe(a, HTTP, "/api/cluster")));
        let router_views =
            futures::future::join_all(routers.iter().map(|(_, a)| probe(a, 9194, "/metrics")));
        let (ctl_views, router_views) = tokio::join!(ctl_views, router_views);
        {
            let mut seen = seen.lock().unwrap();
            seen.samples += 1;
            for body in ctl_views.into_iter().flatten() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                    continue;
                };
                let (id, term) = (
                    v["id"].as_u64().unwrap_or(0),
                    v["term"].as_u64().unwrap_or(0),
                );
                if v["role"] == "leader" {
                    seen.leaders.entry(term).or_default().insert(id);
                }
                if let Some(e) = v["epoch"].as_u64() {
                    seen.epoch(&format!("cluster-ctl-{id}"), e);
                }
            }
            for ((name, _), text) in routers.iter().zip(router_views) {
                if let Some(e) =
                    text.and_then(|t| broker_tests::sample(&t, "broker_router_ring_epoch"))
                {
                    seen.epoch(name, e as u64);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Points the writers stored or spooled so far, summed over their
/// `/metrics` (all three must answer: waits up to 30 s).
async fn writes(lan: &Lan) -> f64 {
    let start = Instant::now();
    loop {
        let mut total = Some(0.0);
        for i in 1..=3 {
            let text = probe(&lan.addr(&format!("storage-writer-{i}")), 9195, "/metrics").await;
            total = total.zip(text).map(|(t, text)| {
                t + broker_tests::sum(&text, "broker_writer_points_total")
                    + broker_tests::sum(&text, "broker_writer_spooled_points_total")
            });
        }
        match total {
            Some(t) => return t,
            None if start.elapsed() > Duration::from_secs(30) => {
                panic!("a storage-writer's /metrics did not answer for 30 s")
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until every cluster-ctl node and router reports the same ring
/// epoch; how long that took, or `None` after `within`.
async fn converged(lan: &Lan, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        let mut epochs = Vec::new();
        for i in 1..=3 {
            let body = probe(&lan.addr(&format!("cluster-ctl-{i}")), HTTP, "/api/cluster").await;
            epochs.push(body.and_then(|b| {
                serde_json::from_str::<serde_json::Value>(&b).ok()?["epoch"].as_u64()
            }));
        }
        for i in 1..=2 {
            let text = probe(&lan.addr(&format!("shard-router-{i}")), 9194, "/metrics").await;
            epochs.push(
                text.and_then(|t| broker_tests::sample(&t, "broker_router_ring_epoch"))
                    .map(|e| e as u64),
            );
        }
        if epochs[0].is_some() && epochs.iter().all(|e| *e == epochs[0]) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// One network fault of the nemesis.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Every node's sends: 5 % loss, and 200 ms ± 50 ms where the kernel
    /// has `sch_netem`.
    BadLinks,
    /// A storage-writer (1-3) off the network: from Redis, the routers and
    /// cluster-ctl at once.
    WriterCut(usize),
    /// A storage-writer (1-3) that cannot reach Redis (it spools).
    WriterRedisCut(usize),
    /// A storage-writer's answers to the routers lost, their requests
    /// still arriving: duplicates allowed, loss not.
    WriterAnswersLost(usize),
    /// An ingest-gateway (1-2) that cannot reach the routers.
    GatewayRoutersCut(usize),
    /// The cluster-ctl leader off the network.
    LeaderCut,
    /// A cluster-ctl follower off the network.
    FollowerCut,
    /// The cluster split in two: a cluster-ctl follower, storage-writer-1,
    /// shard-router-1 and ingest-gateway-1 on one side, the rest on the
    /// other, both still reaching Redis and the load.
    Split,
    /// A storage-writer (1-3) cut off and reconnected every 2 s.
    Flapping(usize),
}

impl Fault {
    /// A fault by name as `NEMESIS_FAULTS` lists them: `bad-links`,
    /// `writer-cut:N`, `writer-redis-cut:N`, `writer-answers-lost:N`,
    /// `gateway-routers-cut:N`, `leader-cut`, `follower-cut`, `split`,
    /// `flapping:N`.
    fn parse(s: &str) -> Self {
        let (name, n) = s.trim().split_once(':').unwrap_or((s.trim(), "1"));
        let n: usize = n
            .parse()
            .unwrap_or_else(|_| panic!("NEMESIS_FAULTS: {s:?}: not a number after ':'"));
        match name {
            "bad-links" => Fault::BadLinks,
            "writer-cut" => Fault::WriterCut(n),
            "writer-redis-cut" => Fault::WriterRedisCut(n),
            "writer-answers-lost" => Fault::WriterAnswersLost(n),
            "gateway-routers-cut" => Fault::GatewayRoutersCut(n),
            "leader-cut" => Fault::LeaderCut,
            "follower-cut" => Fault::FollowerCut,
            "split" => Fault::Split,
            "flapping" => Fault::Flapping(n),
            _ => panic!("NEMESIS_FAULTS: unknown fault {s:?}"),
        }
    }

    /// A fault drawn from `rng` (the long run's schedule).
    fn random(rng: &mut impl rand::Rng) -> Self {
        match rng.random_range(0..9) {
            0 => Fault::BadLinks,
            1 => Fault::WriterCut(rng.random_range(1..=3)),
            2 => Fault::WriterRedisCut(rng.random_range(1..=3)),
            3 => Fault::WriterAnswersLost(rng.random_range(1..=3)),
            4 => Fault::GatewayRoutersCut(rng.random_range(1..=2)),
            5 => Fault::LeaderCut,
            6 => Fault::FollowerCut,
            7 => Fault::Split,
            _ => Fault::Flapping(rng.random_range(1..=3)),
        }
    }
}

/// What one fault did to the load.
struct Phase {
    name: String,
    /// The fault's kind, for the summary of a long run.
    kind: String,
    /// Points the writers stored or spooled from the fault's start to acks
    /// flowing after its heal, and the points acked over the same time:
    /// their ratio is the duplicates' share (1.00: none).
    written: f64,
    acked_over: u64,
    acked_during: u64,
    stall: Duration,
    recovery: Option<Duration>,
    /// From the heal to every cluster-ctl node and router on one epoch.
    converged: Option<Duration>,
    /// From the heal to every member online (after `converged`).
    online: Duration,
    /// The points the load offered during the fault.
    offered: u64,
    /// The majority side must keep taking points during this fault.
    majority_serves: bool,
}

/// The compose cluster on a network of namespaces, Redis beside it.
struct Nemesis {
    lan: Lan,
    client: cluster_client::ClusterClient,
    /// Data-path members a leader change marked offline (must stay empty).
    marked: Vec<String>,
    /// Cluster-ctl nodes cut off that did not say they are not ready
    /// for want of a leader (must stay empty).
    silent: Vec<String>,
}

impl Nemesis {
    /// Waits (up to 15 s) for `name`, cut off, to answer `/ready` with 503
    /// naming the missing raft leader; remembers it in `silent` if it
    /// does not.
    async fn says_not_ready(&mut self, name: &str) {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < Duration::from_secs(15) {
            last = tokio::task::block_in_place(|| self.lan.fetch(name, HTTP, "/ready"));
            if let Some((503, body)) = &last
                && body.contains("no raft leader")
            {
                println!(
                    "FIGURE nemesis: {name} cut off says after {:.1}s: {}",
                    start.elapsed().as_secs_f64(),
                    body.trim()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.silent.push(format!("{name}: {last:?}"));
    }

    fn ctl_endpoint(&self, i: u64) -> String {
        format!("http://{}:9096", self.lan.addr(&format!("cluster-ctl-{i}")))
    }

    /// Applies `fault` for `length`, heals it; returns its name.
    async fn run(&mut self, fault: Fault, length: Duration) -> String {
        let lan = &self.lan;
        match fault {
            Fault::BadLinks => {
                let mut delayed = false;
                for n in lan.names() {
                    delayed |= lan.degrade(&n, Some(("200ms", "50ms", "5")));
                }
                tokio::time::sleep(length).await;
                for n in lan.names() {
                    lan.degrade(&n, None);
                }
                if delayed {
                    "200ms±50ms, 5% loss, every link".into()
                } else {
                    "5% loss, every link (no sch_netem: no delay)".into()
                }
            }
            Fault::WriterCut(i) => {
                let name = format!("storage-writer-{i}");
                lan.set_link(&name, false);
                let (out, _) = common::until(
                    &self.client,
                    &format!("{name} offline"),
                    length + Duration::from_secs(30),
                    |s| common::member_state(s, &name) == Some(MemberState::Offline),
                )
                .await;
                tokio::time::sleep(length.saturating_sub(out)).await;
                lan.set_link(&name, true);
                let (back, _) = common::until(
                    &self.client,
                    &format!("{name} online again"),
                    Duration::from_secs(30),
                    |s| not_online(s).is_empty(),
                )
                .await;
                println!(
                    "FIGURE nemesis: {name} cut off: offline after {:.1}s; reconnected: online after {:.1}s",
                    out.as_secs_f64(),
                    back.as_secs_f64()
                );
                format!("{name} cut off")
            }
            Fault::WriterRedisCut(_)
            | Fault::WriterAnswersLost(_)
            | Fault::GatewayRoutersCut(_) => {
                const ROUTERS: &[&str] = &["shard-router-1", "shard-router-2"];
                let (name, to, what) = match fault {
                    Fault::WriterRedisCut(i) => (
                        format!("storage-writer-{i}"),
                        &["redis"][..],
                        " cut from redis",
                    ),
                    Fault::WriterAnswersLost(i) => (
                        format!("storage-writer-{i}"),
                        ROUTERS,
                        "'s answers to the routers lost",
                    ),
                    Fault::GatewayRoutersCut(i) => (
                        format!("ingest-gateway-{i}"),
                        ROUTERS,
                        " cut from the routers",
                    ),
                    _ => unreachable!("matched above"),
                };
                lan.block(&name, to);
                tokio::time::sleep(length).await;
                lan.unblock(&name);
                format!("{name}{what}")
            }
            Fault::LeaderCut | Fault::FollowerCut => {
                let leader = self.client.status().await.map(|s| s.leader_id).unwrap_or(1);
                let cut = match fault {
                    Fault::LeaderCut => leader,
                    _ => (1..=3).find(|&i| i != leader).unwrap(),
                };
                let name = format!("cluster-ctl-{cut}");
                let majority: Vec<String> = (1..=3u64)
                    .filter(|&i| i != cut)
                    .map(|i| self.ctl_endpoint(i))
                    .collect();
                let majority =
                    cluster_client::ClusterClient::new(&majority, &Default::default()).unwrap();
                self.lan.set_link(&name, false);
                let start = Instant::now();
                self.says_not_ready(&name).await;
                while start.elapsed() < length {
                    if let Ok(s) = majority.members().await {
                        for m in not_online(&s) {
                            if !self.marked.contains(&m) {
                                self.marked.push(m);
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                self.lan.set_link(&name, true);
                if matches!(fault, Fault::LeaderCut) {
                    format!("{name} (the leader) cut off")
                } else {
                    format!("{name} (a follower) cut off")
                }
            }
            Fault::Split => {
                let leader = self.client.status().await.map(|s| s.leader_id).unwrap_or(1);
                let ctl = format!("cluster-ctl-{}", (1..=3).find(|&i| i != leader).unwrap());
                let minority = [
                    ctl.as_str(),
                    "storage-writer-1",
                    "shard-router-1",
                    "ingest-gateway-1",
                ];
                let majority: Vec<String> = CLUSTER
                    .iter()
                    .map(|(n, ..)| n.to_string())
                    .filter(|n| !minority.contains(&n.as_str()))
                    .collect();
                let majority: Vec<&str> = majority.iter().map(String::as_str).collect();
                for n in minority {
                    self.lan.block(n, &majority);
                }
                for n in &majority {
                    self.lan.block(n, &minority);
                }
                let start = Instant::now();
                self.says_not_ready(&ctl).await;
                tokio::time::sleep(length.saturating_sub(start.elapsed())).await;
                for n in CLUSTER.iter().map(|(n, ..)| *n) {
                    self.lan.unblock(n);
                }
                format!("split: {ctl}, writer-1, router-1, gateway-1 | the rest")
            }
            Fault::Flapping(i) => {
                let name = format!("storage-writer-{i}");
                let start = Instant::now();
                let mut up = true;
                while start.elapsed() < length {
                    up = !up;
                    lan.set_link(&name, up);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                lan.set_link(&name, true);
                format!("{name} flapping every 2s")
            }
        }
    }
}

/// The compose cluster on a network of namespaces under a steady load
/// from the test's own namespace, through a schedule of network faults
/// one after the other, each healed before the next: by default each
/// kind once for `NEMESIS_FAULT_SECS` (15 s); with `NEMESIS_MINUTES` set,
/// faults drawn at random from `NEMESIS_SEED` (printed; replays the same
/// schedule) for that long.
///
/// Checked (the nemesis's checker): every acked point is in Redis with
/// its values; no two raft leaders in one term and no ring epoch going
/// backwards at any cluster-ctl node or router (sampled every 200 ms all
/// run long); a cluster-ctl node cut off with a minority answers `/ready`
/// 503 naming the missing leader; a cut-off writer is taken out of the
/// ring and every member is online again after each heal; while a
/// cluster-ctl node is cut off, no data-path member is marked offline (a
/// leader change must not look like their death); after every heal,
/// acks flow again and cluster-ctl and the routers reach one ring epoch
/// within 30 s. Per fault the acked points, the longest ack stall and the
/// times from heal to acks flowing and to one epoch are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_path_loses_nothing_under_latency_loss_and_partitions() {
    use rand::SeedableRng;
    let _one = ONE_AT_A_TIME.lock().await;
    let length = Duration::from_secs(fault_secs());
    let minutes: Option<u64> = std::env::var("NEMESIS_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok());
    let seed: u64 = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let dir = tempfile::Builder::new()
        .prefix("nemesis-")
        .tempdir()
        .unwrap();
    // NEMESIS_KEEP=1 keeps the processes' logs and data for a post-mortem.
    let kept = std::env::var_os("NEMESIS_KEEP").map(|_| dir.path().to_path_buf());
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
    let redis_url = format!("redis://{}:6379", lan.addr("redis"));
    let ctl_addrs: Vec<String> = (1..=3)
        .map(|i| lan.addr(&format!("cluster-ctl-{i}")))
        .collect();
    let router_addrs: Vec<(String, String)> = (1..=2)
        .map(|i| {
            let name = format!("shard-router-{i}");
            let addr = lan.addr(&name);
            (name, addr)
        })
        .collect();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let stop_observing = tokio_util::sync::CancellationToken::new();
    let observer = tokio::spawn(observe(
        ctl_addrs,
        router_addrs,
        seen.clone(),
        stop_observing.clone(),
    ));
    let mut nemesis = Nemesis {
        lan,
        client,
        marked: Vec::new(),
        silent: Vec::new(),
    };
    let bound = Duration::from_secs(60 * (minutes.unwrap_or(5) + 5));
    let (stop_load, stopped) = tokio::sync::oneshot::channel::<()>();
    let (load, timeline) = common::steady_load_until(gateways, HOSTS, METRICS, bound, async move {
        let _ = stopped.await;
    });
    timeline.acked_more(6_000, Duration::from_secs(60)).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let fixed = match std::env::var("NEMESIS_FAULTS") {
        Ok(list) => list.split(',').map(Fault::parse).collect(),
        Err(_) => vec![
            Fault::BadLinks,
            Fault::WriterCut(2),
            Fault::LeaderCut,
            Fault::WriterRedisCut(1),
            Fault::WriterAnswersLost(3),
            Fault::GatewayRoutersCut(1),
            Fault::FollowerCut,
            Fault::Split,
            Fault::Flapping(2),
        ],
    };
    let until = minutes.map(|m| Instant::now() + Duration::from_secs(60 * m));
    if let Some(m) = minutes {
        println!("FIGURE nemesis: a random schedule for {m} minutes, NEMESIS_SEED={seed}");
    }
    let mut phases = Vec::new();
    let mut k = 0;
    loop {
        let fault = match until {
            Some(t) if Instant::now() >= t => break,
            Some(_) => Fault::random(&mut rng),
            None if k == fixed.len() => break,
            None => fixed[k],
        };
        k += 1;
        let length = match until {
            Some(_) => Duration::from_secs(rand::Rng::random_range(&mut rng, 5..=30)),
            None => length,
        };
        let start = Instant::now();
        let writes_before = writes(&nemesis.lan).await;
        let name = nemesis.run(fault, length).await;
        let healed = Instant::now();
        let converged = converged(&nemesis.lan, Duration::from_secs(30)).await;
        // Once every node is on one epoch, no stale view can pass for the
        // healed one.
        common::until(
            &nemesis.client,
            "every member online after the heal",
            Duration::from_secs(30),
            |s| not_online(s).is_empty(),
        )
        .await;
        let online = healed.elapsed();
        // Acks flow again before the next fault.
        timeline.acked_more(2_000, Duration::from_secs(90)).await;
        let written = writes(&nemesis.lan).await - writes_before;
        phases.push(Phase {
            kind: format!("{fault:?}")
                .split('(')
                .next()
                .unwrap_or_default()
                .to_string(),
            written,
            acked_over: timeline.acked_at(Instant::now()) - timeline.acked_at(start),
            converged,
            online,
            offered: (common::LOAD_RATE * (healed - start).as_secs_f64()) as u64,
            majority_serves: matches!(fault, Fault::Split),
            acked_during: timeline.acked_at(healed) - timeline.acked_at(start),
            stall: timeline.longest_stall_between(start, healed + Duration::from_secs(5)),
            recovery: timeline.recovery_after(healed),
            name: format!("{name} ({}s)", length.as_secs()),
        });
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop_load.send(());
    stop_observing.cancel();
    observer.await.unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let report = load.await.unwrap().unwrap();
    if let Some(k) = &kept {
        println!("NEMESIS_KEEP: logs and data kept in {}", k.display());
        std::mem::forget(dir);
    }
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
            "FIGURE nemesis: {:<52} acked during {:>6}, writes per acked point {:.2}, longest ack stall {:.1}s, after the heal: acks flowing {}, one ring epoch everywhere {}, every member online {:.1}s",
            p.name,
            p.acked_during,
            p.written / p.acked_over.max(1) as f64,
            p.stall.as_secs_f64(),
            secs(p.recovery),
            secs(p.converged),
            p.online.as_secs_f64(),
        );
    }
    // Per kind: the long run's table.
    let mut kinds: std::collections::BTreeMap<&str, Vec<&Phase>> = Default::default();
    for p in &phases {
        kinds.entry(p.kind.as_str()).or_default().push(p);
    }
    for (kind, ps) in &kinds {
        let max = |f: &dyn Fn(&Phase) -> Option<Duration>| {
            ps.iter()
                .map(|p| f(p))
                .max()
                .flatten()
                .map_or("never".into(), |d| format!("{:.1}s", d.as_secs_f64()))
        };
        println!(
            "FIGURE nemesis kind {kind:<18} | {:>3} | {:>8} | {:.3} | {} | {} | {} | {}",
            ps.len(),
            ps.iter().map(|p| p.acked_during).sum::<u64>(),
            ps.iter().map(|p| p.written).sum::<f64>()
                / ps.iter().map(|p| p.acked_over).sum::<u64>().max(1) as f64,
            max(&|p| Some(p.stall)),
            max(&|p| p.recovery),
            max(&|p| p.converged),
            max(&|p| Some(p.online)),
        );
    }
    println!(
        "FIGURE nemesis: {} faults, sent {} acked {} found in redis {} missing {} resent {} rejected {} failed {}; members marked offline while a cluster-ctl node was cut off: {:?}",
        phases.len(),
        outcome.sent,
        outcome.acked,
        outcome.found,
        outcome.missing,
        report.resent,
        report.rejected,
        report.failed,
        nemesis.marked
    );
    let two_leaders: Vec<_> = seen.leaders.iter().filter(|(_, l)| l.len() > 1).collect();
    println!(
        "FIGURE nemesis: {} samples of the control plane: {} terms with a leader seen, terms with two leaders {:?}, epochs gone backwards {:?}",
        seen.samples,
        seen.leaders.len(),
        two_leaders,
        seen.backwards
    );
    assert_eq!(outcome.missing, 0, "acked points missing from redis");
    assert!(
        two_leaders.is_empty(),
        "two raft leaders in one term: {two_leaders:?}"
    );
    assert!(
        seen.backwards.is_empty(),
        "a ring epoch went backwards: {:?}",
        seen.backwards
    );
    assert!(
        nemesis.silent.is_empty(),
        "cluster-ctl nodes cut off that did not report not ready for want of a leader: {:?}",
        nemesis.silent
    );
    assert_eq!(
        outcome.unindexed, 0,
        "acked hosts missing from the host index"
    );
    assert!(
        nemesis.marked.is_empty(),
        "a cluster-ctl node cut off marked healthy members offline: {:?}",
        nemesis.marked
    );
    for p in &phases {
        assert!(p.recovery.is_some(), "{}: acks never resumed", p.name);
        // Of two load connections, one is on each side of a split: the
        // majority's half of the load keeps being acked, less the time
        // (a few seconds) members take to see the new ring.
        assert!(
            !p.majority_serves || p.acked_during >= p.offered / 4,
            "{}: the majority side stopped taking points: {} acked of {} offered",
            p.name,
            p.acked_during,
            p.offered
        );
        assert!(
            p.converged.is_some(),
            "{}: cluster-ctl and the routers not on one ring epoch 30s after the heal",
            p.name
        );
    }
}

/// "1.2s", or "never".
fn secs(d: Option<Duration>) -> String {
    d.map_or("never".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}
