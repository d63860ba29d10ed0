//! The load loop behind `broker-loadgen`, as a library so a benchmark or a
//! fault-injection test can run the same load in-process and read the
//! [`LoadReport`].
//!
//! Hosts are cut into batches of `batch_hosts`; one round sends every batch
//! once. Batches are numbered across rounds (`k = round * batches + j`) and
//! batch `k` travels on connection `k % connections`, so every connection
//! carries load even with fewer batches than connections, and a host stays on
//! one connection whenever the batch count is a multiple of the connection
//! count. Connections are spread round robin across the endpoints.
//!
//! Nothing acknowledged is lost, and nothing un-acknowledged is forgotten:
//! each connection keeps every batch it sent in its outbox until the batch's
//! points are settled (stored, rejected for good, or given up on), and at
//! most `window` batches un-settled at once, in flight or waiting for a
//! resend. When a stream breaks, the connection gets a new one
//! ([`AgentClient::reconnect`]: exponential backoff with jitter, failing over
//! to the next endpoint on each failed connect) and sends what was
//! outstanding again. Points an ack marks `retryable`, and whole batches
//! refused as overloaded or shutting down, go again too, as a batch of just
//! those points after a backoff delay. A resend carries the same points (host
//! ids, timestamps, values: the generator is deterministic), so the broker's
//! idempotent writes make it harmless. A batch gets at most `max_resends`
//! resends, whatever their cause; then its points count as failed.
//!
//! A run stops issuing new batches at the first bound reached (duration,
//! points, or the caller's stop future), then drains: it keeps resending
//! un-acked batches until they are acked or `drain_timeout` passes; whatever
//! is still un-acked then counts as failed. Each distinct point ends in
//! exactly one of acked, rejected and failed.

use std::future::Future;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::ExponentialBuilder;
use broker_proto::v1::{BatchAck, BatchError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::client::{AgentClient, ClientConfig, DisplayChain, jitter_seed, reconnect_backoff};
use crate::error::AgentError;
use crate::generator::{Mix, SnapshotGenerator};
use crate::outbox::{BatchId, BatchSpec, Outbox, Settled};
use crate::report::{AckOutcome, Counters, LoadReport, Progress};

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9093";
pub const DEFAULT_HOSTS: usize = 100;
pub const DEFAULT_METRICS: usize = 32;
/// node_exporter-shaped values, so that what the broker stores compresses
/// like real data.
pub const DEFAULT_MIX: Mix = Mix::Realistic;
pub const DEFAULT_BATCH_HOSTS: usize = 100;
pub const DEFAULT_CONNECTIONS: usize = 2;
pub const DEFAULT_WINDOW: usize = crate::client::DEFAULT_WINDOW;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Resends one batch may get (whatever their cause) before its points fail.
pub const DEFAULT_MAX_RESENDS: u32 = 10;
/// Resend backoff of one batch: the first delay, doubled per resend up to the
/// cap, each with up to as much again of random jitter.
pub const RESEND_BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const RESEND_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// How far back unpaced timestamps step before wrapping: rounds within this
/// many write distinct points, and they stay well inside the broker's TTL.
pub const TIMESTAMP_SPAN_SECS: u64 = 3600;
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Wait for the gateway to end the streams after the run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How fast batches go out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Like real agents: every host sends one snapshot per interval (whole
    /// seconds), stamped with the interval-aligned wall-clock second; the
    /// batches of one interval are spread evenly across it.
    Interval(Duration),
    /// A fixed number of points per second across all connections,
    /// timestamps as for [`Pacing::Max`].
    Rate(f64),
    /// As fast as acks allow. Round `r` is stamped `start - (r % 3600)`, so
    /// rounds write distinct points for up to an hour of rounds and stay
    /// inside the broker's accepted window.
    Max,
}

impl FromStr for Pacing {
    type Err = String;

    /// `max`, or points per second (`50000`) for `--rate`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Pacing::Max);
        }
        match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Pacing::Rate(r)),
            _ => Err(format!(
                "expected `max` or a positive number of points per second, got {s:?}"
            )),
        }
    }
}

/// One load run. [`LoadConfig::default`] matches the `broker-loadgen`
/// defaults.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub endpoints: Vec<String>,
    pub hosts: usize,
    pub metrics: usize,
    /// Which metrics the hosts report, and how their values move. A test
    /// that recomputes stored values with [`generator::value`] needs
    /// [`Mix::Synthetic`]; [`generator::value_of`] takes either.
    ///
    /// [`generator::value`]: crate::generator::value
    /// [`generator::value_of`]: crate::generator::value_of
    pub mix: Mix,
    /// Points per batch.
    pub batch_hosts: usize,
    pub connections: usize,
    /// Outstanding batches per connection.
    pub window: usize,
    pub pacing: Pacing,
    /// Stop issuing after this long. At least one of `duration` and
    /// `max_points` must be set.
    pub duration: Option<Duration>,
    /// Stop after sending this many points.
    pub max_points: Option<u64>,
    /// Attach `region`/`role` labels to points.
    pub labels: bool,
    /// Print a progress line to stderr every second (for
    /// [`run_load`]; [`run_load_with`] hands progress to its callback).
    pub print_progress: bool,
    pub connect_timeout: Duration,
    /// After the last new batch, how long to keep resending un-acked ones
    /// and waiting for their acks; what is un-acked then counts as failed.
    pub drain_timeout: Duration,
    /// Resends one batch may get (broken streams, retryable points, an
    /// overloaded gateway) before its points count as failed; 0 resends
    /// nothing.
    pub max_resends: u32,
    /// Keep the `(host_idx, ts)` of every acked point in
    /// [`LoadReport::acked_points`], so a test can look each one up in the
    /// store. Costs 16 bytes per acked point; off by default.
    pub record_acked: bool,
    /// TLS (the gateway's CA) and the ingest token.
    pub security: broker_common::security::ClientSecurity,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            endpoints: vec![DEFAULT_ENDPOINT.to_string()],
            hosts: DEFAULT_HOSTS,
            metrics: DEFAULT_METRICS,
            mix: DEFAULT_MIX,
            batch_hosts: DEFAULT_BATCH_HOSTS,
            connections: DEFAULT_CONNECTIONS,
            window: DEFAULT_WINDOW,
            pacing: Pacing::Interval(DEFAULT_INTERVAL),
            duration: Some(DEFAULT_DURATION),
            max_points: None,
            labels: false,
            print_progress: false,
            connect_timeout: crate::client::DEFAULT_CONNECT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_resends: DEFAULT_MAX_RESENDS,
            record_acked: false,
            security: Default::default(),
        }
    }
}

impl LoadConfig {
    /// Checks every value and reports the first problem with its key.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |key, problem: &str| {
            Err(AgentError::InvalidConfig {
                key,
                problem: problem.to_string(),
            })
        };
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return bad("endpoints", "needs at least one endpoint, none empty");
        }
        // Checked here so that a bad entry cannot surface only at a failover.
        if let Some(e) = self
            .endpoints
            .iter()
            .find(|e| tonic::transport::Endpoint::from_shared(e.to_string()).is_err())
        {
            return bad("endpoints", &format!("{e:?} is not a valid URI"));
        }
        for (key, v) in [
            ("hosts", self.hosts),
            ("metrics", self.metrics),
            ("batch_hosts", self.batch_hosts),
            ("connections", self.connections),
            ("window", self.window),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        match self.pacing {
            Pacing::Interval(i) if i < Duration::from_secs(1) || i.subsec_nanos() != 0 => {
                return bad("interval", "must be a whole number of seconds, at least 1s");
            }
            Pacing::Rate(r) if !(r.is_finite() && r > 0.0) => {
                return bad("rate", "must be a positive number of points per second");
            }
            _ => {}
        }
        if self.duration.is_none() && self.max_points.is_none() {
            return bad("duration", "a run needs a duration or a point count");
        }
        if self.duration == Some(Duration::ZERO) {
            return bad("duration", "must be positive");
        }
        if self.max_points == Some(0) {
            return bad("points", "must be at least 1");
        }
        // Points are recorded and resent by u32 host index.
        if u32::try_from(self.hosts).is_err() {
            return bad("hosts", "must fit in 32 bits");
        }
        Ok(())
    }
}

/// Runs the load; prints progress to stderr when `cfg.print_progress`.
pub async fn run_load(cfg: LoadConfig) -> Result<LoadReport, AgentError> {
    let print = cfg.print_progress;
    run_load_with(
        cfg,
        move |p: &Progress| {
            if print {
                eprintln!("{p}");
            }
        },
        std::future::pending(),
    )
    .await
}

/// Runs the load, calling `on_progress` every second, until a bound in `cfg`
/// is reached or `stop` completes (then drains as for a bound).
///
/// Fails before sending anything when the config is invalid or a connection
/// cannot reach any endpoint. Once running, broken streams are replaced and
/// un-acked batches resent (see the module docs); the report says what
/// became of every point.
pub async fn run_load_with(
    cfg: LoadConfig,
    mut on_progress: impl FnMut(&Progress) + Send,
    stop: impl Future<Output = ()> + Send,
) -> Result<LoadReport, AgentError> {
    cfg.validate()?;
    let generator = Arc::new(
        SnapshotGenerator::new(cfg.hosts, cfg.metrics)
            .with_mix(cfg.mix)
            .with_labels(cfg.labels),
    );
    let ranges = generator.batch_ranges(cfg.batch_hosts);
    let connections = cfg.connections;
    let ranges: Arc<[Range<usize>]> = ranges.into();

    // Connect everything before the clock starts.
    let client_configs: Vec<ClientConfig> = (0..connections)
        .map(|c| ClientConfig {
            endpoints: cfg.endpoints.clone(),
            first_endpoint: c % cfg.endpoints.len(),
            window: cfg.window,
            connect_timeout: cfg.connect_timeout,
            open_timeout: crate::client::DEFAULT_OPEN_TIMEOUT,
            security: cfg.security.clone(),
        })
        .collect();
    let clients = futures::future::join_all(client_configs.iter().map(AgentClient::connect)).await;
    let clients = clients.into_iter().collect::<Result<Vec<_>, _>>()?;

    let counters = Arc::new(Counters::new(cfg.record_acked));
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let schedule = Arc::new(Schedule::new(&cfg, start, SystemTime::now(), ranges.len()));
    let budget = cfg.max_points.map(|n| Arc::new(AtomicU64::new(n)));
    let resend_backoff = ExponentialBuilder::default()
        .with_min_delay(RESEND_BACKOFF_FIRST)
        .with_max_delay(RESEND_BACKOFF_CAP)
        .with_max_times(cfg.max_resends as usize)
        .with_jitter();
    info!(
        endpoints = %cfg.endpoints.join(","),
        connections,
        mix = %cfg.mix,
        batches_per_round = ranges.len(),
        pacing = ?cfg.pacing,
        duration = ?cfg.duration,
        max_points = ?cfg.max_points,
        max_resends = cfg.max_resends,
        drain_timeout = ?cfg.drain_timeout,
        "load starting"
    );

    let mut tasks = JoinSet::new();
    for (c, (client, client_config)) in clients.into_iter().zip(client_configs).enumerate() {
        let conn = Connection {
            id: c,
            endpoint: client.endpoint_index(),
            client: Some(client),
            generation: 0,
            client_config,
            reconnect: reconnect_backoff(),
            ranges: ranges.clone(),
            first_batch: c as u64,
            stride: connections as u64,
            window: cfg.window,
            generator: generator.clone(),
            schedule: schedule.clone(),
            budget: budget.clone(),
            counters: counters.clone(),
            stop: stop_rx.clone(),
            drain_timeout: cfg.drain_timeout,
            outbox: Outbox::new(resend_backoff, jitter_seed(), cfg.record_acked),
        };
        tasks.spawn(conn.run());
    }

    let deadline = cfg.duration.map(|d| start + d);
    let mut ticker = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous = (Duration::ZERO, 0u64);
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    let mut finished = start;
    let mut clients = Vec::new();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok((done, client))) => {
                    finished = finished.max(done);
                    clients.extend(client);
                }
                Some(Err(e)) => {
                    error!(error = %e, "load connection task failed");
                    finished = Instant::now();
                }
                None => break,
            },
            _ = ticker.tick() => {
                let elapsed = start.elapsed();
                let p = Progress::new(elapsed, counters.totals(), previous, counters.latency().p99_ms);
                previous = (elapsed, p.acked);
                on_progress(&p);
            }
            _ = sleep_until_opt(deadline), if !stopping => {
                stopping = true;
                let _ = stop_tx.send(true);
            }
            _ = &mut stop, if !stopping => {
                info!("load stopped early");
                stopping = true;
                let _ = stop_tx.send(true);
            }
        }
    }
    let report = counters.report(finished - start);
    // Every ack is in or given up on; let the gateway end the streams
    // cleanly, briefly. Outside the measured time.
    let close_all = futures::future::join_all(clients.into_iter().map(AgentClient::close));
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close_all).await;
    info!(
        sent = report.sent,
        acked = report.acked,
        rejected = report.rejected,
        resent = report.resent,
        resends_batches = report.resends_batches,
        failed = report.failed,
        points_per_s = report.points_per_s(),
        "load finished"
    );
    Ok(report)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// When each batch goes out and what timestamp it carries.
#[derive(Debug)]
struct Schedule {
    pacing: Pacing,
    start: Instant,
    /// Wall-clock seconds at `start`, with fraction.
    start_wall: f64,
    batches_per_round: usize,
    /// Points scheduled so far, for [`Pacing::Rate`].
    scheduled_points: AtomicU64,
}

impl Schedule {
    fn new(cfg: &LoadConfig, start: Instant, now: SystemTime, batches_per_round: usize) -> Self {
        let start_wall = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Self {
            pacing: cfg.pacing,
            start,
            start_wall,
            batches_per_round: batches_per_round.max(1),
            scheduled_points: AtomicU64::new(0),
        }
    }

    /// Timestamp and send time of batch `j` of round `round`, `points` long.
    fn slot(&self, round: u64, j: usize, points: u64) -> (i64, Instant) {
        match self.pacing {
            Pacing::Interval(interval) => {
                let secs = interval.as_secs().max(1);
                let ts = interval_timestamp(self.start_wall as i64, secs, round);
                let offset = secs as f64 * j as f64 / self.batches_per_round as f64;
                let at = ts as f64 + offset - self.start_wall;
                (ts, self.instant_after(at))
            }
            Pacing::Rate(rate) => {
                let before = self.scheduled_points.fetch_add(points, Ordering::Relaxed);
                let ts = unpaced_timestamp(self.start_wall as i64, round);
                (ts, self.instant_after(before as f64 / rate))
            }
            Pacing::Max => (unpaced_timestamp(self.start_wall as i64, round), self.start),
        }
    }

    /// `start + secs`, or `start` for times already past.
    fn instant_after(&self, secs: f64) -> Instant {
        if secs > 0.0 && secs.is_finite() {
            self.start + Duration::from_secs_f64(secs.min(1e9))
        } else {
            self.start
        }
    }
}

/// The interval slot `round` rounds after the one `start_secs` falls in.
fn interval_timestamp(start_secs: i64, interval_secs: u64, round: u64) -> i64 {
    let i = interval_secs as i64;
    start_secs.div_euclid(i) * i + (round as i64) * i
}

/// Steps back one second per round from the start, wrapping after
/// [`TIMESTAMP_SPAN_SECS`].
fn unpaced_timestamp(start_secs: i64, round: u64) -> i64 {
    start_secs - (round % TIMESTAMP_SPAN_SECS) as i64
}

/// Round and index within the round of global batch number `k`.
fn round_and_index(k: u64, batches_per_round: usize) -> (u64, usize) {
    let n = batches_per_round as u64;
    (k / n, (k % n) as usize)
}

/// Takes up to `want` points from the shared budget; 0 when it is spent.
fn claim(budget: &AtomicU64, want: u64) -> u64 {
    let mut granted = 0;
    let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
        granted = left.min(want);
        Some(left - granted)
    });
    granted
}

/// A batch chosen and timed, not yet sent.
#[derive(Debug)]
struct Next {
    hosts: Range<usize>,
    ts: i64,
    at: Instant,
}

/// One connection's share of the load.
struct Connection {
    id: usize,
    /// The current stream; `None` after it broke, until the next send needs
    /// one.
    client: Option<AgentClient>,
    /// Bumped per new stream, so a failed send retires only the stream it
    /// went out on.
    generation: u64,
    /// Index of the endpoint of the current (or last) stream; reconnects
    /// start from the one after it.
    endpoint: usize,
    client_config: ClientConfig,
    reconnect: ExponentialBuilder,
    /// The host ranges of one round.
    ranges: Arc<[Range<usize>]>,
    /// This connection sends batches `first_batch + n * stride`.
    first_batch: u64,
    stride: u64,
    window: usize,
    generator: Arc<SnapshotGenerator>,
    schedule: Arc<Schedule>,
    budget: Option<Arc<AtomicU64>>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    drain_timeout: Duration,
    /// Every batch sent and not settled.
    outbox: Outbox,
}

/// A send, answered or failed.
struct Done {
    id: BatchId,
    generation: u64,
    points: u64,
    latency: Duration,
    result: Result<BatchAck, AgentError>,
}

/// Whether a stream is there to send on.
enum Link {
    Ready,
    /// The drain deadline passed while reconnecting.
    NotNow,
    /// [`AgentClient::reconnect`] ran out of attempts.
    Lost,
}

/// Why points are given up on (`LoadReport::failed_by_reason`).
const FAILED_DRAIN_TIMEOUT: &str = "drain_timeout";
const FAILED_RESENDS_EXHAUSTED: &str = "resends_exhausted";
const FAILED_UNREACHABLE: &str = "unreachable";
const FAILED_SEND_ERROR: &str = "send_error";
/// Why points go again after a send failed (`LoadReport::retries_by_reason`).
const RETRY_STREAM_CLOSED: &str = "stream_closed";

impl Connection {
    /// Sends until stopped and drained; returns when it finished and the
    /// client to close.
    async fn run(mut self) -> (Instant, Option<AgentClient>) {
        let mut inflight = FuturesUnordered::new();
        let mut k = self.first_batch;
        let mut next: Option<Next> = None;
        let mut stopping = *self.stop.borrow();
        let mut drain_deadline = None;

        loop {
            if stopping && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + self.drain_timeout);
                if !self.outbox.is_empty() {
                    info!(
                        connection = self.id,
                        batches = self.outbox.len(),
                        waiting = self.outbox.waiting(),
                        points = self.outbox.points(),
                        "draining un-acked batches"
                    );
                }
            }
            if stopping && self.outbox.is_empty() {
                break;
            }
            if !stopping && next.is_none() {
                next = self.prepare(&mut k);
                stopping = next.is_none();
                continue;
            }
            // A new batch needs room in the outbox: un-acked batches, those
            // waiting for a resend included, count against the window.
            let has_room = !stopping && self.outbox.len() < self.window;
            let new_at = next.as_ref().filter(|_| has_room).map(|n| n.at);
            let send_at = earliest(self.outbox.next_due(), new_at);
            tokio::select! {
                biased;
                _ = self.stop.changed(), if !stopping => stopping = true,
                Some(done) = inflight.next(), if !inflight.is_empty() => self.settle(done),
                _ = sleep_until_opt(drain_deadline), if stopping => {
                    let (points, batches) = self.outbox.give_up();
                    warn!(connection = self.id, batches, points, "drain timeout: giving up on un-acked points");
                    self.counters.record_failed(points, batches, FAILED_DRAIN_TIMEOUT);
                    break;
                }
                _ = sleep_until_opt(send_at), if send_at.is_some() => {
                    match self.ensure_connected(&mut stopping, &mut drain_deadline).await {
                        Link::Ready => {}
                        Link::NotNow => continue,
                        Link::Lost if stopping => {
                            let (points, batches) = self.outbox.give_up();
                            error!(connection = self.id, batches, points, "no gateway reachable while draining: giving up on un-acked points");
                            self.counters.record_failed(points, batches, FAILED_UNREACHABLE);
                            break;
                        }
                        Link::Lost => {
                            // Stop issuing; the drain tries once more.
                            error!(connection = self.id, "no gateway reachable: no new batches on this connection");
                            stopping = true;
                            continue;
                        }
                    }
                    let now = Instant::now();
                    if let Some((id, spec)) = self.outbox.take_due(now) {
                        self.counters.record_resent(spec.len());
                        debug!(connection = self.id, batch = id, points = spec.len(), ts = spec.ts, "resending");
                        inflight.push(self.send(id, spec));
                    } else if let Some(n) = next.take_if(|n| has_room && !stopping && n.at <= now) {
                        let spec = BatchSpec::new(n.ts, n.hosts);
                        self.counters.record_sent(spec.len());
                        let id = self.outbox.push(spec.clone());
                        inflight.push(self.send(id, spec));
                    }
                }
            }
        }
        (Instant::now(), self.client.take())
    }

    /// Picks batch `k`, claims its points from the budget and advances `k`.
    /// `None` when the budget is spent.
    fn prepare(&self, k: &mut u64) -> Option<Next> {
        let (round, j) = round_and_index(*k, self.ranges.len());
        let mut hosts = self.ranges[j].clone();
        if let Some(budget) = &self.budget {
            let granted = claim(budget, hosts.len() as u64) as usize;
            if granted == 0 {
                return None;
            }
            hosts.end = hosts.start + granted;
        }
        let (ts, at) = self.schedule.slot(round, j, hosts.len() as u64);
        *k += self.stride;
        Some(Next { hosts, ts, at })
    }

    /// Puts batch `id` on the current stream (there must be one).
    fn send(&self, id: BatchId, spec: BatchSpec) -> impl Future<Output = Done> + Send + 'static {
        let client = self.client.as_ref().expect("send only when connected");
        let batch = self
            .generator
            .batch_of_hosts(spec.ts, spec.hosts.iter().map(|&h| h as usize));
        let points = spec.len();
        let generation = self.generation;
        let t0 = Instant::now();
        let send = client.send(batch);
        async move {
            let result = send.await;
            Done {
                id,
                generation,
                points,
                latency: t0.elapsed(),
                result,
            }
        }
    }

    /// Makes sure there is a live stream, reconnecting (with backoff and
    /// failover) when the last one broke. A stop arriving meanwhile starts
    /// the drain clock, and the drain deadline cuts the reconnect short.
    async fn ensure_connected(
        &mut self,
        stopping: &mut bool,
        drain_deadline: &mut Option<Instant>,
    ) -> Link {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Link::Ready;
        }
        self.client = None;
        let reconnect = AgentClient::reconnect(&self.client_config, self.endpoint, self.reconnect);
        let mut reconnect = std::pin::pin!(reconnect);
        loop {
            tokio::select! {
                connected = &mut reconnect => return match connected {
                    Ok(client) => {
                        info!(
                            connection = self.id,
                            endpoint = client.endpoint(),
                            pending_batches = self.outbox.len(),
                            "reconnected"
                        );
                        self.endpoint = client.endpoint_index();
                        self.generation += 1;
                        self.client = Some(client);
                        Link::Ready
                    }
                    Err(e) => {
                        warn!(connection = self.id, error = %DisplayChain(&e), "reconnect gave up");
                        Link::Lost
                    }
                },
                _ = self.stop.changed(), if !*stopping => {
                    *stopping = true;
                    drain_deadline.get_or_insert(Instant::now() + self.drain_timeout);
                }
                _ = sleep_until_opt(*drain_deadline), if drain_deadline.is_some() => return Link::NotNow,
            }
        }
    }

    /// Counts what an ack (or a failed send) settled and lets the outbox
    /// keep what goes again.
    fn settle(&mut self, done: Done) {
        let now = Instant::now();
        let (settled, failed_reason) = match done.result {
            Ok(ack) => {
                let outcome = AckOutcome::classify(&ack, done.points);
                for reason in self.counters.record_ack(&outcome, done.latency) {
                    let detail = ack
                        .errors
                        .first()
                        .map(|e| e.message.as_str())
                        .filter(|m| !m.is_empty())
                        .unwrap_or(ack.batch_error_message.as_str());
                    warn!(connection = self.id, seq = ack.seq, reason = %reason, detail, "gateway did not store points");
                }
                if outcome.unaccounted > 0 {
                    warn!(
                        connection = self.id,
                        seq = ack.seq,
                        points = done.points,
                        accepted = ack.accepted,
                        errors = ack.errors.len(),
                        "ack does not account for every point; resending them"
                    );
                }
                if ack.batch_error == BatchError::ShuttingDown as i32
                    && done.generation == self.generation
                {
                    // Its batches in flight still get acks; new sends go to
                    // the next gateway.
                    info!(connection = self.id, "gateway shutting down: failing over");
                    self.client = None;
                }
                (
                    self.outbox.acked(done.id, &outcome, now),
                    FAILED_RESENDS_EXHAUSTED,
                )
            }
            Err(e) => {
                let retryable = e.is_retryable();
                if retryable {
                    if done.generation == self.generation {
                        // The stream it went out on is gone; the next send
                        // reconnects.
                        self.client = None;
                    }
                    self.counters.record_retry(done.points, RETRY_STREAM_CLOSED);
                    (
                        self.outbox.send_failed(done.id, true, now),
                        FAILED_RESENDS_EXHAUSTED,
                    )
                } else {
                    warn!(connection = self.id, error = %DisplayChain(&e), "batch failed");
                    (
                        self.outbox.send_failed(done.id, false, now),
                        FAILED_SEND_ERROR,
                    )
                }
            }
        };
        let Some(Settled {
            acked_points,
            retry,
            failed,
        }) = settled
        else {
            return;
        };
        self.counters.record_acked_points(&acked_points);
        if let Some((points, delay)) = retry {
            debug!(connection = self.id, batch = done.id, points, retry_in = ?delay, "resend scheduled");
        }
        if failed > 0 {
            warn!(
                connection = self.id,
                batch = done.id,
                points = failed,
                reason = failed_reason,
                "giving up on points"
            );
            self.counters.record_failed(failed, 1, failed_reason);
        }
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod loopback;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_timestamps_are_aligned_slots() {
        // 12:00:03 with 5 s interval: slot 12:00:00, then every 5 s.
        let start = 1_760_000_003;
        assert_eq!(interval_timestamp(start, 5, 0), 1_760_000_000);
        assert_eq!(interval_timestamp(start, 5, 1), 1_760_000_005);
        assert_eq!(interval_timestamp(start, 5, 12), 1_760_000_060);
        assert_eq!(interval_timestamp(start, 1, 3), start + 3);
    }

    #[test]
    fn unpaced_timestamps_step_back_and_wrap() {
        let start = 1_760_000_000;
        assert_eq!(unpaced_timestamp(start, 0), start);
        assert_eq!(unpaced_timestamp(start, 1), start - 1);
        assert_eq!(unpaced_timestamp(start, 3599), start - 3599);
        assert_eq!(unpaced_timestamp(start, 3600), start);
    }

    #[test]
    fn every_batch_of_every_round_goes_to_exactly_one_connection() {
        for (batches, connections) in [(1, 2), (3, 2), (4, 2), (5, 3), (10, 1)] {
            let rounds = 6u64;
            let mut seen = std::collections::BTreeMap::new();
            for c in 0..connections {
                let mut k = c as u64;
                while k < rounds * batches as u64 {
                    *seen.entry(round_and_index(k, batches)).or_insert(0) += 1;
                    k += connections as u64;
                }
            }
            assert_eq!(seen.len() as u64, rounds * batches as u64);
            assert!(seen.values().all(|&n| n == 1));
        }
        // Divisible counts keep a batch (its hosts) on one connection.
        let conn_of = |round: u64, j: u64| (round * 4 + j) % 2;
        assert_eq!(conn_of(0, 1), conn_of(7, 1));
    }

    #[test]
    fn budget_claims_never_overshoot() {
        let b = AtomicU64::new(250);
        assert_eq!(claim(&b, 100), 100);
        assert_eq!(claim(&b, 100), 100);
        assert_eq!(claim(&b, 100), 50);
        assert_eq!(claim(&b, 100), 0);
    }

    fn schedule(pacing: Pacing, start_wall: f64, batches: usize) -> Schedule {
        Schedule {
            pacing,
            start: Instant::now(),
            start_wall,
            batches_per_round: batches,
            scheduled_points: AtomicU64::new(0),
        }
    }

    #[test]
    fn interval_batches_spread_across_the_interval() {
        let s = schedule(Pacing::Interval(Duration::from_secs(5)), 1_760_000_000.0, 4);
        let (ts0, at0) = s.slot(0, 0, 100);
        let (ts2, at2) = s.slot(0, 2, 100);
        let (ts_next, at_next) = s.slot(1, 0, 100);
        assert_eq!(
            (ts0, ts2, ts_next),
            (1_760_000_000, 1_760_000_000, 1_760_000_005)
        );
        assert_eq!(at0, s.start);
        assert_eq!(at2 - s.start, Duration::from_millis(2500));
        assert_eq!(at_next - s.start, Duration::from_secs(5));
        // Started mid-slot: batches already due go at once.
        let late = schedule(Pacing::Interval(Duration::from_secs(5)), 1_760_000_003.0, 4);
        assert_eq!(late.slot(0, 1, 100).1, late.start);
        assert_eq!(
            late.slot(0, 3, 100).1 - late.start,
            Duration::from_millis(750)
        );
    }

    #[test]
    fn rate_pacing_spaces_points() {
        let s = schedule(Pacing::Rate(1000.0), 1_760_000_000.0, 10);
        assert_eq!(s.slot(0, 0, 100).1, s.start);
        assert_eq!(s.slot(0, 1, 100).1 - s.start, Duration::from_millis(100));
        assert_eq!(s.slot(0, 2, 100).1 - s.start, Duration::from_millis(200));
        assert_eq!(s.slot(1, 0, 100).0, 1_760_000_000 - 1);
    }

    #[test]
    fn pacing_parses() {
        assert_eq!("max".parse::<Pacing>(), Ok(Pacing::Max));
        assert_eq!("MAX".parse::<Pacing>(), Ok(Pacing::Max));
        assert_eq!("2500".parse::<Pacing>(), Ok(Pacing::Rate(2500.0)));
        assert!("0".parse::<Pacing>().is_err());
        assert!("fast".parse::<Pacing>().is_err());
    }

    #[test]
    fn config_validation_names_the_key() {
        assert!(LoadConfig::default().validate().is_ok());
        let key_of = |cfg: LoadConfig| match cfg.validate() {
            Err(AgentError::InvalidConfig { key, .. }) => key,
            other => panic!("expected invalid config, got {other:?}"),
        };
        assert_eq!(
            key_of(LoadConfig {
                endpoints: vec![],
                ..Default::default()
            }),
            "endpoints"
        );
        assert_eq!(
            key_of(LoadConfig {
                window: 0,
                ..Default::default()
            }),
            "window"
        );
        assert_eq!(
            key_of(LoadConfig {
                endpoints: vec!["http://127.0.0.1:1".into(), "not a uri".into()],
                ..Default::default()
            }),
            "endpoints"
        );
        let defaults = LoadConfig::default();
        assert_eq!(defaults.drain_timeout, Duration::from_secs(60));
        assert_eq!(defaults.max_resends, 10);
        assert!(!defaults.record_acked);
        assert_eq!(
            key_of(LoadConfig {
                pacing: Pacing::Interval(Duration::from_millis(1500)),
                ..Default::default()
            }),
            "interval"
        );
        assert_eq!(
            key_of(LoadConfig {
                duration: None,
                max_points: None,
                ..Default::default()
            }),
            "duration"
        );
        assert!(
            LoadConfig {
                duration: None,
                max_points: Some(10),
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn reconnect_backoff_doubles_to_the_cap_with_jitter_and_ends() {
        use backon::BackoffBuilder;
        let delays: Vec<Duration> = reconnect_backoff().build().collect();
        assert_eq!(delays.len(), crate::client::DEFAULT_RECONNECT_ATTEMPTS);
        let mut base = crate::client::RECONNECT_BACKOFF_FIRST;
        for d in &delays {
            assert!(*d >= base && *d < base * 2, "{d:?} for base {base:?}");
            base = (base * 2).min(crate::client::RECONNECT_BACKOFF_CAP);
        }
        assert_eq!(base, crate::client::RECONNECT_BACKOFF_CAP);
    }

    #[test]
    fn earliest_of_optional_instants() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(earliest(Some(later), Some(now)), Some(now));
        assert_eq!(earliest(None, Some(later)), Some(later));
        assert_eq!(earliest(Some(now), None), Some(now));
        assert_eq!(earliest(None, None), None);
    }

    #[tokio::test]
    async fn unreachable_gateway_fails_before_sending() {
        let (endpoint, _held) = broker_common::serve::refusing_loopback_endpoint().unwrap();
        let cfg = LoadConfig {
            endpoints: vec![endpoint.clone()],
            duration: Some(Duration::from_secs(1)),
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let err = run_load(cfg).await.unwrap_err();
        assert!(err.to_string().contains(&endpoint), "{err}");
    }
}
