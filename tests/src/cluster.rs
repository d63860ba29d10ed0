//! A cluster sandbox: N cluster-ctl raft nodes in this process, each with
//! its own loopback gRPC and HTTP listeners and its own data directory, so
//! a node can be stopped, restarted from disk, partitioned or added.

use broker_common::config::{RaftPeer, SecurityConfig};
use broker_common::security::{ClientSecurity, Security};
use broker_common::{Admin, BrokerConfig, Listeners, Readiness};
use cluster_client::ClusterClient;
use cluster_ctl::{ClusterCtl, Node};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One running cluster-ctl node.
pub struct CtlNode {
    pub node: Node,
    pub http: SocketAddr,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

struct Slot {
    id: u64,
    grpc: SocketAddr,
    data_dir: PathBuf,
    join_existing: bool,
    running: Option<CtlNode>,
}

pub struct CtlCluster {
    slots: Vec<Slot>,
    /// Member heartbeat interval given to every node.
    pub member_heartbeat: Duration,
    /// TLS and tokens of every node (plain by default).
    pub security: SecurityConfig,
}

impl CtlCluster {
    /// Starts `n` voters (raft ids 1..=n) with the default timing (tick
    /// 100 ms, heartbeat 5 ticks, election 10 ticks) and member beats every
    /// `member_heartbeat`.
    pub async fn start(n: usize, member_heartbeat: Duration) -> Self {
        Self::start_secured(n, member_heartbeat, SecurityConfig::default()).await
    }

    /// As [`CtlCluster::start`], every node with the `security` section
    /// (peers are then reached over TLS with the admin token).
    pub async fn start_secured(
        n: usize,
        member_heartbeat: Duration,
        security: SecurityConfig,
    ) -> Self {
        let mut slots = Vec::new();
        let mut listeners = Vec::new();
        for i in 0..n {
            let l = grpc_below_ephemeral().await;
            slots.push(Slot {
                id: i as u64 + 1,
                grpc: l.grpc_addr(),
                data_dir: crate::scratch_dir("broker-raft-"),
                join_existing: false,
                running: None,
            });
            listeners.push(l);
        }
        let mut c = Self {
            slots,
            member_heartbeat,
            security,
        };
        let peers = c.initial_peers();
        for (i, l) in listeners.into_iter().enumerate() {
            let running = c.launch(i, l, &peers);
            c.slots[i].running = Some(running);
        }
        c
    }

    fn initial_peers(&self) -> Vec<RaftPeer> {
        self.slots
            .iter()
            .filter(|s| !s.join_existing)
            .map(|s| RaftPeer {
                id: s.id,
                addr: format!("{}://{}", self.scheme(), s.grpc),
            })
            .collect()
    }

    fn config(&self, i: usize, peers: &[RaftPeer]) -> BrokerConfig {
        let s = &self.slots[i];
        let mut c = BrokerConfig {
            node_id: format!("ctl-{}", s.id),
            ..Default::default()
        };
        c.cluster_ctl.id = s.id;
        c.cluster_ctl.peers = peers.to_vec();
        c.cluster_ctl.join_existing = s.join_existing;
        c.cluster_ctl.data_dir = s.data_dir.display().to_string();
        c.cluster_ctl.member_heartbeat = self.member_heartbeat;
        // Small, so the snapshot and compaction path runs in tests.
        c.cluster_ctl.snapshot_every = 50;
        c.security = self.security.clone();
        c
    }

    fn scheme(&self) -> &'static str {
        if self.security.tls.enabled() {
            "https"
        } else {
            "http"
        }
    }

    /// How the nodes reach each other; clients of the cluster use it too.
    pub fn client_security(&self) -> ClientSecurity {
        Security::from_config(&self.security)
            .expect("security config loads")
            .client
    }

    fn launch(&self, i: usize, listeners: Listeners, peers: &[RaftPeer]) -> CtlNode {
        let config = self.config(i, peers);
        let own = config.advertise_addr_for(listeners.grpc_addr());
        let http = listeners.http_addr();
        let security = Security::from_config(&config.security).expect("security config loads");
        let mut registry = prometheus_client::registry::Registry::default();
        let ctl = ClusterCtl::start(&config, &own, &security.client, &mut registry)
            .expect("cluster-ctl starts");
        let node = ctl.node.clone();
        let readiness = Readiness::default();
        ctl.report_readiness(&readiness);
        let connections = broker_common::connections::Connections::new(
            config.max_connections,
            config.max_connections_per_peer,
            config.max_request_bytes_in_flight,
            &mut registry,
        );
        let admin = Admin::new(registry, readiness).with_routes(ctl.http_routes());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let handle = tokio::spawn(async move {
            let routes = broker_common::serve::GrpcRoutes {
                routes: ctl.grpc_routes(s.clone()),
                names: vec![],
            };
            let r = broker_common::serve::serve(
                routes,
                Default::default(),
                &admin,
                listeners,
                &connections,
                &security,
                s,
            )
            .await;
            ctl.shutdown().await;
            if let Err(e) = r {
                panic!("cluster-ctl server failed: {e}");
            }
        });
        CtlNode {
            node,
            http,
            stop,
            handle,
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.slots.iter().map(|s| s.id).collect()
    }

    fn slot(&self, id: u64) -> usize {
        self.slots
            .iter()
            .position(|s| s.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn endpoint(&self, id: u64) -> String {
        format!("{}://{}", self.scheme(), self.slots[self.slot(id)].grpc)
    }

    /// gRPC endpoints of every node (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| format!("{}://{}", self.scheme(), s.grpc))
            .collect()
    }

    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(&self.endpoints(), &self.client_security()).expect("cluster client")
    }

    /// A client of node `id` only.
    pub fn client_of(&self, id: u64) -> ClusterClient {
        ClusterClient::with_retry(&[self.endpoint(id)], &self.client_security(), backon_none())
            .expect("cluster client")
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.slots[self.slot(id)]
            .running
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is stopped"))
            .node
    }

    pub fn http(&self, id: u64) -> SocketAddr {
        self.slots[self.slot(id)]
            .running
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is stopped"))
            .http
    }

    pub fn running(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|s| s.running.is_some())
            .map(|s| s.id)
            .collect()
    }

    /// The leader the running nodes agree on (every running node names it,
    /// and it is running and leads), waiting up to `timeout`. Every node
    /// knowing it matters: a test that next asks a follower to forward a
    /// change would otherwise race the follower's first heartbeat.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.running();
            let views: Vec<_> = running.iter().map(|&id| self.node(id).view()).collect();
            if let Some(l) = views.iter().find(|v| v.is_leader()) {
                let agreed = views.iter().all(|v| v.leader_id == l.id);
                if agreed {
                    return l.id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops node `id` (its server and raft task); its data stays.
    pub async fn stop(&mut self, id: u64) {
        let i = self.slot(id);
        let n = self.slots[i].running.take().expect("node running");
        n.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), n.handle)
            .await
            .expect("node stops within 10 s")
            .expect("node task did not panic");
    }

    /// Starts node `id` again on the same address and data directory.
    pub async fn restart(&mut self, id: u64) {
        let i = self.slot(id);
        assert!(self.slots[i].running.is_none(), "node {id} is running");
        let addr = self.slots[i].grpc;
        let listeners = bind_again(addr).await;
        let peers = self.initial_peers();
        let running = self.launch(i, listeners, &peers);
        self.slots[i].running = Some(running);
    }

    /// Starts a new empty node that waits to be added (`join_existing`),
    /// and returns its raft id and gRPC endpoint; add it with
    /// `ClusterClient::add_voter`.
    pub async fn spawn_joiner(&mut self) -> (u64, String) {
        let l = grpc_below_ephemeral().await;
        let id = self.slots.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        self.slots.push(Slot {
            id,
            grpc: l.grpc_addr(),
            data_dir: crate::scratch_dir("broker-raft-"),
            join_existing: true,
            running: None,
        });
        let i = self.slots.len() - 1;
        let peers = self.initial_peers();
        let running = self.launch(i, l, &peers);
        self.slots[i].running = Some(running);
        (id, self.endpoint(id))
    }

    /// Drops all traffic between node `id` and every other node.
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self.ids().into_iter().filter(|&o| o != id).collect();
        self.node(id).net_filter().block(others);
        for o in self.running() {
            if o != id {
                self.node(o).net_filter().block([id]);
            }
        }
    }

    /// Lets all traffic through again.
    pub fn heal(&self) {
        for id in self.running() {
            self.node(id).net_filter().heal();
        }
    }

    /// Stops every running node.
    pub async fn stop_all(&mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }

    /// Raft ids -> data directories (to check what is on disk).
    pub fn data_dirs(&self) -> BTreeMap<u64, PathBuf> {
        self.slots
            .iter()
            .map(|s| (s.id, s.data_dir.clone()))
            .collect()
    }
}

/// Listeners whose gRPC port lies below the kernel's ephemeral range (see
/// `redis_process::free_port`), so no outgoing connection can take it
/// while the node is stopped and [`CtlCluster::restart`] can bind it again.
async fn grpc_below_ephemeral() -> Listeners {
    for _ in 0..20 {
        let port = redis_process::free_port().expect("a free port");
        let grpc = SocketAddr::from(([127, 0, 0, 1], port));
        if let Ok(l) = Listeners::bind(grpc, "127.0.0.1:0".parse().expect("addr")).await {
            return l;
        }
    }
    panic!("no free loopback port for a cluster-ctl node");
}

/// One try per call: tests that need to see a refusal (minority side).
fn backon_none() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default().with_max_times(0)
}

/// Binds `addr` again after its previous server stopped (retrying briefly
/// while the old socket is released), with a fresh admin port.
async fn bind_again(addr: SocketAddr) -> Listeners {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Listeners::bind(addr, "127.0.0.1:0".parse().expect("addr")).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
