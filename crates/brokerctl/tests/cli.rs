//! The real `brokerctl` binary against a real 3-node cluster-ctl (raft over
//! loopback gRPC, started in this process by the test harness): what an
//! operator types, and what the tables and JSON say back.

use broker_tests::cluster::CtlCluster;
use std::time::Duration;

/// Members joined by brokerctl do not beat; a lease this long cannot expire
/// during a test, so their states change only by the commands under test.
const MEMBER_HEARTBEAT: Duration = Duration::from_secs(600);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `brokerctl --endpoints <endpoints> <args>`.
async fn brokerctl(endpoints: &[String], args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_brokerctl"))
        .env_remove("BROKERCTL_ENDPOINTS")
        .arg("--endpoints")
        .arg(endpoints.join(","))
        .args(args)
        .output()
        .await
        .expect("brokerctl runs");
    let run = Run {
        code: out.status.code().expect("brokerctl exited"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    };
    println!(
        "$ brokerctl {}\n{}{}",
        args.join(" "),
        run.stdout,
        run.stderr
    );
    run
}

/// As [`brokerctl`], and the command must succeed; returns stdout.
async fn ok(endpoints: &[String], args: &[&str]) -> String {
    let r = brokerctl(endpoints, args).await;
    assert_eq!(r.code, 0, "brokerctl {args:?} failed: {}", r.stderr);
    r.stdout
}

/// The cells of the table row whose first cell is `id`.
fn row<'a>(table: &'a str, id: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&id))
}

/// The number after `word` in the first line.
fn header_number(out: &str, word: &str) -> u64 {
    let first = out.lines().next().unwrap_or_default();
    let mut words = first.split_whitespace();
    words.find(|w| *w == word);
    words
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{word} N` in {first:?}"))
}

fn share(cells: &[&str]) -> f64 {
    cells[2]
        .strip_suffix('%')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no share in {cells:?}"))
}

/// A loopback endpoint that refuses connections, its port held for the
/// rest of the test process so nothing else can take it.
fn dead_endpoint() -> String {
    let (endpoint, socket) =
        broker_common::serve::refusing_loopback_endpoint().expect("a loopback port");
    std::mem::forget(socket);
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_joins_drains_and_removes_members() {
    let mut c = CtlCluster::start(3, MEMBER_HEARTBEAT).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let eps = c.endpoints();

    let out = ok(
        &eps,
        &[
            "join",
            "w-big",
            "--addr",
            "http://127.0.0.1:7001",
            "--role",
            "storage-writer",
            "--weight",
            "2",
        ],
    )
    .await;
    assert!(out.contains("member w-big joined"), "{out}");
    ok(
        &eps,
        &[
            "join",
            "w-small",
            "--addr",
            "http://127.0.0.1:7002",
            "--role",
            "storage-writer",
            "--role",
            "shard-router",
        ],
    )
    .await;

    // members: both online, with the epoch of the joins
    let out = ok(&eps, &["members"]).await;
    let epoch = header_number(&out, "epoch");
    assert!(epoch >= 2, "{out}");
    let big = row(&out, "w-big").expect("w-big listed");
    assert_eq!(
        big[..5],
        [
            "w-big",
            "storage-writer",
            "online",
            "2",
            "http://127.0.0.1:7001"
        ]
    );
    let small = row(&out, "w-small").expect("w-small listed");
    assert_eq!(
        small[..4],
        ["w-small", "storage-writer,shard-router", "online", "1"]
    );

    // ring: shares sum to 100%, weight 2 owns about twice weight 1
    let out = ok(&eps, &["ring"]).await;
    assert_eq!(header_number(&out, "epoch"), epoch, "{out}");
    assert!(header_number(&out, "vnodes") > 0, "{out}");
    let (big, small) = (
        share(&row(&out, "w-big").expect("w-big in the ring")),
        share(&row(&out, "w-small").expect("w-small in the ring")),
    );
    assert!((big + small - 100.0).abs() <= 0.2, "{out}");
    // crc32 (the default hash) spreads vnodes less evenly than xxh3
    assert!((1.5..=2.7).contains(&(big / small)), "{out}");

    // the same through --json
    let json: serde_json::Value =
        serde_json::from_str(&ok(&eps, &["--json", "ring"]).await).expect("ring JSON");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(2), "{json}");

    // drain: out of the ring, still a member
    let out = ok(&eps, &["drain", "w-small"]).await;
    assert!(out.contains("member w-small is draining"), "{out}");
    let out = ok(&eps, &["members"]).await;
    assert!(header_number(&out, "epoch") > epoch, "{out}");
    assert_eq!(row(&out, "w-small").expect("still a member")[2], "draining");
    let out = ok(&eps, &["ring"]).await;
    assert!(row(&out, "w-small").is_none(), "{out}");
    assert_eq!(share(&row(&out, "w-big").expect("w-big")), 100.0);

    // leave: gone
    ok(&eps, &["leave", "w-small"]).await;
    let out = ok(&eps, &["members"]).await;
    assert!(row(&out, "w-small").is_none(), "{out}");
    assert!(row(&out, "w-big").is_some(), "{out}");

    // an unknown member is cluster-ctl's NOT_FOUND, naming it
    let r = brokerctl(&eps, &["leave", "ghost-7"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("brokerctl: "), "{}", r.stderr);
    assert!(
        r.stderr.contains("\"ghost-7\" is not known"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());

    // cluster --json: the leader's view and every node's
    let out = ok(&eps, &["--json", "cluster"]).await;
    let json: serde_json::Value = serde_json::from_str(&out).expect("cluster JSON");
    let voters: Vec<u64> = serde_json::from_value(json["voters"].clone()).expect("voters");
    assert_eq!(voters, [1, 2, 3]);
    let leader = json["leader"].as_u64().expect("leader");
    assert!(voters.contains(&leader), "{json}");
    assert!(json["term"].as_u64().expect("term") > 0, "{json}");
    assert!(
        json["commit_index"].as_u64().expect("commit_index") > 0,
        "{json}"
    );
    let nodes = json["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for (n, ep) in nodes.iter().zip(&eps) {
        assert_eq!(n["endpoint"], ep.as_str());
        assert_eq!(n["status"]["leader"], leader, "{n}");
    }

    // cluster with a dead endpoint: shown as unreachable, not a failure
    let dead = dead_endpoint();
    let mut with_dead = eps.clone();
    with_dead.push(dead.clone());
    let out = ok(&with_dead, &["cluster"]).await;
    assert_eq!(row(&out, &dead).expect("dead row")[2], "unreachable");
    for (id, ep) in (1..=3).zip(&eps) {
        let cells = row(&out, ep).expect("node row");
        assert_eq!(cells[1], id.to_string(), "{out}");
        assert_eq!(cells[7], "1,2,3", "{out}");
    }
    assert!(out.contains(&format!("leader {leader} at ")), "{out}");

    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_and_ring_settings_change() {
    let mut c = CtlCluster::start(3, MEMBER_HEARTBEAT).await;
    c.wait_leader(Duration::from_secs(10)).await;
    let eps = c.endpoints();

    let out = ok(&eps, &["set-ring", "--vnodes", "64", "--hash", "xxh3"]).await;
    assert!(out.contains("vnodes 64, hash xxh3"), "{out}");
    let out = ok(&eps, &["ring"]).await;
    assert!(out.contains("vnodes 64  hash xxh3"), "{out}");
    assert!(out.contains("the ring is empty"), "{out}");

    let (id, addr) = c.spawn_joiner().await;
    let out = ok(&eps, &["voter", "add", &id.to_string(), &addr]).await;
    assert!(out.contains(&format!("voter {id} added")), "{out}");
    assert!(out.contains(&format!("voters 1,2,3,{id}")), "{out}");
    let out = ok(&eps, &["--json", "cluster"]).await;
    let json: serde_json::Value = serde_json::from_str(&out).expect("cluster JSON");
    assert_eq!(json["voters"], serde_json::json!([1, 2, 3, id]), "{json}");

    let out = ok(&eps, &["voter", "remove", &id.to_string()]).await;
    assert!(out.ends_with("voters 1,2,3\n"), "{out}");

    c.stop_all().await;
}

#[tokio::test]
async fn an_unreachable_cluster_fails_naming_the_endpoints() {
    let dead = [dead_endpoint(), dead_endpoint()];
    for args in [&["members"][..], &["cluster"], &["drain", "w1"]] {
        let r = brokerctl(&dead, args).await;
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("brokerctl: cannot reach cluster-ctl"),
            "{}",
            r.stderr
        );
        for ep in &dead {
            assert!(r.stderr.contains(ep.as_str()), "{}", r.stderr);
        }
    }
}

#[tokio::test]
async fn bad_values_are_usage_errors_listing_the_valid_ones() {
    let eps = [dead_endpoint()];
    let r = brokerctl(
        &eps,
        &[
            "join",
            "w1",
            "--addr",
            "http://127.0.0.1:1",
            "--role",
            "writer",
        ],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("storage-writer"), "{}", r.stderr);
    let r = brokerctl(&eps, &["set-ring", "--vnodes", "100", "--hash", "md5"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("crc32") && r.stderr.contains("xxh3"),
        "{}",
        r.stderr
    );
}
