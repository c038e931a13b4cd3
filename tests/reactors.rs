//! Many-core reactors: one event loop per thread, each with its own SO_REUSEPORT listener,
//! sharing the worker pool, the counters and shutdown.

mod util;

use std::collections::HashSet;

use socketserver::protocol::{Context, Echo, Line, Protocol};
use socketserver::{Config, RunningServer};
use util::*;

fn start_reactors<P, F>(reactors: usize, config: Config, factory: F) -> RunningServer
where
    P: Protocol,
    F: FnMut() -> P + Clone + Send + 'static,
{
    let config = Config {
        reuse_port: true,
        ..config
    };
    bind(config)
        .spawn_reactors(reactors, factory)
        .expect("spawn reactors")
}

/// Greets each connection with the name of the thread (reactor) serving it, then echoes.
struct WhoServes;

impl Protocol for WhoServes {
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        ctx.write(format!("{name}\n").as_bytes());
    }
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        ctx.write(input);
        input.len()
    }
}

/// Also a regression test: the extra listeners were once bound on the server's thread after
/// `spawn_reactors` had returned, so clients connecting at once all reached the first reactor.
#[test]
fn connections_are_spread_over_every_reactor() {
    let server = start_reactors(2, test_config(), || WhoServes);
    let mut streams: Vec<_> = (0..64).map(|_| connect(server.local_addr())).collect();
    let serving: HashSet<String> = streams.iter_mut().map(read_line).collect();
    assert_eq!(serving.len(), 2, "64 connections all landed on {serving:?}");
    for stream in &mut streams {
        assert_eq!(round_trip(stream, b"ok"), b"ok");
    }
    assert_eq!(
        server.stats().accepted,
        64,
        "counters are summed over the reactors"
    );
    drop(streams);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_line_is_echoed_three_times_then_every_reactor_shuts_down() {
    let server = start_reactors(3, test_config(), Line::default);
    let addr = server.local_addr();
    let mut streams: Vec<_> = (0..12).map(|_| connect(addr)).collect();
    for stream in &mut streams {
        for _ in 0..3 {
            assert_eq!(round_trip(stream, b"three\n"), b"three\n");
        }
    }
    let handle = server.handle().clone();
    drop(streams);
    server.shutdown().expect("every reactor exits");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "every listener is closed"
    );
    assert_eq!(handle.stats().active, 0);
}

#[test]
fn twenty_servers_of_several_reactors_start_and_stop() {
    for _ in 0..20 {
        start_reactors(2, test_config(), || Echo)
            .shutdown()
            .expect("clean shutdown");
    }
}

#[test]
fn offloaded_jobs_come_back_to_the_reactor_that_asked() {
    let (open, gate) = crossbeam_channel::unbounded();
    let server = start_reactors(2, test_config(), move || GatedJobs { gate: gate.clone() });
    let mut streams: Vec<_> = (0..8).map(|_| connect(server.local_addr())).collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        std::io::Write::write_all(stream, format!("wait {i}\n").as_bytes()).expect("write");
    }
    wait_for("every job to be in flight", || {
        server.stats().jobs_in_flight == 8
    });
    for _ in 0..8 {
        open.send(()).expect("release a job");
    }
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_eq!(
            read_line(stream),
            format!("done {i}\n"),
            "each answer on its own connection"
        );
    }
    drop(streams);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn several_reactors_without_reuse_port_is_a_clear_error() {
    let server = bind(test_config());
    let error = server.serve_reactors(2, || Echo).expect_err("must refuse");
    assert!(error.to_string().contains("reuse_port"), "{error}");
}
