//! Accepting connections with bounds: each listening port takes at most
//! `max_connections` at once, and at most `max_connections_per_peer` from
//! one peer address. One past either is closed as soon as it is accepted
//! (counted, and logged at most every few seconds) instead of holding a
//! task, buffers and a file descriptor; a client retries, as it would
//! after any dropped connection. Each port has its own bound, so a flood
//! of agents cannot lock peers out of the internal port, and one address
//! cannot take a whole port: a supervisor elsewhere still gets `/health`.
//!
//! A connection that sends nothing for [`FIRST_BYTES_TIMEOUT`] after it
//! is accepted, or nothing for [`IDLE_TIMEOUT`] later, is closed: idle and
//! half-open connections do not hold their place for ever. (Live HTTP/2
//! peers answer the server's keepalive pings well within it; the admin
//! port also bounds the time to send a request's head.)

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How often a refused connection is logged, at most (the counter has
/// every one).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long a new connection may stay silent (a TLS port's handshake has
/// its own, equal, bound).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an open connection may send nothing: longer than the admin
/// port's request deadline and the gRPC keepalive interval, so a live
/// peer is never cut.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    /// `grpc`, `internal` or `http`.
    listener: String,
}

/// The process's connection bounds and their metrics.
#[derive(Clone)]
pub struct Connections {
    max: usize,
    max_per_peer: usize,
    /// Bytes of incomplete gRPC messages the process holds at once.
    budget: crate::request_budget::Budget,
    open: Family<PortLabels, Gauge>,
    refused: Family<PortLabels, Counter>,
}

impl Connections {
    /// `max` connections per listening port, `max_per_peer` of them from
    /// one address, with `broker_connections_open` and
    /// `broker_connections_refused_total` registered in `registry`.
    pub fn new(
        max: usize,
        max_per_peer: usize,
        request_bytes: usize,
        registry: &mut Registry,
    ) -> Self {
        let c = Self::unregistered(max, max_per_peer, request_bytes);
        registry.register(
            "broker_connections_open",
            "Connections open, per listening port",
            c.open.clone(),
        );
        registry.register(
            "broker_connections_refused",
            "Connections closed on accept because the port had max_connections open, or the peer max_connections_per_peer",
            c.refused.clone(),
        );
        c
    }

    /// Without metrics (tests that build servers by hand).
    pub fn unregistered(max: usize, max_per_peer: usize, request_bytes: usize) -> Self {
        Self {
            max: max.max(1),
            max_per_peer: max_per_peer.max(1),
            budget: crate::request_budget::Budget::new(request_bytes),
            open: Family::default(),
            refused: Family::default(),
        }
    }

    /// The process's budget of incomplete gRPC message bytes
    /// (`max_request_bytes_in_flight`).
    pub fn request_budget(&self) -> crate::request_budget::Budget {
        self.budget.clone()
    }

    /// Accepts on `listener` until `stop`, handing on each connection that
    /// fits under the bound (with `TCP_NODELAY` set: small answers such as
    /// acks must not wait for the peer's delayed ACK).
    pub fn accept(
        &self,
        listener: TcpListener,
        name: &'static str,
        stop: CancellationToken,
    ) -> tokio::sync::mpsc::Receiver<(Conn<TcpStream>, SocketAddr)> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(self.max));
        let labels = PortLabels {
            listener: name.to_string(),
        };
        let open = self.open.get_or_create(&labels).clone();
        let refused = self.refused.get_or_create(&labels).clone();
        let (max, max_per_peer) = (self.max, self.max_per_peer);
        let per_peer: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        let last_warn: Mutex<Option<Instant>> = Mutex::new(None);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(listener = name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let place = permits.clone().try_acquire_owned().ok().and_then(|permit| {
                    let mut peers = per_peer.lock().unwrap_or_else(|e| e.into_inner());
                    let n = peers.entry(peer.ip()).or_default();
                    (*n < max_per_peer).then(|| {
                        *n += 1;
                        (
                            permit,
                            PeerPlace {
                                ip: peer.ip(),
                                peers: per_peer.clone(),
                            },
                        )
                    })
                });
                let Some((permit, peer_place)) = place else {
                    refused.inc();
                    let mut last = last_warn.lock().unwrap_or_else(|e| e.into_inner());
                    if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        *last = Some(Instant::now());
                        tracing::warn!(
                            listener = name,
                            peer = %peer,
                            max_connections = max,
                            max_connections_per_peer = max_per_peer,
                            refused_total = refused.get(),
                            "connection refused: the port has max_connections open, or this peer max_connections_per_peer"
                        );
                    }
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                open.inc();
                let conn = Conn {
                    io: tcp,
                    _held: Held {
                        _permit: permit,
                        _peer: peer_place,
                        open: open.clone(),
                    },
                    silence: Box::pin(tokio::time::sleep(FIRST_BYTES_TIMEOUT)),
                };
                if tx.send((conn, peer)).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// What a connection holds while it is open.
struct Held {
    _permit: OwnedSemaphorePermit,
    _peer: PeerPlace,
    open: Gauge,
}

/// One of a peer address's places on a port.
struct PeerPlace {
    ip: IpAddr,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = peers.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An accepted connection; closing it (dropping it) frees its place. Its
/// reads fail with `TimedOut` once it has sent nothing for
/// [`FIRST_BYTES_TIMEOUT`] (at first) or [`IDLE_TIMEOUT`], which makes the
/// server close it.
pub struct Conn<IO> {
    io: IO,
    _held: Held,
    silence: Pin<Box<tokio::time::Sleep>>,
}

impl<IO> Conn<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // (Moved at most every half timeout: a busy stream reads
                // often, and the timer need not follow each read.)
                let now = tokio::time::Instant::now();
                if buf.filled().len() > before && self.silence.deadline() < now + IDLE_TIMEOUT / 2 {
                    self.silence.as_mut().reset(now + IDLE_TIMEOUT);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.silence.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer sent nothing for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
