//! Pub/sub with a durable log, through an independent client (tungstenite): every protocol
//! message and bad input, fan-out across two loops with one frame per message, resume across
//! segments with an exact seam to the live stream, `kill -9` under `fsync=always`, torn and
//! corrupt records at start, retention, and a subscriber that stops reading.

mod util;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use socketserver::protocol::http::{HttpLimits, Router};
use socketserver::protocol::ws::WebSocketOptions;
use socketserver::protocol::Http;
use socketserver::pubsub::{FsyncPolicy, PubSub, Storage};
use socketserver::{Config, RunningServer};
use util::pubsub::Client;
use util::{connect, test_config, wait_for, Cli, Driver, TIMEOUT};

/// A pub/sub server on `driver` and its service.
struct Served {
    server: Option<RunningServer>,
    pubsub: Option<PubSub>,
}

impl Served {
    fn addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .map(RunningServer::local_addr)
            .expect("running")
    }

    fn pubsub(&self) -> &PubSub {
        self.pubsub.as_ref().expect("running")
    }

    /// Stops the server, then the hub (which makes everything durable).
    fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().expect("clean shutdown");
        }
        if let Some(pubsub) = self.pubsub.take() {
            pubsub.shutdown();
        }
    }
}

fn serve(driver: Driver, config: Config, storage: Storage) -> Served {
    serve_with(driver, config, storage, None)
}

fn serve_with(
    driver: Driver,
    config: Config,
    storage: Storage,
    deflate: Option<socketserver::protocol::ws::DeflateOptions>,
) -> Served {
    // Clients still open at the end do not answer the server's close: do not wait long.
    let config = Config {
        shutdown_timeout: std::time::Duration::from_millis(300),
        ..config
    };
    let pubsub = PubSub::start(&config, storage).expect("start pub/sub");
    let mut options = WebSocketOptions::from_config(&config);
    if let Some(deflate) = deflate {
        options = options.with_deflate(deflate);
    }
    let route = pubsub.route(options);
    let router = Arc::new(Router::new().websocket("/", route));
    let limits = HttpLimits::from_config(&config);
    let server = util::spawn_on(driver, config, move || Http::new(router.clone(), limits));
    Served {
        server: Some(server),
        pubsub: Some(pubsub),
    }
}

/// A fresh data directory for one test.
fn data_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("socketserver-pubsub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn disk(dir: &Path) -> Storage {
    Storage::Disk {
        dir: dir.to_path_buf(),
        fsync: FsyncPolicy::Always,
    }
}

#[test]
fn every_protocol_message_works_through_an_independent_client_under_every_model() {
    let runs = [
        (Driver::Reactor, Storage::Memory),
        (Driver::Reactor, disk(&data_dir("messages"))),
        (Driver::Reactors, Storage::Memory),
        (Driver::Threads, disk(&data_dir("messages-threads"))),
        (Driver::Pool, Storage::Memory),
    ];
    for (driver, storage) in runs {
        let served = serve(driver, test_config(), storage);
        let mut subscriber = Client::connect(served.addr());
        let mut publisher = Client::connect(served.addr());
        let subscribed = subscriber.subscribe("news", None);
        assert_eq!(subscribed["topic"], "news");
        assert_eq!(subscribed["offset"], 0);
        assert_eq!(subscribed["recovered"], true);
        let epoch = subscribed["epoch"].as_str().expect("epoch").to_string();
        assert_eq!(epoch.len(), 16);

        assert_eq!(publisher.publish("news", "first", Some("a")), 1);
        assert_eq!(publisher.publish("news", "second \"quoted\"\n", None), 2);
        let message = subscriber.expect("message");
        assert_eq!(message["topic"], "news");
        assert_eq!(message["epoch"], epoch.as_str());
        assert_eq!(
            (message["offset"].as_u64(), message["data"].as_str()),
            (Some(1), Some("first"))
        );
        assert_eq!(
            subscriber.messages(1),
            vec![(2, "second \"quoted\"\n".to_string())]
        );

        // The same id again is the same message: acknowledged with its offset, not stored.
        assert_eq!(publisher.publish("news", "first", Some("a")), 1);
        subscriber.send(json!({"type": "unsubscribe", "topic": "news"}));
        assert_eq!(subscriber.expect("unsubscribed")["topic"], "news");
        assert_eq!(publisher.publish("news", "third", None), 3);
        // Unsubscribed: the next thing it hears is its own new subscription's answer.
        let again = subscriber.subscribe("news", Some(json!({"epoch": epoch, "offset": 1})));
        assert_eq!(
            (again["offset"].as_u64(), again["recovered"].as_bool()),
            (Some(3), Some(true))
        );
        assert_eq!(
            subscriber.messages(2),
            vec![
                (2, "second \"quoted\"\n".to_string()),
                (3, "third".to_string())
            ]
        );
        served.stop();
    }
}

#[test]
fn bad_input_is_answered_with_an_error_and_the_connection_stays_usable() {
    let config = Config {
        pubsub_max_data_bytes: 100,
        pubsub_max_subscriptions: 2,
        ..test_config()
    };
    let served = serve(Driver::Reactor, config, Storage::Memory);
    let mut client = Client::connect(served.addr());
    let long_topic = "t".repeat(129);
    let too_much = "x".repeat(101);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad_json"),
        (r#"{"type":"shout","topic":"t"}"#.into(), "bad_message"),
        (r#"{"type":"publish","topic":"t"}"#.into(), "bad_message"),
        (r#"[1,2,3]"#.into(), "bad_message"),
        (
            json!({"type":"subscribe","topic":""}).to_string(),
            "bad_topic",
        ),
        (
            json!({"type":"subscribe","topic":"../etc"}).to_string(),
            "bad_topic",
        ),
        (
            json!({"type":"subscribe","topic":long_topic}).to_string(),
            "bad_topic",
        ),
        (
            json!({"type":"publish","topic":"t","data":too_much}).to_string(),
            "too_large",
        ),
        (
            json!({"type":"publish","topic":"t","data":"x","id":""}).to_string(),
            "bad_message",
        ),
        (
            json!({"type":"unsubscribe","topic":"t"}).to_string(),
            "not_subscribed",
        ),
        (
            json!({"type":"subscribe","topic":"t","from":{"epoch":"zz","offset":1}}).to_string(),
            "bad_message",
        ),
    ];
    for (input, code) in cases {
        client.send_text(&input);
        let error = client.expect("error");
        assert_eq!(error["code"], code, "for {input}");
        assert!(error["message"].is_string());
    }
    client
        .socket
        .send(tungstenite::Message::binary(vec![1, 2, 3]))
        .expect("send");
    assert_eq!(client.expect("error")["code"], "bad_message");
    client.subscribe("a", None);
    client.subscribe("b", None);
    client.send(json!({"type":"subscribe","topic":"c"}));
    assert_eq!(client.expect("error")["code"], "too_many_subscriptions");
    // After all that, the connection still publishes.
    assert_eq!(client.publish("t", "still here", Some("id-1")), 1);
    // Subscribes not yet answered are bounded too (here by 2): three sent in one write are
    // read in one go, before the hub can answer any of them.
    let mut eager = Client::connect(served.addr());
    for _ in 0..3 {
        let subscribe = json!({"type":"subscribe","topic":"x"}).to_string();
        eager
            .socket
            .write(tungstenite::Message::text(subscribe))
            .expect("queue");
    }
    eager.socket.flush().expect("send");
    let mut answers: Vec<String> = (0..3)
        .map(|_| {
            let answer = eager.next();
            format!("{} {}", answer["type"], answer["code"])
        })
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        [
            r#""error" "overloaded""#,
            r#""subscribed" null"#,
            r#""subscribed" null"#
        ]
    );
    served.stop();
}

#[test]
fn one_frame_per_message_fans_out_to_a_thousand_subscribers_across_two_loops() {
    let served = serve(Driver::Reactors, test_config(), Storage::Memory);
    let mut subscribers: Vec<Client> = (0..1000)
        .map(|_| {
            let mut client = Client::connect(served.addr());
            client.subscribe("fan", None);
            client
        })
        .collect();
    let mut publisher = Client::connect(served.addr());
    for n in 0..10 {
        publisher.publish("fan", &format!("message {n}"), None);
    }
    for subscriber in &mut subscribers {
        let got = subscriber.messages(10);
        let want: Vec<(u64, String)> = (0..10).map(|n| (n + 1, format!("message {n}"))).collect();
        assert_eq!(got, want);
    }
    let stats = served.pubsub().stats();
    assert_eq!(stats.frames_prepared(), 10, "each message is framed once");
    assert_eq!(stats.delivered(), 10_000);
    let server_stats = served.server.as_ref().expect("running").stats();
    assert_eq!(server_stats.active, 1001);
    served.stop();
}

#[test]
fn a_resume_gets_exactly_the_messages_after_its_offset_across_segments_then_live() {
    for driver in [Driver::Reactors, Driver::Threads] {
        resume_across_segments(driver);
    }
}

fn resume_across_segments(driver: Driver) {
    let dir = data_dir(&format!("resume-{driver:?}"));
    // A high watermark under one history read: every read leaves the subscriber over its
    // limit, so catching up goes through the drain each time.
    let config = Config {
        pubsub_segment_bytes: 4096,
        pubsub_fetch_bytes: 2048,
        write_high_watermark: 1024,
        write_low_watermark: 512,
        ..test_config()
    };
    let served = serve(driver, config, disk(&dir));
    let mut publisher = Client::connect(served.addr());
    let epoch = Client::connect(served.addr()).subscribe("log", None)["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    for n in 1..=200 {
        publisher.publish("log", &format!("{n:>60}"), None);
    }
    let segments = std::fs::read_dir(dir.join("topics/log"))
        .expect("the topic's directory")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))
        })
        .count();
    assert!(segments >= 3, "the history spans segments ({segments})");
    // While the subscriber catches up, more is published: the seam must hold.
    let mut subscriber = Client::connect(served.addr());
    let subscribed = subscriber.subscribe("log", Some(json!({"epoch": epoch, "offset": 50})));
    assert_eq!(subscribed["recovered"], true);
    let late = std::thread::spawn(move || {
        for n in 201..=300 {
            publisher.publish("log", &format!("{n:>60}"), None);
        }
        publisher
    });
    let got = subscriber.messages(250);
    let want: Vec<(u64, String)> = (51..=300).map(|n| (n, format!("{n:>60}"))).collect();
    assert_eq!(got, want, "every message after 50 once, in order");
    let mut publisher = late.join().expect("the late publisher");
    publisher.publish("log", "after", None);
    assert_eq!(subscriber.messages(1), vec![(301, "after".to_string())]);
    // Another epoch, or an offset from the future, is not recovered.
    let other = Client::connect(served.addr()).subscribe(
        "log",
        Some(json!({"epoch": "0123456789abcdef", "offset": 10})),
    );
    assert_eq!(
        (other["recovered"].as_bool(), other["offset"].as_u64()),
        (Some(false), Some(301))
    );
    assert_eq!(other["earliest"], 1);
    served.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The offsets and data the topic holds, read from its beginning by a fresh subscriber.
fn read_all(addr: SocketAddr, topic: &str) -> (String, Vec<(u64, String)>) {
    let mut client = Client::connect(addr);
    let subscribed = client.subscribe(topic, Some(json!({"offset": 0})));
    let last = subscribed["offset"].as_u64().expect("offset") as usize;
    let epoch = subscribed["epoch"].as_str().expect("epoch").to_string();
    (epoch, client.messages(last))
}

#[test]
fn kill_9_under_fsync_always_loses_no_acknowledged_message_and_retries_make_no_duplicates() {
    let dir = data_dir("kill9");
    let dir_arg = dir.to_str().expect("a UTF-8 path").to_string();
    let args = [
        "serve",
        "--protocol",
        "pubsub",
        "--data-dir",
        &dir_arg,
        "--fsync",
        "always",
    ];
    let server = Cli::start(&args, None);
    let addr = server.addr;
    let epoch = Client::connect(addr).subscribe("orders", None)["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    // Four publishers, each with up to 8 publishes in flight, until the server is killed.
    let acks = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..4)
        .map(|publisher| {
            let acks = acks.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut sent: Vec<String> = Vec::new();
                let mut acked: HashMap<String, u64> = HashMap::new();
                'run: for n in 0.. {
                    let id = format!("p{publisher}-{n}");
                    let message = json!({"type":"publish","topic":"orders","data":id,"id":id});
                    let frame = tungstenite::Message::text(message.to_string());
                    if client.socket.send(frame).is_err() {
                        break;
                    }
                    sent.push(id);
                    while sent.len() - acked.len() >= 8 {
                        // After the kill, the read fails: what was acknowledged is known.
                        let Ok(tungstenite::Message::Text(text)) = client.socket.read() else {
                            break 'run;
                        };
                        let ack: Value = serde_json::from_str(text.as_str()).expect("JSON");
                        let id = ack["id"].as_str().expect("id").to_string();
                        acked.insert(id, ack["offset"].as_u64().expect("offset"));
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                (sent, acked)
            })
        })
        .collect();
    wait_for("400 acknowledged publishes", || {
        acks.load(Ordering::Relaxed) >= 400
    });
    let mut server = server;
    server.child.kill().expect("kill -9");
    let _ = server.child.wait();
    let results: Vec<(Vec<String>, HashMap<String, u64>)> = publishers
        .into_iter()
        .map(|p| p.join().expect("publisher"))
        .collect();
    let acked: BTreeMap<String, u64> = results
        .iter()
        .flat_map(|(_, acked)| acked.clone())
        .collect();
    assert!(
        acked.len() >= 100,
        "enough publishes were acknowledged ({})",
        acked.len()
    );

    let restarted = Cli::start(&args, None);
    let (epoch_after, held) = read_all(restarted.addr, "orders");
    assert_eq!(
        epoch_after, epoch,
        "nothing delivered was lost: the epoch stays"
    );
    let offsets: Vec<u64> = held.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(
        offsets,
        (1..=held.len() as u64).collect::<Vec<_>>(),
        "contiguous"
    );
    let by_offset: HashMap<u64, &str> = held.iter().map(|(o, d)| (*o, d.as_str())).collect();
    for (id, offset) in &acked {
        assert_eq!(
            by_offset.get(offset),
            Some(&id.as_str()),
            "acknowledged {id} at {offset}"
        );
    }
    // Every publisher sends everything again with the same ids: nothing is stored twice.
    let mut retry = Client::connect(restarted.addr);
    for (sent, _) in &results {
        for id in sent {
            retry.publish("orders", id, Some(id));
        }
    }
    let (_, after) = read_all(restarted.addr, "orders");
    let mut seen = std::collections::HashSet::new();
    for (_, data) in &after {
        assert!(seen.insert(data.clone()), "{data} stored twice");
    }
    let all_sent: usize = results.iter().map(|(sent, _)| sent.len()).sum();
    assert_eq!(after.len(), all_sent, "each message once");
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The newest segment file of a topic.
fn newest_segment(dir: &Path, topic: &str) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("topics").join(topic))
        .expect("the topic's directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment")
}

#[test]
fn a_torn_or_corrupt_last_record_is_cut_and_reported_at_start() {
    let dir = data_dir("torn");
    let served = serve(Driver::Reactor, test_config(), disk(&dir));
    let epoch = Client::connect(served.addr()).subscribe("t", None)["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    let mut client = Client::connect(served.addr());
    for n in 1..=3 {
        client.publish("t", &format!("m{n}"), None);
    }
    drop(client);
    served.stop();
    let segment = newest_segment(&dir, "t");
    let length = std::fs::metadata(&segment).expect("segment").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("segment")
        .set_len(length - 2)
        .expect("truncate");

    let served = serve(Driver::Reactor, test_config(), disk(&dir));
    let recoveries = served.pubsub().recoveries().to_vec();
    assert_eq!(recoveries.len(), 1);
    assert_eq!(&*recoveries[0].0, "t");
    assert!(recoveries[0].1.truncated_bytes > 0 && !recoveries[0].1.new_epoch);
    let (epoch_after, held) = read_all(served.addr(), "t");
    assert_eq!(
        epoch_after, epoch,
        "a torn record was never acknowledged nor shown"
    );
    assert_eq!(held, vec![(1, "m1".to_string()), (2, "m2".to_string())]);
    served.stop();

    let mut bytes = std::fs::read(&segment).expect("segment");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&segment, bytes).expect("flip a byte");
    let served = serve(Driver::Reactor, test_config(), disk(&dir));
    assert!(served.pubsub().recoveries()[0].1.new_epoch);
    let (epoch_after, held) = read_all(served.addr(), "t");
    assert_ne!(
        epoch_after, epoch,
        "a whole record lost: subscribers must be told"
    );
    assert_eq!(held, vec![(1, "m1".to_string())]);
    let mut client = Client::connect(served.addr());
    assert_eq!(
        client.publish("t", "next", None),
        2,
        "offsets go on from the cut"
    );
    served.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retention_removes_old_segments_and_a_resume_from_before_them_is_not_recovered() {
    let dir = data_dir("retention");
    let config = Config {
        pubsub_segment_bytes: 4096,
        pubsub_retention_bytes: 8192,
        ..test_config()
    };
    let served = serve(Driver::Reactor, config, disk(&dir));
    let epoch = Client::connect(served.addr()).subscribe("r", None)["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    let mut client = Client::connect(served.addr());
    for n in 1..=300 {
        client.publish("r", &format!("{n:>80}"), None);
    }
    wait_for("retention to delete old segments", || {
        let mut probe = Client::connect(served.addr());
        probe.subscribe("r", None)["earliest"].as_u64() > Some(1)
    });
    let mut late = Client::connect(served.addr());
    let subscribed = late.subscribe("r", Some(json!({"epoch": epoch, "offset": 1})));
    assert_eq!(subscribed["recovered"], false);
    let earliest = subscribed["earliest"].as_u64().expect("earliest");
    assert!(earliest > 2);
    // From the earliest held, a resume is whole again.
    let mut resumed = Client::connect(served.addr());
    let from = json!({"epoch": epoch, "offset": earliest - 1});
    assert_eq!(resumed.subscribe("r", Some(from))["recovered"], true);
    let got = resumed.messages((300 - earliest + 1) as usize);
    assert_eq!(got.first().map(|m| m.0), Some(earliest));
    assert_eq!(got.last().map(|m| m.0), Some(300));
    served.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_subscriber_that_stops_reading_costs_bounded_memory_and_then_gets_every_message() {
    let dir = data_dir("slow");
    let config = test_config();
    let high_watermark = config.write_high_watermark;
    let fetch_bytes = config.pubsub_fetch_bytes;
    let served = serve(Driver::Reactor, config, disk(&dir));
    let addr = served.addr();
    let mut slow = Client::over(util::connect_with_small_window(addr), addr);
    slow.subscribe("flood", None);
    let mut publisher = Client::connect(addr);
    let data = "y".repeat(1000);
    let count = 8000; // about 8 MB, far past what the socket and the watermark hold
    for n in 0..count {
        publisher.send(json!({"type":"publish","topic":"flood","data":data,"id":format!("{n}")}));
    }
    for _ in 0..count {
        publisher.expect("ack");
    }
    let stats = served.pubsub().stats();
    assert!(
        stats.slow_subscribers() >= 1,
        "the slow subscriber was noticed"
    );
    let peak = served
        .server
        .as_ref()
        .expect("running")
        .stats()
        .peak_pending_output;
    assert!(
        peak <= (high_watermark + fetch_bytes + 64 * 1024) as u64,
        "output waiting peaked at {peak} bytes"
    );
    for n in 0..count {
        let message = slow.next();
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["offset"].as_u64(), Some(n as u64 + 1), "{message}");
    }
    served.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_publisher_that_does_not_read_its_acks_is_closed_with_4008_and_no_ack_goes_missing() {
    // A small output limit, so the acknowledgements a publisher leaves unread pass it soon.
    let config = Config {
        ws_max_backpressure: 16 * 1024,
        ..test_config()
    };
    let served = serve(Driver::Reactor, config, Storage::Memory);
    let addr = served.addr();
    let mut publisher = Client::over(util::connect_with_small_window(addr), addr);
    // About 6 MB of acknowledgements: more than the server's socket buffer holds.
    let count = 100_000;
    for n in 0..count {
        let publish = json!({"type":"publish","topic":"t","data":"x","id":format!("{n}")});
        let frame = tungstenite::Message::text(publish.to_string());
        // Once the server has closed, the rest cannot be sent: that is the point.
        if publisher.socket.send(frame).is_err() {
            break;
        }
    }
    // Read what came: acknowledgements in order with none missing, then the close.
    let mut acked = 0;
    let close = loop {
        match publisher.socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let ack: Value = serde_json::from_str(text.as_str()).expect("JSON");
                assert_eq!(ack["type"], "ack", "{ack}");
                assert_eq!(
                    ack["id"],
                    acked.to_string(),
                    "an acknowledgement went missing"
                );
                acked += 1;
                if acked == count {
                    break None;
                }
            }
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|frame| frame.code),
            Ok(_) => {}
            // Closed without the close frame read (reset after the linger): also an end.
            Err(_) => break None,
        }
    };
    assert!(
        acked < count,
        "every acknowledgement fitted: the test proves nothing"
    );
    if let Some(code) = close {
        assert_eq!(u16::from(code), socketserver::pubsub::CLOSE_SLOW_SUBSCRIBER);
    }
    served.stop();
}

#[test]
fn serve_refuses_pubsub_under_prefork() {
    let (status, _, stderr) = util::run_cli(
        &[
            "serve",
            "--protocol",
            "pubsub",
            "--memory",
            "--model",
            "prefork",
            "--addr",
            "127.0.0.1:0",
        ],
        TIMEOUT,
    );
    assert!(!status.success());
    assert!(
        stderr.contains("under --model prefork only with a --backplane"),
        "{stderr}"
    );
}

#[test]
fn the_broadcast_server_sends_every_message_to_every_client() {
    let server = Cli::start(&["serve", "--protocol", "ws", "--broadcast"], None);
    let mut clients: Vec<tungstenite::WebSocket<TcpStream>> = (0..3)
        .map(|_| {
            let (socket, _) =
                tungstenite::client(format!("ws://{}/", server.addr), connect(server.addr))
                    .expect("handshake");
            socket
        })
        .collect();
    // Every member is subscribed once the server has read its upgrade: wait until the hub
    // counts all three before the first message goes out.
    wait_for("three subscriptions", || {
        metrics(server.addr).contains("socketserver_pubsub_subscriptions 3")
    });
    let sent = [
        tungstenite::Message::text("hello all"),
        tungstenite::Message::binary(vec![0, 1, 2]),
    ];
    for (from, message) in sent.iter().enumerate() {
        clients[from].send(message.clone()).expect("send");
        for client in &mut clients {
            assert_eq!(&client.read().expect("read"), message, "the kind is kept");
        }
    }
}

/// The body of `GET /metrics` from `addr`.
fn metrics(addr: SocketAddr) -> String {
    let mut stream = connect(addr);
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Load runs of publishes: every request is acknowledged, and the hub counts each once.
#[test]
fn load_publishes_are_each_acknowledged() {
    use socketserver::load::{self, LoadConfig, LoadProtocol};
    let served = serve(Driver::Reactor, test_config(), Storage::Memory);
    let config = LoadConfig {
        addr: served.addr(),
        protocol: LoadProtocol::Pubsub,
        connections: 4,
        duration: std::time::Duration::from_millis(500),
        warmup: std::time::Duration::from_millis(100),
        ..LoadConfig::default()
    };
    let report = load::run(&config).expect("load run");
    assert_eq!((report.connected, report.errors), (4, 0), "{report:?}");
    assert!(report.answers > 0);
    assert_eq!(report.answers, report.requests_sent);
    assert_eq!(served.pubsub().stats().published(), report.answers);
    served.stop();
}

/// The chat of `examples/chat.rs` in headless Chromium: a room's history comes with joining,
/// a message from another client appears, and after the server restarts (same data directory)
/// the page reconnects, resumes from its last offset, and shows what was published meanwhile,
/// with nothing shown twice.
#[test]
#[ignore = "needs Chromium and chromedriver (apt-get install chromium chromium-driver)"]
fn the_chat_example_resumes_after_a_restart_in_headless_chromium() {
    use util::browser;
    let example = browser::example("chat");
    let dir = data_dir("chat");
    let dir_arg = dir.to_str().expect("a UTF-8 path").to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|free| free.local_addr())
        .expect("a free port")
        .port();
    let addr_arg = format!("127.0.0.1:{port}");
    let args = [addr_arg.as_str(), "--data-dir", dir_arg.as_str()];
    let (server, _) = browser::start_printing(&example, &args);
    let addr: SocketAddr = addr_arg.parse().expect("an address");
    // History before the page joins.
    let chat = |addr| Client::over_path(connect(addr), addr, "/ws");
    chat(addr).publish("room:lobby", "before you came", None);

    let session = browser::Session::start();
    let page = &session.browser;
    page.call("POST", "/url", json!({ "url": format!("http://{addr}/") }));
    wait_for("the page's WebSocket to open", || {
        page.text_of("#status") == "open"
    });
    let join = page.element("#join");
    page.call("POST", &format!("/element/{join}/click"), json!({}));
    let shown = |count: usize| {
        move || {
            page.call(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": "li.message"}),
            )
            .as_array()
            .is_some_and(|list| list.len() == count)
        }
    };
    wait_for("the room's history", shown(1));
    page.type_and_send("hello from the page");
    wait_for("the page's own message", shown(2));
    chat(addr).publish("room:lobby", "from another client", None);
    wait_for("another client's message", shown(3));

    // A restart: the page notices, backs off, reconnects and resumes.
    let stop = |mut server: std::process::Child| {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
        let _ = server.wait();
    };
    stop(server);
    wait_for("the page to see the server go", || {
        page.text_of("#status") == "closed"
    });
    let (server, _) = browser::start_printing(&example, &args);
    chat(addr).publish("room:lobby", "while you were away", None);
    wait_for("the page to resume", || page.text_of("#resumes") == "1");
    wait_for("what was published meanwhile", shown(4));
    let log = page.text_of("#log");
    for line in [
        "before you came",
        "hello from the page",
        "from another client",
        "while you were away",
    ] {
        assert_eq!(log.matches(line).count(), 1, "shown once: {line}\n{log}");
    }
    drop(session);
    stop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a delivery delay, messages wait for each other but every one still arrives, in order,
/// and acknowledgements do not wait.
#[test]
fn a_delivery_delay_holds_messages_back_without_losing_or_reordering_any() {
    let config = Config {
        pubsub_delivery_delay: std::time::Duration::from_millis(30),
        ..test_config()
    };
    let served = serve(Driver::Reactors, config, Storage::Memory);
    let mut subscriber = Client::connect(served.addr());
    subscriber.subscribe("held", None);
    let mut publisher = Client::connect(served.addr());
    for n in 1..=20 {
        publisher.send(json!({"type":"publish","topic":"held","data":format!("m{n}")}));
    }
    for n in 1..=20 {
        assert_eq!(publisher.expect("ack")["offset"], n);
    }
    let want: Vec<(u64, String)> = (1..=20).map(|n| (n, format!("m{n}"))).collect();
    assert_eq!(subscriber.messages(20), want);
    served.stop();
}

/// With permessage-deflate agreed (no context takeover), a message goes compressed to the
/// clients that asked and plain to those that did not, framed once for all of them.
#[test]
fn a_message_is_compressed_for_the_clients_that_agreed_deflate_and_plain_for_the_rest() {
    use util::ws::{client_frame, inflate, RawClient, TEXT};
    let deflate = socketserver::protocol::ws::DeflateOptions::default();
    let served = serve_with(
        Driver::Reactors,
        test_config(),
        Storage::Memory,
        Some(deflate),
    );
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let mut compressed: Vec<RawClient> = (0..3)
        .map(|_| RawClient::connect(served.addr(), "/", offer))
        .collect();
    let text_of = |frame: util::ws::ServerFrame| {
        let payload = if frame.rsv1 {
            inflate(&frame.payload, 15)
        } else {
            frame.payload
        };
        let text = String::from_utf8(payload).expect("UTF-8");
        (
            frame.rsv1,
            serde_json::from_str::<Value>(&text).expect("JSON"),
        )
    };
    for raw in &mut compressed {
        assert!(
            raw.response.contains("permessage-deflate"),
            "{}",
            raw.response
        );
        raw.send(&client_frame(TEXT, br#"{"type":"subscribe","topic":"z"}"#));
        let (_, subscribed) = text_of(raw.read_frame().expect("subscribed"));
        assert_eq!(subscribed["type"], "subscribed");
    }
    let mut plain = Client::connect(served.addr());
    plain.subscribe("z", None);
    let data = "a message long enough to be worth compressing, and then some more of it";
    Client::connect(served.addr()).publish("z", data, None);
    for raw in &mut compressed {
        let (rsv1, message) = text_of(raw.read_frame().expect("the message"));
        assert!(rsv1, "compressed");
        assert_eq!(
            (message["offset"].as_u64(), message["data"].as_str()),
            (Some(1), Some(data))
        );
    }
    assert_eq!(plain.messages(1), vec![(1, data.to_string())]);
    assert_eq!(served.pubsub().stats().frames_prepared(), 1);
    drop(compressed);
    served.stop();
}

/// Under `interval`, publishes are acknowledged without waiting for the disk, and the log is
/// synced by the clock: fewer fsyncs than publishes, and at least one.
#[test]
fn the_interval_policy_acknowledges_at_once_and_syncs_on_the_clock() {
    let dir = data_dir("interval");
    let storage = Storage::Disk {
        dir: dir.clone(),
        fsync: FsyncPolicy::Interval(std::time::Duration::from_millis(50)),
    };
    let served = serve(Driver::Reactor, test_config(), storage);
    let mut client = Client::connect(served.addr());
    for n in 1..=50 {
        assert_eq!(client.publish("i", &format!("m{n}"), None), n);
    }
    let stats = served.pubsub().stats();
    wait_for("the interval's sync", || stats.fsyncs() >= 1);
    assert!(
        stats.fsyncs() < 50,
        "{} fsyncs for 50 publishes",
        stats.fsyncs()
    );
    served.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Subscribers leaving in any order leave exactly themselves: the one left still gets every
/// message, and the hub counts one subscription.
#[test]
fn subscribers_that_leave_in_any_order_take_only_themselves_with_them() {
    let served = serve(Driver::Reactor, test_config(), Storage::Memory);
    let mut clients: Vec<Client> = (0..3)
        .map(|_| {
            let mut client = Client::connect(served.addr());
            client.subscribe("order", None);
            client
        })
        .collect();
    for leaving in [0, 2] {
        clients[leaving].send(json!({"type":"unsubscribe","topic":"order"}));
        clients[leaving].expect("unsubscribed");
    }
    let stats = served.pubsub().stats();
    let metrics_text = || stats.prometheus();
    wait_for("one subscription left", || {
        metrics_text().contains("socketserver_pubsub_subscriptions 1\n")
    });
    Client::connect(served.addr()).publish("order", "to the one left", None);
    assert_eq!(
        clients[1].messages(1),
        vec![(1, "to the one left".to_string())]
    );
    wait_for("one delivery", || stats.delivered() == 1);
    served.stop();
}
