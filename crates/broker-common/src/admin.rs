//! The admin HTTP surface every process serves: `/health` (the process is
//! up), `/ready` (every component is ready to take traffic) and `/metrics`
//! (Prometheus text exposition), plus whatever routes its services mount
//! with [`Admin::with_routes`] (the writer's `/api/dlq`).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Readiness of the components of one process, by name, with why a
/// component is not ready when it says.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Component → `None` when ready, else why not (may be empty).
    inner: Arc<Mutex<BTreeMap<String, Option<String>>>>,
}

impl Readiness {
    pub fn set(&self, component: &str, ready: bool) {
        self.put(component, (!ready).then(String::new));
    }

    /// Marks `component` not ready, saying why (shown by `/ready`).
    pub fn set_not_ready(&self, component: &str, why: impl Into<String>) {
        self.put(component, Some(why.into()));
    }

    fn put(&self, component: &str, state: Option<String>) {
        self.inner
            .lock()
            .expect("readiness lock")
            .insert(component.to_string(), state);
    }

    /// Components that are not ready, each with why when it said
    /// (`cluster-ctl (no raft leader ...)`); empty when the process is ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.inner
            .lock()
            .expect("readiness lock")
            .iter()
            .filter_map(|(name, state)| match state.as_deref()? {
                "" => Some(name.clone()),
                why => Some(format!("{name} ({why})")),
            })
            .collect()
    }
}

#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    pub readiness: Readiness,
    /// Routes services added (e.g. the writer's DLQ API).
    extra: Router,
}

impl Admin {
    pub fn new(mut registry: Registry, readiness: Readiness) -> Self {
        if let Some(c) = crate::process_metrics::ProcessCollector::new() {
            registry.register_collector(Box::new(c));
        }
        Self {
            registry: Arc::new(registry),
            readiness,
            extra: Router::new(),
        }
    }

    /// Adds a service's own routes beside `/health`, `/ready` and
    /// `/metrics`. Panics if a path is mounted twice (a wiring bug).
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.extra = std::mem::take(&mut self.extra).merge(routes);
        self
    }

    pub fn router(&self) -> Router {
        let registry = self.registry.clone();
        let readiness = self.readiness.clone();
        Router::new()
            .merge(self.extra.clone())
            .route("/health", get(|| async { "ok\n" }))
            .route(
                "/ready",
                get(move || {
                    let readiness = readiness.clone();
                    async move {
                        let missing = readiness.not_ready();
                        if missing.is_empty() {
                            (StatusCode::OK, "ready\n".to_string())
                        } else {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("not ready: {}\n", missing.join(", ")),
                            )
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let registry = registry.clone();
                    async move {
                        let mut body = String::new();
                        match prometheus_client::encoding::text::encode(&mut body, &registry) {
                            Ok(()) => (
                                StatusCode::OK,
                                [(
                                    header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                body,
                            )
                                .into_response(),
                            Err(e) => {
                                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                            }
                        }
                    }
                }),
            )
    }
}

/// Latency buckets in seconds, 0.5 ms to 10 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 15)
}

/// Batch size buckets in points, 1 to 16384.
pub fn size_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_names_each_component_with_why_when_it_said() {
        let r = Readiness::default();
        r.set("query-api", true);
        assert!(r.not_ready().is_empty());
        r.set("writer", false);
        r.set_not_ready("cluster-ctl", "no raft leader");
        assert_eq!(r.not_ready(), ["cluster-ctl (no raft leader)", "writer"]);
        r.set("cluster-ctl", true);
        assert_eq!(r.not_ready(), ["writer"]);
    }
}
