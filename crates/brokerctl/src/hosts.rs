//! `brokerctl hosts` and `brokerctl autoscale status`: host-manager's
//! inventory and autoscaler over its gRPC `HostService`.

use crate::render::age;
use crate::{Command, CtlError};
use broker_common::cli::table;
use broker_common::security::{AuthChannel, ClientSecurity};
use broker_proto::v1::host_service_client::HostServiceClient;
use broker_proto::v1::{AutoscaleStatus, AutoscaleStatusRequest, Host, ListHostsRequest};
use std::fmt::Write as _;
use std::time::Duration;

async fn client(
    endpoint: &str,
    security: &ClientSecurity,
) -> Result<HostServiceClient<AuthChannel>, CtlError> {
    let err = |reason: String| CtlError::HostManager {
        endpoint: endpoint.to_string(),
        reason,
    };
    let ch = security
        .connect(endpoint, |ep| {
            ep.connect_timeout(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
        })
        .await
        .map_err(|e| {
            err(format!(
                "cannot connect ({e}); is host-manager running there? see --host-manager"
            ))
        })?;
    Ok(HostServiceClient::new(ch))
}

fn status_err(endpoint: &str, s: tonic::Status) -> CtlError {
    let reason = if s.code() == tonic::Code::Unimplemented {
        "no HostService here: point --host-manager at a process running host-manager".to_string()
    } else {
        format!("{:?}: {}", s.code(), s.message())
    };
    CtlError::HostManager {
        endpoint: endpoint.to_string(),
        reason,
    }
}

pub async fn execute(
    endpoint: &str,
    security: &ClientSecurity,
    command: Command,
    json: bool,
) -> Result<String, CtlError> {
    let mut c = client(endpoint, security).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match command {
        Command::Hosts { state } => {
            let hosts = c
                .list(ListHostsRequest {
                    state: state.unwrap_or_default(),
                })
                .await
                .map_err(|s| status_err(endpoint, s))?
                .into_inner()
                .hosts;
            if json {
                let v: Vec<serde_json::Value> = hosts.iter().map(host_json).collect();
                return serde_json::to_string_pretty(&v)
                    .map(|s| s + "\n")
                    .map_err(CtlError::Json);
            }
            Ok(render_hosts(&hosts, now))
        }
        Command::Autoscale(_) => {
            let s = c
                .autoscale_status(AutoscaleStatusRequest {})
                .await
                .map_err(|s| status_err(endpoint, s))?
                .into_inner();
            if json {
                return serde_json::to_string_pretty(&autoscale_json(&s))
                    .map(|s| s + "\n")
                    .map_err(CtlError::Json);
            }
            Ok(render_autoscale(&s, now * 1000))
        }
        _ => unreachable!("only host-manager commands"),
    }
}

fn host_json(h: &Host) -> serde_json::Value {
    let labels: std::collections::BTreeMap<_, _> = h.labels.iter().collect();
    serde_json::json!({
        "id": h.id, "state": h.state, "last_seen": h.last_seen, "source": h.source,
        "addr": h.addr, "labels": labels, "first_seen": h.first_seen, "down_since": h.down_since,
    })
}

fn num(v: f64) -> serde_json::Value {
    if v.is_finite() {
        v.into()
    } else {
        serde_json::Value::Null
    }
}

fn autoscale_json(s: &AutoscaleStatus) -> serde_json::Value {
    serde_json::json!({
        "enabled": s.enabled, "actuator": s.actuator, "score": num(s.score),
        "scale_up_above": s.scale_up_above, "scale_down_below": s.scale_down_below,
        "writers": s.writers, "min_writers": s.min_writers, "max_writers": s.max_writers,
        "cooldown_until_ms": s.cooldown_until_ms,
        "loads": s.loads.iter().map(|l| serde_json::json!({
            "id": l.id, "score": num(l.score), "cpu_pct": num(l.cpu_pct), "memory_pct": num(l.memory_pct),
            "queue_pct": num(l.queue_pct), "points_per_sec": num(l.points_per_sec), "error": l.error,
        })).collect::<Vec<_>>(),
        "decisions": s.decisions.iter().map(|d| serde_json::json!({
            "at_ms": d.at_ms, "action": d.action, "score": num(d.score), "writers": d.writers,
            "reason": d.reason, "outcome": d.outcome,
        })).collect::<Vec<_>>(),
    })
}

/// The hosts table and a count per state.
pub fn render_hosts(hosts: &[Host], now: i64) -> String {
    let mut out = String::new();
    let count = |s: &str| hosts.iter().filter(|h| h.state == s).count();
    let _ = writeln!(
        out,
        "{} hosts: {} up, {} stale, {} down, {} discovered",
        hosts.len(),
        count("up"),
        count("stale"),
        count("down"),
        count("discovered")
    );
    if hosts.is_empty() {
        return out;
    }
    let mut rows = vec![
        [
            "HOST",
            "STATE",
            "LAST SEEN",
            "SOURCE",
            "ADDR",
            "DOWN SINCE",
            "LABELS",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>(),
    ];
    for h in hosts {
        let mut labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        rows.push(vec![
            h.id.clone(),
            h.state.clone(),
            if h.last_seen > 0 {
                format!("{} ago", age((now - h.last_seen) * 1000))
            } else {
                "never".into()
            },
            h.source.clone(),
            if h.addr.is_empty() {
                "-".into()
            } else {
                h.addr.clone()
            },
            if h.down_since > 0 {
                format!("{} ago", age((now - h.down_since) * 1000))
            } else {
                "-".into()
            },
            if labels.is_empty() {
                "-".into()
            } else {
                labels.join(",")
            },
        ]);
    }
    table(&rows, &mut out);
    out
}

pub fn render_autoscale(s: &AutoscaleStatus, now_ms: i64) -> String {
    let mut out = String::new();
    if !s.enabled {
        out.push_str("autoscale is off (host_manager.autoscale.enabled: false)\n");
        return out;
    }
    let score = if s.score.is_finite() {
        format!("{:.1}", s.score)
    } else {
        "unknown".into()
    };
    let _ = writeln!(
        out,
        "score {score}  (up above {}, down below {})  writers {} (min {}, max {})  actuator {}",
        s.scale_up_above, s.scale_down_below, s.writers, s.min_writers, s.max_writers, s.actuator
    );
    if s.cooldown_until_ms > now_ms {
        let _ = writeln!(
            out,
            "cooling down for {}",
            age(s.cooldown_until_ms - now_ms)
        );
    }
    if !s.loads.is_empty() {
        let mut rows = vec![
            ["WRITER", "SCORE", "CPU", "MEMORY", "QUEUE", "POINTS/S"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        ];
        for l in &s.loads {
            if !l.error.is_empty() {
                rows.push(vec![
                    l.id.clone(),
                    "-".into(),
                    l.error.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
                continue;
            }
            rows.push(vec![
                l.id.clone(),
                format!("{:.1}", l.score),
                format!("{:.1}%", l.cpu_pct),
                format!("{:.1}%", l.memory_pct),
                format!("{:.1}%", l.queue_pct),
                format!("{:.0}", l.points_per_sec),
            ]);
        }
        table(&rows, &mut out);
    }
    out.push_str("decisions (newest first):\n");
    for d in &s.decisions {
        let _ = writeln!(
            out,
            "  {} ago  {:<10}  {}{}",
            age(now_ms - d.at_ms),
            d.action,
            d.reason,
            if d.outcome.is_empty() {
                String::new()
            } else {
                format!(": {}", d.outcome)
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_table_counts_states() {
        let h = |id: &str, state: &str, last: i64| Host {
            id: id.into(),
            state: state.into(),
            last_seen: last,
            source: "agent".into(),
            ..Default::default()
        };
        let text = render_hosts(
            &[
                h("a", "up", 995),
                h("b", "down", 100),
                h("c", "discovered", 0),
            ],
            1000,
        );
        assert!(
            text.starts_with("3 hosts: 1 up, 0 stale, 1 down, 1 discovered"),
            "{text}"
        );
        assert!(text.contains("5s ago"), "{text}");
        assert!(text.contains("never"), "{text}");
    }

    #[test]
    fn autoscale_status_shows_score_loads_and_decisions_with_reasons() {
        use broker_proto::v1::{AutoscaleDecision, WriterLoad};
        let s = AutoscaleStatus {
            enabled: true,
            actuator: "local".into(),
            score: 85.04,
            scale_up_above: 80.0,
            scale_down_below: 30.0,
            writers: 2,
            min_writers: 1,
            max_writers: 4,
            loads: vec![
                WriterLoad {
                    id: "w1".into(),
                    score: 85.0,
                    cpu_pct: 85.0,
                    memory_pct: 3.0,
                    queue_pct: 0.5,
                    points_per_sec: 2000.0,
                    error: String::new(),
                },
                WriterLoad {
                    id: "w2".into(),
                    error: "GET http://x/metrics: connection refused".into(),
                    ..Default::default()
                },
            ],
            decisions: vec![AutoscaleDecision {
                at_ms: 10_000,
                action: "scale_up".into(),
                score: 85.0,
                writers: 1,
                reason: "score 85.0 > 80 for 2 evaluations".into(),
                outcome: "started hm-writer-1".into(),
            }],
            cooldown_until_ms: 70_000,
        };
        let text = render_autoscale(&s, 12_000);
        assert!(
            text.starts_with(
                "score 85.0  (up above 80, down below 30)  writers 2 (min 1, max 4)  actuator local"
            ),
            "{text}"
        );
        assert!(text.contains("cooling down for 58s"), "{text}");
        assert!(text.contains("85.0%"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        assert!(
            text.contains(
                "2s ago  scale_up    score 85.0 > 80 for 2 evaluations: started hm-writer-1"
            ),
            "{text}"
        );
        let off = render_autoscale(&AutoscaleStatus::default(), 0);
        assert!(off.contains("autoscale is off"), "{off}");
    }
}
