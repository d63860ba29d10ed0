//! `broker_host_manager_*` Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone)]
pub struct HostMetrics {
    /// Hosts per state.
    pub hosts: Family<Vec<(String, String)>, Gauge>,
    pub check_failures: Counter,
    pub members_marked_offline: Counter,
    pub alerts_firing: Gauge,
    pub alert_deliveries_failed: Counter,
    pub scale_actions: Family<Vec<(String, String)>, Counter>,
    pub load_score: Gauge<f64, AtomicU64>,
    pub scan_attempts: Counter,
    pub announcements: Counter,
}

impl HostMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            hosts: Family::default(),
            check_failures: Counter::default(),
            members_marked_offline: Counter::default(),
            alerts_firing: Gauge::default(),
            alert_deliveries_failed: Counter::default(),
            scale_actions: Family::default(),
            load_score: Gauge::default(),
            scan_attempts: Counter::default(),
            announcements: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("broker_host_manager");
        r.register("hosts", "Hosts in the inventory, by state", m.hosts.clone());
        r.register(
            "health_check_failures",
            "Member check rounds with a failed check",
            m.check_failures.clone(),
        );
        r.register(
            "members_marked_offline",
            "Members set offline because their checks failed",
            m.members_marked_offline.clone(),
        );
        r.register(
            "alerts_firing",
            "Alerts firing now",
            m.alerts_firing.clone(),
        );
        r.register(
            "alert_deliveries_failed",
            "Rounds no Alertmanager took the alerts",
            m.alert_deliveries_failed.clone(),
        );
        r.register(
            "scale_actions",
            "Scaling actions taken, by action and outcome",
            m.scale_actions.clone(),
        );
        r.register(
            "load_score",
            "The writers' mean load score, 0-100",
            m.load_score.clone(),
        );
        r.register(
            "scan_attempts",
            "TCP connection attempts of the discovery scan",
            m.scan_attempts.clone(),
        );
        r.register(
            "multicast_announcements",
            "Multicast announcements received",
            m.announcements.clone(),
        );
        m
    }
}
