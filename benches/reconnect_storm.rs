//! A reconnect storm: N pub/sub subscribers on one client loop, the server killed (SIGKILL) and
//! started again on the same port, once with full jitter and once with none.
//!
//! For each it reports the time from the restart until every subscriber is subscribed again,
//! the peak connects per second the server saw (from the clients' connect times, in 100 ms
//! buckets summed over one-second windows), and the connects refused while it was down.
//!
//! ```text
//! cargo build --release
//! taskset -c 1 cargo bench --bench reconnect_storm -- --clients 10000
//! ```
//!
//! The server runs `taskset -c 0` when `taskset` is there. Bounded: each phase gives up after
//! 120 s.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socketserver::client::pubsub::{Event, PubSubHandler, PubSubState};
use socketserver::client::ws::{ClientOptions, Url, WsClient};
use socketserver::client::{Backoff, Clients, Jitter};
use socketserver::Config;

const PHASE_LIMIT: Duration = Duration::from_secs(120);

fn server(addr: SocketAddr) -> Child {
    let binary = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/socketserver");
    let args = [
        "serve",
        "--protocol",
        "pubsub",
        "--memory",
        "--max-connections",
        "100000",
        "--addr",
        &addr.to_string(),
    ];
    let mut command = if Command::new("taskset").arg("-V").output().is_ok() {
        let mut command = Command::new("taskset");
        command.args(["-c", "0", binary]);
        command
    } else {
        Command::new(binary)
    };
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start target/release/socketserver (cargo build --release first)")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PHASE_LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Outcome {
    resumed_in: Duration,
    peak_per_second: usize,
    refused: u64,
}

fn storm(clients: usize, jitter: Jitter) -> Outcome {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let mut child = server(addr);
    let url = Url::parse(&format!("ws://{addr}/")).expect("url");
    let options = ClientOptions {
        backoff: Some(
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5))
                .with_jitter(jitter),
        ),
        ..ClientOptions::default()
    };
    let config = Config {
        handle_signals: false,
        idle_timeout: None,
        max_connections: 1_000_000,
        ..Config::default()
    };
    let subscribed = Arc::new(AtomicUsize::new(0));
    let connect_times: Arc<Mutex<Vec<Instant>>> =
        Arc::new(Mutex::new(Vec::with_capacity(clients * 2)));
    let mut loop_ = Clients::new(config).expect("a client loop");
    // Let the server start before the first dials.
    wait_until("the server", || std::net::TcpStream::connect(addr).is_ok());
    for _ in 0..clients {
        let state = PubSubState::default();
        state.subscribe("storm", None, None);
        let (subscribed, times) = (subscribed.clone(), connect_times.clone());
        let handler = PubSubHandler::new(state, move |event| match event {
            Event::Subscribed { .. } => {
                subscribed.fetch_add(1, Ordering::Relaxed);
            }
            Event::Connected => times.lock().expect("times").push(Instant::now()),
            _ => {}
        });
        loop_
            .dial(addr, WsClient::new(url.clone(), &options, handler))
            .expect("dial");
    }
    let handle = loop_.handle();
    let running = std::thread::spawn(move || loop_.run());
    wait_until("every first subscription", || {
        subscribed.load(Ordering::Relaxed) >= clients
    });
    let refused_before = handle.stats().dials_failed;
    subscribed.store(0, Ordering::Relaxed);
    connect_times.lock().expect("times").clear();
    let _ = child.kill();
    let _ = child.wait();
    let restarted = Instant::now();
    let mut child = server(addr);
    wait_until("every subscription again", || {
        subscribed.load(Ordering::Relaxed) >= clients
    });
    let resumed_in = restarted.elapsed();
    let refused = handle.stats().dials_failed - refused_before;
    handle.shutdown();
    let _ = running.join();
    let _ = child.kill();
    let _ = child.wait();
    let times = connect_times.lock().expect("times");
    let mut buckets = vec![0usize; (resumed_in.as_millis() / 100 + 2) as usize];
    for time in times.iter() {
        let bucket = (time.saturating_duration_since(restarted).as_millis() / 100) as usize;
        if let Some(count) = buckets.get_mut(bucket) {
            *count += 1;
        }
    }
    let peak_per_second = (0..buckets.len())
        .map(|start| {
            buckets[start..(start + 10).min(buckets.len())]
                .iter()
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    Outcome {
        resumed_in,
        peak_per_second,
        refused,
    }
}

fn main() {
    socketserver::net::raise_descriptor_limit().expect("raising the descriptor limit");
    let mut clients = 10_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--clients" {
            clients = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--clients N");
        }
    }
    println!("reconnect storm: {clients} subscribers, server killed and restarted");
    println!(
        "{:<8} {:>14} {:>16} {:>10}",
        "jitter", "all resumed", "peak connects/s", "refused"
    );
    for (name, jitter) in [("full", Jitter::Full), ("none", Jitter::None)] {
        let outcome = storm(clients, jitter);
        println!(
            "{name:<8} {:>12.0?} {:>16} {:>10}",
            outcome.resumed_in, outcome.peak_per_second, outcome.refused
        );
    }
}
