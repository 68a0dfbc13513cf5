//! Loopback ports for the servers a test starts by number (a `redis-server`, the service binary
//! with `C2P_GRPC__LISTEN`, a restart on the same port).
//!
//! A port picked with `bind(0)` comes from the kernel's ephemeral range, where anything on the
//! machine may take it before the server binds it: an outgoing connection's local port, or a
//! server started on port 0 (every metrics listener and simulator the tests start). The service
//! then exits with `Address already in use`. So ports come from below that range, where neither
//! happens, and each one is handed out once per test process.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// The ports handed out: above the well-known ports, below the Redis cluster nodes'
/// 20000-22699 (`tests/it/harness.rs`) and the ephemeral range (Linux's default starts at
/// 32768; a host whose range starts lower gets fewer ports, see [`free_port`]).
const PORTS: std::ops::Range<u16> = 10_000..20_000;

/// A port below the ephemeral range that was free a moment ago on 127.0.0.1 and that no
/// other caller in this process got.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ports = PORTS.start..PORTS.end.min(ephemeral_low());
    assert!(
        ports.len() >= 1_000,
        "the ephemeral range starts at {}: too few test ports below it",
        ephemeral_low()
    );
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let port = rand::random_range(ports.clone());
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.insert(port);
        return port;
    }
    panic!("no free loopback port in {ports:?}");
}

/// The first port of `net.ipv4.ip_local_port_range` (Linux's default 32768 where it cannot
/// be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[test]
fn ports_are_below_the_ephemeral_range_and_handed_out_once() {
    let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len());
    assert!(ports.iter().all(|p| PORTS.contains(p)));
    // What bind(0) gets lies in the range these ports avoid.
    let kernel = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    assert!(kernel >= ephemeral_low(), "bind(0) gave {kernel}");
}
