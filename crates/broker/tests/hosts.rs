//! host-manager with real processes: a real Redis, a real Alertmanager
//! (Debian `prometheus-alertmanager`), cluster-ctl, writers, a router and a
//! gateway as `broker run` processes, and host-manager as its own process
//! so it can be restarted.
//!
//! - hosts go stale, then down, fire HostDown in Alertmanager, survive a
//!   host-manager restart, and resolve when they report again;
//!   registration over HTTP and gRPC;
//! - a loopback scan finds the open port and not the closed ones, within
//!   the configured rate; a multicast announcement on loopback is found;
//! - a writer whose gRPC port is wedged (a proxy in front of it under
//!   SIGSTOP) while it keeps beating is taken offline by the health checks
//!   and brought back, with every acked point in Redis.

mod common;

use broker_tests::durable_redis;

use broker_proto::v1::host_service_client::HostServiceClient;
use broker_proto::v1::{MemberState, RegisterHostRequest};
use broker_tests::{Running, config_for, now, point, send_batches};
use common::{Sandbox, member_state, overlay, port, steady_load, until, verify};
use redis_process::RedisServer;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

async fn get_json(url: &str) -> Value {
    let out = tokio::task::spawn_blocking({
        let url = url.to_string();
        move || {
            Command::new("curl")
                .args(["-sf", "--max-time", "5", &url])
                .output()
        }
    })
    .await
    .unwrap()
    .expect("curl");
    if !out.status.success() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

async fn post_json(url: &str, body: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-XPOST",
            url,
            "-d",
            body,
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn host<'a>(hosts: &'a Value, id: &str) -> Option<&'a Value> {
    hosts["hosts"].as_array()?.iter().find(|h| h["id"] == id)
}

/// Polls `url` until `pred` holds on its JSON; panics naming `what`.
async fn wait_json(
    url: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> (Duration, Value) {
    let start = Instant::now();
    loop {
        let v = get_json(url).await;
        if pred(&v) {
            return (start.elapsed(), v);
        }
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real Alertmanager on loopback, clustering off.
struct Alertmanager {
    child: Child,
    url: String,
}

impl Alertmanager {
    fn start(dir: &Path) -> Self {
        let p = port();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
        )
        .unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{p}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-alertmanager (Debian package prometheus-alertmanager; scripts/deps.sh installs it)");
        Self {
            child,
            url: format!("http://127.0.0.1:{p}"),
        }
    }

    /// Active alerts as (alertname, host).
    async fn alerts(&self) -> Vec<(String, String)> {
        let v = get_json(&format!("{}/api/v2/alerts", self.url)).await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                            x["labels"]["host"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sandbox of one host-manager reading `redis_url`, `yaml` (its
/// `host_manager:` section) over the defaults; started.
async fn host_manager(dir: &Path, redis_url: &str, yaml: String) -> Sandbox {
    let mut sb = common::sandbox()
        .host_managers(1)
        .configure(move |c| overlay(c, &yaml))
        .build(redis_url, dir);
    sb.start_all().await;
    sb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_go_stale_then_down_fire_in_alertmanager_survive_a_restart_and_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().unwrap();
    let am = Alertmanager::start(dir.path());
    let broker = Running::broker(config_for(&redis.url()), &broker_common::Service::DEFAULT).await;
    let mut sb = host_manager(
        dir.path(),
        &redis.url(),
        format!(
            "host_manager:\n  refresh_interval: 300ms\n  report_interval: 1s\n  down_after: 6s\n  alerts:\n    interval: 300ms\n    resend: 2s\n    alertmanagers: ['{}']\n",
            am.url
        ),
    )
    .await;
    let hm = &mut sb.host_managers[0];
    let http = hm.http();
    let api = format!("http://127.0.0.1:{http}/api/hosts");
    // Alertmanager up
    let start = Instant::now();
    while get_json(&format!("{}/api/v2/status", am.url))
        .await
        .is_null()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "alertmanager did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // gone-1 reports once; alive-1 keeps reporting (bounded: 90 s at most)
    let endpoint = broker.endpoint();
    send_batches(&endpoint, vec![batch("gone-1")]).await;
    let keep = tokio::spawn({
        let endpoint = endpoint.clone();
        async move {
            for _ in 0..180 {
                send_batches(&endpoint, vec![batch("alive-1")]).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    wait_json(&api, "gone-1 up", Duration::from_secs(10), |v| {
        host(v, "gone-1").is_some_and(|h| h["state"] == "up")
    })
    .await;
    let (t_stale, _) = wait_json(&api, "gone-1 stale", Duration::from_secs(10), |v| {
        host(v, "gone-1").is_some_and(|h| h["state"] == "stale")
    })
    .await;
    let (t_down, v) = wait_json(&api, "gone-1 down", Duration::from_secs(10), |v| {
        host(v, "gone-1").is_some_and(|h| h["state"] == "down")
    })
    .await;
    let down_since = host(&v, "gone-1").unwrap()["down_since"].as_i64().unwrap();
    assert!(down_since > 0);
    assert_eq!(host(&v, "alive-1").unwrap()["state"], "up", "{v}");
    assert_eq!(v["counts"]["down"], 1, "{v}");
    eprintln!("gone-1: stale after {t_stale:?}, down {t_down:?} later");

    let fired = Instant::now();
    loop {
        let a = am.alerts().await;
        if a.contains(&("HostDown".into(), "gone-1".into())) {
            assert!(!a.iter().any(|(_, h)| h == "alive-1"), "{a:?}");
            break;
        }
        assert!(
            fired.elapsed() < Duration::from_secs(15),
            "HostDown not in alertmanager: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "HostDown in alertmanager {:?} after the host went down",
        fired.elapsed()
    );
    let alerts = get_json(&format!("http://127.0.0.1:{http}/api/alerts")).await;
    assert!(
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["host"] == "gone-1" && a["state"] == "firing"),
        "{alerts}"
    );

    // registration: HTTP and gRPC, with clear errors for bad input
    let (code, body) = post_json(
        &api,
        r#"{"id":"db-1","addr":"127.0.0.5","labels":{"role":"db"}}"#,
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["source"], "registration");
    assert_eq!(body["state"], "discovered");
    let (code, body) = post_json(&api, r#"{"id":"db 1"}"#).await;
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap().contains("\"db 1\""),
        "{body}"
    );
    let mut grpc = HostServiceClient::connect(hm.endpoint()).await.unwrap();
    let r = grpc
        .register(RegisterHostRequest {
            id: "db-2".into(),
            addr: "127.0.0.6".into(),
            labels: [("role".to_string(), "db".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.host.unwrap().source, "registration");
    let bad = grpc
        .register(RegisterHostRequest {
            id: "x*".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // a restart keeps what only host-manager knows
    hm.terminate().await;
    hm.start().await;
    let (_, v) = wait_json(
        &api,
        "inventory after restart",
        Duration::from_secs(10),
        |v| host(v, "db-1").is_some() && host(v, "gone-1").is_some_and(|h| h["state"] == "down"),
    )
    .await;
    let db1 = host(&v, "db-1").unwrap();
    assert_eq!(db1["source"], "registration", "{db1}");
    assert_eq!(db1["labels"]["role"], "db", "{db1}");
    assert_eq!(db1["addr"], "127.0.0.5", "{db1}");
    assert_eq!(
        host(&v, "gone-1").unwrap()["down_since"],
        down_since,
        "down_since kept across the restart"
    );
    assert_eq!(host(&v, "db-2").unwrap()["source"], "registration");

    // it reports again: up, and the alert resolves in alertmanager
    send_batches(&endpoint, vec![batch("gone-1")]).await;
    wait_json(&api, "gone-1 up again", Duration::from_secs(10), |v| {
        host(v, "gone-1").is_some_and(|h| h["state"] == "up" && h["down_since"] == 0)
    })
    .await;
    let resolved = Instant::now();
    while am
        .alerts()
        .await
        .contains(&("HostDown".into(), "gone-1".into()))
    {
        assert!(
            resolved.elapsed() < Duration::from_secs(15),
            "HostDown for gone-1 did not resolve"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keep.abort();
    hm.terminate().await;
    broker.stop().await;
}

fn batch(host: &str) -> broker_proto::v1::MetricBatch {
    broker_proto::v1::MetricBatch {
        metric_names: broker_tests::metric_names(4),
        points: vec![point(host, now(), 4)],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_scan_finds_the_open_port_within_its_rate_and_multicast_finds_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start().unwrap();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    // free ports nobody listens on
    let closed: Vec<u16> = (0..9).map(|_| port()).collect();
    let ports: Vec<String> = std::iter::once(open_port)
        .chain(closed.iter().copied())
        .map(|p| p.to_string())
        .collect();
    let group: std::net::SocketAddrV4 = format!("239.255.42.{}:{}", 1 + port() % 200, port())
        .parse()
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let responder = tokio::spawn(host_manager::discovery::multicast::respond(
        group,
        std::net::Ipv4Addr::LOCALHOST,
        host_manager::discovery::multicast::Message::Announce {
            host_id: "mc-agent-1".into(),
            addr: "127.0.0.5:7000".into(),
            labels: [("role".to_string(), "edge".to_string())].into(),
        },
        stop.clone(),
    ));
    let mut sb = host_manager(
        dir.path(),
        &redis.url(),
        format!(
            "host_manager:\n  refresh_interval: 300ms\n  scan:\n    ranges: ['127.0.0.1/32']\n    ports: [{}]\n    rate: 10\n    concurrency: 4\n    timeout: 500ms\n  multicast:\n    enabled: true\n    group: '{group}'\n    interface: 127.0.0.1\n    interval: 500ms\n",
            ports.join(", ")
        ),
    )
    .await;
    let hm = &mut sb.host_managers[0];
    let http = hm.http();
    let api = format!("http://127.0.0.1:{http}/api/hosts");
    let (_, v) = wait_json(
        &api,
        "scan and multicast results",
        Duration::from_secs(20),
        // A scan result is registered first and gets its address and ports
        // a moment later: wait for the whole record.
        |v| {
            host(v, "127.0.0.1").is_some_and(|h| h["open_ports"].is_array())
                && host(v, "mc-agent-1").is_some()
        },
    )
    .await;
    let scanned = host(&v, "127.0.0.1").unwrap();
    assert_eq!(scanned["source"], "scan", "{scanned}");
    assert_eq!(scanned["state"], "discovered", "{scanned}");
    assert_eq!(
        scanned["open_ports"],
        serde_json::json!([open_port]),
        "only the listening port: {scanned}"
    );
    let mc = host(&v, "mc-agent-1").unwrap();
    assert_eq!(mc["source"], "multicast", "{mc}");
    assert_eq!(mc["addr"], "127.0.0.5:7000", "{mc}");
    assert_eq!(mc["labels"]["role"], "edge", "{mc}");
    let d = get_json(&format!("http://127.0.0.1:{http}/api/discovery")).await;
    let scan = &d["last_scan"];
    assert_eq!(scan["attempts"], 10, "{d}");
    // 10 attempts at 10 per second: the first at once, the last 0.9 s later
    let ms = scan["duration_ms"].as_u64().unwrap();
    assert!(
        ms >= 850,
        "10 attempts at rate 10/s took {ms} ms: the rate was not kept"
    );
    eprintln!(
        "scan: 10 attempts in {ms} ms at rate 10/s; announcements {}",
        d["announcements"]
    );
    stop.cancel();
    let _ = responder.await;
    drop(open);
    hm.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_with_a_wedged_grpc_port_is_taken_offline_by_health_checks_and_nothing_acked_is_lost()
 {
    const HOSTS: usize = 200;
    const METRICS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let redis = durable_redis();
    // writer-0 is reached through a proxy: its gRPC port as the others see it
    let proxy_port = port();
    let mut sb = common::sandbox()
        .ctl(1)
        .writers(3)
        .routers(1)
        .gateways(1)
        .host_managers(1)
        .configure(move |c| {
            if c.node_id == "writer-0" {
                c.cluster.advertise_addr = format!("http://127.0.0.1:{proxy_port}");
            }
            c.writer.redis_timeout = Duration::from_secs(2);
            c.router.write_timeout = Duration::from_secs(3);
            c.router.retry.max_retries = 2;
            c.router.retry.initial_backoff = Duration::from_millis(200);
            c.router.retry.max_backoff = Duration::from_secs(1);
            c.gateway.forward_timeout = Duration::from_secs(15);
            overlay(
                c,
                "host_manager:\n  health:\n    interval: 500ms\n    timeout: 500ms\n    failure_threshold: 3\n    success_threshold: 2\n",
            );
        })
        .build(&redis.url(), d);
    let mut proxy = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/tools/tcp_proxy.py"
        ))
        .args([
            proxy_port.to_string(),
            sb.writers[0].grpc_port().to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(proxy.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    sb.start_all().await;
    let endpoints = sb.endpoints.clone();
    let http = sb.host_managers[0].http();
    let client = cluster_client::ClusterClient::new(&endpoints, &Default::default()).unwrap();
    until(
        &client,
        "three writers online",
        Duration::from_secs(20),
        |s| (0..3).all(|i| member_state(s, &format!("writer-{i}")) == Some(MemberState::Online)),
    )
    .await;

    let (load, timeline) = steady_load(
        sb.gateway_endpoints(),
        HOSTS,
        METRICS,
        Duration::from_secs(16),
    );
    // The load is flowing before the port is wedged.
    timeline.acked_more(6_000, Duration::from_secs(30)).await;
    // wedge writer-0's port: it keeps beating, its gRPC port hangs
    let pid = proxy.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let wedged = Instant::now();
    let (took, s) = until(
        &client,
        "writer-0 offline by health checks",
        Duration::from_secs(15),
        |s| {
            s.members.iter().any(|m| {
                m.id == "writer-0"
                    && m.state == MemberState::Offline as i32
                    && m.state_reason.starts_with("health")
            })
        },
    )
    .await;
    let reason = s
        .members
        .iter()
        .find(|m| m.id == "writer-0")
        .unwrap()
        .state_reason
        .clone();
    eprintln!("writer-0 wedged: offline after {took:?} ({reason})");
    assert!(
        reason.contains("grpc"),
        "the gRPC check is what caught it: {reason}"
    );
    // it still beats, so the lease alone would have kept it online: the
    // checks keep it out while the port hangs
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = client.members().await.unwrap();
    assert_eq!(
        member_state(&s, "writer-0"),
        Some(MemberState::Offline),
        "stays out while wedged"
    );
    let checks = get_json(&format!("http://127.0.0.1:{http}/api/health-checks")).await;
    assert!(
        checks["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "writer-0" && m["marked_offline"] == true),
        "{checks}"
    );
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (back, _) = until(
        &client,
        "writer-0 online again",
        Duration::from_secs(15),
        |s| member_state(s, "writer-0") == Some(MemberState::Online),
    )
    .await;
    eprintln!(
        "writer-0 unwedged after {:?}: online {back:?} later",
        wedged.elapsed()
    );

    let report = load.await.unwrap().unwrap();
    let o = verify(&redis.url(), &report, HOSTS, METRICS).await;
    eprintln!(
        "sent {} acked {} found {} missing {}",
        o.sent, o.acked, o.found, o.missing
    );
    assert!(o.acked > 0);
    assert_eq!(o.missing, 0, "acked points missing from redis");
    let _ = proxy.kill();
    let _ = proxy.wait();
    sb.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_actuator_adds_a_writer_under_load_and_drains_it_when_the_load_stops() {
    const HOSTS: usize = 200;
    const METRICS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let redis = durable_redis();
    // A writer's CPU score is its CPU against 0.05 cores here, so the
    // test's load (2,000 points/s) scores high and no load scores low.
    let autoscale = format!(
        "host_manager:\n  health:\n    enabled: false\n  autoscale:\n    enabled: true\n    interval: 1s\n    sustain: 2\n    cooldown: 4s\n    min_writers: 1\n    max_writers: 2\n    cpu_cores_per_writer: 0.05\n    memory_bytes_per_writer: 8589934592\n    local:\n      work_dir: {}\n      binary: {}\n",
        d.join("autoscale").display(),
        common::BROKER
    );
    let mut sb = common::sandbox()
        .ctl(1)
        .writers(1)
        .routers(1)
        .gateways(1)
        .host_managers(1)
        .configure(move |c| overlay(c, &autoscale))
        .build(&redis.url(), d);
    sb.start_all().await;
    let endpoints = sb.endpoints.clone();
    let http = sb.host_managers[0].http();
    let client = cluster_client::ClusterClient::new(&endpoints, &Default::default()).unwrap();
    // The actuator names what it starts after the host-manager.
    let added = "host-manager-writer-1";
    let (load, _timeline) = steady_load(
        sb.gateway_endpoints(),
        HOSTS,
        METRICS,
        Duration::from_secs(14),
    );
    let (up_after, _) = until(
        &client,
        "a second writer started under load",
        Duration::from_secs(14),
        |s| member_state(s, added) == Some(MemberState::Online),
    )
    .await;
    eprintln!("scaled up after {up_after:?} of load");
    let status = get_json(&format!("http://127.0.0.1:{http}/api/autoscale")).await;
    assert!(
        status["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "scale_up" && d["outcome"].as_str().unwrap().contains(added)),
        "{status}"
    );
    let report = load.await.unwrap().unwrap();
    let (down_after, _) = until(
        &client,
        "the added writer drained and left",
        Duration::from_secs(30),
        |s| member_state(s, added).is_none(),
    )
    .await;
    eprintln!("scaled down {down_after:?} after the load stopped");
    // The member leaves before its process has exited, and the decision is
    // recorded once the actuator saw it exit: wait for it.
    let mut grpc = HostServiceClient::connect(sb.host_managers[0].endpoint())
        .await
        .unwrap();
    let start = Instant::now();
    let (st, down) = loop {
        let st = grpc
            .autoscale_status(broker_proto::v1::AutoscaleStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if let Some(d) = st
            .decisions
            .iter()
            .find(|d| d.action == "scale_down")
            .cloned()
        {
            break (st, d);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no scale_down decision: {:?}",
            st.decisions
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(st.enabled);
    assert_eq!(st.actuator, "local");
    assert!(down.reason.contains("< 30"), "{}", down.reason);
    assert!(down.outcome.contains(added), "{}", down.outcome);
    let o = verify(&redis.url(), &report, HOSTS, METRICS).await;
    eprintln!(
        "sent {} acked {} found {} missing {}",
        o.sent, o.acked, o.found, o.missing
    );
    assert!(o.acked > 0);
    assert_eq!(o.missing, 0, "acked points missing from redis");
    sb.stop_all().await;
}
