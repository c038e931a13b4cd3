//! Who gets in: the `max_connections` cap refuses promptly and holds for the whole server under
//! every model, and the verify hook rejects by address before any protocol runs.

mod util;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use socketserver::protocol::Echo;
use util::*;

#[test]
fn the_client_over_max_connections_is_refused_promptly() {
    let server = bind(test_config())
        .max_connections(2)
        .spawn(|| Echo)
        .expect("spawn");
    let mut first = connect(server.local_addr());
    let mut second = connect(server.local_addr());
    assert_eq!(round_trip(&mut first, b"one"), b"one");
    assert_eq!(round_trip(&mut second, b"two"), b"two");

    // The third is accepted by the kernel, then closed by the server at once: its read ends
    // (end of stream), it does not hang until the read timeout.
    let mut third = connect(server.local_addr());
    assert!(
        is_closed_by_server(&mut third),
        "the client over the cap was left hanging"
    );
    assert_eq!(server.stats().refused_over_capacity, 1);

    // A freed place is available again.
    drop(first);
    wait_for("the first connection to be removed", || {
        server.stats().active == 1
    });
    let mut fourth = connect(server.local_addr());
    assert_eq!(round_trip(&mut fourth, b"four"), b"four");
    drop((second, fourth));
    server.shutdown().expect("clean shutdown");
}

/// Connects to `addr` from the local address `from` (any 127.x.y.z is loopback on Linux).
fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> std::net::TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local = std::net::SocketAddr::from((from, 0));
    socket.bind(&local.into()).expect("bind the client address");
    socket
        .connect_timeout(&addr.into(), TIMEOUT)
        .expect("connect");
    let stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
}

#[test]
fn a_rejected_peer_is_closed_before_any_protocol_runs() {
    let protocols_made = Arc::new(AtomicUsize::new(0));
    let made = protocols_made.clone();
    let server = bind(test_config())
        .verify(|peer| peer.ip() == std::net::Ipv4Addr::LOCALHOST)
        .spawn(move || {
            made.fetch_add(1, Ordering::Relaxed);
            Echo
        })
        .expect("spawn");
    for _ in 0..3 {
        let mut welcome = connect_from([127, 0, 0, 1], server.local_addr());
        assert_eq!(round_trip(&mut welcome, b"hi"), b"hi");
        let mut rejected = connect_from([127, 0, 0, 2], server.local_addr());
        assert!(
            is_closed_by_server(&mut rejected),
            "a rejected peer must be closed"
        );
    }
    let stats = server.stats();
    assert_eq!(stats.refused_by_verify, 3);
    assert_eq!(stats.accepted, 3);
    assert_eq!(
        protocols_made.load(Ordering::Relaxed),
        3,
        "no protocol for rejected peers"
    );
    server.shutdown().expect("clean shutdown");
}

/// Connects `clients` one after another, each sending a byte and waiting for its echo or for
/// the server to close it; all stay open. Returns how many were served.
fn served_of(addr: std::net::SocketAddr, clients: usize) -> (usize, Vec<std::net::TcpStream>) {
    let mut held = Vec::new();
    let mut served = 0;
    for _ in 0..clients {
        let mut stream = connect(addr);
        stream.write_all(b"x").expect("write");
        let mut answer = [0u8; 1];
        match stream.read(&mut answer) {
            Ok(1) => served += 1,
            // Closed at once: over the cap.
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!("neither served nor closed: {error}"),
        }
        held.push(stream);
    }
    (served, held)
}

/// `--max-connections 2` with 8 clients served 2 under reactor, threads and pool but 4 under
/// `reactors --threads 2` and `prefork --processes 2`: the cap was per loop. It is the
/// server's, under every model.
#[test]
fn max_connections_holds_for_the_whole_server_under_every_model() {
    let models: [&[&str]; 4] = [
        &["--model", "reactor"],
        &["--model", "reactors", "--threads", "2"],
        &["--model", "threads"],
        &["--model", "pool"],
    ];
    for model in models {
        let mut args = vec!["serve", "--max-connections", "2"];
        args.extend_from_slice(model);
        let cli = Cli::start(&args, None);
        let (served, held) = served_of(cli.addr, 8);
        assert_eq!(served, 2, "{model:?}: most connections held at once");
        drop(held);
        let (status, stderr) = cli.terminate();
        assert!(status.success(), "{model:?}: {status:?} {stderr}");
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a worker of the test's own server, seen alive a moment ago.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// The prefork case of the test above, made certain to spread the connections: with one
/// worker stopped, the other must take the next connection from the shared socket.
#[test]
fn max_connections_holds_across_prefork_workers() {
    let cli = Cli::start(
        &[
            "serve",
            "--model",
            "prefork",
            "--processes",
            "2",
            "--max-connections",
            "2",
        ],
        None,
    );
    let workers = wait_for_workers(&cli.child, 2);
    signal(workers[0], libc::SIGSTOP);
    let (served_by_second, mut held) = served_of(cli.addr, 1);
    signal(workers[0], libc::SIGCONT);
    signal(workers[1], libc::SIGSTOP);
    let (served_by_first, more) = served_of(cli.addr, 2);
    held.extend(more);
    signal(workers[1], libc::SIGCONT);
    assert_eq!(
        (served_by_second, served_by_first),
        (1, 1),
        "each worker holds one connection; the third is over the server's cap"
    );
    drop(held);
    let (status, stderr) = cli.terminate();
    assert!(status.success(), "{status:?} {stderr}");
}

/// A prefork worker that dies cannot give its places back itself; the supervisor does, or the
/// server would stay full of connections that no longer exist.
#[test]
fn a_dead_prefork_workers_places_are_given_back() {
    let cli = Cli::start(
        &[
            "serve",
            "--model",
            "prefork",
            "--processes",
            "1",
            "--max-connections",
            "1",
        ],
        None,
    );
    let workers = wait_for_workers(&cli.child, 1);
    let (served, held) = served_of(cli.addr, 2);
    assert_eq!(served, 1, "the cap holds");
    // SAFETY: kill(2) on a child of our child, seen alive a moment ago.
    unsafe { libc::kill(workers[0] as libc::pid_t, libc::SIGKILL) };
    wait_for("a replacement worker", || {
        let now = children_of(cli.child.id());
        now.len() == 1 && now[0] != workers[0]
    });
    drop(held);
    let (served, _held) = served_of(cli.addr, 1);
    assert_eq!(served, 1, "the dead worker's place is free again");
    let (status, stderr) = cli.terminate();
    assert!(status.success(), "{status:?} {stderr}");
}
