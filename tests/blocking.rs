//! The blocking drivers (thread per connection, thread pool) run the same protocols as the
//! reactor: CPython's socketserver scenarios for each model, plus their own bookkeeping bounds.

mod util;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketserver::protocol::{Context, Echo, Line, Protocol};
use socketserver::{Config, ErrorReport, Model, RunningServer, Server};
use util::*;

const MODELS: [Model; 2] = [
    Model::ThreadPerConnection {
        block_on_close: true,
    },
    Model::ThreadPool,
];

fn start_model<P, F>(model: Model, config: Config, factory: F) -> RunningServer
where
    P: Protocol + Send,
    F: FnMut() -> P + Send + 'static,
{
    bind(config)
        .spawn_blocking(model, factory)
        .expect("spawn blocking server")
}

fn small_pool() -> Config {
    Config {
        pool_threads: 4,
        ..test_config()
    }
}

#[test]
fn a_line_is_echoed_three_times_then_the_server_shuts_down_and_closes_its_socket() {
    for model in MODELS {
        let server = start_model(model, small_pool(), Line::default);
        let addr = server.local_addr();
        let mut stream = connect(addr);
        for _ in 0..3 {
            assert_eq!(
                round_trip(&mut stream, b"hello world\n"),
                b"hello world\n",
                "{model:?}"
            );
        }
        drop(stream);
        assert!(
            !util::nobody_listens_on(addr),
            "the probe sees a live listener"
        );
        server.shutdown().expect("clean shutdown");
        assert!(
            util::nobody_listens_on(addr),
            "{model:?}: listening socket still open"
        );
    }
}

#[test]
fn twenty_servers_started_and_shut_down_at_once_always_exit() {
    for model in MODELS {
        for _ in 0..20 {
            start_model(model, small_pool(), || Echo)
                .shutdown()
                .expect("clean shutdown");
        }
    }
}

#[test]
fn shutdown_closes_connected_clients_and_returns() {
    for model in MODELS {
        let server = start_model(model, small_pool(), || Echo);
        let mut streams: Vec<_> = (0..3).map(|_| connect(server.local_addr())).collect();
        for stream in &mut streams {
            assert_eq!(round_trip(stream, b"x"), b"x");
        }
        let handle = server.handle().clone();
        server.shutdown().expect("clean shutdown");
        for stream in &mut streams {
            assert!(
                is_closed_by_server(stream),
                "{model:?}: client not closed at shutdown"
            );
        }
        assert_eq!(handle.stats().closed_by_shutdown, 3, "{model:?}");
        assert_eq!(handle.stats().active, 0, "{model:?}");
    }
}

struct Fragile;

impl Protocol for Fragile {
    fn on_read(&mut self, input: &[u8], ctx: &mut Context<'_>) -> usize {
        assert!(!input.contains(&b'!'), "fragile protocol met a '!'");
        ctx.write(input);
        input.len()
    }
}

#[test]
fn a_handler_panic_reaches_the_error_hook_and_the_server_keeps_serving() {
    for model in MODELS {
        let reports: Arc<Mutex<Vec<ErrorReport>>> = Arc::default();
        let sink = reports.clone();
        let server = bind(small_pool())
            .on_error(move |report| sink.lock().expect("lock").push(report.clone()))
            .spawn_blocking(model, || Fragile)
            .expect("spawn");
        let mut victim = connect(server.local_addr());
        victim.write_all(b"boom!").expect("write");
        assert!(is_closed_by_server(&mut victim), "{model:?}");
        wait_for("the error hook", || {
            !reports.lock().expect("lock").is_empty()
        });
        assert!(reports.lock().expect("lock")[0].message.contains("fragile"));
        let mut next = connect(server.local_addr());
        assert_eq!(
            round_trip(&mut next, b"fine"),
            b"fine",
            "{model:?}: still serving"
        );
        drop(next);
        server.shutdown().expect("clean shutdown");
    }
}

#[test]
fn a_rejected_verify_closes_the_connection_exactly_once() {
    for model in MODELS {
        let server = bind(small_pool())
            .verify(|_| false)
            .spawn_blocking(model, || Echo)
            .expect("spawn");
        let mut stream = connect(server.local_addr());
        assert!(is_closed_by_server(&mut stream), "{model:?}");
        wait_for("the refusal to be counted", || {
            server.stats().refused_by_verify == 1
        });
        let stats = server.stats();
        assert_eq!(
            (stats.accepted, stats.active),
            (0, 0),
            "{model:?}: no protocol ran"
        );
        server.shutdown().expect("clean shutdown");
        assert_eq!(stats.refused_by_verify, 1, "{model:?}: closed once");
    }
}

#[test]
fn thread_per_connection_bookkeeping_stays_bounded() {
    let model = Model::ThreadPerConnection {
        block_on_close: true,
    };
    let server = start_model(model, test_config(), || Echo);
    for i in 0..300u32 {
        let mut stream = connect(server.local_addr());
        assert_eq!(round_trip(&mut stream, &i.to_be_bytes()), i.to_be_bytes());
    }
    wait_for("every handler to finish its connection", || {
        server.stats().active == 0
    });
    // The next accept joins the finished handlers: only it (and perhaps a thread still on its
    // way out) remains tracked, not one handle per connection ever served.
    let mut last = connect(server.local_addr());
    assert_eq!(round_trip(&mut last, b"last"), b"last");
    let stats = server.stats();
    assert_eq!(stats.accepted, 301);
    assert!(
        stats.handler_threads <= 2,
        "{} handler threads tracked after 301 connections",
        stats.handler_threads
    );
    drop(last);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_full_pool_queue_refuses_promptly() {
    let config = Config {
        pool_threads: 1,
        pool_queue: 1,
        ..test_config()
    };
    let server = start_model(Model::ThreadPool, config, || Echo);
    let mut served = connect(server.local_addr());
    assert_eq!(
        round_trip(&mut served, b"1"),
        b"1",
        "the one thread serves the first client"
    );
    let queued = connect(server.local_addr());
    wait_for("the second client to be queued", || {
        server.stats().active == 2
    });
    let mut refused = connect(server.local_addr());
    assert!(
        is_closed_by_server(&mut refused),
        "the client over the queue must be closed"
    );
    assert_eq!(server.stats().refused_over_capacity, 1);
    drop((served, queued));
    server.shutdown().expect("clean shutdown");
}

#[test]
fn the_idle_timeout_closes_a_quiet_connection() {
    for model in MODELS {
        let config = Config {
            idle_timeout: Some(Duration::from_millis(200)),
            ..small_pool()
        };
        let server = start_model(model, config, || Echo);
        let mut quiet = connect(server.local_addr());
        assert!(is_closed_by_server(&mut quiet), "{model:?}");
        wait_for("the idle close to be counted", || {
            server.stats().closed_idle == 1
        });
        server.shutdown().expect("clean shutdown");
    }
}

#[test]
fn an_error_answer_survives_unread_input() {
    for model in MODELS {
        let config = Config {
            max_line_bytes: 16,
            ..small_pool()
        };
        let server = start_model(model, config, || Line::new(16));
        let mut stream = connect(server.local_addr());
        stream.write_all(&vec![b'x'; 200 * 1024]).expect("write");
        let answer = read_to_end(&mut stream).expect("answer then end of stream, not a reset");
        assert_eq!(answer, b"error: line too long\n", "{model:?}");
        drop(stream);
        server.shutdown().expect("clean shutdown");
    }
}

#[test]
fn a_64_kib_burst_is_echoed_byte_exact() {
    for model in MODELS {
        let server = start_model(model, small_pool(), || Echo);
        let mut stream = connect(server.local_addr());
        let payload = pattern(64 * 1024, 5);
        assert!(round_trip(&mut stream, &payload) == payload, "{model:?}");
        drop(stream);
        server.shutdown().expect("clean shutdown");
    }
}

#[test]
fn the_reactor_and_the_blocking_drivers_give_the_same_answers() {
    let input = b"one\ntwo\nthree\n".repeat(50);
    let mut answers = Vec::new();
    let reactor = Server::bind_with("127.0.0.1:0", test_config())
        .expect("bind")
        .spawn(Line::default)
        .expect("spawn");
    let mut stream = connect(reactor.local_addr());
    answers.push(round_trip(&mut stream, &input));
    drop(stream);
    reactor.shutdown().expect("clean shutdown");
    for model in MODELS {
        let server = start_model(model, small_pool(), Line::default);
        let mut stream = connect(server.local_addr());
        answers.push(round_trip(&mut stream, &input));
        drop(stream);
        server.shutdown().expect("clean shutdown");
    }
    assert!(answers.iter().all(|answer| *answer == input));
}
