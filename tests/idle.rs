//! Idle connections: they cost no wake-ups, and the idle timeout closes them.

mod util;

use std::io::Write;
use std::time::Duration;

use socketserver::protocol::Echo;
use socketserver::Config;
use util::*;

/// Waits until the reactor stops turning (two readings 100 ms apart agree), returns the count.
fn settled_turns(server: &socketserver::RunningServer) -> u64 {
    let mut last = server.stats().turns;
    let mut settled = None;
    wait_for("the reactor to go quiet", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = server.stats().turns;
        let quiet = now == last;
        last = now;
        if quiet {
            settled = Some(now);
        }
        quiet
    });
    settled.expect("settled")
}

#[test]
fn idle_connections_cause_no_reactor_wake_ups() {
    // The default idle timeout (60 s) stays armed; it must not tick while nothing happens.
    let server = start(|| Echo);
    let mut streams: Vec<_> = (0..100).map(|_| connect(server.local_addr())).collect();
    for stream in &mut streams {
        assert_eq!(round_trip(stream, b"x"), b"x");
    }
    let before = settled_turns(&server);
    // Observation window: this is the behaviour under test (nothing happens), not a wait.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.stats().turns,
        before,
        "idle connections woke the reactor"
    );
    assert_eq!(server.stats().active, 100);
    drop(streams);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn the_idle_timeout_closes_a_quiet_connection() {
    let config = Config {
        idle_timeout: Some(Duration::from_millis(200)),
        ..test_config()
    };
    let server = start_with(config, || Echo);
    let mut quiet = connect(server.local_addr());
    assert!(
        is_closed_by_server(&mut quiet),
        "the idle connection was not closed"
    );
    assert_eq!(server.stats().closed_idle, 1);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn activity_keeps_a_connection_open_past_the_idle_timeout() {
    let config = Config {
        idle_timeout: Some(Duration::from_millis(300)),
        ..test_config()
    };
    let server = start_with(config, || Echo);
    let mut busy = connect(server.local_addr());
    // Talk every 50 ms for well over the timeout: never idle for 300 ms.
    for i in 0..20u8 {
        assert_eq!(round_trip(&mut busy, &[i]), [i]);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        server.stats().closed_idle,
        0,
        "an active connection was closed as idle"
    );
    busy.write_all(b"still open").expect("write");
    assert_eq!(read_exact(&mut busy, 10), b"still open");
    server.shutdown().expect("clean shutdown");
}
