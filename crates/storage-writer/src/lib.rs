//! storage-writer: stores routed batches in Redis.
//!
//! # Layout
//! - [`writer`]: the batcher that turns write jobs into Redis pipelines and
//!   acks each job once durable.
//! - `store`: where batches become durable: Redis (the layout's commands,
//!   pipelined), the spool while Redis is down, the dead-letter queue for
//!   what Redis refuses for good. Key formats live in the `storage-layout`
//!   crate.
//! - `replay`: the store's background work: the spool replayer and the
//!   layout maintainer (sealing open chunks).
//! - [`redis`]: the Redis pool, and which failures are transient or
//!   permanent.
//! - [`spool`]: the write-ahead spool (redb) used while Redis is down, and
//!   the dead-letter queue's table in the same database.
//! - [`dlq`]: the dead-letter queue as operators use it: list, show,
//!   replay, discard.
//! - [`api`]: its HTTP API (`/api/dlq`), mounted on the admin port.
//! - [`service`]: the `Write` handler (checks, ownership, store) and its
//!   gRPC server; [`WriterClient`] (from `internal-clients`) calls the same
//!   handler in this process.
//! - [`error`]: [`WriterError`] and its gRPC status mapping, [`DlqError`]
//!   and its HTTP status mapping.
//! - [`metrics`]: Prometheus metrics of the writer.

#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod dlq;
pub mod error;
pub mod metrics;
pub mod redis;
mod replay;
pub mod service;
pub mod spool;
mod store;
pub mod writer;

pub use error::{DlqError, WriterError};
pub use service::{WriterClient, WriterGrpc};
pub use writer::Writer;

use broker_common::{BrokerConfig, Readiness};
use std::sync::Arc;

/// A writer plus what it needs at shutdown.
pub struct WriterComponent {
    pub writer: Arc<Writer>,
    pool: fred::clients::Pool,
}

impl WriterComponent {
    /// Connects to Redis and starts the batcher. Readiness of
    /// `storage-writer` turns true once Redis answered.
    pub fn start(
        config: &BrokerConfig,
        registry: &mut prometheus_client::registry::Registry,
        readiness: &Readiness,
    ) -> anyhow::Result<Self> {
        let w = &config.writer;
        anyhow::ensure!(
            !w.redis_url.is_empty(),
            "writer.redis_url is empty: set it (or use `broker up`, which launches a local redis-server)"
        );
        let layout = storage_layout::for_writer(w)
            .ok_or_else(|| anyhow::anyhow!("writer.layout: unknown layout {:?}", w.layout))?;
        let pool = redis::redis_pool(&w.redis_url, w.pool_size)?;
        let metrics = metrics::WriterMetrics::new(registry);
        let spool = if w.spool_dir.is_empty() {
            None
        } else {
            let dir = std::path::Path::new(&w.spool_dir);
            let spool = spool::Spool::open(dir, w.spool_max_bytes)
                .map_err(|e| anyhow::anyhow!("writer.spool_dir: {e}"))?;
            Some(std::sync::Arc::new(spool))
        };
        let has_spool = spool.is_some();
        let writer = Writer::start(
            w,
            &config.node_id,
            config.ttl,
            pool.clone(),
            layout,
            spool,
            metrics,
        );
        // With a spool the writer can take writes before Redis answers.
        readiness.set("storage-writer", has_spool);
        let (r, p, url) = (readiness.clone(), pool.clone(), w.redis_url.clone());
        let layout = w.layout.clone();
        tokio::spawn(async move {
            storage_layout::exec::until_connected(&p, &url).await;
            tracing::info!(redis = %url, layout = %layout, "connected to redis");
            r.set("storage-writer", true);
        });
        Ok(Self { writer, pool })
    }

    /// The writer's admin HTTP routes (the DLQ API), to mount with
    /// [`Admin::with_routes`].
    pub fn admin_routes(&self) -> axum::Router {
        api::routes(self.writer.dead_letter_queue(), self.writer.node_id())
    }

    /// Writes what was accepted, then closes the Redis connections.
    pub async fn shutdown(&self) {
        self.writer.flush_and_stop().await;
        use fred::interfaces::ClientLike;
        let _ = tokio::time::timeout(
            broker_common::shutdown::REDIS_QUIT_TIMEOUT,
            self.pool.quit(),
        )
        .await;
    }
}
