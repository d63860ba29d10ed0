//! `ClusterService` calls with failover across cluster-ctl endpoints.

use backon::{ExponentialBuilder, Retryable};
use broker_common::security::{AuthChannel, ClientSecurity};
use broker_proto::v1::cluster_service_client::ClusterServiceClient;
use broker_proto::v1::{
    ChangeResponse, ClusterState, HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse,
    LeaveRequest, Member, MemberState, MembersRequest, RaftStatus, RingSettings, SetRingRequest,
    SetStateRequest, StatusRequest, VoterRequest, WatchRequest,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::{Code, Status};

/// Deadline of one call to one endpoint. Changes wait for a Raft commit,
/// which takes a few heartbeats at most while a leader is known.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid cluster-ctl endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("no cluster-ctl endpoint configured")]
    NoEndpoints,
    /// Every endpoint failed (unreachable, or no leader) for the whole
    /// retry budget.
    #[error("cluster-ctl unavailable (tried {endpoints}): {last}")]
    Unavailable { endpoints: String, last: Status },
    /// cluster-ctl answered and refused the request.
    #[error("cluster-ctl refused: {}", .0.message())]
    Refused(Status),
}

impl ClusterError {
    /// The gRPC status behind the error, for callers that forward it.
    pub fn status(&self) -> Status {
        match self {
            ClusterError::Refused(s) => s.clone(),
            ClusterError::Unavailable { .. } => Status::unavailable(self.to_string()),
            e => Status::invalid_argument(e.to_string()),
        }
    }
}

/// A client of cluster-ctl. Cheap to clone.
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<(String, ClusterServiceClient<AuthChannel>)>,
    /// The endpoint that answered last; tried first.
    preferred: AtomicUsize,
    retry: ExponentialBuilder,
}

/// Transient: the endpoint is unreachable, has no leader yet, or the call
/// timed out; another endpoint or a later try may succeed. ABORTED: a Join
/// raced the member's previous process instance, whose lease runs out
/// within seconds.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
    )
}

impl ClusterClient {
    /// Lazily connecting channels to `endpoints` (`http://host:port`),
    /// with TLS and the token `security` gives.
    pub fn new(endpoints: &[String], security: &ClientSecurity) -> Result<Self, ClusterError> {
        Self::with_retry(
            endpoints,
            security,
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(1))
                .with_max_times(20)
                .with_jitter(),
        )
    }

    /// As [`ClusterClient::new`] with a chosen retry policy (a call tries
    /// every endpoint once per attempt).
    pub fn with_retry(
        endpoints: &[String],
        security: &ClientSecurity,
        retry: ExponentialBuilder,
    ) -> Result<Self, ClusterError> {
        if endpoints.is_empty() {
            return Err(ClusterError::NoEndpoints);
        }
        let endpoints = endpoints
            .iter()
            .map(|a| {
                let ch = security
                    .lazy(a, |ep| {
                        broker_common::security::keepalive(ep)
                            .connect_timeout(Duration::from_secs(1))
                            .tcp_nodelay(true)
                    })
                    .map_err(|e| ClusterError::Endpoint(a.clone(), e.to_string()))?;
                Ok((a.clone(), ClusterServiceClient::new(ch)))
            })
            .collect::<Result<Vec<_>, ClusterError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoints,
                preferred: AtomicUsize::new(0),
                retry,
            }),
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Calls `f` on each endpoint, starting with the one that answered
    /// last, until one answers; retries the round with backoff while every
    /// endpoint fails transiently.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, ClusterError>
    where
        F: Fn(ClusterServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_within(CALL_TIMEOUT, f).await
    }

    /// [`ClusterClient::call`] giving each endpoint `per_endpoint`.
    async fn call_within<T, F, Fut>(&self, per_endpoint: Duration, f: F) -> Result<T, ClusterError>
    where
        F: Fn(ClusterServiceClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let round = || async {
            let n = self.inner.endpoints.len();
            let start = self.inner.preferred.load(Ordering::Relaxed);
            let mut last = None;
            for k in 0..n {
                let i = (start + k) % n;
                let client = self.inner.endpoints[i].1.clone();
                match tokio::time::timeout(per_endpoint, f(client)).await {
                    Ok(Ok(resp)) => {
                        self.inner.preferred.store(i, Ordering::Relaxed);
                        return Ok(resp.into_inner());
                    }
                    Ok(Err(s)) if !transient(&s) => return Err(ClusterError::Refused(s)),
                    Ok(Err(s)) => last = Some(s),
                    Err(_) => last = Some(Status::deadline_exceeded("call timed out")),
                }
            }
            Err(ClusterError::Unavailable {
                endpoints: self.endpoints().join(", "),
                last: last.expect("at least one endpoint"),
            })
        };
        round
            .retry(self.inner.retry)
            .when(|e| matches!(e, ClusterError::Unavailable { .. }))
            .await
    }

    pub async fn join(&self, member: Member) -> Result<JoinResponse, ClusterError> {
        self.call(|mut c| {
            let member = member.clone();
            async move {
                c.join(JoinRequest {
                    member: Some(member),
                })
                .await
            }
        })
        .await
    }

    /// Removes member `id`. `instance` is its process instance when a
    /// member leaves itself with the member credential; an operator with
    /// the admin token passes "".
    pub async fn leave(&self, id: &str, instance: &str) -> Result<ClusterState, ClusterError> {
        let r: ChangeResponse = self
            .call(|mut c| {
                let (id, instance) = (id.to_string(), instance.to_string());
                async move { c.leave(LeaveRequest { id, instance }).await }
            })
            .await?;
        Ok(r.state.unwrap_or_default())
    }

    pub async fn set_state(
        &self,
        id: &str,
        state: MemberState,
    ) -> Result<ClusterState, ClusterError> {
        self.set_state_because(id, state, "").await
    }

    /// Marks member `id` draining as its own process `instance`: what the
    /// member credential may do with SetState.
    pub async fn drain(&self, id: &str, instance: &str) -> Result<ClusterState, ClusterError> {
        let r: ChangeResponse = self
            .call(|mut c| {
                let (id, instance) = (id.to_string(), instance.to_string());
                async move {
                    c.set_state(SetStateRequest {
                        id,
                        state: MemberState::Draining as i32,
                        reason: String::new(),
                        instance,
                    })
                    .await
                }
            })
            .await?;
        Ok(r.state.unwrap_or_default())
    }

    /// Sets a member's state and says why (`Member.state_reason`): how
    /// host-manager marks a member offline after failed health checks.
    pub async fn set_state_because(
        &self,
        id: &str,
        state: MemberState,
        reason: &str,
    ) -> Result<ClusterState, ClusterError> {
        let r: ChangeResponse = self
            .call(|mut c| {
                let id = id.to_string();
                let reason = reason.to_string();
                async move {
                    c.set_state(SetStateRequest {
                        id,
                        state: state as i32,
                        reason,
                        instance: String::new(),
                    })
                    .await
                }
            })
            .await?;
        Ok(r.state.unwrap_or_default())
    }

    pub async fn set_ring(&self, ring: RingSettings) -> Result<ClusterState, ClusterError> {
        let r: ChangeResponse = self
            .call(|mut c| {
                let ring = ring.clone();
                async move { c.set_ring(SetRingRequest { ring: Some(ring) }).await }
            })
            .await?;
        Ok(r.state.unwrap_or_default())
    }

    pub async fn members(&self) -> Result<ClusterState, ClusterError> {
        self.call(|mut c| async move { c.members(MembersRequest {}).await })
            .await
    }

    /// Renews the lease of member `id` as process `instance` (its
    /// `Member.instance`; must match when the member has one).
    pub async fn heartbeat(
        &self,
        id: &str,
        instance: &str,
    ) -> Result<HeartbeatResponse, ClusterError> {
        self.heartbeat_within(id, instance, CALL_TIMEOUT).await
    }

    /// [`ClusterClient::heartbeat`] giving each endpoint `per_endpoint`: a
    /// member beats its lease through another node at once when the one it
    /// used stops answering, instead of waiting out the lease on it.
    pub async fn heartbeat_within(
        &self,
        id: &str,
        instance: &str,
        per_endpoint: Duration,
    ) -> Result<HeartbeatResponse, ClusterError> {
        self.call_within(per_endpoint, |mut c| {
            let (id, instance) = (id.to_string(), instance.to_string());
            async move { c.heartbeat(HeartbeatRequest { id, instance }).await }
        })
        .await
    }

    /// Raft status of the first endpoint that answers.
    pub async fn status(&self) -> Result<RaftStatus, ClusterError> {
        self.call(|mut c| async move { c.status(StatusRequest {}).await })
            .await
    }

    /// Raft status of every endpoint (`Err` for those that do not answer).
    pub async fn status_all(&self) -> Vec<(String, Result<RaftStatus, Status>)> {
        let mut out = Vec::new();
        for (addr, client) in &self.inner.endpoints {
            let mut c = client.clone();
            let r = match tokio::time::timeout(CALL_TIMEOUT, c.status(StatusRequest {})).await {
                Ok(r) => r.map(|r| r.into_inner()),
                Err(_) => Err(Status::deadline_exceeded("status timed out")),
            };
            out.push((addr.clone(), r));
        }
        out
    }

    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<RaftStatus, ClusterError> {
        let r = self
            .call(|mut c| {
                let addr = addr.to_string();
                async move { c.add_voter(VoterRequest { id, addr }).await }
            })
            .await?;
        Ok(r.status.unwrap_or_default())
    }

    pub async fn remove_voter(&self, id: u64) -> Result<RaftStatus, ClusterError> {
        let r = self
            .call(|mut c| async move {
                c.remove_voter(VoterRequest {
                    id,
                    addr: String::new(),
                })
                .await
            })
            .await?;
        Ok(r.status.unwrap_or_default())
    }

    /// Opens a `Watch` stream on the first endpoint that accepts it.
    pub async fn watch(
        &self,
        after_epoch: u64,
    ) -> Result<tonic::Streaming<ClusterState>, ClusterError> {
        self.call(|mut c| async move { c.watch(WatchRequest { after_epoch }).await })
            .await
    }
}
