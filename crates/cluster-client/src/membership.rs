//! One process's registration with cluster-ctl.

use crate::client::{ClusterClient, ClusterError};
use broker_proto::v1::{ClusterState, Member, MemberRole, MemberState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Delay between two tries to reopen a broken Watch stream.
const REWATCH_DELAY: Duration = Duration::from_millis(200);
/// Bounds on how long one node gets to answer a heartbeat (the beat
/// interval, within these).
const MIN_BEAT_WAIT: Duration = Duration::from_millis(500);
const MAX_BEAT_WAIT: Duration = Duration::from_secs(5);

/// Who this process is in the cluster.
#[derive(Debug, Clone)]
pub struct MembershipOptions {
    /// The process's `node_id`.
    pub id: String,
    pub roles: Vec<MemberRole>,
    /// gRPC address other services reach it at.
    pub addr: String,
    /// Admin HTTP address, for status pages.
    pub admin_addr: String,
    /// Ring weight (writers).
    pub weight: u32,
}

/// A joined member: heartbeats keep its lease alive and the committed
/// state is followed through `Watch`, both in background tasks that end
/// with [`Membership::leave`] or when the value is dropped.
pub struct Membership {
    client: ClusterClient,
    id: String,
    /// This process's `Member.instance`: proves to cluster-ctl that a
    /// Leave or drain with the member credential is this member's own.
    instance: String,
    roles: Vec<MemberRole>,
    state: watch::Receiver<Arc<ClusterState>>,
    stop: CancellationToken,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Membership {
    /// Joins the cluster (retrying while cluster-ctl has no leader, within
    /// the client's retry budget) and starts the heartbeats and the watch.
    pub async fn join(
        client: ClusterClient,
        opts: MembershipOptions,
    ) -> Result<Self, ClusterError> {
        let member = Member {
            id: opts.id.clone(),
            roles: opts.roles.iter().map(|r| *r as i32).collect(),
            addr: opts.addr.clone(),
            state: MemberState::Online as i32,
            weight: opts.weight.max(1),
            admin_addr: opts.admin_addr.clone(),
            // This process: another process with the same id cannot take
            // the member over while this one heartbeats.
            // 128 random bits: it is the member credential's proof of
            // which member it is (Leave, drain), so it must not be guessed.
            instance: format!("{:032x}", rand::random::<u128>()),
            ..Default::default()
        };
        let joined = client.join(member.clone()).await?;
        let instance = member.instance.clone();
        let interval = Duration::from_millis(joined.heartbeat_interval_ms.max(50));
        let initial = Arc::new(joined.state.unwrap_or_default());
        tracing::info!(
            member = %opts.id,
            epoch = initial.epoch,
            heartbeat = ?interval,
            "joined the cluster"
        );
        let (tx, rx) = watch::channel(initial);
        let stop = CancellationToken::new();
        tokio::spawn(follow(client.clone(), tx, stop.clone()));
        tokio::spawn(beat(client.clone(), member, interval, stop.clone()));
        Ok(Self {
            client,
            id: opts.id,
            instance,
            roles: opts.roles,
            state: rx,
            stop,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn has_role(&self, role: MemberRole) -> bool {
        self.roles.contains(&role)
    }

    pub fn handle(&self) -> crate::lifecycle::MemberHandle {
        crate::lifecycle::MemberHandle {
            client: self.client.clone(),
            id: self.id.clone(),
            instance: self.instance.clone(),
        }
    }

    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    /// The committed state as last watched; changes as new epochs commit.
    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.clone()
    }

    /// Marks this member draining: routers stop sending to it. Heartbeats
    /// go on until [`Membership::leave`].
    pub async fn drain(&self) -> Result<ClusterState, ClusterError> {
        let s = self.client.drain(&self.id, &self.instance).await?;
        tracing::info!(member = %self.id, epoch = s.epoch, "draining");
        Ok(s)
    }

    /// Leaves the cluster and stops the background tasks.
    pub async fn leave(self) -> Result<ClusterState, ClusterError> {
        self.stop.cancel();
        let s = self.client.leave(&self.id, &self.instance).await?;
        tracing::info!(member = %self.id, epoch = s.epoch, "left the cluster");
        Ok(s)
    }
}

/// Follows the committed state without registering (status pages,
/// brokerctl): the receiver holds the latest state, starting with the
/// current one. The task ends when every receiver is dropped.
pub fn watch_state(client: ClusterClient) -> watch::Receiver<Arc<ClusterState>> {
    let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
    let stop = CancellationToken::new();
    tokio::spawn(follow(client, tx, stop));
    rx
}

/// Keeps a Watch stream open (reopening it on another endpoint when it
/// breaks) and publishes every state with a newer epoch.
async fn follow(
    client: ClusterClient,
    tx: watch::Sender<Arc<ClusterState>>,
    stop: CancellationToken,
) {
    loop {
        let after = tx.borrow().epoch;
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            s = client.watch(after) => s,
        };
        match stream {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    m = stream.message() => m,
                };
                match next {
                    Ok(Some(state)) => {
                        if state.epoch > tx.borrow().epoch {
                            tracing::debug!(epoch = state.epoch, "cluster state");
                            tx.send_replace(Arc::new(state));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e.message(), "watch stream broke, reopening");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot watch cluster-ctl, retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REWATCH_DELAY) => {}
        }
    }
}

/// Heartbeats every `interval`; joins again if cluster-ctl no longer knows
/// the member (it was removed while this process was away).
async fn beat(client: ClusterClient, member: Member, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A beat the node it went to leaves unanswered for an interval goes
    // to the next node: the lease (a few intervals) must not run out on
    // a node that was cut off or lost its leader.
    let per_endpoint = interval.clamp(MIN_BEAT_WAIT, MAX_BEAT_WAIT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = client.heartbeat_within(&member.id, &member.instance, per_endpoint) => r,
        };
        match r {
            Ok(r) if !r.known => {
                tracing::warn!(member = %member.id, "cluster-ctl does not know this member, joining again");
                if let Err(e) = client.join(member.clone()).await {
                    tracing::warn!(member = %member.id, error = %e, "join failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(member = %member.id, error = %e, "heartbeat failed"),
        }
    }
}
