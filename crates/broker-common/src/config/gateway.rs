//! `gateway.*`: the ingest-gateway's limits and where it forwards.

use super::{check_endpoint, nonzero_duration, positive};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const DEFAULT_MAX_POINTS_PER_BATCH: usize = 10_000;
pub const DEFAULT_MAX_METRICS_PER_POINT: usize = 1_024;
pub const DEFAULT_MAX_HOST_ID_LEN: usize = 128;
/// Room for a remote-written series' labels in its name
/// (`node_exporter_build_info{branch="...",goversion="...",...}`).
pub const DEFAULT_MAX_METRIC_NAME_LEN: usize = 256;
pub const DEFAULT_MAX_LABELS_PER_POINT: usize = 32;
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// One stream per agent for 10,000 agents on one gateway.
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
pub const DEFAULT_MAX_INFLIGHT_BATCHES_PER_STREAM: usize = 16;
pub const DEFAULT_MAX_INFLIGHT_POINTS: usize = 200_000;
/// Long enough for the router to go through its retries (1 s, 2 s, 4 s plus
/// write deadlines) before the gateway gives up on a batch.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Highest `gateway.max_metrics_per_point`: the chunked layout's records
/// count a point's metrics in 15 bits.
pub const MAX_METRICS_PER_POINT_LIMIT: usize = 32_767;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Shard-router endpoints (`http://host:port`), used round robin with
    /// failover. Empty means the router in this same process.
    pub routers: Vec<String>,
    pub max_points_per_batch: usize,
    pub max_metrics_per_point: usize,
    pub max_host_id_len: usize,
    pub max_metric_name_len: usize,
    pub max_labels_per_point: usize,
    /// Points stamped further than this ahead of the gateway's clock are
    /// rejected (clock skew allowance).
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Largest encoded message accepted on the agent stream.
    pub max_message_bytes: usize,
    /// Batches of one stream being stored at once; past this the gateway
    /// stops reading the stream, so HTTP/2 flow control slows the agent.
    pub max_inflight_batches_per_stream: usize,
    /// Points being stored at once across all streams (same mechanism).
    pub max_inflight_points: usize,
    /// Agent streams open at once; a stream past this is refused with
    /// RESOURCE_EXHAUSTED (each may hold a message being decoded).
    pub max_streams: usize,
    /// Deadline of one gateway -> router call.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Prometheus remote write (`POST /api/v1/write`): the label whose
    /// value names the host (its `:port` dropped). The series' other
    /// labels stay with the metric name.
    pub remote_write_host_label: String,
    /// OTLP metrics (gRPC `MetricsService/Export`, HTTP `/v1/metrics`):
    /// the resource attribute whose value names the host.
    pub otlp_host_attribute: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            routers: Vec::new(),
            max_points_per_batch: DEFAULT_MAX_POINTS_PER_BATCH,
            max_metrics_per_point: DEFAULT_MAX_METRICS_PER_POINT,
            max_host_id_len: DEFAULT_MAX_HOST_ID_LEN,
            max_metric_name_len: DEFAULT_MAX_METRIC_NAME_LEN,
            max_labels_per_point: DEFAULT_MAX_LABELS_PER_POINT,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_inflight_batches_per_stream: DEFAULT_MAX_INFLIGHT_BATCHES_PER_STREAM,
            max_inflight_points: DEFAULT_MAX_INFLIGHT_POINTS,
            max_streams: DEFAULT_MAX_STREAMS,
            forward_timeout: DEFAULT_FORWARD_TIMEOUT,
            remote_write_host_label: "instance".into(),
            otlp_host_attribute: "host.name".into(),
        }
    }
}

impl GatewayConfig {
    /// Reports every problem of `gateway.*` to `bad`, with its key.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        for (i, r) in self.routers.iter().enumerate() {
            if let Err(e) = check_endpoint(r) {
                bad(&format!("gateway.routers[{i}]"), e);
            }
        }
        positive(
            bad,
            "gateway.max_points_per_batch",
            self.max_points_per_batch,
        );
        positive(
            bad,
            "gateway.max_metrics_per_point",
            self.max_metrics_per_point,
        );
        // A stored record counts its metrics in 15 bits.
        if self.max_metrics_per_point > MAX_METRICS_PER_POINT_LIMIT {
            bad(
                "gateway.max_metrics_per_point",
                format!("must be at most {MAX_METRICS_PER_POINT_LIMIT}"),
            );
        }
        positive(bad, "gateway.max_host_id_len", self.max_host_id_len);
        positive(bad, "gateway.max_metric_name_len", self.max_metric_name_len);
        positive(bad, "gateway.max_message_bytes", self.max_message_bytes);
        positive(bad, "gateway.max_streams", self.max_streams);
        positive(
            bad,
            "gateway.max_inflight_batches_per_stream",
            self.max_inflight_batches_per_stream,
        );
        if self.max_inflight_points < self.max_points_per_batch {
            bad(
                "gateway.max_inflight_points",
                format!(
                    "{} is smaller than gateway.max_points_per_batch ({}), so a full batch could never be admitted",
                    self.max_inflight_points, self.max_points_per_batch
                ),
            );
        }
        nonzero_duration(bad, "gateway.forward_timeout", self.forward_timeout);
        if self.remote_write_host_label.is_empty() {
            bad(
                "gateway.remote_write_host_label",
                "must name a label (Prometheus's is `instance`)".to_string(),
            );
        }
        if self.otlp_host_attribute.is_empty() {
            bad(
                "gateway.otlp_host_attribute",
                "must name a resource attribute (OpenTelemetry's is `host.name`)".to_string(),
            );
        }
    }
}
