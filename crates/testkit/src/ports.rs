//! Free loopback ports for test servers.
//!
//! Asking the kernel for port 0 and handing the number to a server started later is racy: until
//! the server binds, any outgoing connection on the machine may be given that very port as its
//! ephemeral source port (a node joining a cluster makes many connections before it binds its
//! HTTP listener). So the ports handed out here lie outside the kernel's ephemeral range, and
//! each process walks them from its own starting point so that test processes side by side
//! rarely meet.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The lowest port handed out (below it live well-known services).
const FLOOR: u16 = 10_000;

/// A `127.0.0.1` address whose TCP port, and the TCP and UDP port after it (Wharf's blob transfer
/// listens on the cluster port + 1 by default), were free a moment ago and lie outside the
/// kernel's ephemeral range.
///
/// # Panics
/// When no such port is left, which means the machine is out of ports.
pub fn free_loopback_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (start, span) = *pool();
    if span < 64 {
        // The ephemeral range leaves no room: the racy way is all there is.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
    }
    // Offsets stay below `span - 1`, so the port after the one handed out is in the pool too.
    let modulus = u32::from(span) - 1;
    // One seed per process: a seed drawn per call would hand out random offsets, and two of
    // them can meet (a test asking for 50 ports saw the same one twice).
    static SEED: OnceLock<u32> = OnceLock::new();
    let seed = *SEED.get_or_init(process_seed) % modulus;
    for _ in 0..span / 2 {
        let step = NEXT.fetch_add(2, Ordering::Relaxed);
        let offset = ((seed + step) % modulus) & !1;
        let port = start + u16::try_from(offset).expect("offset < span");
        if is_free(port) && is_free(port + 1) && udp_is_free(port + 1) {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
    panic!("no free loopback port outside the ephemeral range");
}

/// The first port and the number of ports of the pool: below the ephemeral range when there is
/// room there, else above it.
fn pool() -> &'static (u16, u16) {
    static POOL: OnceLock<(u16, u16)> = OnceLock::new();
    POOL.get_or_init(|| {
        let (low, high) = ephemeral_range().unwrap_or((32_768, 60_999));
        if low > FLOOR + 2_000 {
            (FLOOR, low - FLOOR)
        } else {
            let start = high.saturating_add(1).max(FLOOR);
            (start, u16::MAX - start)
        }
    })
}

fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

pub(crate) fn process_seed() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::process::id().wrapping_mul(7_919).wrapping_add(nanos)
}

fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn udp_is_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        let (low, high) = ephemeral_range().unwrap_or((32_768, 60_999));
        let ports: Vec<u16> = (0..50).map(|_| free_loopback_addr().port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(!(low..=high).contains(&port), "{port} is ephemeral");
            assert!(port >= FLOOR);
        }
    }
}
