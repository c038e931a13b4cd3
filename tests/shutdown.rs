//! Graceful shutdown: stop accepting, answer what is in flight, close, exit by the deadline.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};

use socketserver::protocol::{Context, Echo, Protocol};
use socketserver::Config;
use util::pubsub;
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

/// The status `GET path` gets from `addr`, or `None` if nobody accepts the connection.
fn status_of(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).build();
    match agent.get(&format!("http://{addr}{path}")).call() {
        Ok(response) => Some(response.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(ureq::Error::Transport(_)) => None,
    }
}

/// What HAProxy's agent check is told at `agent`: one line, then the close.
fn agent_says(agent: std::net::SocketAddr) -> String {
    let mut stream = connect(agent);
    String::from_utf8(read_to_end(&mut stream).expect("the answer")).expect("text")
}

#[test]
fn sigterm_with_a_drain_delay_turns_readyz_to_503_while_serving_then_closes_websockets_with_1001() {
    let server = Cli::start(
        &[
            "serve",
            "--protocol",
            "pubsub",
            "--memory",
            "--drain-delay",
            "1.5",
            "--agent-addr",
            "127.0.0.1:0",
        ],
        None,
    );
    let addr = server.addr;
    let agent = server.next_address("agent check at ");
    assert_eq!(status_of(addr, "/livez"), Some(200));
    assert_eq!(status_of(addr, "/readyz"), Some(200));
    assert_eq!(agent_says(agent), "up ready\n");
    let mut subscriber = pubsub::Client::connect(addr);
    subscriber.subscribe("news", None);
    let mut publisher = pubsub::Client::connect(addr);

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    wait_for("/readyz to answer 503", || {
        status_of(addr, "/readyz") == Some(503)
    });
    assert_eq!(
        agent_says(agent),
        "drain\n",
        "HAProxy's agent is told to drain too"
    );
    // Still serving: new connections are accepted, live ones go on working.
    assert_eq!(
        status_of(addr, "/livez"),
        Some(200),
        "the listener is still open"
    );
    let offset = publisher.publish("news", "during the drain", None);
    assert_eq!(
        subscriber.messages(1),
        vec![(offset, "during the drain".to_string())]
    );
    let mut late = pubsub::Client::connect(addr);
    late.subscribe("news", None);

    // Then the WebSockets are told the server is going away, and it exits.
    let code = loop {
        match subscriber.socket.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(error) => panic!("no close frame: {error}"),
        }
    };
    assert_eq!(code, Some(1001));
    let (status, _) = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(status_of(addr, "/livez"), None, "the listener is closed");
}

#[test]
fn a_drain_is_not_ready_at_once_and_a_second_request_shuts_down_without_waiting() {
    let config = Config {
        drain_delay: Duration::from_secs(3600),
        ..test_config()
    };
    let server = start_with(config, || Echo);
    let addr = server.local_addr();
    let handle = server.handle();
    assert!(handle.is_ready());
    handle.drain();
    assert!(
        !handle.is_ready(),
        "not ready from the moment the drain begins"
    );
    // An hour of drain: still accepting and serving.
    let mut stream = connect(addr);
    assert_eq!(round_trip(&mut stream, b"still here"), b"still here");
    handle.drain();
    wait_for("the listener to close", || {
        std::net::TcpStream::connect(addr).is_err()
    });
    drop(stream);
    server.shutdown().expect("clean shutdown");
}
