//! A shard-router in this process, or round robin with failover over
//! remote ones.

use crate::{MAX_INTERNAL_MESSAGE_BYTES, retryable};
use broker_common::security::{AuthChannel, ClientSecurity};
use broker_proto::v1::router_service_client::RouterServiceClient;
use broker_proto::v1::{MetricBatch, PointError, RouteRequest};
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::{Request, Status};

/// A router in this process: what its gRPC adapter calls (checks, then
/// routing), implemented by the shard-router crate.
pub trait LocalRouter: Send + Sync + 'static {
    /// Checks `batch` and routes it; returns the points not stored.
    fn route(&self, batch: MetricBatch) -> BoxFuture<'_, Result<Vec<PointError>, Status>>;
}

/// A router, in this process or behind one or more gRPC endpoints.
#[derive(Clone)]
pub enum RouterClient {
    Local(Arc<dyn LocalRouter>),
    Remote(Arc<RemoteRouters>),
}

/// Router endpoints and their channels, in round-robin order.
type Endpoints = Arc<Vec<(String, RouterServiceClient<AuthChannel>)>>;

pub struct RemoteRouters {
    /// Replaced as a whole when membership changes ([`RouterClient::set_endpoints`]).
    endpoints: RwLock<Endpoints>,
    next: AtomicUsize,
    /// TLS and token of the channels, for routers that join later.
    security: ClientSecurity,
}

fn router_channel(
    a: &str,
    security: &ClientSecurity,
) -> Result<RouterServiceClient<AuthChannel>, Status> {
    let ch = security
        .lazy(a, |ep| {
            broker_common::security::keepalive(
                ep.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true),
            )
        })
        .map_err(|e| Status::invalid_argument(format!("router endpoint {a:?}: {e}")))?;
    Ok(RouterServiceClient::new(ch)
        .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES))
}

impl RouterClient {
    pub fn local(handler: Arc<dyn LocalRouter>) -> Self {
        RouterClient::Local(handler)
    }

    /// Lazily connecting channels to each endpoint; calls go round robin and
    /// fail over to the next endpoint when one is unreachable.
    pub fn remote(addrs: &[String], security: &ClientSecurity) -> Result<Self, Status> {
        if addrs.is_empty() {
            return Err(Status::invalid_argument("no router endpoints configured"));
        }
        let endpoints = addrs
            .iter()
            .map(|a| Ok((a.clone(), router_channel(a, security)?)))
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(RouterClient::Remote(Arc::new(RemoteRouters {
            endpoints: RwLock::new(Arc::new(endpoints)),
            next: AtomicUsize::new(0),
            security: security.clone(),
        })))
    }

    /// Routers learned from cluster membership: starts with none and takes
    /// its endpoints from [`RouterClient::set_endpoints`].
    pub fn dynamic(security: &ClientSecurity) -> Self {
        RouterClient::Remote(Arc::new(RemoteRouters {
            endpoints: RwLock::new(Arc::new(Vec::new())),
            next: AtomicUsize::new(0),
            security: security.clone(),
        }))
    }

    /// Replaces the remote endpoints (keeping the channels of those that
    /// stay). No effect on a local router.
    pub fn set_endpoints(&self, addrs: &[String]) {
        let RouterClient::Remote(remote) = self else {
            return;
        };
        let old = remote
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let new: Vec<_> = addrs
            .iter()
            .filter_map(|a| match old.iter().find(|(o, _)| o == a) {
                Some(e) => Some(e.clone()),
                None => match router_channel(a, &remote.security) {
                    Ok(c) => Some((a.clone(), c)),
                    Err(e) => {
                        tracing::warn!(router = %a, error = %e.message(), "bad router address from membership");
                        None
                    }
                },
            })
            .collect();
        if new.iter().map(|(a, _)| a).ne(old.iter().map(|(a, _)| a)) {
            tracing::info!(routers = ?addrs, "router endpoints changed");
        }
        *remote.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
    }

    /// Routes `batch`; returns the points not stored. `Err` means no router
    /// could take the batch at all.
    pub async fn route(
        &self,
        batch: MetricBatch,
        timeout: Duration,
    ) -> Result<Vec<PointError>, Status> {
        match self {
            RouterClient::Local(r) => match tokio::time::timeout(timeout, r.route(batch)).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "local route exceeded {timeout:?}"
                ))),
            },
            RouterClient::Remote(remote) => {
                let endpoints = remote
                    .endpoints
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let n = endpoints.len();
                if n == 0 {
                    return Err(Status::unavailable(
                        "no shard-router is online in the cluster yet",
                    ));
                }
                let start = remote.next.fetch_add(1, Ordering::Relaxed);
                let mut last = Status::unavailable("no router endpoint tried");
                let mut batch = Some(batch);
                for k in 0..n {
                    let (addr, client) = &endpoints[(start + k) % n];
                    // Keep a copy only while another endpoint may need it.
                    let body = if k + 1 < n {
                        batch.clone().expect("batch present")
                    } else {
                        batch.take().expect("batch present")
                    };
                    let mut req = Request::new(RouteRequest { batch: Some(body) });
                    req.set_timeout(timeout);
                    match client.clone().route(req).await {
                        Ok(resp) => return Ok(resp.into_inner().failed),
                        Err(e) if retryable(&e) => {
                            tracing::warn!(router = %addr, code = ?e.code(), error = %e.message(), "router call failed, trying next endpoint");
                            last = Status::new(e.code(), format!("router {addr}: {}", e.message()));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(last)
            }
        }
    }
}
