//! The writer's handler of `Write` and its gRPC face; the client that
//! hides local vs remote is [`internal_clients::WriterClient`].

use crate::admission::HostAdmission;
use crate::writer::Writer;
use broker_common::validate::{Limits, first_problem};
use broker_proto::bounded::Bounded;
use broker_proto::v1::ClusterState;
use broker_proto::v1::writer_service_server::{WriterService, WriterServiceServer};
use broker_proto::v1::{MetricBatch, PointError, WriteRequest, WriteResponse};
use hash_ring::HashRing;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub use internal_clients::{
    MAX_INTERNAL_MESSAGE_BYTES, STALE_EPOCH, STALE_EPOCH_KEY, WRITER_SERVICE_NAME, WriterClient,
    stale_epoch,
};

/// What a `Write` does, whoever calls it: the gateway's checks again,
/// the ownership check of the routed epoch, then the writer. The gRPC
/// adapter ([`WriterGrpc`]) and the in-process client
/// ([`WriterClient::Local`]) both call it, so a writer in the router's
/// process takes exactly what a remote one takes.
pub struct WriteHandler {
    writer: Arc<Writer>,
    ownership: Option<Ownership>,
    /// The gateway's checks, run again on what peers send.
    limits: Limits,
    /// `writer.max_hosts` and `writer.max_new_hosts_per_minute`.
    admission: HostAdmission,
}

/// The gRPC face of a [`WriteHandler`].
pub struct WriterGrpc(Arc<WriteHandler>);

/// What this writer owns, from the committed cluster state.
pub struct Ownership {
    id: String,
    state: watch::Receiver<Arc<ClusterState>>,
    /// The ring of the last epoch checked against.
    ring: Mutex<Option<(u64, Arc<HashRing>)>>,
}

impl Ownership {
    pub fn new(id: &str, state: watch::Receiver<Arc<ClusterState>>) -> Self {
        Self {
            id: id.to_string(),
            state,
            ring: Mutex::new(None),
        }
    }

    /// Refuses `batch` if it was routed under an epoch older than the one
    /// this writer has seen and holds points this writer does not own in
    /// the newer ring. Points routed under the current epoch are always
    /// taken (a router may fail over to this writer while the owner is
    /// down).
    pub fn check(&self, batch: &MetricBatch, routed_epoch: u64) -> Result<(), Status> {
        let state = self.state.borrow().clone();
        if routed_epoch == 0 || routed_epoch >= state.epoch {
            return Ok(());
        }
        let ring = {
            let mut cached = self.ring.lock().unwrap_or_else(|e| e.into_inner());
            match &*cached {
                Some((e, r)) if *e == state.epoch => r.clone(),
                _ => {
                    let r = Arc::new(cluster_client::ring_of(&state).map(|(r, _)| r).map_err(
                        |e| Status::internal(format!("ring of epoch {}: {e}", state.epoch)),
                    )?);
                    *cached = Some((state.epoch, r.clone()));
                    r
                }
            }
        };
        let foreign = batch
            .points
            .iter()
            .filter(|p| {
                ring.owner_of_point(&p.host_id, p.timestamp)
                    .is_none_or(|n| n.id != self.id)
            })
            .count();
        if foreign == 0 {
            return Ok(());
        }
        Err(internal_clients::stale_epoch_status(
            state.epoch,
            &format!(
                "routed under epoch {routed_epoch}, the ring is at epoch {} where writer {} does not own {foreign} of the {} points",
                state.epoch,
                self.id,
                batch.points.len()
            ),
        ))
    }
}

impl WriteHandler {
    pub fn new(writer: Arc<Writer>) -> Self {
        let admission = HostAdmission::new(&Default::default(), writer.metrics());
        Self {
            writer,
            ownership: None,
            limits: Limits::new(&Default::default(), broker_common::config::DEFAULT_TTL).internal(),
            admission,
        }
    }

    /// The limits of this deployment (`gateway.*`, `ttl`, the host
    /// limits of `writer.*`) for the checks every `Write` passes.
    pub fn with_limits(mut self, config: &broker_common::BrokerConfig) -> Self {
        self.limits = Limits::new(&config.gateway, config.ttl).internal();
        self.admission = HostAdmission::new(&config.writer, self.writer.metrics());
        self
    }

    /// Checks each batch's routing epoch against the committed ring.
    pub fn with_ownership(mut self, ownership: Option<Ownership>) -> Self {
        self.ownership = ownership;
        self
    }

    /// Checks `batch` and stores it: `Ok` once it is durable, with the
    /// points refused by the host limits (indexes into `batch`; the others
    /// are stored).
    pub async fn write(
        &self,
        batch: Arc<MetricBatch>,
        ring_epoch: u64,
    ) -> Result<Vec<PointError>, Status> {
        // The gateway checked every point; a peer that did not (a bug, or
        // a client of the internal port) must not reach Redis with keys or
        // values the gateway would refuse.
        if let Some(problem) = first_problem(&batch, &self.limits, broker_common::unix_now()) {
            return Err(Status::invalid_argument(format!(
                "refused by the writer's checks: {problem}"
            )));
        }
        if let Some(o) = &self.ownership {
            o.check(&batch, ring_epoch)?;
        }
        // Redis down or slow: the hosts are admitted (the batch goes to
        // the spool) rather than the fleet refused or held up.
        let refused = if self.writer.redis_up() {
            tokio::time::timeout(
                crate::admission::CHECK_TIMEOUT,
                self.admission.check(&self.writer.redis(), &batch),
            )
            .await
            .unwrap_or_default()
        } else {
            Vec::new()
        };
        let batch = if refused.is_empty() {
            batch
        } else {
            Arc::new(crate::admission::without(&batch, &refused))
        };
        self.writer.write(batch).await?;
        Ok(refused.into_iter().map(|r| r.error).collect())
    }

    /// The gRPC service; a request's batch is counted against the limits
    /// before it is decoded.
    pub fn into_server(self: Arc<Self>) -> Bounded<WriterServiceServer<WriterGrpc>> {
        let bounds = self.limits.batch_bounds();
        Bounded::new(
            WriterServiceServer::new(WriterGrpc(self))
                .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES),
            bounds,
        )
    }
}

impl internal_clients::LocalWriter for WriteHandler {
    fn write(
        &self,
        batch: Arc<MetricBatch>,
        ring_epoch: u64,
    ) -> futures::future::BoxFuture<'_, Result<Vec<PointError>, Status>> {
        Box::pin(WriteHandler::write(self, batch, ring_epoch))
    }
}

#[tonic::async_trait]
impl WriterService for WriterGrpc {
    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let req = request.into_inner();
        let batch = Arc::new(req.batch.unwrap_or_default());
        let failed = self.0.write(batch, req.ring_epoch).await?;
        Ok(Response::new(WriteResponse { failed }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::{Member, MemberRole, MemberState, Point};

    fn state(epoch: u64, writers: &[&str]) -> ClusterState {
        ClusterState {
            epoch,
            members: writers
                .iter()
                .map(|id| Member {
                    id: id.to_string(),
                    roles: vec![MemberRole::StorageWriter as i32],
                    addr: format!("http://127.0.0.1:1/{id}"),
                    state: MemberState::Online as i32,
                    weight: 1,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn batch(hosts: impl Iterator<Item = String>) -> MetricBatch {
        MetricBatch {
            seq: 1,
            metric_names: vec!["m".into()],
            points: hosts
                .map(|h| Point {
                    host_id: h,
                    timestamp: 1_700_000_000,
                    values: vec![1.0],
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// Only points routed under an older epoch that this writer does not
    /// own in the newer ring are refused; current-epoch points always pass
    /// (failover while their owner is down), and so do static-mode ones.
    #[test]
    fn only_stale_points_of_another_owner_are_refused() {
        let (tx, rx) = watch::channel(Arc::new(state(5, &["a", "b"])));
        let own = Ownership::new("a", rx);
        let (ring, _) = cluster_client::ring_of(&state(5, &["a", "b"])).unwrap();
        let owner = |h: &String| ring.owner_of_point(h, 1_700_000_000).unwrap().id.clone();
        let all: Vec<String> = (0..50).map(|i| format!("h{i}")).collect();
        let mine: Vec<String> = all.iter().filter(|h| owner(h) == "a").cloned().collect();
        assert!(!mine.is_empty() && mine.len() < all.len());

        // routed under epoch 4: refused, naming both epochs and the count
        let err = own.check(&batch(all.iter().cloned()), 4).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let foreign = all.len() - mine.len();
        assert!(err.message().starts_with(STALE_EPOCH), "{}", err.message());
        assert!(
            err.message().contains(&format!(
                "routed under epoch 4, the ring is at epoch 5 where writer a does not own {foreign} of the 50 points"
            )),
            "{}",
            err.message()
        );
        // points it owns, current or newer epoch, or no epoch: taken
        own.check(&batch(mine.iter().cloned()), 4).unwrap();
        own.check(&batch(all.iter().cloned()), 5).unwrap();
        own.check(&batch(all.iter().cloned()), 6).unwrap();
        own.check(&batch(all.iter().cloned()), 0).unwrap();

        // a newer epoch where `a` is alone: everything is its own again
        tx.send_replace(Arc::new(state(6, &["a"])));
        own.check(&batch(all.iter().cloned()), 4).unwrap();
    }
}
