//! A minimal blocking RESP2 client over `std::net`, used for readiness
//! probes (PING, INFO, CLUSTER INFO, SENTINEL ...) without spawning
//! `redis-cli` in tight loops. Loopback only.
//!
//! The wire format is not hand-written: commands are encoded and replies
//! decoded by the `redis-protocol` crate (RESP2); this module is only the
//! blocking transport around it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use redis_protocol::error::RedisProtocolError;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::BorrowedFrame;

/// One RESP2 reply: the decoded `redis-protocol` frame. RESP2 nulls (`$-1`
/// and `*-1`) both decode to `Reply::Null`.
pub(crate) use redis_protocol::resp2::types::OwnedFrame as Reply;

/// Text rendering of a [`Reply`].
pub(crate) trait ReplyText {
    /// The reply as text: simple strings, errors (prefixed), integers and
    /// bulk strings; nulls are `(nil)`; arrays are joined with spaces.
    fn text(&self) -> String;
}

impl ReplyText for Reply {
    fn text(&self) -> String {
        match self {
            Reply::SimpleString(s) | Reply::BulkString(s) => {
                String::from_utf8_lossy(s).into_owned()
            }
            Reply::Error(e) => format!("error reply: {e}"),
            Reply::Integer(i) => i.to_string(),
            Reply::Null => "(nil)".to_owned(),
            Reply::Array(items) => items.iter().map(Reply::text).collect::<Vec<_>>().join(" "),
        }
    }
}

/// A connection to 127.0.0.1:port with read/write timeouts.
pub(crate) struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet consumed by a decoded frame.
    buf: Vec<u8>,
}

/// Upper bound on one buffered reply; a larger one is rejected.
const MAX_REPLY: usize = 64 * 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

impl Conn {
    pub(crate) fn connect(port: u16, timeout: Duration) -> io::Result<Conn> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one command and reads its reply.
    pub(crate) fn command(&mut self, args: &[&str]) -> io::Result<Reply> {
        let request = encode_command(args)?;
        self.stream.write_all(&request)?;
        self.read_reply()
    }

    /// Reads until the buffer holds one complete frame, then decodes it.
    fn read_reply(&mut self) -> io::Result<Reply> {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            if let Some((frame, used)) = decode(&self.buf).map_err(protocol_error)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            if self.buf.len() > MAX_REPLY {
                return Err(invalid("reply too large"));
            }
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by server",
                    ));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A command as a RESP2 array of bulk strings.
fn encode_command(args: &[&str]) -> io::Result<Vec<u8>> {
    let parts: Vec<BorrowedFrame<'_>> = args
        .iter()
        .map(|arg| BorrowedFrame::BulkString(arg.as_bytes()))
        .collect();
    let frame = BorrowedFrame::Array(&parts);
    let mut out = vec![0u8; frame.encode_len(false)];
    let len = encode_borrowed(&mut out, &frame, false).map_err(protocol_error)?;
    out.truncate(len);
    Ok(out)
}

fn protocol_error(e: RedisProtocolError) -> io::Error {
    invalid(&format!("resp2 protocol error: {e}"))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Looks up `field` in an INFO-style `key:value` text.
pub(crate) fn info_lookup(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.trim_end_matches('\r').split_once(':')?;
        (k == field).then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// Serves `chunks` (written separately, with a pause between them) to
    /// the first connection; returns the reply and the bytes the client sent.
    fn exchange(chunks: Vec<&'static [u8]>, args: &[&str]) -> (io::Result<Reply>, Vec<u8>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).unwrap();
            for (i, chunk) in chunks.iter().enumerate() {
                if i > 0 {
                    thread::sleep(Duration::from_millis(20));
                }
                stream.write_all(chunk).unwrap();
                stream.flush().unwrap();
            }
            buf[..n].to_vec()
        });
        let reply = Conn::connect(port, Duration::from_secs(2)).and_then(|mut c| c.command(args));
        (reply, server.join().unwrap())
    }

    fn replies(canned: &'static [u8], args: &[&str]) -> io::Result<Reply> {
        let (reply, sent) = exchange(vec![canned], args);
        assert!(sent.starts_with(format!("*{}\r\n", args.len()).as_bytes()));
        reply
    }

    #[test]
    fn encodes_commands_as_bulk_string_arrays() {
        assert_eq!(
            encode_command(&["GET", "k"]).unwrap(),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        let (_, sent) = exchange(vec![b"+OK\r\n"], &["SET", "key", ""]);
        assert_eq!(sent, b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$0\r\n\r\n");
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(
            replies(b"+PONG\r\n", &["PING"]).unwrap(),
            Reply::SimpleString(b"PONG".to_vec())
        );
        let err = replies(b"-LOADING busy\r\n", &["PING"]).unwrap();
        assert_eq!(err, Reply::Error("LOADING busy".into()));
        assert_eq!(err.text(), "error reply: LOADING busy");
        let int = replies(b":42\r\n", &["DBSIZE"]).unwrap();
        assert_eq!(int, Reply::Integer(42));
        assert_eq!(int.text(), "42");
        let nil = replies(b"$-1\r\n", &["GET", "k"]).unwrap();
        assert_eq!(nil, Reply::Null);
        assert_eq!(nil.text(), "(nil)");
        let arr = replies(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n", &["SENTINEL"]).unwrap();
        assert_eq!(arr.text(), "127.0.0.1 6379");
        assert_eq!(replies(b"*-1\r\n", &["X"]).unwrap(), Reply::Null);
    }

    #[test]
    fn buffers_a_reply_split_across_reads() {
        let (reply, _) = exchange(
            vec![b"*2\r\n$9\r\n127.0", b".0.1\r\n$4\r", b"\n6379\r\n"],
            &["SENTINEL"],
        );
        assert_eq!(
            reply.unwrap(),
            Reply::Array(vec![
                Reply::BulkString(b"127.0.0.1".to_vec()),
                Reply::BulkString(b"6379".to_vec()),
            ])
        );
    }

    #[test]
    fn rejects_garbage_and_eof() {
        let garbage = replies(b"?what\r\n", &["PING"]).unwrap_err();
        assert_eq!(garbage.kind(), io::ErrorKind::InvalidData);
        let short = replies(b"$5\r\nab\r\n", &["GET", "k"]).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        let closed = replies(b"", &["PING"]).unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn info_lookup_finds_fields() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\n";
        assert_eq!(info_lookup(info, "used_memory").as_deref(), Some("1024"));
        assert_eq!(
            info_lookup(info, "used_memory_human").as_deref(),
            Some("1.00K")
        );
        assert_eq!(info_lookup(info, "used"), None);
    }
}
