//! The replicated state machine: committed [`ClusterCommand`]s applied in
//! log order to a [`ClusterState`]. Pure and deterministic: every node
//! applies the same entries to the same state, so the state carries no
//! clock reading of its own (times come from the command).

use broker_proto::v1::{
    ClusterCommand, ClusterSnapshot, ClusterState, Member, MemberState, RingSettings,
    cluster_command::Command,
};
use prost::Message;
use std::collections::BTreeMap;

/// The state and the raft peer addresses, as one node holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateMachine {
    state: ClusterState,
    /// Raft id -> cluster-ctl gRPC address of every voter this node knows.
    peers: BTreeMap<u64, String>,
}

/// Why a command changes nothing or cannot apply; the proposer checks
/// before proposing, so on apply these are no-ops (a race with another
/// change), never errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("member {0:?} is not known")]
    UnknownMember(String),
    #[error("{0}")]
    Invalid(String),
}

impl StateMachine {
    pub fn new(peers: BTreeMap<u64, String>) -> Self {
        Self {
            state: ClusterState::default(),
            peers,
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn peers(&self) -> &BTreeMap<u64, String> {
        &self.peers
    }

    pub fn set_peer(&mut self, id: u64, addr: String) {
        self.peers.insert(id, addr);
    }

    pub fn remove_peer(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.state.members.iter().find(|m| m.id == id)
    }

    /// Checks `cmd` against the current state, as the proposer does before
    /// proposing it.
    pub fn check(&self, cmd: &ClusterCommand) -> Result<(), CommandError> {
        check(&self.state, cmd)
    }

    /// Applies the committed entry at `index`. Returns whether the state
    /// changed; each change bumps the epoch by one.
    pub fn apply(&mut self, index: u64, cmd: &ClusterCommand) -> bool {
        self.state.applied_index = index;
        if self.check(cmd).is_err() {
            return false;
        }
        let at = cmd.at_ms;
        let members = &mut self.state.members;
        let changed = match cmd.command.as_ref().expect("checked") {
            Command::Join(m) => {
                let mut m = m.clone();
                m.state = MemberState::Online as i32;
                m.state_reason.clear();
                m.weight = m.weight.max(1);
                match members.binary_search_by(|x| x.id.cmp(&m.id)) {
                    Ok(i) => {
                        let old = &members[i];
                        m.joined_at_ms = old.joined_at_ms;
                        m.state_since_ms = if old.state == m.state {
                            old.state_since_ms
                        } else {
                            at
                        };
                        let changed = *old != m;
                        members[i] = m;
                        changed
                    }
                    Err(i) => {
                        m.joined_at_ms = at;
                        m.state_since_ms = at;
                        members.insert(i, m);
                        true
                    }
                }
            }
            Command::Leave(id) => {
                members.retain(|m| &m.id != id);
                true
            }
            Command::SetState(s) => {
                let m = members.iter_mut().find(|m| m.id == s.id).expect("checked");
                if m.state == s.state && m.state_reason == s.reason {
                    false
                } else {
                    if m.state != s.state {
                        m.state_since_ms = at;
                    }
                    m.state = s.state;
                    m.state_reason = s.reason.clone();
                    true
                }
            }
            Command::SetRing(r) => {
                let changed = self.state.ring.as_ref() != Some(r);
                self.state.ring = Some(r.clone());
                changed
            }
        };
        if changed {
            self.state.epoch += 1;
        }
        changed
    }

    /// Snapshot data: the state and the peers.
    pub fn snapshot(&self) -> Vec<u8> {
        ClusterSnapshot {
            state: Some(self.state.clone()),
            peers: self.peers.iter().map(|(k, v)| (*k, v.clone())).collect(),
        }
        .encode_to_vec()
    }

    /// Replaces the state with a snapshot's. Empty data (the bootstrap
    /// snapshot) keeps the peers and resets the state.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), prost::DecodeError> {
        if data.is_empty() {
            self.state = ClusterState::default();
            return Ok(());
        }
        let snap = ClusterSnapshot::decode(data)?;
        self.state = snap.state.unwrap_or_default();
        if !snap.peers.is_empty() {
            self.peers = snap.peers.into_iter().collect();
        }
        Ok(())
    }
}

/// Checks `cmd` against `state`: known members for leave and set-state,
/// well-formed members and ring settings.
pub fn check(state: &ClusterState, cmd: &ClusterCommand) -> Result<(), CommandError> {
    let member = |id: &str| state.members.iter().find(|m| m.id == id);
    match &cmd.command {
        None => Err(CommandError::Invalid("empty command".into())),
        Some(Command::Join(m)) => {
            check_member(m)?;
            let others = state.members.iter().filter(|o| o.id != m.id);
            if others.clone().count() + 1 > MAX_MEMBERS {
                return Err(CommandError::Invalid(format!(
                    "the cluster has {MAX_MEMBERS} members, the most it takes; remove one first"
                )));
            }
            let weight: u64 = others.map(|o| u64::from(o.weight.max(1))).sum::<u64>()
                + u64::from(m.weight.max(1));
            check_ring_size(state.ring.as_ref().map_or(0, |r| r.vnodes), weight)
        }
        Some(Command::Leave(id)) => member(id)
            .map(|_| ())
            .ok_or_else(|| CommandError::UnknownMember(id.clone())),
        Some(Command::SetState(s)) => {
            member(&s.id).ok_or_else(|| CommandError::UnknownMember(s.id.clone()))?;
            match MemberState::try_from(s.state) {
                Ok(MemberState::Online | MemberState::Offline | MemberState::Draining) => Ok(()),
                _ => Err(CommandError::Invalid(format!(
                    "state {} is not one of online, offline, draining",
                    s.state
                ))),
            }
        }
        Some(Command::SetRing(r)) => {
            check_ring(r)?;
            let weight = state
                .members
                .iter()
                .map(|o| u64::from(o.weight.max(1)))
                .sum();
            check_ring_size(r.vnodes, weight)
        }
    }
}

/// Members a cluster holds at most.
pub const MAX_MEMBERS: usize = 1_024;
/// Points of the ring at most (vnodes x the members' total weight): every
/// router, writer and query-api holds the ring, about 16 bytes a point.
pub const MAX_RING_POINTS: u64 = 4_000_000;
/// Longest member address.
pub const MAX_ADDR_LEN: usize = 256;

fn check_ring_size(vnodes: u32, total_weight: u64) -> Result<(), CommandError> {
    let points = u64::from(vnodes).saturating_mul(total_weight);
    if points > MAX_RING_POINTS {
        return Err(CommandError::Invalid(format!(
            "the ring would have {points} points (vnodes {vnodes} x total weight {total_weight}), more than {MAX_RING_POINTS}; lower vnodes or weights"
        )));
    }
    Ok(())
}

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(broker_common::host_id::byte)
}

fn check_member(m: &Member) -> Result<(), CommandError> {
    if !id_ok(&m.id) {
        return Err(CommandError::Invalid(format!(
            "member id {:?} must be 1 to 128 letters, digits, '.', '_' or '-'",
            m.id
        )));
    }
    if m.addr.len() > MAX_ADDR_LEN {
        return Err(CommandError::Invalid(format!(
            "member {} addr is {} bytes long, the limit is {MAX_ADDR_LEN}",
            m.id,
            m.addr.len()
        )));
    }
    if !(m.addr.starts_with("http://") || m.addr.starts_with("https://")) {
        return Err(CommandError::Invalid(format!(
            "member {} addr {:?} must be http://host:port",
            m.id, m.addr
        )));
    }
    if m.roles.is_empty() {
        return Err(CommandError::Invalid(format!(
            "member {} has no role",
            m.id
        )));
    }
    if m.weight > hash_ring::MAX_WEIGHT {
        return Err(CommandError::Invalid(format!(
            "member {} weight {} is above {}",
            m.id,
            m.weight,
            hash_ring::MAX_WEIGHT
        )));
    }
    Ok(())
}

fn check_ring(r: &RingSettings) -> Result<(), CommandError> {
    if !(1..=hash_ring::MAX_VNODES).contains(&r.vnodes) {
        return Err(CommandError::Invalid(format!(
            "vnodes must be between 1 and {}, got {}",
            hash_ring::MAX_VNODES,
            r.vnodes
        )));
    }
    if r.hash.parse::<hash_ring::HashAlgorithm>().is_err() {
        return Err(CommandError::Invalid(format!(
            "hash {:?} is not one of crc32, xxh3",
            r.hash
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::{MemberRole, SetStateRequest};

    fn join(id: &str, at: i64) -> ClusterCommand {
        ClusterCommand {
            at_ms: at,
            command: Some(Command::Join(Member {
                id: id.into(),
                roles: vec![MemberRole::StorageWriter as i32],
                addr: format!("http://127.0.0.1:1{id}"),
                weight: 1,
                ..Default::default()
            })),
        }
    }

    fn set(id: &str, state: MemberState, at: i64) -> ClusterCommand {
        ClusterCommand {
            at_ms: at,
            command: Some(Command::SetState(SetStateRequest {
                id: id.into(),
                state: state as i32,
                reason: String::new(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn every_change_bumps_the_epoch_and_no_ops_do_not() {
        let mut sm = StateMachine::default();
        assert!(sm.apply(1, &join("w2", 10)));
        assert!(sm.apply(2, &join("w1", 20)));
        assert_eq!(sm.state().epoch, 2);
        assert_eq!(
            sm.state()
                .members
                .iter()
                .map(|m| &m.id[..])
                .collect::<Vec<_>>(),
            ["w1", "w2"]
        );
        // the same join again changes nothing
        assert!(!sm.apply(3, &join("w1", 30)));
        assert_eq!(sm.state().epoch, 2);
        assert_eq!(sm.state().applied_index, 3);
        assert!(sm.apply(4, &set("w1", MemberState::Offline, 40)));
        assert!(!sm.apply(5, &set("w1", MemberState::Offline, 50)));
        let w1 = sm.member("w1").unwrap();
        assert_eq!((w1.state, w1.joined_at_ms, w1.state_since_ms), (2, 20, 40));
        // rejoin sets it online again and keeps joined_at
        assert!(sm.apply(6, &join("w1", 60)));
        let w1 = sm.member("w1").unwrap();
        assert_eq!((w1.state, w1.joined_at_ms, w1.state_since_ms), (1, 20, 60));
        // unknown member: no-op, and check says why
        let err = sm.check(&set("nope", MemberState::Online, 1)).unwrap_err();
        assert_eq!(err.to_string(), "member \"nope\" is not known");
        assert!(!sm.apply(7, &set("nope", MemberState::Online, 70)));
        let leave = ClusterCommand {
            at_ms: 80,
            command: Some(Command::Leave("w2".into())),
        };
        assert!(sm.apply(8, &leave));
        assert_eq!(sm.state().epoch, 5);
        assert_eq!(sm.state().members.len(), 1);
    }

    #[test]
    fn bad_commands_are_named() {
        let sm = StateMachine::default();
        let mut bad = join("a b", 1);
        assert!(sm.check(&bad).unwrap_err().to_string().contains("\"a b\""));
        if let Some(Command::Join(m)) = &mut bad.command {
            m.id = "ok".into();
            m.addr = "127.0.0.1:1".into();
        }
        assert!(sm.check(&bad).unwrap_err().to_string().contains("addr"));
        let ring = ClusterCommand {
            at_ms: 1,
            command: Some(Command::SetRing(RingSettings {
                vnodes: 10,
                hash: "md5".into(),
            })),
        };
        assert!(sm.check(&ring).unwrap_err().to_string().contains("md5"));
    }

    #[test]
    fn membership_is_bounded() {
        let mut sm = StateMachine::default();
        // A ring of vnodes x total weight above MAX_RING_POINTS is refused
        // before any router has to allocate it.
        let ring = |vnodes| ClusterCommand {
            at_ms: 1,
            command: Some(Command::SetRing(RingSettings {
                vnodes,
                hash: "xxh3".into(),
            })),
        };
        assert!(sm.apply(1, &ring(hash_ring::MAX_VNODES)));
        let mut heavy = join("heavy", 2);
        if let Some(Command::Join(m)) = &mut heavy.command {
            m.weight = hash_ring::MAX_WEIGHT;
        }
        for i in 0..(MAX_RING_POINTS / (u64::from(hash_ring::MAX_VNODES) * 100)) {
            let mut j = heavy.clone();
            if let Some(Command::Join(m)) = &mut j.command {
                m.id = format!("heavy-{i}");
            }
            sm.check(&j).unwrap();
            assert!(sm.apply(2 + i, &j));
        }
        let e = sm.check(&join("one-more", 3)).unwrap_err().to_string();
        assert!(e.contains("more than 4000000"), "{e}");
        // A long address.
        let mut long = join("long", 4);
        if let Some(Command::Join(m)) = &mut long.command {
            m.addr = format!("http://{}", "a".repeat(300));
        }
        let e = sm.check(&long).unwrap_err().to_string();
        assert!(e.contains("bytes long"), "{e}");
        // vnodes raised over existing weights.
        let mut small = StateMachine::default();
        assert!(small.apply(1, &join("w", 1)));
        assert!(small.check(&ring(hash_ring::MAX_VNODES)).is_ok());
    }

    #[test]
    fn snapshot_round_trips_state_and_peers() {
        let mut sm = StateMachine::new([(1, "http://127.0.0.1:1".to_string())].into());
        sm.apply(1, &join("w1", 1));
        let data = sm.snapshot();
        let mut other = StateMachine::default();
        other.restore(&data).unwrap();
        assert_eq!(other, sm);
        other.restore(&[]).unwrap();
        assert_eq!(other.state(), &ClusterState::default());
        assert_eq!(other.peers(), sm.peers());
    }
}
