//! `broker-loadgen`: streams generated host snapshots to ingest gateways and
//! reports throughput and ack latency. Always bounded by time or points.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use broker_agent::generator::Mix;
use broker_agent::load::{
    DEFAULT_BATCH_HOSTS, DEFAULT_CONNECTIONS, DEFAULT_DURATION, DEFAULT_ENDPOINT, DEFAULT_HOSTS,
    DEFAULT_INTERVAL, DEFAULT_MAX_RESENDS, DEFAULT_METRICS, DEFAULT_MIX, DEFAULT_WINDOW,
};
use broker_agent::{AgentError, LoadConfig, Pacing, Progress, run_load_with};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Stream generated host snapshots to ingest gateways over
/// MonitorService.SendMetrics and report throughput and ack latency.
///
/// Every batch is kept until acked: broken streams are replaced (backoff,
/// failover to the next endpoint) and what was outstanding is resent, as are
/// points the gateway marks retryable. After the last new batch the run
/// drains for at most --drain-timeout.
///
/// Progress goes to stderr every second, the summary (sent, acked, rejected,
/// resent, failed) to stderr at the end, and with --json one JSON object to
/// stdout.
#[derive(Debug, Parser)]
#[command(name = "broker-loadgen", version)]
struct Args {
    /// Gateway endpoints, comma-separated; connections are spread across
    /// them round robin and fail over to the next on connect failure or a
    /// broken stream.
    #[arg(long, env = "BROKER_LOADGEN_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ENDPOINT)]
    endpoints: Vec<String>,

    /// The ingest token and the gateway's CA, when the broker is secured.
    #[command(flatten)]
    security: broker_common::cli::ClientSecurityArgs,

    /// Simulated hosts (host-00000 ...).
    #[arg(long, default_value_t = DEFAULT_HOSTS)]
    hosts: usize,

    /// Metrics per snapshot.
    #[arg(long, default_value_t = DEFAULT_METRICS)]
    metrics: usize,

    /// What the metrics look like: `realistic` (node_exporter-like
    /// constants, counters and slowly moving gauges, which compress like
    /// real data) or `synthetic` (noisy values, a third of them
    /// incompressible; what `generator::value` recomputes).
    #[arg(long, value_enum, default_value_t = DEFAULT_MIX)]
    mix: Mix,

    /// Points (host snapshots) per batch.
    #[arg(long, default_value_t = DEFAULT_BATCH_HOSTS)]
    batch_hosts: usize,

    /// gRPC streams, each on its own connection.
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS)]
    connections: usize,

    /// Batches un-acked (in flight or waiting for a resend) per connection.
    #[arg(long, default_value_t = DEFAULT_WINDOW)]
    window: usize,

    /// Each host sends one snapshot per interval, stamped with the aligned
    /// wall-clock second (the default pacing, 5s).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["rate", "as_fast_as_possible"])]
    interval: Option<Duration>,

    /// `max` to send as fast as acks allow, or points per second.
    /// Timestamps then step back one second per round from the start.
    #[arg(long, value_parser = parse_pacing)]
    rate: Option<Pacing>,

    /// Same as `--rate max`.
    #[arg(long, conflicts_with = "rate")]
    as_fast_as_possible: bool,

    /// Stop sending after this long (default 30s unless --points is given).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,

    /// Stop after sending this many points.
    #[arg(long)]
    points: Option<u64>,

    /// Attach region/role labels to every point.
    #[arg(long)]
    labels: bool,

    /// Print one JSON summary object on stdout at the end.
    #[arg(long)]
    json: bool,

    /// No per-second progress lines.
    #[arg(long, short)]
    quiet: bool,

    /// TCP connect timeout per endpoint.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    connect_timeout: Duration,

    /// After the last new batch, how long to keep resending un-acked
    /// batches and waiting for their acks; what is un-acked then fails.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    drain_timeout: Duration,

    /// Resends one batch may get (broken stream, retryable points,
    /// overloaded gateway) before its points count as failed.
    #[arg(long, default_value_t = DEFAULT_MAX_RESENDS)]
    max_resends: u32,
}

fn parse_pacing(s: &str) -> Result<Pacing, String> {
    s.parse()
}

impl Args {
    fn into_config(self) -> Result<LoadConfig, String> {
        let security = self
            .security
            .client_security()
            .map_err(|e| format!("--token / --tls-*: {e}"))?;
        let pacing = match (self.interval, self.rate, self.as_fast_as_possible) {
            (_, _, true) => Pacing::Max,
            (_, Some(rate), false) => rate,
            (Some(interval), None, false) => Pacing::Interval(interval),
            (None, None, false) => Pacing::Interval(DEFAULT_INTERVAL),
        };
        let duration = match (self.duration, self.points) {
            (None, None) => Some(DEFAULT_DURATION),
            (d, _) => d,
        };
        Ok(LoadConfig {
            endpoints: self
                .endpoints
                .into_iter()
                .map(|e| e.trim().to_string())
                .collect(),
            hosts: self.hosts,
            metrics: self.metrics,
            mix: self.mix,
            batch_hosts: self.batch_hosts,
            connections: self.connections,
            window: self.window,
            pacing,
            duration,
            max_points: self.points,
            labels: self.labels,
            print_progress: !self.quiet,
            connect_timeout: self.connect_timeout,
            drain_timeout: self.drain_timeout,
            max_resends: self.max_resends,
            record_acked: false,
            security,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let json = args.json;
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broker-loadgen: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("broker-loadgen: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let endpoints = cfg.endpoints.join(", ");
    let print = cfg.print_progress;
    let stop = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let on_progress = move |p: &Progress| {
        if print {
            eprintln!("{p}");
        }
    };

    let report = match run_load_with(cfg, on_progress, stop).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("broker-loadgen: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    eprintln!("{report}");
    if json {
        println!("{}", report.to_json_line());
    }
    if !report.anything_answered() {
        eprintln!("broker-loadgen: no batch was acknowledged by {endpoints}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `error: cause: cause`.
fn chain(e: &AgentError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> LoadConfig {
        let mut argv = vec!["broker-loadgen"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv).unwrap().into_config().unwrap()
    }

    #[test]
    fn defaults() {
        let c = parse(&[]);
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:9093".to_string()]);
        assert_eq!((c.hosts, c.metrics, c.batch_hosts), (100, 32, 100));
        assert_eq!(c.mix, Mix::Realistic);
        assert_eq!((c.connections, c.window), (2, 8));
        assert_eq!(c.pacing, Pacing::Interval(Duration::from_secs(5)));
        assert_eq!(c.duration, Some(Duration::from_secs(30)));
        assert_eq!(c.max_points, None);
        assert!(c.print_progress);
        // The flag defaults are literals; keep them equal to the library's.
        let lib = LoadConfig::default();
        assert_eq!(c.drain_timeout, lib.drain_timeout);
        assert_eq!(c.connect_timeout, lib.connect_timeout);
        assert_eq!(c.max_resends, lib.max_resends);
        assert_eq!(c.mix, lib.mix);
        assert!(!c.record_acked);
    }

    #[test]
    fn mix_flag() {
        assert_eq!(parse(&["--mix", "synthetic"]).mix, Mix::Synthetic);
        assert_eq!(parse(&["--mix", "realistic"]).mix, Mix::Realistic);
        let err = Args::try_parse_from(["x", "--mix", "noise"]).unwrap_err();
        assert!(err.to_string().contains("synthetic"), "{err}");
    }

    #[test]
    fn delivery_flags() {
        let c = parse(&["--max-resends", "3", "--drain-timeout", "90s"]);
        assert_eq!(c.max_resends, 3);
        assert_eq!(c.drain_timeout, Duration::from_secs(90));
        assert_eq!(parse(&["--max-resends", "0"]).max_resends, 0);
        assert!(Args::try_parse_from(["x", "--max-resends", "-1"]).is_err());
    }

    #[test]
    fn pacing_flags() {
        assert_eq!(parse(&["--rate", "max"]).pacing, Pacing::Max);
        assert_eq!(parse(&["--as-fast-as-possible"]).pacing, Pacing::Max);
        assert_eq!(parse(&["--rate", "5000"]).pacing, Pacing::Rate(5000.0));
        assert_eq!(
            parse(&["--interval", "10s"]).pacing,
            Pacing::Interval(Duration::from_secs(10))
        );
        assert!(Args::try_parse_from(["x", "--interval", "5s", "--rate", "max"]).is_err());
        assert!(Args::try_parse_from(["x", "--rate", "fast"]).is_err());
    }

    #[test]
    fn bounds() {
        let points_only = parse(&["--points", "1000"]);
        assert_eq!(
            (points_only.duration, points_only.max_points),
            (None, Some(1000))
        );
        let both = parse(&["--points", "1000", "--duration", "1m"]);
        assert_eq!(both.duration, Some(Duration::from_secs(60)));
    }

    #[test]
    fn endpoint_list() {
        let c = parse(&["--endpoints", "http://127.0.0.1:1, http://127.0.0.1:2"]);
        assert_eq!(c.endpoints, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
    }
}
