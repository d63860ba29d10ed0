//! The gRPC faces of cluster-ctl: `ClusterService` for broker services and
//! operators, `RaftService` for peers.

use crate::leases::Leases;
use crate::node::{Node, NodeError};
use crate::state::CommandError;
use broker_common::security::{AuthChannel, ClientSecurity, auth::Granted};
use broker_proto::v1::cluster_service_client::ClusterServiceClient;
use broker_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use broker_proto::v1::raft_service_server::{RaftService, RaftServiceServer};
use broker_proto::v1::{
    ChangeResponse, ClusterCommand, ClusterState, HeartbeatRequest, HeartbeatResponse, JoinRequest,
    JoinResponse, LeaveRequest, Member, MemberState, MembersRequest, RaftAck, RaftMessages,
    RaftStatus, SetRingRequest, SetStateRequest, StatusRequest, VoterRequest, VoterResponse,
    WatchRequest, cluster_command::Command,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub const CLUSTER_SERVICE_NAME: &str = "broker.v1.ClusterService";
pub const RAFT_SERVICE_NAME: &str = "broker.v1.RaftService";

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NoLeader
            | NodeError::LeaderChanged
            | NodeError::Timeout(_)
            | NodeError::Stopped => Status::unavailable(e.to_string()),
            NodeError::Refused(_) => Status::failed_precondition(e.to_string()),
            NodeError::Invalid(_) => Status::invalid_argument(e.to_string()),
        }
    }
}

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::UnknownMember(_) => Status::not_found(e.to_string()),
            CommandError::Invalid(_) => Status::invalid_argument(e.to_string()),
        }
    }
}

/// The state as clients see it: without the members' process instances,
/// which prove a live member's identity on Join and Heartbeat and so are
/// never handed out (a copied instance could take over a live member).
pub fn public(state: &ClusterState) -> ClusterState {
    let mut s = state.clone();
    for m in &mut s.members {
        m.instance.clear();
    }
    s
}

/// The node's Raft status, as `Status` answers it.
pub fn raft_status(node: &Node) -> RaftStatus {
    node.view().as_ref().clone()
}

#[derive(Clone)]
pub struct ClusterGrpc {
    node: Node,
    leases: Arc<Leases>,
    /// Channels to other cluster-ctl nodes, for heartbeats a follower
    /// passes on to the leader (leases live on the leader).
    leaders: Arc<Mutex<HashMap<String, ClusterServiceClient<AuthChannel>>>>,
    security: ClientSecurity,
    /// Cancelled when the server stops: Watch streams end, so the server's
    /// graceful shutdown does not wait for watchers to hang up.
    stop: CancellationToken,
}

impl ClusterGrpc {
    pub fn new(
        node: Node,
        leases: Arc<Leases>,
        security: ClientSecurity,
        stop: CancellationToken,
    ) -> Self {
        Self {
            node,
            leases,
            leaders: Arc::default(),
            security,
            stop,
        }
    }

    pub fn into_server(self) -> ClusterServiceServer<Self> {
        ClusterServiceServer::new(self)
    }

    /// `UNAVAILABLE` (clients try the next node) when this node knows no
    /// leader, so its state may be stale; `what` names the call refused.
    fn leaderless(&self, what: &str) -> Option<Status> {
        (self.node.view().leader_id == 0).then(|| {
            Status::unavailable(format!(
                "{}: cluster-ctl node {} knows no leader (cut off with a minority, or electing one); ask another node for {what}",
                NodeError::NoLeader,
                self.node.id()
            ))
        })
    }

    /// Checks `command` against the applied state, proposes it and returns
    /// the state once it is applied here.
    async fn change(&self, command: Command) -> Result<Arc<ClusterState>, Status> {
        let cmd = ClusterCommand {
            at_ms: broker_common::unix_now_ms(),
            command: Some(command),
        };
        crate::state::check(&self.node.state().borrow(), &cmd)?;
        self.node.propose(cmd).await?;
        Ok(self.node.state().borrow().clone())
    }

    /// Refuses a Join of a member id by another process instance while the
    /// instance that holds it is alive (its lease renewed within the TTL):
    /// two processes with one node_id would take each other's address.
    /// ABORTED, which clients retry: a restarted process joins once its old
    /// instance's lease runs out.
    fn check_instance(&self, joining: &Member) -> Result<(), Status> {
        let state = self.node.state().borrow().clone();
        let Some(current) = state.members.iter().find(|m| m.id == joining.id) else {
            return Ok(());
        };
        // The instance is the live process's secret (never sent to
        // clients, see [`public`]): a Join without it, or with another,
        // cannot take over a live member's address.
        if current.instance.is_empty()
            || current.instance == joining.instance
            || current.state == MemberState::Offline as i32
        {
            return Ok(());
        }
        match self.leases.age(&joining.id) {
            Some(age) if age <= self.leases.ttl() => Err(Status::aborted(format!(
                "member {} is alive as another process instance (at {}, lease renewed {} ms ago); \
                 is a second process running with node_id {}? A restarted process joins once the old lease expires ({} ms)",
                joining.id,
                current.addr,
                age.as_millis(),
                joining.id,
                self.leases.ttl().as_millis()
            ))),
            _ => Ok(()),
        }
    }

    /// A call made with the member credential acts only on the member whose
    /// process instance it carries (the instance is never sent to clients,
    /// so only the live process knows it). PERMISSION_DENIED otherwise;
    /// the admin token is not asked this.
    fn check_self(&self, id: &str, instance: &str, what: &str) -> Result<(), Status> {
        let state = self.node.state().borrow().clone();
        let Some(current) = state.members.iter().find(|m| m.id == id) else {
            return Err(CommandError::UnknownMember(id.to_string()).into());
        };
        if current.instance.is_empty() || current.instance == instance {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "a member credential may {what} only its own member, and this call does not come \
             from {id}'s running process (its instance does not match); an operator can with the admin token"
        )))
    }

    /// A client of the leader, for calls only the leader answers (it holds
    /// the leases); `None` when this node is the leader.
    fn leader_unless_me(&self) -> Result<Option<ClusterServiceClient<AuthChannel>>, Status> {
        let view = self.node.view();
        if view.is_leader() {
            return Ok(None);
        }
        let addr = view
            .leader_addr()
            .ok_or_else(|| Status::unavailable(NodeError::NoLeader.to_string()))?
            .to_string();
        self.leader_client(&addr).map(Some)
    }

    fn leader_client(&self, addr: &str) -> Result<ClusterServiceClient<AuthChannel>, Status> {
        let mut map = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ch = self
            .security
            .lazy(addr, |ep| {
                broker_common::security::keepalive(ep).connect_timeout(Duration::from_millis(500))
            })
            .map_err(|e| Status::internal(format!("leader address {addr:?}: {e}")))?;
        let c = ClusterServiceClient::new(ch);
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<ClusterState, Status>> + Send>>;

/// Resolves once the node has known no leader for `grace` without a
/// break; never if the raft task is gone (the state stream ends then).
async fn leaderless_for(view: &mut tokio::sync::watch::Receiver<Arc<RaftStatus>>, grace: Duration) {
    loop {
        while view.borrow_and_update().leader_id != 0 {
            if view.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
        let regained = async {
            loop {
                if view.changed().await.is_err() {
                    return std::future::pending::<()>().await;
                }
                if view.borrow_and_update().leader_id != 0 {
                    return;
                }
            }
        };
        if tokio::time::timeout(grace, regained).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterGrpc {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = request.into_inner();
        // Leases live on the leader: it decides whether the member's
        // current instance is alive.
        if let Some(mut leader) = self.leader_unless_me()? {
            let mut fwd = Request::new(req);
            fwd.set_timeout(Duration::from_secs(5));
            let resp = leader.join(fwd).await?;
            // The client's next call may come here again (it keeps the
            // endpoint that answered): answer once this node has applied
            // the join too, or its checks would not know the member yet.
            let epoch = resp.get_ref().state.as_ref().map_or(0, |s| s.epoch);
            let mut state = self.node.state();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.epoch >= epoch))
                    .await;
            return Ok(resp);
        }
        let member = req
            .member
            .ok_or_else(|| Status::invalid_argument("member is missing"))?;
        self.check_instance(&member)?;
        let id = member.id.clone();
        let state = self.change(Command::Join(member)).await?;
        self.leases.grant(&id);
        Ok(Response::new(JoinResponse {
            state: Some(public(&state)),
            heartbeat_interval_ms: self.leases.interval().as_millis() as u64,
            lease_ttl_ms: self.leases.ttl().as_millis() as u64,
        }))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<ChangeResponse>, Status> {
        let admin = Granted::is_admin(request.extensions());
        let LeaveRequest { id, instance } = request.into_inner();
        if !admin {
            self.check_self(&id, &instance, "make leave")?;
        }
        let state = self.change(Command::Leave(id)).await?;
        Ok(Response::new(ChangeResponse {
            state: Some(public(&state)),
        }))
    }

    async fn set_state(
        &self,
        request: Request<SetStateRequest>,
    ) -> Result<Response<ChangeResponse>, Status> {
        let admin = Granted::is_admin(request.extensions());
        let mut req = request.into_inner();
        if !admin {
            if req.state != MemberState::Draining as i32 || !req.reason.is_empty() {
                return Err(Status::permission_denied(format!(
                    "a member credential may only drain its own member; setting {} {} needs the admin token",
                    req.id,
                    MemberState::try_from(req.state)
                        .map(|s| s.as_str_name())
                        .unwrap_or("an unknown state")
                )));
            }
            self.check_self(&req.id, &req.instance, "drain")?;
        }
        // The instance proved who asked; it is not part of the change.
        req.instance.clear();
        let state = self.change(Command::SetState(req)).await?;
        Ok(Response::new(ChangeResponse {
            state: Some(public(&state)),
        }))
    }

    async fn set_ring(
        &self,
        request: Request<SetRingRequest>,
    ) -> Result<Response<ChangeResponse>, Status> {
        let ring = request
            .into_inner()
            .ring
            .ok_or_else(|| Status::invalid_argument("ring is missing"))?;
        let state = self.change(Command::SetRing(ring)).await?;
        Ok(Response::new(ChangeResponse {
            state: Some(public(&state)),
        }))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<ClusterState>, Status> {
        // A leaderless node's state may be stale (it is cut off with a
        // minority, or between leaders): the caller asks another node.
        if let Some(refused) = self.leaderless("members") {
            return Err(refused);
        }
        Ok(Response::new(public(&self.node.state().borrow())))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let after_epoch = request.into_inner().after_epoch;
        // A node without a leader (cut off with a minority, or between
        // leaders) may serve a stale state: watchers go to another node,
        // and a stream it serves ends once it stays leaderless for a lease
        // (an election takes far less), so its members move to the
        // majority instead of routing on a ring that may have changed.
        let mut view = self.node.view_watch();
        view.mark_unchanged();
        if let Some(refused) = self.leaderless("watch") {
            return Err(refused);
        }
        let grace = self.leases.ttl();
        let id = self.node.id();
        let mut state = self.node.state();
        let stop = self.stop.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let leaderless = leaderless_for(&mut view, grace);
            tokio::pin!(leaderless);
            // A subscriber from scratch gets the current state first.
            let mut sent: Option<u64> = (after_epoch > 0).then_some(after_epoch);
            loop {
                let current = state.borrow_and_update().clone();
                if sent.is_none_or(|e| current.epoch > e) {
                    sent = Some(current.epoch);
                    if tx.send(Ok(public(&current))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = stop.cancelled() => return,
                    // Err: the node stopped; end the stream, clients reconnect.
                    r = state.changed() => if r.is_err() { return },
                    () = &mut leaderless => {
                        tracing::warn!(grace = ?grace, "no leader for a lease: ending watch streams, members move to another node");
                        let _ = tx
                            .send(Err(Status::unavailable(format!(
                                "cluster-ctl node {id} has known no leader for {grace:?}: its state may be stale; watch another node"
                            ))))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let Some(mut leader) = self.leader_unless_me()? else {
            let state = self.node.state().borrow().clone();
            // A process whose member was joined by another instance since
            // (it was paused, the other restarted) does not renew its lease.
            let known = state
                .members
                .iter()
                .any(|m| m.id == req.id && (m.instance.is_empty() || m.instance == req.instance));
            if known {
                self.leases.beat(&req.id);
            }
            return Ok(Response::new(HeartbeatResponse {
                epoch: state.epoch,
                known,
            }));
        };
        let mut fwd = Request::new(req);
        fwd.set_timeout(Duration::from_secs(2));
        leader.heartbeat(fwd).await
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<RaftStatus>, Status> {
        Ok(Response::new(raft_status(&self.node)))
    }

    async fn add_voter(
        &self,
        request: Request<VoterRequest>,
    ) -> Result<Response<VoterResponse>, Status> {
        let req = request.into_inner();
        self.node.add_voter(req.id, &req.addr).await?;
        Ok(Response::new(VoterResponse {
            status: Some(raft_status(&self.node)),
        }))
    }

    async fn remove_voter(
        &self,
        request: Request<VoterRequest>,
    ) -> Result<Response<VoterResponse>, Status> {
        let req = request.into_inner();
        self.node.remove_voter(req.id).await?;
        Ok(Response::new(VoterResponse {
            status: Some(raft_status(&self.node)),
        }))
    }
}

pub struct RaftGrpc {
    node: Node,
    senders: crate::transport::Senders,
}

impl RaftGrpc {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            senders: Default::default(),
        }
    }

    pub fn into_server(self) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn send(&self, request: Request<RaftMessages>) -> Result<Response<RaftAck>, Status> {
        let remote = request.remote_addr().map(|a| a.ip());
        let mut msgs = crate::transport::decode(request.into_inner(), self.node.net_filter())
            .map_err(Status::invalid_argument)?;
        // Each sender once per call (a call carries one peer's messages).
        if let Some(remote) = remote {
            let view = self.node.view();
            let mut checked: HashMap<u64, bool> = HashMap::new();
            for m in &msgs {
                if checked.contains_key(&m.from) {
                    continue;
                }
                let knows_peers = view.peers.keys().any(|&id| id != view.id);
                let addr = view.peers.get(&m.from).map(String::as_str);
                let r = self.senders.check(m.from, remote, addr, knows_peers).await;
                if let Err(why) = &r {
                    tracing::warn!(from = m.from, remote = %remote, why, "raft messages dropped");
                }
                checked.insert(m.from, r.is_ok());
            }
            msgs.retain(|m| checked[&m.from]);
        }
        if !msgs.is_empty() {
            self.node.step(msgs).await?;
        }
        Ok(Response::new(RaftAck {}))
    }
}

/// What a node whose stored state is damaged (see [`crate::node::Damaged`])
/// serves in place of `ClusterService` (`RAFT` false) and `RaftService`
/// (`RAFT` true): every call is answered UNAVAILABLE with the damage and
/// its repair, so clients move to the other nodes and an operator reading
/// the error learns what to do, while the process stays up (not ready)
/// instead of exiting on every restart.
#[derive(Clone)]
pub struct Refusing<const RAFT: bool>(pub Arc<str>);

impl<const RAFT: bool> tonic::server::NamedService for Refusing<RAFT> {
    const NAME: &'static str = if RAFT {
        RAFT_SERVICE_NAME
    } else {
        CLUSTER_SERVICE_NAME
    };
}

impl<const RAFT: bool, B> tower::Service<http::Request<B>> for Refusing<RAFT> {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(Status::unavailable(self.0.to_string()).into_http()))
    }
}

/// Adds [`Refusing`] `ClusterService` and `RaftService` to `routes`.
pub fn add_refusing_routes(routes: &mut tonic::service::RoutesBuilder, why: &str) {
    let why: Arc<str> = why.into();
    routes.add_service(Refusing::<false>(why.clone()));
    routes.add_service(Refusing::<true>(why));
}
