//! The `host_manager` section: inventory, discovery, health checks,
//! autoscaling and alerts. Its own types and its own `validate`, so the
//! section is read in one place.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Agents send a snapshot every 5 s (seed).
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// A host without a point for this long is `down` (and fires host-down).
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(60);
/// How often the inventory is rebuilt from what the writers stored.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Seed: scan every 300 s, ports 22, 80, 443 and the agent port 9093.
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_SCAN_PORTS: [u16; 4] = [22, 80, 443, 9093];
pub const DEFAULT_SCAN_CONCURRENCY: usize = 64;
/// Connection attempts per second, across all ranges.
pub const DEFAULT_SCAN_RATE: u32 = 200;
pub const DEFAULT_SCAN_TIMEOUT: Duration = Duration::from_secs(1);
/// Addresses one range may hold (a /16): a typo like `/8` for `/24` is an
/// error, not a scan of 16 million addresses.
pub const MAX_SCAN_RANGE_ADDRESSES: u64 = 1 << 16;
/// The seed's group; the port is ours.
pub const DEFAULT_MULTICAST_GROUP: &str = "224.0.0.1:9099";
pub const DEFAULT_MULTICAST_INTERVAL: Duration = Duration::from_secs(60);
/// Health checks (seed: TCP, HTTP GET /health, gRPC grpc.health.v1; three
/// failures mark a node unavailable).
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Seed: load is read every 30 s; above 80 % scale up, below 30 % down.
pub const DEFAULT_AUTOSCALE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_SCALE_UP_ABOVE: f64 = 80.0;
pub const DEFAULT_SCALE_DOWN_BELOW: f64 = 30.0;
/// Evaluations in a row past a threshold before acting (hysteresis).
pub const DEFAULT_AUTOSCALE_SUSTAIN: u32 = 2;
pub const DEFAULT_AUTOSCALE_COOLDOWN: Duration = Duration::from_secs(120);
pub const DEFAULT_ALERT_INTERVAL: Duration = Duration::from_secs(15);
/// Firing alerts are sent again this often (Alertmanager forgets an alert
/// whose `endsAt` passes without a resend).
pub const DEFAULT_ALERT_RESEND: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostManagerConfig {
    /// Redis holding the points and the inventory. Empty means
    /// `writer.redis_url`.
    pub redis_url: String,
    /// How often the inventory is rebuilt from the hosts' metadata.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How often agents report: a host is `stale` after 3 of these without
    /// a point.
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
    /// A host without a point for this long is `down`.
    #[serde(with = "humantime_serde")]
    pub down_after: Duration,
    pub scan: ScanConfig,
    pub multicast: MulticastConfig,
    pub health: HealthConfig,
    pub autoscale: AutoscaleConfig,
    pub alerts: AlertsConfig,
}

impl Default for HostManagerConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            report_interval: DEFAULT_REPORT_INTERVAL,
            down_after: DEFAULT_DOWN_AFTER,
            scan: ScanConfig::default(),
            multicast: MulticastConfig::default(),
            health: HealthConfig::default(),
            autoscale: AutoscaleConfig::default(),
            alerts: AlertsConfig::default(),
        }
    }
}

/// TCP scan of address ranges: a host with one of `ports` open is
/// `discovered` until its agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// CIDR ranges (`192.0.2.0/24`) or single addresses. Empty (the
    /// default): no scan, nothing is sent.
    pub ranges: Vec<String>,
    pub ports: Vec<u16>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// Connection attempts started per second.
    pub rate: u32,
    /// Deadline of one connection attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            ranges: Vec::new(),
            ports: DEFAULT_SCAN_PORTS.to_vec(),
            interval: DEFAULT_SCAN_INTERVAL,
            concurrency: DEFAULT_SCAN_CONCURRENCY,
            rate: DEFAULT_SCAN_RATE,
            timeout: DEFAULT_SCAN_TIMEOUT,
        }
    }
}

/// UDP multicast discovery: host-manager sends a discover datagram to the
/// group; agents answer with an announcement (and announce on start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MulticastConfig {
    pub enabled: bool,
    /// Group and port.
    pub group: SocketAddrV4,
    /// Address of the interface to send and join on. The default keeps
    /// datagrams on loopback; set the LAN interface's address to discover
    /// a real network.
    pub interface: Ipv4Addr,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for MulticastConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            group: DEFAULT_MULTICAST_GROUP.parse().expect("valid default"),
            interface: Ipv4Addr::LOCALHOST,
            interval: DEFAULT_MULTICAST_INTERVAL,
        }
    }
}

/// One kind of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// TCP connect to the member's gRPC port.
    Tcp,
    /// GET /health on its admin port, 200 expected.
    Http,
    /// `grpc.health.v1.Health/Check` on its gRPC port, SERVING expected.
    Grpc,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::Grpc => "grpc",
        }
    }
}

/// Health checks of the cluster's members (with `cluster.endpoints`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    pub checks: Vec<CheckKind>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Deadline of one check.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Rounds in a row with a failed check before the member is marked
    /// offline through cluster-ctl.
    pub failure_threshold: u32,
    /// Rounds in a row with every check passing before a member the checks
    /// took offline is marked online again.
    pub success_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            checks: vec![CheckKind::Tcp, CheckKind::Http, CheckKind::Grpc],
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            success_threshold: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActuatorKind {
    /// Starts and stops storage-writer processes on this machine.
    #[default]
    Local,
    /// Patches the scale subresource of the writers' StatefulSet; the pod
    /// removed on a scale-down gets SIGTERM and drains like any writer.
    Kubernetes,
}

/// Load-driven scaling of the storage-writers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Load score (0-100) above which a writer is added...
    pub scale_up_above: f64,
    /// ...and below which one is removed.
    pub scale_down_below: f64,
    /// Evaluations in a row past a threshold before acting.
    pub sustain: u32,
    /// No decision for this long after an action.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    pub min_writers: u32,
    pub max_writers: u32,
    /// CPU a writer may use, in cores: 100 % of the CPU part of the score.
    pub cpu_cores_per_writer: f64,
    /// Resident memory a writer may use: 100 % of the memory part.
    pub memory_bytes_per_writer: u64,
    pub actuator: ActuatorKind,
    pub local: LocalActuatorConfig,
    pub kubernetes: KubernetesActuatorConfig,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: DEFAULT_AUTOSCALE_INTERVAL,
            scale_up_above: DEFAULT_SCALE_UP_ABOVE,
            scale_down_below: DEFAULT_SCALE_DOWN_BELOW,
            sustain: DEFAULT_AUTOSCALE_SUSTAIN,
            cooldown: DEFAULT_AUTOSCALE_COOLDOWN,
            min_writers: 1,
            max_writers: 4,
            cpu_cores_per_writer: 1.0,
            memory_bytes_per_writer: 1 << 30,
            actuator: ActuatorKind::Local,
            local: LocalActuatorConfig::default(),
            kubernetes: KubernetesActuatorConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalActuatorConfig {
    /// Where started writers keep their config, spool and log.
    pub work_dir: String,
    /// The `broker` binary to start writers with. Empty: the `broker`
    /// beside this executable, else `broker` on PATH.
    pub binary: String,
    /// Address the started writers bind and advertise (loopback default).
    pub bind_ip: Ipv4Addr,
}

impl Default for LocalActuatorConfig {
    fn default() -> Self {
        Self {
            work_dir: "data/autoscale".into(),
            binary: String::new(),
            bind_ip: Ipv4Addr::LOCALHOST,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesActuatorConfig {
    /// API server URL. Empty: the pod's service account when in a cluster,
    /// else `KUBECONFIG` / `~/.kube/config`.
    pub api_url: String,
    pub namespace: String,
    /// The storage-writers' StatefulSet, scaled through its scale
    /// subresource.
    pub statefulset: String,
}

impl Default for KubernetesActuatorConfig {
    fn default() -> Self {
        Self {
            api_url: String::new(),
            namespace: "monitoring-broker".into(),
            statefulset: "storage-writer".into(),
        }
    }
}

/// A comparison of an alert rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertOp {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl AlertOp {
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            AlertOp::Gt => value > threshold,
            AlertOp::Ge => value >= threshold,
            AlertOp::Lt => value < threshold,
            AlertOp::Le => value <= threshold,
            AlertOp::Eq => value == threshold,
            AlertOp::Ne => value != threshold,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AlertOp::Gt => ">",
            AlertOp::Ge => ">=",
            AlertOp::Lt => "<",
            AlertOp::Le => "<=",
            AlertOp::Eq => "==",
            AlertOp::Ne => "!=",
        }
    }
}

/// `metric op threshold` on each host's newest point, true for `for`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Alert name (Alertmanager's `alertname`).
    pub name: String,
    pub metric: String,
    pub op: AlertOp,
    pub threshold: f64,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", with = "humantime_serde", default)]
    pub for_: Duration,
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Extra labels of the alert.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_severity() -> String {
    "warning".into()
}

/// The built-in rule: a host `down` (no point for `down_after`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostDownRule {
    pub enabled: bool,
    pub severity: String,
}

impl Default for HostDownRule {
    fn default() -> Self {
        Self {
            enabled: true,
            severity: "critical".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Alertmanager base URLs (`http://host:9093`): alerts are POSTed to
    /// `/api/v2/alerts`. Empty: alerts are only listed at /api/alerts.
    pub alertmanagers: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub resend: Duration,
    pub host_down: HostDownRule,
    pub rules: Vec<AlertRule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            alertmanagers: Vec::new(),
            interval: DEFAULT_ALERT_INTERVAL,
            resend: DEFAULT_ALERT_RESEND,
            host_down: HostDownRule::default(),
            rules: Vec::new(),
        }
    }
}

/// Parses a scan range: CIDR or a single IPv4/IPv6 address.
pub fn parse_range(s: &str) -> Result<ipnet::IpNet, String> {
    let net: ipnet::IpNet = if s.contains('/') {
        s.parse()
            .map_err(|_| format!("{s:?} is not a CIDR range like 192.0.2.0/24"))?
    } else {
        let ip: std::net::IpAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is not an address or a CIDR range"))?;
        ip.into()
    };
    let bits = match net {
        ipnet::IpNet::V4(n) => 32 - u32::from(n.prefix_len()),
        ipnet::IpNet::V6(n) => 128 - u32::from(n.prefix_len()),
    };
    if bits > 16 {
        return Err(format!(
            "{s:?} holds 2^{bits} addresses, more than {MAX_SCAN_RANGE_ADDRESSES} (a /16); split it"
        ));
    }
    Ok(net)
}

impl HostManagerConfig {
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        let nonzero = |bad: &mut dyn FnMut(&str, String), key: &str, d: Duration| {
            if d.is_zero() {
                bad(key, "must be greater than zero".into());
            }
        };
        if let Err(e) = super::check_redis_url(&self.redis_url) {
            bad("host_manager.redis_url", e);
        }
        nonzero(bad, "host_manager.refresh_interval", self.refresh_interval);
        nonzero(bad, "host_manager.report_interval", self.report_interval);
        if self.down_after <= self.report_interval * 3 {
            bad(
                "host_manager.down_after",
                format!(
                    "{:?} must be longer than 3 report intervals ({:?}), when a host turns stale",
                    self.down_after,
                    self.report_interval * 3
                ),
            );
        }
        let s = &self.scan;
        for (i, r) in s.ranges.iter().enumerate() {
            if let Err(e) = parse_range(r) {
                bad(&format!("host_manager.scan.ranges[{i}]"), e);
            }
        }
        if !s.ranges.is_empty() && s.ports.is_empty() {
            bad(
                "host_manager.scan.ports",
                "is empty, so the ranges cannot be scanned".into(),
            );
        }
        if s.ports.contains(&0) {
            bad("host_manager.scan.ports", "port 0 cannot be scanned".into());
        }
        if s.concurrency == 0 {
            bad(
                "host_manager.scan.concurrency",
                "must be greater than zero".into(),
            );
        }
        if s.rate == 0 {
            bad("host_manager.scan.rate", "must be greater than zero".into());
        }
        nonzero(bad, "host_manager.scan.interval", s.interval);
        nonzero(bad, "host_manager.scan.timeout", s.timeout);
        let m = &self.multicast;
        if !m.group.ip().is_multicast() {
            bad(
                "host_manager.multicast.group",
                format!("{} is not a multicast address (224.0.0.0/4)", m.group.ip()),
            );
        }
        nonzero(bad, "host_manager.multicast.interval", m.interval);
        let h = &self.health;
        if h.enabled && h.checks.is_empty() {
            bad(
                "host_manager.health.checks",
                "is empty: list tcp, http and/or grpc, or set health.enabled: false".into(),
            );
        }
        nonzero(bad, "host_manager.health.interval", h.interval);
        nonzero(bad, "host_manager.health.timeout", h.timeout);
        if h.failure_threshold == 0 {
            bad(
                "host_manager.health.failure_threshold",
                "must be greater than zero".into(),
            );
        }
        if h.success_threshold == 0 {
            bad(
                "host_manager.health.success_threshold",
                "must be greater than zero".into(),
            );
        }
        let a = &self.autoscale;
        nonzero(bad, "host_manager.autoscale.interval", a.interval);
        for (key, v) in [
            ("host_manager.autoscale.scale_up_above", a.scale_up_above),
            (
                "host_manager.autoscale.scale_down_below",
                a.scale_down_below,
            ),
        ] {
            if !(0.0..=100.0).contains(&v) {
                bad(key, format!("{v} is not a score between 0 and 100"));
            }
        }
        if a.scale_down_below >= a.scale_up_above {
            bad(
                "host_manager.autoscale.scale_down_below",
                format!(
                    "{} must be below scale_up_above ({}), or the scaler would flap",
                    a.scale_down_below, a.scale_up_above
                ),
            );
        }
        if a.sustain == 0 {
            bad(
                "host_manager.autoscale.sustain",
                "must be greater than zero".into(),
            );
        }
        if a.min_writers == 0 {
            bad(
                "host_manager.autoscale.min_writers",
                "must be at least 1: the ring needs a writer".into(),
            );
        }
        if a.max_writers < a.min_writers {
            bad(
                "host_manager.autoscale.max_writers",
                format!("{} is below min_writers ({})", a.max_writers, a.min_writers),
            );
        }
        if a.max_writers > 64 {
            bad(
                "host_manager.autoscale.max_writers",
                format!("{} is above 64", a.max_writers),
            );
        }
        if a.cpu_cores_per_writer.is_nan() || a.cpu_cores_per_writer <= 0.0 {
            bad(
                "host_manager.autoscale.cpu_cores_per_writer",
                "must be greater than zero".into(),
            );
        }
        if a.memory_bytes_per_writer == 0 {
            bad(
                "host_manager.autoscale.memory_bytes_per_writer",
                "must be greater than zero".into(),
            );
        }
        if a.actuator == ActuatorKind::Kubernetes
            && (a.kubernetes.namespace.is_empty() || a.kubernetes.statefulset.is_empty())
        {
            bad(
                "host_manager.autoscale.kubernetes",
                "namespace and statefulset must be set for the kubernetes actuator".into(),
            );
        }
        let al = &self.alerts;
        for (i, u) in al.alertmanagers.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                bad(
                    &format!("host_manager.alerts.alertmanagers[{i}]"),
                    format!("{u:?} must be an http:// or https:// URL"),
                );
            }
        }
        nonzero(bad, "host_manager.alerts.interval", al.interval);
        nonzero(bad, "host_manager.alerts.resend", al.resend);
        let mut names = std::collections::HashSet::new();
        for (i, r) in al.rules.iter().enumerate() {
            let key = format!("host_manager.alerts.rules[{i}]");
            if r.name.is_empty() || !r.name.bytes().all(super::id_byte) {
                bad(
                    &format!("{key}.name"),
                    format!("{:?} must be letters, digits, '.', '_' or '-'", r.name),
                );
            }
            if !names.insert(&r.name) || r.name == "HostDown" {
                bad(
                    &format!("{key}.name"),
                    format!("{:?} is used twice (HostDown is the built-in rule)", r.name),
                );
            }
            if r.metric.is_empty() {
                bad(&format!("{key}.metric"), "is empty".into());
            }
            if !r.threshold.is_finite() {
                bad(
                    &format!("{key}.threshold"),
                    "must be a finite number".into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cidr_or_addresses_and_bounded() {
        assert!(parse_range("127.0.0.0/30").is_ok());
        assert!(parse_range("127.0.0.1").is_ok());
        assert!(parse_range("::1").is_ok());
        assert!(parse_range("127.0.0.0/8").unwrap_err().contains("split it"));
        assert!(parse_range("127.0.0/24").unwrap_err().contains("CIDR"));
        assert!(parse_range("host").unwrap_err().contains("not an address"));
    }
}
