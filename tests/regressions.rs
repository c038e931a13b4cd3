//! Named regression tests: each guards a specific bug class the reactor must never reintroduce.

mod util;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::{Echo, Http, Line};
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

/// An HTTP server for the regression tests: `GET /` answers `Hello, World!`, `GET /big` 4 KiB;
/// `GET /slow` is offloaded and waits for the gate (when there is one).
fn http_server(
    config: Config,
    gate: Option<crossbeam_channel::Receiver<()>>,
) -> socketserver::RunningServer {
    let router = http_router(gate);
    let limits = HttpLimits::from_config(&config);
    start_with(config, move || Http::new(router.clone(), limits))
}

fn http_router(gate: Option<crossbeam_channel::Receiver<()>>) -> Arc<Router> {
    let router = Router::new()
        .get("/", |_| Response::text(200, "Hello, World!"))
        .get("/big", |_| Response::new(200).body(&[b'b'; 4096][..]));
    Arc::new(match gate {
        Some(gate) => router.route_offloaded("GET", "/slow", move |_| {
            let _ = gate.recv_timeout(TIMEOUT);
            Response::text(200, "slow")
        }),
        None => router,
    })
}

/// A trailer line whose newline sat exactly at the limit was accepted, the room left wrapped
/// below zero, and every later trailer line was kept: one client took a gigabyte. Such a line
/// must be refused with 431 at once, and nothing after it kept.
#[test]
fn an_http_trailer_line_ending_at_the_limit_is_refused_not_kept_without_bound() {
    let server = http_server(test_config(), None);
    let mut stream = connect(server.local_addr());
    let mut request =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX:".to_vec();
    request.resize(request.len() + 8189, b'a');
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).expect("write");
    // More trailer lines behind it, as the attack sent: the server must not keep them.
    let line = [b"Y:".as_slice(), &[b'b'; 60 * 1024], b"\r\n"].concat();
    for _ in 0..16 {
        if stream.write_all(&line).is_err() {
            break; // the server closed: the writes are refused
        }
    }
    let answer = read_to_end(&mut stream).expect("an answer and a clean close");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 431 "),
        "the trailers over the limit are refused: {text}"
    );
    assert_eq!(server.stats().closed_by_panic, 0);
    server.shutdown().expect("clean shutdown");
}

fn spawn_http(driver: Driver, config: Config) -> socketserver::RunningServer {
    let router = http_router(None);
    let limits = HttpLimits::from_config(&config);
    spawn_on(driver, config, move || Http::new(router.clone(), limits))
}

/// Reads answers (after those already in `buffer`) until `expected` have come or the stream
/// ends; every one must be `200`. Returns how many came.
fn read_ok_answers(
    stream: &mut std::net::TcpStream,
    mut buffer: Vec<u8>,
    expected: usize,
) -> usize {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut answered = 0;
    while answered < expected {
        while let Some(answer) = util::http::parse_answer(&mut buffer, false) {
            assert_eq!(
                answer.status,
                200,
                "answer {answered} of {expected}: {}",
                String::from_utf8_lossy(&answer.body)
            );
            answered += 1;
        }
        if answered == expected {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(count) => buffer.extend_from_slice(&chunk[..count]),
            Err(error) => panic!("after {answered} answers: {error}"),
        }
    }
    answered
}

/// A client sent 140,000 pipelined requests in full and read nothing for 11 s: the server,
/// paused by its own backpressure, let the request timer (armed because its last read ended
/// mid-request) run on, and answered 408 after 32,018 of them. Time spent not reading because
/// the client is not reading must not count against the client's sending.
#[test]
fn a_request_timer_does_not_blame_the_client_for_the_servers_backpressure() {
    let timeout = Duration::from_millis(200);
    for driver in DRIVERS {
        let config = Config {
            http_request_timeout: timeout,
            http_keep_alive_timeout: timeout,
            write_low_watermark: 16 * 1024,
            write_high_watermark: 64 * 1024,
            read_chunk_bytes: 16 * 1024,
            ..test_config()
        };
        let server = spawn_http(driver, config);
        let mut stream = connect_with_small_window(server.local_addr());
        // 4 KiB answers: far more than the kernel's socket buffers take.
        let requests = 5_000;
        let pipeline = util::http::get("/big").repeat(requests);
        let mut writer = stream.try_clone().expect("clone");
        // The writes block once the server stops reading: they go on beside the test.
        let sending = std::thread::spawn(move || writer.write_all(pipeline.as_bytes()));
        wait_for("the server to stop reading", || {
            server.stats().backpressure_pauses > 0
        });
        // The client reads nothing for several request timeouts: the scenario itself.
        std::thread::sleep(timeout * 4);
        assert_eq!(
            read_ok_answers(&mut stream, Vec::new(), requests),
            requests,
            "{driver:?}: every request is answered"
        );
        sending.join().expect("writer").expect("every request sent");
        drop(stream);
        server.shutdown().expect("clean shutdown");
    }
}

/// With an offloaded answer at the head of a full pipeline, the reactor went on reading until
/// the unconsumed input passed `max_input_bytes`, then closed the connection as over the limit,
/// though the docs say no more requests are read while the queue is full.
#[test]
fn a_full_pipeline_holds_its_input_instead_of_closing_over_the_input_limit() {
    let (release, gate) = crossbeam_channel::unbounded();
    let config = Config {
        http_max_pipeline: 4,
        read_chunk_bytes: 16 * 1024,
        max_input_bytes: 64 * 1024,
        max_line_bytes: 1024,
        max_frame_bytes: 1024,
        ..test_config()
    };
    let server = http_server(config, Some(gate));
    let mut stream = connect(server.local_addr());
    let requests = 5_000;
    let mut pipeline = util::http::get("/slow");
    pipeline.push_str(&util::http::get("/").repeat(requests));
    let mut writer = stream.try_clone().expect("clone");
    let sending = std::thread::spawn(move || writer.write_all(pipeline.as_bytes()));
    // Everything is on its way (in the kernel's buffers, or read) before the job finishes.
    wait_for("the slow job to be running", || {
        server.stats().jobs_in_flight == 1
    });
    let _ = sending.join().expect("writer");
    release.send(()).expect("release the slow answer");
    let mut buffer = Vec::new();
    let first = util::http::read_answer(&mut stream, &mut buffer, false);
    assert_eq!(first.body, b"slow");
    let answered = read_ok_answers(&mut stream, buffer, requests);
    assert_eq!(answered, requests, "every request behind the slow one");
    assert_eq!(server.stats().closed_over_limit, 0);
    server.shutdown().expect("clean shutdown");
}

/// A request that had begun arriving when a graceful shutdown started was dropped with the
/// connection, and the client never learnt that the connection was over. It is finished and
/// answered, with `Connection: close`.
#[test]
fn a_request_begun_before_a_graceful_shutdown_is_answered_with_close() {
    let server = http_server(test_config(), None);
    let mut stream = connect(server.local_addr());
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .expect("write the first half");
    wait_for("the first half to be read", || server.stats().bytes_in > 0);
    let handle = server.handle().clone();
    handle.shutdown();
    stream.write_all(b"\r\n").expect("write the rest");
    let answer = util::http::read_answer(&mut stream, &mut Vec::new(), false);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(read_to_end(&mut stream).expect("clean close"), b"");
    server.join().expect("clean exit");
}

/// Churn of short connections grew the timer heap (and the memory it never gave back) by one
/// idle-timer entry per connection closed within the idle timeout. The heap must be bounded by
/// the connections open.
#[test]
fn connection_churn_leaves_no_timer_entries_behind() {
    let server = start_with(test_config(), || Echo);
    let cycles = 2_000;
    for _ in 0..cycles {
        let mut stream = connect(server.local_addr());
        assert_eq!(round_trip(&mut stream, b"x"), b"x");
    }
    // Two turns' worth of slack beyond the compaction floor.
    let bound = socketserver::reactor::timer::COMPACT_FLOOR as u64 + 8;
    wait_for(
        "every churned connection closed and its timers gone",
        || {
            let stats = server.stats();
            stats.closed_by_peer == cycles && stats.timers <= bound
        },
    );
    server.shutdown().expect("clean shutdown");
}

/// The pub/sub hub once waited on a channel with no sender when it had no backplane: a
/// disconnected channel is always ready, so it spun on a core while idle.
#[test]
fn an_idle_pubsub_hub_without_a_backplane_does_not_spin() {
    let server = Cli::start(&["serve", "--protocol", "pubsub", "--memory"], None);
    let before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(1)); // the observation window itself
    let spent = server.cpu_time() - before;
    assert!(
        spent < Duration::from_millis(300),
        "{spent:?} of CPU in 1 s while idle"
    );
}
