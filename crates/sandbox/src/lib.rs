//! The broker's topologies on loopback: the one builder of the
//! real-process test suites (faults, membership, host-manager, processes),
//! of `broker-bench` and of `broker up`'s cluster-ctl nodes, and the shape
//! `docker-compose.yml` runs ([`COMPOSE`], checked by the deploy test).
//!
//! A [`Sandbox`] is `ctl(n).writers(n).routers(n).gateways(n)
//! .host_managers(n)` members, each a [`Service`] with its config (a typed
//! `BrokerConfig` written as YAML), spool and raft log in one directory, on
//! free loopback ports (or the ones given). A [`Program`] runs each member:
//! as a process (`broker run`, or a binary embedding `broker::run` the same
//! way) or as a task of this process. Only loopback: nothing here listens
//! on or dials another address.
//!
//! # Layout
//! - [`Program`]: what runs one member.
//! - [`Service`]: one member that can be started, killed (`kill -9`),
//!   signalled (`STOP`/`CONT`, processes only) and terminated, with the
//!   same config.
//! - [`Sandbox`], [`SandboxBuilder`]: a whole topology.
//! - [`Topology`], [`COMPOSE`]: counts per service; what compose runs.
//! - [`overlay`]: a YAML section over a member's config, as an operator
//!   writes it.

#![forbid(unsafe_code)]

use broker_common::config::{ConfigSource, RaftPeer, WriterEndpoint};
use broker_common::{BrokerConfig, Listeners, Service as Role};
use futures::future::BoxFuture;
use serde_yaml_ng::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a service may take to serve gRPC after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What runs one service: a process (`exe args... --service <name>
/// --config <file> extra...`), or a task in this process that runs
/// `broker::run` for it (see [`Program::in_process`]).
#[derive(Clone)]
pub struct Program(Runner);

#[derive(Clone)]
enum Runner {
    Process {
        exe: PathBuf,
        args: Vec<String>,
        extra: Vec<String>,
    },
    InProcess(Launch),
}

/// Runs one service in this process until the token is cancelled:
/// `broker::run` (passed in, so this crate does not depend on the broker).
pub type Launch = Arc<
    dyn Fn(
            BrokerConfig,
            Role,
            Listeners,
            CancellationToken,
        ) -> BoxFuture<'static, anyhow::Result<()>>
        + Send
        + Sync,
>;

impl Program {
    /// `exe args...` before the service and its config, e.g. the `broker`
    /// binary and `["run"]`.
    pub fn new(exe: impl Into<PathBuf>, args: &[&str]) -> Self {
        Self(Runner::Process {
            exe: exe.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            extra: Vec::new(),
        })
    }

    /// Each service a task of this process, `launch` running it on
    /// listeners bound from its config (the same file a process would
    /// read). Such a service cannot be signalled; a kill is a cancel.
    pub fn in_process<F, Fut>(launch: F) -> Self
    where
        F: Fn(BrokerConfig, Role, Listeners, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self(Runner::InProcess(Arc::new(move |c, r, l, t| {
            Box::pin(launch(c, r, l, t))
        })))
    }

    /// Arguments after the config, for every service (e.g. `--set k=v`);
    /// nothing for an in-process program.
    pub fn with_extra(mut self, more: impl IntoIterator<Item = String>) -> Self {
        if let Runner::Process { extra, .. } = &mut self.0 {
            extra.extend(more);
        }
        self
    }
}

/// How many processes of each service a sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub ctl: usize,
    pub writers: usize,
    pub routers: usize,
    pub gateways: usize,
}

/// What `docker-compose.yml` runs (besides Redis, query-api and the load
/// generator): three cluster-ctl voters, three writers, two routers and two
/// gateways, every service joining the cluster. The deploy test checks the
/// compose file against it.
pub const COMPOSE: Topology = Topology {
    ctl: 3,
    writers: 3,
    routers: 2,
    gateways: 2,
};

/// One member (a process, or a task of this process) that can be killed,
/// stopped and started again with the same configuration.
pub struct Service {
    program: Program,
    name: String,
    service: Role,
    config: PathBuf,
    grpc: u16,
    /// Its admin HTTP port, when known (0 otherwise).
    http: u16,
    running: Option<Running>,
}

/// A started service: its process, or its task and the token that stops it.
enum Running {
    Process(Child),
    Task(JoinHandle<anyhow::Result<()>>, CancellationToken),
}

/// How long a graceful stop may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

impl Service {
    /// `service` run by `program` with
    /// `yaml` as its config, written to `dir/<name>.yaml`; its gRPC port is
    /// `grpc`. Starts nothing.
    pub fn new(
        program: &Program,
        name: &str,
        service: Role,
        dir: &Path,
        yaml: String,
        grpc: u16,
    ) -> Self {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).expect("writing a sandbox config");
        Self {
            program: program.clone(),
            name: name.to_string(),
            service,
            config,
            grpc,
            http: 0,
            running: None,
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

    /// Its gRPC port.
    pub fn grpc_port(&self) -> u16 {
        self.grpc
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the process and waits until it serves gRPC; panics if it
    /// does not (for tests; see [`Service::try_start`]).
    pub async fn start(&mut self) {
        if let Err(e) = self.try_start().await {
            panic!("{e}");
        }
    }

    /// Starts the service. A process is waited for (at most 30 s) until it
    /// serves gRPC; a task serves as soon as it is spawned, its listeners
    /// being bound first.
    pub async fn try_start(&mut self) -> Result<(), String> {
        let (exe, args, extra) = match &self.program.0 {
            Runner::InProcess(launch) => {
                let source = ConfigSource {
                    file: Some(&self.config),
                    ..Default::default()
                };
                let config =
                    BrokerConfig::load(&source).map_err(|e| format!("{}: {e}", self.name))?;
                let listeners = Listeners::from_config(&config)
                    .await
                    .map_err(|e| format!("{}: {e}", self.name))?;
                let stop = CancellationToken::new();
                let task = tokio::spawn(launch(config, self.service, listeners, stop.clone()));
                self.running = Some(Running::Task(task, stop));
                return Ok(());
            }
            Runner::Process { exe, args, extra } => (exe, args, extra),
        };
        let child = Command::new(exe)
            .args(args)
            .args(["--service", self.service.as_str(), "--config"])
            .arg(&self.config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: spawning {}: {e}", self.name, exe.display()))?;
        self.running = Some(Running::Process(child));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready =
                broker_common::serve::wait_serving(&self.endpoint(), Duration::from_secs(1)).await;
            let Err(e) = ready else { return Ok(()) };
            let exited = match &mut self.running {
                Some(Running::Process(c)) => c.try_wait().ok().flatten(),
                _ => None,
            };
            if let Some(status) = exited {
                return Err(format!(
                    "{} exited during start with {status} (its stderr is above)",
                    self.name
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not serve within {START_TIMEOUT:?}: {e}",
                    self.name
                ));
            }
        }
    }

    /// `kill -9`: no chance to drain or flush. In this process, the
    /// service is cancelled and its task aborted without waiting.
    pub fn kill9(&mut self) {
        match self.running.take() {
            Some(Running::Process(mut c)) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Some(Running::Task(task, stop)) => {
                stop.cancel();
                task.abort();
            }
            None => {}
        }
    }

    /// Sends `kill -<sig>` (e.g. `STOP`, `CONT`) to the running process.
    pub fn signal(&self, sig: &str) {
        let Some(Running::Process(c)) = &self.running else {
            panic!(
                "{} is not a running process: it cannot take a signal",
                self.name
            );
        };
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.name);
    }

    /// SIGTERM (or, in this process, the cancel that stands for it) and
    /// wait for a clean exit; panics otherwise (see [`Service::try_stop`]).
    pub async fn terminate(&mut self) {
        if let Err(e) = self.try_stop().await {
            panic!("{e}");
        }
    }

    /// As [`Service::terminate`], returning why the stop was not clean.
    pub async fn try_stop(&mut self) -> Result<(), String> {
        match self.running.take() {
            None => Ok(()),
            Some(Running::Task(task, stop)) => {
                stop.cancel();
                match tokio::time::timeout(STOP_TIMEOUT, task).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(e))) => Err(format!("{} stopped with: {e:#}", self.name)),
                    Ok(Err(e)) => Err(format!("{}: {e}", self.name)),
                    Err(_) => Err(format!(
                        "{} did not stop within {STOP_TIMEOUT:?}",
                        self.name
                    )),
                }
            }
            Some(Running::Process(mut c)) => {
                let ok = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status()
                    .map_err(|e| format!("kill -TERM {}: {e}", self.name))?;
                if !ok.success() {
                    return Err(format!("kill -TERM {} failed", self.name));
                }
                let deadline = Instant::now() + STOP_TIMEOUT;
                loop {
                    if let Some(status) = c.try_wait().map_err(|e| e.to_string())? {
                        return if status.success() {
                            Ok(())
                        } else {
                            Err(format!("{} exited with {status}", self.name))
                        };
                    }
                    if Instant::now() >= deadline {
                        let _ = c.kill();
                        return Err(format!("{} ignored SIGTERM", self.name));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A broker as separate members, one service each (`broker run --service
/// X`, the way docker-compose.yml and the Kubernetes manifests run it), on
/// loopback ports, with configs, spools and raft logs in one directory.
///
/// With cluster-ctl nodes every service joins and learns the others from
/// them (as in compose); without, the routers list the writers and the
/// gateways list the routers (static membership).
pub struct Sandbox {
    pub program: Program,
    pub ctl: Vec<Service>,
    pub writers: Vec<Service>,
    pub routers: Vec<Service>,
    pub gateways: Vec<Service>,
    pub host_managers: Vec<Service>,
    /// cluster-ctl gRPC endpoints (empty: static membership).
    pub endpoints: Vec<String>,
    /// How many writers `start_all` starts (the others wait for the test).
    writers_started: usize,
}

pub struct SandboxBuilder {
    program: Program,
    ctl: usize,
    writers: usize,
    routers: usize,
    gateways: usize,
    host_managers: usize,
    writers_started: Option<usize>,
    ctl_ports: Vec<(u16, u16)>,
    base: BrokerConfig,
    configure: Vec<Configure>,
}

/// A change to every member's config ([`SandboxBuilder::configure`]).
type Configure = Box<dyn Fn(&mut BrokerConfig)>;

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
    /// host-manager processes, reading `redis_url` (started last).
    pub fn host_managers(mut self, n: usize) -> Self {
        self.host_managers = n;
        self
    }
    /// Start only the first `n` writers with [`Sandbox::start_all`].
    pub fn writers_started(mut self, n: usize) -> Self {
        self.writers_started = Some(n);
        self
    }
    /// Settings for every member (each service reads its own section):
    /// applied once the member's name, ports and cluster endpoints are set
    /// (so `f` can tell members apart by `node_id`), before the keys of its
    /// service (Redis, spool, raft, who it talks to).
    pub fn configure(mut self, f: impl Fn(&mut BrokerConfig) + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Every member's config starts from `config` (e.g. its security or
    /// telemetry) instead of the defaults.
    pub fn base(mut self, config: BrokerConfig) -> Self {
        self.base = config;
        self
    }
    /// The cluster-ctl nodes' (gRPC, HTTP) ports, instead of free ones;
    /// one pair per node.
    pub fn ctl_ports(mut self, ports: &[(u16, u16)]) -> Self {
        self.ctl = ports.len();
        self.ctl_ports = ports.to_vec();
        self
    }

    /// A member's config: the shared settings, then its name and ports,
    /// and the cluster's endpoints when there is a cluster-ctl.
    fn member(&self, name: &str, grpc: u16, http: u16, endpoints: &[String]) -> BrokerConfig {
        let mut c = self.base.clone();
        c.node_id = name.to_string();
        c.grpc_listen = loopback(grpc);
        c.http_listen = loopback(http);
        c.cluster.endpoints = endpoints.to_vec();
        for f in &self.configure {
            f(&mut c);
        }
        c
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
        let ctl_ports: Vec<(u16, u16)> = if self.ctl_ports.is_empty() {
            (0..self.ctl).map(|_| (port(), port())).collect()
        } else {
            self.ctl_ports.clone()
        };
        // With TLS on, every address the members dial is https.
        let scheme = self.base.security.tls.scheme();
        let endpoints: Vec<String> = ctl_ports
            .iter()
            .map(|(p, _)| format!("{scheme}://127.0.0.1:{p}"))
            .collect();
        let peers: Vec<RaftPeer> = endpoints
            .iter()
            .enumerate()
            .map(|(i, addr)| RaftPeer {
                id: i as u64 + 1,
                addr: addr.clone(),
            })
            .collect();
        let service = |name: &str, service: Role, grpc: u16, http: u16, c: &BrokerConfig| {
            let mut s = Service::new(&self.program, name, service, dir, to_yaml(c), grpc);
            s.http = http;
            s
        };
        let ctl = ctl_ports
            .iter()
            .enumerate()
            .map(|(i, &(grpc, http))| {
                let id = i + 1;
                let mut c = self.member(&format!("cluster-ctl-{id}"), grpc, http, &[]);
                c.cluster_ctl.id = id as u64;
                c.cluster_ctl.peers = peers.clone();
                c.cluster_ctl.data_dir = dir.join(format!("raft-{id}")).display().to_string();
                service(&c.node_id.clone(), Role::ClusterCtl, grpc, http, &c)
            })
            .collect();
        let writers: Vec<Service> = (0..self.writers)
            .map(|i| {
                let (grpc, http) = (port(), port());
                let mut c = self.member(&format!("writer-{i}"), grpc, http, &endpoints);
                c.writer.redis_url = redis_url.to_string();
                c.writer.spool_dir = dir.join(format!("spool-{i}")).display().to_string();
                service(&c.node_id.clone(), Role::StorageWriter, grpc, http, &c)
            })
            .collect();
        // Static membership: the routers list the writers, the gateways
        // the routers.
        let writer_list: Vec<WriterEndpoint> = writers
            .iter()
            .filter(|_| endpoints.is_empty())
            .map(|w| WriterEndpoint {
                id: w.name.clone(),
                addr: w.endpoint(),
                weight: 1,
            })
            .collect();
        let routers: Vec<Service> = (0..self.routers)
            .map(|i| {
                let (grpc, http) = (port(), port());
                let mut c = self.member(&name("router", i, self.routers), grpc, http, &endpoints);
                c.router.writers = writer_list.clone();
                service(&c.node_id.clone(), Role::ShardRouter, grpc, http, &c)
            })
            .collect();
        let router_list: Vec<String> = routers
            .iter()
            .filter(|_| endpoints.is_empty())
            .map(Service::endpoint)
            .collect();
        let gateways = (0..self.gateways)
            .map(|i| {
                let (grpc, http) = (port(), port());
                let mut c = self.member(&name("gateway", i, self.gateways), grpc, http, &endpoints);
                c.gateway.routers = router_list.clone();
                service(&c.node_id.clone(), Role::IngestGateway, grpc, http, &c)
            })
            .collect();
        let host_managers = (0..self.host_managers)
            .map(|i| {
                let (grpc, http) = (port(), port());
                let name = name("host-manager", i, self.host_managers);
                let mut c = self.member(&name, grpc, http, &endpoints);
                c.writer.redis_url = redis_url.to_string();
                service(&c.node_id.clone(), Role::HostManager, grpc, http, &c)
            })
            .collect();
        Sandbox {
            program: self.program,
            host_managers,
            ctl,
            writers_started: self.writers_started.unwrap_or(self.writers),
            writers,
            routers,
            gateways,
            endpoints,
        }
    }
}

/// Sets the keys `yaml` names in `c`, as a config file would (e.g. a
/// `host_manager:` section written as an operator writes it). Panics,
/// naming the key, on a key or value the config does not take.
pub fn overlay(c: &mut BrokerConfig, yaml: &str) {
    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Mapping(into), Value::Mapping(from)) => {
                for (k, v) in from {
                    match into.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            into.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let mut doc = serde_yaml_ng::to_value(&*c).expect("a config serializes");
    merge(
        &mut doc,
        serde_yaml_ng::from_str(yaml).expect("overlay is YAML"),
    );
    *c = serde_path_to_error::deserialize(doc).unwrap_or_else(|e| panic!("overlay {yaml:?}: {e}"));
}

/// The defaults, logging errors only (a suite's output stays readable;
/// `RUST_LOG` still wins).
fn quiet() -> BrokerConfig {
    let mut c = BrokerConfig::default();
    c.telemetry.log_level = "error".into();
    c
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The YAML a member's `--config` file holds: the whole config.
fn to_yaml(c: &BrokerConfig) -> String {
    serde_yaml_ng::to_string(c).expect("a config serializes")
}

impl Sandbox {
    /// Services run by `program` (`broker run`, or a binary that embeds
    /// `broker::run` the same way).
    pub fn builder(program: Program) -> SandboxBuilder {
        SandboxBuilder {
            program,
            ctl: 0,
            writers: 0,
            routers: 0,
            gateways: 0,
            host_managers: 0,
            writers_started: None,
            ctl_ports: Vec::new(),
            base: quiet(),
            configure: Vec::new(),
        }
    }

    /// Starts cluster-ctl, the writers (see
    /// [`SandboxBuilder::writers_started`]), the routers, then the
    /// gateways, each once it serves gRPC.
    pub async fn start_all(&mut self) {
        if let Err(e) = self.try_start_all().await {
            panic!("{e}");
        }
    }

    /// As [`Sandbox::start_all`], returning why a service did not start.
    pub async fn try_start_all(&mut self) -> Result<(), String> {
        for s in &mut self.ctl {
            s.try_start().await?;
        }
        for w in self.writers.iter_mut().take(self.writers_started) {
            w.try_start().await?;
        }
        for s in self
            .routers
            .iter_mut()
            .chain(&mut self.gateways)
            .chain(&mut self.host_managers)
        {
            s.try_start().await?;
        }
        Ok(())
    }

    /// SIGTERM in data-path order (gateways first: they ack what they
    /// took), each waited for; cluster-ctl last.
    pub async fn stop_all(&mut self) {
        for s in self
            .host_managers
            .iter_mut()
            .chain(&mut self.gateways)
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

impl Drop for Sandbox {
    /// `kill -9` in data-path order, gateways first.
    fn drop(&mut self) {
        for s in self
            .host_managers
            .iter_mut()
            .chain(&mut self.gateways)
            .chain(&mut self.routers)
            .chain(&mut self.writers)
            .chain(&mut self.ctl)
        {
            s.kill9();
        }
    }
}

/// A free loopback port.
pub fn port() -> u16 {
    redis_process::free_port().unwrap()
}
