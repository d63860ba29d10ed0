//! The local cluster of `docker-compose.yml`, end to end, with real
//! containers: 3 cluster-ctl, 2 gateways, 2 routers, 3 writers, query-api
//! and Redis from the `broker:local` image (`scripts/images.sh`, which
//! `scripts/test.sh` runs first; `IMAGE=...` tests another).
//!
//! 1. `docker-compose up -d` under a project of its own, with every port
//!    published on a free loopback port; wait until cluster-ctl lists every
//!    member online (and brokerctl inside a container says so too).
//! 2. A steady load from this host through both published gateway ports;
//!    `docker kill` (SIGKILL) storage-writer-2 under it; cluster-ctl marks it
//!    offline; `docker-compose start` brings it back online. Then `kill -9`
//!    of storage-writer-3's broker inside its container: Docker restarts
//!    the container and the writer is online again on its own.
//! 3. Every point the agent saw acked is read back from Redis (published
//!    port) with its values.
//! 4. `docker-compose down` then `up` (volumes kept): the raft state goes on
//!    from where it was and every acked point is still in Redis.
//! 5. The compose load generator sends data that query-api serves.
//!
//! Then `down -v`. Figures (time to ready, points sent / acked / missing,
//! fault to offline) are printed, not asserted.

mod common;

use broker_proto::v1::{ClusterState, MemberState};
use cluster_client::ClusterClient;
use common::{COMPOSE, member_state, members_line, port, steady_load, until, verify};
use internal_clients::AdminClient;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOSTS: usize = 200;
const METRICS: usize = 8;
/// The image under test: `IMAGE` (as docker-compose.yml reads it), else
/// the one scripts/images.sh builds.
fn image() -> String {
    std::env::var("IMAGE").unwrap_or_else(|_| "broker:local".into())
}
/// Every data-path member of the compose file: the sandbox's [`COMPOSE`]
/// topology, named as compose names its services, and query-api.
fn members() -> Vec<String> {
    fn named(service: &'static str, n: usize) -> impl Iterator<Item = String> {
        (1..=n).map(move |i| format!("{service}-{i}"))
    }
    named("ingest-gateway", COMPOSE.gateways)
        .chain(named("shard-router", COMPOSE.routers))
        .chain(named("storage-writer", COMPOSE.writers))
        .chain(["query-api".to_string()])
        .collect()
}

/// One compose project; `down -v` when dropped, so a failed test leaves
/// no containers or volumes behind.
struct Compose {
    project: String,
    /// docker-compose.yml, then any overlays.
    files: Vec<PathBuf>,
    env: Vec<(&'static str, String)>,
}

impl Compose {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = compose_command();
        c.arg("--project-name").arg(&self.project);
        for f in &self.files {
            c.arg("--file").arg(f);
        }
        c.args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null());
        c
    }

    /// Runs `docker-compose args`, bounded by `timeout`; panics with its
    /// output if it fails. Returns stdout.
    fn run(&self, args: &[&str], timeout: Duration) -> String {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-compose runs");
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("docker-compose {args:?} did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "docker-compose {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn published(&self, key: &str) -> u16 {
        let (_, v) = self.env.iter().find(|(k, _)| *k == key).unwrap();
        v.parse().unwrap()
    }
}

/// `docker-compose` (Compose v1, Debian's), else `docker compose` (v2).
fn compose_command() -> Command {
    let v1 = Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v1 {
        Command::new("docker-compose")
    } else {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    }
}

/// Takes down what an earlier run of these tests left behind (a run killed
/// before its `Drop`): every project named `broker-test-*` but this
/// process's own.
fn remove_stale_projects(file: &std::path::Path) {
    let ours = format!("broker-test-{}", std::process::id());
    let projects = docker(&[
        "ps",
        "--all",
        "--format",
        "{{.Label \"com.docker.compose.project\"}}",
    ]);
    let mut stale: Vec<&str> = projects
        .lines()
        .filter(|p| p.starts_with("broker-test-") && !p.starts_with(&ours))
        .collect();
    stale.sort();
    stale.dedup();
    for p in stale {
        eprintln!("removing containers and volumes of an earlier run: {p}");
        let _ = compose_command()
            .args(["--project-name", p, "--file"])
            .arg(file)
            .args(["down", "--volumes", "--timeout", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .command(&["logs", "--no-color", "--tail", "30"])
                .status();
        }
        let _ = self
            .command(&["down", "--volumes", "--timeout", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `docker args`; panics with its output if it fails. Returns stdout.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "docker {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn all_online(s: &ClusterState) -> bool {
    members()
        .iter()
        .all(|id| member_state(s, id) == Some(MemberState::Online))
}

/// Two compose clusters at once would share two cores: the tests take
/// turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every published port on a free loopback port, and the image.
fn published_env(image: &str) -> Vec<(&'static str, String)> {
    [
        "PUBLISH_GATEWAY",
        "PUBLISH_GATEWAY_2",
        "PUBLISH_QUERY_HTTP",
        "PUBLISH_QUERY_GRPC",
        "PUBLISH_CTL_GRPC",
        "PUBLISH_CTL_HTTP",
        "PUBLISH_REDIS",
    ]
    .into_iter()
    .map(|k| (k, port().to_string()))
    .chain([("IMAGE", image.to_string())])
    .collect()
}

/// The image under test, checked to exist.
fn image_present() -> String {
    let image_name = image();
    let image = Command::new("docker")
        .args(["image", "inspect", &image_name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker not found: install Docker Engine and docker-compose");
    assert!(
        image.success(),
        "image {image_name} missing: run scripts/images.sh (scripts/test.sh does)"
    );
    image_name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_cluster_survives_a_writer_kill_and_a_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let test_start = Instant::now();
    let image_name = image_present();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Plain, asked for by name (the default is TLS and tokens, below):
    // this test is about failures and restarts, over plain clients.
    let mut env = published_env(&image_name);
    env.push(("BROKER_COMPOSE_SECURITY", "plain".into()));
    let compose = Compose {
        project: format!("broker-test-{}", std::process::id()),
        files: vec![root.join("docker-compose.yml")],
        env,
    };
    remove_stale_projects(&compose.files[0]);
    let gateways = vec![
        format!("http://127.0.0.1:{}", compose.published("PUBLISH_GATEWAY")),
        format!(
            "http://127.0.0.1:{}",
            compose.published("PUBLISH_GATEWAY_2")
        ),
    ];
    let redis_url = format!("redis://127.0.0.1:{}", compose.published("PUBLISH_REDIS"));
    let ctl = ClusterClient::new(
        &[format!(
            "http://127.0.0.1:{}",
            compose.published("PUBLISH_CTL_GRPC")
        )],
        &Default::default(),
    )
    .unwrap();
    let up_timeout = Duration::from_secs(120);

    // 1. Up, without the compose load generator (its hosts would overwrite
    // the ones this test checks); it runs in step 5.
    let t = Instant::now();
    compose.run(
        &["up", "--detach", "--no-build", "--scale", "loadgen=0"],
        up_timeout,
    );
    let (_, s) = until(&ctl, "every member online", up_timeout, all_online).await;
    println!(
        "FIGURE compose ready: {:.1}s from `up` to every member online (epoch {}): {:?}",
        t.elapsed().as_secs_f64(),
        s.epoch,
        members_line(&s)
    );
    let table = compose.run(
        &[
            "exec",
            "-T",
            "cluster-ctl-1",
            "brokerctl",
            "--endpoints",
            "http://127.0.0.1:9096",
            "members",
        ],
        Duration::from_secs(30),
    );
    for id in members() {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&id) && l.contains(" online ")),
            "brokerctl members in cluster-ctl-1 does not show {id} online:\n{table}"
        );
    }

    // 2. Load through both published gateways; SIGKILL a writer under it.
    let (load, timeline) = steady_load(gateways, HOSTS, METRICS, Duration::from_secs(30));
    // About 8 s of the load acked before the kill.
    timeline.acked_more(16_000, Duration::from_secs(60)).await;
    let killed = Instant::now();
    compose.run(&["kill", "storage-writer-2"], Duration::from_secs(30));
    let (to_offline, s) = until(
        &ctl,
        "storage-writer-2 offline",
        Duration::from_secs(30),
        |s| member_state(s, "storage-writer-2") == Some(MemberState::Offline),
    )
    .await;
    println!(
        "FIGURE compose kill: storage-writer-2 offline {:.1}s after docker kill (epoch {})",
        to_offline.as_secs_f64(),
        s.epoch
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    compose.run(&["start", "storage-writer-2"], Duration::from_secs(30));
    let (back, _) = until(&ctl, "storage-writer-2 online again", up_timeout, |s| {
        member_state(s, "storage-writer-2") == Some(MemberState::Online)
    })
    .await;
    println!(
        "FIGURE compose restart: storage-writer-2 online {:.1}s after docker-compose start",
        back.as_secs_f64()
    );
    // A crash inside a container: kill -9 of the broker process (tini is
    // PID 1). The container exits, Docker's restart policy starts it again
    // and the writer rejoins, with no operator.
    let id = compose.run(
        &["ps", "--quiet", "storage-writer-3"],
        Duration::from_secs(30),
    );
    let id = id.trim();
    let restarts = || {
        docker(&["inspect", "--format", "{{.RestartCount}}", id])
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let before = restarts();
    let t = Instant::now();
    compose.run(
        &[
            "exec",
            "-T",
            "storage-writer-3",
            "sh",
            "-c",
            "kill -9 $(pidof broker)",
        ],
        Duration::from_secs(30),
    );
    while restarts() == before {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "Docker did not restart storage-writer-3 after its broker was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, s) = until(
        &ctl,
        "storage-writer-3 online after its restart",
        up_timeout,
        |s| member_state(s, "storage-writer-3") == Some(MemberState::Online),
    )
    .await;
    println!(
        "FIGURE compose crash: kill -9 inside storage-writer-3, restarted by Docker and online {:.1}s later (epoch {})",
        t.elapsed().as_secs_f64(),
        s.epoch
    );
    let report = load.await.unwrap().expect("load ran");
    println!(
        "FIGURE compose load: sent {} acked {} failed {} resent {} ({:.0} points/s); acked count resumed {:?} after the kill",
        report.sent,
        report.acked,
        report.failed,
        report.resent,
        report.points_per_s(),
        timeline.recovery_after(killed),
    );

    // 3. Every acked point is in Redis.
    let o = verify(&redis_url, &report, HOSTS, METRICS).await;
    println!(
        "FIGURE compose redis: acked {} found {} missing {}",
        o.acked, o.found, o.missing
    );
    assert!(o.acked > 10_000, "the load was acked: {}", o.acked);
    assert_eq!(o.missing, 0, "acked points missing from Redis");
    assert_eq!(report.failed, 0, "points the agent gave up on");

    // 4. down, up: volumes keep the data and the raft state.
    let before = ctl.members().await.unwrap();
    let raft_before = ctl.status().await.unwrap();
    // SIGTERM everything (data path first, compose's dependency order):
    // each process drains, flushes, leaves and exits 0; one that needed
    // Docker's SIGKILL after the timeout would exit 137.
    let t = Instant::now();
    compose.run(&["stop", "--timeout", "40"], Duration::from_secs(120));
    let down = t.elapsed();
    let ids = compose.run(&["ps", "--quiet"], Duration::from_secs(30));
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let exits = docker(
        &[
            &["inspect", "--format", "{{.Name}} {{.State.ExitCode}}"],
            &ids[..],
        ]
        .concat(),
    );
    // The broker services, Redis and the one-shot certs (exited 0 at up;
    // the load generator was scaled to 0).
    assert_eq!(
        exits.lines().count(),
        13,
        "every container stopped: {exits}"
    );
    for line in exits.lines() {
        assert!(
            line.ends_with(" 0"),
            "not a clean exit on SIGTERM: {line}\n{exits}"
        );
    }
    compose.run(&["down", "--timeout", "40"], Duration::from_secs(120));
    let t = Instant::now();
    compose.run(
        &["up", "--detach", "--no-build", "--scale", "loadgen=0"],
        up_timeout,
    );
    let (_, after) = until(
        &ctl,
        "every member online after down/up",
        up_timeout,
        all_online,
    )
    .await;
    let raft_after = ctl.status().await.unwrap();
    println!(
        "FIGURE compose down/up: stop (SIGTERM, every exit code 0) {:.1}s, up to every member online {:.1}s; epoch {} -> {}, raft applied index {} -> {}",
        down.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        before.epoch,
        after.epoch,
        raft_before.applied_index,
        raft_after.applied_index
    );
    assert!(
        after.epoch > before.epoch && raft_after.applied_index > raft_before.applied_index,
        "raft state did not survive down/up: epoch {} -> {}, applied {} -> {}",
        before.epoch,
        after.epoch,
        raft_before.applied_index,
        raft_after.applied_index
    );
    let o = verify(&redis_url, &report, HOSTS, METRICS).await;
    assert_eq!(o.missing, 0, "acked points lost across down/up");

    // 5. The compose load generator's data through the published query-api.
    compose.run(
        &["up", "--detach", "--no-build", "loadgen"],
        Duration::from_secs(60),
    );
    let query = AdminClient::new(
        &format!("127.0.0.1:{}", compose.published("PUBLISH_QUERY_HTTP")),
        Duration::from_secs(5),
    )
    .unwrap();
    let t = Instant::now();
    let points = loop {
        let n = query
            .get_text("/api/query/range?host=host-00049&start=now-1m&metrics=cpu_user")
            .await
            .ok()
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["timestamps"].as_array().map(|p| p.len()))
            .unwrap_or(0);
        if n >= 2 {
            break n;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "query-api shows no points from the compose load generator"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "FIGURE compose loadgen: query-api serves {points} points of host-00049 {:.1}s after `up loadgen`",
        t.elapsed().as_secs_f64()
    );

    drop(compose);
    println!(
        "FIGURE compose test: {:.0}s in all",
        test_start.elapsed().as_secs_f64()
    );
}

/// `docker-compose.yml` as it ships (secure by default): every published
/// port refuses plaintext and missing tokens, and serves clients holding
/// the CA and the right token (copied out of the `certs` volume); the
/// containers' health checks (`broker health` over TLS) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_secure_cluster_speaks_only_tls_with_tokens() {
    use broker_common::security::ClientSecurity;
    let _one = ONE_AT_A_TIME.lock().await;
    let image_name = image_present();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let compose = Compose {
        project: format!("broker-test-{}-secure", std::process::id()),
        files: vec![root.join("docker-compose.yml")],
        env: published_env(&image_name),
    };
    remove_stale_projects(&compose.files[0]);
    let t = Instant::now();
    compose.run(
        &["up", "--detach", "--no-build", "--scale", "loadgen=0"],
        Duration::from_secs(120),
    );
    // The CA and the tokens, as an operator copies them out.
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "ingest.token", "query.token", "admin.token"] {
        let body = compose.run(
            &[
                "exec",
                "-T",
                "cluster-ctl-1",
                "cat",
                &format!("/var/lib/broker/certs/{f}"),
            ],
            Duration::from_secs(30),
        );
        std::fs::write(dir.path().join(f), body).unwrap();
    }
    let token = |r: &str| {
        std::fs::read_to_string(dir.path().join(format!("{r}.token")))
            .unwrap()
            .trim()
            .to_string()
    };
    let with = |t: Option<&str>| {
        ClientSecurity::for_tool(Some(dir.path().join("ca.pem")), None, None, t).unwrap()
    };
    let ctl_endpoint = format!(
        "https://127.0.0.1:{}",
        compose.published("PUBLISH_CTL_GRPC")
    );
    let ctl = ClusterClient::new(
        std::slice::from_ref(&ctl_endpoint),
        &with(Some(&token("admin"))),
    )
    .unwrap();
    let (_, s) = until(
        &ctl,
        "every member online",
        Duration::from_secs(120),
        all_online,
    )
    .await;
    println!(
        "FIGURE compose secure ready: {:.1}s from `up` to every member online over TLS: {:?}",
        t.elapsed().as_secs_f64(),
        members_line(&s)
    );
    // cluster-ctl: no token, or plaintext: refused.
    let anonymous = ClusterClient::with_retry(
        std::slice::from_ref(&ctl_endpoint),
        &with(None),
        backon::ExponentialBuilder::default().with_max_times(0),
    )
    .unwrap();
    let e = anonymous.members().await.unwrap_err();
    assert!(e.to_string().contains("member token"), "{e}");
    let plain = ClusterClient::with_retry(
        &[ctl_endpoint.replace("https", "http")],
        &ClientSecurity::default(),
        backon::ExponentialBuilder::default().with_max_times(0),
    )
    .unwrap();
    assert!(plain.members().await.is_err());
    // A gateway stores a batch sent with the ingest token only.
    let gateway = format!("https://127.0.0.1:{}", compose.published("PUBLISH_GATEWAY"));
    let ts = broker_tests::now() - 30;
    let batch = || broker_proto::v1::MetricBatch {
        seq: 1,
        metric_names: broker_tests::metric_names(2),
        points: vec![broker_tests::point("secure-host", ts, 2)],
    };
    let refused = broker_tests::try_send_batches_with(&gateway, &with(None), vec![batch()]).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    let acks =
        broker_tests::try_send_batches_with(&gateway, &with(Some(&token("ingest"))), vec![batch()])
            .await
            .expect("the ingest token is accepted");
    assert_eq!(acks[0].accepted, 1, "{:?}", acks[0].errors);
    // query-api: 401 without the query token, the point with it.
    let url = format!(
        "https://127.0.0.1:{}/api/query/range?host=secure-host&start=now-5m",
        compose.published("PUBLISH_QUERY_HTTP")
    );
    let http = |t: Option<&str>| broker_common::http_client::HttpClient::new(&with(t));
    let (status, _) = http(None)
        .send(hyper::Method::GET, &url, None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, hyper::StatusCode::UNAUTHORIZED);
    let q = token("query");
    let body = loop {
        let (status, body) = http(Some(&q))
            .send(hyper::Method::GET, &url, None, Duration::from_secs(5))
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() && body.contains(&ts.to_string()) {
            break body;
        }
        assert!(t.elapsed() < Duration::from_secs(240), "{status}: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!("FIGURE compose secure: query-api over TLS with the query token: {body}");
    // The containers' own health checks pass over TLS.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = compose.run(&["ps", "-q", "query-api"], Duration::from_secs(30));
        let health = docker(&[
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            ids.trim(),
        ]);
        if health.trim() == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "query-api is {}", health.trim());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(compose);
}
