//! One master behind one sentinel on loopback: [`RedisSentinel`].

use std::thread;
use std::time::{Duration, Instant};

use crate::error::RedisProcessError;
use crate::resp::{Reply, ReplyText};
use crate::server::RedisServer;

/// The service name the sentinel monitors the master under.
pub const SENTINEL_SERVICE_NAME: &str = "mymaster";
/// How long the sentinel may take to report a connected master.
pub const SENTINEL_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A master `redis-server` plus one sentinel process
/// (`redis-server <dir>/sentinel.conf --sentinel`) monitoring it as
/// [`SENTINEL_SERVICE_NAME`] with quorum 1. Dropping it kills both.
#[derive(Debug)]
pub struct RedisSentinel {
    // Dropped first, so the sentinel never sees its master die.
    sentinel: RedisServer,
    master: RedisServer,
}

impl RedisSentinel {
    /// Starts the master and the sentinel and waits until the sentinel
    /// reports the master's address through
    /// `SENTINEL get-master-addr-by-name mymaster` and flags it as a
    /// reachable master (at most [`SENTINEL_READY_TIMEOUT`]).
    pub fn start() -> Result<Self, RedisProcessError> {
        let master = RedisServer::start()?;
        let sentinel = RedisServer::start_sentinel(
            master.binary().to_path_buf(),
            SENTINEL_SERVICE_NAME,
            master.port(),
        )?;
        let this = RedisSentinel { sentinel, master };
        this.wait_master()?;
        tracing::debug!(url = %this.url(), "redis sentinel ready");
        Ok(this)
    }

    fn wait_master(&self) -> Result<(), RedisProcessError> {
        let started = Instant::now();
        let want = ["127.0.0.1".to_owned(), self.master.port().to_string()];
        loop {
            let last_state = match self.master_state() {
                Ok((addr, flags)) if addr == want && flags == "master" => return Ok(()),
                Ok((addr, flags)) => format!("master addr {addr:?}, flags {flags:?}"),
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= SENTINEL_READY_TIMEOUT {
                return Err(RedisProcessError::NotReady {
                    what: format!(
                        "sentinel {} to report master 127.0.0.1:{}",
                        self.sentinel.addr(),
                        self.master.port()
                    ),
                    waited: started.elapsed(),
                    last_state: format!(
                        "{last_state}; sentinel log tail:\n{}",
                        self.sentinel.log_tail()
                    ),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The master's address as the sentinel reports it, and its flags.
    fn master_state(&self) -> Result<(Vec<String>, String), RedisProcessError> {
        let addr = match self.sentinel.command_reply(&[
            "SENTINEL",
            "get-master-addr-by-name",
            SENTINEL_SERVICE_NAME,
        ])? {
            Reply::Array(items) => items.iter().map(Reply::text).collect(),
            other => vec![other.text()],
        };
        let flags =
            match self
                .sentinel
                .command_reply(&["SENTINEL", "master", SENTINEL_SERVICE_NAME])?
            {
                Reply::Array(items) => items
                    .chunks(2)
                    .find(|kv| kv[0].text() == "flags")
                    .and_then(|kv| kv.get(1))
                    .map(Reply::text)
                    .unwrap_or_default(),
                other => other.text(),
            };
        Ok((addr, flags))
    }

    /// The monitored master.
    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    /// Mutable access to the master, e.g. to stop or restart it.
    pub fn master_mut(&mut self) -> &mut RedisServer {
        &mut self.master
    }

    /// The sentinel process (a [`RedisServer`] in sentinel mode).
    pub fn sentinel(&self) -> &RedisServer {
        &self.sentinel
    }

    /// The fred 10 sentinel URL:
    /// `redis-sentinel://127.0.0.1:SENTINEL_PORT/0?sentinelServiceName=mymaster`.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE_NAME}",
            self.sentinel.port()
        )
    }
}
