//! The one error type of this crate.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while launching, querying or clustering
/// Redis processes. Messages are lowercase and name what failed; the ones
/// about a server that would not start carry the tail of its log file.
#[derive(Debug, thiserror::Error)]
pub enum RedisProcessError {
    /// The `redis-server` binary could not be executed because it does not exist.
    #[error("{}", not_found_message("redis-server", "REDIS_SERVER", binary))]
    ServerNotFound {
        /// The binary that was tried.
        binary: PathBuf,
    },

    /// The `redis-cli` binary could not be executed because it does not exist.
    #[error("{}", not_found_message("redis-cli", "REDIS_CLI", binary))]
    CliNotFound {
        /// The binary that was tried.
        binary: PathBuf,
    },

    /// An I/O operation (creating a temp dir, spawning, writing a config) failed.
    #[error("failed to {what}: {source}")]
    Io {
        /// What was being done, e.g. "create a temp dir".
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// No usable free loopback port was found.
    #[error(
        "no free loopback port found after {attempts} attempts{}",
        detail_suffix(detail)
    )]
    NoFreePort {
        /// How many ports were tried.
        attempts: u32,
        /// The last reason (may be empty).
        detail: String,
    },

    /// The server process exited before it answered PING.
    #[error(
        "redis-server on 127.0.0.1:{port} exited during startup ({status}); log tail:\n{log_tail}"
    )]
    Exited {
        /// The port it was started on.
        port: u16,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its log file and stderr.
        log_tail: String,
    },

    /// The server process did not answer PING within the startup timeout.
    #[error(
        "redis-server on 127.0.0.1:{port} did not answer ping within {}s; log tail:\n{log_tail}",
        waited.as_secs_f32()
    )]
    StartTimeout {
        /// The port it was started on.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// The last lines of its log file and stderr.
        log_tail: String,
    },

    /// `redis-cli` exited with a non-zero status (or was killed after its timeout).
    #[error("redis-cli {args} failed ({status}): {stderr}")]
    CliFailed {
        /// The arguments given to redis-cli, space separated.
        args: String,
        /// Its exit status, or "timed out after Ns".
        status: String,
        /// Its trimmed stderr (or stdout when stderr was empty).
        stderr: String,
    },

    /// An `INFO` field was not present in the requested section.
    #[error("info field {field:?} not found in section {section:?}")]
    InfoFieldMissing {
        /// The INFO section asked for.
        section: String,
        /// The field asked for.
        field: String,
    },

    /// A cluster or sentinel setup did not converge in time.
    #[error("timed out after {}s waiting for {what}; last state: {last_state}", waited.as_secs_f32())]
    NotReady {
        /// What was awaited, e.g. "cluster_state:ok on 127.0.0.1:7000".
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last observed state (reply or error), and log tails where useful.
        last_state: String,
    },

    /// A command sent over a direct connection failed or got an error reply.
    #[error("command {command} on 127.0.0.1:{port} failed: {message}")]
    Command {
        /// The command, e.g. "INFO memory".
        command: String,
        /// The server's port.
        port: u16,
        /// The I/O error or the error reply.
        message: String,
    },

    /// A caller-supplied argument was out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl RedisProcessError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        RedisProcessError::Io {
            what: what.into(),
            source,
        }
    }
}

fn not_found_message(name: &str, env: &str, binary: &std::path::Path) -> String {
    if binary.as_os_str() == name {
        format!("{name} not found on PATH (install the redis-server package or set {env})")
    } else {
        format!(
            "{name} not found at {} (install the redis-server package or set {env})",
            binary.display()
        )
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}
