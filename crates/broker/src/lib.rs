//! The all-in-one broker: any set of services in one process, wired with
//! in-process clients so the data path skips the network (monolithic mode,
//! as Mimir's `-target=all`).
//!
//! # Layout
//! - [`run`]: mounts the enabled services on one gRPC port and one admin
//!   port, and shuts them down in data-path order.
//! - `main.rs`: the `broker` binary (`broker run`, `broker up`, `broker health`, `broker certs`).

#![forbid(unsafe_code)]

pub mod pki;

use broker_common::serve::GrpcRoutes;
use broker_common::{Admin, BrokerConfig, Listeners, Readiness, Service};
use broker_proto::v1::MemberRole;
use ingest_gateway::Gateway;
use shard_router::RouterClient;
use shard_router::service::RouteHandler;
use std::future::Future;
use std::sync::Arc;
use storage_writer::WriterClient;
use storage_writer::service::WriteHandler;

/// The whole `main` of a single-service binary (`storage-writer`, ...):
/// flags, config (exit 64 when invalid), then [`run_until_signal`] with that
/// one service, so it runs exactly what `broker run --service` runs.
pub fn service_main(service: Service) -> ! {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: broker_common::cli::ConfigArgs,
    }
    let cli = <Cli as clap::Parser>::parse();
    let config = cli.config.load_or_exit();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run_until_signal(config, &[service])));
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        }
    }
}

/// What `broker run` does: telemetry, listeners from the config, then
/// [`run`] until SIGINT/SIGTERM.
pub async fn run_until_signal(config: BrokerConfig, services: &[Service]) -> anyhow::Result<()> {
    // A single-service process reports itself under that service's name.
    let name = match services {
        [one] => one.as_str(),
        _ => "broker",
    };
    let _guard = broker_common::telemetry::init(&config.telemetry, name)?;
    let listeners = Listeners::from_config(&config).await?;
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
    let peers_at = internal_placement(&config, services, &listeners)?;
    let mut registry = prometheus_client::registry::Registry::default();
    let readiness = Readiness::default();
    let signal = broker_common::serve::token_from(shutdown);
    // The clients' services (grpc_listen) and the ones other broker
    // processes call (internal_listen, or grpc_listen without a gateway).
    let mut routes = tonic::service::RoutesBuilder::default();
    let mut names = Vec::new();
    let mut internal_routes = tonic::service::RoutesBuilder::default();
    let mut internal_names = Vec::new();
    let mut admin_routes = Vec::new();
    // Where a service other broker processes call is added, if anywhere.
    macro_rules! peer_routes {
        () => {
            match peers_at {
                PeersAt::Internal => Some((&mut internal_routes, &mut internal_names)),
                PeersAt::Grpc => Some((&mut routes, &mut names)),
                PeersAt::InProcess => None,
            }
        };
    }

    let security = broker_common::security::Security::from_config(&config.security)?;
    // A cluster-ctl whose stored raft state is damaged stays up not ready,
    // refusing its calls with the repair (an exit would repeat on every
    // restart of its supervisor).
    let mut cluster_ctl_damaged = None;
    let cluster_ctl = if has(Service::ClusterCtl) {
        let own = config.advertise_addr_for(listeners.peer_addr());
        match cluster_ctl::ClusterCtl::start(&config, &own, &security.client, &mut registry) {
            Ok(ctl) => Some(ctl),
            Err(e) if e.downcast_ref::<cluster_ctl::node::Damaged>().is_some() => {
                let why = e.to_string();
                tracing::error!(error = %why, "cluster-ctl is not serving");
                readiness.set_not_ready("cluster-ctl", why.clone());
                cluster_ctl_damaged = Some(why);
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    // The data-path services of this process are one member of the cluster.
    let roles: Vec<MemberRole> = services
        .iter()
        .filter_map(|s| match s {
            Service::IngestGateway => Some(MemberRole::IngestGateway),
            Service::ShardRouter => Some(MemberRole::ShardRouter),
            Service::StorageWriter => Some(MemberRole::StorageWriter),
            Service::QueryApi => Some(MemberRole::QueryApi),
            Service::ClusterCtl | Service::HostManager => None,
        })
        .collect();
    let membership = if roles.is_empty() {
        None
    } else {
        cluster_client::lifecycle::join_configured(
            &config,
            roles,
            listeners.peer_addr(),
            listeners.http_addr(),
            &security.client,
        )
        .await?
    };
    let cluster_state = membership.as_ref().map(|m| m.state());
    let stop = cluster_client::lifecycle::serve_token(signal, membership.as_ref());

    let writer = if has(Service::StorageWriter) {
        let w = storage_writer::WriterComponent::start(&config, &mut registry, &readiness)?;
        let ownership = cluster_state
            .clone()
            .map(|s| storage_writer::service::Ownership::new(&config.node_id, s));
        // One handler for gRPC and for the router in this process.
        let handler = Arc::new(
            WriteHandler::new(w.writer.clone())
                .with_limits(&config)
                .with_ownership(ownership),
        );
        if let Some((routes, names)) = peer_routes!() {
            routes.add_service(handler.clone().into_server());
            names.push(storage_writer::service::WRITER_SERVICE_NAME);
        }
        admin_routes.push(w.admin_routes());
        Some((w, handler))
    } else {
        None
    };
    let router = if has(Service::ShardRouter) {
        let local = writer
            .as_ref()
            .map(|(_, handler)| WriterClient::local(handler.clone()));
        let r = shard_router::build(
            &config,
            local,
            cluster_state.clone(),
            &security.client,
            &mut registry,
        )?;
        // One handler for gRPC and for the gateway in this process.
        let handler = Arc::new(RouteHandler::new(r).with_limits(&config));
        if let Some((routes, names)) = peer_routes!() {
            routes.add_service(handler.clone().into_server());
            names.push(shard_router::service::ROUTER_SERVICE_NAME);
        }
        readiness.set("shard-router", true);
        Some(handler)
    } else {
        None
    };
    if has(Service::IngestGateway) {
        let client = if !config.gateway.routers.is_empty() {
            RouterClient::remote(&config.gateway.routers, &security.client)
                .map_err(|e| anyhow::anyhow!("{}", e.message()))?
        } else if let Some(r) = router.clone() {
            RouterClient::local(r)
        } else if let Some(state) = cluster_state.clone() {
            let c = RouterClient::dynamic(&security.client);
            ingest_gateway::follow_routers(&c, state);
            c
        } else {
            anyhow::bail!(
                "gateway.routers and cluster.endpoints are empty and no shard-router runs in this process: list the routers"
            )
        };
        let g = Gateway::new(&config, client, &mut registry, stop.clone());
        // POST /api/v1/write (Prometheus remote write), /v1/metrics (OTLP)
        admin_routes.push(g.http_routes());
        g.add_grpc(&mut routes);
        names.extend(ingest_gateway::GRPC_SERVICE_NAMES);
        readiness.set("ingest-gateway", true);
    }
    let query = if has(Service::QueryApi) {
        let q = query_api::QueryComponent::start(&config, &security.client, &mut registry)?;
        // "query-api" turns ready once Redis answers.
        q.report_readiness(&readiness);
        routes.add_service(q.grpc_service());
        names.push(query_api::QUERY_SERVICE_NAME);
        // /api/query/*, the Prometheus API /api/v1/*, /dashboard/
        admin_routes.push(q.http_routes());
        Some(q)
    } else {
        None
    };
    let host_manager = if has(Service::HostManager) {
        let h = host_manager::HostManager::start(
            &config,
            &security.client,
            &security.admin_client,
            &mut registry,
        )?;
        h.report_readiness(&readiness);
        routes.add_service(h.grpc_service());
        names.push(host_manager::HOST_SERVICE_NAME);
        // /api/hosts, /api/alerts, /api/autoscale, ...
        admin_routes.push(h.http_routes());
        Some(h)
    } else {
        None
    };
    if let Some(why) = &cluster_ctl_damaged {
        let (routes, names) = peer_routes!().expect("cluster-ctl is never in-process only");
        cluster_ctl::service::add_refusing_routes(routes, why);
        names.push(cluster_ctl::service::CLUSTER_SERVICE_NAME);
        names.push(cluster_ctl::service::RAFT_SERVICE_NAME);
    }
    if let Some(ctl) = &cluster_ctl {
        let (_, names) = peer_routes!().expect("cluster-ctl is never in-process only");
        names.push(cluster_ctl::service::CLUSTER_SERVICE_NAME);
        names.push(cluster_ctl::service::RAFT_SERVICE_NAME);
        admin_routes.push(ctl.http_routes());
        ctl.report_readiness(&readiness);
    }

    let connections = broker_common::connections::Connections::new(
        config.max_connections,
        config.max_connections_per_peer,
        config.max_request_bytes_in_flight,
        &mut registry,
    );
    let mut admin = Admin::new(registry, readiness);
    for r in admin_routes {
        admin = admin.with_routes(r);
    }
    tracing::info!(
        node = %config.node_id,
        services = ?services.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        grpc = %listeners.grpc_addr(),
        http = %listeners.http_addr(),
        internal = %match peers_at {
            PeersAt::Internal => listeners.peer_addr().to_string(),
            PeersAt::Grpc => "grpc".to_string(),
            PeersAt::InProcess => "in-process only".to_string(),
        },
        "broker serving"
    );
    if query.is_some() {
        tracing::info!(url = %format!("http://{}/dashboard/", listeners.http_addr()), "dashboard");
    }
    let mut public = GrpcRoutes {
        routes: routes.routes(),
        names,
    };
    let mut internal = GrpcRoutes {
        routes: internal_routes.routes(),
        names: internal_names,
    };
    let mut raft_died = None;
    if let Some(ctl) = &cluster_ctl {
        let target = match peers_at {
            PeersAt::Internal => &mut internal.routes,
            PeersAt::Grpc | PeersAt::InProcess => &mut public.routes,
        };
        *target = ctl.add_grpc_routes(std::mem::take(target), stop.clone());
        raft_died = Some(ctl.stop_serving_on_death(stop.clone()));
    }
    let result = broker_common::serve::serve(
        public,
        internal,
        &admin,
        listeners,
        &connections,
        &security,
        stop,
    )
    .await;
    if let Some(h) = host_manager {
        h.shutdown().await;
    }
    if let Some((w, _)) = writer {
        broker_common::shutdown::within_grace(config.shutdown_grace, w.shutdown()).await;
    }
    if let Some(q) = query {
        q.shutdown().await;
    }
    cluster_client::lifecycle::leave(membership).await;
    if let Some(ctl) = cluster_ctl {
        ctl.shutdown().await;
    }
    tracing::info!("broker stopped");
    if let Some(d) = raft_died {
        d.check()?;
    }
    result
}

/// Where this process serves the services other broker processes call
/// (shard-router, storage-writer, cluster-ctl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeersAt {
    /// On `internal_listen`.
    Internal,
    /// On `grpc_listen`: no ingest-gateway here, so it is not the agents'
    /// port.
    Grpc,
    /// Nowhere: the gateway beside them reaches them in-process, and no
    /// other process needs them.
    InProcess,
}

/// Decides [`PeersAt`], refusing a process whose internal services others
/// must reach (it joins a cluster, or runs cluster-ctl) while the only
/// gRPC port is the agents'.
fn internal_placement(
    config: &BrokerConfig,
    services: &[Service],
    listeners: &Listeners,
) -> anyhow::Result<PeersAt> {
    if listeners.internal.is_some() {
        return Ok(PeersAt::Internal);
    }
    if !services.contains(&Service::IngestGateway) {
        return Ok(PeersAt::Grpc);
    }
    let internal: Vec<&str> = services
        .iter()
        .filter(|s| {
            matches!(
                s,
                Service::ShardRouter | Service::StorageWriter | Service::ClusterCtl
            )
        })
        .map(|s| s.as_str())
        .collect();
    let member = !config.cluster.endpoints.is_empty() || services.contains(&Service::ClusterCtl);
    anyhow::ensure!(
        internal.is_empty() || !member,
        "internal_listen is not set, but this process runs ingest-gateway (grpc_listen {} is the agents' port and does not serve other broker processes) beside {} and is a cluster member: the other members could not reach them. Set internal_listen (e.g. 127.0.0.1:9095, or 0.0.0.0:9095 in a container) for them",
        listeners.grpc_addr(),
        internal.join(", ")
    );
    Ok(PeersAt::InProcess)
}
