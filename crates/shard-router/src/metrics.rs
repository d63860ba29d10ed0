use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
        };
        let r = registry.sub_registry_with_prefix("broker_router");
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
        m
    }
}
