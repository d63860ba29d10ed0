//! Runs one process's servers: every enabled gRPC service on one port, the
//! gRPC health service beside them, and the admin HTTP server.

use crate::admin::Admin;
use crate::security::Security;
use crate::security::auth::GrpcAuthLayer;
use crate::security::tls::{self, TlsListener};
use std::future::Future;
use std::future::IntoFuture;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The sockets a process serves on. Bound by the caller so tests can pass
/// `127.0.0.1:0` listeners and learn the ports.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> std::io::Result<Self> {
        let g = TcpListener::bind(grpc).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding grpc_listen {grpc}: {e}"))
        })?;
        let h = TcpListener::bind(http).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("binding http_listen {http}: {e}"))
        })?;
        Ok(Self { grpc: g, http: h })
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
}

/// Serves `routes` (plus `grpc.health.v1`, reporting each name in
/// `grpc_services` as serving) and the admin router until `stop` is
/// cancelled. The gRPC server then stops accepting and waits for in-flight
/// calls; handlers watch `stop` too and end their streams once drained.
///
/// With TLS configured both ports speak only TLS (a plaintext client fails
/// the handshake), and the certificates are reloaded when their files
/// change. Every gRPC call and HTTP route passes the token check of
/// [`crate::security::auth`] first.
pub async fn serve(
    routes: tonic::service::Routes,
    grpc_services: &[&str],
    admin: &Admin,
    listeners: Listeners,
    security: &Security,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for name in grpc_services {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let routes = routes.add_service(health);
    let grpc_stop = stop.clone();
    let grpc_server = tonic::transport::Server::builder()
        // Agents keep streams open for hours; keepalive finds dead peers.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .tcp_nodelay(true)
        // Refuse a call before its body is decoded when its token (or, for
        // peer calls, its client certificate) is missing.
        .layer(GrpcAuthLayer {
            tokens: security.tokens.clone(),
        })
        .add_routes(routes);
    let grpc_shutdown = async move {
        grpc_stop.cancelled().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    let http_router = admin
        .router()
        // Inner: the token check runs before any handler.
        .layer(axum::middleware::from_fn_with_state(
            security.tokens.clone(),
            crate::security::auth::http_auth,
        ))
        // Outer: no request holds a connection and a task for longer than
        // HTTP_REQUEST_TIMEOUT, whatever the route (queries have their own,
        // shorter, query.timeout).
        .layer(axum::middleware::from_fn(deadline));
    let http_stop = stop.clone();
    let http_shutdown = async move { http_stop.cancelled().await };
    let (g, h) = match &security.tls {
        None => {
            // tonic's `tcp_nodelay` does not reach sockets handed in as a
            // stream: set it on each accepted one, or small answers (acks,
            // query results) wait ~40 ms for the peer's delayed ACK.
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc),
                |s| {
                    if let Ok(s) = &s {
                        let _ = s.set_nodelay(true);
                    }
                    s
                },
            );
            tokio::join!(
                grpc_server.serve_with_incoming_shutdown(incoming, grpc_shutdown),
                axum::serve(listeners.http, http_router)
                    .with_graceful_shutdown(http_shutdown)
                    .into_future()
            )
        }
        Some(tls) => {
            tls.watch(security.reload_interval, stop.clone());
            let http_addr = listeners.http_addr();
            let grpc = tls::accept(listeners.grpc, tls.clone(), false, stop.clone());
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(grpc),
                |(s, _)| Ok::<_, std::io::Error>(s),
            );
            let http = TlsListener {
                rx: tls::accept(listeners.http, tls.clone(), true, stop.clone()),
                addr: http_addr,
            };
            tokio::join!(
                grpc_server.serve_with_incoming_shutdown(incoming, grpc_shutdown),
                axum::serve(http, http_router)
                    .with_graceful_shutdown(http_shutdown)
                    .into_future()
            )
        }
    };
    g.map_err(|e| anyhow::anyhow!("grpc server: {e}"))?;
    h.map_err(|e| anyhow::anyhow!("admin http server: {e}"))?;
    Ok(())
}

/// Longest an admin-port request may take (a DLQ replay of many entries is
/// the slowest; `broker dlq`'s own default timeout is the same).
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
