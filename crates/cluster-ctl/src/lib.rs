//! cluster-ctl: the source of truth for membership and the ring, replicated
//! with Raft (tikv raft-rs) on a durable redb log.
//!
//! Broker services join, heartbeat, drain and leave through
//! `ClusterService`, and follow the committed state through its `Watch`
//! stream; every committed change bumps the ring **epoch**. Members whose
//! lease expires are marked offline by the leader through a committed entry
//! and come back online when they beat again, so the ring heals by itself
//! and has no ghost members.
//!
//! # Layout
//! - [`node`]: the raft task (one owner of the `RawNode`, ready loop,
//!   proposals, conf changes, snapshots) and its [`Node`] handle.
//! - [`storage`]: [`storage::RaftStore`], the raft log, hard state and
//!   snapshots in redb.
//! - [`state`]: the replicated state machine (members, ring settings,
//!   epoch), pure.
//! - [`transport`]: raft messages over tonic, and the partition switch.
//! - [`raft_log`]: raft-rs's slog records to tracing, INFO lowered to DEBUG.
//! - [`leases`]: member leases and the leader's duties.
//! - [`service`]: the `ClusterService` and `RaftService` gRPC servers.
//! - [`http`]: `/api/cluster`, `/api/members`, `/api/ring`.

#![forbid(unsafe_code)]

pub mod http;
pub mod leases;
pub mod node;
pub mod raft_log;
pub mod service;
pub mod state;
pub mod storage;
pub mod transport;

pub use node::{Node, NodeConfig};

use broker_common::{BrokerConfig, Readiness};
use broker_proto::v1::RingSettings;
use leases::Leases;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A running cluster-ctl: the raft node, the leases and the leader's
/// duties. Mount its gRPC services and HTTP routes on a server.
pub struct ClusterCtl {
    pub node: Node,
    pub leases: Arc<Leases>,
    stop: CancellationToken,
    security: broker_common::security::ClientSecurity,
}

impl ClusterCtl {
    /// Starts the raft node of `config.cluster_ctl`, reachable by its
    /// peers at `own_addr` (this process's gRPC address).
    pub fn start(
        config: &BrokerConfig,
        own_addr: &str,
        security: &broker_common::security::ClientSecurity,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        let cc = &config.cluster_ctl;
        let stop = CancellationToken::new();
        let node_config = NodeConfig::from_config(cc, own_addr, security);
        let node = match Node::start(node_config.clone(), stop.clone()) {
            Err(e) if cc.resync_damaged && e.downcast_ref::<node::Damaged>().is_some() => {
                let aside = resync_aside(&node_config.data_dir)?;
                tracing::warn!(
                    error = %e,
                    moved_to = %aside.display(),
                    "cluster_ctl.resync_damaged: the damaged raft state was moved aside; \
                     starting empty and waiting for the leader to send the state"
                );
                Node::start(
                    NodeConfig {
                        join_existing: true,
                        ..node_config
                    },
                    stop.clone(),
                )?
            }
            r => r?,
        };
        let leases = Arc::new(Leases::new(cc.member_heartbeat, cc.lease_missed_beats));
        let ring = RingSettings {
            vnodes: config.router.vnodes,
            hash: config.router.hash.as_str().to_string(),
        };
        tokio::spawn(leases::leader_duties(
            node.clone(),
            leases.clone(),
            ring,
            stop.clone(),
        ));
        tokio::spawn(export_metrics(node.clone(), registry, stop.clone()));
        Ok(Self {
            node,
            leases,
            stop,
            security: security.clone(),
        })
    }

    /// `ClusterService` and `RaftService`; Watch streams end when `stop`
    /// (the server's stop token) is cancelled.
    pub fn grpc_routes(&self, stop: CancellationToken) -> tonic::service::Routes {
        self.add_grpc_routes(tonic::service::Routes::default(), stop)
    }

    /// `routes` plus `ClusterService` and `RaftService`.
    pub fn add_grpc_routes(
        &self,
        routes: tonic::service::Routes,
        stop: CancellationToken,
    ) -> tonic::service::Routes {
        routes
            .add_service(
                service::ClusterGrpc::new(
                    self.node.clone(),
                    self.leases.clone(),
                    self.security.clone(),
                    stop,
                )
                .into_server(),
            )
            .add_service(service::RaftGrpc::new(self.node.clone()).into_server())
    }

    /// Keeps `cluster-ctl` in `readiness` true while this node knows a
    /// leader (it can take changes), false during elections and in a
    /// minority, saying since when and in which role and term.
    pub fn report_readiness(&self, readiness: &Readiness) {
        let readiness = readiness.clone();
        let mut view = self.node.view_watch();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut leaderless_since = None;
            loop {
                let v = view.borrow_and_update().clone();
                if v.leader_id != 0 {
                    leaderless_since = None;
                    readiness.set("cluster-ctl", true);
                } else {
                    let since = leaderless_since.get_or_insert_with(|| {
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
                    });
                    readiness.set_not_ready("cluster-ctl", leaderless_reason(&v, since));
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = view.changed() => if r.is_err() {
                        readiness.set_not_ready("cluster-ctl", "the raft node stopped");
                        return;
                    },
                }
            }
        });
    }

    pub fn http_routes(&self) -> axum::Router {
        http::routes(self.node.clone())
    }

    /// Cancels `serving` if the raft node stops without being asked to
    /// (its task panicked): the process then stops serving and exits, and
    /// its supervisor restarts it from disk. The flag it returns says so,
    /// for [`RaftDied::check`] after the servers stopped.
    pub fn stop_serving_on_death(&self, serving: CancellationToken) -> RaftDied {
        let (node, stop) = (self.node.clone(), self.stop.clone());
        let died = RaftDied::default();
        let flag = died.0.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = node.stopped() => {
                    if !stop.is_cancelled() {
                        tracing::error!("the raft node died: stopping this process so its supervisor restarts it");
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        serving.cancel();
                    }
                }
                _ = serving.cancelled() => {}
            }
        });
        died
    }

    /// Stops the raft node and the leader's duties, and waits for the node.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.node.stopped().await;
    }
}

/// Moves a damaged `data_dir` to `<data_dir>.damaged-<unix secs>` and
/// returns where; the node then starts from an empty directory.
fn resync_aside(data_dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let mut aside = data_dir.as_os_str().to_owned();
    aside.push(format!(".damaged-{}", broker_common::unix_now()));
    let aside = std::path::PathBuf::from(aside);
    std::fs::rename(data_dir, &aside).map_err(|e| {
        anyhow::anyhow!(
            "cluster_ctl.resync_damaged: cannot move {} aside to {}: {e}",
            data_dir.display(),
            aside.display()
        )
    })?;
    Ok(aside)
}

/// `broker_raft_*` and `broker_cluster_*` gauges, updated as raft moves.
fn export_metrics(
    node: Node,
    registry: &mut prometheus_client::registry::Registry,
    stop: CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let gauge = |registry: &mut prometheus_client::registry::Registry, name: &str, help: &str| {
        let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(name, help, g.clone());
        g
    };
    let epoch = gauge(
        registry,
        "broker_cluster_epoch",
        "Ring epoch applied on this node",
    );
    let members = gauge(
        registry,
        "broker_cluster_members",
        "Members in the applied state",
    );
    let term = gauge(registry, "broker_raft_term", "Raft term");
    let leader = gauge(registry, "broker_raft_is_leader", "1 while this node leads");
    let commit = gauge(registry, "broker_raft_commit_index", "Raft commit index");
    let applied = gauge(registry, "broker_raft_applied_index", "Raft applied index");
    async move {
        let mut view = node.view_watch();
        let state = node.state();
        loop {
            {
                let v = view.borrow_and_update().clone();
                epoch.set(v.epoch as i64);
                members.set(state.borrow().members.len() as i64);
                term.set(v.term as i64);
                leader.set(i64::from(v.is_leader()));
                commit.set(v.commit_index as i64);
                applied.set(v.applied_index as i64);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = view.changed() => if r.is_err() { return },
            }
        }
    }
}

/// Set when the raft node died under a serving process.
#[derive(Clone, Default)]
pub struct RaftDied(Arc<std::sync::atomic::AtomicBool>);

impl RaftDied {
    /// An error if the node died: the process must exit non-zero.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.0.load(std::sync::atomic::Ordering::SeqCst),
            "the raft node died (its panic is in the log above); restart to recover from disk"
        );
        Ok(())
    }
}

/// Why a node without a leader is not ready, for `/ready`.
fn leaderless_reason(v: &broker_proto::v1::RaftStatus, since: &str) -> String {
    format!(
        "no raft leader since {since}: {} in term {}, no quorum of its {} voters heard (cut off from them, or an election is running)",
        if v.role.is_empty() {
            "starting"
        } else {
            &v.role
        },
        v.term,
        v.voters.len()
    )
}
