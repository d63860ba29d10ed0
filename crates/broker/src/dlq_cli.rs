//! `broker dlq`: list, inspect, replay and discard a storage-writer's
//! dead-letter entries through its admin HTTP API (`/api/dlq`, see
//! `storage_writer::api`).
//!
//! [`AdminClient`] is the HTTP client (the workspace's
//! [`broker_common::http_client`], with TLS and the token); the rest renders
//! answers as tables, or as the API's JSON with `--json`.

use broker_common::cli::table;
use broker_common::http_client::{HttpClient, HttpError};
use broker_common::security::ClientSecurity;
use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use storage_writer::api::ErrorBody;
use storage_writer::dlq::{EntryDetail, EntryDone, EntryList, ReplayAll};

/// Where the CLI looks by default: the `http_listen` default.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9190";

#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    /// Admin HTTP address of the storage-writer (or of the all-in-one
    /// broker running one): its `http_listen`.
    #[arg(long, global = true, default_value = DEFAULT_ADMIN, env = "BROKER_ADMIN", value_name = "URL")]
    pub admin: String,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long one request may take (a replay writes to Redis).
    #[arg(long, global = true, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// The admin token and the CA, when the broker is secured.
    #[command(flatten)]
    pub security: broker_common::cli::ClientSecurityArgs,
    #[command(subcommand)]
    pub action: DlqAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqAction {
    /// List entries, oldest first.
    List {
        /// At most this many entries.
        #[arg(long, default_value_t = storage_writer::dlq::DEFAULT_LIST_LIMIT)]
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

/// Why a call to the admin API failed, naming the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--admin {admin:?}: {reason}")]
    InvalidAddress { admin: String, reason: String },
    #[error(
        "cannot reach the admin API at {url}: {reason} (is a storage-writer running there? --admin must be its http_listen)"
    )]
    Unreachable { url: String, reason: String },
    #[error("{url} did not answer within {after:?} (see --timeout)")]
    Timeout { url: String, after: Duration },
    #[error("{url}: {status}: {error}")]
    Api {
        url: String,
        status: u16,
        error: String,
    },
    #[error("{url} answered something unexpected: {reason}")]
    BadAnswer { url: String, reason: String },
}

impl ClientError {
    /// The HTTP status of an API error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one process's admin HTTP API.
#[derive(Clone)]
pub struct AdminClient {
    base: String,
    client: HttpClient,
    timeout: Duration,
}

impl AdminClient {
    /// `admin`: `http://host:port` (or `host:port`), plain HTTP, no token.
    pub fn new(admin: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_security(admin, timeout, &ClientSecurity::default())
    }

    /// As [`AdminClient::new`] for a secured broker: `https://` with the
    /// CA of `security`, and its token (the admin token) on every request.
    pub fn with_security(
        admin: &str,
        timeout: Duration,
        security: &ClientSecurity,
    ) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidAddress {
            admin: admin.to_string(),
            reason: reason.to_string(),
        };
        let base = if admin.contains("://") {
            admin.to_string()
        } else if security.tls.is_some() {
            format!("https://{admin}")
        } else {
            format!("http://{admin}")
        };
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().map_err(|e| invalid(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") if security.tls.is_some() => {}
            Some("https") => {
                return Err(invalid(
                    "https:// needs the CA that signed the broker's certificate (--tls-ca)",
                ));
            }
            _ => return Err(invalid("must be http:// or https://")),
        }
        if uri.host().is_none() {
            return Err(invalid("no host"));
        }
        Ok(Self {
            base,
            client: HttpClient::new(security),
            timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path`, returns the status and body.
    async fn send(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        self.client
            .send(method, &url, None, self.timeout)
            .await
            .map_err(|e| match e {
                HttpError::Invalid(reason) => ClientError::InvalidAddress {
                    admin: self.base.clone(),
                    reason,
                },
                HttpError::Unreachable(reason) => ClientError::Unreachable { url, reason },
                HttpError::Timeout(after) => ClientError::Timeout { url, after },
                HttpError::Body(reason) => ClientError::BadAnswer {
                    url,
                    reason: format!("reading the body: {reason}"),
                },
            })
    }

    /// Calls the API and decodes a JSON answer; a non-2xx answer becomes
    /// [`ClientError::Api`] with the API's `error` text.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.send(method, path).await?;
        if !status.is_success() {
            let error = match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => e.error,
                Err(_) if status == StatusCode::NOT_FOUND => {
                    "no DLQ API here: is this a storage-writer's (or the all-in-one broker's) admin port?".into()
                }
                Err(_) => String::from_utf8_lossy(&body).trim().chars().take(300).collect(),
            };
            return Err(ClientError::Api {
                url,
                status: status.as_u16(),
                error,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer {
            url,
            reason: e.to_string(),
        })
    }

    pub async fn list(&self, after: Option<u64>, limit: usize) -> Result<EntryList, ClientError> {
        let mut path = format!("/api/dlq?limit={limit}");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        self.call(Method::GET, &path).await
    }

    pub async fn show(&self, id: u64) -> Result<EntryDetail, ClientError> {
        self.call(Method::GET, &format!("/api/dlq/{id}")).await
    }

    pub async fn replay(&self, id: u64) -> Result<EntryDone, ClientError> {
        self.call(Method::POST, &format!("/api/dlq/{id}/replay"))
            .await
    }

    /// Replays every entry. A stop because Redis could not be reached is
    /// an `Ok` report with `error` set (the API answers 503 with the
    /// report).
    pub async fn replay_all(&self) -> Result<ReplayAll, ClientError> {
        let url = format!("{}/api/dlq/replay", self.base);
        let (status, body) = self.send(Method::POST, "/api/dlq/replay").await?;
        if (status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE)
            && let Ok(r) = serde_json::from_slice::<ReplayAll>(&body)
        {
            return Ok(r);
        }
        let error = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(300)
                    .collect()
            });
        Err(ClientError::Api {
            url,
            status: status.as_u16(),
            error,
        })
    }

    pub async fn discard(&self, id: u64) -> Result<EntryDone, ClientError> {
        self.call(Method::DELETE, &format!("/api/dlq/{id}")).await
    }

    /// A plain-text GET (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let (status, body) = self.send(Method::GET, path).await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(ClientError::Api {
                url,
                status: status.as_u16(),
                error: text.trim().to_string(),
            });
        }
        Ok(text)
    }
}

/// Runs `broker dlq ...`, printing to stdout.
pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let security = args
        .security
        .client_security()
        .map_err(|e| anyhow::anyhow!("--token / --tls-*: {e}"))?;
    let client = AdminClient::with_security(&args.admin, args.timeout, &security)?;
    let mut out = String::new();
    match args.action {
        DlqAction::List { limit, after } => {
            let list = client.list(after, limit).await?;
            if args.json {
                out = json(&list)?;
            } else {
                render_list(&list, &mut out);
            }
        }
        DlqAction::Show { id } => {
            let entry = client.show(id).await?;
            if args.json {
                out = json(&entry)?;
            } else {
                render_entry(&entry, &mut out);
            }
        }
        DlqAction::Replay { id: Some(id), .. } => {
            let done = client.replay(id).await?;
            if args.json {
                out = json(&done)?;
            } else {
                out = format!(
                    "replayed entry {}: {} point(s) stored ({}); entry deleted\n",
                    done.id,
                    done.points,
                    done.hosts.join(", ")
                );
            }
        }
        DlqAction::Replay { id: None, .. } => {
            let report = client.replay_all().await?;
            if args.json {
                out = json(&report)?;
            } else {
                render_replay_all(&report, &mut out);
            }
            print!("{out}");
            if let Some(e) = &report.error {
                anyhow::bail!("replay stopped: {e}");
            }
            if !report.refused.is_empty() {
                anyhow::bail!("{} entry(ies) still refused by redis", report.refused.len());
            }
            return Ok(());
        }
        DlqAction::Discard { id } => {
            let done = client.discard(id).await?;
            if args.json {
                out = json(&done)?;
            } else {
                out = format!(
                    "discarded entry {}: {} point(s) ({}) will not be stored\n",
                    done.id,
                    done.points,
                    done.hosts.join(", ")
                );
            }
        }
    }
    print!("{out}");
    Ok(())
}

fn json<T: Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)? + "\n")
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
    use storage_writer::dlq::{EntrySummary, PointView};

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

    #[test]
    fn admin_addresses_are_checked() {
        let c = AdminClient::new("127.0.0.1:9190/", Duration::from_secs(1)).unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:9190");
        let e = AdminClient::new("https://127.0.0.1:9190", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.to_string().contains("--tls-ca"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_admin_port_is_named() {
        // A port nobody listens on: bind, learn it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = AdminClient::new(&format!("127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        let e = c.list(None, 10).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "cannot reach the admin API at http://127.0.0.1:{port}/api/dlq"
            )),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }
}
