//! Write pipelines sent as one contiguous RESP buffer, beside fred.
//!
//! fred turns every argument of every command into its own value, frame
//! and routing decision, and every command into its own response channel:
//! for the seed layout's 5 commands and ~75 arguments per point, that was
//! most of the broker's CPU at full ingest (docs/adr/0006). A write
//! pipeline needs none of it: its commands all go to one server and only
//! the error replies matter. So [`DirectPipes`] encodes a whole pipeline
//! once with `redis-protocol` (the codec fred itself uses), writes it on a
//! plain TCP connection while reading the replies back with
//! `redis-protocol`'s decoder, and answers, per command, `Ok` or the error
//! reply.
//!
//! fred stays the Redis client: it finds the server (standalone, or the
//! master a sentinel names), reconnects, and serves every read, the
//! chunked layout's sealing and Redis Cluster. A direct connection goes to
//! the server fred's client of the same pool slot is connected to right
//! now, and is dropped and reopened when that changes (a sentinel
//! failover) or when anything goes wrong with it, so it never outlives
//! fred's view of the topology. Clusters keep using fred:
//! [`DirectPipes::new`] answers `None` for them. (TLS to Redis is refused
//! by the config: fred is built without it; a TLS connection would need
//! this module to step aside too, docs/adr/0007.)

use crate::exec::Command;
use bytes::{Buf, BytesMut};
use fred::interfaces::ClientLike;
use fred::types::config::ServerConfig;
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long opening a direct connection (TCP, AUTH, SELECT) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One error reply, or why the pipeline as a whole did not complete.
pub type PipelineResult = Result<Vec<Result<(), String>>, String>;

/// Direct write connections, one per client of a fred pool.
pub struct DirectPipes {
    pool: fred::clients::Pool,
    slots: Vec<tokio::sync::Mutex<Option<Conn>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for DirectPipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPipes")
            .field("slots", &self.slots.len())
            .finish()
    }
}

struct Conn {
    stream: TcpStream,
    host: String,
    port: u16,
    read: BytesMut,
}

impl DirectPipes {
    /// Direct pipelines beside `pool`, or `None` when its configuration
    /// needs what only fred does (Redis Cluster's slot routing). fred is
    /// built without TLS today; when it gains TLS, TLS configurations must
    /// answer `None` here too.
    pub fn new(pool: &fred::clients::Pool) -> Option<Self> {
        if matches!(pool.client_config().server, ServerConfig::Clustered { .. }) {
            return None;
        }
        Some(Self {
            slots: pool
                .clients()
                .iter()
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            pool: pool.clone(),
            next: AtomicUsize::new(0),
        })
    }

    /// Sends `commands` as one pipeline and answers, in order, `Ok` or the
    /// error reply for each; `Err` when Redis did not answer them all
    /// (connection lost or refused). While fred is still connecting it
    /// waits for it, like a fred command would. Dropping the future mid-way
    /// (a timeout) closes the connection it was using.
    pub async fn pipeline(&self, commands: &[Command]) -> PipelineResult {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        // fred's client of this slot says where Redis is now.
        let client = &self.pool.clients()[i];
        let mut server = client.active_connections().into_iter().next();
        if server.is_none() {
            // As fred's own commands do, wait for the connection (the
            // caller's timeout bounds the wait): a writer takes writes
            // before Redis answers, and they should not fail for that.
            client
                .wait_for_connect()
                .await
                .map_err(|e| format!("redis is not connected: {e}"))?;
            server = client.active_connections().into_iter().next();
        }
        let Some(server) = server else {
            return Err("redis is not connected".into());
        };
        let mut out = Vec::with_capacity(commands.len());
        let mut buf = BytesMut::with_capacity(encoded_len(commands));
        encode(commands, &mut buf)?;
        let mut slot = self.slots[i].lock().await;
        // Taken out while in use: a pipeline that fails or is cancelled
        // leaves no half-read connection behind.
        let conn = match slot.take() {
            Some(c) if c.host == *server.host && c.port == server.port => c,
            _ => {
                let config = client.client_config();
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    Conn::open(
                        &server.host,
                        server.port,
                        config.username.as_deref(),
                        config.password.as_deref(),
                        config.database,
                    ),
                )
                .await
                .map_err(|_| format!("connecting to {}:{} timed out", server.host, server.port))??
            }
        };
        let conn = conn.round_trip(&buf, commands.len(), &mut out).await?;
        *slot = Some(conn);
        Ok(out)
    }
}

impl Conn {
    async fn open(
        host: &str,
        port: u16,
        username: Option<&str>,
        password: Option<&str>,
        database: Option<u8>,
    ) -> Result<Self, String> {
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        // Pipelines are written whole; the last segment should not wait.
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut conn = Self {
            stream,
            host: host.to_string(),
            port,
            read: BytesMut::with_capacity(64 * 1024),
        };
        let mut setup = Vec::new();
        if let Some(password) = password {
            let mut args: Vec<&[u8]> = Vec::new();
            if let Some(u) = username {
                args.push(u.as_bytes());
            }
            args.push(password.as_bytes());
            setup.push(Command::of("AUTH", &args));
        }
        if let Some(db) = database {
            setup.push(Command::of("SELECT", &[db.to_string().as_bytes()]));
        }
        if !setup.is_empty() {
            let mut buf = BytesMut::new();
            encode(&setup, &mut buf)?;
            let mut out = Vec::new();
            conn = conn.round_trip(&buf, setup.len(), &mut out).await?;
            if let Some(Err(e)) = out.into_iter().find(Result::is_err) {
                return Err(format!("setting up a connection to {host}:{port}: {e}"));
            }
        }
        Ok(conn)
    }

    /// Writes `request` (`n` commands) while reading their `n` replies.
    async fn round_trip(
        mut self,
        request: &[u8],
        n: usize,
        out: &mut Vec<Result<(), String>>,
    ) -> Result<Self, String> {
        let (mut rd, mut wr) = self.stream.split();
        let read = &mut self.read;
        let write = async {
            wr.write_all(request)
                .await
                .map_err(|e| format!("writing a pipeline: {e}"))
        };
        let replies = async {
            let mut got = 0;
            while got < n {
                while got < n {
                    let Some((frame, len)) =
                        decode_range(read).map_err(|e| format!("decoding a reply: {e}"))?
                    else {
                        break;
                    };
                    out.push(match frame {
                        RangeFrame::Error(r) => {
                            Err(String::from_utf8_lossy(&read[r.0..r.1]).into_owned())
                        }
                        _ => Ok(()),
                    });
                    read.advance(len);
                    got += 1;
                }
                if got == n {
                    break;
                }
                read.reserve(64 * 1024);
                if rd
                    .read_buf(read)
                    .await
                    .map_err(|e| format!("reading replies: {e}"))?
                    == 0
                {
                    return Err(format!(
                        "redis closed the connection after {got} of {n} replies"
                    ));
                }
            }
            Ok::<_, String>(())
        };
        tokio::try_join!(write, replies)?;
        Ok(self)
    }
}

fn encoded_len(commands: &[Command]) -> usize {
    commands
        .iter()
        .map(|c| 16 + c.name.len() + c.args.iter().map(|a| a.len() + 16).sum::<usize>())
        .sum()
}

/// Appends `commands` to `buf` as RESP arrays of bulk strings.
pub fn encode(commands: &[Command], buf: &mut BytesMut) -> Result<(), String> {
    let mut items: Vec<BorrowedFrame<'_>> = Vec::new();
    for c in commands {
        items.clear();
        items.push(BorrowedFrame::BulkString(c.name.as_bytes()));
        items.extend(c.args.iter().map(|a| BorrowedFrame::BulkString(a)));
        extend_encode_borrowed(buf, &BorrowedFrame::Array(&items), false)
            .map_err(|e| format!("encoding {}: {e}", c.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn pipelines_encode_as_resp_arrays_of_bulk_strings() {
        let mut buf = BytesMut::new();
        encode(
            &[
                Command::of("HSET", &[b"k", b"f", b"-0"]),
                Command::new("PING", vec![Bytes::new()]),
            ],
            &mut buf,
        )
        .unwrap();
        assert_eq!(
            &buf[..],
            b"*4\r\n$4\r\nHSET\r\n$1\r\nk\r\n$1\r\nf\r\n$2\r\n-0\r\n*2\r\n$4\r\nPING\r\n$0\r\n\r\n"
        );
    }
}
