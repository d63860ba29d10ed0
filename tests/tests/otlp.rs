//! OTLP metrics into the gateway: an application instrumented with the
//! real OpenTelemetry Python SDK (`tests/otlp_client.py`, PyPI
//! `opentelemetry-sdk` and its OTLP exporters) exports over gRPC and over
//! HTTP/protobuf, and query-api answers PromQL over what it exported; and
//! the answers to data the broker cannot store, with hand-built requests.

use broker_common::Service;
use broker_tests::{
    RedisServer, Running, config_for, instant, instant_eventually, metric, post_bytes,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const SERVICES: &[Service] = &Service::DEFAULT;

/// Runs `tests/otlp_client.py --protocol P [--delta]`, configured as the
/// README's OpenTelemetry snippet says: `OTEL_RESOURCE_ATTRIBUTES` with
/// `host.name` and `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`; its JSON report.
fn sdk_client(protocol: &str, endpoint: &str, host: &str, delta: bool) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/otlp_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--protocol", protocol])
        .args(delta.then_some("--delta"))
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("host.name={host},service.name=shop,service.instance.id={host}-1"),
        )
        .env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", endpoint)
        .output()
        .expect("python3 (scripts/deps.sh installs the OpenTelemetry SDK)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the OpenTelemetry SDK is missing: run scripts/deps.sh\n{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("otlp_client.py printed no report ({e})\n{stderr}"));
    assert!(
        out.status.success(),
        "otlp_client.py failed: {report}\n{stderr}"
    );
    report
}

/// Every export of the client's run (two flushes and the shutdown's)
/// succeeded.
fn all_succeeded(report: &Value, what: &str) {
    let results = report["results"].as_array().unwrap();
    assert!(
        results.len() >= 2 && results.iter().all(|r| r == "SUCCESS"),
        "{what}: {results:?}"
    );
}

/// Waits until `q` answers exactly one series with `want`.
async fn wait_value(addr: SocketAddr, q: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        last = instant(addr, q).await;
        if let [one] = last.as_slice()
            && one["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) == Some(want)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{q}: want one series of {want}, have {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_sdk_exports_over_grpc_and_http() {
    let redis = RedisServer::start().expect("redis-server");
    let broker = Running::broker(config_for(&redis.url()), SERVICES).await;
    let grpc = broker.grpc.to_string();
    let grpc_url = format!("http://{grpc}");
    let http_endpoint = format!("http://{}/v1/metrics", broker.http);
    for (protocol, endpoint, host) in [
        ("grpc", grpc_url.as_str(), "otel-grpc"),
        ("http", http_endpoint.as_str(), "otel-http"),
    ] {
        let report = tokio::task::spawn_blocking({
            let endpoint = endpoint.to_string();
            move || sdk_client(protocol, &endpoint, host, false)
        })
        .await
        .unwrap();
        all_succeeded(&report, protocol);
        for (series, want) in report["expected"].as_object().unwrap() {
            // name{labels} -> name{labels,host="..."}
            let q = match series.strip_suffix('}') {
                Some(s) => format!("{s},host=\"{host}\"}}"),
                None => format!("{series}{{host=\"{host}\"}}"),
            };
            wait_value(broker.http, &q, want.as_f64().unwrap()).await;
        }
        // The resource's service becomes job and instance, as in
        // Prometheus's OTLP translation.
        let s = instant(broker.http, &format!("queue_depth{{host=\"{host}\"}}")).await;
        assert_eq!(s[0]["metric"]["job"], "shop", "{s:?}");
        assert_eq!(s[0]["metric"]["instance"], format!("{host}-1"), "{s:?}");
    }
    // PromQL over the exported series.
    let per_method = instant(
        broker.http,
        r#"sum by (host) (shop_orders_total{host=~"otel-.*"})"#,
    )
    .await;
    assert_eq!(per_method.len(), 2, "{per_method:?}");
    for s in &per_method {
        assert_eq!(s["value"][1], "8", "{s}");
    }

    // Delta temporality is rejected with a reason, and not retried: the
    // SDK's exports succeed with a partial success.
    let rejected = r#"broker_ingest_otlp_samples_total{outcome="rejected"}"#;
    let before = metric(broker.http, rejected).await;
    let grpc_endpoint = format!("http://{grpc}");
    let report =
        tokio::task::spawn_blocking(move || sdk_client("grpc", &grpc_endpoint, "otel-delta", true))
            .await
            .unwrap();
    all_succeeded(&report, "grpc, delta");
    assert_eq!(
        metric(broker.http, rejected).await - before,
        3.0,
        "delta exports carry what changed: card and cash, then card"
    );
    assert!(
        instant(broker.http, r#"shop_orders_total{host="otel-delta"}"#)
            .await
            .is_empty()
    );
    wait_value(broker.http, r#"queue_depth{host="otel-delta"}"#, 3.0).await;
    broker.stop().await;
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn gauge_request(
    resource: Vec<KeyValue>,
    name: &str,
    t: i64,
    v: f64,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: t as u64 * 1_000_000_000,
                            value: Some(number_data_point::Value::AsDouble(v)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// POSTs `body` to `/v1/metrics` with the given headers; the status, the
/// Content-Type and the body.
async fn post(addr: SocketAddr, headers: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let a = post_bytes(addr, "/v1/metrics", headers, body).await;
    let ct = a.header("content-type").unwrap_or_default();
    (a.status, ct, a.body)
}

/// `google.rpc.Status`, OTLP/HTTP's error body.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_the_broker_cannot_store_gets_a_clear_answer() {
    let redis = RedisServer::start().expect("redis-server");
    let broker = Running::broker(config_for(&redis.url()), SERVICES).await;
    let now = broker_tests::now();
    let mut client = MetricsServiceClient::connect(format!("http://{}", broker.grpc))
        .await
        .unwrap();

    // No host.name: rejected, named, and the rest of the request stored.
    let mut req = gauge_request(vec![kv("service.name", "x")], "lost", now, 1.0);
    req.resource_metrics.extend(
        gauge_request(vec![kv("host.name", "kept-host")], "kept", now, 2.0).resource_metrics,
    );
    let answer = client.export(req).await.unwrap().into_inner();
    let partial = answer.partial_success.expect("a partial success");
    assert_eq!(partial.rejected_data_points, 1);
    assert!(
        partial
            .error_message
            .starts_with("1 samples stored, 1 rejected")
            && partial.error_message.contains("host.name"),
        "{}",
        partial.error_message
    );
    assert_eq!(instant(broker.http, "kept").await.len(), 1);

    // NaN over HTTP, gzip: a value in OTLP as in Prometheus, stored and
    // answered (before: refused as non-finite).
    let req = gauge_request(vec![kv("host.name", "h")], "empty_quantile", now, f64::NAN);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &req.encode_to_vec()).unwrap();
    let (status, ct, body) = post(
        broker.http,
        "Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\n",
        &gz.finish().unwrap(),
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "application/x-protobuf"));
    let answer =
        opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse::decode(
            body.as_slice(),
        )
        .unwrap();
    assert!(
        answer
            .partial_success
            .as_ref()
            .is_none_or(|p| p.rejected_data_points == 0),
        "{answer:?}"
    );
    // (A new host is in query-api's host list within hosts_cache_ttl.)
    let nan = instant_eventually(broker.http, "empty_quantile").await;
    assert_eq!(nan.len(), 1, "{nan:?}");
    assert_eq!(nan[0]["value"][1], "NaN", "{nan:?}");

    // Not OTLP protobuf: 400 with a google.rpc.Status naming why.
    let (status, _, body) = post(
        broker.http,
        "Content-Type: application/x-protobuf\r\n",
        &[0xff; 32],
    )
    .await;
    assert_eq!(status, 400);
    let s = RpcStatus::decode(body.as_slice()).unwrap();
    assert_eq!(s.code, tonic::Code::InvalidArgument as i32);
    assert!(s.message.contains("not an OTLP"), "{}", s.message);
    // OTLP/JSON: 415, naming the protocol to use.
    let (status, _, body) = post(broker.http, "Content-Type: application/json\r\n", b"{}").await;
    assert_eq!(status, 415);
    let s = RpcStatus::decode(body.as_slice()).unwrap();
    assert!(s.message.contains("http/protobuf"), "{}", s.message);
    broker.stop().await;
}
