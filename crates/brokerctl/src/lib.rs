//! `brokerctl`: the operator's view of cluster-ctl and the changes an
//! operator makes to it, over cluster-ctl's gRPC `ClusterService`.
//!
//! Reads (`members`, `ring`, `cluster`) print tables, or with `--json` the
//! same views cluster-ctl's HTTP API serves (`cluster_client::views`).
//! Changes (`join`, `leave`, `drain`, `undrain`, `voter`, `set-ring`) return
//! once cluster-ctl has committed them, and print the epoch they made (the
//! voters, for voter changes).
//!
//! # Layout
//! - [`cli`]: flags and subcommands; values are checked there (usage
//!   errors, exit 2).
//! - [`run`]: one command against the cluster, output written to any
//!   `Write`, so tests capture it.
//! - [`report`]: the shape of `brokerctl cluster` (every endpoint's Raft
//!   status).
//! - [`hosts`]: `hosts` and `autoscale status`, over host-manager's gRPC
//!   `HostService`.
//! - [`dlq`]: `dlq list|show|replay|discard`, over a storage-writer's admin
//!   HTTP API.
//! - [`render`]: the text tables.
//! - [`CtlError`]: why a command failed (exit 1).

#![forbid(unsafe_code)]

pub mod cli;
pub mod dlq;
pub mod hosts;
pub mod render;
pub mod report;

pub use cli::{AutoscaleCommand, Cli, Command, VoterCommand};
pub use report::{ClusterReport, NodeReport};

pub use broker_common::error_chain;

use backon::ExponentialBuilder;
use broker_proto::v1::{ClusterState, Member, MemberState, RingSettings};
use cluster_client::views::{ClusterView, MembersView, RingView};
use cluster_client::{ClusterClient, ClusterError};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

/// Retries while every endpoint fails (unreachable, or a leader election
/// under way): about 2.5 s of backoff in all, enough for an election, short
/// enough for a person waiting at a prompt.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(200);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(1);
const RETRY_TIMES: usize = 4;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No endpoint answered within the retry budget.
    #[error("cannot reach cluster-ctl (tried {endpoints}): {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// cluster-ctl refused the request (unknown member, invalid value,
    /// voter change refused), or the endpoints are malformed.
    #[error(transparent)]
    Cluster(ClusterError),
    /// The committed members do not make a ring (cluster-ctl checks joins,
    /// so this means the state is damaged).
    #[error("the committed members do not make a valid ring: {0}")]
    InvalidRing(String),
    /// host-manager did not answer or refused the call.
    #[error("host-manager at {endpoint}: {reason}")]
    HostManager { endpoint: String, reason: String },
    #[error("encoding JSON")]
    Json(#[source] serde_json::Error),
    #[error("--token / --tls-*: {0}")]
    Security(String),
    #[error("writing the output")]
    Output(#[source] std::io::Error),
    /// A storage-writer's admin API did not answer or refused the call.
    #[error(transparent)]
    Admin(#[from] internal_clients::AdminError),
    /// `dlq replay --all` stopped early or left entries Redis refuses.
    #[error("{0}")]
    DlqIncomplete(String),
}

impl From<ClusterError> for CtlError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Unavailable { endpoints, last } => CtlError::Unreachable {
                endpoints,
                reason: report::describe(&last),
            },
            e => CtlError::Cluster(e),
        }
    }
}

/// The retry policy of an interactive tool: a few seconds, not minutes.
pub fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_max_times(RETRY_TIMES)
        .with_jitter()
}

/// Runs `cli`'s command and writes what it prints to `out`.
pub async fn run(cli: Cli, out: &mut impl Write) -> Result<(), CtlError> {
    let security = cli
        .global
        .security
        .client_security()
        .map_err(|e| CtlError::Security(e.to_string()))?;
    if let Command::Hosts { .. } | Command::Autoscale(_) = cli.command {
        let text = hosts::execute(
            &cli.global.host_manager,
            &security,
            cli.command,
            cli.global.json,
        )
        .await?;
        return out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(CtlError::Output);
    }
    if let Command::Dlq(args) = cli.command {
        return dlq::run(args, &cli.global, &security, out).await;
    }
    let client = ClusterClient::with_retry(&cli.global.endpoints, &security, retry_policy())?;
    let text = execute(&client, cli.command, cli.global.json).await?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CtlError::Output)
}

/// Runs one command; returns its output.
async fn execute(client: &ClusterClient, command: Command, json: bool) -> Result<String, CtlError> {
    let mut out = String::new();
    match command {
        Command::Members => {
            let view = MembersView::from(&client.members().await?);
            if json {
                return to_json(&view);
            }
            render::members(&view, broker_common::unix_now_ms(), &mut out);
        }
        Command::Ring => {
            let view = RingView::from(&client.members().await?);
            if let Some(e) = view.error {
                return Err(CtlError::InvalidRing(e));
            }
            if json {
                return to_json(&view);
            }
            render::ring(&view, &mut out);
        }
        Command::Cluster => {
            let report =
                ClusterReport::from_statuses(client.status_all().await).map_err(|reason| {
                    CtlError::Unreachable {
                        endpoints: client.endpoints().join(", "),
                        reason,
                    }
                })?;
            if json {
                return to_json(&report);
            }
            render::cluster(&report, &mut out);
        }
        Command::Join(j) => {
            let member = Member {
                id: j.id.clone(),
                roles: j.roles.iter().map(|r| *r as i32).collect(),
                addr: j.addr,
                weight: j.weight,
                admin_addr: j.admin_addr.unwrap_or_default(),
                ..Default::default()
            };
            let r = client.join(member).await?;
            let state = r.state.unwrap_or_default();
            if json {
                return to_json(&MembersView::from(&state));
            }
            let roles: Vec<&str> = j
                .roles
                .iter()
                .map(|r| cluster_client::role_name(*r as i32))
                .collect();
            let _ = writeln!(
                out,
                "member {} joined at epoch {} (roles {}; weight {})",
                j.id,
                state.epoch,
                roles.join(","),
                j.weight
            );
            let _ = writeln!(
                out,
                "it must heartbeat every {}, or it goes offline {} after its last beat",
                render::span(r.heartbeat_interval_ms),
                render::span(r.lease_ttl_ms)
            );
        }
        Command::Leave { id } => {
            let state = client.leave(&id, "").await?;
            return changed(json, &state, format!("member {id} left"));
        }
        Command::Drain { id } => {
            let state = client.set_state(&id, MemberState::Draining).await?;
            return changed(json, &state, format!("member {id} is draining"));
        }
        Command::Undrain { id } => {
            let state = client.set_state(&id, MemberState::Online).await?;
            return changed(json, &state, format!("member {id} is online"));
        }
        Command::Voter(VoterCommand::Add { raft_id, addr }) => {
            let status = client.add_voter(raft_id, &addr).await?;
            let view = ClusterView::from(&status);
            if json {
                return to_json(&view);
            }
            let _ = writeln!(
                out,
                "voter {raft_id} added at {addr}; voters {}",
                render::ids(&view.voters)
            );
        }
        Command::Voter(VoterCommand::Remove { raft_id }) => {
            let status = client.remove_voter(raft_id).await?;
            let view = ClusterView::from(&status);
            if json {
                return to_json(&view);
            }
            let _ = writeln!(
                out,
                "voter {raft_id} removed; voters {}",
                render::ids(&view.voters)
            );
        }
        Command::SetRing(r) => {
            let state = client
                .set_ring(RingSettings {
                    vnodes: r.vnodes,
                    hash: r.hash.as_str().to_string(),
                })
                .await?;
            let view = RingView::from(&state);
            if json {
                return to_json(&view);
            }
            let _ = writeln!(
                out,
                "ring set at epoch {}: vnodes {}, hash {}",
                view.epoch, view.vnodes, view.hash
            );
        }
        Command::Hosts { .. } | Command::Autoscale(_) | Command::Dlq(_) => {
            unreachable!("run dispatches these")
        }
    }
    Ok(out)
}

/// The answer to a member change: the members as JSON, or `what` and the
/// epoch.
fn changed(json: bool, state: &ClusterState, what: String) -> Result<String, CtlError> {
    if json {
        to_json(&MembersView::from(state))
    } else {
        Ok(format!("{what} at epoch {}\n", state.epoch))
    }
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<String, CtlError> {
    serde_json::to_string_pretty(v)
        .map(|s| s + "\n")
        .map_err(CtlError::Json)
}
