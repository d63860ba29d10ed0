//! One `redis-server` child process: [`RedisServer`] and its [`RedisOptions`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::RedisProcessError;
use crate::port::{free_port, free_port_with_bus};
use crate::resp::{Conn, Reply, ReplyText, info_lookup};

/// How long a server may take to answer PING after it was spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `redis-cli` invocation through [`RedisServer::cli`] may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a launch is retried when the chosen port turns out taken.
pub(crate) const MAX_LAUNCH_ATTEMPTS: u32 = 5;

const LOG_FILE: &str = "redis.log";
const STDERR_FILE: &str = "stderr.log";
const LOG_TAIL_LINES: usize = 20;
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const ADDR_IN_USE: &str = "Address already in use";

/// How to launch a [`RedisServer`]. `RedisOptions::default()` gives a
/// non-persistent server on a free loopback port using `$REDIS_SERVER` or
/// `redis-server` from `PATH`.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// The port to listen on; `None` picks a free loopback port.
    pub port: Option<u16>,
    /// Enable the append-only file (`appendfsync everysec`), so that
    /// [`RedisServer::restart`] replays the data. Default: off.
    pub appendonly: bool,
    /// Extra `redis-server` arguments appended after the defaults, e.g.
    /// `["--maxmemory", "64mb"]`; later arguments override earlier ones.
    pub extra_args: Vec<String>,
    /// The `redis-server` binary; default `$REDIS_SERVER`, else
    /// `redis-server` from `PATH`. `redis-cli` is taken from `$REDIS_CLI`,
    /// else next to this binary if it exists there, else from `PATH`.
    pub binary: Option<PathBuf>,
}

/// What kind of process this is and how to build its command line.
#[derive(Debug)]
pub(crate) enum Mode {
    Server {
        appendonly: bool,
        extra_args: Vec<String>,
    },
    Sentinel {
        conf: PathBuf,
    },
}

/// One `redis-server` child process listening on `127.0.0.1:port`, with its
/// own temp dir as working dir. Dropping it kills the process (SIGKILL),
/// reaps it and removes the temp dir.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    pid: u32,
    port: u16,
    binary: PathBuf,
    cli_binary: PathBuf,
    mode: Mode,
    cluster_bus: bool,
    // Declared last so it is removed after the process is gone.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with [`RedisOptions::default`].
    pub fn start() -> Result<Self, RedisProcessError> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with the given options and waits until it answers
    /// PING (at most [`START_TIMEOUT`]). When the port is picked
    /// automatically and turns out to be taken, retries with a new port
    /// (up to 5 times).
    pub fn start_with(opts: RedisOptions) -> Result<Self, RedisProcessError> {
        let binary = resolve_server_binary(opts.binary.as_deref());
        let cluster_bus = is_cluster_enabled(&opts.extra_args);
        let mode = Mode::Server {
            appendonly: opts.appendonly,
            extra_args: opts.extra_args,
        };
        let server = Self::new(binary, mode, cluster_bus)?;
        server.launch_on(opts.port)
    }

    /// Starts a sentinel (`redis-server <conf> --sentinel`) monitoring
    /// `127.0.0.1:master_port` as `service` with quorum 1.
    pub(crate) fn start_sentinel(
        binary: PathBuf,
        service: &str,
        master_port: u16,
    ) -> Result<Self, RedisProcessError> {
        let mut server = Self::new(
            binary,
            Mode::Server {
                appendonly: false,
                extra_args: Vec::new(),
            },
            false,
        )?;
        let conf = server.dir.path().join("sentinel.conf");
        let text = format!(
            "sentinel monitor {service} 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds {service} 5000\n\
             sentinel failover-timeout {service} 60000\n\
             sentinel parallel-syncs {service} 1\n"
        );
        fs::write(&conf, text)
            .map_err(|e| RedisProcessError::io(format!("write {}", conf.display()), e))?;
        server.mode = Mode::Sentinel { conf };
        server.launch_on(None)
    }

    fn new(binary: PathBuf, mode: Mode, cluster_bus: bool) -> Result<Self, RedisProcessError> {
        let dir = tempfile::Builder::new()
            .prefix("redis-process-")
            .tempdir()
            .map_err(|e| RedisProcessError::io("create a temp dir", e))?;
        let cli_binary = resolve_cli_binary(&binary);
        Ok(RedisServer {
            child: None,
            pid: 0,
            port: 0,
            binary,
            cli_binary,
            mode,
            cluster_bus,
            dir,
        })
    }

    /// Launches on `fixed` or on picked ports, retrying picked ports that
    /// turn out to be taken.
    fn launch_on(mut self, fixed: Option<u16>) -> Result<Self, RedisProcessError> {
        let mut last_detail = String::new();
        for attempt in 1..=MAX_LAUNCH_ATTEMPTS {
            self.port = match fixed {
                Some(port) => port,
                None => self.pick_port()?,
            };
            match self.launch() {
                Ok(()) => return Ok(self),
                Err(e) if fixed.is_none() && is_addr_in_use(&e) => {
                    tracing::debug!(
                        port = self.port,
                        attempt,
                        "port taken, retrying with another"
                    );
                    last_detail = e.to_string();
                }
                Err(e) => return Err(e),
            }
        }
        Err(RedisProcessError::NoFreePort {
            attempts: MAX_LAUNCH_ATTEMPTS,
            detail: last_detail,
        })
    }

    fn pick_port(&self) -> Result<u16, RedisProcessError> {
        let picked = if self.cluster_bus {
            free_port_with_bus(20)
        } else {
            free_port()
        };
        picked.map_err(|e| RedisProcessError::NoFreePort {
            attempts: if self.cluster_bus { 20 } else { 1 },
            detail: e.to_string(),
        })
    }

    /// Spawns the process on `self.port` and waits for it to answer PING.
    fn launch(&mut self) -> Result<(), RedisProcessError> {
        let dir = self.dir.path().to_path_buf();
        let log = dir.join(LOG_FILE);
        let stderr_path = dir.join(STDERR_FILE);
        let offsets = (file_len(&log), file_len(&stderr_path));
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .map_err(|e| RedisProcessError::io(format!("open {}", stderr_path.display()), e))?;

        let port = self.port.to_string();
        let mut cmd = Command::new(&self.binary);
        match &self.mode {
            Mode::Server {
                appendonly,
                extra_args,
            } => {
                cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", if *appendonly { "yes" } else { "no" }]);
                if *appendonly {
                    cmd.args(["--appendfsync", "everysec"]);
                }
                cmd.arg("--dir")
                    .arg(&dir)
                    .args(["--daemonize", "no", "--protected-mode", "yes"])
                    .arg("--logfile")
                    .arg(&log)
                    .args(extra_args);
            }
            Mode::Sentinel { conf } => {
                cmd.arg(conf)
                    .arg("--sentinel")
                    .args(["--port", &port, "--bind", "127.0.0.1"])
                    .arg("--dir")
                    .arg(&dir)
                    .args(["--daemonize", "no", "--protected-mode", "yes"])
                    .arg("--logfile")
                    .arg(&log);
            }
        }
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));

        let child = cmd.spawn().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RedisProcessError::ServerNotFound {
                    binary: self.binary.clone(),
                }
            } else {
                RedisProcessError::io(format!("spawn {}", self.binary.display()), e)
            }
        })?;
        self.pid = child.id();
        self.child = Some(child);
        tracing::debug!(port = self.port, pid = self.pid, dir = %dir.display(), "redis-server spawned");

        match self.wait_ready(offsets) {
            Ok(()) => {
                tracing::debug!(port = self.port, pid = self.pid, "redis-server ready");
                Ok(())
            }
            Err(e) => {
                self.stop();
                Err(e)
            }
        }
    }

    fn wait_ready(&mut self, offsets: (u64, u64)) -> Result<(), RedisProcessError> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(RedisProcessError::Exited {
                    port: self.port,
                    status,
                    log_tail: self.log_tail_since(offsets),
                });
            }
            if probe(self.port, self.pid) {
                return Ok(());
            }
            if started.elapsed() >= START_TIMEOUT {
                self.stop();
                return Err(RedisProcessError::StartTimeout {
                    port: self.port,
                    waited: started.elapsed(),
                    log_tail: self.log_tail_since(offsets),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The tail of the log file and stderr written since `offsets`.
    fn log_tail_since(&self, offsets: (u64, u64)) -> String {
        let dir = self.dir.path();
        let log = tail_since(&dir.join(LOG_FILE), offsets.0);
        let stderr = tail_since(&dir.join(STDERR_FILE), offsets.1);
        let mut out = String::new();
        if !log.is_empty() {
            out.push_str(&log);
        }
        if !stderr.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str("stderr: ");
            out.push_str(&stderr);
        }
        if out.is_empty() {
            out.push_str("(log is empty)");
        }
        out
    }

    /// The last 20 lines of its log file (and stderr, if any), for error
    /// messages and debugging.
    pub fn log_tail(&self) -> String {
        self.log_tail_since((0, 0))
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the current (or last) child process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its working dir (a temp dir removed on drop): log file, AOF, nodes.conf.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// Whether the child process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the process (SIGKILL, no graceful shutdown) and reaps it.
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(port = self.port, pid = self.pid, "redis-server stopped");
        }
    }

    /// Stops the process if it runs and starts it again on the same port
    /// and dir (so an AOF, if enabled, is replayed), then waits for PING.
    pub fn restart(&mut self) -> Result<(), RedisProcessError> {
        self.stop();
        let mut attempt = 1;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if attempt < MAX_LAUNCH_ATTEMPTS && is_addr_in_use(&e) => {
                    attempt += 1;
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT <args>` (with `-e`, so error
    /// replies fail too) and returns its trimmed stdout. Fails when the exit
    /// status is non-zero or it runs longer than [`CLI_TIMEOUT`].
    pub fn cli(&self, args: &[&str]) -> Result<String, RedisProcessError> {
        let port = self.port.to_string();
        let mut full: Vec<&str> = vec!["-e", "-h", "127.0.0.1", "-p", &port];
        full.extend_from_slice(args);
        run_cli(&self.cli_binary, &full, CLI_TIMEOUT)
    }

    /// `INFO <section>` and returns the value of `field`, e.g.
    /// `info_field("memory", "used_memory")`.
    pub fn info_field(&self, section: &str, field: &str) -> Result<String, RedisProcessError> {
        let info = self.command(&["INFO", section])?;
        info_lookup(&info, field).ok_or_else(|| RedisProcessError::InfoFieldMissing {
            section: section.to_owned(),
            field: field.to_owned(),
        })
    }

    /// Sends one command over a direct TCP connection and returns the reply
    /// as text (arrays joined by spaces). Error replies are errors.
    pub fn command(&self, args: &[&str]) -> Result<String, RedisProcessError> {
        match self.command_reply(args)? {
            Reply::Error(message) => Err(RedisProcessError::Command {
                command: args.join(" "),
                port: self.port,
                message,
            }),
            reply => Ok(reply.text()),
        }
    }

    pub(crate) fn command_reply(&self, args: &[&str]) -> Result<Reply, RedisProcessError> {
        Conn::connect(self.port, Duration::from_secs(2))
            .and_then(|mut conn| conn.command(args))
            .map_err(|e| RedisProcessError::Command {
                command: args.join(" "),
                port: self.port,
                message: e.to_string(),
            })
    }

    pub(crate) fn binary(&self) -> &Path {
        &self.binary
    }

    pub(crate) fn cli_binary(&self) -> &Path {
        &self.cli_binary
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when a PING answers +PONG and the server's `process_id` is `pid`
/// (so a foreign server that grabbed the port is not mistaken for ours).
fn probe(port: u16, pid: u32) -> bool {
    let Ok(mut conn) = Conn::connect(port, PROBE_TIMEOUT) else {
        return false;
    };
    if !matches!(conn.command(&["PING"]), Ok(Reply::SimpleString(ref s)) if s == b"PONG") {
        return false;
    }
    match conn.command(&["INFO", "server"]) {
        Ok(Reply::BulkString(info)) => {
            let info = String::from_utf8_lossy(&info);
            info_lookup(&info, "process_id").as_deref() == Some(pid.to_string().as_str())
        }
        _ => false,
    }
}

fn is_addr_in_use(e: &RedisProcessError) -> bool {
    matches!(e, RedisProcessError::Exited { log_tail, .. } if log_tail.contains(ADDR_IN_USE))
}

fn is_cluster_enabled(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--cluster-enabled" && w[1].eq_ignore_ascii_case("yes"))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub(crate) fn resolve_server_binary(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| env_path("REDIS_SERVER"))
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn resolve_cli_binary(server: &Path) -> PathBuf {
    if let Some(cli) = env_path("REDIS_CLI") {
        return cli;
    }
    if let Some(parent) = server.parent().filter(|p| !p.as_os_str().is_empty()) {
        let sibling = parent.join("redis-cli");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("redis-cli")
}

/// Runs `binary args...` with stdin closed, collects stdout and stderr and
/// kills it after `timeout`. Returns trimmed stdout on exit status 0.
pub(crate) fn run_cli(
    binary: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<String, RedisProcessError> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RedisProcessError::CliNotFound {
                    binary: binary.to_path_buf(),
                }
            } else {
                RedisProcessError::io(format!("spawn {}", binary.display()), e)
            }
        })?;
    let stdout = child.stdout.take().map(spawn_reader);
    let stderr = child.stderr.take().map(spawn_reader);

    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("timed out after {}s", timeout.as_secs_f32()));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("wait failed: {e}"));
            }
        }
    };
    let join = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default()
    };
    let out = join(stdout);
    let err = join(stderr);
    let failure = match status {
        Ok(status) if status.success() => return Ok(out),
        Ok(status) => status.to_string(),
        Err(reason) => reason,
    };
    Err(RedisProcessError::CliFailed {
        args: args.join(" "),
        status: failure,
        stderr: if err.is_empty() { out } else { err },
    })
}

fn spawn_reader<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last [`LOG_TAIL_LINES`] lines of `path` written after `offset`
/// (reading at most the last 64 KiB).
fn tail_since(path: &Path, offset: u64) -> String {
    const MAX_READ: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(len.saturating_sub(MAX_READ)).min(len);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_cluster_mode_and_addr_in_use() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_cluster_enabled(&args(&["--cluster-enabled", "yes"])));
        assert!(!is_cluster_enabled(&args(&["--cluster-enabled", "no"])));
        assert!(!is_cluster_enabled(&args(&["--maxmemory", "1mb"])));
        let status = Command::new("false").status().unwrap();
        let taken = RedisProcessError::Exited {
            port: 1,
            status,
            log_tail: "bind: Address already in use".into(),
        };
        assert!(is_addr_in_use(&taken));
    }

    #[test]
    fn tail_reads_only_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "old\n").unwrap();
        let offset = file_len(&path);
        let lines: String = (0..30).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, format!("old\n{lines}")).unwrap();
        let tail = tail_since(&path, offset);
        assert!(!tail.contains("old"));
        assert!(
            tail.starts_with("line 10\n") && tail.ends_with("line 29"),
            "{tail}"
        );
        assert_eq!(tail_since(&dir.path().join("missing"), 0), "");
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RedisServer>();
        check::<crate::RedisCluster>();
        check::<crate::RedisSentinel>();
        check::<RedisProcessError>();
    }
}
