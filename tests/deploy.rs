//! The deployment files in `examples/deploy/`, run as they are (only their addresses changed)
//! with real `haproxy`, `nginx` and `redis-server` on loopback ports, in front of two
//! socketserver pub/sub nodes that share their topics through Redis:
//!
//! * through HAProxy, `kill -9` of a node holding about half the subscribers: every subscriber
//!   is back, through HAProxy, on the surviving node, resumed with no acknowledged message lost;
//! * a rolling restart (SIGTERM with a drain delay, each node in turn) under steady publishing:
//!   no publish fails, no subscriber sees a gap or misses a message;
//! * through nginx, WebSocket pub/sub across both nodes and plain HTTP health checks.
//!
//! Ignored without the programs (`.ci/run` installs them and runs these).

mod util;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socketserver::client::pubsub::{Event, PubSubClient};
use socketserver::client::ws::ClientOptions;
use socketserver::client::Backoff;
use util::redis::{free_port, Redis};
use util::{wait_for, TIMEOUT};

/// A node: `socketserver serve --protocol pubsub` with the backplane, on a fixed port (the
/// balancer's configuration names it).
struct Node {
    child: Option<Child>,
    port: u16,
    /// Where it answers HAProxy's agent check (behind HAProxy only).
    agent_port: u16,
    redis_url: String,
    /// Behind HAProxy, which sends PROXY headers; nginx's http proxy sends none.
    behind_haproxy: bool,
}

impl Node {
    fn start(port: u16, redis_url: &str, behind_haproxy: bool) -> Node {
        let mut node = Node {
            child: None,
            port,
            agent_port: free_port(),
            redis_url: redis_url.to_string(),
            behind_haproxy,
        };
        node.run();
        node
    }

    fn run(&mut self) {
        let addr = format!("127.0.0.1:{}", self.port);
        let mut args = vec![
            "serve",
            "--protocol",
            "pubsub",
            "--backplane",
            &self.redis_url,
            "--drain-delay",
            "3",
            "--addr",
            &addr,
        ];
        let agent = format!("127.0.0.1:{}", self.agent_port);
        if self.behind_haproxy {
            args.extend([
                "--proxy-protocol-from",
                "127.0.0.0/8",
                "--agent-addr",
                &agent,
            ]);
        }
        let (child, listening) = util::Cli::spawn(&args, None);
        assert_eq!(listening, addr);
        self.child = Some(child);
    }

    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the drain and the exit, which must be clean.
    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT * 2;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "node did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
    }

    /// `GET path` asked of this node directly (with a PROXY header of the test's own when it
    /// trusts only balancers that send one): the status and the body, `None` if it does not
    /// answer.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = std::net::TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        let mut request = String::new();
        if self.behind_haproxy {
            request.push_str("PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n");
        }
        request.push_str(&format!(
            "GET {path} HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n"
        ));
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let status = answer.split(' ').nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    }

    /// WebSocket connections open on this node (from its /metrics, asked directly).
    fn websockets(&self) -> u64 {
        let Some((200, text)) = self.get("/metrics") else {
            return 0;
        };
        text.lines()
            .find_map(|line| line.strip_prefix("socketserver_websockets_open "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// A balancer process (haproxy or nginx) run from a deployment file with its addresses
/// replaced.
struct Balancer {
    child: Child,
    dir: PathBuf,
    front: SocketAddr,
}

impl Balancer {
    fn haproxy(nodes: &[Node; 2]) -> Balancer {
        let ports = [nodes[0].port, nodes[1].port];
        let agents = [nodes[0].agent_port, nodes[1].agent_port];
        Balancer::run("haproxy", "haproxy.cfg", ports, agents, |config| {
            let mut command = Command::new(util::system_program("haproxy"));
            command.arg("-db").arg("-f").arg(config);
            command
        })
    }

    fn nginx(nodes: [u16; 2]) -> Balancer {
        Balancer::run("nginx", "nginx.conf", nodes, [0, 0], |config| {
            let dir = config.parent().expect("a directory").to_path_buf();
            let mut command = Command::new(util::system_program("nginx"));
            command.arg("-p").arg(dir).arg("-c").arg(config);
            command
        })
    }

    fn run(
        name: &str,
        file: &str,
        nodes: [u16; 2],
        agents: [u16; 2],
        command: impl Fn(&std::path::Path) -> Command,
    ) -> Balancer {
        let dir = std::env::temp_dir().join(format!(
            "socketserver-deploy-{name}-{}-{}",
            std::process::id(),
            nodes[0]
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("temp")).expect("a directory for the balancer");
        let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let original = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/deploy")
                .join(file),
        )
        .expect("the deployment file");
        for address in ["127.0.0.1:8080", "127.0.0.1:9001", "127.0.0.1:9002"] {
            assert!(original.contains(address), "{file} names {address}");
        }
        let config = original
            .replace("127.0.0.1:8080", &front.to_string())
            .replace("127.0.0.1:9001", &format!("127.0.0.1:{}", nodes[0]))
            .replace("127.0.0.1:9002", &format!("127.0.0.1:{}", nodes[1]))
            .replace("agent-port 9101", &format!("agent-port {}", agents[0]))
            .replace("agent-port 9102", &format!("agent-port {}", agents[1]));
        let path = dir.join(file);
        std::fs::write(&path, config).expect("write the configuration");
        let child = command(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{name}: {error} (install Debian's {name})"));
        let balancer = Balancer { child, dir, front };
        wait_for(&format!("{name} to answer /readyz"), || {
            balancer.status("/readyz") == Some(200)
        });
        balancer
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.front)
    }

    fn status(&self, path: &str) -> Option<u16> {
        let agent = ureq::AgentBuilder::new().timeout(TIMEOUT).build();
        match agent.get(&format!("http://{}{path}", self.front)).call() {
            Ok(response) => Some(response.status()),
            Err(ureq::Error::Status(code, _)) => Some(code),
            Err(_) => None,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers, which a killed master
        // would leave running. Bounded: killed if it takes longer.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Client options for a crowd that reconnects quickly through the balancer.
fn options() -> ClientOptions {
    ClientOptions {
        backoff: Some(Backoff::exponential(
            Duration::from_millis(50),
            Duration::from_millis(500),
        )),
        ..ClientOptions::default()
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    offsets: Vec<u64>,
    gaps: usize,
    not_recovered: usize,
    reconnects: usize,
}

/// Subscribers on threads of their own, until told the last offset published and they hold it
/// (or a deadline passes).
struct Crowd {
    threads: Vec<std::thread::JoinHandle<Seen>>,
    done: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
}

impl Crowd {
    /// `count` subscribers of `topic` through `url`, from the first offset; returns once all
    /// are subscribed.
    fn subscribe(url: &str, topic: &str, count: usize) -> Crowd {
        let (done, last) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let threads = subscribers(url, topic, count, &done, &last);
        Crowd {
            threads,
            done,
            last,
        }
    }

    /// Tells them what was `acknowledged`, waits for them, checks each saw exactly that, and
    /// returns how many reconnected on the way.
    fn finish(self, acknowledged: &BTreeSet<u64>) -> usize {
        self.last
            .store(*acknowledged.last().expect("some"), Ordering::SeqCst);
        self.done.store(true, Ordering::SeqCst);
        let seen: Vec<Seen> = self
            .threads
            .into_iter()
            .map(|thread| thread.join().expect("subscriber"))
            .collect();
        check(seen, acknowledged)
    }
}

fn subscribers(
    url: &str,
    topic: &str,
    count: usize,
    done: &Arc<AtomicBool>,
    last: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<Seen>> {
    let ready = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (url, topic) = (url.to_string(), topic.to_string());
            let (done, last, ready) = (done.clone(), last.clone(), ready.clone());
            std::thread::spawn(move || {
                let mut client = PubSubClient::connect(&url, options()).expect("connect");
                client.subscribe(&topic, Some(0));
                let mut seen = Seen::default();
                let mut subscribed_once = false;
                let deadline = Instant::now() + Duration::from_secs(90);
                while Instant::now() < deadline {
                    let finished = done.load(Ordering::SeqCst)
                        && seen.offsets.last().copied().unwrap_or(0) >= last.load(Ordering::SeqCst);
                    if finished {
                        break;
                    }
                    match client.next_event(Duration::from_millis(200)) {
                        Ok(Some(Event::Message { offset, .. })) => seen.offsets.push(offset),
                        Ok(Some(Event::Gap { .. })) => seen.gaps += 1,
                        Ok(Some(Event::Subscribed { recovered, .. })) => {
                            if !subscribed_once {
                                subscribed_once = true;
                                ready.fetch_add(1, Ordering::SeqCst);
                            } else if !recovered {
                                seen.not_recovered += 1;
                            }
                        }
                        Ok(Some(Event::Disconnected)) => seen.reconnects += 1,
                        Ok(_) => {}
                        Err(error) => panic!("subscriber: {error}"),
                    }
                }
                seen
            })
        })
        .collect();
    wait_for("every subscriber to be subscribed", || {
        ready.load(Ordering::SeqCst) == count as u64
    });
    threads
}

/// Checks every subscriber saw exactly `acknowledged`, in order, without a gap.
fn check(seen: Vec<Seen>, acknowledged: &BTreeSet<u64>) -> usize {
    let expected: Vec<u64> = acknowledged.iter().copied().collect();
    let mut moved = 0;
    for (at, seen) in seen.into_iter().enumerate() {
        assert_eq!(seen.gaps, 0, "subscriber {at} saw a gap");
        assert_eq!(seen.not_recovered, 0, "subscriber {at} could not resume");
        assert_eq!(
            seen.offsets, expected,
            "subscriber {at} got every acknowledged message once, in order"
        );
        moved += usize::from(seen.reconnects > 0);
    }
    moved
}

/// Publishes `count` messages through `url`, each acknowledged (across reconnects), running
/// `midway` after the `at`-th; returns the offsets acknowledged.
fn publish(url: &str, topic: &str, count: u64, at: u64, midway: impl FnOnce()) -> BTreeSet<u64> {
    let mut publisher = PubSubClient::connect(url, options()).expect("connect");
    let mut acknowledged = BTreeSet::new();
    let mut midway = Some(midway);
    for n in 1..=count {
        let offset = publisher
            .publish(topic, &format!("m{n}"), TIMEOUT * 2)
            .unwrap_or_else(|error| panic!("publish {n}: {error}"));
        assert!(
            acknowledged.insert(offset),
            "offset {offset} acknowledged twice"
        );
        if n == at {
            if let Some(midway) = midway.take() {
                midway();
            }
        }
    }
    acknowledged
}

#[test]
#[ignore = "needs redis-server and haproxy"]
fn through_haproxy_kill_9_of_a_node_loses_no_acknowledged_message_and_everyone_resumes() {
    let redis = Redis::start("deploy-kill");
    let ports = [free_port(), free_port()];
    let nodes = Arc::new(Mutex::new([
        Node::start(ports[0], &redis.url(), true),
        Node::start(ports[1], &redis.url(), true),
    ]));
    let haproxy = Balancer::haproxy(&nodes.lock().expect("nodes"));
    let crowd = Crowd::subscribe(&haproxy.url(), "prices", 40);
    {
        let nodes = nodes.lock().expect("nodes");
        wait_for("both nodes to hold subscribers", || {
            nodes[0].websockets() >= 10 && nodes[1].websockets() >= 10
        });
    }
    let killed = nodes.clone();
    let acknowledged = publish(&haproxy.url(), "prices", 300, 100, move || {
        killed.lock().expect("nodes")[0].kill_9();
    });
    let moved = crowd.finish(&acknowledged);
    assert!(
        moved >= 10,
        "the subscribers of the killed node moved ({moved})"
    );
}

#[test]
#[ignore = "needs redis-server and haproxy"]
fn a_rolling_restart_behind_haproxy_under_publishing_shows_no_error_and_no_gap() {
    let redis = Redis::start("deploy-rolling");
    let ports = [free_port(), free_port()];
    let nodes = Arc::new(Mutex::new([
        Node::start(ports[0], &redis.url(), true),
        Node::start(ports[1], &redis.url(), true),
    ]));
    let haproxy = Balancer::haproxy(&nodes.lock().expect("nodes"));
    let crowd = Crowd::subscribe(&haproxy.url(), "deploys", 20);
    let restarting = nodes.clone();
    let front = haproxy.front;
    let restarter = std::thread::spawn(move || {
        for index in 0..2 {
            let mut nodes = restarting.lock().expect("nodes");
            // Drains (3 s of 503 on /readyz, HAProxy takes it out), closes with 1001, exits.
            nodes[index].terminate();
            nodes[index].run();
            drop(nodes);
            // Ready, and taken back into rotation (HAProxy's rise: 2 checks, 1 s apart),
            // before the next one goes.
            let restarted = restarting.lock().expect("nodes");
            wait_for("the restarted node to be ready", || {
                restarted[index]
                    .get("/readyz")
                    .is_some_and(|(status, _)| status == 200)
            });
            drop(restarted);
            // Two health checks passed (on top of the test's own two requests): HAProxy has
            // it in rotation again.
            wait_for(
                "HAProxy's health checks to pass on the restarted node",
                || {
                    restarting.lock().expect("nodes")[index]
                        .get("/metrics")
                        .and_then(|(_, text)| {
                            text.lines()
                                .find_map(|line| {
                                    line.strip_prefix("socketserver_requests_total{class=\"2xx\"} ")
                                })
                                .and_then(|value| value.trim().parse::<u64>().ok())
                        })
                        .is_some_and(|requests| requests >= 4)
                },
            );
            let _ = front;
        }
    });
    let mut acknowledged = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Publishes for as long as the restarts take (bounded), each one acknowledged.
    while !restarter.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the rolling restart took too long"
        );
        acknowledged.extend(publish(&haproxy.url(), "deploys", 25, 0, || {}));
    }
    restarter.join().expect("restarts");
    acknowledged.extend(publish(&haproxy.url(), "deploys", 25, 0, || {}));
    let moved = crowd.finish(&acknowledged);
    assert!(
        moved >= 1,
        "some subscribers were moved by the restarts ({moved})"
    );
}

#[test]
#[ignore = "needs redis-server and nginx"]
fn through_nginx_pubsub_spans_both_nodes_and_health_checks_pass() {
    let redis = Redis::start("deploy-nginx");
    let ports = [free_port(), free_port()];
    let _nodes = [
        Node::start(ports[0], &redis.url(), false),
        Node::start(ports[1], &redis.url(), false),
    ];
    let nginx = Balancer::nginx(ports);
    assert_eq!(nginx.status("/livez"), Some(200));
    let crowd = Crowd::subscribe(&nginx.url(), "chat", 10);
    let acknowledged = publish(&nginx.url(), "chat", 50, 0, || {});
    crowd.finish(&acknowledged);
}
