//! TCP connect scan of CIDR ranges and ports, bounded in concurrency
//! (`scan.concurrency` attempts in flight) and rate (`scan.rate` attempts
//! started per second, paced by a tokio interval). The range list is empty
//! by default: nothing is sent unless an operator names a range.

use broker_common::config::{ScanConfig, parse_range};
use futures::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// What one pass found and what it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    /// Unix seconds the pass started.
    pub started_at: i64,
    pub attempts: usize,
    /// Open ports per address.
    pub open: BTreeMap<IpAddr, Vec<u16>>,
    pub duration_ms: u64,
}

/// Every (address, port) of the configured ranges. For a network prefix
/// shorter than /31 the network and broadcast addresses are left out.
pub fn targets(config: &ScanConfig) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for r in &config.ranges {
        let Ok(net) = parse_range(r) else { continue };
        for ip in net.hosts() {
            for &port in &config.ports {
                out.push(SocketAddr::new(ip, port));
            }
        }
    }
    out
}

/// One pass over every target.
pub async fn scan_once(config: &ScanConfig, now: i64) -> ScanReport {
    let targets = targets(config);
    let start = Instant::now();
    let timeout = config.timeout;
    let period = Duration::from_secs_f64(1.0 / f64::from(config.rate.max(1)));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let attempts = targets.len();
    // Each attempt waits for its tick before connecting: the rate bounds
    // starts, `buffer_unordered` bounds attempts in flight.
    let ticks = std::sync::Arc::new(tokio::sync::Mutex::new(ticks));
    let paced = futures::stream::iter(targets).then(move |t| {
        let ticks = ticks.clone();
        async move {
            ticks.lock().await.tick().await;
            t
        }
    });
    let results: Vec<(SocketAddr, bool)> = paced
        .map(|t| async move {
            let open = matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(t)).await,
                Ok(Ok(_))
            );
            (t, open)
        })
        .buffer_unordered(config.concurrency.max(1))
        .collect()
        .await;
    let mut open: BTreeMap<IpAddr, Vec<u16>> = BTreeMap::new();
    for (t, ok) in results {
        if ok {
            open.entry(t.ip()).or_default().push(t.port());
        }
    }
    for ports in open.values_mut() {
        ports.sort_unstable();
    }
    ScanReport {
        started_at: now,
        attempts,
        open,
        duration_ms: start.elapsed().as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_cover_hosts_and_ports_and_nothing_by_default() {
        assert!(targets(&ScanConfig::default()).is_empty());
        let c = ScanConfig {
            ranges: vec!["127.0.0.0/30".into(), "127.0.0.9".into()],
            ports: vec![1, 2],
            ..Default::default()
        };
        let t = targets(&c);
        // 127.0.0.1 and .2 (network and broadcast left out), and .9
        assert_eq!(t.len(), 6);
        assert_eq!(t[0], "127.0.0.1:1".parse().unwrap());
        assert_eq!(t[5], "127.0.0.9:2".parse().unwrap());
    }
}
