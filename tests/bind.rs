//! Binding: a failed bind leaks no descriptor; port 0 reports the real port. One test per
//! process here, because counting this process's descriptors must not race other tests.

mod util;

use socketserver::{DatagramServer, Server};

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

#[test]
fn a_thousand_failing_binds_of_each_kind_leak_no_descriptor_and_port_zero_reports_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let before = open_descriptors();
    for _ in 0..1000 {
        assert!(
            Server::bind(addr).is_err(),
            "binding a taken port must fail"
        );
    }
    assert_eq!(
        open_descriptors(),
        before,
        "failed binds leaked descriptors"
    );

    // The same for UDP, and for a Unix datagram path that a live socket holds (the refusal
    // probes the socket, so the probe must be closed too).
    let taken_udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let udp_addr = taken_udp.local_addr().expect("addr");
    let path = std::env::temp_dir().join(format!("socketserver-bind-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let live = std::os::unix::net::UnixDatagram::bind(&path).expect("bind unix datagram");
    let before = open_descriptors();
    for _ in 0..1000 {
        assert!(DatagramServer::bind(udp_addr).is_err(), "a taken UDP port");
        assert!(
            DatagramServer::bind_unix(&path).is_err(),
            "a live Unix socket"
        );
    }
    assert_eq!(
        open_descriptors(),
        before,
        "failed datagram binds leaked descriptors"
    );
    drop(live);
    let _ = std::fs::remove_file(&path);

    let server = Server::bind("127.0.0.1:0").expect("bind port 0");
    assert_eq!(server.local_addr().ip(), addr.ip());
    assert_ne!(server.local_addr().port(), 0, "the real port is reported");
}
