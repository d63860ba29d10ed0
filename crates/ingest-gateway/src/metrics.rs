use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub type ReasonLabels = Vec<(&'static str, &'static str)>;

#[derive(Clone)]
pub struct GatewayMetrics {
    pub received_points: Counter,
    pub accepted_points: Counter,
    pub rejected_points: Family<ReasonLabels, Counter>,
    pub batches: Counter,
    pub batch_errors: Family<ReasonLabels, Counter>,
    pub batch_points: Histogram,
    pub ack_seconds: Histogram,
    pub inflight_points: Gauge,
    pub streams: Gauge,
    /// Remote-write requests by HTTP status code.
    pub remote_write_requests: Family<Vec<(&'static str, String)>, Counter>,
    /// Remote-write samples by what became of them.
    pub remote_write_samples: Family<ReasonLabels, Counter>,
    /// OTLP export requests by transport and outcome.
    pub otlp_requests: Family<ReasonLabels, Counter>,
    /// OTLP samples by what became of them.
    pub otlp_samples: Family<ReasonLabels, Counter>,
}

impl GatewayMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            received_points: Counter::default(),
            accepted_points: Counter::default(),
            rejected_points: Family::default(),
            batches: Counter::default(),
            batch_errors: Family::default(),
            batch_points: Histogram::new(broker_common::admin::size_buckets()),
            ack_seconds: Histogram::new(broker_common::admin::latency_buckets()),
            inflight_points: Gauge::default(),
            streams: Gauge::default(),
            remote_write_requests: Family::default(),
            remote_write_samples: Family::default(),
            otlp_requests: Family::default(),
            otlp_samples: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("broker_ingest");
        r.register(
            "points",
            "Points received from agents",
            m.received_points.clone(),
        );
        r.register(
            "accepted_points",
            "Points stored durably and acked",
            m.accepted_points.clone(),
        );
        r.register(
            "rejected_points",
            "Points not stored, by reason (unavailable means retryable)",
            m.rejected_points.clone(),
        );
        r.register("batches", "Batches received from agents", m.batches.clone());
        r.register(
            "batch_errors",
            "Batches rejected whole, by error",
            m.batch_errors.clone(),
        );
        r.register(
            "batch_points",
            "Points per agent batch",
            m.batch_points.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "Time from receiving a batch to acking it",
            m.ack_seconds.clone(),
        );
        r.register(
            "inflight_points",
            "Points received and not yet acked (queue depth)",
            m.inflight_points.clone(),
        );
        r.register("streams", "Open agent streams", m.streams.clone());
        r.register(
            "remote_write_requests",
            "Prometheus remote-write requests, by HTTP status code",
            m.remote_write_requests.clone(),
        );
        r.register(
            "remote_write_samples",
            "Prometheus remote-write samples: stored, superseded (a later sample of the series in the same second), stale (staleness markers, skipped) or rejected",
            m.remote_write_samples.clone(),
        );
        r.register(
            "otlp_requests",
            "OTLP metric exports, by transport (grpc, http) and outcome (ok, partial: some data rejected, retry: not durable yet, invalid: not OTLP)",
            m.otlp_requests.clone(),
        );
        r.register(
            "otlp_samples",
            "OTLP samples (a histogram data point is several): stored, superseded (a later sample of the series in the same second), no_value (flagged no recorded value, skipped) or rejected",
            m.otlp_samples.clone(),
        );
        m
    }
}
