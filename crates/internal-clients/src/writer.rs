//! A storage-writer in this process or behind a gRPC channel.

use crate::{ClientError, MAX_INTERNAL_MESSAGE_BYTES};
use broker_common::security::{AuthChannel, ClientSecurity};
use broker_proto::v1::writer_service_client::WriterServiceClient;
use broker_proto::v1::{MetricBatch, PointError, WriteRequest};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Status};

/// A writer in this process: what its gRPC adapter calls (checks,
/// ownership, the store), implemented by the storage-writer crate.
pub trait LocalWriter: Send + Sync + 'static {
    /// Checks `batch`, routed under `ring_epoch`, and stores it: `Ok` once
    /// it is durable, with the points it refused for what they are (their
    /// host over a cardinality limit; indexes into `batch`).
    fn write(
        &self,
        batch: Arc<MetricBatch>,
        ring_epoch: u64,
    ) -> BoxFuture<'_, Result<Vec<PointError>, Status>>;
}

/// A writer, in this process or behind a gRPC channel.
#[derive(Clone)]
pub enum WriterClient {
    Local(Arc<dyn LocalWriter>),
    Remote {
        addr: String,
        /// Boxed: the channel and its interceptor are large beside `Local`.
        client: Box<WriterServiceClient<AuthChannel>>,
        /// How this channel was made, for other channels to the same
        /// writer (the router's health probes).
        security: ClientSecurity,
    },
}

impl WriterClient {
    pub fn local(handler: Arc<dyn LocalWriter>) -> Self {
        WriterClient::Local(handler)
    }

    /// A lazily connecting channel to `addr` (`http://host:port`), with
    /// the TLS and token of `security`.
    pub fn remote(addr: &str, security: &ClientSecurity) -> Result<Self, ClientError> {
        let channel = security
            .lazy(addr, |ep| {
                broker_common::security::keepalive(
                    ep.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true),
                )
            })
            .map_err(|e| ClientError::Endpoint {
                addr: addr.into(),
                message: e.to_string(),
            })?;
        let client = WriterServiceClient::new(channel)
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES);
        Ok(WriterClient::Remote {
            addr: addr.to_string(),
            client: Box::new(client),
            security: security.clone(),
        })
    }

    /// Writes `batch`, routed under `ring_epoch`, within `timeout`: `Ok`
    /// with the points the writer refused (the rest are durable).
    pub async fn write(
        &self,
        batch: Arc<MetricBatch>,
        ring_epoch: u64,
        timeout: Duration,
    ) -> Result<Vec<PointError>, Status> {
        match self {
            WriterClient::Local(w) => {
                match tokio::time::timeout(timeout, w.write(batch, ring_epoch)).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "local write exceeded {timeout:?}"
                    ))),
                }
            }
            WriterClient::Remote { client, .. } => {
                let mut req = Request::new(WriteRequest {
                    // The router keeps its copy for retries.
                    batch: Some((*batch).clone()),
                    ring_epoch,
                });
                req.set_timeout(timeout);
                let n = batch.points.len();
                let failed = client.clone().write(req).await?.into_inner().failed;
                // A writer names only points of the batch it was sent.
                if let Some(f) = failed.iter().find(|f| f.index as usize >= n) {
                    return Err(Status::internal(format!(
                        "writer refused point {} of a batch of {n}",
                        f.index
                    )));
                }
                Ok(failed)
            }
        }
    }
}
