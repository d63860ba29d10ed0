//! Health checks of the cluster's members (seed 健康检查机制): TCP connect
//! to the gRPC port, GET /health on the admin port, and
//! `grpc.health.v1.Health/Check` on the gRPC port, each under
//! `health.timeout`, every `health.interval`.
//!
//! A member failing a check in `failure_threshold` rounds in a row is set
//! OFFLINE through cluster-ctl with reason `health: ...`: the same
//! committed path as a lease expiry (new epoch, routers route around it).
//! This catches what leases cannot: a process that still beats but whose
//! gRPC port hangs. After `success_threshold` clean rounds it is set ONLINE
//! again. Only members the checks took out are brought back, and leases
//! do not bring those back (cluster-ctl `leases`).

use crate::http_client::HttpClient;
use broker_common::config::{CheckKind, HealthConfig};
use broker_common::security::ClientSecurity;
use broker_proto::v1::{Member, MemberState};
use cluster_client::ClusterClient;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Prefix of `Member.state_reason` set by these checks (cluster-ctl's
/// leases know it).
pub const REASON_PREFIX: &str = "health";

/// The checks' view of one member, for `/api/health-checks`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberHealth {
    pub id: String,
    pub addr: String,
    /// Rounds in a row with a failed check.
    pub failures: u32,
    /// Rounds in a row with every check passing.
    pub successes: u32,
    /// Per check: "ok (3 ms)" or the error.
    pub last: BTreeMap<String, String>,
    /// Unix ms of the last round.
    pub checked_at_ms: i64,
    /// Whether these checks have it marked offline.
    pub marked_offline: bool,
}

#[derive(Clone, Default)]
pub struct HealthView(Arc<Mutex<BTreeMap<String, MemberHealth>>>);

impl HealthView {
    pub fn snapshot(&self) -> Vec<MemberHealth> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// `http://host:port` -> `host:port`.
fn authority(url: &str) -> &str {
    url.split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// Runs one check; `Ok(latency)` or what failed.
pub async fn check(
    kind: CheckKind,
    member: &Member,
    http: &HttpClient,
    security: &ClientSecurity,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    match kind {
        CheckKind::Tcp => {
            let addr = authority(&member.addr).to_string();
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(start.elapsed()),
                Ok(Err(e)) => Err(format!("tcp connect {addr}: {e}")),
                Err(_) => Err(format!("tcp connect {addr}: timed out after {timeout:?}")),
            }
        }
        CheckKind::Http => {
            if member.admin_addr.is_empty() {
                return Ok(Duration::ZERO);
            }
            let url = format!("{}/health", member.admin_addr.trim_end_matches('/'));
            http.get_text(&url, timeout)
                .await
                .map(|_| start.elapsed())
                .map_err(|e| format!("GET {url}: {e}"))
        }
        CheckKind::Grpc => {
            use tonic_health::pb::HealthCheckRequest;
            use tonic_health::pb::health_check_response::ServingStatus;
            use tonic_health::pb::health_client::HealthClient;
            let call = async {
                let ch = security
                    .connect(&member.addr, |ep| ep.connect_timeout(timeout))
                    .await
                    .map_err(|e| broker_common::error_chain(&e))?;
                let r = HealthClient::new(ch)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                let status = r.into_inner().status;
                if status == ServingStatus::Serving as i32 {
                    Ok(())
                } else {
                    Err(format!(
                        "status {}",
                        ServingStatus::try_from(status)
                            .map(|s| s.as_str_name())
                            .unwrap_or("unknown")
                    ))
                }
            };
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(())) => Ok(start.elapsed()),
                Ok(Err(e)) => Err(format!("grpc health {}: {e}", member.addr)),
                Err(_) => Err(format!(
                    "grpc health {}: no answer within {timeout:?}",
                    member.addr
                )),
            }
        }
    }
}

/// What to do about a member after a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    None,
    Offline(String),
    Online,
}

/// Pure decision: counts of the round so far and the member's state.
pub fn decide(
    h: &MemberHealth,
    state: MemberState,
    reason: &str,
    config: &HealthConfig,
) -> Verdict {
    let ours = reason.starts_with(REASON_PREFIX);
    if h.failures >= config.failure_threshold && state == MemberState::Online {
        let why = h
            .last
            .values()
            .find(|v| !v.starts_with("ok"))
            .cloned()
            .unwrap_or_default();
        return Verdict::Offline(format!("{REASON_PREFIX}: {why}"));
    }
    if h.successes >= config.success_threshold && state == MemberState::Offline && ours {
        return Verdict::Online;
    }
    Verdict::None
}

/// Checks every member each `interval` until `stop`.
pub async fn run(
    config: HealthConfig,
    client: ClusterClient,
    security: ClientSecurity,
    view: HealthView,
    metrics: crate::metrics::HostMetrics,
    stop: CancellationToken,
) {
    let http = HttpClient::new(&security);
    let mut every = crate::Every::new(config.interval);
    while every.next(&stop).await {
        let state = match client.members().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "health checks: cluster-ctl unreachable, skipping a round");
                continue;
            }
        };
        let rounds = state.members.iter().map(|m| {
            let http = http.clone();
            let security = security.clone();
            let checks = config.checks.clone();
            let timeout = config.timeout;
            async move {
                let mut results = BTreeMap::new();
                let futs = checks
                    .iter()
                    .map(|k| check(*k, m, &http, &security, timeout));
                for (k, r) in checks.iter().zip(futures::future::join_all(futs).await) {
                    results.insert(
                        k.as_str().to_string(),
                        match r {
                            Ok(d) => Ok(d),
                            Err(e) => Err(e),
                        },
                    );
                }
                (m.clone(), results)
            }
        });
        let results = futures::future::join_all(rounds).await;
        let now_ms = broker_common::unix_now_ms();
        let mut actions = Vec::new();
        {
            let mut map = view.0.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|id, _| state.members.iter().any(|m| &m.id == id));
            for (m, results) in results {
                let h = map.entry(m.id.clone()).or_default();
                h.id = m.id.clone();
                h.addr = m.addr.clone();
                h.checked_at_ms = now_ms;
                let failed = results.values().any(|r| r.is_err());
                h.last = results
                    .into_iter()
                    .map(|(k, r)| {
                        let text = match r {
                            Ok(d) => format!("ok ({} ms)", d.as_millis()),
                            Err(e) => e,
                        };
                        (k, text)
                    })
                    .collect();
                if failed {
                    h.failures += 1;
                    h.successes = 0;
                    metrics.check_failures.inc();
                } else {
                    h.successes += 1;
                    h.failures = 0;
                }
                let st = MemberState::try_from(m.state).unwrap_or(MemberState::Unspecified);
                h.marked_offline =
                    st == MemberState::Offline && m.state_reason.starts_with(REASON_PREFIX);
                match decide(h, st, &m.state_reason, &config) {
                    Verdict::None => {}
                    v => actions.push((m.id.clone(), v)),
                }
            }
        }
        // Checks that fail everywhere at once are more likely this
        // process's network than every writer: never take the last online
        // writer out of the ring.
        let mut online_writers = state
            .members
            .iter()
            .filter(|m| cluster_client::in_ring(m))
            .count();
        for (id, v) in actions {
            let is_writer = state
                .members
                .iter()
                .any(|m| m.id == id && cluster_client::in_ring(m));
            if matches!(v, Verdict::Offline(_)) && is_writer {
                if online_writers <= 1 {
                    tracing::warn!(member = %id, "health checks failed, but it is the last online writer: left in the ring");
                    continue;
                }
                online_writers -= 1;
            }
            let r = match &v {
                Verdict::Offline(why) => {
                    tracing::warn!(member = %id, reason = %why, "health checks failed, marking member offline");
                    metrics.members_marked_offline.inc();
                    client
                        .set_state_because(&id, MemberState::Offline, why)
                        .await
                }
                _ => {
                    tracing::info!(member = %id, "health checks pass again, marking member online");
                    client.set_state_because(&id, MemberState::Online, "").await
                }
            };
            if let Err(e) = r {
                tracing::warn!(member = %id, error = %e, "health verdict not committed, will retry next round");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failed_rounds_take_a_member_out_and_clean_rounds_bring_back_only_ours() {
        let c = HealthConfig::default();
        let mut h = MemberHealth {
            failures: 2,
            ..Default::default()
        };
        h.last
            .insert("grpc".into(), "grpc health: no answer".into());
        h.last.insert("tcp".into(), "ok (1 ms)".into());
        assert_eq!(decide(&h, MemberState::Online, "", &c), Verdict::None);
        h.failures = 3;
        assert_eq!(
            decide(&h, MemberState::Online, "", &c),
            Verdict::Offline("health: grpc health: no answer".into())
        );
        // already offline (by its lease): nothing to do
        assert_eq!(decide(&h, MemberState::Offline, "lease", &c), Verdict::None);
        // a draining member is left to finish
        assert_eq!(decide(&h, MemberState::Draining, "", &c), Verdict::None);
        let ok = MemberHealth {
            successes: 2,
            ..Default::default()
        };
        assert_eq!(
            decide(&ok, MemberState::Offline, "health: x", &c),
            Verdict::Online
        );
        assert_eq!(
            decide(&ok, MemberState::Offline, "lease", &c),
            Verdict::None
        );
        assert_eq!(decide(&ok, MemberState::Offline, "", &c), Verdict::None);
    }
}
