//! Why a `Route` failed as a whole, and the one place each reason becomes a
//! gRPC status. (The router has no HTTP API of its own: the gateway in front
//! of it maps what it answers.)
//!
//! Points a writer could not store are not errors of the call: they come
//! back in `RouteResponse.failed`, each with its reason.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The batch fails the checks every point passes at the gateway (run
    /// again here: a peer may send anything).
    #[error("refused by the router's checks: {problem}")]
    Refused { problem: String },
    /// A writer's answer to a forward, after the retries: the writer named,
    /// its status kept as the source (code, message and metadata, such as
    /// the stale-epoch mark).
    #[error("writer {writer}: {}", describe(.status))]
    Writer {
        writer: String,
        #[source]
        status: Status,
    },
}

/// A status as an operator reads it: its message, or its code when it has
/// none (a foreign process at the address may answer with no message).
fn describe(status: &Status) -> String {
    match status.message() {
        "" => format!("{:?} with no message", status.code()),
        m => m.to_string(),
    }
}

impl RouterError {
    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            RouterError::Refused { .. } => Code::InvalidArgument,
            RouterError::Writer { status, .. } => status.code(),
        }
    }

    /// Whether sending the same points again (to this writer or its ring
    /// successor) may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            RouterError::Refused { .. } => false,
            RouterError::Writer { status, .. } => internal_clients::retryable(status),
        }
    }

    /// The writer's epoch when it refused points routed under an older
    /// ring for a range it no longer owns.
    pub fn stale_epoch(&self) -> Option<u64> {
        match self {
            RouterError::Refused { .. } => None,
            RouterError::Writer { status, .. } => internal_clients::stale_epoch(status),
        }
    }
}

impl From<RouterError> for Status {
    fn from(e: RouterError) -> Self {
        let message = e.to_string();
        match e {
            RouterError::Refused { .. } => Status::invalid_argument(message),
            RouterError::Writer { status, .. } => {
                Status::with_metadata(status.code(), message, status.metadata().clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_error_names_the_writer_and_keeps_its_status() {
        let e = RouterError::Writer {
            writer: "w-1".into(),
            status: internal_clients::stale_epoch_status(7, "epoch 6 < 7"),
        };
        assert_eq!(e.stale_epoch(), Some(7));
        assert!(!e.retryable());
        let status = Status::from(e);
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().starts_with("writer w-1: stale ring epoch"),
            "{}",
            status.message()
        );
        assert_eq!(
            internal_clients::stale_epoch(&status),
            Some(7),
            "the mark survives"
        );

        let e = RouterError::Writer {
            writer: "w-2".into(),
            status: Status::unavailable("connection refused"),
        };
        assert!(e.retryable());
        assert_eq!(e.stale_epoch(), None);
        assert_eq!(
            std::error::Error::source(&e).map(|s| s.to_string().contains("connection refused")),
            Some(true)
        );

        let e = RouterError::Refused {
            problem: "point 0: NaN".into(),
        };
        assert_eq!((e.code(), e.retryable()), (Code::InvalidArgument, false));
        assert_eq!(
            Status::from(e).message(),
            "refused by the router's checks: point 0: NaN"
        );
    }
}
