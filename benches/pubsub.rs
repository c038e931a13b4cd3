//! Pub/sub figures that are not a load run: how fast a resuming subscriber is replayed the log
//! (catch-up), and what one subscription costs the server in memory.
//!
//! ```text
//! cargo build --release && cargo bench --bench pubsub -- [MESSAGES] [SUBSCRIBERS]
//! ```
//!
//! It starts `target/release/socketserver serve --protocol pubsub` pinned to CPU 0 (a fresh
//! data directory, `--fsync never`: the log is written before it is read), pins itself to
//! CPU 1, and then
//!
//! 1. publishes MESSAGES (default 1,000,000) messages of 64 bytes, pipelined, to topic `replay`;
//! 2. subscribes from offset 0 and times the replay of all of them to this one subscriber
//!    (every offset checked in order): messages per second;
//! 3. opens SUBSCRIBERS (default 10,000) WebSockets and reads the server's RSS, then
//!    subscribes each of them to topic `many` and reads it again: bytes per subscription.
//!
//! Every wait is bounded; the server is stopped by its PID at the end.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let messages = numbers.first().copied().unwrap_or(1_000_000);
    let subscribers = numbers.get(1).copied().unwrap_or(10_000);
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/socketserver");
    if !std::path::Path::new(binary).exists() {
        eprintln!("build it first: cargo build --release");
        return;
    }
    pin_to_cpu(1);
    let dir =
        std::env::temp_dir().join(format!("socketserver-bench-pubsub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut server, addr) = start_server(binary, &dir);
    let outcome = std::panic::catch_unwind(|| {
        catch_up(&addr, messages);
        memory_per_subscription(&addr, server.id(), subscribers);
    });
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if outcome.is_err() {
        std::process::exit(1);
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only changes this thread's
    // (the main thread's, before any other is started) affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn start_server(binary: &str, dir: &std::path::Path) -> (Child, String) {
    let mut child = Command::new("taskset")
        .args([
            "-c",
            "0",
            binary,
            "serve",
            "--protocol",
            "pubsub",
            "--fsync",
            "never",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--addr", "127.0.0.1:0", "--max-connections", "100000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the server");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("the first line");
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .expect("listening on ADDR")
        .to_string();
    (child, addr)
}

fn client(addr: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let (socket, _) = tungstenite::client(format!("ws://{addr}/"), stream).expect("handshake");
    socket
}

fn next_json(socket: &mut tungstenite::WebSocket<TcpStream>) -> serde_json::Value {
    loop {
        if let tungstenite::Message::Text(text) = socket.read().expect("a message") {
            return serde_json::from_str(text.as_str()).expect("JSON");
        }
    }
}

fn catch_up(addr: &str, messages: usize) {
    let mut publisher = client(addr);
    let data = "x".repeat(64);
    let started = Instant::now();
    let window = 256;
    let mut acked = 0;
    for n in 0..messages {
        let publish = format!(r#"{{"type":"publish","topic":"replay","data":"{data}"}}"#);
        publisher
            .write(tungstenite::Message::text(publish))
            .expect("publish");
        let sent = n + 1;
        let keep = if sent == messages { 0 } else { window / 2 };
        if sent - acked >= window || sent == messages {
            publisher.flush().expect("flush");
            while sent - acked > keep {
                let ack = next_json(&mut publisher);
                assert_eq!(ack["type"], "ack", "{ack}");
                acked += 1;
            }
        }
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    println!(
        "published {messages} messages of 64 bytes in {publish_seconds:.2} s ({:.0}/s, acknowledged, fsync never)",
        messages as f64 / publish_seconds
    );
    let mut subscriber = client(addr);
    let started = Instant::now();
    subscriber
        .send(tungstenite::Message::text(
            r#"{"type":"subscribe","topic":"replay","from":{"offset":0}}"#,
        ))
        .expect("subscribe");
    let subscribed = next_json(&mut subscriber);
    assert_eq!(subscribed["offset"].as_u64(), Some(messages as u64));
    let mut expected = 1u64;
    // The offset is read straight from the frame's text (after `"offset":`) to keep the reader
    // from being the bottleneck; the data is checked to be there.
    while expected <= messages as u64 {
        let tungstenite::Message::Text(text) = subscriber.read().expect("a message") else {
            continue;
        };
        let text = text.as_str();
        let offset: u64 = text
            .split_once(r#""offset":"#)
            .and_then(|(_, rest)| rest.split(',').next())
            .and_then(|number| number.parse().ok())
            .expect("an offset");
        assert_eq!(offset, expected, "in order, none missing");
        assert!(text.contains(&data));
        expected += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "catch-up: {messages} messages replayed to one subscriber in {seconds:.2} s: {:.0} messages/s",
        messages as f64 / seconds
    );
    assert!(started.elapsed() < TIMEOUT * 4);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn memory_per_subscription(addr: &str, server: u32, subscribers: usize) {
    let mut clients: Vec<tungstenite::WebSocket<TcpStream>> =
        (0..subscribers).map(|_| client(addr)).collect();
    let before = rss_kib(server);
    for client in &mut clients {
        client
            .send(tungstenite::Message::text(
                r#"{"type":"subscribe","topic":"many"}"#,
            ))
            .expect("subscribe");
    }
    for client in &mut clients {
        let subscribed = next_json(client);
        assert_eq!(subscribed["type"], "subscribed");
    }
    let after = rss_kib(server);
    let per = (after.saturating_sub(before) * 1024) as f64 / subscribers as f64;
    println!(
        "memory: {subscribers} WebSockets held {before} KiB RSS; subscribed to one topic, {after} KiB: {per:.0} bytes per subscription"
    );
}
