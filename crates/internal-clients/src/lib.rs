//! Clients of the services broker processes call each other on: a
//! shard-router (`RouterService.Route`) and a storage-writer
//! (`WriterService.Write`). Each client type holds either a service in this
//! process or gRPC channels to other processes, so the gateway and the
//! router are written once for both (monolithic mode skips the network).
//! The in-process side is a trait the service crate implements with the
//! very handler its gRPC adapter calls; this crate names no service crate,
//! so a gateway links neither the router's nor the writer's dependencies
//! (no Redis client, no embedded store).
//!
//! # Layout
//! - [`WriterClient`] and [`LocalWriter`]: a writer here or there.
//! - [`RouterClient`] and [`LocalRouter`]: a router here, or round robin
//!   with failover over remote ones.
//! - [`retryable`], [`stale_epoch`]: what a status from either means.
//! - [`AdminClient`]: any process's admin HTTP API, and a writer's
//!   dead-letter queue on it, whose answers are in [`dlq`].

#![forbid(unsafe_code)]

mod admin;
pub mod dlq;
mod router;
mod writer;

pub use admin::{AdminClient, AdminError};
pub use router::{LocalRouter, RouterClient};
pub use writer::{LocalWriter, WriterClient};

use tonic::{Code, Status};

pub const ROUTER_SERVICE_NAME: &str = "broker.v1.RouterService";
pub const WRITER_SERVICE_NAME: &str = "broker.v1.WriterService";
/// Internal messages can be as large as an agent's batch.
pub const MAX_INTERNAL_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Begins the message of a writer's refusal of points routed under an
/// older ring epoch for a range it no longer owns (`FAILED_PRECONDITION`).
pub const STALE_EPOCH: &str = "stale ring epoch";
/// The status metadata that marks that refusal, with the writer's epoch as
/// its value: the router routes such points again under its newer ring.
pub const STALE_EPOCH_KEY: &str = "broker-stale-epoch";

/// The ring epoch a writer refused a batch under for being routed with an
/// older one, if `status` is that refusal.
pub fn stale_epoch(status: &Status) -> Option<u64> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    status
        .metadata()
        .get(STALE_EPOCH_KEY)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The refusal [`stale_epoch`] recognises: `message` after
/// [`STALE_EPOCH`], marked with the writer's `epoch`.
pub fn stale_epoch_status(epoch: u64, message: &str) -> Status {
    let mut status = Status::failed_precondition(format!("{STALE_EPOCH}: {message}"));
    status.metadata_mut().insert(
        STALE_EPOCH_KEY,
        epoch.to_string().parse().expect("digits are ASCII"),
    );
    status
}

/// A client that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("endpoint {addr:?}: {message}")]
    Endpoint { addr: String, message: String },
}

impl From<ClientError> for Status {
    fn from(e: ClientError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// Whether a failed call is worth another attempt (and, after the retries,
/// another writer); writes are idempotent, so a retry after a timeout cannot
/// corrupt data. Only what a writer or router says about the points
/// themselves is final: they are malformed (`INVALID_ARGUMENT`) or Redis
/// refused them (`FAILED_PRECONDITION`, a stale ring epoch included, which
/// the router reroutes). Anything else is the address, not the points: a
/// timeout, an outage, or a foreign process answering there (a reused
/// port or pod IP answers `UNIMPLEMENTED`, `NOT_FOUND`, `UNAUTHENTICATED`
/// ...), and must never make points be refused for good.
pub fn retryable(s: &Status) -> bool {
    !matches!(
        s.code(),
        Code::Ok | Code::InvalidArgument | Code::FailedPrecondition
    )
}

#[cfg(test)]
mod retryable_tests {
    use super::*;

    #[test]
    fn client_timeouts_and_outages_are_retryable_refusals_are_not() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::ResourceExhausted,
            // A foreign process at the address.
            Code::Unimplemented,
            Code::NotFound,
            Code::Unauthenticated,
            Code::PermissionDenied,
        ] {
            assert!(retryable(&Status::new(code, "x")), "{code:?}");
        }
        for code in [Code::FailedPrecondition, Code::InvalidArgument] {
            assert!(!retryable(&Status::new(code, "x")), "{code:?}");
        }
    }
}

#[cfg(test)]
mod stale_tests {
    use super::*;

    #[test]
    fn the_stale_epoch_mark_is_read_from_metadata_not_text() {
        let s = stale_epoch_status(7, "routed under epoch 6");
        assert_eq!(stale_epoch(&s), Some(7));
        assert!(s.message().starts_with(STALE_EPOCH));
        // The same words without the mark are not a stale-epoch refusal.
        assert_eq!(
            stale_epoch(&Status::failed_precondition("stale ring epoch: x")),
            None
        );
    }
}
