//! Graceful shutdown: stop accepting, answer what is in flight, close, exit by the deadline.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use socketserver::protocol::{Context, Echo, Protocol};
use socketserver::Config;
use util::*;

#[test]
fn graceful_shutdown_delivers_in_flight_replies() {
    let (open, gate) = crossbeam_channel::unbounded();
    let server = start(move || GatedJobs { gate: gate.clone() });
    let addr = server.local_addr();
    let mut stream = connect(addr);
    stream.write_all(b"wait last\n").expect("write");
    wait_for("the job to be in flight", || {
        server.stats().jobs_in_flight == 1
    });

    server.handle().shutdown();
    // New clients are refused once the listener is closed.
    wait_for("the listener to close", || {
        std::net::TcpStream::connect(addr).is_err()
    });
    open.send(()).expect("let the job finish");
    assert_eq!(
        read_line(&mut stream),
        "done last\n",
        "the in-flight reply must arrive"
    );
    assert!(
        is_closed_by_server(&mut stream),
        "then the connection closes"
    );
    drop(stream);
    server.join().expect("the server exits cleanly");
}

#[test]
fn shutdown_closes_idle_connections_and_returns() {
    let server = start(|| Echo);
    let mut streams: Vec<_> = (0..20).map(|_| connect(server.local_addr())).collect();
    for stream in &mut streams {
        assert_eq!(round_trip(stream, b"hi"), b"hi");
    }
    let handle = server.handle().clone();
    handle.shutdown();
    for stream in &mut streams {
        assert!(
            is_closed_by_server(stream),
            "every connection sees the end of stream"
        );
    }
    drop(streams);
    server.join().expect("the server exits cleanly");
    assert_eq!(handle.stats().closed_by_shutdown, 20);
}

/// Ignores shutdown requests: only the deadline can end it.
struct Stubborn;

impl Protocol for Stubborn {
    fn on_read(&mut self, input: &[u8], _ctx: &mut Context<'_>) -> usize {
        input.len()
    }
    fn on_shutdown(&mut self, _ctx: &mut Context<'_>) {}
}

#[test]
fn shutdown_cuts_what_is_left_at_its_deadline() {
    let config = Config {
        shutdown_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let server = start_with(config, || Stubborn);
    let mut stream = connect(server.local_addr());
    stream.write_all(b"x").expect("write");
    wait_for("the connection to be accepted", || {
        server.stats().active == 1
    });
    let started = Instant::now();
    let handle = server.handle().clone();
    server.shutdown().expect("the server exits cleanly");
    assert!(
        started.elapsed() < TIMEOUT,
        "shutdown must end by its deadline"
    );
    assert_eq!(handle.stats().closed_by_shutdown, 1);
    assert!(is_closed_by_server(&mut stream));
}

#[test]
fn twenty_servers_started_and_shut_down_at_once_all_exit() {
    for _ in 0..20 {
        let server = start(|| Echo);
        server.shutdown().expect("clean shutdown");
    }
}
