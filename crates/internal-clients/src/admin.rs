//! A client of one process's admin HTTP API (its `http_listen`): plain
//! GETs (`/health`, `/ready`, `/metrics`) and a storage-writer's
//! dead-letter queue (`/api/dlq`, answers in [`crate::dlq`]). It is the
//! workspace's [`HttpClient`] with TLS and the admin token; `brokerctl dlq`,
//! `broker health` and the tests use it.

use crate::dlq::{EntryDetail, EntryDone, EntryList, ErrorBody, ReplayAll};
use broker_common::http_client::{HttpClient, HttpError};
use broker_common::security::ClientSecurity;
use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Why a call to the admin API failed, naming the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("--admin {admin:?}: {reason}")]
    InvalidAddress { admin: String, reason: String },
    #[error(
        "cannot reach the admin API at {url}: {reason} (is a storage-writer running there? --admin must be its http_listen)"
    )]
    Unreachable { url: String, reason: String },
    #[error("{url} did not answer within {after:?} (see --timeout)")]
    Timeout { url: String, after: Duration },
    #[error("{url}: {status}: {error}")]
    Api {
        url: String,
        status: u16,
        error: String,
    },
    #[error("{url} answered something unexpected: {reason}")]
    BadAnswer { url: String, reason: String },
}

impl AdminError {
    /// The HTTP status of an API error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            AdminError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one process's admin HTTP API.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    client: HttpClient,
    timeout: Duration,
}

impl AdminClient {
    /// `admin`: `http://host:port` (or `host:port`), plain HTTP, no token.
    pub fn new(admin: &str, timeout: Duration) -> Result<Self, AdminError> {
        Self::with_security(admin, timeout, &ClientSecurity::default())
    }

    /// As [`AdminClient::new`] for a secured broker: `https://` with the
    /// CA of `security`, and its token (the admin token) on every request.
    pub fn with_security(
        admin: &str,
        timeout: Duration,
        security: &ClientSecurity,
    ) -> Result<Self, AdminError> {
        let invalid = |reason: &str| AdminError::InvalidAddress {
            admin: admin.to_string(),
            reason: reason.to_string(),
        };
        let base = if admin.contains("://") {
            admin.to_string()
        } else if security.tls.is_some() {
            format!("https://{admin}")
        } else {
            format!("http://{admin}")
        };
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().map_err(|e| invalid(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") if security.tls.is_some() => {}
            Some("https") => {
                return Err(invalid(
                    "https:// needs the CA that signed the broker's certificate (--tls-ca)",
                ));
            }
            _ => return Err(invalid("must be http:// or https://")),
        }
        if uri.host().is_none() {
            return Err(invalid("no host"));
        }
        Ok(Self {
            base,
            client: HttpClient::new(security),
            timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path`, returns the status and body.
    async fn send(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes), AdminError> {
        let url = format!("{}{path}", self.base);
        self.client
            .send(method, &url, None, self.timeout)
            .await
            .map_err(|e| match e {
                HttpError::Invalid(reason) => AdminError::InvalidAddress {
                    admin: self.base.clone(),
                    reason,
                },
                HttpError::Unreachable(reason) => AdminError::Unreachable { url, reason },
                HttpError::Timeout(after) => AdminError::Timeout { url, after },
                HttpError::Body(reason) => AdminError::BadAnswer {
                    url,
                    reason: format!("reading the body: {reason}"),
                },
            })
    }

    /// Calls the API and decodes a JSON answer; a non-2xx answer becomes
    /// [`AdminError::Api`] with the API's `error` text.
    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T, AdminError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.send(method, path).await?;
        if !status.is_success() {
            let error = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => e.error,
                Err(_) if status == StatusCode::NOT_FOUND => {
                    "no DLQ API here: is this a storage-writer's (or the all-in-one broker's) admin port?".into()
                }
                Err(_) => String::from_utf8_lossy(&body).trim().chars().take(300).collect(),
            };
            return Err(AdminError::Api {
                url,
                status: status.as_u16(),
                error,
            });
        }
        serde_json::from_slice(&body).map_err(|e| AdminError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }

    pub async fn list(&self, after: Option<u64>, limit: usize) -> Result<EntryList, AdminError> {
        let mut path = format!("/api/dlq?limit={limit}");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        self.call(Method::GET, &path).await
    }

    pub async fn show(&self, id: u64) -> Result<EntryDetail, AdminError> {
        self.call(Method::GET, &format!("/api/dlq/{id}")).await
    }

    pub async fn replay(&self, id: u64) -> Result<EntryDone, AdminError> {
        self.call(Method::POST, &format!("/api/dlq/{id}/replay"))
            .await
    }

    /// Replays every entry. A stop because Redis could not be reached is
    /// an `Ok` report with `error` set (the API answers 503 with the
    /// report).
    pub async fn replay_all(&self) -> Result<ReplayAll, AdminError> {
        let url = format!("{}/api/dlq/replay", self.base);
        let (status, body) = self.send(Method::POST, "/api/dlq/replay").await?;
        if (status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE)
            && let Ok(r) = serde_json::from_slice::<ReplayAll>(&body)
        {
            return Ok(r);
        }
        let error = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(300)
                    .collect()
            });
        Err(AdminError::Api {
            url,
            status: status.as_u16(),
            error,
        })
    }

    pub async fn discard(&self, id: u64) -> Result<EntryDone, AdminError> {
        self.call(Method::DELETE, &format!("/api/dlq/{id}")).await
    }

    /// A plain-text GET (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, AdminError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.send(Method::GET, path).await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(AdminError::Api {
                url,
                status: status.as_u16(),
                error: text.trim().to_string(),
            });
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_are_checked() {
        let c = AdminClient::new("127.0.0.1:9190/", Duration::from_secs(1)).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:9190");
        let e = AdminClient::new("https://127.0.0.1:9190", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--tls-ca"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_admin_port_is_named() {
        // A port nobody listens on: bind, learn it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = AdminClient::new(&format!("127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let e = c.list(None, 10).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "cannot reach the admin API at http://127.0.0.1:{port}/api/dlq"
            )),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }
}
