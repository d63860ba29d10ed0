//! The crate's one error type.

use std::sync::Arc;

/// Everything that can go wrong on the agent side of `SendMetrics`.
///
/// Per-point rejections are not errors: they arrive inside a successful
/// [`BatchAck`](broker_proto::v1::BatchAck) and the caller reads them there.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The client was given an empty endpoint list.
    #[error("no gateway endpoints configured")]
    NoEndpoints,

    /// An endpoint string is not a valid URI.
    #[error("invalid gateway endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },

    /// Every endpoint was tried and none accepted a `SendMetrics` stream.
    /// `last` is the failure of the last endpoint tried; every failure is
    /// also logged as it happens.
    #[error("no gateway reachable at {}", endpoints.join(", "))]
    Unreachable {
        endpoints: Vec<String>,
        #[source]
        last: Box<AgentError>,
    },

    /// The TCP/HTTP/2 connection to one endpoint could not be made.
    #[error("connecting to {endpoint} failed")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },

    /// The connection was made but the gateway refused the stream.
    #[error("opening the metrics stream on {endpoint} failed")]
    Open {
        endpoint: String,
        #[source]
        source: tonic::Status,
    },

    /// The gateway did not answer the stream open in time.
    #[error("opening the metrics stream on {endpoint} timed out")]
    OpenTimeout { endpoint: String },

    /// The stream ended before the ack for batch `seq` arrived. The batch may
    /// or may not have been stored; resending is safe because writes are
    /// idempotent. The client does not keep a copy: the caller owns resending.
    #[error("stream to {endpoint} closed before batch {seq} was acknowledged")]
    StreamClosed {
        endpoint: String,
        seq: u64,
        /// The gRPC status the stream failed with; `None` when the gateway
        /// ended the stream cleanly with acks still owed.
        #[source]
        source: Option<Arc<tonic::Status>>,
    },

    /// [`AgentClient::close`](crate::AgentClient::close) was called.
    #[error("client is closed")]
    Closed,

    /// A load configuration value is out of range.
    #[error("invalid load config: {key}: {problem}")]
    InvalidConfig { key: &'static str, problem: String },
}

impl AgentError {
    /// True when the same batch may succeed if sent again (on a new stream,
    /// possibly to another endpoint).
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentError::Unreachable { .. }
            | AgentError::Connect { .. }
            | AgentError::OpenTimeout { .. }
            | AgentError::StreamClosed { .. } => true,
            // CANCELLED and UNKNOWN ("transport error"): the connection
            // closed under the call (a server at its max_connections closes
            // new ones on accept).
            AgentError::Open { source, .. } => matches!(
                source.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
            ),
            AgentError::NoEndpoints
            | AgentError::InvalidEndpoint { .. }
            | AgentError::Closed
            | AgentError::InvalidConfig { .. } => false,
        }
    }
}
