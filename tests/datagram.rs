//! Datagram servers (UDP and Unix datagram sockets) on every flavour: one datagram loop,
//! several loops on one UDP port, one blocking receiver, a pool of them. CPython's
//! socketserver scenarios, plus the datagram bounds: oversize datagrams, unreachable peers,
//! unnamed peers, verify.

mod util;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use socketserver::net::ListenAddr;
use socketserver::protocol::{DatagramProtocol, Echo, Outbox, Peer};
use socketserver::{Config, DatagramServer, ErrorReport, Model, RunningServer};
use util::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flavour {
    Reactor,
    Reactors,
    Threads,
    Pool,
}

const FLAVOURS: [Flavour; 4] = [
    Flavour::Reactor,
    Flavour::Reactors,
    Flavour::Threads,
    Flavour::Pool,
];

/// The flavours a Unix datagram socket supports (several loops need SO_REUSEPORT, UDP only).
const UNIX_FLAVOURS: [Flavour; 3] = [Flavour::Reactor, Flavour::Threads, Flavour::Pool];

fn config_for(flavour: Flavour) -> Config {
    Config {
        pool_threads: 3,
        reuse_port: flavour == Flavour::Reactors,
        ..test_config()
    }
}

fn bind_udp(flavour: Flavour, config: Config) -> DatagramServer {
    DatagramServer::bind_with(
        "127.0.0.1:0",
        Config {
            reuse_port: flavour == Flavour::Reactors,
            ..config
        },
    )
    .expect("bind udp")
}

fn start<P, F>(server: DatagramServer, flavour: Flavour, factory: F) -> RunningServer
where
    P: DatagramProtocol + Send,
    F: FnMut() -> P + Clone + Send + 'static,
{
    match flavour {
        Flavour::Reactor => server.spawn(factory),
        Flavour::Reactors => server.spawn_reactors(2, factory),
        Flavour::Threads => server.spawn_blocking(
            Model::ThreadPerConnection {
                block_on_close: true,
            },
            factory,
        ),
        Flavour::Pool => server.spawn_blocking(Model::ThreadPool, factory),
    }
    .expect("spawn datagram server")
}

/// A fresh socket path for one test, in the system's temporary directory.
fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "socketserver-dgram-{}-{name}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// A datagram client of either transport, with a receive timeout.
enum Client {
    Udp(UdpSocket, SocketAddr),
    /// The client's own socket file is removed on drop.
    Unix(UnixDatagram, PathBuf, PathBuf),
}

impl Client {
    fn udp(server: SocketAddr) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Client::Udp(socket, server)
    }

    fn unix(server: &Path, name: &str) -> Client {
        let own = socket_path(name);
        let socket = UnixDatagram::bind(&own).expect("bind unix client");
        socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Client::Unix(socket, server.to_path_buf(), own)
    }

    fn for_server(server: &RunningServer, name: &str) -> Client {
        match server.listen_addr() {
            ListenAddr::Udp(addr) => Client::udp(*addr),
            ListenAddr::UnixDatagram(path) => Client::unix(path, name),
            other => panic!("not a datagram server: {other}"),
        }
    }

    fn send(&self, message: &[u8]) {
        match self {
            Client::Udp(socket, server) => socket.send_to(message, server),
            Client::Unix(socket, server, _) => socket.send_to(message, server),
        }
        .expect("send");
    }

    fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buffer = vec![0; 70_000];
        let count = match self {
            Client::Udp(socket, _) => socket.recv(&mut buffer)?,
            Client::Unix(socket, _, _) => socket.recv(&mut buffer)?,
        };
        buffer.truncate(count);
        Ok(buffer)
    }

    fn round_trip(&self, message: &[u8]) -> Vec<u8> {
        self.send(message);
        self.recv().expect("an answer")
    }

    /// True if nothing is waiting to be received right now.
    fn nothing_waiting(&self) -> bool {
        let mut buffer = [0; 16];
        let result = match self {
            Client::Udp(socket, _) => {
                socket.set_nonblocking(true).expect("nonblocking");
                let result = socket.recv(&mut buffer);
                socket.set_nonblocking(false).expect("blocking");
                result
            }
            Client::Unix(socket, _, _) => {
                socket.set_nonblocking(true).expect("nonblocking");
                let result = socket.recv(&mut buffer);
                socket.set_nonblocking(false).expect("blocking");
                result
            }
        };
        matches!(result, Err(error) if error.kind() == io::ErrorKind::WouldBlock)
    }

    fn peer(&self) -> Peer {
        match self {
            Client::Udp(socket, _) => Peer::Inet(socket.local_addr().expect("addr")),
            Client::Unix(_, _, own) => Peer::Unix(Some(own.clone())),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Client::Unix(_, _, own) = self {
            let _ = std::fs::remove_file(own);
        }
    }
}

/// After a UDP server is gone, a datagram to its port draws ICMP port unreachable, which a
/// connected socket reports as ECONNREFUSED (loopback is exempt from ICMP rate limits).
fn udp_port_is_closed(addr: SocketAddr) -> bool {
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind probe");
    probe.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    probe.connect(addr).expect("connect probe");
    probe.send(b"anyone?").expect("send probe");
    let mut buffer = [0; 16];
    matches!(probe.recv(&mut buffer), Err(error) if error.kind() == io::ErrorKind::ConnectionRefused)
}

#[test]
fn every_udp_flavour_echoes_three_datagrams_then_shuts_down_and_closes_its_socket() {
    for flavour in FLAVOURS {
        let server = start(bind_udp(flavour, config_for(flavour)), flavour, || Echo);
        let addr = server.local_addr();
        assert_eq!(server.listen_addr(), &ListenAddr::Udp(addr));
        let client = Client::for_server(&server, "three");
        for round in 0..3 {
            let message = format!("hello {round}");
            assert_eq!(
                client.round_trip(message.as_bytes()),
                message.as_bytes(),
                "{flavour:?}"
            );
        }
        // The counter moves just after the send, so the client may be faster than it.
        wait_for("three answers to be counted", || {
            server.stats().datagrams_out == 3
        });
        assert_eq!(server.stats().datagrams_in, 3, "{flavour:?}");
        server.shutdown().expect("clean shutdown");
        assert!(udp_port_is_closed(addr), "{flavour:?}: socket still open");
    }
}

#[test]
fn every_unix_datagram_flavour_echoes_three_datagrams_then_removes_its_socket_file() {
    for flavour in UNIX_FLAVOURS {
        let path = socket_path(&format!("three-{flavour:?}"));
        let server = DatagramServer::bind_unix_with(&path, config_for(flavour)).expect("bind");
        assert_eq!(
            server.listen_addr(),
            &ListenAddr::UnixDatagram(path.clone())
        );
        let server = start(server, flavour, || Echo);
        let client = Client::for_server(&server, &format!("three-client-{flavour:?}"));
        for round in 0..3 {
            let message = format!("hello {round}");
            assert_eq!(
                client.round_trip(message.as_bytes()),
                message.as_bytes(),
                "{flavour:?}"
            );
        }
        server.shutdown().expect("clean shutdown");
        assert!(
            !path.exists(),
            "{flavour:?}: the socket file was left behind"
        );
    }
}

#[test]
fn several_loops_need_a_udp_socket() {
    let path = socket_path("loops");
    let server = DatagramServer::bind_unix_with(
        &path,
        Config {
            reuse_port: true,
            ..test_config()
        },
    )
    .expect("bind");
    let error = server
        .spawn_reactors(2, || Echo)
        .err()
        .expect("several loops on a Unix socket are refused");
    assert!(error.to_string().contains("UDP"), "{error}");
}

#[test]
fn twenty_servers_started_and_shut_down_at_once_always_exit() {
    for flavour in FLAVOURS {
        for _ in 0..20 {
            let server = start(bind_udp(flavour, config_for(flavour)), flavour, || Echo);
            server.shutdown().expect("clean shutdown");
        }
    }
    for flavour in UNIX_FLAVOURS {
        let path = socket_path(&format!("twenty-{flavour:?}"));
        for _ in 0..20 {
            let server =
                DatagramServer::bind_unix_with(&path, config_for(flavour)).expect("bind unix");
            start(server, flavour, || Echo)
                .shutdown()
                .expect("clean shutdown");
        }
    }
}

/// Echoes, except that `boom` panics. Counts what it has seen, to show a fresh instance
/// takes over after a panic.
#[derive(Clone, Default)]
struct Fragile {
    seen: usize,
}

impl DatagramProtocol for Fragile {
    fn on_datagram(&mut self, datagram: &[u8], from: &Peer, out: &mut Outbox) {
        self.seen += 1;
        out.send_to(from, format!("{} ", self.seen).as_bytes());
        if datagram == b"boom" {
            panic!("fragile datagram protocol");
        }
        out.send_to(from, datagram);
    }
}

#[test]
fn a_handler_panic_reaches_the_error_hook_and_the_server_keeps_serving() {
    // Threads: one receiver, so the fresh instance is certain to answer the next datagram.
    for flavour in [Flavour::Reactor, Flavour::Threads] {
        let reports: Arc<Mutex<Vec<ErrorReport>>> = Arc::default();
        let sink = reports.clone();
        let server = bind_udp(flavour, config_for(flavour))
            .on_error(move |report| sink.lock().expect("lock").push(report.clone()));
        let server = start(server, flavour, Fragile::default);
        let client = Client::for_server(&server, "panic");
        assert_eq!(client.round_trip(b"one"), b"1 ");
        assert_eq!(client.recv().expect("echo"), b"one");
        client.send(b"boom");
        // The answer queued before the panic is discarded with the instance; the fresh
        // instance starts counting again.
        assert_eq!(client.round_trip(b"two"), b"1 ", "{flavour:?}");
        assert_eq!(client.recv().expect("echo"), b"two");
        let reports = reports.lock().expect("lock").clone();
        assert_eq!(reports.len(), 1, "{flavour:?}");
        assert!(reports[0].message.contains("fragile datagram protocol"));
        assert_eq!(reports[0].conn, None);
        let Peer::Inet(client_addr) = client.peer() else {
            unreachable!()
        };
        assert_eq!(reports[0].peer, Some(client_addr));
        assert_eq!(server.stats().datagram_panics, 1);
        server.shutdown().expect("clean shutdown");
    }
}

#[test]
fn a_rejected_peer_gets_nothing_and_is_counted_once() {
    for flavour in FLAVOURS {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the rejected client");
        socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let rejected_addr = socket.local_addr().expect("addr");
        let server =
            bind_udp(flavour, config_for(flavour)).verify(move |peer| peer != rejected_addr);
        let server = start(server, flavour, || Echo);
        let rejected = Client::Udp(socket, server.local_addr());
        rejected.send(b"let me in");
        wait_for("the refusal to be counted", || {
            server.stats().refused_by_verify == 1
        });
        let accepted = Client::for_server(&server, "accepted");
        assert_eq!(accepted.round_trip(b"hello"), b"hello", "{flavour:?}");
        assert!(
            rejected.nothing_waiting(),
            "{flavour:?}: a rejected peer was answered"
        );
        let stats = server.stats();
        assert_eq!(stats.refused_by_verify, 1, "{flavour:?}");
        assert_eq!(stats.datagrams_in, 1, "{flavour:?}");
        server.shutdown().expect("clean shutdown");
    }
}

#[test]
fn an_oversize_datagram_is_dropped_whole_and_counted() {
    for flavour in FLAVOURS {
        let config = Config {
            max_datagram_bytes: 100,
            ..config_for(flavour)
        };
        let server = start(bind_udp(flavour, config), flavour, || Echo);
        let client = Client::for_server(&server, "oversize");
        client.send(&pattern(101, 1));
        wait_for("the oversize datagram to be dropped", || {
            server.stats().datagrams_dropped == 1
        });
        let largest = pattern(100, 2);
        assert_eq!(client.round_trip(&largest), largest, "{flavour:?}");
        assert_eq!(server.stats().datagrams_in, 1, "{flavour:?}");
        server.shutdown().expect("clean shutdown");
    }
}

/// Sends every datagram to a dead address first, then echoes it to its sender.
#[derive(Clone)]
struct ForwardToTheDead {
    dead: Peer,
}

impl DatagramProtocol for ForwardToTheDead {
    fn on_datagram(&mut self, datagram: &[u8], from: &Peer, out: &mut Outbox) {
        out.send_to(&self.dead, datagram);
        out.send_to(from, datagram);
    }
}

#[test]
fn an_unreachable_peer_does_not_stop_the_server() {
    // A Unix socket file whose socket is closed: sending to it fails with ECONNREFUSED.
    let dead_path = socket_path("dead-peer");
    drop(UnixDatagram::bind(&dead_path).expect("bind the soon-dead peer"));
    // A UDP port nobody listens on: ICMP port unreachable comes back.
    let dead_addr = UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free port");
    for flavour in UNIX_FLAVOURS {
        let path = socket_path(&format!("unreachable-{flavour:?}"));
        let server = DatagramServer::bind_unix_with(&path, config_for(flavour)).expect("bind");
        let dead = Peer::Unix(Some(dead_path.clone()));
        let server = start(server, flavour, move || ForwardToTheDead {
            dead: dead.clone(),
        });
        let client = Client::for_server(&server, &format!("unreachable-client-{flavour:?}"));
        for round in 0..5 {
            let message = format!("still here {round}");
            assert_eq!(client.round_trip(message.as_bytes()), message.as_bytes());
        }
        // Each failed send comes before the echo that followed it, so it is already counted.
        assert_eq!(server.stats().datagram_errors, 5, "{flavour:?}");
        server.shutdown().expect("clean shutdown");

        let server = bind_udp(flavour, config_for(flavour));
        let dead = Peer::Inet(dead_addr);
        let server = start(server, flavour, move || ForwardToTheDead {
            dead: dead.clone(),
        });
        let client = Client::for_server(&server, "unreachable-udp");
        for round in 0..5 {
            let message = format!("still here {round}");
            assert_eq!(client.round_trip(message.as_bytes()), message.as_bytes());
        }
        server.shutdown().expect("clean shutdown");
    }
    let _ = std::fs::remove_file(&dead_path);
}

#[test]
fn an_unnamed_unix_peer_cannot_be_answered_and_is_counted() {
    let path = socket_path("unnamed");
    let server = DatagramServer::bind_unix_with(&path, test_config())
        .expect("bind")
        .spawn(|| Echo)
        .expect("spawn");
    let unnamed = UnixDatagram::unbound().expect("an unnamed socket");
    unnamed.send_to(b"who am I", &path).expect("send");
    wait_for("the unanswerable datagram to be counted", || {
        server.stats().datagrams_dropped == 1
    });
    let named = Client::for_server(&server, "named");
    assert_eq!(named.round_trip(b"me"), b"me");
    assert_eq!(server.stats().datagrams_in, 2);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_stale_unix_datagram_file_is_replaced_and_a_live_one_refused() {
    let path = socket_path("stale");
    drop(UnixDatagram::bind(&path).expect("leave a stale socket file"));
    assert!(path.exists());
    let server = DatagramServer::bind_unix_with(&path, test_config())
        .expect("a stale file is replaced")
        .spawn(|| Echo)
        .expect("spawn");
    let error = DatagramServer::bind_unix_with(&path, test_config())
        .err()
        .expect("a live socket is refused");
    assert!(
        error.to_string().contains("in use") || error.to_string().contains("bound"),
        "{error}"
    );
    let client = Client::for_server(&server, "stale-client");
    assert_eq!(client.round_trip(b"alive"), b"alive");
    server.shutdown().expect("clean shutdown");
    assert!(!path.exists());
}

#[test]
fn many_peers_are_all_answered_by_several_loops() {
    let flavour = Flavour::Reactors;
    let server = start(bind_udp(flavour, config_for(flavour)), flavour, || Echo);
    let clients: Vec<Client> = (0..32).map(|_| Client::udp(server.local_addr())).collect();
    for (index, client) in clients.iter().enumerate() {
        let message = format!("peer {index}");
        assert_eq!(client.round_trip(message.as_bytes()), message.as_bytes());
    }
    wait_for("every answer to be counted", || {
        server.stats().datagrams_out == 32
    });
    server.shutdown().expect("clean shutdown");
}

#[test]
fn blocking_receivers_serve_with_a_zero_shutdown_timeout() {
    // Regression: a zero send timeout is refused by the socket; the driver must not pass one on.
    let config = Config {
        shutdown_timeout: std::time::Duration::ZERO,
        ..config_for(Flavour::Pool)
    };
    let server = start(bind_udp(Flavour::Pool, config), Flavour::Pool, || Echo);
    let client = Client::for_server(&server, "zero-timeout");
    assert_eq!(client.round_trip(b"still served"), b"still served");
    server.shutdown().expect("clean shutdown");
}
