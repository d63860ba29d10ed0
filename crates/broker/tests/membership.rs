//! Membership end to end, with real processes on loopback: three
//! cluster-ctl raft nodes, writers, a router and a gateway (each `broker run
//! --service X`), all learning the ring from cluster-ctl, none configured
//! with another's address. While a steady load runs:
//!
//! 1. a third writer starts and joins: its share of the ring moves to it;
//! 2. a writer is killed with `kill -9`: its lease expires, cluster-ctl
//!    marks it offline through Raft, and its share goes to the others;
//! 3. it starts again and is marked online;
//! 4. the third writer gets SIGTERM: it drains (routers stop sending to it),
//!    finishes and leaves the cluster.
//!
//! Afterwards every point the load generator saw acked must be in Redis.
//! The figures (join to first batch, death to offline, shares) are
//! printed, not asserted.

mod common;

use broker_tests::durable_redis;

use broker_proto::v1::{ClusterState, MemberState};
use cluster_client::ClusterClient;
use cluster_client::views::RingView;
use common::{member_state, steady_load, until, verify};
use std::time::{Duration, Instant};

const HOSTS: usize = 200;
const METRICS: usize = 8;

/// `broker_writer_points_total` of the writer whose admin port is `http`
/// (0 while it does not answer).
async fn points_written(http: u16) -> u64 {
    broker_tests::try_scrape(([127, 0, 0, 1], http).into())
        .await
        .and_then(|text| broker_tests::sample(&text, "broker_writer_points_total"))
        .map_or(0, |v| v as u64)
}

fn print_ring(label: &str, s: &ClusterState) {
    let ring = RingView::from(s);
    let shares: Vec<String> = ring
        .nodes
        .iter()
        .map(|n| format!("{} {:.1}%", n.id, n.share * 100.0))
        .collect();
    println!(
        "FIGURE ring {label} (epoch {}, {} vnodes, {}): {}",
        ring.epoch,
        ring.vnodes,
        ring.hash,
        shares.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ring_follows_membership_under_load_and_loses_nothing() {
    let redis = durable_redis();
    let dir = tempfile::tempdir().unwrap();
    // Three cluster-ctl nodes, two of three writers, a router and a
    // gateway, all learning the ring from cluster-ctl.
    let mut c = common::sandbox()
        .ctl(3)
        .writers(3)
        .writers_started(2)
        .routers(1)
        .gateways(1)
        .configure(|c| {
            c.writer.redis_timeout = Duration::from_secs(2);
            c.router.write_timeout = Duration::from_secs(5);
            c.router.retry.max_retries = 2;
            c.router.retry.initial_backoff = Duration::from_millis(200);
            c.router.retry.max_backoff = Duration::from_secs(1);
            c.gateway.forward_timeout = Duration::from_secs(15);
        })
        .build(&redis.url(), dir.path());
    c.start_all().await;
    let client = ClusterClient::new(&c.endpoints, &Default::default()).unwrap();
    let (_, s) = until(
        &client,
        "two writers and a router online",
        Duration::from_secs(30),
        |s| {
            ["writer-0", "writer-1", "router", "gateway"]
                .iter()
                .all(|id| member_state(s, id) == Some(MemberState::Online))
        },
    )
    .await;
    print_ring("with 2 writers", &s);

    let (load, timeline) = steady_load(
        c.gateway_endpoints(),
        HOSTS,
        METRICS,
        Duration::from_secs(28),
    );
    // Each step waits for about 3 s of the load to be acked since the last.
    let flowing = || timeline.acked_more(6_000, Duration::from_secs(30));
    flowing().await;

    // 1. A third writer joins under load.
    let w2_http = c.writers[2].http();
    c.writers[2].start().await;
    let (_, s) = until(&client, "writer-2 joins", Duration::from_secs(10), |s| {
        member_state(s, "writer-2") == Some(MemberState::Online)
    })
    .await;
    let joined = Instant::now();
    print_ring("with 3 writers", &s);
    let share = RingView::from(&s)
        .nodes
        .iter()
        .find(|n| n.id == "writer-2")
        .map(|n| n.share)
        .expect("writer-2 is in the ring");
    assert!(
        (0.15..0.5).contains(&share),
        "writer-2 owns {share} of the ring"
    );
    let deadline = joined + Duration::from_secs(10);
    while points_written(w2_http).await == 0 {
        assert!(
            Instant::now() < deadline,
            "writer-2 got no points within 10 s of joining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "FIGURE join -> first batch written by the new writer: {:.0} ms",
        joined.elapsed().as_secs_f64() * 1e3
    );
    flowing().await;

    // 2. kill -9 a writer: its lease expires and it is marked offline.
    let killed = Instant::now();
    c.writers[0].kill9();
    let (to_offline, s) = until(
        &client,
        "writer-0 marked offline",
        Duration::from_secs(15),
        |s| member_state(s, "writer-0") == Some(MemberState::Offline),
    )
    .await;
    print_ring("after writer-0 died", &s);
    assert!(
        !RingView::from(&s).nodes.iter().any(|n| n.id == "writer-0"),
        "an offline writer owns no share"
    );
    let acks_resumed = timeline.recovery_after(killed);
    println!(
        "FIGURE writer kill -9 -> marked offline by lease expiry (new epoch {}): {:.0} ms; acks after the kill resumed within {}",
        s.epoch,
        to_offline.as_secs_f64() * 1e3,
        acks_resumed.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
    );
    flowing().await;

    // 3. It comes back through the same path.
    let restarted = Instant::now();
    c.writers[0].start().await;
    until(
        &client,
        "writer-0 back online",
        Duration::from_secs(15),
        |s| member_state(s, "writer-0") == Some(MemberState::Online),
    )
    .await;
    println!(
        "FIGURE writer restart -> online again: {:.0} ms",
        restarted.elapsed().as_secs_f64() * 1e3
    );
    flowing().await;

    // 4. Graceful stop: drain, finish, leave.
    let before = points_written(w2_http).await;
    c.writers[2].terminate().await;
    let (_, s) = until(&client, "writer-2 left", Duration::from_secs(10), |s| {
        member_state(s, "writer-2").is_none()
    })
    .await;
    println!(
        "writer-2 drained and left (it had written {before}+ points), epoch {}",
        s.epoch
    );

    let report = load.await.unwrap().unwrap();
    let load_end = Instant::now();
    let outcome = loop {
        let o = verify(&redis.url(), &report, HOSTS, METRICS).await;
        if o.missing == 0 || load_end.elapsed() > Duration::from_secs(120) {
            break o;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "FIGURE membership under load: sent {} acked {} rejected {} failed {} resent {} found in redis {} missing {}",
        outcome.sent,
        outcome.acked,
        report.rejected,
        report.failed,
        report.resent,
        outcome.found,
        outcome.missing
    );
    assert!(outcome.acked > 0);
    assert_eq!(outcome.missing, 0, "acked points missing from redis");

    c.stop_all().await;
}
