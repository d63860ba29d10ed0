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
    // Below the kernel's ephemeral range, so an outgoing connection can
    // never take the port between now and the moment a process (or a
    // restarted one) binds it.
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_start > LOW_PORTS_START + 1000 {
        let span = u64::from(ephemeral_start - LOW_PORTS_START);
        for _ in 0..200 {
            let p = LOW_PORTS_START + (random() % span) as u16;
            if TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, p))).is_ok() && claim(p) {
                return Ok(p);
            }
        }
    }
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// Records `p` as handed out by this process; false if it already was.
/// A test picks all its ports before its processes bind them (and binds a
/// killed process's port again later), so a port that is free now may
/// already belong to a service of the same test: never hand it out twice.
fn claim(p: u16) -> bool {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(p)
}

/// Where [`free_port`] starts looking (below the ephemeral range).
const LOW_PORTS_START: u16 = 20_000;

/// A random number from the standard library's per-process hash keys and
/// a counter (no need for a random-number crate to pick ports).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
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

#[cfg(test)]
mod tests {
    use super::free_port;

    #[test]
    fn never_hands_out_a_port_twice() {
        let ports: Vec<u16> = (0..500).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
