//! What the real-process test suites share: a service process that can be
//! killed and restarted, a durable Redis, the acked-point check and the
//! acked-count timeline.

#![allow(dead_code)]

use broker_agent::generator::{SnapshotGenerator, host_id, value};
use broker_agent::load::{LoadConfig, Pacing, run_load_with};
use broker_proto::v1::{ClusterState, MemberState};
use broker_tests::Reader;
use cluster_client::ClusterClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BROKER: &str = env!("CARGO_BIN_EXE_broker");

/// One service process that can be killed, stopped and started again with
/// the same configuration.
pub struct Service {
    name: String,
    service: &'static str,
    config: PathBuf,
    grpc: u16,
    /// Its admin HTTP port, when known (0 otherwise).
    http: u16,
    child: Option<Child>,
}

impl Service {
    pub fn new(name: &str, service: &'static str, dir: &Path, yaml: String, grpc: u16) -> Self {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        Self {
            name: name.to_string(),
            service,
            config,
            grpc,
            http: 0,
            child: None,
        }
    }

    /// The admin HTTP port (`/metrics`, `/ready`).
    pub fn http(&self) -> u16 {
        assert_ne!(
            self.http, 0,
            "{} was made without its admin port",
            self.name
        );
        self.http
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub async fn start(&mut self) {
        let child = Command::new(BROKER)
            .args(["run", "--service", self.service, "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready =
                broker_common::serve::wait_serving(&self.endpoint(), Duration::from_secs(1)).await;
            if ready.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited during start with {status} (its stderr is above)",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: {}",
                self.name,
                ready.unwrap_err()
            );
        }
    }

    /// `kill -9`: no chance to drain or flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Sends `kill -<sig>` (e.g. `STOP`, `CONT`) to the running process.
    pub fn signal(&self, sig: &str) {
        let c = self.child.as_ref().expect("the process runs");
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.name);
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                if let Some(status) = c.try_wait().unwrap() {
                    assert!(status.success(), "{} exited with {status}", self.name);
                    return;
                }
                assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `broker run --service <service>` process named `name` on fresh
/// loopback ports, its config the header (node id, listeners) and `body`;
/// also its admin HTTP port.
pub fn service_on_free_ports(
    dir: &Path,
    name: &str,
    service: &'static str,
    body: &str,
) -> (Service, u16) {
    let (grpc, http) = (port(), port());
    let yaml = format!(
        "node_id: {name}\ngrpc_listen: 127.0.0.1:{grpc}\nhttp_listen: 127.0.0.1:{http}\n{body}"
    );
    let mut s = Service::new(name, service, dir, yaml, grpc);
    s.http = http;
    (s, http)
}

/// A broker as separate processes (`broker run --service X`, the way
/// docker-compose.yml and the Kubernetes manifests run it), on free
/// loopback ports, with configs and spools in one directory: the one
/// topology builder of the real-process suites.
///
/// With cluster-ctl nodes every service joins and learns the others from
/// them (as in compose); without, the routers list the writers and the
/// gateways list the routers (static membership).
pub struct Sandbox {
    pub ctl: Vec<Service>,
    pub writers: Vec<Service>,
    pub routers: Vec<Service>,
    pub gateways: Vec<Service>,
    /// cluster-ctl gRPC endpoints (empty: static membership).
    pub endpoints: Vec<String>,
    /// How many writers `start_all` starts (the others wait for the test).
    writers_started: usize,
}

#[derive(Default)]
pub struct SandboxBuilder {
    ctl: usize,
    writers: usize,
    routers: usize,
    gateways: usize,
    writers_started: Option<usize>,
    writer: String,
    router: String,
    gateway: String,
}

impl SandboxBuilder {
    pub fn ctl(mut self, n: usize) -> Self {
        self.ctl = n;
        self
    }
    pub fn writers(mut self, n: usize) -> Self {
        self.writers = n;
        self
    }
    pub fn routers(mut self, n: usize) -> Self {
        self.routers = n;
        self
    }
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }
    /// Start only the first `n` writers with [`Sandbox::start_all`].
    pub fn writers_started(mut self, n: usize) -> Self {
        self.writers_started = Some(n);
        self
    }
    /// Lines inside every writer's `writer:` section (two-space indent),
    /// beside `redis_url` and `spool_dir`.
    pub fn writer_settings(mut self, yaml: &str) -> Self {
        self.writer = yaml.to_string();
        self
    }
    /// Lines inside every router's `router:` section.
    pub fn router_settings(mut self, yaml: &str) -> Self {
        self.router = yaml.to_string();
        self
    }
    /// Lines inside every gateway's `gateway:` section.
    pub fn gateway_settings(mut self, yaml: &str) -> Self {
        self.gateway = yaml.to_string();
        self
    }

    /// Writes every config under `dir`, writing to `redis_url`; starts
    /// nothing.
    pub fn build(self, redis_url: &str, dir: &Path) -> Sandbox {
        let name = |role: &str, i: usize, n: usize| {
            if n == 1 {
                role.to_string()
            } else {
                format!("{role}-{i}")
            }
        };
        let ctl_ports: Vec<u16> = (0..self.ctl).map(|_| port()).collect();
        let endpoints: Vec<String> = ctl_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let ctl = ctl_ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let http = port();
                let mut s = Service::new(
                    &format!("ctl-{}", i + 1),
                    "cluster-ctl",
                    dir,
                    ctl_yaml(i + 1, *p, http, &ctl_ports, dir),
                    *p,
                );
                s.http = http;
                s
            })
            .collect();
        let cluster = if endpoints.is_empty() {
            String::new()
        } else {
            cluster_section(&endpoints)
        };
        let writers: Vec<Service> = (0..self.writers)
            .map(|i| {
                let body = format!(
                    "{cluster}writer:\n  redis_url: {redis_url}\n  spool_dir: {}\n{}",
                    dir.join(format!("spool-{i}")).display(),
                    self.writer
                );
                service_on_free_ports(dir, &format!("writer-{i}"), "storage-writer", &body).0
            })
            .collect();
        let listed = |services: &[Service], key: &str| {
            if !endpoints.is_empty() {
                return String::new();
            }
            let list: String = services
                .iter()
                .map(|s| format!("    - {{id: {}, addr: '{}'}}\n", s.name, s.endpoint()))
                .collect();
            format!("  {key}:\n{list}")
        };
        let writer_list = listed(&writers, "writers");
        let routers: Vec<Service> = (0..self.routers)
            .map(|i| {
                let body = format!("{cluster}router:\n{}{writer_list}", self.router);
                service_on_free_ports(dir, &name("router", i, self.routers), "shard-router", &body)
                    .0
            })
            .collect();
        let router_list = if endpoints.is_empty() {
            let list: String = routers
                .iter()
                .map(|r| format!("'{}', ", r.endpoint()))
                .collect();
            format!("  routers: [{}]\n", list.trim_end_matches(", "))
        } else {
            String::new()
        };
        let gateways = (0..self.gateways)
            .map(|i| {
                let body = format!("{cluster}gateway:\n{}{router_list}", self.gateway);
                service_on_free_ports(
                    dir,
                    &name("gateway", i, self.gateways),
                    "ingest-gateway",
                    &body,
                )
                .0
            })
            .collect();
        Sandbox {
            ctl,
            writers_started: self.writers_started.unwrap_or(self.writers),
            writers,
            routers,
            gateways,
            endpoints,
        }
    }
}

impl Sandbox {
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// Starts cluster-ctl, the writers (see
    /// [`SandboxBuilder::writers_started`]), the routers, then the
    /// gateways, each once it serves gRPC.
    pub async fn start_all(&mut self) {
        for s in &mut self.ctl {
            s.start().await;
        }
        for w in self.writers.iter_mut().take(self.writers_started) {
            w.start().await;
        }
        for s in self.routers.iter_mut().chain(&mut self.gateways) {
            s.start().await;
        }
    }

    /// SIGTERM in data-path order (gateways first: they ack what they
    /// took), each waited for; cluster-ctl last.
    pub async fn stop_all(&mut self) {
        for s in self
            .gateways
            .iter_mut()
            .chain(&mut self.routers)
            .chain(&mut self.writers)
            .chain(&mut self.ctl)
        {
            s.terminate().await;
        }
    }

    pub fn gateway_endpoints(&self) -> Vec<String> {
        self.gateways.iter().map(Service::endpoint).collect()
    }
}

pub fn port() -> u16 {
    redis_process::free_port().unwrap()
}

/// Acked-point counts over time, from the load's progress callback.
#[derive(Clone, Default)]
pub struct Timeline(pub Arc<Mutex<Vec<(Instant, u64)>>>);

impl Timeline {
    /// The longest time the acked count stood still: from the first
    /// sample at a count to the first sample past it.
    pub fn longest_stall(&self) -> Duration {
        let samples = self.0.lock().unwrap();
        let mut longest = Duration::ZERO;
        let mut since: Option<(Instant, u64)> = None;
        for &(t, acked) in samples.iter() {
            match since {
                Some((t0, a0)) if acked == a0 => longest = longest.max(t.duration_since(t0)),
                _ => since = Some((t, acked)),
            }
        }
        longest
    }

    /// Points acked so far.
    pub fn acked(&self) -> u64 {
        self.0.lock().unwrap().last().map_or(0, |(_, a)| *a)
    }

    /// Waits until `more` points past those acked now are acked: the load
    /// is flowing (again), whatever happened before. What a test waits on
    /// before its next step, instead of sleeping "long enough".
    pub async fn acked_more(&self, more: u64, within: Duration) {
        let target = self.acked() + more;
        let deadline = Instant::now() + within;
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "the load acked {} of the {target} points waited for within {within:?}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Time from `healed` to the first progress sample whose acked count
    /// grew past the count at `healed`.
    pub fn recovery_after(&self, healed: Instant) -> Option<Duration> {
        let samples = self.0.lock().unwrap();
        let base = samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= healed)
            .map_or(0, |(_, a)| *a);
        samples
            .iter()
            .find(|(t, a)| *t > healed && *a > base)
            .map(|(t, _)| t.duration_since(healed))
    }
}

pub struct Outcome {
    pub sent: u64,
    pub acked: u64,
    pub found: u64,
    pub missing: u64,
}

/// Every acked point must be in Redis with every value the agent sent
/// (seed layout).
pub async fn verify(
    redis_url: &str,
    report: &broker_agent::LoadReport,
    hosts: usize,
    metrics: usize,
) -> Outcome {
    verify_layout("seed", redis_url, report, hosts, metrics).await
}

/// Every acked point must be readable through `layout` with every value
/// the agent sent. Each host's acked range is read at once, 16 hosts per
/// read and 8 reads in flight, so a Redis behind Docker's port proxy
/// answers in seconds, not minutes.
pub async fn verify_layout(
    layout: &str,
    redis_url: &str,
    report: &broker_agent::LoadReport,
    hosts: usize,
    metrics: usize,
) -> Outcome {
    use futures::StreamExt;
    use std::collections::BTreeMap;
    use storage_layout::RangeReq;
    let names: Vec<String> = SnapshotGenerator::new(hosts, metrics)
        .metric_names()
        .to_vec();
    let layout = storage_layout::by_name(layout).expect("a layout name");
    let r = Reader::connect(redis_url).await;
    let acked = report.acked_points.as_ref().expect("record_acked was set");
    let mut by_host: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for (h, ts) in acked {
        by_host.entry(*h).or_default().push(*ts);
    }
    let reqs: Vec<(RangeReq, Vec<i64>, usize)> = by_host
        .into_iter()
        .map(|(h, ts)| {
            let h = h as usize;
            let req = RangeReq {
                host: host_id(h),
                start: *ts.iter().min().expect("one point"),
                end: *ts.iter().max().expect("one point"),
            };
            (req, ts, h)
        })
        .collect();
    let reads: Vec<_> = reqs
        .chunks(16)
        .map(|part| {
            let (layout, db, names) = (&layout, r.client(), &names);
            async move {
                let ranges: Vec<RangeReq> = part.iter().map(|(q, _, _)| q.clone()).collect();
                let frames = layout
                    .frames(db, &ranges, &[], None)
                    .await
                    .expect("read the layout");
                let (mut found, mut missing) = (0u64, Vec::new());
                for ((q, ts, h), f) in part.iter().zip(frames) {
                    for &t in ts {
                        let ok = names
                            .iter()
                            .enumerate()
                            .all(|(m, n)| f.value_at(n, t) == value(*h, t, m))
                            && f.names_at(t).len() == metrics;
                        if ok {
                            found += 1;
                        } else {
                            let got: Vec<f64> = names.iter().map(|n| f.value_at(n, t)).collect();
                            missing.push(format!("{} {t}: {got:?}", q.host));
                        }
                    }
                }
                (found, missing)
            }
        })
        .collect();
    let results: Vec<(u64, Vec<String>)> = futures::stream::iter(reads)
        .buffer_unordered(8)
        .collect()
        .await;
    let (mut found, mut missing) = (0, 0);
    for (f, m) in results {
        for example in m.iter().take(3usize.saturating_sub(missing as usize)) {
            eprintln!("not (yet) in redis: {example}");
        }
        found += f;
        missing += m.len() as u64;
    }
    Outcome {
        sent: report.sent,
        acked: acked.len() as u64,
        found,
        missing,
    }
}

/// A steady load of 2,000 points/s from `hosts` hosts over two streams to
/// `endpoints` for `duration`, recording every acked point, with a
/// timeline of acked counts. The task ends after draining (at most 60 s).
pub fn steady_load(
    endpoints: Vec<String>,
    hosts: usize,
    metrics: usize,
    duration: Duration,
) -> (
    tokio::task::JoinHandle<Result<broker_agent::LoadReport, broker_agent::AgentError>>,
    Timeline,
) {
    let timeline = Timeline::default();
    let samples = timeline.clone();
    let load = tokio::spawn(run_load_with(
        LoadConfig {
            endpoints,
            hosts,
            metrics,
            batch_hosts: 50,
            connections: 2,
            window: 4,
            pacing: Pacing::Rate(2_000.0),
            duration: Some(duration),
            max_points: None,
            record_acked: true,
            drain_timeout: Duration::from_secs(60),
            ..LoadConfig::default()
        },
        move |p: &broker_agent::Progress| {
            samples.0.lock().unwrap().push((Instant::now(), p.acked));
        },
        std::future::pending::<()>(),
    ));
    (load, timeline)
}

/// A member's committed state.
pub fn member_state(s: &ClusterState, id: &str) -> Option<MemberState> {
    s.members
        .iter()
        .find(|m| m.id == id)
        .and_then(|m| MemberState::try_from(m.state).ok())
}

/// Polls cluster-ctl until `pred` holds; panics after `timeout` naming
/// `what` and the last state seen.
pub async fn until(
    client: &ClusterClient,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&ClusterState) -> bool,
) -> (Duration, ClusterState) {
    let start = Instant::now();
    loop {
        let last = match client.members().await {
            Ok(s) if pred(&s) => return (start.elapsed(), s),
            Ok(s) => format!("{:?}", members_line(&s)),
            Err(e) => e.to_string(),
        };
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn members_line(s: &ClusterState) -> Vec<String> {
    s.members
        .iter()
        .map(|m| {
            let state = MemberState::try_from(m.state).map_or("?", |s| s.as_str_name());
            format!("{}={state}", m.id)
        })
        .collect()
}

/// The config of cluster-ctl node `id` of a cluster of `peers` (gRPC
/// ports), its raft log under `dir`.
pub fn ctl_yaml(id: usize, grpc: u16, http: u16, peers: &[u16], dir: &Path) -> String {
    let peers: String = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("    - {{id: {}, addr: 'http://127.0.0.1:{p}'}}\n", i + 1))
        .collect();
    format!(
        "node_id: ctl-{id}\ngrpc_listen: 127.0.0.1:{grpc}\nhttp_listen: 127.0.0.1:{http}\ncluster_ctl:\n  id: {id}\n  data_dir: {}\n  peers:\n{peers}",
        dir.join(format!("raft-{id}")).display()
    )
}

/// The `cluster:` section that points a service at cluster-ctl.
pub fn cluster_section(endpoints: &[String]) -> String {
    let list: String = endpoints.iter().map(|e| format!("'{e}', ")).collect();
    format!("cluster:\n  endpoints: [{}]\n", list.trim_end_matches(", "))
}
