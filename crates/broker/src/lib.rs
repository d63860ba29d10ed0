//! The all-in-one broker: any set of services in one process, wired with
//! in-process clients so the data path skips the network (monolithic mode,
//! as Mimir's `-target=all`).
//!
//! # Layout
//! - [`run`]: mounts the enabled services on one gRPC port and one admin
//!   port, and shuts them down in data-path order.
//! - [`dlq_cli`]: `broker dlq`, a client of a writer's dead-letter queue
//!   API, and [`dlq_cli::AdminClient`], the HTTP client it uses.
//! - `main.rs`: the `broker` binary (`broker run`, `broker up`, `broker dlq`).

#![forbid(unsafe_code)]

pub mod dlq_cli;

use broker_common::{Admin, BrokerConfig, Listeners, Readiness, Service};
use ingest_gateway::Gateway;
use shard_router::{RouterClient, RouterGrpc};
use std::future::Future;
use storage_writer::{WriterClient, WriterGrpc};

/// What `broker run` does: telemetry, listeners from the config, then
/// [`run`] until SIGINT/SIGTERM.
pub async fn run_until_signal(config: BrokerConfig, services: &[Service]) -> anyhow::Result<()> {
    let _guard = broker_common::telemetry::init(&config.telemetry, "broker")?;
    let listeners = Listeners::bind(config.grpc_listen, config.http_listen).await?;
    run(
        config,
        services,
        listeners,
        broker_common::shutdown::signal(),
    )
    .await
}

/// Runs `services` in this process until `shutdown` resolves, then drains:
/// gateways ack what they took, routers finish forwarding, writers flush to
/// Redis, all within `shutdown_grace`.
pub async fn run(
    config: BrokerConfig,
    services: &[Service],
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(!services.is_empty(), "no service enabled");
    let has = |s| services.contains(&s);
    let mut registry = prometheus_client::registry::Registry::default();
    let readiness = Readiness::default();
    let stop = broker_common::serve::token_from(shutdown);
    let mut routes = tonic::service::RoutesBuilder::default();
    let mut names = Vec::new();

    let writer = if has(Service::StorageWriter) {
        let w = storage_writer::WriterComponent::start(&config, &mut registry, &readiness)?;
        routes.add_service(WriterGrpc::new(w.writer.clone()).into_server());
        names.push(storage_writer::service::WRITER_SERVICE_NAME);
        Some(w)
    } else {
        None
    };
    let router = if has(Service::ShardRouter) {
        let local = writer
            .as_ref()
            .map(|w| WriterClient::local(w.writer.clone()));
        let r = shard_router::build(&config, local, &mut registry)?;
        routes.add_service(RouterGrpc::new(r.clone()).into_server());
        names.push(shard_router::service::ROUTER_SERVICE_NAME);
        readiness.set("shard-router", true);
        Some(r)
    } else {
        None
    };
    if has(Service::IngestGateway) {
        let client = if config.gateway.routers.is_empty() {
            let r = router.clone().ok_or_else(|| {
                anyhow::anyhow!("gateway.routers is empty and no shard-router runs in this process: list the routers")
            })?;
            RouterClient::local(r)
        } else {
            RouterClient::remote(&config.gateway.routers)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        };
        let g = Gateway::new(&config, client, &mut registry, stop.clone());
        routes.add_service(g.into_server());
        names.push(ingest_gateway::gateway::MONITOR_SERVICE_NAME);
        readiness.set("ingest-gateway", true);
    }

    let mut admin = Admin::new(registry, readiness);
    if let Some(w) = &writer {
        admin = admin.with_routes(w.admin_routes());
    }
    tracing::info!(
        node = %config.node_id,
        services = ?services.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        grpc = %listeners.grpc_addr(),
        http = %listeners.http_addr(),
        "broker serving"
    );
    let result =
        broker_common::serve::serve(routes.routes(), &names, &admin, listeners, stop).await;
    if let Some(w) = writer {
        broker_common::shutdown::within_grace(config.shutdown_grace, w.shutdown()).await;
    }
    tracing::info!("broker stopped");
    result
}
