//! [`Outbox`]: every batch a load connection sent and has not seen settled,
//! with its resend schedule.
//!
//! Pure bookkeeping: no I/O, no clock of its own (callers pass `now`), so the
//! tests drive it with plain data. A batch is kept as a [`BatchSpec`], the
//! timestamp and host list it was generated from: the generator is
//! deterministic, so a resend carries exactly the same points (host ids,
//! timestamps, values) and the broker's idempotent writes make it harmless.
//!
//! A batch leaves the outbox when each of its points is settled: stored,
//! rejected for good, or given up on. Points that may succeed if sent again
//! (a broken stream, an `UNAVAILABLE` point, an overloaded gateway, an ack
//! that does not account for them) stay, as a batch holding just those
//! points, due again after the batch's next backoff delay; a batch gets at
//! most `max_resends` resends, whatever their cause.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use crate::report::AckOutcome;

/// Identifies a batch in one [`Outbox`]; kept across its resends.
pub(crate) type BatchId = u64;

/// What a batch holds, enough to generate it again exactly: one timestamp
/// and the hosts, in point order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchSpec {
    pub ts: i64,
    pub hosts: Vec<u32>,
}

impl BatchSpec {
    /// The hosts of `hosts`, all at `ts`.
    ///
    /// # Panics
    /// When a host index does not fit a `u32` (the config forbids that).
    pub fn new(ts: i64, hosts: Range<usize>) -> Self {
        let hosts = hosts
            .map(|h| u32::try_from(h).expect("host index fits u32"))
            .collect();
        Self { ts, hosts }
    }

    pub fn len(&self) -> u64 {
        self.hosts.len() as u64
    }

    /// The points at `indexes` (ascending, in range), as a batch of their own.
    fn subset(&self, indexes: &[u32]) -> Self {
        Self {
            ts: self.ts,
            hosts: indexes
                .iter()
                .filter_map(|&i| self.hosts.get(i as usize).copied())
                .collect(),
        }
    }

    /// `(host_idx, ts)` of the points at `indexes`.
    fn points(&self, indexes: &[u32]) -> Vec<(u32, i64)> {
        indexes
            .iter()
            .filter_map(|&i| self.hosts.get(i as usize).map(|&h| (h, self.ts)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// On a stream, its ack (or the stream's end) not in yet.
    InFlight,
    /// To be sent again at `due`.
    Waiting { due: Instant },
}

#[derive(Debug)]
struct Entry {
    spec: BatchSpec,
    state: State,
    /// Delays before this batch's resends; built at its first retry, ends
    /// after `max_resends`.
    backoff: Option<ExponentialBackoff>,
}

/// What became of a batch's points after an ack or a failed send.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// `(host_idx, ts)` of the points stored, when the outbox records them.
    pub acked_points: Vec<(u32, i64)>,
    /// Points waiting for a resend, and the delay before it.
    pub retry: Option<(u64, Duration)>,
    /// Points given up on: the batch used all its resends, or the failure
    /// cannot be retried.
    pub failed: u64,
}

/// The un-settled batches of one connection. See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    entries: BTreeMap<BatchId, Entry>,
    next_id: BatchId,
    /// Resend delays (jitter on, `max_times = max_resends`); each batch gets
    /// its own seed so that batches do not resend in lockstep.
    backoff: ExponentialBuilder,
    seed: u64,
    record_acked: bool,
}

impl Outbox {
    /// `backoff` spaces the resends of each batch and, through its
    /// `max_times`, bounds them. `record_acked` makes [`Settled`] list the
    /// stored points.
    pub fn new(backoff: ExponentialBuilder, seed: u64, record_acked: bool) -> Self {
        Self {
            entries: BTreeMap::new(),
            next_id: 1,
            backoff,
            seed,
            record_acked,
        }
    }

    /// Batches not settled, in flight or waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Points not settled.
    pub fn points(&self) -> u64 {
        self.entries.values().map(|e| e.spec.len()).sum()
    }

    /// Batches waiting for a resend.
    pub fn waiting(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.state, State::Waiting { .. }))
            .count()
    }

    /// Registers a batch going out for the first time, in flight.
    pub fn push(&mut self, spec: BatchSpec) -> BatchId {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                spec,
                state: State::InFlight,
                backoff: None,
            },
        );
        id
    }

    /// When the next waiting batch is due, if any waits.
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.state {
                State::Waiting { due } => Some(due),
                State::InFlight => None,
            })
            .min()
    }

    /// Takes the waiting batch due first (oldest batch on ties), if it is
    /// due by `now`, and marks it in flight: the caller sends it again.
    pub fn take_due(&mut self, now: Instant) -> Option<(BatchId, BatchSpec)> {
        let (&id, entry) = self
            .entries
            .iter_mut()
            .filter_map(|(id, e)| match e.state {
                State::Waiting { due } if due <= now => Some((due, id, e)),
                _ => None,
            })
            .min_by_key(|(due, id, _)| (*due, **id))
            .map(|(_, id, e)| (id, e))?;
        entry.state = State::InFlight;
        Some((id, entry.spec.clone()))
    }

    /// The ack of batch `id` arrived, classified as `outcome`. `None` when
    /// `id` is not in flight (already settled or given up on).
    pub fn acked(&mut self, id: BatchId, outcome: &AckOutcome, now: Instant) -> Option<Settled> {
        let entry = self.in_flight(id)?;
        let acked_points = if self.record_acked {
            entry.spec.points(&outcome.accepted_indexes)
        } else {
            Vec::new()
        };
        let retry = (!outcome.retry.is_empty()).then(|| entry.spec.subset(&outcome.retry));
        let mut settled = self.retry_or_settle(id, retry, now);
        settled.acked_points = acked_points;
        Some(settled)
    }

    /// The send of batch `id` failed before an ack: the stream broke
    /// (`retryable`, the whole batch goes again) or cannot be used (it
    /// fails). `None` when `id` is not in flight.
    pub fn send_failed(&mut self, id: BatchId, retryable: bool, now: Instant) -> Option<Settled> {
        let spec = self.in_flight(id)?.spec.clone();
        if retryable {
            return Some(self.retry_or_settle(id, Some(spec), now));
        }
        self.entries.remove(&id);
        Some(Settled {
            failed: spec.len(),
            ..Settled::default()
        })
    }

    /// Gives up on everything left: returns its points and batches, which
    /// count as failed.
    pub fn give_up(&mut self) -> (u64, u64) {
        let points = self.points();
        let batches = self.entries.len() as u64;
        self.entries.clear();
        (points, batches)
    }

    fn in_flight(&self, id: BatchId) -> Option<&Entry> {
        self.entries.get(&id).filter(|e| e.state == State::InFlight)
    }

    /// Keeps batch `id` as `retry` (its points still to store), due after
    /// its next backoff delay, or settles it: removed, with `retry`'s points
    /// failed when its resends are used up.
    fn retry_or_settle(&mut self, id: BatchId, retry: Option<BatchSpec>, now: Instant) -> Settled {
        let Some(retry) = retry.filter(|r| !r.hosts.is_empty()) else {
            self.entries.remove(&id);
            return Settled::default();
        };
        let entry = self.entries.get_mut(&id).expect("caller checked");
        let (builder, seed) = (self.backoff, self.seed);
        let delay = entry
            .backoff
            .get_or_insert_with(|| builder.with_jitter_seed(batch_seed(seed, id)).build())
            .next();
        match delay {
            Some(delay) => {
                let points = retry.len();
                entry.spec = retry;
                entry.state = State::Waiting { due: now + delay };
                Settled {
                    retry: Some((points, delay)),
                    ..Settled::default()
                }
            }
            None => {
                self.entries.remove(&id);
                Settled {
                    failed: retry.len(),
                    ..Settled::default()
                }
            }
        }
    }
}

/// A jitter seed per batch, well spread even for consecutive ids
/// (splitmix64's finaliser).
fn batch_seed(seed: u64, id: BatchId) -> u64 {
    let mut z = seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_proto::v1::{BatchAck, BatchError, PointError, RejectReason};

    const TS: i64 = 1_760_000_000;
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    fn outbox(max_resends: usize, record: bool) -> Outbox {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(FIRST)
            .with_max_delay(CAP)
            .with_max_times(max_resends)
            .with_jitter();
        Outbox::new(backoff, 7, record)
    }

    fn ack(accepted: u32, errors: &[(u32, RejectReason)]) -> BatchAck {
        BatchAck {
            seq: 1,
            accepted,
            errors: errors
                .iter()
                .map(|&(index, reason)| PointError {
                    index,
                    reason: reason as i32,
                    message: String::new(),
                    retryable: reason == RejectReason::Unavailable,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn outcome(ack: &BatchAck, points: u64) -> AckOutcome {
        AckOutcome::classify(ack, points)
    }

    /// Delay with jitter: in `[d, 2d)` for the un-jittered `d`.
    fn jittered(delay: Duration, base: Duration) -> bool {
        delay >= base && delay < base * 2
    }

    #[test]
    fn a_clean_ack_settles_the_batch() {
        let mut o = outbox(10, true);
        let id = o.push(BatchSpec::new(TS, 10..14));
        assert_eq!((o.len(), o.points()), (1, 4));
        let s = o
            .acked(id, &outcome(&ack(4, &[]), 4), Instant::now())
            .unwrap();
        assert_eq!(
            s,
            Settled {
                acked_points: vec![(10, TS), (11, TS), (12, TS), (13, TS)],
                retry: None,
                failed: 0,
            }
        );
        assert!(o.is_empty());
        assert!(
            o.acked(id, &outcome(&ack(4, &[]), 4), Instant::now())
                .is_none(),
            "settled once"
        );
    }

    #[test]
    fn acked_points_are_listed_only_when_recording() {
        let mut o = outbox(10, false);
        let id = o.push(BatchSpec::new(TS, 0..3));
        let s = o
            .acked(id, &outcome(&ack(3, &[]), 3), Instant::now())
            .unwrap();
        assert!(s.acked_points.is_empty());
    }

    #[test]
    fn retryable_points_wait_as_a_batch_of_their_own() {
        let mut o = outbox(10, true);
        let now = Instant::now();
        let id = o.push(BatchSpec::new(TS, 100..106));
        let a = ack(
            3,
            &[
                (1, RejectReason::Unavailable),
                (2, RejectReason::TimestampTooOld),
                (4, RejectReason::Unavailable),
            ],
        );
        let s = o.acked(id, &outcome(&a, 6), now).unwrap();
        assert_eq!(s.acked_points, vec![(100, TS), (103, TS), (105, TS)]);
        let (points, delay) = s.retry.unwrap();
        assert_eq!((points, s.failed), (2, 0));
        assert!(jittered(delay, FIRST), "{delay:?}");
        // Still pending (one batch, two points), not due yet.
        assert_eq!((o.len(), o.points(), o.waiting()), (1, 2, 1));
        assert_eq!(o.next_due(), Some(now + delay));
        assert!(o.take_due(now).is_none());
        let (again, spec) = o.take_due(now + delay).unwrap();
        assert_eq!(again, id);
        assert_eq!(
            spec,
            BatchSpec {
                ts: TS,
                hosts: vec![101, 104]
            }
        );
        assert_eq!(o.waiting(), 0);
        // The resend is acked: indexes now refer to the smaller batch.
        let s = o.acked(id, &outcome(&ack(2, &[]), 2), now + delay).unwrap();
        assert_eq!(s.acked_points, vec![(101, TS), (104, TS)]);
        assert!(o.is_empty());
    }

    #[test]
    fn a_broken_stream_resends_the_whole_batch() {
        let mut o = outbox(10, false);
        let now = Instant::now();
        let a = o.push(BatchSpec::new(TS, 0..5));
        let b = o.push(BatchSpec::new(TS, 5..10));
        for id in [a, b] {
            let s = o.send_failed(id, true, now).unwrap();
            assert_eq!(s.retry.map(|r| r.0), Some(5));
        }
        let later = now + CAP * 2;
        let (first, spec) = o.take_due(later).unwrap();
        let (second, _) = o.take_due(later).unwrap();
        assert!(o.take_due(later).is_none(), "both in flight again");
        assert_eq!(spec.ts, TS);
        assert_eq!(
            {
                let mut ids = [first, second];
                ids.sort();
                ids
            },
            [a, b]
        );
        // A send that cannot be retried fails its points at once.
        let s = o.send_failed(a, false, later).unwrap();
        assert_eq!((s.failed, s.retry), (5, None));
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn due_batches_go_in_due_order() {
        let mut o = outbox(10, false);
        let now = Instant::now();
        let a = o.push(BatchSpec::new(TS, 0..1));
        let b = o.push(BatchSpec::new(TS, 1..2));
        let _c = o.push(BatchSpec::new(TS, 2..3)); // stays in flight
        let da = o
            .send_failed(a, true, now + Duration::from_secs(1))
            .unwrap()
            .retry
            .unwrap()
            .1;
        let db = o.send_failed(b, true, now).unwrap().retry.unwrap().1;
        let far = now + Duration::from_secs(60);
        // b failed later than a but its delay (< 200 ms) ends first.
        assert!(now + db < now + Duration::from_secs(1) + da);
        let order: Vec<BatchId> =
            std::iter::from_fn(|| o.take_due(far).map(|(id, _)| id)).collect();
        assert_eq!(order, vec![b, a]);
        assert_eq!(o.next_due(), None, "nothing waits");
    }

    #[test]
    fn resends_are_bounded_and_back_off() {
        let max = 4;
        let mut o = outbox(max, false);
        let mut now = Instant::now();
        let id = o.push(BatchSpec::new(TS, 0..3));
        let unavailable = ack(
            0,
            &[
                (0, RejectReason::Unavailable),
                (1, RejectReason::Unavailable),
                (2, RejectReason::Unavailable),
            ],
        );
        let mut base = FIRST;
        for _ in 0..max {
            let s = o.acked(id, &outcome(&unavailable, 3), now).unwrap();
            let (points, delay) = s.retry.expect("a resend left");
            assert_eq!(points, 3);
            assert!(jittered(delay, base), "{delay:?} for base {base:?}");
            base = (base * 2).min(CAP);
            now += delay;
            assert!(o.take_due(now).is_some());
        }
        // Out of resends: the points fail, the batch leaves.
        let s = o.acked(id, &outcome(&unavailable, 3), now).unwrap();
        assert_eq!((s.retry, s.failed), (None, 3));
        assert!(o.is_empty());
    }

    #[test]
    fn zero_resends_fail_at_once() {
        let mut o = outbox(0, false);
        let id = o.push(BatchSpec::new(TS, 0..2));
        let s = o.send_failed(id, true, Instant::now()).unwrap();
        assert_eq!((s.retry, s.failed), (None, 2));
    }

    #[test]
    fn overloaded_batches_go_again_whole_and_final_errors_settle() {
        let mut o = outbox(10, true);
        let now = Instant::now();
        let id = o.push(BatchSpec::new(TS, 0..4));
        let overloaded = BatchAck {
            seq: 1,
            batch_error: BatchError::Overloaded as i32,
            ..Default::default()
        };
        let s = o.acked(id, &outcome(&overloaded, 4), now).unwrap();
        assert_eq!(s.retry.map(|r| r.0), Some(4));
        assert!(s.acked_points.is_empty());
        let (_, spec) = o.take_due(now + CAP * 2).unwrap();
        assert_eq!(spec, BatchSpec::new(TS, 0..4));
        let too_many = BatchAck {
            seq: 2,
            batch_error: BatchError::TooManyPoints as i32,
            ..Default::default()
        };
        let s = o.acked(id, &outcome(&too_many, 4), now).unwrap();
        assert_eq!(s, Settled::default(), "rejected: nothing left to do");
        assert!(o.is_empty());
    }

    #[test]
    fn acks_for_waiting_or_unknown_batches_are_ignored() {
        let mut o = outbox(10, false);
        let now = Instant::now();
        let id = o.push(BatchSpec::new(TS, 0..2));
        o.send_failed(id, true, now).unwrap();
        assert!(
            o.acked(id, &outcome(&ack(2, &[]), 2), now).is_none(),
            "waiting, not in flight"
        );
        assert!(o.send_failed(99, true, now).is_none());
        assert_eq!(o.len(), 1);
    }

    /// Drain accounting: whatever is left at the deadline fails, and with
    /// what was settled before, every distinct point is counted once.
    #[test]
    fn drain_gives_up_on_what_is_left_and_everything_adds_up() {
        let mut o = outbox(10, true);
        let now = Instant::now();
        let (mut sent, mut acked, mut rejected, mut failed) = (0u64, 0u64, 0u64, 0u64);
        let mut push = |o: &mut Outbox, hosts: Range<usize>| {
            sent += hosts.len() as u64;
            o.push(BatchSpec::new(TS, hosts))
        };
        let a = push(&mut o, 0..10);
        let b = push(&mut o, 10..20);
        let c = push(&mut o, 20..30);
        let _d = push(&mut o, 30..40); // never answered
        let mut settle = |s: Settled, out: &AckOutcome| {
            acked += s.acked_points.len() as u64;
            rejected += out.rejected_total();
            failed += s.failed;
        };
        // a: clean. b: 3 unavailable, 1 rejected. c: stream broke.
        let out_a = outcome(&ack(10, &[]), 10);
        settle(o.acked(a, &out_a, now).unwrap(), &out_a);
        let out_b = outcome(
            &ack(
                6,
                &[
                    (0, RejectReason::Unavailable),
                    (4, RejectReason::Unavailable),
                    (5, RejectReason::InvalidHostId),
                    (9, RejectReason::Unavailable),
                ],
            ),
            10,
        );
        settle(o.acked(b, &out_b, now).unwrap(), &out_b);
        // (c broke a second later, so b's resend is due first.)
        let c_failed = now + Duration::from_secs(1);
        settle(
            o.send_failed(c, true, c_failed).unwrap(),
            &AckOutcome::default(),
        );
        // b's resend gets 2 of its 3 stored.
        let (rb, spec) = o.take_due(c_failed).unwrap();
        assert_eq!((rb, spec.hosts.clone()), (b, vec![10, 14, 19]));
        let out_rb = outcome(&ack(2, &[(1, RejectReason::Unavailable)]), 3);
        let s = o.acked(rb, &out_rb, now).unwrap();
        assert_eq!(s.acked_points, vec![(10, TS), (19, TS)]);
        settle(s, &out_rb);
        // Deadline: c (waiting, 10), d (in flight, 10), b's last point.
        assert_eq!(o.len(), 3);
        let (points, batches) = o.give_up();
        assert_eq!((points, batches), (21, 3));
        failed += points;
        assert!(o.is_empty());
        assert_eq!((acked, rejected, failed), (18, 1, 21));
        assert_eq!(acked + rejected + failed, sent);
    }

    #[test]
    fn batches_jitter_apart() {
        let mut o = outbox(10, false);
        let now = Instant::now();
        let delays: Vec<Duration> = (0..8)
            .map(|h| {
                let id = o.push(BatchSpec::new(TS, h..h + 1));
                o.send_failed(id, true, now).unwrap().retry.unwrap().1
            })
            .collect();
        assert!(delays.iter().all(|&d| jittered(d, FIRST)), "{delays:?}");
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 1,
            "every batch got the same delay: {delays:?}"
        );
    }
}
