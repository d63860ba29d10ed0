//! The `security` section: TLS on every listener and client, and bearer
//! tokens per role. Off by default (loopback development); `broker up
//! --secure` writes a config with both on. Its own types and `validate`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How often certificate files are checked for changes (SIGHUP reloads at
/// once too).
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Tokens shorter than this are refused: they are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub tls: TlsConfig,
    pub tokens: TokensConfig,
    /// Serve in plaintext or without tokens on a non-loopback address on
    /// purpose (a private network, a lab). Unset, a process whose
    /// listeners are not all on loopback refuses to start without TLS and
    /// a token for every role, as Redis's protected mode does.
    pub insecure: bool,
}

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates; service-to-service calls are then protected
    /// by the admin token alone.
    None,
    /// A client may present a certificate (it must then chain to `ca`);
    /// service-to-service calls (raft, router, writer) require one. Agents
    /// and dashboards connect with the CA and a token only.
    #[default]
    Optional,
    /// Every connection must present a certificate from `ca`.
    Required,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Optional => "optional",
            Self::Required => "required",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain this process presents, as a server and as a
    /// client of its peers. Unset: every port is plaintext.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA bundle: verifies the servers this process calls and the
    /// client certificates of its peers.
    pub ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// The name this process checks its peers' certificates against,
    /// whatever address it dials (pods advertised by IP, one certificate
    /// for every service). Unset: the host of the address dialled.
    pub server_name: Option<String>,
    /// How often `cert`, `key` and `ca` are checked for changes; a change
    /// is loaded without a restart (new connections use it).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            ca: None,
            client_auth: ClientAuth::default(),
            server_name: None,
            reload_interval: DEFAULT_TLS_RELOAD_INTERVAL,
        }
    }
}

impl SecurityConfig {
    /// What is missing for listeners off loopback: TLS, and each role's
    /// token (by key).
    pub fn missing_off_loopback(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.tls.enabled() {
            missing.push("security.tls.cert");
        }
        let t = &self.tokens;
        for (key, v, f) in [
            ("security.tokens.ingest", &t.ingest, &t.ingest_file),
            ("security.tokens.query", &t.query, &t.query_file),
            ("security.tokens.admin", &t.admin, &t.admin_file),
        ] {
            if v.is_none() && f.is_none() {
                missing.push(key);
            }
        }
        missing
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// The URL scheme of this process's own addresses.
    pub fn scheme(&self) -> &'static str {
        if self.enabled() { "https" } else { "http" }
    }
}

/// A secret string: its `Debug` never shows the value, so a config dump in
/// a log does not leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Bearer tokens by role. An unset role is open; the admin token is
/// accepted wherever a token is asked for.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Agents, remote write and OTLP: `MonitorService`, `/api/v1/write`,
    /// `/v1/metrics`, host registration.
    pub ingest: Option<Secret>,
    /// Dashboards: `QueryService`, `/api/query/*`, `/api/v1/*`, status pages.
    pub query: Option<Secret>,
    /// Operators (brokerctl) and host-manager, which marks members
    /// offline and scales for them: every cluster change, the DLQ. Accepted
    /// wherever a token is asked for. Services send it on internal calls
    /// only when no `member` token is set.
    pub admin: Option<Secret>,
    /// The services' own credential: raft, router and writer calls, and a
    /// member's Join, Heartbeat, Leave and drain of itself at cluster-ctl
    /// (its process instance proves which member it is); no cluster change
    /// beyond that, no DLQ. Every service sends it on internal calls. A
    /// process that serves admin routes still needs `admin` to check them.
    pub member: Option<Secret>,
    /// The same tokens read from files (a mounted Kubernetes Secret, a
    /// compose volume); one of `x` and `x_file` per role. Read at start.
    pub ingest_file: Option<PathBuf>,
    pub query_file: Option<PathBuf>,
    pub admin_file: Option<PathBuf>,
    pub member_file: Option<PathBuf>,
}

/// One role's token as configured: its role, the key it came from, and the
/// token (`None`: unset) or why it cannot be had.
pub struct ResolvedToken {
    pub role: &'static str,
    pub key: String,
    pub token: Result<Option<Secret>, String>,
}

impl TokensConfig {
    /// Each role's token, from the value or the file (trimmed).
    pub fn resolve(&self) -> [ResolvedToken; 4] {
        let one = |role: &'static str, v: &Option<Secret>, f: &Option<PathBuf>| {
            let (key, r) = match (v, f) {
                (Some(_), Some(_)) => (
                    format!("security.tokens.{role}_file"),
                    Err(format!(
                        "set security.tokens.{role} or {role}_file, not both"
                    )),
                ),
                (Some(v), None) => (format!("security.tokens.{role}"), Ok(Some(v.clone()))),
                (None, Some(f)) => (
                    format!("security.tokens.{role}_file"),
                    std::fs::read_to_string(f)
                        .map(|t| Some(Secret(t.trim().to_string())))
                        .map_err(|e| format!("{} cannot be read: {e}", f.display())),
                ),
                (None, None) => (format!("security.tokens.{role}"), Ok(None)),
            };
            ResolvedToken {
                role,
                key,
                token: r,
            }
        };
        [
            one("ingest", &self.ingest, &self.ingest_file),
            one("query", &self.query, &self.query_file),
            one("admin", &self.admin, &self.admin_file),
            one("member", &self.member, &self.member_file),
        ]
    }

    /// The token of `role` (`ingest`, `query`, `admin`, `member`); `None` when unset
    /// or unreadable (validation reports that before anything starts).
    pub fn get(&self, role: &str) -> Option<Secret> {
        self.resolve()
            .into_iter()
            .find(|t| t.role == role)
            .and_then(|t| t.token.ok().flatten())
    }
}

impl SecurityConfig {
    /// Problems as (key, problem); the caller adds them to the others.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let t = &self.tls;
        match (&t.cert, &t.key) {
            (Some(_), None) => p.push((
                "security.tls.key".into(),
                "is required when security.tls.cert is set".into(),
            )),
            (None, Some(_)) => p.push((
                "security.tls.cert".into(),
                "is required when security.tls.key is set".into(),
            )),
            _ => {}
        }
        if t.ca.is_some() && t.cert.is_none() {
            p.push((
                "security.tls.cert".into(),
                "is required when security.tls.ca is set (every process serves too)".into(),
            ));
        }
        if t.cert.is_some() && t.ca.is_none() && t.client_auth != ClientAuth::None {
            p.push((
                "security.tls.ca".into(),
                format!(
                    "is required with client_auth {} (it verifies peers' certificates); \
                     set client_auth: none to run without client certificates",
                    t.client_auth.as_str()
                ),
            ));
        }
        for (key, path) in [("cert", &t.cert), ("key", &t.key), ("ca", &t.ca)] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(path)
            {
                p.push((
                    format!("security.tls.{key}"),
                    format!("{} cannot be read: {e}", path.display()),
                ));
            }
        }
        if let Some(n) = &t.server_name
            && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
        {
            p.push((
                "security.tls.server_name".into(),
                format!("{n:?} is not a DNS name or an IP address"),
            ));
        }
        if t.enabled() && t.reload_interval < Duration::from_secs(1) {
            p.push((
                "security.tls.reload_interval".into(),
                format!("{:?} is shorter than one second", t.reload_interval),
            ));
        }
        for ResolvedToken { key, token, .. } in self.tokens.resolve() {
            let token = match token {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    p.push((key, e));
                    continue;
                }
            };
            let v = token.expose();
            if v.len() < MIN_TOKEN_LEN {
                p.push((
                    key,
                    format!("is {} characters; use at least {MIN_TOKEN_LEN}", v.len()),
                ));
            } else if !v.bytes().all(|b| b.is_ascii_graphic()) {
                p.push((
                    key,
                    "must be printable ASCII without spaces (it travels in a header)".into(),
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_keys_and_never_show_tokens() {
        let mut c = SecurityConfig::default();
        assert!(c.problems().is_empty());
        c.tls.cert = Some("/nonexistent/cert.pem".into());
        c.tokens.ingest = Some(Secret("short".into()));
        c.tokens.admin = Some(Secret("has a space in it ....".into()));
        let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"security.tls.key".to_string()), "{keys:?}");
        assert!(keys.contains(&"security.tls.ca".to_string()), "{keys:?}");
        assert!(keys.contains(&"security.tls.cert".to_string()), "{keys:?}");
        assert!(keys.contains(&"security.tokens.ingest".to_string()));
        assert!(keys.contains(&"security.tokens.admin".to_string()));
        assert!(!format!("{c:?}").contains("short"));
    }

    #[test]
    fn tokens_from_files() {
        let dir = std::env::temp_dir().join(format!("broker-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("admin.token");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        let mut c = SecurityConfig::default();
        c.tokens.admin_file = Some(f.clone());
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(
            c.tokens.get("admin").unwrap().expose(),
            "0123456789abcdef0123"
        );
        c.tokens.admin = Some(Secret("0123456789abcdef0123".into()));
        c.tokens.query_file = Some(dir.join("missing.token"));
        let keys: Vec<_> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["security.tokens.query_file", "security.tokens.admin_file"]
        );
    }
}
