//! Prometheus remote write 1.0: `POST /api/v1/write` on the gateway's HTTP
//! port (a snappy-compressed `prometheus.WriteRequest`).
//!
//! # How series become the broker's points
//! - **Host**: the value of `gateway.remote_write_host_label` (`instance`
//!   by default) without its `:port`, and with any character a host id
//!   cannot hold replaced by `_`. The broker monitors hosts: node_exporter
//!   on `:9100` and a Prometheus on `:9090` of one machine are one host,
//!   whose series stay apart by their `job` label.
//! - **Metric name**: `__name__` with the series' other labels (the
//!   `instance` label too) in Prometheus's series notation, sorted
//!   (`node_cpu_seconds_total{cpu="0",instance="h:9100",job="node",mode="idle"}`,
//!   [`broker_common::series_name`]); query-api parses it back, so PromQL
//!   sees the labels Prometheus had.
//! - **Time**: milliseconds, kept: one point per (host, millisecond) (a
//!   scrape's samples share a timestamp), its `timestamp` the second (the
//!   shard key) and `millis` the rest. Two samples of one series at one
//!   millisecond: the later one in the request wins.
//! - A point holds at most `gateway.max_metrics_per_point` metrics; a
//!   larger scrape becomes several points (both layouts merge points of
//!   the same host and time metric by metric).
//! - **Values** as Prometheus defines them: NaN (an empty summary's
//!   quantiles), ±Inf, and staleness markers (the NaN Prometheus writes
//!   when a series goes away), stored as such ([`broker_common::value`]):
//!   PromQL ends a series at its marker, as Prometheus's lookback does.
//!
//! # Answers
//! The points go through the same validation, routing and ack-after-durable
//! path as agents' batches ([`crate::gateway`]).
//! - `204`: every sample is durable.
//! - `400`: some samples are invalid (not retried by Prometheus); the valid
//!   ones are stored; the body names the first problems.
//! - `413` / `415`: a body too large, or not snappy protobuf remote write 1.0.
//! - `503` with `Retry-After`: part of the request could not be made
//!   durable now (no writer, Redis and the spool unavailable), or the
//!   gateway has had no in-flight room for a second. Prometheus
//!   sends the whole request again; writes are idempotent, so the samples
//!   already stored are stored once.

use crate::error::GatewayError;
use crate::gateway::Inner;
use crate::samples::Points;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use broker_proto::prometheus::WriteRequest;
use std::sync::Arc;

pub const PATH: &str = "/api/v1/write";

/// Problems named in a 400's body; the rest are counted.
const MAX_PROBLEMS_SHOWN: usize = 5;

pub(crate) fn routes(inner: Arc<Inner>) -> Router {
    let max = inner.max_message_bytes;
    Router::new()
        .route(PATH, post(write))
        // The compressed body; the decompressed size is checked apart.
        .layer(DefaultBodyLimit::max(max))
        .with_state(inner)
}

/// What a request's series became.
#[derive(Debug, Default)]
pub struct Mapped {
    pub points: Points,
    /// Staleness markers among the samples (stored, counted apart).
    pub stale: u64,
}

/// The host id a `instance` label value stands for
/// ([`broker_common::host_id::from_instance`]).
pub fn host_from_instance(instance: &str) -> String {
    broker_common::host_id::from_instance(instance)
}

/// Gathers a request's samples into points ([`Points`]). A series whose
/// name would be invalid is left out here, as a problem of its own.
pub fn map_request(req: WriteRequest, host_label: &str, max_name_len: usize) -> Mapped {
    let mut m = Mapped::default();
    for series in req.timeseries {
        let mut name = None;
        let mut host = None;
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(series.labels.len());
        for l in &series.labels {
            match l.name.as_str() {
                "__name__" => name = Some(l.value.as_str()),
                n => {
                    if n == host_label {
                        host = Some(l.value.as_str());
                    }
                    // The host label stays with the series too, so
                    // dashboards that select or join on `instance` work.
                    labels.push((n, l.value.as_str()));
                }
            }
        }
        let n = series.samples.len() as u64;
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            m.points.reject(
                n,
                format!(
                    "a series with labels {:?} has no __name__",
                    series
                        .labels
                        .iter()
                        .map(|l| format!("{}={:?}", l.name, l.value))
                        .collect::<Vec<_>>()
                ),
            );
            continue;
        };
        let host = match host.map(host_from_instance) {
            Some(h) if !h.is_empty() => h,
            _ => {
                m.points.reject(n, format!(
                    "series {name:?} has no {host_label:?} label to take the host from (gateway.remote_write_host_label)"
                ));
                continue;
            }
        };
        let metric = broker_common::series_name::format(name, &mut labels);
        if let Err(e) = crate::validate::check_metric_name(&metric, max_name_len) {
            m.points.reject(n, format!("host {host:?}: {e}"));
            continue;
        }
        for s in series.samples {
            if broker_common::value::is_stale(s.value) {
                m.stale += 1;
            }
            m.points
                .add(&host, &metric, s.timestamp, s.timestamp, s.value);
        }
    }
    m
}

async fn write(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let (code, response) = match handle(&inner, &headers, &body).await {
        Ok(()) => (
            StatusCode::NO_CONTENT,
            StatusCode::NO_CONTENT.into_response(),
        ),
        Err(e) => {
            let code = e.http_status();
            let mut response = (code, e.to_string()).into_response();
            if let Some(after) = e.retry_after() {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static(after));
            }
            (code, response)
        }
    };
    inner
        .metrics
        .remote_write_requests
        .get_or_create(&vec![("code", code.as_u16().to_string())])
        .inc();
    response
}

async fn handle(inner: &Inner, headers: &HeaderMap, body: &[u8]) -> Result<(), GatewayError> {
    let header = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(enc) = header(header::CONTENT_ENCODING)
        && !enc.eq_ignore_ascii_case("snappy")
    {
        return Err(GatewayError::ContentEncoding {
            encoding: enc.to_string(),
            expected: "remote write bodies are snappy-compressed",
        });
    }
    if let Some(ct) = header(header::CONTENT_TYPE)
        && ct.contains("proto=")
        && !ct.contains("proto=prometheus.WriteRequest")
    {
        return Err(GatewayError::ContentType {
            content_type: ct.to_string(),
            expected: "only remote write 1.0 (prometheus.WriteRequest) is supported",
        });
    }
    let limit = inner.max_message_bytes;
    match snap::raw::decompress_len(body) {
        Ok(n) if n > limit => {
            return Err(GatewayError::TooLarge {
                size: Some(n),
                limit,
                hint: "lower queue_config.max_samples_per_send",
            });
        }
        Ok(_) => {}
        Err(e) => return Err(GatewayError::undecodable("is not snappy-compressed", e)),
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| GatewayError::undecodable("does not decompress", e))?;
    let req = <WriteRequest as prost::Message>::decode(raw.as_slice())
        .map_err(|e| GatewayError::undecodable("is not a prometheus.WriteRequest", e))?;
    let mapped = map_request(
        req,
        &inner.remote_write_host_label,
        inner.limits.max_metric_name_len,
    );
    let out = crate::samples::store(
        inner,
        mapped.points,
        &inner.metrics.remote_write_samples,
        ("stale", mapped.stale),
    )
    .await;
    if let Some(what) = out.retryable {
        return Err(GatewayError::NotStored(what));
    }
    if !out.problems.is_empty() {
        tracing::debug!(
            problems = out.problems.len(),
            stored = out.stored,
            rejected = out.rejected,
            "remote write with invalid samples"
        );
        return Err(GatewayError::InvalidSamples(
            out.summary(MAX_PROBLEMS_SHOWN),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::prometheus::{Label, Sample, TimeSeries};

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
        }
    }

    #[test]
    fn series_group_into_points_per_host_and_millisecond() {
        let req = WriteRequest {
            timeseries: vec![
                series(
                    &[
                        ("__name__", "node_load1"),
                        ("instance", "h1:9100"),
                        ("job", "node"),
                    ],
                    &[(1_000_500, 0.5), (1_001_000, 0.7)],
                ),
                series(
                    &[
                        ("__name__", "node_cpu_seconds_total"),
                        ("cpu", "0"),
                        ("instance", "h1:9100"),
                        ("job", "node"),
                        ("mode", "idle"),
                    ],
                    // Two samples in second 1000, both kept; two at one
                    // millisecond: the later one wins.
                    &[
                        (1_000_100, 10.0),
                        (1_000_900, 11.0),
                        (1_001_000, 9.0),
                        (1_001_000, 12.0),
                    ],
                ),
                series(
                    &[("__name__", "up"), ("instance", "h2:9090")],
                    &[(1_000_000, 1.0)],
                ),
                series(&[("instance", "h2:9090")], &[(1_000_000, 1.0)]),
                series(&[("__name__", "up")], &[(1_000_000, 1.0)]),
                series(
                    &[("__name__", "gone"), ("instance", "h2:9090")],
                    &[(1_000_000, f64::from_bits(broker_common::value::STALE_BITS))],
                ),
                // Left out on their own, not with the rest of h2's second.
                series(
                    &[("__name__", "bad name"), ("instance", "h2:9090")],
                    &[(1_000_000, 1.0)],
                ),
                series(
                    &[("__name__", "nan"), ("instance", "h2:9090")],
                    &[(1_000_000, f64::NAN)],
                ),
            ],
        };
        let mut m = map_request(req, "instance", 128);
        let p = &m.points;
        let problem = |i: usize, what: &str| {
            assert!(p.problems[i].contains(what), "{:?}", p.problems);
        };
        assert_eq!(p.problems.len(), 3, "{:?}", p.problems);
        problem(0, "no __name__");
        problem(1, "no \"instance\" label");
        problem(2, "contains ' '");
        // The staleness marker and the NaN are values, stored.
        assert_eq!((p.samples, p.superseded, m.stale, p.rejected), (8, 1, 1, 3));
        let batches = m.points.batches(100, 100);
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        // (host, second, millis, (metric, value)...) of each point.
        type PointView = (String, i64, u32, Vec<(String, u64)>);
        let got: Vec<PointView> = b
            .points
            .iter()
            .map(|p| {
                (
                    p.host_id.clone(),
                    p.timestamp,
                    p.millis,
                    p.metrics(&b.metric_names)
                        .map(|(n, v)| (n.unwrap().to_string(), v.to_bits()))
                        .collect(),
                )
            })
            .collect();
        let cpu = r#"node_cpu_seconds_total{cpu="0",instance="h1:9100",job="node",mode="idle"}"#;
        let load = r#"node_load1{instance="h1:9100",job="node"}"#;
        assert_eq!(
            got,
            vec![
                ("h1".into(), 1000, 100, vec![(cpu.into(), 10f64.to_bits())]),
                (
                    "h1".into(),
                    1000,
                    500,
                    vec![(load.into(), 0.5f64.to_bits())]
                ),
                ("h1".into(), 1000, 900, vec![(cpu.into(), 11f64.to_bits())]),
                (
                    "h1".into(),
                    1001,
                    0,
                    vec![
                        (cpu.into(), 12f64.to_bits()),
                        (load.into(), 0.7f64.to_bits())
                    ]
                ),
                (
                    "h2".into(),
                    1000,
                    0,
                    vec![
                        (
                            r#"gone{instance="h2:9090"}"#.into(),
                            broker_common::value::STALE_BITS
                        ),
                        (
                            r#"nan{instance="h2:9090"}"#.into(),
                            broker_common::value::NAN_BITS
                        ),
                        (r#"up{instance="h2:9090"}"#.into(), 1f64.to_bits()),
                    ],
                ),
            ]
        );
    }

    #[test]
    fn large_requests_split_into_points_and_batches_within_the_limits() {
        let timeseries = (0..25)
            .map(|i| {
                let name = format!("m{i:02}");
                series(
                    &[("__name__", &name), ("instance", "h")],
                    &[(5_000, i as f64)],
                )
            })
            .chain((0..3).map(|i| {
                let host = format!("other{i}");
                series(&[("__name__", "up"), ("instance", &host)], &[(5_000, 1.0)])
            }))
            .collect();
        let mut m = map_request(WriteRequest { timeseries }, "instance", 128);
        let batches = m.points.batches(2, 10);
        let points: Vec<usize> = batches
            .iter()
            .flat_map(|b| b.points.iter().map(|p| p.values.len()))
            .collect();
        assert_eq!(points, vec![10, 10, 5, 1, 1, 1]);
        assert!(batches.iter().all(|b| b.points.len() <= 2));
        // Each batch's name table holds only its own names.
        for b in &batches {
            let used: usize = b.points.iter().map(|p| p.values.len()).sum();
            assert!(b.metric_names.len() <= used);
        }
    }
}
