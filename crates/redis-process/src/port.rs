//! Free loopback port picking.
//!
//! Picking is "racing-safe enough": the kernel hands out a free port when we
//! bind `127.0.0.1:0`, we release it and hand the number to redis-server. Another
//! process may grab it in between; the launcher notices "Address already in use"
//! in the server's log and retries with a new port.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// Offset of the Redis Cluster bus port from the client port (Redis default).
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// Binds `127.0.0.1:0`, reads the port the kernel chose, releases it and
/// returns it.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// Returns a free port `p` such that `p + 10000` (the cluster bus port) is
/// free too at the time of the check.
pub(crate) fn free_port_with_bus(attempts: u32) -> io::Result<u16> {
    let mut last_err = None;
    for _ in 0..attempts {
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let port = listener.local_addr()?.port();
        let Some(bus) = port.checked_add(CLUSTER_BUS_OFFSET) else {
            continue;
        };
        match TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, bus))) {
            Ok(_bus_listener) => return Ok(port),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("no port p with p and p+{CLUSTER_BUS_OFFSET} both free in {attempts} attempts"),
        )
    }))
}
