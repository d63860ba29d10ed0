//! `broker`: run any set of services in one process.
//!
//! - `broker up`: every service plus a local redis-server child (unless
//!   `writer.redis_url` is set), with a banner of the endpoints.
//! - `broker run --service ingest-gateway --service ...`: the named services
//!   (default: all) with the given config.
//! - `broker health`: GET /health (or /ready) on this config's admin port;
//!   the container image's HEALTHCHECK.
//! - `broker certs`: a local CA, node certificate and tokens (what
//!   `broker up --secure` uses), for compose or a first secured cluster.

/// mimalloc: the data path allocates many small buffers per point from
/// several threads; glibc malloc spent a quarter of the broker's CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use broker_common::cli::ConfigArgs;
use broker_common::{BrokerConfig, Listeners, Service};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "broker",
    version,
    about = "Monitoring broker: ingest-gateway, shard-router, storage-writer, query-api, cluster-ctl and host-manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service locally, launching a redis-server child on a free
    /// loopback port when no writer.redis_url is configured.
    Up {
        #[command(flatten)]
        config: ConfigArgs,
        /// Keep Redis's data in an append-only file in this directory
        /// (default: a temporary directory, no persistence).
        #[arg(long, value_name = "DIR")]
        redis_dir: Option<std::path::PathBuf>,
        /// Keep the three cluster-ctl raft logs in this directory (default:
        /// a temporary directory, membership starts afresh each run).
        #[arg(long, value_name = "DIR")]
        raft_dir: Option<std::path::PathBuf>,
        /// Do not start the three cluster-ctl nodes: static membership
        /// (this process's writer only), as before cluster-ctl existed.
        #[arg(long)]
        no_cluster: bool,
        /// Do not run broker-agent for this machine in the process (by
        /// default its CPU, memory, disks and network go to the dashboard
        /// as host `<hostname>` every 5 s).
        #[arg(long)]
        no_agent: bool,
        /// Run everything with TLS (mTLS between services) and a bearer
        /// token per role, from a local CA generated into --secure-dir on
        /// first use (reused afterwards).
        #[arg(long)]
        secure: bool,
        /// Where --secure keeps its CA, certificate and token files.
        #[arg(long, value_name = "DIR", default_value = "broker-secure")]
        secure_dir: std::path::PathBuf,
    },
    /// Run the given services with the given config.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// A service to run (repeatable). Default: all of them.
        #[arg(long = "service", value_name = "NAME")]
        services: Vec<Service>,
    },
    /// Moved to `brokerctl dlq`; says so.
    #[command(hide = true, disable_help_flag = true)]
    Dlq {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Exit 0 if this configuration's admin port (`http_listen`, reached on
    /// loopback when it binds every address) answers GET /health with 200,
    /// 1 otherwise: a container HEALTHCHECK or a supervisor's probe.
    Health {
        #[command(flatten)]
        config: ConfigArgs,
        /// Path to probe: /health (the process is up) or /ready (it can
        /// serve: Redis reachable, cluster joined, a raft leader known).
        #[arg(long, default_value = "/health")]
        path: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        timeout: std::time::Duration,
    },
    /// Generate a local CA, a node certificate (server and client use) and
    /// a token per role (ingest, query, admin, member) into a directory, and print
    /// the `security` section that uses them.
    Certs {
        /// Directory to write ca.pem, ca-key.pem, node.pem, node-key.pem
        /// and {ingest,query,admin,member}.token into.
        #[arg(long, value_name = "DIR", default_value = "broker-secure")]
        out: std::path::PathBuf,
        /// A host name or address the node certificate is valid for, beside
        /// localhost, 127.0.0.1 and ::1 (repeatable; e.g. compose service
        /// names).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// Replace files already in --out.
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Up {
            config,
            redis_dir,
            raft_dir,
            no_cluster,
            no_agent,
            secure,
            secure_dir,
        } => {
            let config = config.load_or_exit();
            let secure_dir = secure.then_some(secure_dir);
            runtime(|| {
                up(
                    config, redis_dir, raft_dir, no_cluster, no_agent, secure_dir,
                )
            })
        }
        Command::Certs { out, hosts, force } => runtime(|| async move { certs(out, hosts, force) }),
        Command::Run { config, services } => {
            let config = config.load_or_exit();
            let services = if services.is_empty() {
                Service::DEFAULT.to_vec()
            } else {
                services
            };
            runtime(|| async move { broker::run_until_signal(config, &services).await })
        }
        Command::Dlq { args } => {
            eprintln!(
                "error: `broker dlq` moved into the operator CLI; run `brokerctl dlq {}`",
                args.join(" ")
            );
            2
        }
        Command::Health {
            config,
            path,
            timeout,
        } => {
            let config = config.load_or_exit();
            runtime(|| health(config, path, timeout))
        }
    };
    std::process::exit(code);
}

fn runtime<F, Fut>(f: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(f()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// `broker health`: one GET on this process's admin port.
async fn health(
    config: BrokerConfig,
    path: String,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let mut addr = config.http_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    // With TLS on, the probe speaks TLS with the config's CA.
    let security = broker_common::security::Security::from_config(&config.security)?;
    let client = internal_clients::AdminClient::with_security(
        &addr.to_string(),
        timeout,
        &security.admin_client,
    )?;
    let body = client.get_text(&path).await?;
    println!("{}", body.trim());
    Ok(())
}

/// gRPC and HTTP ports of the three cluster-ctl nodes `broker up` starts
/// (node 1's HTTP port is the seed's management port 9097).
const UP_CLUSTER_PORTS: [(u16, u16); 3] = [(9096, 9097), (9196, 9197), (9296, 9297)];

async fn up(
    mut config: BrokerConfig,
    redis_dir: Option<std::path::PathBuf>,
    raft_dir: Option<std::path::PathBuf>,
    no_cluster: bool,
    no_agent: bool,
    secure_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let _guard = broker_common::telemetry::init(&config.telemetry, "broker")?;
    let mut secure_lines = String::new();
    if let Some(dir) = &secure_dir {
        anyhow::ensure!(
            config.security == Default::default(),
            "--secure generates its own certificates and tokens, but the config already has a security section: use one or the other"
        );
        let (pki, fresh) = broker::pki::LocalPki::ensure(dir, &[])?;
        config.security = pki.security_config()?;
        let d = dir.display();
        secure_lines = format!(
            "\x20 security:                     TLS everywhere (CA {d}/ca.pem; service-to-service needs its client certificate), tokens {d}/{{ingest,query,admin,member}}.token ({})\n\
             \x20 try: curl --cacert {d}/ca.pem -H \"Authorization: Bearer $(cat {d}/query.token)\" https://127.0.0.1:{http_port}/api/query/hosts\n\
             \x20      brokerctl --tls-ca {d}/ca.pem --token \"$(cat {d}/admin.token)\" members\n",
            if fresh { "generated now" } else { "reused" },
            http_port = config.http_listen.port(),
        );
    }
    let security = broker_common::security::Security::from_config(&config.security)?;
    let scheme = config.security.tls.scheme();
    let _redis = if config.writer.redis_url.is_empty() {
        let mut opts = redis_process::RedisOptions::default();
        if let Some(dir) = redis_dir {
            std::fs::create_dir_all(&dir)?;
            opts.appendonly = true;
            opts.extra_args = vec!["--dir".into(), dir.display().to_string()];
        }
        let server = redis_process::RedisServer::start_with(opts)
            .map_err(|e| anyhow::anyhow!("launching redis-server: {e}"))?;
        config.writer.redis_url = server.url();
        Some(server)
    } else {
        None
    };
    // Three cluster-ctl raft nodes in this process, each on its own ports
    // and data directory, unless membership is configured or disabled: the
    // sandbox the test suites use, its members tasks of this process.
    let mut ctl = None;
    let _raft_tmp;
    let mut ctl_lines = String::new();
    if !no_cluster && config.cluster.endpoints.is_empty() {
        let base = match raft_dir {
            Some(d) => d,
            None => {
                let t = tempfile::Builder::new().prefix("broker-raft-").tempdir()?;
                let p = t.path().to_path_buf();
                _raft_tmp = t;
                p
            }
        };
        std::fs::create_dir_all(&base)?;
        for id in 1..=UP_CLUSTER_PORTS.len() {
            // Node N kept its log in node-N before the sandbox named it
            // raft-N: a --raft-dir from then keeps its cluster.
            let (old, new) = (
                base.join(format!("node-{id}")),
                base.join(format!("raft-{id}")),
            );
            if old.is_dir() && !new.exists() {
                std::fs::rename(&old, &new)?;
            }
        }
        let launch =
            broker_sandbox::Program::in_process(|config, service, listeners, stop| async move {
                broker::run(config, &[service], listeners, stop.cancelled_owned()).await
            });
        let mut sb = broker_sandbox::Sandbox::builder(launch)
            .base(config.clone())
            .ctl_ports(&UP_CLUSTER_PORTS)
            .build("", &base);
        sb.try_start_all()
            .await
            .map_err(|e| anyhow::anyhow!("{e} (use --no-cluster, or stop what holds the port)"))?;
        for (node, (g, h)) in sb.ctl.iter().zip(UP_CLUSTER_PORTS) {
            ctl_lines.push_str(&format!(
                "\x20 {} (raft):           grpc {scheme}://127.0.0.1:{g}  {scheme}://127.0.0.1:{h}/api/cluster\n",
                node.name()
            ));
        }
        ctl_lines.push_str(&format!(
            "\x20 raft data:                      {}\n\x20 membership: brokerctl members | ring | cluster\n",
            base.display()
        ));
        config.cluster.endpoints = sb.endpoints.clone();
        ctl = Some(sb);
    }
    let mut listeners = Listeners::from_config(&config).await?;
    if listeners.internal.is_none() && !config.cluster.endpoints.is_empty() {
        // The cluster reaches this process's router and writer here, never
        // on the agents' port.
        listeners = listeners.with_internal("127.0.0.1:0".parse()?).await?;
    }
    let grpc = listeners.grpc_addr();
    let http = listeners.http_addr();
    let internal_line = match listeners.internal_addr() {
        Some(a) => format!(
            "\x20 internal (router, writer):    {scheme}://{a}  (other broker processes only)\n"
        ),
        None => String::new(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            broker_common::shutdown::signal().await;
            stop.cancel();
        }
    });
    // This machine's own agent, so the dashboard shows a real host.
    let (agent, agent_line) = if no_agent {
        (None, String::new())
    } else {
        let host = broker_agent::local_host_id();
        let mut cfg =
            broker_agent::AgentConfig::new(vec![format!("{scheme}://{grpc}")], host.clone());
        cfg.drain_timeout = std::time::Duration::from_secs(2);
        // The agent is an ingest client: the CA and the ingest token.
        cfg.security = broker_common::security::ClientSecurity {
            tls: security.tls.clone(),
            token: broker_common::security::BearerToken::new(
                config
                    .security
                    .tokens
                    .get("ingest")
                    .as_ref()
                    .map(|t| t.expose()),
            )?,
        };
        let line = format!(
            "\x20 this machine (broker-agent):    host {host}, every {}s (--no-agent leaves it out)\n",
            cfg.interval.as_secs()
        );
        match broker_agent::HostCollector::new() {
            Ok(mut collector) => {
                let stop = stop.clone();
                let task = tokio::spawn(broker_agent::run_agent(
                    cfg,
                    move || collector.collect(),
                    async move { stop.cancelled().await },
                ));
                (Some(task), line)
            }
            Err(e) => (
                None,
                format!("\x20 this machine (broker-agent):    not started: {e}\n"),
            ),
        }
    };
    eprintln!(
        "\nbroker is up (ingest-gateway, shard-router, storage-writer, query-api, host-manager in one process)\n\
         \x20 agents (gRPC MonitorService): {scheme}://{grpc}\n\
         \x20 Prometheus remote write:      {scheme}://{http}/api/v1/write\n\
         \x20 OpenTelemetry (OTLP):         gRPC {scheme}://{grpc}  HTTP {scheme}://{http}/v1/metrics\n\
         {agent_line}\
         \x20 dashboard:                    {scheme}://{http}/dashboard/\n\
         \x20 query API:                    {scheme}://{http}/api/query/hosts  (Prometheus API: {scheme}://{http}/api/v1/query)\n\
         \x20 hosts and alerts:             {scheme}://{http}/api/hosts  /api/alerts  (brokerctl hosts)\n\
         \x20 health / ready / metrics:     {scheme}://{http}/health  /ready  /metrics\n\
         \x20 redis:                        {redis} (key layout: {layout})\n\
         {internal_line}\
         {ctl_lines}\
         {secure_lines}\
         \x20 try: cargo run --release --bin broker-loadgen -- --endpoints {scheme}://{grpc} --hosts 1000 --interval 5s --duration 60s{loadgen_security}\n\
         \x20 stop: Ctrl-C (drains and flushes)\n",
        loadgen_security = match &secure_dir {
            Some(d) => format!(
                " --tls-ca {d}/ca.pem --token \"$(cat {d}/ingest.token)\"",
                d = d.display()
            ),
            None => String::new(),
        },
        redis = config.writer.redis_url,
        layout = match config.writer.migrate_from.as_str() {
            "" => config.writer.layout.clone(),
            from => format!("{}, reading {from} too", config.writer.layout),
        },
    );
    let mut services = Service::DEFAULT.to_vec();
    services.push(Service::HostManager);
    let result = broker::run(config, &services, listeners, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    })
    .await;
    stop.cancel();
    if let Some(agent) = agent {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), agent).await;
    }
    if let Some(mut sb) = ctl {
        for node in &mut sb.ctl {
            if let Err(e) = node.try_stop().await {
                eprintln!("{e}");
            }
        }
    }
    result
}

/// `broker certs`: writes a local PKI and prints the config that uses it.
fn certs(out: std::path::PathBuf, hosts: Vec<String>, force: bool) -> anyhow::Result<()> {
    let pki = if force {
        broker::pki::LocalPki::generate(&out, &hosts)?
    } else {
        let (pki, fresh) = broker::pki::LocalPki::ensure(&out, &hosts)?;
        if !fresh {
            eprintln!(
                "{} already holds a CA, certificate and tokens; kept (--force replaces them)",
                out.display()
            );
        }
        pki
    };
    let mut section = pki.security_config()?;
    // Print where the tokens are, not the tokens.
    section.tokens = Default::default();
    let yaml = serde_yaml_ng::to_string(&serde_json::json!({ "security": section }))?;
    println!(
        "# broker.yaml: TLS from {dir}; tokens from {dir}/*.token, e.g. in the environment:\n\
         #   BROKER_SECURITY__TOKENS__INGEST=$(cat {dir}/ingest.token)\n\
         #   BROKER_SECURITY__TOKENS__QUERY=$(cat {dir}/query.token)\n\
         #   BROKER_SECURITY__TOKENS__ADMIN=$(cat {dir}/admin.token)    (operators, host-manager)\n\
         #   BROKER_SECURITY__TOKENS__MEMBER=$(cat {dir}/member.token)  (every service, to each other)\n{yaml}",
        dir = out.display()
    );
    Ok(())
}
