//! The load loop's reconnect and resend mechanics against a throwaway
//! loopback `MonitorService`, so they are tested inside this crate (the real
//! gateway lives in a crate that depends on this one's callers, not on this
//! one). The stand-in only acks, breaks streams and answers `UNAVAILABLE` on
//! cue; it proves nothing about the broker. What the broker stores under this
//! load is for the integration tests in `tests/`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_proto::v1::monitor_service_server::{MonitorService, MonitorServiceServer};
use broker_proto::v1::{BatchAck, MetricBatch, PointError, RejectReason};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::generator::value_of;

/// The loads here send the default mix, and the stand-in checks every value
/// against it.
const MIX: Mix = DEFAULT_MIX;

/// How the stand-in gateway misbehaves.
#[derive(Debug, Default)]
struct Script {
    /// Fail the stream (no ack) on every n-th batch it reads.
    break_every: Option<usize>,
    /// Answer `UNAVAILABLE` (retryable) the first time a point is seen.
    unavailable_first: bool,
    /// Answer `UNAVAILABLE` to every point.
    always_unavailable: bool,
    /// Read batches and never ack them.
    never_ack: bool,
    /// Reject this host's points for good.
    reject_host: Option<String>,
}

#[derive(Debug, Default)]
struct Fake {
    script: Script,
    seen: Mutex<HashSet<(String, i64)>>,
    stored: Mutex<HashSet<(String, i64)>>,
    streams: AtomicUsize,
    /// Points whose values differ from the generator's.
    mismatches: AtomicUsize,
}

#[derive(Debug, Clone)]
struct FakeGateway(Arc<Fake>);

type AckStream = Pin<Box<dyn Stream<Item = Result<BatchAck, Status>> + Send>>;

#[tonic::async_trait]
impl MonitorService for FakeGateway {
    type SendMetricsStream = AckStream;

    async fn send_metrics(
        &self,
        request: Request<Streaming<MetricBatch>>,
    ) -> Result<Response<Self::SendMetricsStream>, Status> {
        self.0.streams.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.0.clone().serve(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Fake {
    async fn serve(
        self: Arc<Self>,
        mut inbound: Streaming<MetricBatch>,
        tx: mpsc::Sender<Result<BatchAck, Status>>,
    ) {
        let mut read = 0usize;
        while let Ok(Some(batch)) = inbound.message().await {
            read += 1;
            if self
                .script
                .break_every
                .is_some_and(|k| read.is_multiple_of(k))
            {
                let _ = tx
                    .send(Err(Status::unavailable("injected stream failure")))
                    .await;
                return;
            }
            if self.script.never_ack {
                continue;
            }
            let ack = self.ack(&batch);
            if tx.send(Ok(ack)).await.is_err() {
                return;
            }
        }
    }

    fn ack(&self, batch: &MetricBatch) -> BatchAck {
        let mut accepted = 0;
        let mut errors = Vec::new();
        for (i, p) in batch.points.iter().enumerate() {
            let host: usize = p.host_id["host-".len()..].parse().unwrap();
            if p.values
                .iter()
                .enumerate()
                .any(|(m, v)| v.to_bits() != value_of(MIX, host, p.timestamp, m).to_bits())
            {
                self.mismatches.fetch_add(1, Ordering::Relaxed);
            }
            let key = (p.host_id.clone(), p.timestamp);
            let first = self.seen.lock().unwrap().insert(key.clone());
            let error = |reason: RejectReason| PointError {
                index: i as u32,
                reason: reason as i32,
                message: format!("{reason:?} (injected)"),
                retryable: reason == RejectReason::Unavailable,
            };
            if self.script.reject_host.as_ref() == Some(&p.host_id) {
                errors.push(error(RejectReason::InvalidHostId));
            } else if self.script.always_unavailable || (self.script.unavailable_first && first) {
                errors.push(error(RejectReason::Unavailable));
            } else {
                self.stored.lock().unwrap().insert(key);
                accepted += 1;
            }
        }
        BatchAck {
            seq: batch.seq,
            accepted,
            errors,
            ..Default::default()
        }
    }

    fn stored(&self) -> HashSet<(String, i64)> {
        self.stored.lock().unwrap().clone()
    }
}

/// Serves `script` on a loopback port; the server lives as long as the
/// test's runtime.
async fn gateway(script: Script) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        script,
        ..Fake::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(MonitorServiceServer::new(FakeGateway(fake.clone())))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (endpoint, fake)
}

/// A loopback endpoint that refuses connections, its port held for the
/// rest of the test process so nothing else can take it.
fn dead_endpoint() -> String {
    let (endpoint, socket) =
        broker_common::serve::refusing_loopback_endpoint().expect("a loopback port");
    std::mem::forget(socket);
    endpoint
}

fn config(endpoints: Vec<String>, max_points: u64) -> LoadConfig {
    LoadConfig {
        endpoints,
        hosts: 20,
        metrics: 4,
        mix: MIX,
        batch_hosts: 5,
        connections: 2,
        window: 4,
        pacing: Pacing::Max,
        duration: Some(Duration::from_secs(20)),
        max_points: Some(max_points),
        connect_timeout: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(20),
        record_acked: true,
        ..LoadConfig::default()
    }
}

async fn run(cfg: LoadConfig) -> LoadReport {
    tokio::time::timeout(Duration::from_secs(60), run_load(cfg))
        .await
        .expect("the run ends by itself")
        .expect("the run starts")
}

fn keys(points: &[(u32, i64)]) -> HashSet<(String, i64)> {
    points
        .iter()
        .map(|&(h, ts)| (crate::host_id(h as usize), ts))
        .collect()
}

#[tokio::test]
async fn broken_streams_are_resent_on_the_next_gateway() {
    let (flaky, a) = gateway(Script {
        break_every: Some(4),
        ..Script::default()
    })
    .await;
    let (steady, b) = gateway(Script::default()).await;
    // Connection 1 starts at the dead endpoint and fails over to `steady`;
    // when `flaky` breaks a stream, connection 0 tries the dead one next,
    // then `steady`.
    let report = run(config(vec![flaky, dead_endpoint(), steady], 600)).await;

    assert_eq!(report.sent, 600);
    assert_eq!(
        (report.acked, report.rejected, report.failed),
        (600, 0, 0),
        "{report}"
    );
    assert!(report.resent > 0 && report.resends_batches > 0, "{report}");
    assert!(report.retries_by_reason["stream_closed"] > 0, "{report}");
    assert!(
        b.streams.load(Ordering::Relaxed) >= 2,
        "both connections ended on the steady gateway"
    );
    assert_eq!(
        a.mismatches.load(Ordering::Relaxed) + b.mismatches.load(Ordering::Relaxed),
        0
    );
    let acked = report.acked_points.clone().unwrap();
    assert_eq!(acked.len(), 600);
    let acked = keys(&acked);
    assert_eq!(acked.len(), 600, "each acked point listed once");
    let stored: HashSet<_> = a.stored().union(&b.stored()).cloned().collect();
    assert!(acked.is_subset(&stored), "every acked point was stored");
}

#[tokio::test]
async fn a_lone_flaky_gateway_is_reconnected_to_again_and_again() {
    let (endpoint, gw) = gateway(Script {
        break_every: Some(7),
        ..Script::default()
    })
    .await;
    let report = run(config(vec![endpoint], 300)).await;

    assert_eq!(
        (report.sent, report.acked, report.failed),
        (300, 300, 0),
        "{report}"
    );
    // 60 batches, every 7th read breaks its stream: at least 8 breaks.
    assert!(gw.streams.load(Ordering::Relaxed) >= 2 + 8, "{report}");
    assert!(report.resends_batches >= 8, "{report}");
    assert_eq!(gw.mismatches.load(Ordering::Relaxed), 0);
    assert!(keys(report.acked_points.as_ref().unwrap()).is_subset(&gw.stored()));
}

#[tokio::test]
async fn retryable_points_are_resent_until_stored_and_rejected_ones_never() {
    let (endpoint, gw) = gateway(Script {
        unavailable_first: true,
        reject_host: Some(crate::host_id(3)),
        ..Script::default()
    })
    .await;
    let report = run(config(vec![endpoint], 400)).await;

    // 400 points over 20 hosts: about 20 rounds, host 3 about once per
    // round. Not exactly: the two connections claim their batches from one
    // point budget, and the one carrying host 3's batches (every other
    // batch it sends) may run ahead of the other when the budget runs out;
    // at the extreme it claims all 80 batches, 40 with host 3.
    assert_eq!(report.sent, 400);
    assert!((1..=40).contains(&report.rejected), "{report}");
    assert_eq!(
        report.rejected_by_reason["invalid_host_id"],
        report.rejected
    );
    assert_eq!(report.acked + report.rejected, 400, "{report}");
    assert_eq!(report.failed, 0, "{report}");
    let host3 = crate::host_id(3);
    assert!(
        keys(report.acked_points.as_ref().unwrap())
            .iter()
            .all(|(h, _)| *h != host3),
        "only host 3 is rejected, and none of its points is acked"
    );
    // Every stored point went exactly twice; rejected ones once.
    assert_eq!(report.resent, report.acked, "{report}");
    assert_eq!(report.retries_by_reason["unavailable"], report.acked);
    assert_eq!(report.settled(), report.sent);
    assert_eq!(
        gw.mismatches.load(Ordering::Relaxed),
        0,
        "resends carry the same values"
    );
    let acked = keys(report.acked_points.as_ref().unwrap());
    assert_eq!(acked, gw.stored());
}

#[tokio::test]
async fn resends_are_bounded() {
    let (endpoint, _gw) = gateway(Script {
        always_unavailable: true,
        ..Script::default()
    })
    .await;
    let report = run(LoadConfig {
        max_resends: 2,
        ..config(vec![endpoint], 100)
    })
    .await;

    assert_eq!(
        (report.sent, report.acked, report.failed),
        (100, 0, 100),
        "{report}"
    );
    assert_eq!(report.resent, 200, "two resends per point: {report}");
    assert_eq!(report.failed_by_reason["resends_exhausted"], 100);
    assert_eq!(report.acked_points, Some(vec![]));
}

#[tokio::test]
async fn the_drain_deadline_fails_what_is_left_and_ends_the_run() {
    let (endpoint, gw) = gateway(Script {
        never_ack: true,
        ..Script::default()
    })
    .await;
    let started = Instant::now();
    let report = run(LoadConfig {
        duration: Some(Duration::from_secs(1)),
        drain_timeout: Duration::from_millis(500),
        ..config(vec![endpoint], 10_000)
    })
    .await;

    // Two connections, four batches of five points un-acked each, then no
    // room for more: 40 points out, none acked, all failed at the deadline.
    assert_eq!(report.sent, 40, "{report}");
    assert_eq!((report.acked, report.failed), (0, 40), "{report}");
    assert_eq!(report.failed_by_reason["drain_timeout"], 40);
    assert_eq!(report.batches_failed, 8);
    assert_eq!(report.resent, 0, "a slow stream is not a broken one");
    assert_eq!(gw.streams.load(Ordering::Relaxed), 2);
    // Bounded by the duration plus the drain (and the close), not the point
    // budget.
    assert!(started.elapsed() < Duration::from_secs(10));
}
