//! The services as separate processes (`broker run --service X --config
//! F.yaml`), configured by YAML files, over real gRPC and a real Redis.

use broker_proto::v1::MetricBatch;
use broker_tests::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BROKER: &str = env!("CARGO_BIN_EXE_broker");

struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn spawn(name: &'static str, service: &str, config: &Path) -> Self {
        let child = Command::new(BROKER)
            .args(["run", "--service", service, "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn broker");
        Self { name, child }
    }

    /// SIGTERM, then the exit status (must be a clean 0).
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "{} exited with {s}", self.name);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port() -> u16 {
    redis_process::free_port().unwrap()
}

async fn wait_serving(addr: &str) {
    broker_common::serve::wait_serving(addr, Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_with_yaml_configs() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile_dir();
    let (wg, wh, rg, rh, gg, gh) = (port(), port(), port(), port(), port(), port());
    let writer_yaml = dir.join("writer.yaml");
    std::fs::write(
        &writer_yaml,
        format!(
            "node_id: writer-a\ngrpc_listen: 127.0.0.1:{wg}\nhttp_listen: 127.0.0.1:{wh}\nwriter:\n  redis_url: {}\n  spool_dir: {}\n",
            redis.url(),
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let router_yaml = dir.join("router.yaml");
    std::fs::write(
        &router_yaml,
        format!(
            "node_id: router-a\ngrpc_listen: 127.0.0.1:{rg}\nhttp_listen: 127.0.0.1:{rh}\nrouter:\n  writers:\n    - id: writer-a\n      addr: http://127.0.0.1:{wg}\n"
        ),
    )
    .unwrap();
    let gateway_yaml = dir.join("gateway.yaml");
    std::fs::write(
        &gateway_yaml,
        format!(
            "node_id: gateway-a\ngrpc_listen: 127.0.0.1:{gg}\nhttp_listen: 127.0.0.1:{gh}\ngateway:\n  routers: [\"http://127.0.0.1:{rg}\"]\n"
        ),
    )
    .unwrap();
    let writer = Proc::spawn("writer", "storage-writer", &writer_yaml);
    let router = Proc::spawn("router", "shard-router", &router_yaml);
    let gateway = Proc::spawn("gateway", "ingest-gateway", &gateway_yaml);
    for p in [wg, rg, gg] {
        wait_serving(&format!("http://127.0.0.1:{p}")).await;
    }
    write_and_verify(&format!("http://127.0.0.1:{gg}"), &redis.url(), 10).await;

    // Acked batches survive a SIGTERM of every process: send, then stop in
    // data-path order.
    let ts = now() - 1;
    let acks = send_batches(
        &format!("http://127.0.0.1:{gg}"),
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(2),
            points: vec![point("last", ts, 2)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1);
    gateway.terminate();
    router.terminate();
    writer.terminate();
    let r = Reader::connect(&redis.url()).await;
    assert!(r.exists(&format!("monitor:metrics:{{last}}:{ts}")).await);
}

#[test]
fn invalid_config_exits_64_naming_the_keys() {
    let out = Command::new(BROKER)
        .args([
            "run",
            "--set",
            "router.vnodes=0",
            "--set",
            "writer.redis_url=mysql://x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("router.vnodes") && err.contains("writer.redis_url"),
        "{err}"
    );

    let out = Command::new(BROKER)
        .args(["run", "--service", "router"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shard-router"), "lists valid services: {err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("broker-proc-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
