//! How broker services take part in cluster membership: they join
//! cluster-ctl on start, keep their lease alive with heartbeats, follow the
//! committed state through `Watch`, and drain then leave on shutdown.
//!
//! cluster-ctl answers on any of its nodes (a follower forwards changes to
//! the leader), so [`ClusterClient`] simply tries its endpoints in turn.
//!
//! # Layout
//! - [`ClusterClient`]: the `ClusterService` calls, with failover across
//!   cluster-ctl endpoints and retries while a leader is being elected.
//! - [`Membership`]: one process's registration: join, heartbeats, the
//!   watched state, drain and leave.
//! - [`ring_of`]: the ring a committed state describes (writers that are
//!   online), the same on every node.

#![forbid(unsafe_code)]

mod client;
pub mod lifecycle;
mod membership;
pub mod views;

pub use client::{ClusterClient, ClusterError};
pub use membership::{Membership, MembershipOptions, watch_state};

use broker_proto::v1::{ClusterState, Member, MemberRole, MemberState};
use hash_ring::{HashAlgorithm, HashRing, NodeSpec, RingConfig, RingError};

/// The ring settings of `state`, or the defaults when none were committed
/// yet (the router's defaults: xxh3, ADR 0001).
pub fn ring_config(state: &ClusterState) -> RingConfig {
    let mut config = RingConfig {
        hash: HashAlgorithm::Xxh3,
        ..RingConfig::default()
    };
    if let Some(r) = &state.ring {
        if r.vnodes > 0 {
            config.vnodes = r.vnodes;
        }
        if let Ok(h) = r.hash.parse::<HashAlgorithm>() {
            config.hash = h;
        }
    }
    config
}

/// True for a member that owns a share of the ring: a storage-writer that is
/// online (not offline, not draining).
pub fn in_ring(m: &Member) -> bool {
    m.state == MemberState::Online as i32 && m.roles.contains(&(MemberRole::StorageWriter as i32))
}

/// The ring of `state` and, aligned with `ring.nodes()`, the members behind
/// its nodes: the online writers; when none is online, the draining ones
/// (they still serve until they leave, so the last writer of a cluster that
/// is shutting down keeps taking points instead of the data path refusing
/// everything).
pub fn ring_of(state: &ClusterState) -> Result<(HashRing, Vec<Member>), RingError> {
    let mut writers: Vec<&Member> = state.members.iter().filter(|m| in_ring(m)).collect();
    if writers.is_empty() {
        writers = state
            .members
            .iter()
            .filter(|m| {
                m.state == MemberState::Draining as i32
                    && m.roles.contains(&(MemberRole::StorageWriter as i32))
            })
            .collect();
    }
    let ring = HashRing::new(
        ring_config(state),
        writers
            .iter()
            .map(|m| NodeSpec::new(m.id.clone()).with_weight(m.weight.max(1))),
    )?;
    let members = ring
        .nodes()
        .iter()
        .map(|n| {
            (*writers
                .iter()
                .find(|m| m.id == n.id)
                .expect("every ring node is a member"))
            .clone()
        })
        .collect();
    Ok((ring, members))
}

/// Members with `role` that are online, sorted by id.
pub fn online_with_role(state: &ClusterState, role: MemberRole) -> Vec<&Member> {
    state
        .members
        .iter()
        .filter(|m| m.state == MemberState::Online as i32 && m.roles.contains(&(role as i32)))
        .collect()
}

/// Lowercase name of a member state, as brokerctl and the HTTP API print it.
pub fn state_name(state: i32) -> &'static str {
    match MemberState::try_from(state) {
        Ok(MemberState::Online) => "online",
        Ok(MemberState::Offline) => "offline",
        Ok(MemberState::Draining) => "draining",
        _ => "unknown",
    }
}

/// Lowercase name of a member role, as the services name themselves.
pub fn role_name(role: i32) -> &'static str {
    match MemberRole::try_from(role) {
        Ok(MemberRole::IngestGateway) => "ingest-gateway",
        Ok(MemberRole::ShardRouter) => "shard-router",
        Ok(MemberRole::StorageWriter) => "storage-writer",
        Ok(MemberRole::QueryApi) => "query-api",
        _ => "unknown",
    }
}

/// Parses a state name (`online`, `offline`, `draining`).
pub fn parse_state(s: &str) -> Option<MemberState> {
    match s {
        "online" => Some(MemberState::Online),
        "offline" => Some(MemberState::Offline),
        "draining" => Some(MemberState::Draining),
        _ => None,
    }
}

/// Parses a role name as [`role_name`] prints it.
pub fn parse_role(s: &str) -> Option<MemberRole> {
    match s {
        "ingest-gateway" => Some(MemberRole::IngestGateway),
        "shard-router" => Some(MemberRole::ShardRouter),
        "storage-writer" => Some(MemberRole::StorageWriter),
        "query-api" => Some(MemberRole::QueryApi),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::RingSettings;

    fn member(id: &str, roles: &[MemberRole], state: MemberState) -> Member {
        Member {
            id: id.into(),
            roles: roles.iter().map(|r| *r as i32).collect(),
            addr: format!("http://127.0.0.1:1/{id}"),
            state: state as i32,
            weight: 1,
            ..Default::default()
        }
    }

    #[test]
    fn the_ring_holds_online_writers_only() {
        use MemberRole::*;
        use MemberState::*;
        let state = ClusterState {
            epoch: 7,
            members: vec![
                member("w3", &[StorageWriter], Online),
                member("w1", &[StorageWriter, ShardRouter], Online),
                member("w2", &[StorageWriter], Draining),
                member("w4", &[StorageWriter], Offline),
                member("r1", &[ShardRouter], Online),
            ],
            ring: Some(RingSettings {
                vnodes: 20,
                hash: "crc32".into(),
            }),
            applied_index: 9,
        };
        let (ring, members) = ring_of(&state).unwrap();
        let ids: Vec<&str> = ring.nodes().iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["w1", "w3"]);
        assert_eq!(
            members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ids
        );
        assert_eq!(ring.config().vnodes, 20);
        assert_eq!(ring.config().hash, HashAlgorithm::Crc32);
        // With no writer online, the draining ones keep the ring.
        let mut last = state.clone();
        last.members.retain(|m| m.id == "w2" || m.id == "r1");
        let (ring, _) = ring_of(&last).unwrap();
        assert_eq!(ring.nodes()[0].id, "w2");
        assert_eq!(ring.nodes().len(), 1);
        let routers: Vec<&str> = online_with_role(&state, ShardRouter)
            .iter()
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(routers, ["w1", "r1"]);
    }

    #[test]
    fn unset_ring_settings_are_the_defaults() {
        let c = ring_config(&ClusterState::default());
        assert_eq!(c.vnodes, hash_ring::DEFAULT_VNODES);
        assert_eq!(c.hash, HashAlgorithm::Xxh3);
        for s in ["online", "offline", "draining"] {
            assert_eq!(state_name(parse_state(s).unwrap() as i32), s);
        }
        for r in [
            "ingest-gateway",
            "shard-router",
            "storage-writer",
            "query-api",
        ] {
            assert_eq!(role_name(parse_role(r).unwrap() as i32), r);
        }
        assert_eq!(parse_state("gone"), None);
    }
}
