//! Generated protocol code for the broker.
//!
//! # Layout
//! - [`v1`]: `broker.v1`, the agent-facing `MonitorService` and the internal
//!   `RouterService` / `WriterService`.
//! - [`bounded`]: the codec of every service, which checks a batch's
//!   counts before decoding it.
//! - [`prometheus`]: Prometheus's remote-write and remote-read messages.
//! - [`bench`]: an alternative map-based point encoding, kept only so the
//!   encoding benchmark can compare it with the packed layout we use.

#![forbid(unsafe_code)]

pub mod bounded;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("broker.v1");
}

/// Prometheus remote write 1.0 (`prometheus.WriteRequest`), what the
/// gateway's `POST /api/v1/write` decodes, and remote read
/// (`prometheus.ReadRequest` / `ReadResponse`), what query-api's
/// `POST /api/v1/read` answers.
pub mod prometheus {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("prometheus");
}

pub mod bench {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("broker.v1.bench");
}

pub use v1::*;

impl v1::RaftStatus {
    /// Whether the node that answered leads.
    pub fn is_leader(&self) -> bool {
        self.leader_id == self.id && self.role == "leader"
    }

    /// The raft address of the leader, if one is known.
    pub fn leader_addr(&self) -> Option<&str> {
        self.peers.get(&self.leader_id).map(String::as_str)
    }
}

impl v1::Point {
    /// Iterates `(metric name, value)` pairs of this point against the
    /// batch's name table. Indexes out of range yield `None` names; the
    /// gateway rejects such points before they travel further.
    pub fn metrics<'a>(
        &'a self,
        names: &'a [String],
    ) -> impl Iterator<Item = (Option<&'a str>, f64)> + 'a {
        self.values.iter().enumerate().map(move |(i, v)| {
            let idx = if self.name_index.is_empty() {
                Some(i)
            } else {
                self.name_index.get(i).map(|&n| n as usize)
            };
            (idx.and_then(|n| names.get(n)).map(String::as_str), *v)
        })
    }
}
