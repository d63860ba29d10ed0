//! Launch real Redis servers as child processes on free loopback ports, for
//! `broker up` (one-command local run), the benchmark and integration tests.
//!
//! The API is synchronous (`std::process`, `std::net`) so it works from both
//! sync and async code (from async code, call it in `spawn_blocking` or
//! accept a short block at startup). Every process binds `127.0.0.1` only,
//! runs in its own temp dir, and is killed (SIGKILL) and reaped when its
//! handle is dropped; the temp dir is removed after it. Every wait is bounded
//! in time and its error carries the tail of the server's log.
//!
//! ```no_run
//! let server = redis_process::RedisServer::start()?;
//! server.cli(&["set", "k", "v"])?;
//! assert_eq!(server.cli(&["get", "k"])?, "v");
//! println!("connect to {}", server.url());
//! # Ok::<(), redis_process::RedisProcessError>(())
//! ```
//!
//! # Layout
//! - [`server`]: [`RedisServer`] (one `redis-server` child) and
//!   [`RedisOptions`]; readiness by raw-TCP `PING`, `cli()` through
//!   `redis-cli`, `restart()` on the same port and dir (AOF replay).
//! - [`cluster`]: [`RedisCluster`], N cluster-enabled masters joined with
//!   `redis-cli --cluster create`, and its fred `redis-cluster://` URL.
//! - [`sentinel`]: [`RedisSentinel`], one master and one sentinel
//!   monitoring it as `mymaster`, and its fred `redis-sentinel://` URL.
//! - [`port`]: [`free_port`] and the cluster-bus-aware variant.
//! - [`error`]: the one error enum, [`RedisProcessError`], with lowercase
//!   messages.
//! - `resp`: a minimal blocking RESP2 client used for readiness probes
//!   (the wire format is `redis-protocol`'s RESP2 codec).
//!
//! # Binaries
//! `redis-server` is `RedisOptions::binary`, else `$REDIS_SERVER`, else
//! `redis-server` from `PATH`; `redis-cli` is `$REDIS_CLI`, else the one next
//! to the server binary, else `redis-cli` from `PATH`.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod error;
pub mod port;
mod resp;
pub mod sentinel;
pub mod server;

pub use cluster::RedisCluster;
pub use error::RedisProcessError;
pub use port::free_port;
pub use sentinel::{RedisSentinel, SENTINEL_SERVICE_NAME};
pub use server::{RedisOptions, RedisServer};
