//! A Redis Cluster of N masters on loopback: [`RedisCluster`].

use std::thread;
use std::time::{Duration, Instant};

use crate::error::RedisProcessError;
use crate::resp::info_lookup;
use crate::server::{RedisOptions, RedisServer, run_cli};

/// How long `redis-cli --cluster create` may run.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes may take to agree on `cluster_state:ok` after creation.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Number of hash slots in Redis Cluster.
const SLOTS: usize = 16384;

/// N cluster-enabled masters (no replicas) on free loopback ports, each a
/// [`RedisServer`] with its own temp dir. Created with
/// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes` (for
/// fewer than 3 masters, which redis-cli refuses, slots are assigned with
/// `CLUSTER ADDSLOTSRANGE` and the nodes joined with `CLUSTER MEET`).
/// Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// The usual default number of masters.
    pub const DEFAULT_MASTERS: usize = 3;

    /// Starts `masters` nodes, creates the cluster and waits until every
    /// node reports `cluster_state:ok`, all 16384 slots assigned and all
    /// nodes known (at most [`CLUSTER_READY_TIMEOUT`]).
    pub fn start(masters: usize) -> Result<Self, RedisProcessError> {
        if masters == 0 || masters > 1000 {
            return Err(RedisProcessError::InvalidArgument(format!(
                "a cluster needs between 1 and 1000 masters, got {masters}"
            )));
        }
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            nodes.push(RedisServer::start_with(RedisOptions {
                extra_args: [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ]
                .map(String::from)
                .to_vec(),
                ..RedisOptions::default()
            })?);
        }
        let cluster = RedisCluster { nodes };
        if masters >= 3 {
            cluster.create_with_cli()?;
        } else {
            cluster.create_by_hand()?;
        }
        cluster.wait_ok()?;
        tracing::debug!(url = %cluster.url(), "redis cluster ready");
        Ok(cluster)
    }

    fn create_with_cli(&self) -> Result<(), RedisProcessError> {
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.addr().to_string()).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        run_cli(self.nodes[0].cli_binary(), &args, CREATE_TIMEOUT)?;
        Ok(())
    }

    fn create_by_hand(&self) -> Result<(), RedisProcessError> {
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            let first = (i * SLOTS / n).to_string();
            let last = ((i + 1) * SLOTS / n - 1).to_string();
            node.command(&["CLUSTER", "ADDSLOTSRANGE", &first, &last])?;
            node.command(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()])?;
        }
        for other in &self.nodes[1..] {
            self.nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &other.port().to_string()])?;
        }
        Ok(())
    }

    fn wait_ok(&self) -> Result<(), RedisProcessError> {
        let started = Instant::now();
        let known = self.nodes.len().to_string();
        for node in &self.nodes {
            loop {
                let state = node.command(&["CLUSTER", "INFO"]);
                let last_state = match &state {
                    Ok(info) => {
                        let ok = info_lookup(info, "cluster_state").as_deref() == Some("ok")
                            && info_lookup(info, "cluster_slots_assigned").as_deref()
                                == Some("16384")
                            && info_lookup(info, "cluster_known_nodes").as_deref()
                                == Some(known.as_str());
                        if ok {
                            break;
                        }
                        info.lines()
                            .filter(|l| {
                                l.starts_with("cluster_state")
                                    || l.starts_with("cluster_slots_assigned")
                                    || l.starts_with("cluster_known_nodes")
                            })
                            .map(str::trim)
                            .collect::<Vec<_>>()
                            .join(" ")
                    }
                    Err(e) => e.to_string(),
                };
                if started.elapsed() >= CLUSTER_READY_TIMEOUT {
                    return Err(RedisProcessError::NotReady {
                        what: format!("cluster_state:ok on {}", node.addr()),
                        waited: started.elapsed(),
                        last_state: format!("{last_state}; log tail:\n{}", node.log_tail()),
                    });
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The nodes, in the order of their creation (the first is the seed of
    /// [`url`](Self::url)).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Mutable access to the nodes, e.g. to stop or restart one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The fred 10 cluster URL:
    /// `redis-cluster://127.0.0.1:p1?node=127.0.0.1:p2&node=127.0.0.1:p3`.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://{}", self.nodes[0].addr());
        for (i, node) in self.nodes[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str("node=");
            url.push_str(&node.addr().to_string());
        }
        url
    }
}
