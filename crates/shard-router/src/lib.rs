//! shard-router: owns the hash ring, groups points by the writer that owns
//! them, and forwards the groups in parallel with retries, moving the share
//! of an unreachable writer to its ring successors until it is back.
//!
//! # Routing
//!
//! Every writer writes the same Redis, so any writer can store any point;
//! ring ownership only spreads the load. For each point the router walks
//! [`hash_ring::HashRing::owners_of_point`]: the owner first, then every
//! other writer once, clockwise. It sends the point to the first writer in
//! that order that is **up** ([`router::pick`]). With every writer up that
//! is the owner; while one is down, its share spreads over its ring
//! successors (each point goes where it would go if the down writer left the
//! ring), not all to one writer, and comes back to it when it is up again.
//!
//! Points are grouped per writer and the groups forwarded in parallel, each
//! with retries (exponential backoff with jitter, `router.retry`) while the
//! status is transient ([`router::retryable`]). When a forward fails after
//! its retries, its points go on to the next writer that is up in their ring
//! order and has not failed them yet ([`router::failover_target`]), each
//! writer tried at most once. Only when no writer is left do they come back
//! as `UNAVAILABLE`, retryable, with the writers tried named in the message.
//! Only a refusal of the points themselves (`INVALID_ARGUMENT`: malformed;
//! `FAILED_PRECONDITION`: Redis refused them) is final and not failed over:
//! another writer would refuse the same points. Whatever else comes back
//! from a writer's address (a timeout, nothing, or a foreign process there,
//! answering `UNIMPLEMENTED` or `UNAUTHENTICATED`) fails over.
//!
//! # Writer health ([`health`])
//!
//! - **Down**: when a forward to a writer fails after its whole retry budget,
//!   or sooner after [`health::DOWN_AFTER_FAILED_ATTEMPTS`] (3) consecutive
//!   transient failures counted over all forwards to it. In-flight retries to
//!   a writer that is marked down stop and fail over at once if another
//!   writer is up; if none is, they keep their retry budget (and a point whose
//!   writers are all down goes to its owner anyway).
//! - **Back**: a background task probes a down writer with `grpc.health.v1`
//!   (overall and `broker.v1.WriterService` both SERVING), backing off from
//!   `router.retry.initial_backoff` to [`health::PROBE_MAX_DELAY`] (5 s), and
//!   marks it up when it answers; any successful forward to it does too. A
//!   writer that goes down again within [`health::FLAP_WINDOW`] (30 s) of
//!   coming back starts its next probes at twice the previous first delay
//!   (capped), so a writer that answers health checks but fails writes does
//!   not flap once per batch. The probes end when the [`Router`] is dropped
//!   (the server stopped).
//! - An in-process writer (`WriterClient::Local`, one-process mode) cannot be
//!   unreachable and is never marked down.
//! - Observable as `broker_router_writer_up{writer}` (1/0),
//!   `broker_router_rerouted_points_total` (points sent to a writer other than
//!   their owner), [`Router::writer_status`], and the logs
//!   `writer marked down, its share moves to ring successors` (warn) and
//!   `writer back` (info, with `down_for`).
//!
//! # Layout
//! - [`router`]: [`Router`], grouping, forwarding, failover, and the pure
//!   routing choices [`router::pick`] and [`router::failover_target`].
//! - [`health`]: per-writer up/down state and the background probes.
//! - [`service`]: the `RouterService` gRPC server and [`RouterClient`],
//!   which hides whether the router is in this process or remote (round
//!   robin with failover across endpoints).
//! - [`metrics`]: Prometheus metrics of the router.
//! - [`error`]: [`RouterError`], why a `Route` failed, and its gRPC status.

#![forbid(unsafe_code)]

pub mod error;
pub mod health;
pub mod hedge;
pub mod metrics;
pub mod router;
pub mod service;

pub use error::RouterError;
pub use health::WriterStatus;
pub use router::Router;
pub use service::{RouterClient, RouterGrpc};

use broker_common::BrokerConfig;
use broker_common::security::ClientSecurity;
use broker_proto::v1::ClusterState;
use internal_clients::WriterClient;
use std::sync::Arc;
use tokio::sync::watch;

/// Builds the router: from `router.writers` (static membership, epoch 1),
/// or, when `cluster` (the watched cluster state) is given, from the ring
/// cluster-ctl commits, following every new epoch. `local` is the writer of
/// this process: used when the static list is empty (one-process mode), and
/// in cluster mode for the ring node named after `node_id`.
pub fn build(
    config: &BrokerConfig,
    local: Option<WriterClient>,
    cluster: Option<watch::Receiver<Arc<ClusterState>>>,
    security: &ClientSecurity,
    registry: &mut prometheus_client::registry::Registry,
) -> anyhow::Result<Arc<Router>> {
    let metrics = metrics::RouterMetrics::new(registry);
    if let Some(state) = cluster {
        // Epoch 0 until the first watched state arrives.
        let router = Arc::new(Router::with_epoch(&config.router, Vec::new(), metrics, 0)?);
        let local = local.map(|c| (config.node_id.clone(), c));
        follow_cluster(&router, state, local, security.clone());
        return Ok(router);
    }
    let writers = if config.router.writers.is_empty() {
        let local = local.ok_or_else(|| {
            anyhow::anyhow!(
                "router.writers is empty, cluster.endpoints is empty and no storage-writer runs in this process: list the writers or the cluster-ctl endpoints"
            )
        })?;
        vec![(hash_ring::NodeSpec::new(config.node_id.clone()), local)]
    } else {
        config
            .router
            .writers
            .iter()
            .map(|w| Ok((w.node_spec(), WriterClient::remote(&w.addr, security)?)))
            .collect::<Result<Vec<_>, internal_clients::ClientError>>()?
    };
    Ok(Arc::new(Router::new(&config.router, writers, metrics)?))
}

/// Rebuilds the router's ring at every committed epoch: the writers that
/// are online, reached through the clients the router already has (the
/// in-process writer for `local`'s id), new channels for new ones. Ends
/// when the router is dropped or the watch ends.
pub fn follow_cluster(
    router: &Arc<Router>,
    mut state: watch::Receiver<Arc<ClusterState>>,
    local: Option<(String, WriterClient)>,
    security: ClientSecurity,
) {
    let weak = Arc::downgrade(router);
    tokio::spawn(async move {
        loop {
            let s = state.borrow_and_update().clone();
            let Some(router) = weak.upgrade() else { return };
            if let Err(e) = apply_state(&router, &s, local.as_ref(), &security) {
                tracing::error!(epoch = s.epoch, error = %e, "cannot build the ring of this epoch, keeping the previous one");
            }
            drop(router);
            if state.changed().await.is_err() {
                return;
            }
        }
    });
}

fn apply_state(
    router: &Router,
    state: &ClusterState,
    local: Option<&(String, WriterClient)>,
    security: &ClientSecurity,
) -> anyhow::Result<()> {
    if state.epoch <= router.epoch() {
        return Ok(());
    }
    let (ring, members) = cluster_client::ring_of(state)?;
    let existing = router.writer_clients();
    let writers = ring
        .nodes()
        .iter()
        .zip(&members)
        .map(|(n, m)| {
            let client = match local {
                Some((id, c)) if *id == m.id => c.clone(),
                _ => match existing.iter().find(|(id, _)| *id == m.id) {
                    Some((_, c @ WriterClient::Remote { addr, .. })) if *addr == m.addr => {
                        c.clone()
                    }
                    _ => WriterClient::remote(&m.addr, security)?,
                },
            };
            Ok((n.clone(), client))
        })
        .collect::<Result<Vec<_>, internal_clients::ClientError>>()?;
    router.set_topology(state.epoch, ring.config(), writers)?;
    Ok(())
}
