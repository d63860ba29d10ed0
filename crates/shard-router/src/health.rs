//! What the router knows of each writer's reachability, and the background
//! probes that bring a down writer back.
//!
//! A writer is **up** until forwards to it keep failing with a transient
//! status (see [`crate::router::retryable`]): it is marked **down** when a
//! forward fails after its whole retry budget, or sooner, after
//! [`DOWN_AFTER_FAILED_ATTEMPTS`] consecutive failed attempts counted over
//! every forward to it (concurrent batches find a dead writer fast, and the
//! in-flight retries to it then stop and fail over). Any answer resets the
//! count.
//!
//! While a writer is down one task per writer probes it with
//! `grpc.health.v1` (`""` and `broker.v1.WriterService` must both be
//! SERVING; the server turns `""` to NOT_SERVING when it shuts down), backing
//! off exponentially (with jitter) from `router.retry.initial_backoff` up to
//! [`PROBE_MAX_DELAY`]; a writer that flaps (down again within
//! [`FLAP_WINDOW`] of coming back) starts its probes later each time. The
//! writer is up again when a probe answers or when any forward to it
//! succeeds. Probes end with the router: dropping it cancels them.
//!
//! An in-process writer (`WriterClient::Local`) cannot be unreachable: its
//! failures are counted like any other's but never mark it down (there is no
//! network between the router and it, and one-process mode has no other
//! writer to fail over to).

use backon::{BackoffBuilder, ExponentialBuilder};
use broker_common::security::{AuthChannel, ClientSecurity};
use internal_clients::WRITER_SERVICE_NAME;
use internal_clients::WriterClient;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Consecutive failed attempts (over all forwards) that mark a writer down
/// before any single forward has used up its retries; the seed's health
/// checks also give up after 3 failures.
pub const DOWN_AFTER_FAILED_ATTEMPTS: u32 = 3;

/// Longest wait between two probes of a down writer.
pub const PROBE_MAX_DELAY: Duration = Duration::from_secs(5);

/// A writer that goes down again within this time of coming back (it
/// answers health checks but fails writes) starts its next probes at twice
/// the previous first delay, up to [`PROBE_MAX_DELAY`], so a flapping writer
/// settles at one try every few seconds instead of one per batch.
pub const FLAP_WINDOW: Duration = Duration::from_secs(30);

/// A snapshot of one writer's health, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterStatus {
    /// Ring id of the writer.
    pub id: String,
    /// False while the writer is marked down (its share goes to its ring
    /// successors).
    pub up: bool,
    /// How long it has been down.
    pub down_for: Option<Duration>,
    /// Failed attempts since the last answer.
    pub consecutive_failures: u32,
}

/// How the writer is reached, i.e. how to probe it.
enum Target {
    /// In this process: always reachable, never marked down.
    Local,
    /// Behind a gRPC endpoint (`http://host:port`), reached with the
    /// security of the data channel.
    Remote(String, ClientSecurity),
}

#[derive(Default)]
struct State {
    /// `Some` while the writer is marked down.
    down_since: Option<Instant>,
    /// When it was last marked up again.
    back_at: Option<Instant>,
    /// First delay of the current (or last) round of probes.
    first_probe_delay: Duration,
    /// A probe task is running for this writer. Changed only together with
    /// `down_since` under the lock, so a writer that goes down again while
    /// its old probe is exiting always gets a probe.
    probing: bool,
}

struct WriterHealth {
    id: String,
    target: Target,
    /// Mirror of `state.down_since.is_none()`, read without the lock on
    /// the routing path.
    up: AtomicBool,
    /// Consecutive failed attempts; outside the lock so that a success to
    /// a healthy writer touches no lock.
    failures: AtomicU32,
    state: Mutex<State>,
    /// Latencies of its last successful forwards (for the hedge delay).
    latency: Mutex<crate::hedge::LatencyWindow>,
    /// Hedges in a row it lost (another writer stored the copy first).
    lost_hedges: AtomicU32,
    /// `broker_router_writer_up{writer}`.
    gauge: Gauge,
}

struct Shared {
    /// Aligned with `ring.nodes()`.
    writers: Vec<WriterHealth>,
    /// Writers marked down; 0 lets routing skip the failover path.
    down: AtomicUsize,
    /// Cancelled when the router is dropped: probes stop.
    stop: CancellationToken,
    probe_min_delay: Duration,
    probe_timeout: Duration,
}

/// Per-writer health, aligned with the ring's nodes. Dropping it (with the
/// router) stops the probes.
pub(crate) struct Health {
    shared: Arc<Shared>,
}

impl Drop for Health {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Poisoning cannot leave `State` half-updated (every update is a few plain
/// stores), so a poisoned lock is still usable.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Health {
    /// Every writer starts up. `writers` is aligned with `ring.nodes()`;
    /// `gauge(id)` gives each writer's `up` gauge.
    pub(crate) fn new<'a>(
        writers: impl IntoIterator<Item = (&'a str, &'a WriterClient)>,
        gauge: impl Fn(&str) -> Gauge,
        probe_min_delay: Duration,
        probe_timeout: Duration,
    ) -> Self {
        let writers = writers
            .into_iter()
            .map(|(id, client)| {
                let g = gauge(id);
                g.set(1);
                WriterHealth {
                    id: id.to_string(),
                    target: match client {
                        WriterClient::Local(_) => Target::Local,
                        WriterClient::Remote { addr, security, .. } => {
                            Target::Remote(addr.clone(), security.clone())
                        }
                    },
                    up: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    state: Mutex::new(State::default()),
                    latency: Mutex::default(),
                    lost_hedges: AtomicU32::new(0),
                    gauge: g,
                }
            })
            .collect();
        Self {
            shared: Arc::new(Shared {
                writers,
                down: AtomicUsize::new(0),
                stop: CancellationToken::new(),
                probe_min_delay,
                probe_timeout,
            }),
        }
    }

    /// `None` when every writer is up (the common case, no allocation);
    /// otherwise which ones are.
    pub(crate) fn up_if_any_down(&self) -> Option<Vec<bool>> {
        if self.shared.down.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(self.up_all())
    }

    /// Which writers are up, by ring index.
    pub(crate) fn up_all(&self) -> Vec<bool> {
        self.shared
            .writers
            .iter()
            .map(|w| w.up.load(Ordering::Acquire))
            .collect()
    }

    pub(crate) fn is_up(&self, i: usize) -> bool {
        self.shared.writers[i].up.load(Ordering::Acquire)
    }

    /// The writer answered (success, or an error that says nothing about
    /// reachability): reset its failure count and mark it up.
    pub(crate) fn answered(&self, i: usize) {
        let w = &self.shared.writers[i];
        if w.failures.load(Ordering::Relaxed) != 0 {
            w.failures.store(0, Ordering::Relaxed);
        }
        if !w.up.load(Ordering::Acquire) {
            self.shared.mark_up(i, &mut lock(&w.state));
        }
    }

    /// A forward attempt to writer `i` succeeded in `took`.
    pub(crate) fn observe(&self, i: usize, took: Duration) {
        let w = &self.shared.writers[i];
        w.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(took);
        if w.lost_hedges.load(Ordering::Relaxed) != 0 {
            w.lost_hedges.store(0, Ordering::Relaxed);
        }
    }

    /// How long a forward to writer `i` may go unanswered before it is
    /// hedged (see [`crate::hedge`]).
    pub(crate) fn hedge_delay(
        &self,
        i: usize,
        min_delay: Duration,
        write_timeout: Duration,
    ) -> Option<Duration> {
        let w = &self.shared.writers[i];
        let window = w.latency.lock().unwrap_or_else(|e| e.into_inner());
        crate::hedge::hedge_delay(&window, min_delay, write_timeout)
    }

    /// Writer `i` lost a hedge: the copy sent to other writers was stored
    /// while it had not answered. After `eject_after` in a row (0: never)
    /// it is marked down like an unreachable writer.
    pub(crate) fn hedge_lost(&self, i: usize, eject_after: u32) {
        let w = &self.shared.writers[i];
        let lost = w
            .lost_hedges
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if eject_after > 0 && lost >= eject_after && w.up.load(Ordering::Acquire) {
            tracing::warn!(writer = %w.id, lost_hedges = lost, "writer answers too slowly");
            self.mark_down(i, &mut lock(&w.state));
        }
    }

    /// One attempt failed with a transient status.
    pub(crate) fn attempt_failed(&self, i: usize) {
        let w = &self.shared.writers[i];
        let failures = w.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if failures >= DOWN_AFTER_FAILED_ATTEMPTS && w.up.load(Ordering::Acquire) {
            self.mark_down(i, &mut lock(&w.state));
        }
    }

    /// A forward failed after its whole retry budget.
    pub(crate) fn forward_failed(&self, i: usize) {
        let mut st = lock(&self.shared.writers[i].state);
        self.mark_down(i, &mut st);
    }

    fn mark_down(&self, i: usize, st: &mut State) {
        let w = &self.shared.writers[i];
        if matches!(w.target, Target::Local) || st.down_since.is_some() {
            return;
        }
        let now = Instant::now();
        st.first_probe_delay = match st.back_at {
            Some(back) if now.duration_since(back) < FLAP_WINDOW => (st.first_probe_delay * 2)
                .max(self.shared.probe_min_delay)
                .min(PROBE_MAX_DELAY.max(self.shared.probe_min_delay)),
            _ => self.shared.probe_min_delay,
        };
        st.down_since = Some(now);
        w.up.store(false, Ordering::Release);
        self.shared.down.fetch_add(1, Ordering::AcqRel);
        w.gauge.set(0);
        tracing::warn!(
            writer = %w.id,
            failures = w.failures.load(Ordering::Relaxed),
            "writer marked down, its share moves to ring successors"
        );
        if !st.probing {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    st.probing = true;
                    rt.spawn(probe_until_back(
                        self.shared.clone(),
                        i,
                        st.first_probe_delay,
                    ));
                }
                // Only reachable from a caller outside tokio; forwards
                // still come back to it through `answered`.
                Err(_) => tracing::error!(writer = %w.id, "no runtime to probe the writer in"),
            }
        }
    }

    /// Every writer's health, in ring order.
    pub(crate) fn status(&self) -> Vec<WriterStatus> {
        self.shared
            .writers
            .iter()
            .map(|w| {
                let st = lock(&w.state);
                WriterStatus {
                    id: w.id.clone(),
                    up: st.down_since.is_none(),
                    down_for: st.down_since.map(|s| s.elapsed()),
                    consecutive_failures: w.failures.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn shared_weak(&self) -> std::sync::Weak<impl Sized + use<>> {
        Arc::downgrade(&self.shared)
    }
}

impl Shared {
    fn mark_up(&self, i: usize, st: &mut State) {
        let Some(since) = st.down_since.take() else {
            return;
        };
        st.back_at = Some(Instant::now());
        let w = &self.writers[i];
        w.failures.store(0, Ordering::Relaxed);
        w.lost_hedges.store(0, Ordering::Relaxed);
        w.up.store(true, Ordering::Release);
        self.down.fetch_sub(1, Ordering::AcqRel);
        w.gauge.set(1);
        tracing::info!(writer = %w.id, down_for = ?since.elapsed(), "writer back");
    }
}

/// Probes writer `i` until it answers, it is marked up by a forward, or the
/// router is dropped.
async fn probe_until_back(shared: Arc<Shared>, i: usize, first_delay: Duration) {
    let w = &shared.writers[i];
    let max = PROBE_MAX_DELAY.max(shared.probe_min_delay);
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(first_delay)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build();
    // Its own lazily connecting channel: the data channel stays as it is.
    let channel = match &w.target {
        Target::Local => None,
        Target::Remote(addr, security) => {
            match security.lazy(addr, |ep| ep.connect_timeout(shared.probe_timeout)) {
                Ok(ch) => Some(ch),
                // `WriterClient::remote` already parsed it; keep the writer down.
                Err(e) => {
                    tracing::error!(writer = %w.id, error = %e, "cannot probe the writer");
                    lock(&w.state).probing = false;
                    return;
                }
            }
        }
    };
    loop {
        // Jitter may double a delay; keep the cap.
        let delay = delays.next().unwrap_or(max).min(max);
        let answer = tokio::select! {
            _ = shared.stop.cancelled() => None,
            a = async {
                tokio::time::sleep(delay).await;
                probe(channel.as_ref(), shared.probe_timeout).await
            } => Some(a),
        };
        let mut st = lock(&w.state);
        match answer {
            None => {
                st.probing = false;
                return;
            }
            // A forward brought it back meanwhile.
            Some(_) if st.down_since.is_none() => {
                st.probing = false;
                return;
            }
            Some(Ok(())) => {
                shared.mark_up(i, &mut st);
                st.probing = false;
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(writer = %w.id, error = %e, "writer still down");
            }
        }
    }
}

/// One health check; `None` channel is the in-process writer.
async fn probe(channel: Option<&AuthChannel>, timeout: Duration) -> Result<(), String> {
    let Some(channel) = channel else {
        return Ok(());
    };
    let mut client = HealthClient::new(channel.clone());
    for service in ["", WRITER_SERVICE_NAME] {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: service.to_string(),
        });
        req.set_timeout(timeout);
        let status = client
            .check(req)
            .await
            .map_err(|e| format!("health check of {service:?}: {}", e.message()))?
            .into_inner()
            .status;
        if status != ServingStatus::Serving as i32 {
            return Err(format!(
                "health of {service:?} is {:?}",
                ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback endpoint that refuses connections, its port held for the
    /// rest of the test process so nothing else can take it.
    fn dead_endpoint() -> String {
        let (endpoint, socket) =
            broker_common::serve::refusing_loopback_endpoint().expect("a loopback port");
        std::mem::forget(socket);
        endpoint
    }

    #[tokio::test]
    async fn down_after_failures_back_on_answer_and_flaps_probe_later() {
        let clients = [
            WriterClient::remote(&dead_endpoint(), &Default::default()).unwrap(),
            WriterClient::remote(&dead_endpoint(), &Default::default()).unwrap(),
        ];
        let gauges = [Gauge::default(), Gauge::default()];
        let min = Duration::from_millis(400);
        let health = Health::new(
            ["a", "b"].into_iter().zip(clients.iter()),
            |id| gauges[usize::from(id == "b")].clone(),
            min,
            Duration::from_secs(1),
        );
        let first_delay = || lock(&health.shared.writers[0].state).first_probe_delay;
        assert_eq!(health.up_if_any_down(), None);
        assert_eq!(gauges[0].get(), 1);

        for _ in 1..DOWN_AFTER_FAILED_ATTEMPTS {
            health.attempt_failed(0);
        }
        assert!(health.is_up(0));
        // any answer resets the count
        health.answered(0);
        for _ in 1..DOWN_AFTER_FAILED_ATTEMPTS {
            health.attempt_failed(0);
        }
        assert!(health.is_up(0));
        health.attempt_failed(0);
        assert!(!health.is_up(0));
        assert_eq!(health.up_if_any_down(), Some(vec![false, true]));
        assert_eq!(gauges[0].get(), 0);
        assert_eq!(gauges[1].get(), 1);
        let status = health.status();
        assert!(!status[0].up && status[0].down_for.is_some());
        assert_eq!(status[0].consecutive_failures, DOWN_AFTER_FAILED_ATTEMPTS);
        assert!(status[1].up && status[1].down_for.is_none());
        assert_eq!(first_delay(), min);

        // a forward that succeeds brings it back
        health.answered(0);
        assert!(health.is_up(0));
        assert_eq!(health.up_if_any_down(), None);
        assert_eq!(gauges[0].get(), 1);
        assert_eq!(health.status()[0].consecutive_failures, 0);

        // down again soon after: probes start later each time, capped
        let mut expected = min;
        for _ in 0..6 {
            health.forward_failed(0);
            expected = (expected * 2).min(PROBE_MAX_DELAY);
            assert_eq!(first_delay(), expected);
            health.answered(0);
        }
        assert_eq!(first_delay(), PROBE_MAX_DELAY);
        // failures of one writer leave the other alone
        assert!(health.is_up(1));
    }
}
