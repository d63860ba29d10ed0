//! The `MonitorService` stream handler.
//!
//! Per stream, one task reads batches; each batch is validated and forwarded
//! on its own task and acked when the router answered. At most
//! `max_inflight_batches_per_stream` batches of a stream are in flight: past
//! that the reader stops reading, so HTTP/2 flow control slows the agent
//! instead of the gateway dropping or buffering without bound.

use crate::error::GatewayError;
use crate::metrics::GatewayMetrics;
use crate::validate::{BatchRejection, Limits, reason_label, validate_batch};
use broker_common::BrokerConfig;
use broker_proto::v1::monitor_service_server::MonitorService;
use broker_proto::v1::{BatchAck, BatchError, MetricBatch, PointError, RejectReason};
use internal_clients::RouterClient;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub const MONITOR_SERVICE_NAME: &str = "broker.v1.MonitorService";

#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) limits: Limits,
    /// The same for remote write and OTLP samples: NaN, ±Inf and
    /// staleness markers are values there.
    pub(crate) prometheus_limits: Limits,
    router: RouterClient,
    forward_timeout: Duration,
    per_stream: usize,
    inflight_points: Arc<Semaphore>,
    max_inflight_points: usize,
    /// Agent streams open (`gateway.max_streams`).
    streams: Arc<Semaphore>,
    max_streams: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) remote_write_host_label: String,
    pub(crate) otlp_host_attribute: String,
    pub(crate) metrics: GatewayMetrics,
    stop: CancellationToken,
}

impl Gateway {
    /// `stop` ends every stream gracefully: stop reading, ack what is in
    /// flight, close.
    pub fn new(
        config: &BrokerConfig,
        router: RouterClient,
        registry: &mut prometheus_client::registry::Registry,
        stop: CancellationToken,
    ) -> Self {
        let g = &config.gateway;
        Self {
            inner: Arc::new(Inner {
                limits: Limits::new(g, config.ttl),
                prometheus_limits: Limits::new(g, config.ttl).prometheus(),
                router,
                forward_timeout: g.forward_timeout,
                per_stream: g.max_inflight_batches_per_stream,
                inflight_points: Arc::new(Semaphore::new(g.max_inflight_points)),
                max_inflight_points: g.max_inflight_points,
                streams: Arc::new(Semaphore::new(g.max_streams)),
                max_streams: g.max_streams,
                max_message_bytes: g.max_message_bytes,
                remote_write_host_label: g.remote_write_host_label.clone(),
                otlp_host_attribute: g.otlp_host_attribute.clone(),
                metrics: GatewayMetrics::new(registry),
                stop,
            }),
        }
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<BatchAck, Status>> + Send>>;

#[tonic::async_trait]
impl MonitorService for Gateway {
    type SendMetricsStream = AckStream;

    async fn send_metrics(
        &self,
        request: Request<Streaming<MetricBatch>>,
    ) -> Result<Response<Self::SendMetricsStream>, Status> {
        if self.inner.stop.is_cancelled() {
            return Err(GatewayError::ShuttingDown.into());
        }
        let Ok(open) = self.inner.streams.clone().try_acquire_owned() else {
            return Err(GatewayError::TooManyStreams {
                limit: self.inner.max_streams,
            }
            .into());
        };
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(self.inner.per_stream * 2);
        tokio::spawn(self.inner.clone().read_stream(inbound, tx, peer, open));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Inner {
    async fn read_stream(
        self: Arc<Self>,
        mut inbound: Streaming<MetricBatch>,
        tx: mpsc::Sender<Result<BatchAck, Status>>,
        peer: Option<std::net::SocketAddr>,
        // Held until the stream ends.
        _open: OwnedSemaphorePermit,
    ) {
        self.metrics.streams.inc();
        tracing::debug!(peer = ?peer, "agent stream opened");
        let slots = Arc::new(Semaphore::new(self.per_stream));
        loop {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => s.expect("stream slots are never closed"),
                _ = self.stop.cancelled() => break,
            };
            let msg = tokio::select! {
                // Counted against the limits before it is decoded: a
                // message of empty points would decode to 60 times its size.
                m = broker_proto::bounded::scope(self.limits.batch_bounds(), inbound.message()) => m,
                _ = self.stop.cancelled() => break,
            };
            match msg {
                Ok(Some(batch)) => {
                    tokio::spawn(self.clone().handle_batch(batch, slot, tx.clone()));
                }
                Ok(None) => break,
                Err(status) => {
                    // Undecodable or oversized message, or the agent went
                    // away. Batches already in flight are still acked.
                    tracing::warn!(peer = ?peer, code = ?status.code(), error = %status.message(), "agent stream error");
                    let _ = tx.send(Err(GatewayError::AgentStream(status).into())).await;
                    break;
                }
            }
        }
        // Drain: every in-flight batch gets its ack before the stream ends.
        let _ = slots.acquire_many(self.per_stream as u32).await;
        self.metrics.streams.dec();
        tracing::debug!(peer = ?peer, "agent stream closed");
    }

    async fn handle_batch(
        self: Arc<Self>,
        batch: MetricBatch,
        _slot: OwnedSemaphorePermit,
        tx: mpsc::Sender<Result<BatchAck, Status>>,
    ) {
        let started = Instant::now();
        let seq = batch.seq;
        let n = batch.points.len();
        let ack = match self.ingest(batch, Admission::Wait, false).await {
            Err(rej) => BatchAck {
                seq,
                accepted: 0,
                errors: vec![],
                batch_error: rej.error as i32,
                batch_error_message: rej.message,
            },
            Ok(errors) => BatchAck {
                seq,
                accepted: (n - errors.len()) as u32,
                errors,
                batch_error: BatchError::None as i32,
                batch_error_message: String::new(),
            },
        };
        self.metrics
            .ack_seconds
            .observe(started.elapsed().as_secs_f64());
        if tx.send(Ok(ack)).await.is_err() {
            tracing::debug!(seq, "agent went away before its ack");
        }
    }

    /// Validates `batch`, forwards its valid points to the routers and
    /// answers, once those are durable or failed, one error per point that
    /// was not stored (by its index in `batch`, ascending). The one ingest
    /// path of agents' streams, Prometheus remote write and OTLP.
    /// Checks `batch` (with the agent protocol's limits, or with
    /// `prometheus` those of remote write and OTLP) and routes what passes.
    pub(crate) async fn ingest(
        &self,
        batch: MetricBatch,
        admission: Admission,
        prometheus: bool,
    ) -> Result<Vec<PointError>, BatchRejection> {
        let n = batch.points.len();
        self.metrics.batches.inc();
        self.metrics.received_points.inc_by(n as u64);
        self.metrics.batch_points.observe(n as f64);
        let limits = if prometheus {
            &self.prometheus_limits
        } else {
            &self.limits
        };
        let v = match validate_batch(batch, limits, broker_common::unix_now()) {
            Err(rej) => {
                self.metrics
                    .batch_errors
                    .get_or_create(&vec![("error", batch_error_label(rej.error))])
                    .inc();
                return Err(rej);
            }
            Ok(v) => v,
        };
        let mut errors = v.errors;
        let routed = v.batch.points.len();
        if routed > 0 {
            let want = routed.min(self.max_inflight_points) as u32;
            let acquire = self.inflight_points.clone().acquire_many_owned(want);
            let _points = match admission {
                Admission::Wait => acquire.await,
                Admission::Within(d) => match tokio::time::timeout(d, acquire).await {
                    Ok(p) => p,
                    Err(_) => {
                        let message = format!(
                            "the gateway is at its in-flight limit (gateway.max_inflight_points = {}) for {d:?}; send again",
                            self.max_inflight_points
                        );
                        errors.extend(v.index_map.iter().map(|&i| PointError {
                            index: i,
                            reason: RejectReason::Unavailable as i32,
                            message: message.clone(),
                            retryable: true,
                        }));
                        errors.sort_by_key(|e| e.index);
                        self.count_rejected(&errors);
                        self.metrics.accepted_points.inc_by((n - errors.len()) as u64);
                        return Ok(errors);
                    }
                },
            }
            .expect("inflight semaphore is never closed");
            self.metrics.inflight_points.inc_by(routed as i64);
            let result = self.router.route(v.batch, self.forward_timeout).await;
            self.metrics.inflight_points.dec_by(routed as i64);
            match result {
                Ok(failed) => errors.extend(failed.into_iter().map(|mut f| {
                    f.index = v.index_map[f.index as usize];
                    f
                })),
                Err(status) => errors.extend(v.index_map.iter().map(|&i| PointError {
                    index: i,
                    reason: RejectReason::Unavailable as i32,
                    message: status.message().to_string(),
                    retryable: true,
                })),
            }
            errors.sort_by_key(|e| e.index);
        }
        self.count_rejected(&errors);
        self.metrics
            .accepted_points
            .inc_by((n - errors.len()) as u64);
        Ok(errors)
    }

    fn count_rejected(&self, errors: &[PointError]) {
        for e in errors {
            self.metrics
                .rejected_points
                .get_or_create(&vec![("reason", reason_label(e.reason))])
                .inc();
        }
    }
}

/// How [`Inner::ingest`] waits for room under `gateway.max_inflight_points`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Admission {
    /// As long as it takes: the stream is not read meanwhile, so HTTP/2
    /// flow control slows the agent (gRPC streams).
    Wait,
    /// At most this long, then the points are answered retryable, so an
    /// HTTP sender (Prometheus, OTLP) gets 503 / `UNAVAILABLE` with a
    /// `Retry-After` and backs off, instead of a request that hangs.
    Within(Duration),
}

/// How long a remote-write or OTLP request waits for in-flight room.
pub(crate) const HTTP_ADMISSION_WAIT: Duration = Duration::from_secs(1);

fn batch_error_label(e: BatchError) -> &'static str {
    match e {
        BatchError::None => "none",
        BatchError::TooManyPoints => "too_many_points",
        BatchError::InvalidNameTable => "invalid_name_table",
        BatchError::Overloaded => "overloaded",
        BatchError::ShuttingDown => "shutting_down",
    }
}
