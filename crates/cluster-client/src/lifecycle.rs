//! A service process's part in membership, start to stop: join when
//! `cluster.endpoints` is set, drain before the servers stop (writers), and
//! leave at the end.

use crate::{ClusterClient, Membership, MembershipOptions};
use broker_common::BrokerConfig;
use broker_proto::v1::MemberRole;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a draining writer keeps serving after cluster-ctl committed
/// its DRAINING state: routers follow the new epoch through Watch within
/// milliseconds; this covers batches they had already routed.
pub const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Joins the cluster when `config.cluster.endpoints` is set (`None`
/// otherwise: static membership). The member is `config.node_id` with
/// `roles`, reached at `cluster.advertise_addr` or `http://` + `grpc`.
pub async fn join_configured(
    config: &BrokerConfig,
    roles: Vec<MemberRole>,
    grpc: SocketAddr,
    http: SocketAddr,
    security: &broker_common::security::ClientSecurity,
) -> anyhow::Result<Option<Membership>> {
    if config.cluster.endpoints.is_empty() {
        return Ok(None);
    }
    let client = ClusterClient::new(&config.cluster.endpoints, security)?;
    let scheme = config.security.tls.scheme();
    let addr = config.advertise_addr_for(grpc);
    let opts = MembershipOptions {
        id: config.node_id.clone(),
        roles,
        admin_addr: admin_addr(&addr, http, scheme),
        addr,
        weight: config.cluster.weight,
    };
    let m = Membership::join(client, opts).await.map_err(|e| {
        anyhow::anyhow!("joining the cluster at {:?}: {e}", config.cluster.endpoints)
    })?;
    Ok(Some(m))
}

/// The admin URL others reach this process at: `http://` + `http`, or,
/// when `http` binds every address (a container), the advertised gRPC
/// host with the admin port.
fn admin_addr(advertised: &str, http: SocketAddr, scheme: &str) -> String {
    if !http.ip().is_unspecified() {
        return format!("{scheme}://{http}");
    }
    let host = advertised
        .split_once("://")
        .map_or(advertised, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    format!("{scheme}://{host}:{}", http.port())
}

/// The token the servers stop on. Without membership, or for a member that
/// is not a writer, it is cancelled with `signal`. A writer first drains:
/// DRAINING is committed (routers stop sending to it), it keeps serving for
/// [`DRAIN_WAIT`], then its servers stop and it flushes.
pub fn serve_token(
    signal: CancellationToken,
    membership: Option<&Membership>,
) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let drain = membership
        .filter(|m| m.has_role(MemberRole::StorageWriter))
        .map(|m| m.handle());
    tokio::spawn(async move {
        tokio::select! {
            _ = signal.cancelled() => {}
            _ = t.cancelled() => return,
        }
        if let Some(h) = drain {
            match tokio::time::timeout(LEAVE_TIMEOUT, h.drain()).await {
                Ok(Ok(_)) => tokio::time::sleep(DRAIN_WAIT).await,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not mark this writer draining, stopping anyway")
                }
                Err(_) => {
                    tracing::warn!(timeout = ?LEAVE_TIMEOUT, "cluster-ctl did not answer the drain in time, stopping anyway")
                }
            }
        }
        t.cancel();
    });
    token
}

/// Longest a stopping process tries to leave: past it the member's lease
/// expires and cluster-ctl marks it offline anyway, so a process whose
/// cluster-ctl is gone does not spend the client's whole retry budget
/// (about 15 s) on its way out.
pub const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Leaves the cluster (logging, not failing, when cluster-ctl is away: the
/// member's lease then expires and it is marked offline).
pub async fn leave(membership: Option<Membership>) {
    if let Some(m) = membership {
        let id = m.id().to_string();
        match tokio::time::timeout(LEAVE_TIMEOUT, m.leave()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(member = %id, error = %e, "could not leave the cluster; its lease will expire");
            }
            Err(_) => {
                tracing::warn!(member = %id, timeout = ?LEAVE_TIMEOUT, "cluster-ctl did not answer the leave in time; the member's lease will expire");
            }
        }
    }
}

/// A handle to mark a member draining, usable after the shutdown began.
#[derive(Clone)]
pub struct MemberHandle {
    pub(crate) client: ClusterClient,
    pub(crate) id: String,
    pub(crate) instance: String,
}

impl MemberHandle {
    pub async fn drain(&self) -> Result<broker_proto::v1::ClusterState, crate::ClusterError> {
        let s = self.client.drain(&self.id, &self.instance).await?;
        tracing::info!(member = %self.id, epoch = s.epoch, "draining");
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::admin_addr;

    #[test]
    fn admin_addr_follows_the_advertised_host_when_binding_every_address() {
        let any = "0.0.0.0:9195".parse().unwrap();
        assert_eq!(
            admin_addr("http://storage-writer-1:9095", any, "http"),
            "http://storage-writer-1:9195"
        );
        assert_eq!(
            admin_addr("http://[::1]:9095", any, "http"),
            "http://[::1]:9195"
        );
        let lo = "127.0.0.1:9195".parse().unwrap();
        assert_eq!(
            admin_addr("http://storage-writer-1:9095", lo, "http"),
            "http://127.0.0.1:9195"
        );
        assert_eq!(
            admin_addr("https://storage-writer-1:9095", any, "https"),
            "https://storage-writer-1:9195"
        );
    }
}
