//! `brokerctl dlq`: list, inspect, replay and discard a storage-writer's
//! dead-letter entries through its admin HTTP API (`/api/dlq`), with
//! [`AdminClient`]; answers print as tables, or as the API's JSON with
//! `--json`.

use crate::CtlError;
use crate::cli::GlobalArgs;
use broker_common::cli::table;
use broker_common::security::ClientSecurity;
use internal_clients::AdminClient;
use internal_clients::dlq::{EntryDetail, EntryList, ReplayAll};

#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqAction {
    /// List entries, oldest first.
    List {
        /// At most this many entries.
        #[arg(long, default_value_t = internal_clients::dlq::DEFAULT_LIST_LIMIT)]
        limit: usize,
        /// Only entries with a greater id (paging).
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
    },
    /// Show one entry: why, when, and every point.
    Show { id: u64 },
    /// Write entries to Redis now; each one is deleted once all its points
    /// are stored.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Replay {
        /// The entry to replay.
        id: Option<u64>,
        /// Every entry, oldest first (stops if Redis cannot be reached).
        #[arg(long)]
        all: bool,
    },
    /// Delete an entry without storing its points.
    Discard { id: u64 },
}

/// Runs `brokerctl dlq ...` and writes what it prints to `out`. A
/// replay of every entry that stops early, or leaves entries Redis still
/// refuses, prints its report and then fails.
pub async fn run(
    args: DlqArgs,
    global: &GlobalArgs,
    security: &ClientSecurity,
    out: &mut impl std::io::Write,
) -> Result<(), CtlError> {
    let client = AdminClient::with_security(&global.admin, global.timeout, security)?;
    let json = global.json;
    let mut text = String::new();
    let mut failed = None;
    match args.action {
        DlqAction::List { limit, after } => {
            let list = client.list(after, limit).await?;
            if json {
                text = crate::to_json(&list)?;
            } else {
                render_list(&list, &mut text);
            }
        }
        DlqAction::Show { id } => {
            let entry = client.show(id).await?;
            if json {
                text = crate::to_json(&entry)?;
            } else {
                render_entry(&entry, &mut text);
            }
        }
        DlqAction::Replay { id: Some(id), .. } => {
            let done = client.replay(id).await?;
            if json {
                text = crate::to_json(&done)?;
            } else {
                text = format!(
                    "replayed entry {}: {} point(s) stored ({}); entry deleted\n",
                    done.id,
                    done.points,
                    done.hosts.join(", ")
                );
            }
        }
        DlqAction::Replay { id: None, .. } => {
            let report = client.replay_all().await?;
            if json {
                text = crate::to_json(&report)?;
            } else {
                render_replay_all(&report, &mut text);
            }
            if let Some(e) = &report.error {
                failed = Some(format!("replay stopped: {e}"));
            } else if !report.refused.is_empty() {
                failed = Some(format!(
                    "{} entry(ies) still refused by redis",
                    report.refused.len()
                ));
            }
        }
        DlqAction::Discard { id } => {
            let done = client.discard(id).await?;
            if json {
                text = crate::to_json(&done)?;
            } else {
                text = format!(
                    "discarded entry {}: {} point(s) ({}) will not be stored\n",
                    done.id,
                    done.points,
                    done.hosts.join(", ")
                );
            }
        }
    }
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CtlError::Output)?;
    match failed {
        Some(reason) => Err(CtlError::DlqIncomplete(reason)),
        None => Ok(()),
    }
}

/// Longest reason shown in a list row; `show` prints it whole.
const REASON_WIDTH: usize = 100;

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn hosts_cell(hosts: &[String], total: usize) -> String {
    let mut s = hosts.join(",");
    if total > hosts.len() {
        s.push_str(&format!(" +{}", total - hosts.len()));
    }
    s
}

pub fn render_list(list: &EntryList, out: &mut String) {
    out.push_str(&format!(
        "writer {}: {} dead-letter entr{} ({} bytes)\n",
        list.writer,
        list.records,
        if list.records == 1 { "y" } else { "ies" },
        list.bytes
    ));
    if list.entries.is_empty() {
        return;
    }
    out.push('\n');
    let mut rows = vec![
        [
            "ID",
            "DEAD-LETTERED",
            "POINTS",
            "HOSTS",
            "REPLAYS",
            "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in &list.entries {
        rows.push(vec![
            e.id.to_string(),
            e.time.clone(),
            e.points.to_string(),
            hosts_cell(&e.hosts, e.hosts_total),
            e.replay_attempts.to_string(),
            truncate(&e.reason, REASON_WIDTH),
        ]);
    }
    table(&rows, out);
    let shown = list.entries.len() as u64;
    if shown < list.records {
        let last = list.entries.last().map_or(0, |e| e.id);
        out.push_str(&format!(
            "\n{shown} shown; more with --after {last} (or a larger --limit)\n"
        ));
    }
}

pub fn render_entry(entry: &EntryDetail, out: &mut String) {
    let s = &entry.summary;
    let mut head = vec![
        vec!["id:".to_string(), s.id.to_string()],
        vec!["dead-lettered:".into(), s.time.clone()],
        vec!["writer:".into(), s.writer.clone()],
        vec!["reason:".into(), s.reason.clone()],
        vec![
            "points:".into(),
            format!("{} from {} host(s)", s.points, s.hosts_total),
        ],
        vec!["bytes:".into(), s.bytes.to_string()],
        vec!["replays tried:".into(), s.replay_attempts.to_string()],
    ];
    if !s.last_replay_error.is_empty() {
        head.push(vec!["last replay:".into(), s.last_replay_error.clone()]);
    }
    table(&head, out);
    if entry.points_detail.is_empty() {
        return;
    }
    out.push('\n');
    let mut rows = vec![
        ["HOST", "TIMESTAMP", "METRICS", "LABELS"]
            .map(String::from)
            .to_vec(),
    ];
    for p in &entry.points_detail {
        let metrics: Vec<String> = p.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        rows.push(vec![
            p.host.clone(),
            p.timestamp.to_string(),
            metrics.join(" "),
            labels.join(" "),
        ]);
    }
    table(&rows, out);
}

pub fn render_replay_all(r: &ReplayAll, out: &mut String) {
    out.push_str(&format!(
        "replayed {} entr{} ({} point(s)); {} still refused; {} left in the queue\n",
        r.replayed,
        if r.replayed == 1 { "y" } else { "ies" },
        r.points,
        r.refused.len(),
        r.remaining
    ));
    for f in &r.refused {
        out.push_str(&format!("  entry {}: {}\n", f.id, f.error));
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("stopped: {e}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use internal_clients::dlq::{EntrySummary, PointView};

    fn summary(id: u64, reason: &str) -> EntrySummary {
        EntrySummary {
            id,
            time: "2025-01-02T03:04:05.678Z".into(),
            time_unix_ms: 1_735_787_045_678,
            writer: "broker-1".into(),
            reason: reason.into(),
            points: 2,
            hosts: vec!["poison".into()],
            hosts_total: 3,
            bytes: 120,
            replay_attempts: 1,
            last_replay_error: String::new(),
        }
    }

    #[test]
    fn a_list_is_a_table_with_a_paging_hint() {
        let list = EntryList {
            writer: "broker-1".into(),
            records: 3,
            bytes: 360,
            entries: vec![
                summary(
                    7,
                    "ZADD monitor:index:metrics:{poison}: WRONGTYPE Operation",
                ),
                summary(12, &"x".repeat(300)),
            ],
        };
        let mut out = String::new();
        render_list(&list, &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "writer broker-1: 3 dead-letter entries (360 bytes)"
        );
        assert_eq!(
            lines[2],
            "ID  DEAD-LETTERED             POINTS  HOSTS      REPLAYS  REASON"
        );
        assert_eq!(
            lines[3],
            "7   2025-01-02T03:04:05.678Z  2       poison +2  1        ZADD monitor:index:metrics:{poison}: WRONGTYPE Operation"
        );
        assert!(lines[4].ends_with('…'), "{}", lines[4]);
        assert!(lines[4].chars().count() < 200, "reasons are cut in lists");
        assert_eq!(
            lines.last().unwrap(),
            &"2 shown; more with --after 12 (or a larger --limit)"
        );
    }

    #[test]
    fn an_entry_shows_every_point() {
        let entry = EntryDetail {
            summary: summary(7, "WRONGTYPE"),
            points_detail: vec![PointView {
                millis: 0,
                host: "poison".into(),
                timestamp: 1_700_000_000,
                metrics: [("cpu".to_string(), 1.5), ("mem".to_string(), 2.0)].into(),
                labels: [("role".to_string(), "db".to_string())].into(),
            }],
        };
        let mut out = String::new();
        render_entry(&entry, &mut out);
        assert!(out.contains("reason:         WRONGTYPE\n"), "{out}");
        assert!(
            out.contains("poison  1700000000  cpu=1.5 mem=2  role=db\n"),
            "{out}"
        );
    }
}
