//! Pre-forked worker processes, through the command line: workers share the supervisor's
//! socket (TCP, Unix stream, UDP), a killed worker is replaced while the server keeps
//! answering, and SIGTERM drains every worker and exits cleanly.

mod util;

use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::process::Child;

use util::*;

#[test]
fn a_killed_worker_is_replaced_and_the_server_keeps_answering() {
    let cli = Cli::start(
        &[
            "serve",
            "--model",
            "prefork",
            "--processes",
            "2",
            "--protocol",
            "line",
        ],
        None,
    );
    let workers = wait_for_workers(&cli.child, 2);
    let mut stream = connect(cli.addr);
    for _ in 0..3 {
        assert_eq!(round_trip(&mut stream, b"hello world\n"), b"hello world\n");
    }
    drop(stream);

    let victim = workers[0];
    // SAFETY: kill(2) on a child of our child, seen alive a moment ago.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let mut replaced = Vec::new();
    wait_for("a replacement worker", || {
        replaced = children_of(cli.child.id());
        replaced.len() == 2 && !replaced.contains(&victim)
    });
    assert!(
        replaced.contains(&workers[1]),
        "the other worker was left alone"
    );
    for round in 0..20 {
        let mut stream = connect(cli.addr);
        let line = format!("after the crash {round}\n");
        assert_eq!(round_trip(&mut stream, line.as_bytes()), line.as_bytes());
    }

    let (status, stderr) = cli.terminate();
    assert!(status.success(), "exit {status:?}, stderr: {stderr}");
    assert!(stderr.contains("exited"), "the crash was logged: {stderr}");
    for pid in replaced {
        assert!(!is_alive(pid), "worker {pid} outlived the supervisor");
    }
}

#[test]
fn sigterm_lets_every_worker_finish_its_answer() {
    let cli = Cli::start(&["serve", "--model", "prefork", "--processes", "2"], None);
    wait_for_workers(&cli.child, 2);
    let mut streams: Vec<_> = (0..8).map(|_| connect(cli.addr)).collect();
    for stream in &mut streams {
        assert_eq!(round_trip(stream, b"ping"), b"ping");
    }
    let (status, stderr) = cli.terminate();
    assert!(status.success(), "exit {status:?}, stderr: {stderr}");
    // Every worker drained: each connection was closed by its server, not left hanging.
    for stream in &mut streams {
        assert!(is_closed_by_server(stream));
    }
}

#[test]
fn prefork_serves_udp_and_unix_sockets() {
    let cli = Cli::start(
        &["serve", "--model", "prefork", "--processes", "2", "--udp"],
        None,
    );
    wait_for_workers(&cli.child, 2);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    for round in 0..3 {
        let message = format!("datagram {round}");
        client.send_to(message.as_bytes(), cli.addr).expect("send");
        let mut answer = [0; 64];
        let count = client.recv(&mut answer).expect("an answer");
        assert_eq!(&answer[..count], message.as_bytes());
    }
    let (status, stderr) = cli.terminate();
    assert!(status.success(), "exit {status:?}, stderr: {stderr}");

    let path =
        std::env::temp_dir().join(format!("socketserver-prefork-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let path_text = path.to_str().expect("a UTF-8 temporary path");
    let (mut child, listening) = Cli::spawn(
        &[
            "serve",
            "--model",
            "prefork",
            "--processes",
            "2",
            "--unix",
            path_text,
        ],
        None,
    );
    assert_eq!(listening, format!("unix:{path_text}"));
    wait_for_workers(&child, 2);
    for round in 0..3 {
        use std::io::{Read, Write};
        let mut stream = UnixStream::connect(&path).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let message = format!("unix {round}");
        stream.write_all(message.as_bytes()).expect("write");
        let mut answer = vec![0; message.len()];
        stream.read_exact(&mut answer).expect("read");
        assert_eq!(answer, message.as_bytes());
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_for_exit(&mut child);
    assert!(status.success(), "exit {status:?}");
    assert!(!path.exists(), "the supervisor removes the socket file");
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    wait_for("the server to exit", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.expect("exited")
}

#[test]
fn twenty_prefork_servers_started_and_shut_down_at_once_always_exit() {
    for _ in 0..20 {
        let cli = Cli::start(&["serve", "--model", "prefork", "--processes", "1"], None);
        let workers = wait_for_workers(&cli.child, 1);
        let (status, stderr) = cli.terminate();
        assert!(status.success(), "exit {status:?}, stderr: {stderr}");
        assert!(!is_alive(workers[0]));
    }
}
