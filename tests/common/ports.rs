//! Loopback ports for the tests: the one place they are chosen.
//!
//! A program the test starts (Pebble, dnsmasq, HAProxy, the binary on fixed ports) must be told
//! a port number before it binds it. A port from `bind(0)` is released before the program binds
//! it, and meanwhile the kernel could give it to any outgoing connection or other `bind(0)` in
//! the tests (seen in CI: Pebble's "address already in use"). So these ports come from below
//! Linux's ephemeral range (32768–60999), where the kernel never hands out ports by itself, and
//! each is handed out once per test process, from an offset that differs between processes.
//!
//! Servers the harness runs itself (the upstream, websites, the in-process proxy) bind
//! `127.0.0.1:0` and keep the listener: they need nothing from here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A loopback TCP port nothing listens on now, for a program the test starts to bind.
pub fn unused_port() -> u16 {
    next_free(false)
}

/// Like [`unused_port`], free for UDP as well (DNS uses both).
pub fn unused_udp_tcp_port() -> u16 {
    next_free(true)
}

/// `127.0.0.1:` an [`unused_port`].
pub fn unused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

/// A loopback address with nothing listening: connections to it are refused (an upstream that
/// is down). From the same range as [`unused_port`], so no `bind(0)` or outgoing connection of
/// the test process takes it meanwhile.
pub fn closed_port() -> SocketAddr {
    unused_addr()
}

fn next_free(udp: bool) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const LOW: usize = 10_000;
    const SPAN: usize = 22_000;
    let offset = (std::process::id() as usize).wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (offset + n) % SPAN).unwrap();
        let tcp_free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if tcp_free && (!udp || std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()) {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}
