//! `brokerctl dlq` (the real binary) against a real storage-writer with a
//! real Redis: points Redis refuses for good (a WRONGTYPE reply, from an
//! index key an "operator" made a string) are listed, shown, refused again
//! on replay while the key is wrong, replayed once it is fixed, and
//! discarded.

use broker_common::Service;
use broker_proto::v1::MetricBatch;
use broker_tests::*;

fn index_key(host: &str) -> String {
    format!("monitor:index:metrics:{{{host}}}")
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `brokerctl --admin <admin> <args>`.
async fn brokerctl(admin: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_brokerctl"))
        .env_remove("BROKER_ADMIN")
        .arg("--admin")
        .arg(admin)
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

async fn ok(admin: &str, args: &[&str]) -> String {
    let r = brokerctl(admin, args).await;
    assert_eq!(r.code, 0, "brokerctl {args:?} failed: {}", r.stderr);
    r.stdout
}

/// The entries in a `dlq list --json` answer as (id, first host), and the
/// queue's record count.
async fn listed(admin: &str) -> (Vec<(u64, String)>, u64) {
    let out = ok(admin, &["--json", "dlq", "list"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let entries = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let host = e["hosts"][0].as_str().expect("a host").to_string();
            (e["id"].as_u64().expect("id"), host)
        })
        .collect();
    (entries, v["records"].as_u64().expect("records"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_shows_replays_and_discards_dead_letters() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let r = Reader::connect(&url).await;
    for host in ["poison-a", "poison-b"] {
        r.cmd(&["SET", &index_key(host), "not-a-zset"]).await;
    }
    let config = seed_config_for(&url);
    let broker = Running::broker(config.clone(), &Service::DEFAULT).await;
    let admin = format!("http://{}", broker.http);

    // One batch per poisoned host, so each is its own entry.
    let ts = now() - 30;
    let batches = ["poison-a", "poison-b"]
        .iter()
        .enumerate()
        .map(|(i, host)| MetricBatch {
            seq: i as u64 + 1,
            metric_names: metric_names(3),
            points: vec![point(host, ts, 3), point("good", ts + i as i64, 3)],
        })
        .collect();
    let acks = send_batches(&broker.endpoint(), batches).await;
    assert!(acks.iter().all(|a| a.accepted == 2), "{acks:?}");

    let (entries, records) = listed(&admin).await;
    assert_eq!((entries.len(), records), (2, 2), "{entries:?}");
    let id_of = |host: &str| {
        entries
            .iter()
            .find(|(_, h)| h == host)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("no entry for {host}: {entries:?}"))
    };
    let (a, b) = (id_of("poison-a"), id_of("poison-b"));

    let table = ok(&admin, &["dlq", "list"]).await;
    assert!(
        table.starts_with(&format!("writer {}: 2 dead-letter entries", config.node_id)),
        "{table}"
    );
    assert!(
        table.contains("poison-a") && table.contains("poison-b"),
        "{table}"
    );
    assert!(table.contains("WRONGTYPE"), "{table}");

    let shown = ok(&admin, &["dlq", "show", &a.to_string()]).await;
    assert!(
        shown.contains(&format!("ZADD {}: WRONGTYPE", index_key("poison-a"))),
        "{shown}"
    );
    assert!(shown.contains(&format!("poison-a  {ts}  m00=")), "{shown}");

    // Still wrong: the replay fails, names why, and keeps the entry.
    let refused = brokerctl(&admin, &["dlq", "replay", &a.to_string()]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.starts_with("brokerctl: "),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("409") && refused.stderr.contains("WRONGTYPE"),
        "{}",
        refused.stderr
    );
    assert_eq!(listed(&admin).await.1, 2);

    // Fixed: replayed and stored; the other entry is discarded unwritten.
    r.cmd(&["DEL", &index_key("poison-a")]).await;
    let done = ok(&admin, &["dlq", "replay", &a.to_string()]).await;
    assert_eq!(
        done,
        format!("replayed entry {a}: 1 point(s) stored (poison-a); entry deleted\n")
    );
    let stored = r
        .hgetall(&format!("monitor:metrics:{{poison-a}}:{ts}"))
        .await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    let gone = ok(&admin, &["dlq", "discard", &b.to_string()]).await;
    assert_eq!(
        gone,
        format!("discarded entry {b}: 1 point(s) (poison-b) will not be stored\n")
    );
    assert_eq!(listed(&admin).await, (vec![], 0));
    let all = ok(&admin, &["dlq", "replay", "--all"]).await;
    assert!(
        all.starts_with("replayed 0 entries (0 point(s)); 0 still refused; 0 left"),
        "{all}"
    );

    // An unknown entry is named.
    let missing = brokerctl(&admin, &["dlq", "show", &b.to_string()]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing
            .stderr
            .contains(&format!("no dead-letter entry with id {b}")),
        "{}",
        missing.stderr
    );
    broker.stop().await;
}
