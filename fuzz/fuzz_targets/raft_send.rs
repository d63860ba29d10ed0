//! Arbitrary bytes as the body of `RaftService.Send`: decoded as the
//! service decodes it (`transport::decode`), then each message is checked
//! by `node::refuse` and, unless refused, stepped into a raft-rs node as
//! the raft task does: a follower and a leader of a 3-voter group with a
//! committed log. raft-rs panics on some messages a forged or buggy peer
//! can send; every such message must be refused before it is stepped. What
//! `node::refuse_content` lets through must be something the node can
//! apply: a snapshot raft-rs would install restores into the state
//! machine (a forged one used to stop the node on every start).
#![no_main]

use broker_proto::v1::RaftMessages;
use cluster_ctl::node::{lost_log, refuse, refuse_content};
use cluster_ctl::state::StateMachine;
use cluster_ctl::transport::{NetFilter, decode};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, MessageType};
use raft::storage::MemStorage;
use raft::{Config, RawNode};

/// Raft id `id` of voters 1..=3, with entries 1..=5 at term 2, 3 committed.
fn node(id: u64) -> RawNode<MemStorage> {
    let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
    {
        let mut w = storage.wl();
        let entries: Vec<Entry> = (1..=5)
            .map(|i| {
                let mut e = Entry::default();
                e.index = i;
                e.term = 2;
                e
            })
            .collect();
        w.append(&entries).expect("append");
        let mut hs = HardState::default();
        hs.term = 2;
        hs.commit = 3;
        w.set_hardstate(hs);
    }
    let config = Config {
        id,
        election_tick: 10,
        heartbeat_tick: 5,
        pre_vote: true,
        check_quorum: true,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    RawNode::new(&config, storage, &logger).expect("a raft node")
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = RaftMessages::decode(data) else {
        return;
    };
    let Ok(msgs) = decode(req, &NetFilter::default()) else {
        return;
    };
    let mut follower = node(2);
    follower.raft.become_follower(2, 1);
    let mut leader = node(1);
    leader.raft.become_candidate();
    leader.raft.become_leader();
    for mut m in msgs {
        for raw in [&mut follower, &mut leader] {
            m.to = raw.raft.id;
            let sm = StateMachine::default();
            // As the node's task does: a heartbeat past the log is stepped
            // with its commit lowered to the last index.
            let mut lowered = m.clone();
            if lost_log(&raw.raft, &mut lowered).is_some() {
                let _ = raw.step(lowered);
            } else if refuse(&raw.raft, &m).is_none() && refuse_content(&raw.raft, &sm, &m).is_ok() {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    StateMachine::default()
                        .restore(&m.get_snapshot().data)
                        .expect("a snapshot that passed the checks restores");
                }
                let _ = raw.step(m.clone());
            }
        }
    }
});
