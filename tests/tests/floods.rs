//! Connection floods without credentials, against the real all-in-one
//! broker: idle TCP connections and half-sent HTTP requests from one
//! address. Before, none was ever closed (checked at 5, 35 and 70 s) and
//! 10,000 of them locked `/health` out for as long as they were held.

use broker_common::Service;
use broker_tests::*;
use redis_process::RedisServer;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether the server closed `c` within `within` (EOF or reset).
async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (a 408, an HTTP/2 GOAWAY): read on to the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// From one address (127.0.0.2), more connections than
/// `max_connections_per_peer` (here 100): half-sent HTTP requests on the
/// admin port and silent connections on the gRPC port. The ones past the
/// cap are closed on accept; `/health` and an agent's batch from another
/// address (127.0.0.1) are served while the flood is held; and the held
/// ones are closed by the server (the half-sent requests after the
/// 10-second header timeout, the silent ones after 10 s without a byte)
/// instead of holding their places for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_capped_and_timed_out() {
    let redis = RedisServer::start().unwrap();
    let mut c = seed_config_for(&redis.url());
    c.max_connections_per_peer = 100;
    let broker = Running::broker(c, &Service::DEFAULT).await;
    broker_common::serve::wait_serving(&broker.endpoint(), Duration::from_secs(10))
        .await
        .unwrap();
    let attacker = [127, 0, 0, 2];
    let mut half_sent = Vec::new();
    for _ in 0..150 {
        let mut s = connect_from(attacker, broker.http).await;
        // The request line and one header, never the blank line.
        let _ = s
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
            .await;
        half_sent.push(s);
    }
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(connect_from(attacker, broker.grpc).await);
    }
    // Those past the cap (100 per port) are closed on accept, and counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = metric_sum(broker.http, "broker_connections_refused_total").await;
        if refused >= 100.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{refused} of the 300 connections refused on accept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Another address is served meanwhile.
    let (status, body) = http(broker.http, "GET", "/health", "").await;
    assert_eq!(status, 200, "{body}");
    let acks = send_batches(
        &broker.endpoint(),
        vec![broker_proto::v1::MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points: vec![point("during-flood", now() - 10, 2)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1, "{acks:?}");

    // The held ones are closed by the server within the timeouts (10 s,
    // with room for a busy machine), not kept.
    let mut kept = 0;
    for s in half_sent.iter_mut().chain(silent.iter_mut()) {
        if !closed_within(s, Duration::from_secs(25)).await {
            kept += 1;
        }
    }
    assert_eq!(kept, 0, "{kept} flood connections still open after 25 s");
    broker.stop().await;
}
