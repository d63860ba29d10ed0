//! What `brokerctl cluster` reports: the cluster as one node sees it (the
//! leader when it answers) and every endpoint's own view or error.

use broker_proto::v1::RaftStatus;
use cluster_client::views::ClusterView;
use serde::Serialize;
use std::collections::BTreeMap;
use tonic::Status;

#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// Raft id of the node the fields below come from: the leader if it
    /// answered, else the first node that answered.
    pub from_node: u64,
    /// 0 when no leader is known.
    pub leader: u64,
    pub leader_addr: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub peers: BTreeMap<u64, String>,
    pub epoch: u64,
    /// Every endpoint, in the order given.
    pub nodes: Vec<NodeReport>,
}

/// One endpoint: its view, or why it did not answer.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub endpoint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ClusterView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ClusterReport {
    /// The report with `view`'s cluster-wide fields.
    pub fn new(view: &ClusterView, nodes: Vec<NodeReport>) -> Self {
        Self {
            from_node: view.id,
            leader: view.leader,
            leader_addr: view.leader_addr.clone(),
            term: view.term,
            commit_index: view.commit_index,
            applied_index: view.applied_index,
            voters: view.voters.clone(),
            learners: view.learners.clone(),
            peers: view.peers.clone(),
            epoch: view.epoch,
            nodes,
        }
    }

    /// The report of `status_all`'s answers; `Err` with the last error when
    /// no endpoint answered.
    pub fn from_statuses(
        statuses: Vec<(String, Result<RaftStatus, Status>)>,
    ) -> Result<Self, String> {
        let nodes: Vec<NodeReport> = statuses
            .into_iter()
            .map(|(endpoint, r)| match r {
                Ok(s) => NodeReport {
                    endpoint,
                    status: Some(ClusterView::from(&s)),
                    error: None,
                },
                Err(e) => NodeReport {
                    endpoint,
                    status: None,
                    error: Some(describe(&e)),
                },
            })
            .collect();
        let answered = || nodes.iter().filter_map(|n| n.status.as_ref());
        // A deposed leader that has not heard of the new term yet still
        // says "leader": the highest term wins.
        let view = answered()
            .filter(|v| v.role == "leader")
            .max_by_key(|v| v.term)
            .or_else(|| answered().next());
        match view {
            Some(v) => Ok(Self::new(&v.clone(), nodes)),
            None => Err(nodes
                .iter()
                .rev()
                .find_map(|n| n.error.clone())
                .unwrap_or_else(|| "no endpoint".into())),
        }
    }
}

/// A gRPC error on one line: its message and the errors behind it
/// ("tcp connect error: Connection refused (os error 111)"), without the
/// debug dump of `Status`'s `Display`.
pub fn describe(status: &Status) -> String {
    let mut out = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = s.source();
    }
    if out.is_empty() {
        out = status.code().description().to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: &str, term: u64, leader: u64) -> RaftStatus {
        RaftStatus {
            id,
            role: role.into(),
            term,
            leader_id: leader,
            voters: vec![1, 2, 3],
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_view_is_preferred_and_failures_are_kept() {
        let report = ClusterReport::from_statuses(vec![
            ("a".into(), Ok(status(1, "follower", 4, 3))),
            ("b".into(), Err(Status::unavailable("connection refused"))),
            ("c".into(), Ok(status(3, "leader", 4, 3))),
            ("d".into(), Ok(status(4, "leader", 2, 4))),
        ])
        .unwrap();
        assert_eq!((report.from_node, report.leader, report.term), (3, 3, 4));
        assert_eq!(report.nodes.len(), 4);
        assert_eq!(report.nodes[1].error.as_deref(), Some("connection refused"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["voters"], serde_json::json!([1, 2, 3]));
        assert!(json["nodes"][1].get("status").is_none());
        assert_eq!(json["nodes"][2]["status"]["role"], "leader");
    }

    #[test]
    fn without_a_leader_the_first_answer_is_used() {
        let report = ClusterReport::from_statuses(vec![
            ("a".into(), Err(Status::unavailable("down"))),
            ("b".into(), Ok(status(2, "candidate", 5, 0))),
        ])
        .unwrap();
        assert_eq!((report.from_node, report.leader), (2, 0));
    }

    #[test]
    fn no_answer_is_an_error_with_the_last_reason() {
        let e = ClusterReport::from_statuses(vec![
            ("a".into(), Err(Status::unavailable("down"))),
            (
                "b".into(),
                Err(Status::deadline_exceeded("status timed out")),
            ),
        ])
        .unwrap_err();
        assert_eq!(e, "status timed out");
        assert_eq!(
            describe(&Status::unavailable("")),
            "The service is currently unavailable"
        );
    }
}
