//! The `broker.v1.QueryService` gRPC server: the same engine calls as the
//! HTTP/JSON API, in protobuf.

use crate::agg::AggFn;
use crate::cluster::ClusterView;
use crate::engine::{AggQuery, Engine, HostSelector, RangeQuery};
use crate::store::HostInfo as Info;
use broker_proto::v1::query_service_server::{QueryService, QueryServiceServer};
use broker_proto::v1::{
    AggregateRequest, AggregateResponse, AggregateSeries, Bucket, ClusterStatusRequest,
    ClusterStatusResponse, HostInfo, HostRequest, HostsRequest, HostsResponse, MetricSeries,
    PointRequest, PointResponse, RangeRequest, RangeResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub const QUERY_SERVICE_NAME: &str = "broker.v1.QueryService";

#[derive(Clone)]
pub struct QueryGrpc {
    engine: Arc<Engine>,
    cluster: ClusterView,
}

impl QueryGrpc {
    pub fn new(engine: Arc<Engine>, cluster: ClusterView) -> Self {
        Self { engine, cluster }
    }

    pub fn into_server(self) -> QueryServiceServer<Self> {
        QueryServiceServer::new(self)
    }
}

fn host_info(h: Info) -> HostInfo {
    HostInfo {
        id: h.id,
        last_seen: h.last_seen,
        labels: h.labels.into_iter().collect(),
        points: h.points,
        metrics: h.metrics,
    }
}

#[tonic::async_trait]
impl QueryService for QueryGrpc {
    async fn point(&self, req: Request<PointRequest>) -> Result<Response<PointResponse>, Status> {
        let r = req.into_inner();
        let e = &self.engine;
        let p = e
            .run("point", e.point(&r.host, r.timestamp, &r.metrics))
            .await?;
        Ok(Response::new(PointResponse {
            host: p.host,
            timestamp: p.timestamp,
            metrics: p.metrics.into_iter().collect(),
        }))
    }

    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = req.into_inner();
        let q = RangeQuery {
            host: r.host,
            start: r.start,
            end: r.end,
            metrics: r.metrics,
            limit: r.limit as usize,
            max_points: r.max_points as usize,
        };
        let e = &self.engine;
        let res = e.run("range", e.range(&q)).await?;
        // min and max are filled only when downsampled.
        let column = |of: &Option<std::collections::BTreeMap<String, Vec<f64>>>, m: &str| {
            of.as_ref()
                .and_then(|c| c.get(m))
                .cloned()
                .unwrap_or_default()
        };
        Ok(Response::new(RangeResponse {
            host: res.host.clone(),
            timestamps: res.timestamps.clone(),
            series: res
                .metrics
                .iter()
                .map(|(m, v)| MetricSeries {
                    metric: m.clone(),
                    values: v.clone(),
                    min: column(&res.min, m),
                    max: column(&res.max, m),
                })
                .collect(),
            truncated: res.truncated,
            next_start: res.next_start.unwrap_or(0),
            bucket_secs: res.bucket_secs,
        }))
    }

    async fn aggregate(
        &self,
        req: Request<AggregateRequest>,
    ) -> Result<Response<AggregateResponse>, Status> {
        let r = req.into_inner();
        let function = AggFn::from_proto(r.function)?;
        let sel = r.selector.unwrap_or_default();
        let q = AggQuery {
            selector: HostSelector {
                hosts: sel.hosts,
                labels: sel.labels.into_iter().collect(),
                prefix: sel.prefix,
            },
            metric: r.metric,
            function,
            start: r.start,
            end: r.end,
            step: r.step,
            per_host: r.per_host,
        };
        let e = &self.engine;
        let res = e.run("aggregate", e.aggregate(&q)).await?;
        Ok(Response::new(AggregateResponse {
            metric: res.metric.clone(),
            function: function.to_proto() as i32,
            hosts: res.hosts.clone(),
            series: res
                .series
                .iter()
                .map(|s| AggregateSeries {
                    host: s.host.clone().unwrap_or_default(),
                    buckets: s
                        .buckets
                        .iter()
                        .map(|b| Bucket {
                            timestamp: b.timestamp,
                            value: b.value,
                            samples: b.samples,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn hosts(&self, req: Request<HostsRequest>) -> Result<Response<HostsResponse>, Status> {
        let r = req.into_inner();
        let labels = r.labels.into_iter().collect();
        let e = &self.engine;
        let (hosts, next) = e
            .run(
                "hosts",
                e.hosts(&labels, &r.prefix, &r.after, r.limit as usize, true),
            )
            .await?;
        Ok(Response::new(HostsResponse {
            hosts: hosts.into_iter().map(host_info).collect(),
            next_after: next.unwrap_or_default(),
        }))
    }

    async fn host(&self, req: Request<HostRequest>) -> Result<Response<HostInfo>, Status> {
        let r = req.into_inner();
        let e = &self.engine;
        let h = e.run("host", e.host(&r.host)).await?;
        Ok(Response::new(host_info(h)))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let e = &self.engine;
        Ok(Response::new(
            e.run("cluster", self.cluster.status()).await?,
        ))
    }
}
