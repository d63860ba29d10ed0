//! The agent side of the broker's ingest protocol: a client for
//! `MonitorService.SendMetrics`, the real host agent behind `broker-agent`,
//! a generator of realistic host snapshots, and the load loop behind the
//! `broker-loadgen` binary.
//!
//! # Layout
//! - [`host`]: [`HostCollector`], this machine's CPU, memory, load, disks
//!   and network (sysinfo) as one snapshot.
//! - [`agent`]: [`run_agent`], the agent loop: a snapshot every interval,
//!   a bounded buffer of un-acked snapshots, resend after retryable answers
//!   and broken streams, failover round the gateways.
//! - [`client`]: [`AgentClient`], one bidirectional stream to a gateway with
//!   endpoint failover on connect, a bounded window of outstanding batches
//!   (backpressure) and acks matched to sends by sequence number;
//!   [`AgentClient::reconnect`] replaces a broken stream with backoff and
//!   jitter (`backon`), failing over round the endpoint list.
//! - [`generator`]: [`SnapshotGenerator`], batches whose every value is a pure
//!   function of (host, timestamp, metric), so tests can recompute them.
//! - [`load`]: [`run_load`], the bounded load loop (paced like real agents, at
//!   a fixed rate, or as fast as acks allow) that keeps every batch until it
//!   is acked, resends after broken streams and retryable rejections, drains
//!   at the end, and returns a [`LoadReport`].
//! - `outbox`: the load loop's pure bookkeeping of un-acked batches (what
//!   to resend, when, and when to give up).
//! - [`report`]: ack classification (stored / rejected / to resend, point by
//!   point), latency percentiles, progress lines and the final report with
//!   its `--json` form.
//! - [`error`]: [`AgentError`], the crate's one error type.
//! - `src/bin/loadgen.rs`: the `broker-loadgen` command line;
//!   `src/bin/agent.rs`: the `broker-agent` command line.

#![forbid(unsafe_code)]

pub mod agent;
pub mod client;
pub mod error;
pub mod generator;
pub mod host;
pub mod load;
mod outbox;
pub mod report;

pub use agent::{AgentConfig, AgentReport, run_agent};
pub use client::{AgentClient, ClientConfig, MAX_MESSAGE_BYTES};
pub use error::AgentError;
pub use generator::{SnapshotGenerator, host_id, metric_name, value};
pub use host::{HostCollector, local_host_id};
pub use load::{LoadConfig, Pacing, run_load, run_load_with};
pub use report::{AckOutcome, JsonSummary, LatencySummary, LoadReport, Progress};
