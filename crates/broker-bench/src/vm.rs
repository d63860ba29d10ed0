//! VictoriaMetrics beside the broker, on the same machine and the same
//! shape of data: the Debian `victoria-metrics` single-node binary on a
//! loopback port with a fresh data directory, fed the load generator's
//! snapshots (one sample per metric, `host` as a label, millisecond
//! timestamps) through one of its import APIs over `connections`
//! keep-alive connections: CSV (`/api/v1/import/csv`, one row per
//! snapshot, the cheapest to parse and the closest to a snapshot) or
//! Prometheus text (`/api/v1/import/prometheus`, a line per sample). Bodies are encoded before the clock starts; the clock
//! stops when every request was answered and `/internal/force_flush`
//! returned, so the samples are searchable. Bytes per sample: the data
//! directory's size after the flush and a short settle, over the samples
//! it holds.

use anyhow::Context;
use broker_agent::generator::SnapshotGenerator;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The Debian package's binary name.
const BINARY: &str = "victoria-metrics";
/// Time VictoriaMetrics gets to merge its freshly flushed parts before
/// its directory is measured.
const SETTLE: Duration = Duration::from_secs(5);

pub struct VmFigures {
    /// Points timed (the warm-up round not included).
    pub points: u64,
    /// Samples sent in all, the warm-up round included.
    pub samples_sent: u64,
    pub secs: f64,
    pub bytes_per_sample: Option<f64>,
    pub samples_found: Option<u64>,
}

impl VmFigures {
    pub fn pps(&self) -> f64 {
        self.points as f64 / self.secs
    }
}

struct Vm {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary, when installed.
pub fn binary() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(BINARY))
            .find(|p| p.is_file())
    })
}

/// One HTTP/1.1 request on a kept-alive connection; the status and body.
async fn request(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    request_with(conn, method, path, "", body).await
}

/// [`request`] with more header lines (each ending in `\r\n`).
pub(crate) async fn request_with(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.get_mut().write_all(head.as_bytes()).await?;
    conn.get_mut().write_all(body).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        conn.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse()?;
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut out = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let n = usize::from_str_radix(line.trim(), 16)?;
            let mut part = vec![0; n + 2];
            conn.read_exact(&mut part).await?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&part[..n]);
        }
    } else {
        out.resize(len, 0);
        conn.read_exact(&mut out).await?;
    }
    Ok((status, String::from_utf8_lossy(&out).into_owned()))
}

pub(crate) async fn connect(port: u16) -> anyhow::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

impl Vm {
    async fn start(binary: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("broker-bench-vm-")
            .tempdir()?;
        let port = crate::port()?;
        let child = Command::new(binary)
            .arg(format!("-storageDataPath={}", dir.path().display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=ERROR")
            // The count of what it holds spans every series, and reads up
            // to now (by default the last 30 s are hidden from queries).
            .arg("-search.maxUniqueTimeseries=10000000")
            .arg("-search.latencyOffset=0s")
            // Query figures are of answering, not of its result cache.
            .arg("-search.disableCache")
            // Its default closes every connection after 2 minutes, which
            // breaks a long import's kept-alive connections mid-request.
            .arg("-http.connTimeout=24h")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let vm = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = connect(port).await
                && let Ok((200, _)) = request(&mut c, "GET", "/health", b"").await
            {
                return Ok(vm);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "victoria-metrics did not answer /health in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// POSTs every body to `path`, over `connections` connections at once.
async fn send_all(
    bodies: Vec<Vec<u8>>,
    connections: usize,
    port: u16,
    path: &std::sync::Arc<String>,
) -> anyhow::Result<()> {
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (queue, path) = (queue.clone(), path.clone());
        tasks.spawn(async move {
            let mut conn = connect(port).await?;
            loop {
                let Some(body) = queue.lock().expect("queue").pop() else {
                    return anyhow::Ok(());
                };
                let (status, text) = request(&mut conn, "POST", &path, &body).await?;
                anyhow::ensure!(status / 100 == 2, "import answered {status}: {text}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Makes what was imported searchable (and written to disk).
async fn flush(port: u16) -> anyhow::Result<()> {
    let mut c = connect(port).await?;
    let (status, text) = request(&mut c, "GET", "/internal/force_flush", b"").await?;
    anyhow::ensure!(status == 200, "force_flush answered {status}: {text}");
    Ok(())
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// How snapshots are sent to VictoriaMetrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Prometheus,
}

/// Sends `points` snapshots of `generator`'s hosts and metrics, `batch`
/// points per request, as the ingest bench's load does (round `r` stamped
/// `now - r` seconds).
pub async fn run(
    binary: &Path,
    format: Format,
    generator: &SnapshotGenerator,
    batch: usize,
    connections: usize,
    points: usize,
) -> anyhow::Result<VmFigures> {
    let vm = Vm::start(binary).await?;
    let (hosts, metrics) = (generator.hosts(), generator.metrics());
    let names = generator.metric_names().to_vec();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    // Round 0 creates every series, untimed: a monitoring system's steady
    // state is new samples of known series, and registering 32 series per
    // new host is most of VictoriaMetrics's work otherwise.
    let mut warmup: Vec<Vec<u8>> = Vec::new();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let mut sent = 0u64;
    'rounds: for round in 0.. {
        for range in generator.batch_ranges(batch) {
            let b = generator.batch(now - round as i64, range);
            let mut body = String::with_capacity(b.points.len() * metrics * 48);
            for p in &b.points {
                let ms = p.timestamp * 1000;
                match format {
                    Format::Csv => {
                        let _ = write!(body, "{},{ms}", p.host_id);
                        for v in &p.values {
                            let _ = write!(body, ",{v}");
                        }
                        body.push('\n');
                    }
                    Format::Prometheus => {
                        for (name, v) in names.iter().zip(&p.values) {
                            let _ = writeln!(body, "{name}{{host=\"{}\"}} {v} {ms}", p.host_id);
                        }
                    }
                }
            }
            if round == 0 {
                warmup.push(body.into_bytes());
                continue;
            }
            sent += b.points.len() as u64;
            bodies.push(body.into_bytes());
            if sent as usize >= points {
                break 'rounds;
            }
        }
    }
    let mib = bodies.iter().map(Vec::len).sum::<usize>() >> 20;
    let path = match format {
        Format::Csv => {
            let mut path = "/api/v1/import/csv?format=1:label:host,2:time:unix_ms".to_string();
            for (i, name) in names.iter().enumerate() {
                let _ = write!(path, ",{}:metric:{name}", i + 3);
            }
            path
        }
        Format::Prometheus => "/api/v1/import/prometheus".to_string(),
    };
    eprintln!("victoria-metrics: {sent} points as {mib} MiB of {format:?}, importing");
    let path = std::sync::Arc::new(path);
    send_all(warmup, connections, vm.port, &path).await?;
    flush(vm.port).await?;
    let started = Instant::now();
    send_all(bodies, connections, vm.port, &path).await?;
    flush(vm.port).await?;
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    // What it holds: one series per (host, metric), counted over the span.
    let query = format!(
        "/api/v1/query?query=sum(count_over_time(%7B__name__%3D~%22.%2B%22%7D%5B7200s%5D))&time={}",
        now + 1
    );
    let mut c = connect(vm.port).await?;
    let samples_found = match request(&mut c, "GET", &query, b"").await {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| {
                j["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
            })
            .map(|f| f as u64),
        _ => None,
    };
    let samples_sent = (sent + hosts as u64) * metrics as u64;
    let samples = samples_found.unwrap_or(samples_sent);
    let bytes = dir_bytes(vm.dir.path());
    Ok(VmFigures {
        points: sent,
        samples_sent,
        secs,
        bytes_per_sample: (samples > 0).then(|| bytes as f64 / samples as f64),
        samples_found,
    })
}

/// VictoriaMetrics loaded by [`load_window`]: running (on `port`) until
/// this is dropped.
pub struct Loaded {
    vm: Vm,
    pub port: u16,
    pub points: u64,
    pub samples: u64,
    pub secs: f64,
    /// On disk after the flush (recent parts may still be in memory).
    pub bytes_per_sample: f64,
    pub rss_bytes: u64,
}

impl Loaded {
    /// Stops VictoriaMetrics gracefully (SIGTERM: it writes every part
    /// to disk) and answers its data directory's bytes per sample then.
    pub fn stop(mut self) -> anyhow::Result<f64> {
        let pid = self.vm.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.vm.child.try_wait()?.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "victoria-metrics did not stop in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(dir_bytes(self.vm.dir.path()) as f64 / self.samples.max(1) as f64)
    }
}

/// Resident memory of process `pid` (Linux `/proc`), 0 if unknown.
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Starts VictoriaMetrics and imports `generator`'s snapshots of every host
/// at `start, start + step, .. end` as CSV, `batch` points per request over
/// `connections` connections, each body built as it is sent (a day of a
/// fleet does not fit in memory as text). Timed until the flush returns.
pub async fn load_window(
    binary: &Path,
    generator: &std::sync::Arc<SnapshotGenerator>,
    start: i64,
    end: i64,
    step: i64,
    batch: usize,
    connections: usize,
) -> anyhow::Result<Loaded> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let vm = Vm::start(binary).await?;
    let names = generator.metric_names().to_vec();
    let mut path = "/api/v1/import/csv?format=1:label:host,2:time:unix_ms".to_string();
    for (i, name) in names.iter().enumerate() {
        let _ = write!(path, ",{}:metric:{name}", i + 3);
    }
    let path = std::sync::Arc::new(path);
    let steps = ((end - start) / step + 1).max(0) as usize;
    let ranges = generator.batch_ranges(batch);
    let jobs = steps * ranges.len();
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let ranges = std::sync::Arc::new(ranges);
    eprintln!(
        "victoria-metrics: importing {} points over {connections} connections",
        steps * generator.hosts()
    );
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (next, ranges, path, generator) = (
            next.clone(),
            ranges.clone(),
            path.clone(),
            generator.clone(),
        );
        let port = vm.port;
        tasks.spawn(async move {
            let mut conn = connect(port).await?;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= jobs {
                    return anyhow::Ok(());
                }
                let ts = start + (j / ranges.len()) as i64 * step;
                let b = generator.batch(ts, ranges[j % ranges.len()].clone());
                let mut body =
                    String::with_capacity(b.points.len() * (b.metric_names.len() * 12 + 32));
                for p in &b.points {
                    let _ = write!(body, "{},{}", p.host_id, p.timestamp * 1000);
                    for v in &p.values {
                        let _ = write!(body, ",{v}");
                    }
                    body.push('\n');
                }
                let (status, text) = request(&mut conn, "POST", &path, body.as_bytes()).await?;
                anyhow::ensure!(status / 100 == 2, "import answered {status}: {text}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    flush(vm.port).await?;
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let points = (steps * generator.hosts()) as u64;
    let samples = points * names.len() as u64;
    let bytes = dir_bytes(vm.dir.path());
    let rss = rss_bytes(vm.child.id());
    Ok(Loaded {
        port: vm.port,
        vm,
        points,
        samples,
        secs,
        bytes_per_sample: bytes as f64 / samples.max(1) as f64,
        rss_bytes: rss,
    })
}
