//! [`HostCollector`]: this machine's CPU, memory, swap, load, uptime, disks
//! and network interfaces, read with `sysinfo`, as one snapshot of metrics.
//!
//! Names (values are gauges unless they end in `_total`, which are
//! counters since boot, for `rate()`):
//!
//! | metric | unit |
//! |---|---|
//! | `cpu_usage`, `cpu_idle` | percent of all CPUs, since the last snapshot |
//! | `cpu_count` | logical CPUs |
//! | `mem_total`, `mem_used`, `mem_free`, `mem_available` | bytes |
//! | `swap_total`, `swap_used` | bytes |
//! | `load1`, `load5`, `load15` | run-queue averages |
//! | `uptime_seconds` | seconds since boot |
//! | `disk_total_bytes{mount}`, `disk_available_bytes{mount}` | bytes |
//! | `disk_read_bytes_total{mount}`, `disk_written_bytes_total{mount}` | bytes |
//! | `net_rx_bytes_total{interface}`, `net_tx_bytes_total{interface}` | bytes |
//! | `net_rx_errors_total{interface}`, `net_tx_errors_total{interface}` | errors |
//!
//! Labelled metrics are written in Prometheus's series notation
//! (`disk_total_bytes{mount="/"}`), which the gateway accepts and
//! query-api's PromQL splits back into labels. At most
//! [`MAX_DISKS`] disks and [`MAX_INTERFACES`] interfaces are reported (by
//! name), so a host with thousands of container interfaces still sends a
//! point within the gateway's metric limit.

use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System};

/// Disks reported per snapshot, the first by mount point.
pub const MAX_DISKS: usize = 32;
/// Network interfaces reported per snapshot, the first by name.
pub const MAX_INTERFACES: usize = 32;

/// Reads this host's metrics; keep one and call [`collect`](Self::collect)
/// every interval (CPU usage is measured between two calls).
pub struct HostCollector {
    system: System,
    /// `None` where the platform has no disk or network list: those
    /// metrics are left out.
    disks: Option<Disks>,
    networks: Option<Networks>,
}

impl HostCollector {
    /// Fails only where `sysinfo` cannot read the system at all.
    pub fn new() -> Result<Self, sysinfo::Error> {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )?;
        Ok(Self {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
            networks: Networks::new_with_refreshed_list().ok(),
        })
    }

    /// One snapshot: (metric name, value) pairs, names unique.
    pub fn collect(&mut self) -> Vec<(String, f64)> {
        let s = &mut self.system;
        s.refresh_cpu_usage();
        s.refresh_memory();
        if let Some(d) = &mut self.disks {
            d.refresh(true);
        }
        if let Some(n) = &mut self.networks {
            n.refresh(true);
        }
        let mut out: Vec<(String, f64)> = Vec::with_capacity(32);
        let mut put = |name: &str, v: f64| out.push((name.to_string(), v));
        let usage = (s.global_cpu_usage() as f64).clamp(0.0, 100.0);
        put("cpu_usage", round2(usage));
        put("cpu_idle", round2(100.0 - usage));
        put("cpu_count", s.cpus().len() as f64);
        put("mem_total", s.total_memory() as f64);
        put("mem_used", s.used_memory() as f64);
        put("mem_free", s.free_memory() as f64);
        put("mem_available", s.available_memory() as f64);
        put("swap_total", s.total_swap() as f64);
        put("swap_used", s.used_swap() as f64);
        if let Ok(load) = System::load_average() {
            put("load1", load.one);
            put("load5", load.five);
            put("load15", load.fifteen);
        }
        if let Ok(up) = System::uptime() {
            put("uptime_seconds", up as f64);
        }

        let mut disks: Vec<_> = self
            .disks
            .iter()
            .flat_map(|d| d.iter())
            .filter(|d| d.total_space() > 0)
            .map(|d| (d.mount_point().to_string_lossy().into_owned(), d))
            .collect();
        disks.sort_by(|a, b| a.0.cmp(&b.0));
        disks.dedup_by(|a, b| a.0 == b.0);
        for (mount, d) in disks.into_iter().take(MAX_DISKS) {
            let usage = d.usage();
            for (name, v) in [
                ("disk_total_bytes", d.total_space()),
                ("disk_available_bytes", d.available_space()),
                ("disk_read_bytes_total", usage.total_read_bytes),
                ("disk_written_bytes_total", usage.total_written_bytes),
            ] {
                out.push((labelled(name, "mount", &mount), v as f64));
            }
        }
        let mut interfaces: Vec<_> = self
            .networks
            .iter()
            .flat_map(|n| n.iter())
            .map(|(name, n)| (name.to_string_lossy(), n))
            .collect();
        interfaces.sort_by(|a, b| a.0.cmp(&b.0));
        for (interface, n) in interfaces.into_iter().take(MAX_INTERFACES) {
            for (name, v) in [
                ("net_rx_bytes_total", n.total_received()),
                ("net_tx_bytes_total", n.total_transmitted()),
                ("net_rx_errors_total", n.total_errors_on_received()),
                ("net_tx_errors_total", n.total_errors_on_transmitted()),
            ] {
                out.push((labelled(name, "interface", &interface), v as f64));
            }
        }
        out
    }
}

/// `name{label="value"}` in Prometheus's series notation.
fn labelled(name: &str, label: &str, value: &str) -> String {
    broker_common::series_name::format(name, &mut [(label, value)])
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// This machine's host name as a broker host id: characters a host id
/// cannot hold (anything but `[A-Za-z0-9._-]`) become `-`; `localhost`
/// when the system has no name.
pub fn local_host_id() -> String {
    let name = System::host_name().unwrap_or_default();
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if id.is_empty() {
        "localhost".to_string()
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_of_this_host_has_its_core_metrics_and_valid_names() {
        let mut c = HostCollector::new().unwrap();
        let snapshot = c.collect();
        let get = |n: &str| {
            snapshot
                .iter()
                .find(|(name, _)| name == n)
                .unwrap_or_else(|| panic!("{n} missing from {snapshot:?}"))
                .1
        };
        assert!(get("mem_total") > 0.0);
        assert!(get("mem_used") <= get("mem_total"));
        assert!(get("cpu_count") >= 1.0);
        assert!((0.0..=100.0).contains(&get("cpu_usage")));
        assert_eq!(get("cpu_usage") + get("cpu_idle"), 100.0);
        let mut names: Vec<&str> = snapshot.iter().map(|(n, _)| n.as_str()).collect();
        // The loopback interface is on every machine the tests run on.
        assert!(
            names.contains(&r#"net_rx_bytes_total{interface="lo"}"#),
            "{names:?}"
        );
        for (n, v) in &snapshot {
            broker_common::series_name::check(n, 256).unwrap();
            assert!(v.is_finite(), "{n} = {v}");
        }
        let all = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all, "names are unique");
    }

    #[test]
    fn host_names_become_host_ids() {
        let id = local_host_id();
        assert!(!id.is_empty() && id.len() <= 128);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
    }
}
