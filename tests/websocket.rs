//! WebSocket (RFC 6455) on every model, against an independent client (tungstenite) and raw
//! sockets for what a well-behaved client will not send: the upgrade and its refusals, every
//! framing rule with its close code, every split of the input, the closing handshake from
//! either side, heartbeats, backpressure, permessage-deflate, graceful shutdown, metrics.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socketserver::protocol::http::{HttpLimits, Response, Router};
use socketserver::protocol::ws::{
    self, DeflateOptions, Message, SendStatus, WebSocket, WebSocketHandler, WebSocketOptions,
    WebSocketRoute,
};
use socketserver::protocol::{Http, Session};
use socketserver::{Config, RunningServer, Server};
use util::ws::{
    client_frame, close_payload, frame, inflate, upgrade_request, RawClient, BINARY, CLOSE,
    CONTINUATION, PING, PONG, TEXT,
};
use util::{browser, connect, read_to_end, test_config, wait_for, Driver, TIMEOUT};

/// A router with a page at `/`, an echo WebSocket at `/echo`, and `route` at `/ws`.
fn router_with(route: WebSocketRoute, options: &WebSocketOptions) -> Arc<Router> {
    Arc::new(
        Router::new()
            .get("/", |_| Response::text(200, "a page"))
            .websocket("/echo", WebSocketRoute::new(options.clone(), |_| ws::Echo))
            .websocket("/ws", route),
    )
}

fn spawn(driver: Driver, config: Config, router: Arc<Router>) -> RunningServer {
    let limits = HttpLimits::from_config(&config);
    util::spawn_on(driver, config, move || Http::new(router.clone(), limits))
}

/// An echo server on the reactor with `options` (and `/ws` echoing too).
fn echo_server(config: Config, options: WebSocketOptions) -> RunningServer {
    let route = WebSocketRoute::new(options.clone(), |_| ws::Echo);
    spawn(Driver::Reactor, config, router_with(route, &options))
}

/// A tungstenite client on `path`, with read and write timeouts.
fn client(addr: SocketAddr, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = connect(addr);
    let (socket, _) =
        tungstenite::client(format!("ws://{addr}{path}"), stream).expect("the handshake");
    socket
}

fn text(message: &str) -> tungstenite::Message {
    tungstenite::Message::text(message)
}

/// Echo round trips a client relies on: text and binary, empty, small, and large enough to be
/// fragmented by the server (64 KiB fragments), all in order.
fn check_echo(addr: SocketAddr) {
    let mut socket = client(addr, "/echo");
    let large = util::pattern(300_000, 7);
    let messages = [
        tungstenite::Message::text("hello"),
        tungstenite::Message::text(""),
        tungstenite::Message::text("κόσμε 𝄞"),
        tungstenite::Message::binary(vec![0u8, 1, 2, 255]),
        tungstenite::Message::binary(large),
    ];
    for message in &messages {
        socket.send(message.clone()).expect("send");
    }
    for message in &messages {
        assert_eq!(&socket.read().expect("an echo"), message);
    }
    socket.close(None).expect("close");
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(_)) => continue,
            Ok(other) => panic!("after close: {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(error) => panic!("closing: {error}"),
        }
    }
}

#[test]
fn echo_round_trips_under_every_model() {
    for driver in util::DRIVERS {
        let options = WebSocketOptions::default();
        let route = WebSocketRoute::new(options.clone(), |_| ws::Echo);
        let server = spawn(driver, test_config(), router_with(route, &options));
        check_echo(server.local_addr());
        wait_for("the close counted", || {
            server.stats().websocket_closed_normal + server.stats().websocket_closed_other >= 1
        });
        let stats = server.stats();
        assert_eq!(stats.websockets_opened, 1, "{driver:?}");
        assert_eq!(stats.websocket_messages_in, 5, "{driver:?}");
        assert_eq!(stats.websocket_messages_out, 5, "{driver:?}");
        server.shutdown().expect("clean shutdown");
    }
}

#[test]
fn the_cli_echoes_under_every_model_including_prefork() {
    for model in ["reactor", "reactors", "threads", "pool", "prefork"] {
        let cli = util::Cli::start(
            &[
                "serve",
                "--protocol",
                "ws",
                "--model",
                model,
                "--processes",
                "2",
            ],
            None,
        );
        check_echo(cli.addr);
        let (status, stderr) = cli.terminate();
        assert!(status.success(), "{model}: {status:?} {stderr}");
    }
}

/// The answer to a raw request: its status line and head.
fn answer_to(addr: SocketAddr, request: &str) -> String {
    let mut stream = connect(addr);
    stream.write_all(request.as_bytes()).expect("write");
    let mut buffer = Vec::new();
    let answer = util::http::read_answer(&mut stream, &mut buffer, false);
    let mut head = format!("{}", answer.status);
    for (name, value) in &answer.headers {
        head.push_str(&format!("\n{name}: {value}"));
    }
    head
}

#[test]
fn an_upgrade_is_checked_and_refused_with_the_right_status() {
    let options = WebSocketOptions {
        subprotocols: vec!["chat.v2".into(), "chat.v1".into()],
        ..WebSocketOptions::default()
    };
    let route = WebSocketRoute::new(options.clone(), |_| ws::Echo)
        .check_origin(|origin| origin != Some("https://evil.example"));
    let server = spawn(Driver::Reactor, test_config(), router_with(route, &options));
    let addr = server.local_addr();
    let with = |old: &str, new: &str| upgrade_request("/ws", "").replace(old, new);
    // A key that is not base64 of 16 bytes: 400.
    let bad_key = with("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
    assert!(answer_to(addr, &bad_key).starts_with("400"));
    // Another version: 426, naming the one spoken.
    let refused = answer_to(addr, &with("Version: 13", "Version: 12"));
    assert!(refused.starts_with("426"), "{refused}");
    assert!(refused.contains("sec-websocket-version: 13"), "{refused}");
    // No `Connection: upgrade` token: 400; the tokens are case-insensitive.
    assert!(
        answer_to(addr, &with("Connection: Upgrade", "Connection: keep-alive")).starts_with("400")
    );
    let mixed = with("Connection: Upgrade", "Connection: keep-alive, UPGRADE")
        .replace("Upgrade: websocket", "Upgrade: WebSocket");
    let mut raw = connect(addr);
    raw.write_all(mixed.as_bytes()).expect("write");
    RawClient::after_upgrade(raw);
    // Not GET: 405; HTTP/1.0: 400.
    assert!(answer_to(addr, &with("GET /ws", "POST /ws")).starts_with("405"));
    assert!(answer_to(addr, &with("HTTP/1.1", "HTTP/1.0")).starts_with("400"));
    // The origin check: 403.
    let evil = upgrade_request("/ws", "Origin: https://evil.example\r\n");
    assert!(answer_to(addr, &evil).starts_with("403"));
    // A plain GET to a path only WebSocket serves: 426 with Upgrade.
    let plain = answer_to(addr, "GET /ws HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(
        plain.starts_with("426") && plain.contains("upgrade: websocket"),
        "{plain}"
    );
    let mut raw = connect(addr);
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .expect("write");
    let whole = String::from_utf8(read_to_end(&mut raw).expect("the answer")).expect("utf-8");
    assert!(
        whole.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{whole}"
    );
    // A page and WebSockets on one port.
    assert!(answer_to(addr, "GET / HTTP/1.1\r\nHost: h\r\n\r\n").starts_with("200"));
    // Subprotocols: the server's preference among those offered.
    let offered = RawClient::connect(addr, "/ws", "Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n");
    assert!(
        offered
            .response
            .contains("Sec-WebSocket-Protocol: chat.v2\r\n"),
        "{}",
        offered.response
    );
    let none = RawClient::connect(addr, "/ws", "Sec-WebSocket-Protocol: other\r\n");
    assert!(!none.response.contains("Sec-WebSocket-Protocol"));
    // The accept key of RFC 6455's example.
    assert!(none
        .response
        .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    // Closed by the clients first, so that shutdown does not wait out their close timeout.
    drop((offered, none));
    server.shutdown().expect("clean shutdown");
}

#[test]
fn frames_right_behind_the_upgrade_request_are_not_lost() {
    let server = echo_server(test_config(), WebSocketOptions::default());
    let mut stream = connect(server.local_addr());
    let mut bytes = upgrade_request("/echo", "").into_bytes();
    bytes.extend(client_frame(TEXT, b"first"));
    bytes.extend(client_frame(TEXT, b"second"));
    stream.write_all(&bytes).expect("write all at once");
    let mut raw = RawClient::after_upgrade(stream);
    assert_eq!(raw.read_frame().expect("echo").payload, b"first");
    assert_eq!(raw.read_frame().expect("echo").payload, b"second");
    server.shutdown().expect("clean shutdown");
}

/// Sends `bytes` on a fresh connection and expects a close frame with `code`, then the end of
/// the TCP connection.
fn expect_close_code(addr: SocketAddr, bytes: &[u8], code: u16, what: &str) {
    let mut raw = RawClient::connect(addr, "/echo", "");
    raw.send(bytes);
    let close = raw.read_until_close();
    assert_eq!(close.close_code(), code, "{what}");
    assert!(raw.is_ended(), "{what}: the server ends the connection");
}

#[test]
fn every_framing_rule_broken_gets_its_close_code() {
    let options = WebSocketOptions {
        max_message_bytes: 1000,
        ..WebSocketOptions::default()
    };
    let server = echo_server(test_config(), options);
    let addr = server.local_addr();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            frame(0x80 | TEXT, b"hi", false),
            1002,
            "an unmasked client frame",
        ),
        (frame(0xA0 | TEXT, b"hi", true), 1002, "RSV2"),
        (
            frame(0xC0 | TEXT, b"hi", true),
            1002,
            "RSV1 with no extension agreed",
        ),
        (frame(0x80 | 0x3, b"", true), 1002, "a reserved data opcode"),
        (
            frame(0x80 | 0xB, b"", true),
            1002,
            "a reserved control opcode",
        ),
        (frame(PING, b"", true), 1002, "a fragmented ping"),
        (
            client_frame(PING, &[b'p'; 126]),
            1002,
            "a ping over 125 bytes",
        ),
        (
            [
                vec![0x81, 0xFE, 0x00, 0x05],
                util::ws::KEY.to_vec(),
                b"hello".to_vec(),
            ]
            .concat(),
            1002,
            "a 16-bit length under 126",
        ),
        (
            client_frame(CONTINUATION, b"x"),
            1002,
            "a continuation with no message",
        ),
        (
            [frame(TEXT, b"part", true), client_frame(TEXT, b"new")].concat(),
            1002,
            "a new message inside a fragmented one",
        ),
        (
            client_frame(TEXT, b"\xce\xba\xff"),
            1007,
            "a text frame that is not UTF-8",
        ),
        (
            [
                frame(TEXT, b"\xce", true),
                client_frame(CONTINUATION, b"\xff"),
            ]
            .concat(),
            1007,
            "bad UTF-8 across fragments",
        ),
        (
            client_frame(BINARY, &[0u8; 1001]),
            1009,
            "a frame over the limit",
        ),
        (
            [
                frame(BINARY, &[0u8; 600], true),
                client_frame(CONTINUATION, &[0u8; 401]),
            ]
            .concat(),
            1009,
            "a message over the limit in fragments",
        ),
        (
            client_frame(CLOSE, &[0x03]),
            1002,
            "a one-byte close payload",
        ),
        (
            client_frame(CLOSE, &close_payload(1005, "")),
            1002,
            "a close code not to be sent",
        ),
        (
            client_frame(CLOSE, &close_payload(999, "")),
            1002,
            "a close code under 1000",
        ),
        (
            client_frame(CLOSE, &[&close_payload(1000, "")[..], b"\xff"].concat()),
            1007,
            "a close reason that is not UTF-8",
        ),
    ];
    for (bytes, code, what) in &cases {
        expect_close_code(addr, bytes, *code, what);
    }
    // A 64-bit length under 65536 is refused before its payload is even sent.
    let mut non_minimal = vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 5];
    non_minimal.extend_from_slice(&util::ws::KEY);
    expect_close_code(addr, &non_minimal, 1002, "a 64-bit length under 65536");
    // A length past the limit is refused before a byte of its payload is kept.
    let mut huge = vec![0x82, 0xFF, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF];
    huge.extend_from_slice(&util::ws::KEY);
    expect_close_code(addr, &huge, 1009, "a frame announcing 512 GiB");
    wait_for("the closes counted by code", || {
        let stats = server.stats();
        stats.websocket_closed_protocol_error >= 14 && stats.websocket_closed_invalid_data == 3
    });
    assert_eq!(server.stats().websocket_closed_too_big, 3);
    server.shutdown().expect("clean shutdown");
}

/// Text is refused at the first bad byte: the close comes while the message's last fragment is
/// still unsent.
#[test]
fn invalid_text_is_refused_in_the_middle_of_a_message() {
    let server = echo_server(test_config(), WebSocketOptions::default());
    let mut raw = RawClient::connect(server.local_addr(), "/echo", "");
    // A frame whose first half holds a surrogate; the rest never comes.
    let mut whole = frame(
        0x80 | TEXT,
        b"\xce\xba\xed\xa0\x80 and so on and so on",
        true,
    );
    whole.truncate(whole.len() - 10);
    raw.send(&whole);
    assert_eq!(raw.read_until_close().close_code(), 1007);
    server.shutdown().expect("clean shutdown");
}

/// The output of a sans-IO WebSocket fed `pieces`.
fn session_output(pieces: &[&[u8]]) -> Vec<u8> {
    let options = WebSocketOptions::default();
    let route = WebSocketRoute::new(options.clone(), |_| ws::Echo);
    let router = router_with(route, &options);
    let mut session = Session::new(Http::new(router, HttpLimits::default()));
    for piece in pieces {
        session.feed(piece);
    }
    session.take_output()
}

#[test]
fn every_frame_sequence_split_at_every_byte_gives_the_same_messages() {
    let mut input = upgrade_request("/echo", "").into_bytes();
    input.extend(client_frame(TEXT, "héllo".as_bytes()));
    // A fragmented binary message with a ping and a pong between its fragments.
    input.extend(frame(BINARY, b"frag", true));
    input.extend(client_frame(PING, b"are you there"));
    input.extend(frame(CONTINUATION, b"men", true));
    input.extend(client_frame(PONG, b""));
    input.extend(client_frame(CONTINUATION, b"ted"));
    // A fragmented text message split inside a code point, with empty fragments.
    input.extend(frame(TEXT, b"\xce", true));
    input.extend(frame(CONTINUATION, b"", true));
    input.extend(client_frame(CONTINUATION, b"\xba!"));
    input.extend(client_frame(BINARY, &util::pattern(70_000, 3)));
    input.extend(client_frame(CLOSE, &close_payload(1000, "done")));
    let whole = session_output(&[&input]);
    // 101, then: the echo, the pong, the joined binary, the joined text, the large binary
    // (fragmented), and the close.
    let text = String::from_utf8_lossy(&whole);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(text.contains("h\u{e9}llo") && text.contains("are you there"));
    assert!(text.contains("fragmented") && text.contains("κ!"));
    assert!(whole.ends_with(&frame(0x80 | CLOSE, &close_payload(1000, ""), false)));
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(session_output(&bytes), whole, "one byte at a time");
    for split in 0..=input.len() {
        let (head, tail) = input.split_at(split);
        assert_eq!(session_output(&[head, tail]), whole, "split at {split}");
    }
}

/// Counts what a handler was told: messages, drains, and its close (code, reason).
#[derive(Clone, Default)]
struct Log {
    closes: Arc<Mutex<Vec<(u16, String)>>>,
    drains: Arc<AtomicU64>,
    statuses: Arc<Mutex<Vec<SendStatus>>>,
}

/// Echoes, but `close` closes with 4000, `blast` sends 64 KiB, and `panic` panics.
struct Scripted {
    log: Log,
}

impl WebSocketHandler for Scripted {
    fn on_message(&mut self, message: Message<'_>, ws: &mut WebSocket<'_, '_>) {
        match message {
            Message::Text("close") => ws.close(4000, "asked to close"),
            Message::Text("blast") => {
                let status = ws.send_binary(&[b'b'; 64 * 1024]);
                self.log.statuses.lock().expect("lock").push(status);
            }
            Message::Text("panic") => panic!("the handler was asked to panic"),
            other => {
                ws.send(other);
            }
        }
    }
    fn on_drain(&mut self, _ws: &mut WebSocket<'_, '_>) {
        self.log.drains.fetch_add(1, Ordering::Relaxed);
    }
    fn on_close(&mut self, code: u16, reason: &str) {
        self.log
            .closes
            .lock()
            .expect("lock")
            .push((code, reason.to_string()));
    }
}

fn scripted_server(config: Config, options: WebSocketOptions, log: &Log) -> RunningServer {
    let log = log.clone();
    let route = WebSocketRoute::new(options.clone(), move |_| Scripted { log: log.clone() });
    spawn(Driver::Reactor, config, router_with(route, &options))
}

#[test]
fn the_closing_handshake_from_either_side_and_a_peer_that_never_answers() {
    let log = Log::default();
    let options = WebSocketOptions {
        close_timeout: Duration::from_millis(300),
        ..WebSocketOptions::default()
    };
    let server = scripted_server(test_config(), options, &log);
    let addr = server.local_addr();
    // The client closes: the server answers with the same code and ends TCP.
    let mut raw = RawClient::connect(addr, "/ws", "");
    raw.send(&client_frame(CLOSE, &close_payload(1000, "bye")));
    assert_eq!(raw.read_until_close().close_code(), 1000);
    assert!(raw.is_ended());
    // The server closes: the client answers, the server ends TCP.
    let mut socket = client(addr, "/ws");
    socket.send(text("close")).expect("send");
    match socket.read() {
        Ok(tungstenite::Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 4000);
            assert_eq!(frame.reason.as_str(), "asked to close");
        }
        other => panic!("expected the server's close: {other:?}"),
    }
    assert!(matches!(
        socket.read(),
        Err(tungstenite::Error::ConnectionClosed)
    ));
    // A peer that never answers the server's close is cut after the close timeout.
    let mut silent = RawClient::connect(addr, "/ws", "");
    silent.send(&client_frame(TEXT, b"close"));
    let started = Instant::now();
    assert_eq!(silent.read_until_close().close_code(), 4000);
    assert!(silent.is_ended(), "cut without an answer");
    assert!(started.elapsed() >= Duration::from_millis(250));
    wait_for("three closes reported", || {
        log.closes.lock().expect("lock").len() == 3
    });
    let closes = log.closes.lock().expect("lock").clone();
    assert_eq!(closes[0], (1000, "bye".into()));
    assert_eq!(closes[1].0, 4000);
    assert_eq!(closes[2].0, 1006, "the unanswered close ends abnormally");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_peer_that_stops_answering_pings_is_closed_and_one_that_answers_stays() {
    let options = WebSocketOptions {
        ping_interval: Some(Duration::from_millis(100)),
        ping_timeout: Duration::from_millis(100),
        ..WebSocketOptions::default()
    };
    let log = Log::default();
    let server = scripted_server(test_config(), options, &log);
    let addr = server.local_addr();
    let started = Instant::now();
    // Raw: reads the ping, never answers.
    let mut deaf = RawClient::connect(addr, "/ws", "");
    let ping = deaf.read_frame().expect("a ping");
    assert_eq!(ping.opcode, PING);
    // Tungstenite answers pings as it reads.
    let mut alive = client(addr, "/ws");
    alive
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("short reads");
    // The deaf one is closed within ping_interval + ping_timeout (plus a turn's slack).
    assert!(deaf.is_ended(), "a peer that answers no ping is cut");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The live one stays open through many intervals.
    let until = Instant::now() + Duration::from_millis(700);
    let mut pinged = 0;
    while Instant::now() < until {
        match alive.read() {
            // Tungstenite queues the pong, and sends it on its next read.
            Ok(tungstenite::Message::Ping(_)) => pinged += 1,
            Err(tungstenite::Error::Io(error))
                if error.kind() == std::io::ErrorKind::WouldBlock
                    || error.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("the live client lost its connection: {other:?}"),
        }
    }
    assert!(pinged >= 3, "{pinged} pings in 700 ms");
    alive.send(text("still here")).expect("send");
    alive
        .get_mut()
        .set_read_timeout(Some(TIMEOUT))
        .expect("long reads");
    assert_eq!(alive.read().expect("echo"), text("still here"));
    let stats = server.stats();
    assert_eq!(stats.websocket_heartbeat_timeouts, 1);
    assert!(
        stats.websocket_pings_sent >= 4,
        "{}",
        stats.websocket_pings_sent
    );
    assert!(log
        .closes
        .lock()
        .expect("lock")
        .contains(&(1006, "no answer to a ping".into())));
    server.shutdown().expect("clean shutdown");
}

/// A client's ping is answered even while its connection is backed up far past the soft
/// limit (the client reads nothing); a busy connection is never pinged.
#[test]
fn pings_are_answered_while_backed_up_and_a_busy_connection_is_not_pinged() {
    let options = WebSocketOptions {
        ping_interval: Some(Duration::from_millis(300)),
        ..WebSocketOptions::default()
    };
    let log = Log::default();
    let config = Config {
        write_high_watermark: 64 * 1024,
        write_low_watermark: 16 * 1024,
        ..test_config()
    };
    let server = scripted_server(config, options, &log);
    let mut raw = RawClient::connect_small_window(server.local_addr(), "/ws");
    blast_until(&mut raw, &server, |stats| stats.backpressure_pauses >= 1);
    raw.send(&client_frame(PING, b"ping under pressure"));
    // Busy: a message every 100 ms for a second, so never quiet for 300 ms.
    for _ in 0..10 {
        raw.send(&client_frame(TEXT, b"hello"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut pongs, mut pings, mut hellos) = (Vec::new(), 0, 0);
    while hellos < 10 {
        let frame = raw.read_frame().expect("frames");
        match frame.opcode {
            PONG => pongs.push(frame.payload),
            PING => pings += 1,
            TEXT if frame.payload == b"hello" => hellos += 1,
            _ => {}
        }
    }
    assert_eq!(pongs, [b"ping under pressure".to_vec()]);
    assert_eq!(pings, 0, "a busy connection is never pinged");
    server.shutdown().expect("clean shutdown");
}

/// Sends `blast` messages one at a time, each after the server has handled the one before (so
/// that each is its own callback and the kernel takes what output it can in between), until
/// `done` holds for the server's counters. Returns how many were sent.
fn blast_until(
    raw: &mut RawClient,
    server: &RunningServer,
    done: impl Fn(&socketserver::StatsSnapshot) -> bool,
) -> u64 {
    let first = server.stats().websocket_messages_in;
    let mut sent = 0;
    while !done(&server.stats()) {
        assert!(sent < 2_000, "never backed up after {sent} blasts");
        raw.send(&client_frame(TEXT, b"blast"));
        sent += 1;
        wait_for("the blast handled", || {
            server.stats().websocket_messages_in == first + sent
        });
    }
    sent
}

#[test]
fn a_client_that_never_reads_gets_backpressure_then_drops_and_costs_bounded_memory() {
    let options = WebSocketOptions {
        max_backpressure: 512 * 1024,
        ..WebSocketOptions::default()
    };
    let config = Config {
        write_high_watermark: 128 * 1024,
        write_low_watermark: 32 * 1024,
        ..test_config()
    };
    let log = Log::default();
    let server = scripted_server(config, options, &log);
    let addr = server.local_addr();
    let mut stalled = RawClient::connect_small_window(addr, "/ws");
    // Until 50 messages have been dropped: past the kernel's buffers and the limit.
    blast_until(&mut stalled, &server, |stats| {
        stats.websocket_send_dropped >= 50
    });
    let statuses = log.statuses.lock().expect("lock").clone();
    let first_pressure = statuses
        .iter()
        .position(|status| *status == SendStatus::Backpressure)
        .expect("backpressure reported");
    let first_drop = statuses
        .iter()
        .position(|status| *status == SendStatus::Dropped)
        .expect("drops once past the limit");
    // Sent until the soft limit, backpressure past it, drops past the hard one (once the
    // kernel takes a little more output, a later message may be queued again).
    assert!(statuses[..first_pressure]
        .iter()
        .all(|status| *status == SendStatus::Sent));
    assert!(first_pressure < first_drop);
    let dropped = statuses
        .iter()
        .filter(|s| **s == SendStatus::Dropped)
        .count();
    assert!(statuses[first_drop..]
        .iter()
        .all(|status| *status == SendStatus::Dropped));
    let stats = server.stats();
    // Bounded: the limit plus one message, whatever the client sends.
    assert!(
        stats.peak_pending_output <= 512 * 1024 + 64 * 1024 + 64,
        "{}",
        stats.peak_pending_output
    );
    assert_eq!(stats.websocket_send_dropped, dropped as u64);
    // Another connection is served as usual meanwhile.
    let mut other = client(addr, "/echo");
    other.send(text("unaffected")).expect("send");
    assert_eq!(other.read().expect("echo"), text("unaffected"));
    // Once the stalled client reads, its handler is told of the drain.
    let queued = statuses.len() - dropped;
    let mut received = 0;
    while received < queued {
        let frame = stalled.read_frame().expect("the queued messages");
        if frame.opcode == BINARY {
            received += 1;
        }
    }
    wait_for("the drain reported", || {
        log.drains.load(Ordering::Relaxed) >= 1
    });
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_handler_that_panics_closes_its_connection_with_1011_and_is_reported() {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let options = WebSocketOptions::default();
    let log = Log::default();
    let handler_log = log.clone();
    let route = WebSocketRoute::new(options.clone(), move |_| Scripted {
        log: handler_log.clone(),
    });
    let limits = HttpLimits::default();
    let router = router_with(route, &options);
    let server = Server::bind_with("127.0.0.1:0", test_config())
        .expect("bind")
        .on_error(move |report| seen.lock().expect("lock").push(report.message.clone()))
        .spawn(move || Http::new(router.clone(), limits))
        .expect("spawn");
    let mut raw = RawClient::connect(server.local_addr(), "/ws", "");
    raw.send(&client_frame(TEXT, b"panic"));
    assert_eq!(raw.read_until_close().close_code(), 1011);
    wait_for("the panic reported", || {
        !reports.lock().expect("lock").is_empty()
    });
    assert!(reports.lock().expect("lock")[0].contains("asked to panic"));
    // Others are served.
    let mut other = client(server.local_addr(), "/echo");
    other.send(text("fine")).expect("send");
    assert_eq!(other.read().expect("echo"), text("fine"));
    server.shutdown().expect("clean shutdown");
}

#[test]
fn graceful_shutdown_sends_1001_to_every_websocket_and_exits_by_the_deadline() {
    let config = Config {
        shutdown_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let server = echo_server(config, WebSocketOptions::default());
    let addr = server.local_addr();
    let mut answering: Vec<_> = (0..3).map(|_| client(addr, "/echo")).collect();
    let mut silent = RawClient::connect(addr, "/echo", "");
    wait_for("four WebSockets open", || {
        server.stats().websockets_open == 4
    });
    let handle = server.handle().clone();
    let started = Instant::now();
    handle.shutdown();
    for socket in &mut answering {
        match socket.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected 1001: {other:?}"),
        }
    }
    assert_eq!(silent.read_until_close().close_code(), 1001);
    // The silent one never answers: the deadline ends it, and the server.
    server.join().expect("clean exit");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(silent.is_ended());
}

/// Compresses `payload` as permessage-deflate does, with a window of `bits`.
fn deflate(payload: &[u8], bits: u8) -> Vec<u8> {
    let mut compress =
        flate2::Compress::new_with_window_bits(flate2::Compression::new(6), false, bits);
    let mut out = Vec::with_capacity(payload.len() + 64);
    compress
        .compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&[0, 0, 0xFF, 0xFF]));
    out.truncate(out.len() - 4);
    out
}

#[test]
fn deflate_round_trips_at_every_window_size_and_a_bomb_is_refused() {
    let options = WebSocketOptions {
        max_message_bytes: 1 << 20,
        ..WebSocketOptions::default()
    }
    .with_deflate(DeflateOptions::default());
    let server = echo_server(test_config(), options);
    let addr = server.local_addr();
    let message = "a message that compresses, a message that compresses well ".repeat(50);
    for bits in 9..=15u8 {
        let offer = format!(
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits={bits}; client_max_window_bits\r\n"
        );
        let mut raw = RawClient::connect(addr, "/echo", &offer);
        assert!(
            raw.response
                .contains(&format!("server_max_window_bits={bits}")),
            "{}",
            raw.response
        );
        // The client compresses with each window too.
        for client_bits in [9, bits] {
            raw.send(&frame(
                0xC0 | TEXT,
                &deflate(message.as_bytes(), client_bits),
                true,
            ));
            let echo = raw.read_frame().expect("the echo");
            assert!(echo.rsv1, "the echo is compressed");
            assert!(echo.payload.len() < message.len() / 4);
            assert_eq!(
                inflate(&echo.payload, bits),
                message.as_bytes(),
                "window {bits}"
            );
        }
        // An uncompressed message on the same connection, and a small one, go as they are.
        raw.send(&client_frame(TEXT, b"plain"));
        let echo = raw.read_frame().expect("echo");
        assert!(!echo.rsv1);
        assert_eq!(echo.payload, b"plain");
    }
    // An offer for an 8-bit server window cannot be honoured: no extension, plain frames.
    let declined = RawClient::connect(
        addr,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n",
    );
    assert!(!declined.response.contains("Sec-WebSocket-Extensions"));
    // A browser's offer: accepted with no context kept on either side.
    let browser = RawClient::connect(
        addr,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    assert!(browser.response.contains(
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    ), "{}", browser.response);
    // A decompression bomb: 64 MiB of zeros in a small frame is refused with 1009.
    let mut bomb_client = RawClient::connect(
        addr,
        "/echo",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    let bomb = deflate(&vec![0u8; 64 << 20], 15);
    assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
    bomb_client.send(&frame(0xC0 | BINARY, &bomb, true));
    assert_eq!(bomb_client.read_until_close().close_code(), 1009);
    assert!(server.stats().peak_pending_output < 1 << 20);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn ten_thousand_idle_websockets_cost_no_wake_ups_between_pings() {
    raise_descriptor_limit();
    let cli = util::Cli::start(
        &["serve", "--protocol", "ws", "--max-connections", "20000"],
        None,
    );
    let mut sockets = Vec::with_capacity(10_000);
    let request = upgrade_request("/", "");
    for _ in 0..10_000 {
        let mut stream = TcpStream::connect(cli.addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("upgrade");
        sockets.push(stream);
    }
    for stream in &mut sockets {
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut head = [0u8; 129];
        std::io::Read::read_exact(stream, &mut head).expect("the 101");
        assert!(head.starts_with(b"HTTP/1.1 101 "));
    }
    let turns = || scrape_turns(&cli);
    let before = turns();
    // Idle: nothing is sent for a while; the server should not wake at all (the scrapes
    // themselves are two turns or so).
    std::thread::sleep(Duration::from_millis(1500));
    let after = turns();
    assert!(after - before <= 8, "{} turns while idle", after - before);
    drop(sockets);
    let (status, stderr) = cli.terminate();
    assert!(status.success(), "{status:?} {stderr}");
}

/// The server's `reactor_turns_total`, scraped over HTTP on its own port.
fn scrape_turns(cli: &util::Cli) -> u64 {
    let mut stream = connect(cli.addr);
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .expect("scrape");
    let text = String::from_utf8(read_to_end(&mut stream).expect("metrics")).expect("utf-8");
    text.lines()
        .find_map(|line| line.strip_prefix("socketserver_reactor_turns_total "))
        .expect("the turns counter")
        .parse()
        .expect("a number")
}

/// Raises this process's soft limit on descriptors to its hard limit.
fn raise_descriptor_limit() {
    let limit = socketserver::net::raise_descriptor_limit().expect("the descriptor limit");
    assert!(limit >= 10_500, "descriptor limit {limit}");
}

#[test]
fn metrics_count_websockets_messages_and_closes() {
    let server = echo_server(test_config(), WebSocketOptions::default());
    let addr = server.local_addr();
    let mut socket = client(addr, "/echo");
    socket.send(text("one")).expect("send");
    socket.read().expect("echo");
    expect_close_code(addr, &client_frame(TEXT, b"\xff"), 1007, "bad text");
    wait_for("the counts", || {
        let stats = server.stats();
        stats.websockets_opened == 2 && stats.websocket_closed_invalid_data == 1
    });
    let stats = server.stats();
    assert_eq!(stats.websockets_open, 1);
    assert_eq!(stats.websocket_messages_in, 1);
    assert_eq!(stats.websocket_bytes_out, 3);
    let text = socketserver::metrics::prometheus(&stats);
    for series in [
        "socketserver_websockets_open 1",
        "socketserver_websocket_closes_total{code=\"1007\"} 1",
        "socketserver_websocket_messages_total{direction=\"in\"} 1",
    ] {
        assert!(text.contains(series), "{series} in\n{text}");
    }
    drop(socket);
    wait_for("the open gauge back to zero", || {
        server.stats().websockets_open == 0
    });
    server.shutdown().expect("clean shutdown");
}

/// The page of `examples/ws_echo.rs` in headless Chromium: what is typed on the page comes
/// back over the WebSocket, and Chromium's own permessage-deflate offer is accepted (a long
/// message goes compressed both ways).
#[test]
#[ignore = "needs Chromium and chromedriver (apt-get install chromium chromium-driver)"]
fn the_example_page_echoes_what_is_typed_in_headless_chromium_with_deflate() {
    let example = browser::example("ws_echo");
    let (mut server, listening) = browser::start_printing(&example, &["127.0.0.1:0", "--deflate"]);
    let addr = listening
        .strip_prefix("listening on ")
        .expect("the example's address")
        .to_string();
    let session = browser::Session::start();
    let browser = &session.browser;
    browser.call(
        "POST",
        "/url",
        serde_json::json!({ "url": format!("http://{addr}/") }),
    );
    wait_for("the page's WebSocket to open", || {
        browser.text_of("#status") == "open"
    });
    let long = "a message long enough to be compressed, ".repeat(8);
    let typed = ["hello from Chromium", "κόσμε 𝄞", long.trim_end()];
    for message in typed {
        browser.type_and_send(message);
    }
    wait_for("every message to come back", || {
        let echoes = browser.call(
            "POST",
            "/elements",
            serde_json::json!({"using": "css selector", "value": "li.echo"}),
        );
        echoes
            .as_array()
            .is_some_and(|list| list.len() == typed.len())
    });
    let log = browser.text_of("#log");
    for message in typed {
        assert_eq!(
            log.matches(message).count(),
            2,
            "sent and echoed: {message}"
        );
    }
    let extensions = browser.text_of("#extensions");
    assert!(extensions.contains("permessage-deflate"), "{extensions}");
    drop(session);
    let _ = server.kill();
    let _ = server.wait();
}

/// However a connection's closing began (the peer's close frame, or a rule it broke), the
/// server's answer must be delivered or the connection cut within the close timeout: a peer
/// that closes and then never reads its backlog may not hold the connection forever, pings or
/// none.
#[test]
fn a_peer_that_closes_and_never_reads_is_cut_after_the_close_timeout() {
    let options = WebSocketOptions {
        ping_interval: None,
        close_timeout: Duration::from_millis(300),
        ..WebSocketOptions::default()
    };
    let log = Log::default();
    for ending in [
        client_frame(CLOSE, &close_payload(1000, "bye")),
        client_frame(TEXT, b"\xff"),
    ] {
        let server = scripted_server(test_config(), options.clone(), &log);
        let mut raw = RawClient::connect_small_window(server.local_addr(), "/ws");
        blast_until(&mut raw, &server, |stats| stats.backpressure_pauses >= 1);
        raw.send(&ending);
        wait_for("the backed-up connection cut", || {
            server.stats().active == 0
        });
        drop(raw);
        server.shutdown().expect("clean shutdown");
    }
}
