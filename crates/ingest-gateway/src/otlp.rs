//! OpenTelemetry metrics in (OTLP): the gRPC
//! `opentelemetry.proto.collector.metrics.v1.MetricsService/Export` on the
//! gateway's gRPC port and HTTP/protobuf `POST /v1/metrics` on its HTTP
//! port, both gzip or uncompressed.
//!
//! # How OTLP metrics become the broker's points
//! The mapping is Prometheus's own OTLP translation (what its
//! `/api/v1/otlp/v1/metrics` receiver does), so dashboards written for
//! either read the same series:
//! - **Host**: the resource attribute `gateway.otlp_host_attribute`
//!   (`host.name` by default; the SDKs set it with
//!   `OTEL_RESOURCE_ATTRIBUTES=host.name=...` or a host resource detector),
//!   with characters a host id cannot hold as `_`. A resource without it is
//!   rejected whole: the broker keeps every series under a host.
//! - **Labels**: `job` from `service.namespace/service.name` (or
//!   `service.name`), `instance` from `service.instance.id`, and each data
//!   point's attributes; names with characters other than letters, digits
//!   and `_` get `_` in their place (`http.method` -> `http_method`).
//! - **Metric name**: the instrument name likewise escaped
//!   (`system.cpu.time` -> `system_cpu_time`); monotonic sums get `_total`.
//!   Unit suffixes are not added.
//! - **Gauges and cumulative sums**: one sample per data point.
//!   **Histograms** (explicit buckets): `_count`, `_sum` and cumulative
//!   `_bucket{le="..."}` samples, the classic Prometheus histogram, so
//!   `histogram_quantile` works on them. **Summaries**: `_count`, `_sum`
//!   and `{quantile="..."}`. **Delta** temporality and **exponential**
//!   histograms are rejected with an error that says what to configure
//!   instead: the broker stores values, not increments.
//! - **Time**: `time_unix_nano` to milliseconds (floor), kept as remote
//!   write's are; the latest sample of a series within a millisecond wins. Points flagged "no recorded
//!   value" are skipped.
//!
//! # Answers
//! Through the agents' ingest path ([`crate::samples::store`]): success,
//! or success with `partial_success` (`rejected_data_points` counts the
//! samples left out, its message the counts and the first problems) when
//! some data was invalid, which the SDKs log and do not retry; `UNAVAILABLE`
//! / HTTP 503 with `Retry-After` when something retryable failed (no
//! writer, Redis and the spool unavailable), which they retry. A body that
//! is not OTLP protobuf gets `INVALID_ARGUMENT` / 400, OTLP/JSON a 415.

use crate::error::GatewayError;
use crate::gateway::Inner;
use crate::remote_write::host_from_instance;
use crate::samples::Points;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, NumberDataPoint, metric::Data, number_data_point,
};
use prost::Message;
use std::io::Read;
use std::sync::Arc;

pub const HTTP_PATH: &str = "/v1/metrics";
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.metrics.v1.MetricsService";

/// Problems named in a partial success's message; the rest are counted.
const MAX_PROBLEMS_SHOWN: usize = 5;
/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`.
const NO_RECORDED_VALUE: u32 = 1;
const PROTOBUF: &str = "application/x-protobuf";

/// What a request's metrics became.
#[derive(Debug, Default)]
pub struct Mapped {
    pub points: Points,
    /// Data points flagged "no recorded value": a gauge's or sum's become
    /// staleness markers (as Prometheus's OTLP receiver writes them), a
    /// histogram's are skipped.
    pub no_value: u64,
}

/// A resource's host and the labels it gives every series under it.
struct Resource {
    host: Option<String>,
    labels: Vec<(String, String)>,
}

fn resource(attrs: &[KeyValue], host_attribute: &str) -> Resource {
    let get = |k: &str| {
        attrs
            .iter()
            .find(|a| a.key == k)
            .map(|a| attr_value(a.value.as_ref()))
            .filter(|v| !v.is_empty())
    };
    let mut labels = Vec::new();
    if let Some(name) = get("service.name") {
        let job = match get("service.namespace") {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        };
        labels.push(("job".to_string(), job));
    }
    if let Some(id) = get("service.instance.id") {
        labels.push(("instance".to_string(), id));
    }
    Resource {
        host: get(host_attribute)
            .map(|h| host_from_instance(&h))
            .filter(|h| !h.is_empty()),
        labels,
    }
}

/// An attribute's value as label text.
fn attr_value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| attr_value(Some(v))).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            let items: Vec<String> = kv
                .values
                .iter()
                .map(|a| format!("{}={}", a.key, attr_value(a.value.as_ref())))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Some(any_value::Value::BytesValue(b)) => {
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        }
        None => String::new(),
    }
}

/// `name` with every character other than `[A-Za-z0-9_]` (and `:` in
/// metric names) as `_`, and `_` before a leading digit.
fn escape(name: &str, colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':') {
            c
        } else {
            '_'
        }
    }));
    out
}

/// Labels of one data point: the resource's, then its attributes (which
/// win on a clash), sorted by name.
fn point_labels(resource: &Resource, attrs: &[KeyValue]) -> Vec<(String, String)> {
    let mut labels: std::collections::BTreeMap<String, String> =
        resource.labels.iter().cloned().collect();
    for a in attrs {
        labels.insert(escape(&a.key, false), attr_value(a.value.as_ref()));
    }
    labels.into_iter().collect()
}

/// Adds one sample of series `name{labels, extra}`.
#[allow(clippy::too_many_arguments)]
fn sample(
    points: &mut Points,
    host: &str,
    name: &str,
    labels: &[(String, String)],
    extra: Option<(&str, &str)>,
    time_ns: u64,
    value: f64,
    max_name_len: usize,
) {
    let mut all: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| Some(*k) != extra.map(|e| e.0))
        .collect();
    all.extend(extra);
    let metric = broker_common::series_name::format(name, &mut all);
    if let Err(e) = crate::validate::check_metric_name(&metric, max_name_len) {
        points.reject(1, format!("host {host:?}: {e}"));
        return;
    }
    points.add(
        host,
        &metric,
        (time_ns / 1_000_000) as i64,
        time_ns.min(i64::MAX as u64) as i64,
        value,
    );
}

/// The samples of one histogram or summary data point: `base` plus a
/// suffix (`_count`, `_sum`, `_bucket`), the point's labels and time.
struct Emit<'a> {
    points: &'a mut Points,
    host: &'a str,
    base: &'a str,
    labels: Vec<(String, String)>,
    time_ns: u64,
    max_name_len: usize,
}

impl Emit<'_> {
    fn sample(&mut self, suffix: &str, extra: Option<(&str, &str)>, v: f64) {
        sample(
            self.points,
            self.host,
            &format!("{}{suffix}", self.base),
            &self.labels,
            extra,
            self.time_ns,
            v,
            self.max_name_len,
        );
    }
}

/// Prometheus's text for a bucket bound or quantile.
fn float_label(f: f64) -> String {
    if f == f64::INFINITY {
        "+Inf".into()
    } else {
        f.to_string()
    }
}

/// Gathers a request's metrics into points (see the module docs for the
/// mapping). What cannot be mapped is a problem of its own.
pub fn map_request(
    req: ExportMetricsServiceRequest,
    host_attribute: &str,
    max_name_len: usize,
) -> Mapped {
    let mut m = Mapped::default();
    for rm in req.resource_metrics {
        let attrs = rm.resource.map(|r| r.attributes).unwrap_or_default();
        let res = resource(&attrs, host_attribute);
        let Some(host) = res.host.clone() else {
            let n: usize = rm
                .scope_metrics
                .iter()
                .flat_map(|s| &s.metrics)
                .map(data_points)
                .sum();
            if n > 0 {
                m.points.reject(
                    n as u64,
                    format!(
                        "a resource without the {host_attribute:?} attribute (gateway.otlp_host_attribute): set it, e.g. OTEL_RESOURCE_ATTRIBUTES={host_attribute}=$(hostname)"
                    ),
                );
            }
            continue;
        };
        for metric in rm.scope_metrics.into_iter().flat_map(|s| s.metrics) {
            let base = escape(&metric.name, true);
            let Some(data) = metric.data else { continue };
            let delta = |t: i32, n: usize, points: &mut Points| {
                let delta = t == AggregationTemporality::Delta as i32;
                if delta {
                    points.reject(
                        n as u64,
                        format!(
                            "metric {:?} has delta temporality; the broker stores cumulative values: set the exporter's temporality preference to cumulative (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative)",
                            metric.name
                        ),
                    );
                }
                delta
            };
            match data {
                Data::Gauge(g) => {
                    for dp in g.data_points {
                        number(&mut m, &host, &base, &res, dp, max_name_len);
                    }
                }
                Data::Sum(s) => {
                    if delta(
                        s.aggregation_temporality,
                        s.data_points.len(),
                        &mut m.points,
                    ) {
                        continue;
                    }
                    let name = if s.is_monotonic && !base.ends_with("_total") {
                        format!("{base}_total")
                    } else {
                        base
                    };
                    for dp in s.data_points {
                        number(&mut m, &host, &name, &res, dp, max_name_len);
                    }
                }
                Data::Histogram(h) => {
                    if delta(
                        h.aggregation_temporality,
                        h.data_points.len(),
                        &mut m.points,
                    ) {
                        continue;
                    }
                    for dp in h.data_points {
                        if dp.flags & NO_RECORDED_VALUE != 0 {
                            m.no_value += 1;
                            continue;
                        }
                        if !dp.bucket_counts.is_empty()
                            && dp.bucket_counts.len() != dp.explicit_bounds.len() + 1
                        {
                            m.points.reject(
                                1,
                                format!(
                                    "histogram {:?} has {} bucket counts for {} bounds (want bounds + 1)",
                                    metric.name,
                                    dp.bucket_counts.len(),
                                    dp.explicit_bounds.len()
                                ),
                            );
                            continue;
                        }
                        let mut add = Emit {
                            points: &mut m.points,
                            host: &host,
                            base: &base,
                            labels: point_labels(&res, &dp.attributes),
                            time_ns: dp.time_unix_nano,
                            max_name_len,
                        };
                        add.sample("_count", None, dp.count as f64);
                        if let Some(sum) = dp.sum {
                            add.sample("_sum", None, sum);
                        }
                        if !dp.bucket_counts.is_empty() {
                            let mut cumulative = 0u64;
                            for (i, c) in dp.bucket_counts.iter().enumerate() {
                                cumulative += c;
                                let le = float_label(
                                    dp.explicit_bounds.get(i).copied().unwrap_or(f64::INFINITY),
                                );
                                add.sample("_bucket", Some(("le", &le)), cumulative as f64);
                            }
                        }
                    }
                }
                Data::Summary(s) => {
                    for dp in s.data_points {
                        if dp.flags & NO_RECORDED_VALUE != 0 {
                            m.no_value += 1;
                            continue;
                        }
                        let mut add = Emit {
                            points: &mut m.points,
                            host: &host,
                            base: &base,
                            labels: point_labels(&res, &dp.attributes),
                            time_ns: dp.time_unix_nano,
                            max_name_len,
                        };
                        add.sample("_count", None, dp.count as f64);
                        add.sample("_sum", None, dp.sum);
                        for q in &dp.quantile_values {
                            let quantile = float_label(q.quantile);
                            add.sample("", Some(("quantile", &quantile)), q.value);
                        }
                    }
                }
                Data::ExponentialHistogram(h) => {
                    m.points.reject(
                        h.data_points.len() as u64,
                        format!(
                            "metric {:?} is an exponential histogram, which the broker does not store: use explicit bucket histograms (the SDKs' default aggregation)",
                            metric.name
                        ),
                    );
                }
            }
        }
    }
    m
}

/// One gauge or sum data point.
fn number(
    m: &mut Mapped,
    host: &str,
    name: &str,
    res: &Resource,
    dp: NumberDataPoint,
    max_name_len: usize,
) {
    // No recorded value: the series ended, a staleness marker as
    // Prometheus's own OTLP receiver writes one.
    let value = if dp.flags & NO_RECORDED_VALUE != 0 {
        m.no_value += 1;
        Some(number_data_point::Value::AsDouble(f64::from_bits(
            broker_common::value::STALE_BITS,
        )))
    } else {
        dp.value
    };
    let value = match value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => {
            m.points
                .reject(1, format!("a data point of {name:?} has no value"));
            return;
        }
    };
    let labels = point_labels(res, &dp.attributes);
    sample(
        &mut m.points,
        host,
        name,
        &labels,
        None,
        dp.time_unix_nano,
        value,
        max_name_len,
    );
}

/// Data points of a metric, of any kind.
fn data_points(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// An export's answer, for either transport: done (perhaps with a partial
/// success naming the samples refused), or not all samples are durable yet
/// and the request is to be sent again.
async fn export(
    inner: &Inner,
    req: ExportMetricsServiceRequest,
) -> Result<ExportMetricsServiceResponse, GatewayError> {
    let mapped = map_request(
        req,
        &inner.otlp_host_attribute,
        inner.limits.max_metric_name_len,
    );
    let out = crate::samples::store(
        inner,
        mapped.points,
        &inner.metrics.otlp_samples,
        ("no_value", mapped.no_value),
    )
    .await;
    if let Some(what) = out.retryable {
        return Err(GatewayError::NotStored(what));
    }
    let partial_success = (!out.problems.is_empty()).then(|| {
        tracing::debug!(
            problems = out.problems.len(),
            stored = out.stored,
            rejected = out.rejected,
            "OTLP export with invalid data"
        );
        ExportMetricsPartialSuccess {
            rejected_data_points: out.rejected as i64,
            error_message: out.summary(MAX_PROBLEMS_SHOWN).trim_end().to_string(),
        }
    });
    Ok(ExportMetricsServiceResponse { partial_success })
}

/// The gRPC `MetricsService`.
#[derive(Clone)]
pub struct Otlp {
    inner: Arc<Inner>,
}

impl Otlp {
    pub(crate) fn server(inner: Arc<Inner>) -> MetricsServiceServer<Self> {
        let max = inner.max_message_bytes;
        MetricsServiceServer::new(Self { inner })
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// Counts an answer by transport and outcome.
    fn count_answer<T>(
        &self,
        transport: &'static str,
        answer: &Result<ExportMetricsServiceResponse, T>,
    ) {
        let outcome = match answer {
            Ok(r) if r.partial_success.is_some() => "partial",
            Ok(_) => "ok",
            Err(_) => "retry",
        };
        self.count(transport, outcome);
    }

    fn count(&self, transport: &'static str, outcome: &'static str) {
        self.inner
            .metrics
            .otlp_requests
            .get_or_create(&vec![("transport", transport), ("outcome", outcome)])
            .inc();
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let answer = export(&self.inner, request.into_inner()).await;
        self.count_answer("grpc", &answer);
        Ok(tonic::Response::new(answer?))
    }
}

pub(crate) fn routes(inner: Arc<Inner>) -> Router {
    let max = inner.max_message_bytes;
    Router::new()
        .route(HTTP_PATH, post(http_export))
        // The compressed body; the decompressed size is checked apart.
        .layer(DefaultBodyLimit::max(max))
        .with_state(Otlp { inner })
}

/// `google.rpc.Status`, the body of OTLP/HTTP error answers.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn protobuf(code: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (code, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF));
    r
}

/// An OTLP/HTTP error answer: `google.rpc.Status` with the error's gRPC
/// code, under its HTTP status.
fn error(e: GatewayError) -> Response {
    let mut r = protobuf(
        e.http_status(),
        RpcStatus {
            code: e.code() as i32,
            message: e.to_string(),
        }
        .encode_to_vec(),
    );
    if let Some(after) = e.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(after));
    }
    r
}

async fn http_export(State(otlp): State<Otlp>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match decode_http(&otlp, &headers, &body) {
        Ok(req) => req,
        Err(e) => {
            otlp.count("http", "invalid");
            return error(e);
        }
    };
    let answer = export(&otlp.inner, req).await;
    otlp.count_answer("http", &answer);
    match answer {
        Ok(r) => protobuf(StatusCode::OK, r.encode_to_vec()),
        Err(e) => error(e),
    }
}

/// An OTLP/HTTP body: protobuf, identity or gzip, at most
/// `gateway.max_message_bytes` once decompressed.
fn decode_http(
    otlp: &Otlp,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ExportMetricsServiceRequest, GatewayError> {
    let header = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(ct) = header(header::CONTENT_TYPE)
        && !ct.starts_with(PROTOBUF)
    {
        return Err(GatewayError::ContentType {
            content_type: ct.to_string(),
            expected: "only OTLP/HTTP protobuf (application/x-protobuf) is supported; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
        });
    }
    let limit = otlp.inner.max_message_bytes;
    let gunzipped;
    let raw = match header(header::CONTENT_ENCODING) {
        None | Some("identity") => body,
        Some(enc) if enc.eq_ignore_ascii_case("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| GatewayError::undecodable("does not gunzip", e))?;
            if out.len() > limit {
                return Err(GatewayError::TooLarge {
                    size: None,
                    limit,
                    hint: "export smaller batches",
                });
            }
            gunzipped = out;
            &gunzipped[..]
        }
        Some(enc) => {
            return Err(GatewayError::ContentEncoding {
                encoding: enc.to_string(),
                expected: "use gzip or none",
            });
        }
    };
    ExportMetricsServiceRequest::decode(raw)
        .map_err(|e| GatewayError::undecodable("is not an OTLP ExportMetricsServiceRequest", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource as OtelResource;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }

    fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(OtelResource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn number(attrs: Vec<KeyValue>, t_ns: u64, v: f64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            time_unix_nano: t_ns,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        }
    }

    fn metric(name: &str, data: Data) -> Metric {
        Metric {
            name: name.into(),
            data: Some(data),
            ..Default::default()
        }
    }

    /// (host, second, metric, value) of every sample, sorted.
    fn samples(mut m: Mapped) -> Vec<(String, i64, String, f64)> {
        let mut out = Vec::new();
        for b in m.points.batches(1000, 1000) {
            for p in &b.points {
                for (n, v) in p.metrics(&b.metric_names) {
                    out.push((p.host_id.clone(), p.timestamp, n.unwrap().to_string(), v));
                }
            }
        }
        out.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn gauges_and_sums_map_to_series_of_the_resource_host() {
        let req = request(
            vec![
                kv("host.name", "web-1"),
                kv("service.name", "shop"),
                kv("service.namespace", "prod"),
                kv("service.instance.id", "i-1"),
            ],
            vec![
                metric(
                    "system.memory.usage",
                    Data::Gauge(Gauge {
                        data_points: vec![
                            number(vec![kv("state", "used")], 100 * S + 5, 7.0),
                            // Later in the same millisecond: wins.
                            number(vec![kv("state", "used")], 100 * S + 9, 8.0),
                        ],
                    }),
                ),
                metric(
                    "http.requests",
                    Data::Sum(Sum {
                        data_points: vec![number(vec![kv("http.method", "GET")], 101 * S, 3.0)],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    }),
                ),
            ],
        );
        let m = map_request(req, "host.name", 256);
        assert!(m.points.problems.is_empty(), "{:?}", m.points.problems);
        let l = r#"instance="i-1",job="prod/shop""#;
        assert_eq!(
            samples(m),
            vec![
                (
                    "web-1".into(),
                    100,
                    format!(r#"system_memory_usage{{{l},state="used"}}"#),
                    8.0
                ),
                (
                    "web-1".into(),
                    101,
                    format!(r#"http_requests_total{{http_method="GET",{l}}}"#),
                    3.0
                ),
            ]
        );
    }

    #[test]
    fn histograms_become_count_sum_and_cumulative_buckets() {
        let req = request(
            vec![kv("host.name", "h")],
            vec![metric(
                "latency",
                Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        time_unix_nano: 50 * S,
                        count: 6,
                        sum: Some(12.5),
                        bucket_counts: vec![1, 2, 3],
                        explicit_bounds: vec![0.5, 1.0],
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            )],
        );
        let got: Vec<(String, f64)> = samples(map_request(req, "host.name", 256))
            .into_iter()
            .map(|s| (s.2, s.3))
            .collect();
        assert_eq!(
            got,
            vec![
                (r#"latency_bucket{le="+Inf"}"#.into(), 6.0),
                (r#"latency_bucket{le="0.5"}"#.into(), 1.0),
                (r#"latency_bucket{le="1"}"#.into(), 3.0),
                ("latency_count".into(), 6.0),
                ("latency_sum".into(), 12.5),
            ]
        );
    }

    #[test]
    fn what_cannot_be_stored_is_named() {
        let delta = metric(
            "requests",
            Data::Sum(Sum {
                data_points: vec![number(vec![], S, 1.0), number(vec![], S, 2.0)],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: true,
            }),
        );
        let nan = metric(
            "temp",
            Data::Gauge(Gauge {
                data_points: vec![number(vec![], S, f64::NAN)],
            }),
        );
        let m = map_request(
            request(vec![kv("host.name", "h")], vec![delta, nan]),
            "host.name",
            256,
        );
        // The delta sum's two points; NaN is a value, stored.
        assert_eq!(m.points.rejected, 2);
        assert_eq!(m.points.problems.len(), 1, "{:?}", m.points.problems);
        assert!(m.points.problems[0].contains("delta temporality"));
        assert_eq!(m.points.samples, 1);
        let gauge = metric(
            "up",
            Data::Gauge(Gauge {
                data_points: vec![number(vec![], S, 1.0)],
            }),
        );
        let m = map_request(
            request(vec![kv("service.name", "x")], vec![gauge]),
            "host.name",
            256,
        );
        assert_eq!(m.points.rejected, 1);
        assert!(
            m.points.problems[0].contains("without the \"host.name\" attribute"),
            "{:?}",
            m.points.problems
        );
    }

    #[test]
    fn names_are_escaped_as_prometheus_does() {
        assert_eq!(escape("system.cpu.time", true), "system_cpu_time");
        assert_eq!(escape("a:b-c", true), "a:b_c");
        assert_eq!(escape("a:b", false), "a_b");
        assert_eq!(escape("9lives", false), "_9lives");
    }
}
