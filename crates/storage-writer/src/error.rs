use tonic::Status;

/// Why a write was not stored. Every variant is retryable by the sender:
/// writes are idempotent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriterError {
    #[error("redis unavailable: {0}")]
    Redis(String),
    #[error("redis pipeline timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("storage-writer is shutting down")]
    ShuttingDown,
    #[error("writer {0:?} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("redis is unavailable and {0}; retry later")]
    SpoolFull(String),
    #[error("redis is unavailable and the spool failed: {0}")]
    Spool(String),
}

impl WriterError {
    /// The one place a writer error becomes a gRPC status.
    pub fn to_status(&self) -> Status {
        match self {
            WriterError::Redis(_) | WriterError::Unreachable(..) | WriterError::ShuttingDown => {
                Status::unavailable(self.to_string())
            }
            WriterError::Timeout(_) => Status::deadline_exceeded(self.to_string()),
            WriterError::SpoolFull(_) => Status::resource_exhausted(self.to_string()),
            WriterError::Spool(_) => Status::unavailable(self.to_string()),
        }
    }
}

impl From<WriterError> for Status {
    fn from(e: WriterError) -> Self {
        e.to_status()
    }
}
