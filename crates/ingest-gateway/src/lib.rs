//! ingest-gateway: the agents' entry point. Accepts `MonitorService`
//! streams, validates every point, forwards the valid ones to shard-routers
//! and acks each batch only after its points are durable.
//!
//! # Layout
//! - [`validate`]: per-point validation with reasons (pure logic).
//! - [`gateway`]: the stream handler, backpressure and acks.
//! - [`metrics`]: Prometheus metrics of ingest.

#![forbid(unsafe_code)]

pub mod gateway;
pub mod metrics;
pub mod validate;

pub use gateway::Gateway;

use broker_common::{Admin, BrokerConfig, Listeners, Readiness};
use shard_router::RouterClient;
use std::future::Future;

/// Runs a standalone ingest-gateway (remote routers from
/// `gateway.routers`) until `shutdown` resolves.
pub async fn run(
    config: BrokerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.gateway.routers.is_empty(),
        "gateway.routers is empty: a standalone ingest-gateway needs at least one shard-router endpoint"
    );
    let router = RouterClient::remote(&config.gateway.routers)
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let mut registry = prometheus_client::registry::Registry::default();
    let readiness = Readiness::default();
    let stop = broker_common::serve::token_from(shutdown);
    let gateway = Gateway::new(&config, router, &mut registry, stop.clone());
    readiness.set("ingest-gateway", true);
    let admin = Admin::new(registry, readiness);
    let routes = tonic::service::Routes::new(gateway.into_server());
    broker_common::serve::serve(
        routes,
        &[gateway::MONITOR_SERVICE_NAME],
        &admin,
        listeners,
        stop,
    )
    .await
}
