//! The agent loop behind `broker-agent`: one snapshot of this host every
//! interval, streamed to the gateways over `MonitorService.SendMetrics`.
//!
//! Snapshots wait in a bounded buffer until a gateway acks them. One batch
//! (the oldest waiting snapshots, at most `batch_max`) is in flight at a
//! time; its ack settles each point: stored, rejected for good (logged and
//! counted; resending would not help), or to send again (the broker could
//! not make it durable in time, or the gateway was overloaded or shutting
//! down), which it is after a backoff. When the stream breaks, the batch
//! goes back to the front of the buffer and [`AgentClient::reconnect`]
//! opens a new stream, failing over round the endpoint list with backoff;
//! snapshots keep being taken meanwhile. When the buffer is full the
//! oldest snapshot is dropped, counted and logged: memory stays bounded
//! through a long outage, and the newest data is what is kept.
//!
//! On stop, the agent takes no more snapshots and keeps sending what is
//! waiting for at most `drain_timeout`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use broker_proto::v1::{BatchAck, BatchError, MetricBatch, Point};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::client::{AgentClient, ClientConfig, DisplayChain, jitter_seed, reconnect_backoff};
use crate::error::AgentError;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Snapshots kept while the gateways are unreachable: an hour at 5 s.
pub const DEFAULT_BUFFER: usize = 720;
/// Snapshots per batch when catching up after an outage.
pub const DEFAULT_BATCH_MAX: usize = 100;
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay before sending again what the broker asked to retry: the first,
/// doubled per consecutive retry up to the cap, with jitter.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Gateway endpoints (`http://127.0.0.1:9093`), failed over in order.
    pub endpoints: Vec<String>,
    /// The host id the snapshots carry.
    pub host_id: String,
    /// Labels every point carries (`role=web`).
    pub labels: BTreeMap<String, String>,
    /// Whole seconds, at least 1; snapshots are stamped with the
    /// interval-aligned wall-clock second.
    pub interval: Duration,
    /// Snapshots kept un-acked at most; past it the oldest is dropped.
    pub buffer: usize,
    /// Snapshots per batch at most.
    pub batch_max: usize,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    /// TLS (the gateway's CA) and the ingest token.
    pub security: broker_common::security::ClientSecurity,
}

impl AgentConfig {
    pub fn new(endpoints: Vec<String>, host_id: String) -> Self {
        Self {
            endpoints,
            host_id,
            labels: BTreeMap::new(),
            interval: DEFAULT_INTERVAL,
            buffer: DEFAULT_BUFFER,
            batch_max: DEFAULT_BATCH_MAX,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            connect_timeout: crate::client::DEFAULT_CONNECT_TIMEOUT,
            security: Default::default(),
        }
    }

    /// Checks every value; the error names the first bad one.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |key, problem: String| Err(AgentError::InvalidConfig { key, problem });
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return bad(
                "endpoints",
                "needs at least one endpoint, none empty".into(),
            );
        }
        if let Some(e) = self
            .endpoints
            .iter()
            .find(|e| tonic::transport::Endpoint::from_shared(e.to_string()).is_err())
        {
            return bad("endpoints", format!("{e:?} is not a valid URI"));
        }
        let id = &self.host_id;
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad(
                "host-id",
                format!("{id:?} must be 1 to 128 of [A-Za-z0-9._-]"),
            );
        }
        if self.interval < Duration::from_secs(1) || self.interval.subsec_nanos() != 0 {
            return bad(
                "interval",
                "must be a whole number of seconds, at least 1s".into(),
            );
        }
        for (key, v) in [("buffer", self.buffer), ("batch-max", self.batch_max)] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// What a run did, for its last log line and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentReport {
    /// Snapshots taken.
    pub collected: u64,
    /// Snapshots a gateway acked as stored.
    pub stored: u64,
    /// Snapshots rejected for good (the reason is logged).
    pub rejected: u64,
    /// Snapshots dropped from a full buffer, or still waiting at the end.
    pub dropped: u64,
    /// Snapshots sent more than once.
    pub resent: u64,
    /// Streams opened after the first.
    pub reconnects: u64,
}

/// One snapshot waiting for its ack.
struct Waiting {
    timestamp: i64,
    metrics: Vec<(String, f64)>,
    sent: u32,
}

type Sending = Pin<Box<dyn Future<Output = Result<BatchAck, AgentError>> + Send>>;
type Connecting = Pin<Box<dyn Future<Output = Result<AgentClient, AgentError>> + Send>>;

/// Runs the agent until `stop` completes, then drains. `collect` takes one
/// snapshot (metric name, value); it runs on the agent's task, once per
/// interval.
pub async fn run_agent(
    cfg: AgentConfig,
    mut collect: impl FnMut() -> Vec<(String, f64)> + Send,
    stop: impl Future<Output = ()> + Send,
) -> Result<AgentReport, AgentError> {
    cfg.validate()?;
    let client_config = ClientConfig {
        endpoints: cfg.endpoints.clone(),
        connect_timeout: cfg.connect_timeout,
        window: 1,
        security: cfg.security.clone(),
        ..ClientConfig::new(cfg.endpoints.clone())
    };
    let mut report = AgentReport::default();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut client: Option<AgentClient> = None;
    let mut endpoint = cfg.endpoints.len() - 1;
    let mut connecting: Option<Connecting> = None;
    let mut sending: Option<(Sending, Vec<Waiting>)> = None;
    let mut retry = retry_backoff();
    let mut send_after: Option<Instant> = None;
    let mut connect_after: Option<Instant> = None;
    let mut connected_once = false;
    let mut dropping = false;

    let secs = cfg.interval.as_secs() as i64;
    let mut ticker = tokio::time::interval_at(next_tick(secs), cfg.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_ts: Option<i64> = None;
    let mut stop = std::pin::pin!(stop);
    let mut draining: Option<Instant> = None;
    info!(
        host = %cfg.host_id,
        endpoints = %cfg.endpoints.join(","),
        interval = ?cfg.interval,
        buffer = cfg.buffer,
        "agent starting"
    );

    loop {
        if draining.is_some() && waiting.is_empty() && sending.is_none() {
            break;
        }
        let now = Instant::now();
        if client.is_none() && connecting.is_none() && connect_after.is_none_or(|t| t <= now) {
            connect_after = None;
            let config = client_config.clone();
            let after = endpoint;
            let first = !connected_once;
            connecting = Some(Box::pin(async move {
                if first {
                    AgentClient::connect(&config).await
                } else {
                    AgentClient::reconnect(&config, after, reconnect_backoff()).await
                }
            }));
        }
        if sending.is_none()
            && send_after.is_none_or(|t| t <= now)
            && !waiting.is_empty()
            && let Some(c) = &client
        {
            send_after = None;
            let n = waiting.len().min(cfg.batch_max);
            let mut batch: Vec<Waiting> = waiting.drain(..n).collect();
            for w in &mut batch {
                if w.sent == 1 {
                    report.resent += 1;
                }
                w.sent += 1;
            }
            let msg = to_batch(&cfg, &batch);
            sending = Some((Box::pin(c.send(msg)), batch));
        }
        // The next time a pause ends (a retry's backoff, a reconnect's).
        let wake = [send_after, connect_after].into_iter().flatten().min();
        tokio::select! {
            _ = ticker.tick(), if draining.is_none() => {
                let metrics = collect();
                report.collected += 1;
                // Stamped from the wall clock, so skipped ticks (a
                // suspended process) leave a gap, not a drift.
                let timestamp = stamp(aligned_second(secs), last_ts, secs);
                last_ts = Some(timestamp);
                waiting.push_back(Waiting { timestamp, metrics, sent: 0 });
                if waiting.len() > cfg.buffer {
                    waiting.pop_front();
                    report.dropped += 1;
                    if !dropping {
                        warn!(buffer = cfg.buffer, "snapshot buffer full: dropping the oldest snapshots until a gateway takes them");
                        dropping = true;
                    }
                } else {
                    dropping = false;
                }
            }
            c = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match c {
                    Ok(c) => {
                        if connected_once {
                            report.reconnects += 1;
                        }
                        connected_once = true;
                        endpoint = c.endpoint_index();
                        info!(endpoint = c.endpoint(), waiting = waiting.len(), "agent connected");
                        client = Some(c);
                    }
                    Err(e) => {
                        // Reconnect gave up for now; the next loop starts
                        // over, from the next endpoint, after a pause.
                        warn!(error = %DisplayChain(&e), waiting = waiting.len(), "no gateway reachable; snapshots are kept and sent when one is");
                        endpoint = (endpoint + 1) % cfg.endpoints.len();
                        connected_once = true;
                        connect_after = Some(Instant::now() + crate::client::RECONNECT_BACKOFF_CAP);
                    }
                }
            }
            r = async { sending.as_mut().expect("guarded").0.as_mut().await }, if sending.is_some() => {
                let (_, batch) = sending.take().expect("guarded");
                match r {
                    Ok(ack) => {
                        let again = settle(&cfg, ack, batch, &mut report);
                        if again.is_empty() {
                            retry = retry_backoff();
                            send_after = None;
                        } else {
                            let delay = retry.next().unwrap_or(RETRY_CAP);
                            send_after = Some(Instant::now() + delay);
                            requeue(&mut waiting, again);
                        }
                    }
                    Err(e) => {
                        debug!(error = %DisplayChain(&e), "batch not acked; sending it again on a new stream");
                        client = None;
                        requeue(&mut waiting, batch);
                    }
                }
            }
            _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
            _ = &mut stop, if draining.is_none() => {
                info!(waiting = waiting.len(), "agent stopping: sending what is waiting");
                draining = Some(Instant::now() + cfg.drain_timeout);
            }
            _ = async { tokio::time::sleep_until(draining.expect("guarded")).await }, if draining.is_some() => {
                break;
            }
        }
    }
    let left = waiting.len() + sending.map_or(0, |s| s.1.len());
    if left > 0 {
        warn!(
            left,
            "agent stopped with snapshots not acked (no gateway took them in time)"
        );
        report.dropped += left as u64;
    }
    if let Some(c) = client {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
    }
    info!(
        collected = report.collected,
        stored = report.stored,
        rejected = report.rejected,
        dropped = report.dropped,
        resent = report.resent,
        reconnects = report.reconnects,
        "agent stopped"
    );
    Ok(report)
}

fn retry_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_FIRST)
        .with_max_delay(RETRY_CAP)
        .without_max_times()
        .with_jitter()
        .with_jitter_seed(jitter_seed())
        .build()
}

/// The interval-aligned second nearest to now (a tick fires at the aligned
/// instant, give or take a few milliseconds).
fn aligned_second(interval_secs: i64) -> i64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let second = (now_ms + 500).div_euclid(1000);
    second.div_euclid(interval_secs) * interval_secs
}

/// A snapshot's timestamp: the aligned second, or the next one after the
/// last snapshot's when the clock has not moved on (or went back).
fn stamp(aligned: i64, last: Option<i64>, interval_secs: i64) -> i64 {
    match last {
        Some(l) if aligned <= l => l + interval_secs,
        _ => aligned,
    }
}

/// When the next interval-aligned second comes.
fn next_tick(interval_secs: i64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let next = (now.as_secs() as i64).div_euclid(interval_secs) * interval_secs + interval_secs;
    let wait = Duration::from_secs(next as u64).saturating_sub(now);
    Instant::now() + wait
}

/// Puts `batch` back at the front of `waiting`, in order.
fn requeue(waiting: &mut VecDeque<Waiting>, batch: Vec<Waiting>) {
    for w in batch.into_iter().rev() {
        waiting.push_front(w);
    }
}

/// Settles a batch by its ack: counts what was stored or rejected and
/// returns what should be sent again.
fn settle(
    cfg: &AgentConfig,
    ack: BatchAck,
    batch: Vec<Waiting>,
    report: &mut AgentReport,
) -> Vec<Waiting> {
    let error = BatchError::try_from(ack.batch_error).unwrap_or(BatchError::None);
    match error {
        BatchError::None => {}
        BatchError::Overloaded | BatchError::ShuttingDown => {
            debug!(error = ?error, "gateway refused the batch for now");
            return batch;
        }
        BatchError::TooManyPoints | BatchError::InvalidNameTable => {
            warn!(error = ?error, message = %ack.batch_error_message, "gateway rejected the batch");
            report.rejected += batch.len() as u64;
            return Vec::new();
        }
    }
    let errors: HashMap<u32, _> = ack.errors.into_iter().map(|e| (e.index, e)).collect();
    let mut again = Vec::new();
    for (i, w) in batch.into_iter().enumerate() {
        match errors.get(&(i as u32)) {
            None => report.stored += 1,
            Some(e) if e.retryable => again.push(w),
            Some(e) => {
                warn!(host = %cfg.host_id, timestamp = w.timestamp, reason = e.reason, message = %e.message, "snapshot rejected");
                report.rejected += 1;
            }
        }
    }
    again
}

/// One batch of `snapshots`, with a shared name table.
fn to_batch(cfg: &AgentConfig, snapshots: &[Waiting]) -> MetricBatch {
    let mut batch = MetricBatch::default();
    let mut names: HashMap<&str, u32> = HashMap::new();
    let labels: HashMap<String, String> = cfg
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for w in snapshots {
        let mut point = Point {
            host_id: cfg.host_id.clone(),
            timestamp: w.timestamp,
            labels: labels.clone(),
            ..Default::default()
        };
        for (name, v) in &w.metrics {
            let next = names.len() as u32;
            let i = *names.entry(name.as_str()).or_insert_with(|| {
                batch.metric_names.push(name.clone());
                next
            });
            point.name_index.push(i);
            point.values.push(*v);
        }
        batch.points.push(point);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::PointError;

    fn waiting(ts: i64) -> Waiting {
        Waiting {
            timestamp: ts,
            metrics: vec![("a".into(), 1.0), ("b".into(), ts as f64)],
            sent: 0,
        }
    }

    fn cfg() -> AgentConfig {
        AgentConfig::new(vec!["http://127.0.0.1:1".into()], "h".into())
    }

    #[test]
    fn timestamps_follow_the_clock_and_never_repeat() {
        assert_eq!(stamp(100, None, 5), 100);
        assert_eq!(stamp(110, Some(100), 5), 110, "a skipped tick is a gap");
        assert_eq!(stamp(100, Some(100), 5), 105);
        assert_eq!(stamp(95, Some(100), 5), 105, "the clock went back");
        let a = aligned_second(5);
        assert_eq!(a % 5, 0);
    }

    #[test]
    fn batches_share_one_name_table() {
        let b = to_batch(&cfg(), &[waiting(10), waiting(15)]);
        assert_eq!(b.metric_names, vec!["a", "b"]);
        assert_eq!(b.points[1].name_index, vec![0, 1]);
        assert_eq!(b.points[1].values, vec![1.0, 15.0]);
        assert_eq!(b.points[1].timestamp, 15);
    }

    #[test]
    fn acks_settle_points_stored_rejected_or_to_send_again() {
        let mut report = AgentReport::default();
        let ack = BatchAck {
            errors: vec![
                PointError {
                    index: 1,
                    retryable: true,
                    ..Default::default()
                },
                PointError {
                    index: 2,
                    retryable: false,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let again = settle(
            &cfg(),
            ack,
            vec![waiting(1), waiting(2), waiting(3)],
            &mut report,
        );
        assert_eq!(
            again.iter().map(|w| w.timestamp).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!((report.stored, report.rejected), (1, 1));
        let overloaded = BatchAck {
            batch_error: BatchError::Overloaded as i32,
            ..Default::default()
        };
        assert_eq!(
            settle(&cfg(), overloaded, vec![waiting(4)], &mut report).len(),
            1
        );
    }

    #[test]
    fn requeued_snapshots_go_back_in_front_in_order() {
        let mut q: VecDeque<Waiting> = [waiting(3)].into_iter().collect();
        requeue(&mut q, vec![waiting(1), waiting(2)]);
        assert_eq!(
            q.iter().map(|w| w.timestamp).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn bad_config_is_named() {
        let mut c = cfg();
        c.host_id = "a b".into();
        assert!(c.validate().unwrap_err().to_string().contains("host-id"));
        let mut c = cfg();
        c.interval = Duration::from_millis(1500);
        assert!(c.validate().unwrap_err().to_string().contains("interval"));
    }
}
