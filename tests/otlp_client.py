"""An application instrumented with the OpenTelemetry Python SDK, exporting
its metrics over OTLP to the broker's gateway: the client of
tests/tests/otlp.rs.

It records a counter, an up-down counter, a histogram and an observable
gauge, exports twice (one second apart, cumulative, as the SDK does by
default), and prints one JSON object to stdout: each export's result and
the values the broker should hold after the last one.

It is configured as the README says, through the SDK's own environment
variables (the exporter and the resource read them):

    OTEL_RESOURCE_ATTRIBUTES=host.name=web-1 \
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=http://127.0.0.1:9093 \
        python3 otlp_client.py --protocol grpc
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=http://127.0.0.1:9190/v1/metrics ... --protocol http
    python3 otlp_client.py ... --delta   # delta temporality: the broker rejects it
"""

import argparse
import json
import sys
import time

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableGauge,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.metrics import Observation


class Recording(MetricExporter):
    """Passes exports to the real exporter and keeps their results (the
    SDK's force_flush does not report them)."""

    def __init__(self, inner):
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self.inner = inner
        self.results = []

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self.results.append(result)
        return result

    def force_flush(self, timeout_millis=10_000):
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis=30_000, **kwargs):
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def exporter(protocol, delta):
    temporality = None
    if delta:
        temporality = {Counter: AggregationTemporality.DELTA}
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter,
        )

        return OTLPMetricExporter(preferred_temporality=temporality)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter,
    )

    return OTLPMetricExporter(preferred_temporality=temporality)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--delta", action="store_true")
    args = p.parse_args()

    rec = Recording(exporter(args.protocol, args.delta))
    # Exports only when flushed, so the test knows what each one held.
    reader = PeriodicExportingMetricReader(rec, export_interval_millis=3_600_000)
    provider = MeterProvider(
        # host.name and the rest from OTEL_RESOURCE_ATTRIBUTES.
        resource=Resource.create(),
        metric_readers=[reader],
        views=[
            View(
                instrument_name="request.latency",
                aggregation=ExplicitBucketHistogramAggregation((0.1, 0.5, 1.0)),
            )
        ],
    )
    meter = provider.get_meter("otlp-client")
    orders = meter.create_counter("shop.orders", unit="1")
    depth = meter.create_up_down_counter("queue.depth")
    latency = meter.create_histogram("request.latency", unit="s")
    temperature = [21.5]
    meter.create_observable_gauge(
        "room.temperature",
        callbacks=[lambda _options: [Observation(temperature[0], {"room": "a"})]],
    )

    orders.add(3, {"method": "card"})
    orders.add(1, {"method": "cash"})
    depth.add(5)
    for v in (0.05, 0.3, 0.7):
        latency.record(v)
    provider.force_flush()
    # The next export lands in a later second.
    time.sleep(1.1)
    orders.add(4, {"method": "card"})
    depth.add(-2)
    for v in (0.2, 2.0):
        latency.record(v)
    temperature[0] = 22.0
    provider.force_flush()
    provider.shutdown()

    json.dump(
        {
            "results": [r.name for r in rec.results],
            "expected": {
                'shop_orders_total{method="card"}': 7,
                'shop_orders_total{method="cash"}': 1,
                "queue_depth": 3,
                "request_latency_count": 5,
                "request_latency_sum": 3.25,
                'request_latency_bucket{le="0.1"}': 1,
                'request_latency_bucket{le="0.5"}': 3,
                'request_latency_bucket{le="1"}': 4,
                'request_latency_bucket{le="+Inf"}': 5,
                'room_temperature{room="a"}': 22.0,
            },
        },
        sys.stdout,
    )
    ok = all(r == MetricExportResult.SUCCESS for r in rec.results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
