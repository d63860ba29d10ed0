//! What the real-process test suites share: the sandbox of `broker run`
//! processes ([`broker_sandbox`]), a durable Redis, the acked-point check
//! and the acked-count timeline.

#![allow(dead_code)]

use broker_agent::generator::{SnapshotGenerator, host_id, value};
use broker_agent::load::{LoadConfig, Pacing, run_load_with};
use broker_proto::v1::{ClusterState, MemberState};
use broker_tests::Reader;
use cluster_client::ClusterClient;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// Each suite uses some of these.
#[allow(unused_imports)]
pub use broker_sandbox::{COMPOSE, Program, Sandbox, SandboxBuilder, Service, overlay, port};

pub const BROKER: &str = env!("CARGO_BIN_EXE_broker");

/// `broker run`: what the suites run each service with.
pub fn broker() -> Program {
    Program::new(BROKER, &["run"])
}

/// A sandbox of `broker run` processes.
pub fn sandbox() -> SandboxBuilder {
    Sandbox::builder(broker())
}

/// Acked-point counts over time, from the load's progress callback.
#[derive(Clone, Default)]
pub struct Timeline(pub Arc<Mutex<Vec<(Instant, u64)>>>);

impl Timeline {
    /// The longest time the acked count stood still: from the first
    /// sample at a count to the first sample past it.
    pub fn longest_stall(&self) -> Duration {
        let samples = self.0.lock().unwrap();
        let mut longest = Duration::ZERO;
        let mut since: Option<(Instant, u64)> = None;
        for &(t, acked) in samples.iter() {
            match since {
                Some((t0, a0)) if acked == a0 => longest = longest.max(t.duration_since(t0)),
                _ => since = Some((t, acked)),
            }
        }
        longest
    }

    /// [`Timeline::longest_stall`] among the samples taken from `from`
    /// to `to`.
    pub fn longest_stall_between(&self, from: Instant, to: Instant) -> Duration {
        let samples: Vec<(Instant, u64)> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .copied()
            .collect();
        Timeline(Arc::new(Mutex::new(samples))).longest_stall()
    }

    /// Points acked at the last sample taken by `at` (0 before any).
    pub fn acked_at(&self, at: Instant) -> u64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map_or(0, |(_, a)| *a)
    }

    /// Points acked so far.
    pub fn acked(&self) -> u64 {
        self.0.lock().unwrap().last().map_or(0, |(_, a)| *a)
    }

    /// Waits until `more` points past those acked now are acked: the load
    /// is flowing (again), whatever happened before. What a test waits on
    /// before its next step, instead of sleeping "long enough".
    pub async fn acked_more(&self, more: u64, within: Duration) {
        let target = self.acked() + more;
        let deadline = Instant::now() + within;
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "the load acked {} of the {target} points waited for within {within:?}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Time from `healed` to the first progress sample whose acked count
    /// grew past the count at `healed`.
    pub fn recovery_after(&self, healed: Instant) -> Option<Duration> {
        let samples = self.0.lock().unwrap();
        let base = samples
            .iter()
            .rev()
            .find(|(t, _)| *t <= healed)
            .map_or(0, |(_, a)| *a);
        samples
            .iter()
            .find(|(t, a)| *t > healed && *a > base)
            .map(|(t, _)| t.duration_since(healed))
    }
}

pub struct Outcome {
    pub sent: u64,
    pub acked: u64,
    pub found: u64,
    pub missing: u64,
    /// Hosts with acked points that the host index (or their series set)
    /// does not hold.
    pub unindexed: u64,
}

/// Every acked point must be in Redis with every value the agent sent
/// (the default layout).
pub async fn verify(
    redis_url: &str,
    report: &broker_agent::LoadReport,
    hosts: usize,
    metrics: usize,
) -> Outcome {
    verify_layout(
        broker_common::config::DEFAULT_LAYOUT,
        redis_url,
        report,
        hosts,
        metrics,
    )
    .await
}

/// Every acked point must be readable through `layout` with every value
/// the agent sent, and every host with acked points must be in the host
/// index with every metric in its series set. Each host's acked range is
/// read at once, 16 hosts per
/// read and 8 reads in flight, so a Redis behind Docker's port proxy
/// answers in seconds, not minutes.
pub async fn verify_layout(
    layout: &str,
    redis_url: &str,
    report: &broker_agent::LoadReport,
    hosts: usize,
    metrics: usize,
) -> Outcome {
    use futures::StreamExt;
    use std::collections::BTreeMap;
    use storage_layout::RangeReq;
    let names: Vec<String> = SnapshotGenerator::new(hosts, metrics)
        .metric_names()
        .to_vec();
    let layout = storage_layout::by_name(layout).expect("a layout name");
    let r = Reader::connect(redis_url).await;
    let acked = report.acked_points.as_ref().expect("record_acked was set");
    let mut by_host: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for (h, ts) in acked {
        by_host.entry(*h).or_default().push(*ts);
    }
    let reqs: Vec<(RangeReq, Vec<i64>, usize)> = by_host
        .into_iter()
        .map(|(h, ts)| {
            let h = h as usize;
            let req = RangeReq::seconds(
                host_id(h),
                *ts.iter().min().expect("one point"),
                *ts.iter().max().expect("one point"),
            );
            (req, ts, h)
        })
        .collect();
    let reads: Vec<_> = reqs
        .chunks(16)
        .map(|part| {
            let (layout, db, names) = (&layout, r.client(), &names);
            async move {
                let ranges: Vec<RangeReq> = part.iter().map(|(q, _, _)| q.clone()).collect();
                let frames = layout
                    .frames(db, &ranges, &[], None)
                    .await
                    .expect("read the layout");
                let (mut found, mut missing) = (0u64, Vec::new());
                for ((q, ts, h), f) in part.iter().zip(frames) {
                    let f = f.into_seconds();
                    for &t in ts {
                        let ok = names
                            .iter()
                            .enumerate()
                            .all(|(m, n)| f.value_at(n, t) == value(*h, t, m))
                            && f.names_at(t).len() == metrics;
                        if ok {
                            found += 1;
                        } else {
                            let got: Vec<f64> = names.iter().map(|n| f.value_at(n, t)).collect();
                            missing.push(format!("{} {t}: {got:?}", q.host));
                        }
                    }
                }
                (found, missing)
            }
        })
        .collect();
    let results: Vec<(u64, Vec<String>)> = futures::stream::iter(reads)
        .buffer_unordered(8)
        .collect()
        .await;
    let (mut found, mut missing) = (0, 0);
    for (f, m) in results {
        for example in m.iter().take(3usize.saturating_sub(missing as usize)) {
            eprintln!("not (yet) in redis: {example}");
        }
        found += f;
        missing += m.len() as u64;
    }
    let indexed: std::collections::HashSet<String> = storage_layout::hosts::list(r.client(), 0)
        .await
        .expect("read the host index")
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    let hosts: Vec<String> = reqs.iter().map(|(q, _, _)| q.host.clone()).collect();
    let series = storage_layout::hosts::series(r.client(), &hosts, 0)
        .await
        .expect("read the series sets");
    let mut sorted_names = names.clone();
    sorted_names.sort();
    let unindexed = hosts
        .iter()
        .zip(&series)
        .filter(|(h, s)| !indexed.contains(*h) || **s != sorted_names)
        .inspect(|(h, s)| eprintln!("not (yet) indexed: {h} (series {s:?})"))
        .count() as u64;
    Outcome {
        sent: report.sent,
        acked: acked.len() as u64,
        found,
        missing,
        unindexed,
    }
}

/// A steady load of 2,000 points/s from `hosts` hosts over two streams to
/// `endpoints` for `duration`, recording every acked point, with a
/// timeline of acked counts. The task ends after draining (at most 60 s).
pub fn steady_load(
    endpoints: Vec<String>,
    hosts: usize,
    metrics: usize,
    duration: Duration,
) -> (
    tokio::task::JoinHandle<Result<broker_agent::LoadReport, broker_agent::AgentError>>,
    Timeline,
) {
    steady_load_until(
        endpoints,
        hosts,
        metrics,
        duration,
        std::future::pending::<()>(),
    )
}

/// Points per second the steady load offers.
pub const LOAD_RATE: f64 = 2_000.0;

/// [`steady_load`] that also ends when `stop` resolves (`duration` still
/// bounds it): a fault scenario ends its load a set time after the fault
/// heals, so a slow warm-up cannot push the fault past the load's end.
pub fn steady_load_until(
    endpoints: Vec<String>,
    hosts: usize,
    metrics: usize,
    duration: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    tokio::task::JoinHandle<Result<broker_agent::LoadReport, broker_agent::AgentError>>,
    Timeline,
) {
    let timeline = Timeline::default();
    let samples = timeline.clone();
    let load = tokio::spawn(run_load_with(
        LoadConfig {
            endpoints,
            hosts,
            metrics,
            // `verify_layout` checks the values with `generator::value`.
            mix: broker_agent::generator::Mix::Synthetic,
            batch_hosts: 50,
            connections: 2,
            window: 4,
            pacing: Pacing::Rate(LOAD_RATE),
            duration: Some(duration),
            max_points: None,
            record_acked: true,
            drain_timeout: Duration::from_secs(60),
            ..LoadConfig::default()
        },
        move |p: &broker_agent::Progress| {
            samples.0.lock().unwrap().push((Instant::now(), p.acked));
        },
        stop,
    ));
    (load, timeline)
}

/// A member's committed state.
pub fn member_state(s: &ClusterState, id: &str) -> Option<MemberState> {
    s.members
        .iter()
        .find(|m| m.id == id)
        .and_then(|m| MemberState::try_from(m.state).ok())
}

/// Polls cluster-ctl until `pred` holds; panics after `timeout` naming
/// `what` and the last state seen.
pub async fn until(
    client: &ClusterClient,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&ClusterState) -> bool,
) -> (Duration, ClusterState) {
    let start = Instant::now();
    loop {
        let last = match client.members().await {
            Ok(s) if pred(&s) => return (start.elapsed(), s),
            Ok(s) => format!("{:?}", members_line(&s)),
            Err(e) => e.to_string(),
        };
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn members_line(s: &ClusterState) -> Vec<String> {
    s.members
        .iter()
        .map(|m| {
            let state = MemberState::try_from(m.state).map_or("?", |s| s.as_str_name());
            format!("{}={state}", m.id)
        })
        .collect()
}
pub mod netns;
