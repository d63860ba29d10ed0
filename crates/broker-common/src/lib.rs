//! What every broker service needs, in one place.
//!
//! # Layout
//! - [`config`]: the `broker.yaml` schema, defaults as named constants,
//!   environment and CLI overrides, and validation that names every bad key.
//! - [`service`]: the [`Service`] enum used by `--service` flags.
//! - [`telemetry`]: structured logs (tracing) and optional OTLP trace export.
//! - [`shutdown`]: the SIGINT/SIGTERM future and the grace-period helper.
//! - [`admin`]: the HTTP admin surface (`/health`, `/ready`, `/metrics`).
//! - [`process_metrics`]: CPU and resident memory of the process on
//!   `/metrics` (sysinfo).
//! - [`serve`]: runs one process's gRPC and admin servers on given listeners
//!   until shutdown.
//! - [`cli`]: flags shared by every binary, and config loading from them.
//! - [`series_name`]: metric names that carry labels, in Prometheus's
//!   series notation (`name{k="v"}`): format, parse, check.
//! - [`host_id`]: the characters of host ids, and the host an `instance`
//!   label names.
//! - [`validate`]: the checks every batch passes, at the gateway and again
//!   at the router and the writer (whatever reaches Redis was checked).
//! - [`value`]: how a gap, a NaN sample and a staleness marker are told
//!   apart in one f64, from the gateway to the reads.
//! - [`security`]: TLS and bearer tokens of every server and client;
//!   [`http_client`]: the HTTP/1 client with both.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod connections;
pub mod host_id;
pub mod http_client;
pub mod process_metrics;
pub mod request_budget;
pub mod security;
pub mod series_name;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod validate;
pub mod value;

/// Now, in Unix seconds (0 if the clock is before 1970): the one clock of
/// the services' wall-clock decisions (point ages, leases, timestamps).
pub fn unix_now() -> i64 {
    unix_now_ms() / 1000
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub use admin::{Admin, Readiness};
pub use config::BrokerConfig;
pub use serve::Listeners;
pub use service::Service;

/// Exit code for an invalid configuration (BSD `EX_CONFIG`... `EX_USAGE` is
/// 64, the code the house style asks for).
pub const EXIT_INVALID_CONFIG: i32 = 64;

/// `e` and the errors behind it on one line, each said once: "client error
/// (Connect): tcp connect error: Connection refused (os error 111)".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
