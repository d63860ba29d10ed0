//! TLS material loaded from PEM files, rebuilt when the files change.
//!
//! One [`TlsState`] per process holds the current rustls configs: one
//! server config per protocol (h2 for gRPC, http/1.1 for the admin port)
//! and one client config for the calls this process makes. Each new
//! connection takes the current config, so a reload needs no restart and
//! breaks no open stream.

use crate::config::{ClientAuth, TlsConfig};
use crate::connections::Conn;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

/// How long a peer has to finish the handshake before it is dropped (a
/// slow or silent client must not hold a task forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} {path} holds no certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("building the TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the CA bundle is not usable for client verification: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Which files to load, for a service (cert, key, CA) or a client tool
/// (CA, and a cert and key when the server asks for one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// Checked in the servers' certificates instead of the dialled host.
    pub server_name: Option<String>,
}

impl TlsFiles {
    pub fn from_config(c: &TlsConfig) -> Self {
        Self {
            cert: c.cert.clone(),
            key: c.key.clone(),
            ca: c.ca.clone(),
            client_auth: c.client_auth,
            server_name: c.server_name.clone(),
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key, &self.ca]
            .into_iter()
            .flatten()
            .map(|p| p.as_path())
    }

    /// The newest modification time of the files, to notice a change.
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The configs built from one read of the files.
pub struct Built {
    /// gRPC listeners (ALPN h2). None for a client-only tool.
    pub grpc: Option<Arc<ServerConfig>>,
    /// The admin HTTP listener (ALPN http/1.1).
    pub http: Option<Arc<ServerConfig>>,
    /// Outgoing gRPC calls (ALPN h2), presenting `cert` when there is one.
    pub client: Arc<ClientConfig>,
    /// Outgoing HTTP/1 calls (the DLQ client, health checks).
    pub client_http1: Arc<ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.into(),
        });
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<Built, TlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &files.ca {
        for c in certs("CA bundle", ca)? {
            roots.add(c)?;
        }
    }
    let roots = Arc::new(roots);
    let identity = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = certs("certificate", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
                what: "private key",
                path: key.clone(),
                source,
            })?;
            Some((chain, key))
        }
        _ => None,
    };
    let server = |alpn: &[u8]| -> Result<Arc<ServerConfig>, TlsError> {
        let (chain, key) = identity.as_ref().expect("server config needs an identity");
        let (chain, key) = (chain.clone(), key.clone_key());
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match files.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            mode => {
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    provider(),
                );
                let v = if mode == ClientAuth::Optional {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                builder.with_client_cert_verifier(v.build()?)
            }
        };
        let mut c = builder.with_single_cert(chain, key)?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    let client = |alpn: &[u8]| -> Result<Arc<ClientConfig>, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone());
        let mut c = match &identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    let serves = identity.is_some();
    Ok(Built {
        grpc: if serves { Some(server(b"h2")?) } else { None },
        http: if serves {
            Some(server(b"http/1.1")?)
        } else {
            None
        },
        client: client(b"h2")?,
        client_http1: client(b"http/1.1")?,
    })
}

/// The current TLS configs of a process, reloadable.
pub struct TlsState {
    files: TlsFiles,
    current: RwLock<(Vec<Option<SystemTime>>, Arc<Built>)>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("files", &self.files)
            .finish()
    }
}

impl TlsState {
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let stamp = files.stamp();
        let built = build(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((stamp, Arc::new(built))),
        }))
    }

    pub fn current(&self) -> Arc<Built> {
        self.current.read().expect("tls lock").1.clone()
    }

    /// Rebuilds from the files if they changed (or `force`). A file that
    /// does not parse keeps the old configs in use and returns the error.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let stamp = self.files.stamp();
        if !force && self.current.read().expect("tls lock").0 == stamp {
            return Ok(false);
        }
        let built = build(&self.files)?;
        *self.current.write().expect("tls lock") = (stamp, Arc::new(built));
        Ok(true)
    }

    /// Reloads on SIGHUP and whenever the files change (checked every
    /// `every`), until `stop`.
    pub fn watch(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let force = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                match this.reload(force) {
                    Ok(true) => tracing::info!(files = ?this.files, "tls certificates reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "tls reload failed; keeping the old certificates")
                    }
                }
            }
        });
    }

    /// Which server config a listener uses.
    fn server(&self, http: bool) -> Arc<ServerConfig> {
        let b = self.current();
        if http { b.http.clone() } else { b.grpc.clone() }
            .expect("a serving process loads a certificate")
    }
}

/// Completes TLS handshakes on accepted connections off the accept loop
/// (each in its own task, bounded by [`HANDSHAKE_TIMEOUT`]), handing
/// finished streams out in order of completion. A failed handshake (a
/// plaintext client, a certificate from another CA) is logged and dropped.
pub fn accept(
    mut conns: tokio::sync::mpsc::Receiver<(Conn<TcpStream>, std::net::SocketAddr)>,
    tls: Arc<TlsState>,
    http: bool,
    stop: CancellationToken,
) -> tokio::sync::mpsc::Receiver<(TlsConn, std::net::SocketAddr)> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                c = conns.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server(http));
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send((s, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "tls handshake refused")
                    }
                    Err(_) => tracing::debug!(peer = %peer, "tls handshake timed out"),
                }
            });
        }
    });
    rx
}

/// A TLS connection over a bounded accepted one.
pub type TlsConn = tokio_rustls::server::TlsStream<Conn<TcpStream>>;

/// The name a client checks the server's certificate against: the host of
/// `authority` (`127.0.0.1:9093`, `writer-1:9093`, `[::1]:9093`).
pub fn server_name(authority: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.to_string()))
}

/// Connects to `authority` over TCP and completes a TLS handshake with the
/// state's current client config.
pub async fn connect(
    tls: &TlsState,
    authority: &str,
    http1: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = match &tls.files.server_name {
        Some(n) => ServerName::try_from(n.clone())
            .map_err(|_| std::io::Error::other(TlsError::ServerName(n.clone())))?,
        None => server_name(authority).map_err(std::io::Error::other)?,
    };
    let b = tls.current();
    let config = if http1 {
        b.client_http1.clone()
    } else {
        b.client.clone()
    };
    let tcp = TcpStream::connect(authority).await?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_from_authorities() {
        assert!(matches!(
            server_name("127.0.0.1:9093").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:9093").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("writer-1:9093").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name:1").is_err());
    }
}
