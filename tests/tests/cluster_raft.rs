//! cluster-ctl as a Raft cluster: real raft nodes over loopback gRPC, each
//! with its log on disk.
//!
//! Figures (leader failover times) are printed, not asserted: speed is for
//! benchmarks; these tests assert what must hold (a new leader commits, no
//! committed change is lost, the minority cannot commit).

use broker_proto::v1::{ClusterState, Member, MemberRole, MemberState, RingSettings};
use broker_tests::cluster::CtlCluster;
use cluster_client::ClusterClient;
use std::time::{Duration, Instant};

/// The members these tests join never beat; a long heartbeat keeps the
/// leader from marking them offline in the middle of a test (lease expiry
/// is covered by the membership end-to-end test).
const NO_LEASE_EXPIRY: Duration = Duration::from_secs(600);

fn member(id: &str) -> Member {
    Member {
        id: id.into(),
        roles: vec![MemberRole::StorageWriter as i32],
        addr: format!("http://127.0.0.1:9/{id}"),
        weight: 1,
        ..Default::default()
    }
}

fn ids(state: &ClusterState) -> Vec<String> {
    state.members.iter().map(|m| m.id.clone()).collect()
}

/// Waits until every running node has applied `epoch` (or more) and they
/// all hold the same state; returns it.
async fn converged(c: &CtlCluster, epoch: u64, timeout: Duration) -> ClusterState {
    let deadline = Instant::now() + timeout;
    loop {
        let states: Vec<ClusterState> = c
            .running()
            .iter()
            .map(|&id| {
                let mut s = (**c.node(id).state().borrow()).clone();
                s.applied_index = 0;
                s
            })
            .collect();
        if states.iter().all(|s| s.epoch >= epoch && *s == states[0]) {
            return states[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not converge on epoch {epoch} within {timeout:?}: {:?}",
            states.iter().map(|s| (s.epoch, ids(s))).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Leader election; a follower's proposal is forwarded and committed;
/// killing the leader ten times: each time a new leader commits, and no
/// committed change is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_every_committed_change() {
    let mut c = CtlCluster::start(3, NO_LEASE_EXPIRY).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();

    // A follower takes the proposal and forwards it.
    let r = c.client_of(follower).join(member("w-0")).await.unwrap();
    let epoch0 = r.state.unwrap().epoch;
    assert!(epoch0 >= 1);
    assert_eq!(c.node(follower).view().leader_id, leader);
    converged(&c, epoch0, Duration::from_secs(5)).await;

    let client = c.client();
    let mut failovers = Vec::new();
    let mut committed = vec!["w-0".to_string()];
    for k in 1..=10 {
        let old = c.wait_leader(Duration::from_secs(10)).await;
        let killed_at = Instant::now();
        c.stop(old).await;
        // The first change the survivors commit after the kill.
        let id = format!("w-{k}");
        let state = client.join(member(&id)).await.unwrap().state.unwrap();
        failovers.push(killed_at.elapsed());
        committed.push(id);
        let new = c.wait_leader(Duration::from_secs(10)).await;
        assert_ne!(new, old, "kill {k}: the stopped node cannot lead");
        for id in &committed {
            assert!(
                ids(&state).contains(id),
                "kill {k}: {id} lost: {:?}",
                ids(&state)
            );
        }
        c.restart(old).await;
        converged(&c, state.epoch, Duration::from_secs(10)).await;
    }
    let state = converged(&c, 0, Duration::from_secs(10)).await;
    let mut want = committed.clone();
    want.sort();
    assert_eq!(ids(&state), want, "every committed join is in the state");
    let max = *failovers.iter().max().unwrap();
    let med = median(&mut failovers);
    println!(
        "FIGURE leader failover (kill -> next change committed), 10 kills: median {:.0} ms, max {:.0} ms",
        med.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    c.stop_all().await;
}

/// A node cut off from the others (here the leader) cannot commit; the
/// majority elects a leader and commits; after healing every node holds the
/// majority's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_and_converges_after_healing() {
    let mut c = CtlCluster::start(3, NO_LEASE_EXPIRY).await;
    let old = c.wait_leader(Duration::from_secs(10)).await;
    let before = c.client().join(member("before")).await.unwrap();
    let before_epoch = before.state.unwrap().epoch;
    // Wait for the leader's own first entry (the ring settings) too, so
    // nothing is in flight when the partition starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c
        .running()
        .iter()
        .all(|&id| c.node(id).state().borrow().ring.is_some())
    {
        assert!(Instant::now() < deadline, "ring settings not committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_epoch = converged(&c, before_epoch, Duration::from_secs(5))
        .await
        .epoch;

    c.isolate(old);
    // The isolated node cannot commit: its proposal times out or finds no
    // leader; the state it serves does not move.
    let err = c
        .client_of(old)
        .join(member("minority"))
        .await
        .expect_err("the minority must not commit");
    println!("minority refusal: {err}");
    assert!(
        matches!(err, cluster_client::ClusterError::Unavailable { .. }),
        "{err}"
    );
    // Cut off, it knows no leader, and its /ready says so (503).
    let ready = internal_clients::AdminClient::new(
        &format!("http://{}", c.http(old)),
        Duration::from_secs(5),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ready.get_text("/ready").await {
            Err(e) if e.status() == Some(503) => break,
            r => assert!(
                Instant::now() < deadline,
                "the isolated node still reports ready: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.node(old).state().borrow().epoch, before_epoch);

    // The majority side elects a new leader and commits.
    let majority: Vec<u64> = c.ids().into_iter().filter(|&i| i != old).collect();
    let majority_client = ClusterClient::new(
        &majority.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>(),
        &c.client_security(),
    )
    .unwrap();
    let after = majority_client.join(member("majority")).await.unwrap();
    let after_state = after.state.unwrap();
    assert!(after_state.epoch > before_epoch);
    assert!(!ids(&after_state).contains(&"minority".to_string()));
    assert!(majority.contains(&c.node(majority[0]).view().leader_id));

    c.heal();
    let state = converged(&c, after_state.epoch, Duration::from_secs(10)).await;
    assert!(ids(&state).contains(&"majority".to_string()));
    assert!(
        !ids(&state).contains(&"minority".to_string()),
        "the minority's proposal must never commit: {:?}",
        ids(&state)
    );
    c.wait_leader(Duration::from_secs(10)).await;
    c.stop_all().await;
}

/// Stop all three nodes and start them again from disk: the same state and
/// epoch, including after log compaction (snapshot every 50 entries here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_from_disk_keeps_state_and_epoch() {
    let mut c = CtlCluster::start(3, NO_LEASE_EXPIRY).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let client = c.client();
    // Enough changes to take snapshots and compact the log.
    for i in 0..40 {
        let id = format!("w-{i}");
        client.join(member(&id)).await.unwrap();
        client.set_state(&id, MemberState::Draining).await.unwrap();
    }
    client.leave("w-0", "").await.unwrap();
    client
        .set_ring(RingSettings {
            vnodes: 64,
            hash: "crc32".into(),
        })
        .await
        .unwrap();
    let before = converged(&c, 0, Duration::from_secs(10)).await;
    assert_eq!(before.members.len(), 39);
    let snapshot_index = c.node(1).view().snapshot_index;
    assert!(
        snapshot_index > 1,
        "the log was compacted (snapshot at {snapshot_index})"
    );

    c.stop_all().await;
    for id in c.ids() {
        c.restart(id).await;
    }
    c.wait_leader(Duration::from_secs(10)).await;
    let after = converged(&c, before.epoch, Duration::from_secs(10)).await;
    assert_eq!(
        after, before,
        "same members, ring and epoch after the restart"
    );
    assert_eq!(after.ring.as_ref().unwrap().vnodes, 64);
    // And the cluster still commits.
    let next = client.join(member("after-restart")).await.unwrap();
    assert_eq!(next.state.unwrap().epoch, before.epoch + 1);
    c.stop_all().await;
}

/// A fourth voter added at run time catches up (by snapshot) and votes; a
/// voter removed at run time (the leader, which hands over first) leaves
/// the configuration, and the cluster keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_are_added_and_removed_at_run_time() {
    let mut c = CtlCluster::start(3, NO_LEASE_EXPIRY).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let client = c.client();
    for i in 0..60 {
        client.join(member(&format!("w-{i}"))).await.unwrap();
    }
    let (id, addr) = c.spawn_joiner().await;
    assert_eq!(id, 4);
    let status = client.add_voter(id, &addr).await.unwrap();
    let mut voters = status.voters.clone();
    voters.sort();
    assert_eq!(voters, [1, 2, 3, 4]);
    let state = converged(&c, 60, Duration::from_secs(10)).await;
    assert_eq!(state.members.len(), 60, "the new voter caught up");
    // Its raft view is published after the state it applied: wait for it
    // rather than race it (this flaked under a loaded CI machine).
    let mut view = c.node(4).view_watch();
    let voters = tokio::time::timeout(
        Duration::from_secs(10),
        view.wait_for(|v| v.voters.len() == 4),
    )
    .await
    .map(|v| v.map(|v| v.voters.len()).unwrap_or(0))
    .unwrap_or_else(|_| c.node(4).view().voters.len());
    assert_eq!(voters, 4, "node 4 sees the four voters");

    // Remove the leader itself: it hands leadership over, the client
    // retries, and the removal commits under the new leader.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let status = client.remove_voter(leader).await.unwrap();
    let mut voters = status.voters.clone();
    voters.sort();
    let want: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&v| v != leader).collect();
    assert_eq!(voters, want);
    c.stop(leader).await;
    let client = ClusterClient::new(
        &want.iter().map(|&i| c.endpoint(i)).collect::<Vec<_>>(),
        &c.client_security(),
    )
    .unwrap();
    let r = client.join(member("after-removal")).await.unwrap();
    assert_eq!(r.state.unwrap().members.len(), 61);
    let new = c.wait_leader(Duration::from_secs(10)).await;
    assert!(want.contains(&new));
    for id in c.running() {
        let mut v = c.node(id).view().voters.clone();
        v.sort();
        assert_eq!(v, want, "node {id} sees the new configuration");
    }
    // The configuration and the peers' addresses survive a full restart,
    // the added voter's included (it was never in any config file).
    let before = converged(&c, 0, Duration::from_secs(10)).await;
    c.stop_all().await;
    for &id in &want {
        c.restart(id).await;
    }
    c.wait_leader(Duration::from_secs(10)).await;
    assert_eq!(
        converged(&c, before.epoch, Duration::from_secs(10)).await,
        before
    );
    for id in c.running() {
        let mut v = c.node(id).view().voters.clone();
        v.sort();
        assert_eq!(v, want, "node {id} restarted with the new configuration");
        assert_eq!(
            c.node(id).view().peers.keys().copied().collect::<Vec<_>>(),
            want,
            "node {id} knows every voter's address"
        );
    }
    c.stop_all().await;
}

/// The HTTP management API of every node: raft role, term, leader, commit
/// index and voters; the members; the ring with each writer's share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_reports_raft_members_and_ring() {
    let mut c = CtlCluster::start(3, NO_LEASE_EXPIRY).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let client = c.client();
    for id in ["w-a", "w-b", "w-c"] {
        client.join(member(id)).await.unwrap();
    }
    client
        .set_state("w-c", MemberState::Draining)
        .await
        .unwrap();
    let state = converged(&c, 0, Duration::from_secs(10)).await;
    let get = |id: u64, path: &'static str| {
        let base = format!("http://{}", c.http(id));
        async move {
            let admin = internal_clients::AdminClient::new(&base, Duration::from_secs(5)).unwrap();
            let text = admin.get_text(path).await.unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        }
    };
    for id in c.ids() {
        let ready = internal_clients::AdminClient::new(
            &format!("http://{}", c.http(id)),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(
            ready.get_text("/ready").await.is_ok(),
            "node {id} knows a leader"
        );
        let cluster = get(id, "/api/cluster").await;
        assert_eq!(cluster["id"], id);
        assert_eq!(cluster["leader"], leader, "{cluster}");
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(cluster["role"], role, "{cluster}");
        assert!(cluster["term"].as_u64().unwrap() >= 1);
        assert!(cluster["commit_index"].as_u64().unwrap() >= 5);
        assert_eq!(cluster["voters"], serde_json::json!([1, 2, 3]));
        assert_eq!(cluster["epoch"], state.epoch);

        let members = get(id, "/api/members").await;
        assert_eq!(members["epoch"], state.epoch);
        let states: Vec<(String, String)> = members["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    m["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("w-a".to_string(), "online".to_string()),
                ("w-b".to_string(), "online".to_string()),
                ("w-c".to_string(), "draining".to_string())
            ]
        );

        // The draining writer owns nothing; the two others share the ring.
        let ring = get(id, "/api/ring").await;
        assert_eq!(ring["vnodes"], 500);
        assert_eq!(ring["hash"], "xxh3");
        let nodes = ring["nodes"].as_array().unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["w-a", "w-b"]);
        let total: f64 = nodes.iter().map(|n| n["share"].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-9, "{ring}");
        for n in nodes {
            let share = n["share"].as_f64().unwrap();
            assert!((0.35..0.65).contains(&share), "{ring}");
        }
    }
    c.stop_all().await;
}
