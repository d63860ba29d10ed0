use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub type WriterLabels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct RouterMetrics {
    pub points: Counter,
    pub failed_points: Counter,
    pub forwards: Family<WriterLabels, Counter>,
    pub retries: Family<WriterLabels, Counter>,
    pub forward_seconds: Histogram,
    pub batch_points: Histogram,
    /// `broker_router_writer_up{writer}`: 1 while the writer takes its
    /// share, 0 while it is marked down.
    pub writer_up: Family<WriterLabels, Gauge>,
    /// Points sent to a writer other than their ring owner (owner down, or
    /// failover after a failed forward); a point moved twice counts twice.
    pub rerouted_points: Counter,
    /// Points a writer refused as routed under an older ring epoch, routed
    /// again under a newer one.
    pub stale_rerouted_points: Counter,
    /// `broker_router_ring_epoch`: the epoch of the ring in use.
    pub epoch: Gauge,
    /// `broker_router_hedges_total{writer,outcome}`: forwards also sent to
    /// the next ring owners because the writer had not answered in time;
    /// `outcome` is `won` (the writer answered first), `lost` (the copy
    /// was stored first) or `failed` (the copy failed).
    pub hedges: Family<WriterLabels, Counter>,
    /// Points sent a second time by hedges.
    pub hedged_points: Counter,
}

impl RouterMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            points: Counter::default(),
            failed_points: Counter::default(),
            forwards: Family::default(),
            retries: Family::default(),
            forward_seconds: Histogram::new(broker_common::admin::latency_buckets()),
            batch_points: Histogram::new(broker_common::admin::size_buckets()),
            writer_up: Family::default(),
            rerouted_points: Counter::default(),
            stale_rerouted_points: Counter::default(),
            epoch: Gauge::default(),
            hedges: Family::default(),
            hedged_points: Counter::default(),
        };
        m.epoch.set(1);
        let r = registry.sub_registry_with_prefix("broker_router");
        r.register(
            "stale_rerouted_points",
            "Points a writer refused as routed under an older ring epoch, routed again",
            m.stale_rerouted_points.clone(),
        );
        r.register("ring_epoch", "Ring epoch in use", m.epoch.clone());
        r.register(
            "hedges",
            "Forwards also sent to the next ring owners because the writer had not answered in time, by writer and outcome",
            m.hedges.clone(),
        );
        r.register(
            "hedged_points",
            "Points sent a second time by hedges",
            m.hedged_points.clone(),
        );
        r.register("points", "Points routed", m.points.clone());
        r.register(
            "failed_points",
            "Points that could not be delivered after retries",
            m.failed_points.clone(),
        );
        r.register(
            "forwards",
            "Forwards to writers by writer and outcome",
            m.forwards.clone(),
        );
        r.register("retries", "Forward retries by writer", m.retries.clone());
        r.register(
            "forward_duration_seconds",
            "Latency of one forward to a writer, retries included",
            m.forward_seconds.clone(),
        );
        r.register(
            "batch_points",
            "Points per routed batch",
            m.batch_points.clone(),
        );
        r.register(
            "writer_up",
            "1 while the writer takes its share of the ring, 0 while it is marked down",
            m.writer_up.clone(),
        );
        r.register(
            "rerouted_points",
            "Points sent to a writer other than their ring owner (owner down or failed)",
            m.rerouted_points.clone(),
        );
        m
    }
}
