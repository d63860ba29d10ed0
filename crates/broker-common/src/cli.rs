//! Flags every broker binary shares, and the `main` of a single-service
//! binary.

use crate::EXIT_INVALID_CONFIG;
use crate::config::{BrokerConfig, ConfigError, ConfigSource};
use std::path::PathBuf;

/// Where the configuration comes from. Flags win over `BROKER_*`
/// environment variables, which win over the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// YAML config file (see broker.yaml for every key).
    #[arg(short, long, env = "BROKER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides `node_id`.
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Overrides `grpc_listen`.
    #[arg(long, value_name = "ADDR")]
    pub grpc_listen: Option<String>,
    /// Overrides `http_listen`.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Overrides `internal_listen`.
    #[arg(long, value_name = "ADDR")]
    pub internal_listen: Option<String>,
    /// Overrides `writer.redis_url`.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Sets any key, e.g. `--set router.vnodes=200` or
    /// `--set gateway.routers=[http://127.0.0.1:9094]`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl ConfigArgs {
    pub fn overrides(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let mut out = Vec::new();
        for (key, v) in [
            ("node_id", &self.node_id),
            ("grpc_listen", &self.grpc_listen),
            ("http_listen", &self.http_listen),
            ("internal_listen", &self.internal_listen),
            ("writer.redis_url", &self.redis_url),
        ] {
            if let Some(v) = v {
                // Quote so YAML keeps it a string.
                out.push((key.to_string(), format!("{v:?}")));
            }
        }
        for kv in &self.set {
            let (k, v) = kv.split_once('=').ok_or_else(|| ConfigError::Parse {
                origin: format!("flag --set {kv}"),
                message: "expected KEY=VALUE".into(),
            })?;
            out.push((k.trim().to_string(), v.to_string()));
        }
        Ok(out)
    }

    /// Loads from the file, the process environment and the flags.
    pub fn load(&self) -> Result<BrokerConfig, ConfigError> {
        BrokerConfig::load(&ConfigSource {
            file: self.config.as_deref(),
            env: std::env::vars().collect(),
            overrides: self.overrides()?,
        })
    }

    /// Loads, or prints the problems and exits with code 64. Honors
    /// `--print-config`.
    pub fn load_or_exit(&self) -> BrokerConfig {
        match self.load() {
            Ok(c) => {
                if self.print_config {
                    print!(
                        "{}",
                        serde_yaml_ng::to_string(&c).expect("config serializes")
                    );
                    std::process::exit(0);
                }
                c
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(EXIT_INVALID_CONFIG);
            }
        }
    }
}

/// Left-aligned columns separated by two spaces, as the operator CLIs
/// (`brokerctl`) print them; the last column is not padded.
pub fn table(rows: &[Vec<String>], out: &mut String) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

/// How a tool (brokerctl, the agent, the load generator)
/// reaches a secured broker: a bearer token and, for TLS, the CA (and a
/// client certificate when the server requires one). Each flag also reads
/// an environment variable, so a token need not appear in `ps`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientSecurityArgs {
    /// Bearer token sent with every call (the ingest token for agents, the
    /// admin token for brokerctl).
    #[arg(
        long,
        global = true,
        env = "BROKER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Read the token from this file instead (a mounted secret).
    #[arg(
        long,
        global = true,
        env = "BROKER_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// PEM CA that signed the broker's certificates: turns TLS on.
    #[arg(long, global = true, env = "BROKER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, when the broker requires one.
    #[arg(
        long,
        global = true,
        env = "BROKER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "BROKER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl ClientSecurityArgs {
    pub fn client_security(
        &self,
    ) -> Result<crate::security::ClientSecurity, crate::security::ClientError> {
        let from_file = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| {
                        crate::security::ClientError::Token(format!(
                            "--token-file {}: {e}",
                            f.display()
                        ))
                    })?,
            ),
            None => None,
        };
        crate::security::ClientSecurity::for_tool(
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.token.as_deref().or(from_file.as_deref()),
        )
    }
}
