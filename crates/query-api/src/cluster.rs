//! The cluster view: members, their states, ring shares and the epoch.
//!
//! With `cluster.endpoints` set, it asks cluster-ctl (`ClusterService`
//! `Members` and `Status`, the first endpoint that answers) and computes
//! each ONLINE storage-writer's share of the ring with [`hash_ring`], from
//! the ring settings cluster-ctl holds. Otherwise it shows the static ring
//! (`router.writers`, or this process alone) at epoch 1.

use crate::error::QueryError;
use broker_common::BrokerConfig;
use broker_common::security::ClientSecurity;
use broker_proto::v1::cluster_service_client::ClusterServiceClient;
use broker_proto::v1::{
    ClusterState, ClusterStatusResponse, Member, MemberRole, MemberState, MembersRequest,
    RaftStatus, RingMember, RingSettings, StatusRequest,
};
use serde_json::json;
use std::time::Duration;

/// Deadline of one call to a cluster-ctl endpoint.
const CLUSTER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct ClusterView {
    endpoints: Vec<String>,
    security: ClientSecurity,
    static_state: ClusterState,
}

impl ClusterView {
    pub fn new(config: &BrokerConfig, security: &ClientSecurity) -> Self {
        let r = &config.router;
        let members = if r.writers.is_empty() {
            vec![Member {
                id: config.node_id.clone(),
                roles: vec![MemberRole::StorageWriter as i32],
                addr: config.advertise_addr(),
                state: MemberState::Online as i32,
                weight: config.cluster.weight.max(1),
                admin_addr: format!("{}://{}", config.security.tls.scheme(), config.http_listen),
                ..Default::default()
            }]
        } else {
            r.writers
                .iter()
                .map(|w| Member {
                    id: w.id.clone(),
                    roles: vec![MemberRole::StorageWriter as i32],
                    addr: w.addr.clone(),
                    state: MemberState::Online as i32,
                    weight: w.weight,
                    ..Default::default()
                })
                .collect()
        };
        Self {
            endpoints: config.cluster.endpoints.clone(),
            security: security.clone(),
            static_state: ClusterState {
                epoch: 1,
                members,
                ring: Some(RingSettings {
                    vnodes: r.vnodes,
                    hash: r.hash.as_str().to_string(),
                }),
                applied_index: 0,
            },
        }
    }

    pub async fn status(&self) -> Result<ClusterStatusResponse, QueryError> {
        if self.endpoints.is_empty() {
            return with_shares(self.static_state.clone(), "static", None, String::new());
        }
        let mut errors = Vec::new();
        for ep in &self.endpoints {
            match ask(ep, &self.security).await {
                Ok((state, raft)) => {
                    return with_shares(state, "cluster-ctl", Some(raft), ep.clone());
                }
                Err(e) => errors.push(format!("{ep}: {e}")),
            }
        }
        Err(QueryError::Cluster(format!(
            "no endpoint in cluster.endpoints answered: {}",
            errors.join("; ")
        )))
    }
}

async fn ask(
    endpoint: &str,
    security: &ClientSecurity,
) -> Result<(ClusterState, RaftStatus), String> {
    let channel = security
        .connect(endpoint, |ep| {
            ep.connect_timeout(CLUSTER_CALL_TIMEOUT)
                .timeout(CLUSTER_CALL_TIMEOUT)
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut client = ClusterServiceClient::new(channel);
    let state = client
        .members(MembersRequest {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let raft = client
        .status(StatusRequest {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    Ok((state, raft))
}

/// Adds each member's ring share: ONLINE storage-writers, by weight, on
/// the ring the state's settings describe.
fn with_shares(
    state: ClusterState,
    source: &str,
    raft: Option<RaftStatus>,
    endpoint: String,
) -> Result<ClusterStatusResponse, QueryError> {
    // The same ring every router builds from this state.
    let config = cluster_client::ring_config(&state);
    let shares: std::collections::HashMap<String, f64> = cluster_client::ring_of(&state)
        .map_err(|e| QueryError::Cluster(format!("ring of epoch {}: {e}", state.epoch)))?
        .0
        .shares()
        .into_iter()
        .collect();
    Ok(ClusterStatusResponse {
        source: source.to_string(),
        epoch: state.epoch,
        members: state
            .members
            .into_iter()
            .map(|m| RingMember {
                share: shares.get(&m.id).copied().unwrap_or(0.0),
                member: Some(m),
            })
            .collect(),
        ring: Some(RingSettings {
            vnodes: config.vnodes,
            hash: config.hash.as_str().to_string(),
        }),
        raft,
        endpoint,
    })
}

/// `MEMBER_ROLE_STORAGE_WRITER` -> `storage-writer`.
fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// The JSON form of the cluster view (HTTP API and dashboard).
pub fn to_json(s: &ClusterStatusResponse) -> serde_json::Value {
    let members: Vec<serde_json::Value> = s
        .members
        .iter()
        .filter_map(|rm| {
            let m = rm.member.as_ref()?;
            Some(json!({
                "id": m.id,
                "roles": m.roles.iter().map(|r| MemberRole::try_from(*r)
                    .map(|r| enum_name(r.as_str_name(), "MEMBER_ROLE_"))
                    .unwrap_or_else(|_| r.to_string())).collect::<Vec<_>>(),
                "addr": m.addr,
                "admin_addr": m.admin_addr,
                "state": MemberState::try_from(m.state)
                    .map(|st| enum_name(st.as_str_name(), "MEMBER_STATE_"))
                    .unwrap_or_else(|_| m.state.to_string()),
                "weight": m.weight,
                "state_since_ms": m.state_since_ms,
                "share": rm.share,
            }))
        })
        .collect();
    // The JSON shape cluster-ctl's own `/api/cluster` and brokerctl print.
    let raft = s
        .raft
        .as_ref()
        .map(cluster_client::views::ClusterView::from);
    let ring = s.ring.clone().unwrap_or_default();
    json!({
        "source": s.source,
        "epoch": s.epoch,
        "endpoint": s.endpoint,
        "ring": {"vnodes": ring.vnodes, "hash": ring.hash},
        "members": members,
        "raft": raft,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_online_writers_only() {
        let member = |id: &str, state: MemberState, role: MemberRole, weight: u32| Member {
            id: id.into(),
            roles: vec![role as i32],
            state: state as i32,
            weight,
            ..Default::default()
        };
        let state = ClusterState {
            epoch: 7,
            members: vec![
                member("w1", MemberState::Online, MemberRole::StorageWriter, 1),
                member("w2", MemberState::Online, MemberRole::StorageWriter, 3),
                member("w3", MemberState::Offline, MemberRole::StorageWriter, 1),
                member("r1", MemberState::Online, MemberRole::ShardRouter, 1),
            ],
            ring: Some(RingSettings {
                vnodes: 200,
                hash: "xxh3".into(),
            }),
            applied_index: 3,
        };
        let s = with_shares(state, "cluster-ctl", None, "http://127.0.0.1:1".into()).unwrap();
        let share = |id: &str| {
            s.members
                .iter()
                .find(|m| m.member.as_ref().unwrap().id == id)
                .unwrap()
                .share
        };
        assert_eq!(share("w3"), 0.0);
        assert_eq!(share("r1"), 0.0);
        assert!((share("w1") + share("w2") - 1.0).abs() < 1e-9);
        assert!(share("w2") > 2.0 * share("w1"), "weight 3 vs 1");
        let j = to_json(&s);
        assert_eq!(j["epoch"], 7);
        assert_eq!(j["members"][2]["state"], "offline");
        assert_eq!(j["members"][3]["roles"][0], "shard-router");
    }

    #[test]
    fn static_ring_is_this_node_alone_by_default() {
        let c = BrokerConfig::default();
        let view = ClusterView::new(&c, &Default::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let s = rt.block_on(view.status()).unwrap();
        assert_eq!((s.source.as_str(), s.epoch), ("static", 1));
        assert_eq!(s.members.len(), 1);
        assert!((s.members[0].share - 1.0).abs() < 1e-9);
    }
}
