//! Peers that vanish: a reset in the middle of a large write is a quiet close, not a crash.

mod util;

use std::io::Write;

use socketserver::protocol::Echo;
use util::*;

#[test]
fn a_reset_mid_write_is_survived() {
    let server = start(|| Echo);
    let mut victim = connect(server.local_addr());
    // Send without reading until the server's echo backs up behind the full socket buffers
    // and it holds output of its own: the reset then arrives in the middle of its writing.
    let chunk = pattern(64 * 1024, 11);
    victim.set_nonblocking(true).expect("nonblocking");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while server.stats().peak_pending_output == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never had output pending"
        );
        match victim.write(&chunk) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(error) => panic!("write: {error}"),
        }
    }
    reset(victim);
    // The close is counted when it happens; the connection leaves `active` when the turn ends.
    wait_for("the reset to be noticed and the connection removed", || {
        let stats = server.stats();
        stats.closed_by_reset == 1 && stats.active == 0
    });

    let mut next = connect(server.local_addr());
    assert_eq!(round_trip(&mut next, b"still serving"), b"still serving");
    drop(next);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn many_resets_in_a_row_leave_the_server_healthy() {
    let server = start(|| Echo);
    for i in 0..50u32 {
        let mut stream = connect(server.local_addr());
        stream.write_all(&i.to_be_bytes()).expect("write");
        reset(stream);
    }
    let mut stream = connect(server.local_addr());
    assert_eq!(round_trip(&mut stream, b"alive"), b"alive");
    wait_for("the resets to be cleaned up", || server.stats().active == 1);
    drop(stream);
    server.shutdown().expect("clean shutdown");
}
