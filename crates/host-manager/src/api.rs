//! host-manager's API: HTTP/JSON on the admin port and the gRPC
//! `broker.v1.HostService`, over the same [`Shared`] state.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/hosts[?state=down]` | the inventory and counts per state |
//! | `POST /api/hosts` | register `{id, addr, labels}` |
//! | `GET /api/hosts/{id}` | one host |
//! | `GET /api/alerts` | pending, firing and undelivered resolved alerts |
//! | `GET /api/autoscale` | load score, writers' loads, last decisions |
//! | `GET /api/health-checks` | each member's last checks |
//! | `GET /api/discovery` | the last scan, multicast announcements |

use crate::Shared;
use crate::inventory::{HostRecord, HostState, Source};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use broker_proto::v1 as pb;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_BYTES: usize = 256;

pub fn valid_host_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(broker_common::host_id::byte)
}

/// Checks a registration; the error names what is wrong.
pub fn check_registration(
    id: &str,
    addr: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), String> {
    if !valid_host_id(id) {
        return Err(format!(
            "id {id:?} must be 1 to 128 letters, digits, '.', '_' or '-'"
        ));
    }
    if addr.len() > 256 || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "addr {addr:?} must be an address without spaces, at most 256 bytes"
        ));
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels, at most {MAX_LABELS}", labels.len()));
    }
    for (k, v) in labels {
        let ok = !k.is_empty()
            && k.len() <= 128
            && k.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            });
        if !ok {
            return Err(format!(
                "label name {k:?} must match [A-Za-z_][A-Za-z0-9_]*"
            ));
        }
        if v.len() > MAX_LABEL_BYTES {
            return Err(format!(
                "label {k} is {} bytes, at most {MAX_LABEL_BYTES}",
                v.len()
            ));
        }
    }
    Ok(())
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

#[derive(Deserialize)]
struct ListParams {
    state: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    id: String,
    #[serde(default)]
    addr: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn counts(hosts: &[HostRecord]) -> BTreeMap<&'static str, usize> {
    let mut c: BTreeMap<&'static str, usize> = ["up", "stale", "down", "discovered"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for h in hosts {
        *c.entry(h.state.as_str()).or_default() += 1;
    }
    c
}

fn parse_state(s: Option<&str>) -> Result<Option<HostState>, String> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => HostState::parse(s)
            .map(Some)
            .ok_or_else(|| format!("state {s:?} is not one of up, stale, down, discovered")),
    }
}

async fn list_hosts(State(s): State<Arc<Shared>>, Query(p): Query<ListParams>) -> Response {
    let state = match parse_state(p.state.as_deref()) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let all = s.inventory.list(None);
    let counts = counts(&all);
    let hosts: Vec<&HostRecord> = all
        .iter()
        .filter(|h| state.is_none_or(|st| h.state == st))
        .collect();
    Json(serde_json::json!({ "counts": counts, "total": all.len(), "hosts": hosts }))
        .into_response()
}

async fn get_host(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match s.inventory.get(&id) {
        Some(h) => Json(h).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("host {id:?} is not in the inventory"),
        ),
    }
}

async fn register(State(s): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let r: Registration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "body must be JSON {{\"id\": ..., \"addr\": ..., \"labels\": {{...}}}}: {e}"
                ),
            );
        }
    };
    if let Err(e) = check_registration(&r.id, &r.addr, &r.labels) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let h = s
        .inventory
        .register(
            &r.id,
            &r.addr,
            r.labels,
            Source::Registration,
            broker_common::unix_now(),
        )
        .await;
    (StatusCode::CREATED, Json(h)).into_response()
}

async fn alerts(State(s): State<Arc<Shared>>) -> Response {
    Json(serde_json::json!({ "alerts": s.alerts.list() })).into_response()
}

async fn health_checks(State(s): State<Arc<Shared>>) -> Response {
    Json(serde_json::json!({ "members": s.health.snapshot() })).into_response()
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    let d = s
        .discovery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Json(d).into_response()
}

async fn autoscale(State(s): State<Arc<Shared>>) -> Response {
    Json(autoscale_json(&s)).into_response()
}

fn autoscale_json(s: &Shared) -> serde_json::Value {
    let c = &s.config.host_manager.autoscale;
    let st = s.autoscale.lock().unwrap_or_else(|e| e.into_inner());
    serde_json::json!({
        "enabled": c.enabled,
        "actuator": s.actuator.as_ref().map(|a| a.name()),
        "score": st.score,
        "scale_up_above": c.scale_up_above,
        "scale_down_below": c.scale_down_below,
        "writers": st.writers,
        "min_writers": c.min_writers,
        "max_writers": c.max_writers,
        "cooldown_until_ms": st.decider.cooldown_until_ms(c),
        "loads": st.loads,
        "decisions": st.decisions,
    })
}

pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/hosts", get(list_hosts).post(register))
        .route("/api/hosts/{id}", get(get_host))
        .route("/api/alerts", get(alerts))
        .route("/api/autoscale", get(autoscale))
        .route("/api/health-checks", get(health_checks))
        .route("/api/discovery", get(discovery))
        .with_state(shared)
}

fn to_pb(h: &HostRecord) -> pb::Host {
    pb::Host {
        id: h.id.clone(),
        state: h.state.as_str().into(),
        last_seen: h.last_seen,
        source: h.source.as_str().into(),
        addr: h.addr.clone(),
        labels: h.labels.clone().into_iter().collect(),
        first_seen: h.first_seen,
        down_since: h.down_since,
    }
}

#[derive(Clone)]
pub struct HostGrpc {
    shared: Arc<Shared>,
}

impl HostGrpc {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub fn into_server(self) -> pb::host_service_server::HostServiceServer<Self> {
        pb::host_service_server::HostServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::host_service_server::HostService for HostGrpc {
    async fn register(
        &self,
        req: tonic::Request<pb::RegisterHostRequest>,
    ) -> Result<tonic::Response<pb::RegisterHostResponse>, tonic::Status> {
        let r = req.into_inner();
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        check_registration(&r.id, &r.addr, &labels).map_err(tonic::Status::invalid_argument)?;
        let h = self
            .shared
            .inventory
            .register(
                &r.id,
                &r.addr,
                labels,
                Source::Registration,
                broker_common::unix_now(),
            )
            .await;
        Ok(tonic::Response::new(pb::RegisterHostResponse {
            host: Some(to_pb(&h)),
        }))
    }

    async fn list(
        &self,
        req: tonic::Request<pb::ListHostsRequest>,
    ) -> Result<tonic::Response<pb::ListHostsResponse>, tonic::Status> {
        let state =
            parse_state(Some(&req.into_inner().state)).map_err(tonic::Status::invalid_argument)?;
        let hosts = self
            .shared
            .inventory
            .list(state)
            .iter()
            .map(to_pb)
            .collect();
        Ok(tonic::Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn autoscale_status(
        &self,
        _req: tonic::Request<pb::AutoscaleStatusRequest>,
    ) -> Result<tonic::Response<pb::AutoscaleStatus>, tonic::Status> {
        let s = &self.shared;
        let c = &s.config.host_manager.autoscale;
        let st = s.autoscale.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tonic::Response::new(pb::AutoscaleStatus {
            enabled: c.enabled,
            actuator: s.actuator.as_ref().map(|a| a.name()).unwrap_or("").into(),
            score: st.score.unwrap_or(f64::NAN),
            scale_up_above: c.scale_up_above,
            scale_down_below: c.scale_down_below,
            writers: st.writers,
            min_writers: c.min_writers,
            max_writers: c.max_writers,
            loads: st
                .loads
                .iter()
                .map(|l| pb::WriterLoad {
                    id: l.id.clone(),
                    score: l.score,
                    cpu_pct: l.cpu_pct,
                    memory_pct: l.memory_pct,
                    queue_pct: l.queue_pct,
                    points_per_sec: l.points_per_sec,
                    error: l.error.clone().unwrap_or_default(),
                })
                .collect(),
            decisions: st
                .decisions
                .iter()
                .map(|d| pb::AutoscaleDecision {
                    at_ms: d.at_ms,
                    action: serde_json::to_value(d.action)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    score: d.score.unwrap_or(f64::NAN),
                    writers: d.writers,
                    reason: d.reason.clone(),
                    outcome: d.outcome.clone(),
                })
                .collect(),
            cooldown_until_ms: st.decider.cooldown_until_ms(c).unwrap_or(0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_checked_with_named_errors() {
        let none = BTreeMap::new();
        assert!(check_registration("web-1", "127.0.0.1", &none).is_ok());
        assert!(
            check_registration("a b", "", &none)
                .unwrap_err()
                .contains("\"a b\"")
        );
        assert!(
            check_registration("h*", "", &none)
                .unwrap_err()
                .contains("id")
        );
        assert!(
            check_registration("h", "1.2.3.4 x", &none)
                .unwrap_err()
                .contains("addr")
        );
        let bad: BTreeMap<String, String> = [("9x".to_string(), "v".to_string())].into();
        assert!(
            check_registration("h", "", &bad)
                .unwrap_err()
                .contains("9x")
        );
    }
}
