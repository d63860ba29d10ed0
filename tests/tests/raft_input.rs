//! Raft input from a hostile or buggy peer, against real cluster-ctl nodes
//! over real gRPC: what raft-rs would panic on and what it would persist
//! but the node could not apply or must not believe are dropped before
//! raft-rs sees them.

use broker_proto::v1::raft_service_client::RaftServiceClient;
use broker_proto::v1::{ClusterSnapshot, ClusterState, Member, MemberRole, RaftMessages};
use broker_tests::cluster::CtlCluster;
use prost::Message as _;
use raft::eraftpb::{Message, MessageType, Snapshot};
use std::time::{Duration, Instant};

async fn send(cluster: &CtlCluster, to: u64, m: &Message) {
    let bytes = protobuf::Message::write_to_bytes(m).unwrap();
    RaftServiceClient::connect(cluster.endpoint(to))
        .await
        .unwrap()
        .send(RaftMessages {
            messages: vec![bytes],
        })
        .await
        .expect("the message is taken (and dropped)");
}

/// Joins a member through the cluster and waits until node `id` applied it.
async fn commits_reach(cluster: &CtlCluster, id: u64, member: &str) {
    let joined = cluster
        .client()
        .join(Member {
            id: member.into(),
            roles: vec![MemberRole::StorageWriter as i32],
            addr: "http://127.0.0.1:9".into(),
            weight: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let index = joined.state.unwrap().applied_index;
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.node(id).view().applied_index < index {
        assert!(
            Instant::now() < deadline,
            "node {id} stopped applying: {:?}",
            cluster.node(id).view()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raft message raft-rs would panic on (a heartbeat committing past the
/// follower's last index; a leader never sends one) is dropped before it
/// is stepped: the follower keeps applying what the cluster commits.
/// Before, its raft task panicked and the node served on, dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_message_raft_rs_would_panic_on_does_not_kill_the_node() {
    let cluster = CtlCluster::start(3, Duration::from_secs(1)).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let follower = cluster.ids().into_iter().find(|&i| i != leader).unwrap();
    let view = cluster.node(follower).view();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = leader;
    m.to = follower;
    m.term = view.term;
    m.commit = view.last_index + 1_000_000;
    send(&cluster, follower, &m).await;
    commits_reach(&cluster, follower, "after-bad-heartbeat").await;
}

/// A snapshot message as an attacker sends it: a term ahead, far past the
/// log, voters 1..=3, with `data`.
fn forged_snapshot(from: u64, to: u64, term: u64, index: u64, data: Vec<u8>) -> Message {
    let mut snap = Snapshot {
        data: data.into(),
        ..Default::default()
    };
    let meta = snap.mut_metadata();
    (meta.index, meta.term) = (index, term);
    meta.mut_conf_state().voters = vec![1, 2, 3];
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    (m.from, m.to, m.term) = (from, to, term);
    m.set_snapshot(snap);
    m
}

/// Forged snapshots: 64 bytes of 0xFF claiming to come from the leader a
/// term ahead (before: the node logged "raft storage failed … invalid
/// varint", stopped, and stopped again on every restart, the snapshot
/// being on disk), and a well-formed cluster state (epoch 999, a member
/// `evil`) from a raft id that is no voter and from the leader's id a term
/// ahead (before: installed, the node became leader and routers sent
/// writes to `evil`). Each is dropped: the node keeps applying, its state
/// never holds `evil`, and it restarts from its data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_snapshots_are_dropped_before_they_are_persisted() {
    let mut cluster = CtlCluster::start(3, Duration::from_secs(1)).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let victim = cluster.ids().into_iter().find(|&i| i != leader).unwrap();
    let view = cluster.node(victim).view();
    let evil = ClusterSnapshot {
        state: Some(ClusterState {
            epoch: 999,
            members: vec![Member {
                id: "evil".into(),
                roles: vec![MemberRole::StorageWriter as i32],
                addr: "http://192.0.2.66:9000".into(),
                weight: 100,
                ..Default::default()
            }],
            ..Default::default()
        }),
        peers: [1u64, 2, 3]
            .into_iter()
            .map(|i| (i, format!("http://192.0.2.{i}:9000")))
            .collect(),
    }
    .encode_to_vec();
    let far = view.last_index + 1_000;
    for m in [
        forged_snapshot(leader, victim, view.term + 1, far, vec![0xFF; 64]),
        forged_snapshot(leader, victim, view.term, far, vec![0xFF; 64]),
        forged_snapshot(9, victim, view.term + 1, far, evil.clone()),
        forged_snapshot(leader, victim, view.term + 1, far, evil.clone()),
    ] {
        send(&cluster, victim, &m).await;
    }
    commits_reach(&cluster, victim, "after-forged-snapshots").await;
    let holds_evil = |c: &CtlCluster| {
        c.node(victim)
            .state()
            .borrow()
            .members
            .iter()
            .any(|m| m.id == "evil")
    };
    assert!(!holds_evil(&cluster), "the forged state was installed");
    assert!(cluster.node(victim).state().borrow().epoch < 999);
    assert_eq!(cluster.wait_leader(Duration::from_secs(20)).await, leader);
    // Nothing of it on disk: the node starts again and keeps applying.
    cluster.stop(victim).await;
    cluster.restart(victim).await;
    commits_reach(&cluster, victim, "after-restart").await;
    assert!(!holds_evil(&cluster), "the forged state was persisted");
}

/// A well-formed append in the leader's name, from an address that is not
/// the leader's (127.0.0.2; the cluster runs on 127.0.0.1): a command
/// joining a member `forged`, at the next index and the current term,
/// committed. Before, the follower took it as the leader's and applied
/// it: its state diverged from the cluster's for good (raft takes an
/// entry with the leader's index and term as the leader's own). Now
/// messages are taken only from the address the claimed voter's name
/// resolves to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_in_a_voters_name_from_elsewhere_are_dropped() {
    use broker_proto::v1::{ClusterCommand, cluster_command::Command};
    use raft::eraftpb::Entry;
    let cluster = CtlCluster::start(3, Duration::from_secs(1)).await;
    let leader = cluster.wait_leader(Duration::from_secs(20)).await;
    let victim = cluster.ids().into_iter().find(|&i| i != leader).unwrap();
    let view = cluster.node(victim).view();
    let mut e = Entry::default();
    (e.index, e.term) = (view.last_index + 1, view.term);
    e.data = ClusterCommand {
        at_ms: 1,
        command: Some(Command::Join(Member {
            id: "forged".into(),
            roles: vec![MemberRole::StorageWriter as i32],
            addr: "http://192.0.2.66:9000".into(),
            weight: 1,
            ..Default::default()
        })),
    }
    .encode_to_vec()
    .into();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    (m.from, m.to, m.term) = (leader, victim, view.term);
    (m.index, m.log_term, m.commit) = (view.last_index, view.term, view.last_index + 1);
    m.entries = vec![e].into();
    let channel = tonic::transport::Endpoint::from_shared(cluster.endpoint(victim))
        .unwrap()
        .local_address(Some([127, 0, 0, 2].into()))
        .connect()
        .await
        .unwrap();
    RaftServiceClient::new(channel)
        .send(RaftMessages {
            messages: vec![protobuf::Message::write_to_bytes(&m).unwrap()],
        })
        .await
        .expect("the call is answered (its messages dropped)");
    // The cluster's next entry takes that index: the victim must apply
    // the cluster's, not the forged one (before: it kept the forged entry
    // as the leader's and never learned of the member joined there).
    commits_reach(&cluster, victim, "after-forged-append").await;
    let members = |id: u64| -> Vec<String> {
        let state = cluster.node(id).state();
        let s = state.borrow();
        s.members.iter().map(|m| m.id.clone()).collect()
    };
    let (ours, theirs) = (members(victim), members(leader));
    assert!(
        ours.contains(&"after-forged-append".to_string()),
        "{ours:?}"
    );
    assert!(!ours.contains(&"forged".to_string()), "{ours:?}");
    assert_eq!(ours, theirs);
}

/// Three cluster-ctl processes as `broker run --service cluster-ctl` runs
/// them: (listeners, config) per node, peers listed by address.
async fn three_ctl_configs() -> Vec<(broker_common::Listeners, broker_common::BrokerConfig)> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(broker_common::Listeners::loopback().await.unwrap());
    }
    let peers: Vec<broker_common::config::RaftPeer> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| broker_common::config::RaftPeer {
            id: i as u64 + 1,
            addr: format!("http://{}", l.grpc_addr()),
        })
        .collect();
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = broker_common::BrokerConfig {
                node_id: format!("ctl-{}", i + 1),
                ..Default::default()
            };
            c.cluster_ctl.id = i as u64 + 1;
            c.cluster_ctl.peers = peers.clone();
            c.cluster_ctl.data_dir = broker_tests::scratch_dir("broker-raft-damaged-")
                .display()
                .to_string();
            (l, c)
        })
        .collect()
}

fn run_ctl(l: broker_common::Listeners, c: broker_common::BrokerConfig) -> broker_tests::Running {
    broker_tests::Running::start_on(l, c, |c, l, s| {
        broker::run(c, &[broker_common::Service::ClusterCtl], l, s)
    })
}

/// Polls `GET /ready` on `addr` until its status is `want`; the body.
async fn ready_becomes(addr: std::net::SocketAddr, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = broker_tests::try_http(addr, "GET", "/ready", "").await;
        if let Some((status, body)) = &answer
            && *status == want
        {
            return body.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "/ready at {addr} did not become {want}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node whose stored raft state cannot be read back (here its stored
/// peer table, as a disk fault or a bad write would leave it) stays up
/// not ready, naming its data_dir and the repair, and answers its
/// cluster-ctl calls UNAVAILABLE with the same (clients move on to the
/// other nodes), instead of exiting on every restart as it did. Started
/// once with `cluster_ctl.resync_damaged`, it moves the directory aside,
/// gets the state from the leader and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_keeps_the_node_up_not_ready_until_it_resyncs() {
    let configs = three_ctl_configs().await;
    let endpoints: Vec<String> = configs
        .iter()
        .map(|(l, _)| format!("http://{}", l.grpc_addr()))
        .collect();
    let victim_config = configs[2].1.clone();
    let mut nodes: Vec<_> = configs.into_iter().map(|(l, c)| run_ctl(l, c)).collect();
    let client = cluster_client::ClusterClient::new(
        &endpoints,
        &broker_common::security::ClientSecurity::default(),
    )
    .unwrap();
    let join = |id: &str| Member {
        id: id.into(),
        roles: vec![MemberRole::StorageWriter as i32],
        addr: "http://127.0.0.1:9".into(),
        weight: 1,
        ..Default::default()
    };
    client.join(join("before-damage")).await.unwrap();
    ready_becomes(nodes[2].http, 200, Duration::from_secs(20)).await;

    // Stop node 3 and damage what it stored.
    let victim = nodes.pop().unwrap();
    let (grpc, http) = (victim.grpc, victim.http);
    victim.stop().await;
    let data_dir = std::path::PathBuf::from(&victim_config.cluster_ctl.data_dir);
    {
        let store = cluster_ctl::storage::RaftStore::open(&data_dir).unwrap();
        store.set_meta("peers", b"\xff not the peer table").unwrap();
    }

    // Up, not ready, refusing with the repair.
    let damaged = run_ctl(
        broker_common::Listeners::bind(grpc, http).await.unwrap(),
        victim_config.clone(),
    );
    let body = ready_becomes(http, 503, Duration::from_secs(10)).await;
    assert!(body.contains(&data_dir.display().to_string()), "{body}");
    assert!(body.contains("resync_damaged"), "{body}");
    let (status, _) = broker_tests::http(http, "GET", "/health", "").await;
    assert_eq!(status, 200, "the process is alive");
    let refused = broker_proto::v1::cluster_service_client::ClusterServiceClient::connect(format!(
        "http://{grpc}"
    ))
    .await
    .unwrap()
    .members(broker_proto::v1::MembersRequest {})
    .await
    .expect_err("a damaged node does not answer from its state");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("resync_damaged"), "{refused:?}");
    // The two others still commit, and clients that list it move on.
    client.join(join("while-damaged")).await.unwrap();

    // Resync: moved aside, state from the leader, ready again.
    damaged.stop().await;
    let mut resync = victim_config;
    resync.cluster_ctl.resync_damaged = true;
    let healed = run_ctl(
        broker_common::Listeners::bind(grpc, http).await.unwrap(),
        resync,
    );
    ready_becomes(http, 200, Duration::from_secs(30)).await;
    let aside: Vec<_> = std::fs::read_dir(data_dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&*data_dir.file_name().unwrap().to_string_lossy())
                && n.contains(".damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged directory was kept aside");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state = broker_proto::v1::cluster_service_client::ClusterServiceClient::connect(
            format!("http://{grpc}"),
        )
        .await
        .unwrap()
        .members(broker_proto::v1::MembersRequest {})
        .await;
        if let Ok(s) = &state
            && s.get_ref().members.iter().any(|m| m.id == "while-damaged")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resynced node never caught up: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    healed.stop().await;
    for n in nodes {
        n.stop().await;
    }
}
