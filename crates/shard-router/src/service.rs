//! The router's handler of `Route` and its gRPC face; the client that
//! hides local vs remote is [`internal_clients::RouterClient`].

use crate::error::RouterError;
use crate::router::Router;
use broker_common::validate::{Limits, first_problem};
use broker_proto::bounded::Bounded;
use broker_proto::v1::router_service_server::{RouterService, RouterServiceServer};
use broker_proto::v1::{MetricBatch, PointError, RouteRequest, RouteResponse};
use internal_clients::MAX_INTERNAL_MESSAGE_BYTES;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub use internal_clients::{ROUTER_SERVICE_NAME, RouterClient};

/// What a `Route` does, whoever calls it: the gateway's checks again,
/// then the router. The gRPC adapter ([`RouterGrpc`]) and the in-process
/// client ([`RouterClient::Local`]) both call it, so a router in the
/// gateway's process takes exactly what a remote one takes.
pub struct RouteHandler {
    router: Arc<Router>,
    /// The gateway's checks, run again on what peers send.
    limits: Limits,
}

/// The gRPC face of a [`RouteHandler`].
pub struct RouterGrpc(Arc<RouteHandler>);

impl RouteHandler {
    pub fn new(router: Arc<Router>) -> Self {
        Self {
            router,
            limits: Limits::new(&Default::default(), broker_common::config::DEFAULT_TTL).internal(),
        }
    }

    /// The limits of this deployment (`gateway.*`, `ttl`) for the checks
    /// every `Route` passes.
    pub fn with_limits(mut self, config: &broker_common::BrokerConfig) -> Self {
        self.limits = Limits::new(&config.gateway, config.ttl).internal();
        self
    }

    /// Checks `batch` and routes it; returns the points not stored.
    pub async fn route(&self, batch: MetricBatch) -> Result<Vec<PointError>, RouterError> {
        if let Some(problem) = first_problem(&batch, &self.limits, broker_common::unix_now()) {
            return Err(RouterError::Refused {
                problem: problem.to_string(),
            });
        }
        Ok(self.router.route(batch).await)
    }

    /// The gRPC service; a request's batch is counted against the limits
    /// before it is decoded.
    pub fn into_server(self: Arc<Self>) -> Bounded<RouterServiceServer<RouterGrpc>> {
        let bounds = self.limits.batch_bounds();
        Bounded::new(
            RouterServiceServer::new(RouterGrpc(self))
                .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES),
            bounds,
        )
    }
}

#[tonic::async_trait]
impl RouterService for RouterGrpc {
    async fn route(
        &self,
        request: Request<RouteRequest>,
    ) -> Result<Response<RouteResponse>, Status> {
        let batch = request.into_inner().batch.unwrap_or_default();
        let failed = self.0.route(batch).await?;
        Ok(Response::new(RouteResponse { failed }))
    }
}

impl internal_clients::LocalRouter for RouteHandler {
    fn route(
        &self,
        batch: MetricBatch,
    ) -> futures::future::BoxFuture<'_, Result<Vec<PointError>, Status>> {
        Box::pin(async move { Ok(RouteHandler::route(self, batch).await?) })
    }
}
