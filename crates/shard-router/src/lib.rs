//! shard-router: owns the hash ring, groups points by the writer that owns
//! them, and forwards the groups in parallel with retries.
//!
//! # Layout
//! - [`router`]: [`Router`], the grouping and forwarding logic.
//! - [`service`]: the `RouterService` gRPC server and [`RouterClient`],
//!   which hides whether the router is in this process or remote (round
//!   robin with failover across endpoints).
//! - [`metrics`]: Prometheus metrics of the router.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod router;
pub mod service;

pub use router::Router;
pub use service::{RouterClient, RouterGrpc};

use broker_common::{Admin, BrokerConfig, Listeners, Readiness};
use std::future::Future;
use std::sync::Arc;
use storage_writer::WriterClient;

/// Builds the router from `router.writers`. `local` is the writer of this
/// process, used when the list is empty (one-process mode).
pub fn build(
    config: &BrokerConfig,
    local: Option<WriterClient>,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<Arc<Router>> {
    let writers = if config.router.writers.is_empty() {
        let local = local.ok_or_else(|| {
            anyhow::anyhow!(
                "router.writers is empty and no storage-writer runs in this process: list the writers"
            )
        })?;
        vec![(hash_ring::NodeSpec::new(config.node_id.clone()), local)]
    } else {
        config
            .router
            .writers
            .iter()
            .map(|w| Ok((w.node_spec(), WriterClient::remote(&w.addr)?)))
            .collect::<Result<Vec<_>, storage_writer::WriterError>>()?
    };
    let metrics = metrics::RouterMetrics::new(registry);
    Ok(Arc::new(Router::new(&config.router, writers, metrics)?))
}

/// Runs a standalone shard-router until `shutdown` resolves.
pub async fn run(
    config: BrokerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    let readiness = Readiness::default();
    let router = build(&config, None, &mut registry)?;
    readiness.set("shard-router", true);
    let admin = Admin::new(registry, readiness);
    let stop = broker_common::serve::token_from(shutdown);
    let routes = tonic::service::Routes::new(RouterGrpc::new(router).into_server());
    broker_common::serve::serve(
        routes,
        &[service::ROUTER_SERVICE_NAME],
        &admin,
        listeners,
        stop,
    )
    .await
}
