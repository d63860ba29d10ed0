//! Members of a cluster-ctl cluster that is cut in two: real raft nodes in
//! this process, raft traffic blocked by their transport's partition
//! switch, and the members' own connections to the cut-off node black-holed
//! by a TCP proxy stopped with SIGSTOP (the kernel still accepts on its
//! socket; nothing is forwarded either way), as a network partition leaves
//! them.
//!
//! What must hold: a leader change marks no healthy member offline, and
//! members attached to the cut-off node follow the majority's changes.
//! Times are printed, not asserted.

use broker_proto::v1::{ClusterState, Member, MemberRole, MemberState};
use broker_tests::cluster::CtlCluster;
use cluster_client::{ClusterClient, Membership, MembershipOptions};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Member beats every second: a lease is three of them.
const BEAT: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(3);
const MEMBERS: usize = 3;

/// `tests/tools/tcp_proxy.py` on a free loopback port in front of
/// `target`; SIGSTOP freezes every connection through it, SIGCONT thaws.
struct Proxy {
    child: Child,
    port: u16,
}

impl Proxy {
    fn start(target: &str) -> Self {
        let target_port = target.rsplit(':').next().unwrap().to_string();
        let port = redis_process::free_port().unwrap();
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/tcp_proxy.py"))
            .args([port.to_string(), target_port])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Self { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} proxy");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `MEMBERS` writers, each with its own client of `endpoints` (the first
/// is the one it talks to until it fails).
async fn join_members(endpoints: &[String]) -> Vec<Membership> {
    let mut out = Vec::new();
    for i in 0..MEMBERS {
        let client = ClusterClient::new(endpoints, &Default::default()).unwrap();
        let id = format!("w-{i}");
        out.push(
            Membership::join(
                client,
                MembershipOptions {
                    addr: format!("http://127.0.0.1:9/{id}"),
                    id,
                    roles: vec![MemberRole::StorageWriter],
                    admin_addr: String::new(),
                    weight: 1,
                },
            )
            .await
            .expect("join"),
        );
    }
    out
}

fn offline(s: &ClusterState) -> Vec<String> {
    s.members
        .iter()
        .filter(|m| m.id.starts_with("w-") && m.state != MemberState::Online as i32)
        .map(|m| format!("{} ({})", m.id, m.state_reason))
        .collect()
}

/// Commits a new member through `majority` and waits until every member's
/// watched state has it; returns how long the slowest took.
async fn members_follow(majority: &ClusterClient, members: &[Membership]) -> Duration {
    let t = Instant::now();
    let epoch = majority
        .join(Member {
            id: "after-cut".into(),
            roles: vec![MemberRole::StorageWriter as i32],
            addr: "http://127.0.0.1:9/after-cut".into(),
            weight: 1,
            ..Default::default()
        })
        .await
        .expect("the majority commits")
        .state
        .unwrap()
        .epoch;
    for m in members {
        let deadline = Instant::now() + Duration::from_secs(20);
        while m.state().borrow().epoch < epoch {
            assert!(
                Instant::now() < deadline,
                "member {} still watches epoch {} 20 s after the majority committed {epoch}",
                m.id(),
                m.state().borrow().epoch
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    t.elapsed()
}

/// The leader is cut off from the other nodes and from its members: the
/// majority elects a new one, and over three leases after the cut no
/// member is marked offline (they beat through the other nodes as soon as
/// the old leader stops answering), and the members follow the new
/// leader's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_marks_no_member_offline_and_its_members_follow_the_majority() {
    let mut c = CtlCluster::start(3, BEAT).await;
    let old = c.wait_leader(Duration::from_secs(10)).await;
    let proxy = Proxy::start(&c.endpoint(old));
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != old).collect();
    let mut endpoints = vec![proxy.endpoint()];
    endpoints.extend(others.iter().map(|&i| c.endpoint(i)));
    let members = join_members(&endpoints).await;
    // A few beats through the proxy to the leader.
    tokio::time::sleep(3 * BEAT).await;
    assert!(offline(&c.node(old).state().borrow()).is_empty());

    proxy.signal("STOP");
    c.isolate(old);
    let cut = Instant::now();
    let majority = ClusterClient::new(
        &others.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>(),
        &Default::default(),
    )
    .unwrap();
    let mut new_leader = None;
    while Instant::now() < cut + 3 * LEASE + Duration::from_secs(2) {
        let view = c.node(others[0]).view();
        if new_leader.is_none() && others.contains(&view.leader_id) {
            new_leader = Some((view.leader_id, cut.elapsed()));
        }
        let state = c.node(others[0]).state().borrow().clone();
        let down = offline(&state);
        assert!(
            down.is_empty(),
            "{:.1}s after the leader was cut off the majority marked members offline: {down:?}",
            cut.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, elected) = new_leader.expect("the majority elected a leader");
    let followed = members_follow(&majority, &members).await;
    println!(
        "FIGURE leader {old} cut off: node {leader} leads after {:.1}s, no member offline over {:?}, members saw the new leader's change {:.1}s after it committed",
        elected.as_secs_f64(),
        3 * LEASE,
        followed.as_secs_f64()
    );

    proxy.signal("CONT");
    c.heal();
    c.wait_leader(Duration::from_secs(10)).await;
    drop(members);
    c.stop_all().await;
}

/// A follower is cut off from the other nodes (its members still reach
/// it): it knows no leader, so it stops serving its stale state (Watch and
/// Members are refused), and the
/// members attached to it follow the majority's changes instead of routing
/// on an old ring until the partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_attached_to_a_node_cut_off_with_a_minority_follow_the_majority() {
    let mut c = CtlCluster::start(3, BEAT).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let minority = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let others: Vec<u64> = c.ids().into_iter().filter(|&i| i != minority).collect();
    let mut endpoints = vec![c.endpoint(minority)];
    endpoints.extend(others.iter().map(|&i| c.endpoint(i)));
    let members = join_members(&endpoints).await;
    tokio::time::sleep(2 * BEAT).await;

    c.isolate(minority);
    let cut = Instant::now();
    let majority = ClusterClient::new(
        &others.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>(),
        &Default::default(),
    )
    .unwrap();
    let followed = members_follow(&majority, &members).await;
    let state = c.node(leader).state().borrow().clone();
    assert!(
        offline(&state).is_empty(),
        "members were marked offline: {:?}",
        offline(&state)
    );
    // The cut-off node itself has not moved on, and refuses to tell its
    // stale member list: the caller is sent to another node.
    assert!(c.node(minority).state().borrow().epoch < state.epoch);
    let mut direct = broker_proto::v1::cluster_service_client::ClusterServiceClient::connect(
        c.endpoint(minority),
    )
    .await
    .unwrap();
    let refused = direct
        .members(broker_proto::v1::MembersRequest {})
        .await
        .expect_err("a node without a leader served its member list");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("knows no leader"), "{refused:?}");
    println!(
        "FIGURE node {minority} cut off with a minority: its members followed the majority's change {:.1}s after it committed ({:.1}s after the cut)",
        followed.as_secs_f64(),
        cut.elapsed().as_secs_f64()
    );

    c.heal();
    c.wait_leader(Duration::from_secs(10)).await;
    drop(members);
    c.stop_all().await;
}
