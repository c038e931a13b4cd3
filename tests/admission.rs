//! Who gets in: the `max_connections` cap refuses promptly, and the verify hook rejects by
//! address before any protocol runs.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use socketserver::protocol::Echo;
use util::*;

#[test]
fn the_client_over_max_connections_is_refused_promptly() {
    let server = bind(test_config())
        .max_connections(2)
        .spawn(|| Echo)
        .expect("spawn");
    let mut first = connect(server.local_addr());
    let mut second = connect(server.local_addr());
    assert_eq!(round_trip(&mut first, b"one"), b"one");
    assert_eq!(round_trip(&mut second, b"two"), b"two");

    // The third is accepted by the kernel, then closed by the server at once: its read ends
    // (end of stream), it does not hang until the read timeout.
    let mut third = connect(server.local_addr());
    assert!(
        is_closed_by_server(&mut third),
        "the client over the cap was left hanging"
    );
    assert_eq!(server.stats().refused_over_capacity, 1);

    // A freed place is available again.
    drop(first);
    wait_for("the first connection to be removed", || {
        server.stats().active == 1
    });
    let mut fourth = connect(server.local_addr());
    assert_eq!(round_trip(&mut fourth, b"four"), b"four");
    drop((second, fourth));
    server.shutdown().expect("clean shutdown");
}

/// Connects to `addr` from the local address `from` (any 127.x.y.z is loopback on Linux).
fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> std::net::TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local = std::net::SocketAddr::from((from, 0));
    socket.bind(&local.into()).expect("bind the client address");
    socket
        .connect_timeout(&addr.into(), TIMEOUT)
        .expect("connect");
    let stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
}

#[test]
fn a_rejected_peer_is_closed_before_any_protocol_runs() {
    let protocols_made = Arc::new(AtomicUsize::new(0));
    let made = protocols_made.clone();
    let server = bind(test_config())
        .verify(|peer| peer.ip() == std::net::Ipv4Addr::LOCALHOST)
        .spawn(move || {
            made.fetch_add(1, Ordering::Relaxed);
            Echo
        })
        .expect("spawn");
    for _ in 0..3 {
        let mut welcome = connect_from([127, 0, 0, 1], server.local_addr());
        assert_eq!(round_trip(&mut welcome, b"hi"), b"hi");
        let mut rejected = connect_from([127, 0, 0, 2], server.local_addr());
        assert!(
            is_closed_by_server(&mut rejected),
            "a rejected peer must be closed"
        );
    }
    let stats = server.stats();
    assert_eq!(stats.refused_by_verify, 3);
    assert_eq!(stats.accepted, 3);
    assert_eq!(
        protocols_made.load(Ordering::Relaxed),
        3,
        "no protocol for rejected peers"
    );
    server.shutdown().expect("clean shutdown");
}
