//! Dialled connections, reconnect policies, the WebSocket and pub/sub clients, the CLI's
//! `subscribe` and `publish` across a killed server, and the upstream keep-alive pool.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socketserver::client::pubsub::{Event, PubSubClient, MAX_QUEUED_EVENTS};
use socketserver::client::upstream::{PoolOptions, UpstreamError, UpstreamPool};
use socketserver::client::ws::{Client, ClientOptions, Received, MAX_QUEUED_MESSAGES};
use socketserver::client::{Backoff, Clients, Jitter, Retry};
use socketserver::protocol::http::{HttpLimits, Request, Response, Router};
use socketserver::protocol::ws::{self, WebSocketOptions, WebSocketRoute};
use socketserver::protocol::{Context, Http, Line, Protocol};
use socketserver::{Config, RunningServer};
use util::{test_config, wait_for, TIMEOUT};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The delays a fresh `Retry` on `policy` hands out for these draws.
fn schedule(policy: Backoff, draws: &[f64]) -> Vec<Duration> {
    let mut retry = Retry::new(policy);
    draws
        .iter()
        .map(|&draw| retry.next_delay(draw).expect("no retry limit"))
        .collect()
}

/// Rounds to whole milliseconds, so float arithmetic does not decide a comparison.
fn in_ms(delays: Vec<Duration>) -> Vec<u128> {
    delays
        .into_iter()
        .map(|delay| (delay.as_secs_f64() * 1000.0).round() as u128)
        .collect()
}

#[test]
fn backoff_schedules_follow_their_policy_draw_by_draw() {
    let draws = [0.5, 0.0, 0.999, 0.25, 0.5, 0.5];
    assert_eq!(in_ms(schedule(Backoff::fixed(ms(300)), &draws)), [300; 6]);
    let doubling = Backoff::exponential(ms(100), ms(1000));
    let none = doubling.clone().with_jitter(Jitter::None);
    assert_eq!(
        in_ms(schedule(none, &draws)),
        [100, 200, 400, 800, 1000, 1000]
    );
    assert_eq!(
        in_ms(schedule(doubling.clone(), &draws)),
        [50, 0, 400, 200, 500, 500],
        "full jitter: the ceiling times the draw"
    );
    let equal = doubling.clone().with_jitter(Jitter::Equal);
    assert_eq!(
        in_ms(schedule(equal, &draws)),
        [75, 100, 400, 500, 750, 750]
    );
    // Decorrelated: between the first delay and three times the last one, capped.
    let decorrelated = doubling.with_jitter(Jitter::Decorrelated);
    assert_eq!(
        in_ms(schedule(decorrelated, &[0.5, 0.5, 0.5, 1.0, 0.0])),
        [200, 350, 575, 1000, 100]
    );
    // gRPC's defaults: 1 s, x1.6, +-20 %, capped at 120 s.
    let grpc = Backoff::default();
    assert_eq!(
        in_ms(schedule(grpc.clone(), &[0.5, 0.5, 0.0, 1.0])),
        [1000, 1600, 2048, 4915]
    );
    let mut retry = Retry::new(grpc);
    let delays: Vec<Duration> = (0..20)
        .map(|_| retry.next_delay(0.5).expect("forever"))
        .collect();
    assert_eq!(delays.last(), Some(&Duration::from_secs(120)));
}

#[test]
fn a_connection_that_stayed_up_long_enough_starts_the_schedule_over() {
    let policy = Backoff::exponential(ms(100), ms(10_000))
        .with_jitter(Jitter::None)
        .with_min_uptime(Duration::from_secs(30));
    let mut retry = Retry::new(policy);
    let start = Instant::now();
    assert_eq!(retry.next_delay(0.5), Some(ms(100)));
    assert_eq!(retry.next_delay(0.5), Some(ms(200)));
    // Up for 10 s only: a flapping server keeps its clients backing off.
    retry.connected(start);
    retry.disconnected(start + Duration::from_secs(10));
    assert_eq!(retry.next_delay(0.5), Some(ms(400)));
    // Up for 30 s: healthy, and the next failure starts from the first delay.
    retry.connected(start + Duration::from_secs(20));
    retry.disconnected(start + Duration::from_secs(50));
    assert_eq!(retry.next_delay(0.5), Some(ms(100)));
}

#[test]
fn a_retry_limit_gives_up_after_that_many_failures_in_a_row() {
    let mut retry = Retry::new(Backoff::fixed(ms(10)).with_max_retries(2));
    assert_eq!(retry.next_delay(0.5), Some(ms(10)));
    assert_eq!(retry.next_delay(0.5), Some(ms(10)));
    assert_eq!(retry.next_delay(0.5), None);
}

/// A line client on a dialled connection: records what happens, says `hello` on every open,
/// and asks to be dialled again `redial` after every end.
struct Recorder {
    events: Arc<Mutex<Vec<String>>>,
    redial: Option<Duration>,
}

impl Recorder {
    fn new(redial: Option<Duration>) -> (Recorder, Arc<Mutex<Vec<String>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        (
            Recorder {
                events: events.clone(),
                redial,
            },
            events,
        )
    }

    fn note(&self, event: String) {
        self.events.lock().expect("events").push(event);
    }
}

impl Protocol for Recorder {
    fn on_open(&mut self, ctx: &mut Context<'_>) {
        self.note("open".into());
        ctx.write(b"hello\n");
    }

    fn on_read(&mut self, input: &[u8], _ctx: &mut Context<'_>) -> usize {
        self.note(format!(
            "read {}",
            String::from_utf8_lossy(input).trim_end()
        ));
        input.len()
    }

    fn on_closed(&mut self, ctx: &mut Context<'_>) {
        self.note("closed".into());
        if let Some(after) = self.redial {
            ctx.reconnect_after(after);
        }
    }
}

fn client_config(connect_timeout: Duration) -> Config {
    Config {
        handle_signals: false,
        connect_timeout,
        ..Config::default()
    }
}

fn has(events: &Arc<Mutex<Vec<String>>>, event: &str) -> bool {
    events
        .lock()
        .expect("events")
        .iter()
        .any(|seen| seen == event)
}

#[test]
fn a_connect_to_a_listener_with_a_full_backlog_times_out() {
    // A listener that never accepts, its backlog filled by connects that are never taken:
    // the kernel drops the next SYN, so a connect neither succeeds nor is refused.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("an IP address");
    let fillers: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket.set_nonblocking(true).expect("nonblocking");
            let _ = socket.connect(&addr.into());
            socket
        })
        .collect();
    let mut clients = Clients::new(client_config(ms(300))).expect("a client loop");
    let (recorder, events) = Recorder::new(None);
    let started = Instant::now();
    clients.dial(addr, recorder).expect("a socket");
    let handle = clients.handle();
    let running = std::thread::spawn(move || clients.run());
    wait_for("the connect to time out", || has(&events, "closed"));
    assert!(started.elapsed() >= ms(300), "not before its timeout");
    let stats = handle.stats();
    assert_eq!((stats.dials_timed_out, stats.dials_connected), (1, 0));
    assert!(!has(&events, "open"));
    handle.shutdown();
    running.join().expect("the loop").expect("ran");
    drop(fillers);
}

/// A port nobody listens on now (bound, then let go).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

fn line_server_on(addr: SocketAddr) -> RunningServer {
    socketserver::Server::bind_with(addr, test_config())
        .expect("bind the freed port")
        .spawn(Line::default)
        .expect("spawn")
}

#[test]
fn a_refused_connect_is_dialled_again_until_the_server_starts() {
    let addr = free_port();
    let mut clients = Clients::new(client_config(ms(1000))).expect("a client loop");
    let (recorder, events) = Recorder::new(Some(ms(20)));
    clients.dial(addr, recorder).expect("a socket");
    let handle = clients.handle();
    let running = std::thread::spawn(move || clients.run());
    wait_for("refusals", || handle.stats().dials_failed >= 2);
    assert!(!has(&events, "open"));
    let server = line_server_on(addr);
    wait_for("the echo of hello", || has(&events, "read hello"));
    let stats = handle.stats();
    assert_eq!(stats.dials_connected, 1);
    assert!(stats.redials >= 2 && stats.dials_started == stats.redials + 1);
    // The same protocol went on: one open, after the refusals.
    let opens = events
        .lock()
        .expect("events")
        .iter()
        .filter(|e| *e == "open")
        .count();
    assert_eq!(opens, 1);
    handle.shutdown();
    running.join().expect("the loop").expect("ran");
    server.shutdown().expect("stopped");
}

#[test]
fn a_dropped_connection_is_dialled_again_with_the_same_protocol() {
    let addr = free_port();
    let server = line_server_on(addr);
    let mut clients = Clients::new(client_config(ms(1000))).expect("a client loop");
    let (recorder, events) = Recorder::new(Some(ms(20)));
    clients.dial(addr, recorder).expect("a socket");
    let handle = clients.handle();
    let running = std::thread::spawn(move || clients.run());
    wait_for("the first echo", || has(&events, "read hello"));
    server.shutdown().expect("stopped");
    wait_for("the end", || has(&events, "closed"));
    let server = line_server_on(addr);
    wait_for("a second open", || {
        events
            .lock()
            .expect("events")
            .iter()
            .filter(|e| *e == "open")
            .count()
            == 2
    });
    handle.shutdown();
    running.join().expect("the loop").expect("ran");
    server.shutdown().expect("stopped");
}

fn ws_echo_server() -> RunningServer {
    let config = test_config();
    let limits = HttpLimits::from_config(&config);
    let options = WebSocketOptions::from_config(&config);
    let router =
        Arc::new(Router::new().websocket("/echo", WebSocketRoute::new(options, |_| ws::Echo)));
    util::start_with(config, move || Http::new(router.clone(), limits))
}

#[test]
fn the_websocket_client_talks_to_the_server_masked_and_closes_cleanly() {
    let server = ws_echo_server();
    let url = format!("ws://{}/echo", server.local_addr());
    let mut client = Client::connect(&url, ClientOptions::default()).expect("connected");
    // A server refuses unmasked frames (1002): an echo proves the client masks.
    for text in ["hello", "", &"x".repeat(200_000)] {
        client.send_text(text).expect("sent");
        assert_eq!(
            client.recv(TIMEOUT).expect("received"),
            Some(Received::Text(text.to_string()))
        );
    }
    client.send(ws::Message::Binary(&[0, 1, 2])).expect("sent");
    assert_eq!(
        client.recv(TIMEOUT).expect("received"),
        Some(Received::Binary(vec![0, 1, 2]))
    );
    client.close(1000, "bye").expect("closed");
    assert_eq!(client.close_status().map(|(code, _)| code), Some(1000));
    assert!(!client.is_open());
    server.shutdown().expect("stopped");
}

#[test]
fn a_handshake_answer_that_does_not_upgrade_is_refused() {
    let server = ws_echo_server();
    // No WebSocket route at this path: the server answers 404, not 101.
    let url = format!("ws://{}/elsewhere", server.local_addr());
    assert!(Client::connect(&url, ClientOptions::default()).is_err());
    server.shutdown().expect("stopped");
}

/// The `socketserver` binary with `args`, its stdout read line by line.
struct Process {
    child: Child,
    lines: crossbeam_channel::Receiver<String>,
}

impl Process {
    fn start(args: &[&str], stdin: bool) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_socketserver"))
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn socketserver");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(TIMEOUT).expect("a line in time")
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("written");
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pubsub_server(addr: SocketAddr, dir: &str) -> Process {
    let addr = addr.to_string();
    let server = Process::start(
        &[
            "serve",
            "--protocol",
            "pubsub",
            "--data-dir",
            dir,
            "--fsync",
            "always",
            "--addr",
            &addr,
        ],
        false,
    );
    assert_eq!(server.line(), format!("listening on {addr}"));
    server
}

#[test]
fn subscribe_and_publish_go_on_across_a_killed_and_restarted_server_without_loss_or_repeat() {
    let dir = std::env::temp_dir().join(format!("socketserver-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir = dir.to_str().expect("a UTF-8 path").to_string();
    let addr = free_port();
    let url = format!("ws://{addr}/");
    let server = pubsub_server(addr, &dir);
    let quick = ["--backoff-min-ms", "20", "--backoff-max-ms", "200"];
    let mut subscribe_args = vec!["subscribe", &url, "orders", "--from-offset", "1"];
    subscribe_args.extend(quick);
    let subscriber = Process::start(&subscribe_args, false);
    let mut publish_args = vec!["publish", &url, "orders"];
    publish_args.extend(quick);
    let mut publisher = Process::start(&publish_args, true);
    for n in 1..=3 {
        publisher.write_line(&format!("order {n}"));
        assert_eq!(
            publisher.line(),
            n.to_string(),
            "acknowledged at its offset"
        );
    }
    for n in 1..=3 {
        assert_eq!(subscriber.line(), format!("{n}\torder {n}"));
    }
    server.signal(libc::SIGKILL);
    drop(server);
    // Written while the server is down: held, and sent once it is back.
    for n in 4..=6 {
        publisher.write_line(&format!("order {n}"));
    }
    let server = pubsub_server(addr, &dir);
    for n in 4..=6 {
        assert_eq!(publisher.line(), n.to_string());
    }
    for n in 4..=6 {
        assert_eq!(
            subscriber.line(),
            format!("{n}\torder {n}"),
            "resumed, nothing repeated"
        );
    }
    // The log holds each publish once: a fresh reader from the start sees six, then nothing.
    let mut reader_args = vec![
        "subscribe",
        &url,
        "orders",
        "--from-offset",
        "1",
        "--count",
        "6",
    ];
    reader_args.extend(quick);
    let reader = Process::start(&reader_args, false);
    let all: Vec<String> = (0..6).map(|_| reader.line()).collect();
    let expected: Vec<String> = (1..=6).map(|n| format!("{n}\torder {n}")).collect();
    assert_eq!(all, expected);
    publisher.write_line("order 7");
    assert_eq!(publisher.line(), "7");
    assert_eq!(subscriber.line(), "7\torder 7");
    assert!(subscriber.lines.try_recv().is_err(), "no line twice");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stopped_server_is_found_dead_by_the_clients_heartbeats() {
    let server = Process::start(
        &["serve", "--protocol", "ws", "--addr", "127.0.0.1:0"],
        false,
    );
    let listening = server.line();
    let addr = listening
        .strip_prefix("listening on ")
        .expect("an address")
        .to_string();
    let (interval, timeout) = (ms(200), ms(300));
    let options = ClientOptions {
        websocket: WebSocketOptions {
            ping_interval: Some(interval),
            ping_timeout: timeout,
            ..WebSocketOptions::default()
        },
        ..ClientOptions::default()
    };
    let mut client = Client::connect(&format!("ws://{addr}/"), options).expect("connected");
    // Answering: pings come back and the connection lives on past several intervals.
    client.serve_for(interval * 4).expect("served");
    assert!(client.is_open());
    server.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let outcome = client.recv(TIMEOUT);
    let found = stopped.elapsed();
    server.signal(libc::SIGCONT);
    assert!(outcome.is_err(), "the connection ended: {outcome:?}");
    assert_eq!(client.close_status().map(|(code, _)| code), Some(1006));
    assert!(found >= timeout, "not before the ping timeout: {found:?}");
    assert!(found < TIMEOUT / 2, "within the heartbeat bound: {found:?}");
}

/// An upstream HTTP server answering with its name and the path.
fn upstream(name: &'static str, config: Config) -> RunningServer {
    let limits = HttpLimits::from_config(&config);
    let router = Arc::new(Router::new().get("/*", move |request| {
        Response::text(200, format!("{name} {}", request.path()))
    }));
    util::start_with(config, move || Http::new(router.clone(), limits))
}

fn get(path: &str) -> Request {
    Request::new("GET", path).with_header("Host", "upstream")
}

#[test]
fn pooled_upstream_connections_are_reused_for_many_requests() {
    let server = upstream("a", test_config());
    let pool = UpstreamPool::new(vec![server.local_addr()], PoolOptions::default());
    for n in 0..100 {
        let answer = pool.send(&get(&format!("/{n}"))).expect("answered");
        assert_eq!(
            (answer.status, answer.body),
            (200, format!("a /{n}").into_bytes())
        );
    }
    assert_eq!(
        server.handle().stats().accepted,
        1,
        "one connection for all"
    );
    let stats = pool.stats();
    assert_eq!(stats.connects.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.reuses.load(std::sync::atomic::Ordering::Relaxed), 99);
    server.shutdown().expect("stopped");
}

#[test]
fn a_connection_the_upstream_closed_is_not_handed_out() {
    let config = Config {
        idle_timeout: Some(ms(100)),
        ..test_config()
    };
    let server = upstream("a", config);
    let pool = UpstreamPool::new(vec![server.local_addr()], PoolOptions::default());
    pool.send(&get("/1")).expect("answered");
    // Closed, and its socket gone (the gauge falls once the socket is closed), so the end of
    // stream is already in the pool's socket: counted as closed alone is not enough, which
    // once let a loaded machine hand the connection out before its end arrived.
    wait_for("the upstream to close the idle connection", || {
        let stats = server.handle().stats();
        stats.closed_idle == 1 && stats.active == 0
    });
    let answer = pool.send(&get("/2")).expect("answered on a new connection");
    assert_eq!(answer.body, b"a /2");
    let stats = pool.stats();
    assert_eq!(
        stats.discarded.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        stats.retries.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "found before use"
    );
    assert_eq!(server.handle().stats().accepted, 2);
    server.shutdown().expect("stopped");
}

#[test]
fn requests_fail_over_to_the_next_upstream_and_all_down_is_a_clear_error() {
    let gone = free_port();
    let second = upstream("b", test_config());
    let pool = UpstreamPool::new(vec![gone, second.local_addr()], PoolOptions::default());
    let answer = pool.send(&get("/x")).expect("answered by the second");
    assert_eq!(answer.body, b"b /x");
    assert_eq!(
        pool.stats()
            .failovers
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The first is skipped while it is known down: no new failover, the pooled one is reused.
    pool.send(&get("/y")).expect("answered");
    assert_eq!(second.handle().stats().accepted, 1);
    let second_addr = second.local_addr();
    second.shutdown().expect("stopped");
    match pool.send(&get("/z")) {
        Err(UpstreamError::AllDown(reasons)) => {
            let addrs: Vec<SocketAddr> = reasons.iter().map(|(addr, _)| *addr).collect();
            assert_eq!(addrs.len(), 2, "{reasons:?}");
            assert!(addrs.contains(&gone) && addrs.contains(&second_addr));
        }
        other => panic!("expected every upstream down, got {other:?}"),
    }
}

#[test]
fn a_subscriber_whose_caller_takes_nothing_stops_reading_at_its_bound_and_loses_nothing() {
    // A log on disk, not the memory history: the flood is longer than the memory history
    // keeps, and when the kernel's buffers fill before the client's bound (a loaded machine)
    // the server rightly moves the subscriber to catching up from the log, which must still
    // hold every message for "loses nothing" to be the client's promise under test.
    let dir = std::env::temp_dir().join(format!("socketserver-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = Process::start(
        &[
            "serve",
            "--protocol",
            "pubsub",
            "--data-dir",
            dir.to_str().expect("a UTF-8 path"),
            "--fsync",
            "never",
            "--addr",
            "127.0.0.1:0",
        ],
        false,
    );
    let listening = server.line();
    let addr = listening.strip_prefix("listening on ").expect("an address");
    let url = format!("ws://{addr}/");
    let mut subscriber = PubSubClient::connect(&url, ClientOptions::default()).expect("connected");
    subscriber.subscribe("flood", None);
    let subscribed = loop {
        match subscriber.next_event(TIMEOUT).expect("an event") {
            Some(Event::Subscribed { last, .. }) => break last,
            Some(_) => {}
            None => panic!("no subscribed in time"),
        }
    };
    let mut publisher = PubSubClient::connect(&url, ClientOptions::default()).expect("connected");
    // More than the bound and one read's worth past it, so that reading on would show.
    let total = (MAX_QUEUED_EVENTS + 64 * 1024 / 2 + 1000) as u64;
    let last = (0..total)
        .map(|n| publisher.start_publish("flood", &n.to_string()))
        .last()
        .expect("published");
    assert!(
        publisher
            .wait_published(last, TIMEOUT)
            .expect("acknowledged")
            .is_some(),
        "the last publish was not acknowledged in time"
    );
    // Served without taking anything: it reads up to its bound (and what the read that
    // crossed it carried), then stops reading.
    let deadline = Instant::now() + TIMEOUT;
    while subscriber.queued_events() < MAX_QUEUED_EVENTS {
        assert!(
            Instant::now() < deadline,
            "the subscriber stopped short of its bound"
        );
        subscriber.serve_for(ms(20)).expect("served");
    }
    let held = subscriber.queued_events();
    subscriber.serve_for(ms(200)).expect("served");
    assert_eq!(
        subscriber.queued_events(),
        held,
        "no reading past the bound"
    );
    // Past the bound by at most what one 64 KiB read carries (a frame is 2 bytes at least).
    assert!(held - MAX_QUEUED_EVENTS <= 64 * 1024 / 2, "{held} held");
    // Taken, they come in order, and the rest follow: every message once.
    let mut next = subscribed + 1;
    while next <= subscribed + total {
        match subscriber.next_event(TIMEOUT).expect("an event") {
            Some(Event::Message { offset, data, .. }) => {
                assert_eq!(offset, next);
                assert_eq!(data, (offset - subscribed - 1).to_string());
                next += 1;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("message {next} did not come"),
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_websocket_client_whose_caller_takes_nothing_stops_reading_at_its_bound() {
    let server = ws_echo_server();
    let url = format!("ws://{}/echo", server.local_addr());
    let mut client = Client::connect(&url, ClientOptions::default()).expect("connected");
    // More than the bound and one read's worth past it, so that reading on would show.
    let total = MAX_QUEUED_MESSAGES + 64 * 1024 / 2 + 1000;
    for n in 0..total {
        client.send_text(&n.to_string()).expect("sent");
    }
    let deadline = Instant::now() + TIMEOUT;
    while client.queued() < MAX_QUEUED_MESSAGES {
        assert!(Instant::now() < deadline, "stopped short of its bound");
        client.serve_for(ms(20)).expect("served");
    }
    let held = client.queued();
    client.serve_for(ms(200)).expect("served");
    assert_eq!(client.queued(), held, "no reading past the bound");
    // Past the bound by at most what one 64 KiB read carries (a frame is 2 bytes at least).
    assert!(held - MAX_QUEUED_MESSAGES <= 64 * 1024 / 2, "{held} held");
    for n in 0..total {
        assert_eq!(
            client.recv(TIMEOUT).expect("received"),
            Some(Received::Text(n.to_string()))
        );
    }
    server.shutdown().expect("stopped");
}
