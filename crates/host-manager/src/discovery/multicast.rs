//! UDP multicast discovery. host-manager sends a [`Message::Discover`]
//! datagram to the group every `multicast.interval`; agents listening on
//! the group answer the sender with a [`Message::Announce`] (and announce
//! once to the group when they start). Datagrams are JSON, one message
//! each, at most [`MAX_DATAGRAM`] bytes. Sending and joining use the
//! configured interface address (loopback by default) with TTL 1, so the
//! datagrams stay on that link.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub const MAX_DATAGRAM: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Message {
    /// "Who is there?", from host-manager.
    Discover,
    /// An agent: its host id, where it can be reached, its labels.
    Announce {
        host_id: String,
        #[serde(default)]
        addr: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("messages serialize")
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(b).map_err(|e| format!("not a discovery message: {e}"))
    }
}

/// A socket bound to the group's port (SO_REUSEADDR, so host-manager and
/// agents on one machine can share it), member of the group on
/// `interface`.
pub fn group_socket(group: SocketAddrV4, interface: Ipv4Addr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port())).into())?;
    sock.join_multicast_v4(group.ip(), &interface)?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

/// A socket on an ephemeral port of `interface` that sends to groups on
/// that interface (IP_MULTICAST_IF) with TTL 1, so datagrams stay on the
/// link; answers to what it sends arrive on it.
pub fn sender_socket(interface: Ipv4Addr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(interface, 0)).into())?;
    sock.set_multicast_if_v4(&interface)?;
    sock.set_multicast_ttl_v4(1)?;
    sock.set_multicast_loop_v4(true)?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

/// Sends one discover to `group` from `sock` (answers arrive on it).
pub async fn discover(sock: &UdpSocket, group: SocketAddrV4) -> std::io::Result<()> {
    sock.send_to(&Message::Discover.encode(), SocketAddr::V4(group))
        .await
        .map(|_| ())
}

/// What an agent runs: answers every discover on the group with
/// `announce`, and announces once at start. Ends with `stop`.
pub async fn respond(
    group: SocketAddrV4,
    interface: Ipv4Addr,
    announce: Message,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = group_socket(group, interface)?;
    let sender = sender_socket(interface)?;
    let bytes = announce.encode();
    sender.send_to(&bytes, SocketAddr::V4(group)).await?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = listener.recv_from(&mut buf) => r?,
        };
        if let Ok(Message::Discover) = Message::decode(&buf[..n]) {
            let _ = sender.send_to(&bytes, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_named() {
        let a = Message::Announce {
            host_id: "web-1".into(),
            addr: "127.0.0.1".into(),
            labels: [("role".to_string(), "web".to_string())].into(),
        };
        assert_eq!(Message::decode(&a.encode()).unwrap(), a);
        assert_eq!(
            Message::decode(br#"{"type":"discover"}"#).unwrap(),
            Message::Discover
        );
        assert!(
            Message::decode(b"hello")
                .unwrap_err()
                .contains("not a discovery message")
        );
    }
}
