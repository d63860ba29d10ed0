//! A minimal blocking RESP2 client over `std::net`, used for readiness
//! probes (PING, INFO, CLUSTER INFO, SENTINEL ...) without spawning
//! `redis-cli` in tight loops. Loopback only.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text: simple strings, errors (prefixed), integers and
    /// bulk strings; arrays are joined with spaces.
    pub(crate) fn text(&self) -> String {
        match self {
            Reply::Simple(s) => s.clone(),
            Reply::Error(e) => format!("error reply: {e}"),
            Reply::Int(i) => i.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => "(nil)".to_owned(),
            Reply::Array(Some(items)) => {
                items.iter().map(Reply::text).collect::<Vec<_>>().join(" ")
            }
        }
    }
}

/// A connection to 127.0.0.1:port with read/write timeouts.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
}

const MAX_DEPTH: usize = 8;
const MAX_BULK: usize = 64 * 1024 * 1024;

impl Conn {
    pub(crate) fn connect(port: u16, timeout: Duration) -> io::Result<Conn> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply.
    pub(crate) fn command(&mut self, args: &[&str]) -> io::Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            buf.extend_from_slice(arg.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&buf)?;
        self.read_reply(0)
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by server",
            ));
        }
        if !line.ends_with("\r\n") {
            return Err(invalid("reply line not terminated by crlf"));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read_reply(&mut self, depth: usize) -> io::Result<Reply> {
        if depth > MAX_DEPTH {
            return Err(invalid("reply nested too deeply"));
        }
        let line = self.read_line()?;
        let (kind, rest) = line
            .split_at_checked(1)
            .ok_or_else(|| invalid("empty reply line"))?;
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => Ok(Reply::Int(parse_int(rest)?)),
            "$" => {
                let len = parse_int(rest)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).map_err(|_| invalid("bad bulk length"))?;
                if len > MAX_BULK {
                    return Err(invalid("bulk reply too large"));
                }
                let mut data = vec![0u8; len + 2];
                self.reader.read_exact(&mut data)?;
                if &data[len..] != b"\r\n" {
                    return Err(invalid("bulk reply not terminated by crlf"));
                }
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let len = parse_int(rest)?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let len = usize::try_from(len).map_err(|_| invalid("bad array length"))?;
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    items.push(self.read_reply(depth + 1)?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(invalid(&format!("unexpected reply type {other:?}"))),
        }
    }
}

fn parse_int(s: &str) -> io::Result<i64> {
    s.parse()
        .map_err(|_| invalid(&format!("bad integer {s:?} in reply")))
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

    /// Serves `canned` to the first connection and returns what it read.
    fn replies(canned: &'static [u8], args: &[&str]) -> io::Result<Reply> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).unwrap();
            stream.write_all(canned).unwrap();
            buf[..n].to_vec()
        });
        let reply = Conn::connect(port, Duration::from_secs(2))?.command(args);
        let sent = server.join().unwrap();
        assert!(sent.starts_with(format!("*{}\r\n", args.len()).as_bytes()));
        reply
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(
            replies(b"+PONG\r\n", &["PING"]).unwrap(),
            Reply::Simple("PONG".into())
        );
        assert_eq!(
            replies(b"-LOADING busy\r\n", &["PING"]).unwrap(),
            Reply::Error("LOADING busy".into())
        );
        assert_eq!(replies(b":42\r\n", &["DBSIZE"]).unwrap(), Reply::Int(42));
        assert_eq!(
            replies(b"$-1\r\n", &["GET", "k"]).unwrap(),
            Reply::Bulk(None)
        );
        let arr = replies(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6379\r\n", &["SENTINEL"]).unwrap();
        assert_eq!(arr.text(), "127.0.0.1 6379");
        assert_eq!(replies(b"*-1\r\n", &["X"]).unwrap(), Reply::Array(None));
    }

    #[test]
    fn rejects_garbage_and_eof() {
        assert!(replies(b"?what\r\n", &["PING"]).is_err());
        assert!(replies(b"$5\r\nab\r\n", &["GET", "k"]).is_err());
        assert!(replies(b"", &["PING"]).is_err());
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
