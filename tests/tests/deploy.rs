//! The deployment files, checked without a cluster:
//!
//! - `deploy/kubernetes-plain`: rendered with `kubectl kustomize` (when kubectl is
//!   installed), every resource validated against the Kubernetes schemas by
//!   `kubernetes-validate --strict` (PyPI, offline schemas; a broken copy
//!   must fail, so the check is known to bite), every ConfigMap's
//!   `broker.yaml` loaded by the broker's own config loader with the
//!   variables its pod sets, and grace periods consistent with
//!   `shutdown_grace`.
//! - `deploy/kubernetes` (the default): the overlay with TLS and tokens, rendered
//!   and validated the same way; every broker workload mounts the Secret,
//!   probes over HTTPS, and its configuration loads with a real CA and
//!   tokens at the Secret's paths.
//! - `docker-compose.yml`: every broker service's configuration (the shared
//!   file plus its `BROKER_*` variables and its env_file) loads with TLS and
//!   every token as it ships, plain only with `BROKER_COMPOSE_SECURITY=plain`,
//!   joins the cluster, and its
//!   stop grace period covers `shutdown_grace`; the services are the
//!   sandbox's `COMPOSE` topology (`broker_sandbox`) and query-api.
//! - `broker.yaml` is exactly the defaults, and every `examples/**/*.yaml`
//!   loads.

use broker_common::BrokerConfig;
use broker_common::config::ConfigSource;
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Every broker workload of the manifests (all but Redis), sorted.
const BROKER_WORKLOADS: [&str; 6] = [
    "cluster-ctl",
    "host-manager",
    "ingest-gateway",
    "query-api",
    "shard-router",
    "storage-writer",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Loads `yaml` (a file's text) with `env` as the broker would.
fn load(origin: &str, yaml: &str, env: &[(String, String)]) -> BrokerConfig {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.yaml");
    std::fs::write(&file, yaml).unwrap();
    BrokerConfig::load(&ConfigSource {
        file: Some(&file),
        env: env.to_vec(),
        overrides: vec![],
    })
    .unwrap_or_else(|e| panic!("{origin}: {e}"))
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

/// The rendered manifests: `kubectl kustomize`, or the resource files the
/// kustomization lists when kubectl is not installed.
fn rendered() -> String {
    let dir = root().join("deploy/kubernetes-plain");
    let kustomization: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    // Every manifest in the directory is in the kustomization.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "{name} is not in kustomization.yaml"
            );
        }
    }
    match kustomize(&dir) {
        Ok(out) => {
            assert!(
                out.status.success(),
                "kubectl kustomize failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!("rendered with kubectl kustomize");
            String::from_utf8(out.stdout).unwrap()
        }
        Err(_) => {
            println!("kubectl not installed: validating the listed files unrendered");
            listed
                .iter()
                .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
                .collect::<Vec<_>>()
                .join("\n---\n")
        }
    }
}

/// `kubectl kustomize dir`, or the error if kubectl cannot be run.
fn kustomize(dir: &Path) -> std::io::Result<std::process::Output> {
    Command::new("kubectl").arg("kustomize").arg(dir).output()
}

/// `kubernetes-validate --strict` on `text`; Ok(output) or Err(output).
fn kubernetes_validate(text: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("manifests.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(["--kubernetes-version", "1.30.0"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    let both = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !both.contains("No module named"),
        "kubernetes-validate missing: run scripts/deps.sh (pip installs tests/requirements.txt)\n{both}"
    );
    if out.status.success() {
        Ok(both)
    } else {
        Err(both)
    }
}

fn env_of_container(c: &Value) -> Vec<(String, String)> {
    c["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e["name"].as_str()?;
            // fieldRef values come from the pod; stand in for them.
            let value = e["value"].as_str().unwrap_or("pod-0");
            Some((
                name.to_string(),
                value
                    .replace("$(POD_NAME)", "pod-0")
                    .replace("$(POD_IP)", "127.0.0.1"),
            ))
        })
        .collect()
}

#[test]
fn kubernetes_manifests_are_valid_and_consistent() {
    let text = rendered();
    if let Err(out) = kubernetes_validate(&text) {
        panic!("kubernetes-validate rejects deploy/kubernetes-plain:\n{out}");
    }
    // The check bites: an unknown field in a pod spec is refused.
    let broken = text.replacen(
        "terminationGracePeriodSeconds:",
        "terminationGracePeriodSecond:",
        1,
    );
    assert!(
        kubernetes_validate(&broken).is_err(),
        "kubernetes-validate accepted a misspelt field"
    );

    let docs = docs(&text);
    let kind = |d: &Value| d["kind"].as_str().unwrap_or_default().to_string();
    let configmaps: Vec<&Value> = docs.iter().filter(|d| kind(d) == "ConfigMap").collect();
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == "StatefulSet" || kind(d) == "Deployment")
        .collect();
    let mut checked = Vec::new();
    for w in &workloads {
        let name = str_at(w, &["metadata", "name"]).unwrap();
        let pod = &w["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let config_volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find_map(|v| str_at(v, &["configMap", "name"]));
        let Some(cm_name) = config_volume else {
            // Redis: not a broker service.
            assert_eq!(name, "redis", "{name} mounts no broker ConfigMap");
            continue;
        };
        let cm = configmaps
            .iter()
            .find(|c| str_at(c, &["metadata", "name"]) == Some(cm_name))
            .unwrap_or_else(|| panic!("{name}: ConfigMap {cm_name} is not in the manifests"));
        let yaml = str_at(cm, &["data", "broker.yaml"]).unwrap();
        let mut env = env_of_container(container);
        if name == "cluster-ctl" {
            // The pod's command derives it from the ordinal.
            env.push(("BROKER_CLUSTER_CTL__ID".into(), "1".into()));
        }
        let config = load(&format!("ConfigMap {cm_name}"), yaml, &env);
        assert_eq!(config.node_id, "pod-0", "{name}: node_id from the pod name");
        assert!(
            config.grpc_listen.ip().is_unspecified(),
            "{name}: must listen on the pod's address"
        );
        assert!(
            !config.cluster.endpoints.is_empty() || name == "cluster-ctl",
            "{name}: finds the others through cluster-ctl"
        );
        // Probes on the configured admin port.
        let http = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some("http"))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap();
        assert_eq!(
            http,
            u64::from(config.http_listen.port()),
            "{name}: http port"
        );
        assert_eq!(
            str_at(container, &["livenessProbe", "httpGet", "path"]),
            Some("/health")
        );
        assert_eq!(
            str_at(container, &["readinessProbe", "httpGet", "path"]),
            Some("/ready")
        );
        // SIGTERM drains within shutdown_grace, after the preStop pause.
        let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"][1]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            Duration::from_secs(grace) > config.shutdown_grace + Duration::from_secs(pre_stop),
            "{name}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop}s + shutdown_grace {:?}",
            config.shutdown_grace
        );
        assert!(
            container["resources"]["requests"].is_mapping()
                && container["resources"]["limits"].is_mapping(),
            "{name}: resource requests and limits"
        );
        checked.push(name.to_string());
    }
    checked.sort();
    assert_eq!(checked, BROKER_WORKLOADS);
    for set in ["cluster-ctl", "storage-writer"] {
        let w = workloads
            .iter()
            .find(|w| kind(w) == "StatefulSet" && str_at(w, &["metadata", "name"]) == Some(set))
            .unwrap_or_else(|| panic!("{set} is a StatefulSet"));
        assert!(
            w["spec"]["volumeClaimTemplates"].as_sequence().is_some(),
            "{set}: a PersistentVolumeClaim per pod"
        );
    }
    let pdbs = docs
        .iter()
        .filter(|d| kind(d) == "PodDisruptionBudget")
        .count();
    assert_eq!(pdbs, 6, "a PodDisruptionBudget per broker service");
}

#[test]
fn kubernetes_secure_overlay_mounts_the_secret_and_loads() {
    let dir = root().join("deploy/kubernetes");
    let out = match kustomize(&dir) {
        Ok(out) => out,
        Err(e) => panic!("the secure overlay is rendered with kubectl kustomize: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    if let Err(out) = kubernetes_validate(&text) {
        panic!("kubernetes-validate rejects deploy/kubernetes:\n{out}");
    }
    // A real CA and tokens where the Secret would be mounted.
    let secrets = tempfile::tempdir().unwrap();
    let pki = broker::pki::LocalPki::generate(secrets.path(), &["broker.monitoring-broker".into()])
        .unwrap();
    let docs = docs(&text);
    let mut secured = Vec::new();
    for w in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("StatefulSet" | "Deployment")))
    {
        let name = str_at(w, &["metadata", "name"]).unwrap();
        if name == "redis" {
            continue;
        }
        let pod = &w["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert!(
            pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|v| str_at(v, &["secret", "secretName"]) == Some("broker-security")),
            "{name}: mounts the Secret broker-security"
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(
                str_at(container, &[probe, "httpGet", "scheme"]),
                Some("HTTPS"),
                "{name}: {probe} over HTTPS"
            );
        }
        let cm_name = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find_map(|v| str_at(v, &["configMap", "name"]))
            .unwrap();
        let cm = docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some("ConfigMap")
                    && str_at(d, &["metadata", "name"]) == Some(cm_name)
            })
            .unwrap();
        let mut env: Vec<(String, String)> = env_of_container(container)
            .into_iter()
            .map(|(k, v)| {
                let v = v.replace("/var/run/secrets/broker", &pki.dir.display().to_string());
                (k, v)
            })
            .collect();
        if name == "cluster-ctl" {
            env.push(("BROKER_CLUSTER_CTL__ID".into(), "1".into()));
        }
        let config = load(
            &format!("{name} (secure)"),
            str_at(cm, &["data", "broker.yaml"]).unwrap(),
            &env,
        );
        assert!(config.security.tls.enabled(), "{name}: TLS on");
        for role in ["ingest", "query", "admin", "member"] {
            assert_eq!(
                config
                    .security
                    .tokens
                    .get(role)
                    .map(|t| t.expose().to_string()),
                Some(pki.token(role).unwrap()),
                "{name}: the {role} token from the Secret"
            );
        }
        broker_common::security::Security::from_config(&config.security)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        secured.push(name.to_string());
    }
    secured.sort();
    assert_eq!(secured, BROKER_WORKLOADS);
}

#[test]
fn compose_services_configs_load() {
    let root = root();
    let mut compose: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap())
            .unwrap();
    // The x-broker anchors: `<<: *broker`.
    compose.apply_merge().unwrap();
    let shared = std::fs::read_to_string(root.join("deploy/compose/broker.yaml")).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    // A real CA and tokens where the certs volume is mounted.
    let certs = tempfile::tempdir().unwrap();
    let pki = broker::pki::LocalPki::generate(certs.path(), &[]).unwrap();
    // `KEY=value` lines of an env_file, `${BROKER_COMPOSE_SECURITY:-secure}`
    // read as `mode`.
    let env_file = |s: &Value, mode: &str| -> Vec<(String, String)> {
        let path = s["env_file"]
            .as_str()
            .expect("every broker service has an env_file")
            .replace("${BROKER_COMPOSE_SECURITY:-secure}", mode);
        std::fs::read_to_string(root.join(&path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{path}: {l}"));
                let v = v.replace("/var/lib/broker/certs", &pki.dir.display().to_string());
                (k.to_string(), v)
            })
            .collect()
    };
    let mut nodes = Vec::new();
    let mut per_service = std::collections::BTreeMap::<String, usize>::new();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        let command: Vec<&str> = s["command"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .collect();
        if command.first() != Some(&"run") {
            continue; // redis, loadgen
        }
        let env: Vec<(String, String)> = s["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                };
                (k.as_str().unwrap().to_string(), v)
            })
            .collect();
        // As it ships: TLS everywhere and every role's token, none open.
        let mut secure = env.clone();
        secure.extend(env_file(s, "secure"));
        let config = load(
            &format!("docker-compose.yml service {name}"),
            &shared,
            &secure,
        );
        assert!(config.security.tls.enabled(), "{name}: TLS by default");
        assert!(!config.security.insecure, "{name}: not insecure by default");
        for role in ["ingest", "query", "admin", "member"] {
            assert_eq!(
                config
                    .security
                    .tokens
                    .get(role)
                    .map(|t| t.expose().to_string()),
                Some(pki.token(role).unwrap()),
                "{name}: the {role} token from the certs volume"
            );
        }
        broker_common::security::Security::from_config(&config.security)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Plain only when asked for by name.
        let mut plain = env.clone();
        plain.extend(env_file(s, "plain"));
        let plain = load(
            &format!("docker-compose.yml service {name} (plain)"),
            &shared,
            &plain,
        );
        assert!(
            plain.security.insecure && !plain.security.tls.enabled(),
            "{name}: plain on purpose"
        );
        assert_eq!(config.node_id, name, "{name}: node_id is the service name");
        assert_eq!(
            config.advertise_addr(),
            format!("http://{name}:{}", config.grpc_listen.port()),
            "{name}: advertises its compose DNS name"
        );
        let grace = humantime::parse_duration(s["stop_grace_period"].as_str().unwrap()).unwrap();
        assert!(
            grace > config.shutdown_grace,
            "{name}: stop_grace_period {grace:?} <= shutdown_grace {:?}",
            config.shutdown_grace
        );
        assert!(
            !config.cluster.endpoints.is_empty(),
            "{name}: joins the cluster (cluster.endpoints)"
        );
        let service = command
            .iter()
            .skip_while(|a| **a != "--service")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: runs one --service"));
        *per_service.entry(service.to_string()).or_default() += 1;
        nodes.push(name.to_string());
    }
    // The compose file runs the sandbox's COMPOSE topology (what the
    // real-process suites and broker-bench build on loopback), plus
    // query-api.
    let c = broker_sandbox::COMPOSE;
    let want: std::collections::BTreeMap<String, usize> = [
        ("cluster-ctl", c.ctl),
        ("storage-writer", c.writers),
        ("shard-router", c.routers),
        ("ingest-gateway", c.gateways),
        ("query-api", 1),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_string(), n))
    .collect();
    assert_eq!(per_service, want, "{nodes:?}");
}

#[test]
fn broker_yaml_is_the_defaults_and_examples_load() {
    let root = root();
    let text = std::fs::read_to_string(root.join("broker.yaml")).unwrap();
    assert_eq!(
        load("broker.yaml", &text, &[]),
        BrokerConfig::default(),
        "broker.yaml differs from the defaults in code"
    );
    let mut n = 0;
    let mut dirs = vec![root.join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                load(&display(&path), &text, &[]);
                n += 1;
            }
        }
    }
    assert!(n >= 9, "examples found: {n}");
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
