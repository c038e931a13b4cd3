//! The echo protocol over real sockets: large payloads byte-exact, half-close, many clients.

mod util;

use std::io::{Read, Write};
use std::net::Shutdown;

use socketserver::protocol::Echo;
use util::*;

#[test]
fn a_64_mib_payload_is_echoed_byte_exact() {
    let server = start(|| Echo);
    let mut stream = connect(server.local_addr());
    let payload = pattern(64 << 20, 0x5eed);
    let mut writer = stream.try_clone().expect("clone");
    let sent = payload.clone();
    // Write and read at once: the echo comes back while we are still sending.
    let sender = std::thread::spawn(move || writer.write_all(&sent).expect("write 64 MiB"));
    let mut received = vec![0u8; payload.len()];
    stream.read_exact(&mut received).expect("read 64 MiB back");
    sender.join().expect("sender thread");
    assert!(received == payload, "echo differs from what was sent");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_half_closed_client_still_receives_its_echoes() {
    let server = start(|| Echo);
    let mut stream = connect(server.local_addr());
    let payload = pattern(256 * 1024, 7);
    stream.write_all(&payload).expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let received = read_to_end(&mut stream).expect("read until the server closes");
    assert!(
        received == payload,
        "got {} of {} bytes back",
        received.len(),
        payload.len()
    );
    wait_for("the server to count a peer close", || {
        server.stats().closed_by_peer == 1
    });
    server.shutdown().expect("clean shutdown");
}

#[test]
fn many_clients_are_served_side_by_side() {
    let server = start(|| Echo);
    let mut streams: Vec<_> = (0..200).map(|_| connect(server.local_addr())).collect();
    for round in 0..3u8 {
        for (i, stream) in streams.iter_mut().enumerate() {
            let message = format!("client {i} round {round}\n");
            assert_eq!(round_trip(stream, message.as_bytes()), message.as_bytes());
        }
    }
    assert_eq!(server.stats().active, 200);
    server.shutdown().expect("clean shutdown");
}
