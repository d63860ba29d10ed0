//! Alerts (seed 告警触发流程): threshold rules on each host's newest point
//! and the built-in HostDown rule, evaluated every `alerts.interval`;
//! firing and resolved alerts are POSTed to every configured Alertmanager
//! in its API v2 format (`POST /api/v2/alerts`, a JSON array of
//! `{labels, annotations, startsAt, endsAt, generatorURL}`).
//!
//! A firing alert is sent when it starts and again every `alerts.resend`
//! with `endsAt` a few resends ahead, so Alertmanager keeps it while we do
//! and lets it lapse if host-manager dies. A resolved alert is sent with
//! `endsAt` = now, once (and retried while no Alertmanager took it).

use crate::http_client::HttpClient;
use crate::inventory::{HostRecord, HostState};
use broker_common::config::{AlertRule, AlertsConfig};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const HOST_DOWN: &str = "HostDown";

/// One alert, as `/api/alerts` lists it and Alertmanager receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// "pending" (condition true, `for` not yet passed), "firing", or
    /// "resolved".
    pub state: &'static str,
    /// Unix seconds the condition became true.
    pub active_since: i64,
    /// Unix seconds it fired (0: pending).
    pub fired_at: i64,
    /// Unix seconds it resolved (0: not resolved).
    pub resolved_at: i64,
    /// The value that made it fire (NaN for HostDown: none).
    #[serde(serialize_with = "finite_or_null")]
    pub value: f64,
}

fn finite_or_null<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    alert: Alert,
    /// Unix seconds last delivered (0: never).
    sent_at: i64,
}

/// The alert engine's state: every pending, firing and lately resolved
/// alert, keyed by (rule, host).
#[derive(Clone, Default)]
pub struct Alerts(Arc<Mutex<BTreeMap<(String, String), Tracked>>>);

/// The condition of one rule on one host at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub rule: String,
    pub host: String,
    pub value: f64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub for_: Duration,
}

impl Alerts {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Tracked>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pending and firing alerts (and resolved ones not yet delivered).
    pub fn list(&self) -> Vec<Alert> {
        self.lock().values().map(|t| t.alert.clone()).collect()
    }

    /// Applies one evaluation at `now`: conditions that hold (`active`)
    /// start or keep alerts; alerts whose condition no longer holds
    /// resolve. Pure in its inputs, so tests drive it with a clock.
    pub fn evaluate(&self, active: Vec<Observation>, now: i64) {
        let mut map = self.lock();
        let mut seen = std::collections::HashSet::new();
        for o in active {
            let key = (o.rule.clone(), o.host.clone());
            seen.insert(key.clone());
            let t = map.entry(key).or_insert_with(|| Tracked {
                alert: Alert {
                    labels: o.labels.clone(),
                    annotations: o.annotations.clone(),
                    state: "pending",
                    active_since: now,
                    fired_at: 0,
                    resolved_at: 0,
                    value: o.value,
                },
                sent_at: 0,
            });
            if t.alert.state == "resolved" {
                // it came back before the resolution was delivered: a new
                // episode
                *t = Tracked {
                    alert: Alert {
                        state: "pending",
                        active_since: now,
                        fired_at: 0,
                        resolved_at: 0,
                        ..t.alert.clone()
                    },
                    sent_at: 0,
                };
            }
            t.alert.value = o.value;
            t.alert.annotations = o.annotations;
            if t.alert.state == "pending"
                && now.saturating_sub(t.alert.active_since) >= o.for_.as_secs() as i64
            {
                t.alert.state = "firing";
                t.alert.fired_at = now;
                t.sent_at = 0;
                tracing::warn!(alert = %o.rule, host = %o.host, value = o.value, "alert firing");
            }
        }
        map.retain(|k, t| {
            if seen.contains(k) {
                return true;
            }
            match t.alert.state {
                // never fired: forget it
                "pending" => false,
                "firing" => {
                    t.alert.state = "resolved";
                    t.alert.resolved_at = now;
                    t.sent_at = 0;
                    tracing::info!(alert = %k.0, host = %k.1, "alert resolved");
                    true
                }
                _ => true,
            }
        });
    }

    /// The Alertmanager payload of what is due at `now`: firing alerts not
    /// sent for `resend`, resolved ones not yet delivered.
    pub fn due(&self, now: i64, resend: Duration, generator: &str) -> Vec<serde_json::Value> {
        let map = self.lock();
        let resend_s = resend.as_secs().max(1) as i64;
        map.values()
            .filter(|t| match t.alert.state {
                "firing" => t.sent_at == 0 || now - t.sent_at >= resend_s,
                "resolved" => t.sent_at == 0,
                _ => false,
            })
            .map(|t| {
                let ends = if t.alert.state == "resolved" {
                    t.alert.resolved_at
                } else {
                    now + 4 * resend_s
                };
                serde_json::json!({
                    "labels": t.alert.labels,
                    "annotations": t.alert.annotations,
                    "startsAt": rfc3339(t.alert.fired_at),
                    "endsAt": rfc3339(ends),
                    "generatorURL": generator,
                })
            })
            .collect()
    }

    /// Marks what [`Alerts::due`] returned as delivered; resolved alerts
    /// are then forgotten.
    pub fn delivered(&self, now: i64, resend: Duration) {
        let mut map = self.lock();
        let resend_s = resend.as_secs().max(1) as i64;
        map.retain(|_, t| match t.alert.state {
            "resolved" => false,
            "firing" => {
                if t.sent_at == 0 || now - t.sent_at >= resend_s {
                    t.sent_at = now;
                }
                true
            }
            _ => true,
        });
    }
}

/// Unix seconds as RFC 3339 UTC (`2026-12-02T17:39:20Z`), by the civil
/// date algorithm (Howard Hinnant's `civil_from_days`).
pub fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

fn base_labels(rule: &str, severity: &str, host: &HostRecord) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("alertname".into(), rule.to_string());
    l.insert("severity".into(), severity.to_string());
    l.insert("host".into(), host.id.clone());
    l.insert("service".into(), "monitoring-broker".into());
    l
}

/// HostDown for every host down.
pub fn host_down(config: &AlertsConfig, hosts: &[HostRecord]) -> Vec<Observation> {
    if !config.host_down.enabled {
        return Vec::new();
    }
    hosts
        .iter()
        .filter(|h| h.state == HostState::Down)
        .map(|h| Observation {
            rule: HOST_DOWN.into(),
            host: h.id.clone(),
            value: f64::NAN,
            labels: base_labels(HOST_DOWN, &config.host_down.severity, h),
            annotations: [(
                "summary".to_string(),
                format!(
                    "host {} sent no point since {} (down since {})",
                    h.id,
                    rfc3339(h.last_seen),
                    rfc3339(h.down_since)
                ),
            )]
            .into(),
            for_: Duration::ZERO,
        })
        .collect()
}

/// A threshold rule's observation for a host whose newest value of the
/// metric is `value`, if the condition holds.
pub fn threshold(rule: &AlertRule, host: &HostRecord, value: f64) -> Option<Observation> {
    if !value.is_finite() || !rule.op.holds(value, rule.threshold) {
        return None;
    }
    let mut labels = base_labels(&rule.name, &rule.severity, host);
    labels.extend(rule.labels.clone());
    Some(Observation {
        rule: rule.name.clone(),
        host: host.id.clone(),
        value,
        labels,
        annotations: [(
            "summary".to_string(),
            format!(
                "{} on {} is {value} ({} {})",
                rule.metric,
                host.id,
                rule.op.as_str(),
                rule.threshold
            ),
        )]
        .into(),
        for_: rule.for_,
    })
}

/// POSTs `payload` to every Alertmanager; true if at least one took it.
pub async fn deliver(
    http: &HttpClient,
    config: &AlertsConfig,
    payload: &[serde_json::Value],
) -> bool {
    if payload.is_empty() || config.alertmanagers.is_empty() {
        return true;
    }
    let body = serde_json::to_vec(payload).expect("alerts serialize");
    let mut any = false;
    for am in &config.alertmanagers {
        let url = format!("{}/api/v2/alerts", am.trim_end_matches('/'));
        match http
            .send(
                hyper::Method::POST,
                &url,
                Some(body.clone()),
                Duration::from_secs(5),
            )
            .await
        {
            Ok((s, _)) if s.is_success() => any = true,
            Ok((s, b)) => {
                tracing::warn!(url = %url, status = %s, body = %String::from_utf8_lossy(&b), "alertmanager refused alerts")
            }
            Err(e) => tracing::warn!(url = %url, error = %e, "alertmanager unreachable"),
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_common::config::AlertOp;

    fn host(id: &str, state: HostState) -> HostRecord {
        HostRecord {
            id: id.into(),
            state,
            last_seen: 100,
            source: crate::inventory::Source::Agent,
            addr: String::new(),
            labels: BTreeMap::new(),
            first_seen: 1,
            down_since: if state == HostState::Down { 160 } else { 0 },
            open_ports: Vec::new(),
            registered: BTreeMap::new(),
        }
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_232_360), "2026-12-02T17:26:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn alerts_wait_for_for_fire_resend_and_resolve_once() {
        let rule = AlertRule {
            name: "HighCpu".into(),
            metric: "cpu".into(),
            op: AlertOp::Gt,
            threshold: 90.0,
            for_: Duration::from_secs(60),
            severity: "warning".into(),
            labels: BTreeMap::new(),
        };
        let h = host("web-1", HostState::Up);
        assert!(threshold(&rule, &h, 80.0).is_none());
        assert!(threshold(&rule, &h, f64::NAN).is_none());
        let a = Alerts::default();
        let resend = Duration::from_secs(60);
        a.evaluate(vec![threshold(&rule, &h, 95.0).unwrap()], 1000);
        assert_eq!(a.list()[0].state, "pending");
        assert!(a.due(1000, resend, "g").is_empty());
        a.evaluate(vec![threshold(&rule, &h, 96.0).unwrap()], 1060);
        assert_eq!(a.list()[0].state, "firing");
        let due = a.due(1060, resend, "g");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0]["labels"]["alertname"], "HighCpu");
        assert_eq!(due[0]["labels"]["host"], "web-1");
        a.delivered(1060, resend);
        assert!(a.due(1070, resend, "g").is_empty());
        assert_eq!(a.due(1120, resend, "g").len(), 1, "resent after `resend`");
        a.delivered(1120, resend);
        a.evaluate(vec![], 1130);
        let due = a.due(1130, resend, "g");
        assert_eq!(due[0]["endsAt"], rfc3339(1130));
        a.delivered(1130, resend);
        assert!(a.list().is_empty(), "a delivered resolution is forgotten");
        // pending then gone: never sent at all
        a.evaluate(vec![threshold(&rule, &h, 95.0).unwrap()], 2000);
        a.evaluate(vec![], 2010);
        assert!(a.list().is_empty());
    }

    #[test]
    fn host_down_fires_at_once_for_down_hosts_only() {
        let c = AlertsConfig::default();
        let obs = host_down(
            &c,
            &[host("a", HostState::Down), host("b", HostState::Stale)],
        );
        assert_eq!(obs.len(), 1);
        assert_eq!(obs[0].labels["severity"], "critical");
        let a = Alerts::default();
        a.evaluate(obs, 200);
        assert_eq!(a.list()[0].state, "firing");
    }
}
