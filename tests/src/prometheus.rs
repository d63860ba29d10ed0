//! Real Prometheus and exporters beside the broker: starting them, and
//! asking both the same PromQL to compare the answers.

use crate::{enc, http, post_bytes};
use broker_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Waits until the Prometheus at `addr` answers `/-/ready`; `logs` for
/// the failure message.
pub async fn prometheus_ready(addr: SocketAddr, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http(addr, "GET", "/-/ready", "").await.0 == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last 15 lines of each of `files` in `dir`, for failure messages.
pub fn log_tails(dir: &std::path::Path, files: &[&str]) -> String {
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            format!(
                "--- {f}:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(bin: &'static str, args: &[String], log: &std::path::Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin} (scripts/deps.sh installs it): {e}"));
    Proc(child)
}

pub fn port() -> u16 {
    redis_process::free_port().unwrap()
}

/// A Prometheus on `addr` with `dir/prometheus.yml` (written by the
/// caller), its TSDB in `dir/tsdb` and its log in `dir/prometheus.log`;
/// `extra` flags after those.
pub fn prometheus(dir: &std::path::Path, addr: SocketAddr, extra: &[&str]) -> Proc {
    let mut args = vec![
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address={addr}"),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn("prometheus", &args, &dir.join("prometheus.log"))
}

/// A query's instant vector as (labels without instance/host, value); a
/// range vector (`resultType: matrix`) as one entry per sample, its time
/// added to the labels.
pub async fn vector_at(addr: SocketAddr, q: &str, t_ms: i64) -> Result<Vec<(String, f64)>, String> {
    let path = format!(
        "/api/v1/query?query={}&time={}.{:03}",
        enc(q),
        t_ms / 1000,
        t_ms % 1000
    );
    let (status, body) = http(addr, "GET", &path, "").await;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    if body["data"]["resultType"] == "scalar" {
        let v = body["data"]["result"][1].as_str().unwrap().parse().unwrap();
        return Ok(vec![("scalar".into(), v)]);
    }
    let matrix = body["data"]["resultType"] == "matrix";
    let mut out: Vec<(String, f64)> = body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .flat_map(|s| {
            if !matrix {
                return vec![s.clone()];
            }
            s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| serde_json::json!({"metric": s["metric"], "value": v}))
                .collect()
        })
        .map(|s| {
            let labels: Vec<String> = s["metric"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "instance" && *k != "host")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let host = s["metric"]["host"]
                .as_str()
                .or_else(|| s["metric"]["instance"].as_str()?.split(':').next())
                .unwrap_or("")
                .to_string();
            let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
            let at = if matrix {
                format!(" @{}", s["value"][0])
            } else {
                String::new()
            };
            (format!("{host} {}{at}", labels.join(",")), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A range query's matrix as (labels without instance/host @ time, value),
/// sorted, labelled as [`vector_at`] does.
pub async fn matrix_over(
    addr: SocketAddr,
    q: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<Vec<(String, f64)>, String> {
    let secs = |ms: i64| format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    let path = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step={}",
        enc(q),
        secs(start_ms),
        secs(end_ms),
        secs(step_ms)
    );
    let (status, body) = http(addr, "GET", &path, "").await;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    let mut out = Vec::new();
    for s in body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let labels = series_key(&s["metric"]);
        for v in s["values"].as_array().cloned().unwrap_or_default() {
            let x: f64 = v[1].as_str().unwrap_or("NaN").parse().unwrap_or(f64::NAN);
            out.push((format!("{labels} @{}", v[0]), x));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `host label=value,...` of a result's labels: the host (the broker's
/// `host` label, or Prometheus's `instance` without its port) and the
/// other labels but `instance`.
fn series_key(metric: &serde_json::Value) -> String {
    let Some(m) = metric.as_object() else {
        return String::new();
    };
    let labels: Vec<String> = m
        .iter()
        .filter(|(k, _)| *k != "instance" && *k != "host")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let host = metric["host"]
        .as_str()
        .or_else(|| metric["instance"].as_str()?.split(':').next())
        .unwrap_or("");
    format!("{host} {}", labels.join(","))
}

/// How one answer of the broker compares to Prometheus's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The same series, every value within 1e-9 relative (NaN = NaN).
    Equal,
    /// The same series, some value different.
    ValuesDiffer,
    /// Another set of series (or sample times).
    SeriesDiffer,
    /// Either answered an error.
    Error,
}

/// Compares two answers as [`vector_at`] and [`matrix_over`] give them.
pub fn compare(
    ours: &Result<Vec<(String, f64)>, String>,
    theirs: &Result<Vec<(String, f64)>, String>,
) -> Outcome {
    let (a, b) = match (ours, theirs) {
        (Ok(a), Ok(b)) => (a, b),
        // Both refuse it alike (a range query of a range vector).
        (Err(a), Err(b)) if a.get(..3) == b.get(..3) => return Outcome::Equal,
        _ => return Outcome::Error,
    };
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.0 != y.0) {
        return Outcome::SeriesDiffer;
    }
    let close = |x: f64, y: f64| {
        x == y
            || (x.is_nan() && y.is_nan())
            || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
    };
    if a.iter().zip(b).all(|(x, y)| close(x.1, y.1)) {
        Outcome::Equal
    } else {
        Outcome::ValuesDiffer
    }
}

/// POSTs `body` to `/api/v1/write` as Prometheus does; status,
/// Retry-After and body.
pub async fn post_write_raw(addr: SocketAddr, body: &[u8]) -> (u16, Option<String>, String) {
    let a = post_bytes(
        addr,
        "/api/v1/write",
        "Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n",
        body,
    )
    .await;
    (a.status, a.header("retry-after"), a.text())
}

/// POSTs `req`, snappy-compressed protobuf.
pub async fn post_write(addr: SocketAddr, req: &WriteRequest) -> (u16, Option<String>, String) {
    use prost::Message;
    let body = snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap();
    post_write_raw(addr, &body).await
}

pub fn series(name: &str, instance: &str, samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: [("__name__", name), ("instance", instance), ("job", "t")]
            .iter()
            .map(|(n, v)| Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| Sample { value, timestamp })
            .collect(),
    }
}

/// A series `name{instance, job="t", extra...}` with `samples`.
pub fn labelled(
    name: &str,
    host: &str,
    extra: &[(&str, &str)],
    samples: Vec<(i64, f64)>,
) -> TimeSeries {
    let mut labels: Vec<Label> = [("__name__", name), ("instance", host), ("job", "t")]
        .iter()
        .chain(extra)
        .map(|(n, v)| Label {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries {
        labels,
        samples: samples
            .into_iter()
            .map(|(timestamp, value)| Sample { value, timestamp })
            .collect(),
    }
}
