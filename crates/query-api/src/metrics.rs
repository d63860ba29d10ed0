//! Prometheus metrics of query-api (`broker_query_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(broker_common::admin::latency_buckets())
    }
}

#[derive(Clone)]
pub struct QueryMetrics {
    /// Queries by operation and outcome (`ok` or the error kind).
    queries: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, LatencyBuckets>,
    cache_hits: Family<Labels, Counter>,
    cache_misses: Family<Labels, Counter>,
    /// Snapshots read from Redis.
    pub points_read: Counter,
}

impl QueryMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            queries: Family::default(),
            duration: Family::new_with_constructor(LatencyBuckets),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            points_read: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("broker_query");
        r.register(
            "queries",
            "Queries answered, by operation and outcome",
            m.queries.clone(),
        );
        r.register(
            "duration_seconds",
            "Query latency, by operation",
            m.duration.clone(),
        );
        r.register(
            "cache_hits",
            "Range and aggregation results served from the cache",
            m.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Range and aggregation results read from Redis",
            m.cache_misses.clone(),
        );
        r.register(
            "points_read",
            "Snapshots read from Redis",
            m.points_read.clone(),
        );
        m
    }

    pub fn observe(&self, op: &'static str, outcome: &'static str, seconds: f64) {
        self.queries
            .get_or_create(&vec![("op", op), ("outcome", outcome)])
            .inc();
        self.duration
            .get_or_create(&vec![("op", op)])
            .observe(seconds);
    }

    pub fn cache(&self, kind: &'static str, hit: bool) {
        let f = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        f.get_or_create(&vec![("kind", kind)]).inc();
    }
}
