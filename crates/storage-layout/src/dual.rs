//! Migration by dual read: writers switch to the new layout at once, and
//! readers read the new layout and the previous one and merge them (the
//! new one wins where both hold a snapshot) until the previous layout's
//! data has aged out, one TTL after the switch. Nothing is copied, so a
//! migration costs Redis no extra work and cannot half-finish; the price
//! is a second read per query during the window (`writer.migrate_from`).

use crate::exec::{Command, Exec};
use crate::frame::{Frame, FrameBuilder};
use crate::{Arrival, KeyLayout, LayoutError, RangeReq};
use broker_proto::v1::MetricBatch;
use futures::future::BoxFuture;
use std::sync::Arc;

pub struct DualRead {
    primary: Arc<dyn KeyLayout>,
    previous: Arc<dyn KeyLayout>,
}

impl DualRead {
    pub fn new(primary: Arc<dyn KeyLayout>, previous: Arc<dyn KeyLayout>) -> Self {
        Self { primary, previous }
    }
}

impl KeyLayout for DualRead {
    fn name(&self) -> &'static str {
        self.primary.name()
    }

    fn write_commands(
        &self,
        batches: &[&MetricBatch],
        arrival: Arrival,
        ttl_secs: u64,
        now: i64,
        out: &mut Vec<Command>,
    ) {
        self.primary
            .write_commands(batches, arrival, ttl_secs, now, out)
    }

    fn written(&self, batches: &[&MetricBatch], ok: bool, now: i64) {
        self.primary.written(batches, ok, now)
    }

    fn due(&self, now: i64, max: usize) -> Vec<String> {
        self.primary.due(now, max)
    }

    fn maintain<'a>(
        &'a self,
        db: &'a dyn Exec,
        host: &'a str,
        ttl_secs: u64,
        now: i64,
    ) -> BoxFuture<'a, Result<(), LayoutError>> {
        self.primary.maintain(db, host, ttl_secs, now)
    }

    fn frames<'a>(
        &'a self,
        db: &'a dyn Exec,
        reqs: &'a [RangeReq],
        metrics: &'a [String],
        limit: Option<usize>,
    ) -> BoxFuture<'a, Result<Vec<Frame>, LayoutError>> {
        Box::pin(async move {
            let (old, new) = futures::future::try_join(
                self.previous.frames(db, reqs, metrics, limit),
                self.primary.frames(db, reqs, metrics, limit),
            )
            .await?;
            Ok(reqs
                .iter()
                .zip(old.into_iter().zip(new))
                .map(|(r, (old, new))| {
                    if old.timestamps.is_empty() {
                        return new;
                    }
                    let mut b = FrameBuilder::new(r.start_ms, r.end_ms, metrics);
                    for f in [&old, &new] {
                        for &t in &f.timestamps {
                            b.touch(t);
                        }
                        for (name, col) in &f.metrics {
                            b.set_column(&f.timestamps, name, col);
                        }
                    }
                    b.finish(limit)
                })
                .collect())
        })
    }

    fn stored_points<'a>(
        &'a self,
        db: &'a dyn Exec,
        hosts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<u64>, LayoutError>> {
        Box::pin(async move {
            let (old, new) = futures::future::try_join(
                self.previous.stored_points(db, hosts),
                self.primary.stored_points(db, hosts),
            )
            .await?;
            Ok(old.into_iter().zip(new).map(|(a, b)| a + b).collect())
        })
    }

    fn backfill_commands(&self, hosts: &[String], out: &mut Vec<Command>) {
        self.previous.backfill_commands(hosts, out);
        self.primary.backfill_commands(hosts, out);
    }

    fn counts<'a>(
        &'a self,
        db: &'a dyn Exec,
        reqs: &'a [RangeReq],
    ) -> BoxFuture<'a, Result<Vec<u64>, LayoutError>> {
        Box::pin(async move {
            let (old, new) = futures::future::try_join(
                self.previous.counts(db, reqs),
                self.primary.counts(db, reqs),
            )
            .await?;
            Ok(old.into_iter().zip(new).map(|(a, b)| a + b).collect())
        })
    }
}
