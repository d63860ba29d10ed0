//! `broker-agent`: the host agent. Every interval it takes one snapshot of
//! this machine (CPU, memory, swap, load, uptime, disks, network
//! interfaces) and streams it to the ingest gateways; snapshots are kept
//! until acked, through gateway restarts and failovers, up to `--buffer`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use broker_agent::agent::{DEFAULT_BATCH_MAX, DEFAULT_BUFFER};
use broker_agent::client::DisplayChain;
use broker_agent::{AgentConfig, HostCollector, local_host_id, run_agent};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Stream this host's metrics to the broker's ingest gateways over
/// MonitorService.SendMetrics.
///
/// Metrics: cpu_usage, cpu_idle, cpu_count, mem_*, swap_*, load1/5/15,
/// uptime_seconds, disk_*{mount}, net_*_total{interface}. `--once` prints
/// one snapshot as JSON and exits, to see what would be sent.
#[derive(Debug, Parser)]
#[command(name = "broker-agent", version)]
struct Args {
    /// Gateway endpoints, comma-separated, failed over in order.
    #[arg(
        long,
        env = "BROKER_AGENT_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9093"
    )]
    endpoints: Vec<String>,

    /// The ingest token and the gateway's CA, when the broker is secured.
    #[command(flatten)]
    security: broker_common::cli::ClientSecurityArgs,

    /// The host id the snapshots carry (default: this machine's host name,
    /// characters outside [A-Za-z0-9._-] as '-').
    #[arg(long, env = "BROKER_AGENT_HOST_ID")]
    host_id: Option<String>,

    /// A label every snapshot carries, `key=value`; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,

    /// Seconds between snapshots (whole seconds).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    interval: Duration,

    /// Snapshots kept while no gateway takes them; past this the oldest
    /// are dropped (720 = one hour at 5s).
    #[arg(long, default_value_t = DEFAULT_BUFFER)]
    buffer: usize,

    /// Snapshots per batch when catching up.
    #[arg(long, default_value_t = DEFAULT_BATCH_MAX)]
    batch_max: usize,

    /// On SIGINT/SIGTERM, how long to keep sending what is waiting.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain_timeout: Duration,

    /// Stop after this long (default: run until SIGINT/SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,

    /// Print one snapshot of this host as JSON on stdout and exit.
    #[arg(long)]
    once: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let mut collector = match HostCollector::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broker-agent: cannot read this host's metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.once {
        // CPU usage is measured between two reads.
        collector.collect();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let snapshot: BTreeMap<String, f64> = collector.collect().into_iter().collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&snapshot).expect("a map of numbers serializes")
        );
        return ExitCode::SUCCESS;
    }
    let security = match args.security.client_security() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("broker-agent: --token / --tls-*: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let cfg = AgentConfig {
        security,
        labels: args.labels.into_iter().collect(),
        interval: args.interval,
        buffer: args.buffer,
        batch_max: args.batch_max,
        drain_timeout: args.drain_timeout,
        ..AgentConfig::new(
            args.endpoints
                .into_iter()
                .map(|e| e.trim().to_string())
                .collect(),
            args.host_id.unwrap_or_else(local_host_id),
        )
    };
    if let Err(e) = cfg.validate() {
        eprintln!("broker-agent: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let duration = args.duration;
    let stop = async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    _ = broker_common::shutdown::signal() => {}
                    _ = tokio::time::sleep(d) => {}
                }
            }
            None => broker_common::shutdown::signal().await,
        }
    };
    match run_agent(cfg, move || collector.collect(), stop).await {
        Ok(report) if report.dropped == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("broker-agent: {}", DisplayChain(&e));
            ExitCode::FAILURE
        }
    }
}
