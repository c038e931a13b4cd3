//! Past one machine, measured: two pub/sub nodes sharing one Redis against the single-node
//! embedded log, the failover of a crowd of subscribers behind HAProxy, and delivery through
//! HAProxy against direct.
//!
//! ```text
//! cargo build --release && cargo bench --bench cluster -- [SUBSCRIBERS]
//! ```
//!
//! Needs `redis-server` and `haproxy` (it says so and stops without them). Every server (the
//! nodes, Redis, HAProxy) runs pinned to CPU 0 and this program, the clients and the load
//! generator to CPU 1, so all the configurations share one core for serving and compare
//! fairly with each other (absolute figures on more cores are higher for all of them).
//!
//! 1. **Publishes acknowledged per second**: `socketserver load --protocol pubsub` (32
//!    connections, 5 s) against one node with its embedded log in memory, the same with the
//!    log on disk (`--fsync always`), and node A of two sharing a Redis.
//! 2. **Delivery latency p50/p99**: a publisher on one node, a subscriber on the other (or on
//!    the same node, for the embedded log), 2,000 messages at 500 per second, timed from the
//!    publish being written to the message being read.
//! 3. **Failover**: SUBSCRIBERS (default 1,000) reconnecting clients through HAProxy, spread
//!    over two nodes; `kill -9` of one; the time until every subscriber of the killed node has
//!    resumed (`recovered: true`) on the other, and a message published after it reaching all.
//! 4. **Delivered per second, HAProxy against direct**: 100 subscribers, 20,000 messages
//!    published as fast as acknowledged in a window: deliveries per second to the last message
//!    at the last subscriber.
//!
//! Every wait is bounded; every process is stopped by its PID at the end.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use socketserver::client::pubsub::{Event, PubSubClient};
use socketserver::client::ws::ClientOptions;
use socketserver::client::Backoff;

const TIMEOUT: Duration = Duration::from_secs(60);
const BINARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/socketserver");

/// The processes started, killed at the end whatever happens.
struct Processes(Mutex<Vec<Child>>);

impl Processes {
    fn add(&self, child: Child) -> u32 {
        let pid = child.id();
        lock(&self.0).push(child);
        pid
    }

    fn kill(&self, pid: u32) {
        let mut children = lock(&self.0);
        if let Some(at) = children.iter().position(|child| child.id() == pid) {
            let mut child = children.remove(at);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in lock(&self.0).iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn main() {
    let subscribers: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(1_000);
    if !std::path::Path::new(BINARY).exists() {
        eprintln!("build it first: cargo build --release");
        return;
    }
    for program in ["redis-server", "haproxy", "taskset"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            eprintln!("{program} is needed (Debian's redis-server, haproxy, util-linux)");
            return;
        }
    }
    pin_to_cpu(1);
    let processes = Processes(Mutex::new(Vec::new()));
    let dir =
        std::env::temp_dir().join(format!("socketserver-bench-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let redis_port = free_port();
    let redis_pid = processes.add(
        Command::new("taskset")
            .args([
                "-c",
                "0",
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--port", &redis_port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let redis = format!("redis://127.0.0.1:{redis_port}");
    wait_until("Redis to listen", || {
        TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
    });

    println!("## Publishes acknowledged per second (32 connections, 5 s)\n");
    println!("| configuration | acks/s | p50 ms | p99 ms | node CPU µs/ack | Redis CPU µs/ack |");
    println!("|---|---:|---:|---:|---:|---:|");
    let memory = node(&processes, &["--memory"], None);
    for _ in 0..2 {
        report_load("one node, embedded log in memory", memory, None);
    }
    processes.kill(memory.0);
    let disk_dir = dir.join("disk");
    let disk = node(
        &processes,
        &[
            "--fsync",
            "always",
            "--data-dir",
            &disk_dir.to_string_lossy(),
        ],
        None,
    );
    for _ in 0..2 {
        report_load("one node, embedded log on disk, fsync always", disk, None);
    }
    processes.kill(disk.0);
    let a = node(&processes, &["--backplane", &redis], None);
    let b = node(&processes, &["--backplane", &redis], None);
    for _ in 0..2 {
        report_load("node A of two, Redis backplane", a, Some(redis_pid));
    }

    println!("\n## Delivery latency, 2,000 messages at 500/s\n");
    println!("| path | p50 ms | p99 ms |");
    println!("|---|---:|---:|");
    let embedded = node(&processes, &["--memory"], None);
    latency(
        "embedded log, publisher and subscriber on one node",
        embedded.1,
        embedded.1,
    );
    processes.kill(embedded.0);
    latency("Redis backplane, publisher on A, subscriber on B", a.1, b.1);
    latency("Redis backplane, both on A", a.1, a.1);
    processes.kill(a.0);
    processes.kill(b.0);

    let ports = [free_port(), free_port()];
    let agents = [free_port(), free_port()];
    let agent_addrs = agents.map(|port| format!("127.0.0.1:{port}"));
    let trusted = |at: usize| {
        [
            "--backplane",
            redis.as_str(),
            "--proxy-protocol-from",
            "127.0.0.0/8",
            "--agent-addr",
            agent_addrs[at].as_str(),
        ]
    };
    let node1 = node(&processes, &trusted(0), Some(ports[0]));
    let node2 = node(&processes, &trusted(1), Some(ports[1]));
    let front = haproxy(&processes, &dir, ports, agents);
    println!("\n## Failover through HAProxy, {subscribers} subscribers\n");
    failover(&processes, front, node1.0, subscribers);
    processes.kill(node2.0);

    let node3 = node(&processes, &trusted(0), Some(ports[0]));
    let node4 = node(&processes, &trusted(1), Some(ports[1]));
    wait_until("HAProxy to see the nodes", || ready(front));
    println!("\n## Delivered per second, 100 subscribers over two nodes, 20,000 messages\n");
    println!("| path | deliveries/s |");
    println!("|---|---:|");
    for _ in 0..2 {
        fan_out("direct to the nodes", [node3.1, node4.1], true);
        fan_out("through HAProxy", [front, front], false);
    }
    processes.kill(node3.0);
    processes.kill(node4.0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only changes this thread's
    // (the main thread's, before any other is started) affinity, which threads inherit.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a pub/sub node on CPU 0 with `args`; its PID and address.
fn node(processes: &Processes, args: &[&str], port: Option<u16>) -> (u32, SocketAddr) {
    let addr = format!("127.0.0.1:{}", port.unwrap_or(0));
    let mut child = Command::new("taskset")
        .args(["-c", "0", BINARY, "serve", "--protocol", "pubsub"])
        .args(args)
        .args(["--addr", &addr, "--max-connections", "100000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a node");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("the first line");
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .expect("listening on ADDR")
        .parse()
        .expect("an address");
    (processes.add(child), addr)
}

/// Starts HAProxy from the deployment file, with its addresses (and the nodes' agent-check
/// ports) replaced; the frontend.
fn haproxy(
    processes: &Processes,
    dir: &std::path::Path,
    ports: [u16; 2],
    agents: [u16; 2],
) -> SocketAddr {
    let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/deploy/haproxy.cfg"
    ))
    .expect("examples/deploy/haproxy.cfg")
    .replace("127.0.0.1:8080", &front.to_string())
    .replace("127.0.0.1:9001", &format!("127.0.0.1:{}", ports[0]))
    .replace("127.0.0.1:9002", &format!("127.0.0.1:{}", ports[1]))
    .replace("agent-port 9101", &format!("agent-port {}", agents[0]))
    .replace("agent-port 9102", &format!("agent-port {}", agents[1]));
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    processes.add(
        Command::new("taskset")
            .args(["-c", "0", "haproxy", "-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy"),
    );
    wait_until("HAProxy to answer", || ready(front));
    front
}

/// True when `GET /readyz` at `addr` answers 200.
fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    stream.write_all(request).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// CPU time (user and system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |at: usize| {
        fields
            .get(at)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / per_second
}

/// Runs the load generator's pub/sub load against `node` and prints a row, with the CPU the
/// node (and Redis, if given) spent per acknowledged publish.
fn report_load(name: &str, node: (u32, SocketAddr), redis: Option<u32>) {
    let (pid, addr) = node;
    let node_before = cpu_seconds(pid);
    let redis_before = redis.map(cpu_seconds);
    let output = Command::new(BINARY)
        .args(["load", "--protocol", "pubsub", "--connections", "32"])
        .args(["--duration", "5", "--warmup", "1", "--json", "--addr"])
        .arg(addr.to_string())
        .output()
        .expect("the load generator");
    let report: serde_json::Value = match serde_json::from_slice(&output.stdout) {
        Ok(report) => report,
        Err(error) => {
            println!("| {name} | failed: {error} | | |");
            return;
        }
    };
    let latency = |key: &str| report["latency"][key].as_f64().unwrap_or(f64::NAN) / 1000.0;
    // Over the whole run, warm-up included: every answer the generator received.
    let answers = report["answers"].as_f64().unwrap_or(f64::NAN);
    let per_ack = |before: f64, after: f64| (after - before) * 1e6 / answers;
    let redis_per_ack = match (redis, redis_before) {
        (Some(redis), Some(before)) => format!("{:.1}", per_ack(before, cpu_seconds(redis))),
        _ => "–".into(),
    };
    println!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.1} | {redis_per_ack} |",
        report["rate"].as_f64().unwrap_or(f64::NAN),
        latency("p50_us"),
        latency("p99_us"),
        per_ack(node_before, cpu_seconds(pid)),
    );
}

fn websocket(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    websocket_as(addr, false)
}

/// A WebSocket to `addr`, first sending a PROXY header as a balancer would (`proxied`), for a
/// node that trusts this machine's balancer.
fn websocket_as(addr: SocketAddr, proxied: bool) -> tungstenite::WebSocket<TcpStream> {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).expect("connect");
    if proxied {
        let client = stream.local_addr().expect("local address");
        let header = socketserver::net::proxy::v2_header(client, addr);
        stream.write_all(&header).expect("the PROXY header");
    }
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

fn send(socket: &mut tungstenite::WebSocket<TcpStream>, value: serde_json::Value) {
    socket
        .send(tungstenite::Message::text(value.to_string()))
        .expect("send");
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Publishes on `from`, reads on `to`: the latency of each message, as a row.
fn latency(name: &str, from: SocketAddr, to: SocketAddr) {
    let topic = format!("latency-{}", rand_suffix());
    let mut subscriber = websocket(to);
    send(
        &mut subscriber,
        serde_json::json!({"type": "subscribe", "topic": topic}),
    );
    assert_eq!(next_json(&mut subscriber)["type"], "subscribed");
    let count = 2_000;
    let origin = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut samples = Vec::with_capacity(count);
        while samples.len() < count {
            let message = next_json(&mut subscriber);
            if message["type"] != "message" {
                continue;
            }
            let sent: f64 = message["data"]
                .as_str()
                .and_then(|data| data.parse().ok())
                .expect("a send time");
            samples.push(origin.elapsed().as_secs_f64() * 1000.0 - sent);
        }
        samples
    });
    let mut publisher = websocket(from);
    let interval = Duration::from_micros(2_000);
    let mut next = Instant::now();
    for _ in 0..count {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += interval;
        let sent = origin.elapsed().as_secs_f64() * 1000.0;
        send(
            &mut publisher,
            serde_json::json!({"type": "publish", "topic": topic, "data": format!("{sent}")}),
        );
        // Its acknowledgement, so that the publisher's socket never fills.
        assert_eq!(next_json(&mut publisher)["type"], "ack");
    }
    let mut samples = reader.join().expect("the reader");
    samples.sort_by(f64::total_cmp);
    println!(
        "| {name} | {:.3} | {:.3} |",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    );
}

fn rand_suffix() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `count` reconnecting subscribers through `front`; `kill -9` of `victim`; how long until
/// each of its subscribers resumed on the other node.
fn failover(processes: &Processes, front: SocketAddr, victim: u32, count: usize) {
    let topic = format!("failover-{}", rand_suffix());
    let subscribed = Arc::new(Barrier::new(count + 1));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let resumed: Arc<Mutex<Vec<Duration>>> = Arc::new(Mutex::new(Vec::new()));
    let got_last = Arc::new(AtomicUsize::new(0));
    let last_offset = Arc::new(AtomicU64::new(u64::MAX));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (topic, subscribed) = (topic.clone(), subscribed.clone());
            let (killed_at, resumed) = (killed_at.clone(), resumed.clone());
            let (got_last, last_offset) = (got_last.clone(), last_offset.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let options = ClientOptions {
                        backoff: Some(Backoff::exponential(
                            Duration::from_millis(50),
                            Duration::from_secs(1),
                        )),
                        ..ClientOptions::default()
                    };
                    let url = format!("ws://{front}/");
                    let mut client = PubSubClient::connect(&url, options).expect("connect");
                    client.subscribe(&topic, Some(0));
                    let mut first = true;
                    let mut seen = BTreeSet::new();
                    let deadline = Instant::now() + TIMEOUT;
                    while Instant::now() < deadline {
                        match client.next_event(Duration::from_millis(100)) {
                            Ok(Some(Event::Subscribed { recovered, .. })) => {
                                if first {
                                    first = false;
                                    subscribed.wait();
                                } else if recovered {
                                    if let Some(at) = *lock(&killed_at) {
                                        lock(&resumed).push(at.elapsed());
                                    }
                                }
                            }
                            Ok(Some(Event::Message { offset, .. })) => {
                                seen.insert(offset);
                            }
                            _ => {}
                        }
                        let last = last_offset.load(Ordering::SeqCst);
                        if last != u64::MAX && seen.contains(&last) {
                            got_last.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                })
                .expect("a subscriber thread")
        })
        .collect();
    subscribed.wait();
    *lock(&killed_at) = Some(Instant::now());
    processes.kill(victim);
    // Published after the kill, through HAProxy: every subscriber must get it.
    let options = ClientOptions {
        backoff: Some(Backoff::exponential(
            Duration::from_millis(50),
            Duration::from_secs(1),
        )),
        ..ClientOptions::default()
    };
    let mut publisher =
        PubSubClient::connect(&format!("ws://{front}/"), options).expect("a publisher");
    let offset = publisher
        .publish(&topic, "after the kill", TIMEOUT)
        .expect("published after the kill");
    last_offset.store(offset, Ordering::SeqCst);
    for thread in threads {
        let _ = thread.join();
    }
    let mut times = lock(&resumed).clone();
    times.sort();
    let moved = times.len();
    let all = got_last.load(Ordering::SeqCst);
    let ms = |duration: Option<&Duration>| duration.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    println!("| subscribers | moved | resumed p50 ms | all resumed ms | got the message after |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {count} | {moved} | {:.0} | {:.0} | {all} of {count} |",
        ms(times.get(moved / 2)),
        ms(times.last())
    );
}

/// 100 subscribers reading on `to` (alternately), 20,000 messages published on the first with
/// up to 256 unacknowledged: deliveries per second until the last subscriber has the last
/// message. `proxied`: the addresses are nodes that expect a balancer's PROXY header.
fn fan_out(name: &str, to: [SocketAddr; 2], proxied: bool) {
    let topic = format!("fanout-{}", rand_suffix());
    let (subscribers, messages) = (100, 20_000u64);
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let readers: Vec<_> = (0..subscribers)
        .map(|at| {
            let (topic, ready) = (topic.clone(), ready.clone());
            std::thread::spawn(move || {
                let mut socket = websocket_as(to[at % 2], proxied);
                send(
                    &mut socket,
                    serde_json::json!({"type": "subscribe", "topic": topic}),
                );
                assert_eq!(next_json(&mut socket)["type"], "subscribed");
                ready.wait();
                // Counted, not parsed: the clients share one core, and must not be what limits.
                let mut received = 0;
                while received < messages {
                    if let tungstenite::Message::Text(text) = socket.read().expect("a message") {
                        if text.as_str().starts_with(r#"{"type":"message""#) {
                            received += 1;
                        }
                    }
                }
            })
        })
        .collect();
    ready.wait();
    let started = Instant::now();
    let mut publisher = websocket_as(to[0], proxied);
    let mut unacknowledged = 0;
    for n in 0..messages {
        send(
            &mut publisher,
            serde_json::json!({"type": "publish", "topic": topic, "data": format!("m{n}")}),
        );
        unacknowledged += 1;
        while unacknowledged >= 256 {
            if next_json(&mut publisher)["type"] == "ack" {
                unacknowledged -= 1;
            }
        }
    }
    for reader in readers {
        reader.join().expect("a subscriber");
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "| {name} | {:.0} |",
        (messages * subscribers as u64) as f64 / seconds
    );
}
