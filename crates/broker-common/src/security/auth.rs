//! Who may call what: the role each gRPC method and HTTP route needs, and
//! the checks that enforce it. The whole policy is in this file, in two
//! tables ([`grpc_role`], [`http_role`]), so it can be read and audited in
//! one place; the README's Ports table lists the same.

use crate::config::{ClientAuth, SecurityConfig};
use axum::http::{Method, StatusCode};
use std::sync::Arc;
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;

/// What a caller is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Send data: agents, remote write, OTLP, host registration.
    Ingest,
    /// Read data and status: dashboards.
    Query,
    /// Change the cluster, replay or discard the DLQ.
    Admin,
    /// A member's own Join, Heartbeat, Leave and drain at cluster-ctl,
    /// and the reads every service makes there (Members, Watch, Status):
    /// the member token (or the admin token). A member credential acts only
    /// as the member that holds it: cluster-ctl asks its process instance
    /// on Leave and drain and refuses every other change (see [`Granted`]).
    Member,
    /// Service-to-service calls (raft, router, writer): the member token
    /// (or the admin token) and, with TLS and client_auth on, a client
    /// certificate from the CA.
    Peer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Query => "query",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Peer => "peer",
        }
    }
}

/// The role a gRPC method needs (`/package.Service/Method`); `None` is
/// open (health checks). Unknown services need admin: a new service is
/// closed until it is listed here.
pub fn grpc_role(path: &str) -> Option<Role> {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("");
    let method = parts.next().unwrap_or("");
    Some(match service {
        "grpc.health.v1.Health" => return None,
        "broker.v1.MonitorService" | "opentelemetry.proto.collector.metrics.v1.MetricsService" => {
            Role::Ingest
        }
        "broker.v1.HostService" if method == "Register" => Role::Ingest,
        "broker.v1.QueryService" | "broker.v1.HostService" => Role::Query,
        "broker.v1.RaftService" | "broker.v1.RouterService" | "broker.v1.WriterService" => {
            Role::Peer
        }
        // What a member does as itself, and the reads every service makes;
        // SetState is a member's own drain (checked by cluster-ctl) or an
        // operator's change (admin). SetRing and the voter changes are the
        // operator's alone.
        "broker.v1.ClusterService"
            if matches!(
                method,
                "Join" | "Heartbeat" | "Leave" | "SetState" | "Members" | "Watch" | "Status"
            ) =>
        {
            Role::Member
        }
        _ => Role::Admin,
    })
}

/// The role an HTTP route needs; `None` is open (probes, metrics, the
/// dashboard page itself, whose API calls carry the token).
pub fn http_role(method: &Method, path: &str) -> Option<Role> {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if matches!(path, "/health" | "/ready" | "/metrics") || under("/dashboard") {
        return None;
    }
    Some(
        if path == "/api/v1/write"
            || path == "/v1/metrics"
            || (path == "/api/hosts" && method == Method::POST)
        {
            Role::Ingest
        } else if under("/api/dlq") {
            Role::Admin
        } else if under("/api/query")
            || under("/api/v1")
            || under("/api/hosts")
            || matches!(
                path,
                "/api/cluster"
                    | "/api/members"
                    | "/api/ring"
                    | "/api/alerts"
                    | "/api/autoscale"
                    | "/api/health-checks"
                    | "/api/discovery"
            )
        {
            Role::Query
        } else {
            Role::Admin
        },
    )
}

/// Why a call was refused. The messages never contain a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: this call needs the {0} token (authorization: Bearer ...)")]
    Missing(&'static str),
    #[error("wrong bearer token for the {0} role")]
    Wrong(&'static str),
    #[error("this call is service-to-service: it needs a client certificate from the cluster CA")]
    NoClientCert,
}

/// What a call that passed the check may do, put in the request's
/// extensions by the auth layers: `admin` when it carried the admin token
/// (or no admin token is configured, so the admin role is open). Handlers
/// that let a member act only as itself read it; a request without it did
/// not come through a server's layers (an in-process call) and is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub admin: bool,
}

impl Granted {
    /// Whether the request (a tonic or http request's extensions) may act
    /// as an operator.
    pub fn is_admin(extensions: &http::Extensions) -> bool {
        extensions.get::<Granted>().is_none_or(|g| g.admin)
    }
}

/// The tokens a server checks, by role.
#[derive(Clone, Default)]
pub struct Tokens {
    ingest: Option<Arc<[u8]>>,
    query: Option<Arc<[u8]>>,
    admin: Option<Arc<[u8]>>,
    /// The services' own credential (peer calls), kept apart from the
    /// operators' admin token.
    member: Option<Arc<[u8]>>,
    /// Peer calls need a verified client certificate (TLS with a CA and
    /// client_auth optional or required).
    peer_cert: bool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ingest", &self.ingest.is_some())
            .field("query", &self.query.is_some())
            .field("admin", &self.admin.is_some())
            .field("member", &self.member.is_some())
            .field("peer_cert", &self.peer_cert)
            .finish()
    }
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

impl Tokens {
    pub fn from_config(c: &SecurityConfig) -> Self {
        let t = |role: &str| {
            c.tokens
                .get(role)
                .map(|s| Arc::<[u8]>::from(s.expose().as_bytes()))
        };
        Self {
            ingest: t("ingest"),
            query: t("query"),
            admin: t("admin"),
            member: t("member"),
            peer_cert: c.tls.enabled() && c.tls.client_auth != ClientAuth::None,
        }
    }

    /// Whether anything is checked at all (the layers are skipped if not).
    pub fn enforced(&self) -> bool {
        self.ingest.is_some()
            || self.query.is_some()
            || self.admin.is_some()
            || self.member.is_some()
            || self.peer_cert
    }

    /// Checks a call needing `role`, given its `authorization` value and
    /// whether the connection presented a verified client certificate;
    /// says whether it may also act as an operator.
    pub fn check(
        &self,
        role: Role,
        authorization: Option<&[u8]>,
        client_cert: bool,
    ) -> Result<Granted, AuthError> {
        if role == Role::Peer && self.peer_cert && !client_cert {
            return Err(AuthError::NoClientCert);
        }
        let given = authorization.and_then(|v| v.strip_prefix(b"Bearer ".as_slice()));
        // Every comparison always runs, so timing does not tell which role
        // a token belongs to.
        let matches = |t: &Option<Arc<[u8]>>| match (t, given) {
            (Some(t), Some(g)) => eq(t, g),
            _ => false,
        };
        let admin_ok = matches(&self.admin);
        let granted = Granted {
            admin: self.admin.is_none() || admin_ok,
        };
        let (wanted, name) = match role {
            Role::Ingest => (&self.ingest, "ingest"),
            Role::Query => (&self.query, "query"),
            Role::Admin => (&self.admin, "admin"),
            Role::Peer | Role::Member if self.member.is_some() => (&self.member, "member"),
            Role::Peer | Role::Member => (&self.admin, "admin"),
        };
        if wanted.is_none() {
            return Ok(granted);
        }
        let given_ok = matches(wanted);
        if given.is_none() {
            Err(AuthError::Missing(name))
        } else if given_ok | admin_ok {
            Ok(granted)
        } else {
            Err(AuthError::Wrong(name))
        }
    }
}

/// The tower layer in front of every gRPC service: checks the token (and
/// the client certificate for peer calls) before the call is decoded.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    pub tokens: Tokens,
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcAuth {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    tokens: Tokens,
}

type TlsInfo = tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>;

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(role) = grpc_role(req.uri().path()) {
            let cert = req
                .extensions()
                .get::<TlsInfo>()
                .and_then(|i| i.peer_certs())
                .is_some_and(|c| !c.is_empty());
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            match self.tokens.check(role, auth, cert) {
                Ok(granted) => {
                    req.extensions_mut().insert(granted);
                }
                Err(e) => {
                    tracing::debug!(path = req.uri().path(), error = %e, "grpc call refused");
                    let status = tonic::Status::unauthenticated(e.to_string());
                    return futures::future::Either::Right(std::future::ready(Ok(
                        status.into_http()
                    )));
                }
            }
        }
        futures::future::Either::Left(self.inner.call(req))
    }
}

/// The axum middleware in front of every HTTP route: 401 with
/// `WWW-Authenticate: Bearer` when the route's token is missing or wrong.
pub async fn http_auth(
    axum::extract::State(tokens): axum::extract::State<Tokens>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let role = http_role(req.method(), req.uri().path());
    // A browser page (a cross-site form or no-cors fetch, or DNS
    // rebinding to loopback) must not drive state changes: a DLQ replay or
    // discard, nor writes (remote write, OTLP, registration: a no-cors
    // `text/plain` POST needs no preflight). Those come from brokerctl,
    // Prometheus, SDKs, agents and curl, which send no Origin. Reads (the
    // dashboard's PromQL POSTs) stay open to pages.
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if matches!(role, Some(Role::Admin | Role::Ingest))
        && changes_state
        && req.headers().contains_key(http::header::ORIGIN)
    {
        return (
            StatusCode::FORBIDDEN,
            "a request from a browser page (Origin header) cannot change state or write here; \
             send it from a tool (brokerctl, Prometheus, an agent), which sends no Origin\n",
        )
            .into_response();
    }
    if let Some(role) = role
        && let Err(e) = tokens.check(
            // HTTP routes are token-only: peers do not call them.
            if role == Role::Peer {
                Role::Admin
            } else {
                role
            },
            req.headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            false,
        )
    {
        tracing::debug!(path = req.uri().path(), error = %e, "http request refused");
        return (
            StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Bearer")],
            format!("{e}\n"),
        )
            .into_response();
    }
    next.run(req).await
}

/// Adds a token to requests a client sends (an `authorization` header).
#[derive(Clone, Default)]
pub struct BearerToken(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self, AuthError> {
        Ok(Self(match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| AuthError::Wrong("client"))?,
            ),
        }))
    }

    /// The header value, for HTTP clients.
    pub fn header(&self) -> Option<&str> {
        self.0.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BearerToken({})",
            if self.0.is_some() { "***" } else { "none" }
        )
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn tokens() -> Tokens {
        let mut c = SecurityConfig::default();
        c.tokens.ingest = Some(Secret("ingest-token-0123456789".into()));
        c.tokens.admin = Some(Secret("admin-token-0123456789".into()));
        Tokens::from_config(&c)
    }

    #[test]
    fn roles_admin_everywhere_and_open_roles() {
        let t = tokens();
        let ingest = Some(b"Bearer ingest-token-0123456789".as_slice());
        let admin = Some(b"Bearer admin-token-0123456789".as_slice());
        let ok = Ok(Granted { admin: false });
        assert_eq!(t.check(Role::Ingest, ingest, false), ok);
        assert_eq!(
            t.check(Role::Ingest, admin, false),
            Ok(Granted { admin: true })
        );
        assert_eq!(
            t.check(Role::Admin, ingest, false),
            Err(AuthError::Wrong("admin"))
        );
        assert_eq!(
            t.check(Role::Ingest, None, false),
            Err(AuthError::Missing("ingest"))
        );
        assert_eq!(
            t.check(Role::Ingest, Some(b"ingest-token-0123456789"), false),
            Err(AuthError::Missing("ingest"))
        );
        // No query token configured: the query role is open.
        assert_eq!(t.check(Role::Query, None, false), ok);
        assert_eq!(
            t.check(Role::Peer, admin, false),
            Ok(Granted { admin: true })
        );
    }

    #[test]
    fn the_member_token_is_a_peer_and_not_an_operator() {
        let mut c = SecurityConfig::default();
        c.tokens.admin = Some(Secret("admin-token-0123456789".into()));
        c.tokens.member = Some(Secret("member-token-0123456789".into()));
        let t = Tokens::from_config(&c);
        let member = Some(b"Bearer member-token-0123456789".as_slice());
        let admin = Some(b"Bearer admin-token-0123456789".as_slice());
        assert_eq!(
            t.check(Role::Peer, member, false),
            Ok(Granted { admin: false })
        );
        assert_eq!(
            t.check(Role::Peer, admin, false),
            Ok(Granted { admin: true })
        );
        assert_eq!(
            t.check(Role::Admin, member, false),
            Err(AuthError::Wrong("admin"))
        );
        assert_eq!(
            t.check(Role::Peer, None, false),
            Err(AuthError::Missing("member"))
        );
        assert_eq!(
            t.check(Role::Member, member, false),
            Ok(Granted { admin: false })
        );
        assert_eq!(
            grpc_role("/broker.v1.ClusterService/Join"),
            Some(Role::Member)
        );
        assert_eq!(
            grpc_role("/broker.v1.ClusterService/AddVoter"),
            Some(Role::Admin)
        );
        assert_eq!(
            grpc_role("/broker.v1.ClusterService/SetRing"),
            Some(Role::Admin)
        );
    }

    #[test]
    fn the_policy_tables() {
        assert_eq!(grpc_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            grpc_role("/broker.v1.MonitorService/SendMetrics"),
            Some(Role::Ingest)
        );
        assert_eq!(
            grpc_role("/broker.v1.HostService/Register"),
            Some(Role::Ingest)
        );
        assert_eq!(grpc_role("/broker.v1.HostService/List"), Some(Role::Query));
        assert_eq!(grpc_role("/broker.v1.RaftService/Send"), Some(Role::Peer));
        assert_eq!(
            grpc_role("/broker.v1.ClusterService/RemoveVoter"),
            Some(Role::Admin)
        );
        assert_eq!(grpc_role("/something.New/Call"), Some(Role::Admin));
        let get = Method::GET;
        assert_eq!(http_role(&get, "/metrics"), None);
        assert_eq!(http_role(&get, "/dashboard/"), None);
        assert_eq!(
            http_role(&Method::POST, "/api/v1/write"),
            Some(Role::Ingest)
        );
        assert_eq!(http_role(&get, "/api/v1/query"), Some(Role::Query));
        assert_eq!(http_role(&get, "/api/dlq"), Some(Role::Admin));
        assert_eq!(
            http_role(&Method::POST, "/api/dlq/replay"),
            Some(Role::Admin)
        );
        assert_eq!(http_role(&Method::POST, "/api/hosts"), Some(Role::Ingest));
        assert_eq!(http_role(&get, "/api/hosts"), Some(Role::Query));
        assert_eq!(http_role(&get, "/api/dlqx"), Some(Role::Admin));
        assert_eq!(http_role(&get, "/api/query/hosts"), Some(Role::Query));
        assert_eq!(http_role(&get, "/healthz"), Some(Role::Admin));
    }
}
