//! Flags and subcommands. Values are checked here, so a bad role, hash,
//! weight or vnode count is a usage error (exit 2) that lists what is valid,
//! before anything is sent.

use broker_proto::v1::MemberRole;
use clap::{Args, Parser, Subcommand};
use hash_ring::{HashAlgorithm, MAX_VNODES, MAX_WEIGHT};

/// The cluster-ctl gRPC endpoints of the three nodes `broker up` starts.
pub const DEFAULT_ENDPOINTS: &str =
    "http://127.0.0.1:9096,http://127.0.0.1:9196,http://127.0.0.1:9296";

/// Every role name, in the order the proto lists them.
pub const ROLE_NAMES: [&str; 4] = [
    "ingest-gateway",
    "shard-router",
    "storage-writer",
    "query-api",
];

#[derive(Parser, Debug)]
#[command(
    name = "brokerctl",
    version,
    about = "Operate the broker's cluster-ctl: members, the ring, Raft status and changes"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// cluster-ctl gRPC endpoints, comma separated; any node answers
    /// (followers forward changes to the leader).
    #[arg(
        long,
        global = true,
        env = "BROKERCTL_ENDPOINTS",
        default_value = DEFAULT_ENDPOINTS,
        value_delimiter = ',',
        value_parser = parse_endpoint,
        value_name = "URL,..."
    )]
    pub endpoints: Vec<String>,
    /// Print the view as JSON (the shapes of cluster-ctl's HTTP API)
    /// instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// host-manager's gRPC endpoint, for `hosts` and `autoscale` (default:
    /// the process `broker up` starts, which runs it).
    #[arg(
        long,
        global = true,
        env = "BROKERCTL_HOST_MANAGER",
        default_value = DEFAULT_HOST_MANAGER,
        value_parser = parse_endpoint,
        value_name = "URL"
    )]
    pub host_manager: String,
    /// A storage-writer's admin HTTP address (its `http_listen`), for
    /// `dlq`.
    #[arg(long, global = true, env = "BROKER_ADMIN", default_value = DEFAULT_ADMIN, value_name = "URL")]
    pub admin: String,
    /// How long one `dlq` request may take (a replay writes to Redis).
    #[arg(long, global = true, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: std::time::Duration,
    /// Token and TLS of a secured cluster (`--token` takes the admin token).
    #[command(flatten)]
    pub security: broker_common::cli::ClientSecurityArgs,
}

/// Where `dlq` looks by default: the `http_listen` default.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9190";

/// Where `broker up` serves host-manager (its gRPC port).
pub const DEFAULT_HOST_MANAGER: &str = "http://127.0.0.1:9093";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Members: roles, state, weight, address and time in their state.
    Members,
    /// The ring: settings and each online storage-writer's share.
    Ring,
    /// Raft status of every endpoint.
    Cluster,
    /// Register a member (or update a known one and set it online).
    Join(JoinArgs),
    /// Remove a member.
    Leave {
        /// Member id.
        id: String,
    },
    /// Set a member draining: out of the ring, still serving what it took.
    Drain {
        /// Member id.
        id: String,
    },
    /// Set a draining member online again.
    Undrain {
        /// Member id.
        id: String,
    },
    /// Add or remove a cluster-ctl Raft voter.
    #[command(subcommand)]
    Voter(VoterCommand),
    /// Change the ring settings (every router and writer re-routes).
    SetRing(SetRingArgs),
    /// Monitored hosts from host-manager: state, last point, how found.
    Hosts {
        /// Only hosts in this state: up, stale, down or discovered.
        #[arg(long, value_parser = ["up", "stale", "down", "discovered"])]
        state: Option<String>,
    },
    /// host-manager's autoscaler.
    #[command(subcommand)]
    Autoscale(AutoscaleCommand),
    /// A storage-writer's dead-letter queue: the points Redis refused for
    /// good (list, show, replay, discard).
    Dlq(crate::dlq::DlqArgs),
}

#[derive(Subcommand, Debug)]
pub enum AutoscaleCommand {
    /// The load score, each writer's load, the last decisions and why.
    Status,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Member id (letters, digits, '.', '_', '-').
    pub id: String,
    /// gRPC endpoint other services reach it at.
    #[arg(long, value_name = "http://HOST:PORT")]
    pub addr: String,
    /// A role: ingest-gateway, shard-router, storage-writer or query-api
    /// (repeatable, or comma separated).
    #[arg(
        long = "role",
        required = true,
        value_delimiter = ',',
        value_parser = parse_role_arg,
        value_name = "ROLE"
    )]
    pub roles: Vec<MemberRole>,
    /// Relative share of the ring (storage-writers).
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WEIGHT))
    )]
    pub weight: u32,
    /// HTTP admin endpoint, for status pages.
    #[arg(long, value_name = "http://HOST:PORT")]
    pub admin_addr: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum VoterCommand {
    /// Add a voter; its cluster-ctl must be running with `join_existing`.
    Add {
        /// Raft id of the new voter.
        raft_id: u64,
        /// gRPC endpoint of its cluster-ctl.
        #[arg(value_name = "http://HOST:PORT")]
        addr: String,
    },
    /// Remove a voter.
    Remove {
        /// Raft id of the voter.
        raft_id: u64,
    },
}

#[derive(Args, Debug)]
pub struct SetRingArgs {
    /// Virtual nodes per unit of weight.
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VNODES))
    )]
    pub vnodes: u32,
    /// Hash function of the ring: xxh3 or crc32.
    #[arg(long, value_parser = parse_hash)]
    pub hash: HashAlgorithm,
}

/// Parses a role name; the error lists the valid ones.
pub fn parse_role_arg(s: &str) -> Result<MemberRole, String> {
    cluster_client::parse_role(s)
        .ok_or_else(|| format!("unknown role {s:?}, valid roles: {}", ROLE_NAMES.join(", ")))
}

fn parse_hash(s: &str) -> Result<HashAlgorithm, String> {
    s.parse().map_err(|e: hash_ring::RingError| e.to_string())
}

/// Trims an endpoint and adds `http://` when no scheme is given.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err("empty endpoint".into());
    }
    Ok(if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_role_name_parses() {
        for r in ROLE_NAMES {
            let role = parse_role_arg(r).unwrap();
            assert_eq!(cluster_client::role_name(role as i32), r);
        }
        let e = parse_role_arg("writer").unwrap_err();
        assert!(e.contains("\"writer\""), "{e}");
        for r in ROLE_NAMES {
            assert!(e.contains(r), "{e}");
        }
    }

    #[test]
    fn join_takes_repeated_and_comma_separated_roles() {
        let cli = Cli::try_parse_from([
            "brokerctl",
            "--endpoints",
            "127.0.0.1:1, http://127.0.0.1:2/",
            "join",
            "w1",
            "--addr",
            "http://127.0.0.1:9",
            "--role",
            "storage-writer,shard-router",
            "--role",
            "query-api",
            "--weight",
            "2",
        ])
        .unwrap();
        assert_eq!(
            cli.global.endpoints,
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        let Command::Join(j) = cli.command else {
            panic!("not a join: {:?}", cli.command)
        };
        assert_eq!(
            j.roles,
            [
                MemberRole::StorageWriter,
                MemberRole::ShardRouter,
                MemberRole::QueryApi
            ]
        );
        assert_eq!(j.weight, 2);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["join", "w1", "--addr", "http://x:1", "--role", "writer"][..],
            &["join", "w1", "--addr", "http://x:1"],
            &[
                "join",
                "w1",
                "--addr",
                "http://x:1",
                "--role",
                "query-api",
                "--weight",
                "0",
            ],
            &["set-ring", "--vnodes", "0", "--hash", "xxh3"],
            &["set-ring", "--vnodes", "10", "--hash", "md5"],
        ] {
            let e = Cli::try_parse_from(std::iter::once("brokerctl").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
    }

    #[test]
    fn the_default_endpoints_are_the_local_cluster() {
        let cli = Cli::try_parse_from(["brokerctl", "members"]).unwrap();
        // The environment may set BROKERCTL_ENDPOINTS; compare only when not.
        if std::env::var_os("BROKERCTL_ENDPOINTS").is_none() {
            assert_eq!(cli.global.endpoints.len(), 3);
            assert_eq!(cli.global.endpoints[0], "http://127.0.0.1:9096");
        }
        assert!(!cli.global.json);
    }
}
