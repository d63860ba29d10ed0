//! Runs one process's servers: the clients' gRPC services on one port, the
//! services other broker processes call on the internal port when there is
//! one, the gRPC health service beside each, and the admin HTTP server.

use crate::admin::Admin;
use crate::connections::{Conn, Connections};
use crate::security::Security;
use crate::security::auth::GrpcAuthLayer;
use crate::security::tls;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The sockets a process serves on. Bound by the caller so tests can pass
/// `127.0.0.1:0` listeners and learn the ports.
pub struct Listeners {
    /// Clients' gRPC: agents, dashboards, operators.
    pub grpc: TcpListener,
    /// Admin HTTP and the HTTP APIs.
    pub http: TcpListener,
    /// Other broker processes' gRPC (`internal_listen`), when configured.
    pub internal: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            grpc: bind("grpc_listen", grpc).await?,
            http: bind("http_listen", http).await?,
            internal: None,
        })
    }

    /// The listeners `config` names: `grpc_listen`, `http_listen` and
    /// `internal_listen` when set.
    pub async fn from_config(config: &crate::BrokerConfig) -> std::io::Result<Self> {
        let l = Self::bind(config.grpc_listen, config.http_listen).await?;
        match config.internal_listen {
            Some(i) => l.with_internal(i).await,
            None => Ok(l),
        }
    }

    /// Adds an internal listener bound at `addr`.
    pub async fn with_internal(mut self, addr: SocketAddr) -> std::io::Result<Self> {
        self.internal = Some(bind("internal_listen", addr).await?);
        Ok(self)
    }

    /// Two fresh loopback listeners on free ports, for tests.
    pub async fn loopback() -> std::io::Result<Self> {
        Self::bind(
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .await
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound listener")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("bound listener")
    }

    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener"))
    }

    /// Where other broker processes call this one: the internal listener,
    /// else the gRPC one.
    pub fn peer_addr(&self) -> SocketAddr {
        self.internal_addr().unwrap_or_else(|| self.grpc_addr())
    }
}

async fn bind(key: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {key} {addr}: {e}")))
}

/// One gRPC server's services: the routes and the names its health service
/// reports as serving.
#[derive(Default)]
pub struct GrpcRoutes {
    pub routes: tonic::service::Routes,
    pub names: Vec<&'static str>,
}

/// Serves `public` on the gRPC listener and `internal` on the internal one
/// (each with `grpc.health.v1` reporting its names as serving), and the
/// admin router, until `stop` is cancelled. The gRPC servers then stop
/// accepting and wait for in-flight calls; handlers watch `stop` too and
/// end their streams once drained. Without an internal listener, the
/// caller has put what should be served into `public` and `internal` must
/// be empty.
///
/// With TLS configured every port speaks only TLS (a plaintext client
/// fails the handshake), and the certificates are reloaded when their
/// files change. Every gRPC call and HTTP route passes the token check of
/// [`crate::security::auth`] first.
pub async fn serve(
    public: GrpcRoutes,
    internal: GrpcRoutes,
    admin: &Admin,
    listeners: Listeners,
    connections: &Connections,
    security: &Security,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(tls) = &security.tls {
        tls.watch(security.reload_interval, stop.clone());
    }
    let accept = |l, name| connections.accept(l, name, stop.clone());
    let budget = connections.request_budget();
    let internal_server = async {
        match listeners.internal {
            Some(l) => {
                serve_grpc(
                    internal,
                    accept(l, "internal"),
                    security,
                    budget.clone(),
                    stop.clone(),
                )
                .await
            }
            None => {
                debug_assert!(
                    internal.names.is_empty(),
                    "internal services without a listener"
                );
                Ok(())
            }
        }
    };
    let (g, i, h) = tokio::join!(
        serve_grpc(
            public,
            accept(listeners.grpc, "grpc"),
            security,
            budget.clone(),
            stop.clone()
        ),
        internal_server,
        serve_http(
            admin,
            accept(listeners.http, "http"),
            security,
            budget.clone(),
            stop.clone()
        ),
    );
    g.map_err(|e| anyhow::anyhow!("grpc server: {e}"))?;
    i.map_err(|e| anyhow::anyhow!("internal grpc server: {e}"))?;
    h.map_err(|e| anyhow::anyhow!("admin http server: {e}"))?;
    Ok(())
}

async fn serve_grpc(
    services: GrpcRoutes,
    conns: Accepted,
    security: &Security,
    budget: crate::request_budget::Budget,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for name in &services.names {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let routes = services.routes.add_service(health);
    let server = tonic::transport::Server::builder()
        // Agents keep streams open for hours; keepalive finds dead peers.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        // A connection's streams at once: agents use one, routers and
        // writers a few dozen; one connection cannot open thousands.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .tcp_nodelay(true)
        // Refuse a call before its body is decoded when its token (or, for
        // peer calls, its client certificate) is missing.
        .layer(GrpcAuthLayer {
            tokens: security.tokens.clone(),
        })
        // Then: messages still arriving hold the process's byte budget,
        // so many large messages trickled in cannot add up past it.
        .layer(crate::request_budget::BudgetLayer(budget))
        .add_routes(routes);
    let grpc_stop = stop.clone();
    let shutdown = async move {
        grpc_stop.cancelled().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    match &security.tls {
        None => {
            // (tonic's `tcp_nodelay` does not reach sockets handed in as a
            // stream: the accept loop sets it.)
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(conns),
                |(s, _)| Ok::<_, std::io::Error>(s),
            );
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Some(tls) => {
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(tls::accept(
                    conns,
                    tls.clone(),
                    false,
                    stop,
                )),
                |(s, _)| Ok::<_, std::io::Error>(s),
            );
            server
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// Concurrent gRPC streams one connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Accepted connections, from [`Connections::accept`].
type Accepted = tokio::sync::mpsc::Receiver<(Conn<TcpStream>, SocketAddr)>;

async fn serve_http(
    admin: &Admin,
    conns: Accepted,
    security: &Security,
    budget: crate::request_budget::Budget,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = admin
        .router()
        // Innermost: a body that got past the token check holds its bytes
        // of the process's budget until its response is made.
        .layer(axum::middleware::from_fn_with_state(
            budget,
            crate::request_budget::http_budget,
        ))
        // Then outside it: the token check runs before any body is read.
        .layer(axum::middleware::from_fn_with_state(
            security.tokens.clone(),
            crate::security::auth::http_auth,
        ))
        // Outer: no request holds a connection and a task for longer than
        // HTTP_REQUEST_TIMEOUT, whatever the route (queries have their own,
        // shorter, query.timeout).
        .layer(axum::middleware::from_fn(deadline));
    match &security.tls {
        None => serve_http1(conns, router, stop).await,
        Some(tls) => {
            serve_http1(
                tls::accept(conns, tls.clone(), true, stop.clone()),
                router,
                stop,
            )
            .await
        }
    }
    Ok(())
}

/// How long a client may take to send a request's head on the admin port
/// (a half-sent request holds its connection no longer).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves HTTP/1 on the connections `conns` hands on until `stop`, with
/// [`HEADER_READ_TIMEOUT`] (which `axum::serve` cannot set), then lets each
/// connection finish its request in flight.
async fn serve_http1<IO>(
    mut conns: tokio::sync::mpsc::Receiver<(IO, SocketAddr)>,
    router: axum::Router,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            c = conns.recv() => match c {
                Some(c) => c,
                None => break,
            },
        };
        while tasks.try_join_next().is_some() {}
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        tasks.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            tokio::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "http connection ended");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Longest an admin-port request may take (a DLQ replay of many entries is
/// the slowest; `brokerctl dlq`'s own default timeout is the same).
pub const HTTP_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path().to_string();
    match tokio::time::timeout(HTTP_REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(path = %path, after = ?HTTP_REQUEST_TIMEOUT, "http request timed out");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("{path} took longer than {HTTP_REQUEST_TIMEOUT:?}\n"),
            )
                .into_response()
        }
    }
}

/// Turns any shutdown future into a token that is cancelled when it fires.
/// A loopback endpoint that refuses every connection for as long as the
/// returned socket lives: its port is bound but never listened on, so no
/// other process can take it meanwhile (a port found free and released can
/// be, and then answers as a foreign process). For tests and tools that
/// need an address where nothing answers.
pub fn refusing_loopback_endpoint() -> std::io::Result<(String, tokio::net::TcpSocket)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = socket.local_addr()?;
    Ok((format!("http://{addr}"), socket))
}

pub fn token_from(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => t.cancel(),
            _ = t.cancelled() => {}
        }
    });
    token
}

/// Waits until the `grpc.health.v1` service at `endpoint` answers SERVING,
/// polling every 100 ms; fails after `timeout` naming the endpoint.
pub async fn wait_serving(endpoint: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let deadline = tokio::time::Instant::now() + timeout;
    let ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| anyhow::anyhow!("endpoint {endpoint:?}: {e}"))?;
    loop {
        if let Ok(ch) = ep.connect().await
            && let Ok(r) = HealthClient::new(ch)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            && r.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{endpoint} did not report SERVING within {timeout:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
