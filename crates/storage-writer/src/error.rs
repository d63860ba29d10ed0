use tonic::Status;

/// Why a write was not stored. Every variant but [`WriterError::RedisRejected`]
/// is retryable by the sender: writes are idempotent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriterError {
    #[error("redis unavailable: {0}")]
    Redis(String),
    /// Redis answered with an error reply that retrying cannot fix (e.g.
    /// WRONGTYPE on a key someone created with another type). With a spool
    /// such points go to the dead-letter queue instead; without one, this
    /// goes back to the sender.
    #[error("redis refused the write: {0}")]
    RedisRejected(String),
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
            // Not retryable: the router does not retry it nor fail over
            // (another writer writes to the same Redis keys).
            WriterError::RedisRejected(_) => Status::failed_precondition(self.to_string()),
        }
    }

    /// True when retrying the same write cannot succeed until someone
    /// changes the data in Redis.
    pub fn is_permanent(&self) -> bool {
        matches!(self, WriterError::RedisRejected(_))
    }
}

impl From<WriterError> for Status {
    fn from(e: WriterError) -> Self {
        e.to_status()
    }
}

/// Why a dead-letter queue request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DlqError {
    #[error(
        "storage-writer {writer:?} has no dead-letter queue: writer.spool_dir is empty, so points redis refuses go back to their senders"
    )]
    Disabled { writer: String },
    #[error("no dead-letter entry with id {0}")]
    NotFound(u64),
    #[error("invalid dead-letter id {0:?}: expected a non-negative integer")]
    BadId(String),
    #[error(
        "entry {id}: redis still refuses {kept} point(s) ({written} written); the entry keeps them: {reason}"
    )]
    StillRefused {
        id: u64,
        written: usize,
        kept: usize,
        reason: String,
    },
    #[error("entry {id}: not replayed, the entry is kept: {error}")]
    Unavailable { id: u64, error: String },
    #[error("entry {id} does not decode ({error}); discard it")]
    Corrupt { id: u64, error: String },
    #[error("dead-letter queue storage: {0}")]
    Storage(String),
}

impl DlqError {
    /// The one place a DLQ error becomes an HTTP status.
    pub fn http_status(&self) -> u16 {
        match self {
            DlqError::Disabled { .. } | DlqError::NotFound(_) => 404,
            DlqError::BadId(_) => 400,
            DlqError::StillRefused { .. } => 409,
            DlqError::Unavailable { .. } => 503,
            DlqError::Corrupt { .. } => 422,
            DlqError::Storage(_) => 500,
        }
    }
}
