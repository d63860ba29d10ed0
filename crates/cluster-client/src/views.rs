//! The JSON shapes of the cluster, shared by cluster-ctl's HTTP API
//! (`/api/cluster`, `/api/members`, `/api/ring`), `brokerctl --json` and
//! query-api's `/api/cluster` (its `raft`), so all print the same thing.
//! A node's Raft status has one shape in code, the proto `RaftStatus` (the
//! node publishes it, `Status` answers it), and one in JSON,
//! [`ClusterView`].

use crate::{ring_of, role_name, state_name};
use broker_proto::v1::{ClusterState, RaftStatus};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// Raft id of the node that answered.
    pub id: u64,
    pub role: String,
    pub term: u64,
    /// 0 when no leader is known.
    pub leader: u64,
    pub leader_addr: Option<String>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub snapshot_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub peers: BTreeMap<u64, String>,
    pub epoch: u64,
}

impl From<&RaftStatus> for ClusterView {
    fn from(s: &RaftStatus) -> Self {
        let mut voters = s.voters.clone();
        voters.sort_unstable();
        Self {
            id: s.id,
            role: s.role.clone(),
            term: s.term,
            leader: s.leader_id,
            leader_addr: s.leader_addr().map(str::to_string),
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            last_index: s.last_index,
            snapshot_index: s.snapshot_index,
            voters,
            learners: s.learners.clone(),
            peers: s.peers.clone(),
            epoch: s.epoch,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub id: String,
    pub roles: Vec<&'static str>,
    pub addr: String,
    pub admin_addr: String,
    pub state: &'static str,
    pub weight: u32,
    pub joined_at_ms: i64,
    pub state_since_ms: i64,
    /// Why it is in its state when the member did not choose it ("lease",
    /// "health: ..."); empty otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub state_reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MembersView {
    pub epoch: u64,
    pub members: Vec<MemberView>,
}

impl From<&ClusterState> for MembersView {
    fn from(s: &ClusterState) -> Self {
        Self {
            epoch: s.epoch,
            members: s
                .members
                .iter()
                .map(|m| MemberView {
                    id: m.id.clone(),
                    roles: m.roles.iter().map(|r| role_name(*r)).collect(),
                    addr: m.addr.clone(),
                    admin_addr: m.admin_addr.clone(),
                    state: state_name(m.state),
                    weight: m.weight,
                    joined_at_ms: m.joined_at_ms,
                    state_since_ms: m.state_since_ms,
                    state_reason: m.state_reason.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RingNodeView {
    pub id: String,
    pub addr: String,
    pub weight: u32,
    /// Fraction of the hash space the node owns.
    pub share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RingView {
    pub epoch: u64,
    pub vnodes: u32,
    pub hash: &'static str,
    /// Online writers, by id.
    pub nodes: Vec<RingNodeView>,
    /// Set when the committed members do not make a valid ring.
    pub error: Option<String>,
}

impl From<&ClusterState> for RingView {
    fn from(s: &ClusterState) -> Self {
        let config = crate::ring_config(s);
        let (nodes, error) = match ring_of(s) {
            Ok((ring, members)) => (
                ring.shares()
                    .into_iter()
                    .zip(members)
                    .map(|((id, share), m)| RingNodeView {
                        id,
                        addr: m.addr,
                        weight: m.weight.max(1),
                        share,
                    })
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Self {
            epoch: s.epoch,
            vnodes: config.vnodes,
            hash: config.hash.as_str(),
            nodes,
            error,
        }
    }
}
