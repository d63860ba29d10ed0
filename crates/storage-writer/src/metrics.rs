use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct WriterMetrics {
    pub points: Counter,
    pub failed_points: Counter,
    pub pipelines: Counter,
    pub pipeline_errors: Counter,
    pub pipeline_seconds: Histogram,
    pub pipeline_points: Histogram,
    pub queued_points: Gauge,
    pub inflight_pipelines: Gauge,
    pub redis_up: Gauge,
    pub spool_records: Gauge,
    pub spool_bytes: Gauge,
    pub spooled_points: Counter,
    pub replayed_points: Counter,
    pub spool_full: Counter,
    pub spool_corrupt: Counter,
    pub dlq_records: Gauge,
    pub dlq_bytes: Gauge,
    pub dlq_points: Counter,
    pub dlq_replayed_points: Counter,
    pub dlq_discarded_points: Counter,
    pub maintained: Counter,
    pub maintain_errors: Counter,
    pub maintain_seconds: Histogram,
    /// Points of new hosts refused, by the limit that refused them.
    pub host_limit_points: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl WriterMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            points: Counter::default(),
            failed_points: Counter::default(),
            pipelines: Counter::default(),
            pipeline_errors: Counter::default(),
            pipeline_seconds: Histogram::new(broker_common::admin::latency_buckets()),
            pipeline_points: Histogram::new(broker_common::admin::size_buckets()),
            queued_points: Gauge::default(),
            inflight_pipelines: Gauge::default(),
            redis_up: Gauge::default(),
            spool_records: Gauge::default(),
            spool_bytes: Gauge::default(),
            spooled_points: Counter::default(),
            replayed_points: Counter::default(),
            spool_full: Counter::default(),
            spool_corrupt: Counter::default(),
            dlq_records: Gauge::default(),
            dlq_bytes: Gauge::default(),
            dlq_points: Counter::default(),
            dlq_replayed_points: Counter::default(),
            dlq_discarded_points: Counter::default(),
            maintained: Counter::default(),
            maintain_errors: Counter::default(),
            maintain_seconds: Histogram::new(broker_common::admin::latency_buckets()),
            host_limit_points: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("broker_writer");
        r.register(
            "layout_maintenance",
            "Hosts whose layout maintenance (sealing an open chunk) finished",
            m.maintained.clone(),
        );
        r.register(
            "layout_maintenance_errors",
            "Layout maintenance runs that failed (retried later)",
            m.maintain_errors.clone(),
        );
        r.register(
            "layout_maintenance_duration_seconds",
            "Duration of one host's layout maintenance",
            m.maintain_seconds.clone(),
        );
        r.register("points", "Points written to Redis", m.points.clone());
        r.register(
            "failed_points",
            "Points whose pipeline failed",
            m.failed_points.clone(),
        );
        r.register("pipelines", "Redis pipelines sent", m.pipelines.clone());
        r.register(
            "pipeline_errors",
            "Redis pipelines that failed",
            m.pipeline_errors.clone(),
        );
        r.register(
            "pipeline_duration_seconds",
            "Redis pipeline round trip latency",
            m.pipeline_seconds.clone(),
        );
        r.register(
            "pipeline_points",
            "Points per Redis pipeline",
            m.pipeline_points.clone(),
        );
        r.register(
            "queued_points",
            "Points accepted and not yet written",
            m.queued_points.clone(),
        );
        r.register(
            "inflight_pipelines",
            "Redis pipelines awaiting a reply",
            m.inflight_pipelines.clone(),
        );
        r.register(
            "redis_up",
            "1 when batches go straight to Redis, 0 while the spool is used or drained",
            m.redis_up.clone(),
        );
        r.register(
            "spool_records",
            "Batches waiting in the spool",
            m.spool_records.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes waiting in the spool",
            m.spool_bytes.clone(),
        );
        r.register(
            "spooled_points",
            "Points appended to the spool",
            m.spooled_points.clone(),
        );
        r.register(
            "replayed_points",
            "Points replayed from the spool into Redis",
            m.replayed_points.clone(),
        );
        r.register(
            "spool_full_rejections",
            "Writes refused because the spool was full (senders retry)",
            m.spool_full.clone(),
        );
        r.register(
            "spool_corrupt_records",
            "Spool records that did not decode and were dropped",
            m.spool_corrupt.clone(),
        );
        r.register(
            "dlq_records",
            "Entries in the dead-letter queue (points Redis refused for good)",
            m.dlq_records.clone(),
        );
        r.register(
            "dlq_bytes",
            "Bytes held by the dead-letter queue",
            m.dlq_bytes.clone(),
        );
        r.register(
            "dlq_points",
            "Points ever dead-lettered",
            m.dlq_points.clone(),
        );
        r.register(
            "dlq_replayed_points",
            "Dead-lettered points replayed into Redis",
            m.dlq_replayed_points.clone(),
        );
        r.register(
            "dlq_discarded_points",
            "Dead-lettered points discarded by an operator",
            m.dlq_discarded_points.clone(),
        );
        r.register(
            "host_limit_points",
            "Points refused because their host is new and over writer.max_hosts or writer.max_new_hosts_per_minute (label limit)",
            m.host_limit_points.clone(),
        );
        m
    }
}
