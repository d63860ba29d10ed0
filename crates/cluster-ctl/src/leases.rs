//! Member liveness: leases kept alive by heartbeats, and the leader's
//! duties that turn lease expiry into committed state changes.
//!
//! Leases live in the leader's memory only; what they decide is committed
//! through Raft. A member whose lease expires (no beat for
//! `member_heartbeat × lease_missed_beats`) is marked OFFLINE by a
//! committed entry, which bumps the epoch so routers route around it; when
//! it beats again it is marked ONLINE the same way. A node that becomes
//! leader starts every lease afresh (one full TTL of grace), since the
//! beats went to the previous leader.

use crate::node::Node;
use broker_proto::v1::{
    ClusterCommand, MemberState, RingSettings, SetStateRequest, cluster_command::Command,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `Member.state_reason` of a member the lease took offline.
pub const LEASE_REASON: &str = "lease";
/// Prefix of `Member.state_reason` when host-manager's health checks took
/// the member offline ("health: grpc check timed out after 1s").
pub const HEALTH_REASON: &str = "health";

pub struct Leases {
    beats: Mutex<HashMap<String, Lease>>,
    interval: Duration,
    ttl: Duration,
}

/// When a member's lease was last renewed, and whether by a beat of its own
/// (`false`: the grace a lease starts with when the leader first sees the
/// member or takes over). Only a real beat brings an offline member back.
#[derive(Debug, Clone, Copy)]
struct Lease {
    at: Instant,
    beaten: bool,
}

impl Leases {
    pub fn new(interval: Duration, missed_beats: u32) -> Self {
        Self {
            beats: Mutex::default(),
            interval,
            ttl: interval * missed_beats.max(1),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn beat(&self, id: &str) {
        self.lock().insert(
            id.to_string(),
            Lease {
                at: Instant::now(),
                beaten: true,
            },
        );
    }

    /// Starts (or restarts) a member's lease without counting as a beat: a
    /// member that just joined is online for one TTL, then must beat.
    pub fn grant(&self, id: &str) {
        self.lock().insert(
            id.to_string(),
            Lease {
                at: Instant::now(),
                beaten: false,
            },
        );
    }

    /// How long ago `id`'s lease was last renewed (a beat, a join, or a
    /// new leader's grace), if this node holds one.
    pub fn age(&self, id: &str) -> Option<Duration> {
        self.lock().get(id).map(|l| l.at.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Members whose state the lease says is wrong, with the state and
    /// reason they should have: ONLINE or DRAINING members without a beat
    /// for a TTL go OFFLINE ("lease"); OFFLINE members that beat
    /// (themselves) within a TTL go ONLINE, unless host-manager's health
    /// checks took them out (reason "health..."): a process that beats but
    /// does not serve stays out until its checks pass. Such a member that
    /// stops beating as well is handed over to the lease (reason "lease"),
    /// so it comes back by beating once it is restarted or resumed.
    /// Members never seen get a lease from `now`, without a beat.
    pub fn verdicts<'a>(
        &self,
        members: impl Iterator<Item = (&'a str, MemberState, &'a str)>,
        now: Instant,
    ) -> Vec<(String, MemberState, &'static str)> {
        let mut beats = self.lock();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for (id, state, reason) in members {
            seen.push(id.to_string());
            let lease = *beats.entry(id.to_string()).or_insert(Lease {
                at: now,
                beaten: false,
            });
            let alive = now.saturating_duration_since(lease.at) <= self.ttl;
            let by_health = reason.starts_with(HEALTH_REASON);
            match state {
                MemberState::Online | MemberState::Draining if !alive => {
                    out.push((id.to_string(), MemberState::Offline, LEASE_REASON))
                }
                MemberState::Offline if !alive && by_health => {
                    out.push((id.to_string(), MemberState::Offline, LEASE_REASON))
                }
                MemberState::Offline if alive && lease.beaten && !by_health => {
                    out.push((id.to_string(), MemberState::Online, ""))
                }
                _ => {}
            }
        }
        beats.retain(|id, _| seen.contains(id));
        out
    }

    /// Starts every lease afresh (a new leader).
    pub fn reset(&self, now: Instant) {
        for l in self.lock().values_mut() {
            *l = Lease {
                at: now,
                beaten: false,
            };
        }
    }
}

/// What the leader does besides raft: expires leases, and commits the ring
/// settings of the config when none are committed yet. Runs on every node;
/// acts only while the node leads. Ends with `stop`.
pub async fn leader_duties(
    node: Node,
    leases: Arc<Leases>,
    initial_ring: RingSettings,
    stop: CancellationToken,
) {
    // Leases are checked at least every 250 ms (and twice per beat), and
    // at once when this node's raft role changes (a new leader commits the
    // ring settings without waiting for a tick).
    let mut tick = tokio::time::interval((leases.interval() / 2).min(Duration::from_millis(250)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut views = node.view_watch();
    let mut led_term = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            r = views.changed() => if r.is_err() { return },
        }
        let view = node.view();
        if !view.is_leader() {
            led_term = None;
            continue;
        }
        if led_term != Some(view.term) {
            led_term = Some(view.term);
            leases.reset(Instant::now());
            tracing::info!(term = view.term, "leading: member leases start afresh");
        }
        let state = node.state().borrow().clone();
        if state.ring.is_none() {
            propose(&node, Command::SetRing(initial_ring.clone())).await;
        }
        let verdicts = leases.verdicts(
            state.members.iter().map(|m| {
                (
                    m.id.as_str(),
                    MemberState::try_from(m.state).unwrap_or(MemberState::Unspecified),
                    m.state_reason.as_str(),
                )
            }),
            Instant::now(),
        );
        for (id, to, reason) in verdicts {
            match to {
                MemberState::Offline => tracing::warn!(
                    member = %id,
                    ttl = ?leases.ttl(),
                    "lease expired, marking member offline"
                ),
                _ => tracing::info!(member = %id, "member beats again, marking it online"),
            }
            propose(
                &node,
                Command::SetState(SetStateRequest {
                    id,
                    state: to as i32,
                    reason: reason.to_string(),
                    ..Default::default()
                }),
            )
            .await;
        }
    }
}

async fn propose(node: &Node, command: Command) {
    let cmd = ClusterCommand {
        at_ms: broker_common::unix_now_ms(),
        command: Some(command),
    };
    if let Err(e) = node.propose(cmd).await {
        tracing::warn!(error = %e, "leader duty not committed, will retry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_after_the_ttl_and_revive_on_a_beat() {
        let leases = Leases::new(Duration::from_secs(1), 3);
        assert_eq!(leases.ttl(), Duration::from_secs(3));
        let t0 = Instant::now();
        let members = |s: MemberState| vec![("w1", s, ""), ("w2", MemberState::Draining, "")];
        // first sight starts the lease
        assert!(
            leases
                .verdicts(members(MemberState::Online).into_iter(), t0)
                .is_empty()
        );
        let t3 = t0 + Duration::from_secs(3);
        assert!(
            leases
                .verdicts(members(MemberState::Online).into_iter(), t3)
                .is_empty()
        );
        let t4 = t0 + Duration::from_millis(3_001);
        let v = leases.verdicts(members(MemberState::Online).into_iter(), t4);
        assert_eq!(
            v,
            [
                ("w1".to_string(), MemberState::Offline, LEASE_REASON),
                ("w2".to_string(), MemberState::Offline, LEASE_REASON)
            ]
        );
        // an offline member stays offline without beats, even one whose
        // lease is fresh but was never renewed by a beat of its own...
        assert!(
            leases
                .verdicts([("w1", MemberState::Offline, "lease")].into_iter(), t4)
                .is_empty()
        );
        assert!(
            leases
                .verdicts([("fresh", MemberState::Offline, "")].into_iter(), t4)
                .is_empty()
        );
        // ...and comes back when it beats (w2 is forgotten: not a member)
        leases.beat("w1");
        let now = Instant::now();
        assert_eq!(
            leases.verdicts([("w1", MemberState::Offline, "lease")].into_iter(), now),
            [("w1".to_string(), MemberState::Online, "")]
        );
        // a new leader gives everyone a fresh TTL
        leases.reset(now + Duration::from_secs(10));
        assert!(
            leases
                .verdicts(
                    [("w1", MemberState::Online, "")].into_iter(),
                    now + Duration::from_secs(12)
                )
                .is_empty()
        );
    }

    #[test]
    fn a_member_out_by_health_checks_is_not_revived_by_its_beats() {
        let leases = Leases::new(Duration::from_secs(1), 3);
        let t0 = Instant::now();
        let health = "health: grpc check timed out";
        leases.beat("w1");
        // it beats, but its checks failed: the lease leaves it offline
        assert!(
            leases
                .verdicts([("w1", MemberState::Offline, health)].into_iter(), t0)
                .is_empty()
        );
        // it stops beating too: the lease takes it over, so a beat brings
        // it back once the process is resumed or restarted
        let later = t0 + Duration::from_secs(4);
        assert_eq!(
            leases.verdicts([("w1", MemberState::Offline, health)].into_iter(), later),
            [("w1".to_string(), MemberState::Offline, LEASE_REASON)]
        );
    }
}
