//! TLS and bearer tokens, for the servers and the clients of a process.
//!
//! # Layout
//! - [`tls`]: PEM files → rustls configs, reloaded on change or SIGHUP;
//!   the TLS accept loop and client connect.
//! - [`auth`]: the roles each gRPC method and HTTP route needs, the checks
//!   (a tower layer for gRPC, an axum middleware for HTTP) and the client's
//!   token interceptor.
//!
//! A process builds one [`Security`] from its config: [`crate::serve`]
//! uses its server half, and every client the process makes (router →
//! writer, services → cluster-ctl, raft peers, health probes) is built by
//! its [`ClientSecurity`], so all of them speak TLS and carry the member
//! token (the admin token when no member token is set). Host-manager and
//! operator tools act for the operator: [`Security::admin_client`].

pub mod auth;
pub mod tls;

pub use auth::{AuthError, BearerToken, Role, Tokens};
pub use tls::{TlsError, TlsFiles, TlsState};

use crate::config::{self, SecurityConfig};
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// How often a channel between broker processes (raft peers, cluster-ctl
/// clients, gateway → router, router → writer) pings its connection, idle
/// or not.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// HTTP/2 keepalive for channels between broker processes: a connection
/// that goes silent (a partition, a peer whose pod came back at a new
/// address behind the same name) is dropped within
/// [`KEEPALIVE_INTERVAL`] plus [`KEEPALIVE_TIMEOUT`], its calls fail as
/// unavailable (so they fail
/// over at once instead of waiting out their deadline), and the next call
/// dials again, resolving the name afresh. Without it calls time out one
/// by one on the dead connection for ever, and a Watch stream on it never
/// ends.
pub fn keepalive(ep: Endpoint) -> Endpoint {
    ep.http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
}

/// The channel every client in the workspace uses: a tonic channel (TLS
/// inside when configured) that adds the bearer token to each call.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// The security of one process: what its servers check and what its
/// clients present.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub tls: Option<Arc<TlsState>>,
    pub tokens: Tokens,
    /// What the process's own clients present: the member token.
    pub client: ClientSecurity,
    /// The same with the admin token, for what a process does for the
    /// operator (host-manager marking members offline, `broker probe`).
    pub admin_client: ClientSecurity,
    pub reload_interval: std::time::Duration,
}

impl Security {
    /// Loads the certificates named by the config. Plain (no TLS, no
    /// tokens) when the section is empty.
    pub fn from_config(c: &SecurityConfig) -> Result<Self, TlsError> {
        let tls = if c.tls.enabled() {
            Some(TlsState::load(TlsFiles::from_config(&c.tls))?)
        } else {
            None
        };
        let admin = c.tokens.get("admin");
        let member = c.tokens.get("member").or_else(|| admin.clone());
        let client = |token: Option<config::Secret>| ClientSecurity {
            tls: tls.clone(),
            token: BearerToken::new(token.as_ref().map(|s| s.expose())).expect("validated token"),
        };
        Ok(Self {
            client: client(member),
            admin_client: client(admin),
            tls,
            tokens: Tokens::from_config(c),
            reload_interval: c.tls.reload_interval,
        })
    }

    /// A process with neither TLS nor tokens (tests, loopback defaults).
    pub fn plain() -> Self {
        Self::default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("token: {0}")]
    Token(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// How a client connects: TLS material (a CA, and a certificate when the
/// server asks for one) and the token it sends.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    pub tls: Option<Arc<TlsState>>,
    pub token: BearerToken,
}

impl ClientSecurity {
    /// For command-line tools and agents: a CA (and optionally a client
    /// certificate) and a token, each optional.
    pub fn for_tool(
        ca: Option<std::path::PathBuf>,
        cert: Option<std::path::PathBuf>,
        key: Option<std::path::PathBuf>,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let tls = if ca.is_some() || cert.is_some() {
            Some(TlsState::load(TlsFiles {
                cert,
                key,
                ca,
                client_auth: crate::config::ClientAuth::None,
                server_name: None,
            })?)
        } else {
            None
        };
        Ok(Self {
            tls,
            token: BearerToken::new(token)
                .map_err(|_| ClientError::Token("it must be printable ASCII".into()))?,
        })
    }

    /// Splits `endpoint` into the plaintext URI tonic is given and the
    /// authority the TLS connector dials. With TLS material every endpoint
    /// is dialled over TLS (`http://` or `https://` alike: a process with
    /// certificates never talks plaintext to its peers); without it an
    /// `https://` endpoint is an error.
    fn prepare(&self, endpoint: &str) -> Result<(Endpoint, Option<String>), ClientError> {
        let bad = |reason: String| ClientError::Endpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let uri: http::Uri = endpoint.parse().map_err(|e| bad(format!("{e}")))?;
        let authority = uri
            .authority()
            .ok_or_else(|| bad("has no host:port".into()))?
            .to_string();
        let https = uri.scheme_str() == Some("https");
        if https && self.tls.is_none() {
            return Err(bad(
                "is https but no CA is configured (security.tls.ca, or --tls-ca)".into(),
            ));
        }
        let plain = format!(
            "http://{authority}{}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        );
        let ep = Endpoint::from_shared(plain).map_err(|e| bad(e.to_string()))?;
        Ok((ep, self.tls.as_ref().map(|_| authority)))
    }

    fn connector(
        &self,
        authority: String,
    ) -> impl tower::Service<
        http::Uri,
        Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Error = std::io::Error,
        Future = impl Send,
    > + Send
    + 'static {
        let tls = self.tls.clone().expect("connector only with tls");
        tower::service_fn(move |_: http::Uri| {
            let tls = tls.clone();
            let authority = authority.clone();
            async move {
                tls::connect(&tls, &authority, false)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        })
    }

    /// A channel that connects on first use (and reconnects after a
    /// failure). `configure` sets timeouts and keepalive on the endpoint.
    pub fn lazy(
        &self,
        endpoint: &str,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<AuthChannel, ClientError> {
        let (ep, tls_authority) = self.prepare(endpoint)?;
        let ep = configure(ep);
        let channel = match tls_authority {
            Some(a) => ep.connect_with_connector_lazy(self.connector(a)),
            None => ep.connect_lazy(),
        };
        Ok(InterceptedService::new(channel, self.token.clone()))
    }

    /// A channel connected now, so a refused connection or a failed
    /// handshake is reported here.
    pub async fn connect(
        &self,
        endpoint: &str,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<AuthChannel, ClientError> {
        let (ep, tls_authority) = self.prepare(endpoint)?;
        let ep = configure(ep);
        let channel = match tls_authority {
            Some(a) => ep.connect_with_connector(self.connector(a)).await,
            None => ep.connect().await,
        }
        .map_err(|source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
        Ok(InterceptedService::new(channel, self.token.clone()))
    }
}
