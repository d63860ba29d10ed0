//! Raft messages between cluster-ctl nodes: `eraftpb::Message` bytes inside
//! our own tonic `RaftService.Send` calls.
//!
//! Each peer has a bounded queue and one sender task that batches what is
//! queued into one call. A message that cannot be queued or sent is
//! dropped: raft-rs resends what matters (appends, heartbeats, votes). A
//! snapshot's outcome is reported back to raft so the leader does not wait
//! forever on a snapshot that was lost.
//!
//! [`NetFilter`] drops traffic to and from chosen peers, in both
//! directions: the test-controlled transport the partition tests use.

use broker_common::security::ClientSecurity;
use broker_proto::v1::RaftMessages;
use broker_proto::v1::raft_service_client::RaftServiceClient;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages per `Send` call.
const MAX_BATCH: usize = 256;
/// Deadline of one `Send` call (snapshots of this state are small).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// What the transport tells the raft node about delivery.
#[derive(Debug)]
pub enum Report {
    Unreachable(u64),
    Snapshot { to: u64, ok: bool },
}

/// Peers whose traffic is dropped, both ways. Shared by a node's sending
/// and receiving sides; empty outside partition tests.
#[derive(Clone, Default)]
pub struct NetFilter {
    blocked: Arc<RwLock<HashSet<u64>>>,
}

impl NetFilter {
    /// Drops every message to and from `peers` from now on.
    pub fn block(&self, peers: impl IntoIterator<Item = u64>) {
        self.blocked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(peers);
    }

    /// Lets all traffic through again.
    pub fn heal(&self) {
        self.blocked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn is_blocked(&self, peer: u64) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&peer)
    }
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<Message>,
}

/// The sending side: one queue and task per peer.
pub struct Transport {
    id: u64,
    peers: BTreeMap<u64, Peer>,
    filter: NetFilter,
    reports: mpsc::UnboundedSender<Report>,
    security: ClientSecurity,
    /// The runtime the senders and their channels run on: the process's,
    /// not the raft thread's (whose fsyncs must not hold up the network).
    runtime: tokio::runtime::Handle,
}

impl Transport {
    pub fn new(
        id: u64,
        filter: NetFilter,
        reports: mpsc::UnboundedSender<Report>,
        security: ClientSecurity,
    ) -> Self {
        Self {
            id,
            peers: BTreeMap::new(),
            filter,
            reports,
            security,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Makes the peer set `peers` (other than this node): starts senders
    /// for new or moved peers (on the process's runtime), stops those of
    /// removed ones.
    pub fn set_peers(&mut self, peers: &BTreeMap<u64, String>) {
        self.peers
            .retain(|id, p| peers.get(id).is_some_and(|a| a == &p.addr));
        let _runtime = self.runtime.enter();
        for (&id, addr) in peers {
            if id == self.id || self.peers.contains_key(&id) {
                continue;
            }
            match spawn_sender(
                id,
                addr,
                &self.security,
                self.filter.clone(),
                self.reports.clone(),
            ) {
                Ok(queue) => {
                    self.peers.insert(
                        id,
                        Peer {
                            addr: addr.clone(),
                            queue,
                        },
                    );
                }
                Err(e) => tracing::error!(peer = id, addr = %addr, error = %e, "bad peer address"),
            }
        }
    }

    pub fn send(&self, messages: Vec<Message>) {
        for m in messages {
            let to = m.to;
            if self.filter.is_blocked(to) {
                continue;
            }
            let Some(peer) = self.peers.get(&to) else {
                tracing::debug!(to, "no address for raft peer, message dropped");
                continue;
            };
            if peer.queue.try_send(m).is_err() {
                let _ = self.reports.send(Report::Unreachable(to));
            }
        }
    }
}

fn spawn_sender(
    to: u64,
    addr: &str,
    security: &ClientSecurity,
    filter: NetFilter,
    reports: mpsc::UnboundedSender<Report>,
) -> Result<mpsc::Sender<Message>, broker_common::security::ClientError> {
    let channel = security.lazy(addr, |ep| {
        broker_common::security::keepalive(ep)
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
    })?;
    let mut client = RaftServiceClient::new(channel);
    let (tx, mut rx) = mpsc::channel::<Message>(PEER_QUEUE);
    tokio::spawn(async move {
        // Ends when the transport drops the queue (peer removed or node
        // stopped).
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            if filter.is_blocked(to) {
                continue;
            }
            let snapshots = batch
                .iter()
                .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
                .count();
            let messages = batch
                .iter()
                .filter_map(|m| m.write_to_bytes().ok())
                .collect();
            let mut req = tonic::Request::new(RaftMessages { messages });
            req.set_timeout(SEND_TIMEOUT);
            let ok = match tokio::time::timeout(SEND_TIMEOUT, client.send(req)).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    tracing::debug!(peer = to, error = %e.message(), "raft send failed");
                    false
                }
                Err(_) => false,
            };
            if !ok {
                let _ = reports.send(Report::Unreachable(to));
            }
            for _ in 0..snapshots {
                let _ = reports.send(Report::Snapshot { to, ok });
            }
        }
    });
    Ok(tx)
}

/// Decodes a `RaftMessages` call, dropping messages from blocked peers.
pub fn decode(req: RaftMessages, filter: &NetFilter) -> Result<Vec<Message>, String> {
    let mut out = Vec::with_capacity(req.messages.len());
    for b in req.messages {
        let m = Message::parse_from_bytes(&b).map_err(|e| format!("bad raft message: {e}"))?;
        if !filter.is_blocked(m.from) {
            out.push(m);
        }
    }
    Ok(out)
}
