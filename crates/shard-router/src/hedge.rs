//! When to hedge a forward: a writer that stops answering but keeps its
//! sockets open (SIGSTOP, a stuck event loop, a full disk) fails no call,
//! so retries and the down-marking of [`crate::health`] only see it after
//! `router.write_timeout`. Instead, a forward still unanswered after
//! [`hedge_delay`] is also sent to the points' next ring owners (writes are
//! idempotent, so the copy that loses costs a duplicate write, never a
//! wrong value), and a writer that loses
//! `router.hedge.eject_after` races in a row is marked down like an
//! unreachable one, so later batches skip it until a probe answers.
//!
//! The delay follows the writer's own recent latency: a multiple of the
//! 95th percentile of its last [`WINDOW`] successful forwards, never below
//! `router.hedge.min_delay` (so a healthy writer's slow tail does not
//! double the write load) nor above half of `router.write_timeout`.

use std::time::Duration;

/// Successful forwards remembered per writer.
pub const WINDOW: usize = 64;
/// Samples needed before the percentile is trusted; until then the delay
/// is `min_delay`.
pub const MIN_SAMPLES: usize = 8;
/// The delay is this many times the writer's p95.
pub const P95_MULTIPLIER: u32 = 3;

/// The latencies of a writer's last [`WINDOW`] successful forwards.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    micros: [u32; WINDOW],
    len: usize,
    next: usize,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self {
            micros: [0; WINDOW],
            len: 0,
            next: 0,
        }
    }
}

impl LatencyWindow {
    pub fn record(&mut self, d: Duration) {
        self.micros[self.next] = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        self.next = (self.next + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
    }

    /// The `q` quantile (nearest rank), once there are enough samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.len < MIN_SAMPLES {
            return None;
        }
        let mut v = self.micros[..self.len].to_vec();
        let rank = ((q * self.len as f64).ceil() as usize).clamp(1, self.len) - 1;
        let (_, x, _) = v.select_nth_unstable(rank);
        Some(Duration::from_micros(u64::from(*x)))
    }
}

/// How long a forward may go unanswered before it is hedged; `None`
/// when hedging is off (`min_delay` zero).
pub fn hedge_delay(
    window: &LatencyWindow,
    min_delay: Duration,
    write_timeout: Duration,
) -> Option<Duration> {
    if min_delay.is_zero() {
        return None;
    }
    let from_latency = window
        .quantile(0.95)
        .map_or(Duration::ZERO, |p95| p95 * P95_MULTIPLIER);
    Some(
        from_latency
            .max(min_delay)
            .min((write_timeout / 2).max(min_delay)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_delay_follows_the_p95_within_bounds() {
        let mut w = LatencyWindow::default();
        let timeout = 10_000 * MS;
        // Too few samples: the floor.
        assert_eq!(hedge_delay(&w, 300 * MS, timeout), Some(300 * MS));
        for i in 0..100 {
            // 97 % at 20 ms, a 3 % tail at 200 ms: p95 is 20 ms, and the
            // floor wins.
            w.record(if i % 33 == 0 { 200 * MS } else { 20 * MS });
        }
        assert_eq!(w.quantile(0.5), Some(20 * MS));
        assert_eq!(w.quantile(0.95), Some(20 * MS));
        assert_eq!(hedge_delay(&w, 300 * MS, timeout), Some(300 * MS));
        // Only the last 64 count: 8 of them (12.5 %) at 200 ms.
        for i in 0..WINDOW {
            w.record(if i % 8 == 0 { 200 * MS } else { 20 * MS });
        }
        assert_eq!(w.quantile(0.95), Some(200 * MS));
        assert_eq!(hedge_delay(&w, 300 * MS, timeout), Some(600 * MS));
        // A slow writer: capped at half the write timeout.
        for _ in 0..WINDOW {
            w.record(4_000 * MS);
        }
        assert_eq!(hedge_delay(&w, 300 * MS, timeout), Some(5_000 * MS));
        // Off.
        assert_eq!(hedge_delay(&w, Duration::ZERO, timeout), None);
    }
}
