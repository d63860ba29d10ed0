//! What carries out a scaling decision. [`Actuator`] is the seam; the
//! [`LocalActuator`] starts and stops storage-writer processes on this
//! machine, each with its own ports (bound on port 0, so the kernel picks
//! free ones) and its own spool directory, which join, drain and leave
//! through cluster-ctl like any writer. A scale-down sends SIGTERM to the
//! newest writer it started: the writer sets itself draining, flushes what
//! it accepted and leaves, so nothing acked is lost.

use broker_common::BrokerConfig;
use broker_common::config::LocalActuatorConfig;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tokio::process::{Child, Command};

pub trait Actuator: Send + Sync {
    fn name(&self) -> &'static str;
    /// Adds one writer; its id.
    fn scale_up(&self) -> BoxFuture<'_, Result<String, String>>;
    /// Removes one writer (drained first); its id, or None when there is
    /// none this actuator may remove.
    fn scale_down(&self) -> BoxFuture<'_, Result<Option<String>, String>>;
    /// Stops what it started (host-manager is shutting down).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

struct Started {
    id: String,
    child: Child,
}

pub struct LocalActuator {
    base: BrokerConfig,
    config: LocalActuatorConfig,
    binary: PathBuf,
    started: tokio::sync::Mutex<Vec<Started>>,
    next: Mutex<u32>,
}

/// `broker` beside this executable, else on PATH.
fn find_broker(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join("broker");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("broker")
}

impl LocalActuator {
    pub fn new(base: &BrokerConfig) -> Self {
        let config = base.host_manager.autoscale.local.clone();
        Self {
            binary: find_broker(&config.binary),
            base: base.clone(),
            config,
            started: tokio::sync::Mutex::new(Vec::new()),
            next: Mutex::new(0),
        }
    }

    /// The config of the `n`th writer this actuator starts.
    fn writer_config(&self, id: &str, dir: &std::path::Path) -> BrokerConfig {
        let mut c = self.base.clone();
        c.node_id = id.to_string();
        c.grpc_listen = std::net::SocketAddr::new(self.config.bind_ip.into(), 0);
        c.http_listen = std::net::SocketAddr::new(self.config.bind_ip.into(), 0);
        c.cluster.advertise_addr = String::new();
        c.writer.spool_dir = dir.join("spool").display().to_string();
        // A started writer runs no host-manager of its own.
        c.host_manager.autoscale.enabled = false;
        c
    }

    async fn start_one(&self) -> Result<String, String> {
        let n = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        let id = format!("{}-writer-{n}", self.base.node_id);
        let dir = PathBuf::from(&self.config.work_dir).join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let yaml =
            serde_yaml_ng::to_string(&self.writer_config(&id, &dir)).map_err(|e| e.to_string())?;
        let config_path = dir.join("broker.yaml");
        std::fs::write(&config_path, yaml)
            .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
        let log = std::fs::File::create(dir.join("writer.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(["run", "--service", "storage-writer", "--config"])
            .arg(&config_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // Our own BROKER_* overrides (node id, ports) must not reach it.
        for (k, _) in std::env::vars() {
            if k.starts_with(broker_common::config::ENV_PREFIX) {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().map_err(|e| {
            format!(
                "starting {} run --service storage-writer: {e}",
                self.binary.display()
            )
        })?;
        tracing::info!(writer = %id, pid = child.id().unwrap_or(0), dir = %dir.display(), "autoscale: started a storage-writer");
        self.started.lock().await.push(Started {
            id: id.clone(),
            child,
        });
        Ok(id)
    }

    async fn stop_newest(&self) -> Result<Option<String>, String> {
        let Some(mut s) = self.started.lock().await.pop() else {
            return Ok(None);
        };
        terminate(&mut s, self.base.shutdown_grace + Duration::from_secs(5)).await;
        Ok(Some(s.id))
    }

    /// Ids of the writers it started and that still run.
    pub async fn started(&self) -> Vec<String> {
        self.started
            .lock()
            .await
            .iter()
            .map(|s| s.id.clone())
            .collect()
    }
}

/// SIGTERM, then wait for the exit (SIGKILL after `grace`).
async fn terminate(s: &mut Started, grace: Duration) {
    if let Some(pid) = s.child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    match tokio::time::timeout(grace, s.child.wait()).await {
        Ok(Ok(status)) => {
            tracing::info!(writer = %s.id, %status, "autoscale: storage-writer drained and stopped")
        }
        _ => {
            tracing::warn!(writer = %s.id, ?grace, "autoscale: storage-writer did not stop in time, killing it");
            let _ = s.child.kill().await;
        }
    }
}

impl Actuator for LocalActuator {
    fn name(&self) -> &'static str {
        "local"
    }

    fn scale_up(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(self.start_one())
    }

    fn scale_down(&self) -> BoxFuture<'_, Result<Option<String>, String>> {
        Box::pin(self.stop_newest())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let grace = self.base.shutdown_grace + Duration::from_secs(5);
            let mut all = std::mem::take(&mut *self.started.lock().await);
            for s in all.iter_mut().rev() {
                terminate(s, grace).await;
            }
        })
    }
}

/// Scales the storage-writers' StatefulSet through its scale subresource
/// (`GET` / merge-`PATCH` `.../statefulsets/{name}/scale`) with `kube`.
/// Kubernetes adds the next ordinal on a scale-up (it joins cluster-ctl as
/// it starts) and removes the highest on a scale-down: that pod gets
/// SIGTERM, drains, flushes and leaves within its grace period, so nothing
/// acked is lost. The client is built on first use (in a pod: its service
/// account, which needs `get` and `patch` on `statefulsets/scale`; see
/// deploy/kubernetes-plain/host-manager.yaml).
pub struct KubernetesActuator {
    config: broker_common::config::KubernetesActuatorConfig,
    api: tokio::sync::OnceCell<kube::Api<k8s_openapi::api::apps::v1::StatefulSet>>,
}

impl KubernetesActuator {
    pub fn new(config: &broker_common::config::KubernetesActuatorConfig) -> Self {
        Self {
            config: config.clone(),
            api: tokio::sync::OnceCell::new(),
        }
    }

    async fn api(&self) -> Result<&kube::Api<k8s_openapi::api::apps::v1::StatefulSet>, String> {
        self.api
            .get_or_try_init(|| async {
                let kc = if self.config.api_url.is_empty() {
                    kube::Config::infer().await.map_err(|e| {
                        format!("no Kubernetes API configured (in-cluster or kubeconfig): {e}")
                    })?
                } else {
                    let url =
                        self.config.api_url.parse().map_err(|e| {
                            format!("host_manager.autoscale.kubernetes.api_url: {e}")
                        })?;
                    kube::Config::new(url)
                };
                let client =
                    kube::Client::try_from(kc).map_err(|e| format!("Kubernetes client: {e}"))?;
                Ok(kube::Api::namespaced(client, &self.config.namespace))
            })
            .await
    }

    fn what(&self) -> String {
        format!(
            "statefulset {}/{}",
            self.config.namespace, self.config.statefulset
        )
    }

    /// The StatefulSet's desired replicas.
    pub async fn replicas(&self) -> Result<i32, String> {
        let scale = self
            .api()
            .await?
            .get_scale(&self.config.statefulset)
            .await
            .map_err(|e| format!("reading the scale of {}: {e}", self.what()))?;
        Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    async fn set_replicas(&self, n: i32) -> Result<(), String> {
        let patch = serde_json::json!({ "spec": { "replicas": n } });
        self.api()
            .await?
            .patch_scale(
                &self.config.statefulset,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(|e| format!("scaling {} to {n}: {e}", self.what()))?;
        Ok(())
    }

    async fn step(&self, delta: i32) -> Result<(i32, i32), String> {
        let from = self.replicas().await?;
        let to = (from + delta).max(0);
        if to != from {
            self.set_replicas(to).await?;
        }
        tracing::info!(statefulset = %self.what(), from, to, "autoscale: scaled the writers");
        Ok((from, to))
    }
}

impl Actuator for KubernetesActuator {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn scale_up(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let (from, to) = self.step(1).await?;
            Ok(format!(
                "{} replicas {from} -> {to} ({}-{})",
                self.what(),
                self.config.statefulset,
                to - 1
            ))
        })
    }

    fn scale_down(&self) -> BoxFuture<'_, Result<Option<String>, String>> {
        Box::pin(async move {
            let (from, to) = self.step(-1).await?;
            Ok((to < from).then(|| {
                format!(
                    "{} replicas {from} -> {to} ({}-{to} drains)",
                    self.what(),
                    self.config.statefulset
                )
            }))
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        // The StatefulSet outlives host-manager: nothing to stop.
        Box::pin(async {})
    }
}
