//! `process_cpu_seconds_total` and `process_resident_memory_bytes` on every
//! process's `/metrics` (the names Prometheus client libraries use), read
//! with `sysinfo` at each scrape. host-manager's load score reads them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::sync::Mutex;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

#[derive(Debug)]
pub struct ProcessCollector {
    pid: Pid,
    system: Mutex<System>,
}

impl ProcessCollector {
    pub fn new() -> Option<Self> {
        Some(Self {
            pid: sysinfo::get_current_pid().ok()?,
            system: Mutex::new(System::new().ok()?),
        })
    }

    /// CPU seconds used so far and resident bytes, now.
    pub fn sample(&self) -> Option<(f64, u64)> {
        let mut sys = self.system.lock().unwrap_or_else(|e| e.into_inner());
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        let p = sys.process(self.pid)?;
        Some((p.accumulated_cpu_time() as f64 / 1000.0, p.memory()))
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((cpu, rss)) = self.sample() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(cpu);
        let e = encoder.encode_descriptor(
            "process_cpu",
            "CPU time this process used, user and system",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?;
        cpu.encode(e)?;
        let rss = ConstGauge::new(rss as i64);
        let e = encoder.encode_descriptor(
            "process_resident_memory",
            "Resident memory of this process",
            Some(&Unit::Bytes),
            rss.metric_type(),
        )?;
        rss.encode(e)?;
        Ok(())
    }
}
