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
//! - [`error`]: [`GatewayError`], why a request was refused on any
//!   protocol, and its gRPC code and HTTP status.

#![forbid(unsafe_code)]

pub mod error;
pub mod gateway;
pub mod metrics;
pub mod otlp;
pub mod remote_write;
pub mod samples;
pub use broker_common::validate;

pub use error::GatewayError;
pub use gateway::Gateway;

use broker_proto::v1::monitor_service_server::MonitorServiceServer;
use internal_clients::RouterClient;

/// The gRPC services [`Gateway::add_grpc`] serves, for health reporting.
pub const GRPC_SERVICE_NAMES: &[&str] = &[gateway::MONITOR_SERVICE_NAME, otlp::SERVICE_NAME];

/// Mounting every protocol on the process's servers. Here, at the root,
/// because the protocols build on [`gateway`] and not the other way round.
impl Gateway {
    /// The gateway's HTTP routes: Prometheus remote write
    /// (`POST /api/v1/write`, [`remote_write`]) and OTLP/HTTP
    /// (`POST /v1/metrics`, [`otlp`]), for
    /// [`broker_common::Admin::with_routes`].
    pub fn http_routes(&self) -> axum::Router {
        remote_write::routes(self.inner.clone()).merge(otlp::routes(self.inner.clone()))
    }

    /// Adds the gateway's gRPC services: `MonitorService` (agents) and
    /// OTLP's `MetricsService`. Their names are [`GRPC_SERVICE_NAMES`].
    pub fn add_grpc(self, routes: &mut tonic::service::RoutesBuilder) {
        let max = self.inner.max_message_bytes;
        routes.add_service(otlp::Otlp::server(self.inner.clone()));
        routes.add_service(
            MonitorServiceServer::new(self)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
    }
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
