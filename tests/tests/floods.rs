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

/// Connections the flood opens per port (the attack: 10,000 in all).
const FLOOD_PER_PORT: usize = 5_000;

/// The open-files limit this process may hold: the flood is scaled to it
/// (both ends of every connection are in this process), so a machine with
/// a low limit runs a smaller flood rather than failing for want of files.
fn flood_per_port() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    // Client sockets, the broker's accepted ones (at most the cap per
    // port), Redis and the rest.
    FLOOD_PER_PORT
        .min(limit.saturating_sub(2 * 1_000 + 512) / 2)
        .max(300)
}

/// From one address (127.0.0.2), 10,000 connections with the defaults
/// (`max_connections_per_peer` 1,000): half-sent HTTP requests on the admin
/// port and silent connections on the gRPC port. The ones past the cap
/// are closed on accept; `/health` and an agent's batch from another
/// address (127.0.0.1) are served while the flood is held; and the held
/// ones are closed by the server (the half-sent requests after the
/// 10-second header timeout, the silent ones after 10 s without a byte)
/// instead of holding their places for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_capped_and_timed_out() {
    let redis = RedisServer::start().unwrap();
    let mut c = seed_config_for(&redis.url());
    let per_port = flood_per_port();
    if per_port < c.max_connections_per_peer * 3 / 2 {
        // A small flood (few open files here): a cap it goes past.
        c.max_connections_per_peer = per_port * 2 / 3;
    }
    let cap = c.max_connections_per_peer;
    eprintln!(
        "FIGURE connection flood: {per_port} connections per port from one address, cap {cap}"
    );
    let broker = Running::broker(c, &Service::DEFAULT).await;
    broker_common::serve::wait_serving(&broker.endpoint(), Duration::from_secs(10))
        .await
        .unwrap();
    let attacker = [127, 0, 0, 2];
    let mut half_sent = Vec::new();
    for _ in 0..per_port {
        let mut s = connect_from(attacker, broker.http).await;
        // The request line and one header, never the blank line.
        let _ = s
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
            .await;
        half_sent.push(s);
    }
    let mut silent = Vec::new();
    for _ in 0..per_port {
        silent.push(connect_from(attacker, broker.grpc).await);
    }
    // Those past the cap (per port) are closed on accept, and counted.
    let past_cap = 2 * per_port.saturating_sub(cap);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = metric_sum(broker.http, "broker_connections_refused_total").await;
        if refused >= past_cap as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{refused} of the {} connections refused on accept, {past_cap} past the cap",
            2 * per_port
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

/// One batch of a point each for hosts `flood-{from}` .. `flood-{to}`.
fn hosts_batch(seq: u64, from: usize, to: usize, ts: i64) -> broker_proto::v1::MetricBatch {
    broker_proto::v1::MetricBatch {
        seq,
        metric_names: metric_names(2),
        points: (from..to)
            .map(|i| point(&format!("flood-{i:04}"), ts, 2))
            .collect(),
    }
}

/// A cardinality flood (before: a million invented host ids in 50 s, all
/// acked, and for the whole ttl every host list, label API and selector
/// answered 503). New hosts past `writer.max_new_hosts_per_minute` (here
/// 60) are refused as retryable, past `writer.max_hosts` (here 100) for
/// good, each point with `REJECT_REASON_HOST_LIMIT` and the limit named;
/// hosts already known are stored as before, also by a restarted writer
/// (another process on the same Redis, which asks the index); the host
/// list answers with the hosts admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_hosts_past_the_cardinality_limits_are_refused() {
    use broker_proto::v1::RejectReason;
    let redis = RedisServer::start().unwrap();
    let mut c = seed_config_for(&redis.url());
    c.writer.max_hosts = 100;
    c.writer.max_new_hosts_per_minute = 60;
    let ts = now() - 10;
    let first = Running::broker(c.clone(), &Service::DEFAULT).await;
    let acks = send_batches(&first.endpoint(), vec![hosts_batch(1, 0, 80, ts)]).await;
    assert_eq!(acks[0].accepted, 60, "{:?}", acks[0]);
    assert_eq!(acks[0].errors.len(), 20);
    for e in &acks[0].errors {
        assert_eq!(e.reason, RejectReason::HostLimit as i32, "{e:?}");
        assert!(e.retryable, "{e:?}");
        assert!(e.message.contains("max_new_hosts_per_minute"), "{e:?}");
    }
    // Known hosts keep reporting.
    let acks = send_batches(&first.endpoint(), vec![hosts_batch(2, 0, 60, ts + 1)]).await;
    assert_eq!(acks[0].accepted, 60, "{:?}", acks[0]);
    let refused = metric_sum(first.http, "broker_writer_host_limit_points_total").await;
    assert_eq!(refused, 20.0);
    first.stop().await;

    // Another writer process on the same Redis, with room for 1,000 new
    // hosts a minute: the 60 known ones are not new to it, 40 more fill
    // the index to 100, the rest are refused for good.
    c.writer.max_new_hosts_per_minute = 1_000;
    let second = Running::broker(c, &Service::DEFAULT).await;
    let acks = send_batches(
        &second.endpoint(),
        vec![
            hosts_batch(3, 0, 60, ts + 2),
            hosts_batch(4, 60, 160, ts + 2),
        ],
    )
    .await;
    assert_eq!(acks[0].accepted, 60, "{:?}", acks[0]);
    assert_eq!(acks[1].accepted, 40, "{:?}", acks[1]);
    assert_eq!(acks[1].errors.len(), 60);
    for e in &acks[1].errors {
        assert_eq!(e.reason, RejectReason::HostLimit as i32, "{e:?}");
        assert!(!e.retryable, "{e:?}");
        assert!(e.message.contains("writer.max_hosts is 100"), "{e:?}");
    }
    let (status, body) = http(second.http, "GET", "/api/query/hosts", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hosts"].as_array().unwrap().len(), 100, "{body}");
    second.stop().await;
}

/// Opens an agent stream over raw HTTP/2 and sends the header of a
/// `len`-byte message and `sent` bytes of it, then nothing more. Returns
/// the call's final grpc-status and message.
async fn trickle(
    addr: SocketAddr,
    len: u32,
    sent: usize,
) -> tokio::task::JoinHandle<(String, String)> {
    use http_body_util::BodyExt;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = hyper::Request::post(format!(
        "http://{addr}/broker.v1.MonitorService/SendMetrics"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(body)
    .unwrap();
    let mut head = vec![0u8];
    head.extend(len.to_be_bytes());
    head.extend(std::iter::repeat_n(0u8, sent));
    tx.send(Ok(hyper::body::Frame::data(head.into())))
        .await
        .unwrap();
    tokio::spawn(async move {
        let resp = client.send_request(req).await.unwrap();
        let (parts, mut body) = resp.into_parts();
        let mut trailers = parts.headers.clone();
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers.extend(t);
                    }
                }
                Err(_) => break,
            }
        }
        drop(tx);
        let get = |k: &str| {
            trailers
                .get(k)
                .map(|v| v.to_str().unwrap_or_default().to_string())
                .unwrap_or_default()
        };
        (get("grpc-status"), get("grpc-message"))
    })
}

/// Large messages trickled in on many streams share one byte budget
/// (before: each stream buffered up to 16 MiB, 24 streams held about
/// 350 MB). The attack as it was: 24 streams announcing 16 MiB each,
/// with the default `max_request_bytes_in_flight` (128 MiB): eight hold
/// it; sixteen find no room and their calls end with RESOURCE_EXHAUSTED
/// naming the budget, while an agent's ordinary batch (whole in one chunk)
/// is stored meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_on_many_streams_share_one_byte_budget() {
    const STREAMS: usize = 24;
    let redis = RedisServer::start().unwrap();
    let mut c = seed_config_for(&redis.url());
    c.gateway.max_message_bytes = 16 << 20;
    let fit = c.max_request_bytes_in_flight / (16 << 20);
    assert_eq!(fit, 8, "the default budget holds eight 16 MiB messages");
    let broker = Running::broker(c, &Service::DEFAULT).await;
    broker_common::serve::wait_serving(&broker.endpoint(), Duration::from_secs(10))
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..STREAMS {
        calls.push(trickle(broker.grpc, 16 << 20, 1 << 20).await);
    }
    let acks = send_batches(
        &broker.endpoint(),
        vec![broker_proto::v1::MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points: vec![point("beside-the-trickles", now() - 10, 2)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1, "{acks:?}");
    // The sixteen without room end within the wait (5 s); the eight
    // holding the budget are still open.
    let outcomes = futures::future::join_all(
        calls
            .iter_mut()
            .map(|c| tokio::time::timeout(Duration::from_secs(12), c)),
    )
    .await;
    let ended: Vec<(String, String)> = outcomes
        .into_iter()
        .filter_map(|o| o.ok().map(|r| r.unwrap()))
        .collect();
    assert_eq!(ended.len(), STREAMS - fit, "{ended:?}");
    for (status, message) in &ended {
        assert_eq!(status, "8", "{message}");
        assert!(message.contains("max_request_bytes_in_flight"), "{message}");
    }
    for call in calls {
        call.abort();
    }
    broker.stop().await;
}

/// A remote-write POST announcing `len` bytes, of which `sent` are sent
/// and the rest held back; the connection is returned open.
async fn slow_post(to: SocketAddr, len: usize, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(to).await.unwrap();
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
         Content-Encoding: snappy\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![0u8; sent]).await.unwrap();
    s
}

/// Reads an HTTP response head and the start of its body.
async fn response(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// HTTP bodies share the same budget as gRPC messages: remote-write
/// uploads announcing 16 MiB and trickled hold it (two fit in 32 MiB); the
/// next waits for room for 5 s, then gets 503 with `Retry-After`; one
/// announcing more than the whole budget gets 413 at once. Before, each
/// slow upload held its own route limit, however many there were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_share_the_byte_budget() {
    let redis = RedisServer::start().unwrap();
    let mut c = seed_config_for(&redis.url());
    c.max_request_bytes_in_flight = 32 << 20;
    c.gateway.max_message_bytes = 16 << 20;
    let broker = Running::broker(c, &Service::DEFAULT).await;
    broker_common::serve::wait_serving(&broker.endpoint(), Duration::from_secs(10))
        .await
        .unwrap();
    let mut holding = Vec::new();
    for _ in 0..2 {
        holding.push(slow_post(broker.http, 16 << 20, 1 << 20).await);
    }
    // The two hold the budget: no answer yet.
    for s in &mut holding {
        assert_eq!(response(s, Duration::from_millis(500)).await, None);
    }
    let mut third = slow_post(broker.http, 16 << 20, 0).await;
    let answer = response(&mut third, Duration::from_secs(12))
        .await
        .expect("the third upload is answered once its wait is over");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains("max_request_bytes_in_flight"), "{answer}");
    let mut huge = slow_post(broker.http, 64 << 20, 0).await;
    let answer = response(&mut huge, Duration::from_secs(2))
        .await
        .expect("a body longer than the budget is refused at once");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A small write beside them still goes through (once the budget frees).
    drop(holding);
    let status = remote_write_one(broker.http, "beside-the-uploads").await;
    assert_eq!(status, 204);
    broker.stop().await;
}

/// One sample by remote write, as Prometheus sends it; the status.
async fn remote_write_one(to: SocketAddr, instance: &str) -> u16 {
    use broker_tests::prometheus::{post_write, series};
    let req = broker_proto::prometheus::WriteRequest {
        timeseries: vec![series(
            "flood_beside",
            instance,
            &[((now() - 10) * 1000, 1.0)],
        )],
    };
    post_write(to, &req).await.0
}

/// A series flood on one host (label values that churn: before, every new
/// name was stored and the host's series set grew without bound). Past
/// `writer.max_series_per_host` (here 5) a point's new series are refused,
/// `REJECT_REASON_SERIES_LIMIT` naming the limit, and its known series are
/// stored; by remote write, Prometheus gets a 400 naming the limit, as
/// Mimir answers a tenant over its series limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_series_past_the_per_host_limit_are_refused_and_the_rest_stored() {
    use broker_proto::v1::{MetricBatch, Point, RejectReason};
    let redis = RedisServer::start().unwrap();
    let mut c = config_for(&redis.url());
    c.writer.max_series_per_host = 5;
    let broker = Running::broker(c, &Service::DEFAULT).await;
    let ts = now() - 30;
    let batch = |seq: u64, names: &[&str], ts: i64| MetricBatch {
        seq,
        metric_names: names.iter().map(|n| n.to_string()).collect(),
        points: vec![Point {
            host_id: "churn".into(),
            timestamp: ts,
            values: (0..names.len()).map(|i| i as f64 + 0.5).collect(),
            ..Default::default()
        }],
    };
    let known = ["m00", "m01", "m02", "m03"];
    let acks = send_batches(&broker.endpoint(), vec![batch(1, &known, ts)]).await;
    assert!(acks[0].errors.is_empty(), "{:?}", acks[0]);
    let more = ["m00", "m01", "m02", "m03", "x00", "x01", "x02", "x03"];
    let acks = send_batches(&broker.endpoint(), vec![batch(2, &more, ts + 1)]).await;
    assert_eq!(acks[0].errors.len(), 1, "{:?}", acks[0]);
    let e = &acks[0].errors[0];
    assert_eq!(e.reason, RejectReason::SeriesLimit as i32, "{e:?}");
    assert!(!e.retryable, "{e:?}");
    assert!(e.message.contains("max_series_per_host is 5"), "{e:?}");
    assert!(e.message.contains("3 new series"), "{e:?}");
    let stored = stored(&redis.url(), "churn", ts + 1)
        .await
        .expect("the point's known series are stored");
    let mut names: Vec<&str> = stored.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["m00", "m01", "m02", "m03", "x00"],
        "one new series fit"
    );
    assert_eq!(
        metric_sum(broker.http, "broker_writer_host_limit_points_total").await,
        1.0
    );

    // The same by remote write: 400 naming the limit, known series stored.
    use broker_tests::prometheus::{post_write, series};
    let post = |names: Vec<&str>| {
        let req = broker_proto::prometheus::WriteRequest {
            timeseries: names
                .into_iter()
                .map(|n| series(n, "rw-churn:9100", &[(ts * 1000, 1.0)]))
                .collect(),
        };
        let http = broker.http;
        async move { post_write(http, &req).await }
    };
    let (status, _, body) = post(vec!["up", "load1", "load5"]).await;
    assert_eq!(status, 204, "{body}");
    let (status, _, body) = post(vec!["up", "load1", "load5", "t1", "t2", "t3", "t4"]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_series_per_host"), "{body}");
    broker.stop().await;
}
