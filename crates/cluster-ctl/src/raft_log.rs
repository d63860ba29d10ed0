//! raft-rs's slog output, bridged to tracing one level lower.
//!
//! raft-rs logs every election step, vote and conf change at INFO. In
//! this process INFO is what an operator reads (`broker up`'s banner,
//! joins, leader changes, which cluster-ctl logs itself), so raft's INFO
//! and DEBUG go to tracing at DEBUG and TRACE; its warnings and errors
//! keep their level.

use slog::{Drain, Level, OwnedKVList, Record, RecordStatic};

/// A slog drain that lowers INFO and below by one level before `D`.
pub struct Demoted<D>(pub D);

/// The level a raft-rs record of `level` is logged at.
pub fn demote(level: Level) -> Level {
    match level {
        Level::Info => Level::Debug,
        Level::Debug | Level::Trace => Level::Trace,
        other => other,
    }
}

impl<D: Drain> Drain for Demoted<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<Self::Ok, Self::Err> {
        let level = demote(record.level());
        if level == record.level() {
            return self.0.log(record, values);
        }
        let rs = RecordStatic {
            location: record.location(),
            tag: record.tag(),
            level,
        };
        self.0
            .log(&Record::new(&rs, record.msg(), record.kv()), values)
    }
}

/// The logger the raft node is built with.
pub fn logger(raft_id: u64) -> slog::Logger {
    slog::Logger::root(
        Demoted(tracing_slog::TracingSlogDrain).fuse(),
        slog::o!("raft_id" => raft_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the level of every record it gets.
    #[derive(Clone, Default)]
    struct Levels(Arc<Mutex<Vec<Level>>>);

    impl Drain for Levels {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, record: &Record<'_>, _: &OwnedKVList) -> Result<(), slog::Never> {
            self.0.lock().unwrap().push(record.level());
            Ok(())
        }
    }

    #[test]
    fn info_goes_to_debug_warnings_stay() {
        let seen = Levels::default();
        let log = slog::Logger::root(Demoted(seen.clone()), slog::o!());
        slog::info!(log, "became leader"; "term" => 2);
        slog::debug!(log, "sending vote");
        slog::warn!(log, "dropping message");
        slog::error!(log, "cannot apply");
        assert_eq!(
            *seen.0.lock().unwrap(),
            [Level::Debug, Level::Trace, Level::Warning, Level::Error]
        );
    }
}
