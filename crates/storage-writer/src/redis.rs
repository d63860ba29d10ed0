//! The Redis side of the store: the pool the writer writes with, and which
//! of Redis's failures are transient (spool and retry) or permanent
//! (dead-letter).

use crate::error::WriterError;
use fred::clients::Pool;
use std::time::Duration;

/// Error replies that say "not now" rather than "never": Redis is loading,
/// busy, out of memory, failing over or resharding, or refuses this client
/// (auth, ACL) until an operator fixes the configuration. Such writes are
/// spooled and retried, not dead-lettered.
const TRANSIENT_REPLIES: &[&str] = &[
    "LOADING",
    "BUSY",
    "OOM",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
    "MISCONF",
    "NOREPLICAS",
    "MOVED",
    "ASK",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
];

/// Turns a fred error into a [`WriterError`]: [`WriterError::RedisRejected`]
/// (permanent) for an error reply Redis will give again for the same data
/// (WRONGTYPE, `ERR wrong number of arguments`, ...) or for arguments the
/// client cannot encode; [`WriterError::Redis`] (transient) for everything
/// else: connection and IO errors, timeouts, cancellations, cluster
/// redirections and the replies in `TRANSIENT_REPLIES`.
pub fn classify(e: &fred::error::Error) -> WriterError {
    use fred::error::ErrorKind as K;
    let details = e.details();
    let permanent = match (e.kind(), reply_code(details)) {
        (K::InvalidArgument | K::InvalidCommand | K::Unknown, Some(code)) => {
            !transient_reply(code, details)
        }
        // Arguments the client cannot encode, or Redis's "Invalid argument".
        (K::InvalidArgument, None) => true,
        // Redis's "Invalid command" reply, not the client's own state.
        (K::InvalidCommand, None) => details.starts_with("Invalid"),
        _ => false,
    };
    if permanent {
        WriterError::RedisRejected(details.to_string())
    } else {
        WriterError::Redis(e.to_string())
    }
}

/// [`classify`] for an error reply read off a direct pipeline: permanent
/// unless its code is one of `TRANSIENT_REPLIES`.
pub fn classify_reply(reply: &str) -> WriterError {
    match reply_code(reply) {
        Some(code) if transient_reply(code, reply) => WriterError::Redis(reply.to_string()),
        _ => WriterError::RedisRejected(reply.to_string()),
    }
}

/// The code an error reply starts with, upper case: "WRONGTYPE ...".
fn reply_code(reply: &str) -> Option<&str> {
    reply
        .split_whitespace()
        .next()
        .filter(|w| w.len() >= 2 && w.bytes().all(|b| b.is_ascii_uppercase()))
}

fn transient_reply(code: &str, reply: &str) -> bool {
    TRANSIENT_REPLIES.contains(&code)
        // Refused at connect time, not for this data.
        || (code == "ERR" && reply.contains("max number of clients"))
}

/// Builds the Redis pool for `url` (`redis://`, `redis-cluster://`,
/// `redis-sentinel://`) and starts connecting; reconnects forever with
/// exponential backoff.
pub fn redis_pool(url: &str, size: usize) -> Result<Pool, WriterError> {
    let mut config = fred::types::config::Config::from_url(url)
        .map_err(|e| WriterError::Redis(format!("writer.redis_url {url:?}: {e}")))?;
    // A writer started while Redis is down keeps trying (the reconnect
    // policy below) instead of giving up after the first attempt, fred's
    // default: with a spool it takes writes meanwhile and replays them.
    config.fail_fast = false;
    let pool = fred::types::Builder::from_config(config)
        .with_performance_config(|p| {
            // No per-command timer: a pipeline has thousands of commands and
            // the whole round trip is bounded by `redis_timeout` instead.
            p.default_command_timeout = Duration::ZERO;
            // Pipelines hold thousands of commands: flush the socket less often.
            p.max_feed_count = 1_000;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.max_command_attempts = 3;
            // As query-api's pool: a pipeline leaves in several writes, and
            // with Nagle's algorithm the last waits for the ACK of the one
            // before, which Redis may delay by 40 ms.
            c.tcp = fred::types::config::TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            };
        })
        .set_policy(fred::types::config::ReconnectPolicy::new_exponential(
            0, 100, 5_000, 2,
        ))
        .build_pool(size)
        .map_err(|e| WriterError::Redis(e.to_string()))?;
    pool.connect_pool();
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error, ErrorKind};

    fn permanent(kind: ErrorKind, details: &'static str) -> bool {
        classify(&Error::new(kind, details)).is_permanent()
    }

    #[test]
    fn direct_error_replies_classify_as_fred_errors_do() {
        for reply in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR wrong number of arguments for 'zadd' command",
            "ERR value is not a valid float",
        ] {
            assert!(classify_reply(reply).is_permanent(), "{reply}");
            assert!(permanent(ErrorKind::Unknown, reply), "{reply}");
        }
        for reply in [
            "LOADING Redis is loading the dataset in memory",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "READONLY You can't write against a read only replica.",
            "ERR max number of clients reached",
        ] {
            assert!(!classify_reply(reply).is_permanent(), "{reply}");
        }
    }

    #[test]
    fn redis_refusing_the_data_is_permanent() {
        // As fred parses these replies (protocol/utils.rs `pretty_error`).
        assert!(permanent(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        ));
        assert!(permanent(
            ErrorKind::Unknown,
            "ERR wrong number of arguments for 'zadd' command"
        ));
        assert!(permanent(
            ErrorKind::Unknown,
            "ERR value is not a valid float"
        ));
        assert!(permanent(
            ErrorKind::Unknown,
            "CROSSSLOT Keys in request don't hash to the same slot"
        ));
        assert!(permanent(
            ErrorKind::InvalidArgument,
            "Cannot convert NaN to redis value."
        ));
        assert!(permanent(
            ErrorKind::InvalidCommand,
            "Invalid command 'FOO'"
        ));
        // The message is Redis's reply, kept whole for the DLQ reason.
        let e = classify(&Error::new(
            ErrorKind::InvalidArgument,
            "WRONGTYPE Operation against a key holding the wrong kind of value",
        ));
        assert_eq!(
            e.to_string(),
            "redis refused the write: WRONGTYPE Operation against a key holding the wrong kind of value"
        );
        assert_eq!(e.to_status().code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn what_can_pass_by_itself_is_transient() {
        for (kind, details) in [
            (ErrorKind::IO, "Os { code: 111, kind: ConnectionRefused }"),
            (ErrorKind::Timeout, "Request timed out."),
            (ErrorKind::Canceled, "Canceled."),
            (ErrorKind::Cluster, "MOVED 3999 127.0.0.1:6381"),
            (ErrorKind::Cluster, "CLUSTERDOWN The cluster is down"),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
            ),
            (ErrorKind::Unknown, "BUSY Redis is busy running a script"),
            (
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'.",
            ),
            (
                ErrorKind::Unknown,
                "TRYAGAIN Multiple keys request during rehashing of slot",
            ),
            (ErrorKind::Unknown, "MASTERDOWN Link with MASTER is down"),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
            ),
            (
                ErrorKind::Unknown,
                "MISCONF Redis is configured to save RDB snapshots",
            ),
            (ErrorKind::Unknown, "ERR max number of clients reached"),
            (ErrorKind::Auth, "NOAUTH Authentication required."),
            (
                ErrorKind::Unknown,
                "NOPERM this user has no permissions to run the 'zadd' command",
            ),
            (ErrorKind::Unknown, "channel closed"),
            (
                ErrorKind::InvalidCommand,
                "Error sending command while connection is blocked.",
            ),
            (ErrorKind::Backpressure, "Max in-flight commands reached."),
            (ErrorKind::Routing, "Failed to find cluster node."),
            (ErrorKind::Protocol, "Invalid frame."),
        ] {
            let e = classify(&Error::new(kind.clone(), details));
            assert!(!e.is_permanent(), "{kind:?} {details}");
            assert!(matches!(e, WriterError::Redis(_)), "{kind:?} {details}");
            assert_eq!(e.to_status().code(), tonic::Code::Unavailable);
        }
    }
}
