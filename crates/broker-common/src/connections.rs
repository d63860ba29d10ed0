//! Accepting connections with a bound: each listening port takes at most
//! `max_connections` at once. One past it is closed as soon as it is
//! accepted (counted, and logged at most every few seconds) instead of
//! holding a task, buffers and a file descriptor; a client retries, as it
//! would after any dropped connection. Each port has its own bound, so a
//! flood of agents cannot lock peers out of the internal port or a
//! supervisor out of `/health`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    /// `grpc`, `internal` or `http`.
    listener: String,
}

/// The process's connection bound and its metrics.
#[derive(Clone)]
pub struct Connections {
    max: usize,
    open: Family<PortLabels, Gauge>,
    refused: Family<PortLabels, Counter>,
}

impl Connections {
    /// `max` connections per listening port, with
    /// `broker_connections_open` and `broker_connections_refused_total`
    /// registered in `registry`.
    pub fn new(max: usize, registry: &mut Registry) -> Self {
        let c = Self::unregistered(max);
        registry.register(
            "broker_connections_open",
            "Connections open, per listening port",
            c.open.clone(),
        );
        registry.register(
            "broker_connections_refused",
            "Connections closed on accept because the port had max_connections open",
            c.refused.clone(),
        );
        c
    }

    /// Without metrics (tests that build servers by hand).
    pub fn unregistered(max: usize) -> Self {
        Self {
            max: max.max(1),
            open: Family::default(),
            refused: Family::default(),
        }
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
        let max = self.max;
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
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    refused.inc();
                    let mut last = last_warn.lock().unwrap_or_else(|e| e.into_inner());
                    if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        *last = Some(Instant::now());
                        tracing::warn!(
                            listener = name,
                            peer = %peer,
                            max_connections = max,
                            refused_total = refused.get(),
                            "connection refused: the port has max_connections open"
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
                        open: open.clone(),
                    },
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
    open: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An accepted connection; closing it (dropping it) frees its place.
pub struct Conn<IO> {
    io: IO,
    _held: Held,
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
        Pin::new(&mut self.io).poll_read(cx, buf)
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

/// An axum listener over connections an accept loop hands on (plain ones
/// from [`Connections::accept`], or TLS ones after their handshake).
pub struct ChannelListener<IO> {
    pub rx: tokio::sync::mpsc::Receiver<(IO, SocketAddr)>,
    pub addr: SocketAddr,
}

impl<IO> axum::serve::Listener for ChannelListener<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = IO;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped: graceful shutdown is under way.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
