//! Named regression tests: each guards a specific bug class the reactor must never reintroduce.

mod util;

use std::io::Write;

use socketserver::protocol::{Echo, Line};
use socketserver::reactor::token::{ConnId, Slots};
use socketserver::Config;
use util::*;

/// An event, timer or worker result still naming a closed connection must not reach the new
/// connection that took its slot in the same batch.
#[test]
fn stale_event_for_a_slot_reused_in_the_same_batch_is_dropped() {
    let mut slots: Slots<&str> = Slots::with_capacity(4);
    let old = slots.insert_with(|_| "old connection");
    let stale_token = old.token();
    assert_eq!(slots.remove(old), Some("old connection"));
    let new = slots.insert_with(|_| "new connection");
    assert_eq!(new.index, old.index, "the slab reuses the freed slot");
    assert_ne!(new.gen, old.gen);
    // The event for the old occupant arrives after the slot was reused: it must find nothing.
    assert_eq!(slots.get_mut(ConnId::from_token(stale_token)), None);
    assert_eq!(slots.remove(old), None, "a stale id removes nothing");
    assert_eq!(slots.get(new), Some(&"new connection"));
}

/// End to end: connections closed and replaced over and over never receive each other's data.
#[test]
fn churning_connections_never_see_each_others_bytes() {
    let server = start(|| Echo);
    for round in 0..100u32 {
        let mut leaving = connect(server.local_addr());
        leaving.write_all(&round.to_be_bytes()).expect("write");
        reset(leaving);
        let mut staying = connect(server.local_addr());
        let message = format!("round {round}");
        assert_eq!(
            round_trip(&mut staying, message.as_bytes()),
            message.as_bytes()
        );
    }
    server.shutdown().expect("clean shutdown");
}

/// Closing a socket that still has unread input makes the kernel send a reset, which destroys
/// the error answer written just before. The close must linger: shut the write side, drain.
#[test]
fn an_error_answer_survives_unread_input() {
    let config = Config {
        max_line_bytes: 16,
        ..test_config()
    };
    let server = start_with(config, || Line::new(16));
    let mut stream = connect(server.local_addr());
    // Far more than the limit, none of it a line: the server answers, then closes.
    stream.write_all(&vec![b'x'; 200 * 1024]).expect("write");
    let answer = read_to_end(&mut stream).expect("the answer, then end of stream, not a reset");
    assert_eq!(answer, b"error: line too long\n");
    // The server lingers until our end of stream, then counts the close as the peer's fault.
    drop(stream);
    wait_for("the lingering close to finish", || {
        server.stats().closed_protocol_error == 1
    });
    server.shutdown().expect("clean shutdown");
}
