//! A local certificate authority for `broker up --secure` and `broker
//! certs`: a CA, one node certificate every service presents (server and
//! client use, so it serves mTLS between services), and a random bearer
//! token per role, written as PEM and token files into one directory.
//!
//! This is for trying the secure setup on one machine or in compose; a
//! production cluster brings certificates from its own CA (cert-manager,
//! Vault) and points `security.tls.*` at them.

use broker_common::config::{ClientAuth, Secret, SecurityConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const NODE_CERT: &str = "node.pem";
pub const NODE_KEY: &str = "node-key.pem";
/// Token files, one per role: `member` is what the services present to
/// each other, `admin` the operator's (brokerctl) and host-manager's.
pub const ROLES: [&str; 4] = ["ingest", "query", "admin", "member"];

/// Names every generated node certificate carries, so loopback clients
/// can verify it whatever address they dial.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The files of a local PKI directory.
#[derive(Debug, Clone)]
pub struct LocalPki {
    pub dir: PathBuf,
}

impl LocalPki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn token_path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{role}.token"))
    }

    pub fn token(&self, role: &str) -> anyhow::Result<String> {
        let p = self.token_path(role);
        let t = std::fs::read_to_string(&p)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?;
        Ok(t.trim().to_string())
    }

    /// Every file is there (a previous run's PKI is reused as it is).
    pub fn complete(&self) -> bool {
        [CA_CERT, CA_KEY, NODE_CERT, NODE_KEY]
            .iter()
            .map(|f| self.path(f))
            .chain(ROLES.iter().map(|r| self.token_path(r)))
            .all(|p| p.is_file())
    }

    /// Uses the PKI in `dir` if it is complete, else generates one there
    /// (node certificate for `hosts` plus the loopback names).
    pub fn ensure(dir: &Path, hosts: &[String]) -> anyhow::Result<(Self, bool)> {
        let pki = Self { dir: dir.into() };
        if pki.complete() {
            return Ok((pki, false));
        }
        let certs = [CA_CERT, CA_KEY, NODE_CERT, NODE_KEY]
            .iter()
            .all(|f| pki.path(f).is_file());
        if certs {
            // A PKI from before a role's token existed (the member token):
            // add what is missing, keep the CA every client trusts.
            for role in ROLES {
                if !pki.token_path(role).is_file() {
                    write(&pki.token_path(role), &format!("{}\n", new_token()), true)?;
                }
            }
            return Ok((pki, false));
        }
        Ok((Self::generate(dir, hosts)?, true))
    }

    /// A fresh CA, node certificate and tokens in `dir` (overwritten).
    pub fn generate(dir: &Path, hosts: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let pki = Self { dir: dir.into() };

        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params()?.self_signed(&ca_key)?;
        write(&pki.path(CA_CERT), &ca_cert.pem(), false)?;
        write(&pki.path(CA_KEY), &ca_key.serialize_pem(), true)?;
        pki.issue_node(&ca_key, hosts)?;
        for role in ROLES {
            write(&pki.token_path(role), &format!("{}\n", new_token()), true)?;
        }
        Ok(pki)
    }

    /// Replaces node.pem and node-key.pem with a new certificate and key
    /// from the same CA (a rotation: running processes pick it up on
    /// their next reload).
    pub fn reissue_node(&self, hosts: &[String]) -> anyhow::Result<()> {
        let pem = std::fs::read_to_string(self.path(CA_KEY))?;
        self.issue_node(&KeyPair::from_pem(&pem)?, hosts)
    }

    fn issue_node(&self, ca_key: &KeyPair, hosts: &[String]) -> anyhow::Result<()> {
        let mut names: Vec<String> = LOOPBACK_NAMES.iter().map(|s| s.to_string()).collect();
        for h in hosts {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        let mut node = CertificateParams::new(names)?;
        node.distinguished_name
            .push(DnType::CommonName, "monitoring broker node");
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        node.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let node_key = KeyPair::generate()?;
        // The issuer is named by the CA's (fixed) parameters and signs
        // with its key, so a reissue chains to the CA written before.
        let issuer = Issuer::new(ca_params()?, ca_key);
        let node_cert = node.signed_by(&node_key, &issuer)?;
        // Key first: a reload between the two writes fails to match and
        // keeps the old pair, then the next one loads both.
        write(&self.path(NODE_KEY), &node_key.serialize_pem(), true)?;
        write(&self.path(NODE_CERT), &node_cert.pem(), false)?;
        Ok(())
    }

    /// The `security` section that runs a process with this PKI: TLS with
    /// client certificates optional (required for service-to-service
    /// calls) and a token per role.
    pub fn security_config(&self) -> anyhow::Result<SecurityConfig> {
        let mut s = SecurityConfig::default();
        s.tls.cert = Some(self.path(NODE_CERT));
        s.tls.key = Some(self.path(NODE_KEY));
        s.tls.ca = Some(self.path(CA_CERT));
        s.tls.client_auth = ClientAuth::Optional;
        s.tokens.ingest = Some(Secret(self.token("ingest")?));
        s.tokens.query = Some(Secret(self.token("query")?));
        s.tokens.admin = Some(Secret(self.token("admin")?));
        s.tokens.member = Some(Secret(self.token("member")?));
        Ok(s)
    }
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "monitoring broker local CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

/// 32 random bytes from the thread's CSPRNG (ChaCha, seeded by the OS),
/// as hex.
pub fn new_token() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_loads_as_a_security_config() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, fresh) = LocalPki::ensure(dir.path(), &["writer-1".into()]).unwrap();
        assert!(fresh);
        let (_, again) = LocalPki::ensure(dir.path(), &[]).unwrap();
        assert!(!again, "a complete PKI is reused");
        let s = pki.security_config().unwrap();
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        let loaded = broker_common::security::Security::from_config(&s).unwrap();
        assert!(loaded.tls.is_some());
        assert_ne!(pki.token("ingest").unwrap(), pki.token("admin").unwrap());
        assert_eq!(pki.token("query").unwrap().len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.path(NODE_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
}
