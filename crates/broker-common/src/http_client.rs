//! The HTTP/1 client every process and tool uses for HTTP calls: members'
//! `/health` and `/metrics`, Alertmanager's `/api/v2/alerts`, the DLQ API.
//! hyper-util's pooled client (already in the tree through tonic), with
//! hyper-rustls for `https://` URLs and the bearer token of a
//! [`ClientSecurity`] on every request.

use crate::error_chain;
use crate::security::ClientSecurity;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Largest answer read (a writer's /metrics is a few tens of KiB; a DLQ
/// list of 10,000 entries fits).
const MAX_BODY_BYTES: usize = 64 << 20;

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("reading the body: {0}")]
    Body(String),
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    token: Option<String>,
    /// With TLS material every `http://` URL is dialled as `https://`: a
    /// process with certificates never talks plaintext to its peers (as
    /// [`ClientSecurity::lazy`] does for gRPC).
    upgrade: bool,
}

impl Default for HttpClient {
    /// Plain HTTP (and no token): loopback defaults.
    fn default() -> Self {
        Self::new(&ClientSecurity::default())
    }
}

impl HttpClient {
    /// A client that speaks TLS to `https://` URLs with `security`'s CA
    /// (and client certificate) and sends its token.
    pub fn new(security: &ClientSecurity) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.enforce_http(false);
        let tls = match &security.tls {
            Some(t) => {
                // hyper-rustls sets ALPN itself (and refuses a preset one).
                let mut c = (*t.current().client_http1).clone();
                c.alpn_protocols.clear();
                c
            }
            // No CA: https URLs fail the handshake with a clear error.
            None => tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            token: security.token.header().map(str::to_string),
            upgrade: security.tls.is_some(),
        }
    }

    /// `method url` with an optional JSON body, within `timeout`; the
    /// status and body, or why there is none.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        json: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let upgraded;
        let url = match url.strip_prefix("http://") {
            Some(rest) if self.upgrade => {
                upgraded = format!("https://{rest}");
                upgraded.as_str()
            }
            _ => url,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::ACCEPT, "application/json");
        if json.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, t);
        }
        let req = req
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|e| HttpError::Invalid(format!("{url}: {e}")))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HttpError::Unreachable(error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }

    /// GET, expecting 200; the body as text.
    pub async fn get_text(&self, url: &str, timeout: Duration) -> Result<String, String> {
        let (status, body) = self
            .send(Method::GET, url, None, timeout)
            .await
            .map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}
