//! host-manager (seed 主机管理机制): the inventory of monitored hosts and
//! their state, discovery (TCP scan, UDP multicast, registration), health
//! checks of the broker's own members feeding cluster-ctl's offline /
//! online path, load scoring and autoscaling of the storage-writers, and
//! alerts to Alertmanager.
//!
//! # Layout
//! - [`inventory`]: hosts, their state (`up`, `stale`, `down`,
//!   `discovered`), persisted in Redis.
//! - [`discovery`]: [`discovery::scan`] and [`discovery::multicast`].
//! - [`health`]: TCP / HTTP / gRPC checks of members, offline after
//!   `failure_threshold` failed rounds.
//! - [`load`], [`autoscale`], [`actuator`]: the load score, the decision
//!   with hysteresis and cooldown, and what carries it out.
//! - [`alerts`]: threshold rules and HostDown, Alertmanager API v2.
//! - [`api`]: `/api/hosts`, `/api/alerts`, `/api/autoscale`,
//!   `/api/health-checks`, `/api/discovery` and the gRPC `HostService`.
//! - [`metrics`]: the `broker_host_manager_*` metrics.

#![forbid(unsafe_code)]

pub mod actuator;
pub mod alerts;
pub mod api;
pub mod autoscale;
pub mod discovery;
pub mod health;
/// The HTTP/1 client of checks, scrapes and alerts (moved to broker-common).
pub use broker_common::http_client;
pub mod inventory;
pub mod load;
pub mod metrics;

use broker_common::config::ActuatorKind;
use broker_common::{BrokerConfig, Readiness};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub const HOST_SERVICE_NAME: &str = "broker.v1.HostService";
/// Scaling decisions kept for `autoscale status`.
const DECISIONS_KEPT: usize = 20;

/// The tick of a periodic loop (the first at once, missed ticks delayed,
/// not bunched) that ends when `stop` is cancelled.
pub(crate) struct Every(tokio::time::Interval);

impl Every {
    pub(crate) fn new(period: std::time::Duration) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self(tick)
    }

    /// Waits for the next tick; false once `stop` is cancelled.
    pub(crate) async fn next(&mut self, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = self.0.tick() => true,
        }
    }
}

/// What autoscale status shows.
#[derive(Debug, Default)]
pub struct AutoscaleState {
    pub decider: autoscale::Decider,
    pub score: Option<f64>,
    pub writers: u32,
    pub loads: Vec<load::WriterLoad>,
    /// Newest first.
    pub decisions: VecDeque<autoscale::Decision>,
}

/// Last discovery results.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DiscoveryState {
    pub last_scan: Option<discovery::scan::ScanReport>,
    pub announcements: u64,
    pub multicast_group: Option<String>,
}

pub struct Shared {
    pub config: BrokerConfig,
    pub inventory: inventory::Inventory,
    pub alerts: alerts::Alerts,
    pub health: health::HealthView,
    pub autoscale: Mutex<AutoscaleState>,
    pub discovery: Mutex<DiscoveryState>,
    pub metrics: metrics::HostMetrics,
    pub actuator: Option<Arc<dyn actuator::Actuator>>,
    /// TLS and token of calls to members (health checks, load scrapes,
    /// cluster-ctl).
    pub security: broker_common::security::ClientSecurity,
}

/// A started host-manager: its loops and what serves its API.
pub struct HostManager {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ready: Arc<tokio::sync::Notify>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
}

fn redis_client(url: &str) -> anyhow::Result<fred::clients::Client> {
    use fred::interfaces::ClientLike;
    let config = fred::types::config::Config::from_url(url)
        .map_err(|e| anyhow::anyhow!("host_manager.redis_url {url:?}: {e}"))?;
    let client = fred::types::Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = std::time::Duration::from_secs(5))
        .set_policy(fred::types::config::ReconnectPolicy::new_exponential(
            0, 100, 5_000, 2,
        ))
        .build()?;
    client.connect();
    Ok(client)
}

impl HostManager {
    /// Connects to Redis, loads the persisted inventory (in the
    /// background, retrying) and starts every loop the config enables.
    /// `security` is for what it probes and scrapes (the member token:
    /// a probed address may be anyone's), `operator` for its calls to
    /// cluster-ctl, which mark members offline and online for the operator
    /// (the admin token).
    pub fn start(
        config: &BrokerConfig,
        security: &broker_common::security::ClientSecurity,
        operator: &broker_common::security::ClientSecurity,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        let hm = &config.host_manager;
        let url = if hm.redis_url.is_empty() {
            config.query.effective_redis_url(&config.writer)
        } else {
            &hm.redis_url
        };
        anyhow::ensure!(
            !url.is_empty(),
            "host_manager.redis_url and writer.redis_url are empty: set one (or use `broker up`, which launches a local redis-server)"
        );
        let layout = storage_layout::for_reader(&config.writer).ok_or_else(|| {
            anyhow::anyhow!("writer.layout: unknown layout {:?}", config.writer.layout)
        })?;
        let store = query_api::store::Store::connect(
            url,
            1,
            layout,
            config.query.read_batch,
            config.query.timeout,
        )?
        .with_retention(config.ttl);
        let redis = redis_client(url)?;
        let actuator: Option<Arc<dyn actuator::Actuator>> = if hm.autoscale.enabled {
            anyhow::ensure!(
                !config.cluster.endpoints.is_empty(),
                "host_manager.autoscale.enabled needs cluster.endpoints: writers join and leave through cluster-ctl"
            );
            match hm.autoscale.actuator {
                ActuatorKind::Local => Some(Arc::new(actuator::LocalActuator::new(config))),
                ActuatorKind::Kubernetes => Some(Arc::new(actuator::KubernetesActuator::new(
                    &hm.autoscale.kubernetes,
                ))),
            }
        } else {
            None
        };
        let shared = Arc::new(Shared {
            config: config.clone(),
            inventory: inventory::Inventory::new(hm, redis, store),
            alerts: alerts::Alerts::default(),
            health: health::HealthView::default(),
            autoscale: Mutex::default(),
            discovery: Mutex::new(DiscoveryState {
                multicast_group: hm.multicast.enabled.then(|| hm.multicast.group.to_string()),
                ..Default::default()
            }),
            metrics: metrics::HostMetrics::new(registry),
            actuator,
            security: security.clone(),
        });
        let stop = CancellationToken::new();
        let ready = Arc::new(tokio::sync::Notify::new());
        let loaded = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(inventory_loop(
            shared.clone(),
            stop.clone(),
            ready.clone(),
            loaded.clone(),
        )));
        tasks.push(tokio::spawn(alerts_loop(
            shared.clone(),
            stop.clone(),
            ready.clone(),
            loaded.clone(),
        )));
        if !hm.scan.ranges.is_empty() {
            tasks.push(tokio::spawn(scan_loop(shared.clone(), stop.clone())));
        }
        if hm.multicast.enabled {
            tasks.push(tokio::spawn(multicast_loop(shared.clone(), stop.clone())));
        }
        if !config.cluster.endpoints.is_empty() {
            let client = cluster_client::ClusterClient::new(&config.cluster.endpoints, operator)
                .map_err(|e| anyhow::anyhow!("cluster.endpoints: {e}"))?;
            if hm.health.enabled {
                tasks.push(tokio::spawn(health::run(
                    hm.health.clone(),
                    client.clone(),
                    security.clone(),
                    shared.health.clone(),
                    shared.metrics.clone(),
                    stop.clone(),
                )));
            }
            if shared.actuator.is_some() {
                tasks.push(tokio::spawn(autoscale_loop(
                    shared.clone(),
                    client,
                    stop.clone(),
                )));
            }
        }
        tracing::info!(
            redis = %url,
            scan_ranges = hm.scan.ranges.len(),
            multicast = hm.multicast.enabled,
            health_checks = hm.health.enabled && !config.cluster.endpoints.is_empty(),
            autoscale = hm.autoscale.enabled,
            alertmanagers = hm.alerts.alertmanagers.len(),
            "host-manager started"
        );
        Ok(Self {
            shared,
            stop,
            tasks,
            ready,
            loaded,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Sets readiness `host-manager` once the persisted inventory is read.
    pub fn report_readiness(&self, readiness: &Readiness) {
        readiness.set("host-manager", false);
        let (r, ready, loaded) = (readiness.clone(), self.ready.clone(), self.loaded.clone());
        tokio::spawn(async move {
            let notified = ready.notified();
            if !loaded.load(std::sync::atomic::Ordering::SeqCst) {
                notified.await;
            }
            r.set("host-manager", true);
        });
    }

    pub fn http_routes(&self) -> axum::Router {
        api::routes(self.shared.clone())
    }

    pub fn grpc_service(
        &self,
    ) -> broker_proto::v1::host_service_server::HostServiceServer<api::HostGrpc> {
        api::HostGrpc::new(self.shared.clone()).into_server()
    }

    /// Stops the loops, and the writers the local actuator started.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(a) = &self.shared.actuator {
            a.shutdown().await;
        }
    }
}

async fn inventory_loop(
    shared: Arc<Shared>,
    stop: CancellationToken,
    ready: Arc<tokio::sync::Notify>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
) {
    let hm = &shared.config.host_manager;
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match shared.inventory.load().await {
            Ok(n) => {
                tracing::info!(hosts = n, "inventory loaded");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the persisted inventory failed, retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
    // HostDown fired for the hosts persisted down (before a restart too):
    // a host that reports again before the first alert evaluation then
    // still gets its resolution sent, instead of lingering in
    // Alertmanager until its endsAt.
    let hosts = shared.inventory.list(None);
    shared.alerts.evaluate(
        alerts::host_down(&hm.alerts, &hosts),
        broker_common::unix_now(),
    );
    loaded.store(true, std::sync::atomic::Ordering::SeqCst);
    ready.notify_waiters();
    let mut every = crate::Every::new(hm.refresh_interval);
    while every.next(&stop).await {
        match shared.inventory.refresh(broker_common::unix_now()).await {
            Ok(transitions) => {
                for t in transitions {
                    match t.to {
                        inventory::HostState::Down => {
                            tracing::warn!(host = %t.id, from = ?t.from, "host down")
                        }
                        _ => {
                            tracing::info!(host = %t.id, from = ?t.from, to = t.to.as_str(), "host state changed")
                        }
                    }
                }
                let hosts = shared.inventory.list(None);
                for s in ["up", "stale", "down", "discovered"] {
                    let n = hosts.iter().filter(|h| h.state.as_str() == s).count();
                    shared
                        .metrics
                        .hosts
                        .get_or_create(&vec![("state".into(), s.into())])
                        .set(n as i64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "refreshing the inventory failed"),
        }
    }
}

async fn alerts_loop(
    shared: Arc<Shared>,
    stop: CancellationToken,
    ready: Arc<tokio::sync::Notify>,
    loaded: Arc<std::sync::atomic::AtomicBool>,
) {
    // Nothing is evaluated against an inventory not yet read back: it
    // would resolve what is still true.
    let notified = ready.notified();
    if !loaded.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = notified => {}
        }
    }
    let config = &shared.config.host_manager.alerts;
    let http = http_client::HttpClient::default();
    let generator = format!("http://{}/api/alerts", shared.config.http_listen);
    let mut every = crate::Every::new(config.interval);
    while every.next(&stop).await {
        let hosts = shared.inventory.list(None);
        let mut active = alerts::host_down(config, &hosts);
        let reporting: Vec<&inventory::HostRecord> = hosts
            .iter()
            .filter(|h| {
                matches!(
                    h.state,
                    inventory::HostState::Up | inventory::HostState::Stale
                )
            })
            .collect();
        let mut failed = false;
        if !reporting.is_empty() {
            let ids: Vec<String> = reporting.iter().map(|h| h.id.clone()).collect();
            let ts: Vec<Vec<i64>> = reporting.iter().map(|h| vec![h.last_seen]).collect();
            for rule in &config.rules {
                match shared
                    .inventory
                    .store()
                    .values_of(&ids, &ts, &rule.metric)
                    .await
                {
                    Ok(values) => {
                        for (h, v) in reporting.iter().zip(values) {
                            if let Some(o) = v.first().and_then(|v| alerts::threshold(rule, h, *v))
                            {
                                active.push(o);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(rule = %rule.name, error = %e, "alert rule not evaluated");
                        failed = true;
                    }
                }
            }
        }
        if failed {
            // Do not resolve alerts on a failed read.
            continue;
        }
        let now = broker_common::unix_now();
        shared.alerts.evaluate(active, now);
        let firing = shared
            .alerts
            .list()
            .iter()
            .filter(|a| a.state == "firing")
            .count();
        shared.metrics.alerts_firing.set(firing as i64);
        let due = shared.alerts.due(now, config.resend, &generator);
        if due.is_empty() {
            continue;
        }
        if alerts::deliver(&http, config, &due).await {
            shared.alerts.delivered(now, config.resend);
        } else {
            shared.metrics.alert_deliveries_failed.inc();
        }
    }
}

async fn scan_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let config = shared.config.host_manager.scan.clone();
    let mut every = crate::Every::new(config.interval);
    while every.next(&stop).await {
        let report = tokio::select! {
            _ = stop.cancelled() => return,
            r = discovery::scan::scan_once(&config, broker_common::unix_now()) => r,
        };
        shared.metrics.scan_attempts.inc_by(report.attempts as u64);
        tracing::info!(
            attempts = report.attempts,
            hosts = report.open.len(),
            ms = report.duration_ms,
            "scan done"
        );
        for (ip, ports) in &report.open {
            shared
                .inventory
                .scanned(*ip, ports.clone(), broker_common::unix_now())
                .await;
        }
        shared
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_scan = Some(report);
    }
}

async fn multicast_loop(shared: Arc<Shared>, stop: CancellationToken) {
    use discovery::multicast::{MAX_DATAGRAM, Message, discover, group_socket, sender_socket};
    let config = shared.config.host_manager.multicast.clone();
    let (sender, listener) = match (
        sender_socket(config.interface),
        group_socket(config.group, config.interface),
    ) {
        (Ok(s), Ok(l)) => (s, l),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(group = %config.group, interface = %config.interface, error = %e, "multicast discovery cannot start");
            return;
        }
    };
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut a, mut b) = (vec![0u8; MAX_DATAGRAM], vec![0u8; MAX_DATAGRAM]);
    loop {
        let (n, from, buf) = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = discover(&sender, config.group).await {
                    tracing::warn!(group = %config.group, error = %e, "multicast discover not sent");
                }
                continue;
            }
            r = sender.recv_from(&mut a) => match r { Ok((n, f)) => (n, f, &a), Err(_) => continue },
            r = listener.recv_from(&mut b) => match r { Ok((n, f)) => (n, f, &b), Err(_) => continue },
        };
        match Message::decode(&buf[..n]) {
            Ok(Message::Announce {
                host_id,
                addr,
                labels,
            }) => {
                if !api::valid_host_id(&host_id) {
                    tracing::debug!(%from, host = %host_id, "announcement with an invalid host id ignored");
                    continue;
                }
                let addr = if addr.is_empty() {
                    from.ip().to_string()
                } else {
                    addr
                };
                shared.metrics.announcements.inc();
                shared
                    .discovery
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .announcements += 1;
                shared
                    .inventory
                    .register(
                        &host_id,
                        &addr,
                        labels,
                        inventory::Source::Multicast,
                        broker_common::unix_now(),
                    )
                    .await;
            }
            Ok(Message::Discover) => {}
            Err(e) => tracing::debug!(%from, error = %e, "datagram ignored"),
        }
    }
}

async fn autoscale_loop(
    shared: Arc<Shared>,
    client: cluster_client::ClusterClient,
    stop: CancellationToken,
) {
    let config = shared.config.host_manager.autoscale.clone();
    let actuator = shared.actuator.clone().expect("autoscale has an actuator");
    let cap = load::Capacity {
        cpu_cores: config.cpu_cores_per_writer,
        memory_bytes: config.memory_bytes_per_writer as f64,
        queued_points: shared.config.writer.max_queued_points as f64,
    };
    let mut reader = load::LoadReader::new(&shared.security);
    let mut every = crate::Every::new(config.interval);
    while every.next(&stop).await {
        let state = match client.members().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "autoscale: cluster-ctl unreachable, skipping");
                continue;
            }
        };
        let writers: Vec<(String, String)> = state
            .members
            .iter()
            .filter(|m| cluster_client::in_ring(m))
            .map(|m| (m.id.clone(), m.admin_addr.clone()))
            .collect();
        let loads = reader.read(&writers, &cap).await;
        let score = load::cluster_score(&loads);
        if let Some(s) = score {
            shared.metrics.load_score.set(s);
        }
        let n = writers.len() as u32;
        let mut decision = {
            let mut st = shared.autoscale.lock().unwrap_or_else(|e| e.into_inner());
            st.score = score;
            st.writers = n;
            st.loads = loads;
            st.decider
                .decide(score, n, &config, broker_common::unix_now_ms())
        };
        let action = decision.action;
        match action {
            autoscale::Action::ScaleUp => {
                tracing::info!(reason = %decision.reason, "autoscale: scaling up");
                decision.outcome = match actuator.scale_up().await {
                    Ok(id) => format!("started {id}"),
                    Err(e) => format!("error: {e}"),
                };
            }
            autoscale::Action::ScaleDown => {
                tracing::info!(reason = %decision.reason, "autoscale: scaling down");
                decision.outcome = match actuator.scale_down().await {
                    Ok(Some(id)) => format!("drained and stopped {id}"),
                    Ok(None) => "no writer this actuator started is left to stop".into(),
                    Err(e) => format!("error: {e}"),
                };
            }
            autoscale::Action::Hold => {}
        }
        if action != autoscale::Action::Hold {
            let outcome = if decision.outcome.starts_with("error") {
                "error"
            } else {
                "ok"
            };
            let a = if action == autoscale::Action::ScaleUp {
                "scale_up"
            } else {
                "scale_down"
            };
            shared
                .metrics
                .scale_actions
                .get_or_create(&vec![
                    ("action".into(), a.into()),
                    ("outcome".into(), outcome.into()),
                ])
                .inc();
        }
        let mut st = shared.autoscale.lock().unwrap_or_else(|e| e.into_inner());
        st.decisions.push_front(decision);
        st.decisions.truncate(DECISIONS_KEPT);
    }
}
