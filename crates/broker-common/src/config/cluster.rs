//! `cluster.*` (how a process takes part in membership) and
//! `cluster_ctl.*` (the raft node of a cluster-ctl).

use super::{check_endpoint, nonzero_duration, positive};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Seed: members beat every second and are offline after 3 missed beats.
pub const DEFAULT_MEMBER_HEARTBEAT: Duration = Duration::from_secs(1);
pub const DEFAULT_LEASE_MISSED_BEATS: u32 = 3;
/// Raft timing (seed): heartbeat about 500 ms, election about 1 s, in ticks
/// of 100 ms.
pub const DEFAULT_RAFT_TICK: Duration = Duration::from_millis(100);
pub const DEFAULT_RAFT_HEARTBEAT_TICKS: usize = 5;
pub const DEFAULT_RAFT_ELECTION_TICKS: usize = 10;
/// Applied entries between two snapshots (the log before one is compacted).
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000;
pub const DEFAULT_RAFT_DATA_DIR: &str = "data/raft";

/// How this process takes part in cluster membership (client side of
/// cluster-ctl).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// cluster-ctl gRPC endpoints (`http://host:port`, any node will do).
    /// Empty: static membership (`router.writers`, epoch 1), no cluster-ctl.
    pub endpoints: Vec<String>,
    /// Where other broker processes reach this one's internal gRPC
    /// services. Empty means `http://` (or `https://`) + `internal_listen`,
    /// or `grpc_listen` when that is unset.
    pub advertise_addr: String,
    /// This writer's relative share of the ring (1 to 100).
    pub weight: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            advertise_addr: String::new(),
            weight: 1,
        }
    }
}

/// A cluster-ctl voter: raft id and the gRPC address of its cluster-ctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftPeer {
    pub id: u64,
    pub addr: String,
}

/// The cluster-ctl service (server side): its raft node and member leases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterCtlConfig {
    /// Raft id of this node, unique among the voters, 1 or more.
    pub id: u64,
    /// The voters a new cluster starts with, this node included (3 or 5
    /// for production). Used only to bootstrap an empty data_dir; later
    /// changes go through `brokerctl` (AddVoter / RemoveVoter). Empty: a
    /// single-node cluster of this node.
    pub peers: Vec<RaftPeer>,
    /// Start empty and wait to be added as a voter by an existing cluster
    /// instead of bootstrapping one from `peers`.
    pub join_existing: bool,
    /// Raft log, hard state and snapshots (redb).
    pub data_dir: String,
    /// One raft tick; heartbeats and elections are counted in ticks.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    pub heartbeat_ticks: usize,
    /// Minimum election timeout in ticks (raft-rs randomises it between
    /// this and twice this).
    pub election_ticks: usize,
    /// Applied entries between snapshots; the log before a snapshot is
    /// compacted.
    pub snapshot_every: u64,
    /// How often members must beat.
    #[serde(with = "humantime_serde")]
    pub member_heartbeat: Duration,
    /// Beats a member may miss before the leader marks it offline.
    pub lease_missed_beats: u32,
    /// When this node's stored raft state cannot be read back (a disk
    /// fault), move `data_dir` aside (`<data_dir>.damaged-<unix secs>`) and
    /// start empty, waiting for the leader to send the state, instead of
    /// staying up not ready. For one damaged node of a cluster that keeps a
    /// quorum without it: what this node had acknowledged is then only on
    /// the others.
    pub resync_damaged: bool,
}

impl Default for ClusterCtlConfig {
    fn default() -> Self {
        Self {
            id: 1,
            peers: Vec::new(),
            join_existing: false,
            data_dir: DEFAULT_RAFT_DATA_DIR.into(),
            tick: DEFAULT_RAFT_TICK,
            heartbeat_ticks: DEFAULT_RAFT_HEARTBEAT_TICKS,
            election_ticks: DEFAULT_RAFT_ELECTION_TICKS,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            member_heartbeat: DEFAULT_MEMBER_HEARTBEAT,
            lease_missed_beats: DEFAULT_LEASE_MISSED_BEATS,
            resync_damaged: false,
        }
    }
}

impl ClusterConfig {
    /// Reports every problem of `cluster.*` to `bad`, with its key.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        for (i, e) in self.endpoints.iter().enumerate() {
            if let Err(e) = check_endpoint(e) {
                bad(&format!("cluster.endpoints[{i}]"), e);
            }
        }
        if !self.advertise_addr.is_empty()
            && let Err(e) = check_endpoint(&self.advertise_addr)
        {
            bad("cluster.advertise_addr", e);
        }
        if !(1..=100).contains(&self.weight) {
            bad(
                "cluster.weight",
                format!("must be between 1 and 100, got {}", self.weight),
            );
        }
    }
}

impl ClusterCtlConfig {
    /// Reports every problem of `cluster_ctl.*` to `bad`, with its key.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if self.id == 0 {
            bad(
                "cluster_ctl.id",
                "must be 1 or more (0 is raft's none)".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.id == 0 {
                bad(
                    &format!("cluster_ctl.peers[{i}].id"),
                    "must be 1 or more".into(),
                );
            }
            if !ids.insert(peer.id) {
                bad(
                    &format!("cluster_ctl.peers[{i}].id"),
                    format!("duplicate raft id {}", peer.id),
                );
            }
            if let Err(e) = check_endpoint(&peer.addr) {
                bad(&format!("cluster_ctl.peers[{i}].addr"), e);
            }
        }
        if !self.peers.is_empty() && !ids.contains(&self.id) && !self.join_existing {
            bad(
                "cluster_ctl.peers",
                format!(
                    "does not list this node (cluster_ctl.id {}); list every voter, this one included",
                    self.id
                ),
            );
        }
        nonzero_duration(bad, "cluster_ctl.tick", self.tick);
        positive(bad, "cluster_ctl.heartbeat_ticks", self.heartbeat_ticks);
        if self.election_ticks <= self.heartbeat_ticks {
            bad(
                "cluster_ctl.election_ticks",
                format!(
                    "{} must be larger than cluster_ctl.heartbeat_ticks ({})",
                    self.election_ticks, self.heartbeat_ticks
                ),
            );
        }
        if self.snapshot_every == 0 {
            bad(
                "cluster_ctl.snapshot_every",
                "must be greater than zero".into(),
            );
        }
        nonzero_duration(bad, "cluster_ctl.member_heartbeat", self.member_heartbeat);
        if self.lease_missed_beats == 0 {
            bad(
                "cluster_ctl.lease_missed_beats",
                "must be greater than zero".into(),
            );
        }
    }
}
