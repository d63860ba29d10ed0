//! ingest-gateway: the agents' entry point. Accepts `MonitorService`
//! streams, validates every point, forwards the valid ones to shard-routers
//! and acks each batch only after its points are durable.
//!
//! # Layout
//! - [`validate`]: per-point validation with reasons (pure logic; in
//!   broker-common, so the writer and the router run the same checks).
//! - [`gateway`]: the stream handler, backpressure and acks; the one
//!   ingest path (validate, route, ack after durable) both protocols use.
//! - [`samples`]: labelled series' samples gathered into the broker's
//!   points and stored through that path, for the two protocols below.
//! - [`remote_write`]: Prometheus remote write 1.0 over HTTP.
//! - [`otlp`]: OpenTelemetry metrics (OTLP over gRPC and HTTP/protobuf).
//! - [`metrics`]: Prometheus metrics of ingest.

#![forbid(unsafe_code)]

pub mod gateway;
pub mod metrics;
pub mod otlp;
pub mod remote_write;
pub mod samples;
pub use broker_common::validate;

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
        !config.gateway.routers.is_empty() || !config.cluster.endpoints.is_empty(),
        "gateway.routers and cluster.endpoints are empty: a standalone ingest-gateway needs shard-router endpoints or cluster-ctl to learn them from"
    );
    let security = broker_common::security::Security::from_config(&config.security)?;
    let membership = cluster_client::lifecycle::join_configured(
        &config,
        vec![broker_proto::v1::MemberRole::IngestGateway],
        listeners.grpc_addr(),
        listeners.http_addr(),
        &security.client,
    )
    .await?;
    let router = match &membership {
        Some(m) if config.gateway.routers.is_empty() => {
            let client = RouterClient::dynamic(&security.client);
            follow_routers(&client, m.state());
            client
        }
        _ => RouterClient::remote(&config.gateway.routers, &security.client)
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let readiness = Readiness::default();
    let stop = broker_common::serve::token_from(shutdown);
    let gateway = Gateway::new(&config, router, &mut registry, stop.clone());
    readiness.set("ingest-gateway", true);
    // POST /api/v1/write (Prometheus remote write) and /v1/metrics (OTLP)
    // on the HTTP port.
    let admin = Admin::new(registry, readiness).with_routes(gateway.http_routes());
    let mut routes = tonic::service::RoutesBuilder::default();
    gateway.add_grpc(&mut routes);
    let result = broker_common::serve::serve(
        routes.routes(),
        gateway::GRPC_SERVICE_NAMES,
        &admin,
        listeners,
        &security,
        stop,
    )
    .await;
    cluster_client::lifecycle::leave(membership).await;
    result
}

/// Keeps `client`'s endpoints to the shard-routers that are online in the
/// watched cluster state. Ends when the watch ends.
pub fn follow_routers(
    client: &RouterClient,
    mut state: tokio::sync::watch::Receiver<std::sync::Arc<broker_proto::v1::ClusterState>>,
) {
    let client = client.clone();
    tokio::spawn(async move {
        loop {
            let s = state.borrow_and_update().clone();
            let addrs: Vec<String> =
                cluster_client::online_with_role(&s, broker_proto::v1::MemberRole::ShardRouter)
                    .into_iter()
                    .map(|m| m.addr.clone())
                    .collect();
            client.set_endpoints(&addrs);
            if state.changed().await.is_err() {
                return;
            }
        }
    });
}
