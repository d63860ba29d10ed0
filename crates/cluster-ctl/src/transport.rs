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
//!
//! [`Senders`] ties a received message to the voter it claims to come
//! from: it must arrive from an address that voter's configured name
//! resolves to.

use broker_common::security::ClientSecurity;
use broker_proto::v1::RaftMessages;
use broker_proto::v1::raft_service_client::RaftServiceClient;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
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

/// How long a peer's resolved addresses are trusted before its name is
/// looked up again (also the least time between two lookups of one peer
/// when a message comes from an address not among them: a voter that
/// moved behind its name is accepted again within it).
const RESOLVE_EVERY: Duration = Duration::from_secs(5);
const RESOLVE_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// Checks that a raft message comes from the voter it names: from one of
/// the addresses that voter's raft address (`http://name:port`) resolves
/// to. Without it anyone who reaches the port could speak as the leader
/// (a forged append commits a change on one follower for good: raft takes
/// an entry with the leader's index and term as the leader's). A message
/// from a raft id this node does not know is refused once it knows any
/// peer; a node that knows none yet (started to be added) takes it.
#[derive(Default)]
pub struct Senders {
    resolved: tokio::sync::Mutex<HashMap<u64, Resolved>>,
}

struct Resolved {
    addr: String,
    ips: Vec<IpAddr>,
    at: std::time::Instant,
}

impl Senders {
    /// `Err(why)` when the messages of raft id `from`, received from
    /// `remote`, must be dropped. `addr`: `from`'s raft address as this
    /// node knows it; `knows_peers`: whether it knows any other node.
    pub async fn check(
        &self,
        from: u64,
        remote: IpAddr,
        addr: Option<&str>,
        knows_peers: bool,
    ) -> Result<(), String> {
        let remote = canonical(remote);
        let Some(addr) = addr else {
            if knows_peers {
                return Err(format!("raft id {from} is no voter this node knows"));
            }
            return Ok(());
        };
        let addr = &addr.to_string();
        let mut cache = self.resolved.lock().await;
        let fresh = |r: &Resolved, within: Duration| r.addr == *addr && r.at.elapsed() < within;
        if let Some(r) = cache.get(&from)
            && fresh(r, RESOLVE_EVERY)
            && (r.ips.contains(&remote) || fresh(r, RESOLVE_AGAIN_AFTER))
        {
            return if r.ips.contains(&remote) {
                Ok(())
            } else {
                Err(refused(from, addr, remote, &r.ips))
            };
        }
        let ips = resolve(addr).await;
        let ok = ips.contains(&remote);
        let why = (!ok).then(|| refused(from, addr, remote, &ips));
        cache.insert(
            from,
            Resolved {
                addr: addr.clone(),
                ips,
                at: std::time::Instant::now(),
            },
        );
        why.map_or(Ok(()), Err)
    }
}

fn refused(from: u64, addr: &str, remote: IpAddr, ips: &[IpAddr]) -> String {
    format!("raft id {from} is at {addr} ({ips:?}), this message came from {remote}")
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses `addr` (`http://host:port`) resolves to; none when it
/// does not parse or resolve.
async fn resolve(addr: &str) -> Vec<IpAddr> {
    let Ok(uri) = addr.parse::<tonic::transport::Uri>() else {
        return Vec::new();
    };
    let Some(host) = uri.host() else {
        return Vec::new();
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(found) => found.map(|a| canonical(a.ip())).collect(),
        Err(e) => {
            tracing::debug!(addr, error = %e, "resolving a raft peer failed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Senders;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_voters_messages_come_from_where_its_name_resolves() {
        let s = Senders::default();
        let at = Some("http://127.0.0.1:9");
        assert!(s.check(2, ip("127.0.0.1"), at, true).await.is_ok());
        let e = s.check(2, ip("127.0.0.2"), at, true).await.unwrap_err();
        assert!(e.contains("came from 127.0.0.2"), "{e}");
        // By name, and an IPv4 peer seen through an IPv6 socket.
        let named = Some("http://localhost:9");
        assert!(
            s.check(3, ip("::ffff:127.0.0.1"), named, true)
                .await
                .is_ok()
        );
        // Unknown ids: refused once this node knows its peers.
        assert!(s.check(9, ip("127.0.0.1"), None, true).await.is_err());
        assert!(s.check(9, ip("127.0.0.1"), None, false).await.is_ok());
        // An address that does not parse or resolve admits nobody.
        assert!(
            s.check(4, ip("127.0.0.1"), Some("not a uri"), true)
                .await
                .is_err()
        );
    }
}
