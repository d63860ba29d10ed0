//! query-api: what dashboards read. Point, range, aggregation and host
//! queries over Redis, served over gRPC (`broker.v1.QueryService`) and
//! HTTP/JSON with the same semantics; a Prometheus-compatible read API; and
//! the dashboard, a static page compiled into the binary.
//!
//! Redis is read through the layout crate's [`storage_layout::KeyLayout`]
//! (the same trait that writes the keys), never by spelling key formats
//! here. Range and aggregation results go through a moka cache with TTL; a
//! range that ends within `query.fresh_window` of now is cached for
//! `query.fresh_cache_ttl` only (see [`engine`]).
//!
//! # Layout
//! - [`engine`]: validation, limits, the result cache, the queries.
//! - [`store`]: Redis reads (ZRANGEBYSCORE on the index, then pipelined
//!   HGETALL / HMGET / HGET in batches; SCAN for hosts).
//! - [`agg`]: aggregation functions and step buckets (pure).
//! - [`downsample`]: a range cut to the rows a chart asks for (avg, min
//!   and max per bucket, aligned to the range's end; pure).
//! - [`grpc`]: the `QueryService` server.
//! - [`http`]: the JSON API under `/api/query/`, the dashboard under
//!   `/dashboard/`, parameter parsing.
//! - [`promql`]: `/api/v1/*`, Prometheus's HTTP API, with a PromQL subset
//!   evaluated over the same engine.
//!   - [`promql::binop`]: PromQL binary operators with a vector operand.
//!   - [`promql::histogram`]: `histogram_quantile` over classic (`le`)
//!     buckets.
//! - [`remote_read`]: Prometheus remote read (`POST /api/v1/read`) over
//!   the same selection as PromQL selectors.
//! - [`cluster`]: the cluster view (cluster-ctl, or the static ring).
//! - [`error`]: [`QueryError`] and its gRPC / HTTP / Prometheus mapping.
//! - [`metrics`]: `broker_query_*` Prometheus metrics.

#![forbid(unsafe_code)]

pub mod agg;
pub mod cluster;
pub mod downsample;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod promql;
pub mod remote_read;
pub mod store;

pub use engine::Engine;
pub use error::QueryError;
pub use grpc::{QUERY_SERVICE_NAME, QueryGrpc};

use broker_common::{BrokerConfig, Readiness};
use broker_proto::v1::query_service_server::QueryServiceServer;
use std::sync::Arc;

/// A started query-api: the engine and what serves it. The all-in-one
/// binary mounts [`QueryComponent::grpc_service`] on its gRPC port and
/// [`QueryComponent::http_routes`] on its admin port.
pub struct QueryComponent {
    engine: Arc<Engine>,
    cluster: cluster::ClusterView,
}

impl QueryComponent {
    /// Builds the Redis pool (reading `query.redis_url`, else
    /// `writer.redis_url`) and the engine; registers `broker_query_*`.
    pub fn start(
        config: &BrokerConfig,
        security: &broker_common::security::ClientSecurity,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        let url = config.query.effective_redis_url(&config.writer);
        anyhow::ensure!(
            !url.is_empty(),
            "query.redis_url and writer.redis_url are empty: set one (or use `broker up`, which launches a local redis-server)"
        );
        let q = &config.query;
        let layout = storage_layout::for_query(&config.writer, q.chunk_cache_max_bytes)
            .ok_or_else(|| {
                anyhow::anyhow!("writer.layout: unknown layout {:?}", config.writer.layout)
            })?;
        let store = store::Store::connect(url, q.pool_size, layout, q.read_batch, q.timeout)?
            .with_retention(config.ttl);
        let metrics = metrics::QueryMetrics::new(registry);
        let engine = Arc::new(Engine::new(config, store, metrics));
        tracing::info!(
            redis = %url,
            layout = %config.writer.layout,
            migrate_from = %config.writer.migrate_from,
            "query-api reading redis"
        );
        Ok(Self {
            engine,
            cluster: cluster::ClusterView::new(config, security),
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Sets readiness `query-api` once Redis answers (in the background).
    pub fn report_readiness(&self, readiness: &Readiness) {
        readiness.set("query-api", false);
        let (r, engine) = (readiness.clone(), self.engine.clone());
        tokio::spawn(async move {
            engine.store().wait_connected().await;
            r.set("query-api", true);
        });
    }

    /// The `broker.v1.QueryService` gRPC service.
    pub fn grpc_service(&self) -> QueryServiceServer<QueryGrpc> {
        QueryGrpc::new(self.engine.clone(), self.cluster.clone()).into_server()
    }

    /// The JSON API (`/api/query/*`), the Prometheus API (`/api/v1/*`) and
    /// the dashboard (`/dashboard/`), for [`Admin::with_routes`].
    pub fn http_routes(&self) -> axum::Router {
        http::routes()
            .merge(promql::routes())
            .merge(remote_read::routes())
            .with_state(http::HttpState {
                engine: self.engine.clone(),
                cluster: self.cluster.clone(),
            })
    }

    /// Closes the Redis connections.
    pub async fn shutdown(&self) {
        self.engine.store().quit().await;
    }
}
