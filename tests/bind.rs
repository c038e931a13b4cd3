//! Binding: a failed bind leaks no descriptor; port 0 reports the real port. One test per
//! process here, because counting this process's descriptors must not race other tests.

mod util;

use socketserver::Server;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

#[test]
fn a_thousand_failing_binds_leak_no_descriptor_and_port_zero_reports_the_port() {
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

    let server = Server::bind("127.0.0.1:0").expect("bind port 0");
    assert_eq!(server.local_addr().ip(), addr.ip());
    assert_ne!(server.local_addr().port(), 0, "the real port is reported");
}
