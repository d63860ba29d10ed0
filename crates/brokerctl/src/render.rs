//! The text forms of the views: aligned tables and short summaries. Pure
//! functions of the view (and of `now_ms` for ages), so they are tested
//! without a cluster.

use crate::ClusterReport;
use broker_common::cli::table;
use cluster_client::views::{ClusterView, MembersView, RingView};
use std::fmt::Write;

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

/// `3m12s`: the two largest units of a duration in milliseconds (0 for a
/// negative one, a clock ahead of ours).
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A short duration: `500ms`, `3s`, `10m0s`.
pub fn span(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        age(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

/// A fraction as a percentage with one decimal: `33.3%`.
pub fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

pub fn members(view: &MembersView, now_ms: i64, out: &mut String) {
    let _ = writeln!(out, "epoch {}", view.epoch);
    if view.members.is_empty() {
        out.push_str("no members\n");
        return;
    }
    let mut rows = vec![row(["ID", "ROLES", "STATE", "WEIGHT", "ADDR", "SINCE"])];
    for m in &view.members {
        rows.push(vec![
            m.id.clone(),
            m.roles.join(","),
            if m.state_reason.is_empty() {
                m.state.to_string()
            } else {
                format!("{} ({})", m.state, m.state_reason)
            },
            m.weight.to_string(),
            m.addr.clone(),
            if m.state_since_ms > 0 {
                age(now_ms - m.state_since_ms)
            } else {
                "-".into()
            },
        ]);
    }
    table(&rows, out);
}

pub fn ring(view: &RingView, out: &mut String) {
    let _ = writeln!(
        out,
        "epoch {}  vnodes {}  hash {}",
        view.epoch, view.vnodes, view.hash
    );
    if view.nodes.is_empty() {
        out.push_str("the ring is empty: no storage-writer is online\n");
        return;
    }
    let mut rows = vec![row(["ID", "WEIGHT", "SHARE", "ADDR"])];
    for n in &view.nodes {
        rows.push(vec![
            n.id.clone(),
            n.weight.to_string(),
            percent(n.share),
            n.addr.clone(),
        ]);
    }
    table(&rows, out);
}

fn or_dash(v: u64) -> String {
    if v == 0 { "-".into() } else { v.to_string() }
}

/// `1,2,3`.
pub fn ids(v: &[u64]) -> String {
    let s: Vec<String> = v.iter().map(u64::to_string).collect();
    s.join(",")
}

pub fn cluster(report: &ClusterReport, out: &mut String) {
    match (report.leader, &report.leader_addr) {
        (0, _) => {
            let _ = writeln!(out, "no leader known (term {})", report.term);
        }
        (l, Some(addr)) => {
            let _ = writeln!(out, "leader {l} at {addr}, term {}", report.term);
        }
        (l, None) => {
            let _ = writeln!(out, "leader {l}, term {}", report.term);
        }
    }
    let mut rows = vec![row([
        "ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "VOTERS", "EPOCH",
    ])];
    let mut errors = Vec::new();
    for n in &report.nodes {
        match (&n.status, &n.error) {
            (Some(v), _) => rows.push(node_row(&n.endpoint, v)),
            (None, e) => {
                let mut r = row(["-"; 9]);
                r[0] = n.endpoint.clone();
                r[2] = "unreachable".into();
                rows.push(r);
                errors.push((&n.endpoint, e.as_deref().unwrap_or("no answer")));
            }
        }
    }
    table(&rows, out);
    for (endpoint, e) in errors {
        let _ = writeln!(out, "{endpoint}: {e}");
    }
}

fn node_row(endpoint: &str, v: &ClusterView) -> Vec<String> {
    vec![
        endpoint.to_string(),
        v.id.to_string(),
        v.role.clone(),
        v.term.to_string(),
        or_dash(v.leader),
        v.commit_index.to_string(),
        v.applied_index.to_string(),
        ids(&v.voters),
        v.epoch.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeReport;
    use broker_proto::v1::{
        ClusterState, Member, MemberRole, MemberState, RaftStatus, RingSettings,
    };

    #[test]
    fn ages_show_the_two_largest_units() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(-5_000), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(192_000), "3m12s");
        assert_eq!(age(3_600_000 + 5 * 60_000 + 7_000), "1h5m");
        assert_eq!(age(2 * 86_400_000 + 3 * 3_600_000), "2d3h");
        assert_eq!(span(500), "500ms");
        assert_eq!(span(3_000), "3s");
        assert_eq!(span(600_000), "10m0s");
    }

    #[test]
    fn percentages_have_one_decimal() {
        assert_eq!(percent(1.0 / 3.0), "33.3%");
        assert_eq!(percent(0.6667), "66.7%");
        assert_eq!(percent(1.0), "100.0%");
    }

    #[test]
    fn tables_align_columns() {
        let mut out = String::new();
        table(
            &[
                row(["ID", "STATE"]),
                row(["writer-1", "online"]),
                row(["w2", ""]),
            ],
            &mut out,
        );
        assert_eq!(out, "ID        STATE\nwriter-1  online\nw2\n");
    }

    fn state() -> ClusterState {
        let member = |id: &str, roles: &[MemberRole], state: MemberState, weight| Member {
            id: id.into(),
            roles: roles.iter().map(|r| *r as i32).collect(),
            addr: format!("http://127.0.0.1:9{weight}"),
            state: state as i32,
            weight,
            joined_at_ms: 1_000,
            state_since_ms: 1_000,
            ..Default::default()
        };
        ClusterState {
            epoch: 4,
            members: vec![
                member("r1", &[MemberRole::ShardRouter], MemberState::Online, 1),
                member("w1", &[MemberRole::StorageWriter], MemberState::Online, 2),
                member("w2", &[MemberRole::StorageWriter], MemberState::Draining, 1),
            ],
            ring: Some(RingSettings {
                vnodes: 100,
                hash: "xxh3".into(),
            }),
            applied_index: 9,
        }
    }

    #[test]
    fn members_table() {
        let mut out = String::new();
        members(&MembersView::from(&state()), 1_000 + 192_000, &mut out);
        assert_eq!(
            out,
            "epoch 4\n\
             ID  ROLES           STATE     WEIGHT  ADDR                 SINCE\n\
             r1  shard-router    online    1       http://127.0.0.1:91  3m12s\n\
             w1  storage-writer  online    2       http://127.0.0.1:92  3m12s\n\
             w2  storage-writer  draining  1       http://127.0.0.1:91  3m12s\n"
        );
    }

    #[test]
    fn ring_table_lists_online_writers_and_says_when_empty() {
        let mut out = String::new();
        ring(&RingView::from(&state()), &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "epoch 4  vnodes 100  hash xxh3");
        assert!(lines[1].starts_with("ID  WEIGHT  SHARE"), "{out}");
        assert!(
            lines[2].starts_with("w1  2       100.0%  http://127.0.0.1:92"),
            "{out}"
        );
        assert_eq!(lines.len(), 3, "{out}");

        let mut empty = state();
        empty.members.retain(|m| m.id == "r1");
        let mut out = String::new();
        ring(&RingView::from(&empty), &mut out);
        assert!(out.contains("the ring is empty"), "{out}");
    }

    #[test]
    fn cluster_table_marks_unreachable_endpoints() {
        let status = RaftStatus {
            id: 1,
            role: "leader".into(),
            term: 3,
            leader_id: 1,
            commit_index: 12,
            applied_index: 12,
            voters: vec![3, 1, 2],
            peers: [(1, "http://a:1".to_string())].into(),
            epoch: 5,
            ..Default::default()
        };
        let view = ClusterView::from(&status);
        let report = ClusterReport::new(
            &view,
            vec![
                NodeReport {
                    endpoint: "http://a:1".into(),
                    status: Some(view.clone()),
                    error: None,
                },
                NodeReport {
                    endpoint: "http://b:1".into(),
                    status: None,
                    error: Some("connection refused".into()),
                },
            ],
        );
        let mut out = String::new();
        cluster(&report, &mut out);
        assert_eq!(
            out,
            "leader 1 at http://a:1, term 3\n\
             ENDPOINT    ID  ROLE         TERM  LEADER  COMMIT  APPLIED  VOTERS  EPOCH\n\
             http://a:1  1   leader       3     1       12      12       1,2,3   5\n\
             http://b:1  -   unreachable  -     -       -       -        -       -\n\
             http://b:1: connection refused\n"
        );
    }
}
