//! Faults of a real network: `broker run` processes in network namespaces
//! this test makes (`common::netns`), reaching each other by name over a
//! bridge, and the network changed under them with `ip`.
//!
//! Times are printed as FIGURE lines, not asserted.

mod common;

use common::BROKER;
use common::netns::Lan;
use std::path::Path;
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["ctl-1", "ctl-2", "ctl-3"];
const GRPC: u16 = 9096;
const HTTP: u16 = 9097;

/// The config of cluster-ctl node `id` (as docker-compose.yml runs it:
/// peers and cluster-ctl endpoints by name).
fn ctl_config(dir: &Path, id: usize) -> String {
    let peers: Vec<String> = (1..=NAMES.len())
        .map(|j| format!("    - {{id: {j}, addr: 'http://ctl-{j}:{GRPC}'}}"))
        .collect();
    let endpoints: Vec<String> = (1..=NAMES.len())
        .map(|j| format!("'http://ctl-{j}:{GRPC}'"))
        .collect();
    let yaml = format!(
        "node_id: ctl-{id}\n\
         grpc_listen: 0.0.0.0:{GRPC}\n\
         http_listen: 0.0.0.0:{HTTP}\n\
         shutdown_grace: 5s\n\
         cluster:\n  advertise_addr: http://ctl-{id}:{GRPC}\n  endpoints: [{}]\n\
         cluster_ctl:\n  id: {id}\n  data_dir: {}\n  peers:\n{}\n",
        endpoints.join(", "),
        dir.join(format!("raft-{id}")).display(),
        peers.join("\n"),
    );
    let path = dir.join(format!("ctl-{id}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

/// One node's raft view from its `/api/cluster`: (leader, term, role).
fn view(lan: &Lan, name: &str) -> Option<(u64, u64, String)> {
    let body = lan.get(name, HTTP, "/api/cluster")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((
        v["leader"].as_u64()?,
        v["term"].as_u64()?,
        v["role"].as_str()?.to_string(),
    ))
}

/// Waits until every node names the same leader in the same term, later
/// than `after_term`; returns (leader, term). Panics after `within` with
/// every view and the end of every node's log.
async fn agreed(lan: &Lan, dir: &Path, after_term: u64, within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        let views: Vec<_> = NAMES.iter().map(|n| view(lan, n)).collect();
        if let Some(Some((leader, term, _))) = views.first()
            && *leader != 0
            && *term > after_term
            && views
                .iter()
                .all(|v| v.as_ref().is_some_and(|(l, t, _)| l == leader && t == term))
        {
            return (*leader, *term);
        }
        if Instant::now() > deadline {
            let mut logs = String::new();
            for n in NAMES {
                let text =
                    std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                logs.push_str(&format!("--- {n}\n"));
                for l in tail.iter().rev() {
                    logs.push_str(l);
                    logs.push('\n');
                }
            }
            panic!(
                "the nodes did not agree on a leader in a term after {after_term} within {within:?}: {views:?}\n{logs}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader moves to a new address behind its name while running (a
/// pod restarted elsewhere keeps its DNS name; here the address is swapped
/// under the running process, so every connection to and from the old one
/// goes silent at once). The others elect a new leader, and the moved node
/// must rejoin it: it learns the new term only from the others, over
/// connections made after the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_ctl_node_at_a_new_address_behind_its_name_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut lan = Lan::new(&NAMES);
    for (i, name) in NAMES.iter().enumerate() {
        let cfg = ctl_config(d, i + 1);
        let log = d.join(format!("{name}.log"));
        lan.spawn(
            name,
            BROKER,
            &["run", "--service", "cluster-ctl", "--config", &cfg],
            &log,
        );
    }
    let (leader, term) = agreed(&lan, d, 0, Duration::from_secs(60)).await;
    let name = format!("ctl-{leader}");
    let old_addr = lan.addr(&name);
    lan.move_node(&name, 10 + leader as u8);
    let moved = Instant::now();
    let (new_leader, new_term) = agreed(&lan, d, term, Duration::from_secs(60)).await;
    println!(
        "FIGURE {name} (the leader, term {term}) moved from {old_addr} to {}: all three follow ctl-{new_leader} in term {new_term} {:.1}s later",
        lan.addr(&name),
        moved.elapsed().as_secs_f64()
    );
}
